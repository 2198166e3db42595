//! [`GuestAddrSpace`]: regions over one nested table.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, MapPolicy, NestedPageTable, TableStats, TlbFlush};

use crate::dirty::allow_not_mapped;
use crate::error::{AspaceError, AspaceResult};
use crate::region::{Backing, Chunk, Region, RegionInfo, RegionKind, RegionMap};
use crate::stats::{Counters, SpaceStats};

const PAGE: usize = PageSize::Size4K.bytes();

/// What a GPA resolves to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpaInfo {
    /// The host address (offset included).
    pub hpa: HostPhysAddr,
    /// The leaf's flags.
    pub flags: MappingFlags,
    /// The size of the leaf mapping it.
    pub page_size: PageSize,
    /// The kind of region it lies in.
    pub kind: RegionKind,
}

/// A piece of host memory backing part of a guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostChunk {
    /// First guest address of the piece.
    pub gpa: GuestPhysAddr,
    /// Host address it maps to.
    pub hpa: HostPhysAddr,
    /// Length in bytes.
    pub len: usize,
}

/// One VM's guest-physical address space: a nested table of format `F` on
/// allocator `A`, and a sorted, non-overlapping set of regions inside a
/// window.
///
/// ```
/// use guest_aspace::{FaultOutcome, GuestAddrSpace, Access};
/// use npt_table::HostFrameAllocator;
/// use npt_entry::ept::Ept4;
/// use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, MappingFlags};
///
/// let alloc = HostFrameAllocator::new();
/// let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 32);
/// let mut vm = GuestAddrSpace::<Ept4, _>::new(&alloc, window).unwrap();
/// let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
/// vm.add_ram(GuestPhysAddr::from(0x8000_0000), 4 << 20, rwx, false).unwrap().ignore();
/// vm.add_mmio(GuestPhysAddr::from(0x0900_0000), 0x1000, None).unwrap().ignore();
/// vm.write_u32(GuestPhysAddr::from(0x8000_0ffe), 0xdead_beef).unwrap();
/// assert_eq!(vm.read_u32(GuestPhysAddr::from(0x8000_0ffe)).unwrap(), 0xdead_beef);
/// let out = vm.handle_fault(GuestPhysAddr::from(0x0900_0004), Access::Write).unwrap();
/// assert!(matches!(out, FaultOutcome::Mmio { .. }));
/// drop(vm);
/// assert_eq!(alloc.live_frames(), 0);
/// ```
pub struct GuestAddrSpace<F: NptFormat, A: FrameAllocator> {
    pub(crate) table: NestedPageTable<F, A>,
    pub(crate) window: (usize, usize),
    pub(crate) regions: RegionMap,
    /// Owned huge chunks and allocated identical regions by host address:
    /// (guest address, length). Single 4 KiB frames have no entry (see
    /// [`GuestAddrSpace::hpa_to_gpa`]).
    pub(crate) reverse: BTreeMap<usize, (usize, usize)>,
    /// Faults handled and lazy pages filled ([`GuestAddrSpace::stats`]).
    pub(crate) counters: Counters,
    /// The largest frame (and leaf) eager RAM added from now on may use.
    pub(crate) ram_page_limit: PageSize,
}

impl<F: NptFormat, A: FrameAllocator> core::fmt::Debug for GuestAddrSpace<F, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        struct Hex(usize, usize);
        impl core::fmt::Debug for Hex {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{:#x}..{:#x}", self.0, self.1)
            }
        }
        struct Regions<'a>(&'a RegionMap);
        impl core::fmt::Debug for Regions<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_map()
                    .entries(
                        self.0
                            .iter()
                            .map(|r| (Hex(r.start, r.end()), r.backing.kind())),
                    )
                    .finish()
            }
        }
        f.debug_struct("GuestAddrSpace")
            .field("format", &F::NAME)
            .field("window", &Hex(self.window.0, self.window.1))
            .field("root", &format_args!("{:#x}", self.root_hpa().as_usize()))
            .field("regions", &Regions(&self.regions))
            .field("table", &self.table.stats())
            .field("faults", &self.counters.snapshot())
            .finish()
    }
}

impl<F: NptFormat, A: FrameAllocator> GuestAddrSpace<F, A> {
    /// An empty space over `window` (4 KiB aligned, inside the format's GPA
    /// width).
    pub fn new(alloc: A, window: GuestPhysAddrRange) -> AspaceResult<Self> {
        let (start, end) = (window.start.as_usize(), window.end.as_usize());
        check_span(start, end.saturating_sub(start))?;
        if end as u64 > F::GPA_LIMIT {
            return Err(AspaceError::OutsideWindow {
                gpa: window.start,
                len: end - start,
            });
        }
        Ok(Self {
            table: NestedPageTable::new(alloc)?,
            window: (start, end),
            regions: RegionMap::default(),
            reverse: BTreeMap::new(),
            counters: Counters::default(),
            ram_page_limit: PageSize::Size1G,
        })
    }

