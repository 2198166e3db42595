//! Random operation sequences against the reference model
//! `guest_aspace::model` (regions, lazily populated pages, written bytes),
//! the one the `aspace_ops` fuzz target uses too.

mod common;

use std::collections::BTreeSet;

use common::*;
use gpa_types::MappingFlags;
use guest_aspace::model::{ModelKind, ModelRegion, SpaceModel};
use guest_aspace::{Access, AspaceError, FaultOutcome, GuestAddrSpace};
use npt_entry::ept::Ept4;
use npt_table::HostFrameAllocator;
use proptest::prelude::*;

const W0: usize = 0x4000_0000;
const WSIZE: usize = 64 << 20;
const WEND: usize = W0 + WSIZE;

type Space<'a> = GuestAddrSpace<Ept4, &'a HostFrameAllocator>;

/// Where an access lands: near an existing region (chosen by index, with an
/// offset that may step a page past either end) or at an absolute address.
#[derive(Debug, Clone, Copy)]
enum Loc {
    Near { idx: usize, off: usize },
    Abs(usize),
}

#[derive(Debug, Clone)]
enum Op {
    AddRam {
        at: usize,
        size: usize,
        lazy: bool,
        exec: bool,
    },
    AddMmio {
        at: usize,
        size: usize,
    },
    AddRom {
        at: usize,
        size: usize,
        exec: bool,
    },
    Remove {
        loc: Loc,
        len: usize,
    },
    /// Removes inside one region: all of it, or pages `off..off + len` of it
    /// (both taken modulo its size).
    RemoveIn {
        idx: usize,
        off: usize,
        len: usize,
        whole: bool,
    },
    Fault {
        loc: Loc,
        access: Access,
    },
    Write {
        loc: Loc,
        len: usize,
        seed: u8,
    },
    Read {
        loc: Loc,
        len: usize,
    },
    Translate {
        loc: Loc,
    },
}

/// Where `loc` lands in `model`.
fn resolve(model: &SpaceModel, loc: Loc) -> usize {
    match loc {
        Loc::Abs(a) => a,
        Loc::Near { idx, off } => {
            let Some(r) = model.regions.values().nth(idx % model.regions.len().max(1)) else {
                return W0 + off % WSIZE;
            };
            (r.start + off % (r.size + 2 * K4)).saturating_sub(K4)
        }
    }
}

/// Host access to `[g, g + len)`: the first address refused, as the space
/// reports it.
fn host_access(model: &SpaceModel, g: usize, len: usize, write: bool) -> Result<(), AspaceError> {
    match model.first_inaccessible(g, len, write, false) {
        Some(bad) => Err(AspaceError::NotRam { gpa: gpa(bad) }),
        None => Ok(()),
    }
}

/// A removal in the model: checked, then recorded when it succeeds.
fn remove(model: &mut SpaceModel, at: usize, len: usize) -> Result<(), AspaceError> {
    model.check_remove(at, len)?;
    model.remove(at, at + len);
    Ok(())
}

/// An add in the model: checked, then recorded when it succeeds.
fn add(
    model: &mut SpaceModel,
    g: usize,
    size: usize,
    kind: ModelKind,
    flags: MappingFlags,
) -> Result<(), AspaceError> {
    model.check_free(g, size, (W0, WEND))?;
    model.insert::<Ept4>(g, size, flags, kind);
    Ok(())
}

fn same_kind(a: &FaultOutcome, b: &FaultOutcome) -> bool {
    match (a, b) {
        (FaultOutcome::Fixed(_), FaultOutcome::Fixed(_)) => true,
        _ => a == b,
    }
}

fn flags_of(kind: ModelKind, exec: bool) -> MappingFlags {
    let base = match kind {
        ModelKind::Rom => R,
        ModelKind::Mmio(_) => return RW | MappingFlags::DEVICE,
        _ => RW,
    };
    if exec {
        base | MappingFlags::EXECUTE
    } else {
        base
    }
}

