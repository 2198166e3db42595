//! Changes that share the table: inserts and flag updates that many CPUs
//! make at once, through `&self`.
//!
//! A hypervisor handles faults from many vCPUs under a shared lock (region
//! changes take it exclusively). What those faults change, they change with
//! compare-and-swap on one entry at a time, as KVM's TDP MMU does:
//!
//! - [`NestedPageTable::insert_new_concurrent`] walks to the page, takes the
//!   zeroed table frames the walk lacks and the leaf's frame *before*
//!   changing anything, then publishes each missing table and the leaf with
//!   compare-and-swap from the empty entry it read. A CPU that loses a race
//!   for a table slot keeps its frame for the next level down (it is still
//!   zero: nothing wrote to it) and walks into the winner's table; one that
//!   loses the race for the leaf gives its frame back and reports the
//!   winner's translation ([`Inserted::Present`]). Frames that were never
//!   published go back at once: no CPU can have reached them, so no flush
//!   is needed first.
//! - [`NestedPageTable::update_flags_concurrent`] and
//!   [`NestedPageTable::write_protect_concurrent`] rewrite a leaf's flags in
//!   a compare-and-swap loop that keeps every other bit, including the
//!   accessed/dirty bits the hardware may set between the read and the swap.
//!
//! Nothing here unlinks a table or a leaf, so nothing here frees a frame
//! another CPU could still reach: the walks of other CPUs only ever find
//! more of the tree. Operations that remove take `&mut self`.
//!
//! The descent is written once, in `grow`, over the small `Grow`
//! interface, so the loom models at the end of this file check the same
//! code the table runs.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::{GenericPTE, NestedEntry, NptFormat};

use crate::error::{ChangeError, MapError};
use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::raw::TableRef;
use crate::table::{NestedPageTable, Stash, Translation};
use crate::walk::{Slot, Step, Tree, entry_span};

/// What [`NestedPageTable::insert_new_concurrent`] did.
#[derive(Debug)]
#[must_use = "a new mapping comes with a flush record"]
pub enum Inserted {
    /// This call mapped the page to the frame `make` gave.
    New(NewLeaf),
    /// A leaf already mapped the page (another CPU won the race, or it was
    /// there before the call); the frame `make` gave went back to the
    /// allocator, or `make` was not called at all.
    Present(Translation),
}

/// The 4 KiB leaf an insert published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the page may still be cached as unmapped (RISC-V allows it): flush what `flush()` names"]
pub struct NewLeaf {
    /// The page now mapped (4 KiB aligned).
    pub page: GuestPhysAddr,
    /// The frame it maps.
    pub hpa: HostPhysAddr,
}

impl NewLeaf {
    /// The flush record of the insert: the one page.
    ///
    /// Built when asked for rather than carried: a fault asks for it only
    /// at the end, so the 104-byte record is assembled where it is
    /// returned. Carried up from the insert, it was written field by field
    /// right after the new frame was zeroed and then copied with wide
    /// loads, which wait for every queued store of the zeroing (the
    /// `fault_in_4k` group of `benches/aspace.rs`; see the README).
    #[inline]
    pub fn flush(self) -> TlbFlush {
        TlbFlush::page(self.page.as_usize())
    }
}

/// What an entry means to the concurrent descent.
pub(crate) enum Seen<T> {
    /// Nothing is mapped through it.
    Empty,
    /// A leaf (of any size).
    Leaf,
    /// The table one level down.
    Table(T),
}

/// A tree that several CPUs extend at once, as [`grow`] sees it: the real
/// table, or under loom a model of one.
pub(crate) trait Grow {
    /// A table of the tree.
    type Table: Copy;
    /// The last level, where 4 KiB leaves live.
    const LAST: usize;
    /// Entry `idx` of `table`, read with acquire ordering.
    fn load(&self, table: Self::Table, idx: usize) -> u64;
    /// Swaps `new` into entry `idx` if it still holds `current` (release on
    /// success, acquire on failure); else returns what it holds.
    fn compare_exchange(
        &self,
        table: Self::Table,
        idx: usize,
        current: u64,
        new: u64,
    ) -> Result<(), u64>;
    /// What the entry `raw`, read at `level`, means.
    fn seen(&self, raw: u64, level: usize) -> Seen<Self::Table>;
    /// The index of `addr` in a table at `level`.
    fn index(&self, addr: usize, level: usize) -> usize;
    /// The entry that links the zeroed table frame `frame`, and the table.
    fn link(&self, frame: usize) -> (u64, Self::Table);
}

