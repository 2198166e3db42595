//! [`NestedPageTable`]: ownership, statistics, lookups and single-page
//! operations. Range operations live in `map.rs` and `range.rs`.

use alloc::vec::Vec;
use core::marker::PhantomData;

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::{EntryKind, GenericPTE, NestedEntry, NptFormat};

use crate::error::{NptError, NptResult};
use crate::flush::TlbFlush;
use crate::frames::{FRAME_SIZE, FrameAllocator};
use crate::raw::{TableRef, zero_frames};
use crate::retire::Retired;

/// A leaf found by a walk: where it is and what it maps.
pub(crate) struct LeafRef<E> {
    pub(crate) table: TableRef<E>,
    pub(crate) idx: usize,
    pub(crate) entry: E,
    pub(crate) size: PageSize,
}

/// The deepest walk any format has (EPT 5-level, Sv57x4).
pub(crate) const MAX_LEVELS: usize = 5;

/// One guest-physical translation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Translation {
    /// The host-physical address the queried GPA maps to (offset included).
    pub hpa: HostPhysAddr,
    /// The leaf's flags, as the format reports them.
    pub flags: MappingFlags,
    /// The size of the leaf that maps it.
    pub size: PageSize,
}

/// Counters a table keeps as it changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// 4 KiB frames of table memory in use, the root included.
    pub table_frames: usize,
    /// Leaves per size: index 0 for 4 KiB, 1 for 2 MiB, 2 for 1 GiB, 3 for
    /// 512 GiB (see [`PageSize::height`]).
    pub leaves: [usize; 4],
}

impl TableStats {
    /// Leaves of `size`.
    pub fn leaves_of(&self, size: PageSize) -> usize {
        self.leaves[size.height()]
    }

    /// Bytes of guest-physical space mapped.
    pub fn mapped_bytes(&self) -> u128 {
        PageSize::ALL
            .iter()
            .map(|s| self.leaves[s.height()] as u128 * s.bytes() as u128)
            .sum()
    }
}

/// Which leaf sizes a range map may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapPolicy {
    /// 4 KiB leaves only.
    Only4K,
    /// The largest of 1 GiB, 2 MiB and 4 KiB that the GPA, the HPA and the
    /// remaining length are aligned to, within what the format allows.
    Huge,
    /// Like [`MapPolicy::Huge`] but no larger than the given size (e.g. 2 MiB
    /// on an EPT host without 1 GiB page support). 512 GiB leaves are made
    /// only when asked for here and the format allows them.
    UpTo(PageSize),
}

impl MapPolicy {
    pub(crate) fn max_size<F: NptFormat>(self) -> PageSize {
        let wanted = match self {
            Self::Only4K => PageSize::Size4K,
            Self::Huge => PageSize::Size1G,
            Self::UpTo(size) => size,
        };
        wanted.min(F::MAX_LEAF)
    }
}

/// Frames taken before an operation changes anything, so that nothing can
/// fail half-way. Whatever is left goes back with [`Stash::give_back`].
pub(crate) struct Stash {
    frames: Vec<HostPhysAddr>,
}

/// Checks that the `frames` table frames at `hpa` lie below `2^pa_bits`,
/// where a table entry can point to them.
pub(crate) fn check_table_frame(hpa: HostPhysAddr, frames: usize, pa_bits: u32) -> NptResult {
    let last = hpa.as_usize().checked_add((frames.max(1) - 1) * FRAME_SIZE);
    match last {
        Some(last) if pa_bits >= usize::BITS || last >> pa_bits == 0 => Ok(()),
        _ => Err(NptError::TableFrameOutOfRange { hpa, pa_bits }),
    }
}

impl Stash {
    /// Allocates and zeroes `count` table frames below `2^pa_bits`, or none
    /// at all.
    pub(crate) fn take<A: FrameAllocator>(
        alloc: &A,
        count: usize,
        pa_bits: u32,
    ) -> NptResult<Self> {
        let mut stash = Self { frames: Vec::new() };
        if stash.frames.try_reserve_exact(count).is_err() {
            return Err(NptError::NoMemory);
        }
        for _ in 0..count {
            let Some(hpa) = alloc.alloc_frame() else {
                stash.give_back(alloc);
                return Err(NptError::NoMemory);
            };
            if let Err(e) = check_table_frame(hpa, 1, pa_bits) {
                alloc.dealloc_frames(hpa, 1);
                stash.give_back(alloc);
                return Err(e);
            }
            // SAFETY: just allocated, not yet reachable from any table.
            unsafe { zero_frames(alloc, hpa, 1) };
            stash.frames.push(hpa);
        }
        Ok(stash)
    }

