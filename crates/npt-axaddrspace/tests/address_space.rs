//! axaddrspace 0.6's `AddrSpace` driven over `npt-table` through the bridge,
//! for every format: host addresses checked against what was asked, and
//! frames counted by the allocator (none leaks, none comes back before its
//! flush is completed).

use ax_memory_addr::PhysAddr;
use axaddrspace::{AddrSpace, AddrSpaceError, MappingFlags, NestedPageTableOps, PageSize};
use axvm_types::GuestPhysAddr;
use gpa_types::PageSize as OurSize;
use npt_axaddrspace::AxNpt;
use npt_entry::NptFormat;
use npt_entry::ept::Ept4;
use npt_entry::gstage::Sv39x4;
use npt_entry::npt::Npt4;
use npt_entry::stage2::Stage2Ipa40;
use npt_table::{FRAME_SIZE, FrameAllocator, HostFrameAllocator};

type Space<'a, F> = AddrSpace<AxNpt<F, &'a HostFrameAllocator>>;

const RAM: usize = 0x8000_0000;
const MMIO: usize = 0xfec0_0000;

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a)
}

fn hpa(a: usize) -> PhysAddr {
    PhysAddr::from_usize(a)
}

fn rw() -> MappingFlags {
    MappingFlags::READ | MappingFlags::WRITE
}

fn rwx() -> MappingFlags {
    rw() | MappingFlags::EXECUTE
}

fn space<F: NptFormat>(alloc: &HostFrameAllocator) -> Space<'_, F> {
    let table = AxNpt::<F, _>::new(alloc).expect("root");
    AddrSpace::new_empty(table, gpa(0), 1 << 32).expect("window")
}

/// Table frames in use (root included) plus parked ones.
fn table_frames<F: NptFormat>(s: &Space<'_, F>) -> usize {
    s.page_table().with_table(|t| t.stats().table_frames) + s.page_table().parked_frames()
}

/// Flushes what is pending (as INVEPT/TLBI would) and completes it.
fn flush_and_complete<F: NptFormat>(s: &Space<'_, F>) -> usize {
    let flush = s.page_table().take_flush();
    s.page_table().complete(flush)
}