    /// The nested table (for its root HPA and statistics).
    pub fn table(&self) -> &NestedPageTable<F, A> {
        &self.table
    }

    /// Host-physical address of the nested table's root.
    pub fn root_hpa(&self) -> HostPhysAddr {
        self.table.root_hpa()
    }

    /// Table statistics.
    pub fn table_stats(&self) -> TableStats {
        self.table.stats()
    }

    /// A snapshot of the space: table statistics, regions and the fault
    /// and populate counters. `Display` prints it in a few lines.
    pub fn stats(&self) -> SpaceStats {
        let (mut region_bytes, mut populated_bytes) = (0u128, 0u128);
        for r in self.regions() {
            region_bytes += r.range.size() as u128;
            populated_bytes += r.populated as u128;
        }
        SpaceStats {
            table: self.table.stats(),
            regions: self.regions.len(),
            region_bytes,
            populated_bytes,
            faults: self.counters.snapshot(),
        }
    }

    /// The guest-physical window.
    pub fn window(&self) -> GuestPhysAddrRange {
        GuestPhysAddrRange::new(self.window.0.into(), self.window.1.into())
    }

    /// Every region, in GPA order.
    pub fn regions(&self) -> impl Iterator<Item = RegionInfo> + '_ {
        self.regions.iter().map(|r| self.info(r))
    }

    /// The public view of `region`.
    fn info(&self, region: &Region) -> RegionInfo {
        let populated = if region.is_lazy() {
            let mut bytes = 0;
            let _ = self
                .table
                .for_each_mapping(region.start.into(), region.size, |run| bytes += run.len);
            bytes
        } else if region.backing.is_owned() {
            region.size
        } else {
            0
        };
        RegionInfo {
            range: GuestPhysAddrRange::from_start_size(region.start.into(), region.size),
            flags: region.flags,
            backing: region.backing,
            populated,
            dirty_logging: region.dirty.is_some(),
        }
    }
}

/// Checks a guest range given by its start and length: non-empty, both
/// 4 KiB aligned, not wrapping past the end of the address space. Returns
/// the end. The one range check of the space: each caller adds what its
/// operation needs (inside the window and free, covered by regions, inside
/// the format's GPA width).
pub(crate) fn check_span(start: usize, len: usize) -> AspaceResult<usize> {
    if len == 0 {
        return Err(AspaceError::ZeroSize);
    }
    for value in [start, len] {
        if value % PAGE != 0 {
            return Err(AspaceError::NotAligned { value, align: PAGE });
        }
    }
    start.checked_add(len).ok_or(AspaceError::OutsideWindow {
        gpa: GuestPhysAddr::from_usize(start),
        len,
    })
}

impl<F: NptFormat, A: FrameAllocator> GuestAddrSpace<F, A> {
    #[inline]
    pub(crate) fn region_at(&self, gpa: usize) -> Option<&Region> {
        self.regions.at(gpa)
    }

    pub(crate) fn region_at_mut(&mut self, gpa: usize) -> Option<&mut Region> {
        self.regions.at_mut(gpa)
    }

    /// The region containing `gpa`.
    pub fn find_region(&self, gpa: GuestPhysAddr) -> Option<RegionInfo> {
        self.region_at(gpa.as_usize()).map(|r| self.info(r))
    }

    /// Whether a region contains `gpa`.
    pub fn contains(&self, gpa: GuestPhysAddr) -> bool {
        self.region_at(gpa.as_usize()).is_some()
    }

    /// Whether regions cover all of `[gpa, gpa + len)` (possibly several
    /// adjacent ones). An empty range is covered wherever it is.
    pub fn contains_range(&self, gpa: GuestPhysAddr, len: usize) -> bool {
        let Some(end) = gpa.as_usize().checked_add(len) else {
            return false;
        };
        let mut pos = gpa.as_usize();
        while pos < end {
            match self.region_at(pos) {
                Some(r) => pos = r.end(),
                None => return false,
            }
        }
        true
    }

