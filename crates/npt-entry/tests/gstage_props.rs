//! Property tests for the RISC-V G-stage entry, `hgatp` and the
//! Sv39x4/Sv48x4/Sv57x4 geometry.
//!
//! What the format can express: a valid leaf has some of R/W/X, and W
//! implies R (W without R is reserved). The generators below normalize
//! flags to that set; `new_page` normalizes the same way on its own.

use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;
use npt_entry::gstage::{
    GStageConfigError, GStageEntry, GStageFormat, Hgatp, HgatpMode, Pbmt, PteFlags, Sv39x4, Sv48x4,
    Sv57x4,
};
use npt_entry::{EntryError, EntryKind, GenericPTE, NestedEntry, NptFormat};
use proptest::prelude::*;

const PA_BITS: u32 = <GStageEntry as NestedEntry>::PA_BITS;

fn page_size() -> impl Strategy<Value = PageSize> {
    prop_oneof![
        Just(PageSize::Size4K),
        Just(PageSize::Size2M),
        Just(PageSize::Size1G)
    ]
}

/// A `size`-aligned HPA below 2^56.
fn aligned_hpa(size: PageSize) -> impl Strategy<Value = usize> {
    (0u64..(1u64 << PA_BITS)).prop_map(move |a| size.align_down(a as usize))
}

/// Some of R/W/X, W implies R.
fn access() -> impl Strategy<Value = MappingFlags> {
    (1usize..8).prop_map(|bits| {
        let mut f = MappingFlags::from_bits_truncate(bits);
        if f.contains(MappingFlags::WRITE) {
            f |= MappingFlags::READ;
        }
        f
    })
}

/// Memory-type and USER flags on top of the access rights.
fn extra() -> impl Strategy<Value = MappingFlags> {
    (0usize..8).prop_map(|b| {
        let mut f = MappingFlags::empty();
        if b & 1 != 0 {
            f |= MappingFlags::DEVICE;
        }
        if b & 2 != 0 {
            f |= MappingFlags::UNCACHED;
        }
        if b & 4 != 0 {
            f |= MappingFlags::USER;
        }
        f
    })
}

fn memory_type() -> impl Strategy<Value = MemoryType> {
    prop_oneof![
        Just(MemoryType::WriteBack),
        Just(MemoryType::Uncached),
        Just(MemoryType::WriteCombining),
        Just(MemoryType::WriteThrough),
        Just(MemoryType::WriteProtect),
        Just(MemoryType::Device),
    ]
}

fn rwx(flags: MappingFlags) -> MappingFlags {
    flags & (MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE)
}

/// The leaf invariants every constructor must keep.
fn assert_leaf_bits(e: GStageEntry, writable: bool) -> Result<(), TestCaseError> {
    let f = e.pte_flags();
    prop_assert!(f.contains(PteFlags::V | PteFlags::U | PteFlags::A));
    prop_assert!(!f.contains(PteFlags::G));
    prop_assert!(!f.contains(PteFlags::N));
    prop_assert_eq!(f.contains(PteFlags::D), writable);
    prop_assert!(
        f.contains(PteFlags::R) || !f.contains(PteFlags::W),
        "W without R"
    );
    prop_assert_eq!(e.rsw(), 0);
    prop_assert_eq!(e.reserved(), 0);
    prop_assert!(e.pbmt().is_some());
    Ok(())
}