fn map_linear_translates<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut s = space::<F>(&alloc);
    // 4 MiB + 4 KiB of RAM at an HPA 2 MiB aligned: two 2 MiB leaves and a
    // 4 KiB one (1 GiB leaves need 1 GiB alignment).
    let host = 0x1_0000_0000;
    s.map_linear(gpa(RAM), hpa(host), (4 << 20) + 0x1000, rwx())
        .unwrap();
    let dev = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::DEVICE;
    s.map_linear(gpa(MMIO), hpa(MMIO), 0x1000, dev).unwrap();
    for off in [0, 0x1234, 0x20_0000, 0x3f_ffff, 0x40_0fff] {
        assert_eq!(
            s.translate(gpa(RAM + off)),
            Some(hpa(host + off)),
            "{off:#x}"
        );
    }
    assert_eq!(s.translate(gpa(RAM + 0x40_1000)), None);
    assert_eq!(s.translate(gpa(MMIO + 0x20)), Some(hpa(MMIO + 0x20)));
    assert_eq!(s.translate(gpa(1 << 33)), None, "outside the window");
    let stats = s.page_table().with_table(|t| t.stats());
    assert_eq!(stats.leaves_of(OurSize::Size2M), 2);
    assert_eq!(stats.leaves_of(OurSize::Size4K), 2);
    let (pa, flags, size) = s.page_table().query(gpa(RAM + 0x1234)).unwrap();
    assert_eq!((pa, size), (hpa(host + 0x1234), PageSize::Size2M));
    assert!(flags.contains(rwx()));
    let (_, flags, size) = s.page_table().query(gpa(MMIO)).unwrap();
    assert_eq!(size, PageSize::Size4K);
    assert!(flags.contains(MappingFlags::DEVICE), "{flags:?}");
    assert_eq!(
        s.translate_and_get_limit(gpa(RAM + 0x1000)),
        Some((hpa(host + 0x1000), (4 << 20) + 0x1000))
    );
    // Mapping made: no leaf was replaced, nothing to flush for the table
    // (records of new leaves may name them; completing frees nothing).
    assert_eq!(flush_and_complete(&s), 0);
    let mapped = alloc.live_frames();
    assert_eq!(mapped, table_frames(&s));

    // Cut a page out of the first 2 MiB leaf: split, the rest stays.
    s.unmap(gpa(RAM + 0x10_0000), 0x1000).unwrap();
    assert_eq!(s.translate(gpa(RAM + 0x10_0000)), None);
    assert_eq!(
        s.translate(gpa(RAM + 0x10_1000)),
        Some(hpa(host + 0x10_1000))
    );
    assert_eq!(s.translate(gpa(RAM + 0xf_f000)), Some(hpa(host + 0xf_f000)));
    let flush = s.page_table().take_flush();
    assert!(flush.is_all() || flush.ranges().any(|r| r.contains(0x8010_0000.into())));
    s.page_table().complete(flush);
    assert!(!s.page_table().flush_pending());

    // Overlap is refused by axaddrspace's own area check.
    assert_eq!(
        s.map_linear(gpa(RAM), hpa(host), 0x1000, rw()),
        Err(AddrSpaceError::MappingConflict)
    );

    s.clear();
    assert_eq!(s.translate(gpa(RAM + 0x1234)), None);
    assert_eq!(s.translate(gpa(MMIO)), None);
    // Emptied tables are parked until the clear's record is completed.
    let before = alloc.live_frames();
    let released = flush_and_complete(&s);
    assert_eq!(alloc.live_frames(), before - released);
    assert_eq!(s.page_table().parked_frames(), 0);
    assert_eq!(alloc.live_frames(), F::ROOT_FRAMES);
    drop(s);
    assert_eq!(alloc.live_frames(), 0);
}

fn map_alloc_populated<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut s = space::<F>(&alloc);
    let pages = 5;
    s.map_alloc(gpa(RAM), pages * 0x1000, rw(), true).unwrap();
    let mut hpas = Vec::new();
    for i in 0..pages {
        let h = s.translate(gpa(RAM + i * 0x1000 + 8)).expect("populated");
        assert_eq!(h.as_usize() % FRAME_SIZE, 8);
        let frame = h.as_usize() - 8;
        assert!(alloc.owns(frame.into()), "frame from the table's allocator");
        // Zeroed before the guest sees it.
        let p = alloc.phys_to_virt(frame.into());
        // SAFETY: a live 4 KiB frame of `alloc`, mapped, not written by anyone.
        let bytes = unsafe { core::slice::from_raw_parts(p, FRAME_SIZE) };
        assert!(bytes.iter().all(|&b| b == 0));
        hpas.push(frame);
    }
    hpas.sort();
    hpas.dedup();
    assert_eq!(hpas.len(), pages, "distinct frames");
    assert_eq!(alloc.live_frames(), table_frames(&s) + pages);

    // Copy through axaddrspace's accessor and read back by HPA.
    let bufs = s.translated_byte_buffer(gpa(RAM + 0xff0), 0x20).unwrap();
    assert_eq!(bufs.len(), 2, "one slice per page");
    for b in bufs {
        b.fill(0x5a);
    }
    let h = s.translate(gpa(RAM + 0x1000)).unwrap();
    // SAFETY: a live frame of `alloc`; the slices above are no longer used.
    let first = unsafe { *alloc.phys_to_virt(h.as_usize().into()) };
    assert_eq!(first, 0x5a);

    // Unmap two pages in the middle: their frames wait for the flush.
    let live = alloc.live_frames();
    s.unmap(gpa(RAM + 0x1000), 0x2000).unwrap();
    assert_eq!(s.translate(gpa(RAM + 0x1000)), None);
    assert!(s.translate(gpa(RAM)).is_some());
    assert!(s.translate(gpa(RAM + 0x3000)).is_some());
    assert_eq!(alloc.live_frames(), live, "nothing freed before the flush");
    assert!(s.page_table().parked_frames() >= 2);
    let released = flush_and_complete(&s);
    assert_eq!(released, 2);
    assert_eq!(alloc.live_frames(), live - 2);

    s.clear();
    let released = flush_and_complete(&s);
    assert!(
        released >= 3,
        "the last three guest frames, and emptied tables"
    );
    assert_eq!(alloc.live_frames(), F::ROOT_FRAMES);
    assert_eq!(s.page_table().leaked_frames(), 0);
    drop(s);
    assert_eq!(alloc.live_frames(), 0);
}

