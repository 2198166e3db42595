//! Each operation family returns an error enum holding only what it can
//! produce. The `match`es below name every variant of each family without a
//! wildcard: they compile only while the family holds exactly those
//! variants. Then one real refusal of each variant a test can reach is made
//! and checked to convert into the `NptError` the operation returned before
//! the families existed, with the same text and the same `AxErrorKind`.

use core::fmt::Display;

use axerrno::AxErrorKind;
use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_entry::ept::Ept4;
use npt_table::{
    AccessBit, ChangeError, CollapseError, FailingAllocator, FrameError, HighAllocator,
    HostFrameAllocator, MapError, MapPolicy, NestedPageTable, NptError, QueryError, RangeError,
};

type F = Ept4;
const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);
/// The first guest address past the format's width.
const GPA_END: usize = F::GPA_LIMIT as usize;
/// The first host address past the format's width.
const HPA_END: usize = 1 << F::PA_BITS;

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from(a)
}

fn hpa(a: usize) -> HostPhysAddr {
    HostPhysAddr::from(a)
}

/// `e` is `want` as an `NptError`, shows the same text and maps to the same
/// `AxErrorKind`.
fn same<E>(e: E, want: NptError)
where
    E: Copy + Display + core::fmt::Debug + core::error::Error + Into<NptError> + Into<AxErrorKind>,
{
    let text = format!("{e}");
    let kind: AxErrorKind = e.into();
    let npt: NptError = e.into();
    assert_eq!(npt, want, "{e:?}");
    assert_eq!(text, want.to_string(), "{e:?}");
    assert_eq!(kind, AxErrorKind::from(want), "{e:?}");
}

/// Every variant of `MapError`, by name.
fn map_variant(e: MapError) -> &'static str {
    match e {
        MapError::ZeroLength => "ZeroLength",
        MapError::GpaNotAligned { .. } => "GpaNotAligned",
        MapError::HpaNotAligned { .. } => "HpaNotAligned",
        MapError::GpaOutOfRange { .. } => "GpaOutOfRange",
        MapError::HpaOutOfRange { .. } => "HpaOutOfRange",
        MapError::UnsupportedPageSize(_) => "UnsupportedPageSize",
        MapError::BadFlags(_) => "BadFlags",
        MapError::AlreadyMapped { .. } => "AlreadyMapped",
        MapError::NoMemory => "NoMemory",
        MapError::TableFrameOutOfRange { .. } => "TableFrameOutOfRange",
    }
}

/// Every variant of `ChangeError`, by name.
fn change_variant(e: ChangeError) -> &'static str {
    match e {
        ChangeError::ZeroLength => "ZeroLength",
        ChangeError::GpaNotAligned { .. } => "GpaNotAligned",
        ChangeError::HpaNotAligned { .. } => "HpaNotAligned",
        ChangeError::GpaOutOfRange { .. } => "GpaOutOfRange",
        ChangeError::HpaOutOfRange { .. } => "HpaOutOfRange",
        ChangeError::BadFlags(_) => "BadFlags",
        ChangeError::NotMapped { .. } => "NotMapped",
        ChangeError::SizeMismatch { .. } => "SizeMismatch",
        ChangeError::FrameCount { .. } => "FrameCount",
        ChangeError::NoMemory => "NoMemory",
        ChangeError::TableFrameOutOfRange { .. } => "TableFrameOutOfRange",
    }
}

/// Every variant of `CollapseError`, by name.
fn collapse_variant(e: CollapseError) -> &'static str {
    match e {
        CollapseError::GpaNotAligned { .. } => "GpaNotAligned",
        CollapseError::GpaOutOfRange { .. } => "GpaOutOfRange",
        CollapseError::UnsupportedPageSize(_) => "UnsupportedPageSize",
        CollapseError::NotMapped { .. } => "NotMapped",
        CollapseError::NotCollapsible { .. } => "NotCollapsible",
        CollapseError::NoMemory => "NoMemory",
    }
}

/// Every variant of `QueryError`, by name.
fn query_variant(e: QueryError) -> &'static str {
    match e {
        QueryError::GpaOutOfRange { .. } => "GpaOutOfRange",
        QueryError::NotMapped { .. } => "NotMapped",
    }
}

