//! Table frames past the physical width an entry can hold, and the
//! accessed/dirty state a collapse must keep.
//!
//! Both were defects found by an outside suite: a table frame above the
//! width was linked with its address truncated (the next walk followed it
//! into memory the allocator never handed out), and a collapse kept only
//! the first leaf's accessed/dirty bits.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{
    AccessBit, FrameError, HighAllocator, HostFrameAllocator, MapPolicy, NestedPageTable, NptError,
    QueryError, mmu,
};

const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from(a)
}

/// Every table frame is checked, the root included, and a refusal changes
/// nothing and leaks nothing.
fn table_frames_past_the_width_are_refused<F: NptFormat>() {
    let host = HostFrameAllocator::new();
    let offset = 1usize << F::PA_BITS;
    let high = HighAllocator::new(&host, offset);

    // A root above the width.
    high.raise();
    let root = NestedPageTable::<F, _>::new(&high).map(|_| ());
    assert!(
        matches!(root, Err(FrameError::TableFrameOutOfRange { pa_bits, .. }) if pa_bits == F::PA_BITS),
        "{}: {root:?}",
        F::NAME
    );
    assert_eq!(host.live_frames(), 0, "{}: the root went back", F::NAME);

    // A root below it, then table frames above it.
    let high = HighAllocator::new(&host, offset);
    let mut t = NestedPageTable::<F, _>::new(&high).unwrap();
    let g = 0x4000_0000 % F::GPA_LIMIT as usize;
    let h = HostPhysAddr::from(0x8000_0000);
    t.map(gpa(g + M2), h, PageSize::Size2M, RW)
        .unwrap()
        .ignore();
    let stats = t.stats();
    let live = host.live_frames();
    high.raise();
    let refused = |e: NptError| matches!(e, NptError::TableFrameOutOfRange { pa_bits, .. } if pa_bits == F::PA_BITS);
    let e = t.map(gpa(g), h, PageSize::Size4K, RW).unwrap_err();
    assert!(refused(e.into()), "{}: map {e:?}", F::NAME);
    let e = t
        .map_region(gpa(g), h, 2 * K4, RW, MapPolicy::Only4K)
        .unwrap_err();
    assert!(refused(e.into()), "{}: map_region {e:?}", F::NAME);
    // Splitting the 2 MiB leaf needs a table frame too.
    let e = t.unmap_region(gpa(g + M2), K4).unwrap_err();
    assert!(refused(e.into()), "{}: split {e:?}", F::NAME);
    let e = t.split_region(gpa(g + M2), M2).unwrap_err();
    assert!(refused(e.into()), "{}: split_region {e:?}", F::NAME);
    assert_eq!(t.stats(), stats, "{}", F::NAME);
    assert_eq!(host.live_frames(), live, "{}", F::NAME);
    assert_eq!(
        t.query(gpa(g)).unwrap_err(),
        QueryError::NotMapped { gpa: gpa(g) }
    );
    assert_eq!(t.query(gpa(g + M2 + K4)).unwrap().size, PageSize::Size2M);
    drop(t);
    assert_eq!(host.live_frames(), 0, "{}", F::NAME);
}

/// A table narrower than the format refuses frames past its own width.
#[test]
fn table_frames_past_the_tables_own_width_are_refused() {
    let host = HostFrameAllocator::new();
    // Frames at 2^32 and above, whatever the heap's addresses (small under
    // Miri).
    let high = HighAllocator::new(&host, 1 << 32);
    high.raise();
    let t = NestedPageTable::<npt_entry::ept::Ept4, _>::with_pa_bits(&high, 32).map(|_| ());
    assert!(
        matches!(t, Err(FrameError::TableFrameOutOfRange { pa_bits: 32, .. })),
        "{t:?}"
    );
    assert_eq!(host.live_frames(), 0);
}

/// A collapse keeps the OR of the accessed/dirty state of the leaves it
/// replaces. `ad` is the format's accessed and dirty bits in a leaf.
fn collapse_keeps_every_leafs_state<F: NptFormat>(ad: u64) {
    let host = HostFrameAllocator::new();
    let mut t = NestedPageTable::<F, _>::new(&host).unwrap();
    let g = 0x4000_0000 % F::GPA_LIMIT as usize;
    let h = 0x8000_0000;
    t.map_region(gpa(g), h.into(), M2, RW, MapPolicy::Only4K)
        .unwrap()
        .ignore();
    // Start clean (some formats map leaves with A/D preset), then the
    // hardware writes page 77 only.
    for bit in [AccessBit::Accessed, AccessBit::Dirty] {
        let mut bits = [0u64; M2 / K4 / 64];
        t.harvest(gpa(g), M2, bit, &mut bits).unwrap().ignore();
    }
    let dirty = g + 77 * K4;
    // SAFETY: the table is live and unchanged between the walk and the write.
    unsafe {
        let w = mmu::walk::<F, _>(&host, t.root_hpa(), dirty);
        let (slot, _, _) = w.leaf.unwrap();
        mmu::set_bits(&host, slot, ad);
    }
    let c = t.collapse(gpa(g), PageSize::Size2M).unwrap();
    t.complete(c.flush);
    let mut bits = [0u64; M2 / K4 / 64];
    t.harvest(gpa(g), M2, AccessBit::Dirty, &mut bits)
        .unwrap()
        .ignore();
    assert!(
        bits.iter().all(|&w| w == u64::MAX),
        "{}: the huge leaf is dirty because page 77 was",
        F::NAME
    );
    if F::NAME.starts_with("EPT") {
        let mut bits = [0u64; M2 / K4 / 64];
        t.harvest(gpa(g), M2, AccessBit::Accessed, &mut bits)
            .unwrap()
            .ignore();
        assert!(bits.iter().all(|&w| w == u64::MAX), "{}: accessed", F::NAME);
    }
}

macro_rules! per_format {
    ($($name:ident: $fmt:ty,)*) => {$(
        mod $name {
            #[test]
            fn table_frames_past_the_width_are_refused() {
                super::table_frames_past_the_width_are_refused::<$fmt>();
            }
        }
    )*};
}

npt_entry::for_each_format!(per_format);

// SDM Vol. 3C 29.3.5 (EPT accessed and dirty flags): bit 8 accessed, bit 9
// dirty in a leaf.
#[test]
fn collapse_keeps_dirty_state_ept() {
    collapse_keeps_every_leafs_state::<npt_entry::ept::Ept4>(1 << 8 | 1 << 9);
}

// APM Vol. 2 5.4.1 (long-mode page-table entries), used unchanged by nested
// paging: bit 5 accessed, bit 6 dirty.
#[test]
fn collapse_keeps_dirty_state_npt() {
    collapse_keeps_every_leafs_state::<npt_entry::npt::Npt4>(1 << 5 | 1 << 6);
}

// RISC-V privileged spec, Sv39 PTE format (G-stage uses it): A bit 6, D bit 7.
#[test]
fn collapse_keeps_dirty_state_gstage() {
    collapse_keeps_every_leafs_state::<npt_entry::gstage::Sv39x4>(1 << 6 | 1 << 7);
}
