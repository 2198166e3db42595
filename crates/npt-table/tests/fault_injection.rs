//! Every allocation an operation makes is failed in turn: each time the
//! operation reports `NoMemory`, the table's visible state is exactly what
//! it was, and no frame leaks.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{
    FailingAllocator, FrameAllocator, FrameError, HostFrameAllocator, MapPolicy, NestedPageTable,
    NptError, TableStats,
};

const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const G1: usize = 0x4000_0000;
const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);

type Table<'a, F> = NestedPageTable<F, &'a FailingAllocator<HostFrameAllocator>>;
type Op<F> = fn(&mut Table<'_, F>) -> Result<(), NptError>;

fn state<F: NptFormat, A: FrameAllocator>(
    t: &NestedPageTable<F, A>,
) -> (Vec<(usize, usize, usize, MappingFlags)>, TableStats) {
    let mut runs = Vec::new();
    let len = (8 * G1).min(F::GPA_LIMIT as usize);
    t.for_each_mapping(GuestPhysAddr::from(0), len, |r| {
        runs.push((r.gpa.as_usize(), r.hpa.as_usize(), r.len, r.flags))
    })
    .unwrap();
    (runs, t.stats())
}

/// The layout's unit: 1 GiB, or 512 MiB where the space has fewer than
/// 8 GiB (`Stage2<32>`'s 4 GiB), so the whole layout fits every format.
fn u<F: NptFormat>() -> usize {
    if F::GPA_LIMIT >= 8 * G1 as u64 {
        G1
    } else {
        G1 / 2
    }
}

/// A table with a 1 GiB leaf at 1 GiB, a 2 MiB leaf at 2 GiB and a few 4 KiB
/// pages at 3 GiB (in units of [`u`]; where the format has no 1 GiB leaves,
/// the first unit is mapped with the largest leaves it has).
fn setup<F: NptFormat>(t: &mut Table<'_, F>) {
    if u::<F>() == G1 && F::level_of(PageSize::Size1G).is_some() {
        t.map(
            GuestPhysAddr::from(G1),
            HostPhysAddr::from(4 * G1),
            PageSize::Size1G,
            RW,
        )
        .unwrap()
        .ignore();
    } else {
        t.map_region(
            GuestPhysAddr::from(u::<F>()),
            HostPhysAddr::from(4 * G1),
            u::<F>(),
            RW,
            MapPolicy::Huge,
        )
        .unwrap()
        .ignore();
    }
    t.map(
        GuestPhysAddr::from(2 * u::<F>()),
        HostPhysAddr::from(6 * G1),
        PageSize::Size2M,
        RW,
    )
    .unwrap()
    .ignore();
    t.map_region(
        GuestPhysAddr::from(3 * u::<F>()),
        HostPhysAddr::from(7 * G1),
        4 * K4,
        RW,
        MapPolicy::Only4K,
    )
    .unwrap()
    .ignore();
}

fn each_failure<F: NptFormat>(name: &str, op: Op<F>) {
    // Count the allocations the operation makes when nothing fails.
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    let k = {
        let mut t = Table::<F>::new(&alloc).unwrap();
        setup(&mut t);
        alloc.heal();
        op(&mut t).unwrap_or_else(|e| panic!("{} {name}: {e}", F::NAME));
        alloc.attempts()
    };
    assert!(k > 0, "{} {name}: the operation should allocate", F::NAME);
    assert_eq!(alloc.inner().live_frames(), 0);
    for fail in 1..=k {
        let alloc = FailingAllocator::new(HostFrameAllocator::new());
        let mut t = Table::<F>::new(&alloc).unwrap();
        setup(&mut t);
        let before = (state(&t), alloc.inner().live_frames());
        alloc.fail_from(fail);
        assert_eq!(
            op(&mut t),
            Err(NptError::NoMemory),
            "{} {name}: failing allocation {fail}/{k}",
            F::NAME
        );
        assert_eq!(
            (state(&t), alloc.inner().live_frames()),
            before,
            "{} {name}: failing {fail}/{k}",
            F::NAME
        );
        drop(t);
        assert_eq!(
            alloc.inner().live_frames(),
            0,
            "{} {name}: leak after failing {fail}/{k}",
            F::NAME
        );
    }
}

fn all_ops<F: NptFormat>() {
    let ops: [(&str, Op<F>); 7] = [
        ("map 4K pages across a 1G boundary", |t| {
            t.map_region(
                (4 * u::<F>() - 3 * M2).into(),
                0x8000_0000.into(),
                6 * M2,
                RW,
                MapPolicy::Only4K,
            )
            .map(|f| f.ignore())
            .map_err(NptError::from)
        }),
        ("map with huge leaves and small edges", |t| {
            t.map_region(
                (u::<F>() * 5 + M2 - K4).into(),
                (M2 - K4).into(),
                u::<F>() / 2,
                RW,
                MapPolicy::Huge,
            )
            .map(|f| f.ignore())
            .map_err(NptError::from)
        }),
        ("map frames", |t| {
            let frames: Vec<HostPhysAddr> = (0..600)
                .map(|i| HostPhysAddr::from(0x9000_0000 + 2 * i * K4))
                .collect();
            t.map_frames((3 * u::<F>() + M2).into(), &frames, RW)
                .map(|f| f.ignore())
                .map_err(NptError::from)
        }),
        ("unmap the middle of a 1G leaf", |t| {
            t.unmap_region((u::<F>() + u::<F>() / 2 + K4).into(), M2)
                .map(|f| f.ignore())
                .map_err(NptError::from)
        }),
        ("protect both edges of a 1G and a 2M leaf", |t| {
            t.protect_region(
                (u::<F>() + u::<F>() - K4).into(),
                u::<F>() + 2 * K4,
                MappingFlags::READ,
            )
            .map(|f| f.ignore())
            .map_err(NptError::from)
        }),
        ("unmap inside a 2M leaf", |t| {
            t.unmap_region((2 * u::<F>() + K4).into(), K4)
                .map(|f| f.ignore())
                .map_err(NptError::from)
        }),
        ("map one 4K page under tables that do not exist yet", |t| {
            t.map(
                (6 * u::<F>() + 3 * M2 + 5 * K4).into(),
                0x7000_0000.into(),
                PageSize::Size4K,
                RW,
            )
            .map(|f| f.ignore())
            .map_err(NptError::from)
        }),
    ];
    for (name, op) in ops {
        each_failure::<F>(name, op);
    }
}

#[test]
fn root_allocation_failure_is_no_memory() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    alloc.fail_from(1);
    assert_eq!(
        Table::<npt_entry::gstage::Sv39x4>::new(&alloc).unwrap_err(),
        FrameError::NoMemory
    );
    assert_eq!(alloc.inner().live_frames(), 0);
}

macro_rules! per_format {
    ($($name:ident: $fmt:ty,)*) => {$(
        mod $name {
            #[test]
            fn fails_cleanly() {
                super::all_ops::<$fmt>();
            }
        }
    )*};
}

npt_entry::for_each_format!(per_format);
