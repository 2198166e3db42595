//! Regions: what backs each part of the guest-physical window.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use gpa_types::{GuestPhysAddrRange, HostPhysAddr, MappingFlags, PageSize};

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

/// Dirty-logging state of a region.
#[derive(Debug, Clone, Default)]
pub(crate) struct DirtyLog {
    /// Bit `i`: the 4 KiB page at `start + i * 4096` was written.
    pub(crate) bitmap: Vec<u64>,
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
        bitmap.resize(words, 0);
        Ok(Self { bitmap })
    }

    /// The log of `pages` pages starting at page `first` of this one.
    pub(crate) fn slice(&self, first: usize, pages: usize) -> AspaceResult<Self> {
        let mut out = Self::new(pages)?;
        for page in 0..pages {
            let src = first + page;
            let set = self
                .bitmap
                .get(src / 64)
                .is_some_and(|w| w & (1 << (src % 64)) != 0);
            if set {
                out.mark(page);
            }
        }
        Ok(out)
    }

    pub(crate) fn mark(&mut self, page: usize) {
        if let Some(word) = self.bitmap.get_mut(page / 64) {
            *word |= 1 << (page % 64);
        }
    }
}

/// One region of the window.
#[derive(Debug, Clone)]
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