    /// Checks a new region's range: size, alignment, window, overlap.
    pub(crate) fn check_free(&self, gpa: usize, size: usize) -> AspaceResult<usize> {
        let end = check_span(gpa, size)?;
        if gpa < self.window.0 || end > self.window.1 {
            return Err(AspaceError::OutsideWindow {
                gpa: gpa.into(),
                len: size,
            });
        }
        if let Some(r) = self.regions.last_below(end) {
            if r.end() > gpa {
                return Err(AspaceError::Overlap {
                    gpa: gpa.into(),
                    existing: r.start.into(),
                });
            }
        }
        Ok(end)
    }

    fn insert(
        &mut self,
        start: usize,
        size: usize,
        flags: MappingFlags,
        backing: Backing,
    ) -> &mut Region {
        debug!(
            "guest-aspace: region [{:#x}, {:#x}) added: {} ({}) {}",
            start,
            start.saturating_add(size),
            backing.kind(),
            backing,
            crate::stats::Rights(flags)
        );
        let region = Region {
            start,
            size,
            flags,
            backing,
            huge: BTreeMap::new(),
            dirty: None,
        };
        self.regions.insert(region)
    }

    // ---- adding regions ----

    /// Adds RAM the space allocates and owns (`MAP_ALLOC`). Eager RAM is
    /// populated now, with 1 GiB/2 MiB frames and leaves where the GPA
    /// alignment, the format and the allocator allow; lazy RAM on faults.
    /// Frames are zeroed before the guest can see them.
    pub fn add_ram(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        flags: MappingFlags,
        lazy: bool,
    ) -> AspaceResult<TlbFlush> {
        self.add_owned(gpa.as_usize(), size, flags, Backing::Alloc { lazy })
    }

    /// Adds read-only memory the space owns (firmware): readable, and
    /// executable if asked. Load it with [`GuestAddrSpace::load_image`];
    /// guest writes fault and [`GuestAddrSpace::handle_fault`] reports them
    /// as violations.
    pub fn add_rom(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        executable: bool,
    ) -> AspaceResult<TlbFlush> {
        let mut flags = MappingFlags::READ;
        if executable {
            flags |= MappingFlags::EXECUTE;
        }
        self.add_owned(gpa.as_usize(), size, flags, Backing::Rom)
    }

    pub(crate) fn add_owned(
        &mut self,
        gpa: usize,
        size: usize,
        flags: MappingFlags,
        backing: Backing,
    ) -> AspaceResult<TlbFlush> {
        self.check_free(gpa, size)?;
        npt_entry::check_flags(flags).map_err(|e| AspaceError::Table(e.into()))?;
        self.regions.reserve(1)?;
        let lazy = matches!(backing, Backing::Alloc { lazy: true });
        let chunks = if lazy {
            Vec::new()
        } else {
            self.alloc_chunks(gpa, size)?
        };
        let flush = self.map_owned(gpa, &chunks, flags)?;
        // Huge chunks are recorded; single frames only by their leaves.
        let mut huge = BTreeMap::new();
        let mut pos = gpa;
        for &(hpa, page) in &chunks {
            if page.is_huge() {
                huge.insert(pos, Chunk { hpa, size: page });
                self.reverse.insert(hpa.as_usize(), (pos, page.bytes()));
            }
            pos += page.bytes();
        }
        self.insert(gpa, size, flags, backing).huge = huge;
        Ok(flush)
    }

    /// Maps owned chunks back to back from `gpa` in one all-or-nothing
    /// step; frees them on failure.
    fn map_owned(
        &mut self,
        gpa: usize,
        chunks: &[(HostPhysAddr, PageSize)],
        flags: MappingFlags,
    ) -> AspaceResult<TlbFlush> {
        if chunks.is_empty() {
            return Ok(TlbFlush::none());
        }
        match self.table.map_chunks(gpa.into(), chunks, flags) {
            Ok(flush) => Ok(flush),
            Err(e) => {
                self.free_chunks(chunks);
                Err(e.into())
            }
        }
    }

    /// Limits the frames (and so the leaves) of owned RAM and ROM added from
    /// now on to `max`: `PageSize::Size4K` backs it with 4 KiB frames only,
    /// for RAM that will later be removed or protected at 4 KiB
    /// granularity (an owned huge frame cannot be cut: `CutsBacking`).
    /// Regions already added keep their backing. The default allows 1 GiB.
    ///
    /// ```
    /// # use guest_aspace::GuestAddrSpace;
    /// # use npt_table::HostFrameAllocator;
    /// # use npt_entry::ept::Ept4;
    /// # use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, MappingFlags, PageSize};
    /// let alloc = HostFrameAllocator::new();
    /// let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 32);
    /// let mut vm = GuestAddrSpace::<Ept4, _>::new(&alloc, window).unwrap();
    /// vm.set_ram_page_limit(PageSize::Size4K);
    /// let rw = MappingFlags::READ | MappingFlags::WRITE;
    /// vm.add_ram(GuestPhysAddr::from(0x4000_0000), 4 << 20, rw, false).unwrap().ignore();
    /// assert_eq!(vm.table_stats().leaves_of(PageSize::Size2M), 0);
    /// // Cutting a 4 KiB page out of it works.
    /// let f = vm.remove_range(GuestPhysAddr::from(0x4010_0000), 0x1000).unwrap();
    /// vm.complete(f);
    /// ```
    pub fn set_ram_page_limit(&mut self, max: PageSize) {
        self.ram_page_limit = max;
    }

