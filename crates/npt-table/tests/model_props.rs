//! Random sequences of operations on every format against the plain model
//! of `npt_table::model`: after every step the table's mapped runs, sampled
//! queries and statistics agree with the model, and after drop no frame is
//! live.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::{GenericPTE, NptFormat};
use npt_table::model::PageModel;
use npt_table::{ChangeError, HostFrameAllocator, MapError, MapPolicy, MappedRun, NestedPageTable};
use proptest::prelude::*;

const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const G1: usize = 0x4000_0000;
const HPA_BASE: usize = 0x10_0000_0000;

#[derive(Debug, Clone)]
enum Op {
    Map {
        gpa: usize,
        hpa: usize,
        len: usize,
        flags: usize,
        huge: bool,
    },
    MapFrames {
        gpa: usize,
        pages: usize,
        flags: usize,
    },
    Unmap {
        gpa: usize,
        len: usize,
    },
    Protect {
        gpa: usize,
        len: usize,
        flags: usize,
    },
    Query {
        gpa: usize,
    },
    Collapse {
        gpa: usize,
        big: bool,
    },
}

fn flag_set(i: usize) -> MappingFlags {
    let r = MappingFlags::READ;
    let w = MappingFlags::WRITE;
    let x = MappingFlags::EXECUTE;
    [
        r,
        r | w,
        r | x,
        r | w | x,
        r | w | MappingFlags::DEVICE,
        r | MappingFlags::UNCACHED,
    ][i % 6]
}

/// An address made of 1 GiB, 2 MiB and 4 KiB steps, biased toward edges.
fn addr() -> impl Strategy<Value = usize> {
    let idx = prop_oneof![Just(0usize), Just(1), Just(511), 0usize..512];
    (0usize..2, idx.clone(), idx).prop_map(|(g, m, k)| g * G1 + m * M2 + k * K4)
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => (1usize..4).prop_map(|n| n * K4),
        2 => (1usize..3, 0usize..3).prop_map(|(m, k)| m * M2 + k * K4),
        1 => (0usize..2, 0usize..2).prop_map(|(m, k)| G1 + m * M2 + k * K4),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (addr(), addr(), length(), 0usize..6, any::<bool>())
            .prop_map(|(gpa, hpa, len, flags, huge)| Op::Map { gpa, hpa, len, flags, huge }),
        1 => (addr(), 1usize..40, 0usize..6).prop_map(|(gpa, pages, flags)| Op::MapFrames { gpa, pages, flags }),
        3 => (addr(), length()).prop_map(|(gpa, len)| Op::Unmap { gpa, len }),
        2 => (addr(), length(), 0usize..6).prop_map(|(gpa, len, flags)| Op::Protect { gpa, len, flags }),
        1 => addr().prop_map(|gpa| Op::Query { gpa }),
        1 => (addr(), any::<bool>()).prop_map(|(gpa, big)| Op::Collapse { gpa, big }),
    ]
}

/// The model's pages merged into maximal runs, as `for_each_mapping` merges.
fn model_runs(model: &PageModel) -> Vec<(usize, usize, usize, MappingFlags)> {
    let mut runs: Vec<(usize, usize, usize, MappingFlags)> = Vec::new();
    for (gpa, page) in model.iter() {
        if let Some(last) = runs.last_mut() {
            if last.0 + last.2 == gpa && last.1 + last.2 == page.hpa && last.3 == page.flags {
                last.2 += K4;
                continue;
            }
        }
        runs.push((gpa, page.hpa, K4, page.flags));
    }
    runs
}

fn table_runs<F: NptFormat, A: npt_table::FrameAllocator>(
    t: &NestedPageTable<F, A>,
) -> Vec<(usize, usize, usize, MappingFlags)> {
    let mut runs = Vec::new();
    t.for_each_mapping(GuestPhysAddr::from(0), 4 * G1, |r: MappedRun| {
        runs.push((r.gpa.as_usize(), r.hpa.as_usize(), r.len, r.flags))
    })
    .unwrap();
    // The iterator merges the same way as the range walk.
    let iterated: Vec<_> = t
        .mappings(GuestPhysAddr::from(0), 4 * G1)
        .unwrap()
        .map(|r| (r.gpa.as_usize(), r.hpa.as_usize(), r.len, r.flags))
        .collect();
    assert_eq!(iterated, runs, "mappings() and for_each_mapping() disagree");
    runs
}

