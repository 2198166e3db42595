//! axaddrspace's `NestedPageTableOps` on [`AxNpt`]: each call converts its
//! arguments once (`convert.rs`), makes one `npt-table` call and merges the
//! returned record into the pending one.

use ax_memory_addr::{PhysAddr, VirtAddr};
use axaddrspace::{AddrSpaceError, AddrSpaceResult, NestedPageTableOps, PageSize as AxPageSize};
use axvm_types::{GuestPhysAddr as AxGpa, MappingFlags as AxFlags};
use gpa_types::{GuestPhysAddr, PageSize};
use npt_entry::NptFormat;
use npt_table::{ChangeError, Entry, FRAME_SIZE, FrameAllocator, MapPolicy, NptError, TlbFlush};

use crate::convert;
use crate::table::AxNpt;

impl<F: NptFormat, A: FrameAllocator> NestedPageTableOps for AxNpt<F, A> {
    fn root_paddr(&self) -> PhysAddr {
        convert::ax_hpa(self.inner.read().table.root_hpa())
    }

    fn levels(&self) -> usize {
        F::LEVELS
    }

    /// A zeroed 4 KiB frame from the table's allocator, for guest RAM.
    fn alloc_frame(&self) -> Option<PhysAddr> {
        let inner = self.inner.read();
        let alloc = inner.table.allocator();
        let hpa = alloc.alloc_frame()?;
        // SAFETY: `hpa` was just allocated, so the caller owns its 4096
        // bytes exclusively, and `FrameAllocator`'s contract makes
        // `phys_to_virt(hpa)` valid for writes of all of them. Zeroing it
        // keeps the previous owner's data from the guest.
        unsafe { core::ptr::write_bytes(alloc.phys_to_virt(hpa), 0, FRAME_SIZE) };
        Some(convert::ax_hpa(hpa))
    }

    /// Parks the frame until the pending record is completed: axaddrspace
    /// calls this right after unmapping the frame, before any flush.
    fn dealloc_frame(&self, paddr: PhysAddr) {
        self.inner.write().park(convert::hpa(paddr));
    }

    fn phys_to_virt(&self, paddr: PhysAddr) -> VirtAddr {
        let inner = self.inner.read();
        convert::ax_hva(inner.table.allocator().phys_to_virt(convert::hpa(paddr)))
    }

    fn map(
        &mut self,
        vaddr: AxGpa,
        paddr: PhysAddr,
        size: AxPageSize,
        flags: AxFlags,
    ) -> AddrSpaceResult {
        let size = convert::page_size(size)?;
        let inner = self.inner.get_mut();
        let flush = inner
            .table
            .map(
                convert::gpa(vaddr),
                convert::hpa(paddr),
                size,
                convert::flags(flags),
            )
            .map_err(convert::error)?;
        inner.pending.merge(flush);
        Ok(())
    }

    /// Removes the leaf that starts at `vaddr`. A 512 GiB leaf, which
    /// axaddrspace's `PageSize` cannot name, is refused and kept.
    fn unmap(&mut self, vaddr: AxGpa) -> AddrSpaceResult<(PhysAddr, AxFlags, AxPageSize)> {
        let gpa = convert::gpa(vaddr);
        if !PageSize::Size4K.is_aligned(gpa.as_usize()) {
            return Err(convert::error(NptError::GpaNotAligned {
                value: gpa.as_usize(),
                align: FRAME_SIZE,
            }));
        }
        let inner = self.inner.get_mut();
        // Room to park the frame axaddrspace hands back next
        // (`dealloc_frame`), taken before anything changes.
        inner.promise_one().map_err(convert::error)?;
        let leaf = match inner.table.entry(gpa).map_err(convert::error)? {
            Entry::Leaf(leaf) => leaf,
            Entry::Vacant(_) => return Err(convert::error(NptError::NotMapped { gpa })),
        };
        if leaf.gpa() != gpa {
            return Err(convert::error(NptError::SizeMismatch {
                gpa,
                mapped: leaf.size(),
            }));
        }
        let size = convert::ax_page_size(leaf.size()).ok_or(AddrSpaceError::InvalidMapping)?;
        let (t, flush) = leaf.unmap().map_err(convert::error)?;
        inner.pending.merge(flush);
        Ok((convert::ax_hpa(t.hpa), convert::ax_flags(t.flags), size))
    }