fn map_alloc_lazy_faults<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut s = space::<F>(&alloc);
    s.map_alloc(gpa(RAM), 0x10_0000, rw(), false).unwrap();
    assert_eq!(s.translate(gpa(RAM)), None);
    assert_eq!(alloc.live_frames(), F::ROOT_FRAMES, "nothing populated");

    // A write fault populates one zeroed page.
    assert!(s.handle_page_fault(gpa(RAM + 0x5678), MappingFlags::WRITE));
    let h = s.translate(gpa(RAM + 0x5678)).unwrap();
    assert_eq!(h.as_usize() % FRAME_SIZE, 0x678);
    assert_eq!(alloc.live_frames(), table_frames(&s) + 1);
    // SAFETY: the live frame just mapped; nothing else writes it.
    unsafe { *alloc.phys_to_virt(h.as_usize().into()) = 0x77 };

    // A second fault on the same page (another vCPU raced): the page and
    // its data are kept, the extra frame goes back.
    let live = alloc.live_frames();
    assert!(s.handle_page_fault(gpa(RAM + 0x5000), MappingFlags::READ));
    assert_eq!(s.translate(gpa(RAM + 0x5678)), Some(h));
    assert_eq!(alloc.live_frames(), live);
    // SAFETY: as above.
    assert_eq!(unsafe { *alloc.phys_to_virt(h.as_usize().into()) }, 0x77);

    // Faults the area does not allow, or outside every area, are real.
    assert!(!s.handle_page_fault(gpa(RAM + 0x6000), MappingFlags::EXECUTE));
    assert!(!s.handle_page_fault(gpa(RAM + 0x20_0000), MappingFlags::READ));
    assert!(!s.handle_page_fault(gpa(1 << 33), MappingFlags::READ));
    assert_eq!(s.translate(gpa(RAM + 0x6000)), None);

    assert!(s.handle_page_fault(gpa(RAM + 0xf_f000), MappingFlags::READ));
    assert_eq!(alloc.live_frames(), table_frames(&s) + 2);

    s.unmap(gpa(RAM), 0x10_0000).unwrap();
    assert_eq!(s.translate(gpa(RAM + 0x5678)), None);
    flush_and_complete(&s);
    assert_eq!(alloc.live_frames(), F::ROOT_FRAMES);
    drop(s);
    assert_eq!(alloc.live_frames(), 0);
}

/// Dropping the space (axaddrspace clears it) without completing anything
/// still returns every frame: the table releases what is parked as it goes.
fn drop_without_complete<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut s = space::<F>(&alloc);
    s.map_alloc(gpa(RAM), 0x8000, rw(), true).unwrap();
    s.map_alloc(gpa(RAM + 0x40_0000), 0x8000, rw(), false)
        .unwrap();
    assert!(s.handle_page_fault(gpa(RAM + 0x40_3000), MappingFlags::WRITE));
    s.map_linear(gpa(MMIO), hpa(MMIO), 0x2000, rw()).unwrap();
    assert!(alloc.live_frames() > 9);
    drop(s);
    assert_eq!(alloc.live_frames(), 0);
}

macro_rules! for_each_format {
    ($($name:ident => $f:ty),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn map_linear_translates() { super::map_linear_translates::<$f>() }
            #[test]
            fn map_alloc_populated() { super::map_alloc_populated::<$f>() }
            #[test]
            fn map_alloc_lazy_faults() { super::map_alloc_lazy_faults::<$f>() }
            #[test]
            fn drop_without_complete() { super::drop_without_complete::<$f>() }
        }
    )*};
}

