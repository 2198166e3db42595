//! [`AxNpt`]: a `NestedPageTable` with the flush record that axaddrspace's
//! trait cannot return.

use gpa_types::HostPhysAddr;
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, FrameError, NestedPageTable, NptResult, TlbFlush};
use spin::RwLock;

/// The table and what the bridge keeps beside it.
pub(crate) struct Inner<F: NptFormat, A: FrameAllocator> {
    pub(crate) table: NestedPageTable<F, A>,
    /// Everything changed since the hypervisor last took the record.
    pub(crate) pending: TlbFlush,
    /// Parking room promised by the table (`reserve_parking`) and not used
    /// yet: at most one is kept, for the frame an unmap hands back next.
    pub(crate) promised: usize,
    /// Guest frames given back with no room to park them: kept out of the
    /// allocator for good rather than freed before their flush.
    pub(crate) leaked: usize,
}

impl<F: NptFormat, A: FrameAllocator> Inner<F, A> {
    /// Makes sure one frame can be parked later without allocating.
    pub(crate) fn promise_one(&mut self) -> NptResult {
        if self.promised == 0 {
            self.table.reserve_parking(1)?;
            self.promised = 1;
        }
        Ok(())
    }

    /// Parks a guest frame under the pending record: it goes back to the
    /// allocator when the hypervisor completes the record.
    pub(crate) fn park(&mut self, hpa: HostPhysAddr) {
        // `park` uses the promised room first (see `promise_one`).
        self.promised = self.promised.saturating_sub(1);
        if self.table.park(&mut self.pending, hpa, 1).is_err() {
            self.leaked += 1;
        }
    }
}

/// An `npt-table` [`NestedPageTable`] that implements axaddrspace 0.6's
/// [`NestedPageTableOps`](axaddrspace::NestedPageTableOps), so that
/// `axaddrspace::AddrSpace<AxNpt<F, A>>` runs on it unchanged, for any
/// format `F` (Intel EPT, AMD NPT, AArch64 stage 2, RISC-V G-stage).
///
/// # Flushes
///
/// axaddrspace's trait returns no flush records, so every change the trait
/// makes is merged into one pending [`TlbFlush`]. After each `AddrSpace`
/// call that changes mappings (`unmap`, `clear`, a fault that replaced
/// something), the hypervisor takes the record with
/// [`take_flush`](Self::take_flush) (through `AddrSpace::page_table()`),
/// carries it out on every CPU that may cache the VM's translations
/// (INVEPT, INVLPGA or a new ASID, TLBI with DSB, HFENCE.GVMA), and hands it
/// back with [`complete`](Self::complete).
///
/// # Frames
///
/// Table frames an unmap unlinks, and the guest frames axaddrspace gives
/// back with `dealloc_frame` after an unmap, are parked until the record
/// that covers them is completed: no vCPU's stale TLB entry can reach a
/// frame that has a new owner (axaddrspace over `page_table_multiarch`
/// frees guest frames before any flush). Guest frames come from the same
/// allocator as table frames, zeroed.
///
/// All flush methods take `&self`: `AddrSpace` only lends its table
/// immutably. The table sits behind a reader-writer spin lock, which calls
/// through `&mut self` (every change axaddrspace makes) bypass; lookups take
/// it for reading.
pub struct AxNpt<F: NptFormat, A: FrameAllocator> {
    pub(crate) inner: RwLock<Inner<F, A>>,
}

impl<F: NptFormat, A: FrameAllocator> AxNpt<F, A> {
    /// An empty table over `alloc` (see [`NestedPageTable::new`]).
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::new`].
    pub fn new(alloc: A) -> Result<Self, FrameError> {
        NestedPageTable::new(alloc).map(Self::from_table)
    }

    /// An empty table limiting host addresses to `pa_bits` (see
    /// [`NestedPageTable::with_pa_bits`]).
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::with_pa_bits`].
    pub fn with_pa_bits(alloc: A, pa_bits: u32) -> Result<Self, FrameError> {
        NestedPageTable::with_pa_bits(alloc, pa_bits).map(Self::from_table)
    }

    /// Wraps an existing table (mappings made before are kept; axaddrspace
    /// does not know about them, so it will not unmap them).
    pub fn from_table(table: NestedPageTable<F, A>) -> Self {
        Self {
            inner: RwLock::new(Inner {
                table,
                pending: TlbFlush::none(),
                promised: 0,
                leaked: 0,
            }),
        }
    }

    /// The table, and the pending record, which the caller must carry out
    /// before completing it on the returned table.
    pub fn into_parts(self) -> (NestedPageTable<F, A>, TlbFlush) {
        let inner = self.inner.into_inner();
        (inner.table, inner.pending)
    }

    /// Takes the record of everything changed since the last call (empty if
    /// nothing changed). Carry it out, then give it back with
    /// [`complete`](Self::complete) so that the frames parked under it go
    /// back to the allocator.
    #[must_use = "stale translations stay cached until the record is carried out and completed"]
    pub fn take_flush(&self) -> TlbFlush {
        core::mem::take(&mut self.inner.write().pending)
    }

    /// Whether changes wait to be flushed (a [`take_flush`](Self::take_flush)
    /// would return a non-empty record).
    pub fn flush_pending(&self) -> bool {
        let inner = self.inner.read();
        !inner.pending.is_empty() || inner.pending.parks_frames()
    }

    /// States that `flush` (from [`take_flush`](Self::take_flush) on this
    /// table) was carried out on every CPU that may cache this table's
    /// translations, and releases the frames parked under it. Returns how
    /// many 4 KiB frames went back to the allocator.
    pub fn complete(&self, flush: TlbFlush) -> usize {
        self.inner.write().table.complete(flush)
    }

    /// States that every translation of the VM was flushed on every CPU
    /// after the last change, pending ones included: drops the pending
    /// record and releases every parked frame. Returns how many 4 KiB
    /// frames went back.
    pub fn complete_all(&self) -> usize {
        let mut inner = self.inner.write();
        inner.pending = TlbFlush::none();
        inner.table.complete_all()
    }

    /// Frames (table and guest) waiting for their flush to be completed.
    pub fn parked_frames(&self) -> usize {
        self.inner.read().table.parked_frames()
    }

    /// Guest frames axaddrspace gave back when no room could be made to
    /// park them (out of memory): never returned to the allocator, since
    /// freeing them before their flush would let a stale TLB entry reach
    /// their next owner. Zero unless the heap ran out.
    pub fn leaked_frames(&self) -> usize {
        self.inner.read().leaked
    }

    /// Runs `f` on the table (reading: statistics, `mappings`, `query`).
    pub fn with_table<R>(&self, f: impl FnOnce(&NestedPageTable<F, A>) -> R) -> R {
        f(&self.inner.read().table)
    }

    /// The table, for changes made outside axaddrspace (before handing the
    /// table to `AddrSpace::new_empty`). Changes made here return their own
    /// records.
    pub fn table_mut(&mut self) -> &mut NestedPageTable<F, A> {
        &mut self.inner.get_mut().table
    }
}

impl<F: NptFormat, A: FrameAllocator> core::fmt::Debug for AxNpt<F, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.inner.try_read() {
            Some(inner) => f
                .debug_struct("AxNpt")
                .field("table", &inner.table)
                .field("pending", &inner.pending)
                .field("leaked", &inner.leaked)
                .finish(),
            None => f.write_str("AxNpt { <locked> }"),
        }
    }
}
