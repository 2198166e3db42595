//! Intel EPT (Intel SDM Vol. 3C, chapter 29 "VMX support for address translation", 29.3).
//!
//! TODO(helper): EptEntry fields, GenericPTE + NestedEntry impls, Eptp, tests.

use crate::{NptFormat};
use gpa_types::PageSize;

/// An EPT paging-structure entry (PML5E/PML4E/PDPTE/PDE/PTE).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EptEntry(u64);

/// EPT with a 4-level walk (EPTP page-walk length 3): 48-bit GPA, 1 GiB leaves.
#[derive(Debug, Clone, Copy)]
pub struct Ept4;

/// EPT with a 5-level walk (EPTP page-walk length 4): 57-bit GPA, 1 GiB leaves.
#[derive(Debug, Clone, Copy)]
pub struct Ept5;

impl NptFormat for Ept4 {
    type Entry = EptEntry;
    const NAME: &'static str = "EPT 4-level";
    const LEVELS: usize = 4;
    const GPA_BITS: u32 = 48;
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

impl NptFormat for Ept5 {
    type Entry = EptEntry;
    const NAME: &'static str = "EPT 5-level";
    const LEVELS: usize = 5;
    const GPA_BITS: u32 = 57;
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

// ---- TEMPORARY STUB: replace this whole block with the real implementation ----
impl core::fmt::Debug for EptEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "EptEntry({:#x})", self.0)
    }
}
impl crate::GenericPTE for EptEntry {
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
impl crate::NestedEntry for EptEntry {
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
