//! Adding, querying, translating and removing each kind of region.

mod common;

use common::*;
use gpa_types::{MappingFlags, PageSize};
use guest_aspace::{
    Access, AspaceError, Backing, FaultOutcome, GuestAddrSpace, HostChunk, RegionKind,
};
use npt_entry::NptFormat;
use npt_entry::ept::Ept4;
use npt_entry::gstage::{Sv39x4, Sv48x4};
use npt_entry::npt::Npt4;
use npt_entry::stage2::Stage2Ipa40;
use npt_table::{HostFrameAllocator, NptError};

type Space<'a> = GuestAddrSpace<Ept4, &'a HostFrameAllocator>;

fn space(alloc: &HostFrameAllocator) -> Space<'_> {
    GuestAddrSpace::new(alloc, window(0, 1 << 36)).unwrap()
}

/// Frames the space holds beyond its table frames.
fn owned_frames<F: NptFormat>(space: &GuestAddrSpace<F, &HostFrameAllocator>) -> usize {
    space.table().allocator().live_frames() - space.table_stats().table_frames
}

#[test]
fn eager_ram_1g_aligned_is_one_1g_leaf() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        s.add_ram(gpa(G1), G1, RWX, false).unwrap().ignore();
        assert_eq!(s.table_stats().leaves_of(PageSize::Size1G), 1);
        assert_eq!(s.table_stats().leaves_of(PageSize::Size2M), 0);
        assert_eq!(s.table_stats().leaves_of(PageSize::Size4K), 0);
        assert_eq!(owned_frames(&s), G1 / K4);
        let info = s.query(gpa(G1 + 0x1234_5678)).unwrap();
        assert_eq!(info.kind, RegionKind::Ram);
        assert_eq!(info.page_size, PageSize::Size1G);
        assert!(info.flags.contains(RWX));
        let base = s.translate(gpa(G1)).unwrap();
        assert!(PageSize::Size1G.is_aligned(base.as_usize()));
        assert_eq!(info.hpa, hpa(base.as_usize() + 0x1234_5678));
        assert_eq!(
            s.translate_range(gpa(G1), G1).unwrap(),
            vec![HostChunk {
                gpa: gpa(G1),
                hpa: base,
                len: G1
            }]
        );
        assert_eq!(s.hpa_to_gpa(info.hpa), Some(gpa(G1 + 0x1234_5678)));
        let r = s.find_region(gpa(2 * G1 - 1)).unwrap();
        assert_eq!(r.range, window(G1, G1));
        assert_eq!(r.backing, Backing::Alloc { lazy: false });
        assert_eq!(r.populated, G1);
        // Any cut inside the 1 GiB frame is refused, and changes nothing.
        let before = snapshot(&s);
        for cut in [G1 + K4, G1 + M2, 2 * G1 - K4] {
            assert_eq!(
                s.remove_range(gpa(cut), K4),
                Err(AspaceError::CutsBacking { gpa: gpa(cut) })
            );
            assert_eq!(
                s.remove_range(gpa(G1), cut - G1),
                Err(AspaceError::CutsBacking { gpa: gpa(cut) })
            );
        }
        assert_eq!(snapshot(&s), before);
        {
            let f = s.remove_range(gpa(G1), G1).unwrap();
            s.complete(f);
        };
        assert_eq!(s.regions().count(), 0);
        assert_eq!(owned_frames(&s), 0);
        assert_eq!(s.translate(gpa(G1)), None);
        assert_eq!(s.hpa_to_gpa(info.hpa), None);
    }
    assert_eq!(alloc.live_frames(), 0);
}

