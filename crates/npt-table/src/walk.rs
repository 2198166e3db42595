//! The point walk, written once: one step, one "last level", one walk
//! parameterised by what it records, and a path that writers keep.
//!
//! Every lookup and every single-page change goes through
//! [`Tree::walk_from`]: `translate` records nothing, a cursor records the
//! directory it passes, writers record the whole path (a [`Path`], through
//! [`Tree::walk_path`]) so they can change the table where the walk ended,
//! descend further, or prune on the way back up without walking again.
//!
//! [`Tree`] is the walkable part of a `NestedPageTable` (its root and
//! allocator); the counters and parked frames are updated through a
//! [`Ledger`], so a walk can read the table while it changes them.

use gpa_types::PageSize;
use npt_entry::{EntryKind, GenericPTE, NestedEntry, NptFormat};

use core::marker::PhantomData;

use gpa_types::{GuestPhysAddr, HostPhysAddr};

use crate::error::QueryError;
use crate::table::Translation;

use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::{Ledger, Stash};

/// The deepest walk any format has (EPT 5-level, Sv57x4).
pub(crate) const MAX_LEVELS: usize = 5;

/// Whether `level` is the last one, where only 4 KiB leaves live.
#[inline(always)]
pub(crate) fn is_last<F: NptFormat>(level: usize) -> bool {
    is_last_shift(F::shift(level))
}

/// [`is_last`] for a level given by its index shift: the last level
/// translates bits 20:12.
#[inline(always)]
fn is_last_shift(shift: u32) -> bool {
    shift == PageSize::Size4K.shift()
}

/// Bytes of guest-physical space one entry at `level` covers.
#[inline(always)]
pub(crate) fn entry_span<F: NptFormat>(level: usize) -> usize {
    1 << F::shift(level)
}

/// What an entry means at the level it was read from.
#[derive(Clone, Copy)]
pub(crate) enum Step<E> {
    /// Maps nothing (invalid, or a leaf encoding at a level where the
    /// format has no leaves: the hardware faults on both).
    Empty,
    /// Maps a page of this size.
    Leaf(PageSize),
    /// Points to this table one level down.
    Table(TableRef<E>),
}

/// Where a point walk stopped: the entry, its slot and what it means.
#[derive(Clone, Copy)]
pub(crate) struct Slot<E> {
    pub(crate) table: TableRef<E>,
    pub(crate) level: usize,
    pub(crate) idx: usize,
    pub(crate) entry: E,
    pub(crate) step: Step<E>,
    /// The offset bits of a leaf at the slot's level (`(1 << shift) - 1`).
    pub(crate) offset_mask: usize,
}

impl<E: NestedEntry> Slot<E> {
    /// The leaf's host address for `gpa`, if the walk ended at a leaf.
    #[inline(always)]
    pub(crate) fn hpa(&self, gpa: usize) -> Option<usize> {
        match self.step {
            Step::Leaf(_) => {
                let base: usize = self.entry.paddr().into();
                Some(base + (gpa & self.offset_mask))
            }
            _ => None,
        }
    }

    /// What the leaf maps at `gpa` ([`QueryError::NotMapped`] when the walk
    /// did not end at a leaf): the one body of `query`.
    #[inline(always)]
    pub(crate) fn query(&self, gpa: GuestPhysAddr) -> Result<Translation, QueryError> {
        self.translation(gpa).ok_or(QueryError::NotMapped { gpa })
    }

    /// What the leaf maps at `gpa`, if the walk ended at a leaf.
    #[inline(always)]
    pub(crate) fn translation(&self, gpa: GuestPhysAddr) -> Option<Translation> {
        let (hpa, size) = self.translate(gpa.as_usize())?;
        Some(Translation {
            hpa: HostPhysAddr::from_usize(hpa),
            flags: self.entry.flags(),
            size,
        })
    }

    /// The leaf's host address for `gpa` and its size, if the walk ended
    /// at a leaf.
    #[inline(always)]
    pub(crate) fn translate(&self, gpa: usize) -> Option<(usize, PageSize)> {
        match self.step {
            Step::Leaf(size) => {
                let base: usize = self.entry.paddr().into();
                Some((base + size.offset(gpa), size))
            }
            _ => None,
        }
    }
}

