//! Regions: what backs each part of the guest-physical window.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use gpa_types::{GuestPhysAddrRange, HostPhysAddr, MappingFlags, PageSize};

#[cfg(not(all(test, loom)))]
use core::sync::atomic::{AtomicU64, Ordering};
#[cfg(all(test, loom))]
use loom::sync::atomic::{AtomicU64, Ordering};

use crate::error::{AspaceError, AspaceResult};

/// How a region is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// RAM the space allocates, zeroes and owns (`MAP_ALLOC`). `lazy` RAM is
    /// filled page by page on faults; eager RAM is populated when added, with
    /// 1 GiB/2 MiB frames and leaves where alignment and the allocator allow.
    Alloc {
        /// Populate on first touch instead of at add time.
        lazy: bool,
    },
    /// Host memory the space allocated and placed at GPA == HPA (AxVisor's
    /// `MAP_IDENTICAL`); owned.
    AllocIdentical,
    /// Pass-through: GPA == HPA (`MAP_IDENTICAL` of existing host memory,
    /// `MAP_RESERVED`); not owned, never freed.
    Identical,
    /// Pass-through at an offset: GPA `base + x` maps HPA `hpa + x`; not owned.
    Linear {
        /// Host address of the region's first byte.
        hpa: HostPhysAddr,
    },
    /// Device space. `None`: left unmapped so accesses exit for emulation;
    /// `Some(hpa)`: mapped pass-through to `hpa` with the device memory type.
    Mmio {
        /// Pass-through target, if any.
        passthrough: Option<HostPhysAddr>,
    },
    /// Read-only (optionally executable) memory the space owns, e.g.
    /// firmware; the host loads it, guest writes fault.
    Rom,
}

impl Backing {
    /// Whether the space allocates and frees this region's frames.
    pub fn is_owned(&self) -> bool {
        matches!(self, Self::Alloc { .. } | Self::AllocIdentical | Self::Rom)
    }

    /// The short kind of the backing.
    pub fn kind(&self) -> RegionKind {
        match self {
            Self::Alloc { .. } => RegionKind::Ram,
            Self::AllocIdentical | Self::Identical => RegionKind::Identical,
            Self::Linear { .. } => RegionKind::Linear,
            Self::Mmio { .. } => RegionKind::Mmio,
            Self::Rom => RegionKind::Rom,
        }
    }
}

/// The kind of a region, as queries report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// Allocated RAM.
    Ram,
    /// GPA == HPA.
    Identical,
    /// GPA = HPA + offset.
    Linear,
    /// Device space.
    Mmio,
    /// Read-only memory.
    Rom,
}

/// A 2 MiB or 1 GiB run of owned backing: frames allocated together, freed
/// together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) hpa: HostPhysAddr,
    pub(crate) size: PageSize,
}

/// Dirty-logging state of a region: one bit per 4 KiB page, in atomics,
/// so that faults and host writes on many CPUs mark pages while another
/// collects them (cf. vm-memory's `AtomicBitmap`).
///
/// The orderings, and the order of the steps around them, are what keeps a
/// dirty page from being missed by a collection:
/// - a host write copies its bytes, then marks ([`DirtyLog::mark`],
///   release); a collector takes the word ([`DirtyLog::take`], acquire)
///   and then copies the page: it sees the bytes of every write whose mark
///   it took;
/// - a guest write fault makes the page writable, then marks
///   ([`DirtyLog::grant_then_mark`]); a collector takes the word, then
///   write-protects the pages it named. A page left writable therefore
///   always has its bit set, for this collection or the next (marked first
///   and granted after a collection's write-protect, it would stay
///   writable with its bit gone, and later writes would never fault).
///
/// Under `--cfg loom` the words are loom's atomics, for the models at the
/// end of this file.
#[derive(Debug, Default)]
pub(crate) struct DirtyLog {
    /// Bit `i`: the 4 KiB page at `start + i * 4096` was written.
    bitmap: Vec<AtomicU64>,
}

