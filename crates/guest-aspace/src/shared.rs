//! Sharing one address space among many vCPUs.

use gpa_types::{GuestPhysAddr, HostPhysAddr};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, TlbFlush};

use crate::error::AspaceResult;
use crate::fault::{Access, FaultOutcome};
use crate::pod::Pod;
use crate::rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use crate::space::GuestAddrSpace;

/// A [`GuestAddrSpace`] behind a reader-writer spin lock. Faults,
/// translations, guest-memory reads and writes and dirty-log collection
/// from many vCPUs and device threads run concurrently under the shared
/// lock: what they change in the table they change with compare-and-swap
/// on single entries (see `npt_table::concurrent`), and dirty bits live in
/// atomic bitmaps. Region changes (add, remove, clear, protect, starting
/// and stopping dirty logging) take the lock exclusively through
/// [`SharedAddrSpace::write`]. The lock ([`RwLock`]) prefers writers: once
/// a region change waits, no new shared access gets in ahead of it, so it
/// waits only for those already running.
///
/// ```
/// # use guest_aspace::{GuestAddrSpace, SharedAddrSpace};
/// # use npt_table::HostFrameAllocator;
/// # use npt_entry::stage2::Stage2Ipa40;
/// # use gpa_types::{GuestPhysAddrRange, MappingFlags};
/// let alloc = HostFrameAllocator::new();
/// let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 32);
/// let space = GuestAddrSpace::<Stage2Ipa40, _>::new(&alloc, window).unwrap();
/// let shared = SharedAddrSpace::new(space);
/// shared.write().add_ram(0x4000_0000.into(), 0x10000, MappingFlags::READ | MappingFlags::WRITE, false).unwrap().ignore();
/// std::thread::scope(|s| {
///     for _ in 0..2 {
///         s.spawn(|| assert!(shared.translate(0x4000_1000.into()).is_some()));
///     }
/// });
/// ```
pub struct SharedAddrSpace<F: NptFormat, A: FrameAllocator> {
    inner: RwLock<GuestAddrSpace<F, A>>,
}

impl<F: NptFormat, A: FrameAllocator> SharedAddrSpace<F, A> {
    /// Wraps a space.
    pub fn new(space: GuestAddrSpace<F, A>) -> Self {
        Self {
            inner: RwLock::new(space),
        }
    }

    /// Shared access: everything but region changes.
    pub fn read(&self) -> RwLockReadGuard<'_, GuestAddrSpace<F, A>> {
        self.inner.read()
    }

    /// Exclusive access: region changes (add, remove, clear, protect,
    /// starting and stopping dirty logging).
    pub fn write(&self) -> RwLockWriteGuard<'_, GuestAddrSpace<F, A>> {
        self.inner.write()
    }

    /// Translates under the shared lock.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        self.inner.read().translate(gpa)
    }

    /// Handles a fault under the shared lock (see
    /// [`GuestAddrSpace::handle_fault`]): vCPUs fault concurrently; two
    /// faulting on the same lazy page map one frame.
    pub fn handle_fault(&self, gpa: GuestPhysAddr, access: Access) -> AspaceResult<FaultOutcome> {
        self.inner.read().handle_fault(gpa, access)
    }

    /// Reads guest memory under the shared lock.
    pub fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> AspaceResult<()> {
        self.inner.read().read(gpa, buf)
    }

    /// Writes guest memory under the shared lock, populating lazy pages and
    /// marking dirty pages (see [`GuestAddrSpace::write`]).
    pub fn write_bytes(&self, gpa: GuestPhysAddr, data: &[u8]) -> AspaceResult<()> {
        self.inner.read().write(gpa, data)
    }

    /// Reads a plain-old-data value under the shared lock (see
    /// [`GuestAddrSpace::read_obj`]).
    pub fn read_obj<T: Pod>(&self, gpa: GuestPhysAddr) -> AspaceResult<T> {
        self.inner.read().read_obj(gpa)
    }

    /// Writes a plain-old-data value under the shared lock (see
    /// [`GuestAddrSpace::write_obj`]).
    pub fn write_obj<T: Pod>(&self, gpa: GuestPhysAddr, value: &T) -> AspaceResult<()> {
        self.inner.read().write_obj(gpa, value)
    }

    /// Collects the dirty log of the region holding `gpa` under the shared
    /// lock, while vCPUs keep faulting (see
    /// [`GuestAddrSpace::collect_dirty`]).
    pub fn collect_dirty(&self, gpa: GuestPhysAddr, out: &mut [u64]) -> AspaceResult<TlbFlush> {
        self.inner.read().collect_dirty(gpa, out)
    }

    /// The space back.
    pub fn into_inner(self) -> GuestAddrSpace<F, A> {
        self.inner.into_inner()
    }
}