proptest! {
    #[test]
    fn new_page_round_trips(
        (size, hpa) in page_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        access in access(),
        extra in extra(),
    ) {
        let flags = access | extra;
        let mt = MemoryType::from_flags(flags);
        // Address, round trips and `try_new_leaf`: `laws.rs`.
        let e = GStageEntry::new_page(PhysAddr::from_usize(hpa), flags, size.is_huge());

        prop_assert_eq!(e.flags(), access | mt.to_flags());
        prop_assert!(e.is_huge(), "G-stage leaves use the leaf encoding at every level");
        prop_assert!(e.is_leaf() && !e.is_table());
        prop_assert_eq!(e.kind(true), EntryKind::Leaf);
        prop_assert_eq!(e.kind(false), EntryKind::Leaf);
        prop_assert_eq!(e.memory_type(), mt);
        prop_assert_eq!(e.pbmt(), Some(Pbmt::from_memory_type(mt)));
        assert_leaf_bits(e, access.contains(MappingFlags::WRITE))?;
        // `new_leaf` without USER or memory-type flags, given the type.
        let hpa = HostPhysAddr::from_usize(hpa);
        prop_assert_eq!(GStageEntry::new_leaf(hpa, access, size, mt), Ok(e));
    }

    #[test]
    fn new_leaf_takes_any_memory_type(
        (size, hpa) in page_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        access in access(),
        mt in memory_type(),
    ) {
        let e = GStageEntry::new_leaf(HostPhysAddr::from_usize(hpa), access, size, mt).unwrap();
        let pbmt = Pbmt::from_memory_type(mt);
        prop_assert_eq!(e.pbmt(), Some(pbmt));
        prop_assert_eq!(e.memory_type(), pbmt.memory_type());
        prop_assert_eq!(e.flags(), access | pbmt.memory_type().to_flags());
        prop_assert_eq!(e.paddr(), PhysAddr::from_usize(hpa));
        assert_leaf_bits(e, access.contains(MappingFlags::WRITE))?;
    }

    #[test]
    fn new_leaf_refuses_what_hardware_would_not_take(
        size in page_size(),
        addr in 0u64..u64::MAX,
        raw_flags in 0usize..64,
    ) {
        let flags = MappingFlags::from_bits_truncate(raw_flags);
        let hpa = HostPhysAddr::from_usize(addr as usize);
        let r = GStageEntry::new_leaf(hpa, flags, size, MemoryType::WriteBack);
        let bad_flags = !flags.intersects(MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE)
            || (flags.contains(MappingFlags::WRITE) && !flags.contains(MappingFlags::READ));
        if bad_flags {
            prop_assert_eq!(r, Err(EntryError::BadFlags(flags)));
        } else if !size.is_aligned(addr as usize) {
            prop_assert_eq!(r, Err(EntryError::Misaligned { hpa, size }));
        } else if addr >> PA_BITS != 0 {
            prop_assert_eq!(r, Err(EntryError::AddressTooWide { hpa, pa_bits: PA_BITS }));
        } else {
            prop_assert!(r.is_ok());
        }
    }

    #[test]
    fn new_page_never_makes_a_reserved_or_table_encoding(addr in any::<u64>(), raw_flags in 0usize..64) {
        let flags = MappingFlags::from_bits_truncate(raw_flags);
        let e = GStageEntry::new_page(PhysAddr::from_usize(addr as usize), flags, false);
        let f = e.pte_flags();
        prop_assert!(f.contains(PteFlags::R) || !f.contains(PteFlags::W), "W without R");
        prop_assert_eq!(e.reserved(), 0);
        prop_assert_eq!(e.paddr().as_usize() as u64, addr & ((1 << PA_BITS) - 1) & !0xfff);
        if rwx(flags).is_empty() {
            prop_assert_eq!(e.kind(false), EntryKind::Empty);
        } else {
            prop_assert_eq!(e.kind(false), EntryKind::Leaf);
        }
    }

    #[test]
    fn new_table_round_trips(page in 0u64..(1u64 << (PA_BITS - 12))) {
        let paddr = PhysAddr::from_usize((page << 12) as usize);
        let e = GStageEntry::new_table(paddr);
        prop_assert!(e.is_table() && !e.is_leaf());
        prop_assert_eq!(e.flags(), MappingFlags::empty());
        // Non-leaf PTEs: only V and the PPN.
        prop_assert_eq!(e.raw(), (page << 10) | PteFlags::V.bits());
        prop_assert!(!e.is_accessed() && !e.is_dirty());
    }

    #[test]
    fn harvesting_clears_only_a_and_d(a in aligned_hpa(PageSize::Size4K), f in access(), x in extra()) {
        let orig = GStageEntry::new_page(PhysAddr::from_usize(a), f | x, false);
        let mut e = orig;
        e.clear_dirty();
        e.clear_accessed();
        prop_assert!(!e.is_accessed() && !e.is_dirty());
        prop_assert_eq!(e.raw(), orig.raw() & !(PteFlags::A | PteFlags::D).bits());
        prop_assert_eq!(e.flags(), orig.flags());
        prop_assert_eq!(e.kind(true), EntryKind::Leaf);
    }

    #[test]
    fn split_and_write_protect_keep_bits(
        a in aligned_hpa(PageSize::Size2M),
        f in access(),
        x in extra(),
        huge in any::<bool>(),
        harvest in any::<bool>(),
    ) {
        let mut e = GStageEntry::new_page(PhysAddr::from_usize(a), f | x, huge);
        if harvest {
            e.clear_dirty();
            e.clear_accessed();
        }
        prop_assert_eq!(e.with_huge(!huge), e);
        let p = e.write_protected(huge);
        prop_assert_eq!(p.raw(), e.raw() & !PteFlags::W.bits());
        prop_assert_eq!(p.flags(), e.flags() - MappingFlags::WRITE);
        prop_assert_eq!(p.kind(true), EntryKind::Leaf);
    }

    #[test]
    fn sv39x4_index_matches_hand_shifts(gpa in 0u64..(1 << 41), any_gpa in any::<u64>()) {
        for g in [gpa as usize, any_gpa as usize] {
            // Root: GPA bits 40:30 (11 bits), then 29:21 and 20:12.
            prop_assert_eq!(Sv39x4::index(g, 0), (g >> 30) & 0x7ff);
            prop_assert_eq!(Sv39x4::index(g, 1), (g >> 21) & 0x1ff);
            prop_assert_eq!(Sv39x4::index(g, 2), (g >> 12) & 0x1ff);
        }
    }

    #[test]
    fn sv48x4_index_matches_hand_shifts(gpa in 0u64..(1 << 50), any_gpa in any::<u64>()) {
        for g in [gpa as usize, any_gpa as usize] {
            // Root: GPA bits 49:39.
            prop_assert_eq!(Sv48x4::index(g, 0), (g >> 39) & 0x7ff);
            prop_assert_eq!(Sv48x4::index(g, 1), (g >> 30) & 0x1ff);
            prop_assert_eq!(Sv48x4::index(g, 2), (g >> 21) & 0x1ff);
            prop_assert_eq!(Sv48x4::index(g, 3), (g >> 12) & 0x1ff);
        }
    }

    #[test]
    fn sv57x4_index_matches_hand_shifts(gpa in 0u64..(1 << 59), any_gpa in any::<u64>()) {
        for g in [gpa as usize, any_gpa as usize] {
            // Root: GPA bits 58:48.
            prop_assert_eq!(Sv57x4::index(g, 0), (g >> 48) & 0x7ff);
            prop_assert_eq!(Sv57x4::index(g, 1), (g >> 39) & 0x1ff);
            prop_assert_eq!(Sv57x4::index(g, 2), (g >> 30) & 0x1ff);
            prop_assert_eq!(Sv57x4::index(g, 3), (g >> 21) & 0x1ff);
            prop_assert_eq!(Sv57x4::index(g, 4), (g >> 12) & 0x1ff);
        }
    }

    #[test]
    fn hgatp_round_trips(
        mode in prop_oneof![Just(HgatpMode::Sv39x4), Just(HgatpMode::Sv48x4), Just(HgatpMode::Sv57x4)],
        vmid in 0u16..(1 << 14),
        block in 0u64..(1u64 << (PA_BITS - 14)),
    ) {
        let root = HostPhysAddr::from_usize((block << 14) as usize);
        let h = Hgatp::new(mode, vmid, root).unwrap();
        prop_assert_eq!(h.mode(), Some(mode));
        prop_assert_eq!(h.vmid(), vmid);
        prop_assert_eq!(h.root(), root);
        prop_assert_eq!(h.ppn() & 0b11, 0, "PPN[1:0] of a 16 KiB aligned root");
        prop_assert_eq!(
            h.bits(),
            (mode.raw() << 60) | (u64::from(vmid) << 44) | (block << 14 >> 12)
        );
        prop_assert_eq!(Hgatp::from_bits(h.bits()), h);
    }

    #[test]
    fn hgatp_refuses_bad_fields(
        vmid in any::<u16>(),
        addr in any::<u64>(),
    ) {
        let root = HostPhysAddr::from_usize(addr as usize);
        let r = Hgatp::new(HgatpMode::Sv48x4, vmid, root);
        if vmid >= 1 << 14 {
            prop_assert_eq!(r, Err(GStageConfigError::VmidTooWide { vmid }));
        } else if addr % (16 * 1024) != 0 {
            prop_assert_eq!(r, Err(GStageConfigError::RootMisaligned { root }));
        } else if addr >> PA_BITS != 0 {
            prop_assert_eq!(r, Err(GStageConfigError::RootTooWide { root }));
        } else {
            prop_assert!(r.is_ok());
        }
    }
}

