//! The `NestedEntry` and `NptFormat` laws every format keeps, written once
//! and run for every format of `npt_entry::for_each_format!` (an entry type
//! shared by several formats runs once per format).
//!
//! What only one format does (its bit positions, how it normalizes rights,
//! which memory types it can hold, its control values) stays in that
//! format's `*_props.rs`.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;
use npt_entry::ept::EptEntry;
use npt_entry::gstage::{GStageEntry, PteFlags};
use npt_entry::npt::NptEntry;
use npt_entry::stage2::Stage2Entry;
use npt_entry::{EntryError, EntryKind, NestedEntry, NptFormat};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

const RWX: MappingFlags = MappingFlags::READ
    .union(MappingFlags::WRITE)
    .union(MappingFlags::EXECUTE);

/// What the laws need from a format beyond the traits: its typed
/// constructor, the bits that other state lives in, and its write bit.
trait LawEntry: NestedEntry + core::fmt::Debug {
    /// Leaf bits that are not flags (accessed/dirty and format-specific
    /// state); every re-encoding of a leaf must keep them.
    const KEPT: &'static [u64];
    /// The bit `write_protected` clears.
    const WRITE_BIT: u64;
    /// The format's typed leaf constructor (`new_leaf`).
    fn new_leaf(
        hpa: HostPhysAddr,
        flags: MappingFlags,
        size: PageSize,
        memory_type: MemoryType,
    ) -> Result<Self, EntryError>;
}

impl LawEntry for EptEntry {
    // SDM Vol. 3C 29.3.2, Tables 29-4/29-6: A (8), D (9), user execute (10),
    // suppress #VE (63).
    const KEPT: &'static [u64] = &[
        EptEntry::ACCESSED,
        EptEntry::DIRTY,
        EptEntry::USER_EXECUTE,
        EptEntry::SUPPRESS_VE,
    ];
    const WRITE_BIT: u64 = EptEntry::WRITE;
    fn new_leaf(
        h: HostPhysAddr,
        f: MappingFlags,
        s: PageSize,
        t: MemoryType,
    ) -> Result<Self, EntryError> {
        EptEntry::new_leaf(h, f, s, t)
    }
}

impl LawEntry for NptEntry {
    // APM Vol. 2 5.4.1: A (5), D (6), G (8). (A 4 KiB PTE with its PAT bit
    // set reads as huge; this crate never builds one.)
    const KEPT: &'static [u64] = &[NptEntry::ACCESSED, NptEntry::DIRTY, NptEntry::GLOBAL];
    const WRITE_BIT: u64 = NptEntry::READ_WRITE;
    fn new_leaf(
        h: HostPhysAddr,
        f: MappingFlags,
        s: PageSize,
        t: MemoryType,
    ) -> Result<Self, EntryError> {
        NptEntry::new_leaf(h, f, s, t)
    }
}

impl LawEntry for Stage2Entry {
    // Arm ARM D8.3: DBM (51), Contiguous (52).
    const KEPT: &'static [u64] = &[1 << 51, 1 << 52];
    // Arm ARM D8.4.2: S2AP[1], bit 7, grants write.
    const WRITE_BIT: u64 = 1 << 7;
    fn new_leaf(
        h: HostPhysAddr,
        f: MappingFlags,
        s: PageSize,
        t: MemoryType,
    ) -> Result<Self, EntryError> {
        Stage2Entry::new_leaf(h, f, s, t)
    }
}

impl LawEntry for GStageEntry {
    // RISC-V privileged spec 4.3.1: A (6), D (7).
    const KEPT: &'static [u64] = &[PteFlags::A.bits(), PteFlags::D.bits()];
    const WRITE_BIT: u64 = PteFlags::W.bits();
    fn new_leaf(
        h: HostPhysAddr,
        f: MappingFlags,
        s: PageSize,
        t: MemoryType,
    ) -> Result<Self, EntryError> {
        GStageEntry::new_leaf(h, f, s, t)
    }
}

fn leaf_size() -> impl Strategy<Value = PageSize> {
    prop_oneof![
        Just(PageSize::Size4K),
        Just(PageSize::Size2M),
        Just(PageSize::Size1G)
    ]
}

/// A `size`-aligned host address that fits `E`'s address field.
fn aligned_hpa<E: NestedEntry>(raw: u64, size: PageSize) -> usize {
    size.align_down((raw & ((1 << E::PA_BITS) - 1)) as usize)
}

/// Any generic flags: no access, write without read and execute-only
/// included, plus any of USER/DEVICE/UNCACHED.
fn any_flags() -> impl Strategy<Value = MappingFlags> {
    (0usize..64).prop_map(MappingFlags::from_bits_truncate)
}

