//! Shared helpers for the benchmarks in `benches/walkers.rs` (page-table
//! walkers), `benches/aspace.rs` (guest address spaces) and
//! `benches/vcpus.rs` (one address space shared by several threads).
//!
//! - [`HeapFrames`]: 4 KiB frames from the host heap with an identity
//!   "physical" address, stateless so that the peers' static
//!   `PagingHandler`-style traits can forward to it.
//! - [`ArenaFrames`]: the same interface over one resident arena with free
//!   lists and a small per-thread cache of single frames, the way a
//!   hypervisor's frame allocator hands out host memory.
//! - [`XorShift64`] and [`random_addrs`]: a fixed-seed generator of
//!   addresses inside a mapped range, so every walker translates the same
//!   addresses.
//!
//! Run the benchmarks with `cargo bench -p npt-benches`.
//!
//! ```
//! use npt_benches::{HeapFrames, random_addrs};
//!
//! let pa = HeapFrames::alloc(1, 4096).unwrap();
//! assert_eq!(pa % 4096, 0);
//! // SAFETY: `pa` came from `HeapFrames::alloc(1, _)` and is freed once.
//! unsafe { HeapFrames::dealloc(pa, 1) };
//!
//! let addrs = random_addrs(0x4000_0000, 1 << 30, 16, 1);
//! assert!(addrs.iter().all(|&a| (0x4000_0000..0x8000_0000).contains(&a)));
//! assert_eq!(addrs, random_addrs(0x4000_0000, 1 << 30, 16, 1));
//!
//! let pa = npt_benches::ArenaFrames::alloc(512, 2 << 20).unwrap();
//! assert_eq!(pa % (2 << 20), 0);
//! // SAFETY: `pa` came from `ArenaFrames::alloc(512, _)` and is freed once.
//! unsafe { npt_benches::ArenaFrames::dealloc(pa, 512) };
//! assert_eq!(npt_benches::ArenaFrames::live_frames(), 0);
//! ```
#![warn(missing_docs)]

use std::alloc::{Layout, alloc, dealloc};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Size of one frame.
pub const FRAME_SIZE: usize = 4096;

/// Frames allocated by [`HeapFrames`] and not yet freed.
static LIVE_FRAMES: AtomicUsize = AtomicUsize::new(0);

/// Frames from the host heap; a frame's "physical" address is its heap
/// address, so `phys_to_virt` is the identity.
///
/// It keeps no per-allocation record: the layout of an allocation of `num`
/// frames is a function of `num` alone ([`HeapFrames::layout`]), so a free
/// needs only the address and count the page-table crates pass back. Frames
/// are not zeroed; every walker zeroes its new tables itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapFrames;

impl HeapFrames {
    /// The layout used for `num` frames: `num * 4096` bytes aligned to that
    /// size rounded up to a power of two. `None` for zero frames or on
    /// overflow.
    pub fn layout(num: usize) -> Option<Layout> {
        let size = num.checked_mul(FRAME_SIZE)?;
        if size == 0 {
            return None;
        }
        Layout::from_size_align(size, size.checked_next_power_of_two()?).ok()
    }

    /// Allocates `num` contiguous frames aligned to `align` and returns their
    /// address. `None` if `align` is larger than [`HeapFrames::layout`]
    /// gives for `num` (page tables ask for at most their own size), or when
    /// the heap is exhausted.
    pub fn alloc(num: usize, align: usize) -> Option<usize> {
        let layout = Self::layout(num)?;
        if align > layout.align() {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            return None;
        }
        LIVE_FRAMES.fetch_add(num, Ordering::Relaxed);
        Some(ptr.expose_provenance())
    }

    /// Frees `num` frames at `pa`.
    ///
    /// # Safety
    ///
    /// `pa` and `num` must be exactly what one earlier [`HeapFrames::alloc`]
    /// call returned and was passed, and the frames must not be freed twice
    /// or used afterwards.
    pub unsafe fn dealloc(pa: usize, num: usize) {
        let Some(layout) = Self::layout(num) else {
            return;
        };
        LIVE_FRAMES.fetch_sub(num, Ordering::Relaxed);
        // SAFETY: per this function's contract, `pa` came from `alloc` with
        // the same `num`, hence the same layout, and is freed once.
        unsafe { dealloc(Self::phys_to_virt(pa), layout) }
    }

    /// The pointer through which the frame at `pa` is accessed.
    pub fn phys_to_virt(pa: usize) -> *mut u8 {
        std::ptr::with_exposed_provenance_mut(pa)
    }