    fn map_linear(
        &mut self,
        vaddr: AxGpa,
        paddr: PhysAddr,
        size: usize,
        flags: AxFlags,
        allow_huge: bool,
    ) -> AddrSpaceResult {
        let policy = if allow_huge {
            MapPolicy::Huge
        } else {
            MapPolicy::Only4K
        };
        let inner = self.inner.get_mut();
        let flush = inner
            .table
            .map_region(
                convert::gpa(vaddr),
                convert::hpa(paddr),
                size,
                convert::flags(flags),
                policy,
            )
            .map_err(convert::error)?;
        inner.pending.merge(flush);
        Ok(())
    }

    /// Unmaps the range; huge leaves it cuts are split, keeping the rest.
    /// A range with nothing mapped is removed successfully.
    fn unmap_region(&mut self, start: AxGpa, size: usize) -> AddrSpaceResult {
        let inner = self.inner.get_mut();
        match inner.table.unmap_region(convert::gpa(start), size) {
            Ok(flush) => inner.pending.merge(flush),
            Err(ChangeError::NotMapped { .. }) => {}
            Err(e) => return Err(convert::error(e)),
        }
        Ok(())
    }

    /// Maps the 4 KiB page holding `start` to `paddr` (axaddrspace's lazy
    /// fault path, with a frame from [`alloc_frame`](Self::alloc_frame)).
    ///
    /// Takes ownership of `paddr`: it is mapped, or given back to the
    /// allocator (it was never visible to the guest). If a 4 KiB leaf is
    /// there already (two vCPUs faulted on the same page), that leaf and
    /// the data in it are kept, with `flags`, and `paddr` is given back:
    /// replacing it would lose what the first vCPU wrote. Returns `false`
    /// if the page cannot be mapped (a huge leaf covers it, out of memory).
    fn remap(&mut self, start: AxGpa, paddr: PhysAddr, flags: AxFlags) -> bool {
        let gpa = GuestPhysAddr::from_usize(PageSize::Size4K.align_down(start.as_usize()));
        let hpa = convert::hpa(paddr);
        let flags = convert::flags(flags);
        let inner = self.inner.get_mut();
        let result: Result<(TlbFlush, bool), NptError> = match inner.table.entry(gpa) {
            Ok(Entry::Vacant(vacant)) => vacant
                .insert(hpa, flags)
                .map(|f| (f, true))
                .map_err(NptError::from),
            Ok(Entry::Leaf(leaf)) if leaf.size() == PageSize::Size4K => {
                if leaf.translation().flags == flags {
                    Ok((TlbFlush::none(), false))
                } else {
                    leaf.protect(flags)
                        .map(|f| (f, false))
                        .map_err(NptError::from)
                }
            }
            Ok(Entry::Leaf(leaf)) => Err(NptError::SizeMismatch {
                gpa,
                mapped: leaf.size(),
            }),
            Err(e) => Err(e.into()),
        };
        let (mapped, used) = match result {
            Ok((flush, used)) => {
                inner.pending.merge(flush);
                (true, used)
            }
            Err(_) => (false, false),
        };
        if !used {
            inner.table.allocator().dealloc_frames(hpa, 1);
        }
        mapped
    }

    /// Sets the flags of every leaf in the range (splitting huge leaves at
    /// the edges). A range with nothing mapped yet (lazy memory) succeeds.
    fn protect_region(&mut self, start: AxGpa, size: usize, new_flags: AxFlags) -> bool {
        let inner = self.inner.get_mut();
        match inner
            .table
            .protect_region(convert::gpa(start), size, convert::flags(new_flags))
        {
            Ok(flush) => {
                inner.pending.merge(flush);
                true
            }
            Err(ChangeError::NotMapped { .. }) => true,
            Err(_) => false,
        }
    }

    /// The translation of `vaddr` (host address with the offset in the
    /// leaf). A 512 GiB leaf is reported as 1 GiB (see
    /// [`convert::ax_page_size_at_most`]).
    fn query(&self, vaddr: AxGpa) -> AddrSpaceResult<(PhysAddr, AxFlags, AxPageSize)> {
        let t = self
            .inner
            .read()
            .table
            .query(convert::gpa(vaddr))
            .map_err(convert::error)?;
        Ok((
            convert::ax_hpa(t.hpa),
            convert::ax_flags(t.flags),
            convert::ax_page_size_at_most(t.size),
        ))
    }

    fn translate(&self, vaddr: AxGpa) -> Option<PhysAddr> {
        self.inner
            .read()
            .table
            .translate(convert::gpa(vaddr))
            .map(convert::ax_hpa)
    }
}
