//! Allocations sized by a caller's input are fallible: a heap that refuses
//! them gives `NoMemory` with the space unchanged, never an abort.
//!
//! The global allocator below refuses, on the current thread only, any
//! single allocation larger than a limit the test sets (tests run on their
//! own threads, so limits do not leak between them). An infallible `vec!`
//! of that size aborts the whole test binary (SIGABRT through
//! `handle_alloc_error`), which is how these tests failed before the fix.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use gpa_types::MappingFlags;
use guest_aspace::{Access, AspaceError, FaultOutcome, GuestAddrSpace};
use npt_entry::ept::{Ept4, Ept5};
use npt_table::HostFrameAllocator;

thread_local! {
    /// Largest single allocation this thread may make.
    static MAX_ALLOC: Cell<usize> = const { Cell::new(usize::MAX) };
}

struct Limited;

// SAFETY: forwards to `System` unchanged, or returns null (which the
// `GlobalAlloc` contract allows for any request).
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > max_alloc() {
            return core::ptr::null_mut();
        }
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > max_alloc() {
            return core::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > max_alloc() {
            return core::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Limited = Limited;

/// The limit; `usize::MAX` while the thread-local is being torn down.
fn max_alloc() -> usize {
    MAX_ALLOC.try_with(Cell::get).unwrap_or(usize::MAX)
}

/// Runs `f` with single allocations above `bytes` refused.
fn with_limit<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    MAX_ALLOC.with(|m| m.set(bytes));
    let out = f();
    MAX_ALLOC.with(|m| m.set(usize::MAX));
    out
}

const KIB: usize = 1 << 10;

/// The reproduction: a 2^56-byte lazy region needs a 2 TiB dirty
/// bitmap. No limit is set: the host heap refuses it by itself.
#[test]
fn start_dirty_log_on_a_huge_lazy_region_is_no_memory() {
    let alloc = HostFrameAllocator::new();
    let mut s = GuestAddrSpace::<Ept5, _>::new(&alloc, window(0, 1 << 57)).unwrap();
    s.add_ram(gpa(0), 1 << 56, RW, true).unwrap().ignore();
    let before = snapshot(&s);
    // Also refused by the limit, so the test does not depend on the host's
    // overcommit policy.
    let r = with_limit(1 << 30, || s.start_dirty_log(gpa(0)).map(|f| f.ignore()));
    assert_eq!(r, Err(AspaceError::NoMemory));
    assert_eq!(snapshot(&s), before);
    assert!(!s.regions().next().unwrap().dirty_logging);
    // Still usable: a fault populates a page, writable (no logging).
    assert!(matches!(
        s.handle_fault(gpa(0x1000), Access::Write).unwrap(),
        FaultOutcome::Fixed(_)
    ));
    assert!(
        s.query(gpa(0x1000))
            .unwrap()
            .flags
            .contains(MappingFlags::WRITE)
    );
}

/// A 4 GiB region: 2^20 pages, a 128 KiB bitmap.
const BIG: usize = 4 << 30;
const BIG_START: usize = 1 << 32;

fn big_space(alloc: &HostFrameAllocator) -> GuestAddrSpace<Ept4, &HostFrameAllocator> {
    let mut s = GuestAddrSpace::new(alloc, window(0, 1 << 36)).unwrap();
    s.add_ram(gpa(BIG_START), BIG, RW, true).unwrap().ignore();
    s
}

#[test]
fn start_dirty_log_over_a_small_heap_is_no_memory_and_changes_nothing() {
    let alloc = HostFrameAllocator::new();
    let mut s = big_space(&alloc);
    // Two populated pages, so an early write-protect would show in `query`.
    s.write(gpa(BIG_START), &[1]).unwrap();
    s.write(gpa(BIG_START + 0x1000), &[2]).unwrap();
    let before = snapshot(&s);
    let r = with_limit(64 * KIB, || {
        s.start_dirty_log(gpa(BIG_START)).map(|f| f.ignore())
    });
    assert_eq!(r, Err(AspaceError::NoMemory));
    assert_eq!(snapshot(&s), before);
    assert!(
        s.query(gpa(BIG_START))
            .unwrap()
            .flags
            .contains(MappingFlags::WRITE)
    );
    // With room it works.
    s.start_dirty_log(gpa(BIG_START)).unwrap().ignore();
    assert!(
        !s.query(gpa(BIG_START))
            .unwrap()
            .flags
            .contains(MappingFlags::WRITE)
    );
}

#[test]
fn collect_dirty_needs_no_second_bitmap() {
    let alloc = HostFrameAllocator::new();
    let mut s = big_space(&alloc);
    s.start_dirty_log(gpa(BIG_START)).unwrap().ignore();
    s.write(gpa(BIG_START + 5 * 0x1000), &[1]).unwrap();
    let mut out = vec![0u64; (BIG / 0x1000).div_ceil(64)];
    // The bitmap is 128 KiB; allocating another would be refused.
    with_limit(64 * KIB, || {
        s.collect_dirty(gpa(BIG_START), &mut out)
            .map(|f| f.ignore())
    })
    .unwrap();
    assert_eq!(out[0], 1 << 5);
    assert!(out[1..].iter().all(|w| *w == 0));
}

#[test]
fn remove_range_split_of_a_logging_region_is_no_memory_and_changes_nothing() {
    let alloc = HostFrameAllocator::new();
    let mut s = big_space(&alloc);
    s.write(gpa(BIG_START + 0x1000), &[7]).unwrap();
    s.start_dirty_log(gpa(BIG_START)).unwrap().ignore();
    s.write(gpa(BIG_START + 0x3000), &[8]).unwrap();
    let before = snapshot(&s);
    // Cutting one page out of the middle leaves two logging pieces with
    // 64 KiB bitmaps each.
    let cut = BIG_START + BIG / 2;
    let r = with_limit(32 * KIB, || {
        s.remove_range(gpa(cut), 0x1000).map(|f| f.ignore())
    });
    assert_eq!(r, Err(AspaceError::NoMemory));
    assert_eq!(snapshot(&s), before);
    assert_eq!(s.read_u8(gpa(BIG_START + 0x1000)), Ok(7));
    // With room: two pieces, both logging, the dirty bit kept on the left.
    s.remove_range(gpa(cut), 0x1000).unwrap().ignore();
    let regions: Vec<_> = s.regions().collect();
    assert_eq!(regions.len(), 2);
    assert!(regions.iter().all(|r| r.dirty_logging));
    let mut out = vec![0u64; (BIG / 2 / 0x1000).div_ceil(64)];
    s.collect_dirty(gpa(BIG_START), &mut out).unwrap().ignore();
    assert_eq!(out[0], 1 << 3);
}

#[test]
fn stop_dirty_log_on_a_huge_identical_region_allocates_nothing_per_span() {
    let alloc = HostFrameAllocator::new();
    let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 40)).unwrap();
    // 4 GiB of pass-through: 2048 2 MiB spans and 4 1 GiB spans, which the
    // old code collected into a 32 KiB list (a region's size sets its length).
    s.add_identical(gpa(1 << 36), 4 << 30, RW).unwrap().ignore();
    s.start_dirty_log(gpa(1 << 36)).unwrap().ignore();
    with_limit(16 * KIB, || {
        s.stop_dirty_log(gpa(1 << 36)).map(|f| f.ignore())
    })
    .unwrap();
    assert!(!s.regions().next().unwrap().dirty_logging);
    assert!(
        s.query(gpa(1 << 36))
            .unwrap()
            .flags
            .contains(MappingFlags::WRITE)
    );
}

