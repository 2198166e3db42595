//! guest-aspace against axaddrspace 0.6, each scenario one criterion group
//! with both address spaces measured in the same run.
//!
//! - `guest-aspace`: `GuestAddrSpace<Ept4, _>` over `HandlerAllocator` of
//!   the frame handler below, capped to 2 MiB runs ([`MaxRun`]) unless a row
//!   says `4k-frames` or the group is `populate_1g_eager_4k` (single 4 KiB
//!   frames only).
//! - `axaddrspace`: `AddrSpace<Npt>` 0.6. From 0.5.16 on, axaddrspace owns no
//!   page table: it is generic over its `NestedPageTableOps` trait, and the
//!   hypervisor implements that trait over a page table of its choice.
//!   [`ax::Npt`] does so here: page-table-generic 0.9
//!   with a 4-level EPT entry, table frames and guest RAM frames both from
//!   the same frame handler as ours. Frames handed to the guest are zeroed
//!   with `write_bytes` in `Npt::alloc_frame` (axaddrspace itself does not
//!   zero them; ours does), so both sides zero the same bytes; ours zeroes
//!   eagerly populated RAM with non-temporal stores, faulted-in pages with
//!   ordinary ones.
//! - `guest-aspace, pre-zeroed pool` (`fault_in_4k`): ours over a
//!   `ZeroedPool` refilled in the untimed setup, as a hypervisor's idle loop
//!   would; `pool refill` times that refill alone (4,096 frames taken and
//!   zeroed).
//! - `memcpy`: a plain host-to-host copy of the same bytes, the ceiling of
//!   the guest-copy groups.
//!
//! Frames come from `npt_benches::ArenaFrames`: one resident arena, freed
//! runs reused, as a hypervisor's frame allocator hands out host memory. So
//! the populate and fault groups time the address spaces and the zeroing of
//! resident memory, not glibc's `memalign` or the kernel's first-touch page
//! faults, which neither side's code decides.
//!
//! Run: `cargo bench -p npt-benches --bench aspace` (about two minutes on
//! two cores).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, HostPhysAddr, MappingFlags};
use guest_aspace::{Access, FaultOutcome, GuestAddrSpace, ZeroedPool};
use npt_benches::{ArenaFrames, XorShift64, random_addrs};
use npt_entry::ept::Ept4;
use npt_table::{FrameAllocator, HandlerAllocator};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// Guest address of every region (1 GiB aligned).
const BASE: usize = GIB;
/// Size of the guest-physical window of both spaces.
const WINDOW: usize = 16 * GIB;
/// First-touch faults per iteration of `fault_in_4k`.
const FAULTS: usize = 4096;
/// Addresses translated per iteration of `translate_random`.
const LOOKUPS: usize = 4096;
/// Size of the eagerly populated region of the copy groups.
const COPY_REGION: usize = 8 * MIB;
/// Seed of the random addresses (fixed, so both spaces see the same ones).
const SEED: u64 = 0x6173_7061_6365;

// ---- the shared frame handler ----

/// The `PagingHandler` both spaces take their frames from: a resident
/// arena with free lists, `npt_benches::ArenaFrames`, standing in for a
/// hypervisor's frame allocator (moving this handler into the library would
/// make page_table_multiarch a normal dependency).
mod arena {
    use memory_addr::{PhysAddr, VirtAddr};
    use npt_benches::ArenaFrames;
    use page_table_multiarch::PagingHandler;

    /// Frames from the arena, "physical" address = host virtual address.
    pub struct ArenaHandler;

    impl PagingHandler for ArenaHandler {
        fn alloc_frames(num: usize, align: usize) -> Option<PhysAddr> {
            ArenaFrames::alloc(num, align).map(PhysAddr::from)
        }

        fn dealloc_frames(paddr: PhysAddr, num: usize) {
            // SAFETY: both address spaces free exactly the frames they
            // allocated through `alloc_frames`, with the same count, once.
            unsafe { ArenaFrames::dealloc(paddr.as_usize(), num) }
        }