    /// Frames allocated and not yet freed, over every user.
    pub fn live_frames() -> usize {
        LIVE_FRAMES.load(Ordering::Relaxed)
    }
}

/// Frames from one arena of host memory that stays resident: a bump
/// pointer, and freed runs kept on a free list per frame count for reuse,
/// with a small cache of free single frames per thread in front.
///
/// A hypervisor's frame allocator (a bitmap or buddy allocator over memory
/// it owns) hands out resident frames in a few tens of nanoseconds;
/// `memalign` on the glibc heap takes longer, fragments, and page-faults
/// fresh heap memory in, a cost both address spaces of `benches/aspace.rs`
/// would share and that is nobody's code under test. New frames are touched
/// once when the bump pointer first passes them (in the warm-up), so
/// measured iterations reuse resident frames. Frames are not zeroed.
///
/// Single 4 KiB frames (what faults and tables ask for) go through a
/// per-thread cache of up to [`ArenaFrames::CACHE_MAX`] free frames, refilled
/// from and drained to the global lists [`ArenaFrames::CACHE_BATCH`] frames
/// under one lock, as per-CPU page lists do in a kernel's allocator. Without
/// it, two threads faulting at once spend their time handing the global
/// lock back and forth (`floor: alloc + zero` in `benches/vcpus.rs` took
/// 2.6 times longer on 2 threads than on 1; with the cache, 2 threads do
/// the same work 1.8 times faster than 1). Frames freed on one thread may
/// be handed out by another. A thread's cached frames go back to the global
/// lists when it exits.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArenaFrames;

/// Bytes of address space the arena reserves (touched only as used).
const ARENA_BYTES: usize = 6 << 30;

struct Arena {
    base: usize,
    next: usize,
    /// Freed runs by frame count.
    free: BTreeMap<usize, Vec<usize>>,
    /// Frames handed out of the global lists and bump pointer, to callers
    /// or to thread caches, and not given back to them.
    out: usize,
    /// The frame count of every live thread cache.
    caches: Vec<Arc<CacheCount>>,
}

impl Arena {
    /// `num` frames aligned to `align`: a freed run of that size, or new
    /// frames from the bump pointer (touched once). `None` when exhausted.
    fn take(&mut self, num: usize, align: usize) -> Option<usize> {
        let reused = self.free.get_mut(&num).and_then(|list| {
            let at = list.iter().rposition(|pa| pa % align == 0)?;
            Some(list.swap_remove(at))
        });
        let pa = match reused {
            Some(pa) => pa,
            None => {
                let bytes = num.checked_mul(FRAME_SIZE)?;
                let pa = self.next.checked_add(align - 1)? & !(align - 1);
                let end = pa.checked_add(bytes)?;
                if end > self.base + ARENA_BYTES {
                    return None;
                }
                self.next = end;
                for page in (pa..end).step_by(FRAME_SIZE) {
                    // SAFETY: inside the arena, which nothing else uses;
                    // the first write faults the page in.
                    unsafe { ArenaFrames::phys_to_virt(page).write_volatile(0) };
                }
                pa
            }
        };
        self.out += num;
        Some(pa)
    }

    /// Takes back `num` frames at `pa`.
    fn give(&mut self, pa: usize, num: usize) {
        self.out -= num;
        self.free.entry(num).or_default().push(pa);
    }
}

static ARENA: Mutex<Option<Arena>> = Mutex::new(None);

/// The arena, reserved on first use.
fn arena() -> Option<MutexGuard<'static, Option<Arena>>> {
    let mut guard = ARENA.lock().ok()?;
    guard.get_or_insert_with(|| {
        let layout = Layout::from_size_align(ARENA_BYTES, 1 << 30).expect("arena layout");
        // SAFETY: non-zero size. The block is never freed (the arena lives
        // as long as the process).
        let base = unsafe { alloc(layout) };
        assert!(!base.is_null(), "arena reservation failed");
        let base = base.expose_provenance();
        Arena {
            base,
            next: base,
            free: BTreeMap::new(),
            out: 0,
            caches: Vec::new(),
        }
    });
    Some(guard)
}

/// How many frames one thread's cache holds, on a cache line of its own so
/// that updating it does not slow down another thread.
#[repr(align(128))]
#[derive(Default)]
struct CacheCount(AtomicUsize);

/// One thread's free single frames.
#[derive(Default)]
struct ThreadCache {
    frames: Vec<usize>,
    /// `frames.len()`, published for [`ArenaFrames::live_frames`];
    /// registered in the arena on the first refill.
    count: Option<Arc<CacheCount>>,
}

