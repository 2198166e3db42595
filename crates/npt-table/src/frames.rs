//! Where table frames come from: the [`FrameAllocator`] trait.

#[cfg(feature = "paging-handler")]
use core::marker::PhantomData;

use gpa_types::HostPhysAddr;
#[cfg(feature = "paging-handler")]
use page_table_multiarch::PagingHandler;

/// Size of one frame.
pub const FRAME_SIZE: usize = 4096;

/// A source of host-physical frames, used by instance so each VM can have its
/// own pool.
///
/// The table asks it for zero or more frames per operation, gives them back
/// once a table it unlinked is past the caller's flush (see
/// `NestedPageTable::complete`) or on drop, and reaches frame contents
/// through [`FrameAllocator::phys_to_virt`].
///
/// # Safety
///
/// Implementors promise, for every allocation they hand out until it is
/// given back with [`FrameAllocator::dealloc_frames`]:
/// - the `count * 4096` bytes starting at the returned address are not in use
///   by anything else (the caller owns them exclusively), and the address is a
///   multiple of both 4096 and the requested `align`;
/// - `phys_to_virt(hpa + off)` for any `off` inside the allocation returns a
///   pointer valid for reads and writes of the rest of the allocation, and the
///   pointer for `hpa + off` equals the pointer for `hpa` plus `off`.
///
/// An implementor that overrides [`FrameAllocator::alloc_zeroed_frame`]
/// also promises that a frame it returns there is such an allocation of one
/// 4 KiB frame (given back with `dealloc_frames(hpa, 1)`) and that all its
/// 4096 bytes read as zero through `phys_to_virt`, the stores that zeroed
/// it having happened before the call returned.
///
/// Callers of `dealloc_frames` pass back exactly an address and count they
/// were given, once.
pub unsafe trait FrameAllocator {
    /// Allocates `count` contiguous frames whose first address is a multiple
    /// of `align` (a power of two, at least 4096). `None` when out of memory.
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr>;

    /// Allocates one 4 KiB frame.
    fn alloc_frame(&self) -> Option<HostPhysAddr> {
        self.alloc_frames(1, FRAME_SIZE)
    }

    /// A 4 KiB frame already known to be zero, if one is ready: a pool of
    /// frames zeroed ahead of time (as `guest_aspace::ZeroedPool` keeps).
    /// `None` says only that none is ready, not that memory is out; the
    /// caller then takes [`FrameAllocator::alloc_frame`] and zeroes it
    /// itself. The frame is given back with `dealloc_frames(hpa, 1)`. The
    /// default has none.
    fn alloc_zeroed_frame(&self) -> Option<HostPhysAddr> {
        None
    }

    /// Returns `count` frames starting at `hpa`, as allocated.
    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize);

    /// Where the hypervisor can access the frame at `hpa`.
    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8;
}

// SAFETY: forwards every call to `A`, whose implementation upholds the
// contract.
unsafe impl<A: FrameAllocator + ?Sized> FrameAllocator for &A {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        (**self).alloc_frames(count, align)
    }
    fn alloc_frame(&self) -> Option<HostPhysAddr> {
        (**self).alloc_frame()
    }
    fn alloc_zeroed_frame(&self) -> Option<HostPhysAddr> {
        (**self).alloc_zeroed_frame()
    }
    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        (**self).dealloc_frames(hpa, count)
    }
    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        (**self).phys_to_virt(hpa)
    }
}

/// Adapts any [`page_table_multiarch::PagingHandler`] (what ArceOS-based
/// hypervisors already implement) into a [`FrameAllocator`]. Feature
/// `paging-handler` (on by default).
///
/// ```
/// use npt_table::{FrameAllocator, HandlerAllocator};
/// # use memory_addr::{PhysAddr, VirtAddr};
/// # struct MyHandler;
/// # impl page_table_multiarch::PagingHandler for MyHandler {
/// #     fn alloc_frames(_: usize, _: usize) -> Option<PhysAddr> { None }
/// #     fn dealloc_frames(_: PhysAddr, _: usize) {}
/// #     fn phys_to_virt(pa: PhysAddr) -> VirtAddr { VirtAddr::from(pa.as_usize()) }
/// # }
/// let alloc = HandlerAllocator::<MyHandler>::new();
/// assert!(alloc.alloc_frame().is_none());
/// ```
#[cfg(feature = "paging-handler")]
#[cfg_attr(docsrs, doc(cfg(feature = "paging-handler")))]
pub struct HandlerAllocator<H>(PhantomData<fn() -> H>);

#[cfg(feature = "paging-handler")]
impl<H> HandlerAllocator<H> {
    /// The adapter (it holds no state).
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

#[cfg(feature = "paging-handler")]
impl<H> Default for HandlerAllocator<H> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "paging-handler")]
impl<H> Clone for HandlerAllocator<H> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

#[cfg(feature = "paging-handler")]
impl<H> core::fmt::Debug for HandlerAllocator<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HandlerAllocator")
    }
}

// SAFETY: `PagingHandler` documents the same contract: `alloc_frames`
// returns `num` contiguous frames aligned to `align`, owned by the caller
// until `dealloc_frames`, and `phys_to_virt` gives a linear mapping through
// which the page-table code accesses them.
#[cfg(feature = "paging-handler")]
unsafe impl<H: PagingHandler> FrameAllocator for HandlerAllocator<H> {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        H::alloc_frames(count, align).map(HostPhysAddr::from)
    }
    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        H::dealloc_frames(hpa.into(), count)
    }
    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        H::phys_to_virt(hpa.into()).as_mut_ptr()
    }
}
