//! The loops behind the README's instruction counts, for callgrind: each
//! mode runs one loop in a function of its own, so `--toggle-collect`
//! counts that loop alone.
//!
//! ```sh
//! cargo build --release -p npt-benches --example icount
//! valgrind --tool=callgrind --toggle-collect='*translate_ours*' target/release/examples/icount translate-ours
//! ```
//!
//! Modes and the function to collect:
//! - `translate-ours` (`translate_ours`), `translate-cursor`
//!   (`translate_cursor`), `translate-peer` (`translate_peer`): 100,000
//!   random lookups in 1 GiB of 4 KiB pages, the GPA made by one xorshift
//!   step inside the loop, as in the walkers bench's `translate_xorshift_1g`
//!   (our `translate`, our `Cursor`, page_table_multiarch's `query`).
//!   Divide the count by 100,000.
//! - `fault-ours` (`fault_ours`), `fault-peer` (`fault_peer`): the 4,096
//!   first-touch faults of the aspace bench's `fault_in_4k` (guest-aspace,
//!   axaddrspace); subtract `memset`, which `callgrind_annotate` lists on
//!   its own.

#[path = "../benches/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::arena::ArenaHandler;
use common::*;
use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags};
use guest_aspace::{Access, FaultOutcome, GuestAddrSpace};
use memory_addr::{PhysAddr, VirtAddr};
use npt_benches::XorShift64;
use npt_entry::ept::Ept4;
use npt_table::{HandlerAllocator, MapPolicy, NestedPageTable};
use page_table_entry::x86_64::X64PTE;
use page_table_multiarch::{PageTable64, PagingMetaData};

/// `X64PagingMetaData` with a no-op flush, as in the walkers bench.
struct X64NoFlush;

impl PagingMetaData for X64NoFlush {
    const LEVELS: usize = 4;
    const PA_MAX_BITS: usize = 52;
    const VA_MAX_BITS: usize = 48;
    type VirtAddr = VirtAddr;

    fn flush_tlb(_: Option<VirtAddr>) {}
}

type Ours = NestedPageTable<Ept4, HandlerAllocator<ArenaHandler>>;
type Peer = PageTable64<X64NoFlush, X64PTE, ArenaHandler>;

/// Lookups per translate mode.
const LOOKUPS: usize = 100_000;

fn gpa_at(rng: &mut XorShift64) -> usize {
    GIB + (rng.next() as usize & (GIB - 1))
}

#[inline(never)]
fn translate_ours(t: &Ours) -> usize {
    let mut rng = XorShift64::new(SEED);
    let mut acc = 0;
    for _ in 0..LOOKUPS {
        let a = GuestPhysAddr::from_usize(black_box(gpa_at(&mut rng)));
        acc ^= t.translate(a).map_or(0, HostPhysAddr::as_usize);
    }
    acc
}

#[inline(never)]
fn translate_cursor(t: &Ours) -> usize {
    let mut rng = XorShift64::new(SEED);
    let mut acc = 0;
    let mut c = t.cursor();
    for _ in 0..LOOKUPS {
        let a = GuestPhysAddr::from_usize(black_box(gpa_at(&mut rng)));
        acc ^= c.translate(a).map_or(0, HostPhysAddr::as_usize);
    }
    acc
}

#[inline(never)]
fn translate_peer(t: &Peer) -> usize {
    let mut rng = XorShift64::new(SEED);
    let mut acc = 0;
    for _ in 0..LOOKUPS {
        let a = black_box(gpa_at(&mut rng));
        acc ^= t.query(a.into()).map_or(0, |(pa, _, _)| pa.as_usize());
    }
    acc
}

#[inline(never)]
fn fault_ours(s: &GuestAddrSpace<Ept4, MaxRun<512>>, pages: &[usize]) {
    for &p in pages {
        let out = s.handle_fault(GuestPhysAddr::from_usize(p), Access::Write);
        assert!(matches!(out, Ok(FaultOutcome::Fixed(_))), "fault at {p:#x}");
    }
}

#[inline(never)]
fn fault_peer(s: &mut ax::Space, pages: &[usize]) {
    for &p in pages {
        let fixed = s.handle_page_fault(ax_gpa(p), axaddrspace::MappingFlags::WRITE);
        assert!(fixed, "fault at {p:#x}");
    }
}

fn main() {
    let rw = MappingFlags::READ | MappingFlags::WRITE;
    let mode = std::env::args().nth(1).unwrap_or_default();
    let pages = shuffled_pages(GIB, 4096);
    match mode.as_str() {
        "translate-ours" | "translate-cursor" => {
            let mut t = Ours::new(HandlerAllocator::new()).expect("root");
            t.map_region(GIB.into(), (4 * GIB).into(), GIB, rw, MapPolicy::Only4K)
                .expect("map")
                .ignore();
            if mode == "translate-ours" {
                black_box(translate_ours(&t));
            } else {
                black_box(translate_cursor(&t));
            }
        }
        "translate-peer" => {
            let mut t = Peer::try_new().expect("root");
            let to_pa = |va: VirtAddr| PhysAddr::from(va.as_usize() + 3 * GIB);
            t.cursor()
                .map_region(GIB.into(), to_pa, GIB, rw, false)
                .expect("map");
            black_box(translate_peer(&t));
        }
        "fault-ours" => fault_ours(&ours_ram::<512>(GIB, true), &pages),
        "fault-peer" => fault_peer(&mut ax_ram(GIB, true), &pages),
        _ => {
            eprintln!(
                "modes: translate-ours, translate-cursor, translate-peer, fault-ours, fault-peer"
            );
            std::process::exit(2);
        }
    }
}
