//! Helpers shared by the bench targets `aspace` and `vcpus`: the frame
//! handler both address spaces take their frames from, guest-aspace over
//! it, axaddrspace 0.6 over page-table-generic with the same frames, and the
//! harness pieces (groups, untimed setup, shuffled pages, checks).
//!
//! Each bench target compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, HostPhysAddr, MappingFlags};
use guest_aspace::GuestAddrSpace;
use npt_benches::{ArenaFrames, XorShift64};
use npt_entry::ept::Ept4;
use npt_table::{FrameAllocator, HandlerAllocator};

/// 1 KiB.
pub const KIB: usize = 1 << 10;
/// 1 MiB.
pub const MIB: usize = 1 << 20;
/// 1 GiB.
pub const GIB: usize = 1 << 30;
/// Guest address of every region (1 GiB aligned).
pub const BASE: usize = GIB;
/// Size of the guest-physical window of both spaces.
pub const WINDOW: usize = 16 * GIB;
/// Seed of the random addresses (fixed, so both spaces see the same ones).
pub const SEED: u64 = 0x6173_7061_6365;

// ---- the shared frame handler ----

/// The `PagingHandler` both spaces take their frames from: a resident
/// arena with free lists, `npt_benches::ArenaFrames`, standing in for a
/// hypervisor's frame allocator (moving this handler into the library would
/// make page_table_multiarch a normal dependency).
pub mod arena {
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
pub struct MaxRun<const FRAMES: usize>(HandlerAllocator<arena::ArenaHandler>);

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

pub fn rwx() -> MappingFlags {
    MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE
}

/// An empty space of ours over `[0, WINDOW)`.
pub fn ours_empty<const FRAMES: usize>() -> GuestAddrSpace<Ept4, MaxRun<FRAMES>> {
    let window = GuestPhysAddrRange::from_start_size(0.into(), WINDOW);
    GuestAddrSpace::new(MaxRun::default(), window).expect("guest-aspace new")
}

/// Ours with `[BASE, BASE + size)` RAM, populated now unless `lazy`.
pub fn ours_ram<const FRAMES: usize>(
    size: usize,
    lazy: bool,
) -> GuestAddrSpace<Ept4, MaxRun<FRAMES>> {
    let mut space = ours_empty();
    space
        .add_ram(GuestPhysAddr::from_usize(BASE), size, rwx(), lazy)
        .expect("guest-aspace add_ram")
        .ignore();
    space
}

// ---- axaddrspace ----

pub mod ax {
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
pub fn ax_ram(size: usize, lazy: bool) -> ax::Space {
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

pub fn ax_gpa(gpa: usize) -> axvm_types::GuestPhysAddr {
    axvm_types::GuestPhysAddr::from_usize(gpa)
}

/// Reads `buf.len()` bytes at `gpa` through axaddrspace's copy API,
/// `translated_byte_buffer` (one slice per leaf).
pub fn ax_read(space: &ax::Space, gpa: usize, buf: &mut [u8]) {
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
pub fn ax_write(space: &ax::Space, gpa: usize, data: &[u8]) {
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
pub fn group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    g
}

/// Runs `op` `iters` times, each on a fresh state from the untimed `setup`
/// (the previous state is dropped untimed too), and returns the time spent
/// in `op` alone.
pub fn timed<S>(iters: u64, mut setup: impl FnMut() -> S, mut op: impl FnMut(&mut S)) -> Duration {
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

/// Frames taken by the floor rows of `fault_in_4k` (and of `vcpus`), returned (untimed) when
/// dropped.
#[derive(Default)]
pub struct FloorFrames {
    pub alloc: HandlerAllocator<arena::ArenaHandler>,
    pub frames: Vec<HostPhysAddr>,
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
pub fn shuffled_pages(len: usize, count: usize) -> Vec<usize> {
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
pub fn check_ours<A: FrameAllocator>(space: &GuestAddrSpace<Ept4, A>, probes: &[usize]) {
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
pub fn check_ax(space: &ax::Space, probes: &[usize]) {
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

/// See [`npt_benches::keep_heap_resident`]: the first group of every bench.
pub fn keep_heap(_: &mut Criterion) {
    npt_benches::keep_heap_resident();
}

/// Every space of every scenario is gone: no side leaked frames. The last
/// group of every bench.
pub fn no_leaks(_: &mut Criterion) {
    assert_eq!(
        ArenaFrames::live_frames(),
        0,
        "an address space leaked frames"
    );
}