    /// The largest frame owned RAM added from now on may use.
    pub fn ram_page_limit(&self) -> PageSize {
        self.ram_page_limit
    }

    /// Allocates zeroed backing for `[gpa, gpa + size)`, largest frames
    /// first, as chunks laid out back to back from `gpa`. All or nothing.
    fn alloc_chunks(&self, gpa: usize, size: usize) -> AspaceResult<Vec<(HostPhysAddr, PageSize)>> {
        let alloc = self.table.allocator();
        let mut chunks: Vec<(HostPhysAddr, PageSize)> = Vec::new();
        let mut can = [true; 2]; // 1 GiB, 2 MiB still worth trying
        let mut pos = gpa;
        let end = gpa + size;
        while pos < end {
            let mut got = None;
            for (i, page) in [PageSize::Size1G, PageSize::Size2M].into_iter().enumerate() {
                if can[i]
                    && page <= F::MAX_LEAF
                    && page <= self.ram_page_limit
                    && F::level_of(page).is_some()
                    && page.is_aligned(pos)
                    && end - pos >= page.bytes()
                {
                    match alloc.alloc_frames(page.bytes() / PAGE, page.bytes()) {
                        Some(hpa) => {
                            got = Some(Chunk { hpa, size: page });
                            break;
                        }
                        None => can[i] = false,
                    }
                }
            }
            let chunk = match got {
                Some(c) => c,
                None => match alloc.alloc_frame() {
                    Some(hpa) => Chunk {
                        hpa,
                        size: PageSize::Size4K,
                    },
                    None => {
                        self.free_chunks(&chunks);
                        return Err(AspaceError::NoMemory);
                    }
                },
            };
            chunks.push((chunk.hpa, chunk.size));
            pos += chunk.size.bytes();
        }
        // Eager backing is zeroed long before the guest touches it: bypass
        // the cache (see `zero.rs`). After every allocation, not between
        // them: an allocator's lock (a locked instruction on x86) would wait
        // for the streamed stores of the previous frame to drain.
        for &(hpa, size) in &chunks {
            crate::zero::stream_frames(alloc, hpa, size.bytes());
        }
        crate::zero::fence();
        Ok(chunks)
    }

    fn free_chunks(&self, chunks: &[(HostPhysAddr, PageSize)]) {
        let alloc = self.table.allocator();
        for &(hpa, size) in chunks {
            alloc.dealloc_frames(hpa, size.bytes() / PAGE);
        }
    }

    /// Calls `f(hpa, frames)` for every allocation of owned backing in
    /// `[lo, hi)` of `region`, a range that does not cut a huge chunk or an
    /// allocated identical region: the huge chunks, then the single frames
    /// found in the table's leaves.
    fn for_each_owned(
        &self,
        region: &Region,
        lo: usize,
        hi: usize,
        mut f: impl FnMut(HostPhysAddr, usize),
    ) {
        match region.backing {
            Backing::AllocIdentical => return f(region.start.into(), region.size / PAGE),
            Backing::Alloc { .. } | Backing::Rom => {}
            _ => return,
        }
        for c in region.huge.range(lo..hi).map(|(_, c)| c) {
            f(c.hpa, c.size.bytes() / PAGE);
        }
        // Regions lie inside the window, so the walk cannot fail.
        let _ = self.table.for_each_mapping(lo.into(), hi - lo, |run| {
            let (start, end) = (run.gpa.as_usize(), run.gpa.as_usize() + run.len);
            let mut pos = start;
            while pos < end {
                if let Some((s, c)) = region.huge_at(pos) {
                    pos = s + c.size.bytes();
                    continue;
                }
                let stop = region.huge.range(pos..end).next().map_or(end, |(s, _)| *s);
                for page in (pos..stop).step_by(PAGE) {
                    f(run.hpa + (page - start), 1);
                }
                pos = stop;
            }
        });
    }

