//! Helpers shared by the integration tests of `guest-aspace`.
#![allow(dead_code)]

use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, HostPhysAddr, MappingFlags};
use guest_aspace::{Backing, GuestAddrSpace, RegionInfo};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, TableStats};

pub const K4: usize = 0x1000;
pub const M2: usize = 0x20_0000;
pub const G1: usize = 0x4000_0000;

pub const R: MappingFlags = MappingFlags::READ;
pub const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);
pub const RX: MappingFlags = MappingFlags::READ.union(MappingFlags::EXECUTE);
pub const RWX: MappingFlags = RW.union(MappingFlags::EXECUTE);

pub fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a)
}

pub fn hpa(a: usize) -> HostPhysAddr {
    HostPhysAddr::from_usize(a)
}

pub fn window(start: usize, size: usize) -> GuestPhysAddrRange {
    GuestPhysAddrRange::from_start_size(gpa(start), size)
}

/// Everything observable about a space's layout: regions and table counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub regions: Vec<RegionInfo>,
    pub stats: TableStats,
}

pub fn snapshot<F: NptFormat, A: FrameAllocator>(space: &GuestAddrSpace<F, A>) -> Snapshot {
    Snapshot {
        regions: space.regions().collect(),
        stats: space.table_stats(),
    }
}

/// Host ranges `(hpa, len)` of every mapped piece of the owned regions.
pub fn owned_host_ranges<F: NptFormat, A: FrameAllocator>(
    space: &GuestAddrSpace<F, A>,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for r in space.regions() {
        if !r.backing.is_owned() {
            continue;
        }
        space
            .table()
            .for_each_mapping(r.range.start, r.range.size(), |run| {
                out.push((run.hpa.as_usize(), run.len))
            })
            .expect("walk of an owned region");
    }
    out
}

/// Whether no two of the ranges overlap.
pub fn disjoint(ranges: &[(usize, usize)]) -> bool {
    let mut v = ranges.to_vec();
    v.sort_unstable();
    v.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0)
}

/// Whether the region is lazily allocated RAM.
pub fn is_lazy(r: &RegionInfo) -> bool {
    matches!(r.backing, Backing::Alloc { lazy: true })
}

/// Reads guest-visible bytes straight from the host frame the nested table
/// maps `g` to (host frames of `HostFrameAllocator` are heap memory, HPA ==
/// pointer).
pub fn guest_visible<F: NptFormat, A: FrameAllocator>(
    space: &GuestAddrSpace<F, A>,
    g: usize,
    len: usize,
) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let h = space.translate(gpa(g + i)).expect("mapped");
            let p = space.table().allocator().phys_to_virt(h);
            // SAFETY: `h` is inside a live frame of the space's allocator,
            // which hands out host heap memory readable through `p`.
            unsafe { p.read_volatile() }
        })
        .collect()
}
