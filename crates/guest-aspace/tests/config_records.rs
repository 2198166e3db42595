//! Building a space from AxVisor-style `[base, size, flags, map_type]` records.

mod common;

use common::*;
use gpa_types::{ConfigError, ConfigField, MappingFlags, PageSize};
use guest_aspace::{
    AspaceError, Backing, ConfigOptions, GuestAddrSpace, PlacementError, RegionKind,
};
use npt_entry::ept::Ept4;
use npt_table::HostFrameAllocator;

type Space<'a> = GuestAddrSpace<Ept4, &'a HostFrameAllocator>;

fn build<'a>(
    alloc: &'a HostFrameAllocator,
    records: &[[u64; 4]],
    options: ConfigOptions,
) -> Result<Space<'a>, AspaceError> {
    Space::from_config(alloc, window(0, 1 << 47), records, options).map(|(s, f)| {
        f.ignore();
        s
    })
}

const GOOD: [[u64; 4]; 5] = [
    [0x8000_0000, 0x40_0000, 0x7, 0], // RAM rwx, 4 MiB
    [0x4000_0000, 0x20_0000, 0x3, 1], // identical pass-through
    [0x4100_0000, 0x1000, 0x3, 2],    // reserved
    [0x0900_0000, 0x1000, 0x3, 3],    // MMIO
    [0x0010_0000, 0x4000, 0x5, 4],    // ROM r-x
];

#[test]
fn one_of_each_map_type() {
    let alloc = HostFrameAllocator::new();
    {
        let s = build(&alloc, &GOOD, ConfigOptions::default()).unwrap();
        let regions: Vec<_> = s.regions().collect();
        assert_eq!(regions.len(), 5);
        let by_start = |g: usize| s.find_region(gpa(g)).unwrap();
        assert_eq!(
            by_start(0x8000_0000).backing,
            Backing::Alloc { lazy: false }
        );
        assert_eq!(by_start(0x8000_0000).flags, RWX);
        assert_eq!(by_start(0x8000_0000).populated, 0x40_0000);
        assert_eq!(by_start(0x4000_0000).backing, Backing::Identical);
        assert_eq!(by_start(0x4100_0000).backing, Backing::Identical);
        assert_eq!(
            by_start(0x0900_0000).backing,
            Backing::Mmio { passthrough: None }
        );
        assert_eq!(by_start(0x0010_0000).backing, Backing::Rom);
        assert_eq!(by_start(0x0010_0000).flags, RX);
        assert_eq!(
            s.query(gpa(0x8000_0000)).unwrap().page_size,
            PageSize::Size2M
        );
        assert_eq!(s.translate(gpa(0x4000_1234)), Some(hpa(0x4000_1234)));
        assert_eq!(s.query(gpa(0x10_0000)).unwrap().kind, RegionKind::Rom);
        assert_eq!(s.translate(gpa(0x900_0000)), None);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn options_lazy_and_allocating_identical() {
    let alloc = HostFrameAllocator::new();
    {
        let options = ConfigOptions {
            lazy_alloc: true,
            allocate_identical: true,
        };
        let s = build(&alloc, &GOOD, options).unwrap();
        assert_eq!(
            s.find_region(gpa(0x8000_0000)).unwrap().backing,
            Backing::Alloc { lazy: true }
        );
        assert_eq!(s.translate(gpa(0x8000_0000)), None);
        // MAP_IDENTICAL moved to where its memory is; MAP_RESERVED stays.
        assert!(s.find_region(gpa(0x4000_0000)).is_none());
        let moved: Vec<_> = s
            .regions()
            .filter(|r| r.backing == Backing::AllocIdentical)
            .collect();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].range.size(), 0x20_0000);
        let g = moved[0].range.start;
        assert_eq!(s.translate(g), Some(hpa(g.as_usize())));
        assert_eq!(
            s.find_region(gpa(0x4100_0000)).unwrap().backing,
            Backing::Identical
        );
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn invalid_records_name_index_and_field() {
    let alloc = HostFrameAllocator::new();
    let cases: [([u64; 4], ConfigError); 7] = [
        ([0x1000, 0, 0x3, 0], ConfigError::ZeroSize),
        (
            [0x1001, 0x1000, 0x3, 0],
            ConfigError::NotAligned {
                field: ConfigField::Base,
                value: 0x1001,
            },
        ),
        (
            [0x1000, 0x1800, 0x3, 0],
            ConfigError::NotAligned {
                field: ConfigField::Size,
                value: 0x1800,
            },
        ),
        (
            [0xffff_ffff_ffff_f000, 0x2000, 0x3, 0],
            ConfigError::Overflow {
                base: 0xffff_ffff_ffff_f000,
                size: 0x2000,
            },
        ),
        (
            [0x1000, 0x1000, 0x3 | 0x400, 0],
            ConfigError::UnknownFlags {
                value: 0x403,
                unknown: 0x400,
            },
        ),
        (
            [0x1000, 0x1000, 0x3, 5],
            ConfigError::UnknownMapType { value: 5 },
        ),
        (
            [0x1000, 0x1000, 0x3, u64::MAX],
            ConfigError::UnknownMapType { value: u64::MAX },
        ),
    ];
    for (bad, error) in cases {
        for at in [0, 2, 5] {
            let mut records = GOOD.to_vec();
            records.insert(at, bad);
            let e = build(&alloc, &records, ConfigOptions::default()).unwrap_err();
            assert_eq!(
                e,
                AspaceError::Config { index: at, error },
                "{bad:x?} at {at}"
            );
            if let AspaceError::Config { error, .. } = e {
                let field = error.field();
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!("memory_regions[{at}]: {field}")),
                    "{text}"
                );
            }
            assert_eq!(
                alloc.live_frames(),
                0,
                "nothing leaks when a later record fails"
            );
        }
    }
}