/// Every variant of `RangeError`, by name.
fn range_variant(e: RangeError) -> &'static str {
    match e {
        RangeError::ZeroLength => "ZeroLength",
        RangeError::GpaNotAligned { .. } => "GpaNotAligned",
        RangeError::GpaOutOfRange { .. } => "GpaOutOfRange",
    }
}

/// Every variant of `FrameError`, by name.
fn frame_variant(e: FrameError) -> &'static str {
    match e {
        FrameError::NoMemory => "NoMemory",
        FrameError::TableFrameOutOfRange { .. } => "TableFrameOutOfRange",
    }
}

/// Checks that `cases` cover every variant in `names` once, then that each
/// converts to its `NptError`.
fn check<E>(name: impl Fn(E) -> &'static str, names: &[&str], cases: Vec<(E, NptError)>)
where
    E: Copy + Display + core::fmt::Debug + core::error::Error + Into<NptError> + Into<AxErrorKind>,
{
    let got: Vec<&str> = cases.iter().map(|(e, _)| name(*e)).collect();
    assert_eq!(got, names);
    for (e, want) in cases {
        same(e, want);
    }
}

/// The `NptError` of a table frame past the width, at the address the
/// refusal names (a `HighAllocator` frame: its real address plus the
/// offset, which the test does not know).
fn frame_past(e: impl Into<NptError>, pa_bits: u32) -> NptError {
    let NptError::TableFrameOutOfRange { hpa, .. } = e.into() else {
        return NptError::NoMemory;
    };
    assert!(
        hpa.as_usize() >> pa_bits != 0,
        "{hpa:?} is inside the width"
    );
    NptError::TableFrameOutOfRange { hpa, pa_bits }
}

fn out_of_gpa() -> NptError {
    NptError::GpaOutOfRange {
        gpa: gpa(GPA_END),
        gpa_bits: F::GPA_BITS,
    }
}

#[test]
fn map_error() {
    let host = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&host).unwrap();
    t.map(gpa(0), hpa(0), PageSize::Size4K, RW)
        .unwrap()
        .ignore();
    let failing = FailingAllocator::new(HostFrameAllocator::new());
    let mut ft = NestedPageTable::<F, _>::new(&failing).unwrap();
    failing.fail_from(1);
    let high = HighAllocator::new(&host, HPA_END);
    let ht = NestedPageTable::<F, _>::new(&high).unwrap();
    high.raise();
    let cases = vec![
        (
            t.map_region(gpa(M2), hpa(0), 0, RW, MapPolicy::Huge)
                .unwrap_err(),
            NptError::ZeroLength,
        ),
        (
            t.map_region(gpa(M2 + 1), hpa(0), K4, RW, MapPolicy::Huge)
                .unwrap_err(),
            NptError::GpaNotAligned {
                value: M2 + 1,
                align: K4,
            },
        ),
        (
            t.map_region(gpa(M2), hpa(1), K4, RW, MapPolicy::Huge)
                .unwrap_err(),
            NptError::HpaNotAligned {
                hpa: hpa(1),
                align: K4,
            },
        ),
        (
            t.map_region(gpa(GPA_END), hpa(0), K4, RW, MapPolicy::Huge)
                .unwrap_err(),
            out_of_gpa(),
        ),
        (
            t.map(gpa(M2), hpa(HPA_END), PageSize::Size4K, RW)
                .unwrap_err(),
            NptError::HpaOutOfRange {
                hpa: hpa(HPA_END),
                pa_bits: F::PA_BITS,
            },
        ),
        (
            t.map(gpa(0), hpa(0), PageSize::Size512G, RW).unwrap_err(),
            NptError::UnsupportedPageSize(PageSize::Size512G),
        ),
        (
            t.map_frames(gpa(M2), &[hpa(0)], MappingFlags::empty())
                .unwrap_err(),
            NptError::BadFlags(MappingFlags::empty()),
        ),
        (
            t.map_chunks(gpa(0), &[(hpa(0), PageSize::Size4K)], RW)
                .unwrap_err(),
            NptError::AlreadyMapped { gpa: gpa(0) },
        ),
        (
            ft.map(gpa(0), hpa(0), PageSize::Size4K, RW).unwrap_err(),
            NptError::NoMemory,
        ),
        {
            let e = ht
                .insert_new_concurrent(gpa(0), RW, |_| Some(hpa(0)))
                .unwrap_err();
            (e, frame_past(e, F::PA_BITS))
        },
    ];
    check(
        map_variant,
        &[
            "ZeroLength",
            "GpaNotAligned",
            "HpaNotAligned",
            "GpaOutOfRange",
            "HpaOutOfRange",
            "UnsupportedPageSize",
            "BadFlags",
            "AlreadyMapped",
            "NoMemory",
            "TableFrameOutOfRange",
        ],
        cases,
    );
    // The frames the refused calls took went back.
    drop((ft, ht));
    assert_eq!(failing.inner().live_frames(), 0);
}

