//! Property tests for the AMD nested-paging entry, its format and nCR3.
//!
//! What NPT can express: a present entry is always readable, so the rights
//! are read, read+write, read+execute and read+write+execute; execute-only
//! maps read+execute (the generators normalize write to imply read, as
//! `check_flags` demands). Memory types through PCD:PWT with the default
//! PAT: WB (00), WT (01), UC- (10) for uncached and write-combining memory,
//! read back as `MemoryType::Uncached`, and UC (11) for device and
//! write-protect memory, read back as `MemoryType::Device`. `DEVICE` wins
//! over `UNCACHED` when both are given. `USER` is never reported (U/S is set
//! on every present entry).

use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;
use npt_entry::npt::{Ncr3, Npt4, NptEntry};
use npt_entry::{EntryError, GenericPTE, NestedEntry, NptFormat};
use proptest::prelude::*;

const PA_MASK: u64 = (1 << 52) - 1;

fn leaf_size() -> impl Strategy<Value = PageSize> {
    prop_oneof![
        Just(PageSize::Size4K),
        Just(PageSize::Size2M),
        Just(PageSize::Size1G)
    ]
}

/// A host address inside 52 bits, aligned to `size`.
fn aligned_hpa(size: PageSize) -> impl Strategy<Value = usize> {
    any::<u64>().prop_map(move |a| size.align_down((a & PA_MASK) as usize))
}