        fn phys_to_virt(paddr: PhysAddr) -> VirtAddr {
            VirtAddr::from(paddr.as_usize())
        }
    }
}

// ---- guest-aspace ----

/// `HandlerAllocator<ArenaHandler>` that refuses runs longer than `FRAMES`
/// frames: `MaxRun<512>` gives at most 2 MiB frames, `MaxRun<1>` single
/// 4 KiB frames only.
#[derive(Debug, Default, Clone)]
struct MaxRun<const FRAMES: usize>(HandlerAllocator<arena::ArenaHandler>);

// SAFETY: every call that is not refused is forwarded to
// `HandlerAllocator`, which upholds the contract; a refusal hands out
// nothing.
unsafe impl<const FRAMES: usize> FrameAllocator for MaxRun<FRAMES> {
    fn alloc_frames(&self, count: usize, align: usize) -> Option<HostPhysAddr> {
        if count > FRAMES {
            return None;
        }
        self.0.alloc_frames(count, align)
    }

    fn dealloc_frames(&self, hpa: HostPhysAddr, count: usize) {
        self.0.dealloc_frames(hpa, count)
    }

    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        self.0.phys_to_virt(hpa)
    }
}

/// Ours, with frames of up to 2 MiB.
type Ours = GuestAddrSpace<Ept4, MaxRun<512>>;
/// Ours, with single 4 KiB frames.
type Ours4K = GuestAddrSpace<Ept4, MaxRun<1>>;

fn rwx() -> MappingFlags {
    MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE
}

/// An empty space of ours over `[0, WINDOW)`.
fn ours_empty<const FRAMES: usize>() -> GuestAddrSpace<Ept4, MaxRun<FRAMES>> {
    let window = GuestPhysAddrRange::from_start_size(0.into(), WINDOW);
    GuestAddrSpace::new(MaxRun::default(), window).expect("guest-aspace new")
}

/// Ours with `[BASE, BASE + size)` RAM, populated now unless `lazy`.
fn ours_ram<const FRAMES: usize>(size: usize, lazy: bool) -> GuestAddrSpace<Ept4, MaxRun<FRAMES>> {
    let mut space = ours_empty();
    space
        .add_ram(GuestPhysAddr::from_usize(BASE), size, rwx(), lazy)
        .expect("guest-aspace add_ram")
        .ignore();
    space
}

/// Frames of the pool of `fault_in_4k`: one per fault and enough for the
/// tables the faults create (514 for 4,096 pages spread over 1 GiB).
const POOL_FRAMES: usize = FAULTS + FAULTS / 4;

/// Ours over a pool of up to [`POOL_FRAMES`] pre-zeroed frames.
type OursPool = GuestAddrSpace<Ept4, ZeroedPool<MaxRun<512>>>;

/// Ours with `[BASE, BASE + size)` lazy RAM over a full pool of
/// [`POOL_FRAMES`] zeroed frames (as an idle loop would leave it).
fn ours_pool_ram(size: usize) -> OursPool {
    let pool = ZeroedPool::new(MaxRun::default(), POOL_FRAMES).expect("pool");
    let window = GuestPhysAddrRange::from_start_size(0.into(), WINDOW);
    let mut space = GuestAddrSpace::new(pool, window).expect("guest-aspace new");
    space
        .add_ram(GuestPhysAddr::from_usize(BASE), size, rwx(), true)
        .expect("guest-aspace add_ram")
        .ignore();
    let pool = space.table().allocator();
    assert_eq!(pool.refill_to(POOL_FRAMES), POOL_FRAMES);
    space
}

// ---- axaddrspace ----

mod ax {
    use axaddrspace::{
        AddrSpace, AddrSpaceError, AddrSpaceResult, MappingFlags, NestedPageTableOps, PageSize,
    };
    use axvm_types::GuestPhysAddr;
    use page_table_generic as ptg;
    use page_table_multiarch::PagingHandler;
    use ptg::{PhysAddr, VirtAddr};