/// 6 MiB + 12 KiB of eager RAM at a 2 MiB boundary: three 2 MiB leaves and
/// three 4 KiB ones, on every format.
fn eager_ram_2m<F: NptFormat>(base: usize) {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = GuestAddrSpace::<F, _>::new(&alloc, window(0, 1 << 34)).unwrap();
        let size = 3 * M2 + 3 * K4;
        s.add_ram(gpa(base), size, RW, false).unwrap().ignore();
        let st = s.table_stats();
        assert_eq!(
            (
                st.leaves_of(PageSize::Size2M),
                st.leaves_of(PageSize::Size4K)
            ),
            (3, 3)
        );
        assert_eq!(owned_frames(&s), size / K4);
        for (off, want) in [
            (0, PageSize::Size2M),
            (M2 + 5, PageSize::Size2M),
            (3 * M2 + K4, PageSize::Size4K),
        ] {
            let q = s.query(gpa(base + off)).unwrap();
            assert_eq!(
                (q.kind, q.page_size),
                (RegionKind::Ram, want),
                "at +{off:#x}"
            );
            assert_eq!(q.flags & RW, RW);
            assert_eq!(Some(q.hpa), s.translate(gpa(base + off)));
            assert_eq!(s.hpa_to_gpa(q.hpa), Some(gpa(base + off)));
        }
        // translate_range covers everything, in pieces no larger than the frames.
        let chunks = s.translate_range(gpa(base + 0x800), size - 0x800).unwrap();
        assert_eq!(chunks.iter().map(|c| c.len).sum::<usize>(), size - 0x800);
        assert_eq!(chunks[0].gpa, gpa(base + 0x800));
        for c in &chunks {
            assert_eq!(s.translate(c.gpa), Some(c.hpa));
            assert_eq!(
                s.translate(gpa(c.gpa.as_usize() + c.len - 1)),
                Some(hpa(c.hpa.as_usize() + c.len - 1))
            );
        }
        // Cutting a 2 MiB frame is refused.
        let before = snapshot(&s);
        assert_eq!(
            s.remove_range(gpa(base + M2 + K4), K4),
            Err(AspaceError::CutsBacking {
                gpa: gpa(base + M2 + K4)
            })
        );
        assert_eq!(
            s.remove_range(gpa(base), M2 + K4),
            Err(AspaceError::CutsBacking {
                gpa: gpa(base + M2 + K4)
            })
        );
        assert_eq!(snapshot(&s), before);
        // Removing the middle 2 MiB frame splits the region in two.
        let keep_lo = s.translate(gpa(base + 0x10)).unwrap();
        let keep_hi = s.translate(gpa(base + 2 * M2 + 0x10)).unwrap();
        {
            let f = s.remove_range(gpa(base + M2), M2).unwrap();
            s.complete(f);
        };
        let regions: Vec<_> = s.regions().collect();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].range, window(base, M2));
        assert_eq!(regions[1].range, window(base + 2 * M2, M2 + 3 * K4));
        assert_eq!(
            (regions[0].populated, regions[1].populated),
            (M2, M2 + 3 * K4)
        );
        assert_eq!(regions[1].backing, Backing::Alloc { lazy: false });
        assert_eq!(s.translate(gpa(base + 0x10)), Some(keep_lo));
        assert_eq!(s.translate(gpa(base + 2 * M2 + 0x10)), Some(keep_hi));
        assert_eq!(s.translate(gpa(base + M2)), None);
        assert!(!s.contains(gpa(base + M2)));
        assert_eq!(owned_frames(&s), (size - M2) / K4);
        // A 4 KiB frame at the tail can go alone.
        {
            let f = s.remove_range(gpa(base + 3 * M2 + K4), K4).unwrap();
            s.complete(f);
        };
        assert_eq!(s.regions().count(), 3);
        assert_eq!(owned_frames(&s), (size - M2 - K4) / K4);
        {
            let f = s.clear().unwrap();
            s.complete(f);
        };
        assert_eq!(s.regions().count(), 0);
        assert_eq!(s.table_stats().leaves, [0; 4]);
        assert_eq!(s.table_stats().table_frames, F::ROOT_FRAMES);
        assert_eq!(owned_frames(&s), 0);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn eager_ram_2m_aligned_uses_2m_leaves_ept() {
    eager_ram_2m::<Ept4>(0x8000_0000);
}

#[test]
fn eager_ram_2m_aligned_uses_2m_leaves_npt() {
    eager_ram_2m::<Npt4>(0x4020_0000);
}

#[test]
fn eager_ram_2m_aligned_uses_2m_leaves_stage2() {
    eager_ram_2m::<Stage2Ipa40>(0x8000_0000);
}

#[test]
fn eager_ram_2m_aligned_uses_2m_leaves_sv39x4() {
    eager_ram_2m::<Sv39x4>(0x8000_0000);
}

#[test]
fn eager_ram_2m_aligned_uses_2m_leaves_sv48x4() {
    eager_ram_2m::<Sv48x4>(0x1_0020_0000);
}

