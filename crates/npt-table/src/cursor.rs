//! A read-only cursor that keeps its walk path, and batched translation.

use gpa_types::{GuestPhysAddr, HostPhysAddr, PageSize};
use npt_entry::{EntryKind, GenericPTE, NestedEntry, NptFormat};

use crate::error::{NptError, NptResult};
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::{NestedPageTable, Translation};

/// One step of a walk.
enum Step<E> {
    /// The walk ended: the leaf and its level, or nothing mapped.
    Done(Option<(E, usize)>),
    /// Go on in this table.
    Next(TableRef<E>),
}

/// Lookups that reuse the previous walk: a cursor remembers the last table
/// it passed one level above the leaf tables (the table covering 1 GiB on a
/// 4-level format), and a query whose GPA lies under it starts there instead
/// of at the root.
///
/// ```
/// # use npt_table::{HostFrameAllocator, MapPolicy, NestedPageTable};
/// # use npt_entry::npt::Npt4;
/// # use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags};
/// # let alloc = HostFrameAllocator::new();
/// # let mut table = NestedPageTable::<Npt4, _>::new(&alloc).unwrap();
/// # table.map_region(0.into(), 0x10_0000.into(), 0x10000, MappingFlags::READ, MapPolicy::Only4K).unwrap().ignore();
/// let mut cursor = table.cursor();
/// for page in 0..16 {
///     let hpa = cursor.translate(GuestPhysAddr::from(page * 0x1000)).unwrap();
///     assert_eq!(hpa, HostPhysAddr::from(0x10_0000 + page * 0x1000));
/// }
/// ```
pub struct Cursor<'t, F: NptFormat, A: FrameAllocator> {
    table: &'t NestedPageTable<F, A>,
    /// The cached table one level above the last (the directory of leaf
    /// tables) and the GPA it starts at; `usize::MAX` when none.
    dir_base: usize,
    dir: TableRef<F::Entry>,
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// A read-only cursor over the table.
    pub fn cursor(&self) -> Cursor<'_, F, A> {
        Cursor {
            table: self,
            dir_base: usize::MAX,
            dir: self.root_table(),
        }
    }

    /// Translates many GPAs at once: `out[i]` receives the HPA of `gpas[i]`
    /// (or `None`). The walks start from the deepest table a
    /// [`Cursor`] has cached for their address and advance level by level
    /// in groups, so that their cache misses overlap. Extra elements of the
    /// longer slice are left alone.
    pub fn translate_batch(&self, gpas: &[GuestPhysAddr], out: &mut [Option<HostPhysAddr>]) {
        self.cursor().translate_batch(gpas, out)
    }
}