for_each_format! {
    ept => Ept4,
    npt => Npt4,
    stage2 => Stage2Ipa40,
    gstage => Sv39x4,
}

// ---- the trait's calls that AddrSpace 0.6 never makes, called directly ----

#[test]
fn trait_calls_convert_and_refuse_what_cannot_be_said() {
    let alloc = HostFrameAllocator::new();
    let mut t = AxNpt::<Ept4, _>::new(&alloc).unwrap();
    assert_eq!(t.levels(), 4);
    assert_eq!(
        t.root_paddr().as_usize(),
        t.with_table(|t| t.root_hpa()).as_usize()
    );
    // No 1 MiB leaf in any second-stage format.
    assert_eq!(
        t.map(gpa(RAM), hpa(0x10_0000), PageSize::Size1M, rw()),
        Err(AddrSpaceError::InvalidMapping)
    );
    t.map(gpa(RAM), hpa(0x20_0000), PageSize::Size2M, rw())
        .unwrap();
    assert_eq!(
        t.map(gpa(RAM), hpa(0x20_0000), PageSize::Size4K, rw()),
        Err(AddrSpaceError::MappingConflict)
    );
    assert!(matches!(
        t.unmap(gpa(RAM + 0x800)),
        Err(AddrSpaceError::Unaligned {
            value: 0x8000_0800,
            ..
        })
    ));
    // Not the start of the leaf: refused, kept.
    assert_eq!(
        t.unmap(gpa(RAM + 0x1000)),
        Err(AddrSpaceError::InvalidMapping)
    );
    assert_eq!(
        t.unmap(gpa(RAM + 0x40_0000)),
        Err(AddrSpaceError::Unmapped {
            address: gpa(RAM + 0x40_0000)
        })
    );

    // protect_region splits the leaf at the edges and changes the flags.
    assert!(t.protect_region(gpa(RAM + 0x1000), 0x1000, MappingFlags::READ));
    let (_, flags, size) = t.query(gpa(RAM + 0x1000)).unwrap();
    assert_eq!(size, PageSize::Size4K);
    assert!(!flags.contains(MappingFlags::WRITE));
    assert!(t.query(gpa(RAM)).unwrap().1.contains(MappingFlags::WRITE));
    // Nothing mapped there yet (lazy memory): nothing to change, success.
    assert!(t.protect_region(gpa(RAM + 0x100_0000), 0x1000, MappingFlags::READ));

    let (pa, _, size) = t.unmap(gpa(RAM)).unwrap();
    assert_eq!((pa, size), (hpa(0x20_0000), PageSize::Size4K));
    assert!(t.flush_pending());
    let flush = t.take_flush();
    assert!(!flush.is_empty());
    t.complete(flush);

    // remap maps a vacant page and takes the frame; over a huge leaf it
    // refuses and gives the frame back.
    let frame = t.alloc_frame().unwrap();
    assert!(t.remap(gpa(RAM + 0x100_0123), frame, rw()));
    assert_eq!(
        t.translate(gpa(RAM + 0x100_0123)),
        Some(hpa(frame.as_usize() + 0x123))
    );
    t.map(gpa(0x4000_0000), hpa(0x4000_0000), PageSize::Size1G, rw())
        .unwrap();
    let live = alloc.live_frames();
    let frame = t.alloc_frame().unwrap();
    assert!(!t.remap(gpa(0x4000_0000), frame, rw()));
    assert_eq!(alloc.live_frames(), live);

    assert_eq!(t.leaked_frames(), 0);
    let (table, pending) = t.into_parts();
    let mut table = table;
    table.complete(pending);
    drop(table);
    // The one frame remap took is guest backing the caller owns; without
    // AddrSpace nobody unmaps it, so it is the only one left.
    assert_eq!(alloc.live_frames(), 1);
}