    /// Adds a pass-through region with GPA == HPA (`MAP_IDENTICAL` of
    /// existing host memory, `MAP_RESERVED`). The space does not own or free
    /// the frames and does not access them from the host.
    pub fn add_identical(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        flags: MappingFlags,
    ) -> AspaceResult<TlbFlush> {
        self.add_passthrough(
            gpa.as_usize(),
            HostPhysAddr::from_usize(gpa.as_usize()),
            size,
            flags,
            Backing::Identical,
        )
    }

    /// Adds a pass-through region mapping `gpa + x` to `hpa + x` (shared
    /// memory); not owned.
    pub fn add_linear(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: usize,
        flags: MappingFlags,
    ) -> AspaceResult<TlbFlush> {
        self.add_passthrough(gpa.as_usize(), hpa, size, flags, Backing::Linear { hpa })
    }

    /// Adds device space: unmapped (`passthrough: None`), so accesses exit and
    /// [`GuestAddrSpace::handle_fault`] reports them as MMIO; or mapped
    /// read/write to a host device range with the device memory type.
    pub fn add_mmio(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        passthrough: Option<HostPhysAddr>,
    ) -> AspaceResult<TlbFlush> {
        let flags = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::DEVICE;
        self.add_mmio_with_flags(gpa, size, flags, passthrough)
    }

    /// [`GuestAddrSpace::add_mmio`] with the guest's rights given: `flags`
    /// must grant some access and not write without read
    /// ([`AspaceError::Table`] with `BadFlags` otherwise); `DEVICE` is
    /// added. For emulated space (`passthrough: None`) a data access the
    /// flags forbid (a write to a read-only device) is reported by
    /// [`GuestAddrSpace::handle_fault`] as a violation, not as MMIO; an
    /// instruction fetch is reported as MMIO whatever the flags.
    pub fn add_mmio_with_flags(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        flags: MappingFlags,
        passthrough: Option<HostPhysAddr>,
    ) -> AspaceResult<TlbFlush> {
        let flags = flags | MappingFlags::DEVICE;
        match passthrough {
            Some(hpa) => self.add_passthrough(
                gpa.as_usize(),
                hpa,
                size,
                flags,
                Backing::Mmio { passthrough },
            ),
            None => {
                self.check_free(gpa.as_usize(), size)?;
                npt_entry::check_flags(flags).map_err(|e| AspaceError::Table(e.into()))?;
                self.regions.reserve(1)?;
                self.insert(
                    gpa.as_usize(),
                    size,
                    flags,
                    Backing::Mmio { passthrough: None },
                );
                Ok(TlbFlush::none())
            }
        }
    }

    fn add_passthrough(
        &mut self,
        gpa: usize,
        hpa: HostPhysAddr,
        size: usize,
        flags: MappingFlags,
        backing: Backing,
    ) -> AspaceResult<TlbFlush> {
        self.check_free(gpa, size)?;
        self.regions.reserve(1)?;
        let flush = self
            .table
            .map_region(gpa.into(), hpa, size, flags, MapPolicy::Huge)?;
        self.insert(gpa, size, flags, backing);
        Ok(flush)
    }

    /// Allocates `size` bytes of contiguous host memory and places it at
    /// GPA == its HPA (AxVisor's `MAP_IDENTICAL`); the space owns it. The
    /// frames are aligned to 1 GiB or 2 MiB when `size` allows, for large
    /// leaves.
    /// Returns the GPA chosen.
    pub fn add_identical_alloc(
        &mut self,
        size: usize,
        flags: MappingFlags,
    ) -> AspaceResult<(GuestPhysAddr, TlbFlush)> {
        // The size alone: the placement comes from the allocator and is
        // checked against the window and the regions below.
        check_span(0, size)?;
        npt_entry::check_flags(flags).map_err(|e| AspaceError::Table(e.into()))?;
        let align = [PageSize::Size1G, PageSize::Size2M]
            .into_iter()
            .find(|p| size >= p.bytes() && *p <= F::MAX_LEAF && F::level_of(*p).is_some())
            .map_or(PAGE, PageSize::bytes);
        self.regions.reserve(1)?;
        let alloc = self.table.allocator();
        let hpa = alloc
            .alloc_frames(size / PAGE, align)
            .ok_or(AspaceError::NoMemory)?;
        let free = |s: &Self| s.table.allocator().dealloc_frames(hpa, size / PAGE);
        let gpa = hpa.as_usize();
        if let Err(e) = self.check_free(gpa, size) {
            free(self);
            return Err(e);
        }
        // Zeroed only once the placement is known to fit.
        let alloc = self.table.allocator();
        crate::zero::stream_frames(alloc, hpa, size);
        crate::zero::fence();
        let flush = match self
            .table
            .map_region(gpa.into(), hpa, size, flags, MapPolicy::Huge)
        {
            Ok(f) => f,
            Err(e) => {
                free(self);
                return Err(e.into());
            }
        };
        // One allocation, freed as one when the region goes: no chunks.
        self.insert(gpa, size, flags, Backing::AllocIdentical);
        self.reverse.insert(gpa, (gpa, size));
        Ok((GuestPhysAddr::from_usize(gpa), flush))
    }

