//! Scenario tests: partial unmap/protect of huge leaves, double maps, width
//! checks and root geometry.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::{GenericPTE, NptFormat, ept::Ept4, gstage::Sv39x4, stage2::Stage2};
use npt_table::{
    ChangeError, FrameAllocator, HostFrameAllocator, MapError, MapPolicy, NestedPageTable,
    QueryError,
};

const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const G1: usize = 0x4000_0000;
const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);
const R: MappingFlags = MappingFlags::READ;

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from(a)
}
fn hpa(a: usize) -> HostPhysAddr {
    HostPhysAddr::from(a)
}

/// All mapped runs in the first 8 GiB (or the whole space if smaller).
fn runs<F: NptFormat, A: FrameAllocator>(
    t: &NestedPageTable<F, A>,
) -> Vec<(usize, usize, usize, MappingFlags)> {
    let len = (8 * G1).min(F::GPA_LIMIT as usize);
    let mut v = Vec::new();
    t.for_each_mapping(gpa(0), len, |r| {
        v.push((r.gpa.as_usize(), r.hpa.as_usize(), r.len, r.flags))
    })
    .unwrap();
    v
}

/// Where a partial operation cuts a huge leaf of `size`: from the left edge,
/// from the right edge, and in the middle.
fn cuts(size: usize) -> [(usize, usize); 3] {
    [
        (0, K4),
        (size - K4, K4),
        (size / 2 - K4, M2.min(size / 4) + 2 * K4),
    ]
}

/// Whether the format has leaves of `size`; where it has none (1 GiB on the
/// 2-level `Stage2<32>`), mapping one is refused with a typed error.
fn has_leaf<F: NptFormat>(size: PageSize) -> bool {
    if F::level_of(size).is_some() {
        return true;
    }
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
    let r = t.map(gpa(0), hpa(0), size, RW);
    assert!(
        matches!(r, Err(MapError::UnsupportedPageSize(s)) if s == size),
        "{}: {r:?}",
        F::NAME
    );
    false
}

fn partial_unmap<F: NptFormat>(size: PageSize) {
    if !has_leaf::<F>(size) {
        return;
    }
    let norm = <F::Entry as GenericPTE>::new_page(0.into(), RW, false).flags();
    for (off, len) in cuts(size.bytes()) {
        let alloc = HostFrameAllocator::new();
        let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
        let (g, h) = (2 * G1, 3 * G1);
        t.map(gpa(g), hpa(h), size, RW).unwrap().ignore();
        assert_eq!(t.stats().leaves_of(size), 1);
        let flush = t.unmap_region(gpa(g + off), len).unwrap();
        assert!(
            flush.is_all()
                || flush
                    .ranges()
                    .any(|r| r.start.as_usize() <= g + off && r.end.as_usize() >= g + off + len)
        );
        // The rest stays mapped with the same flags and addresses.
        let mut expect = Vec::new();
        if off > 0 {
            expect.push((g, h, off, norm));
        }
        if off + len < size.bytes() {
            expect.push((g + off + len, h + off + len, size.bytes() - off - len, norm));
        }
        assert_eq!(runs(&t), expect, "{} cut {off:#x}+{len:#x}", F::NAME);
        assert!(t.query(gpa(g + off)).is_err());
        assert_eq!(t.stats().leaves_of(size), 0);
        // Unmapping the rest frees everything but the root.
        t.unmap_region(gpa(g), size.bytes()).unwrap().ignore();
        assert_eq!(t.stats().table_frames, F::ROOT_FRAMES);
        drop(t);
        assert_eq!(alloc.live_frames(), 0);
    }
}