    use super::arena::ArenaHandler;

    /// An EPT entry (Intel SDM Vol. 3C, 29.3.2) for page-table-generic:
    /// read/write/execute in bits 0-2, memory type in bits 3-5 and the
    /// large-page bit 7 in leaves, the address in bits 12-51.
    #[derive(Clone, Copy, Debug)]
    #[repr(transparent)]
    pub struct EptPte(u64);

    impl EptPte {
        const READ: u64 = 1 << 0;
        const WRITE: u64 = 1 << 1;
        const EXECUTE: u64 = 1 << 2;
        const RWX: u64 = Self::READ | Self::WRITE | Self::EXECUTE;
        /// Memory type write-back (6) in bits 3-5.
        const MEM_WB: u64 = 6 << 3;
        const LARGE: u64 = 1 << 7;
        const ADDR: u64 = ((1 << 52) - 1) & !0xfff;
    }

    impl ptg::PageTableEntry for EptPte {
        type PteConfig = MappingFlags;

        fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
            let mut bits = paddr.as_usize() as u64 & Self::ADDR;
            for (flag, bit) in [
                (MappingFlags::READ, Self::READ),
                (MappingFlags::WRITE, Self::WRITE),
                (MappingFlags::EXECUTE, Self::EXECUTE),
            ] {
                if flags.contains(flag) {
                    bits |= bit;
                }
            }
            // Uncached (0) for device and uncached memory, write-back else.
            if !flags.intersects(MappingFlags::DEVICE | MappingFlags::UNCACHED) {
                bits |= Self::MEM_WB;
            }
            if is_huge {
                bits |= Self::LARGE;
            }
            Self(bits)
        }

        fn new_table(paddr: PhysAddr) -> Self {
            Self(paddr.as_usize() as u64 & Self::ADDR | Self::RWX)
        }

        fn paddr(&self, _is_dir: bool) -> PhysAddr {
            PhysAddr::from_usize((self.0 & Self::ADDR) as usize)
        }

        fn config(&self, _is_dir: bool) -> MappingFlags {
            let mut flags = MappingFlags::empty();
            flags.set(MappingFlags::READ, self.0 & Self::READ != 0);
            flags.set(MappingFlags::WRITE, self.0 & Self::WRITE != 0);
            flags.set(MappingFlags::EXECUTE, self.0 & Self::EXECUTE != 0);
            flags
        }

        fn present(&self) -> bool {
            self.0 & Self::RWX != 0
        }

        fn huge(&self, is_dir: bool) -> bool {
            is_dir && self.0 & Self::LARGE != 0
        }

        fn unused(&self) -> bool {
            self.0 == 0
        }

