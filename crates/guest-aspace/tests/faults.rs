//! One test per fault outcome, plus the allocation each one makes (or not).

mod common;

use common::*;
use gpa_types::{MappingFlags, PageSize};
use guest_aspace::{Access, AspaceError, FaultOutcome, GuestAddrSpace, RegionKind};
use npt_entry::ept::Ept4;
use npt_entry::stage2::Stage2Ipa40;
use npt_table::{FailingAllocator, HostFrameAllocator};

const LAZY: usize = 0x4000_0000;
const ROM: usize = 0x100_0000;
const RAM_NX: usize = 0x8000_0000;
const MMIO: usize = 0x900_0000;

fn setup(alloc: &HostFrameAllocator) -> GuestAddrSpace<Ept4, &HostFrameAllocator> {
    let mut s = GuestAddrSpace::new(alloc, window(0, 1 << 36)).unwrap();
    s.add_ram(gpa(LAZY), 64 * K4, RWX, true).unwrap().ignore();
    s.add_rom(gpa(ROM), 4 * K4, false).unwrap().ignore();
    s.add_ram(gpa(RAM_NX), M2, RW, false).unwrap().ignore();
    s.add_mmio(gpa(MMIO), K4, None).unwrap().ignore();
    s
}

#[test]
fn lazy_first_touch_allocates_one_zeroed_frame() {
    let alloc = HostFrameAllocator::new();
    let s = setup(&alloc);
    // First touch in a fresh area also builds tables; afterwards only the
    // frame itself is allocated.
    assert!(matches!(
        s.handle_fault(gpa(LAZY), Access::Read).unwrap(),
        FaultOutcome::Fixed(_)
    ));
    for (page, access) in [(1, Access::Read), (2, Access::Write), (3, Access::Execute)] {
        let g = LAZY + page * K4 + 0x10;
        let live = alloc.live_frames();
        let populated = s.find_region(gpa(g)).unwrap().populated;
        let out = s.handle_fault(gpa(g), access).unwrap();
        assert!(matches!(out, FaultOutcome::Fixed(_)), "{out:?}");
        assert_eq!(
            alloc.live_frames(),
            live + 1,
            "{access:?}: exactly one frame"
        );
        assert_eq!(s.find_region(gpa(g)).unwrap().populated, populated + K4);
        let q = s.query(gpa(g)).unwrap();
        assert_eq!((q.page_size, q.kind), (PageSize::Size4K, RegionKind::Ram));
        assert!(q.flags.contains(RWX));
        assert!(
            guest_visible(&s, LAZY + page * K4, K4)
                .iter()
                .all(|&b| b == 0)
        );
        let mut buf = [0xffu8; K4];
        s.read(gpa(LAZY + page * K4), &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // The same page again: already there, nothing to flush, nothing allocated.
        for again in [Access::Read, Access::Write, Access::Execute] {
            let live = alloc.live_frames();
            let hpa = s.translate(gpa(g));
            match s.handle_fault(gpa(g + 8), again).unwrap() {
                FaultOutcome::Fixed(flush) => assert!(flush.is_empty(), "{flush:?}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(alloc.live_frames(), live);
            assert_eq!(s.translate(gpa(g)), hpa);
        }
    }
}

#[test]
fn fixed_on_eager_and_pass_through_is_a_stale_tlb() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    s.add_identical(gpa(0x6000_0000), M2, RW).unwrap().ignore();
    let live = alloc.live_frames();
    for g in [RAM_NX + 0x1234, 0x6000_0000 + 0x4321] {
        match s.handle_fault(gpa(g), Access::Write).unwrap() {
            FaultOutcome::Fixed(flush) => assert!(flush.is_empty()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(alloc.live_frames(), live);
}

#[test]
fn mmio_outcome_names_address_and_access() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let live = alloc.live_frames();
    for access in [Access::Read, Access::Write, Access::Execute] {
        let out = s.handle_fault(gpa(MMIO + 0x44), access).unwrap();
        assert_eq!(
            out,
            FaultOutcome::Mmio {
                gpa: gpa(MMIO + 0x44),
                access
            }
        );
    }
    assert_eq!(alloc.live_frames(), live);
    // Pass-through MMIO is mapped: reads and writes are stale-TLB fixes,
    // execute is a violation.
    s.add_mmio(gpa(0xa00_0000), K4, Some(hpa(0xfe00_0000)))
        .unwrap()
        .ignore();
    assert!(matches!(
        s.handle_fault(gpa(0xa00_0008), Access::Write).unwrap(),
        FaultOutcome::Fixed(_)
    ));
    assert_eq!(
        s.handle_fault(gpa(0xa00_0008), Access::Execute).unwrap(),
        FaultOutcome::Violation {
            gpa: gpa(0xa00_0008),
            access: Access::Execute,
            kind: RegionKind::Mmio
        }
    );
}

#[test]
fn violations_never_allocate() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    s.add_ram(gpa(0x5000_0000), 8 * K4, R, true)
        .unwrap()
        .ignore();
    s.add_ram(gpa(0x5100_0000), 8 * K4, RW, true)
        .unwrap()
        .ignore();
    let before = snapshot(&s);
    let live = alloc.live_frames();
    let cases = [
        (ROM + 0x10, Access::Write, RegionKind::Rom),
        (ROM + 0x10, Access::Execute, RegionKind::Rom),
        (RAM_NX + 0x3000, Access::Execute, RegionKind::Ram),
        // Lazy pages that were never touched: still no allocation.
        (0x5000_0000 + K4, Access::Write, RegionKind::Ram),
        (0x5000_0000 + K4, Access::Execute, RegionKind::Ram),
        (0x5100_0000 + 2 * K4, Access::Execute, RegionKind::Ram),
    ];
    for (g, access, kind) in cases {
        let out = s.handle_fault(gpa(g), access).unwrap();
        assert_eq!(
            out,
            FaultOutcome::Violation {
                gpa: gpa(g),
                access,
                kind
            }
        );
        assert_eq!(alloc.live_frames(), live, "{g:#x} {access:?}");
    }
    assert_eq!(snapshot(&s), before);
    // Reads of the read-only lazy RAM are fine and populate read-only.
    assert!(matches!(
        s.handle_fault(gpa(0x5000_0000), Access::Read).unwrap(),
        FaultOutcome::Fixed(_)
    ));
    let q = s.query(gpa(0x5000_0000)).unwrap();
    assert!(!q.flags.contains(MappingFlags::WRITE));
    // Reading the ROM is allowed (and it is mapped: nothing to do).
    assert!(matches!(
        s.handle_fault(gpa(ROM), Access::Read).unwrap(),
        FaultOutcome::Fixed(_)
    ));
}

#[test]
fn unmapped_outside_every_region() {
    let alloc = HostFrameAllocator::new();
    let s = setup(&alloc);
    let before = snapshot(&s);
    let live = alloc.live_frames();
    for g in [
        0,
        LAZY - 1,
        LAZY + 64 * K4,
        MMIO + K4,
        1 << 36,
        (1 << 48) + 5,
        usize::MAX,
    ] {
        for access in [Access::Read, Access::Write, Access::Execute] {
            assert_eq!(
                s.handle_fault(gpa(g), access).unwrap(),
                FaultOutcome::Unmapped { gpa: gpa(g) }
            );
        }
    }
    assert_eq!(snapshot(&s), before);
    assert_eq!(alloc.live_frames(), live);
}

#[test]
fn removed_lazy_page_faults_populate_again_from_zero() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let _ = s.handle_fault(gpa(LAZY + K4), Access::Write).unwrap();
    s.write_u64(gpa(LAZY + K4), 77).unwrap();
    // Cut the page out and put lazy RAM back there.
    {
        let f = s.remove_range(gpa(LAZY + K4), K4).unwrap();
        s.complete(f);
    };
    assert_eq!(
        s.handle_fault(gpa(LAZY + K4), Access::Read).unwrap(),
        FaultOutcome::Unmapped {
            gpa: gpa(LAZY + K4)
        }
    );
    s.add_ram(gpa(LAZY + K4), K4, RW, true).unwrap().ignore();
    assert!(matches!(
        s.handle_fault(gpa(LAZY + K4), Access::Read).unwrap(),
        FaultOutcome::Fixed(_)
    ));
    assert_eq!(s.read_u64(gpa(LAZY + K4)).unwrap(), 0);
}

#[test]
fn lazy_fault_out_of_memory_changes_nothing() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    {
        let mut s = GuestAddrSpace::<Stage2Ipa40, _>::new(&alloc, window(0, 1 << 40)).unwrap();
        let g = gpa(0x5000_0000);
        s.add_ram(g, 16 * K4, RW, true).unwrap().ignore();
        let before = snapshot(&s);
        let live = alloc.inner().live_frames();
        alloc.heal();
        let _ = s.handle_fault(g, Access::Read).unwrap();
        let needed = alloc.attempts();
        assert!(needed >= 2, "frame plus tables: {needed}");
        {
            let f = s.remove_range(g, 16 * K4).unwrap();
            s.complete(f);
        };
        s.add_ram(g, 16 * K4, RW, true).unwrap().ignore();
        assert_eq!(snapshot(&s), before, "the removal pruned the tables again");
        assert_eq!(alloc.inner().live_frames(), live);
        for k in 1..=needed {
            alloc.fail_from(k);
            assert_eq!(
                s.handle_fault(g, Access::Write),
                Err(AspaceError::NoMemory),
                "attempt {k}"
            );
            assert_eq!(snapshot(&s), before, "attempt {k}");
            assert_eq!(alloc.inner().live_frames(), live, "attempt {k}");
            assert_eq!(s.translate(g), None);
        }
        alloc.heal();
        assert!(matches!(
            s.handle_fault(g, Access::Write).unwrap(),
            FaultOutcome::Fixed(_)
        ));
    }
    assert_eq!(alloc.inner().live_frames(), 0);
}