fn partial_protect<F: NptFormat>(size: PageSize) {
    if !has_leaf::<F>(size) {
        return;
    }
    let norm = |f| <F::Entry as GenericPTE>::new_page(0.into(), f, false).flags();
    for (off, len) in cuts(size.bytes()) {
        let alloc = HostFrameAllocator::new();
        let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
        let (g, h) = (G1, 5 * G1);
        t.map(gpa(g), hpa(h), size, RW).unwrap().ignore();
        t.protect_region(gpa(g + off), len, R).unwrap().ignore();
        let mut expect = Vec::new();
        if off > 0 {
            expect.push((g, h, off, norm(RW)));
        }
        expect.push((g + off, h + off, len, norm(R)));
        if off + len < size.bytes() {
            expect.push((
                g + off + len,
                h + off + len,
                size.bytes() - off - len,
                norm(RW),
            ));
        }
        assert_eq!(runs(&t), expect, "{} cut {off:#x}+{len:#x}", F::NAME);
        let q = t.query(gpa(g + off + 0x10)).unwrap();
        assert_eq!(
            (q.hpa, q.flags, q.size),
            (hpa(h + off + 0x10), norm(R), PageSize::Size4K)
        );
        // Protecting back and collapsing restores one huge leaf.
        t.protect_region(gpa(g), size.bytes(), RW).unwrap().ignore();
        if size == PageSize::Size1G {
            for i in 0..512 {
                let _ = t.collapse(gpa(g + i * M2), PageSize::Size2M);
            }
        }
        let c = t.collapse(gpa(g), size).unwrap();
        assert!(c.retired_tables >= 1);
        c.flush.ignore();
        assert_eq!(t.stats().leaves_of(size), 1);
        assert_eq!(
            t.stats().table_frames,
            F::ROOT_FRAMES + F::LEVELS - 1 - size.height()
        );
        drop(t);
        assert_eq!(alloc.live_frames(), 0);
    }
}

macro_rules! per_format {
    ($($name:ident: $fmt:ty,)*) => {$(
        mod $name {
            use super::*;
            #[test]
            fn partial_unmap_of_2m_and_1g_leaves() {
                partial_unmap::<$fmt>(PageSize::Size2M);
                partial_unmap::<$fmt>(PageSize::Size1G);
            }
            #[test]
            fn partial_protect_of_2m_and_1g_leaves() {
                partial_protect::<$fmt>(PageSize::Size2M);
                partial_protect::<$fmt>(PageSize::Size1G);
            }
            #[test]
            fn map_over_a_mapping_fails_and_changes_nothing() {
                map_over_existing::<$fmt>();
            }
            #[test]
            fn gpa_past_the_width_is_rejected() {
                past_width::<$fmt>();
            }
        }
    )*};
}

npt_entry::for_each_format!(per_format);

fn map_over_existing<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
    t.map_region(gpa(G1), hpa(G1), 4 * M2, RW, MapPolicy::Huge)
        .unwrap()
        .ignore();
    t.map(gpa(G1 + 8 * M2 + 5 * K4), hpa(0x1000), PageSize::Size4K, R)
        .unwrap()
        .ignore();
    let before = (runs(&t), t.stats(), alloc.live_frames());
    // Exactly over, overlapping at the end, covering a lone 4K page, a huge
    // page over small ones.
    let attempts = [
        (G1, M2, MapPolicy::Huge),
        (G1 - M2, 2 * M2, MapPolicy::Huge),
        (G1 + 8 * M2, M2, MapPolicy::Only4K),
        (G1 + 8 * M2, M2, MapPolicy::Huge),
        (0, 2 * G1, MapPolicy::Huge),
    ];
    for (g, len, policy) in attempts {
        let r = t.map_region(gpa(g), hpa(8 * G1 + g), len, RW, policy);
        assert!(
            matches!(r, Err(MapError::AlreadyMapped { .. })),
            "{} {g:#x}: {r:?}",
            F::NAME
        );
        assert_eq!((runs(&t), t.stats(), alloc.live_frames()), before);
    }
    let r = t.map(gpa(G1 + M2), hpa(0), PageSize::Size4K, RW);
    assert_eq!(r, Err(MapError::AlreadyMapped { gpa: gpa(G1 + M2) }));
}

fn past_width<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&alloc).unwrap();
    let limit = F::GPA_LIMIT as usize;
    let out = t.map(gpa(limit), hpa(0), PageSize::Size4K, RW);
    assert!(
        matches!(out, Err(MapError::GpaOutOfRange { .. })),
        "{out:?}"
    );
    let straddle = t.map_region(gpa(limit - K4), hpa(0), 2 * K4, RW, MapPolicy::Only4K);
    assert!(
        matches!(straddle, Err(MapError::GpaOutOfRange { .. })),
        "{straddle:?}"
    );
    let wrap = t.map_region(
        gpa(usize::MAX - 0xfff),
        hpa(0),
        2 * K4,
        RW,
        MapPolicy::Only4K,
    );
    assert!(
        matches!(wrap, Err(MapError::GpaOutOfRange { .. })),
        "{wrap:?}"
    );
    assert!(matches!(
        t.query(gpa(limit)),
        Err(QueryError::GpaOutOfRange { .. })
    ));
    // The last page inside the width works.
    t.map(gpa(limit - K4), hpa(0x5000), PageSize::Size4K, RW)
        .unwrap()
        .ignore();
    assert_eq!(t.translate(gpa(limit - 1)), Some(hpa(0x5fff)));
    assert_eq!(t.stats().table_frames, F::ROOT_FRAMES + F::LEVELS - 1);
}

