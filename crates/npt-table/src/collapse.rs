//! Collapsing a span of small leaves back into one huge leaf.

use gpa_types::{GuestPhysAddr, MappingFlags, PageSize};
use npt_entry::{ENTRIES_PER_TABLE, EntryKind, GenericPTE, NestedEntry, NptFormat};

use crate::error::{NptError, NptResult};
use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::NestedPageTable;

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
    /// of `size` (2 MiB or 1 GiB), freeing the tables below it.
    ///
    /// The span must be fully mapped, to one host range aligned to `size`,
    /// with equal flags throughout; otherwise [`NptError::NotCollapsible`]
    /// names the first address that breaks the rule and nothing changes. A
    /// span that already is one leaf of `size` is left alone.
    pub fn collapse(&mut self, gpa: GuestPhysAddr, size: PageSize) -> NptResult<Collapsed> {
        let target = match F::level_of(size) {
            Some(level) if size.is_huge() => level,
            _ => return Err(NptError::UnsupportedPageSize(size)),
        };
        Self::check_gpa_range(gpa, size.bytes(), size.bytes())?;
        let addr = gpa.as_usize();
        let mut table = self.root_table();
        for level in 0..target {
            let entry = table.get(F::index(addr, level));
            match entry.kind(false) {
                EntryKind::Table => table = self.child(entry),
                EntryKind::Empty => return Err(NptError::NotMapped { gpa }),
                EntryKind::Leaf => return Err(NptError::NotCollapsible { gpa }),
            }
        }
        let idx = F::index(addr, target);
        let entry = table.get(idx);
        let child = match entry.kind(false) {
            EntryKind::Empty => return Err(NptError::NotMapped { gpa }),
            EntryKind::Leaf => {
                return Ok(Collapsed {
                    retired_tables: 0,
                    flush: TlbFlush::none(),
                });
            }
            EntryKind::Table => self.child(entry),
        };
        // The first 4 KiB translation fixes the host base and the flags.
        let (first, first_level) = self
            .first_leaf(child, target + 1)
            .ok_or(NptError::NotCollapsible { gpa })?;
        let base: usize = first.paddr().into();
        if !size.is_aligned(base) {
            return Err(NptError::NotCollapsible { gpa });
        }
        let flags = first.flags();
        let mut state = 0;
        self.check_uniform(child, target + 1, addr, base, flags, &mut state)?;

        // The huge leaf keeps the accessed/dirty state of every leaf it
        // replaces, not only the first one's: a page the hardware dirtied
        // anywhere in the span must still reach the next harvest.
        let mut huge = F::Entry::from_raw(first.with_huge(true).raw() | state);
        huge.set_paddr(base.into());
        let _ = first_level;
        // Room to park every table of the subtree: at most one per entry
        // of each level below the target, bounded by what the table has.
        let bound = (1..F::LEVELS - target)
            .map(|h| ENTRIES_PER_TABLE.saturating_pow(h as u32 - 1))
            .fold(0usize, usize::saturating_add)
            .min(self.stats.table_frames);
        self.retired.reserve(bound)?;
        // Unlink the subtree before its frames are parked.
        table.set(idx, huge);
        let mut flush = TlbFlush::none();
        flush.add(addr, size.bytes());
        let mut retired = 0;
        self.release_subtree(child, target + 1, &mut retired, &mut flush);
        self.count_leaves(size, 1, true);
        Ok(Collapsed {
            retired_tables: retired,
            flush,
        })
    }

    /// The first leaf below `table` and its level.
    fn first_leaf(&self, table: TableRef<F::Entry>, level: usize) -> Option<(F::Entry, usize)> {
        let entry = table.get(0);
        match entry.kind(level == F::LEVELS - 1) {
            EntryKind::Empty => None,
            EntryKind::Leaf => Some((entry, level)),
            EntryKind::Table => self.first_leaf(self.child(entry), level + 1),
        }
    }

    /// Checks that every entry below `table` is a leaf mapping
    /// `base + (gpa - table_gpa)` with `flags`, and ORs the bits that hold
    /// each leaf's accessed/dirty state into `state`.
    fn check_uniform(
        &self,
        table: TableRef<F::Entry>,
        level: usize,
        table_gpa: usize,
        base: usize,
        flags: MappingFlags,
        state: &mut u64,
    ) -> NptResult {
        let last = level == F::LEVELS - 1;
        let span = 1usize << F::shift(level);
        for i in 0..ENTRIES_PER_TABLE {
            let gpa = table_gpa + i * span;
            let entry = table.get(i);
            let bad = NptError::NotCollapsible {
                gpa: GuestPhysAddr::from_usize(gpa),
            };
            match entry.kind(last) {
                EntryKind::Empty => return Err(bad),
                EntryKind::Leaf => {
                    let pa: usize = entry.paddr().into();
                    if pa != base + i * span || entry.flags() != flags {
                        return Err(bad);
                    }
                    // The bits clearing the state would change are the
                    // state (same positions in small and huge leaves).
                    let mut clean = entry;
                    clean.clear_accessed();
                    clean.clear_dirty();
                    *state |= entry.raw() ^ clean.raw();
                }
                EntryKind::Table => self.check_uniform(
                    self.child(entry),
                    level + 1,
                    gpa,
                    base + i * span,
                    flags,
                    state,
                )?,
            }
        }
        Ok(())
    }

    /// Parks `table` and every table below it, uncounting their leaves.
    fn release_subtree(
        &mut self,
        table: TableRef<F::Entry>,
        level: usize,
        retired: &mut usize,
        flush: &mut TlbFlush,
    ) {
        let last = level == F::LEVELS - 1;
        for i in 0..ENTRIES_PER_TABLE {
            let entry = table.get(i);
            match entry.kind(last) {
                EntryKind::Empty => {}
                EntryKind::Leaf => {
                    if let Some(size) = F::leaf_size(level) {
                        self.count_leaves(size, 1, false);
                    }
                }
                EntryKind::Table => {
                    self.release_subtree(self.child(entry), level + 1, retired, flush)
                }
            }
        }
        self.retire_table(table, flush);
        *retired += 1;
    }
}
