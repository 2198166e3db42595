//! The frame allocator the nested tables and guest RAM come from: two bump
//! pools over QEMU RAM (identity mapped) and a free list of 4 KiB frames.
//!
//! Requests aligned to 2 MiB or more (huge backing frames) come from the
//! `large` pool, which starts 1 GiB aligned; everything else (table frames,
//! concatenated roots, 4 KiB backing) from the `small` pool, so a 1 GiB run
//! does not waste the space before its alignment.

use core::cell::Cell;

use gpa_types::HostPhysAddr;
use npt_table::{FRAME_SIZE, FrameAllocator};

/// A bump pool `[next, end)`.
struct Pool {
    next: Cell<usize>,
    end: usize,
}

impl Pool {
    fn take(&self, count: usize, align: usize) -> Option<usize> {
        let start = self.next.get().checked_next_multiple_of(align)?;
        let end = start.checked_add(count.checked_mul(FRAME_SIZE)?)?;
        if end > self.end {
            return None;
        }
        self.next.set(end);
        Some(start)
    }
}

/// Frames from QEMU RAM, identity mapped (host physical == hypervisor
/// virtual).
pub struct PoolFrames {
    small: Pool,
    large: Pool,
    /// Head of the free 4 KiB frames (linked through their first word), 0
    /// when empty.
    free: Cell<usize>,
    /// Frames handed out and not given back.
    live: Cell<usize>,
}

impl PoolFrames {
    /// Pools over `[small.0, small.1)` and `[large.0, large.1)`: RAM that
    /// nothing else uses.
    pub const fn new(small: (usize, usize), large: (usize, usize)) -> Self {
        Self {
            small: Pool {
                next: Cell::new(small.0),
                end: small.1,
            },
            large: Pool {
                next: Cell::new(large.0),
                end: large.1,
            },
            free: Cell::new(0),
            live: Cell::new(0),
        }
    }

    /// Frames currently handed out.
    pub fn live_frames(&self) -> usize {
        self.live.get()
    }
}

// SAFETY: the pools are RAM that nothing else in the hypervisor uses (the
// linker script and `arch` place the image, stack and heap below them);
// each bump hands a range out once, aligned as asked; a given-back frame is
// reused only after `dealloc_frames`, and only as a single 4 KiB frame.
// RAM is identity mapped, so `phys_to_virt` is the identity and offsets carry
// over.
unsafe impl FrameAllocator for PoolFrames {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        let head = self.free.get();
        let hpa = if count == 1 && align <= FRAME_SIZE && head != 0 {
            // SAFETY: `head` is a free frame whose first word holds the next
            // free frame (written by `dealloc_frames`).
            self.free
                .set(unsafe { (head as *const usize).read_volatile() });
            head
        } else if align >= 2 << 20 {
            self.large.take(count, align)?
        } else {
            self.small.take(count, align.max(FRAME_SIZE))?
        };
        self.live.set(self.live.get() + count);
        Some(HostPhysAddr::from_usize(hpa))
    }

    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        for i in 0..count {
            let frame = hpa.as_usize() + i * FRAME_SIZE;
            // SAFETY: the caller gives the frames back, so they are ours
            // again; the first word links the free list.
            unsafe { (frame as *mut usize).write_volatile(self.free.get()) };
            self.free.set(frame);
        }
        self.live.set(self.live.get() - count);
    }

    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        hpa.as_usize() as *mut u8
    }
}
