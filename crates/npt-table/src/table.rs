//! [`NestedPageTable`]: ownership, statistics, lookups and single-page
//! operations, all through the one walk of `walk.rs`. Maps live in
//! `map.rs`, range operations in `range.rs`.

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicUsize, Ordering};

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;

use crate::entry::{Entry, LeafEntry};
use crate::error::{ChangeError, EncodeError, FrameError, QueryError, RangeError, SpanError};
use crate::flush::TlbFlush;
use crate::frames::{FRAME_SIZE, FrameAllocator};
use crate::raw::zero_frames;
use crate::retire::Retired;
use crate::walk::{MAX_LEVELS, Tree};

/// One guest-physical translation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Translation {
    /// The host-physical address the queried GPA maps to (offset included).
    pub hpa: HostPhysAddr,
    /// The leaf's flags, as the format reports them.
    pub flags: MappingFlags,
    /// The size of the leaf that maps it.
    pub size: PageSize,
}

/// Counters a table keeps as it changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// 4 KiB frames of table memory in use, the root included.
    pub table_frames: usize,
    /// Leaves per size: index 0 for 4 KiB, 1 for 2 MiB, 2 for 1 GiB, 3 for
    /// 512 GiB (see [`PageSize::height`]).
    pub leaves: [usize; 4],
}

impl TableStats {
    /// Leaves of `size`.
    pub fn leaves_of(&self, size: PageSize) -> usize {
        self.leaves[size.height()]
    }

    /// Bytes of guest-physical space mapped.
    pub fn mapped_bytes(&self) -> u128 {
        PageSize::ALL
            .iter()
            .map(|s| self.leaves[s.height()] as u128 * s.bytes() as u128)
            .sum()
    }
}

/// Which leaf sizes a range map may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapPolicy {
    /// 4 KiB leaves only.
    Only4K,
    /// The largest of 1 GiB, 2 MiB and 4 KiB that the GPA, the HPA and the
    /// remaining length are aligned to, within what the format allows.
    Huge,
    /// Like [`MapPolicy::Huge`] but no larger than the given size (e.g. 2 MiB
    /// on an EPT host without 1 GiB page support). 512 GiB leaves are made
    /// only when asked for here and the format allows them.
    UpTo(PageSize),
}

impl MapPolicy {
    pub(crate) fn max_size<F: NptFormat>(self) -> PageSize {
        let wanted = match self {
            Self::Only4K => PageSize::Size4K,
            Self::Huge => PageSize::Size1G,
            Self::UpTo(size) => size,
        };
        wanted.min(F::MAX_LEAF)
    }
}

/// Frames taken before an operation changes anything, so that nothing can
/// fail half-way. Whatever is left goes back with [`Stash::give_back`].
///
/// Up to [`MAX_LEVELS`] frames (every single-page map and fault: one table
/// per level at most) live inline; only a range map's larger count goes to
/// the heap, so the hot paths allocate nothing but frames.
pub(crate) struct Stash {
    inline: [HostPhysAddr; MAX_LEVELS],
    /// Frames in `inline[..len]`.
    len: usize,
    /// Frames beyond the inline ones; room reserved in `take`.
    spill: Vec<HostPhysAddr>,
}

/// Checks that the `frames` table frames at `hpa` lie below `2^pa_bits`,
/// where a table entry can point to them.
pub(crate) fn check_table_frame(
    hpa: HostPhysAddr,
    frames: usize,
    pa_bits: u32,
) -> Result<(), FrameError> {
    let last = hpa.as_usize().checked_add((frames.max(1) - 1) * FRAME_SIZE);
    match last {
        Some(last) if pa_bits >= usize::BITS || last >> pa_bits == 0 => Ok(()),
        _ => Err(FrameError::TableFrameOutOfRange { hpa, pa_bits }),
    }
}

