//! Property tests for the AArch64 stage-2 format (`npt_entry::stage2`).
//!
//! Flags are normalized the way every format is asked to accept them: at
//! least one of R/W/X and W implies R. Stage 2 can express all five such
//! combinations (R, RW, X, RX, RWX; execute-only is `S2AP = 0b00` with
//! `XN = 0b00`), so they all round-trip. `USER` is ignored by the format,
//! and the memory type comes back as `MemoryType::to_flags` of the decoded
//! type.

use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;
use npt_entry::stage2::{Stage2, Stage2Entry, VmidWidth, Vtcr, Vttbr};
use npt_entry::{EntryKind, GenericPTE, NestedEntry, NptFormat};
use proptest::prelude::*;

const PA_MASK: u64 = (1 << 48) - 1;
const RWX: MappingFlags = MappingFlags::READ
    .union(MappingFlags::WRITE)
    .union(MappingFlags::EXECUTE);

fn page_size() -> impl Strategy<Value = PageSize> {
    prop_oneof![
        Just(PageSize::Size4K),
        Just(PageSize::Size2M),
        Just(PageSize::Size1G)
    ]
}

/// Normalized flags: some access, W implies R, any memory-type request,
/// sometimes USER (which the format ignores).
fn flags() -> impl Strategy<Value = MappingFlags> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..4,
        any::<bool>(),
    )
        .prop_map(|(r, w, x, mem, user)| {
            let mut f = MappingFlags::empty();
            if r || w || !x {
                f |= MappingFlags::READ;
            }
            if w {
                f |= MappingFlags::WRITE;
            }
            if x {
                f |= MappingFlags::EXECUTE;
            }
            if mem & 1 != 0 {
                f |= MappingFlags::DEVICE;
            }
            if mem & 2 != 0 {
                f |= MappingFlags::UNCACHED;
            }
            if user {
                f |= MappingFlags::USER;
            }
            f
        })
}

