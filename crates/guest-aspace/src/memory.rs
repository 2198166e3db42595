//! Safe guest-memory access from the host side.
//!
//! Reads and writes go through the nested table to the host frames the
//! space owns, one leaf at a time, crossing page and region boundaries. An
//! access that reaches MMIO, unmapped space or pass-through memory the space
//! does not own fails before any byte is copied, naming the first failing
//! GPA. No reference into guest memory outlives the call.

use gpa_types::{GuestPhysAddr, PageSize};
use npt_entry::NptFormat;
use npt_table::FrameAllocator;

use crate::error::{AspaceError, AspaceResult};
use crate::pod::Pod;
use crate::region::Backing;
use crate::space::GuestAddrSpace;

const PAGE: usize = PageSize::Size4K.bytes();

/// How a host access treats a region.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Read,
    Write,
    /// Host image loading: ROM is writable too.
    Load,
}

impl<F: NptFormat, A: FrameAllocator> GuestAddrSpace<F, A> {
    /// Checks that every byte of `[gpa, gpa + len)` is host-accessible for
    /// `purpose`; returns the start of each lazy page not yet populated
    /// through `missing`, and whether any region the range touches logs
    /// dirty pages (which cannot change before the access ends: starting
    /// or stopping a log takes the space exclusively).
    fn check_access(
        &self,
        gpa: usize,
        len: usize,
        purpose: Purpose,
        mut missing: impl FnMut(usize),
    ) -> AspaceResult<bool> {
        let end = gpa
            .checked_add(len)
            .ok_or(AspaceError::NotRam { gpa: gpa.into() })?;
        let mut pos = gpa;
        let mut logged = false;
        while pos < end {
            let region = self
                .region_at(pos)
                .ok_or(AspaceError::NotRam { gpa: pos.into() })?;
            logged |= region.dirty.is_some();
            let ok = match region.backing {
                Backing::Alloc { .. } | Backing::AllocIdentical => true,
                Backing::Rom => purpose != Purpose::Write,
                _ => false,
            };
            if !ok {
                return Err(AspaceError::NotRam { gpa: pos.into() });
            }
            let region_end = region.end().min(end);
            if region.is_lazy() {
                // The pages of the lazy part not covered by a leaf.
                let lo = pos & !(PAGE - 1);
                let hi = region_end.next_multiple_of(PAGE);
                self.holes(lo, hi, &mut missing);
            }
            pos = region_end;
        }
        Ok(logged)
    }

    /// Calls `f` for every 4 KiB page of `[lo, hi)` (page aligned, inside
    /// the window) that no leaf maps, in one pass over the leaves.
    fn holes(&self, lo: usize, hi: usize, mut f: impl FnMut(usize)) {
        let mut pos = lo;
        if let Ok(runs) = self.table.mappings(lo.into(), hi - lo) {
            for run in runs {
                (pos..run.gpa.as_usize()).step_by(PAGE).for_each(&mut f);
                pos = run.gpa.as_usize() + run.len;
            }
        }
        (pos..hi).step_by(PAGE).for_each(f);
    }

    /// Copies between guest memory and `buf` leaf by leaf: `f(offset,
    /// host, n)` for each piece, `host` `None` for an unpopulated lazy page
    /// (reads give zeros). The range has been checked.
    ///
    /// Each leaf is one lean point walk (`translate_leaf`), not a step of
    /// the run-merging `mappings` iterator: a copy needs only the host
    /// address and the extent of each leaf, and the iterator's path
    /// bookkeeping and flag decoding cost more than the walks they save
    /// (the `guest_copy_4k` group of `benches/aspace.rs`, in the README).
    fn copy(&self, gpa: usize, len: usize, mut f: impl FnMut(usize, Option<*mut u8>, usize)) {
        let alloc = self.table.allocator();
        let end = gpa.saturating_add(len);
        let mut pos = gpa;
        while pos < end {
            // One walk per leaf: a huge leaf is one step however much of it
            // the access covers. An unmapped page (lazy RAM not yet
            // populated) is one page of `None`.
            let (host, stop) = match self.table.translate_leaf(pos.into()) {
                Some((hpa, size)) => {
                    let stop = (size.align_down(pos) + size.bytes()).min(end);
                    (Some(alloc.phys_to_virt(hpa)), stop)
                }
                None => (None, ((pos & !(PAGE - 1)) + PAGE).min(end)),
            };
            f(pos - gpa, host, stop - pos);
            pos = stop;
        }
    }