impl DirtyLog {
    /// An empty log of `pages` pages. The bitmap's size is the region's, a
    /// caller's choice: an allocation the heap refuses is
    /// [`AspaceError::NoMemory`], never an abort.
    pub(crate) fn new(pages: usize) -> AspaceResult<Self> {
        let words = pages.div_ceil(64);
        let mut bitmap = Vec::new();
        bitmap
            .try_reserve_exact(words)
            .map_err(|_| AspaceError::NoMemory)?;
        bitmap.resize_with(words, || AtomicU64::new(0));
        Ok(Self { bitmap })
    }

    /// The log of `pages` pages starting at page `first` of this one (the
    /// space is borrowed exclusively: nothing marks meanwhile).
    pub(crate) fn slice(&self, first: usize, pages: usize) -> AspaceResult<Self> {
        let out = Self::new(pages)?;
        for page in 0..pages {
            if self.is_set(first + page) {
                out.mark(page);
            }
        }
        Ok(out)
    }

    /// Whether `page` is marked.
    pub(crate) fn is_set(&self, page: usize) -> bool {
        self.bitmap
            .get(page / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (page % 64)) != 0)
    }

    /// Words of the bitmap.
    pub(crate) fn words(&self) -> usize {
        self.bitmap.len()
    }

    /// Marks `page` dirty. Release: the write the mark stands for happened
    /// before it, and a collector that takes the bit (acquire) sees it.
    /// Always the read-modify-write, even when the bit is set already: a
    /// mark that only looked would publish nothing.
    pub(crate) fn mark(&self, page: usize) {
        if let Some(word) = self.bitmap.get(page / 64) {
            word.fetch_or(1 << (page % 64), Ordering::Release);
        }
    }

    /// Takes word `w`: its bits, cleared in the same step, so a mark lands
    /// either in what is taken or in the bitmap for the next collection.
    /// Acquire: pairs with [`DirtyLog::mark`].
    pub(crate) fn take(&self, w: usize) -> u64 {
        self.bitmap
            .get(w)
            .map_or(0, |word| word.swap(0, Ordering::AcqRel))
    }

    /// A write fault on `page` while logging: `grant` makes the page
    /// writable, then, if it succeeded, the page is marked (the order the
    /// type's docs explain). A page `grant` finds writable already is
    /// marked too: the write that faulted is about to land.
    pub(crate) fn grant_then_mark<R, E>(
        &self,
        page: usize,
        grant: impl FnOnce() -> Result<R, E>,
    ) -> Result<R, E> {
        let granted = grant()?;
        self.mark(page);
        Ok(granted)
    }

    /// Takes the whole log into `out` (bit `i` for page `i`; `out` holds a
    /// word per bitmap word at least), then calls `rearm(first, pages)`
    /// for each run of pages it took, in order: taken first, write-protected
    /// after (the order the type's docs explain).
    pub(crate) fn collect<E>(
        &self,
        out: &mut [u64],
        pages: usize,
        mut rearm: impl FnMut(usize, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        for (w, dst) in out.iter_mut().enumerate() {
            *dst = self.take(w);
        }
        let dirty = |page: usize| {
            out.get(page / 64)
                .is_some_and(|w| w & (1 << (page % 64)) != 0)
        };
        let mut page = 0;
        while page < pages {
            if !dirty(page) {
                page += 1;
                continue;
            }
            let first = page;
            while page < pages && dirty(page) {
                page += 1;
            }
            rearm(first, page - first)?;
        }
        Ok(())
    }
}

/// One region of the window.
#[derive(Debug)]
pub(crate) struct Region {
    pub(crate) start: usize,
    pub(crate) size: usize,
    pub(crate) flags: MappingFlags,
    pub(crate) backing: Backing,
    /// Owned 2 MiB and 1 GiB chunks by the guest address of their first
    /// byte. Single 4 KiB frames are recorded by the table alone: in an
    /// owned region every mapped 4 KiB page outside these chunks maps one
    /// frame the space allocated (see `GuestAddrSpace::for_each_owned`).
    pub(crate) huge: BTreeMap<usize, Chunk>,
    pub(crate) dirty: Option<DirtyLog>,
}

impl Region {
    pub(crate) fn end(&self) -> usize {
        self.start + self.size
    }

