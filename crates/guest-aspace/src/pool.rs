//! Frames zeroed ahead of time: [`ZeroedPool`].
//!
//! Most of a first-touch fault is zeroing the new frame (see the
//! `fault_in_4k` benchmark). A hypervisor with idle time can do that work
//! before the fault instead: it wraps its allocator in a [`ZeroedPool`],
//! calls [`ZeroedPool::refill`] from its idle loop or a housekeeping thread
//! (as Xen scrubs free pages while idle), and the space's lazy RAM faults
//! and host writes into lazy RAM take a frame that is already zero through
//! [`FrameAllocator::alloc_zeroed_frame`], for the page and for any new
//! table the page needs (npt-table takes its table frames the same way). When the pool is empty they fall
//! back to allocating and zeroing in place, as without the pool.
//!
//! A frame given back ([`FrameAllocator::dealloc_frames`]) goes to the
//! inner allocator, never into the pool: the pool holds only frames it
//! zeroed itself after taking them from the inner allocator, so a frame
//! holding a guest's data is never handed out as zero.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use gpa_types::HostPhysAddr;
use npt_table::{FRAME_SIZE, FrameAllocator};

use crate::error::{AspaceError, AspaceResult};
use crate::rwlock::RwLock;

/// Frames zeroed and pushed per lock acquisition by [`ZeroedPool::refill`]
/// (the lock is held for the pushes only, never while zeroing).
const BATCH: usize = 16;

/// An allocator layer that keeps up to `capacity` zeroed 4 KiB frames ready
/// for [`FrameAllocator::alloc_zeroed_frame`]. Every other call goes to the
/// inner allocator.
///
/// All methods take `&self`: vCPUs take frames while a housekeeping thread
/// refills; the pool is `Sync` when `A` is. Dropping it (or
/// [`ZeroedPool::drain`]) gives the pooled frames back to the inner
/// allocator.
///
/// ```
/// use guest_aspace::npt_entry::ept::Ept4;
/// use guest_aspace::{Access, GuestAddrSpace, GuestPhysAddrRange, HostFrameAllocator};
/// use guest_aspace::{MappingFlags, ZeroedPool};
///
/// let frames = HostFrameAllocator::new();
/// let pool = ZeroedPool::new(&frames, 64).unwrap();
/// let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 30);
/// let mut space = GuestAddrSpace::<Ept4, _>::new(&pool, window).unwrap();
/// space.add_ram(0x10_0000.into(), 0x10_0000, MappingFlags::READ | MappingFlags::WRITE, true)
///     .unwrap()
///     .ignore();
///
/// // In the idle loop, off the fault path:
/// assert_eq!(pool.refill(8), 8);
/// // A fault takes frames that are already zero: one for the page, and
/// // one for each table it needs.
/// let _ = space.handle_fault(0x10_0000.into(), Access::Write).unwrap();
/// assert!(pool.len() < 7);
/// assert_eq!(space.read_u8(0x10_0000.into()).unwrap(), 0);
/// ```
pub struct ZeroedPool<A: FrameAllocator> {
    inner: A,
    /// Most frames the pool keeps.
    capacity: usize,
    /// The zeroed frames, each one 4 KiB frame allocated from `inner`
    /// (count 1, 4 KiB aligned) and owned by the pool. The vector's
    /// capacity is reserved up front, so pushing never allocates.
    frames: RwLock<Vec<HostPhysAddr>>,
    /// `frames.len()`, stored under the lock, read without it as a hint.
    ready: AtomicUsize,
}