    /// Reads `buf.len()` bytes at `gpa`.
    pub fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> AspaceResult<()> {
        self.check_access(gpa.as_usize(), buf.len(), Purpose::Read, |_| {})?;
        let len = buf.len();
        let dst = buf.as_mut_ptr();
        self.copy(gpa.as_usize(), len, |off, src, n| match src {
            // SAFETY: `src` points into a frame this space owns (checked
            // above), valid for `n` bytes up to the end of its leaf per the
            // allocator contract; `dst + off .. + n` lies inside `buf`.
            // Guest memory and `buf` never overlap.
            Some(src) => unsafe { core::ptr::copy_nonoverlapping(src, dst.add(off), n) },
            // SAFETY: as above, inside `buf`.
            None => unsafe { core::ptr::write_bytes(dst.add(off), 0, n) },
        });
        Ok(())
    }

    /// Reads a plain-old-data value at `gpa` (any alignment; the value may
    /// span pages and regions of host-accessible RAM). The bytes are taken
    /// as they lie in guest memory, in the host's byte order (the
    /// `read_u32` family reads little-endian). The value is a copy: nothing
    /// refers into guest memory after the call.
    ///
    /// ```
    /// # use guest_aspace::GuestAddrSpace;
    /// # use npt_table::HostFrameAllocator;
    /// # use npt_entry::ept::Ept4;
    /// # use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, MappingFlags};
    /// # let alloc = HostFrameAllocator::new();
    /// # let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 32);
    /// # let mut space = GuestAddrSpace::<Ept4, _>::new(&alloc, window).unwrap();
    /// # space.add_ram(0x10_0000.into(), 0x2000, MappingFlags::READ | MappingFlags::WRITE, true).unwrap().ignore();
    /// // A descriptor straddling two pages.
    /// let at = GuestPhysAddr::from(0x10_0ffa);
    /// space.write_obj(at, &[0x1234u16, 0x5678, 0x9abc, 0xdef0])?;
    /// assert_eq!(space.read_obj::<[u16; 4]>(at)?, [0x1234, 0x5678, 0x9abc, 0xdef0]);
    /// # Ok::<(), guest_aspace::AspaceError>(())
    /// ```
    ///
    /// Types with padding or invalid bit patterns are not [`Pod`]:
    ///
    /// ```compile_fail
    /// # use guest_aspace::GuestAddrSpace;
    /// # use npt_table::HostFrameAllocator;
    /// # use npt_entry::ept::Ept4;
    /// # use gpa_types::GuestPhysAddrRange;
    /// # let alloc = HostFrameAllocator::new();
    /// # let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 32);
    /// # let space = GuestAddrSpace::<Ept4, _>::new(&alloc, window).unwrap();
    /// let flag: bool = space.read_obj(0x1000.into()).unwrap();
    /// ```
    pub fn read_obj<T: Pod>(&self, gpa: GuestPhysAddr) -> AspaceResult<T> {
        // SAFETY: the all-zero bit pattern is a valid `T` (`Pod`).
        let mut value: T = unsafe { core::mem::zeroed() };
        self.read(gpa, crate::pod::bytes_of_mut(&mut value))?;
        Ok(value)
    }

    /// Writes a plain-old-data value at `gpa`, as [`GuestAddrSpace::write`]
    /// writes its bytes (host byte order; lazy pages populated first;
    /// marked dirty while logging; not to ROM).
    pub fn write_obj<T: Pod>(&self, gpa: GuestPhysAddr, value: &T) -> AspaceResult<()> {
        self.write(gpa, crate::pod::bytes_of(value))
    }