/// Normalized flags: at least one of R/W/X, W implies R, plus any of
/// USER/DEVICE/UNCACHED.
fn flags() -> impl Strategy<Value = MappingFlags> {
    (1usize..8, 0usize..8).prop_map(|(mut rwx, extra)| {
        if rwx & 0b010 != 0 {
            rwx |= 0b001;
        }
        MappingFlags::from_bits_truncate(rwx | (extra << 3))
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

/// What `flags()` reports for a leaf built from `flags`: READ always.
fn expected_flags(flags: MappingFlags) -> MappingFlags {
    let rights = MappingFlags::READ | (flags & (MappingFlags::WRITE | MappingFlags::EXECUTE));
    if flags.contains(MappingFlags::DEVICE) {
        rights | MappingFlags::DEVICE
    } else if flags.contains(MappingFlags::UNCACHED) {
        rights | MappingFlags::UNCACHED
    } else {
        rights
    }
}

/// The memory type NPT reads back for the one asked for.
fn expected_type(t: MemoryType) -> MemoryType {
    match t {
        MemoryType::WriteBack => MemoryType::WriteBack,
        MemoryType::WriteThrough => MemoryType::WriteThrough,
        MemoryType::Uncached | MemoryType::WriteCombining => MemoryType::Uncached,
        MemoryType::Device | MemoryType::WriteProtect => MemoryType::Device,
    }
}

proptest! {
    #[test]
    fn leaf_round_trips(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in flags(),
    ) {
        // Address, kind and the checked constructors: `laws.rs`.
        let e = NptEntry::new_page(PhysAddr::from_usize(hpa), flags, size.is_huge());
        prop_assert_eq!(e.flags(), expected_flags(flags));
        prop_assert_eq!(e.is_huge(), size.is_huge());
        prop_assert!(e.is_user());
        prop_assert_eq!(e.is_no_execute(), !flags.contains(MappingFlags::EXECUTE));
        // G and both PAT bits stay clear (bit 7 is PS on huge leaves).
        prop_assert_eq!(e.raw() & NptEntry::GLOBAL, 0);
        prop_assert_eq!(e.raw() & NptEntry::PAT_LARGE, if size.is_huge() { 0 } else { hpa as u64 & 0x1000 });
        if !size.is_huge() {
            prop_assert_eq!(e.raw() & NptEntry::PAT_4K, 0);
        }
    }

    #[test]
    fn explicit_memory_type_round_trips(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in flags(),
        t in memory_type(),
    ) {
        let e = NptEntry::new_leaf(HostPhysAddr::from(hpa), flags, size, t);
        let e = e.map_err(|err| TestCaseError::fail(format!("{err}")))?;
        prop_assert_eq!(e.memory_type(), expected_type(t));
        let rights = expected_flags(flags) - MappingFlags::DEVICE - MappingFlags::UNCACHED;
        prop_assert_eq!(e.flags(), rights | expected_type(t).to_flags());
        prop_assert_eq!(e.paddr().as_usize(), hpa);
    }

    #[test]
    fn table_round_trips(hpa in aligned_hpa(PageSize::Size4K)) {
        let t = NptEntry::new_table(PhysAddr::from_usize(hpa));
        prop_assert!(t.is_user());
        prop_assert!(!t.is_no_execute());
        let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
        prop_assert_eq!(t.flags(), rwx);
        prop_assert_eq!(t.raw(), hpa as u64 | 0x7);
    }

    #[test]
    fn accessed_dirty_clear(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in flags(),
    ) {
        let e = NptEntry::new_page(PhysAddr::from_usize(hpa), flags, size.is_huge());
        prop_assert!(!e.is_accessed() && !e.is_dirty());
        let mut ad = NptEntry::from_raw(e.raw() | NptEntry::ACCESSED | NptEntry::DIRTY);
        prop_assert!(ad.is_accessed() && ad.is_dirty());
        prop_assert_eq!(ad.flags(), e.flags());
        prop_assert_eq!(ad.paddr(), e.paddr());
        ad.clear_accessed();
        ad.clear_dirty();
        prop_assert_eq!(ad, e);
    }

    #[test]
    fn ncr3_round_trips(root in aligned_hpa(PageSize::Size4K), t in memory_type()) {
        let n = Ncr3::new(HostPhysAddr::from(root), t)
            .map_err(|err| TestCaseError::fail(format!("{err}")))?;
        prop_assert_eq!(n.root(), HostPhysAddr::from(root));
        prop_assert_eq!(n.memory_type(), expected_type(t));
        prop_assert_eq!(n.bits() & !(Ncr3::ADDR_MASK | Ncr3::PCD | Ncr3::PWT), 0);
    }
}

#[test]
fn geometry() {
    assert_eq!(Npt4::LEVELS, 4);
    assert_eq!(Npt4::GPA_BITS, 48);
    assert_eq!(Npt4::ROOT_ENTRIES, 512);
    assert_eq!(Npt4::ROOT_FRAMES, 1);
    assert_eq!(Npt4::ROOT_ALIGN, 4096);
    assert_eq!(Npt4::ROOT_SHIFT, 39);
    assert_eq!(<Npt4 as NptFormat>::PA_BITS, 52);
    assert_eq!(Npt4::leaf_size(0), None);
    assert_eq!(Npt4::leaf_size(1), Some(PageSize::Size1G));
    assert_eq!(Npt4::leaf_size(2), Some(PageSize::Size2M));
    assert_eq!(Npt4::leaf_size(3), Some(PageSize::Size4K));
    assert_eq!(Npt4::level_of(PageSize::Size512G), None);
    assert_eq!(NptEntry::PA_BITS, 52);
}

const _: () = assert!(NptEntry::HAS_ACCESSED_DIRTY);

proptest! {
    #[test]
    fn huge_conversion_and_write_protect(
        hpa in aligned_hpa(PageSize::Size2M),
        flags in flags(),
        t in memory_type(),
        extra in 0u64..8,
    ) {
        // Leaf with some of A, D and G set. (A 4 KiB PTE with its PAT bit
        // set reads as huge; this crate never builds one.)
        let mut extras = 0;
        for (i, bit) in [NptEntry::ACCESSED, NptEntry::DIRTY, NptEntry::GLOBAL]
            .into_iter()
            .enumerate()
        {
            if extra & (1 << i) != 0 {
                extras |= bit;
            }
        }
        let small = NptEntry::new_leaf(HostPhysAddr::from(hpa), flags, PageSize::Size4K, t)
            .map_err(|err| TestCaseError::fail(format!("{err}")))?;
        let small = NptEntry::from_raw(small.raw() | extras);
        // The rest of the round trip and `write_protected`: `laws.rs`.
        let huge = small.with_huge(true);
        prop_assert!(huge.is_huge());
        // A large leaf's PAT bit moves to bit 7 of the PTE.
        let pat = NptEntry::from_raw(huge.raw() | NptEntry::PAT_LARGE);
        prop_assert_eq!(pat.with_huge(false).raw(), small.raw() | NptEntry::PAT_4K);
    }
}

/// Any generic flags, including no access, write without read and
/// execute-only, plus any of USER/DEVICE/UNCACHED.
fn any_flags() -> impl Strategy<Value = MappingFlags> {
    (0usize..64).prop_map(MappingFlags::from_bits_truncate)
}

proptest! {
    /// The rights rules of `NestedEntry` in AMD encodings (APM Vol. 2,
    /// 5.4.1): no access is P = 0 (not present) at every level; otherwise
    /// P and U/S are set, so the leaf reads; write gives R/W, execute clears
    /// NX, execute alone is read+execute. The checked path refuses only no
    /// access and write without read, and otherwise builds what `new_page`
    /// builds.
    #[test]
    fn rights_rules(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in any_flags(),
    ) {
        let huge = size.is_huge();
        let e = NptEntry::new_page(PhysAddr::from_usize(hpa), flags, huge);
        let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
        let asked = flags & rwx;
        if asked.is_empty() {
            prop_assert_eq!(e.raw() & NptEntry::PRESENT, 0);
        } else {
            prop_assert_eq!(e.flags() & rwx, asked | MappingFlags::READ);
            prop_assert!(e.is_user());
        }
        // Some access, and write only with read.
        let ok = !asked.is_empty()
            && (asked.contains(MappingFlags::READ) || !asked.contains(MappingFlags::WRITE));
        let checked = NptEntry::try_new_leaf(HostPhysAddr::from(hpa), flags, size);
        prop_assert_eq!(NptEntry::check_leaf_flags(flags).is_ok(), ok);
        match checked {
            Ok(leaf) => { prop_assert!(ok); prop_assert_eq!(leaf, e); }
            Err(err) => { prop_assert!(!ok); prop_assert_eq!(err, EntryError::BadFlags(flags)); }
        }
    }
}
