//! Shared helpers for the benchmarks in `benches/walkers.rs` (page-table
//! walkers) and `benches/aspace.rs` (guest address spaces).
//!
//! - [`HeapFrames`]: 4 KiB frames from the host heap with an identity
//!   "physical" address, stateless so that the peers' static
//!   `PagingHandler`-style traits can forward to it.
//! - [`ArenaFrames`]: the same interface over one resident arena with free
//!   lists, the way a hypervisor's frame allocator hands out host memory.
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
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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
/// pointer, and freed runs kept on a free list per frame count for reuse.
///
/// A hypervisor's frame allocator (a bitmap or buddy allocator over memory
/// it owns) hands out resident frames in a few tens of nanoseconds;
/// `memalign` on the glibc heap takes longer, fragments, and page-faults
/// fresh heap memory in, a cost both address spaces of `benches/aspace.rs`
/// would share and that is nobody's code under test. New frames are touched
/// once when the bump pointer first passes them (in the warm-up), so
/// measured iterations reuse resident frames. Frames are not zeroed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArenaFrames;

/// Bytes of address space the arena reserves (touched only as used).
const ARENA_BYTES: usize = 6 << 30;

struct Arena {
    base: usize,
    next: usize,
    /// Freed runs by frame count.
    free: BTreeMap<usize, Vec<usize>>,
    live: usize,
}

static ARENA: Mutex<Option<Arena>> = Mutex::new(None);

impl ArenaFrames {
    /// Allocates `num` contiguous frames aligned to `align` (a power of two)
    /// and returns their address; `None` for zero frames or when the arena
    /// is exhausted.
    pub fn alloc(num: usize, align: usize) -> Option<usize> {
        let bytes = num.checked_mul(FRAME_SIZE).filter(|&b| b > 0)?;
        let mut guard = ARENA.lock().ok()?;
        let arena = guard.get_or_insert_with(|| {
            let layout = Layout::from_size_align(ARENA_BYTES, 1 << 30).expect("arena layout");
            // SAFETY: non-zero size. The block is never freed (the arena
            // lives as long as the process).
            let base = unsafe { alloc(layout) };
            assert!(!base.is_null(), "arena reservation failed");
            let base = base.expose_provenance();
            Arena {
                base,
                next: base,
                free: BTreeMap::new(),
                live: 0,
            }
        });
        let reused = arena.free.get_mut(&num).and_then(|list| {
            let at = list.iter().rposition(|pa| pa % align == 0)?;
            Some(list.swap_remove(at))
        });
        let pa = match reused {
            Some(pa) => pa,
            None => {
                let pa = arena.next.checked_add(align - 1)? & !(align - 1);
                let end = pa.checked_add(bytes)?;
                if end > arena.base + ARENA_BYTES {
                    return None;
                }
                arena.next = end;
                for page in (pa..end).step_by(FRAME_SIZE) {
                    // SAFETY: inside the arena, which nothing else uses;
                    // the first write faults the page in.
                    unsafe { Self::phys_to_virt(page).write_volatile(0) };
                }
                pa
            }
        };
        arena.live += num;
        Some(pa)
    }

    /// Frees `num` frames at `pa`.
    ///
    /// # Safety
    ///
    /// `pa` and `num` must be exactly what one earlier [`ArenaFrames::alloc`]
    /// call returned and was passed, and the frames must not be freed twice
    /// or used afterwards.
    pub unsafe fn dealloc(pa: usize, num: usize) {
        let mut guard = ARENA.lock().expect("arena lock");
        if let Some(arena) = guard.as_mut() {
            arena.live -= num;
            arena.free.entry(num).or_default().push(pa);
        }
    }

    /// The pointer through which the frame at `pa` is accessed.
    pub fn phys_to_virt(pa: usize) -> *mut u8 {
        std::ptr::with_exposed_provenance_mut(pa)
    }

    /// Frames allocated and not yet freed.
    pub fn live_frames() -> usize {
        ARENA
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|a| a.live))
            .unwrap_or(0)
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
