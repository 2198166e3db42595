//! Range operations over what is mapped: unmap, protect, write-protect,
//! accessed/dirty harvesting and visiting.
//!
//! One recursive descent serves them all: it visits each table the range
//! touches once (never re-walking from the root per page), splits huge
//! leaves that the range only partly covers when the operation needs it, and
//! frees tables that end up empty. Frames for splits are counted and taken
//! before anything changes.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::{ENTRIES_PER_TABLE, EntryKind, GenericPTE, NestedEntry, NptFormat};

use crate::error::{NptError, NptResult};
use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::{NestedPageTable, Stash};

/// A run of mapped guest-physical space: consecutive leaves with equal flags
/// and contiguous host addresses, as [`NestedPageTable::for_each_mapping`]
/// reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MappedRun {
    /// First guest address.
    pub gpa: GuestPhysAddr,
    /// First host address.
    pub hpa: HostPhysAddr,
    /// Length in bytes.
    pub len: usize,
    /// The flags of every leaf in the run.
    pub flags: MappingFlags,
    /// The largest leaf size in the run.
    pub max_page: PageSize,
}

/// Which bit a harvest collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessBit {
    /// The accessed bit.
    Accessed,
    /// The dirty bit.
    Dirty,
}

/// What a descent did to one table.
pub(crate) struct Descent {
    /// Some leaf changed.
    any: bool,
    /// The table is empty now and may be freed.
    empty: bool,
}

/// What to do to each leaf the range covers.
pub(crate) trait LeafOp<E> {
    /// Whether leaves the range only partly covers are split first.
    const SPLITS: bool;
    /// Whether the operation may remove leaves (and so empty tables).
    const REMOVES: bool = false;
    /// The new value of a leaf at `gpa` of `size` (fully covered when
    /// `SPLITS`, possibly partly otherwise: `[lo, hi)` is the covered part).
    /// Zero removes it.
    fn leaf(&mut self, gpa: usize, size: PageSize, lo: usize, hi: usize, entry: E) -> E;
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// Unmaps `[gpa, gpa + len)` whatever page sizes map it. A huge leaf the
    /// range only partly covers is split first, keeping the rest mapped with
    /// the same flags; tables that become empty are freed. Holes are fine,
    /// but a range with nothing mapped at all is [`NptError::NotMapped`].
    pub fn unmap_region(&mut self, gpa: GuestPhysAddr, len: usize) -> NptResult<TlbFlush> {
        struct Unmap;
        impl<E: NestedEntry> LeafOp<E> for Unmap {
            const SPLITS: bool = true;
            const REMOVES: bool = true;
            #[inline(always)]
            fn leaf(&mut self, _: usize, _: PageSize, _: usize, _: usize, _: E) -> E {
                E::from_raw(0)
            }
        }
        self.apply(gpa, len, &mut Unmap)
    }

    /// Sets the flags of every leaf in `[gpa, gpa + len)` (splitting huge
    /// leaves at the edges), keeping each leaf's address and the bits
    /// outside `NestedEntry::FLAG_MASK` (accessed/dirty state among them). [`NptError::NotMapped`] if nothing is mapped.
    pub fn protect_region(
        &mut self,
        gpa: GuestPhysAddr,
        len: usize,
        flags: MappingFlags,
    ) -> NptResult<TlbFlush> {
        npt_entry::check_flags(flags)?;
        struct Protect<E>([E; 2]);
        impl<E: NestedEntry> LeafOp<E> for Protect<E> {
            const SPLITS: bool = true;
            #[inline(always)]
            fn leaf(&mut self, _: usize, size: PageSize, _: usize, _: usize, entry: E) -> E {
                entry.with_flags_of(self.0[size.is_huge() as usize])
            }
        }
        let templates = [
            F::Entry::new_page(0.into(), flags, false),
            F::Entry::new_page(0.into(), flags, true),
        ];
        self.apply(gpa, len, &mut Protect(templates))
    }