        fn clear(&mut self) {
            self.0 = 0;
        }
    }

    /// 4-level EPT geometry, blocks up to 1 GiB, no-op flush (INVEPT is
    /// the hypervisor's, and needs VMX root mode).
    #[derive(Clone, Copy)]
    pub struct EptMeta;

    impl ptg::TableMeta for EptMeta {
        type P = EptPte;
        const PAGE_SIZE: usize = 4096;
        const LEVEL_BITS: &[usize] = &[9, 9, 9, 9];
        const MAX_BLOCK_LEVEL: usize = 3;

        fn flush(_: Option<VirtAddr>) {}
    }

    /// Table frames from [`ArenaHandler`], as axvm's adapter takes them from
    /// its `PagingHandler`.
    #[derive(Clone, Copy)]
    pub struct TableFrames;

    impl ptg::FrameAllocator for TableFrames {
        fn alloc_frame(&self) -> Option<PhysAddr> {
            ArenaHandler::alloc_frame().map(|pa| PhysAddr::from_usize(pa.as_usize()))
        }

        fn dealloc_frame(&self, frame: PhysAddr) {
            ArenaHandler::dealloc_frame(frame.as_usize().into())
        }

        fn phys_to_virt(&self, paddr: PhysAddr) -> *mut u8 {
            ArenaHandler::phys_to_virt(paddr.as_usize().into()).as_mut_ptr()
        }

        fn alloc_frames(&self, frames: usize, align: usize) -> Option<PhysAddr> {
            ArenaHandler::alloc_frames(frames, align).map(|pa| PhysAddr::from_usize(pa.as_usize()))
        }

        fn dealloc_frames(&self, start: PhysAddr, frames: usize, _frame_size: usize) {
            ArenaHandler::dealloc_frames(start.as_usize().into(), frames)
        }
    }

    /// The nested table handed to axaddrspace.
    pub struct Npt(ptg::PageTable<EptMeta, TableFrames>);

    impl Npt {
        /// An empty table.
        pub fn new() -> Self {
            Self(ptg::PageTable::new(TableFrames).expect("page-table-generic root"))
        }
    }

    fn err(e: ptg::PagingError) -> AddrSpaceError {
        match e {
            ptg::PagingError::MappingConflict { .. } => AddrSpaceError::MappingConflict,
            ptg::PagingError::AlignmentError { .. }
            | ptg::PagingError::AddressOverflow { .. }
            | ptg::PagingError::InvalidSize { .. }
            | ptg::PagingError::InvalidRange { .. } => AddrSpaceError::InvalidMapping,
            _ => AddrSpaceError::MappingState,
        }
    }

    fn gva(gpa: GuestPhysAddr) -> VirtAddr {
        VirtAddr::from_usize(gpa.as_usize())
    }

    fn page_size(level: usize) -> PageSize {
        match level {
            2 => PageSize::Size2M,
            3 => PageSize::Size1G,
            _ => PageSize::Size4K,
        }
    }

    impl NestedPageTableOps for Npt {
        fn root_paddr(&self) -> PhysAddr {
            self.0.root_paddr()
        }

        fn levels(&self) -> usize {
            4
        }

        fn alloc_frame(&self) -> Option<PhysAddr> {
            let pa = ArenaHandler::alloc_frame()?;
            // Guest RAM: zeroed before the guest sees it, as ours does.
            // SAFETY: a fresh 4 KiB arena frame, owned by the caller.
            unsafe { core::ptr::write_bytes(ArenaHandler::phys_to_virt(pa).as_mut_ptr(), 0, 4096) };
            Some(PhysAddr::from_usize(pa.as_usize()))
        }

        fn dealloc_frame(&self, paddr: PhysAddr) {
            ArenaHandler::dealloc_frame(paddr.as_usize().into())
        }

        fn phys_to_virt(&self, paddr: PhysAddr) -> VirtAddr {
            VirtAddr::from_usize(ArenaHandler::phys_to_virt(paddr.as_usize().into()).as_usize())
        }

        fn map(
            &mut self,
            vaddr: GuestPhysAddr,
            paddr: PhysAddr,
            size: PageSize,
            flags: MappingFlags,
        ) -> AddrSpaceResult {
            self.0
                .map(&ptg::MapConfig {
                    vaddr: gva(vaddr),
                    paddr,
                    size: size.into(),
                    pte: flags,
                    allow_huge: size.is_huge(),
                    flush: true,
                })
                .map_err(err)
        }

        fn unmap(
            &mut self,
            vaddr: GuestPhysAddr,
        ) -> AddrSpaceResult<(PhysAddr, MappingFlags, PageSize)> {
            let (paddr, flags, size) = self.query(vaddr)?;
            self.0.unmap(gva(vaddr), size.into()).map_err(err)?;
            Ok((paddr, flags, size))
        }

        fn map_linear(
            &mut self,
            vaddr: GuestPhysAddr,
            paddr: PhysAddr,
            size: usize,
            flags: MappingFlags,
            allow_huge: bool,
        ) -> AddrSpaceResult {
            self.0
                .map_linear_pages(gva(vaddr), paddr, size, flags, allow_huge)
                .map_err(err)
        }

        fn unmap_region(&mut self, start: GuestPhysAddr, size: usize) -> AddrSpaceResult {
            self.0.unmap(gva(start), size).map_err(err)
        }

        /// axaddrspace's lazy fault path calls this for every fault. Map
        /// first (the fault case: nothing there yet, one walk), and replace
        /// an existing mapping only when the map reports a conflict.
        fn remap(&mut self, start: GuestPhysAddr, paddr: PhysAddr, flags: MappingFlags) -> bool {
            let start = GuestPhysAddr::from_usize(start.as_usize() & !0xfff);
            match self.map(start, paddr, PageSize::Size4K, flags) {
                Ok(()) => true,
                Err(_) => {
                    let _ = self.unmap(start);
                    self.map(start, paddr, PageSize::Size4K, flags).is_ok()
                }
            }
        }

        fn protect_region(
            &mut self,
            start: GuestPhysAddr,
            size: usize,
            flags: MappingFlags,
        ) -> bool {
            let end = start.as_usize() + size;
            let mut pos = start;
            while pos.as_usize() < end {
                let Ok((paddr, _, size)) = self.unmap(pos) else {
                    return false;
                };
                if self.map(pos, paddr, size, flags).is_err() {
                    return false;
                }
                pos = GuestPhysAddr::from_usize(pos.as_usize() + usize::from(size));
            }
            true
        }

        fn query(
            &self,
            vaddr: GuestPhysAddr,
        ) -> AddrSpaceResult<(PhysAddr, MappingFlags, PageSize)> {
            use ptg::PageTableEntry;
            let (paddr, pte, level) = self.0.translate_with_level(gva(vaddr)).map_err(err)?;
            let size = if pte.huge(level > 1) {
                page_size(level)
            } else {
                PageSize::Size4K
            };
            Ok((paddr, pte.config(level > 1), size))
        }
    }

    /// The peer address space.
    pub type Space = AddrSpace<Npt>;

    /// An empty space over `[0, window)`.
    pub fn empty(window: usize) -> Space {
        AddrSpace::new_empty(Npt::new(), GuestPhysAddr::from_usize(0), window)
            .expect("axaddrspace new_empty")
    }

    /// Read-write-execute RAM flags.
    pub fn rwx() -> MappingFlags {
        MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE
    }
}