    /// A zeroed frame. Planning guarantees there is one.
    pub(crate) fn pop(&mut self) -> Option<HostPhysAddr> {
        let hpa = self.frames.pop();
        debug_assert!(hpa.is_some(), "planning under-counted table frames");
        hpa
    }

    /// Returns the unused frames.
    pub(crate) fn give_back<A: FrameAllocator>(self, alloc: &A) {
        for hpa in self.frames {
            alloc.dealloc_frames(hpa, 1);
        }
    }
}

/// A second-stage page table of format `F` whose frames come from `A`.
///
/// The table owns its table frames (root included) and frees them on drop;
/// it never frees the frames its leaves point to. Every mutating operation
/// is all-or-nothing and returns a [`TlbFlush`] naming what became stale.
///
/// ```
/// use npt_table::{HostFrameAllocator, MapPolicy, NestedPageTable};
/// use npt_entry::ept::Ept4;
/// use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
///
/// let alloc = HostFrameAllocator::new();
/// let mut table = NestedPageTable::<Ept4, _>::new(&alloc).unwrap();
/// let rw = MappingFlags::READ | MappingFlags::WRITE;
/// let flush = table
///     .map_region(GuestPhysAddr::from(0), HostPhysAddr::from(0x4000_0000), 0x40_1000, rw, MapPolicy::Huge)
///     .unwrap();
/// flush.ignore(); // a VM that has not run yet has nothing cached
/// let t = table.query(GuestPhysAddr::from(0x1234)).unwrap();
/// assert_eq!(t.hpa, HostPhysAddr::from(0x4000_1234));
/// assert_eq!(t.size, PageSize::Size2M);
/// assert_eq!(table.stats().leaves_of(PageSize::Size4K), 1);
/// ```
pub struct NestedPageTable<F: NptFormat, A: FrameAllocator> {
    pub(crate) root: HostPhysAddr,
    pub(crate) alloc: A,
    pub(crate) stats: TableStats,
    pub(crate) pa_bits: u32,
    pub(crate) retired: Retired,
    _format: PhantomData<F>,
}

// SAFETY: the table exclusively owns its frames; sending it moves that
// ownership. Shared access only reads entries through atomics.
unsafe impl<F: NptFormat, A: FrameAllocator + Send> Send for NestedPageTable<F, A> {}
// SAFETY: `&self` methods only read table memory (atomically).
unsafe impl<F: NptFormat, A: FrameAllocator + Sync> Sync for NestedPageTable<F, A> {}

