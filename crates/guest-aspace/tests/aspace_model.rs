//! Random operation sequences against a plain reference model of regions,
//! lazily populated pages and written bytes.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::*;
use gpa_types::MappingFlags;
use guest_aspace::{Access, AspaceError, Backing, FaultOutcome, GuestAddrSpace, RegionKind};
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ram { lazy: bool },
    Mmio,
    Rom,
}

#[derive(Debug, Clone)]
struct MRegion {
    start: usize,
    size: usize,
    kind: Kind,
    flags: MappingFlags,
    /// Owned backing chunks of eager RAM and ROM: start -> size.
    chunks: BTreeMap<usize, usize>,
    /// Populated pages of lazy RAM.
    pages: BTreeSet<usize>,
}

impl MRegion {
    fn end(&self) -> usize {
        self.start + self.size
    }

    fn backing(&self) -> Backing {
        match self.kind {
            Kind::Ram { lazy } => Backing::Alloc { lazy },
            Kind::Mmio => Backing::Mmio { passthrough: None },
            Kind::Rom => Backing::Rom,
        }
    }

    fn populated(&self) -> usize {
        self.chunks.values().sum::<usize>() + self.pages.len() * K4
    }

    fn mapped(&self, page: usize) -> bool {
        match self.kind {
            Kind::Ram { lazy: true } => self.pages.contains(&page),
            Kind::Ram { lazy: false } | Kind::Rom => true,
            Kind::Mmio => false,
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    regions: BTreeMap<usize, MRegion>,
    /// Bytes written, by 4 KiB page.
    data: HashMap<usize, Vec<u8>>,
}

/// Backing chunks the space allocates for owned memory (2 MiB where aligned
/// and long enough, else 4 KiB; 1 GiB never fits this window).
fn chunks_for(start: usize, size: usize) -> BTreeMap<usize, usize> {
    let mut out = BTreeMap::new();
    let mut pos = start;
    while pos < start + size {
        let n = if pos % M2 == 0 && start + size - pos >= M2 {
            M2
        } else {
            K4
        };
        out.insert(pos, n);
        pos += n;
    }
    out
}

impl Model {
    fn at(&self, g: usize) -> Option<&MRegion> {
        let (_, r) = self.regions.range(..=g).next_back()?;
        (g < r.end()).then_some(r)
    }

    fn resolve(&self, loc: Loc) -> usize {
        match loc {
            Loc::Abs(a) => a,
            Loc::Near { idx, off } => {
                if self.regions.is_empty() {
                    return W0 + off % WSIZE;
                }
                let r = self.regions.values().nth(idx % self.regions.len()).unwrap();
                (r.start + off % (r.size + 2 * K4)).saturating_sub(K4)
            }
        }
    }

    fn check_free(&self, g: usize, size: usize) -> Result<(), AspaceError> {
        if size == 0 {
            return Err(AspaceError::ZeroSize);
        }
        for v in [g, size] {
            if v % K4 != 0 {
                return Err(AspaceError::NotAligned {
                    value: v,
                    align: K4,
                });
            }
        }
        let outside = AspaceError::OutsideWindow {
            gpa: gpa(g),
            len: size,
        };
        let end = g.checked_add(size).ok_or(outside)?;
        if g < W0 || end > WEND {
            return Err(outside);
        }
        if let Some((&s, r)) = self.regions.range(..end).next_back() {
            if r.end() > g {
                return Err(AspaceError::Overlap {
                    gpa: gpa(g),
                    existing: gpa(s),
                });
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        g: usize,
        size: usize,
        kind: Kind,
        flags: MappingFlags,
    ) -> Result<(), AspaceError> {
        self.check_free(g, size)?;
        let chunks = match kind {
            Kind::Ram { lazy: false } | Kind::Rom => chunks_for(g, size),
            _ => BTreeMap::new(),
        };
        self.regions.insert(
            g,
            MRegion {
                start: g,
                size,
                kind,
                flags,
                chunks,
                pages: BTreeSet::new(),
            },
        );
        Ok(())
    }

    fn remove(&mut self, start: usize, len: usize) -> Result<(), AspaceError> {
        if len == 0 {
            return Err(AspaceError::ZeroSize);
        }
        for v in [start, len] {
            if v % K4 != 0 {
                return Err(AspaceError::NotAligned {
                    value: v,
                    align: K4,
                });
            }
        }
        let end = start + len;
        let mut pos = start;
        while pos < end {
            match self.at(pos) {
                Some(r) => pos = r.end(),
                None => return Err(AspaceError::NoRegion { gpa: gpa(pos) }),
            }
        }
        for edge in [start, end] {
            if let Some(r) = self.at(edge) {
                if let Some((&cs, _)) = r.chunks.range(..=edge).next_back() {
                    if cs != edge {
                        return Err(AspaceError::CutsBacking { gpa: gpa(edge) });
                    }
                }
            }
        }
        let starts: Vec<usize> = self
            .regions
            .range(..end)
            .filter(|(_, r)| r.end() > start)
            .map(|(s, _)| *s)
            .collect();
        for s in starts {
            let r = self.regions.remove(&s).unwrap();
            let (lo, hi) = (start.max(r.start), end.min(r.end()));
            if r.start < lo {
                let mut left = r.clone();
                left.size = lo - r.start;
                left.chunks = r.chunks.range(..lo).map(|(a, b)| (*a, *b)).collect();
                left.pages = r.pages.range(..lo).copied().collect();
                self.regions.insert(left.start, left);
            }
            if hi < r.end() {
                let mut right = r.clone();
                right.start = hi;
                right.size = r.end() - hi;
                right.chunks = r.chunks.range(hi..).map(|(a, b)| (*a, *b)).collect();
                right.pages = r.pages.range(hi..).copied().collect();
                self.regions.insert(right.start, right);
            }
        }
        let mut page = start;
        while page < end {
            self.data.remove(&page);
            page += K4;
        }
        Ok(())
    }

    fn fault(&mut self, g: usize, access: Access) -> FaultOutcome {
        let Some(r) = self.at(g) else {
            return FaultOutcome::Unmapped { gpa: gpa(g) };
        };
        if r.kind == Kind::Mmio {
            return FaultOutcome::Mmio {
                gpa: gpa(g),
                access,
            };
        }
        if !r.flags.contains(access.needs()) {
            let kind = if r.kind == Kind::Rom {
                RegionKind::Rom
            } else {
                RegionKind::Ram
            };
            return FaultOutcome::Violation {
                gpa: gpa(g),
                access,
                kind,
            };
        }
        let start = r.start;
        if r.kind == (Kind::Ram { lazy: true }) {
            self.regions
                .get_mut(&start)
                .unwrap()
                .pages
                .insert(g & !(K4 - 1));
        }
        FaultOutcome::Fixed(npt_table::TlbFlush::none())
    }

    /// The first address of `[g, g + len)` that the host may not access.
    fn check_access(&self, g: usize, len: usize, write: bool) -> Result<(), AspaceError> {
        let end = g + len;
        let mut pos = g;
        while pos < end {
            let r = self.at(pos).ok_or(AspaceError::NotRam { gpa: gpa(pos) })?;
            let ok = match r.kind {
                Kind::Ram { .. } => true,
                Kind::Rom => !write,
                Kind::Mmio => false,
            };
            if !ok {
                return Err(AspaceError::NotRam { gpa: gpa(pos) });
            }
            pos = r.end().min(end);
        }
        Ok(())
    }

    fn write(&mut self, g: usize, bytes: &[u8]) -> Result<(), AspaceError> {
        self.check_access(g, bytes.len(), true)?;
        let mut page = g & !(K4 - 1);
        while page < g + bytes.len() {
            let start = self.at(page).unwrap().start;
            let r = self.regions.get_mut(&start).unwrap();
            if r.kind == (Kind::Ram { lazy: true }) {
                r.pages.insert(page);
            }
            page += K4;
        }
        for (i, b) in bytes.iter().enumerate() {
            let a = g + i;
            self.data
                .entry(a & !(K4 - 1))
                .or_insert_with(|| vec![0; K4])[a % K4] = *b;
        }
        Ok(())
    }

    fn read(&self, g: usize, len: usize) -> Result<Vec<u8>, AspaceError> {
        self.check_access(g, len, false)?;
        Ok((g..g + len)
            .map(|a| self.data.get(&(a & !(K4 - 1))).map_or(0, |p| p[a % K4]))
            .collect())
    }

    fn mapped(&self, g: usize) -> bool {
        self.at(g).is_some_and(|r| r.mapped(g & !(K4 - 1)))
    }
}

fn same_kind(a: &FaultOutcome, b: &FaultOutcome) -> bool {
    match (a, b) {
        (FaultOutcome::Fixed(_), FaultOutcome::Fixed(_)) => true,
        _ => a == b,
    }
}

fn flags_of(kind: Kind, exec: bool) -> MappingFlags {
    let base = match kind {
        Kind::Ram { .. } => RW,
        Kind::Rom => R,
        Kind::Mmio => return RW | MappingFlags::DEVICE,
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
                    flags_of(Kind::Ram { lazy: *lazy }, *exec),
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

fn step(model: &mut Model, op: &Op) -> Expected {
    match *op {
        Op::AddRam {
            at,
            size,
            lazy,
            exec,
        } => {
            let kind = Kind::Ram { lazy };
            Expected::Unit(model.add(at, size, kind, flags_of(kind, exec)))
        }
        Op::AddMmio { at, size } => {
            Expected::Unit(model.add(at, size, Kind::Mmio, flags_of(Kind::Mmio, false)))
        }
        Op::AddRom { at, size, exec } => {
            Expected::Unit(model.add(at, size, Kind::Rom, flags_of(Kind::Rom, exec)))
        }
        Op::Remove { loc, len } => {
            let at = model.resolve(loc) & !(K4 - 1);
            Expected::Remove(at, len, model.remove(at, len))
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
            Expected::Remove(at, len, model.remove(at, len))
        }
        Op::Fault { loc, access } => {
            let at = model.resolve(loc);
            Expected::Fault(at, model.fault(at, access))
        }
        Op::Write { loc, len, seed } => {
            let at = model.resolve(loc);
            let bytes: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
                .collect();
            let r = model.write(at, &bytes);
            Expected::Write(at, bytes, r)
        }
        Op::Read { loc, len } => {
            let at = model.resolve(loc);
            Expected::Read(at, len, model.read(at, len))
        }
        Op::Translate { loc } => {
            let at = model.resolve(loc);
            Expected::Translate(at, model.mapped(at))
        }
    }
}

fn check_regions(s: &Space<'_>, model: &Model) {
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
        .map(|r| (r.start, r.size, r.backing(), r.flags, r.populated()))
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
            let mut model = Model::default();
            for op in &ops {
                let expected = step(&mut model, op);
                apply(&mut a, op, &expected);
                apply(&mut b, op, &expected);
                check_regions(&a, &model);
                check_regions(&b, &model);
            }
            // Every written byte reads back from both spaces.
            for (&page, bytes) in &model.data {
                let mut buf = vec![0; K4];
                if model.check_access(page, K4, false).is_ok() {
                    a.read(gpa(page), &mut buf).unwrap();
                    prop_assert_eq!(&buf, bytes);
                    b.read(gpa(page), &mut buf).unwrap();
                    prop_assert_eq!(&buf, bytes);
                }
            }
            // The two spaces never share an owned frame, nor a table root.
            let mut ranges = owned_host_ranges(&a);
            ranges.extend(owned_host_ranges(&b));
            prop_assert!(disjoint(&ranges), "owned host ranges overlap: {:x?}", ranges);
            prop_assert_ne!(a.root_hpa(), b.root_hpa());
            let owned: usize = model.regions.values().map(MRegion::populated).sum();
            prop_assert_eq!(alloc.live_frames(), 2 * owned / K4 + a.table_stats().table_frames + b.table_stats().table_frames);
        }
        prop_assert_eq!(alloc.live_frames(), 0);
    }
}
