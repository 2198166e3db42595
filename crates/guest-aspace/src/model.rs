//! A plain reference model of a [`GuestAddrSpace`](crate::GuestAddrSpace),
//! for tests and fuzz targets (feature `std`).
//!
//! The model keeps what the space should hold in the simplest form: regions
//! in a `BTreeMap` by start, the owned backing chunks of each region, the
//! bytes the host wrote, and the pages dirty-logging should report. It
//! predicts the errors of the checks every mutation shares (placement,
//! removal, host access) and the outcome of a fault; a harness runs an
//! operation on the space and on the model and compares.
//!
//! It does not model allocation failure: a harness that fails allocations
//! decides itself what a `NoMemory` leaves behind.
//!
//! ```
//! use guest_aspace::model::{ModelKind, SpaceModel};
//! use guest_aspace::{Access, FaultOutcome, MappingFlags, npt_entry::ept::Ept4};
//!
//! let rw = MappingFlags::READ | MappingFlags::WRITE;
//! let mut m = SpaceModel::default();
//! let window = (0x4000_0000, 0x8000_0000);
//! assert!(m.check_free(0x4000_0000, 0x20_0000, window).is_ok());
//! m.insert::<Ept4>(0x4000_0000, 0x20_0000, rw, ModelKind::Ram { lazy: true });
//! assert!(!m.mapped(0x4000_1000));
//! assert_eq!(m.fault(0x4000_1234, Access::Write), None); // would be fixed
//! m.fixed(0x4000_1234, Access::Write);
//! assert!(m.mapped(0x4000_1000));
//! assert_eq!(
//!     m.fault(0x9000_0000, Access::Read),
//!     Some(FaultOutcome::Unmapped { gpa: 0x9000_0000.into() })
//! );
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use gpa_types::{HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;

use crate::{Access, AspaceError, Backing, FaultOutcome, RegionKind};

const K4: usize = 0x1000;

/// A region's backing, with the host address of pass-through kinds as a
/// plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// [`Backing::Alloc`].
    Ram {
        /// Populated on first fault or host access.
        lazy: bool,
    },
    /// [`Backing::Rom`].
    Rom,
    /// [`Backing::Identical`].
    Identical,
    /// [`Backing::AllocIdentical`].
    AllocIdentical,
    /// [`Backing::Linear`], the host address of the region's start.
    Linear(usize),
    /// [`Backing::Mmio`], the host address of a pass-through region's start.
    Mmio(Option<usize>),
}

impl ModelKind {
    /// The kind of a backing.
    pub fn of(backing: Backing) -> Self {
        match backing {
            Backing::Alloc { lazy } => ModelKind::Ram { lazy },
            Backing::Rom => ModelKind::Rom,
            Backing::Identical => ModelKind::Identical,
            Backing::AllocIdentical => ModelKind::AllocIdentical,
            Backing::Linear { hpa } => ModelKind::Linear(hpa.as_usize()),
            Backing::Mmio { passthrough } => {
                ModelKind::Mmio(passthrough.map(HostPhysAddr::as_usize))
            }
        }
    }

    /// The backing of this kind.
    pub fn backing(self) -> Backing {
        match self {
            ModelKind::Ram { lazy } => Backing::Alloc { lazy },
            ModelKind::Rom => Backing::Rom,
            ModelKind::Identical => Backing::Identical,
            ModelKind::AllocIdentical => Backing::AllocIdentical,
            ModelKind::Linear(h) => Backing::Linear { hpa: h.into() },
            ModelKind::Mmio(p) => Backing::Mmio {
                passthrough: p.map(HostPhysAddr::from),
            },
        }
    }

    /// The kind a fault reports.
    pub fn region_kind(self) -> RegionKind {
        match self {
            ModelKind::Ram { .. } => RegionKind::Ram,
            ModelKind::Rom => RegionKind::Rom,
            ModelKind::Identical | ModelKind::AllocIdentical => RegionKind::Identical,
            ModelKind::Linear(_) => RegionKind::Linear,
            ModelKind::Mmio(_) => RegionKind::Mmio,
        }
    }

    /// Whether the host may read (`write` false) or write it, or load an
    /// image into it (`load`, which ROM allows).
    pub fn host_ok(self, write: bool, load: bool) -> bool {
        match self {
            ModelKind::Ram { .. } | ModelKind::AllocIdentical => true,
            ModelKind::Rom => !write || load,
            _ => false,
        }
    }

