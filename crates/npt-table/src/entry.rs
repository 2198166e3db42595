//! Positions: an entry handle at a GPA, and an iterator over the mapped runs
//! of a range.
//!
//! [`NestedPageTable::entry`] walks once and hands back where the walk
//! ended, as `BTreeMap::entry` does: a [`VacantEntry`] maps a page there
//! (creating only the tables below the walk's end), a [`LeafEntry`]
//! changes or removes the leaf there (pruning along the same path). A fault
//! handler needs one walk, whatever it then does.
//!
//! [`NestedPageTable::mappings`] yields the mapped runs of a range, merged
//! where leaves are contiguous with equal flags, walking each leaf from the
//! deepest table of the previous one instead of from the root.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::{GenericPTE, NestedEntry, NptFormat};

use crate::error::{ChangeError, MapError, QueryError, RangeError};
use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::range::{MappedRun, RunMerger};
use crate::table::{Ledger, NestedPageTable, Translation};
use crate::walk::{Path, Slot, Step, Tree, entry_span};

/// What a walk to one guest page found: see [`NestedPageTable::entry`].
pub enum Entry<'t, F: NptFormat, A: FrameAllocator> {
    /// Nothing maps the page.
    Vacant(VacantEntry<'t, F, A>),
    /// A leaf (of any size) maps the page.
    Leaf(LeafEntry<'t, F, A>),
}

/// An unmapped 4 KiB page, with the walk that found it.
pub struct VacantEntry<'t, F: NptFormat, A: FrameAllocator> {
    table: &'t mut NestedPageTable<F, A>,
    path: Path<F::Entry>,
    gpa: usize,
    /// The level where the walk stopped.
    level: usize,
}

/// The leaf that maps a page, with the walk that found it.
pub struct LeafEntry<'t, F: NptFormat, A: FrameAllocator> {
    table: &'t mut NestedPageTable<F, A>,
    path: Path<F::Entry>,
    slot: Slot<F::Entry>,
    size: PageSize,
    /// First GPA of the leaf.
    base: usize,
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// The entry for the 4 KiB page holding `gpa`, found in one walk.
    ///
    /// ```
    /// # use npt_table::{Entry, HostFrameAllocator, NestedPageTable};
    /// # use npt_entry::ept::Ept4;
    /// # use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags};
    /// let alloc = HostFrameAllocator::new();
    /// let mut t = NestedPageTable::<Ept4, _>::new(&alloc).unwrap();
    /// let gpa = GuestPhysAddr::from(0x8000_1234);
    /// match t.entry(gpa).unwrap() {
    ///     Entry::Vacant(v) => v.insert(HostPhysAddr::from(0x5000), MappingFlags::READ).unwrap().ignore(),
    ///     Entry::Leaf(_) => unreachable!(),
    /// }
    /// let Entry::Leaf(leaf) = t.entry(gpa).unwrap() else { unreachable!() };
    /// assert_eq!(leaf.translation().hpa, HostPhysAddr::from(0x5000));
    /// ```
    ///
    /// # Errors
    ///
    /// [`QueryError::GpaOutOfRange`] past the format's GPA width (an
    /// unmapped page is [`Entry::Vacant`], not an error).
    #[inline]
    pub fn entry(&mut self, gpa: GuestPhysAddr) -> Result<Entry<'_, F, A>, QueryError> {
        if !F::gpa_in_range(gpa) {
            return Err(QueryError::GpaOutOfRange {
                gpa,
                gpa_bits: F::GPA_BITS,
            });
        }
        let addr = PageSize::Size4K.align_down(gpa.as_usize());
        let mut path = self.tree().path();
        let slot = self.tree().walk_path(&mut path, addr, F::LEVELS - 1);
        Ok(match slot.step {
            Step::Leaf(size) => Entry::Leaf(LeafEntry {
                table: self,
                path,
                slot,
                size,
                base: size.align_down(addr),
            }),
            _ => Entry::Vacant(VacantEntry {
                table: self,
                path,
                gpa: addr,
                level: slot.level,
            }),
        })
    }

    /// The mapped runs of `[gpa, gpa + len)` in GPA order: consecutive
    /// leaves with equal flags and contiguous host addresses merged into
    /// one run, runs clipped to the range. Each leaf is walked from the
    /// deepest table of the previous one; a hole is skipped by the span of
    /// the entry that is empty.
    ///
    /// # Errors
    ///
    /// The range is checked as by [`NestedPageTable::check_range`] (4 KiB
    /// alignment).
    pub fn mappings(
        &self,
        gpa: GuestPhysAddr,
        len: usize,
    ) -> Result<Mappings<'_, F, A>, RangeError> {
        let end = Self::check_range(gpa, len, PageSize::Size4K.bytes())?;
        let tree = self.tree();
        Ok(Mappings {
            tree,
            path: tree.path(),
            pos: gpa.as_usize(),
            end,
            runs: RunMerger::new(true),
        })
    }

    /// Maps a `size` leaf (at `level`) at `addr`, where the walk along
    /// `path` stopped at level `from` on an empty entry (or at the empty
    /// target slot), taking the frames for the missing tables first. The
    /// caller has checked the address, size and flags.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_at(
        &mut self,
        path: &mut Path<F::Entry>,
        addr: usize,
        from: usize,
        level: usize,
        hpa: HostPhysAddr,
        size: PageSize,
        flags: MappingFlags,
    ) -> Result<TlbFlush, MapError> {
        let mut stash = self.take_stash(level.saturating_sub(from))?;
        let (tree, books) = self.parts();
        let Some(table) = tree.descend(books, path, addr, level, &mut stash, None) else {
            stash.give_back(&self.alloc);
            return Err(MapError::AlreadyMapped {
                gpa: GuestPhysAddr::from_usize(addr),
            });
        };
        table.set(
            F::index(addr, level),
            F::Entry::new_page(hpa.into(), flags, size.is_huge()),
        );
        self.books.leaves(size, 1, true);
        stash.give_back(&self.alloc);
        let mut flush = TlbFlush::none();
        flush.add(addr, size.bytes());
        Ok(flush)
    }
}

