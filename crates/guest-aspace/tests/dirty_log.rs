//! Dirty logging: splitting, write protection, marking, collecting, stopping.

mod common;

use common::*;
use gpa_types::{MappingFlags, PageSize};
use guest_aspace::{Access, AspaceError, FaultOutcome, GuestAddrSpace};
use npt_entry::ept::Ept4;
use npt_table::HostFrameAllocator;

type Space<'a> = GuestAddrSpace<Ept4, &'a HostFrameAllocator>;

const RAM: usize = 0x4000_0000;
const PAGES: usize = 2 * M2 / K4; // 1024

fn setup(alloc: &HostFrameAllocator) -> Space<'_> {
    let mut s = GuestAddrSpace::new(alloc, window(0, 1 << 36)).unwrap();
    s.add_ram(gpa(RAM), 2 * M2, RW, false).unwrap().ignore();
    s
}

fn leaves(s: &Space<'_>) -> (usize, usize) {
    let st = s.table_stats();
    (
        st.leaves_of(PageSize::Size4K),
        st.leaves_of(PageSize::Size2M),
    )
}

fn writable(s: &Space<'_>, g: usize) -> bool {
    s.query(gpa(g)).unwrap().flags.contains(MappingFlags::WRITE)
}

fn collect(s: &mut Space<'_>, g: usize, pages: usize) -> Vec<usize> {
    let mut out = vec![0u64; pages.div_ceil(64)];
    s.collect_dirty(gpa(g), &mut out).unwrap().ignore();
    let mut set = Vec::new();
    for (w, word) in out.iter().enumerate() {
        for b in 0..64 {
            if word & (1 << b) != 0 {
                set.push(w * 64 + b);
            }
        }
    }
    set
}

fn fixed(out: FaultOutcome) -> npt_table::TlbFlush {
    match out {
        FaultOutcome::Fixed(f) => f,
        other => panic!("expected Fixed, got {other:?}"),
    }
}

#[test]
fn full_cycle_on_2m_backed_ram() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = setup(&alloc);
        assert_eq!(leaves(&s), (0, 2));
        let flush = s.start_dirty_log(gpa(RAM)).unwrap();
        assert!(!flush.is_empty());
        assert_eq!(leaves(&s), (PAGES, 0), "huge leaves split to 4 KiB");
        assert!(s.find_region(gpa(RAM)).unwrap().dirty_logging);
        assert!((0..PAGES).step_by(97).all(|p| !writable(&s, RAM + p * K4)));
        // Guest write fault: marks exactly that page and makes it writable.
        let g = RAM + 700 * K4 + 0x10;
        let flush = fixed(s.handle_fault(gpa(g), Access::Write).unwrap());
        assert!(!flush.is_empty());
        assert!(writable(&s, g));
        assert!(!writable(&s, g + K4) && !writable(&s, g - K4));
        // Reads are fine as they are.
        assert!(fixed(s.handle_fault(gpa(RAM + 3 * K4), Access::Read).unwrap()).is_empty());
        // Host writes are marked too (no stage-2 bit sees them).
        s.write(gpa(RAM + 5 * K4 - 2), &[1, 2, 3, 4]).unwrap(); // pages 4 and 5
        s.write_u8(gpa(RAM + (PAGES - 1) * K4), 9).unwrap();
        assert_eq!(collect(&mut s, RAM, PAGES), vec![4, 5, 700, PAGES - 1]);
        assert_eq!(
            collect(&mut s, RAM, PAGES),
            Vec::<usize>::new(),
            "collect clears"
        );
        // The collected page is write-protected again: the next write faults.
        assert!(!writable(&s, g));
        let flush = fixed(s.handle_fault(gpa(g), Access::Write).unwrap());
        assert!(!flush.is_empty());
        assert!(writable(&s, g));
        assert_eq!(collect(&mut s, RAM, PAGES), vec![700]);
        // Stop: writable everywhere and back to 2 MiB leaves.
        let _ = s.stop_dirty_log(gpa(RAM)).unwrap();
        assert!(!s.find_region(gpa(RAM)).unwrap().dirty_logging);
        assert_eq!(leaves(&s), (0, 2));
        assert!(writable(&s, RAM) && writable(&s, RAM + M2 + 5 * K4));
        assert_eq!(
            s.read_u16(gpa(RAM + 5 * K4 - 1)).unwrap(),
            u16::from_le_bytes([2, 3])
        );
        // Logging again works.
        s.start_dirty_log(gpa(RAM)).unwrap().ignore();
        assert_eq!(leaves(&s), (PAGES, 0));
        {
            let f = s.stop_dirty_log(gpa(RAM)).unwrap();
            s.complete(f);
        };
        assert_eq!(leaves(&s), (0, 2));
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn lazy_ram_logging() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let lazy = 0x5000_0000;
    s.add_ram(gpa(lazy), 128 * K4, RW, true).unwrap().ignore();
    let _ = s.handle_fault(gpa(lazy), Access::Write).unwrap();
    s.start_dirty_log(gpa(lazy)).unwrap().ignore();
    assert!(!writable(&s, lazy));
    // A read fault on a fresh page populates it read-only, not dirty.
    let _ = fixed(s.handle_fault(gpa(lazy + 10 * K4), Access::Read).unwrap());
    assert!(!writable(&s, lazy + 10 * K4));
    // A write fault on a fresh page populates it writable and dirty.
    let _ = fixed(s.handle_fault(gpa(lazy + 11 * K4), Access::Write).unwrap());
    assert!(writable(&s, lazy + 11 * K4));
    // A host write populates read-only but marks.
    s.write_u32(gpa(lazy + 100 * K4), 1).unwrap();
    assert!(!writable(&s, lazy + 100 * K4));
    // A write fault on the read-only page marks it.
    let _ = fixed(
        s.handle_fault(gpa(lazy + 10 * K4 + 5), Access::Write)
            .unwrap(),
    );
    assert_eq!(collect(&mut s, lazy, 128), vec![10, 11, 100]);
    assert!(!writable(&s, lazy + 11 * K4));
    {
        let f = s.stop_dirty_log(gpa(lazy)).unwrap();
        s.complete(f);
    };
    for p in [0, 10, 11, 100] {
        assert!(writable(&s, lazy + p * K4), "page {p}");
    }
    assert_eq!(s.read_u32(gpa(lazy + 100 * K4)).unwrap(), 1);
}

