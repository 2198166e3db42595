//! The axaddrspace-style calls: `protect_range`, `translate_and_get_limit`,
//! `covers_range` / `window_contains_range`, and `Access` from flags.

mod common;

use common::*;
use gpa_types::{MappingFlags, PageSize};
use guest_aspace::{
    Access, AspaceError, Backing, FaultOutcome, GuestAddrSpace, RegionKind, SharedAddrSpace,
};
use npt_entry::ept::Ept4;
use npt_table::{FailingAllocator, HostFrameAllocator, NptError};

type Space<'a> = GuestAddrSpace<Ept4, &'a HostFrameAllocator>;

fn space(alloc: &HostFrameAllocator) -> Space<'_> {
    GuestAddrSpace::new(alloc, window(0, 1 << 47)).unwrap()
}

fn flags_at<F: npt_entry::NptFormat, A: npt_table::FrameAllocator>(
    s: &GuestAddrSpace<F, A>,
    at: usize,
) -> MappingFlags {
    s.query(gpa(at)).unwrap().flags
}

#[test]
fn protect_a_page_inside_pass_through_splits_leaf_and_region() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        let (g, h) = (0x4000_0000, 0x1_0000_0000);
        s.add_linear(gpa(g), hpa(h), 2 * M2, RW).unwrap().ignore();
        assert_eq!(s.query(gpa(g + K4)).unwrap().page_size, PageSize::Size2M);
        let flush = s.protect_range(gpa(g + K4), K4, R).unwrap();
        assert!(!flush.is_empty());
        flush.ignore();
        assert_eq!(flags_at(&s, g + K4), R);
        assert_eq!(flags_at(&s, g), RW);
        assert_eq!(flags_at(&s, g + 2 * K4), RW);
        assert_eq!(flags_at(&s, g + M2), RW);
        // Translations are unchanged; the region is now three.
        for off in [0, K4 + 5, 2 * K4, M2 + 7] {
            assert_eq!(s.translate(gpa(g + off)), Some(hpa(h + off)));
        }
        let regions: Vec<_> = s.regions().collect();
        assert_eq!(regions.len(), 3);
        assert_eq!(regions[1].range, window(g + K4, K4));
        assert_eq!(regions[1].flags, R);
        assert_eq!(
            regions[2].backing,
            Backing::Linear {
                hpa: hpa(h + 2 * K4)
            }
        );
        assert_eq!(regions[2].flags, RW);
        assert_eq!(
            s.handle_fault(gpa(g + K4), Access::Write).unwrap(),
            FaultOutcome::Violation {
                gpa: gpa(g + K4),
                access: Access::Write,
                kind: RegionKind::Linear
            }
        );
        // Back to RW over all three at once.
        s.protect_range(gpa(g), 2 * M2, RW).unwrap().ignore();
        assert_eq!(flags_at(&s, g + K4), RW);
        assert!(s.regions().all(|r| r.flags == RW));
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn protect_lazy_ram_applies_to_later_faults() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        let g = 0x8000_0000;
        s.add_ram(gpa(g), 16 * K4, RW, true).unwrap().ignore();
        // One page populated, the rest not.
        assert!(matches!(
            s.handle_fault(gpa(g), Access::Write).unwrap(),
            FaultOutcome::Fixed(_)
        ));
        s.protect_range(gpa(g), 8 * K4, R).unwrap().ignore();
        assert_eq!(flags_at(&s, g), R);
        assert!(matches!(
            s.handle_fault(gpa(g + 3 * K4), Access::Write).unwrap(),
            FaultOutcome::Violation { .. }
        ));
        match s.handle_fault(gpa(g + 3 * K4), Access::Read).unwrap() {
            FaultOutcome::Fixed(f) => f.ignore(),
            other => panic!("{other:?}"),
        }
        assert_eq!(flags_at(&s, g + 3 * K4), R);
        match s.handle_fault(gpa(g + 8 * K4), Access::Write).unwrap() {
            FaultOutcome::Fixed(f) => f.ignore(),
            other => panic!("{other:?}"),
        }
        assert_eq!(flags_at(&s, g + 8 * K4), RW);
        // Nothing populated in the range: only the records change.
        let flush = s.protect_range(gpa(g + 12 * K4), 4 * K4, RX).unwrap();
        assert!(flush.is_empty());
        assert_eq!(s.find_region(gpa(g + 12 * K4)).unwrap().flags, RX);
        assert_eq!(s.regions().count(), 3);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn protect_keeps_owned_chunks_whole() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        let g = 0x8000_0000;
        s.add_ram(gpa(g), 2 * M2, RWX, false).unwrap().ignore();
        assert_eq!(
            s.protect_range(gpa(g + K4), K4, R),
            Err(AspaceError::CutsBacking { gpa: gpa(g + K4) })
        );
        // A whole chunk can be protected.
        s.protect_range(gpa(g + M2), M2, RX).unwrap().ignore();
        assert_eq!(flags_at(&s, g + M2), RX);
        assert_eq!(s.query(gpa(g + M2)).unwrap().page_size, PageSize::Size2M);
        assert_eq!(flags_at(&s, g), RWX);
        assert_eq!(s.regions().count(), 2);
        // Allocated identical memory is one allocation: whole or nothing.
        let (at, f) = s.add_identical_alloc(4 * K4, RW).unwrap();
        f.ignore();
        assert_eq!(
            s.protect_range(at, K4, R),
            Err(AspaceError::CutsBacking {
                gpa: gpa(at.as_usize() + K4)
            })
        );
        s.protect_range(at, 4 * K4, R).unwrap().ignore();
        assert_eq!(
            s.translate_and_get_limit(at),
            Some((hpa(at.as_usize()), 4 * K4))
        );
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn protect_refusals_change_nothing() {
    let alloc = HostFrameAllocator::new();
    let mut s = space(&alloc);
    s.add_ram(gpa(0x10_0000), 8 * K4, RW, false)
        .unwrap()
        .ignore();
    s.add_rom(gpa(0x20_0000), 4 * K4, true).unwrap().ignore();
    s.add_mmio(gpa(0x20_4000), K4, None).unwrap().ignore();
    s.add_ram(gpa(0x30_0000), 4 * K4, RW, false)
        .unwrap()
        .ignore();
    s.start_dirty_log(gpa(0x30_0000)).unwrap().ignore();
    let before = snapshot(&s);
    let cases = [
        (0x10_0000, 0, R, AspaceError::ZeroSize),
        (
            0x10_0800,
            K4,
            R,
            AspaceError::NotAligned {
                value: 0x10_0800,
                align: K4,
            },
        ),
        (
            0x10_0000,
            9 * K4,
            R,
            AspaceError::NoRegion {
                gpa: gpa(0x10_8000),
            },
        ),
        (
            0x10_0000,
            K4,
            MappingFlags::WRITE,
            AspaceError::Table(NptError::BadFlags(MappingFlags::WRITE)),
        ),
        (
            0x20_0000,
            K4,
            RW,
            AspaceError::WrongRegionState {
                gpa: gpa(0x20_0000),
            },
        ),
        // ROM and MMIO together: different memory types.
        (
            0x20_0000,
            5 * K4,
            R,
            AspaceError::WrongRegionState {
                gpa: gpa(0x20_4000),
            },
        ),
        (
            0x30_0000,
            K4,
            R,
            AspaceError::WrongRegionState {
                gpa: gpa(0x30_0000),
            },
        ),
    ];
    for (at, len, flags, want) in cases {
        assert_eq!(
            s.protect_range(gpa(at), len, flags),
            Err(want),
            "{at:#x}+{len:#x}"
        );
        assert_eq!(snapshot(&s), before);
    }
}