impl ThreadCache {
    /// Publishes the frame count. Relaxed: only this thread writes it, and
    /// `live_frames` is exact only when no thread is allocating, after the
    /// joins or other synchronisation that make these stores visible.
    fn publish(&self) {
        if let Some(count) = &self.count {
            count.0.store(self.frames.len(), Ordering::Relaxed);
        }
    }

    /// Moves up to `CACHE_BATCH` frames from the arena into the cache.
    fn refill(&mut self) {
        let Some(mut guard) = arena() else { return };
        let Some(arena) = guard.as_mut() else { return };
        if self.count.is_none() {
            let count = Arc::new(CacheCount::default());
            arena.caches.push(Arc::clone(&count));
            self.count = Some(count);
        }
        // Reserved before the frames leave the arena, so that none is lost
        // if the reservation fails.
        if self.frames.try_reserve(ArenaFrames::CACHE_BATCH).is_err() {
            return;
        }
        // Freed single frames first, moved in one piece (every 4 KiB frame
        // is aligned enough), then new ones from the bump pointer.
        let list = arena.free.entry(1).or_default();
        let reused = list.len().min(ArenaFrames::CACHE_BATCH);
        self.frames.extend(list.drain(list.len() - reused..));
        arena.out += reused;
        for _ in reused..ArenaFrames::CACHE_BATCH {
            let Some(pa) = arena.take(1, FRAME_SIZE) else {
                break;
            };
            self.frames.push(pa);
        }
        // Published under the lock, with `out`, so that `live_frames`
        // never sees the frames both out and not cached.
        self.publish();
    }

    /// Gives `CACHE_BATCH` frames (the least recently freed) back to the
    /// arena.
    fn drain(&mut self, all: bool) {
        let Some(mut guard) = arena() else { return };
        let Some(arena) = guard.as_mut() else { return };
        let n = if all {
            self.frames.len()
        } else {
            ArenaFrames::CACHE_BATCH.min(self.frames.len())
        };
        arena.out -= n;
        arena
            .free
            .entry(1)
            .or_default()
            .extend(self.frames.drain(..n));
        self.publish();
    }
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        self.drain(true);
        if let Some(count) = self.count.take()
            && let Some(mut guard) = arena()
            && let Some(arena) = guard.as_mut()
        {
            arena.caches.retain(|c| !Arc::ptr_eq(c, &count));
        }
    }
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = RefCell::new(ThreadCache::default());
}

impl ArenaFrames {
    /// Frames a thread cache takes from, or gives back to, the arena at once.
    pub const CACHE_BATCH: usize = 256;
    /// Frames a thread cache holds at most; freeing one more gives
    /// [`ArenaFrames::CACHE_BATCH`] back.
    pub const CACHE_MAX: usize = 4 * Self::CACHE_BATCH;

    /// Allocates `num` contiguous frames aligned to `align` (a power of two)
    /// and returns their address; `None` for zero frames or when the arena
    /// is exhausted.
    pub fn alloc(num: usize, align: usize) -> Option<usize> {
        if num == 0 {
            return None;
        }
        if num == 1 && align <= FRAME_SIZE {
            // `None` while this thread's cache is being destroyed: the
            // global lists below serve it.
            let cached = CACHE
                .try_with(|cache| {
                    let mut cache = cache.borrow_mut();
                    if cache.frames.is_empty() {
                        cache.refill();
                    }
                    let pa = cache.frames.pop();
                    cache.publish();
                    pa
                })
                .ok()
                .flatten();
            if cached.is_some() {
                return cached;
            }
        }
        arena()?.as_mut()?.take(num, align)
    }

    /// Frees `num` frames at `pa`.
    ///
    /// # Safety
    ///
    /// `pa` and `num` must be exactly what one earlier [`ArenaFrames::alloc`]
    /// call returned and was passed, and the frames must not be freed twice
    /// or used afterwards.
    pub unsafe fn dealloc(pa: usize, num: usize) {
        if num == 1 {
            let cached = CACHE.try_with(|cache| {
                let mut cache = cache.borrow_mut();
                // Only a registered cache may hold frames (its count is
                // what `live_frames` subtracts).
                if cache.count.is_none() || cache.frames.try_reserve(1).is_err() {
                    return false;
                }
                cache.frames.push(pa);
                if cache.frames.len() > Self::CACHE_MAX {
                    cache.drain(false);
                } else {
                    cache.publish();
                }
                true
            });
            if cached == Ok(true) {
                return;
            }
        }
        let mut guard = ARENA.lock().expect("arena lock");
        if let Some(arena) = guard.as_mut() {
            arena.give(pa, num);
        }
    }