#[test]
fn eager_ram_unaligned_start_uses_4k_then_2m() {
    let alloc = HostFrameAllocator::new();
    let mut s = space(&alloc);
    // 4 KiB pages up to the next 2 MiB boundary, then one 2 MiB frame.
    s.add_ram(gpa(M2 - 2 * K4), M2 + 2 * K4, RW, false)
        .unwrap()
        .ignore();
    let st = s.table_stats();
    assert_eq!(
        (
            st.leaves_of(PageSize::Size2M),
            st.leaves_of(PageSize::Size4K)
        ),
        (1, 2)
    );
    assert_eq!(s.query(gpa(M2)).unwrap().page_size, PageSize::Size2M);
    drop(s);
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn lazy_ram_is_empty_until_touched_and_splits_on_partial_removal() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        let base = 0x4000_0000;
        s.add_ram(gpa(base), 16 * K4, RW, true).unwrap().ignore();
        assert_eq!(owned_frames(&s), 0);
        assert_eq!(s.table_stats().leaves, [0; 4]);
        assert_eq!(s.translate(gpa(base)), None);
        assert!(matches!(
            s.query(gpa(base)),
            Err(AspaceError::Table(NptError::NotMapped { .. }))
        ));
        assert!(
            matches!(s.translate_range(gpa(base), K4), Err(AspaceError::NotRam { gpa: g }) if g == gpa(base))
        );
        let r = s.find_region(gpa(base + 5)).unwrap();
        assert_eq!((r.backing, r.populated), (Backing::Alloc { lazy: true }, 0));
        for page in [1, 2, 14] {
            let out = s
                .handle_fault(gpa(base + page * K4 + 8), Access::Read)
                .unwrap();
            assert!(matches!(out, FaultOutcome::Fixed(_)));
        }
        let q = s.query(gpa(base + K4 + 3)).unwrap();
        assert_eq!((q.kind, q.page_size), (RegionKind::Ram, PageSize::Size4K));
        assert_eq!(s.hpa_to_gpa(q.hpa), Some(gpa(base + K4 + 3)));
        assert_eq!(s.find_region(gpa(base)).unwrap().populated, 3 * K4);
        assert_eq!(owned_frames(&s), 3);
        // translate_range fails at the first hole.
        assert_eq!(
            s.translate_range(gpa(base + K4), 3 * K4),
            Err(AspaceError::NotRam {
                gpa: gpa(base + 3 * K4)
            })
        );
        // Remove pages 2..4: pages 0-1 and 4-15 stay as two lazy regions.
        let hpa14 = s.translate(gpa(base + 14 * K4)).unwrap();
        {
            let f = s.remove_range(gpa(base + 2 * K4), 2 * K4).unwrap();
            s.complete(f);
        };
        let regions: Vec<_> = s.regions().collect();
        assert_eq!(regions.len(), 2);
        assert_eq!(
            (regions[0].range, regions[0].populated),
            (window(base, 2 * K4), K4)
        );
        assert_eq!(
            (regions[1].range, regions[1].populated),
            (window(base + 4 * K4, 12 * K4), K4)
        );
        assert!(regions.iter().all(is_lazy));
        assert_eq!(s.translate(gpa(base + 14 * K4)), Some(hpa14));
        assert_eq!(owned_frames(&s), 2);
        // The right part still populates on faults.
        assert!(matches!(
            s.handle_fault(gpa(base + 4 * K4), Access::Write).unwrap(),
            FaultOutcome::Fixed(_)
        ));
        assert_eq!(s.find_region(gpa(base + 4 * K4)).unwrap().populated, 2 * K4);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn identical_pass_through() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        let base = 0x4000_0000;
        let size = 2 * M2 + 2 * K4;
        s.add_identical(gpa(base), size, RW).unwrap().ignore();
        assert_eq!(owned_frames(&s), 0, "pass-through owns nothing");
        let st = s.table_stats();
        assert_eq!(
            (
                st.leaves_of(PageSize::Size2M),
                st.leaves_of(PageSize::Size4K)
            ),
            (2, 2)
        );
        for off in [0, 0x1234, M2 + 0x777, 2 * M2 + K4 + 1] {
            let q = s.query(gpa(base + off)).unwrap();
            assert_eq!(q.hpa, hpa(base + off));
            assert_eq!(q.kind, RegionKind::Identical);
            assert_eq!(s.hpa_to_gpa(q.hpa), Some(gpa(base + off)));
        }
        assert_eq!(
            s.translate_range(gpa(base), size).unwrap(),
            vec![HostChunk {
                gpa: gpa(base),
                hpa: hpa(base),
                len: size
            }]
        );
        let r = s.find_region(gpa(base)).unwrap();
        assert_eq!(
            (r.backing, r.populated, r.flags),
            (Backing::Identical, 0, RW)
        );
        // Cutting a 2 MiB leaf of pass-through memory is fine: it is split.
        {
            let f = s.remove_range(gpa(base + K4), K4).unwrap();
            s.complete(f);
        };
        let regions: Vec<_> = s.regions().collect();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].range, window(base, K4));
        assert_eq!(regions[1].range, window(base + 2 * K4, size - 2 * K4));
        assert_eq!(s.translate(gpa(base)), Some(hpa(base)));
        assert_eq!(s.translate(gpa(base + K4)), None);
        assert_eq!(s.translate(gpa(base + 2 * K4)), Some(hpa(base + 2 * K4)));
        assert_eq!(s.query(gpa(base + M2)).unwrap().page_size, PageSize::Size2M);
        assert_eq!(s.hpa_to_gpa(hpa(base + K4)), None);
        assert_eq!(owned_frames(&s), 0);
        // Pass-through memory is not host-accessible through the space.
        assert_eq!(
            s.read_u32(gpa(base)),
            Err(AspaceError::NotRam { gpa: gpa(base) })
        );
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn identical_allocating() {
    let alloc = HostFrameAllocator::new();
    {
        // The chosen GPA is a host heap address: give the space a wide window.
        let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 47)).unwrap();
        let size = 2 * M2;
        let (g, flush) = s.add_identical_alloc(size, RW).unwrap();
        flush.ignore();
        assert!(PageSize::Size2M.is_aligned(g.as_usize()));
        assert_eq!(owned_frames(&s), size / K4);
        assert_eq!(s.table_stats().leaves_of(PageSize::Size2M), 2);
        let q = s.query(g + 0x1234).unwrap();
        assert_eq!(
            (q.hpa.as_usize(), q.kind, q.page_size),
            (
                g.as_usize() + 0x1234,
                RegionKind::Identical,
                PageSize::Size2M
            )
        );
        assert_eq!(s.hpa_to_gpa(q.hpa), Some(g + 0x1234));
        let r = s.find_region(g).unwrap();
        assert_eq!(
            (r.backing, r.range),
            (Backing::AllocIdentical, window(g.as_usize(), size))
        );
        assert!(r.backing.is_owned());
        // All of it is allocated (this read 0 when only chunk records
        // counted, and an identical allocation has none).
        assert_eq!(r.populated, size);
        // Owned: the host can write it, and it starts zeroed.
        assert_eq!(s.read_u64(g + 8).unwrap(), 0);
        s.write_u64(g + 8, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(s.read_u64(g + 8).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(guest_visible(&s, g.as_usize() + 8, 2), vec![0x88, 0x77]);
        // One allocation: any cut is refused.
        let before = snapshot(&s);
        assert_eq!(
            s.remove_range(g + K4, K4),
            Err(AspaceError::CutsBacking { gpa: g + K4 })
        );
        assert_eq!(
            s.remove_range(g, K4),
            Err(AspaceError::CutsBacking { gpa: g + K4 })
        );
        assert_eq!(snapshot(&s), before);
        // A small one is placed anywhere page-aligned.
        let (g2, f2) = s.add_identical_alloc(3 * K4, RX).unwrap();
        f2.ignore();
        assert_eq!(s.translate(g2 + K4), Some(hpa(g2.as_usize() + K4)));
        assert_eq!(owned_frames(&s), size / K4 + 3);
        {
            let f = s.remove_range(g, size).unwrap();
            s.complete(f);
        };
        assert_eq!(owned_frames(&s), 3);
        assert_eq!(s.translate(g), None);
        // Zero and unaligned sizes and flags no format accepts are typed
        // errors, refused before anything is allocated.
        let before = snapshot(&s);
        let total = alloc.total_frames();
        assert!(matches!(
            s.add_identical_alloc(K4, MappingFlags::WRITE),
            Err(AspaceError::Table(_))
        ));
        assert_eq!(alloc.total_frames(), total);
        assert_eq!(
            s.add_identical_alloc(0, RW).map(|_| ()),
            Err(AspaceError::ZeroSize)
        );
        assert_eq!(
            s.add_identical_alloc(K4 + 1, RW).map(|_| ()),
            Err(AspaceError::NotAligned {
                value: K4 + 1,
                align: K4
            })
        );
        assert_eq!(snapshot(&s), before);
        assert_eq!(owned_frames(&s), 3);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn identical_allocating_outside_window_frees_memory() {
    let alloc = HostFrameAllocator::new();
    // A low window cannot hold a heap address.
    let mut s = space(&alloc);
    let live = alloc.live_frames();
    assert!(matches!(
        s.add_identical_alloc(4 * K4, RW),
        Err(AspaceError::OutsideWindow { .. })
    ));
    assert_eq!(alloc.live_frames(), live);
    assert_eq!(s.regions().count(), 0);
}

#[test]
fn linear_pass_through() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        let (base, host) = (0x1000_0000, 0x2_0000_0000);
        let size = M2 + K4;
        s.add_linear(gpa(base), hpa(host), size, RW)
            .unwrap()
            .ignore();
        let q = s.query(gpa(base + 0x1_2345)).unwrap();
        assert_eq!(
            (q.hpa, q.kind, q.page_size),
            (hpa(host + 0x1_2345), RegionKind::Linear, PageSize::Size2M)
        );
        assert_eq!(s.query(gpa(base + M2)).unwrap().page_size, PageSize::Size4K);
        assert_eq!(s.hpa_to_gpa(hpa(host + M2 + 4)), Some(gpa(base + M2 + 4)));
        assert_eq!(s.hpa_to_gpa(hpa(host + size)), None);
        assert_eq!(
            s.find_region(gpa(base)).unwrap().backing,
            Backing::Linear { hpa: hpa(host) }
        );
        // Removing the first page: the rest keeps its translation, and its
        // backing now starts one page further in the host.
        {
            let f = s.remove_range(gpa(base), K4).unwrap();
            s.complete(f);
        };
        let r = s.find_region(gpa(base + K4)).unwrap();
        assert_eq!(r.range, window(base + K4, size - K4));
        assert_eq!(
            r.backing,
            Backing::Linear {
                hpa: hpa(host + K4)
            }
        );
        assert_eq!(
            s.translate(gpa(base + 3 * K4 + 5)),
            Some(hpa(host + 3 * K4 + 5))
        );
        assert_eq!(
            s.hpa_to_gpa(hpa(host + 3 * K4 + 5)),
            Some(gpa(base + 3 * K4 + 5))
        );
        // Cutting the middle: the right piece's backing follows.
        {
            let f = s.remove_range(gpa(base + 4 * K4), K4).unwrap();
            s.complete(f);
        };
        let r = s.find_region(gpa(base + 5 * K4)).unwrap();
        assert_eq!(
            r.backing,
            Backing::Linear {
                hpa: hpa(host + 5 * K4)
            }
        );
        assert_eq!(s.hpa_to_gpa(hpa(host + 6 * K4)), Some(gpa(base + 6 * K4)));
        assert_eq!(s.hpa_to_gpa(hpa(host + 4 * K4)), None);
        assert_eq!(owned_frames(&s), 0);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn mmio_unmapped_and_pass_through() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        s.add_mmio(gpa(0x900_0000), 2 * K4, None).unwrap().ignore();
        assert_eq!(s.table_stats().leaves, [0; 4]);
        assert_eq!(s.translate(gpa(0x900_0000)), None);
        assert!(matches!(
            s.query(gpa(0x900_0004)),
            Err(AspaceError::Table(NptError::NotMapped { .. }))
        ));
        let r = s.find_region(gpa(0x900_1fff)).unwrap();
        assert_eq!(r.backing, Backing::Mmio { passthrough: None });
        assert_eq!(r.backing.kind(), RegionKind::Mmio);
        assert!(s.contains(gpa(0x900_0000)) && !s.contains(gpa(0x900_2000)));
        assert_eq!(
            s.translate_range(gpa(0x900_0000), 4),
            Err(AspaceError::NotRam {
                gpa: gpa(0x900_0000)
            })
        );

        let dev = 0xfe00_0000;
        s.add_mmio(gpa(0xa00_0000), M2, Some(hpa(dev)))
            .unwrap()
            .ignore();
        let q = s.query(gpa(0xa00_0010)).unwrap();
        assert_eq!(
            (q.hpa, q.kind, q.page_size),
            (hpa(dev + 0x10), RegionKind::Mmio, PageSize::Size2M)
        );
        assert!(q.flags.contains(MappingFlags::DEVICE), "{:?}", q.flags);
        assert!(q.flags.contains(RW));
        assert_eq!(s.hpa_to_gpa(hpa(dev + 0x1000)), Some(gpa(0xa00_1000)));
        // Remove the tail of the pass-through window.
        {
            let f = s.remove_range(gpa(0xa00_0000 + M2 - K4), K4).unwrap();
            s.complete(f);
        };
        assert_eq!(
            s.find_region(gpa(0xa00_0000)).unwrap().range,
            window(0xa00_0000, M2 - K4)
        );
        assert_eq!(s.translate(gpa(0xa00_0000 + M2 - K4)), None);
        assert_eq!(
            s.translate(gpa(0xa00_0000 + M2 - 2 * K4)),
            Some(hpa(dev + M2 - 2 * K4))
        );
        // And the middle of it: the right piece keeps its device offset.
        {
            let f = s.remove_range(gpa(0xa00_1000), K4).unwrap();
            s.complete(f);
        };
        assert_eq!(
            s.find_region(gpa(0xa00_2000)).unwrap().backing,
            Backing::Mmio {
                passthrough: Some(hpa(dev + 0x2000))
            }
        );
        {
            let f = s.remove_range(gpa(0x900_0000), 2 * K4).unwrap();
            s.complete(f);
        };
        assert!(!s.contains(gpa(0x900_0000)));
        assert_eq!(owned_frames(&s), 0);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn rom_is_owned_read_only() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        let base = 0x2000_0000;
        s.add_rom(gpa(base), 16 * K4, true).unwrap().ignore();
        s.add_rom(gpa(base + M2), 2 * K4, false).unwrap().ignore();
        assert_eq!(owned_frames(&s), 18);
        let q = s.query(gpa(base + 5)).unwrap();
        assert_eq!(q.kind, RegionKind::Rom);
        assert!(
            q.flags.contains(RX) && !q.flags.contains(MappingFlags::WRITE),
            "{:?}",
            q.flags
        );
        let q = s.query(gpa(base + M2)).unwrap();
        assert!(
            q.flags.contains(R)
                && !q
                    .flags
                    .intersects(MappingFlags::WRITE | MappingFlags::EXECUTE)
        );
        let r = s.find_region(gpa(base)).unwrap();
        assert_eq!(
            (r.backing, r.flags, r.populated),
            (Backing::Rom, RX, 16 * K4)
        );
        assert_eq!(s.hpa_to_gpa(q.hpa), Some(gpa(base + M2)));
        // Owned backing: partial removal at a page boundary is fine.
        {
            let f = s.remove_range(gpa(base + 4 * K4), 4 * K4).unwrap();
            s.complete(f);
        };
        assert_eq!(s.regions().count(), 3);
        assert_eq!(owned_frames(&s), 14);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn contains_find_and_adjacent_regions() {
    let alloc = HostFrameAllocator::new();
    let mut s = space(&alloc);
    let a = 0x100_0000;
    s.add_ram(gpa(a), 4 * K4, RW, true).unwrap().ignore();
    s.add_rom(gpa(a + 4 * K4), 2 * K4, false).unwrap().ignore();
    s.add_mmio(gpa(a + 6 * K4), K4, None).unwrap().ignore();
    s.add_ram(gpa(a + 8 * K4), K4, RW, false).unwrap().ignore(); // hole at page 7
    assert!(s.contains(gpa(a)) && s.contains(gpa(a + 7 * K4 - 1)));
    assert!(!s.contains(gpa(a - 1)) && !s.contains(gpa(a + 7 * K4)));
    assert!(s.contains_range(gpa(a), 7 * K4));
    assert!(
        s.contains_range(gpa(a + 3 * K4), 2 * K4),
        "spans two adjacent regions"
    );
    assert!(!s.contains_range(gpa(a), 8 * K4));
    assert!(!s.contains_range(gpa(a), 9 * K4));
    assert!(!s.contains_range(gpa(a - K4), 2 * K4));
    assert!(!s.contains_range(gpa(usize::MAX - 10), 20));
    assert_eq!(
        s.find_region(gpa(a + 4 * K4)).unwrap().backing,
        Backing::Rom
    );
    assert_eq!(
        s.find_region(gpa(a + 6 * K4 + 100)).unwrap().backing.kind(),
        RegionKind::Mmio
    );
    assert_eq!(s.find_region(gpa(a + 7 * K4)), None);
    assert_eq!(
        s.query(gpa(a + 7 * K4)),
        Err(AspaceError::NoRegion {
            gpa: gpa(a + 7 * K4)
        })
    );
    let starts: Vec<usize> = s.regions().map(|r| r.range.start.as_usize()).collect();
    assert_eq!(starts, vec![a, a + 4 * K4, a + 6 * K4, a + 8 * K4]);
    // Removing across three adjacent regions at once.
    {
        let f = s.remove_range(gpa(a + 2 * K4), 5 * K4).unwrap();
        s.complete(f);
    };
    let ranges: Vec<_> = s.regions().map(|r| r.range).collect();
    assert_eq!(ranges, vec![window(a, 2 * K4), window(a + 8 * K4, K4)]);
    // A removal that meets a hole names it and changes nothing.
    let before = snapshot(&s);
    assert_eq!(
        s.remove_range(gpa(a), 4 * K4),
        Err(AspaceError::NoRegion {
            gpa: gpa(a + 2 * K4)
        })
    );
    assert_eq!(
        s.remove_range(gpa(a + 9 * K4), K4),
        Err(AspaceError::NoRegion {
            gpa: gpa(a + 9 * K4)
        })
    );
    assert_eq!(snapshot(&s), before);
}

#[test]
fn add_errors_are_typed_and_change_nothing() {
    let alloc = HostFrameAllocator::new();
    {
        let lo = 0x1000_0000;
        let hi = lo + 0x1000_0000;
        let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(lo, hi - lo)).unwrap();
        let base = lo + 0x10_0000;
        s.add_ram(gpa(base), 8 * K4, RW, false).unwrap().ignore();
        s.add_mmio(gpa(base + 16 * K4), K4, None).unwrap().ignore();
        let before = snapshot(&s);
        let live = alloc.live_frames();
        type Add = fn(
            &mut GuestAddrSpace<Ept4, &HostFrameAllocator>,
            usize,
            usize,
        ) -> Result<(), AspaceError>;
        let adders: [(&str, Add); 7] = [
            ("ram", |s, g, n| {
                s.add_ram(gpa(g), n, RW, false).map(|f| f.ignore())
            }),
            ("lazy", |s, g, n| {
                s.add_ram(gpa(g), n, RW, true).map(|f| f.ignore())
            }),
            ("rom", |s, g, n| {
                s.add_rom(gpa(g), n, true).map(|f| f.ignore())
            }),
            ("identical", |s, g, n| {
                s.add_identical(gpa(g), n, RW).map(|f| f.ignore())
            }),
            ("linear", |s, g, n| {
                s.add_linear(gpa(g), hpa(0x8000_0000), n, RW)
                    .map(|f| f.ignore())
            }),
            ("mmio", |s, g, n| {
                s.add_mmio(gpa(g), n, None).map(|f| f.ignore())
            }),
            ("mmio-pt", |s, g, n| {
                s.add_mmio(gpa(g), n, Some(hpa(0xfe00_0000)))
                    .map(|f| f.ignore())
            }),
        ];
        for (name, add) in adders {
            let cases: [(usize, usize, AspaceError); 10] = [
                (base, 0, AspaceError::ZeroSize),
                (
                    base + 1,
                    K4,
                    AspaceError::NotAligned {
                        value: base + 1,
                        align: K4,
                    },
                ),
                (
                    base + 32 * K4,
                    K4 + 8,
                    AspaceError::NotAligned {
                        value: K4 + 8,
                        align: K4,
                    },
                ),
                (
                    base - K4,
                    2 * K4,
                    AspaceError::Overlap {
                        gpa: gpa(base - K4),
                        existing: gpa(base),
                    },
                ),
                (
                    base + 7 * K4,
                    K4,
                    AspaceError::Overlap {
                        gpa: gpa(base + 7 * K4),
                        existing: gpa(base),
                    },
                ),
                (
                    base - K4,
                    32 * K4,
                    AspaceError::Overlap {
                        gpa: gpa(base - K4),
                        existing: gpa(base + 16 * K4),
                    },
                ),
                (
                    base + 16 * K4,
                    K4,
                    AspaceError::Overlap {
                        gpa: gpa(base + 16 * K4),
                        existing: gpa(base + 16 * K4),
                    },
                ),
                (
                    lo - K4,
                    2 * K4,
                    AspaceError::OutsideWindow {
                        gpa: gpa(lo - K4),
                        len: 2 * K4,
                    },
                ),
                (
                    hi - K4,
                    2 * K4,
                    AspaceError::OutsideWindow {
                        gpa: gpa(hi - K4),
                        len: 2 * K4,
                    },
                ),
                (
                    usize::MAX & !(K4 - 1),
                    2 * K4,
                    AspaceError::OutsideWindow {
                        gpa: gpa(usize::MAX & !(K4 - 1)),
                        len: 2 * K4,
                    },
                ),
            ];
            for (g, n, want) in cases {
                assert_eq!(add(&mut s, g, n), Err(want), "{name} at {g:#x} x {n:#x}");
                assert_eq!(snapshot(&s), before, "{name} at {g:#x} x {n:#x}");
                assert_eq!(alloc.live_frames(), live, "{name} at {g:#x} x {n:#x}");
            }
        }
        // Bad flags (write without read) are the table's error.
        let wo = MappingFlags::WRITE;
        assert!(matches!(
            s.add_ram(gpa(base + 64 * K4), K4, wo, false),
            Err(AspaceError::Table(NptError::BadFlags(_)))
        ));
        assert!(matches!(
            s.add_ram(gpa(base + 64 * K4), K4, wo, true),
            Err(AspaceError::Table(NptError::BadFlags(_)))
        ));
        assert!(matches!(
            s.add_identical(gpa(base + 64 * K4), K4, wo),
            Err(AspaceError::Table(NptError::BadFlags(_)))
        ));
        assert_eq!(snapshot(&s), before);
        assert_eq!(alloc.live_frames(), live);
        // Adjacent on both sides is fine.
        s.add_ram(gpa(base - K4), K4, RW, true).unwrap().ignore();
        s.add_ram(gpa(base + 8 * K4), 8 * K4, RW, true)
            .unwrap()
            .ignore();
        s.add_ram(gpa(lo), K4, RW, true).unwrap().ignore();
        s.add_ram(gpa(hi - K4), K4, RW, true).unwrap().ignore();
        assert_eq!(s.regions().count(), 6);
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn remove_errors_are_typed_and_change_nothing() {
    let alloc = HostFrameAllocator::new();
    let mut s = space(&alloc);
    s.add_ram(gpa(M2), M2, RW, false).unwrap().ignore();
    let before = snapshot(&s);
    let live = alloc.live_frames();
    let cases = [
        (M2, 0, AspaceError::ZeroSize),
        (
            M2 + 1,
            K4,
            AspaceError::NotAligned {
                value: M2 + 1,
                align: K4,
            },
        ),
        (
            M2,
            K4 - 1,
            AspaceError::NotAligned {
                value: K4 - 1,
                align: K4,
            },
        ),
        (0, K4, AspaceError::NoRegion { gpa: gpa(0) }),
        (M2 - K4, 2 * K4, AspaceError::NoRegion { gpa: gpa(M2 - K4) }),
        (M2, M2 + K4, AspaceError::NoRegion { gpa: gpa(2 * M2) }),
        (M2 + K4, K4, AspaceError::CutsBacking { gpa: gpa(M2 + K4) }),
    ];
    for (g, n, want) in cases {
        assert_eq!(s.remove_range(gpa(g), n), Err(want), "{g:#x} x {n:#x}");
        assert_eq!(snapshot(&s), before);
        assert_eq!(alloc.live_frames(), live);
    }
}

#[test]
fn new_rejects_bad_windows() {
    let alloc = HostFrameAllocator::new();
    assert!(matches!(
        GuestAddrSpace::<Ept4, _>::new(&alloc, window(K4, 0)),
        Err(AspaceError::ZeroSize)
    ));
    assert!(matches!(
        GuestAddrSpace::<Ept4, _>::new(&alloc, window(0x800, K4)),
        Err(AspaceError::NotAligned {
            value: 0x800,
            align: K4
        })
    ));
    assert!(matches!(
        GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, K4 + 0x800)),
        Err(AspaceError::NotAligned {
            value: 0x1800,
            align: K4
        })
    ));
    assert!(matches!(
        GuestAddrSpace::<Sv39x4, _>::new(&alloc, window(0, (1 << 41) + K4)),
        Err(AspaceError::OutsideWindow { .. })
    ));
    let ok = GuestAddrSpace::<Sv39x4, _>::new(&alloc, window(0, 1 << 41)).unwrap();
    assert_eq!(ok.window(), window(0, 1 << 41));
    drop(ok);
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn clear_removes_every_kind_and_space_is_reusable() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 47)).unwrap();
        s.add_ram(gpa(0x4000_0000), 2 * M2, RW, false)
            .unwrap()
            .ignore();
        s.add_ram(gpa(0x5000_0000), 4 * K4, RW, true)
            .unwrap()
            .ignore();
        let _ = s.handle_fault(gpa(0x5000_1000), Access::Write).unwrap();
        s.add_identical(gpa(0x6000_0000), M2, RW).unwrap().ignore();
        s.add_identical_alloc(M2, RW).unwrap().1.ignore();
        s.add_linear(gpa(0x7000_0000), hpa(0x1_0000_0000), 3 * K4, RW)
            .unwrap()
            .ignore();
        s.add_mmio(gpa(0x900_0000), K4, None).unwrap().ignore();
        s.add_mmio(gpa(0xa00_0000), K4, Some(hpa(0xfe00_0000)))
            .unwrap()
            .ignore();
        s.add_rom(gpa(0x100_0000), 4 * K4, true).unwrap().ignore();
        assert_eq!(s.regions().count(), 8);
        let live = alloc.live_frames();
        let flush = s.clear().unwrap();
        assert!(!flush.is_empty());
        assert!(flush.parks_frames());
        assert_eq!(s.regions().count(), 0);
        assert_eq!(s.table_stats().leaves, [0; 4]);
        assert_eq!(s.table_stats().table_frames, 1);
        assert_eq!(
            alloc.live_frames(),
            live,
            "nothing is released before the flush is completed"
        );
        assert_eq!(s.complete(flush), live - 1);
        assert_eq!(alloc.live_frames(), 1, "only the root is left");
        assert_eq!(s.translate(gpa(0x4000_0000)), None);
        // Clearing an empty space is fine too.
        {
            let f = s.clear().unwrap();
            s.complete(f);
        };
        s.add_ram(gpa(0x4000_0000), 2 * M2, RW, false)
            .unwrap()
            .ignore();
        assert!(s.translate(gpa(0x4000_0000)).is_some());
    }
    assert_eq!(alloc.live_frames(), 0);
}

