//! The range walk, written once: a pre-order walk over the entries that
//! overlap `[start, end)`, driven by a [`Visit`] that decides at each leaf
//! whether to keep it, replace it, split it and step in, or stop. Tables
//! left empty are unlinked and parked on the way back up; a walk can also
//! release every table it passes (collapse, drop). The last level runs as
//! a tight loop over indices.
//!
//! Every subtree operation goes through [`Tree::walk_range`]:
//! unmap, protect, write-protect, harvest, split, `for_each_mapping`, the
//! "is anything mapped" check, collapse's uniformity check and release,
//! and `Drop`.

use gpa_types::PageSize;
use npt_entry::{ENTRIES_PER_TABLE, EntryKind, GenericPTE, NestedEntry, NptFormat};

use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::{Ledger, Stash};
use crate::walk::{Step, Tree, entry_span, is_last};

/// What the walk does at one leaf.
pub(crate) enum LeafAct<E> {
    /// Leave it as it is.
    Keep,
    /// Replace it (an entry of raw value 0 removes it).
    Set(E),
    /// Split it into a table of the next smaller leaves and walk those
    /// (a 4 KiB leaf, or a walk without frames, keeps it instead).
    Split,
    /// End the walk here.
    Stop,
}

/// What happens to a table once the walk has been through it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tables {
    /// Leave it linked.
    Keep,
    /// Unlink and park it if the walk left it empty.
    PruneEmpty,
    /// Unlink and release it, whatever it holds (its leaves are
    /// uncounted).
    ReleaseAll,
}

/// What a range walk does, entry by entry.
pub(crate) trait Visit<E> {
    /// What happens to the tables below the walk's start.
    const TABLES: Tables = Tables::Keep;
    /// Whether the walk reads the entries of last-level tables (a walk that
    /// only releases tables as the table is dropped does not).
    const LEAVES: bool = true;

    /// A leaf of `size` starting at `base` overlaps the range in `[lo, hi)`.
    fn leaf(&mut self, base: usize, size: PageSize, lo: usize, hi: usize, entry: E) -> LeafAct<E>;

    /// A 4 KiB leaf at `gpa`, read from a last-level table, wholly inside
    /// the range: the tight loop's call, which a visitor may specialise.
    #[inline(always)]
    fn small_leaf(&mut self, gpa: usize, entry: E) -> LeafAct<E> {
        self.leaf(
            gpa,
            PageSize::Size4K,
            gpa,
            gpa + PageSize::Size4K.bytes(),
            entry,
        )
    }

    /// An entry that maps nothing covers `[lo, hi)` of the range. Returns
    /// whether to stop.
    #[inline(always)]
    fn empty(&mut self, lo: usize, hi: usize) -> bool {
        let _ = (lo, hi);
        false
    }
}

/// The state a range walk carries besides the visitor.
pub(crate) struct Ctx<'a> {
    /// Frames for splits (none: leaves that ask to be split are kept).
    pub(crate) stash: Option<&'a mut Stash>,
    /// Where unlinked spans are named and parked tables ticketed.
    pub(crate) flush: &'a mut TlbFlush,
    /// Release tables to the allocator at once instead of parking them
    /// (only when the table itself goes away).
    pub(crate) free_now: bool,
    /// Some leaf changed.
    pub(crate) changed: bool,
    /// The visitor stopped the walk.
    pub(crate) stopped: bool,
}

impl<'a> Ctx<'a> {
    /// A walk that names what it changes in `flush`.
    pub(crate) fn new(flush: &'a mut TlbFlush, stash: Option<&'a mut Stash>) -> Self {
        Self {
            stash,
            flush,
            free_now: false,
            changed: false,
            stopped: false,
        }
    }
}

/// Releases every table without reading the last level: the walk of
/// `Drop`.
struct ReleaseAll;

impl<E> Visit<E> for ReleaseAll {
    const TABLES: Tables = Tables::ReleaseAll;
    const LEAVES: bool = false;