/// axaddrspace with `[BASE, BASE + size)` RAM (`map_alloc`), populated now
/// unless `lazy`.
fn ax_ram(size: usize, lazy: bool) -> ax::Space {
    let mut space = ax::empty(WINDOW);
    space
        .map_alloc(
            axvm_types::GuestPhysAddr::from_usize(BASE),
            size,
            ax::rwx(),
            !lazy,
        )
        .expect("axaddrspace map_alloc");
    space
}

fn ax_gpa(gpa: usize) -> axvm_types::GuestPhysAddr {
    axvm_types::GuestPhysAddr::from_usize(gpa)
}

/// Reads `buf.len()` bytes at `gpa` through axaddrspace's copy API,
/// `translated_byte_buffer` (one slice per leaf).
fn ax_read(space: &ax::Space, gpa: usize, buf: &mut [u8]) {
    let parts = space
        .translated_byte_buffer(ax_gpa(gpa), buf.len())
        .expect("axaddrspace translated_byte_buffer");
    let mut off = 0;
    for part in parts {
        buf[off..off + part.len()].copy_from_slice(part);
        off += part.len();
    }
}

/// Writes `data` at `gpa` through `translated_byte_buffer`.
fn ax_write(space: &ax::Space, gpa: usize, data: &[u8]) {
    let parts = space
        .translated_byte_buffer(ax_gpa(gpa), data.len())
        .expect("axaddrspace translated_byte_buffer");
    let mut off = 0;
    for part in parts {
        let n = part.len();
        part.copy_from_slice(&data[off..off + n]);
        off += n;
    }
}

// ---- harness helpers ----

/// A group with the settings every scenario shares.
fn group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    g
}