    /// Removes write permission from every leaf in `[gpa, gpa + len)`,
    /// keeping all other bits (the first step of dirty logging by
    /// write-protection). Huge leaves at the edges are split.
    pub fn write_protect_region(&mut self, gpa: GuestPhysAddr, len: usize) -> NptResult<TlbFlush> {
        struct WriteProtect;
        impl<E: NestedEntry> LeafOp<E> for WriteProtect {
            const SPLITS: bool = true;
            #[inline(always)]
            fn leaf(&mut self, _: usize, size: PageSize, _: usize, _: usize, entry: E) -> E {
                entry.write_protected(size.is_huge())
            }
        }
        self.apply(gpa, len, &mut WriteProtect)
    }

    /// Collects the accessed or dirty bits of `[gpa, gpa + len)` into
    /// `bitmap` (bit `i` for the 4 KiB page at `gpa + i * 4096`; a huge leaf
    /// with the bit set marks every 4 KiB page of it that lies in the range)
    /// and clears them. A huge leaf the range covers only in part keeps its
    /// bit: it also stands for pages outside the range, which a later
    /// harvest of those pages must still see. Bits of pages not set stay as they are in `bitmap`
    /// (the caller clears it). Returns the flush record: the hardware sets
    /// the bits again only after stale translations are flushed.
    ///
    /// `bitmap` must hold at least `len / 4096` bits.
    pub fn harvest(
        &mut self,
        gpa: GuestPhysAddr,
        len: usize,
        bit: AccessBit,
        bitmap: &mut [u64],
    ) -> NptResult<TlbFlush> {
        let pages = len / PageSize::Size4K.bytes();
        if bitmap.len().saturating_mul(64) < pages {
            return Err(NptError::FrameCount {
                expected: pages.div_ceil(64),
                given: bitmap.len(),
            });
        }
        struct Harvest<'b> {
            start: usize,
            bit: AccessBit,
            bitmap: &'b mut [u64],
        }
        impl<E: NestedEntry> LeafOp<E> for Harvest<'_> {
            const SPLITS: bool = false;
            fn leaf(
                &mut self,
                gpa: usize,
                size: PageSize,
                lo: usize,
                hi: usize,
                mut entry: E,
            ) -> E {
                let set = match self.bit {
                    AccessBit::Accessed => entry.is_accessed(),
                    AccessBit::Dirty => entry.is_dirty(),
                };
                if set {
                    let first = (lo - self.start) >> 12;
                    let last = (hi - self.start) >> 12;
                    for page in first..last {
                        if let Some(word) = self.bitmap.get_mut(page / 64) {
                            *word |= 1 << (page % 64);
                        }
                    }
                    let whole = lo == gpa && hi == gpa + size.bytes();
                    match self.bit {
                        AccessBit::Accessed if whole => entry.clear_accessed(),
                        AccessBit::Dirty if whole => entry.clear_dirty(),
                        _ => {}
                    }
                }
                entry
            }
        }
        let mut op = Harvest {
            start: gpa.as_usize(),
            bit,
            bitmap,
        };
        match self.apply(gpa, len, &mut op) {
            Err(NptError::NotMapped { .. }) => Ok(TlbFlush::none()),
            other => other,
        }
    }

    /// Calls `f` for every run of mapped space in `[gpa, gpa + len)`, in
    /// GPA order, merging consecutive leaves with equal flags and contiguous
    /// host addresses. Runs are clipped to the range.
    pub fn for_each_mapping(
        &self,
        gpa: GuestPhysAddr,
        len: usize,
        mut f: impl FnMut(MappedRun),
    ) -> NptResult {
        let end = Self::check_gpa_range(gpa, len, PageSize::Size4K.bytes())?;
        let mut current: Option<MappedRun> = None;
        self.visit(
            self.root_table(),
            0,
            gpa.as_usize(),
            end,
            &mut |lo, hi, size, entry| {
                let flags = entry.flags();
                let base: usize = entry.paddr().into();
                let hpa = base + size.offset(lo);
                if let Some(run) = current.as_mut() {
                    if run.gpa.as_usize() + run.len == lo
                        && run.hpa.as_usize() + run.len == hpa
                        && run.flags == flags
                    {
                        run.len += hi - lo;
                        run.max_page = run.max_page.max(size);
                        return;
                    }
                    f(*run);
                }
                current = Some(MappedRun {
                    gpa: GuestPhysAddr::from_usize(lo),
                    hpa: HostPhysAddr::from_usize(hpa),
                    len: hi - lo,
                    flags,
                    max_page: size,
                });
            },
        );
        if let Some(run) = current {
            f(run);
        }
        Ok(())
    }

    /// Splits every huge leaf overlapping `[gpa, gpa + len)` down to 4 KiB
    /// leaves with the same attributes (e.g. before dirty logging, so that
    /// one guest write dirties 4 KiB). Translations do not change. Frames for
    /// all splits are taken first; on `NoMemory` nothing changes.
    pub fn split_region(&mut self, gpa: GuestPhysAddr, len: usize) -> NptResult<TlbFlush> {
        let end = Self::check_gpa_range(gpa, len, PageSize::Size4K.bytes())?;
        let start = gpa.as_usize();
        let mut needed = 0usize;
        self.visit(self.root_table(), 0, start, end, &mut |_, _, size, _| {
            // Tables a leaf of `size` turns into when split down to 4 KiB.
            let mut tables = 0usize;
            let mut per_level = 1usize;
            for _ in 0..size.height() {
                tables = tables.saturating_add(per_level);
                per_level = per_level.saturating_mul(ENTRIES_PER_TABLE);
            }
            needed = needed.saturating_add(tables);
        });
        let mut stash = self.take_stash(needed)?;
        let mut flush = TlbFlush::none();
        let root = self.root_table();
        self.split_all(root, 0, start, end, &mut stash, &mut flush);
        stash.give_back(&self.alloc);
        Ok(flush)
    }

    fn split_all(
        &mut self,
        table: TableRef<F::Entry>,
        level: usize,
        start: usize,
        end: usize,
        stash: &mut Stash,
        flush: &mut TlbFlush,
    ) {
        if level + 1 >= F::LEVELS {
            return;
        }
        let size = 1usize << F::shift(level);
        let mut pos = start;
        while pos < end {
            let entry_base = pos & !(size - 1);
            let hi = end.min(entry_base.saturating_add(size));
            let idx = F::index(pos, level);
            let entry = table.get(idx);
            let child = match entry.kind(false) {
                EntryKind::Empty => None,
                EntryKind::Leaf => {
                    let child = self.split(table, idx, level, entry, stash);
                    if child.is_some() {
                        flush.add(entry_base, size);
                    }
                    child
                }
                EntryKind::Table => Some(self.child(entry)),
            };
            if let Some(child) = child {
                self.split_all(child, level + 1, pos, hi, stash, flush);
            }
            pos = hi;
        }
    }

    /// Read-only descent: `f(lo, hi, size, entry)` for each leaf overlapping
    /// `[start, end)`, clipped.
    fn visit(
        &self,
        table: TableRef<F::Entry>,
        level: usize,
        start: usize,
        end: usize,
        f: &mut impl FnMut(usize, usize, PageSize, F::Entry),
    ) {
        let shift = F::shift(level);
        let size = 1usize << shift;
        let last = level == F::LEVELS - 1;
        let mut pos = start;
        while pos < end {
            let entry_base = pos & !(size - 1);
            let hi = end.min(entry_base.saturating_add(size));
            let entry = table.get(F::index(pos, level));
            match entry.kind(last) {
                EntryKind::Empty => {}
                EntryKind::Leaf => {
                    if let Some(page) = F::leaf_size(level) {
                        f(pos, hi, page, entry);
                    }
                }
                EntryKind::Table => self.visit(self.child(entry), level + 1, pos, hi, f),
            }
            pos = hi;
        }
    }

    /// Checks the range, plans the splits, takes their frames and runs `op`.
    pub(crate) fn apply<O: LeafOp<F::Entry>>(
        &mut self,
        gpa: GuestPhysAddr,
        len: usize,
        op: &mut O,
    ) -> NptResult<TlbFlush> {
        let end = Self::check_gpa_range(gpa, len, PageSize::Size4K.bytes())?;
        let start = gpa.as_usize();
        if !self.any_mapped(self.root_table(), 0, start, end) {
            return Err(NptError::NotMapped { gpa });
        }
        let needed = if O::SPLITS {
            self.splits_at(start) + self.splits_at(end)
        } else {
            0
        };
        if O::REMOVES {
            self.retired.reserve(self.tables_under(start, end))?;
        }
        let mut stash = self.take_stash(needed)?;
        let mut flush = TlbFlush::none();
        let root = self.root_table();
        let changed = self.descend_apply(root, 0, start, end, op, &mut stash, &mut flush);
        if changed.any {
            flush.add(start, end - start);
        }
        stash.give_back(&self.alloc);
        Ok(flush)
    }

    /// An upper bound on the tables below the root that `[start, end)`
    /// reaches into: what an unmap of the range can empty.
    pub(crate) fn tables_under(&self, start: usize, end: usize) -> usize {
        let mut n = 0usize;
        for level in 1..F::LEVELS {
            let shift = F::shift(level - 1);
            let first = start >> shift;
            let last = (end - 1) >> shift;
            n = n.saturating_add(last - first + 1);
        }
        n.min(self.stats.table_frames)
    }

    /// Whether any leaf overlaps `[start, end)`; stops at the first.
    fn any_mapped(
        &self,
        table: TableRef<F::Entry>,
        level: usize,
        start: usize,
        end: usize,
    ) -> bool {
        let size = 1usize << F::shift(level);
        let last = level == F::LEVELS - 1;
        let mut pos = start;
        while pos < end {
            let hi = end.min((pos & !(size - 1)).saturating_add(size));
            let entry = table.get(F::index(pos, level));
            match entry.kind(last) {
                EntryKind::Empty => {}
                EntryKind::Leaf => {
                    if F::leaf_size(level).is_some() {
                        return true;
                    }
                }
                EntryKind::Table => {
                    if self.any_mapped(self.child(entry), level + 1, pos, hi) {
                        return true;
                    }
                }
            }
            pos = hi;
        }
        false
    }

    /// Frames needed to split the leaf containing `edge` down to the level
    /// where `edge` is a leaf boundary (0 if `edge` is not inside a leaf or
    /// already on its boundary).
    fn splits_at(&self, edge: usize) -> usize {
        if edge as u64 >= F::GPA_LIMIT {
            return 0;
        }
        let Some(leaf) = self.find_leaf(edge) else {
            return 0;
        };
        let Some(level) = F::level_of(leaf.size) else {
            return 0;
        };
        let mut n = 0;
        let mut l = level;
        while l + 1 < F::LEVELS && edge & ((1usize << F::shift(l)) - 1) != 0 {
            n += 1;
            l += 1;
        }
        n
    }

    /// The mutating descent behind [`NestedPageTable::apply`]. Changed
    /// leaves inside `[start, end)` are flushed once by the caller; leaves
    /// split here are added to `flush` because they reach outside it.
    #[allow(clippy::too_many_arguments)]
    fn descend_apply<O: LeafOp<F::Entry>>(
        &mut self,
        table: TableRef<F::Entry>,
        level: usize,
        start: usize,
        end: usize,
        op: &mut O,
        stash: &mut Stash,
        flush: &mut TlbFlush,
    ) -> Descent {
        let shift = F::shift(level);
        let size = 1usize << shift;
        let last = level == F::LEVELS - 1;
        let mut out = Descent {
            any: false,
            empty: false,
        };
        let mut removed = false;
        // Whether every entry seen so far is (now) empty.
        let mut all_empty = true;
        let mut removed_leaves = 0;
        let leaf_size = F::leaf_size(level);
        if last {
            let (changed, removed_here, left) = Self::last_level(table, start, end, op);
            out.any |= changed;
            removed_leaves += removed_here;
            removed |= removed_here > 0;
            all_empty &= !left;
        }
        let mut pos = if last { end } else { start };
        while pos < end {
            let entry_base = pos & !(size - 1);
            let entry_end = entry_base.saturating_add(size);
            let hi = end.min(entry_end);
            let idx = F::index(pos, level);
            let entry = table.get(idx);
            match entry.kind(last) {
                EntryKind::Empty => {}
                EntryKind::Leaf => {
                    let Some(page) = leaf_size else {
                        all_empty = false;
                        pos = hi;
                        continue;
                    };
                    let whole = pos == entry_base && hi == entry_end;
                    if whole || !O::SPLITS {
                        let new = op.leaf(entry_base, page, pos, hi, entry);
                        if new != entry {
                            table.set(idx, new);
                            out.any = true;
                            if new.raw() == 0 {
                                removed_leaves += 1;
                                removed = true;
                            } else {
                                all_empty = false;
                            }
                        } else {
                            all_empty = false;
                        }
                    } else if let Some(child) = self.split(table, idx, level, entry, stash) {
                        flush.add(entry_base, size);
                        out.any = true;
                        let sub = self.descend_apply(child, level + 1, pos, hi, op, stash, flush);
                        if sub.empty {
                            table.set(idx, F::Entry::from_raw(0));
                            self.retire_table(child, flush);
                            removed = true;
                        } else {
                            all_empty = false;
                        }
                    } else {
                        all_empty = false;
                    }
                }
                EntryKind::Table => {
                    let child = self.child(entry);
                    let sub = self.descend_apply(child, level + 1, pos, hi, op, stash, flush);
                    out.any |= sub.any;
                    if sub.empty {
                        table.set(idx, F::Entry::from_raw(0));
                        flush.add(entry_base, size);
                        self.retire_table(child, flush);
                        removed = true;
                    } else {
                        all_empty = false;
                    }
                }
            }
            pos = hi;
        }
        if let Some(page) = leaf_size {
            self.count_leaves(page, removed_leaves, false);
        }
        if level > 0 && removed {
            let span = size * ENTRIES_PER_TABLE;
            let covered = start & (span - 1) == 0 && end - start == span;
            out.empty = if covered {
                all_empty
            } else {
                table.is_empty(ENTRIES_PER_TABLE)
            };
        }
        out
    }

    /// The last level of [`Self::descend_apply`]: every entry in the (4 KiB
    /// aligned) range is a whole 4 KiB leaf or empty, so no splitting and no
    /// clipping. Returns whether a leaf changed, how many were removed, and
    /// whether any entry is left in the range. Kept apart, with plain locals,
    /// so the counters stay in registers.
    #[inline(always)]
    fn last_level<O: LeafOp<F::Entry>>(
        table: TableRef<F::Entry>,
        start: usize,
        end: usize,
        op: &mut O,
    ) -> (bool, usize, bool) {
        const SHIFT: u32 = PageSize::Size4K.shift();
        let first = F::index(start, F::LEVELS - 1);
        let count = (end - start) >> SHIFT;
        let mut changed = false;
        let mut removed = 0usize;
        let mut left = false;
        for (i, idx) in (first..first + count).enumerate() {
            let entry = table.get(idx);
            if entry.kind(true) != EntryKind::Leaf {
                left |= entry.raw() != 0;
                continue;
            }
            let gpa = start + (i << SHIFT);
            let new = op.leaf(gpa, PageSize::Size4K, gpa, gpa + (1 << SHIFT), entry);
            if new.raw() == entry.raw() {
                left = true;
                continue;
            }
            table.set(idx, new);
            changed = true;
            if new.raw() == 0 {
                removed += 1;
            } else {
                left = true;
            }
        }
        (changed, removed, left)
    }

    /// Replaces the huge leaf at `table[idx]` by a table of 512 leaves of the
    /// next smaller size with the same attributes. Returns the new table.
    pub(crate) fn split(
        &mut self,
        table: TableRef<F::Entry>,
        idx: usize,
        level: usize,
        entry: F::Entry,
        stash: &mut Stash,
    ) -> Option<TableRef<F::Entry>> {
        let size = F::leaf_size(level)?;
        let smaller = size.smaller()?;
        let child = self.new_table(stash)?;
        let child_leaf = entry.with_huge(smaller.is_huge());
        let base: usize = entry.paddr().into();
        for i in 0..ENTRIES_PER_TABLE {
            let mut e = child_leaf;
            e.set_paddr((base + i * smaller.bytes()).into());
            child.set(i, e);
        }
        table.link(idx, F::Entry::new_table(child.hpa().into()));
        self.count_leaves(size, 1, false);
        self.count_leaves(smaller, ENTRIES_PER_TABLE, true);
        Some(child)
    }
}