/// Rights as `check_flags` accepts them: some of R/W/X (R if none), W
/// implies R; USER/DEVICE/UNCACHED as given.
fn rights(raw: MappingFlags) -> MappingFlags {
    if raw & RWX == MappingFlags::empty() || raw.contains(MappingFlags::WRITE) {
        raw | MappingFlags::READ
    } else {
        raw
    }
}

/// Flags the format's checked constructors accept: [`rights`], with R added
/// where the format refuses the rest (EPT refuses execute-only without a
/// stated capability).
fn leaf_flags<E: NestedEntry>(raw: MappingFlags) -> MappingFlags {
    let f = rights(raw);
    if E::check_leaf_flags(f).is_err() {
        f | MappingFlags::READ
    } else {
        f
    }
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

/// A leaf from `new_page` reads back its address, is a leaf where the
/// walker reads it and, when huge, above the last level; raw bits round
/// trip; `USER` is never reported; the checked constructors build the same
/// leaf.
fn leaf_round_trips<E: LawEntry>(raw: u64, size: PageSize, flags: MappingFlags) -> TestCaseResult {
    let hpa = aligned_hpa::<E>(raw, size);
    let flags = leaf_flags::<E>(flags);
    let huge = size.is_huge();
    let e = E::new_page(PhysAddr::from_usize(hpa), flags, huge);
    prop_assert_eq!(e.paddr().as_usize(), hpa);
    prop_assert!(e.is_present() && !e.is_unused());
    prop_assert!(!e.flags().contains(MappingFlags::USER));
    prop_assert_eq!(e.kind(!huge), EntryKind::Leaf);
    if huge {
        prop_assert_eq!(e.kind(false), EntryKind::Leaf);
    }
    prop_assert_eq!(E::from_raw(e.raw()), e);
    prop_assert_eq!(e.bits() as u64, e.raw());
    let h = HostPhysAddr::from(hpa);
    prop_assert_eq!(E::try_new_leaf(h, flags, size), Ok(e));
    prop_assert_eq!(
        E::new_leaf(h, flags, size, MemoryType::from_flags(flags)),
        Ok(e)
    );
    Ok(())
}

/// A leaf with an explicit memory type has the rights `new_page` gives and
/// reports its memory type among its flags.
fn typed_leaf<E: LawEntry>(
    raw: u64,
    size: PageSize,
    flags: MappingFlags,
    t: MemoryType,
) -> TestCaseResult {
    let hpa = aligned_hpa::<E>(raw, size);
    let flags = leaf_flags::<E>(flags);
    let e = E::new_leaf(HostPhysAddr::from(hpa), flags, size, t)
        .map_err(|err| TestCaseError::fail(format!("{err}")))?;
    let plain = E::new_page(PhysAddr::from_usize(hpa), flags, size.is_huge());
    prop_assert_eq!(e.paddr().as_usize(), hpa);
    prop_assert_eq!(e.flags() & RWX, plain.flags() & RWX);
    prop_assert_eq!(e.flags(), (e.flags() & RWX) | e.memory_type().to_flags());
    prop_assert_eq!(e.kind(!size.is_huge()), EntryKind::Leaf);
    Ok(())
}

/// A table pointer reads back its address and is a table above the last
/// level.
fn table_round_trips<E: LawEntry>(raw: u64) -> TestCaseResult {
    let hpa = aligned_hpa::<E>(raw, PageSize::Size4K);
    let t = E::new_table(PhysAddr::from_usize(hpa));
    prop_assert_eq!(t.paddr().as_usize(), hpa);
    prop_assert!(t.is_present());
    prop_assert!(!t.is_huge());
    prop_assert_eq!(t.kind(false), EntryKind::Table);
    prop_assert_eq!(E::from_raw(t.raw()), t);
    Ok(())
}

/// `is_table` is `kind(false) == Table`, and above the last level an entry
/// that is not a table is a leaf exactly when it is present: the walk asks
/// only these two questions where it stops early. The encodings live in the
/// low bits, so every low byte is tried under the random upper bits.
fn is_table_is_kind_table<E: LawEntry>(raw: u64) -> TestCaseResult {
    for low in 0..=0xff {
        let e = E::from_raw(raw & !0xff | low);
        let kind = e.kind(false);
        prop_assert_eq!(e.is_table(), kind == EntryKind::Table, "{:#x}", e.raw());
        if !e.is_table() {
            let present = if e.is_present() {
                EntryKind::Leaf
            } else {
                EntryKind::Empty
            };
            prop_assert_eq!(kind, present, "{:#x}", e.raw());
        }
    }
    Ok(())
}

/// The rights rules of `NestedEntry` (see its docs): no access is not
/// present at every level; otherwise the leaf has at least the asked rights
/// and never write without read; the checked path builds what `new_page`
/// builds or refuses with the format's typed error, and refuses no access
/// and write without read always.
fn rights_rules<E: LawEntry>(raw: u64, size: PageSize, flags: MappingFlags) -> TestCaseResult {
    let hpa = aligned_hpa::<E>(raw, size);
    let huge = size.is_huge();
    let e = E::new_page(PhysAddr::from_usize(hpa), flags, huge);
    let asked = flags & RWX;
    let got = e.flags() & RWX;
    if asked.is_empty() {
        prop_assert!(!e.is_present());
        prop_assert_eq!(e.kind(true), EntryKind::Empty);
        prop_assert_eq!(e.kind(false), EntryKind::Empty);
    } else {
        prop_assert!(got.contains(asked), "{:?} -> {:?}", flags, got);
        prop_assert!(!got.contains(MappingFlags::WRITE) || got.contains(MappingFlags::READ));
        prop_assert_eq!(e.kind(!huge), EntryKind::Leaf);
    }
    let must_refuse = asked.is_empty()
        || (asked.contains(MappingFlags::WRITE) && !asked.contains(MappingFlags::READ));
    let checked = E::try_new_leaf(HostPhysAddr::from(hpa), flags, size);
    prop_assert_eq!(checked.is_ok(), E::check_leaf_flags(flags).is_ok());
    match checked {
        Ok(leaf) => {
            prop_assert!(!must_refuse);
            prop_assert_eq!(leaf, e);
        }
        Err(EntryError::BadFlags(f)) => prop_assert_eq!(f, flags),
        Err(EntryError::ExecuteOnly(f)) => {
            prop_assert_eq!(f, flags);
            prop_assert_eq!(asked, MappingFlags::EXECUTE);
        }
        Err(other) => prop_assert!(false, "unexpected {:?}", other),
    }
    if must_refuse {
        prop_assert_eq!(checked, Err(EntryError::BadFlags(flags)));
    }
    Ok(())
}

/// `set_flags` and `set_paddr` build what `new_page` builds, for any flags.
fn setters_match_new_page<E: LawEntry>(
    (a, b): (u64, u64),
    size: PageSize,
    (fa, fb): (MappingFlags, MappingFlags),
) -> TestCaseResult {
    let huge = size.is_huge();
    let (a, b) = (aligned_hpa::<E>(a, size), aligned_hpa::<E>(b, size));
    let mut e = E::new_page(PhysAddr::from_usize(a), fa, huge);
    e.set_flags(fb, huge);
    prop_assert_eq!(e, E::new_page(PhysAddr::from_usize(a), fb, huge));
    e.set_paddr(PhysAddr::from_usize(b));
    prop_assert_eq!(e, E::new_page(PhysAddr::from_usize(b), fb, huge));
    Ok(())
}

/// `with_flags_of` is `set_flags` without the conversion, and keeps every
/// bit outside `FLAG_MASK` (address, accessed/dirty, format-specific bits).
fn with_flags_of_is_set_flags<E: LawEntry>(
    noise: u64,
    old: MappingFlags,
    new: MappingFlags,
    huge: bool,
) -> TestCaseResult {
    let (old, new) = (rights(old), rights(new));
    let base = E::new_page(PhysAddr::from_usize(0), old, huge);
    let leaf = E::from_raw(base.raw() | (noise & !E::FLAG_MASK));
    let template = E::new_page(PhysAddr::from_usize(0), new, huge);
    let mut expected = leaf;
    expected.set_flags(new, huge);
    let got = leaf.with_flags_of(template);
    prop_assert_eq!(
        got.raw(),
        expected.raw(),
        "{:?} -> {:?}, huge {}",
        old,
        new,
        huge
    );
    prop_assert_eq!(got.raw() & !E::FLAG_MASK, leaf.raw() & !E::FLAG_MASK);
    Ok(())
}

/// A 4 KiB leaf with some of the kept bits set, re-encoded as a huge leaf
/// and back (as split and collapse do), keeps its address, flags, memory
/// type and kept bits; `write_protected` clears exactly the write bit in
/// either encoding.
fn with_huge_and_write_protect<E: LawEntry>(
    raw: u64,
    flags: MappingFlags,
    t: MemoryType,
    extra: u64,
) -> TestCaseResult {
    let hpa = aligned_hpa::<E>(raw, PageSize::Size2M);
    let flags = leaf_flags::<E>(flags);
    let kept = E::KEPT
        .iter()
        .enumerate()
        .filter(|(i, _)| extra & (1 << i) != 0)
        .fold(0, |acc, (_, bit)| acc | bit);
    let small = E::new_leaf(HostPhysAddr::from(hpa), flags, PageSize::Size4K, t)
        .map_err(|err| TestCaseError::fail(format!("{err}")))?;
    let small = E::from_raw(small.raw() | kept);
    let huge = small.with_huge(true);
    prop_assert_eq!(huge.kind(false), EntryKind::Leaf);
    prop_assert_eq!(huge.paddr(), small.paddr());
    prop_assert_eq!(huge.flags(), small.flags());
    prop_assert_eq!(huge.memory_type(), small.memory_type());
    prop_assert_eq!(huge.raw() & kept, kept);
    prop_assert_eq!(
        (huge.is_accessed(), huge.is_dirty()),
        (small.is_accessed(), small.is_dirty())
    );
    prop_assert_eq!(huge.with_huge(false), small);
    prop_assert_eq!(huge.with_huge(true), huge);
    prop_assert_eq!(small.with_huge(false), small);
    for (e, is_huge) in [(small, false), (huge, true)] {
        let ro = e.write_protected(is_huge);
        prop_assert_eq!(ro.raw(), e.raw() & !E::WRITE_BIT);
        prop_assert_eq!(ro.flags(), e.flags() - MappingFlags::WRITE);
        prop_assert_eq!(ro.kind(!is_huge), EntryKind::Leaf);
    }
    Ok(())
}

/// Clearing accessed and dirty clears them and nothing that locates the
/// page: the address and the kind stay.
fn clearing_accessed_dirty<E: LawEntry>(
    raw: u64,
    size: PageSize,
    flags: MappingFlags,
    extra: u64,
) -> TestCaseResult {
    let hpa = aligned_hpa::<E>(raw, size);
    let huge = size.is_huge();
    let kept = E::KEPT
        .iter()
        .enumerate()
        .filter(|(i, _)| extra & (1 << i) != 0)
        .fold(0, |acc, (_, bit)| acc | bit);
    let e = E::new_page(PhysAddr::from_usize(hpa), leaf_flags::<E>(flags), huge);
    let mut e = E::from_raw(e.raw() | kept);
    let before = e;
    e.clear_accessed();
    prop_assert!(!e.is_accessed());
    e.clear_dirty();
    prop_assert!(!e.is_dirty());
    prop_assert_eq!(e.paddr(), before.paddr());
    prop_assert_eq!(e.kind(!huge), EntryKind::Leaf);
    Ok(())
}

/// Aligned means aligned to the leaf size, and the address must fit the
/// address field: anything else is a typed error naming it.
fn misplaced_leaves_are_refused<E: LawEntry>(
    raw: u64,
    offset: usize,
    size: PageSize,
) -> TestCaseResult {
    let hpa = aligned_hpa::<E>(raw, PageSize::Size1G);
    let offset = (offset << 12) & (size.bytes() - 1);
    if offset != 0 {
        let h = HostPhysAddr::from(hpa + offset);
        prop_assert_eq!(
            E::try_new_leaf(h, MappingFlags::READ, size),
            Err(EntryError::Misaligned { hpa: h, size })
        );
    }
    let wide = HostPhysAddr::from(hpa | 1 << E::PA_BITS);
    prop_assert_eq!(
        E::try_new_leaf(wide, MappingFlags::READ, size),
        Err(EntryError::AddressTooWide {
            hpa: wide,
            pa_bits: E::PA_BITS
        })
    );
    Ok(())
}

/// The walk geometry: each level's index is the GPA shifted by hand (9
/// bits a level, the root wider when concatenated), the indices rebuild the
/// GPA inside the width, and `gpa_in_range` is the width.
fn index_matches_shifting<F: NptFormat>(gpa: usize) -> TestCaseResult {
    let mut rebuilt = gpa & 0xfff;
    for level in 0..F::LEVELS {
        let shift = 12 + 9 * (F::LEVELS - 1 - level);
        let width = if level == 0 {
            F::GPA_BITS as usize - shift
        } else {
            9
        };
        let by_hand = (gpa >> shift) & ((1 << width) - 1);
        prop_assert_eq!(F::index(gpa, level), by_hand, "level {}", level);
        prop_assert!(by_hand < F::entries(level));
        rebuilt |= by_hand << shift;
    }
    prop_assert_eq!(rebuilt as u64, gpa as u64 & (F::GPA_LIMIT - 1));
    prop_assert_eq!(
        F::gpa_in_range(GuestPhysAddr::from(gpa)),
        (gpa as u64) < (1 << F::GPA_BITS)
    );
    Ok(())
}

/// Leaf sizes and levels agree: 4 KiB at the last level, one size step per
/// level, `level_of` the inverse of `leaf_size`, nothing above `MAX_LEAF`,
/// and the root's size follows from its entries.
fn geometry_is_consistent<F: NptFormat>() {
    assert!((2..=5).contains(&F::LEVELS), "{}", F::NAME);
    assert_eq!(F::leaf_size(F::LEVELS - 1), Some(PageSize::Size4K));
    for level in 0..F::LEVELS {
        match F::leaf_size(level) {
            Some(size) => {
                assert!(size <= F::MAX_LEAF, "{} level {level}", F::NAME);
                assert_eq!(size.height(), F::LEVELS - 1 - level);
                assert_eq!(F::level_of(size), Some(level), "{}", F::NAME);
            }
            None => assert!(
                PageSize::from_height(F::LEVELS - 1 - level).is_none_or(|s| s > F::MAX_LEAF)
            ),
        }
    }
    assert_eq!(F::ROOT_ENTRIES, 1 << (F::GPA_BITS - F::ROOT_SHIFT));
    assert_eq!(F::ROOT_FRAMES, F::ROOT_ENTRIES.div_ceil(512));
    assert_eq!(F::ROOT_ALIGN, F::ROOT_FRAMES * 4096);
    assert_eq!(F::GPA_LIMIT, 1 << F::GPA_BITS);
    assert_eq!(F::PA_BITS, <F::Entry as NestedEntry>::PA_BITS);
}

macro_rules! laws {
    ($($name:ident: $fmt:ty,)*) => {$(
        mod $name {
            use super::*;
            type F = $fmt;
            type E = <F as NptFormat>::Entry;

            #[test]
            fn geometry() {
                geometry_is_consistent::<F>();
            }

            proptest! {
                #[test]
                fn leaf_round_trips(raw: u64, size in leaf_size(), flags in any_flags()) {
                    super::leaf_round_trips::<E>(raw, size, flags)?;
                }

                #[test]
                fn typed_leaf(raw: u64, size in leaf_size(), flags in any_flags(), t in memory_type()) {
                    super::typed_leaf::<E>(raw, size, flags, t)?;
                }

                #[test]
                fn table_round_trips(raw: u64) {
                    super::table_round_trips::<E>(raw)?;
                }

                #[test]
                fn is_table_is_kind_table(raw: u64) {
                    super::is_table_is_kind_table::<E>(raw)?;
                }

                #[test]
                fn rights_rules(raw: u64, size in leaf_size(), flags in any_flags()) {
                    super::rights_rules::<E>(raw, size, flags)?;
                }

                #[test]
                fn setters_match_new_page(
                    addrs: (u64, u64),
                    size in leaf_size(),
                    flags in (any_flags(), any_flags()),
                ) {
                    super::setters_match_new_page::<E>(addrs, size, flags)?;
                }

                #[test]
                fn with_flags_of_is_set_flags(noise: u64, old in any_flags(), new in any_flags(), huge: bool) {
                    super::with_flags_of_is_set_flags::<E>(noise, old, new, huge)?;
                }

                #[test]
                fn with_huge_and_write_protect(raw: u64, flags in any_flags(), t in memory_type(), extra in 0u64..16) {
                    super::with_huge_and_write_protect::<E>(raw, flags, t, extra)?;
                }

                #[test]
                fn clearing_accessed_dirty(raw: u64, size in leaf_size(), flags in any_flags(), extra in 0u64..16) {
                    super::clearing_accessed_dirty::<E>(raw, size, flags, extra)?;
                }

                #[test]
                fn misplaced_leaves_are_refused(raw: u64, offset in 1usize..(1 << 18), size in leaf_size()) {
                    super::misplaced_leaves_are_refused::<E>(raw, offset, size)?;
                }

                #[test]
                fn index_matches_shifting(gpa: usize) {
                    super::index_matches_shifting::<F>(gpa)?;
                }
            }
        }
    )*};
}

npt_entry::for_each_format!(laws);

/// The bits hardware sets survive a change of flags: EPT accessed (8) and
/// dirty (9), NPT accessed (5) and dirty (6), the Arm DBM bit (51).
#[test]
fn hardware_bits_are_outside_the_mask() {
    assert_eq!(EptEntry::FLAG_MASK & (0b11 << 8), 0);
    assert_eq!(NptEntry::FLAG_MASK & (0b11 << 5), 0);
    assert_eq!(Stage2Entry::FLAG_MASK & (1 << 51), 0);
}