    // ---- removing regions ----

    /// Removes `[gpa, gpa + len)` from the regions covering it: unmaps it,
    /// frees owned backing inside it, and splits a region the range cuts in
    /// two. Every byte must be covered by regions. Owned regions can only be
    /// cut at boundaries of their backing frames ([`AspaceError::CutsBacking`]).
    ///
    /// Owned frames and emptied table frames are parked in the table until
    /// the caller completes the returned record
    /// ([`GuestAddrSpace::complete`]) after flushing what it names: vCPUs
    /// may keep running, and nothing they still cache can reach a frame
    /// handed to another owner.
    pub fn remove_range(&mut self, gpa: GuestPhysAddr, len: usize) -> AspaceResult<TlbFlush> {
        let result = self.remove_range_inner(gpa, len);
        match &result {
            Ok(flush) => debug!(
                "guest-aspace: removed [{:#x}, {:#x}); flush {flush}",
                gpa.as_usize(),
                gpa.as_usize().saturating_add(len)
            ),
            Err(e) => debug!(
                "guest-aspace: remove [{:#x}, +{len:#x}) refused: {e}",
                gpa.as_usize()
            ),
        }
        result
    }

    /// Checks a range that an operation will cut out of the regions
    /// covering it (removal, a change of rights): non-empty, 4 KiB aligned,
    /// covered by regions throughout, and not cutting owned backing (a huge
    /// frame or allocated identical memory). Returns the end.
    pub(crate) fn check_cut(&self, gpa: GuestPhysAddr, len: usize) -> AspaceResult<usize> {
        let start = gpa.as_usize();
        let end = check_span(start, len)?;
        if !self.contains_range(gpa, len) {
            let mut pos = start;
            while let Some(r) = self.region_at(pos) {
                pos = r.end();
            }
            return Err(AspaceError::NoRegion { gpa: pos.into() });
        }
        for edge in [start, end] {
            if let Some(r) = self.region_at(edge) {
                let inside_alloc = r.backing == Backing::AllocIdentical && edge != r.start;
                let inside_chunk = r.huge_at(edge).is_some_and(|(cs, _)| cs != edge);
                if inside_alloc || inside_chunk {
                    return Err(AspaceError::CutsBacking { gpa: edge.into() });
                }
            }
        }
        Ok(end)
    }

    fn remove_range_inner(&mut self, gpa: GuestPhysAddr, len: usize) -> AspaceResult<TlbFlush> {
        let start = gpa.as_usize();
        let end = self.check_cut(gpa, len)?;
        let starts: Vec<usize> = self
            .regions
            .overlapping(start, end)
            .map(|r| r.start)
            .collect();
        // Owned backing inside the range, read off while the table still
        // maps it.
        let owned = self.collect_owned(starts.iter().map(|&s| (s, start, end)))?;
        // Dirty logs of the pieces a cut leaves on either side (only the
        // regions holding `start` and `end - 1` can leave one), allocated
        // before anything changes.
        let mut left_log = match self.region_at(start) {
            Some(r) if r.start < start => r
                .dirty
                .as_ref()
                .map(|d| d.slice(0, (start - r.start) / PAGE))
                .transpose()?,
            _ => None,
        };
        let mut right_log = match self.region_at(end - 1) {
            Some(r) if end < r.end() => r
                .dirty
                .as_ref()
                .map(|d| d.slice((end - r.start) / PAGE, (r.end() - end) / PAGE))
                .transpose()?,
            _ => None,
        };
        // Room for the one region a cut inside a region adds.
        self.regions.reserve(1)?;
        // Unmap (the only step that can fail: splitting huge leaves of
        // pass-through regions needs frames).
        let mut flush = self.unmap_parking(gpa, len, owned.len())?;
        // Then update the bookkeeping, which cannot fail.
        for s in starts {
            let Some(region) = self.regions.remove(s) else {
                continue;
            };
            // The pieces' logs were sliced above.
            let (lo, hi) = (start.max(region.start), end.min(region.end()));
            if region.backing == Backing::AllocIdentical {
                self.reverse.remove(&region.start);
                continue;
            }
            for c in region.huge.range(lo..hi).map(|(_, c)| c) {
                self.reverse.remove(&c.hpa.as_usize());
            }
            if region.start < lo {
                let mut left = region.piece();
                left.size = lo - region.start;
                left.huge = region.huge.range(..lo).map(|(g, c)| (*g, *c)).collect();
                left.dirty = left_log.take();
                self.regions.insert(left);
            }
            if hi < region.end() {
                let mut right = region.piece();
                right.start = hi;
                right.size = region.end() - hi;
                right.huge = region.huge.range(hi..).map(|(g, c)| (*g, *c)).collect();
                if let Backing::Linear { hpa } = region.backing {
                    right.backing = Backing::Linear {
                        hpa: hpa + (hi - region.start),
                    };
                }
                if let Backing::Mmio {
                    passthrough: Some(hpa),
                } = region.backing
                {
                    right.backing = Backing::Mmio {
                        passthrough: Some(hpa + (hi - region.start)),
                    };
                }
                right.dirty = right_log.take();
                self.regions.insert(right);
            }
        }
        self.park_owned(&owned, &mut flush);
        Ok(flush)
    }