#[test]
fn protect_out_of_frames_changes_nothing() {
    let heap = HostFrameAllocator::new();
    {
        let alloc = FailingAllocator::new(&heap);
        let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 36)).unwrap();
        s.add_identical(gpa(0x4000_0000), M2, RW).unwrap().ignore();
        let before = snapshot(&s);
        alloc.fail_from(1);
        assert_eq!(
            s.protect_range(gpa(0x4000_1000), K4, R),
            Err(AspaceError::NoMemory)
        );
        assert_eq!(snapshot(&s), before);
        assert_eq!(flags_at(&s, 0x4000_1000), RW);
    }
    assert_eq!(heap.live_frames(), 0);
}

#[test]
fn mmio_protect_keeps_device() {
    let alloc = HostFrameAllocator::new();
    let mut s = space(&alloc);
    s.add_mmio(gpa(0x900_0000), 2 * K4, None).unwrap().ignore();
    s.add_mmio(gpa(0xa00_0000), M2, Some(hpa(0xfe00_0000)))
        .unwrap()
        .ignore();
    assert!(s.protect_range(gpa(0x900_0000), K4, R).unwrap().is_empty());
    assert_eq!(
        s.find_region(gpa(0x900_0000)).unwrap().flags,
        R | MappingFlags::DEVICE
    );
    assert_eq!(
        s.handle_fault(gpa(0x900_0010), Access::Write).unwrap(),
        FaultOutcome::Violation {
            gpa: gpa(0x900_0010),
            access: Access::Write,
            kind: RegionKind::Mmio
        }
    );
    assert!(matches!(
        s.handle_fault(gpa(0x900_1010), Access::Write).unwrap(),
        FaultOutcome::Mmio { .. }
    ));
    s.protect_range(gpa(0xa00_0000), M2, R).unwrap().ignore();
    assert_eq!(flags_at(&s, 0xa00_0000), R | MappingFlags::DEVICE);
}