#[test]
fn drop_returns_every_frame() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = GuestAddrSpace::<Stage2Ipa40, _>::new(&alloc, window(0, 1 << 40)).unwrap();
        s.add_ram(gpa(0x4000_0000), 3 * M2 + 5 * K4, RWX, false)
            .unwrap()
            .ignore();
        s.add_ram(gpa(0x5000_0000), 64 * K4, RW, true)
            .unwrap()
            .ignore();
        for p in 0..64 {
            let _ = s
                .handle_fault(gpa(0x5000_0000 + p * K4), Access::Read)
                .unwrap();
        }
        s.add_rom(gpa(0x100_0000), 4 * K4, true).unwrap().ignore();
        s.add_identical(gpa(0x6000_0000), M2 + K4, RW)
            .unwrap()
            .ignore();
        {
            let f = s.remove_range(gpa(0x6000_0000 + K4), K4).unwrap();
            s.complete(f);
        };
        assert!(alloc.live_frames() > 0);
        assert!(alloc.owns(s.root_hpa()));
    }
    assert_eq!(alloc.live_frames(), 0);
}

/// Eager RAM whose edges are not 2 MiB aligned: single 4 KiB frames around
/// one 2 MiB chunk. Single frames have no record but their leaves, so
/// reverse lookup, partial removal and `clear` must find them there.
#[test]
fn single_frames_are_found_through_their_leaves() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = space(&alloc);
        let base = 0x4000_0000 + M2 - 2 * K4;
        s.add_ram(gpa(base), M2 + 4 * K4, RW, false)
            .unwrap()
            .ignore();
        assert_eq!(s.table_stats().leaves_of(PageSize::Size2M), 1);
        assert_eq!(s.table_stats().leaves_of(PageSize::Size4K), 4);
        assert_eq!(owned_frames(&s), M2 / K4 + 4);
        // Every frame maps back to its page: the single frames by a walk of
        // the leaves, the chunk by its record.
        for at in [
            base,
            base + K4 + 9,
            base + 2 * K4 + 0x1234,
            base + M2 + 3 * K4,
        ] {
            let h = s.translate(gpa(at)).unwrap();
            assert_eq!(s.hpa_to_gpa(h), Some(gpa(at)), "reverse of {at:#x}");
        }
        // The chunk cannot be cut; the single frames can be removed one by one.
        assert_eq!(
            s.remove_range(gpa(base + 3 * K4), K4),
            Err(AspaceError::CutsBacking {
                gpa: gpa(base + 3 * K4)
            })
        );
        let gone = s.translate(gpa(base + K4)).unwrap();
        {
            let f = s.remove_range(gpa(base + K4), K4).unwrap();
            s.complete(f);
        };
        assert_eq!(owned_frames(&s), M2 / K4 + 3);
        assert_eq!(s.hpa_to_gpa(gone), None);
        let regions: Vec<_> = s.regions().collect();
        assert_eq!(
            regions.iter().map(|r| r.populated).collect::<Vec<_>>(),
            vec![K4, M2 + 2 * K4]
        );
        {
            let f = s.clear().unwrap();
            s.complete(f);
        };
        assert_eq!(owned_frames(&s), 0);
    }
    assert_eq!(alloc.live_frames(), 0);
}