/// What a point walk remembers of the tables it passes.
pub(crate) trait Record<E> {
    /// The walk reads `table`, at `level`.
    fn table(&mut self, level: usize, table: TableRef<E>);
}

/// Remember nothing: lookups.
impl<E> Record<E> for () {
    #[inline(always)]
    fn table(&mut self, _: usize, _: TableRef<E>) {}
}

/// The tables of a walk, level by level, with the GPA each one starts at:
/// what writers keep to act where a walk ended and to retarget nearby.
pub(crate) struct Path<E> {
    root: TableRef<E>,
    /// Below the root: `(first GPA, table)` per level (index 0 unused).
    tables: [Option<(usize, TableRef<E>)>; MAX_LEVELS],
}

impl<E: NestedEntry> Path<E> {
    /// A path holding only `root`.
    pub(crate) fn new(root: TableRef<E>) -> Self {
        Self {
            root,
            tables: [None; MAX_LEVELS],
        }
    }

    /// The table at `level` on the way to `gpa`, if the path has it.
    pub(crate) fn at<F: NptFormat>(&self, level: usize, gpa: usize) -> Option<TableRef<E>> {
        if level == 0 {
            return Some(self.root);
        }
        match self.tables.get(level).copied().flatten() {
            Some((base, t)) if base == gpa & !(entry_span::<F>(level - 1) - 1) => Some(t),
            _ => None,
        }
    }

    /// Sets the table at `level` (below the root) holding `gpa`.
    fn set<F: NptFormat>(&mut self, level: usize, gpa: usize, table: TableRef<E>) {
        if level == 0 {
            return;
        }
        let base = gpa & !(entry_span::<F>(level - 1) - 1);
        if let Some(t) = self.tables.get_mut(level) {
            *t = Some((base, table));
        }
    }

    /// Forgets the table at `level`.
    fn forget(&mut self, level: usize) {
        if let Some(t) = self.tables.get_mut(level) {
            *t = None;
        }
    }

    /// Retargets the path to `gpa`: the deepest recorded table, at `level`
    /// or above, whose span holds `gpa`.
    fn retarget<F: NptFormat>(&self, gpa: usize, level: usize) -> (usize, TableRef<E>) {
        let mut l = level.min(F::LEVELS - 1);
        while l > 0 {
            if let Some(table) = self.at::<F>(l, gpa) {
                return (l, table);
            }
            l -= 1;
        }
        (0, self.root)
    }
}

/// The walkable part of a table: its root and where its frames live.
pub(crate) struct Tree<'a, F, A> {
    alloc: &'a A,
    root: HostPhysAddr,
    _format: PhantomData<fn() -> F>,
}

impl<F, A> Clone for Tree<'_, F, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F, A> Copy for Tree<'_, F, A> {}

impl<'a, F: NptFormat, A: FrameAllocator> Tree<'a, F, A> {
    /// The tree of the table rooted at `root`, frames from `alloc`.
    #[inline(always)]
    pub(crate) fn new(alloc: &'a A, root: HostPhysAddr) -> Self {
        Self {
            alloc,
            root,
            _format: PhantomData,
        }
    }