#[test]
fn named_width_limits() {
    let alloc = HostFrameAllocator::new();
    let mut sv39 = NestedPageTable::<Sv39x4, _>::new(&alloc).unwrap();
    let e = sv39
        .map(gpa(1 << 41), hpa(0), PageSize::Size4K, RW)
        .unwrap_err();
    assert_eq!(
        e,
        MapError::GpaOutOfRange {
            gpa: gpa(1 << 41),
            gpa_bits: 41
        }
    );
    let mut s2 = NestedPageTable::<Stage2<40>, _>::new(&alloc).unwrap();
    let e = s2
        .map(gpa(1 << 40), hpa(0), PageSize::Size4K, RW)
        .unwrap_err();
    assert_eq!(
        e,
        MapError::GpaOutOfRange {
            gpa: gpa(1 << 40),
            gpa_bits: 40
        }
    );
}

#[test]
fn bad_arguments_are_typed_errors() {
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<Ept4, _>::with_pa_bits(&alloc, 47).unwrap();
    let p = MapPolicy::Huge;
    assert_eq!(
        t.map_region(gpa(0), hpa(0), 0, RW, p),
        Err(MapError::ZeroLength)
    );
    assert_eq!(
        t.map_region(gpa(0x10), hpa(0), K4, RW, p),
        Err(MapError::GpaNotAligned {
            value: 0x10,
            align: K4
        })
    );
    assert_eq!(
        t.map_region(gpa(0), hpa(0), 0x1800, RW, p),
        Err(MapError::GpaNotAligned {
            value: 0x1800,
            align: K4
        })
    );
    assert_eq!(
        t.map_region(gpa(0), hpa(0x10), K4, RW, p),
        Err(MapError::HpaNotAligned {
            hpa: hpa(0x10),
            align: K4
        })
    );
    assert_eq!(
        t.map_region(gpa(0), hpa((1 << 47) - K4), 2 * K4, RW, p),
        Err(MapError::HpaOutOfRange {
            hpa: hpa((1 << 47) - K4),
            pa_bits: 47
        })
    );
    assert_eq!(
        t.map(gpa(M2), hpa(K4), PageSize::Size2M, RW),
        Err(MapError::HpaNotAligned {
            hpa: hpa(K4),
            align: M2
        })
    );
    assert_eq!(
        t.map(gpa(K4), hpa(0), PageSize::Size2M, RW),
        Err(MapError::GpaNotAligned {
            value: K4,
            align: M2
        })
    );
    assert_eq!(
        t.map(gpa(0), hpa(0), PageSize::Size512G, RW),
        Err(MapError::UnsupportedPageSize(PageSize::Size512G))
    );
    assert_eq!(
        t.map(gpa(0), hpa(0), PageSize::Size4K, MappingFlags::empty()),
        Err(MapError::BadFlags(MappingFlags::empty()))
    );
    assert_eq!(
        t.map(gpa(0), hpa(0), PageSize::Size4K, MappingFlags::WRITE),
        Err(MapError::BadFlags(MappingFlags::WRITE))
    );
    assert_eq!(
        t.unmap_region(gpa(0), M2),
        Err(ChangeError::NotMapped { gpa: gpa(0) })
    );
    assert_eq!(
        t.protect_region(gpa(0), M2, R),
        Err(ChangeError::NotMapped { gpa: gpa(0) })
    );
    assert!(matches!(
        t.unmap(gpa(0)),
        Err(ChangeError::NotMapped { .. })
    ));
    t.map(gpa(M2), hpa(M2), PageSize::Size2M, RW)
        .unwrap()
        .ignore();
    assert_eq!(
        t.unmap(gpa(M2 + K4)).unwrap_err(),
        ChangeError::SizeMismatch {
            gpa: gpa(M2 + K4),
            mapped: PageSize::Size2M
        }
    );
    assert_eq!(t.stats().table_frames, 3);
    assert_eq!(alloc.live_frames(), 3);
}