/// Records the alignment of each request for more than 16 frames (more than
/// a concatenated root) and refuses it.
struct AlignSpy<'a> {
    inner: &'a HostFrameAllocator,
    aligns: std::sync::Mutex<Vec<usize>>,
}

// SAFETY: table frames come from `inner`, which upholds the contract;
// larger requests are refused.
unsafe impl npt_table::FrameAllocator for AlignSpy<'_> {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<gpa_types::HostPhysAddr> {
        if count <= 16 {
            return self.inner.alloc_frames(count, align);
        }
        self.aligns.lock().unwrap().push(align);
        None
    }
    fn dealloc_frames(&self, hpa: gpa_types::HostPhysAddr, count: usize) {
        self.inner.dealloc_frames(hpa, count)
    }
    fn phys_to_virt(&self, hpa: gpa_types::HostPhysAddr) -> *mut u8 {
        self.inner.phys_to_virt(hpa)
    }
}

fn identical_alloc_align<F: NptFormat>(size: usize) -> usize {
    let alloc = HostFrameAllocator::new();
    let spy = AlignSpy {
        inner: &alloc,
        aligns: Default::default(),
    };
    {
        let mut s = GuestAddrSpace::<F, _>::new(&spy, window(0, 1 << 32)).unwrap();
        assert_eq!(
            s.add_identical_alloc(size, RW).map(|(g, f)| {
                f.ignore();
                g
            }),
            Err(AspaceError::NoMemory)
        );
    }
    assert_eq!(alloc.live_frames(), 0);
    let aligns = spy.aligns.lock().unwrap();
    assert_eq!(aligns.len(), 1);
    aligns[0]
}

