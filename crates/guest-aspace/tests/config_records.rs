//! Building a space from AxVisor-style `[base, size, flags, map_type]` records.

mod common;

use common::*;
use gpa_types::{ConfigError, ConfigField, MapType, MappingFlags, PageSize, RegionConfig};
use guest_aspace::{
    Access, AspaceError, Backing, ConfigOptions, FaultOutcome, GuestAddrSpace, PlacementError,
    RegionKind,
};
use npt_entry::ept::Ept4;
use npt_table::{HostFrameAllocator, NptError};

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
    // A ROM record's flags apply: read-only stays read-only.
    let s = build(
        &alloc,
        &[[0x1000, 0x1000, 0x1, 4]],
        ConfigOptions::default(),
    )
    .unwrap();
    assert_eq!(s.find_region(gpa(0x1000)).unwrap().flags, R);
}

/// Flags 0 (no access) and 2 (write without read) are refused for every map
/// type, naming the flags field; before, MMIO and ROM records took them and
/// became read/write device space and readable ROM.
#[test]
fn bad_flags_refused_for_every_map_type() {
    let alloc = HostFrameAllocator::new();
    for map_type in 0..=4u64 {
        for flags in [0x0, 0x2, 0x10, 0x12] {
            let e = build(
                &alloc,
                &[[0x1000, 0x1000, flags, map_type]],
                ConfigOptions::default(),
            )
            .unwrap_err();
            assert_eq!(
                e,
                AspaceError::ConfigPlacement {
                    index: 0,
                    field: ConfigField::Flags,
                    error: PlacementError::Flags
                },
                "flags {flags:#x}, map_type {map_type}"
            );
            assert!(e.to_string().starts_with("memory_regions[0]: flags: "));
        }
    }
    assert_eq!(alloc.live_frames(), 0);
}

/// An MMIO record's flags become the region's rights (plus DEVICE); an access
/// they forbid is a violation, not an MMIO exit.
#[test]
fn mmio_record_flags_apply() {
    let alloc = HostFrameAllocator::new();
    let s = build(
        &alloc,
        &[[0x1000, 0x1000, 0x1, 3], [0x2000, 0x1000, 0x13, 3]],
        ConfigOptions::default(),
    )
    .unwrap();
    assert_eq!(
        s.find_region(gpa(0x1000)).unwrap().flags,
        R | MappingFlags::DEVICE
    );
    assert_eq!(
        s.find_region(gpa(0x2000)).unwrap().flags,
        RW | MappingFlags::DEVICE
    );
    assert_eq!(
        s.handle_fault(gpa(0x1008), Access::Read).unwrap(),
        FaultOutcome::Mmio {
            gpa: gpa(0x1008),
            access: Access::Read
        }
    );
    assert_eq!(
        s.handle_fault(gpa(0x1008), Access::Write).unwrap(),
        FaultOutcome::Violation {
            gpa: gpa(0x1008),
            access: Access::Write,
            kind: RegionKind::Mmio
        }
    );
    assert!(matches!(
        s.handle_fault(gpa(0x2008), Access::Write).unwrap(),
        FaultOutcome::Mmio { .. }
    ));
}

