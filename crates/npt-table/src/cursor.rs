//! A read-only cursor that keeps its walk path, and batched translation.

use gpa_types::{GuestPhysAddr, HostPhysAddr};
use npt_entry::NptFormat;

use crate::error::QueryError;
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::{NestedPageTable, Translation};
use crate::walk::{Record, Slot, Tree};

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
    tree: Tree<'t, F, A>,
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
        let tree = self.tree();
        Cursor {
            tree,
            dir_base: [usize::MAX; DIRS],
            dir: [tree.root_table(); DIRS],
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

/// Records the directory a walk passes into the cursor's cache.
struct DirRec<'c, F: NptFormat> {
    dir_base: &'c mut [usize; DIRS],
    dir: &'c mut [TableRef<F::Entry>; DIRS],
    gib: usize,
}

impl<F: NptFormat> Record<F::Entry> for DirRec<'_, F> {
    #[inline(always)]
    fn table(&mut self, level: usize, table: TableRef<F::Entry>) {
        if level + 2 == F::LEVELS && level > 0 {
            let slot = self.gib % DIRS;
            self.dir[slot] = table;
            self.dir_base[slot] = self.gib;
        }
    }
}

impl<F: NptFormat, A: FrameAllocator> Cursor<'_, F, A> {
    /// The level of the directory: the table above the last level.
    const DIR_LEVEL: usize = F::LEVELS - 2;
    /// Whether the format has a directory level below the root.
    const HAS_DIR: bool = F::LEVELS > 2;

    /// The walk for `addr`: from the cached directory when it covers
    /// `addr`, else from the root, caching the directory it passes.
    #[inline(always)]
    fn lookup(&mut self, addr: usize) -> Slot<F::Entry> {
        let gib = addr >> 30;
        let slot = gib % DIRS;
        if Self::HAS_DIR && self.dir_base[slot] == gib {
            return self.tree.walk_from(
                self.dir[slot],
                Self::DIR_LEVEL,
                addr,
                F::LEVELS - 1,
                &mut (),
            );
        }
        let mut rec = DirRec::<F> {
            dir_base: &mut self.dir_base,
            dir: &mut self.dir,
            gib,
        };
        self.tree.walk(addr, &mut rec)
    }

    /// [`NestedPageTable::translate_batch`] through this cursor.
    pub fn translate_batch(&mut self, gpas: &[GuestPhysAddr], out: &mut [Option<HostPhysAddr>]) {
        for (gpa, o) in gpas.iter().zip(out.iter_mut()) {
            *o = self.translate(*gpa);
        }
    }

    /// The translation of `gpa`, as [`NestedPageTable::query`] gives it.
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::query`].
    #[inline]
    pub fn query(&mut self, gpa: GuestPhysAddr) -> Result<Translation, QueryError> {
        if !F::gpa_in_range(gpa) {
            return Err(QueryError::GpaOutOfRange {
                gpa,
                gpa_bits: F::GPA_BITS,
            });
        }
        self.lookup(gpa.as_usize()).query(gpa)
    }

    /// The host address `gpa` maps to, if any.
    #[inline]
    pub fn translate(&mut self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        if !F::gpa_in_range(gpa) {
            return None;
        }
        let hpa = self.lookup(gpa.as_usize()).hpa(gpa.as_usize())?;
        Some(HostPhysAddr::from_usize(hpa))
    }
}