    /// Whether the space allocates the backing when the region is added.
    pub fn is_eager(self) -> bool {
        matches!(self, ModelKind::Ram { lazy: false } | ModelKind::Rom)
    }

    /// The host address of `gpa` in a pass-through region starting at
    /// `start`.
    pub fn passthrough(self, start: usize, gpa: usize) -> Option<usize> {
        match self {
            ModelKind::Identical | ModelKind::AllocIdentical => Some(gpa),
            ModelKind::Linear(h) | ModelKind::Mmio(Some(h)) => Some(h + (gpa - start)),
            _ => None,
        }
    }
}

/// One region of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRegion {
    /// First guest address.
    pub start: usize,
    /// Size in bytes.
    pub size: usize,
    /// Flags as added.
    pub flags: MappingFlags,
    /// Backing.
    pub kind: ModelKind,
    /// Owned backing chunks by guest address and size: the eager layout of
    /// RAM and ROM, and each populated 4 KiB page of lazy RAM.
    pub chunks: BTreeMap<usize, usize>,
    /// Whether dirty logging is on.
    pub logging: bool,
    /// While logging: pages the guest may write (made writable by a fault).
    pub writable: BTreeSet<usize>,
}

impl ModelRegion {
    /// One past the last guest address.
    pub fn end(&self) -> usize {
        self.start + self.size
    }

    /// Owned bytes (what `RegionInfo::populated` reports).
    pub fn populated(&self) -> usize {
        self.chunks.values().sum()
    }

    /// Whether the page holding `gpa` is mapped in the nested table.
    pub fn mapped(&self, gpa: usize) -> bool {
        match self.kind {
            ModelKind::Ram { lazy: true } => self.chunks.contains_key(&(gpa & !(K4 - 1))),
            ModelKind::Mmio(None) => false,
            _ => true,
        }
    }
}

/// The model of one address space.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SpaceModel {
    /// The regions by start.
    pub regions: BTreeMap<usize, ModelRegion>,
    /// Bytes the host wrote, by guest address (unwritten bytes read as 0).
    pub bytes: BTreeMap<usize, u8>,
    /// Pages dirty-logging should report.
    pub dirty: BTreeSet<usize>,
}

/// The backing chunks eager allocation makes for `[gpa, gpa + size)` in
/// format `F` when nothing fails: the largest of 1 GiB and 2 MiB that is
/// aligned, fits and is a leaf size of `F`, else 4 KiB.
pub fn eager_layout<F: NptFormat>(gpa: usize, size: usize) -> BTreeMap<usize, usize> {
    let mut out = BTreeMap::new();
    let (mut pos, end) = (gpa, gpa.saturating_add(size));
    while pos < end {
        let chunk = [PageSize::Size1G, PageSize::Size2M]
            .into_iter()
            .find(|page| {
                *page <= F::MAX_LEAF
                    && F::level_of(*page).is_some()
                    && page.is_aligned(pos)
                    && end - pos >= page.bytes()
            })
            .map_or(K4, PageSize::bytes);
        out.insert(pos, chunk);
        pos += chunk;
    }
    out
}

impl SpaceModel {
    /// The model of `space` as it is now, with no bytes written and nothing
    /// dirty (eager backing laid out as [`eager_layout`]).
    pub fn from_space<F: NptFormat, A: npt_table::FrameAllocator>(
        space: &crate::GuestAddrSpace<F, A>,
    ) -> Self {
        let mut m = SpaceModel::default();
        for r in space.regions() {
            m.insert::<F>(
                r.range.start.as_usize(),
                r.range.size(),
                r.flags,
                ModelKind::of(r.backing),
            );
        }
        m
    }

    /// The region holding `gpa`.
    pub fn region_at(&self, gpa: usize) -> Option<&ModelRegion> {
        let (_, r) = self.regions.range(..=gpa).next_back()?;
        (gpa < r.end()).then_some(r)
    }

    /// The region holding `gpa`, to change it.
    pub fn region_at_mut(&mut self, gpa: usize) -> Option<&mut ModelRegion> {
        let (_, r) = self.regions.range_mut(..=gpa).next_back()?;
        (gpa < r.end()).then_some(r)
    }

    /// Whether the page holding `gpa` is mapped in the nested table.
    pub fn mapped(&self, gpa: usize) -> bool {
        self.region_at(gpa).is_some_and(|r| r.mapped(gpa))
    }