#[test]
fn identical_pass_through_collapses_back() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let base = 0x8000_0000;
    s.add_identical(gpa(base), 2 * M2 + K4, RW)
        .unwrap()
        .ignore();
    assert_eq!(leaves(&s), (1, 4));
    s.start_dirty_log(gpa(base)).unwrap().ignore();
    assert_eq!(leaves(&s), (1 + PAGES, 2));
    let _ = fixed(s.handle_fault(gpa(base + M2), Access::Write).unwrap());
    assert_eq!(collect(&mut s, base, PAGES + 1), vec![M2 / K4]);
    {
        let f = s.stop_dirty_log(gpa(base)).unwrap();
        s.complete(f);
    };
    assert_eq!(leaves(&s), (1, 4));
    assert_eq!(s.translate(gpa(base + M2 + 3)), Some(hpa(base + M2 + 3)));
    assert!(writable(&s, base + M2 + K4));
}

#[test]
fn wrong_states_are_refused() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    s.add_mmio(gpa(0x900_0000), K4, None).unwrap().ignore();
    s.add_rom(gpa(0x100_0000), K4, false).unwrap().ignore();
    s.add_ram(gpa(0x200_0000), K4, R, false).unwrap().ignore();
    let mut out = [0u64; PAGES / 64 - 1];
    for g in [0x900_0000, 0x100_0000, 0x200_0000] {
        assert_eq!(
            s.start_dirty_log(gpa(g)),
            Err(AspaceError::WrongRegionState { gpa: gpa(g) })
        );
    }
    assert_eq!(
        s.stop_dirty_log(gpa(RAM)),
        Err(AspaceError::WrongRegionState { gpa: gpa(RAM) })
    );
    assert_eq!(
        s.collect_dirty(gpa(RAM), &mut out),
        Err(AspaceError::WrongRegionState { gpa: gpa(RAM) })
    );
    // Logging is per region, named by any address inside it.
    let nowhere = gpa(0x7000_0000_0000);
    assert_eq!(
        s.start_dirty_log(nowhere),
        Err(AspaceError::NoRegion { gpa: nowhere })
    );
    let before = snapshot(&s);
    s.start_dirty_log(gpa(RAM + K4)).unwrap().ignore();
    assert_eq!(
        s.start_dirty_log(gpa(RAM)),
        Err(AspaceError::WrongRegionState { gpa: gpa(RAM) })
    );
    // A bitmap too small for the region is refused.
    assert_eq!(
        s.collect_dirty(gpa(RAM), &mut out),
        Err(AspaceError::BufferTooSmall {
            needed: PAGES / 64,
            given: PAGES / 64 - 1
        })
    );
    {
        let f = s.stop_dirty_log(gpa(RAM)).unwrap();
        s.complete(f);
    };
    assert_eq!(snapshot(&s), before);
}