/// Zeroed table frames a descent may publish.
pub(crate) trait Spare {
    /// A frame, if any is left.
    fn take(&mut self) -> Option<usize>;
    /// A frame that lost its race: still zeroed, kept for the next level.
    fn keep(&mut self, frame: usize);
}

/// How a descent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The leaf was published.
    Inserted,
    /// A leaf (`raw`, at `level`) was there first.
    Present { raw: u64, level: usize },
    /// No spare frame was left for a missing table (planning under-counted;
    /// the tables published so far stay, empty).
    NoFrame,
}

/// What a descent did: how it ended and how many tables it published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grown {
    pub(crate) end: End,
    pub(crate) tables: usize,
}

/// Descends from `table` at `level` towards `addr`, publishing a table from
/// `spare` in each empty slot on the way and `leaf` in the last-level slot,
/// each with compare-and-swap from the empty value read. A lost race for a
/// table slot keeps the frame and walks into the winner's table; a lost
/// race for the leaf slot reads it again and reports the winner's leaf.
#[inline]
pub(crate) fn grow<G: Grow>(
    g: &G,
    mut table: G::Table,
    mut level: usize,
    addr: usize,
    leaf: u64,
    spare: &mut impl Spare,
) -> Grown {
    let mut tables = 0;
    loop {
        let idx = g.index(addr, level);
        // Acquire (in `load`): a table another CPU published here is
        // followed below, and its zeroes must be what this walk reads.
        let raw = g.load(table, idx);
        let end = match g.seen(raw, level) {
            Seen::Table(child) => {
                table = child;
                level += 1;
                continue;
            }
            Seen::Leaf => End::Present { raw, level },
            Seen::Empty if level >= G::LAST => {
                // Release on success: the leaf's frame was filled (zeroed)
                // before; a vCPU or host access that acquires the leaf
                // reads those bytes. A lost race reads the slot again: it
                // holds the winner's leaf now.
                match g.compare_exchange(table, idx, raw, leaf) {
                    Ok(()) => End::Inserted,
                    Err(_) => continue,
                }
            }
            Seen::Empty => {
                let Some(frame) = spare.take() else {
                    return Grown {
                        end: End::NoFrame,
                        tables,
                    };
                };
                let (entry, child) = g.link(frame);
                // Release on success: the frame's zeroes happen before any
                // walk that acquires the new entry reads the table. On
                // failure nothing wrote to the frame: keep it.
                match g.compare_exchange(table, idx, raw, entry) {
                    Ok(()) => {
                        tables += 1;
                        table = child;
                        level += 1;
                    }
                    Err(_) => spare.keep(frame),
                }
                continue;
            }
        };
        return Grown { end, tables };
    }
}

impl<F: NptFormat, A: FrameAllocator> Grow for Tree<'_, F, A> {
    type Table = TableRef<F::Entry>;
    const LAST: usize = F::LEVELS - 1;

    #[inline(always)]
    fn load(&self, table: Self::Table, idx: usize) -> u64 {
        table.get(idx).raw()
    }

    #[inline(always)]
    fn compare_exchange(
        &self,
        table: Self::Table,
        idx: usize,
        current: u64,
        new: u64,
    ) -> Result<(), u64> {
        table
            .compare_exchange(idx, F::Entry::from_raw(current), F::Entry::from_raw(new))
            .map_err(|e| e.raw())
    }

    #[inline(always)]
    fn seen(&self, raw: u64, level: usize) -> Seen<Self::Table> {
        match self.step(F::Entry::from_raw(raw), level) {
            Step::Empty => Seen::Empty,
            Step::Leaf(_) => Seen::Leaf,
            Step::Table(child) => Seen::Table(child),
        }
    }

    #[inline(always)]
    fn index(&self, addr: usize, level: usize) -> usize {
        F::index(addr, level)
    }

    #[inline(always)]
    fn link(&self, frame: usize) -> (u64, Self::Table) {
        let hpa = HostPhysAddr::from_usize(frame);
        let entry = F::Entry::new_table(hpa.into()).raw();
        // SAFETY: `frame` is a zeroed table frame from the stash, taken
        // from this table's allocator and checked against its width; once
        // published it belongs to the table, which releases it only after
        // unlinking it under `&mut self`.
        let table = unsafe { TableRef::new(self.alloc(), hpa, npt_entry::ENTRIES_PER_TABLE) };
        (entry, table)
    }
}