    /// The pointer through which the frame at `pa` is accessed.
    pub fn phys_to_virt(pa: usize) -> *mut u8 {
        std::ptr::with_exposed_provenance_mut(pa)
    }

    /// Frames allocated and not yet freed, over every thread. Exact when no
    /// thread allocates or frees meanwhile and the threads that did are
    /// joined (or otherwise synchronised with the caller).
    pub fn live_frames() -> usize {
        let Some(guard) = ARENA.lock().ok() else {
            return 0;
        };
        guard.as_ref().map_or(0, |a| {
            let cached: usize = a.caches.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
            a.out - cached
        })
    }
}

/// Marsaglia's xorshift64 generator: fast, deterministic, good enough to
/// scatter addresses.
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator started from `seed` (zero, which xorshift cannot leave,
    /// is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// `count` byte addresses in `[base, base + len)` from a xorshift generator
/// seeded with `seed`; the same arguments always give the same addresses.
///
/// # Panics
///
/// If `len` is zero.
pub fn random_addrs(base: usize, len: usize, count: usize, seed: u64) -> Vec<usize> {
    assert!(len > 0, "empty range");
    let mut rng = XorShift64::new(seed);
    (0..count)
        .map(|_| base + (rng.next() % len as u64) as usize)
        .collect()
}

/// Keeps freed heap memory in the process (glibc: no `mmap` for large
/// blocks, no trimming of the heap top), so that frames freed by one
/// iteration are reused by the next one already paged in. Otherwise the
/// populate, fault and unmap groups measure mostly the kernel's page faults
/// and trims of heap memory, not the code under test; a hypervisor's frames
/// are resident host memory. Call it first in every bench binary.
pub fn keep_heap_resident() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        /// glibc's `M_TRIM_THRESHOLD`; -1 disables trimming.
        const M_TRIM_THRESHOLD: i32 = -1;
        /// glibc's `M_MMAP_MAX`; 0 disables `mmap` for allocations.
        const M_MMAP_MAX: i32 = -4;
        for (param, value) in [(M_TRIM_THRESHOLD, -1), (M_MMAP_MAX, 0)] {
            // SAFETY: `mallopt` takes glibc's allocator lock and changes
            // only tunables; it has no memory-safety preconditions.
            let ok = unsafe { mallopt(param, value) };
            assert_eq!(ok, 1, "mallopt({param}, {value}) failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test that touches the arena (tests run in parallel in one
    /// process, and `live_frames` counts over every thread).
    #[test]
    fn arena_counts_exactly_across_thread_caches() {
        let base = ArenaFrames::live_frames();
        // Allocated on two threads, the second one's frames freed here.
        let n = 3 * ArenaFrames::CACHE_MAX + 7;
        let mine: Vec<usize> = (0..n)
            .map(|_| ArenaFrames::alloc(1, 4096).unwrap())
            .collect();
        let theirs = std::thread::spawn(move || {
            let frames: Vec<usize> = (0..n)
                .map(|_| ArenaFrames::alloc(1, 4096).unwrap())
                .collect();
            assert_eq!(ArenaFrames::live_frames(), base + 2 * n);
            frames
        })
        .join()
        .unwrap();
        // The other thread's cache went back to the arena when it exited.
        assert_eq!(ArenaFrames::live_frames(), base + 2 * n);
        let mut all = mine.clone();
        all.extend(&theirs);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2 * n, "a frame handed out twice");
        let run = ArenaFrames::alloc(4, 4 * 4096).unwrap();
        assert_eq!(run % (4 * 4096), 0);
        assert_eq!(ArenaFrames::live_frames(), base + 2 * n + 4);
        // Freed on two threads again, crosswise.
        std::thread::spawn(move || {
            for pa in mine {
                // SAFETY: allocated above, freed once.
                unsafe { ArenaFrames::dealloc(pa, 1) };
            }
        })
        .join()
        .unwrap();
        for pa in theirs {
            // SAFETY: allocated above, freed once.
            unsafe { ArenaFrames::dealloc(pa, 1) };
        }
        // SAFETY: allocated above, freed once.
        unsafe { ArenaFrames::dealloc(run, 4) };
        assert_eq!(ArenaFrames::live_frames(), base);
        // Freed frames are handed out again.
        let again = ArenaFrames::alloc(1, 4096).unwrap();
        assert_eq!(ArenaFrames::live_frames(), base + 1);
        // SAFETY: allocated above, freed once.
        unsafe { ArenaFrames::dealloc(again, 1) };
        assert_eq!(ArenaFrames::live_frames(), base);
    }
}