#[test]
fn complete_all_releases_parked_and_pending() {
    let alloc = HostFrameAllocator::new();
    let mut s = space::<Sv39x4>(&alloc);
    s.map_alloc(gpa(RAM), 0x4000, rw(), true).unwrap();
    s.unmap(gpa(RAM), 0x4000).unwrap();
    assert!(s.page_table().parked_frames() >= 4);
    assert!(s.page_table().complete_all() >= 4);
    assert!(!s.page_table().flush_pending());
    assert_eq!(alloc.live_frames(), Sv39x4::ROOT_FRAMES);
}

// ---- out of frames: refused, rolled back, nothing leaked by the bridge ----

#[test]
fn out_of_table_frames_refuses_map_linear_and_keeps_the_space() {
    let host = HostFrameAllocator::new();
    let alloc = npt_table::FailingAllocator::new(&host);
    let table = AxNpt::<Ept4, _>::new(&alloc).unwrap();
    let mut s = AddrSpace::new_empty(table, gpa(0), 1 << 32).unwrap();
    alloc.fail_from(2); // the first new table comes, the second does not
    assert_eq!(
        s.map_linear(gpa(RAM), hpa(0x1_0000_0000), 0x1000, rw()),
        Err(AddrSpaceError::MappingState)
    );
    assert_eq!(s.translate(gpa(RAM)), None);
    assert_eq!(host.live_frames(), 1, "only the root");
    alloc.heal();
    s.map_linear(gpa(RAM), hpa(0x1_0000_0000), 0x1000, rw())
        .unwrap();
    assert_eq!(s.translate(gpa(RAM)), Some(hpa(0x1_0000_0000)));
    drop(s);
    assert_eq!(host.live_frames(), 0);
}

#[test]
fn out_of_frames_on_a_lazy_fault_is_a_real_fault_and_leaks_nothing() {
    let host = HostFrameAllocator::new();
    let alloc = npt_table::FailingAllocator::new(&host);
    let table = AxNpt::<Sv39x4, _>::new(&alloc).unwrap();
    let mut s = AddrSpace::new_empty(table, gpa(0), 1 << 32).unwrap();
    s.map_alloc(gpa(RAM), 0x4000, rw(), false).unwrap();
    for n in 1..=3 {
        // The guest frame, then each table the page needs.
        alloc.fail_from(n);
        assert!(
            !s.handle_page_fault(gpa(RAM), MappingFlags::READ),
            "fail at {n}"
        );
        assert_eq!(s.translate(gpa(RAM)), None);
        assert_eq!(host.live_frames(), Sv39x4::ROOT_FRAMES);
    }
    alloc.heal();
    assert!(s.handle_page_fault(gpa(RAM), MappingFlags::READ));
    drop(s);
    assert_eq!(host.live_frames(), 0);
}

/// A populated `map_alloc` that runs out half way: axaddrspace rolls back
/// the pages mapped so far (the bridge parks their frames); at most the one
/// frame whose map failed is lost, by axaddrspace, which never frees it
/// (documented in docs/MIGRATING-FROM-AXADDRSPACE.md).
#[test]
fn out_of_frames_in_a_populated_map_alloc_rolls_back() {
    for n in 1..=12 {
        let host = HostFrameAllocator::new();
        let alloc = npt_table::FailingAllocator::new(&host);
        let table = AxNpt::<Ept4, _>::new(&alloc).unwrap();
        let mut s = AddrSpace::new_empty(table, gpa(0), 1 << 32).unwrap();
        alloc.fail_from(n);
        let result = s.map_alloc(gpa(RAM), 0x4000, rw(), true);
        alloc.heal();
        if result.is_err() {
            for i in 0..4 {
                assert_eq!(s.translate(gpa(RAM + i * 0x1000)), None, "fail at {n}");
            }
        }
        assert_eq!(s.page_table().leaked_frames(), 0);
        drop(s);
        assert!(
            host.live_frames() <= 1,
            "fail at {n}: {}",
            host.live_frames()
        );
    }
}