#[test]
fn change_error() {
    let host = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&host).unwrap();
    t.map(gpa(0), hpa(0), PageSize::Size2M, RW)
        .unwrap()
        .ignore();
    t.map(gpa(M2), hpa(M2), PageSize::Size4K, RW)
        .unwrap()
        .ignore();
    let failing = FailingAllocator::new(HostFrameAllocator::new());
    let mut ft = NestedPageTable::<F, _>::new(&failing).unwrap();
    ft.map(gpa(0), hpa(0), PageSize::Size2M, RW)
        .unwrap()
        .ignore();
    failing.fail_from(1);
    let high = HighAllocator::new(&host, HPA_END);
    let mut ht = NestedPageTable::<F, _>::new(&high).unwrap();
    ht.map(gpa(0), hpa(0), PageSize::Size2M, RW)
        .unwrap()
        .ignore();
    high.raise();
    let cases = vec![
        (t.unmap_region(gpa(0), 0).unwrap_err(), NptError::ZeroLength),
        (
            t.protect_region(gpa(1), K4, RW).unwrap_err(),
            NptError::GpaNotAligned {
                value: 1,
                align: K4,
            },
        ),
        (
            t.remap(gpa(M2), hpa(1), RW).unwrap_err(),
            NptError::HpaNotAligned {
                hpa: hpa(1),
                align: K4,
            },
        ),
        (
            t.write_protect_region(gpa(GPA_END), K4).unwrap_err(),
            out_of_gpa(),
        ),
        (
            t.remap(gpa(M2), hpa(HPA_END), RW).unwrap_err(),
            NptError::HpaOutOfRange {
                hpa: hpa(HPA_END),
                pa_bits: F::PA_BITS,
            },
        ),
        (
            t.protect(gpa(M2), MappingFlags::empty()).unwrap_err(),
            NptError::BadFlags(MappingFlags::empty()),
        ),
        (
            t.unmap(gpa(2 * M2)).unwrap_err(),
            NptError::NotMapped { gpa: gpa(2 * M2) },
        ),
        (
            t.unmap(gpa(K4)).unwrap_err(),
            NptError::SizeMismatch {
                gpa: gpa(K4),
                mapped: PageSize::Size2M,
            },
        ),
        (
            t.harvest(gpa(0), 2 * M2, AccessBit::Dirty, &mut [0; 7])
                .unwrap_err(),
            NptError::FrameCount {
                expected: 16,
                given: 7,
            },
        ),
        (
            ft.unmap_region(gpa(K4), K4).unwrap_err(),
            NptError::NoMemory,
        ),
        {
            let e = ht.split_region(gpa(0), M2).unwrap_err();
            (e, frame_past(e, F::PA_BITS))
        },
    ];
    check(
        change_variant,
        &[
            "ZeroLength",
            "GpaNotAligned",
            "HpaNotAligned",
            "GpaOutOfRange",
            "HpaOutOfRange",
            "BadFlags",
            "NotMapped",
            "SizeMismatch",
            "FrameCount",
            "NoMemory",
            "TableFrameOutOfRange",
        ],
        cases,
    );
    // The concurrent changes and the lookup inside a leaf change are in the
    // family too.
    same(
        t.update_flags_concurrent(gpa(2 * M2), Some).unwrap_err(),
        NptError::NotMapped { gpa: gpa(2 * M2) },
    );
    same(
        t.write_protect_concurrent(gpa(0), 0).unwrap_err(),
        NptError::ZeroLength,
    );
    same(t.unmap(gpa(GPA_END)).unwrap_err(), out_of_gpa());
}