#[test]
fn host_write_over_many_lazy_pages_is_no_memory_and_changes_nothing() {
    let alloc = HostFrameAllocator::new();
    let s = big_space(&alloc);
    // 64 MiB over unpopulated lazy RAM: 16384 pages to populate, listed
    // first (a 128 KiB list) so nothing is written unless everything can be.
    let data = vec![0xa5u8; 64 << 20];
    let before = snapshot(&s);
    let r = with_limit(64 * KIB, || s.write(gpa(BIG_START), &data));
    assert_eq!(r, Err(AspaceError::NoMemory));
    assert_eq!(snapshot(&s), before);
    s.write(gpa(BIG_START), &data).unwrap();
    assert_eq!(s.read_u8(gpa(BIG_START + (64 << 20) - 1)), Ok(0xa5));
}

#[test]
fn translate_range_over_many_pieces_is_no_memory() {
    let alloc = HostFrameAllocator::new();
    let s = big_space(&alloc);
    // 4096 populated pages whose frames are not contiguous (every other
    // page), so the answer has thousands of pieces.
    for i in 0..4096 {
        s.write(gpa(BIG_START + 2 * i * 0x1000), &[1]).unwrap();
        s.write(gpa(BIG_START + (2 * i + 1) * 0x1000), &[1])
            .unwrap();
    }
    let full = s.translate_range(gpa(BIG_START), 8192 * 0x1000).unwrap();
    assert!(full.len() > 1024, "{} pieces", full.len());
    let r = with_limit(8 * KIB, || {
        s.translate_range(gpa(BIG_START), 8192 * 0x1000)
            .map(|v| v.len())
    });
    assert_eq!(r, Err(AspaceError::NoMemory));
}