fn run_ops<F: NptFormat>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let alloc = HostFrameAllocator::new();
    {
        let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
        let mut model = PageModel::new();
        let norm =
            |i: usize| <F::Entry as GenericPTE>::new_page(0.into(), flag_set(i), false).flags();
        for op in ops {
            let mut probes = vec![];
            match op {
                Op::Map {
                    gpa,
                    hpa,
                    len,
                    flags,
                    huge,
                } => {
                    let hpa = HPA_BASE + hpa;
                    let policy = if huge {
                        MapPolicy::Huge
                    } else {
                        MapPolicy::Only4K
                    };
                    let r = t.map_region(gpa.into(), hpa.into(), len, flag_set(flags), policy);
                    if model.any_mapped(gpa, len) {
                        prop_assert!(matches!(r, Err(MapError::AlreadyMapped { .. })), "{r:?}");
                    } else {
                        prop_assert!(r.is_ok(), "{r:?}");
                        if let Ok(f) = r {
                            t.complete(f);
                        }
                        model.map(gpa, hpa, len, norm(flags));
                    }
                    probes.extend([gpa, gpa + len - 1]);
                }
                Op::MapFrames { gpa, pages, flags } => {
                    let frames: Vec<HostPhysAddr> = (0..pages)
                        .map(|i| HostPhysAddr::from(HPA_BASE + (pages - i) * 3 * K4))
                        .collect();
                    let r = t.map_frames(gpa.into(), &frames, flag_set(flags));
                    if model.any_mapped(gpa, pages * K4) {
                        prop_assert!(matches!(r, Err(MapError::AlreadyMapped { .. })), "{r:?}");
                    } else {
                        prop_assert!(r.is_ok(), "{r:?}");
                        if let Ok(f) = r {
                            t.complete(f);
                        }
                        let raw: Vec<usize> = frames.iter().map(|f| f.as_usize()).collect();
                        model.map_frames(gpa, &raw, norm(flags));
                    }
                    probes.push(gpa);
                }
                Op::Unmap { gpa, len } => {
                    let r = t.unmap_region(gpa.into(), len);
                    if model.unmap(gpa, len) == 0 {
                        prop_assert!(matches!(r, Err(ChangeError::NotMapped { .. })), "{r:?}");
                    } else {
                        prop_assert!(r.is_ok(), "{r:?}");
                        if let Ok(f) = r {
                            t.complete(f);
                        }
                    }
                    probes.extend([gpa.saturating_sub(K4), gpa, gpa + len - 1, gpa + len]);
                }
                Op::Protect { gpa, len, flags } => {
                    let r = t.protect_region(gpa.into(), len, flag_set(flags));
                    if model.protect(gpa, len, norm(flags)) == 0 {
                        prop_assert!(matches!(r, Err(ChangeError::NotMapped { .. })), "{r:?}");
                    } else {
                        prop_assert!(r.is_ok(), "{r:?}");
                        if let Ok(f) = r {
                            t.complete(f);
                        }
                    }
                    probes.extend([gpa.saturating_sub(K4), gpa, gpa + len - 1, gpa + len]);
                }
                Op::Query { gpa } => probes.push(gpa + 0x123),
                Op::Collapse { gpa, big } => {
                    let size = if big {
                        PageSize::Size1G
                    } else {
                        PageSize::Size2M
                    };
                    let gpa = size.align_down(gpa);
                    if let Ok(c) = t.collapse(gpa.into(), size) {
                        t.complete(c.flush);
                    }
                    probes.push(gpa);
                }
            }
            let mut cursor = t.cursor();
            let gpas: Vec<GuestPhysAddr> = probes.iter().map(|&p| GuestPhysAddr::from(p)).collect();
            let mut batch = vec![None; gpas.len()];
            t.translate_batch(&gpas, &mut batch);
            for (p, b) in probes.into_iter().zip(batch) {
                let got = t
                    .query(p.into())
                    .ok()
                    .map(|tr| (tr.hpa.as_usize(), tr.flags));
                prop_assert_eq!(got, model.query(p), "query {:#x}", p);
                let hpa = model.query(p).map(|(h, _)| HostPhysAddr::from(h));
                prop_assert_eq!(t.translate(p.into()), hpa, "translate {:#x}", p);
                prop_assert_eq!(cursor.translate(p.into()), hpa, "cursor translate {:#x}", p);
                prop_assert_eq!(b, hpa, "translate_batch {:#x}", p);
            }
            prop_assert_eq!(table_runs(&t), model_runs(&model));
            prop_assert_eq!(t.stats().mapped_bytes(), (model.len() * K4) as u128);
        }
        // Unmapping everything frees every table but the root.
        if !model.is_empty() {
            let f = t.unmap_region(0.into(), 4 * G1).unwrap();
            t.complete(f);
        }
        prop_assert_eq!(t.stats().table_frames, F::ROOT_FRAMES);
        prop_assert_eq!(t.parked_frames(), 0);
        prop_assert_eq!(alloc.live_frames(), F::ROOT_FRAMES);
    }
    prop_assert_eq!(alloc.live_frames(), 0);
    Ok(())
}

macro_rules! model_tests {
    ($($name:ident: $fmt:ty,)*) => {$(
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
                #[test]
                fn agrees_with_model(ops in proptest::collection::vec(op(), 1..24)) {
                    run_ops::<$fmt>(ops)?;
                }
            }
        }
    )*};
}

npt_entry::for_each_format!(model_tests);