impl<F: NptFormat, A: FrameAllocator> VacantEntry<'_, F, A> {
    /// The page's guest address.
    pub fn gpa(&self) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(self.gpa)
    }

    /// Maps the page to a new frame that `make` takes from the table's
    /// allocator (and may fill): the frame for a page populated on first
    /// touch. If the map fails, the frame goes back to the allocator. `make`
    /// returning `None` is [`MapError::NoMemory`]. Returns the frame and the
    /// flush record.
    ///
    /// # Errors
    ///
    /// As [`VacantEntry::insert`].
    #[inline]
    pub fn insert_new(
        self,
        flags: MappingFlags,
        make: impl FnOnce(&A) -> Option<HostPhysAddr>,
    ) -> Result<(HostPhysAddr, TlbFlush), MapError> {
        let mut this = self;
        let hpa = make(&this.table.alloc).ok_or(MapError::NoMemory)?;
        match this.insert_here(hpa, flags) {
            Ok(flush) => Ok((hpa, flush)),
            Err(e) => {
                this.table.alloc.dealloc_frames(hpa, 1);
                Err(e)
            }
        }
    }

    /// Maps the page to the 4 KiB frame at `hpa`, creating only the tables
    /// below where the walk stopped. All or nothing.
    ///
    /// # Errors
    ///
    /// [`MapError`]: `HpaNotAligned`, `HpaOutOfRange`, `BadFlags`, or
    /// `NoMemory` / `TableFrameOutOfRange` for the tables it creates.
    pub fn insert(mut self, hpa: HostPhysAddr, flags: MappingFlags) -> Result<TlbFlush, MapError> {
        self.insert_here(hpa, flags)
    }

    #[inline]
    fn insert_here(
        &mut self,
        hpa: HostPhysAddr,
        flags: MappingFlags,
    ) -> Result<TlbFlush, MapError> {
        let size = PageSize::Size4K;
        self.table
            .check_hpa_range(hpa, size.bytes(), size.bytes())?;
        npt_entry::check_flags(flags)?;
        self.table.insert_at(
            &mut self.path,
            self.gpa,
            self.level,
            F::LEVELS - 1,
            hpa,
            size,
            flags,
        )
    }
}

