//! What a hypervisor brings to `guest-aspace`: its frame allocator, written
//! as a `page_table_multiarch::PagingHandler` the way ArceOS-based
//! hypervisors already have one, and nothing else. Everything is reached
//! through `guest_aspace` (no direct dependency on the crates under it).
//!
//! The handler hands out frames of a host buffer and pretends they sit at
//! host-physical addresses from [`HPA_BASE`] up, as a kernel's
//! direct map would translate them.

use std::sync::{Mutex, OnceLock};

use guest_aspace::PagingHandler;
use guest_aspace::memory_addr::{PhysAddr, VirtAddr};

/// Frames in the pool.
pub const FRAMES: usize = 1024;
/// The host-physical address of the first frame (1 GiB aligned, so frame
/// alignment and address alignment agree).
pub const HPA_BASE: usize = 0x40_0000_0000;
const FRAME: usize = 4096;

#[repr(C, align(4096))]
struct Frame([u8; FRAME]);

struct Pool {
    /// Host address of frame 0.
    base: usize,
    /// Which frames are handed out.
    used: Mutex<Vec<bool>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let frames: Vec<Frame> = (0..FRAMES).map(|_| Frame([0; FRAME])).collect();
        let base = Box::leak(frames.into_boxed_slice()).as_mut_ptr() as usize;
        Pool {
            base,
            used: Mutex::new(vec![false; FRAMES]),
        }
    })
}

/// The hypervisor's frame source: a fixed pool with a live count.
pub struct PoolHandler;

impl PoolHandler {
    /// Frames handed out and not given back.
    pub fn live_frames() -> usize {
        let used = pool().used.lock().unwrap_or_else(|e| e.into_inner());
        used.iter().filter(|&&u| u).count()
    }
}

impl PagingHandler for PoolHandler {
    fn alloc_frames(num: usize, align: usize) -> Option<PhysAddr> {
        let step = (align / FRAME).max(1);
        let mut used = pool().used.lock().unwrap_or_else(|e| e.into_inner());
        let first = (0..FRAMES.checked_sub(num)? + 1)
            .step_by(step)
            .find(|&i| used[i..i + num].iter().all(|&u| !u))?;
        used[first..first + num].iter_mut().for_each(|u| *u = true);
        Some(PhysAddr::from_usize(HPA_BASE + first * FRAME))
    }

    fn dealloc_frames(paddr: PhysAddr, num: usize) {
        let first = (paddr.as_usize() - HPA_BASE) / FRAME;
        let mut used = pool().used.lock().unwrap_or_else(|e| e.into_inner());
        for u in &mut used[first..first + num] {
            assert!(*u, "double free of frame {first}");
            *u = false;
        }
    }

    fn phys_to_virt(paddr: PhysAddr) -> VirtAddr {
        VirtAddr::from_usize(pool().base + (paddr.as_usize() - HPA_BASE))
    }
}
