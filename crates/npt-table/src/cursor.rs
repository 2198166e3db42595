//! A read-only cursor that keeps its walk path, and batched translation.

use gpa_types::{GuestPhysAddr, HostPhysAddr, PageSize};
use npt_entry::{EntryKind, GenericPTE, NestedEntry, NptFormat};

use crate::error::{NptError, NptResult};
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::{MAX_LEVELS, NestedPageTable, Translation};

/// Lookups that reuse the previous walk: a query whose GPA lies under the
/// same tables as the last one starts from the deepest shared table instead
/// of the root.
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
    /// For each level: the GPA the cached table starts at, and the table.
    path: [(usize, Option<TableRef<F::Entry>>); MAX_LEVELS],
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// A read-only cursor over the table.
    pub fn cursor(&self) -> Cursor<'_, F, A> {
        let mut path = [(usize::MAX, None); MAX_LEVELS];
        path[0] = (0, Some(self.root_table()));
        Cursor { table: self, path }
    }

    /// Translates many GPAs at once: `out[i]` receives the HPA of `gpas[i]`
    /// (or `None`). The walks of a group advance level by level together so
    /// that their cache misses overlap. Extra elements of the longer slice
    /// are left alone.
    pub fn translate_batch(&self, gpas: &[GuestPhysAddr], out: &mut [Option<HostPhysAddr>]) {
        const GROUP: usize = 8;
        for (gpas, out) in gpas.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            let n = gpas.len().min(out.len());
            let mut tables = [self.root_table(); GROUP];
            let mut live = [false; GROUP];
            for k in 0..n {
                let addr = gpas[k].as_usize();
                live[k] = (addr as u64) < F::GPA_LIMIT;
                out[k] = None;
            }
            for level in 0..F::LEVELS {
                let last = level == F::LEVELS - 1;
                for k in 0..n {
                    if !live[k] {
                        continue;
                    }
                    let addr = gpas[k].as_usize();
                    let entry = tables[k].get(F::index(addr, level));
                    match entry.kind(last) {
                        EntryKind::Table => tables[k] = self.child(entry),
                        EntryKind::Leaf => {
                            live[k] = false;
                            if let Some(size) = F::leaf_size(level) {
                                let base: usize = entry.paddr().into();
                                out[k] = Some(HostPhysAddr::from_usize(base + size.offset(addr)));
                            }
                        }
                        EntryKind::Empty => live[k] = false,
                    }
                }
            }
        }
    }
}

impl<F: NptFormat, A: FrameAllocator> Cursor<'_, F, A> {
    /// The leaf entry mapping `addr` and its level, walking from the deepest
    /// cached table that covers it.
    #[inline]
    fn lookup(&mut self, addr: usize) -> Option<(F::Entry, usize)> {
        let mut level = F::LEVELS - 1;
        while level > 0 {
            let span = 1usize << F::shift(level - 1);
            if let (base, Some(_)) = self.path[level] {
                if base == addr & !(span - 1) {
                    break;
                }
            }
            level -= 1;
        }
        let mut table = self.path[level].1?;
        loop {
            let entry = table.get(F::index(addr, level));
            match entry.kind(level == F::LEVELS - 1) {
                EntryKind::Empty => return None,
                EntryKind::Leaf => return Some((entry, level)),
                EntryKind::Table => {
                    table = self.table.child(entry);
                    level += 1;
                    let span = 1usize << F::shift(level - 1);
                    self.path[level] = (addr & !(span - 1), Some(table));
                }
            }
        }
    }

    /// The translation of `gpa`, as [`NestedPageTable::query`] gives it.
    #[inline]
    pub fn query(&mut self, gpa: GuestPhysAddr) -> NptResult<Translation> {
        let addr = gpa.as_usize();
        if addr as u64 >= F::GPA_LIMIT {
            return Err(NptError::GpaOutOfRange { gpa: addr, gpa_bits: F::GPA_BITS });
        }
        let (entry, level) = self.lookup(addr).ok_or(NptError::NotMapped { gpa })?;
        let size: PageSize = F::leaf_size(level).ok_or(NptError::NotMapped { gpa })?;
        let base: usize = entry.paddr().into();
        Ok(Translation { hpa: HostPhysAddr::from_usize(base + size.offset(addr)), flags: entry.flags(), size })
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