    /// What adding `[gpa, gpa + size)` inside `window` (start, end) is
    /// refused with, checked in the space's order: zero size, alignment,
    /// the window, overlap.
    pub fn check_free(
        &self,
        gpa: usize,
        size: usize,
        window: (usize, usize),
    ) -> Result<(), AspaceError> {
        if size == 0 {
            return Err(AspaceError::ZeroSize);
        }
        for v in [gpa, size] {
            if v % K4 != 0 {
                return Err(AspaceError::NotAligned {
                    value: v,
                    align: K4,
                });
            }
        }
        let outside = AspaceError::OutsideWindow {
            gpa: gpa.into(),
            len: size,
        };
        let end = gpa.checked_add(size).ok_or(outside)?;
        if gpa < window.0 || end > window.1 {
            return Err(outside);
        }
        if let Some((&s, r)) = self.regions.range(..end).next_back()
            && r.end() > gpa
        {
            return Err(AspaceError::Overlap {
                gpa: gpa.into(),
                existing: s.into(),
            });
        }
        Ok(())
    }

    /// Records a successful add (eager kinds get [`eager_layout`]).
    pub fn insert<F: NptFormat>(
        &mut self,
        gpa: usize,
        size: usize,
        flags: MappingFlags,
        kind: ModelKind,
    ) {
        let chunks = if kind.is_eager() {
            eager_layout::<F>(gpa, size)
        } else {
            BTreeMap::new()
        };
        self.regions.insert(
            gpa,
            ModelRegion {
                start: gpa,
                size,
                flags,
                kind,
                chunks,
                logging: false,
                writable: BTreeSet::new(),
            },
        );
    }

    /// Bytes of eagerly allocated regions (RAM, ROM, allocated identical).
    pub fn eager_bytes(&self) -> usize {
        self.regions
            .values()
            .filter(|r| r.kind.is_eager() || r.kind == ModelKind::AllocIdentical)
            .map(|r| r.size)
            .sum()
    }

    /// The first address of `[gpa, gpa + len)` the host may not access
    /// (see [`ModelKind::host_ok`]).
    pub fn first_inaccessible(
        &self,
        gpa: usize,
        len: usize,
        write: bool,
        load: bool,
    ) -> Option<usize> {
        let Some(end) = gpa.checked_add(len) else {
            return Some(gpa);
        };
        let mut pos = gpa;
        while pos < end {
            match self.region_at(pos) {
                Some(r) if r.kind.host_ok(write, load) => pos = r.end().min(end),
                _ => return Some(pos),
            }
        }
        None
    }

    /// What `remove_range(gpa, len)` is refused with: zero length,
    /// alignment, overflow, a hole (named by the first one after `gpa`),
    /// an edge inside an owned backing chunk or an allocated identical
    /// region.
    pub fn check_remove(&self, gpa: usize, len: usize) -> Result<(), AspaceError> {
        if len == 0 {
            return Err(AspaceError::ZeroSize);
        }
        for v in [gpa, len] {
            if v % K4 != 0 {
                return Err(AspaceError::NotAligned {
                    value: v,
                    align: K4,
                });
            }
        }
        let end = gpa.checked_add(len).ok_or(AspaceError::OutsideWindow {
            gpa: gpa.into(),
            len,
        })?;
        let mut pos = gpa;
        while pos < end {
            match self.region_at(pos) {
                Some(r) => pos = r.end(),
                None => return Err(AspaceError::NoRegion { gpa: pos.into() }),
            }
        }
        for edge in [gpa, end] {
            if let Some(r) = self.region_at(edge) {
                if r.kind == ModelKind::AllocIdentical && edge != r.start {
                    return Err(AspaceError::CutsBacking { gpa: edge.into() });
                }
                if let Some((&cs, &csize)) = r.chunks.range(..=edge).next_back()
                    && edge < cs + csize
                    && cs != edge
                {
                    return Err(AspaceError::CutsBacking { gpa: edge.into() });
                }
            }
        }
        Ok(())
    }

