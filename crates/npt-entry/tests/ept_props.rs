//! Property tests for the Intel EPT entry, its formats and the EPTP.
//!
//! What EPT can express: any non-empty combination of read/write/execute
//! (write without read is a misconfiguration and execute-only needs a CPU
//! capability; the generators normalize write to imply read, as
//! `check_flags` demands, and execute to imply read, as
//! `EptEntry::check_leaf_flags` demands when no capability is stated) and
//! the memory types UC, WC, WT, WP and WB. UC is
//! read back as `MemoryType::Device`, so `DEVICE` and `UNCACHED` both come
//! back as `DEVICE`. `USER` has no meaning at the second stage and is never
//! reported.

use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;
use npt_entry::ept::{
    Ept4, Ept5, EptCaps, EptEntry, EptLeafOptions, EptMemoryType, Eptp, PatPolicy,
};
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

/// Flags the checked constructors accept without stated capabilities: at
/// least one of R/W/X, W implies R, X implies R (execute-only is refused,
/// SDM Vol. 3C 29.3.3.1; before that rule, X alone was generated here and
/// round-tripped as execute-only), plus any of USER/DEVICE/UNCACHED.
fn flags() -> impl Strategy<Value = MappingFlags> {
    (1usize..8, 0usize..8).prop_map(|(mut rwx, extra)| {
        if rwx & 0b010 != 0 || rwx == 0b100 {
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

/// What `flags()` reports for a leaf built from `flags`.
fn expected_flags(flags: MappingFlags) -> MappingFlags {
    let rwx = flags & (MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE);
    if flags.intersects(MappingFlags::DEVICE | MappingFlags::UNCACHED) {
        rwx | MappingFlags::DEVICE
    } else {
        rwx
    }
}

/// The memory type EPT reads back for the one asked for.
fn expected_type(t: MemoryType) -> MemoryType {
    match t {
        MemoryType::Uncached => MemoryType::Device,
        other => other,
    }
}

proptest! {
    #[test]
    fn leaf_round_trips(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in flags(),
    ) {
        // Address, kind and the checked constructors: `laws.rs`.
        let e = EptEntry::new_page(PhysAddr::from_usize(hpa), flags, size.is_huge());
        prop_assert_eq!(e.flags(), expected_flags(flags));
        prop_assert_eq!(e.is_huge(), size.is_huge());
        prop_assert!(!e.suppress_ve());
        prop_assert!(e.ignores_pat());
    }

    #[test]
    fn explicit_memory_type_round_trips(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in flags(),
        t in memory_type(),
    ) {
        let e = EptEntry::new_leaf(HostPhysAddr::from(hpa), flags, size, t);
        let e = e.map_err(|err| TestCaseError::fail(format!("{err}")))?;
        prop_assert_eq!(e.memory_type(), expected_type(t));
        prop_assert_eq!(e.ept_memory_type(), Some(EptMemoryType::from(t)));
        let rwx = expected_flags(flags) - MappingFlags::DEVICE;
        prop_assert_eq!(e.flags(), rwx | expected_type(t).to_flags());
        prop_assert_eq!(e.paddr().as_usize(), hpa);
    }

    #[test]
    fn table_round_trips(hpa in aligned_hpa(PageSize::Size4K)) {
        let t = EptEntry::new_table(PhysAddr::from_usize(hpa));
        let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
        prop_assert!(t.flags().contains(rwx));
        // No memory type, ignore-PAT or large-page bit: bits 7:3 are reserved.
        prop_assert_eq!(t.raw() & 0xf8, 0);
        // R|W|X and user-mode execute (bit 10): the leaf alone decides, also
        // under mode-based execute control (29.3.2, Table 29-1).
        prop_assert_eq!(t.raw(), hpa as u64 | 0x407);
    }

    #[test]
    fn accessed_dirty_clear(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in flags(),
    ) {
        let e = EptEntry::new_page(PhysAddr::from_usize(hpa), flags, size.is_huge());
        prop_assert!(!e.is_accessed() && !e.is_dirty());
        let mut ad = EptEntry::from_raw(e.raw() | EptEntry::ACCESSED | EptEntry::DIRTY);
        prop_assert!(ad.is_accessed() && ad.is_dirty());
        prop_assert_eq!(ad.flags(), e.flags());
        prop_assert_eq!(ad.paddr(), e.paddr());
        ad.clear_accessed();
        ad.clear_dirty();
        prop_assert_eq!(ad, e);
    }

    #[test]
    fn eptp_round_trips(
        root in aligned_hpa(PageSize::Size4K),
        levels in 4usize..=5,
        wb in any::<bool>(),
        ad in any::<bool>(),
    ) {
        let mt = if wb { EptMemoryType::WriteBack } else { EptMemoryType::Uncacheable };
        let e = Eptp::new(HostPhysAddr::from(root), levels, mt, ad)
            .map_err(|err| TestCaseError::fail(format!("{err}")))?;
        prop_assert_eq!(e.root(), HostPhysAddr::from(root));
        prop_assert_eq!(e.levels(), levels);
        prop_assert_eq!(e.memory_type(), mt);
        prop_assert_eq!(e.ad_enabled(), ad);
        let expected = root as u64 | mt.bits() | ((levels as u64 - 1) << 3) | (u64::from(ad) << 6);
        prop_assert_eq!(e.bits(), expected);
    }
}

#[test]
fn geometry() {
    assert_eq!(Ept4::LEVELS, 4);
    assert_eq!(Ept4::GPA_BITS, 48);
    assert_eq!(Ept4::ROOT_ENTRIES, 512);
    assert_eq!(Ept4::ROOT_FRAMES, 1);
    assert_eq!(Ept4::ROOT_ALIGN, 4096);
    assert_eq!(Ept4::ROOT_SHIFT, 39);
    assert_eq!(<Ept4 as NptFormat>::PA_BITS, 52);
    assert_eq!(Ept4::leaf_size(0), None);
    assert_eq!(Ept4::leaf_size(1), Some(PageSize::Size1G));
    assert_eq!(Ept4::leaf_size(2), Some(PageSize::Size2M));
    assert_eq!(Ept4::leaf_size(3), Some(PageSize::Size4K));
    assert_eq!(Ept4::level_of(PageSize::Size512G), None);

    assert_eq!(Ept5::LEVELS, 5);
    assert_eq!(Ept5::GPA_BITS, 57);
    assert_eq!(Ept5::ROOT_ENTRIES, 512);
    assert_eq!(Ept5::ROOT_FRAMES, 1);
    assert_eq!(Ept5::ROOT_ALIGN, 4096);
    assert_eq!(Ept5::ROOT_SHIFT, 48);
    assert_eq!(Ept5::leaf_size(0), None);
    assert_eq!(Ept5::leaf_size(1), None);
    assert_eq!(Ept5::leaf_size(2), Some(PageSize::Size1G));
    assert_eq!(Ept5::leaf_size(3), Some(PageSize::Size2M));
    assert_eq!(Ept5::leaf_size(4), Some(PageSize::Size4K));
    assert_eq!(Ept5::level_of(PageSize::Size512G), None);

    assert_eq!(EptEntry::PA_BITS, 52);
}

#[test]
fn eptp_levels_match_the_formats() {
    for levels in [Ept4::LEVELS, Ept5::LEVELS] {
        let e = Eptp::new(
            HostPhysAddr::from(0x1000),
            levels,
            EptMemoryType::WriteBack,
            false,
        );
        assert_eq!(e.map(Eptp::levels), Ok(levels));
    }
}

const _: () = assert!(EptEntry::HAS_ACCESSED_DIRTY);

/// Any generic flags, including no access, write without read and
/// execute-only, plus any of USER/DEVICE/UNCACHED.
fn any_flags() -> impl Strategy<Value = MappingFlags> {
    (0usize..64).prop_map(MappingFlags::from_bits_truncate)
}

/// Whether bits 2:0 (and bit 10 under mode-based execute control) are an
/// EPT misconfiguration (SDM Vol. 3C, 29.3.3.1): write without read always,
/// execute without read unless the processor supports execute-only
/// translations (Appendix A.10).
fn misconfigured(raw: u64, execute_only: bool) -> bool {
    let read = raw & EptEntry::READ != 0;
    let write = raw & EptEntry::WRITE != 0;
    let exec = raw & (EptEntry::EXECUTE | EptEntry::USER_EXECUTE) != 0;
    (write && !read) || (exec && !read && !execute_only)
}

proptest! {
    /// `new_page` and `set_flags` (which cannot fail) never build a
    /// misconfiguration: write gets read, execute gets read (no capability
    /// is known there), no access is not present (bits 2:0 = 0, 29.3.2).
    /// The checked path accepts exactly the flags it can build unchanged.
    #[test]
    fn new_page_never_misconfigures(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in any_flags(),
        other in any_flags(),
    ) {
        let huge = size.is_huge();
        let e = EptEntry::new_page(PhysAddr::from_usize(hpa), flags, huge);
        prop_assert!(!misconfigured(e.raw(), false), "{:?} -> {:#x}", flags, e.raw());
        let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
        let asked = flags & rwx;
        if asked.is_empty() {
            prop_assert_eq!(e.raw() & 0b111, 0);
        } else {
            // Exactly the asked rights plus read.
            prop_assert_eq!(e.flags() & rwx, asked | MappingFlags::READ);
        }
        // `set_flags` builds what `new_page` builds: `laws.rs`.
        let mut s = e;
        s.set_flags(other, huge);
        prop_assert!(!misconfigured(s.raw(), false));
        let checked = EptEntry::try_new_leaf(HostPhysAddr::from(hpa), flags, size);
        let ok = !asked.is_empty() && asked.contains(MappingFlags::READ);
        prop_assert_eq!(checked.is_ok(), ok);
        prop_assert_eq!(EptEntry::check_leaf_flags(flags).is_ok(), ok);
        match checked {
            Ok(leaf) => prop_assert_eq!(leaf, e),
            Err(EntryError::ExecuteOnly(f)) => {
                prop_assert_eq!(f, flags);
                prop_assert_eq!(asked, MappingFlags::EXECUTE);
            }
            Err(EntryError::BadFlags(f)) => {
                prop_assert_eq!(f, flags);
                prop_assert!(asked.is_empty() || asked.contains(MappingFlags::WRITE));
            }
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// `new_leaf_with`: execute-only exactly when the caller states the
    /// capability (29.3.3.1, A.10); the PAT policy is bit 6 (29.3.7.2);
    /// user execute bit 10 and suppress #VE bit 63 are set only on request
    /// (29.3.2, Tables 29-2/4/6). Nothing else differs from `new_leaf`.
    #[test]
    fn leaf_options_compose(
        (size, hpa) in leaf_size().prop_flat_map(|s| (Just(s), aligned_hpa(s))),
        flags in any_flags(),
        t in memory_type(),
        xo in any::<bool>(),
        combine in any::<bool>(),
        ux in any::<bool>(),
        sve in any::<bool>(),
    ) {
        let caps = EptCaps::NONE.with_execute_only(xo);
        let pat = if combine { PatPolicy::CombineWithGuestPat } else { PatPolicy::IgnoreGuestPat };
        let opts = EptLeafOptions::new()
            .with_caps(caps)
            .with_pat(pat)
            .with_user_execute(ux)
            .with_suppress_ve(sve);
        let h = HostPhysAddr::from(hpa);
        let got = EptEntry::new_leaf_with(h, flags, size, t, opts);
        prop_assert_eq!(got.is_ok(), caps.check_flags(flags).is_ok());
        let Ok(e) = got else { return Ok(()) };
        prop_assert!(!misconfigured(e.raw(), xo), "{:?} -> {:#x}", flags, e.raw());
        let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
        prop_assert_eq!(e.flags() & rwx, flags & rwx);
        prop_assert_eq!(e.pat_policy(), pat);
        prop_assert_eq!(e.ignores_pat(), !combine);
        prop_assert_eq!(e.user_execute(), ux);
        prop_assert_eq!(e.suppress_ve(), sve);
        prop_assert_eq!(e.memory_type(), expected_type(t));
        prop_assert_eq!(e.paddr().as_usize(), hpa);
        // Against new_leaf, which has the default options, when it accepts.
        if let Ok(plain) = EptEntry::new_leaf(h, flags, size, t) {
            let mut expected = plain.raw();
            if combine {
                expected &= !EptEntry::IGNORE_PAT;
            }
            if ux {
                expected |= EptEntry::USER_EXECUTE;
            }
            if sve {
                expected |= EptEntry::SUPPRESS_VE;
            }
            prop_assert_eq!(e.raw(), expected);
        } else {
            prop_assert!(xo);
            prop_assert_eq!(e.raw() & 0b111, EptEntry::EXECUTE);
        }
    }
}