#[test]
fn collapse_error() {
    let host = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&host).unwrap();
    t.map(gpa(M2), hpa(0), PageSize::Size4K, RW)
        .unwrap()
        .ignore();
    let cases = vec![
        (
            t.collapse(gpa(K4), PageSize::Size2M).unwrap_err(),
            NptError::GpaNotAligned {
                value: K4,
                align: M2,
            },
        ),
        (
            t.collapse(gpa(GPA_END), PageSize::Size2M).unwrap_err(),
            out_of_gpa(),
        ),
        (
            t.collapse(gpa(0), PageSize::Size4K).unwrap_err(),
            NptError::UnsupportedPageSize(PageSize::Size4K),
        ),
        (
            t.collapse(gpa(1 << 30), PageSize::Size2M).unwrap_err(),
            NptError::NotMapped { gpa: gpa(1 << 30) },
        ),
        (
            t.collapse(gpa(M2), PageSize::Size2M).unwrap_err(),
            NptError::NotCollapsible { gpa: gpa(M2 + K4) },
        ),
    ];
    // `NoMemory` is room to park the unlinked tables: only a failing heap
    // gives it.
    check(
        collapse_variant,
        &[
            "GpaNotAligned",
            "GpaOutOfRange",
            "UnsupportedPageSize",
            "NotMapped",
            "NotCollapsible",
        ],
        cases,
    );
    same(CollapseError::NoMemory, NptError::NoMemory);
}

#[test]
fn query_error() {
    let host = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&host).unwrap();
    let cases = vec![
        (
            t.query(gpa(GPA_END)).unwrap_err(),
            NptError::GpaOutOfRange {
                gpa: gpa(GPA_END),
                gpa_bits: F::GPA_BITS,
            },
        ),
        (
            t.cursor().query(gpa(K4)).unwrap_err(),
            NptError::NotMapped { gpa: gpa(K4) },
        ),
    ];
    check(query_variant, &["GpaOutOfRange", "NotMapped"], cases);
    let Err(e) = t.entry(gpa(GPA_END)) else {
        panic!("an entry past the width");
    };
    same(e, out_of_gpa());
}

#[test]
fn range_error() {
    let host = HostFrameAllocator::new();
    let t = NestedPageTable::<F, _>::new(&host).unwrap();
    let cases = vec![
        (
            NestedPageTable::<F, &HostFrameAllocator>::check_range(gpa(0), 0, K4).unwrap_err(),
            NptError::ZeroLength,
        ),
        (
            t.for_each_mapping(gpa(0), K4 + 1, |_| {}).unwrap_err(),
            NptError::GpaNotAligned {
                value: K4 + 1,
                align: K4,
            },
        ),
        (
            t.mappings(gpa(GPA_END - K4), 2 * K4)
                .map(|_| ())
                .unwrap_err(),
            out_of_gpa(),
        ),
    ];
    check(
        range_variant,
        &["ZeroLength", "GpaNotAligned", "GpaOutOfRange"],
        cases,
    );
}

#[test]
fn frame_error() {
    let failing = FailingAllocator::new(HostFrameAllocator::new());
    failing.fail_from(1);
    let no_memory = NestedPageTable::<F, _>::new(&failing).map(|_| ());
    let host = HostFrameAllocator::new();
    let high = HighAllocator::new(&host, 1 << 40);
    high.raise();
    let too_high = NestedPageTable::<F, _>::with_pa_bits(&high, 40)
        .map(|_| ())
        .unwrap_err();
    let cases = vec![
        (no_memory.unwrap_err(), NptError::NoMemory),
        (too_high, frame_past(too_high, 40)),
    ];
    check(frame_variant, &["NoMemory", "TableFrameOutOfRange"], cases);
    assert_eq!(host.live_frames(), 0);
    assert_eq!(failing.inner().live_frames(), 0);
}
