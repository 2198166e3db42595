//! Frames unlinked from a table wait here until the caller's flush is done.
//!
//! A change that unlinks frames takes a new ticket, parks its frames under
//! it and stamps the ticket on the [`TlbFlush`] it returns. Completing that
//! record ([`NestedPageTable::complete`]) releases the frames of the
//! tickets it covers; an "everything" record releases every frame parked
//! under a ticket up to its highest. Nothing else releases a parked frame,
//! except dropping the table.
//!
//! Room for parked frames is reserved before a change is made, so parking
//! cannot fail half-way.

use alloc::vec::Vec;

use gpa_types::HostPhysAddr;
use npt_entry::NptFormat;

use crate::error::{NptResult, OutOfMemory};
use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::table::NestedPageTable;

/// One parked allocation.
#[derive(Debug, Clone, Copy)]
struct Parked {
    ticket: u64,
    hpa: HostPhysAddr,
    count: usize,
}

/// The parked frames of one table.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    parked: Vec<Parked>,
    /// The last ticket handed out (0: none yet).
    last_ticket: u64,
    /// 4 KiB frames parked and not yet released.
    frames: usize,
    /// Slots promised to callers of `reserve_parking` and not used yet:
    /// the vector's spare capacity never drops below this.
    promised: usize,
}

impl Retired {
    /// Makes room for `n` more parked allocations by the change about to be
    /// made, on top of the room promised to callers. On failure nothing
    /// changed.
    pub(crate) fn reserve(&mut self, n: usize) -> Result<(), OutOfMemory> {
        let want = self.promised.checked_add(n).ok_or(OutOfMemory::NoMemory)?;
        self.parked
            .try_reserve(want)
            .map_err(|_| OutOfMemory::NoMemory)
    }

    /// Promises room for `n` allocations to be parked by the caller later.
    pub(crate) fn promise(&mut self, n: usize) -> Result<(), OutOfMemory> {
        self.reserve(n)?;
        self.promised += n;
        Ok(())
    }

    /// Parks with room promised earlier, or new room.
    pub(crate) fn park_promised(
        &mut self,
        flush: &mut TlbFlush,
        hpa: HostPhysAddr,
        count: usize,
    ) -> Result<(), OutOfMemory> {
        if self.promised > 0 {
            self.promised -= 1;
        } else {
            self.reserve(1)?;
        }
        self.park(flush, hpa, count);
        Ok(())
    }

    /// Parks `count` frames at `hpa` under the ticket of `flush`, taking a
    /// new ticket if the record has none from the latest change. Room must
    /// have been reserved.
    pub(crate) fn park(&mut self, flush: &mut TlbFlush, hpa: HostPhysAddr, count: usize) {
        let ticket = match flush.tickets() {
            Some((_, hi)) if hi == self.last_ticket => hi,
            _ => {
                self.last_ticket += 1;
                flush.join_tickets(self.last_ticket, self.last_ticket);
                self.last_ticket
            }
        };
        debug_assert!(
            self.parked.len() < self.parked.capacity(),
            "parking room not reserved"
        );
        self.parked.push(Parked { ticket, hpa, count });
        self.frames += count;
    }

    /// Releases to `alloc` every allocation the completed `flush` covers.
    /// Returns the number of frames released.
    pub(crate) fn release<A: FrameAllocator>(&mut self, flush: &TlbFlush, alloc: &A) -> usize {
        let Some((lo, hi)) = flush.tickets() else {
            return 0;
        };
        let lo = if flush.is_all() { 0 } else { lo };
        let mut released = 0;
        self.parked.retain(|p| {
            let covered = p.ticket >= lo && p.ticket <= hi;
            if covered {
                alloc.dealloc_frames(p.hpa, p.count);
                released += p.count;
            }
            !covered
        });
        self.frames -= released;
        released
    }

    /// Releases everything (after a full flush, or as the table goes away).
    /// Returns the number of frames released.
    pub(crate) fn release_everything<A: FrameAllocator>(&mut self, alloc: &A) -> usize {
        for p in self.parked.drain(..) {
            alloc.dealloc_frames(p.hpa, p.count);
        }
        core::mem::take(&mut self.frames)
    }

    /// Frames parked now.
    pub(crate) fn frames(&self) -> usize {
        self.frames
    }
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// States that the caller has carried out `flush` on every CPU that may
    /// cache this table's translations (INVEPT, INVLPGA or a new ASID, TLBI
    /// with DSB, HFENCE.GVMA), and releases the frames parked under it to
    /// the allocator. Returns how many 4 KiB frames went back.
    ///
    /// Complete a record only on the table that returned it. A record
    /// without parked frames releases nothing and costs nothing.
    pub fn complete(&mut self, flush: TlbFlush) -> usize {
        self.books.retired.release(&flush, &self.alloc)
    }

    /// States that a flush of every translation of the VM, on every CPU that
    /// may cache them (INVEPT single-context, a new ASID or VMID, TLBI
    /// VMALLS12E1IS, HFENCE.GVMA with no address), ran after the last
    /// change to this table, and releases every parked frame. Returns how
    /// many 4 KiB frames went back.
    pub fn complete_all(&mut self) -> usize {
        self.books.retired.release_everything(&self.alloc)
    }

    /// Frames unlinked from the table and waiting for their flush to be
    /// completed.
    pub fn parked_frames(&self) -> usize {
        self.books.retired.frames()
    }

    /// Makes room to park `n` more allocations with
    /// [`NestedPageTable::park`], so that parking them later cannot fail.
    /// On `NoMemory` nothing changed.
    pub fn reserve_parking(&mut self, n: usize) -> NptResult {
        Ok(self.books.retired.promise(n)?)
    }

    /// Parks `count` frames at `hpa` (backing that the caller owned and has
    /// just unmapped, from this table's allocator) under `flush`: they go
    /// back to the allocator when `flush` is completed, like the table
    /// frames a change unlinks. Fails with `NoMemory`, parking nothing,
    /// when no room was reserved and none can be made (see
    /// [`NestedPageTable::reserve_parking`]).
    pub fn park(&mut self, flush: &mut TlbFlush, hpa: HostPhysAddr, count: usize) -> NptResult {
        Ok(self.books.retired.park_promised(flush, hpa, count)?)
    }
}