    /// Writes `data` at `gpa` (not to ROM: see
    /// [`GuestAddrSpace::load_image`]). Lazy pages are populated first, so
    /// nothing is written unless everything can be.
    ///
    /// Takes `&self`: device threads write guest memory while vCPUs run and
    /// fault (through [`crate::SharedAddrSpace::write_bytes`]). A lazy page
    /// that a vCPU populates at the same time ends with one frame, and the
    /// bytes land in it; while dirty logging, the pages are marked after
    /// the bytes are copied. Writes to the same bytes from several threads
    /// at once race as they would on the guest's own memory: the bytes are
    /// some mix of the writers', and a read that overlaps them sees some
    /// mix of old and new. The copies are plain copies, as every access to
    /// memory a running guest shares must be; in Rust's memory model two
    /// host threads touching the same bytes at once, one of them writing,
    /// is a data race (Miri reports it), so callers order such accesses
    /// themselves, as a device model does through its queues. The space's
    /// own state (tables, frames, dirty log) is synchronized whatever the
    /// bytes do.
    pub fn write(&self, gpa: GuestPhysAddr, data: &[u8]) -> AspaceResult<()> {
        self.write_as(gpa, data, Purpose::Write)
    }

    /// Loads an image at `gpa` from the host side; ROM regions accept it.
    pub fn load_image(&self, gpa: GuestPhysAddr, image: &[u8]) -> AspaceResult<()> {
        self.write_as(gpa, image, Purpose::Load)
    }

    fn write_as(&self, gpa: GuestPhysAddr, data: &[u8], purpose: Purpose) -> AspaceResult<()> {
        // One entry per unpopulated page: the write's length (a caller's
        // choice) sizes the list, so a refused allocation is `NoMemory`
        // before anything is populated.
        let mut missing = alloc::vec::Vec::new();
        let mut refused = false;
        let logged = self.check_access(gpa.as_usize(), data.len(), purpose, |p| {
            if missing.try_reserve(1).is_ok() {
                missing.push(p);
            } else {
                refused = true;
            }
        })?;
        if refused {
            return Err(AspaceError::NoMemory);
        }
        for page in missing {
            // Populating is invisible to the guest (it would read zeros
            // either way), so pages populated before a failure may stay.
            self.populate_page(page, false)?.ignore();
        }
        let src = data.as_ptr();
        // Bytes first, marks after (see `DirtyLog`): a collector that takes
        // a mark sees the bytes it stands for.
        self.copy(gpa.as_usize(), data.len(), |off, dst, n| {
            if let Some(dst) = dst {
                // SAFETY: `dst` points into an owned frame (checked above),
                // valid for `n` bytes; `src + off .. + n` lies inside `data`.
                unsafe { core::ptr::copy_nonoverlapping(src.add(off), dst, n) }
            }
        });
        if logged {
            self.mark_host_write(gpa.as_usize(), data.len());
        }
        Ok(())
    }
}

macro_rules! le_accessors {
    ($($read:ident $write:ident $t:ty;)*) => {
        impl<F: NptFormat, A: FrameAllocator> GuestAddrSpace<F, A> {
            $(
                #[doc = concat!("Reads a little-endian `", stringify!($t), "` at `gpa`.")]
                pub fn $read(&self, gpa: GuestPhysAddr) -> AspaceResult<$t> {
                    let mut b = [0u8; core::mem::size_of::<$t>()];
                    self.read(gpa, &mut b)?;
                    Ok(<$t>::from_le_bytes(b))
                }

                #[doc = concat!("Writes a little-endian `", stringify!($t), "` at `gpa`.")]
                pub fn $write(&self, gpa: GuestPhysAddr, value: $t) -> AspaceResult<()> {
                    self.write(gpa, &value.to_le_bytes())
                }
            )*
        }
    };
}

le_accessors! {
    read_u8 write_u8 u8;
    read_u16 write_u16 u16;
    read_u32 write_u32 u32;
    read_u64 write_u64 u64;
}

impl<F: NptFormat, A: FrameAllocator> crate::gva::GuestPhysRead for GuestAddrSpace<F, A> {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64> {
        GuestAddrSpace::read_u64(self, gpa).ok()
    }
}