impl Stash {
    /// Allocates and zeroes `count` table frames below `2^pa_bits`, or none
    /// at all. Frames from [`FrameAllocator::alloc_zeroed_frame`] are taken
    /// first and not zeroed again.
    pub(crate) fn take<A: FrameAllocator>(
        alloc: &A,
        count: usize,
        pa_bits: u32,
    ) -> Result<Self, FrameError> {
        let mut stash = Self {
            inline: [HostPhysAddr::from_usize(0); MAX_LEVELS],
            len: 0,
            spill: Vec::new(),
        };
        if let Some(extra) = count.checked_sub(MAX_LEVELS)
            && stash.spill.try_reserve_exact(extra).is_err()
        {
            return Err(FrameError::NoMemory);
        }
        for _ in 0..count {
            // A frame the allocator zeroed ahead of time, if it has one.
            let (hpa, zeroed) = match alloc.alloc_zeroed_frame() {
                Some(hpa) => (hpa, true),
                None => match alloc.alloc_frame() {
                    Some(hpa) => (hpa, false),
                    None => {
                        stash.give_back(alloc);
                        return Err(FrameError::NoMemory);
                    }
                },
            };
            if let Err(e) = check_table_frame(hpa, 1, pa_bits) {
                alloc.dealloc_frames(hpa, 1);
                stash.give_back(alloc);
                return Err(e);
            }
            if !zeroed {
                // SAFETY: just allocated, not yet reachable from any table.
                unsafe { zero_frames(alloc, hpa, 1) };
            }
            stash.push(hpa);
        }
        Ok(stash)
    }

    /// Adds a frame: inline while there is room, else into the spill,
    /// whose room `take` reserved (a frame given back by `keep_one` came
    /// out of the stash, so there is room for it too).
    fn push(&mut self, hpa: HostPhysAddr) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = hpa;
                self.len += 1;
            }
            None => self.spill.push(hpa),
        }
    }

    /// A zeroed frame, if any is left: from the spill first, so the inline
    /// frames are the last out and the first back.
    fn next(&mut self) -> Option<HostPhysAddr> {
        if let Some(hpa) = self.spill.pop() {
            return Some(hpa);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get(self.len).copied()
    }

    /// A zeroed frame. Planning guarantees there is one.
    pub(crate) fn pop(&mut self) -> Option<HostPhysAddr> {
        let hpa = self.next();
        debug_assert!(hpa.is_some(), "planning under-counted table frames");
        hpa
    }

    /// A zeroed frame, if any is left (no planning promise: the concurrent
    /// insert asks until its walk finds the tables other CPUs published).
    pub(crate) fn take_one(&mut self) -> Option<HostPhysAddr> {
        self.next()
    }

    /// Takes back a frame `take_one` gave that is still zeroed (it lost
    /// the race to be published). Room is there: it came out of this stash.
    pub(crate) fn keep_one(&mut self, hpa: HostPhysAddr) {
        self.push(hpa);
    }

    /// Returns the unused frames.
    pub(crate) fn give_back<A: FrameAllocator>(mut self, alloc: &A) {
        while let Some(hpa) = self.next() {
            alloc.dealloc_frames(hpa, 1);
        }
    }
}

/// A second-stage page table of format `F` whose frames come from `A`.
///
/// The table owns its table frames (root included) and releases them on
/// drop; it never frees the frames its leaves point to. Every mutating
/// operation is all-or-nothing and returns a [`TlbFlush`] naming what
/// became stale; table frames a change unlinks stay parked until that
/// record is completed ([`NestedPageTable::complete`]).
///
/// ```
/// use npt_table::{HostFrameAllocator, MapPolicy, NestedPageTable};
/// use npt_entry::ept::Ept4;
/// use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
///
/// let alloc = HostFrameAllocator::new();
/// let mut table = NestedPageTable::<Ept4, _>::new(&alloc).unwrap();
/// let rw = MappingFlags::READ | MappingFlags::WRITE;
/// let flush = table
///     .map_region(GuestPhysAddr::from(0), HostPhysAddr::from(0x4000_0000), 0x40_1000, rw, MapPolicy::Huge)
///     .unwrap();
/// flush.ignore(); // a VM that has not run yet has nothing cached
/// let t = table.query(GuestPhysAddr::from(0x1234)).unwrap();
/// assert_eq!(t.hpa, HostPhysAddr::from(0x4000_1234));
/// assert_eq!(t.size, PageSize::Size2M);
/// assert_eq!(table.stats().leaves_of(PageSize::Size4K), 1);
/// ```
pub struct NestedPageTable<F: NptFormat, A: FrameAllocator> {
    pub(crate) root: HostPhysAddr,
    pub(crate) alloc: A,
    pub(crate) books: Books,
    pub(crate) pa_bits: u32,
    _format: PhantomData<F>,
}

