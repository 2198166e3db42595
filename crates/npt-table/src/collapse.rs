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
    /// Table frames given back to the allocator.
    pub freed_tables: usize,
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
                    freed_tables: 0,
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
        self.check_uniform(child, target + 1, addr, base, flags)?;

        let leaf = first.with_huge(true);
        let mut huge = leaf;
        huge.set_paddr(base.into());
        let _ = first_level;
        // Unlink the subtree before its frames go back.
        table.set(idx, huge);
        let mut freed = 0;
        self.release_subtree(child, target + 1, &mut freed);
        self.count_leaves(size, 1, true);
        let mut flush = TlbFlush::none();
        flush.add(addr, size.bytes());
        Ok(Collapsed {
            freed_tables: freed,
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
    /// `base + (gpa - table_gpa)` with `flags`.
    fn check_uniform(
        &self,
        table: TableRef<F::Entry>,
        level: usize,
        table_gpa: usize,
        base: usize,
        flags: MappingFlags,
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
                }
                EntryKind::Table => {
                    self.check_uniform(self.child(entry), level + 1, gpa, base + i * span, flags)?
                }
            }
        }
        Ok(())
    }

    /// Frees `table` and every table below it, uncounting their leaves.
    fn release_subtree(&mut self, table: TableRef<F::Entry>, level: usize, freed: &mut usize) {
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
                EntryKind::Table => self.release_subtree(self.child(entry), level + 1, freed),
            }
        }
        self.free_table(table);
        *freed += 1;
    }
}
