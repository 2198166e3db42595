//! Second-stage faults: what a hypervisor does on an EPT violation, a
//! nested page fault, a stage-2 abort or a guest page fault.

use gpa_types::{GuestPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, Inserted, NewLeaf, NptError, TlbFlush};

use crate::error::{AspaceError, AspaceResult};
use crate::region::{Backing, Region, RegionKind};
use crate::space::GuestAddrSpace;
use crate::stats::Count;

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
    ///
    /// Takes `&self`: vCPUs fault concurrently (through
    /// [`crate::SharedAddrSpace::handle_fault`], under the shared lock).
    /// What a fault changes, it changes with compare-and-swap on one entry
    /// (see `npt_table::concurrent`): two vCPUs faulting on the same lazy
    /// page map one frame, and both get [`FaultOutcome::Fixed`]; the page
    /// is counted as populated once.
    pub fn handle_fault(&self, gpa: GuestPhysAddr, access: Access) -> AspaceResult<FaultOutcome> {
        let result = self
            .handle_fault_inner(gpa, access)
            .map(|(outcome, count)| {
                self.counters.add(count, gpa.as_usize());
                outcome
            });
        match &result {
            Ok(FaultOutcome::Fixed(_flush)) => {
                trace!(
                    "guest-aspace: {access:?} fault at {:#x} fixed; flush {_flush}",
                    gpa.as_usize()
                );
            }
            Ok(FaultOutcome::Mmio { .. }) => {
                trace!(
                    "guest-aspace: {access:?} fault at {:#x}: MMIO",
                    gpa.as_usize()
                );
            }
            Ok(FaultOutcome::Violation { kind: _kind, .. }) => {
                trace!(
                    "guest-aspace: {access:?} fault at {:#x}: violation in {} region",
                    gpa.as_usize(),
                    _kind
                );
            }
            Ok(FaultOutcome::Unmapped { .. }) => {
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

    /// The outcome, and the counter it adds to.
    fn handle_fault_inner(
        &self,
        gpa: GuestPhysAddr,
        access: Access,
    ) -> AspaceResult<(FaultOutcome, Count)> {
        let addr = gpa.as_usize();
        let page = addr & !(PAGE - 1);
        let write = access == Access::Write;
        // One region lookup and one walk, acting where it ended.
        let Some(region) = self.region_at(addr) else {
            return Ok((FaultOutcome::Unmapped { gpa }, Count::Unmapped));
        };
        // The region's rights first. Emulated device space checks data
        // accesses only (a write to a read-only device is a violation, not
        // an exit); an instruction fetch there exits as MMIO, for the
        // hypervisor to decide.
        let emulated = region.backing == (Backing::Mmio { passthrough: None });
        let checked = !emulated || access != Access::Execute;
        if checked && !region.flags.contains(access.needs()) {
            let kind = region.backing.kind();
            let outcome = FaultOutcome::Violation { gpa, access, kind };
            return Ok((outcome, Count::Violation));
        }
        if emulated {
            return Ok((FaultOutcome::Mmio { gpa, access }, Count::Mmio));
        }
        // A write while dirty logging write-protects the page: make it
        // writable and mark it, in the one walk of the update.
        if write && region.dirty.is_some() {
            match self.regrant(region, page) {
                Err(AspaceError::Table(NptError::NotMapped { .. })) => {}
                granted => return granted.map(|f| (FaultOutcome::Fixed(f), Count::Fixed)),
            }
        }
        if !region.is_lazy() {
            // Mapped: a stale TLB entry, nothing to change.
            return Ok(match self.table.translate_leaf(page.into()) {
                Some(_) => (FaultOutcome::Fixed(TlbFlush::none()), Count::Fixed),
                None => (FaultOutcome::Unmapped { gpa }, Count::Unmapped),
            });
        }
        let (flush, count) = match self.fill(region, page, write)? {
            Filled::New(leaf) => (leaf.flush(), Count::FixedPopulated),
            // Another vCPU populated it since the walk above (or it is a
            // stale TLB entry): while logging, it may have mapped it
            // read-only.
            Filled::Present if write && region.dirty.is_some() => {
                (self.regrant(region, page)?, Count::Fixed)
            }
            Filled::Present => (TlbFlush::none(), Count::Fixed),
        };
        Ok((FaultOutcome::Fixed(flush), count))
    }

    /// A write fault on a mapped page while dirty logging: makes it
    /// writable (if another vCPU has not) and marks it.
    /// [`NptError::NotMapped`] if no leaf maps it.
    fn regrant(&self, region: &Region, page: usize) -> AspaceResult<TlbFlush> {
        let Some(log) = region.dirty.as_ref() else {
            return Ok(TlbFlush::none());
        };
        let granted = log.grant_then_mark((page - region.start) / PAGE, || {
            self.table.update_flags_concurrent(page.into(), |now| {
                (!now.contains(MappingFlags::WRITE)).then_some(region.flags)
            })
        })?;
        Ok(granted.unwrap_or_else(TlbFlush::none))
    }

    /// Allocates, zeroes and maps the lazy page at `page` if it is not
    /// mapped yet. While dirty logging is on the page is mapped without
    /// write permission unless `dirty`, in which case it is marked dirty.
    #[inline]
    pub(crate) fn populate_page(&self, page: usize, dirty: bool) -> AspaceResult<TlbFlush> {
        let region = self
            .region_at(page)
            .ok_or(AspaceError::NoRegion { gpa: page.into() })?;
        match self.fill(region, page, dirty)? {
            Filled::New(leaf) => {
                self.counters.add(Count::Populated, page);
                Ok(leaf.flush())
            }
            Filled::Present => Ok(TlbFlush::none()),
        }
    }

    /// Fills the lazy page at `page` of `region` with a zeroed frame (a
    /// pre-zeroed one from the allocator if it has one ready), unless a
    /// leaf maps it already (another vCPU won the race, or it was there).
    /// While dirty logging is on the page is mapped without write
    /// permission unless `dirty`, in which case it is marked dirty after
    /// it is mapped.
    #[inline]
    fn fill(&self, region: &Region, page: usize, dirty: bool) -> AspaceResult<Filled> {
        let log = region.dirty.as_ref();
        let mut flags = region.flags;
        if log.is_some() && !dirty {
            flags -= MappingFlags::WRITE;
        }
        // The leaf is the only record of a single frame (see `Region::huge`).
        let inserted = self
            .table
            .insert_new_concurrent(page.into(), flags, |alloc| {
                // A frame zeroed ahead of time (`ZeroedPool`), if one is ready.
                if let Some(hpa) = alloc.alloc_zeroed_frame() {
                    return Some(hpa);
                }
                let hpa = alloc.alloc_frame()?;
                // The guest (or the host write that populates it) touches it
                // next: zero through the cache (see `zero.rs`). The insert
                // publishes these stores with the leaf (release).
                crate::zero::zero_frames(alloc, hpa, PAGE);
                Some(hpa)
            })?;
        match inserted {
            Inserted::New(leaf) => {
                if let (Some(log), true) = (log, dirty) {
                    // Mapped (writable) first, marked after: see `DirtyLog`.
                    log.mark((page - region.start) / PAGE);
                }
                Ok(Filled::New(leaf))
            }
            Inserted::Present(_) => Ok(Filled::Present),
        }
    }
}

/// What filling a lazy page found.
enum Filled {
    /// This call mapped it (the record is built when the fault returns:
    /// see `NewLeaf::flush`).
    New(NewLeaf),
    /// A leaf mapped it already.
    Present,
}