fn apply(s: &mut Space<'_>, op: &Op, expected: &Expected) {
    match (op, expected) {
        (
            Op::AddRam {
                at,
                size,
                lazy,
                exec,
            },
            Expected::Unit(want),
        ) => {
            let got = s
                .add_ram(
                    gpa(*at),
                    *size,
                    flags_of(ModelKind::Ram { lazy: *lazy }, *exec),
                    *lazy,
                )
                .map(|f| f.ignore());
            assert_eq!(&got, want, "{op:?}");
        }
        (Op::AddMmio { at, size }, Expected::Unit(want)) => {
            let got = s.add_mmio(gpa(*at), *size, None).map(|f| f.ignore());
            assert_eq!(&got, want, "{op:?}");
        }
        (Op::AddRom { at, size, exec }, Expected::Unit(want)) => {
            let got = s.add_rom(gpa(*at), *size, *exec).map(|f| f.ignore());
            assert_eq!(&got, want, "{op:?}");
        }
        (Op::Remove { .. } | Op::RemoveIn { .. }, Expected::Remove(at, len, want)) => {
            let got = s.remove_range(gpa(*at), *len).map(|f| {
                s.complete(f);
            });
            assert_eq!(&got, want, "{op:?} at {at:#x} len {len:#x}");
        }
        (Op::Fault { access, .. }, Expected::Fault(at, want)) => {
            let got = s.handle_fault(gpa(*at), *access).unwrap();
            assert!(
                same_kind(&got, want),
                "{op:?} at {at:#x}: got {got:?}, want {want:?}"
            );
        }
        (Op::Write { .. }, Expected::Write(at, bytes, want)) => {
            let got = s.write(gpa(*at), bytes);
            assert_eq!(&got, want, "{op:?} at {at:#x}");
        }
        (Op::Read { .. }, Expected::Read(at, len, want)) => {
            let mut buf = vec![0x5a; *len];
            let got = s.read(gpa(*at), &mut buf).map(|()| buf);
            assert_eq!(&got, want, "{op:?} at {at:#x}");
        }
        (Op::Translate { .. }, Expected::Translate(at, mapped)) => {
            let got = s.translate(gpa(*at));
            assert_eq!(got.is_some(), *mapped, "{op:?} at {at:#x}");
            if let Some(h) = got {
                let page = *at & !(K4 - 1);
                assert_eq!(
                    s.translate(gpa(page)).map(|p| p.as_usize() + at % K4),
                    Some(h.as_usize())
                );
                assert_eq!(s.hpa_to_gpa(h), Some(gpa(*at)), "reverse lookup of {h:?}");
                let q = s.query(gpa(*at)).unwrap();
                assert_eq!(q.hpa, h);
            }
        }
        other => unreachable!("{other:?}"),
    }
}

#[derive(Debug)]
enum Expected {
    Unit(Result<(), AspaceError>),
    Remove(usize, usize, Result<(), AspaceError>),
    Fault(usize, FaultOutcome),
    Write(usize, Vec<u8>, Result<(), AspaceError>),
    Read(usize, usize, Result<Vec<u8>, AspaceError>),
    Translate(usize, bool),
}

fn step(model: &mut SpaceModel, op: &Op) -> Expected {
    match *op {
        Op::AddRam {
            at,
            size,
            lazy,
            exec,
        } => {
            let kind = ModelKind::Ram { lazy };
            Expected::Unit(add(model, at, size, kind, flags_of(kind, exec)))
        }
        Op::AddMmio { at, size } => {
            let kind = ModelKind::Mmio(None);
            Expected::Unit(add(model, at, size, kind, flags_of(kind, false)))
        }
        Op::AddRom { at, size, exec } => {
            let kind = ModelKind::Rom;
            Expected::Unit(add(model, at, size, kind, flags_of(kind, exec)))
        }
        Op::Remove { loc, len } => {
            let at = resolve(model, loc) & !(K4 - 1);
            Expected::Remove(at, len, remove(model, at, len))
        }
        Op::RemoveIn {
            idx,
            off,
            len,
            whole,
        } => {
            let (at, len) = match model.regions.values().nth(idx % model.regions.len().max(1)) {
                None => (W0, K4),
                Some(r) if whole => (r.start, r.size),
                Some(r) => {
                    let pages = r.size / K4;
                    let first = off % pages;
                    (r.start + first * K4, (1 + len % (pages - first)) * K4)
                }
            };
            Expected::Remove(at, len, remove(model, at, len))
        }
        Op::Fault { loc, access } => {
            let at = resolve(model, loc);
            let outcome = model.fault(at, access).unwrap_or_else(|| {
                model.fixed(at, access);
                FaultOutcome::Fixed(npt_table::TlbFlush::none())
            });
            Expected::Fault(at, outcome)
        }
        Op::Write { loc, len, seed } => {
            let at = resolve(model, loc);
            let bytes: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
                .collect();
            let r = host_access(model, at, len, true);
            if r.is_ok() {
                model.written(at, &bytes);
            }
            Expected::Write(at, bytes, r)
        }
        Op::Read { loc, len } => {
            let at = resolve(model, loc);
            let r = host_access(model, at, len, false).map(|()| model.read(at, len));
            Expected::Read(at, len, r)
        }
        Op::Translate { loc } => {
            let at = resolve(model, loc);
            Expected::Translate(at, model.mapped(at))
        }
    }
}