/// 2-level stage 2 (32..=34-bit IPA) has no 1 GiB leaf: allocating identical
/// memory asks for 2 MiB alignment there, 1 GiB where the format has the leaf.
#[test]
fn identical_alloc_aligns_to_a_leaf_the_format_has() {
    use npt_entry::stage2::Stage2;
    assert_eq!(identical_alloc_align::<Stage2<32>>(G1), M2);
    assert_eq!(identical_alloc_align::<Stage2<34>>(2 * G1), M2);
    assert_eq!(identical_alloc_align::<Stage2Ipa40>(G1), G1);
    assert_eq!(identical_alloc_align::<Ept4>(G1), G1);
    assert_eq!(identical_alloc_align::<Stage2<32>>(M2), M2);
    assert_eq!(identical_alloc_align::<Stage2<32>>(M2 - K4), K4);
}

#[test]
fn ram_page_limit_forces_4k_backing_that_can_be_cut() {
    let alloc = HostFrameAllocator::new();
    {
        let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 36)).unwrap();
        // Default: 2 MiB frames, which a 4 KiB cut refuses.
        s.add_ram(gpa(0x4000_0000), 2 * M2, RW, false)
            .unwrap()
            .ignore();
        assert_eq!(s.table_stats().leaves_of(PageSize::Size2M), 2);
        assert!(matches!(
            s.remove_range(gpa(0x4000_1000), K4),
            Err(AspaceError::CutsBacking { .. })
        ));
        // Limited to 4 KiB: no huge leaf, and the cut works.
        s.set_ram_page_limit(PageSize::Size4K);
        assert_eq!(s.ram_page_limit(), PageSize::Size4K);
        s.add_ram(gpa(0x8000_0000), 2 * M2, RW, false)
            .unwrap()
            .ignore();
        assert_eq!(s.table_stats().leaves_of(PageSize::Size2M), 2);
        assert_eq!(s.table_stats().leaves_of(PageSize::Size4K), 1024);
        let f = s.remove_range(gpa(0x8000_1000), K4).unwrap();
        s.complete(f);
        assert!(s.translate(gpa(0x8000_1000)).is_none());
        assert!(s.translate(gpa(0x8000_2000)).is_some());
    }
    assert_eq!(alloc.live_frames(), 0);
}
