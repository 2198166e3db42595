//! The one place that touches table memory.
//!
//! Entries are read and written as whole 64-bit atomics so the hardware
//! walker, which reads tables concurrently, never sees a torn entry.
//!
//! Loads acquire: an entry may have been published by another CPU's
//! compare-and-swap (`NestedPageTable::insert_new_concurrent`), and a walk
//! that follows it reads the zeroed table (or, for a host access, the zeroed
//! frame) behind it, so those zeroing stores must happen before the walk's
//! reads. On x86-64 and RISC-V (RVWMO loads of naturally aligned words) an
//! acquire load is the plain load; on AArch64 it is `LDAR`. Exclusive
//! writers store with relaxed ordering; a new table is zeroed before it is
//! linked, and a release fence (or the release of the compare-and-swap)
//! orders those writes before the link.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering, fence};

use gpa_types::HostPhysAddr;
use npt_entry::NestedEntry;

use crate::frames::{FRAME_SIZE, FrameAllocator};

/// A table (one frame, or a multi-frame root) as the hypervisor sees it.
pub(crate) struct TableRef<E> {
    base: *const AtomicU64,
    hpa: HostPhysAddr,
    #[cfg(debug_assertions)]
    len: usize,
    _entry: PhantomData<E>,
}

impl<E> Clone for TableRef<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for TableRef<E> {}

impl<E: NestedEntry> TableRef<E> {
    /// A view of the `entries`-entry table at `hpa`.
    ///
    /// # Safety
    ///
    /// `hpa` must be the start of a live table of this page table: frames
    /// obtained from `alloc` holding at least `entries` entries, not freed
    /// while the view is in use.
    #[inline(always)]
    pub(crate) unsafe fn new<A: FrameAllocator>(
        alloc: &A,
        hpa: HostPhysAddr,
        entries: usize,
    ) -> Self {
        let _ = entries;
        Self {
            base: alloc.phys_to_virt(hpa).cast::<AtomicU64>().cast_const(),
            hpa,
            #[cfg(debug_assertions)]
            len: entries,
            _entry: PhantomData,
        }
    }

    /// The table's host-physical address.
    #[inline(always)]
    pub(crate) fn hpa(self) -> HostPhysAddr {
        self.hpa
    }

    /// Reads entry `idx`. Indices come from `NptFormat::index`, which masks
    /// them to the table's size.
    #[inline(always)]
    pub(crate) fn get(self, idx: usize) -> E {
        // Acquire: pairs with the release of the compare-and-swap or fence
        // that published this entry, so a walk that follows it sees the
        // table (or frame) behind it zeroed, never the bytes it held before.
        E::from_raw(self.cell(idx).load(Ordering::Acquire))
    }

    /// The atomic cell of entry `idx`.
    #[inline(always)]
    fn cell(&self, idx: usize) -> &AtomicU64 {
        #[cfg(debug_assertions)]
        debug_assert!(idx < self.len, "entry index {idx} out of table");
        // SAFETY: `new`'s contract makes `base` point to a live table of at
        // least `idx + 1` 8-byte-aligned entries (frames are 4 KiB aligned),
        // which lives as long as any view of it (tables are released only
        // after the flush that makes them unreachable is completed, or when
        // the table is dropped).
        unsafe { &*self.base.add(idx) }
    }

    /// Replaces entry `idx` with `new` if it still holds `current`; else
    /// returns what it holds. For writers that share the table with other
    /// writers (`&self`): the one that loses learns what the winner wrote.
    #[inline(always)]
    pub(crate) fn compare_exchange(self, idx: usize, current: E, new: E) -> Result<(), E> {
        // Success: release publishes what this CPU wrote before (a zeroed
        // table, a zeroed or filled frame) with the entry; a walker that
        // acquires the entry sees those writes. Failure: acquire, since the
        // loser goes on to walk through (or write into) what the winner
        // published.
        self.cell(idx)
            .compare_exchange(
                current.raw(),
                new.raw(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(drop)
            .map_err(E::from_raw)
    }

    /// Rewrites entry `idx`, which held `current` when the caller read it,
    /// to what `change` makes of it, by compare-and-swap: when another
    /// writer (or the hardware, setting accessed/dirty bits) changed the
    /// entry in between, `change` runs again on what is there now. Stops
    /// when `change` returns `None` or the entry it already holds. Returns
    /// whether the entry changed.
    #[inline]
    pub(crate) fn update(
        self,
        idx: usize,
        mut current: E,
        mut change: impl FnMut(E) -> Option<E>,
    ) -> bool {
        loop {
            let Some(new) = change(current) else {
                return false;
            };
            if new == current {
                return false;
            }
            // Orderings as in `compare_exchange`.
            match self.compare_exchange(idx, current, new) {
                Ok(()) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// Writes entry `idx`.
    #[inline(always)]
    pub(crate) fn set(self, idx: usize, entry: E) {
        // Relaxed: the caller borrows the page table mutably, so no other
        // software walker or writer runs; what must be visible before the
        // entry (a new table's zeroes) is ordered by `link`'s fence.
        self.cell(idx).store(entry.raw(), Ordering::Relaxed)
    }

    /// Links a freshly filled table: orders its contents before the entry
    /// that makes it reachable.
    #[inline(always)]
    pub(crate) fn link(self, idx: usize, entry: E) {
        fence(Ordering::Release);
        self.set(idx, entry);
    }

    /// Whether every entry in `0..entries` is zero.
    pub(crate) fn is_empty(self, entries: usize) -> bool {
        (0..entries).all(|i| self.get(i).raw() == 0)
    }
}

/// Zeroes `count` frames at `hpa`.
///
/// # Safety
///
/// The frames must have just been allocated from `alloc` and not yet be
/// reachable from any table.
pub(crate) unsafe fn zero_frames<A: FrameAllocator>(alloc: &A, hpa: HostPhysAddr, count: usize) {
    // SAFETY: the allocator contract makes `phys_to_virt(hpa)` valid for
    // writes of the whole allocation, which the caller owns exclusively.
    unsafe { core::ptr::write_bytes(alloc.phys_to_virt(hpa), 0, count * FRAME_SIZE) }
}
