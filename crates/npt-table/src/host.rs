//! Host-side frame allocators for tests, examples and benchmarks (feature
//! `std`): heap-backed frames with a live count, and fault injection.

use std::alloc::{Layout, alloc, dealloc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use gpa_types::HostPhysAddr;

use crate::frames::{FRAME_SIZE, FrameAllocator};

/// The byte every frame of [`HostFrameAllocator`] is filled with when it is
/// handed out.
pub const POISON: u8 = 0xa5;

/// Frames from the host heap. The "physical" address of a frame is its heap
/// address, so `phys_to_virt` is the identity. Frames come filled with
/// [`POISON`], never zeroed.
///
/// It counts live frames ([`HostFrameAllocator::live_frames`]) so tests can
/// prove nothing leaks, and panics on a free of something it did not hand
/// out (a bug in the caller, which tests must see).
#[derive(Debug, Default)]
pub struct HostFrameAllocator {
    allocations: Mutex<HashMap<usize, (usize, Layout)>>,
    live: AtomicUsize,
    total: AtomicUsize,
}

impl HostFrameAllocator {
    /// An allocator with nothing handed out.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames allocated and not yet freed.
    pub fn live_frames(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Frames allocated since creation (freed or not).
    pub fn total_frames(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Whether `hpa` lies inside a live allocation.
    pub fn owns(&self, hpa: HostPhysAddr) -> bool {
        let map = self.allocations.lock().unwrap_or_else(|e| e.into_inner());
        let a = hpa.as_usize();
        map.iter()
            .any(|(&start, &(count, _))| a >= start && a < start + count * FRAME_SIZE)
    }
}

// SAFETY: frames come from the global allocator with the requested size and
// alignment and are exclusively the caller's until freed. The address is
// the pointer's exposed address, and `phys_to_virt` turns it back into that
// pointer, so offsets carry over.
unsafe impl FrameAllocator for HostFrameAllocator {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        if count == 0 {
            return None;
        }
        let layout =
            Layout::from_size_align(count.checked_mul(FRAME_SIZE)?, align.max(FRAME_SIZE)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            return None;
        }
        // Not zeroed, and not left as the OS's fresh zero pages either:
        // filled with a pattern, so a test of "the guest sees zeros" fails
        // when a table or address space forgets to zero what it hands out.
        // SAFETY: `ptr` is a fresh allocation of `layout.size()` bytes.
        unsafe { ptr.write_bytes(POISON, layout.size()) };
        let addr = ptr.expose_provenance();
        self.allocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, (count, layout));
        self.live.fetch_add(count, Ordering::Relaxed);
        self.total.fetch_add(count, Ordering::Relaxed);
        Some(HostPhysAddr::from_usize(addr))
    }

    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        let entry = self
            .allocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hpa.as_usize());
        match entry {
            Some((n, layout)) if n == count => {
                self.live.fetch_sub(count, Ordering::Relaxed);
                // SAFETY: allocated by `alloc_frames` with this layout and
                // removed from the map, so freed exactly once.
                unsafe { dealloc(self.phys_to_virt(hpa), layout) }
            }
            other => panic!("bad free of {hpa:?} x{count}: allocation record {other:?}"),
        }
    }

    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        std::ptr::with_exposed_provenance_mut(hpa.as_usize())
    }
}

/// Wraps an allocator and makes allocation attempt number `n` (counting
/// from 1) and every later one fail, to prove that failed operations change
/// nothing and leak nothing.
#[derive(Debug)]
pub struct FailingAllocator<A> {
    inner: A,
    fail_at: AtomicUsize,
    attempts: AtomicUsize,
}

impl<A: FrameAllocator> FailingAllocator<A> {
    /// Never fails until [`FailingAllocator::fail_from`] is called.
    pub fn new(inner: A) -> Self {
        Self {
            inner,
            fail_at: AtomicUsize::new(usize::MAX),
            attempts: AtomicUsize::new(0),
        }
    }

    /// From now on, the `n`-th attempt counted from this call (1-based) and
    /// every later one fail.
    pub fn fail_from(&self, n: usize) {
        self.attempts.store(0, Ordering::Relaxed);
        self.fail_at.store(n.max(1), Ordering::Relaxed);
    }

    /// Stops failing and resets the attempt count.
    pub fn heal(&self) {
        self.attempts.store(0, Ordering::Relaxed);
        self.fail_at.store(usize::MAX, Ordering::Relaxed);
    }

    /// Allocation attempts since the last `fail_from`/`heal`.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: forwards to `inner`, or returns `None`, which the contract allows.
unsafe impl<A: FrameAllocator> FrameAllocator for FailingAllocator<A> {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        let n = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.fail_at.load(Ordering::Relaxed) {
            return None;
        }
        self.inner.alloc_frames(count, align)
    }

    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        self.inner.dealloc_frames(hpa, count)
    }

    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        self.inner.phys_to_virt(hpa)
    }
}