fn check_wide_root<F: GStageFormat>(gpa_bits: u32, levels: usize) {
    assert_eq!(F::GPA_BITS, gpa_bits, "{}", F::NAME);
    assert_eq!(F::LEVELS, levels, "{}", F::NAME);
    assert_eq!(F::ROOT_ENTRIES, 2048, "{}", F::NAME);
    assert_eq!(F::ROOT_FRAMES, 4, "{}", F::NAME);
    assert_eq!(F::ROOT_ALIGN, 16 * 1024, "{}", F::NAME);
    assert_eq!(F::ROOT_SHIFT, gpa_bits - 11, "{}", F::NAME);
    assert_eq!(F::PA_BITS, 56, "{}", F::NAME);
    assert_eq!(F::GPA_LIMIT, 1 << gpa_bits, "{}", F::NAME);
    assert_eq!(F::entries(0), 2048);
    for level in 1..levels {
        assert_eq!(F::entries(level), 512);
    }
    assert_eq!(F::leaf_size(levels - 1), Some(PageSize::Size4K));
    assert_eq!(F::leaf_size(levels - 2), Some(PageSize::Size2M));
    assert_eq!(F::leaf_size(levels - 3), Some(PageSize::Size1G));
    let root = HostPhysAddr::from_usize(0x8040_0000);
    assert_eq!(
        Hgatp::for_format::<F>(1, root).unwrap().mode(),
        Some(F::MODE)
    );
}

