//! Frames wait for the flush: a model of per-vCPU TLBs over random changes.
//!
//! Each vCPU caches the table frames its walks used and drops them only on
//! the flushes that records name. The allocator hands freed frames straight
//! back out. Over random map/unmap/protect/split/collapse sequences, with
//! records flushed and completed late, in any order, or ignored, no cached
//! walk may name a frame that went back to the allocator, and nothing leaks.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::mmu::{Pending, TlbModel};
use npt_table::{HostFrameAllocator, MapPolicy, NestedPageTable, ReusingAllocator};
use proptest::prelude::*;

const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const G1: usize = 0x4000_0000;
const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);
const R: MappingFlags = MappingFlags::READ;
/// Host addresses of leaves: GPA + this (not allocator memory).
const HOST: usize = 0x10_0000_0000;

#[derive(Debug, Clone)]
enum Op {
    Map {
        at: usize,
        len: usize,
        huge: bool,
    },
    Unmap {
        at: usize,
        len: usize,
    },
    Protect {
        at: usize,
        len: usize,
        ro: bool,
    },
    Split {
        at: usize,
        len: usize,
    },
    Collapse {
        at: usize,
        big: bool,
    },
    Touch {
        cpu: usize,
        at: usize,
    },
    /// Flush and complete the pending record at this index (modulo).
    Complete(usize),
    /// Drop the pending record at this index without completing it.
    Ignore(usize),
    /// A full flush of every vCPU, then `complete_all`.
    FlushAll,
}

/// An address in the first 2 GiB: a GiB, a 2 MiB slot, a 4 KiB page.
fn addr() -> impl Strategy<Value = usize> {
    (0..2usize, 0..4usize, 0..3usize).prop_map(|(g, m, k)| g * G1 + m * M2 + k * 511 * K4 / 2)
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![
        (1..4usize).prop_map(|n| n * K4),
        (1..3usize).prop_map(|n| n * M2),
        Just(G1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (addr(), len(), any::<bool>()).prop_map(|(at, len, huge)| Op::Map { at, len, huge }),
        2 => (addr(), len()).prop_map(|(at, len)| Op::Unmap { at, len }),
        1 => (addr(), len(), any::<bool>()).prop_map(|(at, len, ro)| Op::Protect { at, len, ro }),
        1 => (addr(), len()).prop_map(|(at, len)| Op::Split { at, len }),
        1 => (addr(), any::<bool>()).prop_map(|(at, big)| Op::Collapse { at, big }),
        4 => (0..3usize, addr()).prop_map(|(cpu, at)| Op::Touch { cpu, at }),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Ignore),
        1 => Just(Op::FlushAll),
    ]
}

fn run<F: NptFormat>(ops: &[Op]) -> Result<(), TestCaseError> {
    let host = HostFrameAllocator::new();
    {
        let alloc = ReusingAllocator::new(&host);
        let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
        let mut tlb = TlbModel::new(3);
        let mut pending = Pending::new();
        let limit = F::GPA_LIMIT as usize;
        for op in ops {
            let record = match *op {
                Op::Map { at, len, huge } if at + len <= limit => {
                    let policy = if huge {
                        MapPolicy::Huge
                    } else {
                        MapPolicy::Only4K
                    };
                    t.map_region(at.into(), HostPhysAddr::from(at + HOST), len, RW, policy)
                        .ok()
                }
                Op::Unmap { at, len } if at + len <= limit => t.unmap_region(at.into(), len).ok(),
                Op::Protect { at, len, ro } if at + len <= limit => {
                    let flags = if ro { R } else { RW };
                    t.protect_region(at.into(), len, flags).ok()
                }
                Op::Split { at, len } if at + len <= limit => t.split_region(at.into(), len).ok(),
                Op::Collapse { at, big } => {
                    let size = if big {
                        PageSize::Size1G
                    } else {
                        PageSize::Size2M
                    };
                    let at = size.align_down(at);
                    t.collapse(GuestPhysAddr::from(at), size)
                        .ok()
                        .map(|c| c.flush)
                }
                Op::Touch { cpu, at } if at < limit => {
                    // SAFETY: the table is live and not changing during the walk.
                    unsafe { tlb.touch::<F, _>(cpu, &alloc, t.root_hpa(), at) };
                    None
                }
                Op::Complete(i) => {
                    pending.complete(i, &mut tlb, |r| {
                        t.complete(r);
                    });
                    None
                }
                Op::Ignore(i) => {
                    pending.ignore(i);
                    None
                }
                Op::FlushAll => {
                    pending.flush_all(&mut tlb, || {
                        t.complete_all();
                    });
                    None
                }
                _ => None,
            };
            pending.push(record);
            if let Some((cpu, page, frame)) = tlb.stale(&alloc) {
                prop_assert!(
                    false,
                    "{}: vCPU {cpu} caches a walk of {page:#x} through {frame:?}, which went back to the allocator",
                    F::NAME
                );
            }
            prop_assert_eq!(
                alloc.live_frames(),
                t.stats().table_frames + t.parked_frames(),
                "{}: live frames = table frames + parked frames",
                F::NAME
            );
        }
        // Records that were dropped leave frames parked until a full flush.
        pending.finish(&mut tlb, |r| {
            t.complete(r);
        });
        t.complete_all();
        prop_assert_eq!(t.parked_frames(), 0);
        drop(t);
        prop_assert_eq!(alloc.live_frames(), 0, "{}: nothing leaks", F::NAME);
        alloc.drain();
    }
    prop_assert_eq!(host.live_frames(), 0);
    Ok(())
}

macro_rules! stale_tlb_tests {
    ($($name:ident: $fmt:ty,)*) => {$(
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
                #[test]
                fn stale_tlb(ops in proptest::collection::vec(op(), 1..40)) {
                    run::<$fmt>(&ops)?;
                }
            }
        }
    )*};
}

npt_entry::for_each_format!(stale_tlb_tests);