/// Wraps an allocator and, once [`HighAllocator::raise`] is called, hands
/// out its frames at `offset` above their real address: an allocator that
/// keeps the [`FrameAllocator`] contract but returns frames beyond a
/// format's physical width, for tests of the width checks.
#[derive(Debug)]
pub struct HighAllocator<A> {
    inner: A,
    offset: usize,
    high: std::sync::atomic::AtomicBool,
}

impl<A: FrameAllocator> HighAllocator<A> {
    /// Frames of `inner`, at their own address until [`Self::raise`].
    pub fn new(inner: A, offset: usize) -> Self {
        Self {
            inner,
            offset,
            high: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on, frames are handed out `offset` higher.
    pub fn raise(&self) {
        self.high.store(true, Ordering::Relaxed);
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    fn real(&self, hpa: HostPhysAddr) -> HostPhysAddr {
        if hpa.as_usize() >= self.offset {
            hpa - self.offset
        } else {
            hpa
        }
    }
}

// SAFETY: forwards to `inner`; a raised address is translated back to the
// inner one before every use, so the contract carries over.
unsafe impl<A: FrameAllocator> FrameAllocator for HighAllocator<A> {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        let hpa = self.inner.alloc_frames(count, align)?;
        if self.high.load(Ordering::Relaxed) {
            Some(hpa + self.offset)
        } else {
            Some(hpa)
        }
    }

    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        self.inner.dealloc_frames(self.real(hpa), count)
    }

    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        self.inner.phys_to_virt(self.real(hpa))
    }
}

/// Wraps an allocator and hands freed allocations straight back out (last
/// freed, first reused, per frame count), counting how often each address
/// was handed out: the allocator under which a frame freed too early is
/// soonest given to a new owner. Stale-TLB models check
/// [`ReusingAllocator::generation`] of what a TLB still caches.
#[derive(Debug)]
pub struct ReusingAllocator<A> {
    inner: A,
    state: Mutex<ReuseState>,
}

#[derive(Debug, Default)]
struct ReuseState {
    /// Freed allocations by frame count, most recent last.
    free: HashMap<usize, std::vec::Vec<HostPhysAddr>>,
    /// Times each address was handed out.
    generation: HashMap<usize, u64>,
    /// Allocations handed out and not freed: base address to frame count.
    live: std::collections::BTreeMap<usize, usize>,
}

impl<A: FrameAllocator> ReusingAllocator<A> {
    /// Nothing reused yet.
    pub fn new(inner: A) -> Self {
        Self {
            inner,
            state: Mutex::new(ReuseState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ReuseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many times the allocation at `hpa` was handed out.
    pub fn generation(&self, hpa: HostPhysAddr) -> u64 {
        self.state()
            .generation
            .get(&hpa.as_usize())
            .copied()
            .unwrap_or(0)
    }

    /// Whether the allocation at `hpa` is handed out now.
    pub fn is_live(&self, hpa: HostPhysAddr) -> bool {
        self.state().live.contains_key(&hpa.as_usize())
    }

    /// The live allocation containing `hpa`, as its base address and
    /// generation.
    pub fn allocation_of(&self, hpa: HostPhysAddr) -> Option<(HostPhysAddr, u64)> {
        let st = self.state();
        let (&base, &count) = st.live.range(..=hpa.as_usize()).next_back()?;
        (hpa.as_usize() < base + count * FRAME_SIZE).then(|| {
            let generation = st.generation.get(&base).copied().unwrap_or(0);
            (HostPhysAddr::from_usize(base), generation)
        })
    }

    /// Frames handed out and not freed.
    pub fn live_frames(&self) -> usize {
        self.state().live.values().sum()
    }

    /// Gives the free lists back to the inner allocator (call before
    /// checking the inner allocator for leaks).
    pub fn drain(&self) {
        let free = std::mem::take(&mut self.state().free);
        for (count, list) in free {
            for hpa in list {
                self.inner.dealloc_frames(hpa, count);
            }
        }
    }
}

// SAFETY: every allocation comes from `inner` and is handed to one owner at
// a time: a freed allocation is reused only after its owner gave it back.
unsafe impl<A: FrameAllocator> FrameAllocator for ReusingAllocator<A> {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        let mut st = self.state();
        let reuse = st.free.get_mut(&count).and_then(|list| {
            let i = list.iter().rposition(|h| h.as_usize() % align == 0)?;
            Some(list.remove(i))
        });
        let hpa = match reuse {
            Some(hpa) => hpa,
            None => self.inner.alloc_frames(count, align)?,
        };
        *st.generation.entry(hpa.as_usize()).or_insert(0) += 1;
        st.live.insert(hpa.as_usize(), count);
        Some(hpa)
    }

    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        let mut st = self.state();
        match st.live.remove(&hpa.as_usize()) {
            Some(n) if n == count => st.free.entry(count).or_default().push(hpa),
            other => panic!("bad free of {hpa:?} x{count}: allocation record {other:?}"),
        }
    }

    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        self.inner.phys_to_virt(hpa)
    }
}