    /// A region like this one without its chunks or dirty log: the start
    /// of a piece that cutting it leaves.
    pub(crate) fn piece(&self) -> Self {
        Self {
            start: self.start,
            size: self.size,
            flags: self.flags,
            backing: self.backing,
            huge: BTreeMap::new(),
            dirty: None,
        }
    }

    /// The host address backing `gpa` for the pass-through kinds.
    pub(crate) fn passthrough_hpa(&self, gpa: usize) -> Option<HostPhysAddr> {
        let off = gpa - self.start;
        match self.backing {
            Backing::Identical => Some(HostPhysAddr::from_usize(gpa)),
            Backing::Linear { hpa } => Some(hpa + off),
            Backing::Mmio {
                passthrough: Some(hpa),
            } => Some(hpa + off),
            _ => None,
        }
    }

    /// Whether the space maps the region lazily, page by page.
    pub(crate) fn is_lazy(&self) -> bool {
        matches!(self.backing, Backing::Alloc { lazy: true })
    }

    /// The huge chunk containing `gpa` and its start.
    pub(crate) fn huge_at(&self, gpa: usize) -> Option<(usize, Chunk)> {
        let (&start, &chunk) = self.huge.range(..=gpa).next_back()?;
        (gpa < start + chunk.size.bytes()).then_some((start, chunk))
    }
}

/// The regions of a space, sorted by start and never overlapping, in one
/// array: a fault or host access finds its region by binary search over a
/// handful of entries (KVM keeps its memslots the same way). A
/// `BTreeMap` `range` lookup built both ends of a range first: about 50
/// instructions of every fault (`benches/examples/icount.rs`).
#[derive(Debug, Default)]
pub(crate) struct RegionMap(Vec<Region>);

impl RegionMap {
    /// The index of the first region starting above `gpa`.
    #[inline]
    fn above(&self, gpa: usize) -> usize {
        self.0.partition_point(|r| r.start <= gpa)
    }

    /// The index of the first region starting at or above `gpa`.
    fn from(&self, gpa: usize) -> usize {
        self.0.partition_point(|r| r.start < gpa)
    }

    /// Number of regions.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The region holding `gpa`.
    #[inline]
    pub(crate) fn at(&self, gpa: usize) -> Option<&Region> {
        let r = self.0.get(self.above(gpa).checked_sub(1)?)?;
        (gpa < r.end()).then_some(r)
    }

    /// The region holding `gpa`, to change it.
    pub(crate) fn at_mut(&mut self, gpa: usize) -> Option<&mut Region> {
        let i = self.above(gpa).checked_sub(1)?;
        let r = self.0.get_mut(i)?;
        (gpa < r.end()).then_some(r)
    }

    /// The region starting at `start`.
    pub(crate) fn get(&self, start: usize) -> Option<&Region> {
        let r = self.0.get(self.from(start))?;
        (r.start == start).then_some(r)
    }

    /// The region starting at `start`, to change it.
    pub(crate) fn get_mut(&mut self, start: usize) -> Option<&mut Region> {
        let i = self.from(start);
        self.0.get_mut(i).filter(|r| r.start == start)
    }

    /// The last region starting below `end`.
    pub(crate) fn last_below(&self, end: usize) -> Option<&Region> {
        self.0.get(self.from(end).checked_sub(1)?)
    }

    /// The regions overlapping `[start, end)`, in order.
    pub(crate) fn overlapping(&self, start: usize, end: usize) -> impl Iterator<Item = &Region> {
        self.0[..self.from(end)]
            .iter()
            .filter(move |r| r.end() > start)
    }

    /// The regions starting in `[start, end)`, to change them.
    pub(crate) fn starting_in_mut(&mut self, start: usize, end: usize) -> &mut [Region] {
        let (lo, hi) = (self.from(start), self.from(end));
        &mut self.0[lo..hi.max(lo)]
    }

    /// Room for `more` regions, so that the inserts after a change that
    /// cannot be undone do not allocate. [`AspaceError::NoMemory`] if the
    /// heap refuses.
    pub(crate) fn reserve(&mut self, more: usize) -> AspaceResult<()> {
        self.0.try_reserve(more).map_err(|_| AspaceError::NoMemory)
    }