impl<F: NptFormat, A: FrameAllocator> Cursor<'_, F, A> {
    /// Level of the directory of leaf tables.
    const DIR: usize = F::LEVELS - 2;
    /// Bytes one directory table covers.
    /// (Its entries map 2 MiB each, whatever the format.)
    const DIR_SPAN: usize = 1 << 30;

    /// The table to start a walk for `addr` at, and its level: the cached
    /// directory when it covers `addr`, else the root.
    #[inline(always)]
    fn start(&self, addr: usize) -> (TableRef<F::Entry>, usize) {
        if Self::DIR > 0 && addr & !(Self::DIR_SPAN - 1) == self.dir_base {
            (self.dir, Self::DIR)
        } else {
            (self.table.root_table(), 0)
        }
    }

    /// One step of a walk: the entry of `addr` in `table` at `level`; caches
    /// the directory when the walk passes it.
    #[inline(always)]
    fn step(&mut self, addr: usize, level: usize, table: TableRef<F::Entry>) -> Step<F::Entry> {
        let entry = table.get(F::index(addr, level));
        match entry.kind(level == F::LEVELS - 1) {
            EntryKind::Empty => Step::Done(None),
            EntryKind::Leaf => Step::Done(Some((entry, level))),
            EntryKind::Table => {
                let child = self.table.child(entry);
                if level + 1 == Self::DIR {
                    self.dir = child;
                    self.dir_base = addr & !(Self::DIR_SPAN - 1);
                }
                Step::Next(child)
            }
        }
    }

    /// The leaf entry mapping `addr` and its level.
    #[inline(always)]
    fn lookup(&mut self, addr: usize) -> Option<(F::Entry, usize)> {
        let (mut table, mut level) = self.start(addr);
        loop {
            match self.step(addr, level, table) {
                Step::Done(found) => return found,
                Step::Next(child) => {
                    table = child;
                    level += 1;
                }
            }
        }
    }

    /// [`NestedPageTable::translate_batch`] through this cursor.
    ///
    /// Software-pipelined: the walk of `gpas[j]` runs down to its last-level
    /// table and prefetches the entry, and the entry is read only when
    /// `gpas[j + AHEAD]` has been started, so up to `AHEAD` misses on leaf
    /// tables are in flight at once.
    pub fn translate_batch(&mut self, gpas: &[GuestPhysAddr], out: &mut [Option<HostPhysAddr>]) {
        const AHEAD: usize = 16;
        const LAST_LEVEL_SIZE: usize = PageSize::Size4K.bytes();
        let n = gpas.len().min(out.len());
        let (gpas, out) = (&gpas[..n], &mut out[..n]);
        let mut pending: [(usize, Option<TableRef<F::Entry>>); AHEAD] = [(0, None); AHEAD];
        for j in 0..n + AHEAD {
            let slot = j % AHEAD;
            if j >= AHEAD {
                if let ((addr, Some(table)), Some(o)) = (pending[slot], out.get_mut(j - AHEAD)) {
                    let entry = table.get(F::index(addr, F::LEVELS - 1));
                    *o = (entry.kind(true) == EntryKind::Leaf).then(|| {
                        let base: usize = entry.paddr().into();
                        HostPhysAddr::from_usize(base + (addr & (LAST_LEVEL_SIZE - 1)))
                    });
                }
                pending[slot] = (0, None);
            }
            let (Some(gpa), Some(o)) = (gpas.get(j), out.get_mut(j)) else {
                continue;
            };
            let addr = gpa.as_usize();
            *o = None;
            if addr as u64 >= F::GPA_LIMIT {
                continue;
            }
            let (mut table, mut level) = self.start(addr);
            while level < F::LEVELS - 1 {
                match self.step(addr, level, table) {
                    Step::Done(found) => {
                        *o = found.and_then(|(entry, level)| {
                            let size = F::leaf_size(level)?;
                            let base: usize = entry.paddr().into();
                            Some(HostPhysAddr::from_usize(base + size.offset(addr)))
                        });
                        break;
                    }
                    Step::Next(child) => {
                        table = child;
                        level += 1;
                    }
                }
            }
            if level == F::LEVELS - 1 {
                table.prefetch(F::index(addr, level));
                pending[slot] = (addr, Some(table));
            }
        }
    }

    /// The translation of `gpa`, as [`NestedPageTable::query`] gives it.
    #[inline]
    pub fn query(&mut self, gpa: GuestPhysAddr) -> NptResult<Translation> {
        let addr = gpa.as_usize();
        if addr as u64 >= F::GPA_LIMIT {
            return Err(NptError::GpaOutOfRange {
                gpa: addr,
                gpa_bits: F::GPA_BITS,
            });
        }
        let (entry, level) = self.lookup(addr).ok_or(NptError::NotMapped { gpa })?;
        let size: PageSize = F::leaf_size(level).ok_or(NptError::NotMapped { gpa })?;
        let base: usize = entry.paddr().into();
        Ok(Translation {
            hpa: HostPhysAddr::from_usize(base + size.offset(addr)),
            flags: entry.flags(),
            size,
        })
    }

    /// The host address `gpa` maps to, if any.
    #[inline]
    pub fn translate(&mut self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        let addr = gpa.as_usize();
        if addr as u64 >= F::GPA_LIMIT {
            return None;
        }
        let (entry, level) = self.lookup(addr)?;
        let size = F::leaf_size(level)?;
        let base: usize = entry.paddr().into();
        Some(HostPhysAddr::from_usize(base + size.offset(addr)))
    }
}