impl<A: FrameAllocator> ZeroedPool<A> {
    /// An empty pool over `inner` that will keep up to `capacity` frames.
    /// Its bookkeeping (one `usize` per frame) is reserved now:
    /// [`AspaceError::NoMemory`] if the heap cannot hold it.
    pub fn new(inner: A, capacity: usize) -> AspaceResult<Self> {
        let mut frames = Vec::new();
        frames
            .try_reserve_exact(capacity)
            .map_err(|_| AspaceError::NoMemory)?;
        Ok(Self {
            inner,
            capacity,
            frames: RwLock::new(frames),
            ready: AtomicUsize::new(0),
        })
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Most frames the pool keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Zeroed frames ready now. Another thread may take or add frames at
    /// any time, so this is a snapshot.
    pub fn len(&self) -> usize {
        // Relaxed: a snapshot for the caller's bookkeeping. The value is one
        // another CPU stored under the lock (see `set_ready`); it may be
        // stale by the time the caller looks, which the doc says.
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether no zeroed frame is ready now (a snapshot, as [`Self::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `n` frames from the inner allocator, zeroes them and
    /// adds them to the pool, stopping early when the pool is full or the
    /// inner allocator runs dry. Returns how many were added.
    ///
    /// Meant for an idle loop or a housekeeping thread: the zeroing runs
    /// without the pool's lock, and the lock is held only to push each
    /// batch of frames, so faults taking frames meanwhile wait for a few
    /// pushes at most.
    ///
    /// Frames are zeroed with ordinary stores, as on the fault path. The
    /// pool hands out the frames it zeroed last first, which are the most
    /// likely to be still cached when the fault writes the new table
    /// entries and the guest touches the page. In a one-off run of the
    /// `fault_in_4k` pool rows with non-temporal stores instead, refill
    /// cost 409 ns a frame against 148 ns, and the 4,096 faults 1.05 ms
    /// against 0.48 ms, on a host whose 480 MiB L3 holds the whole pool.
    pub fn refill(&self, n: usize) -> usize {
        let mut added = 0;
        while added < n {
            let room = self.capacity.saturating_sub(self.len());
            let want = (n - added).min(room).min(BATCH);
            if want == 0 {
                break;
            }
            let mut batch = [HostPhysAddr::from_usize(0); BATCH];
            let mut got = 0;
            for slot in batch.iter_mut().take(want) {
                let Some(hpa) = self.inner.alloc_frame() else {
                    break;
                };
                crate::zero::zero_frames(&self.inner, hpa, FRAME_SIZE);
                *slot = hpa;
                got += 1;
            }
            if got == 0 {
                break;
            }
            // The zeroing stores above come before the lock's Release below
            // in program order, so a taker that acquires the lock and pops
            // one of these frames sees them (ordinary stores: no fence
            // needed, unlike `zero::stream_frames`).
            let pushed = {
                let mut frames = self.frames.write();
                let fits = self.capacity.saturating_sub(frames.len()).min(got);
                // Within the capacity reserved in `new`: no allocation.
                frames.extend(batch.iter().take(fits).copied());
                self.set_ready(frames.len());
                fits
            };
            // Another refill filled the pool meanwhile: back to `inner`.
            for &hpa in batch.iter().take(got).skip(pushed) {
                self.inner.dealloc_frames(hpa, 1);
            }
            added += pushed;
            if pushed < want {
                break;
            }
        }
        added
    }

    /// Refills by what is missing now for `target` frames (at most the
    /// capacity) to be ready: [`Self::refill`] of `target - len()`. Returns
    /// how many were added. It does not chase frames that vCPUs take while
    /// it runs, so it always ends; call it again on the next idle pass.
    pub fn refill_to(&self, target: usize) -> usize {
        let target = target.min(self.capacity);
        self.refill(target.saturating_sub(self.len()))
    }

    /// Gives every pooled frame back to the inner allocator (one at a time,
    /// so takers are not held up). Returns how many.
    pub fn drain(&self) -> usize {
        let mut n = 0;
        while let Some(hpa) = self.pop() {
            self.inner.dealloc_frames(hpa, 1);
            n += 1;
        }
        n
    }

    /// Takes one pooled frame, if any.
    fn pop(&self) -> Option<HostPhysAddr> {
        let mut frames = self.frames.write();
        let hpa = frames.pop();
        if hpa.is_some() {
            self.set_ready(frames.len());
        }
        hpa
    }

    /// Publishes the pool's length; called with the lock held.
    fn set_ready(&self, len: usize) {
        // Relaxed: `ready` is only a hint. A CPU that reads an old value
        // either takes the lock and finds the pool empty (and zeroes in
        // place, as with no pool), skips a frame that just arrived (the
        // same), or refills a little less or more than the room left (the
        // push under the lock checks the real length). The frames and
        // their zeroed contents travel through the lock's Acquire/Release,
        // never through this value.
        self.ready.store(len, Ordering::Relaxed);
    }
}

// SAFETY: every call but `alloc_zeroed_frame` is forwarded to `inner`,
// which upholds the contract. `alloc_zeroed_frame` hands out a frame the
// pool took from `inner` with `alloc_frame` (one 4 KiB frame, so given back
// with `dealloc_frames(hpa, 1)` to `inner`, as allocated), owned by the pool
// alone while in the vector and removed from it under the lock before it is
// returned, so one caller gets it. The pool zeroed all 4096 bytes of it
// through `inner.phys_to_virt` after taking it and before the lock release
// that published it; the taker's lock acquire orders those
// stores before the return. Frames given back never enter the pool.
unsafe impl<A: FrameAllocator> FrameAllocator for ZeroedPool<A> {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        self.inner.alloc_frames(count, align)
    }

    fn alloc_frame(&self) -> Option<HostPhysAddr> {
        self.inner.alloc_frame()
    }

    fn alloc_zeroed_frame(&self) -> Option<HostPhysAddr> {
        // Relaxed: a hint that spares the lock when the pool looks empty
        // (see `set_ready`). A frame pushed a moment ago that this CPU does
        // not see yet only means zeroing in place this once.
        if self.ready.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.pop()
    }

    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        self.inner.dealloc_frames(hpa, count)
    }

    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        self.inner.phys_to_virt(hpa)
    }
}

impl<A: FrameAllocator> Drop for ZeroedPool<A> {
    fn drop(&mut self) {
        for hpa in self.frames.get_mut().drain(..) {
            self.inner.dealloc_frames(hpa, 1);
        }
    }
}

impl<A: FrameAllocator> fmt::Debug for ZeroedPool<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZeroedPool")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, MappingFlags};
    use npt_entry::ept::Ept4;
    use npt_table::{HostFrameAllocator, POISON};

    use crate::{Access, FaultOutcome, GuestAddrSpace};

    /// Whether all 4096 bytes of `hpa` are zero.
    fn is_zero(alloc: &HostFrameAllocator, hpa: HostPhysAddr) -> bool {
        // SAFETY: `hpa` is a live 4 KiB frame of `alloc`, owned by the test.
        let bytes = unsafe { core::slice::from_raw_parts(alloc.phys_to_virt(hpa), FRAME_SIZE) };
        bytes.iter().all(|&b| b == 0)
    }

    #[test]
    fn hands_out_zeroed_frames() {
        let frames = HostFrameAllocator::new();
        let pool = ZeroedPool::new(&frames, 40).unwrap();
        assert!(pool.is_empty());
        assert_eq!(pool.refill(37), 37);
        assert_eq!(pool.len(), 37);
        assert_eq!(frames.live_frames(), 37);
        let mut taken = Vec::new();
        while let Some(hpa) = pool.alloc_zeroed_frame() {
            assert!(is_zero(&frames, hpa));
            assert_eq!(hpa.as_usize() % FRAME_SIZE, 0);
            taken.push(hpa);
        }
        assert_eq!(taken.len(), 37);
        assert!(pool.is_empty());
        for hpa in taken {
            pool.dealloc_frames(hpa, 1);
        }
        assert_eq!(frames.live_frames(), 0);
    }

    #[test]
    fn empty_pool_falls_back() {
        let frames = HostFrameAllocator::new();
        let pool = ZeroedPool::new(&frames, 4).unwrap();
        assert_eq!(pool.alloc_zeroed_frame(), None);
        // Plain allocations go to the inner allocator, unzeroed, and never
        // touch the pool.
        assert_eq!(pool.refill(2), 2);
        let hpa = pool.alloc_frame().unwrap();
        // SAFETY: a live frame of `frames`, owned here.
        assert_eq!(unsafe { *frames.phys_to_virt(hpa) }, POISON);
        assert_eq!(pool.len(), 2);
        pool.dealloc_frames(hpa, 1);
        // Through a reference too (the blanket impl forwards).
        let by_ref: &ZeroedPool<_> = &pool;
        let hpa = FrameAllocator::alloc_zeroed_frame(&by_ref).unwrap();
        pool.dealloc_frames(hpa, 1);
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn freed_frames_are_not_reused_as_zero() {
        let frames = HostFrameAllocator::new();
        let pool = ZeroedPool::new(&frames, 8).unwrap();
        assert_eq!(pool.refill(1), 1);
        let hpa = pool.alloc_zeroed_frame().unwrap();
        // The owner dirties it and gives it back.
        // SAFETY: a live frame, owned here.
        unsafe { frames.phys_to_virt(hpa).write_bytes(0x5a, FRAME_SIZE) };
        pool.dealloc_frames(hpa, 1);
        assert!(
            !frames.owns(hpa),
            "the frame went back to the inner allocator"
        );
        assert_eq!(pool.alloc_zeroed_frame(), None);
        assert_eq!(frames.live_frames(), 0);
    }

    #[test]
    fn bounded_and_stops_when_inner_runs_dry() {
        let frames = npt_table::FailingAllocator::new(HostFrameAllocator::new());
        let pool = ZeroedPool::new(&frames, 20).unwrap();
        assert_eq!(pool.refill(100), 20);
        assert_eq!(pool.refill(1), 0);
        assert_eq!(pool.refill_to(100), 0);
        assert_eq!(pool.drain(), 20);
        assert_eq!(frames.inner().live_frames(), 0);
        // The 6th allocation and every later one fail.
        frames.fail_from(6);
        assert_eq!(pool.refill(10), 5);
        assert_eq!(pool.refill_to(20), 0);
        assert_eq!(pool.len(), 5);
        frames.heal();
        assert_eq!(pool.refill_to(12), 7);
        assert_eq!(pool.len(), 12);
        assert_eq!(frames.inner().live_frames(), 12);
        drop(pool);
        assert_eq!(frames.inner().live_frames(), 0, "drop drains the pool");
    }

    #[test]
    fn zero_capacity_pool_is_a_plain_allocator() {
        let frames = HostFrameAllocator::new();
        let pool = ZeroedPool::new(&frames, 0).unwrap();
        assert_eq!(pool.refill(5), 0);
        assert_eq!(pool.alloc_zeroed_frame(), None);
        let hpa = pool.alloc_frames(2, FRAME_SIZE).unwrap();
        pool.dealloc_frames(hpa, 2);
        assert_eq!(frames.live_frames(), 0);
    }

    #[test]
    fn huge_capacity_is_no_memory() {
        let frames = HostFrameAllocator::new();
        assert_eq!(
            ZeroedPool::new(&frames, usize::MAX).unwrap_err(),
            AspaceError::NoMemory
        );
    }

    fn rw() -> MappingFlags {
        MappingFlags::READ | MappingFlags::WRITE
    }

    #[test]
    fn space_faults_and_writes_take_pooled_frames() {
        const BASE: usize = 0x4000_0000;
        let frames = HostFrameAllocator::new();
        let pool = ZeroedPool::new(&frames, 64).unwrap();
        let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 32);
        let mut space = GuestAddrSpace::<Ept4, _>::new(&pool, window).unwrap();
        space
            .add_ram(BASE.into(), 1 << 21, rw(), true)
            .unwrap()
            .ignore();
        // The first fault takes its new tables from the pool too.
        let tables = space.table().stats().table_frames;
        assert_eq!(pool.refill(10), 10);
        let out = space.handle_fault(BASE.into(), Access::Read).unwrap();
        assert!(matches!(out, FaultOutcome::Fixed(_)));
        let new_tables = space.table().stats().table_frames - tables;
        assert!(new_tables > 0);
        assert_eq!(pool.len(), 10 - 1 - new_tables);
        pool.drain();
        assert_eq!(pool.refill(2), 2);
        // Fault-in takes from the pool.
        for i in 1..3 {
            let gpa = GuestPhysAddr::from_usize(BASE + i * FRAME_SIZE);
            let out = space.handle_fault(gpa, Access::Read).unwrap();
            assert!(matches!(out, FaultOutcome::Fixed(_)));
            assert_eq!(pool.len(), 2 - i);
        }
        // Empty pool: falls back to zeroing in place.
        let gpa = GuestPhysAddr::from_usize(BASE + 3 * FRAME_SIZE);
        let _ = space.handle_fault(gpa, Access::Write).unwrap();
        // A host write into lazy RAM takes a pooled frame, and the bytes
        // around what it wrote are zero.
        assert_eq!(pool.refill(1), 1);
        let gpa = GuestPhysAddr::from_usize(BASE + 9 * FRAME_SIZE + 100);
        space.write(gpa, &[7; 8]).unwrap();
        assert!(pool.is_empty());
        for i in 0..10 {
            let page = BASE + i * FRAME_SIZE;
            let mut buf = [0xffu8; FRAME_SIZE];
            if i < 4 || i == 9 {
                space.read(page.into(), &mut buf).unwrap();
                let expect = |off: usize| {
                    if i == 9 && (100..108).contains(&off) {
                        7
                    } else {
                        0
                    }
                };
                assert!(
                    buf.iter().enumerate().all(|(off, &b)| b == expect(off)),
                    "page {i}"
                );
            } else {
                assert!(space.translate(page.into()).is_none(), "page {i}");
            }
        }
        // Freed guest frames are not pooled again.
        space.remove_range(BASE.into(), 1 << 21).unwrap().ignore();
        assert!(pool.is_empty());
        drop(space);
        drop(pool);
        assert_eq!(frames.live_frames(), 0);
    }

    #[test]
    fn refill_races_takers() {
        const TAKES: usize = if cfg!(miri) { 40 } else { 2000 };
        let frames = HostFrameAllocator::new();
        let pool = ZeroedPool::new(&frames, 32).unwrap();
        // Frames only leave the pool through the takers: at least these 16
        // are taken whatever the schedule.
        assert_eq!(pool.refill_to(16), 16);
        let hits = std::thread::scope(|s| {
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut hits = 0;
                        let mut held = Vec::new();
                        for i in 0..TAKES {
                            if let Some(hpa) = pool.alloc_zeroed_frame() {
                                assert!(is_zero(&frames, hpa));
                                // Dirty it, as a guest would.
                                // SAFETY: a live frame, owned by this thread.
                                unsafe { frames.phys_to_virt(hpa).write_bytes(1, 64) };
                                held.push(hpa);
                                hits += 1;
                            }
                            if i % 8 == 7 {
                                for hpa in held.drain(..) {
                                    pool.dealloc_frames(hpa, 1);
                                }
                            }
                            std::thread::yield_now();
                        }
                        for hpa in held {
                            pool.dealloc_frames(hpa, 1);
                        }
                        hits
                    })
                })
                .collect();
            let refiller = s.spawn(|| {
                for _ in 0..TAKES {
                    pool.refill_to(16);
                    assert!(pool.len() <= pool.capacity());
                    std::thread::yield_now();
                }
            });
            refiller.join().unwrap();
            takers.into_iter().map(|t| t.join().unwrap()).sum::<usize>()
        });
        assert!(hits >= 16);
        assert!(pool.len() <= 32);
        assert_eq!(frames.live_frames(), pool.len());
        drop(pool);
        assert_eq!(frames.live_frames(), 0);
    }
}