#[test]
fn geometry_sv39x4() {
    check_wide_root::<Sv39x4>(41, 3);
    // A 1 GiB leaf sits in the root itself.
    assert_eq!(Sv39x4::leaf_size(0), Some(PageSize::Size1G));
    assert_eq!(Sv39x4::level_of(PageSize::Size1G), Some(0));
    assert_eq!(Sv39x4::level_of(PageSize::Size512G), None);
    assert_eq!(Sv39x4::MODE, HgatpMode::Sv39x4);
}

#[test]
fn geometry_sv48x4() {
    check_wide_root::<Sv48x4>(50, 4);
    // A 512 GiB terapage leaf is allowed in the root.
    assert_eq!(Sv48x4::leaf_size(0), Some(PageSize::Size512G));
    assert_eq!(Sv48x4::level_of(PageSize::Size512G), Some(0));
    assert_eq!(Sv48x4::MODE, HgatpMode::Sv48x4);
}

#[test]
fn geometry_sv57x4() {
    check_wide_root::<Sv57x4>(59, 5);
    // Level 0 would hold 256 TiB petapages, which this crate has no size for.
    assert_eq!(Sv57x4::leaf_size(0), None);
    assert_eq!(Sv57x4::leaf_size(1), Some(PageSize::Size512G));
    assert_eq!(Sv57x4::level_of(PageSize::Size512G), Some(1));
    assert_eq!(Sv57x4::MODE, HgatpMode::Sv57x4);
}

/// Any generic flags, including no access, write without read and
/// execute-only, plus any of USER/DEVICE/UNCACHED.
fn any_flags() -> impl Strategy<Value = MappingFlags> {
    (0usize..64).prop_map(MappingFlags::from_bits_truncate)
}

proptest! {
    /// The rights rules of `NestedEntry` in Sv39/48/57 encodings
    /// (privileged spec §4.3.1: V = 0 is invalid; W without R is reserved;
    /// X alone is execute-only): no access gives V = 0 at every level,
    /// write gets R, execute alone stays execute-only. The checked path
    /// refuses only no access and write without read, and otherwise builds
    /// what `new_page` builds.
    #[test]
    fn rights_rules(
        (size, hpa) in page_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in any_flags(),
    ) {
        let e = GStageEntry::new_page(PhysAddr::from_usize(hpa), flags, size.is_huge());
        let asked = rwx(flags);
        let f = e.pte_flags();
        // Never W without R (reserved).
        prop_assert!(f.contains(PteFlags::R) || !f.contains(PteFlags::W), "{:?}", f);
        if asked.is_empty() {
            prop_assert!(!f.contains(PteFlags::V));
        } else {
            let mut expected = asked;
            if asked.contains(MappingFlags::WRITE) {
                expected |= MappingFlags::READ;
            }
            prop_assert_eq!(rwx(e.flags()), expected);
            prop_assert_eq!(e.kind(false), EntryKind::Leaf);
            prop_assert_eq!(e.kind(true), EntryKind::Leaf);
        }
        // Some access, and write only with read.
        let ok = !asked.is_empty()
            && (asked.contains(MappingFlags::READ) || !asked.contains(MappingFlags::WRITE));
        prop_assert_eq!(GStageEntry::check_leaf_flags(flags).is_ok(), ok);
        match GStageEntry::try_new_leaf(HostPhysAddr::from(hpa), flags, size) {
            Ok(leaf) => { prop_assert!(ok); prop_assert_eq!(leaf, e); }
            Err(err) => { prop_assert!(!ok); prop_assert_eq!(err, EntryError::BadFlags(flags)); }
        }
    }
}