    #[inline(always)]
    fn leaf(&mut self, _: usize, _: PageSize, _: usize, _: usize, _: E) -> LeafAct<E> {
        LeafAct::Keep
    }
}

impl<F: NptFormat, A: FrameAllocator> Tree<'_, F, A> {
    /// A walk of `[start, end)` that changes nothing (`v` only keeps leaves
    /// and never asks for tables to go).
    pub(crate) fn read_walk<V: Visit<F::Entry>>(self, start: usize, end: usize, v: &mut V) {
        let mut flush = TlbFlush::none();
        let mut ctx = Ctx::new(&mut flush, None);
        self.walk_range(&mut (), self.root_table(), 0, start, end, v, &mut ctx);
        debug_assert!(
            !ctx.changed && flush.is_empty(),
            "a read walk changed the table"
        );
    }

    /// Releases every table below the root to the allocator at once (the
    /// table is being dropped).
    pub(crate) fn release_all(self, ledger: &mut impl Ledger) {
        let mut flush = TlbFlush::none();
        let mut ctx = Ctx::new(&mut flush, None);
        ctx.free_now = true;
        let end = F::GPA_LIMIT as usize;
        self.walk_range(
            ledger,
            self.root_table(),
            0,
            0,
            end,
            &mut ReleaseAll,
            &mut ctx,
        );
    }

    /// Walks the entries of `table` (at `level`) that overlap
    /// `[start, end)`, descending into tables and splits. Returns whether
    /// the table was left empty (computed only when something was removed
    /// from it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn walk_range<V: Visit<F::Entry>, L: Ledger>(
        self,
        ledger: &mut L,
        table: TableRef<F::Entry>,
        level: usize,
        start: usize,
        end: usize,
        v: &mut V,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        if is_last::<F>(level) {
            return self.last_level(ledger, table, start, end, v, ctx);
        }
        let span = entry_span::<F>(level);
        let release = V::TABLES == Tables::ReleaseAll;
        let mut removed = 0usize;
        let mut unlinked = false;
        // Whether every entry seen so far is (now) empty.
        let mut all_empty = true;
        let mut pos = start;
        while pos < end && !ctx.stopped {
            let base = pos & !(span - 1);
            let hi = end.min(base.saturating_add(span));
            let idx = F::index(pos, level);
            let entry = table.get(idx);
            let child = match self.step(entry, level) {
                Step::Empty => {
                    ctx.stopped = v.empty(pos, hi);
                    all_empty &= entry.raw() == 0;
                    None
                }
                Step::Leaf(size) => match v.leaf(base, size, pos, hi, entry) {
                    LeafAct::Keep => {
                        all_empty = false;
                        if release {
                            ledger.leaves(size, 1, false);
                        }
                        None
                    }
                    LeafAct::Set(new) => {
                        if new != entry {
                            table.set(idx, new);
                            ctx.changed = true;
                        }
                        if new.raw() == 0 {
                            removed += 1;
                        } else {
                            all_empty = false;
                        }
                        None
                    }
                    LeafAct::Split => {
                        let child = match ctx.stash.as_deref_mut() {
                            Some(stash) => self.split(ledger, table, idx, level, entry, stash),
                            None => None,
                        };
                        if child.is_some() {
                            ctx.flush.add(base, span);
                            ctx.changed = true;
                        } else {
                            all_empty = false;
                        }
                        child
                    }
                    LeafAct::Stop => {
                        ctx.stopped = true;
                        all_empty = false;
                        None
                    }
                },
                Step::Table(child) => Some(child),
            };
            if let Some(child) = child {
                let emptied = self.walk_range(ledger, child, level + 1, pos, hi, v, ctx);
                let unlink = match V::TABLES {
                    Tables::Keep => false,
                    Tables::PruneEmpty => emptied,
                    Tables::ReleaseAll => true,
                };
                if unlink {
                    // A released subtree is already unreachable from the
                    // root (or the table is going away): leave its entries
                    // as a stale walker may still read them.
                    if !release {
                        table.set(idx, F::Entry::from_raw(0));
                    }
                    ctx.flush.add(base, span);
                    unlinked = true;
                    if ctx.free_now {
                        ledger.table_released();
                        self.alloc().dealloc_frames(child.hpa(), 1);
                    } else {
                        ledger.table_parked(child.hpa(), ctx.flush);
                    }
                } else {
                    all_empty = false;
                }
            }
            pos = hi;
        }
        if let Some(size) = F::leaf_size(level) {
            ledger.leaves(size, removed, false);
        }
        if level == 0 || (removed == 0 && !unlinked) {
            return false;
        }
        let whole =
            start & (span * ENTRIES_PER_TABLE - 1) == 0 && end - start == span * ENTRIES_PER_TABLE;
        if whole && !ctx.stopped {
            all_empty
        } else {
            table.is_empty(ENTRIES_PER_TABLE)
        }
    }

    /// The last level of [`Self::walk_range`]: every entry in the (4 KiB
    /// aligned) range is a whole 4 KiB leaf or empty, so no splitting and
    /// no clipping. Kept apart, with plain locals, so the counters stay in
    /// registers.
    #[inline(always)]
    fn last_level<V: Visit<F::Entry>, L: Ledger>(
        self,
        ledger: &mut L,
        table: TableRef<F::Entry>,
        start: usize,
        end: usize,
        v: &mut V,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        const SHIFT: u32 = PageSize::Size4K.shift();
        if !V::LEAVES {
            return false;
        }
        let release = V::TABLES == Tables::ReleaseAll;
        let first = F::index(start, F::LEVELS - 1);
        let count = (end - start) >> SHIFT;
        let mut changed = false;
        let mut removed = 0usize;
        let mut kept = 0usize;
        let mut left = false;
        for (i, idx) in (first..first + count).enumerate() {
            let entry = table.get(idx);
            let gpa = start + (i << SHIFT);
            // At the last level every valid entry is a 4 KiB leaf.
            if entry.kind(true) != EntryKind::Leaf {
                left |= entry.raw() != 0;
                if v.empty(gpa, gpa + (1 << SHIFT)) {
                    ctx.stopped = true;
                    break;
                }
                continue;
            }
            match v.small_leaf(gpa, entry) {
                LeafAct::Set(new) if new.raw() != entry.raw() => {
                    table.set(idx, new);
                    changed = true;
                    if new.raw() == 0 {
                        removed += 1;
                    } else {
                        left = true;
                    }
                }
                LeafAct::Stop => {
                    left = true;
                    ctx.stopped = true;
                    break;
                }
                _ => {
                    left = true;
                    kept += 1;
                }
            }
        }
        ctx.changed |= changed;
        ledger.leaves(PageSize::Size4K, removed, false);
        if release {
            ledger.leaves(PageSize::Size4K, kept, false);
        }
        if removed == 0 {
            return false;
        }
        if count == ENTRIES_PER_TABLE && !ctx.stopped {
            !left
        } else {
            table.is_empty(ENTRIES_PER_TABLE)
        }
    }

    /// Replaces the huge leaf at `table[idx]` (at `level`) by a table of
    /// 512 leaves of the next smaller size with the same attributes.
    /// Returns the new table.
    pub(crate) fn split(
        self,
        ledger: &mut impl Ledger,
        table: TableRef<F::Entry>,
        idx: usize,
        level: usize,
        entry: F::Entry,
        stash: &mut Stash,
    ) -> Option<TableRef<F::Entry>> {
        let size = F::leaf_size(level)?;
        let smaller = size.smaller()?;
        let child = self.new_table(stash, ledger)?;
        let child_leaf = entry.with_huge(smaller.is_huge());
        let base: usize = entry.paddr().into();
        for i in 0..ENTRIES_PER_TABLE {
            let mut e = child_leaf;
            e.set_paddr((base + i * smaller.bytes()).into());
            child.set(i, e);
        }
        table.link(idx, F::Entry::new_table(child.hpa().into()));
        ledger.leaves(size, 1, false);
        ledger.leaves(smaller, ENTRIES_PER_TABLE, true);
        Some(child)
    }
}