    /// Removes every region, releases all owned backing, and leaves an
    /// empty table. As for [`GuestAddrSpace::remove_range`], the frames are
    /// parked until the returned record is completed.
    pub fn clear(&mut self) -> AspaceResult<TlbFlush> {
        let (start, end) = self.window;
        let owned = self.collect_owned(self.regions.iter().map(|r| (r.start, start, end)))?;
        let mut flush = self.unmap_parking(start.into(), end - start, owned.len())?;
        self.regions.clear();
        self.reverse.clear();
        self.park_owned(&owned, &mut flush);
        debug!("guest-aspace: cleared every region; flush {flush}");
        Ok(flush)
    }

    /// States that the caller has carried out `flush` (a record this space
    /// returned) on every CPU that may cache the VM's translations, and
    /// releases the frames parked under it: table frames and owned guest
    /// frames that removals unlinked. Returns how many 4 KiB frames went
    /// back to the allocator. See [`NestedPageTable::complete`].
    pub fn complete(&mut self, flush: TlbFlush) -> usize {
        trace!("guest-aspace: flush completed: {flush}");
        self.table.complete(flush)
    }

    /// States that a flush of every translation of the VM ran on every CPU
    /// after the last change, and releases every parked frame. See
    /// [`NestedPageTable::complete_all`].
    pub fn complete_all(&mut self) -> usize {
        self.table.complete_all()
    }

    /// Frames unlinked by removals and waiting for their flush to be
    /// completed.
    pub fn parked_frames(&self) -> usize {
        self.table.parked_frames()
    }

    /// Owned allocations (host address, frames) in the parts of regions
    /// given as `(region start, lo, hi)` that `[lo, hi)` covers. Fallible:
    /// the list's size follows the caller's range.
    fn collect_owned(
        &self,
        parts: impl Iterator<Item = (usize, usize, usize)>,
    ) -> AspaceResult<Vec<(HostPhysAddr, usize)>> {
        // One pass over the leaves; growth is fallible (`try_reserve`
        // grows amortized), and a failure stops the collection.
        let mut owned = Vec::new();
        let mut failed = false;
        for (s, lo, hi) in parts {
            if let Some(r) = self.regions.get(s) {
                let (lo, hi) = (lo.max(r.start), hi.min(r.end()));
                self.for_each_owned(r, lo, hi, |hpa, frames| {
                    if !failed && owned.try_reserve(1).is_ok() {
                        owned.push((hpa, frames));
                    } else {
                        failed = true;
                    }
                });
            }
            if failed {
                return Err(AspaceError::NoMemory);
            }
        }
        Ok(owned)
    }

    /// Unmaps `[gpa, gpa + len)` after reserving room to park `owned`
    /// allocations with the table frames the unmap empties. All or nothing.
    fn unmap_parking(
        &mut self,
        gpa: GuestPhysAddr,
        len: usize,
        owned: usize,
    ) -> AspaceResult<TlbFlush> {
        self.table.reserve_parking(owned)?;
        allow_not_mapped(self.table.unmap_region(gpa, len))
    }

    /// Parks owned allocations under `flush` (room reserved by
    /// [`Self::unmap_parking`]).
    fn park_owned(&mut self, owned: &[(HostPhysAddr, usize)], flush: &mut TlbFlush) {
        for &(hpa, frames) in owned {
            let parked = self.table.park(flush, hpa, frames);
            debug_assert!(parked.is_ok(), "parking room reserved");
        }
    }

