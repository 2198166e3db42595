//! Frames wait for the flush, at the address-space level: guest frames of
//! removed RAM and table frames alike.
//!
//! vCPUs cache the table frames and the guest frame of every page they
//! touch and drop them only on the flushes that records name; the
//! allocator hands freed frames straight back out. Over random sequences
//! of adds, faults, removals, clears and dirty logging, with records
//! completed late, out of order or ignored, no cached translation may name
//! a frame that went back to the allocator, and nothing leaks.

mod common;

use common::*;
use guest_aspace::{Access, FaultOutcome, GuestAddrSpace};
use npt_entry::NptFormat;
use npt_table::mmu::{Pending, TlbModel};
use npt_table::{HostFrameAllocator, ReusingAllocator};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    AddRam {
        slot: usize,
        pages: usize,
        lazy: bool,
    },
    Fault {
        slot: usize,
        page: usize,
        write: bool,
    },
    Remove {
        slot: usize,
        page: usize,
        pages: usize,
    },
    Clear,
    StartLog {
        slot: usize,
    },
    Collect {
        slot: usize,
    },
    StopLog {
        slot: usize,
    },
    Touch {
        cpu: usize,
        slot: usize,
        page: usize,
    },
    Complete(usize),
    Ignore(usize),
    FlushAll,
}

/// Regions live in 4 slots of 4 MiB each, from 1 GiB.
const SLOT: usize = 2 * M2;
const BASE: usize = G1;

fn at(slot: usize, page: usize) -> usize {
    BASE + slot * SLOT + page * K4
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..4usize;
    let page = prop_oneof![0..4usize, 510..514usize, 1020..1024usize];
    prop_oneof![
        2 => (slot.clone(), prop_oneof![Just(4usize), Just(512), Just(1024)], any::<bool>())
            .prop_map(|(slot, pages, lazy)| Op::AddRam { slot, pages, lazy }),
        3 => (slot.clone(), page.clone(), any::<bool>())
            .prop_map(|(slot, page, write)| Op::Fault { slot, page, write }),
        2 => (slot.clone(), page.clone(), prop_oneof![Just(1usize), Just(512), Just(1024)])
            .prop_map(|(slot, page, pages)| Op::Remove { slot, page, pages }),
        1 => Just(Op::Clear),
        1 => slot.clone().prop_map(|slot| Op::StartLog { slot }),
        1 => slot.clone().prop_map(|slot| Op::Collect { slot }),
        1 => slot.clone().prop_map(|slot| Op::StopLog { slot }),
        5 => (0..3usize, slot, page).prop_map(|(cpu, slot, page)| Op::Touch { cpu, slot, page }),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Ignore),
        1 => Just(Op::FlushAll),
    ]
}

fn run<F: NptFormat>(ops: &[Op]) -> Result<(), TestCaseError> {
    let host = HostFrameAllocator::new();
    {
        let alloc = ReusingAllocator::new(&host);
        let mut s = GuestAddrSpace::<F, _>::new(&alloc, window(0, 1 << 32)).unwrap();
        let mut tlb = TlbModel::new(3);
        let mut pending = Pending::new();
        for op in ops {
            let record = match *op {
                Op::AddRam { slot, pages, lazy } => {
                    s.add_ram(gpa(at(slot, 0)), pages * K4, RW, lazy).ok()
                }
                Op::Fault { slot, page, write } => {
                    let access = if write { Access::Write } else { Access::Read };
                    match s.handle_fault(gpa(at(slot, page)), access) {
                        Ok(FaultOutcome::Fixed(f)) => Some(f),
                        _ => None,
                    }
                }
                Op::Remove { slot, page, pages } => {
                    s.remove_range(gpa(at(slot, page)), pages * K4).ok()
                }
                Op::Clear => s.clear().ok(),
                Op::StartLog { slot } => s.start_dirty_log(gpa(at(slot, 0))).ok(),
                Op::Collect { slot } => {
                    let mut bits = [0u64; SLOT / K4 / 64];
                    s.collect_dirty(gpa(at(slot, 0)), &mut bits).ok()
                }
                Op::StopLog { slot } => s.stop_dirty_log(gpa(at(slot, 0))).ok(),
                Op::Touch { cpu, slot, page } => {
                    // SAFETY: the table is live and not changing during the walk.
                    unsafe { tlb.touch::<F, _>(cpu, &alloc, s.root_hpa(), at(slot, page)) };
                    None
                }
                Op::Complete(i) => {
                    pending.complete(i, &mut tlb, |r| {
                        s.complete(r);
                    });
                    None
                }
                Op::Ignore(i) => {
                    pending.ignore(i);
                    None
                }
                Op::FlushAll => {
                    pending.flush_all(&mut tlb, || {
                        s.complete_all();
                    });
                    None
                }
            };
            pending.push(record);
            if let Some((cpu, page, frame)) = tlb.stale(&alloc) {
                prop_assert!(
                    false,
                    "{}: after {op:?}, vCPU {cpu} caches {page:#x} through {frame:?}, which went back to the allocator",
                    F::NAME
                );
            }
        }
        // Records that were dropped leave frames parked until a full flush.
        pending.finish(&mut tlb, |r| {
            s.complete(r);
        });
        s.complete_all();
        prop_assert_eq!(s.parked_frames(), 0);
        drop(s);
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
                #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
                #[test]
                fn stale_tlb(ops in proptest::collection::vec(op(), 1..40)) {
                    run::<$fmt>(&ops)?;
                }
            }
        }
    )*};
}

npt_entry::for_each_format!(stale_tlb_tests);