/// Runs `op` `iters` times, each on a fresh state from the untimed `setup`
/// (the previous state is dropped untimed too), and returns the time spent
/// in `op` alone.
fn timed<S>(iters: u64, mut setup: impl FnMut() -> S, mut op: impl FnMut(&mut S)) -> Duration {
    let mut total = Duration::ZERO;
    let mut state = None;
    for _ in 0..iters {
        drop(state.take());
        let mut s = setup();
        let start = Instant::now();
        op(&mut s);
        total += start.elapsed();
        state = Some(s);
    }
    total
}

/// Frames taken by the floor row of `fault_in_4k`, returned (untimed) when
/// dropped.
#[derive(Default)]
struct FloorFrames {
    alloc: HandlerAllocator<arena::ArenaHandler>,
    frames: Vec<HostPhysAddr>,
}

impl Drop for FloorFrames {
    fn drop(&mut self) {
        for hpa in self.frames.drain(..) {
            self.alloc.dealloc_frames(hpa, 1);
        }
    }
}

/// `count` distinct guest pages spread evenly over `[BASE, BASE + len)`, in
/// a fixed random order.
fn shuffled_pages(len: usize, count: usize) -> Vec<usize> {
    let stride = len / count;
    let mut pages: Vec<usize> = (0..count).map(|i| BASE + i * stride).collect();
    let mut rng = XorShift64::new(SEED);
    for i in (1..pages.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        pages.swap(i, j);
    }
    pages
}

/// Panics unless ours translates every probe to a frame of its own, with
/// the frame zeroed.
fn check_ours<A: FrameAllocator>(space: &GuestAddrSpace<Ept4, A>, probes: &[usize]) {
    for &a in probes {
        assert!(
            space.translate(GuestPhysAddr::from_usize(a)).is_some(),
            "guest-aspace: {a:#x} unmapped"
        );
        assert_eq!(
            space.read_u8(GuestPhysAddr::from_usize(a)).expect("read"),
            0,
            "guest-aspace: not zeroed"
        );
    }
}

/// Panics unless axaddrspace translates every probe, with the frame zeroed.
fn check_ax(space: &ax::Space, probes: &[usize]) {
    for &a in probes {
        assert!(
            space.translate(ax_gpa(a)).is_some(),
            "axaddrspace: {a:#x} unmapped"
        );
        let mut b = [1u8];
        ax_read(space, a, &mut b);
        assert_eq!(b[0], 0, "axaddrspace: not zeroed");
    }
}

// ---- scenarios ----

fn populate_ours<const FRAMES: usize>(g: &mut BenchmarkGroup<'_, WallTime>) {
    check_ours(
        &ours_ram::<FRAMES>(GIB, false),
        &random_addrs(BASE, GIB, 64, SEED),
    );
    g.bench_function("guest-aspace", |b| {
        b.iter_custom(|iters| {
            timed(iters, ours_empty::<FRAMES>, |s| {
                s.add_ram(GuestPhysAddr::from_usize(BASE), GIB, rwx(), false)
                    .expect("guest-aspace add_ram")
                    .ignore();
            })
        })
    });
}

fn populate_ax(g: &mut BenchmarkGroup<'_, WallTime>) {
    check_ax(&ax_ram(GIB, false), &random_addrs(BASE, GIB, 64, SEED));
    g.bench_function("axaddrspace", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || ax::empty(WINDOW),
                |s| {
                    s.map_alloc(ax_gpa(BASE), GIB, ax::rwx(), true)
                        .expect("axaddrspace map_alloc");
                },
            )
        })
    });
}

fn populate_group(c: &mut Criterion, name: &str, ours: fn(&mut BenchmarkGroup<'_, WallTime>)) {
    let mut g = group(c, name);
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes(GIB as u64));
    ours(&mut g);
    // axaddrspace's eager `map_alloc` maps one 4 KiB frame per page in
    // both groups: it never asks for larger frames.
    populate_ax(&mut g);
    g.finish();
}

fn populate_1g_eager_2m(c: &mut Criterion) {
    populate_group(c, "populate_1g_eager_2m", populate_ours::<512>);
}