#[test]
fn riscv_x4_roots_are_16k_with_2048_entries() {
    assert_eq!(
        (
            Sv39x4::ROOT_ENTRIES,
            Sv39x4::ROOT_FRAMES,
            Sv39x4::ROOT_ALIGN
        ),
        (2048, 4, 0x4000)
    );
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<Sv39x4, _>::new(&alloc).unwrap();
    assert_eq!(t.root_hpa().as_usize() % 0x4000, 0);
    assert_eq!(alloc.live_frames(), 4);
    // GPA bits 40:30 select the root entry: the last root entry maps the top
    // GiB of the 2 TiB space.
    let top = (1 << 41) - G1;
    assert_eq!(Sv39x4::index(top, 0), 2047);
    assert_eq!(Sv39x4::index(0x155 << 30, 0), 0x155);
    t.map(gpa(top), hpa(G1), PageSize::Size1G, RW)
        .unwrap()
        .ignore();
    // The leaf sits in the root's last 8 bytes (offset 2047 * 8 in a 16 KiB root).
    let root = alloc.phys_to_virt(t.root_hpa());
    // SAFETY: the root is a live 16 KiB allocation of `alloc`.
    let raw = unsafe { root.add(2047 * 8).cast::<u64>().read() };
    assert_ne!(raw, 0);
    assert_eq!(t.translate(gpa(top + 0x1234)), Some(hpa(G1 + 0x1234)));
}

#[test]
fn huge_policy_picks_the_largest_aligned_leaves() {
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<Ept4, _>::new(&alloc).unwrap();
    // 64 GiB + 2 MiB + 4 KiB at 1 GiB-aligned addresses.
    let len = 64 * G1 + M2 + K4;
    t.map_region(gpa(G1), hpa(G1), len, RW, MapPolicy::Huge)
        .unwrap()
        .ignore();
    let s = t.stats();
    assert_eq!(
        (
            s.leaves_of(PageSize::Size1G),
            s.leaves_of(PageSize::Size2M),
            s.leaves_of(PageSize::Size4K)
        ),
        (64, 1, 1)
    );
    // A GPA/HPA pair aligned only to 2 MiB gets no 1 GiB leaves.
    let mut t2 = NestedPageTable::<Ept4, _>::new(&alloc).unwrap();
    t2.map_region(gpa(G1), hpa(G1 + M2), G1, RW, MapPolicy::Huge)
        .unwrap()
        .ignore();
    assert_eq!(t2.stats().leaves_of(PageSize::Size2M), 512);
    let mut t3 = NestedPageTable::<Ept4, _>::new(&alloc).unwrap();
    t3.map_region(
        gpa(0),
        hpa(0),
        2 * G1,
        RW,
        MapPolicy::UpTo(PageSize::Size2M),
    )
    .unwrap()
    .ignore();
    assert_eq!(t3.stats().leaves_of(PageSize::Size2M), 1024);
}