    /// Adds `region`, which overlaps none (the caller checked), and returns
    /// it. Grows the array if [`RegionMap::reserve`] left no room.
    pub(crate) fn insert(&mut self, region: Region) -> &mut Region {
        let i = self.from(region.start);
        self.0.insert(i, region);
        &mut self.0[i]
    }

    /// Removes the region starting at `start`.
    pub(crate) fn remove(&mut self, start: usize) -> Option<Region> {
        let i = self.from(start);
        (self.0.get(i)?.start == start).then(|| self.0.remove(i))
    }

    /// Every region, in order.
    pub(crate) fn iter(&self) -> core::slice::Iter<'_, Region> {
        self.0.iter()
    }

    /// Removes every region.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// A public view of one region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionInfo {
    /// The guest-physical range.
    pub range: GuestPhysAddrRange,
    /// The guest's rights.
    pub flags: MappingFlags,
    /// What backs it.
    pub backing: Backing,
    /// Bytes of owned backing allocated so far: the whole region for eager
    /// RAM, ROM and allocated identical memory, the faulted-in pages for
    /// lazy RAM, zero for memory the space does not own.
    pub populated: usize,
    /// Whether dirty logging is on.
    pub dirty_logging: bool,
}

/// loom models of the dirty log against the collector: every interleaving
/// (within loom's bounds) of the steps [`DirtyLog`]'s docs order. The leaf
/// is one loom atomic whose bit 1 stands for write permission, changed with
/// single read-modify-writes as `npt_table`'s compare-and-swap updates do;
/// what is checked is the order `DirtyLog` puts around them.
///
/// Run: `RUSTFLAGS="--cfg loom" cargo test -p guest-aspace --release --lib region`.
#[cfg(all(test, loom))]
mod loom_models {
    use alloc::sync::Arc;

    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicU64, Ordering};

    use super::DirtyLog;

    const WRITE: u64 = 1 << 1;

    /// A write fault (grant, then mark) against a collection (take, then
    /// write-protect): a page left writable always has its bit set, and the
    /// fault's mark is in the collection or left for the next one.
    #[test]
    fn fault_against_collect_dirty() {
        loom::model(|| {
            let log = Arc::new(DirtyLog::new(1).unwrap());
            let leaf = Arc::new(AtomicU64::new(0));
            let (log2, leaf2) = (log.clone(), leaf.clone());
            let fault = loom::thread::spawn(move || {
                log2.grant_then_mark(0, || {
                    leaf2.fetch_or(WRITE, Ordering::AcqRel);
                    Ok::<(), ()>(())
                })
            });
            let mut out = [0u64; 1];
            log.collect(&mut out, 1, |_, _| {
                leaf.fetch_and(!WRITE, Ordering::AcqRel);
                Ok::<(), ()>(())
            })
            .unwrap();
            fault.join().unwrap().unwrap();
            let writable = leaf.load(Ordering::Acquire) & WRITE != 0;
            assert!(
                !writable || log.is_set(0),
                "writable page with no dirty bit"
            );
            assert!(out[0] & 1 != 0 || log.is_set(0), "dirty bit lost");
        });
    }

    /// A host write (bytes, then mark) against a collection: a collector
    /// that takes the mark sees the bytes (loom checks the access for a
    /// race), and an untaken mark stays for the next collection.
    #[test]
    fn host_write_against_collect_dirty() {
        loom::model(|| {
            let log = Arc::new(DirtyLog::new(1).unwrap());
            // loom's cell is shared between loom threads by design: loom
            // itself checks every access to it.
            #[allow(clippy::arc_with_non_send_sync)]
            let page = Arc::new(UnsafeCell::new(0u64));
            let (log2, page2) = (log.clone(), page.clone());
            let writer = loom::thread::spawn(move || {
                // SAFETY (loom cell): only this thread writes the page; the
                // collector reads it only after taking the mark.
                page2.with_mut(|p| unsafe { *p = 7 });
                log2.mark(0);
            });
            let mut out = [0u64; 1];
            log.collect(&mut out, 1, |_, _| Ok::<(), ()>(())).unwrap();
            if out[0] & 1 != 0 {
                // SAFETY (loom cell): the mark taken orders the write first.
                assert_eq!(page.with(|p| unsafe { *p }), 7);
            }
            writer.join().unwrap();
            assert!(out[0] & 1 != 0 || log.is_set(0), "dirty bit lost");
        });
    }

    /// Two marks in the same word against a take: each lands in what is
    /// taken or in what stays.
    #[test]
    fn marks_in_one_word_against_take() {
        loom::model(|| {
            let log = Arc::new(DirtyLog::new(64).unwrap());
            let log2 = log.clone();
            let other = loom::thread::spawn(move || log2.mark(1));
            log.mark(0);
            let taken = log.take(0);
            other.join().unwrap();
            let stays = log.take(0);
            assert_eq!(taken | stays, 0b11);
            assert_eq!(taken & stays, 0);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    use gpa_types::MappingFlags;

    use super::{Backing, Region, RegionMap};

    fn region(start: usize, size: usize) -> Region {
        Region {
            start,
            size,
            flags: MappingFlags::READ,
            backing: Backing::Identical,
            huge: BTreeMap::new(),
            dirty: None,
        }
    }

    /// Regions `[0x1000, 0x3000)`, `[0x5000, 0x6000)`, `[0x6000, 0x9000)`,
    /// inserted out of order.
    fn map() -> RegionMap {
        let mut m = RegionMap::default();
        for (start, size) in [(0x6000, 0x3000), (0x1000, 0x2000), (0x5000, 0x1000)] {
            m.insert(region(start, size));
        }
        m
    }

    fn starts<'a>(it: impl Iterator<Item = &'a Region>) -> Vec<usize> {
        it.map(|r| r.start).collect()
    }

    #[test]
    fn kept_in_order() {
        assert_eq!(starts(map().iter()), [0x1000, 0x5000, 0x6000]);
    }

    /// Every lookup against a scan of the regions, at and around every
    /// boundary.
    #[test]
    fn lookups_match_a_scan() {
        let m = map();
        let all: Vec<&Region> = m.iter().collect();
        for gpa in (0..0xa000).step_by(0x800).chain([usize::MAX]) {
            let holding = all.iter().find(|r| r.start <= gpa && gpa < r.end());
            assert_eq!(
                m.at(gpa).map(|r| r.start),
                holding.map(|r| r.start),
                "at {gpa:#x}"
            );
            let below = all.iter().rev().find(|r| r.start < gpa);
            assert_eq!(m.last_below(gpa).map(|r| r.start), below.map(|r| r.start));
            let starting = all.iter().find(|r| r.start == gpa);
            assert_eq!(m.get(gpa).map(|r| r.start), starting.map(|r| r.start));
        }
        // The `_mut` forms find the same regions.
        let mut m = map();
        for gpa in (0..0xa000).step_by(0x800).chain([usize::MAX]) {
            let at = m.at(gpa).map(|r| r.start);
            assert_eq!(m.at_mut(gpa).map(|r| r.start), at, "at_mut {gpa:#x}");
            let get = m.get(gpa).map(|r| r.start);
            assert_eq!(m.get_mut(gpa).map(|r| r.start), get, "get_mut {gpa:#x}");
        }
    }

    #[test]
    fn ranges() {
        let mut m = map();
        assert_eq!(starts(m.overlapping(0x2000, 0x5001)), [0x1000, 0x5000]);
        assert_eq!(starts(m.overlapping(0x3000, 0x5000)), [0usize; 0]);
        assert_eq!(
            starts(m.overlapping(0, usize::MAX)),
            [0x1000, 0x5000, 0x6000]
        );
        let inside: Vec<usize> = m
            .starting_in_mut(0x1001, 0x6001)
            .iter()
            .map(|r| r.start)
            .collect();
        assert_eq!(inside, [0x5000, 0x6000]);
        assert!(m.starting_in_mut(0x7000, 0x2000).is_empty());
    }

    #[test]
    fn remove_by_start_only() {
        let mut m = map();
        assert!(m.remove(0x5800).is_none());
        assert_eq!(m.remove(0x5000).map(|r| r.start), Some(0x5000));
        assert_eq!(starts(m.iter()), [0x1000, 0x6000]);
        assert_eq!(m.len(), 2);
        m.clear();
        assert!(m.at(0x1000).is_none());
    }
}