    /// Records a successful `remove_range` of `[start, end)`: regions are
    /// cut (an allocated identical region goes whole), and the bytes and
    /// dirty pages in the range are forgotten.
    pub fn remove(&mut self, start: usize, end: usize) {
        let starts: Vec<usize> = self
            .regions
            .range(..end)
            .filter(|(_, r)| r.end() > start)
            .map(|(s, _)| *s)
            .collect();
        for s in starts {
            let Some(r) = self.regions.remove(&s) else {
                continue;
            };
            if r.kind == ModelKind::AllocIdentical {
                continue;
            }
            let (lo, hi) = (start.max(r.start), end.min(r.end()));
            if r.start < lo {
                let mut left = r.clone();
                left.size = lo - r.start;
                left.chunks = r.chunks.range(..lo).map(|(g, c)| (*g, *c)).collect();
                left.writable = r.writable.range(..lo).copied().collect();
                self.regions.insert(left.start, left);
            }
            if hi < r.end() {
                let mut right = r.clone();
                right.start = hi;
                right.size = r.end() - hi;
                right.chunks = r.chunks.range(hi..).map(|(g, c)| (*g, *c)).collect();
                right.writable = r.writable.range(hi..).copied().collect();
                right.kind = match r.kind {
                    ModelKind::Linear(h) => ModelKind::Linear(h + (hi - r.start)),
                    ModelKind::Mmio(Some(h)) => ModelKind::Mmio(Some(h + (hi - r.start))),
                    k => k,
                };
                self.regions.insert(right.start, right);
            }
        }
        self.bytes.retain(|a, _| !(start..end).contains(a));
        self.dirty.retain(|p| !(start..end).contains(p));
    }

    /// The outcome of a guest `access` at `gpa`, or `None` when the space
    /// fixes the fault (then [`SpaceModel::fixed`] records it): unmapped
    /// outside every region; an exit for emulated MMIO (data accesses its
    /// flags allow, and every fetch); a violation where the flags refuse
    /// the access.
    pub fn fault(&self, gpa: usize, access: Access) -> Option<FaultOutcome> {
        let Some(r) = self.region_at(gpa) else {
            return Some(FaultOutcome::Unmapped { gpa: gpa.into() });
        };
        let allowed = r.flags.contains(access.needs());
        if r.kind == ModelKind::Mmio(None) && (access == Access::Execute || allowed) {
            return Some(FaultOutcome::Mmio {
                gpa: gpa.into(),
                access,
            });
        }
        if !allowed {
            return Some(FaultOutcome::Violation {
                gpa: gpa.into(),
                access,
                kind: r.kind.region_kind(),
            });
        }
        None
    }

    /// Records a fixed fault: a lazy page is populated; a write to a
    /// logging region makes the page writable and, the first time, dirty.
    pub fn fixed(&mut self, gpa: usize, access: Access) {
        let page = gpa & !(K4 - 1);
        let mut newly_dirty = false;
        if let Some(r) = self.region_at_mut(gpa) {
            let populated = r.mapped(gpa);
            if r.kind == (ModelKind::Ram { lazy: true }) && !populated {
                r.chunks.insert(page, K4);
            }
            if access == Access::Write && r.logging {
                newly_dirty = r.writable.insert(page) || !populated;
            }
        }
        if newly_dirty {
            self.dirty.insert(page);
        }
    }

    /// Records a successful host write (or image load) of `data` at `gpa`:
    /// the bytes, the lazy pages it populated, and dirty pages of logging
    /// regions.
    pub fn written(&mut self, gpa: usize, data: &[u8]) {
        // Indexed, not `(gpa..).zip(data)`: that steps past `usize::MAX`
        // (and panics) for an empty write at the top of the address space.
        for (i, b) in data.iter().enumerate() {
            if let Some(a) = gpa.checked_add(i) {
                self.bytes.insert(a, *b);
            }
        }
        let Some(end) = gpa.checked_add(data.len()) else {
            return;
        };
        let mut page = gpa & !(K4 - 1);
        while !data.is_empty() && page < end {
            let mut logging = false;
            if let Some(r) = self.region_at_mut(page) {
                if r.kind == (ModelKind::Ram { lazy: true }) {
                    r.chunks.insert(page, K4);
                }
                logging = r.logging;
            }
            if logging {
                self.dirty.insert(page);
            }
            page = match page.checked_add(K4) {
                Some(p) => p,
                None => break,
            };
        }
    }

    /// The bytes `[gpa, gpa + len)` hold (0 where never written).
    pub fn read(&self, gpa: usize, len: usize) -> Vec<u8> {
        (gpa..gpa.saturating_add(len))
            .map(|a| self.bytes.get(&a).copied().unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::SpaceModel;

    /// Found by `aspace_ops` (`fuzz/regressions/aspace_ops/model-empty-load-at-top`):
    /// recording an empty write at `usize::MAX` stepped a range past the end.
    #[test]
    fn an_empty_write_at_the_top_records_nothing() {
        let mut m = SpaceModel::default();
        m.written(usize::MAX, &[]);
        m.written(usize::MAX, &[7]);
        assert_eq!(m.bytes.get(&usize::MAX), Some(&7));
    }
}
