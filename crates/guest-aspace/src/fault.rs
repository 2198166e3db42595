//! Second-stage faults: what a hypervisor does on an EPT violation, a
//! nested page fault, a stage-2 abort or a guest page fault.

use gpa_types::{GuestPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, TlbFlush};

use crate::error::{AspaceError, AspaceResult};
use crate::region::{Backing, Chunk, RegionKind};
use crate::space::GuestAddrSpace;

const PAGE: usize = PageSize::Size4K.bytes();

/// The kind of guest access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Execute,
}

impl Access {
    /// The mapping flag the access needs.
    pub fn needs(self) -> MappingFlags {
        match self {
            Self::Read => MappingFlags::READ,
            Self::Write => MappingFlags::WRITE,
            Self::Execute => MappingFlags::EXECUTE,
        }
    }
}

/// What [`GuestAddrSpace::handle_fault`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a fault outcome says whether to resume the guest, emulate, or inject an error"]
pub enum FaultOutcome {
    /// The space fixed it (lazy page allocated, dirty page made writable,
    /// or the translation was already there: a stale TLB entry). Flush what
    /// the record names and resume the guest.
    Fixed(TlbFlush),
    /// An access to emulated device space: emulate it.
    Mmio {
        /// The faulting address.
        gpa: GuestPhysAddr,
        /// The access.
        access: Access,
    },
    /// The region exists but forbids this access (e.g. a write to ROM).
    Violation {
        /// The faulting address.
        gpa: GuestPhysAddr,
        /// The access.
        access: Access,
        /// The region's kind.
        kind: RegionKind,
    },
    /// No region covers the address.
    Unmapped {
        /// The faulting address.
        gpa: GuestPhysAddr,
    },
}

impl<F: NptFormat, A: FrameAllocator> GuestAddrSpace<F, A> {
    /// Handles a second-stage fault at `gpa`. Never allocates for a
    /// permission violation; allocates one zeroed 4 KiB frame for a first
    /// touch of lazy RAM.
    pub fn handle_fault(
        &mut self,
        gpa: GuestPhysAddr,
        access: Access,
    ) -> AspaceResult<FaultOutcome> {
        let addr = gpa.as_usize();
        let Some(region) = self.region_at(addr) else {
            return Ok(FaultOutcome::Unmapped { gpa });
        };
        if region.backing == (Backing::Mmio { passthrough: None }) {
            return Ok(FaultOutcome::Mmio { gpa, access });
        }
        if !region.flags.contains(access.needs()) {
            return Ok(FaultOutcome::Violation {
                gpa,
                access,
                kind: region.backing.kind(),
            });
        }
        let (flags, logging, lazy) = (
            region.flags,
            region.dirty.is_some(),
            matches!(region.backing, Backing::Alloc { lazy: true }),
        );
        let page = addr & !(PAGE - 1);
        match self.table.query(GuestPhysAddr::from_usize(page)) {
            Ok(t) => {
                if access == Access::Write && logging && !t.flags.contains(MappingFlags::WRITE) {
                    self.mark_dirty(page);
                    let flush = self.table.protect(page.into(), flags)?;
                    return Ok(FaultOutcome::Fixed(flush));
                }
                Ok(FaultOutcome::Fixed(TlbFlush::none()))
            }
            Err(_) if lazy => Ok(FaultOutcome::Fixed(
                self.populate_page(page, access == Access::Write)?,
            )),
            Err(_) => Ok(FaultOutcome::Unmapped { gpa }),
        }
    }

    /// Allocates, zeroes and maps the lazy page at `page`. While dirty
    /// logging is on the page is mapped without write permission unless
    /// `dirty`, in which case it is marked dirty.
    pub(crate) fn populate_page(&mut self, page: usize, dirty: bool) -> AspaceResult<TlbFlush> {
        let region = self
            .region_at(page)
            .ok_or(AspaceError::NoRegion { gpa: page.into() })?;
        let mut flags = region.flags;
        if region.dirty.is_some() && !dirty {
            flags -= MappingFlags::WRITE;
        }
        let alloc = self.table.allocator();
        let hpa = alloc.alloc_frame().ok_or(AspaceError::NoMemory)?;
        let chunk = Chunk {
            hpa,
            size: PageSize::Size4K,
        };
        crate::memory::zero_chunk(alloc, chunk);
        let flush = match self.table.map(page.into(), hpa, PageSize::Size4K, flags) {
            Ok(f) => f,
            Err(e) => {
                self.free_chunks(core::iter::once(chunk));
                return Err(e.into());
            }
        };
        if let Some(region) = self.region_at_mut(page) {
            region.chunks.insert(page, chunk);
        }
        self.reverse.insert(hpa.as_usize(), (page, PAGE));
        if dirty {
            self.mark_dirty(page);
        }
        Ok(flush)
    }
}