/// What a table keeps besides its frames: counters and parked frames.
/// Separate from the walkable part so a walk can read the table while it
/// updates these.
#[derive(Debug, Default)]
pub(crate) struct Books {
    pub(crate) stats: Counters,
    pub(crate) retired: Retired,
}

/// [`TableStats`] kept in atomics, so that inserts sharing the table
/// (`NestedPageTable::insert_new_concurrent`) can count what they add.
/// Exclusive operations count in the main counters through `get_mut`,
/// without atomic instructions; concurrent inserts count in one of
/// [`SHARDS`] cache-line-sized shards picked by guest address, so two CPUs
/// inserting in different places do not pass one counter's line back and
/// forth (a counter every fault writes was the main thing keeping two
/// CPUs faulting at once from running twice as fast as one). A count is the main counter plus the
/// shards, in wrapping arithmetic: an unmap under `&mut` may take from the
/// main counter what an insert added to a shard.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    table_frames: AtomicUsize,
    leaves: [AtomicUsize; 4],
    shards: [Shard; SHARDS],
}

/// Shards of the concurrent counts.
const SHARDS: usize = 8;

/// What concurrent inserts count, on a line of its own (128 bytes: x86
/// CPUs fetch lines in adjacent pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    tables: AtomicUsize,
    leaves: AtomicUsize,
}

impl Counters {
    /// Counters of a table holding only its root of `root_frames` frames.
    fn new(root_frames: usize) -> Self {
        Self {
            table_frames: AtomicUsize::new(root_frames),
            ..Self::default()
        }
    }

    /// The counters now. Relaxed: they are statistics, ordered with nothing
    /// else; read while concurrent inserts run, they may lag behind the
    /// entries those inserts published (never ahead of them, since each
    /// insert counts after its compare-and-swap succeeded).
    pub(crate) fn snapshot(&self) -> TableStats {
        let mut leaves: [usize; 4] =
            core::array::from_fn(|i| self.leaves.get(i).map_or(0, |l| l.load(Ordering::Relaxed)));
        let shard_leaves = self.shards.iter().fold(0usize, |n, s| {
            n.wrapping_add(s.leaves.load(Ordering::Relaxed))
        });
        leaves[0] = leaves[0].wrapping_add(shard_leaves);
        TableStats {
            table_frames: self.table_frames(),
            leaves,
        }
    }

    /// Table frames in use.
    pub(crate) fn table_frames(&self) -> usize {
        self.shards
            .iter()
            .fold(self.table_frames.load(Ordering::Relaxed), |n, s| {
                n.wrapping_add(s.tables.load(Ordering::Relaxed))
            })
    }