fn check_regions(s: &Space<'_>, model: &SpaceModel) {
    let got: Vec<_> = s
        .regions()
        .map(|r| {
            (
                r.range.start.as_usize(),
                r.range.size(),
                r.backing,
                r.flags,
                r.populated,
            )
        })
        .collect();
    let want: Vec<_> = model
        .regions
        .values()
        .map(|r| (r.start, r.size, r.kind.backing(), r.flags, r.populated()))
        .collect();
    assert_eq!(got, want);
}

fn add_at() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => (0..WSIZE / K4).prop_map(|p| W0 + p * K4),
        4 => (0..WSIZE / M2).prop_map(|i| W0 + i * M2),
        1 => (0..WSIZE / K4).prop_map(|p| W0 + p * K4 + 0x800),
        1 => prop_oneof![Just(W0 - K4), Just(WEND - K4), Just(WEND), Just(W0 - M2)],
    ]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => (1..=16usize).prop_map(|n| n * K4),
        2 => (1..=3usize).prop_map(|n| n * M2),
        2 => (1..=2usize, 1..=8usize).prop_map(|(m, k)| m * M2 + k * K4),
        1 => Just(0usize),
        1 => Just(K4 + 0x10),
    ]
}

fn loc() -> impl Strategy<Value = Loc> {
    prop_oneof![
        8 => (any::<usize>(), any::<usize>()).prop_map(|(idx, off)| Loc::Near { idx, off }),
        1 => (W0 - K4..WEND + K4).prop_map(Loc::Abs),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        Just(Access::Read),
        Just(Access::Write),
        Just(Access::Execute)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (add_at(), size(), any::<bool>(), any::<bool>())
            .prop_map(|(at, size, lazy, exec)| Op::AddRam { at, size, lazy, exec }),
        1 => (add_at(), size()).prop_map(|(at, size)| Op::AddMmio { at, size }),
        1 => (add_at(), size(), any::<bool>()).prop_map(|(at, size, exec)| Op::AddRom { at, size, exec }),
        2 => (loc(), prop_oneof![(1..=8usize).prop_map(|n| n * K4), Just(M2), Just(2 * M2), Just(0)])
            .prop_map(|(loc, len)| Op::Remove { loc, len }),
        2 => (any::<usize>(), any::<usize>(), any::<usize>(), any::<bool>())
            .prop_map(|(idx, off, len, whole)| Op::RemoveIn { idx, off, len, whole }),
        3 => (loc(), access()).prop_map(|(loc, access)| Op::Fault { loc, access }),
        3 => (loc(), prop_oneof![1..=16usize, 1..=3 * K4], any::<u8>())
            .prop_map(|(loc, len, seed)| Op::Write { loc, len, seed }),
        2 => (loc(), prop_oneof![1..=16usize, 1..=3 * K4]).prop_map(|(loc, len)| Op::Read { loc, len }),
        2 => loc().prop_map(|loc| Op::Translate { loc }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn space_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let alloc = HostFrameAllocator::new();
        {
            let mut a: Space<'_> = GuestAddrSpace::new(&alloc, window(W0, WSIZE)).unwrap();
            let mut b: Space<'_> = GuestAddrSpace::new(&alloc, window(W0, WSIZE)).unwrap();
            let mut model = SpaceModel::default();
            for op in &ops {
                let expected = step(&mut model, op);
                apply(&mut a, op, &expected);
                apply(&mut b, op, &expected);
                check_regions(&a, &model);
                check_regions(&b, &model);
            }
            // Every written byte reads back from both spaces.
            let pages: BTreeSet<usize> = model.bytes.keys().map(|a| a & !(K4 - 1)).collect();
            for page in pages {
                let mut buf = vec![0; K4];
                if host_access(&model, page, K4, false).is_ok() {
                    let bytes = model.read(page, K4);
                    a.read(gpa(page), &mut buf).unwrap();
                    prop_assert_eq!(&buf, &bytes);
                    b.read(gpa(page), &mut buf).unwrap();
                    prop_assert_eq!(&buf, &bytes);
                }
            }
            // The two spaces never share an owned frame, nor a table root.
            let mut ranges = owned_host_ranges(&a);
            ranges.extend(owned_host_ranges(&b));
            prop_assert!(disjoint(&ranges), "owned host ranges overlap: {:x?}", ranges);
            prop_assert_ne!(a.root_hpa(), b.root_hpa());
            let owned: usize = model.regions.values().map(ModelRegion::populated).sum();
            prop_assert_eq!(alloc.live_frames(), 2 * owned / K4 + a.table_stats().table_frames + b.table_stats().table_frames);
        }
        prop_assert_eq!(alloc.live_frames(), 0);
    }
}