#[test]
fn harvest_collects_and_clears_dirty_bits() {
    use npt_table::AccessBit;
    // G-stage leaves are created with A set, and D set when writable (so
    // hosts without hardware A/D updates never fault on first access): a
    // fresh mapping harvests as accessed everywhere and dirty where writable.
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<Sv39x4, _>::new(&alloc).unwrap();
    t.map_region(gpa(0), hpa(G1), 4 * K4, RW, MapPolicy::Only4K)
        .unwrap()
        .ignore();
    t.map_region(gpa(4 * K4), hpa(G1 + 4 * K4), 4 * K4, R, MapPolicy::Only4K)
        .unwrap()
        .ignore();
    let mut dirty = [0u64; 1];
    let flush = t
        .harvest(gpa(0), 8 * K4, AccessBit::Dirty, &mut dirty)
        .unwrap();
    assert_eq!(dirty[0], 0b0000_1111, "the writable pages were dirty");
    assert!(
        flush
            .ranges()
            .any(|r| r.start.as_usize() == 0 && r.end.as_usize() >= 4 * K4)
    );
    let mut accessed = [0u64; 1];
    t.harvest(gpa(0), 8 * K4, AccessBit::Accessed, &mut accessed)
        .unwrap()
        .ignore();
    assert_eq!(accessed[0], 0b1111_1111);
    // Harvesting clears what it reports; translations are untouched.
    let (mut again_d, mut again_a) = ([0u64; 1], [0u64; 1]);
    let flush = t
        .harvest(gpa(0), 8 * K4, AccessBit::Dirty, &mut again_d)
        .unwrap();
    assert!(flush.is_empty());
    t.harvest(gpa(0), 8 * K4, AccessBit::Accessed, &mut again_a)
        .unwrap()
        .ignore();
    assert_eq!((again_d[0], again_a[0]), (0, 0));
    assert_eq!(t.translate(gpa(5 * K4 + 8)), Some(hpa(G1 + 5 * K4 + 8)));
    // A huge leaf with the bit marks every 4 KiB page of it in the range.
    t.map(gpa(M2), hpa(2 * G1), PageSize::Size2M, RW)
        .unwrap()
        .ignore();
    let mut big = [0u64; 8];
    t.harvest(gpa(M2 + 64 * K4), 128 * K4, AccessBit::Dirty, &mut big)
        .unwrap()
        .ignore();
    assert_eq!((big[0], big[1]), (u64::MAX, u64::MAX));
    assert_eq!(big[2..], [0; 6]);
    // The leaf was only partly harvested: it keeps its bit for the pages
    // outside that range (clearing it lost their dirtiness), and a harvest
    // of the whole leaf reports all 512 pages and clears it.
    let mut rest = [0u64; 8];
    t.harvest(gpa(M2), M2, AccessBit::Dirty, &mut rest)
        .unwrap()
        .ignore();
    assert_eq!(rest, [u64::MAX; 8]);
    let mut after = [0u64; 8];
    t.harvest(gpa(M2), M2, AccessBit::Dirty, &mut after)
        .unwrap()
        .ignore();
    assert_eq!(after, [0; 8]);
    // Too small a bitmap is refused, naming the words it needs.
    assert_eq!(
        t.harvest(gpa(0), 65 * K4, AccessBit::Dirty, &mut [0u64; 1]),
        Err(ChangeError::FrameCount {
            expected: 2,
            given: 1
        })
    );
}

