//! Dirty logging for live migration and snapshots.
//!
//! Starting splits the region's huge leaves (so one guest write dirties
//! 4 KiB, not 2 MiB) and write-protects it. A guest write then faults;
//! [`GuestAddrSpace::handle_fault`] marks the page and makes it writable
//! again. Host writes through the space's own write API are marked too,
//! since no stage-2 bit sees them. Collecting returns the bitmap and
//! re-arms the pages it names; stopping restores permissions and collapses
//! owned huge backing back into huge leaves.

use alloc::vec::Vec;

use gpa_types::{GuestPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{ChangeError, FrameAllocator, TlbFlush};

use crate::error::{AspaceError, AspaceResult};
use crate::region::{Backing, DirtyLog};
use crate::space::GuestAddrSpace;

const PAGE: usize = PageSize::Size4K.bytes();

/// A change that found nothing mapped (lazy RAM not yet populated,
/// emulated MMIO) is no error here: nothing to flush.
pub(crate) fn allow_not_mapped(r: Result<TlbFlush, ChangeError>) -> AspaceResult<TlbFlush> {
    match r {
        Ok(f) => Ok(f),
        Err(ChangeError::NotMapped { .. }) => Ok(TlbFlush::none()),
        Err(e) => Err(e.into()),
    }
}

impl<F: NptFormat, A: FrameAllocator> GuestAddrSpace<F, A> {
    /// Starts dirty logging on the region containing `gpa`. Not for MMIO
    /// (device memory has no pages to migrate) or read-only regions.
    pub fn start_dirty_log(&mut self, gpa: GuestPhysAddr) -> AspaceResult<TlbFlush> {
        let region = self
            .region_at(gpa.as_usize())
            .ok_or(AspaceError::NoRegion { gpa })?;
        if region.dirty.is_some()
            || matches!(region.backing, Backing::Mmio { .. })
            || !region.flags.contains(MappingFlags::WRITE)
        {
            return Err(AspaceError::WrongRegionState { gpa });
        }
        let (start, size) = (region.start, region.size);
        // The bitmap first: nothing has changed if the heap refuses it.
        let log = DirtyLog::new(size / PAGE)?;
        let mut flush = allow_not_mapped(self.table.split_region(start.into(), size))?;
        flush.merge(allow_not_mapped(
            self.table.write_protect_region(start.into(), size),
        )?);
        if let Some(region) = self.regions.get_mut(start) {
            region.dirty = Some(log);
        }
        Ok(flush)
    }

    /// Copies the dirty bitmap of the region containing `gpa` into `out`
    /// (bit `i` for the page at region start `+ i * 4096`; `out` must hold
    /// one bit per page, and words past the region's are zeroed), clears it,
    /// and write-protects the pages it named again.
    ///
    /// Takes `&self`: it runs while vCPUs fault and devices write guest
    /// memory on other CPUs (through
    /// [`crate::SharedAddrSpace::collect_dirty`]). Each word of the bitmap
    /// is taken and cleared in one atomic step, and the pages it names are
    /// write-protected with compare-and-swap afterwards, so a page written
    /// meanwhile is in this collection or the next, never in neither. Flush
    /// what the record names before copying the pages out: a vCPU may
    /// still write through a writable translation until then.
    pub fn collect_dirty(&self, gpa: GuestPhysAddr, out: &mut [u64]) -> AspaceResult<TlbFlush> {
        let region = self
            .region_at(gpa.as_usize())
            .ok_or(AspaceError::NoRegion { gpa })?;
        let start = region.start;
        let pages = region.size / PAGE;
        let log = region
            .dirty
            .as_ref()
            .ok_or(AspaceError::WrongRegionState { gpa })?;
        if out.len().saturating_mul(64) < pages {
            return Err(AspaceError::BufferTooSmall {
                needed: pages.div_ceil(64),
                given: out.len(),
            });
        }
        // Copy out and clear in place: no second bitmap (its size would be
        // the region's, a caller's choice).
        out.fill(0);
        let words = log.words().min(out.len());
        let mut flush = TlbFlush::none();
        // Re-arm each run of consecutive dirty pages with one range
        // operation (one descent, every other bit of the leaves kept).
        log.collect(&mut out[..words], pages, |first, n| {
            let run = GuestPhysAddr::from_usize(start + first * PAGE);
            flush.merge(self.table.write_protect_concurrent(run, n * PAGE)?);
            Ok::<(), AspaceError>(())
        })?;
        Ok(flush)
    }

    /// Stops dirty logging on the region containing `gpa`: restores its
    /// permissions and collapses huge backing into huge leaves again.
    pub fn stop_dirty_log(&mut self, gpa: GuestPhysAddr) -> AspaceResult<TlbFlush> {
        let region = self
            .region_at(gpa.as_usize())
            .ok_or(AspaceError::NoRegion { gpa })?;
        if region.dirty.is_none() {
            return Err(AspaceError::WrongRegionState { gpa });
        }
        let (start, size, flags) = (region.start, region.size, region.flags);
        // The owned huge chunks, copied before anything changes (their
        // number grows with the region's size).
        let mut huge: Vec<(usize, PageSize)> = Vec::new();
        huge.try_reserve_exact(region.huge.len())
            .map_err(|_| AspaceError::NoMemory)?;
        huge.extend(region.huge.iter().map(|(g, c)| (*g, c.size)));
        let identical = matches!(
            region.backing,
            Backing::Identical | Backing::AllocIdentical | Backing::Linear { .. }
        );
        let mut flush = allow_not_mapped(self.table.protect_region(start.into(), size, flags))?;
        // Logging ends only once write access is back: were the log dropped
        // first and the protect failed, write-protected pages would fault
        // forever as stale-TLB faults.
        if let Some(region) = self.region_at_mut(start) {
            region.dirty = None;
        }
        // Every 2 MiB span before any 1 GiB one, so a 1 GiB collapse finds
        // 2 MiB leaves.
        for page in [PageSize::Size2M, PageSize::Size1G] {
            for &(g, _) in huge.iter().filter(|(_, s)| *s == page) {
                self.collapse_span(g, page, &mut flush);
            }
            if identical {
                // Pass-through memory was mapped with the largest leaves its
                // alignment allowed: collapse every aligned span, generated
                // here rather than listed (their number is the region's
                // size over 2 MiB).
                let mut pos = page.checked_align_up(start).unwrap_or(usize::MAX);
                while pos.saturating_add(page.bytes()) <= start + size {
                    self.collapse_span(pos, page, &mut flush);
                    pos += page.bytes();
                }
            }
        }
        Ok(flush)
    }

    /// Collapses the span of `page` bytes at `g` into one leaf (a 1 GiB span
    /// through its 2 MiB spans first) where the table allows.
    fn collapse_span(&mut self, g: usize, page: PageSize, flush: &mut TlbFlush) {
        if page == PageSize::Size1G {
            let mut sub = g;
            while sub < g + page.bytes() {
                if let Ok(c) = self.table.collapse(sub.into(), PageSize::Size2M) {
                    flush.merge(c.flush);
                }
                sub += PageSize::Size2M.bytes();
            }
        }
        if let Ok(c) = self.table.collapse(g.into(), page) {
            flush.merge(c.flush);
        }
    }

    /// Marks every page of `[gpa, gpa + len)` dirty where its region is
    /// logging: after a host write has copied its bytes (see `DirtyLog`).
    pub(crate) fn mark_host_write(&self, gpa: usize, len: usize) {
        // An empty write marks nothing (and may name any address).
        if len == 0 {
            return;
        }
        let end = gpa.saturating_add(len);
        let mut page = gpa & !(PAGE - 1);
        while page < end {
            let Some(region) = self.region_at(page) else {
                match page.checked_add(PAGE) {
                    Some(next) => page = next,
                    None => return,
                }
                continue;
            };
            let stop = region.end().min(end);
            if let Some(log) = region.dirty.as_ref() {
                while page < stop {
                    log.mark((page - region.start) / PAGE);
                    page += PAGE;
                }
            }
            page = page.max(stop.next_multiple_of(PAGE));
        }
    }
}