#[test]
fn unplaceable_records_name_index_and_field() {
    let alloc = HostFrameAllocator::new();
    let window_end = 1u64 << 47;
    let cases: [([u64; 4], ConfigField, PlacementError); 5] = [
        // Overlaps the RAM record (index 0).
        (
            [0x8020_0000, 0x1000, 0x3, 3],
            ConfigField::Base,
            PlacementError::Overlap(gpa(0x8000_0000)),
        ),
        (
            [0x7fff_f000, 0x2000, 0x3, 0],
            ConfigField::Base,
            PlacementError::Overlap(gpa(0x8000_0000)),
        ),
        // Leaves the window.
        (
            [window_end - 0x1000, 0x2000, 0x3, 3],
            ConfigField::Base,
            PlacementError::OutsideWindow,
        ),
        // Write without read: the table refuses the flags.
        (
            [0x1_0000_0000, 0x1000, 0x2, 0],
            ConfigField::Flags,
            PlacementError::Flags,
        ),
        (
            [0x1_0000_0000, 0x1000, 0x2, 2],
            ConfigField::Flags,
            PlacementError::Flags,
        ),
    ];
    for (bad, field, error) in cases {
        let mut records = GOOD.to_vec();
        records.push(bad);
        let e = build(&alloc, &records, ConfigOptions::default()).unwrap_err();
        assert_eq!(
            e,
            AspaceError::ConfigPlacement {
                index: 5,
                field,
                error
            },
            "{bad:x?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("memory_regions[5]: {field}: ")),
            "{e}"
        );
        assert_eq!(alloc.live_frames(), 0);
    }
    // Two records overlapping each other: the later one is named.
    let e = build(
        &alloc,
        &[[0x1000, 0x2000, 0x3, 3], [0x2000, 0x1000, 0x1, 4]],
        ConfigOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        e,
        AspaceError::ConfigPlacement {
            index: 1,
            field: ConfigField::Base,
            error: PlacementError::Overlap(gpa(0x1000))
        }
    );
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn flags_bits_carry_over() {
    let alloc = HostFrameAllocator::new();
    let s = build(
        &alloc,
        &[[0x1000, 0x1000, 0x1, 0], [0x2000, 0x1000, 0x13, 2]],
        ConfigOptions::default(),
    )
    .unwrap();
    assert_eq!(
        s.find_region(gpa(0x1000)).unwrap().flags,
        MappingFlags::READ
    );
    let q = s.query(gpa(0x2000)).unwrap();
    assert!(q.flags.contains(RW | MappingFlags::DEVICE), "{:?}", q.flags);
    // A ROM record's write bit is dropped: ROM is read-only.
    let s = build(
        &alloc,
        &[[0x1000, 0x1000, 0x7, 4]],
        ConfigOptions::default(),
    )
    .unwrap();
    assert_eq!(s.find_region(gpa(0x1000)).unwrap().flags, RX);
}