#[test]
fn translate_and_get_limit_follows_host_contiguity() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        s.add_linear(gpa(0x4000_0000), hpa(0x2_0000_0000), 3 * M2, RW)
            .unwrap()
            .ignore();
        s.add_identical(gpa(0x5000_0000), M2 + K4, RW)
            .unwrap()
            .ignore();
        s.add_ram(gpa(0x8000_0000), M2 + 8 * K4, RW, false)
            .unwrap()
            .ignore();
        s.add_ram(gpa(0x9000_0000), 4 * K4, RW, true)
            .unwrap()
            .ignore();
        s.add_mmio(gpa(0x900_0000), K4, None).unwrap().ignore();
        assert_eq!(
            s.translate_and_get_limit(gpa(0x4000_1234)),
            Some((hpa(0x2_0000_1234), 3 * M2 - 0x1234))
        );
        assert_eq!(
            s.translate_and_get_limit(gpa(0x5000_0008)),
            Some((hpa(0x5000_0008), M2 + K4 - 8))
        );
        // RAM: what translate_range says the first host piece is.
        for at in [0x8000_0000, 0x8010_0010, 0x8020_0000, 0x8020_3008] {
            let end = 0x8000_0000 + M2 + 8 * K4;
            let first = s.translate_range(gpa(at), end - at).unwrap()[0];
            assert_eq!(
                s.translate_and_get_limit(gpa(at)),
                Some((first.hpa, first.len)),
                "{at:#x}"
            );
        }
        // A 2 MiB chunk is contiguous to its end at least.
        let (_, limit) = s.translate_and_get_limit(gpa(0x8000_0000)).unwrap();
        assert!(limit >= M2);
        // Nothing mapped: no answer.
        assert_eq!(s.translate_and_get_limit(gpa(0x9000_0000)), None);
        assert_eq!(s.translate_and_get_limit(gpa(0x900_0000)), None);
        assert_eq!(s.translate_and_get_limit(gpa(0x7000_0000)), None);
        // A populated lazy page stops at the region's end at most.
        match s.handle_fault(gpa(0x9000_3000), Access::Read).unwrap() {
            FaultOutcome::Fixed(f) => f.ignore(),
            other => panic!("{other:?}"),
        }
        let h = s.translate(gpa(0x9000_3010)).unwrap();
        assert_eq!(
            s.translate_and_get_limit(gpa(0x9000_3010)),
            Some((h, K4 - 0x10))
        );
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn covers_range_is_regions_window_contains_range_is_the_window() {
    let alloc = HostFrameAllocator::new();
    let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0x1000_0000, 0x1000_0000)).unwrap();
    s.add_ram(gpa(0x1000_0000), 2 * K4, RW, true)
        .unwrap()
        .ignore();
    s.add_mmio(gpa(0x1000_2000), K4, None).unwrap().ignore();
    assert!(s.covers_range(gpa(0x1000_0000), 3 * K4));
    assert!(!s.covers_range(gpa(0x1000_0000), 4 * K4));
    assert!(s.window_contains_range(gpa(0x1000_0000), 4 * K4));
    assert!(s.window_contains_range(gpa(0x1000_0000), 0x1000_0000));
    assert!(!s.window_contains_range(gpa(0x1000_0000), 0x1000_0001));
    assert!(!s.window_contains_range(gpa(0xfff_f000), K4));
    assert!(!s.window_contains_range(gpa(usize::MAX), 2));
    assert!(s.window_contains_range(gpa(0x2000_0000), 0));
    let shared = SharedAddrSpace::new(s);
    assert!(shared.covers_range(gpa(0x1000_1000), 2 * K4));
    assert!(shared.window_contains_range(gpa(0x1800_0000), K4));
    assert_eq!(shared.translate_and_get_limit(gpa(0x1000_0000)), None);
    shared
        .protect_range(gpa(0x1000_0000), K4, R)
        .unwrap()
        .ignore();
    assert_eq!(
        shared.read().find_region(gpa(0x1000_0000)).unwrap().flags,
        R
    );
}

#[test]
fn access_from_mapping_flags() {
    let x = MappingFlags::EXECUTE;
    let cases = [
        (R, Ok(Access::Read)),
        (MappingFlags::WRITE, Ok(Access::Write)),
        (RW, Ok(Access::Write)),
        (x, Ok(Access::Execute)),
        (RX, Ok(Access::Execute)),
        (R | MappingFlags::USER, Ok(Access::Read)),
        (
            MappingFlags::USER,
            Err(AspaceError::Table(NptError::BadFlags(MappingFlags::USER))),
        ),
        (
            MappingFlags::empty(),
            Err(AspaceError::Table(
                NptError::BadFlags(MappingFlags::empty()),
            )),
        ),
    ];
    for (flags, want) in cases {
        assert_eq!(Access::try_from(flags), want, "{flags:?}");
    }
    for access in [Access::Read, Access::Write, Access::Execute] {
        let flags = MappingFlags::from(access);
        assert_eq!(flags, access.needs());
        assert_eq!(Access::try_from(flags), Ok(access));
    }
}
