//! A software model of the hardware walker (feature `std`), for tests: it
//! reads a table through raw memory the way an MMU does, independently of
//! the table's own walk, and reports every table frame it passed. Stale-TLB
//! models use it to know what a vCPU's TLB and paging-structure caches may
//! hold; A/D tests use it to set bits as the hardware would.

use std::vec::Vec;

use gpa_types::{HostPhysAddr, PageSize};
use npt_entry::{EntryKind, GenericPTE, NestedEntry, NptFormat};

use crate::frames::FrameAllocator;

/// What one hardware walk saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwWalk {
    /// The table frames below the root that the walk read, top down.
    pub tables: Vec<HostPhysAddr>,
    /// The leaf, if the walk ended at one: the address of its slot, its raw
    /// bits, and the size it maps.
    pub leaf: Option<(HostPhysAddr, u64, PageSize)>,
}

impl HwWalk {
    /// The host address `gpa` translates to, if the walk found a leaf.
    pub fn hpa<F: NptFormat>(&self, gpa: usize) -> Option<HostPhysAddr> {
        let (_, raw, size) = self.leaf?;
        let base: usize = F::Entry::from_raw(raw).paddr().into();
        Some(HostPhysAddr::from_usize(base + size.offset(gpa)))
    }
}

/// Walks the table of format `F` rooted at `root` for `gpa`, reading
/// entries from the memory `alloc` maps.
///
/// # Safety
///
/// `root` must be the root of a live table whose frames (and all frames its
/// entries point to as tables) come from `alloc` and stay allocated during
/// the call.
pub unsafe fn walk<F: NptFormat, A: FrameAllocator>(
    alloc: &A,
    root: HostPhysAddr,
    gpa: usize,
) -> HwWalk {
    let mut tables = Vec::new();
    let mut table = root;
    for level in 0..F::LEVELS {
        let slot = table + F::index(gpa, level) * 8;
        // SAFETY: the caller keeps every table of the walk allocated, and
        // `F::index` stays inside the table at `level`.
        let raw = unsafe { alloc.phys_to_virt(slot).cast::<u64>().read_volatile() };
        let entry = F::Entry::from_raw(raw);
        match entry.kind(level == F::LEVELS - 1) {
            EntryKind::Empty => break,
            EntryKind::Leaf => {
                let leaf = F::leaf_size(level).map(|size| (slot, raw, size));
                return HwWalk { tables, leaf };
            }
            EntryKind::Table => {
                table = entry.paddr().into();
                tables.push(table);
            }
        }
    }
    HwWalk { tables, leaf: None }
}

/// ORs `bits` into the leaf slot a walk found, as the hardware does when it
/// sets accessed/dirty flags.
///
/// # Safety
///
/// As for [`walk`]; `slot` comes from a walk of that table with no change
/// to the table since.
pub unsafe fn set_bits<A: FrameAllocator>(alloc: &A, slot: HostPhysAddr, bits: u64) {
    // SAFETY: the caller guarantees the slot is a live entry of the table.
    unsafe {
        let p = alloc.phys_to_virt(slot).cast::<u64>();
        p.write_volatile(p.read_volatile() | bits);
    }
}

/// What one vCPU caches for a guest page: the allocations its walk went
/// through (table frames, and the guest frame the leaf names when the
/// allocator owns it), each with the generation it had then.
#[derive(Debug, Clone)]
struct Cached {
    frames: Vec<(HostPhysAddr, u64)>,
}

/// A model of the TLBs and paging-structure caches of a few vCPUs.
///
/// A vCPU that touches a guest page caches every allocation its walk used;
/// it drops cached pages only when a flush record names them (or names
/// everything). [`TlbModel::stale`] reports a cached allocation that the
/// allocator has meanwhile taken back or handed to a new owner: exactly
/// what a real vCPU could then read or write through a stale translation.
#[derive(Debug, Clone)]
pub struct TlbModel {
    cpus: Vec<std::collections::BTreeMap<usize, Cached>>,
}

impl TlbModel {
    /// `cpus` vCPUs with empty caches.
    pub fn new(cpus: usize) -> Self {
        Self {
            cpus: std::vec![std::collections::BTreeMap::new(); cpus],
        }
    }

