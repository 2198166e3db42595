//! The `#[global_allocator]`: a bump allocator over a static array.
//!
//! The hypervisor runs on one core, allocates little (region maps, chunk
//! lists, flush lists) and never frees much, so a bump pointer that only
//! reclaims the most recent allocation is enough.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of heap.
const HEAP_SIZE: usize = 8 << 20;

/// The heap's storage, page aligned.
#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: only `Bump` hands out pieces of the arena, each to one owner.
unsafe impl Sync for Arena {}

/// Kept out of `.bss` (`.noinit` is not zeroed at boot): allocations never
/// rely on fresh heap memory being zero.
#[unsafe(link_section = ".noinit")]
static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));

/// A bump allocator: `next` is the offset of the first free byte.
pub struct Bump {
    next: AtomicUsize,
}

impl Bump {
    /// An empty heap.
    pub const fn new() -> Self {
        Self {
            next: AtomicUsize::new(0),
        }
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

// SAFETY: every allocation is a distinct, suitably aligned piece of the
// arena, handed out at most once until freed; the hypervisor is single
// threaded and never allocates from an exception handler, so plain loads
// and stores of `next` cannot race.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = ARENA.0.get() as usize;
        let start = (base + self.next.load(Ordering::Relaxed)).next_multiple_of(layout.align());
        let Some(end) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if end > base + HEAP_SIZE {
            return core::ptr::null_mut();
        }
        self.next.store(end - base, Ordering::Relaxed);
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Only the most recent allocation can be given back.
        let base = ARENA.0.get() as usize;
        if ptr as usize + layout.size() == base + self.next.load(Ordering::Relaxed) {
            self.next.store(ptr as usize - base, Ordering::Relaxed);
        }
    }
}

/// The allocator `alloc` uses.
#[global_allocator]
pub static HEAP: Bump = Bump::new();
