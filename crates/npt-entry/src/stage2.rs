//! AArch64 VMSAv8-64 stage-2 translation, 4 KiB granule (Arm ARM DDI 0487,
//! D8 "The AArch64 Virtual Memory System Architecture").
//!
//! TODO(helper): Stage2Entry fields, GenericPTE + NestedEntry impls, Vtcr, Vttbr, tests.

use crate::NptFormat;
use gpa_types::PageSize;

/// A stage-2 descriptor (table, block or page, by level).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stage2Entry(u64);

/// Stage-2 tables for an `IPA_BITS`-bit IPA space (32..=48), 4 KiB granule.
///
/// The walk starts at the level that needs the fewest levels with at most 16
/// concatenated tables at the start (the rule Linux/KVM uses): 32..=34 bits
/// start at level 2 (2 levels, 4..16 concatenated tables), 35..=43 at level
/// 1 (3 levels; 40..=43 concatenate 2..16 tables), 44..=48 at level 0
/// (4 levels). Using any other width fails to compile.
#[derive(Debug, Clone, Copy)]
pub struct Stage2<const IPA_BITS: u32>;

/// 40-bit IPA: starts at level 1 with 2 concatenated tables (1024 root entries).
pub type Stage2Ipa40 = Stage2<40>;
/// 48-bit IPA: starts at level 0 with a single 512-entry root.
pub type Stage2Ipa48 = Stage2<48>;

impl<const IPA_BITS: u32> Stage2<IPA_BITS> {
    const CHECK: () = assert!(
        IPA_BITS >= 32 && IPA_BITS <= 48,
        "stage-2 IPA size must be 32..=48 bits with a 4 KiB granule"
    );

    /// Levels walked: the fewest such that the start level concatenates at
    /// most 16 tables (each level resolves 9 bits above the 12-bit offset).
    pub const LEVELS: usize = {
        let () = Self::CHECK;
        ((IPA_BITS - 12 - 4).div_ceil(9)) as usize
    };

    /// The Arm start level (0, 1 or 2) of the walk.
    pub const START_LEVEL: usize = 4 - Self::LEVELS;
}

impl<const IPA_BITS: u32> NptFormat for Stage2<IPA_BITS> {
    type Entry = Stage2Entry;
    const NAME: &'static str = "AArch64 stage 2 (4K granule)";
    const LEVELS: usize = Stage2::<IPA_BITS>::LEVELS;
    const GPA_BITS: u32 = IPA_BITS;
    // Level-1 blocks (1 GiB) exist with the 4 KiB granule; level-0 blocks do
    // not (without FEAT_LPA2).
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

// ---- TEMPORARY STUB: replace this whole block with the real implementation ----
impl core::fmt::Debug for Stage2Entry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Stage2Entry({:#x})", self.0)
    }
}
impl crate::GenericPTE for Stage2Entry {
    fn new_page(_paddr: memory_addr::PhysAddr, _flags: gpa_types::MappingFlags, _is_huge: bool) -> Self { unimplemented!() }
    fn new_table(_paddr: memory_addr::PhysAddr) -> Self { unimplemented!() }
    fn paddr(&self) -> memory_addr::PhysAddr { unimplemented!() }
    fn flags(&self) -> gpa_types::MappingFlags { unimplemented!() }
    fn set_paddr(&mut self, _paddr: memory_addr::PhysAddr) { unimplemented!() }
    fn set_flags(&mut self, _flags: gpa_types::MappingFlags, _is_huge: bool) { unimplemented!() }
    fn bits(self) -> usize { self.0 as usize }
    fn is_unused(&self) -> bool { self.0 == 0 }
    fn is_present(&self) -> bool { unimplemented!() }
    fn is_huge(&self) -> bool { unimplemented!() }
    fn clear(&mut self) { self.0 = 0 }
}
impl crate::NestedEntry for Stage2Entry {
    const HAS_ACCESSED_DIRTY: bool = false;
    const PA_BITS: u32 = 48;
    fn from_raw(bits: u64) -> Self { Self(bits) }
    fn raw(&self) -> u64 { self.0 }
    fn memory_type(&self) -> gpa_types::MemoryType { unimplemented!() }
    fn is_accessed(&self) -> bool { unimplemented!() }
    fn is_dirty(&self) -> bool { unimplemented!() }
    fn clear_accessed(&mut self) { unimplemented!() }
    fn clear_dirty(&mut self) { unimplemented!() }
}
// ---- END TEMPORARY STUB ----
