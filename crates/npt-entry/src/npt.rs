//! AMD nested paging (AMD64 APM Vol. 2, 15.25 "Nested Paging").
//!
//! TODO(helper): NptEntry fields, GenericPTE + NestedEntry impls, Ncr3, tests.

use crate::NptFormat;
use gpa_types::PageSize;

/// A nested page-table entry: the long-mode PML4E/PDPE/PDE/PTE format.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NptEntry(u64);

/// AMD nested paging with 4-level tables: 48-bit GPA, 1 GiB leaves.
#[derive(Debug, Clone, Copy)]
pub struct Npt4;

impl NptFormat for Npt4 {
    type Entry = NptEntry;
    const NAME: &'static str = "AMD NPT 4-level";
    const LEVELS: usize = 4;
    const GPA_BITS: u32 = 48;
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

// ---- TEMPORARY STUB: replace this whole block with the real implementation ----
impl core::fmt::Debug for NptEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "NptEntry({:#x})", self.0)
    }
}
impl crate::GenericPTE for NptEntry {
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
impl crate::NestedEntry for NptEntry {
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