/// No frames: the walk found every table the insert needs.
///
/// Tables are never unlinked under `&self`, so a descent that starts with
/// none spare never meets an empty table slot; if it did, it would end
/// with [`End::NoFrame`], refused as out of memory.
struct NoSpare;

impl Spare for NoSpare {
    #[inline(always)]
    fn take(&mut self) -> Option<usize> {
        None
    }

    #[inline(always)]
    fn keep(&mut self, _: usize) {
        // Only a frame `take` gave can lose a race, and it gives none.
    }
}

impl Spare for Stash {
    fn take(&mut self) -> Option<usize> {
        self.take_one().map(HostPhysAddr::as_usize)
    }

    fn keep(&mut self, frame: usize) {
        self.keep_one(HostPhysAddr::from_usize(frame));
    }
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// Maps the 4 KiB page holding `gpa` to a new frame that `make` takes
    /// from the table's allocator (and fills), unless a leaf maps the page
    /// already. Safe to call from many threads at once on a shared table:
    /// see the [module docs](crate::concurrent) for how races end. Two
    /// calls for the same page map one frame; the other call gets
    /// [`Inserted::Present`] with it and its own frame goes back.
    ///
    /// All or nothing: the table frames the walk lacks and the page's frame
    /// are taken before anything changes, so running out of memory
    /// ([`MapError::NoMemory`], also when `make` returns `None`) leaves the
    /// table as it was. `make` is not called when the page is mapped already.
    ///
    /// ```
    /// # use npt_table::{FrameAllocator, HostFrameAllocator, Inserted, NestedPageTable};
    /// # use npt_entry::ept::Ept4;
    /// # use gpa_types::{GuestPhysAddr, MappingFlags};
    /// let alloc = HostFrameAllocator::new();
    /// let table = NestedPageTable::<Ept4, _>::new(&alloc).unwrap();
    /// let gpa = GuestPhysAddr::from(0x8000_0000);
    /// std::thread::scope(|s| {
    ///     for _ in 0..2 {
    ///         s.spawn(|| table.insert_new_concurrent(gpa, MappingFlags::READ, |a| a.alloc_frame()));
    ///     }
    /// });
    /// assert!(matches!(
    ///     table.insert_new_concurrent(gpa, MappingFlags::READ, |a| a.alloc_frame()),
    ///     Ok(Inserted::Present(_))
    /// ));
    /// assert_eq!(table.stats().leaves[0], 1);
    /// ```
    ///
    /// # Errors
    ///
    /// [`MapError`]: `GpaOutOfRange`, `BadFlags`, `HpaNotAligned` or
    /// `HpaOutOfRange` for the frame `make` gave, `NoMemory` or
    /// `TableFrameOutOfRange`. A page mapped already is not an error.
    pub fn insert_new_concurrent(
        &self,
        gpa: GuestPhysAddr,
        flags: MappingFlags,
        make: impl FnOnce(&A) -> Option<HostPhysAddr>,
    ) -> Result<Inserted, MapError> {
        if !F::gpa_in_range(gpa) {
            return Err(MapError::GpaOutOfRange {
                gpa,
                gpa_bits: F::GPA_BITS,
            });
        }
        npt_entry::check_flags(flags)?;
        let addr = PageSize::Size4K.align_down(gpa.as_usize());
        let tree = self.tree();
        let slot = tree.walk(addr, &mut ());
        if let Some(t) = slot.translation(gpa) {
            return Ok(Inserted::Present(t));
        }
        // Tables are never unlinked under `&self`, so the walk can only
        // find more of them from here: what it lacks now is the most it
        // will need. Most faults land where every table exists already:
        // they take no stash at all.
        let missing = F::LEVELS - 1 - slot.level;
        if missing == 0 {
            return self.publish(&tree, slot, gpa, flags, make, &mut NoSpare);
        }
        let mut stash = self.take_stash(missing)?;
        let inserted = self.publish(&tree, slot, gpa, flags, make, &mut stash);
        // Frames that lost their races (or were not needed after `make`
        // failed) were never reachable: back at once.
        stash.give_back(&self.alloc);
        inserted
    }

