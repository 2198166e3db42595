//! Collapsing a span of small leaves back into one huge leaf.

use gpa_types::{GuestPhysAddr, MappingFlags, PageSize};
use npt_entry::{ENTRIES_PER_TABLE, GenericPTE, NestedEntry, NptFormat};

use crate::error::CollapseError;
use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::iter::{Ctx, LeafAct, Tables, Visit};
use crate::table::{Ledger, NestedPageTable};
use crate::walk::Step;

/// Checks that every leaf of a span maps `base + (gpa - start)` with
/// `flags`, and ORs the bits that hold each leaf's accessed/dirty state.
struct Uniform<E> {
    start: usize,
    base: usize,
    flags: MappingFlags,
    state: u64,
    /// The first address that breaks the rule.
    bad: Option<usize>,
    _entry: core::marker::PhantomData<E>,
}

impl<E: NestedEntry> Visit<E> for Uniform<E> {
    fn leaf(&mut self, gpa: usize, _: PageSize, _: usize, _: usize, entry: E) -> LeafAct<E> {
        let pa: usize = entry.paddr().into();
        if pa != self.base + (gpa - self.start) || entry.flags() != self.flags {
            self.bad = Some(gpa);
            return LeafAct::Stop;
        }
        // The bits clearing the state would change are the state (same
        // positions in small and huge leaves).
        let mut clean = entry;
        clean.clear_accessed();
        clean.clear_dirty();
        self.state |= entry.raw() ^ clean.raw();
        LeafAct::Keep
    }

    fn empty(&mut self, lo: usize, _: usize) -> bool {
        self.bad = Some(lo);
        true
    }
}

/// Keeps every leaf and releases every table: what a collapse does below
/// the new huge leaf once it is linked.
struct Release;

impl<E> Visit<E> for Release {
    const TABLES: Tables = Tables::ReleaseAll;

    #[inline(always)]
    fn leaf(&mut self, _: usize, _: PageSize, _: usize, _: usize, _: E) -> LeafAct<E> {
        LeafAct::Keep
    }
}

/// The result of [`NestedPageTable::collapse`].
#[must_use = "the flush record names stale translations"]
#[derive(Debug)]
pub struct Collapsed {
    /// Table frames unlinked and parked until `flush` is completed
    /// ([`NestedPageTable::complete`]).
    pub retired_tables: usize,
    /// What to invalidate.
    pub flush: TlbFlush,
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// Replaces the smaller leaves mapping `[gpa, gpa + size)` with one leaf
    /// of `size` (2 MiB or 1 GiB); the tables below it are unlinked and
    /// parked until the returned record is completed.
    ///
    /// The span must be fully mapped, to one host range aligned to `size`,
    /// with equal flags throughout; otherwise [`CollapseError::NotCollapsible`]
    /// names the first address that breaks the rule and nothing changes. A
    /// span that already is one leaf of `size` is left alone. The new leaf
    /// carries the accessed/dirty state of every leaf it replaces.
    ///
    /// On Arm, replacing a table by a block needs break-before-make unless
    /// FEAT_BBM level 2 is implemented, as a split does the other way round
    /// (see the `flush` module).
    ///
    /// # Errors
    ///
    /// [`CollapseError`]: `UnsupportedPageSize` for 4 KiB or a size the
    /// format has no leaf of; `gpa` not aligned to `size` or past the GPA
    /// width; `NotMapped` when no table or leaf covers the span;
    /// `NotCollapsible` as above; `NoMemory` (room to park the tables).
    pub fn collapse(
        &mut self,
        gpa: GuestPhysAddr,
        size: PageSize,
    ) -> Result<Collapsed, CollapseError> {
        let target = match F::level_of(size) {
            Some(level) if size.is_huge() => level,
            _ => return Err(CollapseError::UnsupportedPageSize(size)),
        };
        Self::check_page(gpa, size)?;
        let addr = gpa.as_usize();
        let tree = self.tree();
        let slot = tree.walk_from(tree.root_table(), 0, addr, target, &mut ());
        let child = match slot.step {
            Step::Table(child) if slot.level == target => child,
            Step::Leaf(s) if s == size => {
                return Ok(Collapsed {
                    retired_tables: 0,
                    flush: TlbFlush::none(),
                });
            }
            Step::Leaf(_) => return Err(CollapseError::NotCollapsible { gpa }),
            _ => return Err(CollapseError::NotMapped { gpa }),
        };
        // The first 4 KiB translation fixes the host base and the flags.
        let first = tree.walk_from(child, target + 1, addr, F::LEVELS - 1, &mut ());
        let Step::Leaf(_) = first.step else {
            return Err(CollapseError::NotCollapsible { gpa });
        };
        let base: usize = first.entry.paddr().into();
        if !size.is_aligned(base) {
            return Err(CollapseError::NotCollapsible { gpa });
        }
        let end = addr + size.bytes();
        let mut uniform = Uniform {
            start: addr,
            base,
            flags: first.entry.flags(),
            state: 0,
            bad: None,
            _entry: core::marker::PhantomData,
        };
        let mut scratch = TlbFlush::none();
        let mut ctx = Ctx::new(&mut scratch, None);
        tree.walk_range(
            &mut (),
            child,
            target + 1,
            addr,
            end,
            &mut uniform,
            &mut ctx,
        );
        if let Some(bad) = uniform.bad {
            return Err(CollapseError::NotCollapsible {
                gpa: GuestPhysAddr::from_usize(bad),
            });
        }
        // Room to park every table of the subtree: at most one per entry of
        // each level below the target, bounded by what the table has.
        let bound = (1..F::LEVELS - target)
            .map(|h| ENTRIES_PER_TABLE.saturating_pow(h as u32 - 1))
            .fold(0usize, usize::saturating_add)
            .min(self.books.stats.table_frames());
        self.books.retired.reserve(bound)?;

        // The huge leaf keeps the accessed/dirty state of every leaf it
        // replaces, not only the first one's: a page the hardware dirtied
        // anywhere in the span must still reach the next harvest.
        let mut huge = F::Entry::from_raw(first.entry.with_huge(true).raw() | uniform.state);
        huge.set_paddr(base.into());
        // Link the leaf (unlinking the subtree) before parking its tables.
        slot.table.set(slot.idx, huge);
        let mut flush = TlbFlush::none();
        flush.add(addr, size.bytes());
        let before = self.books.stats.table_frames();
        let (tree, books) = self.parts();
        let mut ctx = Ctx::new(&mut flush, None);
        tree.walk_range(books, child, target + 1, addr, end, &mut Release, &mut ctx);
        books.table_parked(child.hpa(), &mut flush);
        books.leaves(size, 1, true);
        let retired_tables = before - self.books.stats.table_frames();
        Ok(Collapsed {
            retired_tables,
            flush,
        })
    }
}
