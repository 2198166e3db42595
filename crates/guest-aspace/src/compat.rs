//! Calls that axaddrspace users reach for: changing the rights of a range,
//! translating with the length that stays host-contiguous, and range
//! coverage under explicit names.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, TlbFlush};

use crate::dirty::allow_not_mapped;
use crate::error::{AspaceError, AspaceResult};
use crate::region::Backing;
use crate::shared::SharedAddrSpace;
use crate::space::GuestAddrSpace;

impl<F: NptFormat, A: FrameAllocator> GuestAddrSpace<F, A> {
    /// Gives the guest `flags` on `[gpa, gpa + len)`: the mapped leaves of
    /// the range and the rights of the regions covering it, which decide
    /// how later faults are handled and lazy pages are mapped.
    ///
    /// Every byte must be covered by regions ([`AspaceError::NoRegion`] at
    /// the first gap). A region the range cuts is split in two at the cut,
    /// each part keeping its kind; owned backing cannot be cut inside a huge
    /// frame or an allocated identical region ([`AspaceError::CutsBacking`]).
    /// Refused with [`AspaceError::WrongRegionState`] (naming the region):
    /// a region with dirty logging on, write access for ROM, and a range
    /// that mixes device (MMIO) regions with others. MMIO regions keep
    /// `DEVICE`. Flags that give no access, or write without read, are
    /// [`AspaceError::Table`] with `BadFlags`.
    ///
    /// All or nothing: on error the space is as it was. Splitting a huge
    /// leaf at an edge of the range may need table frames
    /// ([`AspaceError::NoMemory`]). Flush what the returned record names.
    pub fn protect_range(
        &mut self,
        gpa: GuestPhysAddr,
        len: usize,
        flags: MappingFlags,
    ) -> AspaceResult<TlbFlush> {
        let start = gpa.as_usize();
        let end = self.check_cut(gpa, len)?;
        npt_entry::check_flags(flags).map_err(|e| AspaceError::Table(e.into()))?;
        // Every region the range touches, checked before anything changes.
        let mut device = None;
        for r in self.regions.overlapping(start, end) {
            let is_device = matches!(r.backing, Backing::Mmio { .. });
            let refused = r.dirty.is_some()
                || (r.backing == Backing::Rom && flags.contains(MappingFlags::WRITE))
                || device.is_some_and(|d| d != is_device);
            if refused {
                return Err(AspaceError::WrongRegionState {
                    gpa: r.start.into(),
                });
            }
            device = Some(is_device);
        }
        let flags = if device == Some(true) {
            flags | MappingFlags::DEVICE
        } else {
            flags
        };
        // Room for the two regions the cuts at either end may add.
        self.regions.reserve(2)?;
        // The table first: the only step that can fail, all or nothing.
        // Nothing populated yet (lazy RAM, emulated MMIO) is no error.
        let flush = allow_not_mapped(self.table.protect_region(gpa, len, flags))?;
        // Then the records, which cannot fail.
        self.split_region_at(start);
        self.split_region_at(end);
        for r in self.regions.starting_in_mut(start, end) {
            r.flags = flags;
        }
        Ok(flush)
    }

    /// Splits the region that contains `at` strictly inside it into two
    /// regions meeting at `at`. The caller has checked that `at` cuts no
    /// owned backing and that the region is not logging dirty pages.
    fn split_region_at(&mut self, at: usize) {
        let Some(left) = self.region_at_mut(at) else {
            return;
        };
        if left.start == at {
            return;
        }
        let mut right = left.piece();
        right.huge = left.huge.split_off(&at);
        right.start = at;
        right.size = left.end() - at;
        let offset = at - left.start;
        left.size = offset;
        right.backing = match left.backing {
            Backing::Linear { hpa } => Backing::Linear { hpa: hpa + offset },
            Backing::Mmio {
                passthrough: Some(hpa),
            } => Backing::Mmio {
                passthrough: Some(hpa + offset),
            },
            other => other,
        };
        self.regions.insert(right);
    }

    /// The host address `gpa` maps to and how many bytes from `gpa` on stay
    /// host-contiguous inside the region that holds it (axaddrspace's
    /// `translate_and_get_limit`): `[gpa, gpa + limit)` maps
    /// `[hpa, hpa + limit)`, so one DMA descriptor or one copy can cover it.
    /// `None` where nothing is mapped (no region, emulated MMIO, lazy pages
    /// not yet populated).
    ///
    /// Pass-through and allocated identical regions are contiguous by
    /// construction (answered without a walk); RAM is followed leaf by leaf
    /// until the host addresses break off or the region ends.
    pub fn translate_and_get_limit(&self, gpa: GuestPhysAddr) -> Option<(HostPhysAddr, usize)> {
        let addr = gpa.as_usize();
        let region = self.region_at(addr)?;
        let end = region.end();
        let (hpa, size) = self.table.translate_leaf(gpa)?;
        let linear = match region.backing {
            Backing::AllocIdentical => Some(HostPhysAddr::from_usize(addr)),
            _ => region.passthrough_hpa(addr),
        };
        if linear == Some(hpa) {
            return Some((hpa, end - addr));
        }
        let mut limit = (size.bytes() - size.offset(addr)).min(end - addr);
        while limit < end - addr {
            let pos = addr + limit;
            match self.table.translate_leaf(pos.into()) {
                Some((h, s)) if h.as_usize() == hpa.as_usize() + limit => {
                    limit += (s.bytes() - s.offset(pos)).min(end - pos);
                }
                _ => break,
            }
        }
        Some((hpa, limit))
    }

    /// Whether regions cover all of `[gpa, gpa + len)`, possibly several
    /// adjacent ones; the same as [`GuestAddrSpace::contains_range`], under
    /// the name that says so. axaddrspace's `contains_range` asks something
    /// else, whether the range lies inside the address space's window: that
    /// is [`GuestAddrSpace::window_contains_range`] here.
    pub fn covers_range(&self, gpa: GuestPhysAddr, len: usize) -> bool {
        self.contains_range(gpa, len)
    }

    /// Whether `[gpa, gpa + len)` lies inside the guest-physical window,
    /// whether or not regions cover it (axaddrspace's `contains_range`).
    /// An empty range is inside if its address is inside or at the end.
    pub fn window_contains_range(&self, gpa: GuestPhysAddr, len: usize) -> bool {
        let start = gpa.as_usize();
        start
            .checked_add(len)
            .is_some_and(|end| start >= self.window.0 && end <= self.window.1)
    }
}

impl<F: NptFormat, A: FrameAllocator> SharedAddrSpace<F, A> {
    /// [`GuestAddrSpace::protect_range`] under the exclusive lock.
    pub fn protect_range(
        &self,
        gpa: GuestPhysAddr,
        len: usize,
        flags: MappingFlags,
    ) -> AspaceResult<TlbFlush> {
        self.write().protect_range(gpa, len, flags)
    }

    /// [`GuestAddrSpace::translate_and_get_limit`] under a shared lock.
    pub fn translate_and_get_limit(&self, gpa: GuestPhysAddr) -> Option<(HostPhysAddr, usize)> {
        self.read().translate_and_get_limit(gpa)
    }

    /// [`GuestAddrSpace::covers_range`] under a shared lock.
    pub fn covers_range(&self, gpa: GuestPhysAddr, len: usize) -> bool {
        self.read().covers_range(gpa, len)
    }

    /// [`GuestAddrSpace::window_contains_range`] under a shared lock.
    pub fn window_contains_range(&self, gpa: GuestPhysAddr, len: usize) -> bool {
        self.read().window_contains_range(gpa, len)
    }
}