    /// The rest of [`NestedPageTable::insert_new_concurrent`] once the
    /// walk ended at `slot` (not a leaf) and `spare` holds the table
    /// frames the walk lacked: takes the page's frame from `make` and
    /// publishes the tables and the leaf.
    #[inline(always)]
    fn publish(
        &self,
        tree: &Tree<'_, F, A>,
        slot: Slot<F::Entry>,
        gpa: GuestPhysAddr,
        flags: MappingFlags,
        make: impl FnOnce(&A) -> Option<HostPhysAddr>,
        spare: &mut impl Spare,
    ) -> Result<Inserted, MapError> {
        let addr = PageSize::Size4K.align_down(gpa.as_usize());
        let Some(hpa) = make(&self.alloc) else {
            return Err(MapError::NoMemory);
        };
        let bytes = PageSize::Size4K.bytes();
        if let Err(e) = self.check_hpa_range(hpa, bytes, bytes) {
            self.alloc.dealloc_frames(hpa, 1);
            return Err(e.into());
        }
        let leaf = F::Entry::new_page(hpa.into(), flags, false).raw();
        let grown = grow(tree, slot.table, slot.level, addr, leaf, spare);
        self.books
            .stats
            .add_concurrent(addr, grown.tables, grown.end == End::Inserted);
        match grown.end {
            End::Inserted => Ok(Inserted::New(NewLeaf {
                page: GuestPhysAddr::from_usize(addr),
                hpa,
            })),
            End::Present { raw, level } => {
                self.alloc.dealloc_frames(hpa, 1);
                let entry = F::Entry::from_raw(raw);
                // `grow` reports `Present` only for an entry its `seen`
                // read as a leaf, which is this `step`.
                let Step::Leaf(size) = tree.step(entry, level) else {
                    return Err(MapError::AlreadyMapped { gpa });
                };
                let base: usize = entry.paddr().into();
                Ok(Inserted::Present(Translation {
                    hpa: HostPhysAddr::from_usize(base + size.offset(gpa.as_usize())),
                    flags: entry.flags(),
                    size,
                }))
            }
            End::NoFrame => {
                self.alloc.dealloc_frames(hpa, 1);
                Err(MapError::NoMemory)
            }
        }
    }

    /// Rewrites the flags of the leaf that maps `gpa` (of any size) to what
    /// `f` returns for its current flags, keeping its address and every bit
    /// outside `NestedEntry::FLAG_MASK`; `f` returning `None` leaves it as
    /// it is. Safe to call from many threads at once on a shared table: the
    /// entry is changed with compare-and-swap, and `f` runs again on the
    /// flags that won if another CPU (or the hardware, setting accessed or
    /// dirty bits) changed the entry in between. Returns the flush record
    /// (the leaf's range) if the leaf changed, `None` if `f` left it.
    ///
    /// A dirty-logging write fault makes its page writable with this before
    /// it marks the page dirty (see `guest_aspace`'s dirty log).
    ///
    /// # Errors
    ///
    /// [`ChangeError`]: `GpaOutOfRange`, `NotMapped`, or `BadFlags` for
    /// flags `f` returned (the leaf is left as it was).
    pub fn update_flags_concurrent(
        &self,
        gpa: GuestPhysAddr,
        mut f: impl FnMut(MappingFlags) -> Option<MappingFlags>,
    ) -> Result<Option<TlbFlush>, ChangeError> {
        if !F::gpa_in_range(gpa) {
            return Err(ChangeError::GpaOutOfRange {
                gpa,
                gpa_bits: F::GPA_BITS,
            });
        }
        let slot = self.tree().walk(gpa.as_usize(), &mut ());
        let Step::Leaf(size) = slot.step else {
            return Err(ChangeError::NotMapped { gpa });
        };
        // `f` decides again on what another CPU or the hardware wrote
        // meanwhile (`TableRef::update`).
        let mut refused = None;
        let changed = slot.table.update(slot.idx, slot.entry, |current| {
            let flags = f(current.flags())?;
            if let Err(e) = npt_entry::check_flags(flags) {
                refused = Some(e);
                return None;
            }
            let template = F::Entry::new_page(0.into(), flags, size.is_huge());
            Some(current.with_flags_of(template))
        });
        if let Some(e) = refused {
            return Err(e.into());
        }
        Ok(changed.then(|| TlbFlush::one(size.align_down(gpa.as_usize()), size.bytes())))
    }

