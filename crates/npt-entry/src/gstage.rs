//! RISC-V G-stage translation (RISC-V Privileged Architecture, "Hypervisor
//! Extension", 18.5 "Two-Stage Address Translation" (section numbers as in
//! version 20211203); PTE format from the Sv39/Sv48/Sv57 sections).
//!
//! TODO(helper): GStageEntry fields, GenericPTE + NestedEntry impls, Hgatp, tests.

use crate::NptFormat;
use gpa_types::PageSize;

/// A G-stage page-table entry (the Sv39/Sv48/Sv57 PTE format).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GStageEntry(u64);

/// Sv39x4: 3 levels, 41-bit GPA, 16 KiB root of 2048 entries, 1 GiB leaves.
#[derive(Debug, Clone, Copy)]
pub struct Sv39x4;
/// Sv48x4: 4 levels, 50-bit GPA, 16 KiB root, leaves up to 512 GiB.
#[derive(Debug, Clone, Copy)]
pub struct Sv48x4;
/// Sv57x4: 5 levels, 59-bit GPA, 16 KiB root, leaves up to 512 GiB (Sv57
/// also has 256 TiB petapages at level 4; this crate neither creates nor
/// decodes those as leaves of a known size and reports them as invalid).
#[derive(Debug, Clone, Copy)]
pub struct Sv57x4;

impl NptFormat for Sv39x4 {
    type Entry = GStageEntry;
    const NAME: &'static str = "RISC-V Sv39x4";
    const LEVELS: usize = 3;
    const GPA_BITS: u32 = 41;
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

impl NptFormat for Sv48x4 {
    type Entry = GStageEntry;
    const NAME: &'static str = "RISC-V Sv48x4";
    const LEVELS: usize = 4;
    const GPA_BITS: u32 = 50;
    const MAX_LEAF: PageSize = PageSize::Size512G;
}

impl NptFormat for Sv57x4 {
    type Entry = GStageEntry;
    const NAME: &'static str = "RISC-V Sv57x4";
    const LEVELS: usize = 5;
    const GPA_BITS: u32 = 59;
    const MAX_LEAF: PageSize = PageSize::Size512G;
}

// ---- TEMPORARY STUB: replace this whole block with the real implementation ----
impl core::fmt::Debug for GStageEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GStageEntry({:#x})", self.0)
    }
}
impl crate::GenericPTE for GStageEntry {
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
impl crate::NestedEntry for GStageEntry {
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