    /// The allocator.
    #[inline(always)]
    pub(crate) fn alloc(self) -> &'a A {
        self.alloc
    }

    /// The root table.
    #[inline(always)]
    pub(crate) fn root_table(self) -> TableRef<F::Entry> {
        // SAFETY: the root is allocated when the table is made and released
        // only when it is dropped.
        unsafe { TableRef::new(self.alloc, self.root, F::ROOT_ENTRIES) }
    }

    /// The table a table entry points to.
    #[inline(always)]
    pub(crate) fn child(self, entry: F::Entry) -> TableRef<F::Entry> {
        // SAFETY: table entries are written only by this crate, pointing to
        // frames it allocated, checked against the table's width, and has
        // not released (a table is unlinked, then parked until the caller's
        // flush, before it goes back).
        unsafe {
            TableRef::new(
                self.alloc,
                entry.paddr().into(),
                npt_entry::ENTRIES_PER_TABLE,
            )
        }
    }

    /// A table frame from the stash, as a view, counted in `ledger`.
    #[inline]
    pub(crate) fn new_table(
        self,
        stash: &mut Stash,
        ledger: &mut impl Ledger,
    ) -> Option<TableRef<F::Entry>> {
        let hpa = stash.pop()?;
        ledger.table_linked();
        // SAFETY: a zeroed frame from the stash, below the table's width,
        // owned by this table from now on.
        Some(unsafe { TableRef::new(self.alloc, hpa, npt_entry::ENTRIES_PER_TABLE) })
    }

    /// What `entry`, read at `level`, means: the one step every walk takes.
    #[inline(always)]
    pub(crate) fn step(self, entry: F::Entry, level: usize) -> Step<F::Entry> {
        let shift = F::shift(level);
        self.step_at(entry.kind(is_last_shift(shift)), entry, shift)
    }

    /// [`Self::step`] for an entry of known kind, read at the level whose
    /// index shift is `shift` (the point walk keeps the shift, not the
    /// level, in its loop).
    #[inline(always)]
    fn step_at(self, kind: EntryKind, entry: F::Entry, shift: u32) -> Step<F::Entry> {
        match kind {
            EntryKind::Table if !is_last_shift(shift) => Step::Table(self.child(entry)),
            // A leaf where the format allows one (`NptFormat::leaf_size`).
            EntryKind::Leaf if shift <= F::MAX_LEAF.shift() => {
                let height = (shift - PageSize::Size4K.shift()) / npt_entry::BITS_PER_LEVEL;
                match PageSize::from_height(height as usize) {
                    Some(size) => Step::Leaf(size),
                    None => Step::Empty,
                }
            }
            _ => Step::Empty,
        }
    }

    /// Walks towards `gpa` from `table` at `level`, following table
    /// entries down to level `until` at most, and stops at the first entry
    /// that is not a table (or at `until`). `rec` sees every table read.
    ///
    /// The shift and index mask move down one level per step, so the hot
    /// loop does no per-level lookups; what the stopping entry means is
    /// worked out once, at the end.
    #[inline(always)]
    pub(crate) fn walk_from<R: Record<F::Entry>>(
        self,
        mut table: TableRef<F::Entry>,
        mut level: usize,
        gpa: usize,
        until: usize,
        rec: &mut R,
    ) -> Slot<F::Entry> {
        // Only the shift and the index and offset masks move per step:
        // `shift > stop` is a level above `until`. The offset mask rides
        // along (rather than being made from the shift at the end) so that
        // each level of an unrolled walk hands the tail a constant.
        let stop = F::shift(until);
        let mut shift = F::shift(level);
        let mut mask = F::entries(level) - 1;
        let mut offset_mask = (1usize << shift) - 1;
        // At most one step per level from `level` to `until`: a trip count
        // the compiler knows when both are constants (the cursor's walk
        // from its directory, a translation from the root), so it unrolls.
        let steps = until.saturating_sub(level) + 1;
        for _ in 0..steps {
            rec.table(level, table);
            let idx = (gpa >> shift) & mask;
            let entry = table.get(idx);
            // Above the last level and `until` the loop asks one question,
            // "a table?"; what a stopping entry is, is worked out once below.
            if shift > stop && !is_last_shift(shift) && entry.is_table() {
                table = self.child(entry);
                level += 1;
                shift -= npt_entry::BITS_PER_LEVEL;
                offset_mask >>= npt_entry::BITS_PER_LEVEL;
                mask = npt_entry::ENTRIES_PER_TABLE - 1;
                continue;
            }
            // Stopped above the last level and above `until`, the entry
            // is not a table, so present means a leaf (the `is_table` law
            // of `npt_entry`): the same one test as at the last level for
            // every x86 format, so the two stops share one cheap tail.
            let kind = if is_last_shift(shift) {
                entry.kind(true)
            } else if shift > stop {
                if entry.is_present() {
                    EntryKind::Leaf
                } else {
                    EntryKind::Empty
                }
            } else {
                entry.kind(false)
            };
            let step = self.step_at(kind, entry, shift);
            return Slot {
                table,
                level,
                idx,
                entry,
                step,
                offset_mask,
            };
        }
        // Not reached: the step at `until` always returns. An empty slot
        // keeps the function total.
        Slot {
            table,
            level,
            idx: 0,
            entry: F::Entry::from_raw(0),
            step: Step::Empty,
            offset_mask,
        }
    }

    /// [`Self::walk_from`] the root, down to the leaf of `gpa`.
    #[inline(always)]
    pub(crate) fn walk<R: Record<F::Entry>>(self, gpa: usize, rec: &mut R) -> Slot<F::Entry> {
        self.walk_from(self.root_table(), 0, gpa, F::LEVELS - 1, rec)
    }

    /// A path holding the root.
    #[inline]
    pub(crate) fn path(self) -> Path<F::Entry> {
        Path::new(self.root_table())
    }

    /// Walks from the deepest table of `path` that covers `gpa` down to
    /// level `until`, recording the tables passed in `path`. Returns the
    /// slot where it stopped.
    #[inline]
    pub(crate) fn walk_path(
        self,
        path: &mut Path<F::Entry>,
        gpa: usize,
        until: usize,
    ) -> Slot<F::Entry> {
        let (level, table) = path.retarget::<F>(gpa, until);
        let mut rec = PathRec::<F> { path, gpa };
        self.walk_from(table, level, gpa, until, &mut rec)
    }

    /// The table at `level` on the way to `gpa`, reached from the deepest
    /// table of `path` that covers it: missing tables are created from the
    /// stash and, when `split` is given, huge leaves on the way are split
    /// into tables of the next smaller leaves (their range named in the
    /// record). `None` when a leaf is in the way and `split` is not given,
    /// or the stash ran dry (planning guarantees it does not).
    #[inline]
    pub(crate) fn descend(
        self,
        ledger: &mut impl Ledger,
        path: &mut Path<F::Entry>,
        gpa: usize,
        level: usize,
        stash: &mut Stash,
        mut split: Option<&mut TlbFlush>,
    ) -> Option<TableRef<F::Entry>> {
        let (mut l, mut table) = path.retarget::<F>(gpa, level);
        while l < level {
            let idx = F::index(gpa, l);
            let entry = table.get(idx);
            let child = match self.step(entry, l) {
                Step::Table(child) => child,
                Step::Empty => {
                    let child = self.new_table(stash, ledger)?;
                    table.link(idx, F::Entry::new_table(child.hpa().into()));
                    child
                }
                Step::Leaf(_) => {
                    let flush = split.as_deref_mut()?;
                    let child = self.split(ledger, table, idx, l, entry, stash)?;
                    flush.add(gpa & !(entry_span::<F>(l) - 1), entry_span::<F>(l));
                    child
                }
            };
            l += 1;
            path.set::<F>(l, gpa, child);
            table = child;
        }
        Some(table)
    }

    /// Unlinks and parks the tables of `path` on the way to `gpa` that are
    /// empty, deepest first, naming their spans in `flush`. Room to park
    /// `F::LEVELS - 1` frames must have been reserved.
    pub(crate) fn prune(
        self,
        ledger: &mut impl Ledger,
        path: &mut Path<F::Entry>,
        gpa: usize,
        flush: &mut TlbFlush,
    ) {
        for level in (1..F::LEVELS).rev() {
            let Some(table) = path.at::<F>(level, gpa) else {
                continue;
            };
            let Some(parent) = path.at::<F>(level - 1, gpa) else {
                break;
            };
            if !table.is_empty(npt_entry::ENTRIES_PER_TABLE) {
                break;
            }
            let span = entry_span::<F>(level - 1);
            parent.set(F::index(gpa, level - 1), F::Entry::from_raw(0));
            flush.add(gpa & !(span - 1), span);
            ledger.table_parked(table.hpa(), flush);
            path.forget(level);
        }
    }
}

/// Records a walk into a [`Path`].
struct PathRec<'p, F: NptFormat> {
    path: &'p mut Path<F::Entry>,
    gpa: usize,
}

impl<F: NptFormat> Record<F::Entry> for PathRec<'_, F> {
    #[inline(always)]
    fn table(&mut self, level: usize, table: TableRef<F::Entry>) {
        self.path.set::<F>(level, self.gpa, table);
    }
}
