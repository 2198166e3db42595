//! Second-stage faults: what a hypervisor does on an EPT violation, a
//! nested page fault, a stage-2 abort or a guest page fault.

use gpa_types::{GuestPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{Entry, FrameAllocator, TlbFlush, VacantEntry};

use crate::error::{AspaceError, AspaceResult};
use crate::region::{Backing, Region, RegionKind};
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

/// The access a fault reports as mapping flags (axaddrspace's
/// `handle_page_fault(addr, access_flags)`): `WRITE` is a write (a
/// read-modify-write too), else `EXECUTE` an instruction fetch, else `READ`
/// a read. Other bits (`USER`, `DEVICE`, ...) are ignored; flags without
/// `READ`, `WRITE` or `EXECUTE` are [`AspaceError::Table`] with `BadFlags`.
impl TryFrom<MappingFlags> for Access {
    type Error = AspaceError;

    fn try_from(flags: MappingFlags) -> Result<Self, Self::Error> {
        if flags.contains(MappingFlags::WRITE) {
            Ok(Self::Write)
        } else if flags.contains(MappingFlags::EXECUTE) {
            Ok(Self::Execute)
        } else if flags.contains(MappingFlags::READ) {
            Ok(Self::Read)
        } else {
            Err(AspaceError::Table(npt_table::NptError::BadFlags(flags)))
        }
    }
}

/// The flag an access needs ([`Access::needs`]).
impl From<Access> for MappingFlags {
    fn from(access: Access) -> Self {
        access.needs()
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
        let result = self.handle_fault_inner(gpa, access);
        let c = &mut self.counters;
        match &result {
            Ok(FaultOutcome::Fixed(_flush)) => {
                c.fixed += 1;
                trace!(
                    "guest-aspace: {access:?} fault at {:#x} fixed; flush {_flush}",
                    gpa.as_usize()
                );
            }
            Ok(FaultOutcome::Mmio { .. }) => {
                c.mmio += 1;
                trace!(
                    "guest-aspace: {access:?} fault at {:#x}: MMIO",
                    gpa.as_usize()
                );
            }
            Ok(FaultOutcome::Violation { kind: _kind, .. }) => {
                c.violation += 1;
                trace!(
                    "guest-aspace: {access:?} fault at {:#x}: violation in {} region",
                    gpa.as_usize(),
                    _kind
                );
            }
            Ok(FaultOutcome::Unmapped { .. }) => {
                c.unmapped += 1;
                trace!(
                    "guest-aspace: {access:?} fault at {:#x}: unmapped",
                    gpa.as_usize()
                );
            }
            Err(_e) => trace!(
                "guest-aspace: {access:?} fault at {:#x} failed: {_e}",
                gpa.as_usize()
            ),
        }
        result
    }

    fn handle_fault_inner(
        &mut self,
        gpa: GuestPhysAddr,
        access: Access,
    ) -> AspaceResult<FaultOutcome> {
        let addr = gpa.as_usize();
        let page = addr & !(PAGE - 1);
        let write = access == Access::Write;
        // One region lookup and one walk, acting where it ended.
        let Self {
            table,
            regions,
            counters,
            ..
        } = self;
        let Some(region) = crate::space::region_in(regions, addr) else {
            return Ok(FaultOutcome::Unmapped { gpa });
        };
        // The region's rights first. Emulated device space checks data
        // accesses only (a write to a read-only device is a violation, not
        // an exit); an instruction fetch there exits as MMIO, for the
        // hypervisor to decide.
        let emulated = region.backing == (Backing::Mmio { passthrough: None });
        let checked = !emulated || access != Access::Execute;
        if checked && !region.flags.contains(access.needs()) {
            return Ok(FaultOutcome::Violation {
                gpa,
                access,
                kind: region.backing.kind(),
            });
        }
        if emulated {
            return Ok(FaultOutcome::Mmio { gpa, access });
        }
        match table.entry(page.into())? {
            Entry::Vacant(vacant) if region.is_lazy() => {
                let flush = fill(vacant, region, page, write)?;
                counters.pages_populated += 1;
                Ok(FaultOutcome::Fixed(flush))
            }
            Entry::Vacant(_) => Ok(FaultOutcome::Unmapped { gpa }),
            // Mapped: a write while dirty logging write-protects the page,
            // or a stale TLB entry (nothing to change).
            Entry::Leaf(leaf) => {
                let logging = region.dirty.is_some();
                if write && logging && !leaf.translation().flags.contains(MappingFlags::WRITE) {
                    mark(region, page);
                    return Ok(FaultOutcome::Fixed(leaf.protect(region.flags)?));
                }
                Ok(FaultOutcome::Fixed(TlbFlush::none()))
            }
        }
    }

    /// Allocates, zeroes and maps the lazy page at `page` if it is not
    /// mapped yet. While dirty logging is on the page is mapped without
    /// write permission unless `dirty`, in which case it is marked dirty.
    #[inline]
    pub(crate) fn populate_page(&mut self, page: usize, dirty: bool) -> AspaceResult<TlbFlush> {
        let Self {
            table,
            regions,
            counters,
            ..
        } = self;
        let region = crate::space::region_in(regions, page)
            .ok_or(AspaceError::NoRegion { gpa: page.into() })?;
        match table.entry(page.into())? {
            Entry::Vacant(vacant) => {
                let flush = fill(vacant, region, page, dirty)?;
                counters.pages_populated += 1;
                Ok(flush)
            }
            Entry::Leaf(_) => Ok(TlbFlush::none()),
        }
    }
}

/// Fills the vacant lazy page at `page` of `region` with a zeroed frame
/// (a pre-zeroed one from the allocator if it has one ready), mapped where the walk ended. While dirty logging is on the page is
/// mapped without write permission unless `dirty`, in which case it is
/// marked dirty.
#[inline]
fn fill<F: NptFormat, A: FrameAllocator>(
    vacant: VacantEntry<'_, F, A>,
    region: &mut Region,
    page: usize,
    dirty: bool,
) -> AspaceResult<TlbFlush> {
    let logging = region.dirty.is_some();
    let mut flags = region.flags;
    if logging && !dirty {
        flags -= MappingFlags::WRITE;
    }
    // The leaf is the only record of a single frame (see `Region::huge`).
    let (_, flush) = vacant.insert_new(flags, |alloc| {
        // A frame zeroed ahead of time (`ZeroedPool`), if one is ready.
        if let Some(hpa) = alloc.alloc_zeroed_frame() {
            return Some(hpa);
        }
        let hpa = alloc.alloc_frame()?;
        // The guest (or the host write that populates it) touches it
        // next: zero through the cache (see `zero.rs`).
        crate::zero::zero_frames(alloc, hpa, PAGE);
        Some(hpa)
    })?;
    if logging && dirty {
        mark(region, page);
    }
    Ok(flush)
}

/// Marks `page` dirty in `region`'s log, if it has one.
#[inline]
fn mark(region: &mut Region, page: usize) {
    let idx = (page - region.start) / PAGE;
    if let Some(log) = region.dirty.as_mut() {
        log.mark(idx);
    }
}