    // ---- translation ----

    /// The host address `gpa` maps to, if mapped.
    #[inline]
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        self.table.translate(gpa)
    }

    /// What `gpa` maps to, with the region kind.
    pub fn query(&self, gpa: GuestPhysAddr) -> AspaceResult<GpaInfo> {
        let region = self
            .region_at(gpa.as_usize())
            .ok_or(AspaceError::NoRegion { gpa })?;
        let t = self.table.query(gpa)?;
        Ok(GpaInfo {
            hpa: t.hpa,
            flags: t.flags,
            page_size: t.size,
            kind: region.backing.kind(),
        })
    }

    /// The host pieces backing `[gpa, gpa + len)`, merged where contiguous.
    /// Fails with [`AspaceError::NotRam`] at the first unmapped address.
    pub fn translate_range(&self, gpa: GuestPhysAddr, len: usize) -> AspaceResult<Vec<HostChunk>> {
        let mut out: Vec<HostChunk> = Vec::new();
        let end = gpa
            .as_usize()
            .checked_add(len)
            .ok_or(AspaceError::OutsideWindow { gpa, len })?;
        if len == 0 {
            return Ok(out);
        }
        let lo = gpa.as_usize() & !(PAGE - 1);
        let hi = end
            .checked_next_multiple_of(PAGE)
            .ok_or(AspaceError::OutsideWindow { gpa, len })?;
        let mut pos = gpa.as_usize();
        let runs = self
            .table
            .mappings(lo.into(), hi - lo)
            .map_err(|_| AspaceError::NotRam { gpa })?;
        for run in runs {
            let start = run.gpa.as_usize().max(pos);
            let stop = (run.gpa.as_usize() + run.len).min(end);
            if start > pos {
                return Err(AspaceError::NotRam { gpa: pos.into() });
            }
            if start >= stop {
                continue;
            }
            let hpa = run.hpa + (start - run.gpa.as_usize());
            match out.last_mut() {
                Some(last) if last.hpa.as_usize() + last.len == hpa.as_usize() => {
                    last.len += stop - start
                }
                _ => {
                    out.try_reserve(1).map_err(|_| AspaceError::NoMemory)?;
                    out.push(HostChunk {
                        gpa: start.into(),
                        hpa,
                        len: stop - start,
                    })
                }
            }
            pos = stop;
        }
        if pos < end {
            return Err(AspaceError::NotRam { gpa: pos.into() });
        }
        Ok(out)
    }

    /// The guest address that maps host address `hpa`: owned huge chunks
    /// and allocated identical memory, then pass-through regions (both by
    /// lookup), then RAM backed by single 4 KiB frames, by a walk of its
    /// leaves: the space keeps no per-page reverse index, which would cost
    /// every fault and every populated page a tree insert.
    pub fn hpa_to_gpa(&self, hpa: HostPhysAddr) -> Option<GuestPhysAddr> {
        let h = hpa.as_usize();
        if let Some((&start, &(gpa, len))) = self.reverse.range(..=h).next_back() {
            if h < start + len {
                let g = gpa + (h - start);
                // Lazy or removed pages are not mapped.
                return self
                    .table
                    .translate(g.into())
                    .filter(|t| *t == hpa)
                    .map(|_| g.into());
            }
        }
        let passthrough = self.regions.iter().find_map(|r| {
            let base = r.passthrough_hpa(r.start)?.as_usize();
            (h >= base && h < base + r.size)
                .then(|| GuestPhysAddr::from_usize(r.start + (h - base)))
        });
        if passthrough.is_some() {
            return passthrough;
        }
        let mut found = None;
        for r in self.regions.iter() {
            if !matches!(r.backing, Backing::Alloc { .. } | Backing::Rom) {
                continue;
            }
            let _ = self.table.for_each_mapping(r.start.into(), r.size, |run| {
                let base = run.hpa.as_usize();
                if found.is_none() && h >= base && h - base < run.len {
                    found = Some(GuestPhysAddr::from_usize(run.gpa.as_usize() + (h - base)));
                }
            });
            if found.is_some() {
                break;
            }
        }
        found
    }
}

impl<F: NptFormat, A: FrameAllocator> Drop for GuestAddrSpace<F, A> {
    fn drop(&mut self) {
        // Owned frames go back; the table frees its own frames after this.
        let alloc = self.table.allocator();
        for r in self.regions.iter() {
            self.for_each_owned(r, r.start, r.end(), |hpa, frames| {
                alloc.dealloc_frames(hpa, frames)
            });
        }
    }
}