    /// Removes write permission from every leaf in `[gpa, gpa + len)` with
    /// compare-and-swap, keeping all other bits: the re-arming step of
    /// collecting a dirty log while faults run on other CPUs. A huge leaf
    /// the range touches is write-protected whole (nothing is split under
    /// `&self`); the record names it whole. Leaves already without write
    /// permission are left alone and not named. Holes are skipped.
    ///
    /// # Errors
    ///
    /// A range that is empty, not 4 KiB aligned or past the GPA width
    /// ([`ChangeError`]; nothing mapped is not an error).
    pub fn write_protect_concurrent(
        &self,
        gpa: GuestPhysAddr,
        len: usize,
    ) -> Result<TlbFlush, ChangeError> {
        let end = Self::check_range(gpa, len, PageSize::Size4K.bytes())?;
        let tree = self.tree();
        let mut path = tree.path();
        let mut flush = TlbFlush::none();
        let mut pos = gpa.as_usize();
        while pos < end {
            let slot = tree.walk_path(&mut path, pos, F::LEVELS - 1);
            let Step::Leaf(size) = slot.step else {
                // A hole: skip the empty entry's span.
                let span = entry_span::<F>(slot.level);
                pos = (pos & !(span - 1)).saturating_add(span);
                continue;
            };
            // What another CPU or the hardware wrote meanwhile is
            // protected in its turn (`TableRef::update`).
            let huge = size.is_huge();
            if slot
                .table
                .update(slot.idx, slot.entry, |e| Some(e.write_protected(huge)))
            {
                flush.add(size.align_down(pos), size.bytes());
            }
            pos = size.align_down(pos) + size.bytes();
        }
        Ok(flush)
    }
}