fn populate_1g_eager_4k(c: &mut Criterion) {
    populate_group(c, "populate_1g_eager_4k", populate_ours::<1>);
}

fn fault_in_4k(c: &mut Criterion) {
    let pages = shuffled_pages(GIB, FAULTS);
    let mut g = group(c, "fault_in_4k");
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(FAULTS as u64));

    let fault_ours = |s: &mut Ours| {
        for &p in &pages {
            let out = s.handle_fault(GuestPhysAddr::from_usize(p), Access::Write);
            assert!(
                matches!(out, Ok(FaultOutcome::Fixed(_))),
                "guest-aspace fault at {p:#x}"
            );
        }
    };
    let fault_ax = |s: &mut ax::Space| {
        for &p in &pages {
            assert!(
                s.handle_page_fault(ax_gpa(p), axaddrspace::MappingFlags::WRITE),
                "axaddrspace fault at {p:#x}"
            );
        }
    };
    {
        let mut s = ours_ram::<512>(GIB, true);
        fault_ours(&mut s);
        check_ours(&s, &pages);
        let mut s = ax_ram(GIB, true);
        fault_ax(&mut s);
        check_ax(&s, &pages);
    }
    g.bench_function("guest-aspace", |b| {
        b.iter_custom(|iters| timed(iters, || ours_ram::<512>(GIB, true), fault_ours))
    });
    // The same faults over a `ZeroedPool` refilled (untimed, in the setup)
    // with enough zeroed frames for every page and table, as a hypervisor's
    // idle loop would: no zeroing on the fault path.
    let fault_pool = |s: &mut OursPool| {
        for &p in &pages {
            let out = s.handle_fault(GuestPhysAddr::from_usize(p), Access::Write);
            assert!(
                matches!(out, Ok(FaultOutcome::Fixed(_))),
                "guest-aspace fault at {p:#x}"
            );
        }
    };
    {
        let mut s = ours_pool_ram(GIB);
        fault_pool(&mut s);
        // Frames left over: no fault or table had to zero in place.
        assert!(!s.table().allocator().is_empty(), "pool ran dry");
        check_ours(&s, &pages);
    }
    g.bench_function("guest-aspace, pre-zeroed pool", |b| {
        b.iter_custom(|iters| timed(iters, || ours_pool_ram(GIB), fault_pool))
    });
    g.bench_function("axaddrspace", |b| {
        b.iter_custom(|iters| timed(iters, || ax_ram(GIB, true), fault_ax))
    });
    // What every fault handler must do at least: take a frame from the
    // same allocator and zero it (nothing looked up, nothing mapped).
    g.bench_function("floor: alloc + zero", |b| {
        b.iter_custom(|iters| {
            timed(iters, FloorFrames::default, |f| {
                for _ in &pages {
                    let hpa = f.alloc.alloc_frame().expect("floor frame");
                    // SAFETY: a fresh frame from `alloc`, owned here.
                    unsafe { std::ptr::write_bytes(f.alloc.phys_to_virt(hpa), 0, 4096) };
                    f.frames.push(hpa);
                }
            })
        })
    });
    // What the pool moves off the fault path: taking 4,096 frames from the
    // same allocator and zeroing them (non-temporal stores on x86-64), in
    // batches pushed under the pool's lock. The pool is dropped untimed.
    g.bench_function("pool refill (off the fault path)", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || ZeroedPool::new(MaxRun::<512>::default(), FAULTS).expect("pool"),
                |pool| assert_eq!(pool.refill(FAULTS), FAULTS),
            )
        })
    });
    g.finish();
}

