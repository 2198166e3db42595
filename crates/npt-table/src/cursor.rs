//! A read-only cursor that keeps its walk path, and batched translation.

use gpa_types::{GuestPhysAddr, HostPhysAddr, PageSize};
use npt_entry::{ENTRIES_PER_TABLE, EntryKind, GenericPTE, NestedEntry, NptFormat};

use crate::error::{NptError, NptResult};
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::{NestedPageTable, Translation};

/// Lookups that reuse earlier walks: a cursor remembers the tables one
/// level above the leaf tables (each covers 1 GiB) that its walks passed, up
/// to 32 of them, and a lookup whose GPA lies under one starts there with
/// two loads instead of walking from the root.
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
    /// Cached tables one level above the last (directories of leaf
    /// tables), direct-mapped by the GiB they cover: slot `g % DIRS` holds
    /// the directory of GiB `g` when `dir_base[slot] == g`.
    dir_base: [usize; DIRS],
    dir: [TableRef<F::Entry>; DIRS],
}

/// Directory slots of a cursor: 32 GiB of guest-physical space walk from
/// the directory without touching the upper levels.
const DIRS: usize = 32;

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// A read-only cursor over the table.
    pub fn cursor(&self) -> Cursor<'_, F, A> {
        Cursor {
            table: self,
            dir_base: [usize::MAX; DIRS],
            dir: [self.root_table(); DIRS],
        }
    }

    /// Translates many GPAs at once through one [`Cursor`]: `out[i]`
    /// receives the HPA of `gpas[i]` (or `None`). Walks under a directory
    /// the cursor has seen take two loads instead of a walk from the root.
    /// Extra elements of the longer slice are left alone.
    pub fn translate_batch(&self, gpas: &[GuestPhysAddr], out: &mut [Option<HostPhysAddr>]) {
        self.cursor().translate_batch(gpas, out)
    }
}

impl<F: NptFormat, A: FrameAllocator> Cursor<'_, F, A> {
    /// Shift of the directory level's index: its entries map 2 MiB each.
    const DIR_SHIFT: u32 = 21;
    /// Whether the format has a directory level below the root.
    const HAS_DIR: bool = F::LEVELS > 2;

    /// Where a walk for `addr` starts: the cached directory (table, shift,
    /// index mask) when it covers `addr`, else the root.
    #[inline(always)]
    fn start(&self, addr: usize) -> (TableRef<F::Entry>, u32, usize) {
        let gib = addr >> 30;
        if Self::HAS_DIR && self.dir_base[gib % DIRS] == gib {
            (self.dir[gib % DIRS], Self::DIR_SHIFT, ENTRIES_PER_TABLE - 1)
        } else {
            (self.table.root_table(), F::ROOT_SHIFT, F::ROOT_ENTRIES - 1)
        }
    }

    /// Walks from where [`Self::start`] says to the leaf of `addr`, caching
    /// the directory it passes. Returns the leaf and its shift.
    #[inline(always)]
    fn walk(&mut self, addr: usize) -> Option<(F::Entry, u32)> {
        let (mut table, mut shift, mut mask) = self.start(addr);
        loop {
            let entry = table.get((addr >> shift) & mask);
            match entry.kind(shift == PageSize::Size4K.shift()) {
                EntryKind::Empty => return None,
                EntryKind::Leaf => return (shift <= F::MAX_LEAF.shift()).then_some((entry, shift)),
                EntryKind::Table if shift > PageSize::Size4K.shift() => {
                    table = self.table.child(entry);
                    shift -= npt_entry::BITS_PER_LEVEL;
                    mask = ENTRIES_PER_TABLE - 1;
                    if Self::HAS_DIR && shift == Self::DIR_SHIFT {
                        let gib = addr >> 30;
                        self.dir[gib % DIRS] = table;
                        self.dir_base[gib % DIRS] = gib;
                    }
                }
                EntryKind::Table => return None,
            }
        }
    }

    /// The leaf entry mapping `addr` and its level.
    #[inline(always)]
    fn lookup(&mut self, addr: usize) -> Option<(F::Entry, usize)> {
        let (entry, shift) = self.walk(addr)?;
        Some((entry, F::LEVELS - 1 - ((shift - 12) / 9) as usize))
    }

    /// [`NestedPageTable::translate_batch`] through this cursor.
    pub fn translate_batch(&mut self, gpas: &[GuestPhysAddr], out: &mut [Option<HostPhysAddr>]) {
        for (gpa, o) in gpas.iter().zip(out.iter_mut()) {
            *o = self.translate(*gpa);
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
        let gib = addr >> 30;
        if Self::HAS_DIR && self.dir_base[gib % DIRS] == gib {
            return self.walk_from_dir(self.dir[gib % DIRS], addr);
        }
        let (entry, shift) = self.walk(addr)?;
        let base: usize = entry.paddr().into();
        Some(HostPhysAddr::from_usize(
            base + (addr & ((1usize << shift) - 1)),
        ))
    }

    /// The two-level walk from the cached directory, with every shift a
    /// constant: the common case of a cursor over nearby GPAs.
    #[inline(always)]
    fn walk_from_dir(&self, dir: TableRef<F::Entry>, addr: usize) -> Option<HostPhysAddr> {
        const M2: usize = PageSize::Size2M.bytes();
        const K4: usize = PageSize::Size4K.bytes();
        let entry = dir.get((addr >> 21) & (ENTRIES_PER_TABLE - 1));
        let (entry, offset) = match entry.kind(false) {
            EntryKind::Table => {
                let leaf = self
                    .table
                    .child(entry)
                    .get((addr >> 12) & (ENTRIES_PER_TABLE - 1));
                if leaf.kind(true) != EntryKind::Leaf {
                    return None;
                }
                (leaf, addr & (K4 - 1))
            }
            EntryKind::Leaf => (entry, addr & (M2 - 1)),
            EntryKind::Empty => return None,
        };
        let base: usize = entry.paddr().into();
        Some(HostPhysAddr::from_usize(base + offset))
    }
}