impl<F: NptFormat, A: FrameAllocator> core::fmt::Debug for NestedPageTable<F, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NestedPageTable")
            .field("format", &F::NAME)
            .field("root", &self.root)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// An empty table: allocates and zeroes the root (`F::ROOT_FRAMES`
    /// frames aligned to `F::ROOT_ALIGN`). Host addresses may use the whole
    /// physical width of the format.
    pub fn new(alloc: A) -> NptResult<Self> {
        Self::with_pa_bits(alloc, F::PA_BITS)
    }

    /// Like [`NestedPageTable::new`], limiting host addresses to `pa_bits`
    /// (e.g. the CPU's MAXPHYADDR); values above the format's width are
    /// clamped to it. Leaves and table frames alike must lie below
    /// `2^pa_bits`: a table frame the allocator hands out above it is given
    /// back and the operation fails with [`NptError::TableFrameOutOfRange`].
    pub fn with_pa_bits(alloc: A, pa_bits: u32) -> NptResult<Self> {
        let pa_bits = pa_bits.min(F::PA_BITS);
        let root = alloc
            .alloc_frames(F::ROOT_FRAMES, F::ROOT_ALIGN)
            .ok_or(NptError::NoMemory)?;
        if let Err(e) = check_table_frame(root, F::ROOT_FRAMES, pa_bits) {
            alloc.dealloc_frames(root, F::ROOT_FRAMES);
            return Err(e);
        }
        // SAFETY: just allocated, not reachable from any table.
        unsafe { zero_frames(&alloc, root, F::ROOT_FRAMES) };
        Ok(Self {
            root,
            alloc,
            stats: TableStats {
                table_frames: F::ROOT_FRAMES,
                leaves: [0; 4],
            },
            pa_bits,
            retired: Retired::default(),
            _format: PhantomData,
        })
    }

    /// Host-physical address of the root, for EPTP, nCR3, VTTBR or hgatp.
    pub fn root_hpa(&self) -> HostPhysAddr {
        self.root
    }

    /// The frame allocator.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Table frames and leaves in use.
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// The host physical-address width this table accepts.
    pub fn pa_bits(&self) -> u32 {
        self.pa_bits
    }

    // ---- internal helpers shared by every operation ----

    #[inline(always)]
    pub(crate) fn root_table(&self) -> TableRef<F::Entry> {
        // SAFETY: the root is allocated in `new` and freed only on drop.
        unsafe { TableRef::new(&self.alloc, self.root, F::ROOT_ENTRIES) }
    }

    /// The table a `Table` entry at `level` points to.
    #[inline(always)]
    pub(crate) fn child(&self, entry: F::Entry) -> TableRef<F::Entry> {
        // SAFETY: table entries are written only by this crate, pointing to
        // frames it allocated and has not freed (a table is unlinked before
        // it is freed).
        unsafe {
            TableRef::new(
                &self.alloc,
                entry.paddr().into(),
                npt_entry::ENTRIES_PER_TABLE,
            )
        }
    }

    /// A table frame from the stash, as a view.
    pub(crate) fn new_table(&mut self, stash: &mut Stash) -> Option<TableRef<F::Entry>> {
        let hpa = stash.pop()?;
        self.stats.table_frames += 1;
        // SAFETY: a zeroed frame from the stash, owned by this table from now.
        Some(unsafe { TableRef::new(&self.alloc, hpa, npt_entry::ENTRIES_PER_TABLE) })
    }

    /// Allocates and zeroes `count` table frames, or none.
    pub(crate) fn take_stash(&self, count: usize) -> NptResult<Stash> {
        Stash::take(&self.alloc, count, self.pa_bits)
    }

    /// Parks an unlinked table frame under `flush` (room reserved with
    /// `self.retired.reserve`).
    pub(crate) fn retire_table(&mut self, table: TableRef<F::Entry>, flush: &mut TlbFlush) {
        self.stats.table_frames -= 1;
        self.retired.park(flush, table.hpa(), 1);
    }

    #[inline(always)]
    pub(crate) fn count_leaves(&mut self, size: PageSize, n: usize, add: bool) {
        let slot = &mut self.stats.leaves[size.height()];
        if add { *slot += n } else { *slot -= n }
    }

    /// Checks `[gpa, gpa + len)`: non-empty, `align`-aligned, inside the GPA
    /// width. Returns the end.
    pub(crate) fn check_gpa_range(
        gpa: GuestPhysAddr,
        len: usize,
        align: usize,
    ) -> NptResult<usize> {
        let start = gpa.as_usize();
        if len == 0 {
            return Err(NptError::ZeroLength);
        }
        if start % align != 0 {
            return Err(NptError::GpaNotAligned {
                value: start,
                align,
            });
        }
        if len % align != 0 {
            return Err(NptError::GpaNotAligned { value: len, align });
        }
        let out = NptError::GpaOutOfRange {
            gpa: start.max(F::GPA_LIMIT as usize),
            gpa_bits: F::GPA_BITS,
        };
        let end = start.checked_add(len).ok_or(out)?;
        if end as u64 > F::GPA_LIMIT {
            return Err(out);
        }
        Ok(end)
    }

    /// Checks a host run `[hpa, hpa + len)` against alignment and PA width.
    pub(crate) fn check_hpa_range(&self, hpa: HostPhysAddr, len: usize, align: usize) -> NptResult {
        if hpa.as_usize() % align != 0 {
            return Err(NptError::HpaNotAligned { hpa, align });
        }
        let out = NptError::HpaOutOfRange {
            hpa: hpa.as_usize(),
            pa_bits: self.pa_bits,
        };
        let end = hpa.as_usize().checked_add(len).ok_or(out)?;
        if self.pa_bits < usize::BITS && end > 1usize << self.pa_bits {
            return Err(out);
        }
        Ok(())
    }

    /// Finds the leaf mapping `gpa`.
    #[inline(always)]
    pub(crate) fn find_leaf(&self, gpa: usize) -> Option<LeafRef<F::Entry>> {
        // The shift and index mask move down by one level per step; no
        // per-level table lookups in the hot path.
        let mut table = self.root_table();
        let mut shift = F::ROOT_SHIFT;
        let mut mask = F::ROOT_ENTRIES - 1;
        loop {
            let idx = (gpa >> shift) & mask;
            let entry = table.get(idx);
            match entry.kind(shift == PageSize::Size4K.shift()) {
                EntryKind::Empty => return None,
                EntryKind::Leaf => {
                    if shift > F::MAX_LEAF.shift() {
                        return None;
                    }
                    let size = PageSize::from_height(((shift - 12) / 9) as usize)?;
                    return Some(LeafRef {
                        table,
                        idx,
                        entry,
                        size,
                    });
                }
                EntryKind::Table if shift > PageSize::Size4K.shift() => {
                    table = self.child(entry);
                    shift -= npt_entry::BITS_PER_LEVEL;
                    mask = npt_entry::ENTRIES_PER_TABLE - 1;
                }
                EntryKind::Table => return None,
            }
        }
    }

    // ---- lookups ----

    /// The translation of `gpa`, if it is mapped.
    #[inline]
    pub fn query(&self, gpa: GuestPhysAddr) -> NptResult<Translation> {
        let addr = gpa.as_usize();
        if addr as u64 >= F::GPA_LIMIT {
            return Err(NptError::GpaOutOfRange {
                gpa: addr,
                gpa_bits: F::GPA_BITS,
            });
        }
        let LeafRef { entry, size, .. } =
            self.find_leaf(addr).ok_or(NptError::NotMapped { gpa })?;
        let base: usize = entry.paddr().into();
        Ok(Translation {
            hpa: HostPhysAddr::from_usize(base + size.offset(addr)),
            flags: entry.flags(),
            size,
        })
    }

    /// The host address `gpa` maps to, if any.
    #[inline]
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        let addr = gpa.as_usize();
        if addr as u64 >= F::GPA_LIMIT {
            return None;
        }
        self.translate_raw(addr)
            .map(|(hpa, _)| HostPhysAddr::from_usize(hpa))
    }

    /// The host address `gpa` maps to and the size of the leaf mapping it,
    /// without decoding flags: for copies that go leaf by leaf.
    #[inline]
    pub fn translate_leaf(&self, gpa: GuestPhysAddr) -> Option<(HostPhysAddr, PageSize)> {
        let addr = gpa.as_usize();
        if addr as u64 >= F::GPA_LIMIT {
            return None;
        }
        let (hpa, shift) = self.translate_raw(addr)?;
        let size = PageSize::from_height(((shift - 12) / npt_entry::BITS_PER_LEVEL) as usize)?;
        Some((HostPhysAddr::from_usize(hpa), size))
    }

    /// The walk of [`Self::find_leaf`] reduced to what a translation needs
    /// (host address and leaf shift). Kept apart from `find_leaf`, whose
    /// extra results (table, index, `PageSize`) made `translate` about 1.6×
    /// slower in `translate_random_1g` (`cargo bench -p npt-benches --bench
    /// walkers`, measured once when the two were folded together).
    #[inline(always)]
    fn translate_raw(&self, gpa: usize) -> Option<(usize, u32)> {
        let mut table = self.root_table();
        let mut shift = F::ROOT_SHIFT;
        let mut mask = F::ROOT_ENTRIES - 1;
        loop {
            let entry = table.get((gpa >> shift) & mask);
            match entry.kind(shift == PageSize::Size4K.shift()) {
                EntryKind::Empty => return None,
                EntryKind::Leaf => {
                    if shift > F::MAX_LEAF.shift() {
                        return None;
                    }
                    let base: usize = entry.paddr().into();
                    return Some((base + (gpa & ((1usize << shift) - 1)), shift));
                }
                EntryKind::Table if shift > PageSize::Size4K.shift() => {
                    table = self.child(entry);
                    shift -= npt_entry::BITS_PER_LEVEL;
                    mask = npt_entry::ENTRIES_PER_TABLE - 1;
                }
                EntryKind::Table => return None,
            }
        }
    }

    // ---- single-page operations ----

    /// Removes the leaf that starts at `gpa`, whatever its size, and returns
    /// what it mapped.
    pub fn unmap(&mut self, gpa: GuestPhysAddr) -> NptResult<(Translation, TlbFlush)> {
        let LeafRef {
            table,
            idx,
            entry,
            size,
        } = self.leaf_at(gpa)?;
        self.retired.reserve(F::LEVELS - 1)?;
        table.set(idx, F::Entry::from_raw(0));
        self.count_leaves(size, 1, false);
        let mut flush = TlbFlush::none();
        flush.add(gpa.as_usize(), size.bytes());
        let t = Translation {
            hpa: entry.paddr().into(),
            flags: entry.flags(),
            size,
        };
        // Free tables that became empty on the way down.
        self.prune_path(gpa.as_usize(), &mut flush);
        Ok((t, flush))
    }

    /// Changes the flags of the leaf that starts at `gpa`, keeping its
    /// address and every bit outside `NestedEntry::FLAG_MASK` (hardware-set
    /// accessed/dirty state among them).
    pub fn protect(&mut self, gpa: GuestPhysAddr, flags: MappingFlags) -> NptResult<TlbFlush> {
        npt_entry::check_flags(flags)?;
        let LeafRef {
            table,
            idx,
            entry,
            size,
        } = self.leaf_at(gpa)?;
        let template = F::Entry::new_page(0.into(), flags, size.is_huge());
        table.set(idx, entry.with_flags_of(template));
        let mut flush = TlbFlush::none();
        flush.add(gpa.as_usize(), size.bytes());
        Ok(flush)
    }

    /// Points the leaf that starts at `gpa` at `hpa` with `flags`, keeping
    /// its size.
    pub fn remap(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        flags: MappingFlags,
    ) -> NptResult<TlbFlush> {
        npt_entry::check_flags(flags)?;
        let LeafRef {
            table, idx, size, ..
        } = self.leaf_at(gpa)?;
        self.check_hpa_range(hpa, size.bytes(), size.bytes())?;
        table.set(idx, F::Entry::new_page(hpa.into(), flags, size.is_huge()));
        let mut flush = TlbFlush::none();
        flush.add(gpa.as_usize(), size.bytes());
        Ok(flush)
    }

    /// The leaf starting exactly at `gpa`.
    fn leaf_at(&self, gpa: GuestPhysAddr) -> NptResult<LeafRef<F::Entry>> {
        let addr = gpa.as_usize();
        Self::check_gpa_range(gpa, PageSize::Size4K.bytes(), PageSize::Size4K.bytes())?;
        let leaf = self.find_leaf(addr).ok_or(NptError::NotMapped { gpa })?;
        if !leaf.size.is_aligned(addr) {
            return Err(NptError::SizeMismatch {
                gpa,
                mapped: leaf.size,
            });
        }
        Ok(leaf)
    }

    /// Frees the tables on the path to `gpa` that are empty, deepest first.
    pub(crate) fn prune_path(&mut self, gpa: usize, flush: &mut TlbFlush) {
        let mut path: [(TableRef<F::Entry>, usize); MAX_LEVELS] =
            [(self.root_table(), 0); MAX_LEVELS];
        let mut depth = 0;
        let mut table = self.root_table();
        for (level, slot) in path.iter_mut().enumerate().take(F::LEVELS) {
            let idx = F::index(gpa, level);
            *slot = (table, idx);
            depth = level;
            let entry = table.get(idx);
            if entry.kind(level == F::LEVELS - 1) != EntryKind::Table {
                break;
            }
            table = self.child(entry);
        }
        // path[l] is the table at level l; unlink it from level l-1 when empty.
        for level in (1..=depth).rev() {
            let (table, _) = path[level];
            if !table.is_empty(npt_entry::ENTRIES_PER_TABLE) {
                break;
            }
            let (parent, pidx) = path[level - 1];
            parent.set(pidx, F::Entry::from_raw(0));
            let span = 1usize << F::shift(level - 1);
            flush.add(gpa & !(span - 1), span);
            self.retire_table(table, flush);
        }
    }
}

impl<F: NptFormat, A: FrameAllocator> Drop for NestedPageTable<F, A> {
    fn drop(&mut self) {
        fn free_level<F: NptFormat, A: FrameAllocator>(
            t: &NestedPageTable<F, A>,
            table: TableRef<F::Entry>,
            level: usize,
        ) {
            if level + 1 >= F::LEVELS {
                return;
            }
            for idx in 0..F::entries(level) {
                let entry = table.get(idx);
                if entry.kind(false) == EntryKind::Table {
                    let child = t.child(entry);
                    free_level(t, child, level + 1);
                    t.alloc.dealloc_frames(child.hpa(), 1);
                }
            }
        }
        free_level(self, self.root_table(), 0);
        self.alloc.dealloc_frames(self.root, F::ROOT_FRAMES);
        self.retired.release_everything(&self.alloc);
    }
}