#[test]
fn split_region_turns_huge_leaves_into_4k_and_collapse_undoes_it() {
    use npt_entry::stage2::Stage2Ipa40;
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<Stage2Ipa40, _>::new(&alloc).unwrap();
    t.map_region(gpa(G1), hpa(2 * G1), G1 + M2, RW, MapPolicy::Huge)
        .unwrap()
        .ignore();
    let before = runs(&t);
    t.split_region(gpa(G1), G1 + M2).unwrap().ignore();
    assert_eq!(runs(&t), before);
    let s = t.stats();
    assert_eq!(
        (s.leaves_of(PageSize::Size1G), s.leaves_of(PageSize::Size2M)),
        (0, 0)
    );
    assert_eq!(s.leaves_of(PageSize::Size4K), 513 * 512);
    for i in 0..513 {
        t.collapse(gpa(G1 + i * M2), PageSize::Size2M)
            .unwrap()
            .flush
            .ignore();
    }
    t.collapse(gpa(G1), PageSize::Size1G)
        .unwrap()
        .flush
        .ignore();
    assert_eq!(runs(&t), before);
    assert_eq!(t.stats().leaves_of(PageSize::Size1G), 1);
    assert_eq!(t.stats().leaves_of(PageSize::Size2M), 1);
    drop(t);
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn map_chunks_maps_mixed_sizes_back_to_back() {
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<Sv39x4, _>::new(&alloc).unwrap();
    let chunks = [
        (hpa(0x9000_0000), PageSize::Size2M),
        (hpa(0x7000_0000), PageSize::Size2M),
        (hpa(0x1234_5000), PageSize::Size4K),
        (hpa(0x1000), PageSize::Size4K),
    ];
    t.map_chunks(gpa(G1), &chunks, RW).unwrap().ignore();
    assert_eq!(t.translate(gpa(G1 + 0x10)), Some(hpa(0x9000_0010)));
    assert_eq!(t.translate(gpa(G1 + M2 + 0x10)), Some(hpa(0x7000_0010)));
    assert_eq!(t.translate(gpa(G1 + 2 * M2 + 0x10)), Some(hpa(0x1234_5010)));
    assert_eq!(t.translate(gpa(G1 + 2 * M2 + K4)), Some(hpa(0x1000)));
    assert_eq!(t.stats().leaves_of(PageSize::Size2M), 2);
    // A chunk whose GPA is not aligned to its size is refused, and nothing changes.
    let bad = [
        (hpa(0x5000), PageSize::Size4K),
        (hpa(0x20_0000), PageSize::Size2M),
    ];
    let before = runs(&t);
    assert!(matches!(
        t.map_chunks(gpa(2 * G1), &bad, RW),
        Err(MapError::GpaNotAligned { .. })
    ));
    assert_eq!(runs(&t), before);
}

#[test]
fn sv48x4_decodes_and_splits_512g_leaves() {
    use npt_entry::gstage::Sv48x4;
    const G512: usize = 512 * G1;
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<Sv48x4, _>::new(&alloc).unwrap();
    // Huge policy never creates 512 GiB leaves unless asked for.
    t.map_region(gpa(G512), hpa(G512), G512, RW, MapPolicy::Huge)
        .unwrap()
        .ignore();
    assert_eq!(t.stats().leaves_of(PageSize::Size1G), 512);
    t.unmap_region(gpa(G512), G512).unwrap().ignore();
    t.map(gpa(G512), hpa(2 * G512), PageSize::Size512G, RW)
        .unwrap()
        .ignore();
    let q = t.query(gpa(G512 + 0x1234_5678)).unwrap();
    assert_eq!(
        (q.hpa, q.size),
        (hpa(2 * G512 + 0x1234_5678), PageSize::Size512G)
    );
    // Cutting one 4 KiB page out of it splits 512G -> 1G -> 2M -> 4K.
    t.unmap_region(gpa(G512 + G1 + M2 + K4), K4)
        .unwrap()
        .ignore();
    let s = t.stats();
    assert_eq!(
        (
            s.leaves_of(PageSize::Size512G),
            s.leaves_of(PageSize::Size1G),
            s.leaves_of(PageSize::Size2M),
            s.leaves_of(PageSize::Size4K)
        ),
        (0, 511, 511, 511)
    );
    assert_eq!(
        t.translate(gpa(G512 + G1 + M2 + 2 * K4)),
        Some(hpa(2 * G512 + G1 + M2 + 2 * K4))
    );
    assert_eq!(t.translate(gpa(G512 + G1 + M2 + K4)), None);
    drop(t);
    assert_eq!(alloc.live_frames(), 0);
}

/// Changing flags keeps the bits the hardware set: a leaf the guest dirtied
/// stays dirty through `protect` and `protect_region` (they rebuilt leaves
/// from the new flags and dropped EPT's accessed and dirty bits).
#[test]
fn protect_keeps_accessed_and_dirty_bits() {
    use npt_table::AccessBit;
    let alloc = HostFrameAllocator::new();
    let mut t = NestedPageTable::<Ept4, _>::new(&alloc).unwrap();
    t.map(gpa(G1), hpa(4 * G1), PageSize::Size1G, RW)
        .unwrap()
        .ignore();
    // The walker's A/D write, by hand: the 1 GiB leaf is entry 1 of the
    // table root entry 0 points to (EPT A = bit 8, D = bit 9).
    let entry = |t: &NestedPageTable<Ept4, &HostFrameAllocator>| -> *mut u64 {
        let root = alloc.phys_to_virt(t.root_hpa()).cast::<u64>();
        // SAFETY: the root is a live table of this test's table.
        let l3 = unsafe { root.read() } & 0x000f_ffff_ffff_f000;
        // SAFETY: `l3` is the live table root entry 0 points to.
        unsafe { alloc.phys_to_virt(hpa(l3 as usize)).cast::<u64>().add(1) }
    };
    // SAFETY: the leaf entry of a live table; nothing walks it concurrently.
    unsafe { *entry(&t) |= 0b11 << 8 };
    t.protect(gpa(G1), MappingFlags::READ).unwrap().ignore();
    t.protect_region(gpa(G1), G1, RW).unwrap().ignore();
    // SAFETY: as above.
    assert_eq!(unsafe { *entry(&t) } & (0b11 << 8), 0b11 << 8);
    assert_eq!(t.query(gpa(G1)).unwrap().flags, RW);
    let mut dirty = [0u64; G1 / K4 / 64];
    t.harvest(gpa(G1), G1, AccessBit::Dirty, &mut dirty)
        .unwrap()
        .ignore();
    assert!(dirty.iter().all(|w| *w == u64::MAX));
}