impl<F: NptFormat, A: FrameAllocator> LeafEntry<'_, F, A> {
    /// The first guest address of the leaf.
    pub fn gpa(&self) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(self.base)
    }

    /// The leaf's size.
    pub fn size(&self) -> PageSize {
        self.size
    }

    /// What the leaf maps: its first host address, flags and size.
    pub fn translation(&self) -> Translation {
        Translation {
            hpa: self.slot.entry.paddr().into(),
            flags: self.slot.entry.flags(),
            size: self.size,
        }
    }

    /// Whether the hardware has set the leaf's dirty bit (false where the
    /// format has none).
    pub fn is_dirty(&self) -> bool {
        self.slot.entry.is_dirty()
    }

    /// Changes the leaf's flags, keeping its address and every bit outside
    /// `NestedEntry::FLAG_MASK` (as [`NestedPageTable::protect`]).
    ///
    /// # Errors
    ///
    /// [`ChangeError::BadFlags`].
    pub fn protect(self, flags: MappingFlags) -> Result<TlbFlush, ChangeError> {
        npt_entry::check_flags(flags)?;
        let template = F::Entry::new_page(0.into(), flags, self.size.is_huge());
        self.slot
            .table
            .set(self.slot.idx, self.slot.entry.with_flags_of(template));
        let mut flush = TlbFlush::none();
        flush.add(self.base, self.size.bytes());
        Ok(flush)
    }

    /// Points the leaf at `hpa` with `flags`, keeping its size.
    ///
    /// # Errors
    ///
    /// [`ChangeError::BadFlags`], or `HpaNotAligned` / `HpaOutOfRange` for a
    /// host address the leaf cannot hold.
    pub fn remap(self, hpa: HostPhysAddr, flags: MappingFlags) -> Result<TlbFlush, ChangeError> {
        npt_entry::check_flags(flags)?;
        let bytes = self.size.bytes();
        self.table.check_hpa_range(hpa, bytes, bytes)?;
        let leaf = F::Entry::new_page(hpa.into(), flags, self.size.is_huge());
        self.slot.table.set(self.slot.idx, leaf);
        let mut flush = TlbFlush::none();
        flush.add(self.base, bytes);
        Ok(flush)
    }

    /// Removes the leaf, parking the tables it leaves empty (as
    /// [`NestedPageTable::unmap`], without walking again).
    ///
    /// # Errors
    ///
    /// [`ChangeError::NoMemory`]: no room to park the tables it empties.
    pub fn unmap(mut self) -> Result<(Translation, TlbFlush), ChangeError> {
        self.table.books.retired.reserve(F::LEVELS - 1)?;
        let t = self.translation();
        self.slot.table.set(self.slot.idx, F::Entry::from_raw(0));
        self.table.books.leaves(self.size, 1, false);
        let mut flush = TlbFlush::none();
        flush.add(self.base, self.size.bytes());
        let (tree, books) = self.table.parts();
        tree.prune(books, &mut self.path, self.base, &mut flush);
        Ok((t, flush))
    }
}

/// The mapped runs of a range: see [`NestedPageTable::mappings`].
pub struct Mappings<'t, F: NptFormat, A: FrameAllocator> {
    tree: Tree<'t, F, A>,
    path: Path<F::Entry>,
    pos: usize,
    end: usize,
    runs: RunMerger,
}

impl<F: NptFormat, A: FrameAllocator> Mappings<'_, F, A> {
    /// Yields every leaf as its own run (clipped to the range) instead of
    /// merging: for host access, where only one leaf's frame is known to
    /// be contiguous in the hypervisor's view (`FrameAllocator::phys_to_virt`).
    pub fn per_leaf(mut self) -> Self {
        self.runs = RunMerger::new(false);
        self
    }
}

impl<F: NptFormat, A: FrameAllocator> Iterator for Mappings<'_, F, A> {
    type Item = MappedRun;

    fn next(&mut self) -> Option<MappedRun> {
        while self.pos < self.end {
            let slot = self.tree.walk_path(&mut self.path, self.pos, F::LEVELS - 1);
            let Step::Leaf(size) = slot.step else {
                // A hole: skip the empty entry's span.
                let span = entry_span::<F>(slot.level);
                self.pos = self.end.min((self.pos & !(span - 1)).saturating_add(span));
                continue;
            };
            let hi = self.end.min(size.align_down(self.pos) + size.bytes());
            let done = self.runs.push(self.pos, hi, size, slot.entry);
            self.pos = hi;
            if done.is_some() {
                return done;
            }
        }
        self.runs.finish()
    }
}
