//! Positions in the API: the entry handle and the mappings iterator.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{
    Entry, FailingAllocator, HostFrameAllocator, MapError, MapPolicy, MappedRun, NestedPageTable,
    QueryError,
};

const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);
const R: MappingFlags = MappingFlags::READ;

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from(a)
}
fn hpa(a: usize) -> HostPhysAddr {
    HostPhysAddr::from(a)
}

fn entry_round_trip<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
    let g = 0x4000_0000 + 3 * K4;
    // Vacant: insert creates the missing tables.
    match t.entry(gpa(g + 0x123)).unwrap() {
        Entry::Vacant(v) => {
            assert_eq!(v.gpa(), gpa(g));
            v.insert(hpa(0x9000), RW).unwrap().ignore();
        }
        Entry::Leaf(_) => panic!("{}: nothing was mapped", F::NAME),
    }
    assert_eq!(t.translate(gpa(g + 0x10)), Some(hpa(0x9010)));
    // Leaf: protect, then unmap, which parks the emptied tables.
    let Entry::Leaf(leaf) = t.entry(gpa(g)).unwrap() else {
        panic!("{}: mapped", F::NAME)
    };
    assert_eq!((leaf.gpa(), leaf.size()), (gpa(g), PageSize::Size4K));
    leaf.protect(R).unwrap().ignore();
    assert!(!t.query(gpa(g)).unwrap().flags.contains(MappingFlags::WRITE));
    let Entry::Leaf(leaf) = t.entry(gpa(g)).unwrap() else {
        panic!("{}: mapped", F::NAME)
    };
    let (tr, flush) = leaf.unmap().unwrap();
    assert_eq!(tr.hpa, hpa(0x9000));
    assert!(flush.parks_frames(), "{}: tables emptied", F::NAME);
    assert_eq!(t.stats().table_frames, F::ROOT_FRAMES);
    assert_eq!(t.complete(flush), F::LEVELS - 1);
    // A huge leaf is found from any page inside it.
    t.map(gpa(0x4000_0000), hpa(0x8000_0000), PageSize::Size2M, RW)
        .unwrap()
        .ignore();
    let Entry::Leaf(leaf) = t.entry(gpa(0x4000_0000 + 77 * K4)).unwrap() else {
        panic!("{}: huge leaf", F::NAME)
    };
    assert_eq!(
        (leaf.gpa(), leaf.size()),
        (gpa(0x4000_0000), PageSize::Size2M)
    );
    assert!(matches!(
        t.entry(gpa(F::GPA_LIMIT as usize)),
        Err(QueryError::GpaOutOfRange { .. })
    ));
    drop(t);
    assert_eq!(alloc.live_frames(), 0);
}

/// A failed `insert_new` gives the frame back and changes nothing.
fn insert_new_gives_the_frame_back<F: NptFormat>() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
    let g = 0x4000_0000;
    // The frame is the first allocation, the tables come after: fail those.
    alloc.fail_from(2);
    let Entry::Vacant(v) = t.entry(gpa(g)).unwrap() else {
        panic!()
    };
    let e = v.insert_new(RW, npt_table::FrameAllocator::alloc_frame);
    assert_eq!(e.map(|_| ()), Err(MapError::NoMemory), "{}", F::NAME);
    assert_eq!(alloc.inner().live_frames(), F::ROOT_FRAMES, "{}", F::NAME);
    alloc.heal();
    let Entry::Vacant(v) = t.entry(gpa(g)).unwrap() else {
        panic!()
    };
    let (frame, flush) = v
        .insert_new(RW, npt_table::FrameAllocator::alloc_frame)
        .unwrap();
    flush.ignore();
    assert_eq!(t.translate(gpa(g)), Some(frame));
    let (_, flush) = t.unmap(gpa(g)).unwrap();
    t.complete(flush);
    npt_table::FrameAllocator::dealloc_frames(&alloc, frame, 1);
    drop(t);
    assert_eq!(alloc.inner().live_frames(), 0);
}

/// `mappings` merges what is contiguous with equal flags, skips holes, and
/// clips to the range; `per_leaf` yields each leaf.
fn mappings_merge_and_clip<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
    let g = 0x4000_0000;
    let h = 0x8000_0000;
    // 2 MiB huge leaf, then 4 KiB pages continuing the host range, then a
    // hole, then a read-only page.
    t.map_region(gpa(g), hpa(h), M2 + 2 * K4, RW, MapPolicy::Huge)
        .unwrap()
        .ignore();
    t.map(gpa(g + M2 + 4 * K4), hpa(0x5000), PageSize::Size4K, R)
        .unwrap()
        .ignore();
    let runs: Vec<MappedRun> = t.mappings(gpa(g + K4), M2 + 8 * K4).unwrap().collect();
    assert_eq!(runs.len(), 2, "{}: {runs:?}", F::NAME);
    assert_eq!(
        (runs[0].gpa, runs[0].hpa, runs[0].len, runs[0].max_page),
        (gpa(g + K4), hpa(h + K4), M2 + K4, PageSize::Size2M)
    );
    assert_eq!((runs[1].gpa, runs[1].len), (gpa(g + M2 + 4 * K4), K4));
    let leaves: Vec<MappedRun> = t
        .mappings(gpa(g), M2 + 8 * K4)
        .unwrap()
        .per_leaf()
        .collect();
    assert_eq!(leaves.len(), 4, "{}: {leaves:?}", F::NAME);
    assert_eq!(leaves[0].len, M2);
    assert!(t.mappings(gpa(g), 0).is_err());
}

macro_rules! per_format {
    ($($name:ident: $fmt:ty,)*) => {$(
        mod $name {
            #[test]
            fn entry_round_trip() {
                super::entry_round_trip::<$fmt>();
            }
            #[test]
            fn insert_new_gives_the_frame_back() {
                super::insert_new_gives_the_frame_back::<$fmt>();
            }
            #[test]
            fn mappings_merge_and_clip() {
                super::mappings_merge_and_clip::<$fmt>();
            }
        }
    )*};
}

npt_entry::for_each_format!(per_format);