fn translate_random(c: &mut Criterion) {
    let gpas = random_addrs(BASE, GIB, LOOKUPS, SEED);
    let mut g = group(c, "translate_random");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    let ours_gpas: Vec<GuestPhysAddr> =
        gpas.iter().map(|&a| GuestPhysAddr::from_usize(a)).collect();
    {
        let space: Ours = ours_ram(GIB, false);
        check_ours(&space, &gpas[..64]);
        g.bench_function("guest-aspace", |b| {
            b.iter(|| {
                for &a in black_box(&ours_gpas) {
                    black_box(space.translate(a));
                }
            })
        });
    }
    {
        // The same leaf size as axaddrspace: 4 KiB frames only.
        let space: Ours4K = ours_ram(GIB, false);
        g.bench_function("guest-aspace 4k-frames", |b| {
            b.iter(|| {
                for &a in black_box(&ours_gpas) {
                    black_box(space.translate(a));
                }
            })
        });
    }
    {
        let space = ax_ram(GIB, false);
        check_ax(&space, &gpas[..64]);
        let ax_gpas: Vec<_> = gpas.iter().map(|&a| ax_gpa(a)).collect();
        g.bench_function("axaddrspace", |b| {
            b.iter(|| {
                for &a in black_box(&ax_gpas) {
                    black_box(space.translate(a));
                }
            })
        });
    }
    g.finish();
}

/// Reads then writes `len` bytes at a guest address that crosses a 2 MiB
/// boundary (so a leaf boundary for every space).
fn guest_copy(c: &mut Criterion, name: &str, len: usize) {
    let gpa = BASE + 2 * MIB - len / 2 - 0x100;
    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut buf = vec![0u8; len];
    let mut g = group(c, name);
    g.throughput(Throughput::Bytes(2 * len as u64));

    fn ours_fn<const F: usize>(
        g: &mut BenchmarkGroup<'_, WallTime>,
        fn_name: &str,
        gpa: usize,
        data: &[u8],
        buf: &mut [u8],
    ) {
        let space = ours_ram::<F>(COPY_REGION, false);
        let at = GuestPhysAddr::from_usize(gpa);
        space.write(at, data).expect("guest-aspace write");
        space.read(at, buf).expect("guest-aspace read");
        assert_eq!(buf, data, "guest-aspace copy");
        g.bench_function(fn_name, |b| {
            b.iter(|| {
                space
                    .read(at, black_box(&mut *buf))
                    .expect("guest-aspace read");
                space
                    .write(at, black_box(&*buf))
                    .expect("guest-aspace write");
            })
        });
    }
    ours_fn::<512>(&mut g, "guest-aspace", gpa, &data, &mut buf);
    ours_fn::<1>(&mut g, "guest-aspace 4k-frames", gpa, &data, &mut buf);
    {
        let space = ax_ram(COPY_REGION, false);
        ax_write(&space, gpa, &data);
        buf.fill(0);
        ax_read(&space, gpa, &mut buf);
        assert_eq!(buf, data, "axaddrspace copy");
        g.bench_function("axaddrspace", |b| {
            b.iter(|| {
                ax_read(&space, gpa, black_box(&mut buf));
                ax_write(&space, gpa, black_box(&buf));
            })
        });
    }
    {
        let mut guest = data.clone();
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                black_box(&mut buf).copy_from_slice(black_box(&guest));
                black_box(&mut guest).copy_from_slice(black_box(&buf));
            })
        });
    }
    g.finish();
}

fn guest_copy_4k(c: &mut Criterion) {
    guest_copy(c, "guest_copy_4k", 4 * KIB);
}

fn guest_copy_1m(c: &mut Criterion) {
    guest_copy(c, "guest_copy_1m", MIB);
}

/// See [`npt_benches::keep_heap_resident`].
fn keep_heap(_: &mut Criterion) {
    npt_benches::keep_heap_resident();
}

/// Every space of every scenario is gone: neither side leaked frames.
fn no_leaks(_: &mut Criterion) {
    assert_eq!(
        ArenaFrames::live_frames(),
        0,
        "an address space leaked frames"
    );
}

criterion_group!(
    benches,
    keep_heap,
    populate_1g_eager_2m,
    populate_1g_eager_4k,
    fault_in_4k,
    translate_random,
    guest_copy_4k,
    guest_copy_1m,
    no_leaks
);
criterion_main!(benches);