/// A ROM record asking for write access is refused instead of silently
/// becoming read-only.
#[test]
fn writable_rom_record_refused() {
    let alloc = HostFrameAllocator::new();
    for flags in [0x3, 0x7] {
        let e = build(
            &alloc,
            &[[0x1000, 0x1000, flags, 4]],
            ConfigOptions::default(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            AspaceError::ConfigPlacement {
                index: 0,
                field: ConfigField::Flags,
                error: PlacementError::WritableRom
            }
        );
        assert!(
            e.to_string().contains("ROM cannot be guest-writable"),
            "{e}"
        );
    }
    assert_eq!(alloc.live_frames(), 0);
}

/// Allocating `MAP_IDENTICAL` memory that lands outside the window is blamed
/// on where it landed, not on the (inside) base.
#[test]
fn allocated_identical_outside_window_says_where() {
    let alloc = HostFrameAllocator::new();
    let options = ConfigOptions {
        allocate_identical: true,
        ..ConfigOptions::default()
    };
    // Heap frames never sit in the first MiB.
    let e = Space::from_config(
        &alloc,
        window(0, 1 << 20),
        &[[0x1000, 0x2000, 0x3, 1]],
        options,
    )
    .unwrap_err();
    let AspaceError::ConfigPlacement {
        index: 0,
        field: ConfigField::MapType,
        error: PlacementError::LandedOutsideWindow { at, len: 0x2000 },
    } = e
    else {
        panic!("{e:?}");
    };
    assert_ne!(at, gpa(0x1000));
    let text = e.to_string();
    assert!(
        text.contains(&format!("allocated at [{:#x}, ", at.as_usize())),
        "{text}"
    );
    assert!(!text.contains("base_paddr"), "{text}");
    assert_eq!(alloc.live_frames(), 0);
}

/// An identity record above the host physical width gives the table's
/// reason and blames the base (or the size when only the end is too wide).
#[test]
fn identity_above_host_width_gives_the_reason() {
    use npt_entry::ept::Ept5;
    let alloc = HostFrameAllocator::new();
    let build5 = |records: &[[u64; 4]]| {
        GuestAddrSpace::<Ept5, _>::from_config(
            &alloc,
            window(0, 1 << 57),
            records,
            ConfigOptions::default(),
        )
        .map(|(_, f)| f.ignore())
        .unwrap_err()
    };
    let e = build5(&[[1 << 53, 0x1000, 0x3, 1]]);
    let AspaceError::ConfigPlacement {
        field: ConfigField::Base,
        error: PlacementError::Table(NptError::HpaOutOfRange { pa_bits: 52, .. }),
        ..
    } = e
    else {
        panic!("{e:?}");
    };
    let text = e.to_string();
    assert!(
        text.starts_with("memory_regions[0]: base_paddr: "),
        "{text}"
    );
    assert!(text.contains("52-bit"), "{text}");
    let e = build5(&[[(1 << 52) - 0x1000, 0x2000, 0x3, 2]]);
    assert!(
        matches!(
            e,
            AspaceError::ConfigPlacement {
                field: ConfigField::Size,
                error: PlacementError::Table(NptError::HpaOutOfRange { .. }),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(alloc.live_frames(), 0);
}

/// A hand-built record (public fields) is checked like a raw one: the error
/// names the right field and reason.
#[test]
fn hand_built_records_name_the_right_field() {
    let alloc = HostFrameAllocator::new();
    let mut s = build(&alloc, &[], ConfigOptions::default()).unwrap();
    let good = RegionConfig::from_raw(0x1000, 0x1000, 0x3, 3).unwrap();
    let cases = [
        (
            RegionConfig { size: 0, ..good },
            ConfigError::ZeroSize,
            "size: ",
        ),
        (
            RegionConfig {
                base: gpa(0x1800),
                ..good
            },
            ConfigError::NotAligned {
                field: ConfigField::Base,
                value: 0x1800,
            },
            "base_paddr: 0x1800",
        ),
        (
            RegionConfig {
                size: 0x1800,
                ..good
            },
            ConfigError::NotAligned {
                field: ConfigField::Size,
                value: 0x1800,
            },
            "size: 0x1800",
        ),
        (
            RegionConfig {
                base: gpa(usize::MAX - 0xfff),
                ..good
            },
            ConfigError::Overflow {
                base: (usize::MAX - 0xfff) as u64,
                size: 0x1000,
            },
            "size: ",
        ),
    ];
    for map_type in [MapType::Mmio, MapType::Alloc, MapType::Rom] {
        for (cfg, error, text) in cases {
            let cfg = RegionConfig { map_type, ..cfg };
            let e = s.add_config(7, &cfg, ConfigOptions::default()).unwrap_err();
            assert_eq!(e, AspaceError::Config { index: 7, error }, "{cfg:?}");
            assert!(
                e.to_string()
                    .starts_with(&format!("memory_regions[7]: {text}")),
                "{e}"
            );
        }
    }
    assert_eq!(s.regions().count(), 0);
}