    /// Counts `tables` table frames and one 4 KiB leaf a concurrent insert
    /// at `gpa` published, in the shard of `gpa`'s 2 MiB span. Relaxed, as
    /// [`Counters::snapshot`] says.
    pub(crate) fn add_concurrent(&self, gpa: usize, tables: usize, leaf: bool) {
        let shard = &self.shards[(gpa >> 21) % SHARDS];
        if tables > 0 {
            shard.tables.fetch_add(tables, Ordering::Relaxed);
        }
        if leaf {
            shard.leaves.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a walk that changes the table records as it goes. The read-only
/// ledger `()` does nothing, so read-only walks compile it away.
pub(crate) trait Ledger {
    /// `n` leaves of `size` appeared (`add`) or went away.
    fn leaves(&mut self, size: PageSize, n: usize, add: bool);
    /// A table frame was linked.
    fn table_linked(&mut self);
    /// A table frame was unlinked and released at once (the table is
    /// going away).
    fn table_released(&mut self);
    /// A table frame was unlinked; park it under `flush` (room reserved).
    fn table_parked(&mut self, hpa: HostPhysAddr, flush: &mut TlbFlush);
}

impl Ledger for () {
    #[inline(always)]
    fn leaves(&mut self, _: PageSize, _: usize, _: bool) {}
    #[inline(always)]
    fn table_linked(&mut self) {}
    #[inline(always)]
    fn table_released(&mut self) {}
    #[inline(always)]
    fn table_parked(&mut self, _: HostPhysAddr, _: &mut TlbFlush) {}
}

impl Ledger for Books {
    #[inline(always)]
    fn leaves(&mut self, size: PageSize, n: usize, add: bool) {
        if let Some(slot) = self.stats.leaves.get_mut(size.height()) {
            // Wrapping: concurrent inserts count in shards (see `Counters`).
            let slot = slot.get_mut();
            *slot = if add {
                slot.wrapping_add(n)
            } else {
                slot.wrapping_sub(n)
            };
        }
    }
    #[inline(always)]
    fn table_linked(&mut self) {
        let n = self.stats.table_frames.get_mut();
        *n = n.wrapping_add(1);
    }
    #[inline(always)]
    fn table_released(&mut self) {
        let n = self.stats.table_frames.get_mut();
        *n = n.wrapping_sub(1);
    }
    #[inline(always)]
    fn table_parked(&mut self, hpa: HostPhysAddr, flush: &mut TlbFlush) {
        let n = self.stats.table_frames.get_mut();
        *n = n.wrapping_sub(1);
        self.retired.park(flush, hpa, 1);
    }
}

// SAFETY: the table exclusively owns its frames; sending it moves that
// ownership. Shared access only reads entries through atomics.
unsafe impl<F: NptFormat, A: FrameAllocator + Send> Send for NestedPageTable<F, A> {}
// SAFETY: `&self` methods read table memory atomically; the only `&self`
// methods that write it (`insert_new_concurrent` and the other
// `*_concurrent` ones) change entries by compare-and-swap and count in
// atomics, and never unlink or release a frame.
unsafe impl<F: NptFormat, A: FrameAllocator + Sync> Sync for NestedPageTable<F, A> {}

impl<F: NptFormat, A: FrameAllocator> core::fmt::Debug for NestedPageTable<F, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NestedPageTable")
            .field("format", &F::NAME)
            .field("root", &self.root)
            .field("stats", &self.books.stats.snapshot())
            .field("parked_frames", &self.books.retired.frames())
            .finish()
    }
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// An empty table: allocates and zeroes the root (`F::ROOT_FRAMES`
    /// frames aligned to `F::ROOT_ALIGN`). Host addresses may use the whole
    /// physical width of the format.
    ///
    /// # Errors
    ///
    /// [`FrameError`]: no frames for the root, or a root past the table's
    /// physical width.
    pub fn new(alloc: A) -> Result<Self, FrameError> {
        Self::with_pa_bits(alloc, F::PA_BITS)
    }

    /// Like [`NestedPageTable::new`], limiting host addresses to `pa_bits`
    /// (e.g. the CPU's MAXPHYADDR); values above the format's width are
    /// clamped to it. Leaves and table frames alike must lie below
    /// `2^pa_bits`: a table frame the allocator hands out above it is given
    /// back and the operation fails with [`FrameError::TableFrameOutOfRange`]
    /// (the root included: then this call fails).
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::new`].
    pub fn with_pa_bits(alloc: A, pa_bits: u32) -> Result<Self, FrameError> {
        let pa_bits = pa_bits.min(F::PA_BITS);
        let root = alloc
            .alloc_frames(F::ROOT_FRAMES, F::ROOT_ALIGN)
            .ok_or(FrameError::NoMemory)?;
        if let Err(e) = check_table_frame(root, F::ROOT_FRAMES, pa_bits) {
            alloc.dealloc_frames(root, F::ROOT_FRAMES);
            return Err(e);
        }
        // SAFETY: just allocated, not reachable from any table.
        unsafe { zero_frames(&alloc, root, F::ROOT_FRAMES) };
        Ok(Self {
            root,
            alloc,
            books: Books {
                stats: Counters::new(F::ROOT_FRAMES),
                retired: Retired::default(),
            },
            pa_bits,
            _format: PhantomData,
        })
    }

    /// Host-physical address of the root, for EPTP, nCR3, VTTBR or hgatp.
    pub fn root_hpa(&self) -> HostPhysAddr {
        self.root
    }

    /// The frame allocator.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Table frames and leaves in use (parked frames are not counted: see
    /// [`NestedPageTable::parked_frames`]).
    pub fn stats(&self) -> TableStats {
        self.books.stats.snapshot()
    }

    /// The host physical-address width this table accepts.
    pub fn pa_bits(&self) -> u32 {
        self.pa_bits
    }

    // ---- internal helpers shared by every operation ----

    /// The walkable part of the table.
    #[inline(always)]
    pub(crate) fn tree(&self) -> Tree<'_, F, A> {
        Tree::new(&self.alloc, self.root)
    }

    /// The walkable part and the books, to change the table during a walk.
    #[inline(always)]
    pub(crate) fn parts(&mut self) -> (Tree<'_, F, A>, &mut Books) {
        (Tree::new(&self.alloc, self.root), &mut self.books)
    }

    /// Allocates and zeroes `count` table frames, or none.
    pub(crate) fn take_stash(&self, count: usize) -> Result<Stash, FrameError> {
        Stash::take(&self.alloc, count, self.pa_bits)
    }

    /// Checks `[gpa, gpa + len)`: non-empty, `align`-aligned, inside the GPA
    /// width. Returns the end. The one range check of the crate (points use
    /// `NptFormat::gpa_in_range`).
    ///
    /// # Errors
    ///
    /// [`RangeError::ZeroLength`], then [`RangeError::GpaNotAligned`] (the
    /// address, then the length), then [`RangeError::GpaOutOfRange`].
    pub fn check_range(gpa: GuestPhysAddr, len: usize, align: usize) -> Result<usize, RangeError> {
        if len == 0 {
            return Err(RangeError::ZeroLength);
        }
        Ok(Self::check_span(gpa, len, align)?)
    }

    /// [`NestedPageTable::check_range`] for a span known not to be empty:
    /// one page or leaf of `size` at `gpa`.
    #[inline]
    pub(crate) fn check_page(gpa: GuestPhysAddr, size: PageSize) -> Result<usize, SpanError> {
        Self::check_span(gpa, size.bytes(), size.bytes())
    }

    /// [`NestedPageTable::check_range`] after the length check.
    #[inline]
    fn check_span(gpa: GuestPhysAddr, len: usize, align: usize) -> Result<usize, SpanError> {
        let start = gpa.as_usize();
        if start % align != 0 {
            return Err(SpanError::GpaNotAligned {
                value: start,
                align,
            });
        }
        if len % align != 0 {
            return Err(SpanError::GpaNotAligned { value: len, align });
        }
        let out = SpanError::GpaOutOfRange {
            gpa: GuestPhysAddr::from_usize(start.max(F::GPA_LIMIT as usize)),
            gpa_bits: F::GPA_BITS,
        };
        let end = start.checked_add(len).ok_or(out)?;
        if end as u64 > F::GPA_LIMIT {
            return Err(out);
        }
        Ok(end)
    }

    /// Checks a host run `[hpa, hpa + len)` against alignment and PA width.
    pub(crate) fn check_hpa_range(
        &self,
        hpa: HostPhysAddr,
        len: usize,
        align: usize,
    ) -> Result<(), EncodeError> {
        if hpa.as_usize() % align != 0 {
            return Err(EncodeError::HpaNotAligned { hpa, align });
        }
        let out = EncodeError::HpaOutOfRange {
            hpa,
            pa_bits: self.pa_bits,
        };
        let end = hpa.as_usize().checked_add(len).ok_or(out)?;
        if self.pa_bits < usize::BITS && end > 1usize << self.pa_bits {
            return Err(out);
        }
        Ok(())
    }

    // ---- lookups ----

    /// The translation of `gpa`, if it is mapped.
    ///
    /// # Errors
    ///
    /// [`QueryError::GpaOutOfRange`] past the format's GPA width,
    /// [`QueryError::NotMapped`] where no leaf maps `gpa`.
    #[inline]
    pub fn query(&self, gpa: GuestPhysAddr) -> Result<Translation, QueryError> {
        if !F::gpa_in_range(gpa) {
            return Err(QueryError::GpaOutOfRange {
                gpa,
                gpa_bits: F::GPA_BITS,
            });
        }
        self.tree().walk(gpa.as_usize(), &mut ()).query(gpa)
    }

    /// The host address `gpa` maps to, if any.
    #[inline]
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        if !F::gpa_in_range(gpa) {
            return None;
        }
        let hpa = self
            .tree()
            .walk(gpa.as_usize(), &mut ())
            .hpa(gpa.as_usize())?;
        Some(HostPhysAddr::from_usize(hpa))
    }

    /// The host address `gpa` maps to and the size of the leaf mapping it,
    /// without decoding flags: for copies that go leaf by leaf.
    #[inline]
    pub fn translate_leaf(&self, gpa: GuestPhysAddr) -> Option<(HostPhysAddr, PageSize)> {
        if !F::gpa_in_range(gpa) {
            return None;
        }
        let (hpa, size) = self
            .tree()
            .walk(gpa.as_usize(), &mut ())
            .translate(gpa.as_usize())?;
        Some((HostPhysAddr::from_usize(hpa), size))
    }

    // ---- single-page operations ----

    /// Removes the leaf that starts at `gpa`, whatever its size, and returns
    /// what it mapped. Tables left empty are parked until the returned
    /// record is completed.
    ///
    /// # Errors
    ///
    /// [`ChangeError`]: `gpa` not 4 KiB aligned or past the GPA width,
    /// [`NotMapped`](ChangeError::NotMapped),
    /// [`SizeMismatch`](ChangeError::SizeMismatch) when `gpa` lies inside a
    /// larger leaf, `NoMemory` (room to park emptied tables).
    pub fn unmap(&mut self, gpa: GuestPhysAddr) -> Result<(Translation, TlbFlush), ChangeError> {
        self.leaf_at(gpa)?.unmap()
    }

    /// Changes the flags of the leaf that starts at `gpa`, keeping its
    /// address and every bit outside `NestedEntry::FLAG_MASK` (hardware-set
    /// accessed/dirty state among them).
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::unmap`] (but not `NoMemory`), and `BadFlags`.
    pub fn protect(
        &mut self,
        gpa: GuestPhysAddr,
        flags: MappingFlags,
    ) -> Result<TlbFlush, ChangeError> {
        npt_entry::check_flags(flags)?;
        self.leaf_at(gpa)?.protect(flags)
    }

