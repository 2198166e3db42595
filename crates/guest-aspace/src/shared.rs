//! Sharing one address space among many vCPUs.

use gpa_types::{GuestPhysAddr, HostPhysAddr};
use npt_entry::NptFormat;
use npt_table::FrameAllocator;

use crate::error::AspaceResult;
use crate::fault::{Access, FaultOutcome};
use crate::pod::Pod;
use crate::rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use crate::space::GuestAddrSpace;

/// A [`GuestAddrSpace`] behind a reader-writer spin lock: translations and
/// guest-memory reads from many vCPUs run concurrently; faults, writes and
/// region changes take exclusive access. The lock ([`RwLock`]) prefers
/// writers: once a fault waits, no new translation gets in ahead of it, so
/// it waits only for the translations already running.
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

    /// Shared access (translations, reads).
    pub fn read(&self) -> RwLockReadGuard<'_, GuestAddrSpace<F, A>> {
        self.inner.read()
    }

    /// Exclusive access (faults, writes, region changes).
    pub fn write(&self) -> RwLockWriteGuard<'_, GuestAddrSpace<F, A>> {
        self.inner.write()
    }

    /// Translates under a shared lock.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        self.inner.read().translate(gpa)
    }

    /// Reads guest memory under a shared lock.
    pub fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> AspaceResult<()> {
        self.inner.read().read(gpa, buf)
    }

    /// Reads a plain-old-data value under a shared lock (see
    /// [`GuestAddrSpace::read_obj`]).
    pub fn read_obj<T: Pod>(&self, gpa: GuestPhysAddr) -> AspaceResult<T> {
        self.inner.read().read_obj(gpa)
    }

    /// Writes a plain-old-data value under the exclusive lock (a write may
    /// populate lazy pages; see [`GuestAddrSpace::write_obj`]).
    pub fn write_obj<T: Pod>(&self, gpa: GuestPhysAddr, value: &T) -> AspaceResult<()> {
        self.inner.write().write_obj(gpa, value)
    }

    /// Handles a fault under the exclusive lock.
    pub fn handle_fault(&self, gpa: GuestPhysAddr, access: Access) -> AspaceResult<FaultOutcome> {
        self.inner.write().handle_fault(gpa, access)
    }

    /// The space back.
    pub fn into_inner(self) -> GuestAddrSpace<F, A> {
        self.inner.into_inner()
    }
}