/// A `size`-aligned host address within the 48-bit output address.
fn aligned_hpa(raw: u64, size: PageSize) -> u64 {
    raw & PA_MASK & !(size.bytes() as u64 - 1)
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

/// The documented stage-2 decoding of each requested type.
fn decoded(ty: MemoryType) -> MemoryType {
    match ty {
        MemoryType::WriteCombining => MemoryType::Uncached,
        MemoryType::WriteProtect => MemoryType::WriteThrough,
        other => other,
    }
}

proptest! {
    #[test]
    fn leaf_round_trips(raw in any::<u64>(), size in page_size(), flags in flags()) {
        let addr = aligned_hpa(raw, size);
        let huge = size.is_huge();
        // Address, the kind where the walker reads it (a page at the last
        // level, a block above) and the checked constructors: `laws.rs`.
        let e = Stage2Entry::new_page(PhysAddr::from_usize(addr as usize), flags, huge);
        let expected = (flags & RWX) | MemoryType::from_flags(flags).to_flags();
        prop_assert_eq!(e.flags(), expected);
        prop_assert_eq!(e.memory_type(), MemoryType::from_flags(flags));
        prop_assert_eq!(e.is_huge(), huge);
        prop_assert!(e.is_accessed() && !e.is_dirty() && !e.contiguous() && !e.dbm());
        // The same bits at the other kind of level: a page descriptor reads
        // as a table above the last level; a block is invalid at the last.
        prop_assert_eq!(e.kind(huge), if huge { EntryKind::Empty } else { EntryKind::Table });
    }

    #[test]
    fn typed_leaf_memory_types(raw in any::<u64>(), size in page_size(), flags in flags(), ty in memory_type()) {
        let addr = aligned_hpa(raw, size);
        let hpa = HostPhysAddr::from_usize(addr as usize);
        let e = Stage2Entry::new_leaf(hpa, flags, size, ty).unwrap();
        prop_assert_eq!(e.memory_type(), decoded(ty));
        prop_assert_eq!(e.flags(), (flags & RWX) | decoded(ty).to_flags());
        prop_assert_eq!(e.paddr().as_usize() as u64, addr);
        prop_assert_eq!(e.is_block(), size.is_huge());
        prop_assert_eq!(e.is_page(), !size.is_huge());
    }

    #[test]
    fn misaligned_or_wide_leaves_are_refused(raw in any::<u64>(), size in page_size(), flags in flags()) {
        let addr = (raw & PA_MASK) as usize;
        let result = Stage2Entry::new_leaf(HostPhysAddr::from_usize(addr), flags, size, MemoryType::WriteBack);
        prop_assert_eq!(result.is_ok(), size.is_aligned(addr));
        let wide = addr | (1 << 48);
        let wide = wide & !(size.bytes() - 1);
        prop_assert!(Stage2Entry::new_leaf(HostPhysAddr::from_usize(wide), flags, size, MemoryType::WriteBack).is_err());
    }

    #[test]
    fn table_round_trips(raw in any::<u64>()) {
        let addr = aligned_hpa(raw, PageSize::Size4K);
        let t = Stage2Entry::new_table(PhysAddr::from_usize(addr as usize));
        prop_assert_eq!(t.raw(), addr | 0b11);
    }

    #[test]
    fn any_raw_value_decodes_sanely(raw in any::<u64>()) {
        let e = Stage2Entry::from_raw(raw);
        prop_assert_eq!(e.raw(), raw);
        prop_assert!(!e.flags().contains(MappingFlags::USER));
        prop_assert_eq!(e.paddr().as_usize() as u64 & !PA_MASK, 0);
        let valid = raw & 1 != 0;
        prop_assert_eq!(e.is_present(), valid);
        for last in [false, true] {
            prop_assert_eq!(e.kind(last) == EntryKind::Empty, !valid || (last && raw & 0b10 == 0));
        }
    }

    #[test]
    fn dirty_tracking_with_dbm(raw in any::<u64>(), size in page_size(), x in any::<bool>()) {
        let mut flags = MappingFlags::READ | MappingFlags::WRITE;
        if x {
            flags |= MappingFlags::EXECUTE;
        }
        let mut e = Stage2Entry::new_page(PhysAddr::from_usize(aligned_hpa(raw, size) as usize), flags, size.is_huge());
        let before = e;
        e.clear_dirty();
        prop_assert_eq!(e, before, "without DBM clear_dirty changes nothing");
        e.set_dbm(true);
        prop_assert!(e.is_dirty());
        e.clear_dirty();
        prop_assert!(!e.is_dirty());
        prop_assert_eq!(e.flags(), flags - MappingFlags::WRITE);
        // A write (hardware with VTCR_EL2.HD, or the fault handler) sets S2AP[1].
        let written = Stage2Entry::from_raw(e.raw() | 1 << 7);
        prop_assert!(written.is_dirty());
        e.clear_accessed();
        prop_assert!(!e.is_accessed());
        prop_assert_eq!(e.paddr(), before.paddr());
    }
}

/// Index extraction and root geometry of one format, checked against
/// shifting by hand.
macro_rules! index_props {
    ($name:ident, $bits:literal) => {
        proptest! {
            #[test]
            fn $name(raw in any::<u64>()) {
                type F = Stage2<$bits>;
                let gpa = (raw & ((1u64 << $bits) - 1)) as usize;
                let levels = <F as NptFormat>::LEVELS;
                let mut rebuilt = gpa & 0xfff;
                for level in 0..levels {
                    let shift = 12 + 9 * (levels - 1 - level);
                    let width = if level == 0 { $bits - shift } else { 9 };
                    let by_hand = (gpa >> shift) & ((1 << width) - 1);
                    prop_assert_eq!(F::index(gpa, level), by_hand, "level {}", level);
                    prop_assert!(by_hand < F::entries(level));
                    rebuilt |= by_hand << shift;
                }
                prop_assert_eq!(rebuilt, gpa);
            }
        }
    };
}

index_props!(index_ipa32, 32);
index_props!(index_ipa34, 34);
index_props!(index_ipa35, 35);
index_props!(index_ipa39, 39);
index_props!(index_ipa40, 40);
index_props!(index_ipa43, 43);
index_props!(index_ipa44, 44);
index_props!(index_ipa48, 48);

proptest! {
    #[test]
    fn vttbr_round_trips(raw in any::<u64>(), vmid in any::<u8>(), vmid16 in any::<u16>()) {
        type F = Stage2<40>;
        let root = aligned_hpa(raw, PageSize::Size4K) & !(F::ROOT_ALIGN as u64 - 1);
        let hpa = HostPhysAddr::from_usize(root as usize);
        let t = Vttbr::for_format::<F>(hpa, u16::from(vmid), VmidWidth::Bits8).unwrap();
        prop_assert_eq!(t.bits(), (u64::from(vmid) << 48) | root);
        prop_assert_eq!((t.baddr(), t.vmid(), t.cnp()), (hpa, u16::from(vmid), false));
        let t16 = Vttbr::for_format::<F>(hpa, vmid16, VmidWidth::Bits16).unwrap();
        prop_assert_eq!(t16.bits(), (u64::from(vmid16) << 48) | root);
        prop_assert_eq!(t16.with_cnp(true).bits(), t16.bits() | 1);
        let off = HostPhysAddr::from_usize(root as usize + 0x1000);
        prop_assert!(Vttbr::for_format::<F>(off, 1, VmidWidth::Bits8).is_err());
    }
}

#[test]
fn vtcr_accepts_exactly_the_valid_configurations() {
    const PA: [(u32, u64); 7] = [
        (32, 0b000),
        (36, 0b001),
        (40, 0b010),
        (42, 0b011),
        (44, 0b100),
        (48, 0b101),
        (52, 0b110),
    ];
    for ipa in 28..=52u32 {
        for level in 0..=3usize {
            for (pa, ps) in PA {
                // 4 KiB granule: level 2 walks 22..=34 bits, level 1
                // 31..=43, level 0 40..=52 (and needs a >= 44-bit PA);
                // this crate supports 32..=48 and IPA <= PA.
                let level_ok = match level {
                    2 => ipa <= 34,
                    1 => (31..=43).contains(&ipa),
                    0 => ipa >= 40 && pa >= 44,
                    _ => false,
                };
                let ok = (32..=48).contains(&ipa) && ipa <= pa && level_ok;
                let v = Vtcr::new(ipa, level, pa);
                assert_eq!(v.is_ok(), ok, "ipa {ipa} level {level} pa {pa}: {v:?}");
                if let Ok(v) = v {
                    let sl0 = [0b10, 0b01, 0b00][level];
                    let expected = (1 << 31)
                        | (ps << 16)
                        | (0b11 << 12)
                        | (0b01 << 10)
                        | (0b01 << 8)
                        | (sl0 << 6)
                        | u64::from(64 - ipa);
                    assert_eq!(v.bits(), expected);
                    assert_eq!(
                        (v.ipa_bits(), v.start_level(), v.pa_bits()),
                        (ipa, Some(level), Some(pa))
                    );
                }
            }
        }
    }
    // Out of range PA sizes.
    assert!(Vtcr::new(32, 2, 39).is_err());
    assert!(Vtcr::new(32, 2, 64).is_err());
}

/// Geometry of one format: levels, start level, root entries and frames,
/// leaf size per level, and a VTCR built from it.
fn geometry<const N: u32>(levels: usize, root_entries: usize, root_frames: usize) {
    type E = Stage2Entry;
    assert_eq!(<Stage2<N> as NptFormat>::LEVELS, levels, "{N}");
    assert_eq!(Stage2::<N>::START_LEVEL, 4 - levels, "{N}");
    assert_eq!(<Stage2<N> as NptFormat>::ROOT_ENTRIES, root_entries, "{N}");
    assert_eq!(<Stage2<N> as NptFormat>::ROOT_FRAMES, root_frames, "{N}");
    assert_eq!(
        <Stage2<N> as NptFormat>::ROOT_ALIGN,
        root_frames * 4096,
        "{N}"
    );
    assert_eq!(<Stage2<N> as NptFormat>::GPA_LIMIT, 1u64 << N);
    assert_eq!(
        <Stage2<N> as NptFormat>::PA_BITS,
        <E as NestedEntry>::PA_BITS
    );
    // Arm level = crate level + START_LEVEL: level 3 pages, level 2 2 MiB
    // blocks, level 1 1 GiB blocks, never a level-0 block.
    for level in 0..levels {
        let arm_level = level + Stage2::<N>::START_LEVEL;
        let expected = match arm_level {
            3 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            1 => Some(PageSize::Size1G),
            _ => None,
        };
        assert_eq!(
            <Stage2<N> as NptFormat>::leaf_size(level),
            expected,
            "{N} level {level}"
        );
        assert_eq!(
            <Stage2<N> as NptFormat>::entries(level),
            if level == 0 { root_entries } else { 512 }
        );
    }
    let vtcr = Vtcr::for_format::<Stage2<N>>(48).unwrap();
    assert_eq!(vtcr.start_level(), Some(Stage2::<N>::START_LEVEL));
    assert_eq!(vtcr.ipa_bits(), N);
}

#[test]
fn format_geometry() {
    geometry::<32>(2, 2048, 4);
    geometry::<34>(2, 8192, 16);
    geometry::<35>(3, 32, 1);
    geometry::<39>(3, 512, 1);
    geometry::<40>(3, 1024, 2);
    geometry::<43>(3, 8192, 16);
    geometry::<44>(4, 32, 1);
    geometry::<48>(4, 512, 1);
    assert_eq!(<Stage2<48> as NptFormat>::MAX_LEAF, PageSize::Size1G);
    assert_eq!(
        <Stage2<40> as NptFormat>::level_of(PageSize::Size1G),
        Some(0)
    );
    assert_eq!(
        <Stage2<48> as NptFormat>::level_of(PageSize::Size512G),
        None
    );
}

#[test]
fn worked_control_values() {
    assert_eq!(Vtcr::new(40, 1, 48).unwrap().bits(), 0x8005_3558);
    assert_eq!(Vtcr::new(48, 0, 48).unwrap().bits(), 0x8005_3590);
    let root = HostPhysAddr::from_usize(0x4008_0000);
    let vttbr = Vttbr::for_format::<Stage2<40>>(root, 5, VmidWidth::Bits8).unwrap();
    assert_eq!(vttbr.bits(), 0x0005_0000_4008_0000);
}

/// Any generic flags, including no access, write without read and
/// execute-only, plus any of USER/DEVICE/UNCACHED.
fn any_flags() -> impl Strategy<Value = MappingFlags> {
    (0usize..64).prop_map(MappingFlags::from_bits_truncate)
}

proptest! {
    /// The rights rules of `NestedEntry` in stage-2 encodings (Arm ARM
    /// D8.3: descriptor bit 0 clear is invalid; D8.4: S2AP, XN): no access
    /// gives an invalid descriptor (bit 0 clear) at every level, not a
    /// valid one with `S2AP = 0b00` (before this rule it was valid, with
    /// `XN = 0b10`); write gets read (`S2AP = 0b11`, never `0b10`);
    /// execute alone is execute-only (`S2AP = 0b00`, `XN = 0b00`). The
    /// checked path refuses only no access and write without read, and
    /// otherwise builds what `new_page` builds.
    #[test]
    fn rights_rules(raw in any::<u64>(), size in page_size(), flags in any_flags()) {
        let addr = aligned_hpa(raw, size) as usize;
        let huge = size.is_huge();
        let e = Stage2Entry::new_page(PhysAddr::from_usize(addr), flags, huge);
        let asked = flags & RWX;
        prop_assert_ne!(e.s2ap(), npt_entry::stage2::S2AP_WRITE_ONLY);
        // Not present at any level, and `set_flags` to no access: `laws.rs`.
        if asked.is_empty() {
            prop_assert_eq!(e.raw() & 1, 0);
        } else {
            let mut expected = asked;
            if asked.contains(MappingFlags::WRITE) {
                expected |= MappingFlags::READ;
            }
            prop_assert_eq!(e.flags() & RWX, expected);
        }
        // Some access, and write only with read.
        let ok = !asked.is_empty()
            && (asked.contains(MappingFlags::READ) || !asked.contains(MappingFlags::WRITE));
        prop_assert_eq!(Stage2Entry::check_leaf_flags(flags).is_ok(), ok);
        match Stage2Entry::try_new_leaf(HostPhysAddr::from_usize(addr), flags, size) {
            Ok(leaf) => { prop_assert!(ok); prop_assert_eq!(leaf, e); }
            Err(err) => {
                prop_assert!(!ok);
                prop_assert_eq!(err, npt_entry::EntryError::BadFlags(flags));
            }
        }
    }
}