    /// Points the leaf that starts at `gpa` at `hpa` with `flags`, keeping
    /// its size.
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::protect`], and `HpaNotAligned` or
    /// `HpaOutOfRange` for a host address the leaf cannot hold.
    pub fn remap(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        flags: MappingFlags,
    ) -> Result<TlbFlush, ChangeError> {
        npt_entry::check_flags(flags)?;
        self.leaf_at(gpa)?.remap(hpa, flags)
    }

    /// The leaf starting exactly at `gpa`.
    fn leaf_at(&mut self, gpa: GuestPhysAddr) -> Result<LeafEntry<'_, F, A>, ChangeError> {
        let addr = gpa.as_usize();
        Self::check_page(gpa, PageSize::Size4K)?;
        match self.entry(gpa)? {
            Entry::Leaf(leaf) if leaf.gpa().as_usize() == addr => Ok(leaf),
            Entry::Leaf(leaf) => Err(ChangeError::SizeMismatch {
                gpa,
                mapped: leaf.size(),
            }),
            Entry::Vacant(_) => Err(ChangeError::NotMapped { gpa }),
        }
    }
}

impl<F: NptFormat, A: FrameAllocator> Drop for NestedPageTable<F, A> {
    fn drop(&mut self) {
        let (tree, books) = self.parts();
        tree.release_all(books);
        self.alloc.dealloc_frames(self.root, F::ROOT_FRAMES);
        self.books.retired.release_everything(&self.alloc);
    }
}