/// loom models of [`grow`]: every interleaving (up to loom's bounds) of two
/// threads extending the same tree. The tree is a model with three levels
/// of two-entry tables in loom atomics; frames are numbers, table frame `n`
/// is `tables[n]` and data frame `n` is `data[n]`, a loom cell whose
/// accesses loom checks for data races (so a publication without release,
/// or a follow without acquire, fails the model).
///
/// Run: `RUSTFLAGS="--cfg loom" cargo test -p npt-table --release --lib concurrent`.
#[cfg(all(test, loom))]
mod loom_models {
    use alloc::sync::Arc;
    use alloc::vec::Vec;

    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicU64, Ordering};

    use super::{End, Grow, Grown, Seen, Spare, grow};

    const TABLE: u64 = 1;
    const LEAF: u64 = 2;

    struct Model {
        tables: Vec<[AtomicU64; 2]>,
        data: Vec<UnsafeCell<u64>>,
    }

    impl Model {
        /// Root 0 and table frames 1..=4; data frames 0 and 1 holding
        /// garbage until a thread fills them.
        // loom's cell is shared between loom threads by design: loom itself
        // checks every access to it.
        #[allow(clippy::arc_with_non_send_sync)]
        fn new() -> Arc<Self> {
            Arc::new(Self {
                tables: (0..5)
                    .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                    .collect(),
                data: (0..2).map(|_| UnsafeCell::new(0xdead)).collect(),
            })
        }

        /// The leaf mapping `addr`, read after both threads joined.
        fn leaf(&self, addr: usize) -> Option<usize> {
            let mut t = 0;
            for level in 0..=Self::LAST {
                let raw = self.load(t, self.index(addr, level));
                match self.seen(raw, level) {
                    Seen::Table(child) => t = child,
                    Seen::Leaf => return Some((raw >> 2) as usize),
                    Seen::Empty => return None,
                }
            }
            None
        }

        /// Table frames linked anywhere in the tree.
        fn linked(&self) -> Vec<usize> {
            let mut out = Vec::new();
            for t in &self.tables {
                for e in t {
                    let raw = e.load(Ordering::Acquire);
                    if raw & 3 == TABLE {
                        out.push((raw >> 2) as usize);
                    }
                }
            }
            out
        }
    }

    impl Grow for Model {
        type Table = usize;
        const LAST: usize = 2;

        fn load(&self, table: usize, idx: usize) -> u64 {
            self.tables[table][idx].load(Ordering::Acquire)
        }

        fn compare_exchange(
            &self,
            table: usize,
            idx: usize,
            cur: u64,
            new: u64,
        ) -> Result<(), u64> {
            self.tables[table][idx]
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
                .map(drop)
        }

        fn seen(&self, raw: u64, level: usize) -> Seen<usize> {
            match raw & 3 {
                TABLE if level < Self::LAST => Seen::Table((raw >> 2) as usize),
                LEAF => Seen::Leaf,
                _ => Seen::Empty,
            }
        }

        fn index(&self, addr: usize, level: usize) -> usize {
            (addr >> (Self::LAST - level)) & 1
        }

        fn link(&self, frame: usize) -> (u64, usize) {
            (((frame as u64) << 2) | TABLE, frame)
        }
    }

    impl Spare for Vec<usize> {
        fn take(&mut self) -> Option<usize> {
            self.pop()
        }
        fn keep(&mut self, frame: usize) {
            self.push(frame);
        }
    }

    /// Thread `i` fills its data frame with `fill`, then inserts it at
    /// `addr` with table frames `1 + 2i` and `2 + 2i`. Returns how it ended
    /// and the frames it kept.
    fn insert(m: &Model, i: usize, addr: usize, fill: u64) -> (Grown, Vec<usize>) {
        // SAFETY (loom cell): the frame is this thread's until published.
        m.data[i].with_mut(|p| unsafe { *p = fill });
        let mut spare = alloc::vec![1 + 2 * i, 2 + 2 * i];
        let leaf = ((i as u64) << 2) | LEAF;
        (grow(m, 0, 0, addr, leaf, &mut spare), spare)
    }

    /// Thread 0 (this one) inserts at `addrs[0]` filling its frame with 10,
    /// against thread 1 at `addrs[1]` filling with 11. Returns how each
    /// ended and every table frame the two kept.
    fn race(m: &Arc<Model>, addrs: [usize; 2]) -> ([Grown; 2], Vec<usize>) {
        let m2 = m.clone();
        let other = loom::thread::spawn(move || insert(&m2, 1, addrs[1], 11));
        let (mine, mut kept) = insert(m, 0, addrs[0], 10);
        let (theirs, kept1) = other.join().unwrap();
        kept.extend(kept1);
        ([mine, theirs], kept)
    }

    /// Every frame is linked once or kept by the thread that took it.
    fn no_frame_lost(m: &Model, kept: &[usize]) {
        let mut all = m.linked();
        all.extend_from_slice(kept);
        all.sort_unstable();
        assert_eq!(all, [1, 2, 3, 4]);
    }

    /// Two faults on the same page of an empty tree race for both table
    /// slots and the leaf slot: one leaf, two tables, the loser's frames
    /// kept, and the loser reads the winner's filled frame.
    #[test]
    fn two_faults_same_page() {
        loom::model(|| {
            let m = Model::new();
            let ([mine, theirs], kept) = race(&m, [0, 0]);
            let ends = [mine.end, theirs.end];
            assert_eq!(ends.iter().filter(|e| **e == End::Inserted).count(), 1);
            assert_eq!(mine.tables + theirs.tables, 2);
            let winner = m.leaf(0).unwrap();
            for end in ends {
                if let End::Present { raw, .. } = end {
                    assert_eq!((raw >> 2) as usize, winner);
                }
            }
            // SAFETY (loom cell): both threads joined.
            let filled = m.data[winner].with(|p| unsafe { *p });
            assert_eq!(filled, 10 + winner as u64);
            no_frame_lost(&m, &kept);
        });
    }

    /// Two faults on neighbouring pages race for the same empty table
    /// slots: both leaves land, in one chain of two tables.
    #[test]
    fn two_faults_same_table_slot() {
        loom::model(|| {
            let m = Model::new();
            let ([mine, theirs], kept) = race(&m, [0, 1]);
            assert_eq!((mine.end, theirs.end), (End::Inserted, End::Inserted));
            assert_eq!(mine.tables + theirs.tables, 2);
            assert_eq!((m.leaf(0), m.leaf(1)), (Some(0), Some(1)));
            no_frame_lost(&m, &kept);
        });
    }

    /// A host write populating a page races with a vCPU's fault on it: the
    /// write lands in the frame that stays mapped, whichever won, and
    /// writing into the fault's frame does not race with its zeroing.
    #[test]
    fn host_write_against_fault() {
        loom::model(|| {
            let m = Model::new();
            let m2 = m.clone();
            let fault = loom::thread::spawn(move || insert(&m2, 1, 2, 0));
            let (write, _) = insert(&m, 0, 2, 0);
            let frame = match write.end {
                End::Inserted => 0,
                End::Present { raw, .. } => (raw >> 2) as usize,
                End::NoFrame => unreachable!("two spare frames cover two levels"),
            };
            // SAFETY (loom cell): the frame is mapped; this thread acquired
            // it (its own, or through the winner's entry). loom reports a
            // race with the fault's fill if that were not ordered.
            m.data[frame].with_mut(|p| unsafe { *p = 42 });
            fault.join().unwrap();
            let mapped = m.leaf(2).unwrap();
            // SAFETY (loom cell): both threads joined.
            assert_eq!(m.data[mapped].with(|p| unsafe { *p }), 42);
        });
    }
}