#[test]
fn partial_removal_keeps_dirty_bits_of_the_right_piece() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let lazy = 0x5000_0000;
    s.add_ram(gpa(lazy), 8 * K4, RW, true).unwrap().ignore();
    s.start_dirty_log(gpa(lazy)).unwrap().ignore();
    let _ = s.handle_fault(gpa(lazy + 6 * K4), Access::Write).unwrap(); // page 6 dirty
    s.write_u8(gpa(lazy + K4), 1).unwrap(); // page 1 dirty
    // Cut pages 2..4: left = pages 0-1, right = pages 4-7 (page 6 is its page 2).
    {
        let f = s.remove_range(gpa(lazy + 2 * K4), 2 * K4).unwrap();
        s.complete(f);
    };
    assert_eq!(
        collect(&mut s, lazy + 4 * K4, 4),
        vec![2],
        "page 6 was dirtied and never collected"
    );
}

#[test]
fn partial_removal_drops_dirty_bits_past_the_left_piece() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let lazy = 0x5000_0000;
    s.add_ram(gpa(lazy), 8 * K4, RW, true).unwrap().ignore();
    s.start_dirty_log(gpa(lazy)).unwrap().ignore();
    let _ = s.handle_fault(gpa(lazy + 3 * K4), Access::Write).unwrap(); // page 3 dirty
    // Keep only pages 0-1.
    {
        let f = s.remove_range(gpa(lazy + 2 * K4), 6 * K4).unwrap();
        s.complete(f);
    };
    // New RAM (not logging) where the dirty page used to be.
    s.add_ram(gpa(lazy + 2 * K4), 6 * K4, RW, false)
        .unwrap()
        .ignore();
    assert!(writable(&s, lazy + 3 * K4));
    let mut out = [0u64; 1];
    s.collect_dirty(gpa(lazy), &mut out).unwrap().ignore();
    let protected_foreign_page = !writable(&s, lazy + 3 * K4);
    // Consequence: a guest write to the new region faults, and the fault
    // handler answers Fixed without making the page writable: the vCPU
    // would fault forever.
    let _ = s.handle_fault(gpa(lazy + 3 * K4), Access::Write).unwrap();
    let still_read_only = !writable(&s, lazy + 3 * K4);
    // (bitmap of the 2-page left piece, foreign page write-protected by
    // collect, foreign page still read-only after its write fault)
    assert_eq!(
        (out[0], protected_foreign_page, still_read_only),
        (0, false, false)
    );
}

#[test]
fn collect_reports_only_pages_of_the_region() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let lazy = 0x5000_0000;
    s.add_ram(gpa(lazy), 70 * K4, RW, true).unwrap().ignore();
    s.start_dirty_log(gpa(lazy)).unwrap().ignore();
    s.write_u8(gpa(lazy + 69 * K4), 1).unwrap();
    s.write_u8(gpa(lazy), 1).unwrap();
    let mut out = [0u64; 2];
    s.collect_dirty(gpa(lazy), &mut out).unwrap().ignore();
    assert_eq!(out, [1, 1 << 5]);
}

#[test]
fn collect_into_a_larger_buffer_clears_the_rest() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let lazy = 0x5000_0000;
    s.add_ram(gpa(lazy), 8 * K4, RW, true).unwrap().ignore();
    s.start_dirty_log(gpa(lazy)).unwrap().ignore();
    let mut out = [u64::MAX; 4];
    s.collect_dirty(gpa(lazy), &mut out).unwrap().ignore();
    assert_eq!(out, [0; 4]);
}

#[test]
fn mmio_pass_through_refuses_dirty_logging() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let (base, dev) = (0x8000_0000, 0xfe00_0000);
    s.add_mmio(gpa(base), M2, Some(hpa(dev))).unwrap().ignore();
    assert_eq!(leaves(&s), (0, 3));
    let e = s.start_dirty_log(gpa(base)).unwrap_err();
    assert_eq!(e, AspaceError::WrongRegionState { gpa: gpa(base) });
    assert_eq!(
        leaves(&s),
        (0, 3),
        "the device window keeps its 2 MiB leaves"
    );
}

#[test]
fn linear_aligned_collapses_back() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let (base, host) = (0x8000_0000, 0x2_0000_0000);
    s.add_linear(gpa(base), hpa(host), M2, RW).unwrap().ignore();
    s.start_dirty_log(gpa(base)).unwrap().ignore();
    assert_eq!(leaves(&s), (512, 2));
    {
        let f = s.stop_dirty_log(gpa(base)).unwrap();
        s.complete(f);
    };
    assert_eq!(leaves(&s), (0, 3));
    assert_eq!(s.translate(gpa(base + 0x1234)), Some(hpa(host + 0x1234)));
}