    /// vCPU `cpu` (modulo the count) touches `gpa` in the table rooted at
    /// `root`, caching what its walk used.
    ///
    /// # Safety
    ///
    /// As for [`walk`].
    pub unsafe fn touch<F: NptFormat, A: FrameAllocator>(
        &mut self,
        cpu: usize,
        alloc: &crate::ReusingAllocator<A>,
        root: HostPhysAddr,
        gpa: usize,
    ) {
        // SAFETY: forwarded from the caller.
        let w = unsafe { walk::<F, _>(alloc, root, gpa) };
        let mut frames = Vec::new();
        for t in &w.tables {
            if let Some(a) = alloc.allocation_of(*t) {
                frames.push(a);
            }
        }
        if let Some(a) = w.hpa::<F>(gpa).and_then(|h| alloc.allocation_of(h)) {
            frames.push(a);
        }
        let n = self.cpus.len().max(1);
        if let Some(cache) = self.cpus.get_mut(cpu % n) {
            cache.insert(gpa & !0xfff, Cached { frames });
        }
    }

    /// Every vCPU invalidates what `flush` names.
    pub fn flush(&mut self, flush: &crate::TlbFlush) {
        if flush.is_all() {
            return self.flush_all();
        }
        for cache in &mut self.cpus {
            for r in flush.ranges() {
                let (s, e) = (r.start.as_usize(), r.end.as_usize());
                let doomed: Vec<usize> = cache.range(s & !0xfff..e).map(|(k, _)| *k).collect();
                for k in doomed {
                    cache.remove(&k);
                }
            }
        }
    }

    /// Every vCPU invalidates everything.
    pub fn flush_all(&mut self) {
        for cache in &mut self.cpus {
            cache.clear();
        }
    }

    /// The first cached allocation that is no longer the one the walk saw
    /// (freed, or handed out again), as (vCPU, guest page, allocation).
    pub fn stale<A: FrameAllocator>(
        &self,
        alloc: &crate::ReusingAllocator<A>,
    ) -> Option<(usize, usize, HostPhysAddr)> {
        for (cpu, cache) in self.cpus.iter().enumerate() {
            for (&page, c) in cache {
                for &(base, generation) in &c.frames {
                    if !alloc.is_live(base) || alloc.generation(base) != generation {
                        return Some((cpu, page, base));
                    }
                }
            }
        }
        None
    }
}

/// Flush records a test holds back, to complete late, in any order, or to
/// drop: the other half of a [`TlbModel`] run.
#[derive(Debug, Default)]
pub struct Pending {
    records: Vec<crate::TlbFlush>,
}

impl Pending {
    /// No records held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds the record a change returned, if any.
    pub fn push(&mut self, record: Option<crate::TlbFlush>) {
        self.records.extend(record);
    }

    /// Record `i` (modulo the count): every vCPU flushes what it names, then
    /// `complete` hands it back to its table. Nothing when none is held.
    pub fn complete(
        &mut self,
        i: usize,
        tlb: &mut TlbModel,
        complete: impl FnOnce(crate::TlbFlush),
    ) {
        if self.records.is_empty() {
            return;
        }
        let record = self.records.swap_remove(i % self.records.len());
        tlb.flush(&record);
        complete(record);
    }

    /// Drops record `i` (modulo the count) without completing it.
    pub fn ignore(&mut self, i: usize) {
        if !self.records.is_empty() {
            let n = self.records.len();
            self.records.swap_remove(i % n).ignore();
        }
    }

    /// A full flush on every vCPU, then `complete_all`; held records are
    /// dropped (the full flush covered them).
    pub fn flush_all(&mut self, tlb: &mut TlbModel, complete_all: impl FnOnce()) {
        tlb.flush_all();
        complete_all();
        self.records.clear();
    }

    /// Completes every held record, then flushes everything on every vCPU:
    /// the caller then completes a full flush (`complete_all`) for what
    /// dropped records left parked.
    pub fn finish(&mut self, tlb: &mut TlbModel, mut complete: impl FnMut(crate::TlbFlush)) {
        for record in self.records.drain(..) {
            tlb.flush(&record);
            complete(record);
        }
        tlb.flush_all();
    }
}
