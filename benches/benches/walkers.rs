//! npt-table against two peer walkers, each peer measured in the same
//! criterion group (and so the same run) as ours.
//!
//! - `npt-table`: `NestedPageTable<Ept4, _>` over the same frames, through `HandlerAllocator`.
//! - `page_table_multiarch`: `PageTable64` 0.6 with `X64PTE` (4-level x86-64)
//!   and a metadata type identical to its `X64PagingMetaData` except for a
//!   no-op TLB flush (INVLPG faults in user space).
//! - `page-table-generic`: `PageTable` 0.9 with the same `X64PTE` encoding,
//!   4 levels of 9 bits, blocks up to 1 GiB, no-op flush.
//!
//! Every walker takes its frames from one source, picked by a type
//! parameter ([`Frames`]): `npt_benches::HeapFrames` (the system
//! allocator, identity "physical" addresses) in every group, and
//! `npt_benches::ArenaFrames` (one resident arena with free lists, as a
//! hypervisor's frame allocator) in the groups that allocate tables in the
//! timed loop, `map_1g_4k_arena` and `map_64g_huge_arena`. Every scenario is
//! written once over the `Walker` trait below, so each walker does exactly
//! the same work.
//!
//! Run: `cargo bench -p npt-benches` (one group per scenario, a few minutes
//! on two cores).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags};
use npt_benches::{ArenaFrames, HeapFrames, XorShift64, random_addrs};
use npt_entry::ept::Ept4;
use npt_table::{FrameAllocator, HandlerAllocator, MapPolicy, NestedPageTable};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// Addresses translated per iteration of a translate scenario.
const LOOKUPS: usize = 4096;
/// Seed of the random addresses (fixed, so every walker sees the same ones).
const SEED: u64 = 0x6e70_742d_7273;

fn rw() -> MappingFlags {
    MappingFlags::READ | MappingFlags::WRITE
}

/// A source of frames every walker of a group takes its tables from.
trait Frames: Send + Sync + 'static {
    /// Appended to the group name (empty for the heap).
    const SUFFIX: &'static str;
    /// `num` frames aligned to `align`, identity-mapped.
    fn alloc(num: usize, align: usize) -> Option<usize>;
    /// Gives back `num` frames at `pa`.
    ///
    /// # Safety
    ///
    /// `pa` and `num` are those of one `alloc` call, given back once.
    unsafe fn dealloc(pa: usize, num: usize);
    /// Frames handed out and not given back.
    fn live_frames() -> usize;
}

/// The system allocator.
struct Heap;

impl Frames for Heap {
    const SUFFIX: &'static str = "";

    fn alloc(num: usize, align: usize) -> Option<usize> {
        HeapFrames::alloc(num, align)
    }

    unsafe fn dealloc(pa: usize, num: usize) {
        // SAFETY: the caller's contract is `HeapFrames::dealloc`'s.
        unsafe { HeapFrames::dealloc(pa, num) }
    }

    fn live_frames() -> usize {
        HeapFrames::live_frames()
    }
}

/// The resident arena with free lists.
struct Arena;

impl Frames for Arena {
    const SUFFIX: &'static str = "_arena";

    fn alloc(num: usize, align: usize) -> Option<usize> {
        ArenaFrames::alloc(num, align)
    }

    unsafe fn dealloc(pa: usize, num: usize) {
        // SAFETY: the caller's contract is `ArenaFrames::dealloc`'s.
        unsafe { ArenaFrames::dealloc(pa, num) }
    }

    fn live_frames() -> usize {
        ArenaFrames::live_frames()
    }
}

/// The operations every scenario needs, implemented by each walker with its
/// own range API.
trait Walker {
    /// The function name inside each criterion group.
    const NAME: &'static str;
    /// An empty table.
    fn new() -> Self;
    /// Maps `[gpa, gpa + len)` to `[hpa, hpa + len)`, 4 KiB leaves only
    /// unless `huge`.
    fn map(&mut self, gpa: usize, hpa: usize, len: usize, flags: MappingFlags, huge: bool);
    /// The host address of `gpa`.
    fn translate(&self, gpa: usize) -> Option<usize>;
    /// Sets the flags of every leaf in the range.
    fn protect(&mut self, gpa: usize, len: usize, flags: MappingFlags);
    /// Unmaps the range.
    fn unmap(&mut self, gpa: usize, len: usize);
}

// ---- npt-table ----

/// Our walker takes its frames from the same handler as the
/// `page_table_multiarch` peer, through the `HandlerAllocator` adapter.
type Ours<S> = NestedPageTable<Ept4, HandlerAllocator<multiarch::Handler<S>>>;

impl<S: Frames> Walker for Ours<S> {
    const NAME: &'static str = "npt-table";

    fn new() -> Self {
        NestedPageTable::new(HandlerAllocator::new()).expect("root frame")
    }

    fn map(&mut self, gpa: usize, hpa: usize, len: usize, flags: MappingFlags, huge: bool) {
        let policy = if huge {
            MapPolicy::Huge
        } else {
            MapPolicy::Only4K
        };
        self.map_region(
            GuestPhysAddr::from_usize(gpa),
            HostPhysAddr::from_usize(hpa),
            len,
            flags,
            policy,
        )
        .expect("npt-table map_region")
        .ignore();
    }

    #[inline]
    fn translate(&self, gpa: usize) -> Option<usize> {
        NestedPageTable::translate(self, GuestPhysAddr::from_usize(gpa)).map(HostPhysAddr::as_usize)
    }

    fn protect(&mut self, gpa: usize, len: usize, flags: MappingFlags) {
        self.protect_region(GuestPhysAddr::from_usize(gpa), len, flags)
            .expect("npt-table protect_region")
            .ignore();
    }

    fn unmap(&mut self, gpa: usize, len: usize) {
        let flush = self
            .unmap_region(GuestPhysAddr::from_usize(gpa), len)
            .expect("npt-table unmap_region");
        // The peers' flushes are no-ops: the flush is "done" at once, and
        // the emptied tables go back to the allocator here, as theirs do.
        self.complete(flush);
    }
}

// ---- page_table_multiarch ----

mod multiarch {
    use core::marker::PhantomData;

    use memory_addr::{PhysAddr, VirtAddr};
    use page_table_entry::x86_64::X64PTE;
    use page_table_multiarch::{PageTable64, PagingHandler, PagingMetaData};

    use super::Frames;

    /// `X64PagingMetaData` with a no-op flush.
    pub struct X64NoFlush;

    impl PagingMetaData for X64NoFlush {
        const LEVELS: usize = 4;
        const PA_MAX_BITS: usize = 52;
        const VA_MAX_BITS: usize = 48;
        type VirtAddr = VirtAddr;

        fn flush_tlb(_: Option<VirtAddr>) {}
    }

    /// Frames from `S`.
    pub struct Handler<S>(PhantomData<S>);

    impl<S: Frames> PagingHandler for Handler<S> {
        fn alloc_frames(num: usize, align: usize) -> Option<PhysAddr> {
            S::alloc(num, align).map(PhysAddr::from)
        }

        fn dealloc_frames(paddr: PhysAddr, num: usize) {
            // SAFETY: every walker frees exactly the frames it allocated
            // through `alloc_frames`, with the same count, once.
            unsafe { S::dealloc(paddr.as_usize(), num) }
        }

        fn phys_to_virt(paddr: PhysAddr) -> VirtAddr {
            VirtAddr::from(paddr.as_usize())
        }
    }

    /// The peer table.
    pub type Table<S> = PageTable64<X64NoFlush, X64PTE, Handler<S>>;
}

impl<S: Frames> Walker for multiarch::Table<S> {
    const NAME: &'static str = "page_table_multiarch";

    fn new() -> Self {
        Self::try_new().expect("root frame")
    }

    fn map(&mut self, gpa: usize, hpa: usize, len: usize, flags: MappingFlags, huge: bool) {
        let to_pa =
            move |va: memory_addr::VirtAddr| memory_addr::PhysAddr::from(va.as_usize() - gpa + hpa);
        self.cursor()
            .map_region(gpa.into(), to_pa, len, flags, huge)
            .expect("page_table_multiarch map_region");
    }

    #[inline]
    fn translate(&self, gpa: usize) -> Option<usize> {
        self.query(gpa.into()).ok().map(|(pa, _, _)| pa.as_usize())
    }

    fn protect(&mut self, gpa: usize, len: usize, flags: MappingFlags) {
        self.cursor()
            .protect_region(gpa.into(), len, flags)
            .expect("page_table_multiarch protect_region");
    }

    fn unmap(&mut self, gpa: usize, len: usize) {
        self.cursor()
            .unmap_region(gpa.into(), len)
            .expect("page_table_multiarch unmap_region");
    }
}

// ---- page-table-generic ----

mod generic {
    use core::marker::PhantomData;
    use gpa_types::MappingFlags;

    use npt_benches::FRAME_SIZE;
    use page_table_entry::GenericPTE;
    use page_table_entry::x86_64::X64PTE;
    use page_table_generic::{
        FrameAllocator, PageTable, PageTableEntry, PhysAddr, TableMeta, VirtAddr,
    };

    use super::Frames;

    /// `X64PTE` seen through page-table-generic's entry trait; the leaf
    /// configuration is the same `MappingFlags` the other walkers take.
    #[derive(Clone, Copy, Debug)]
    #[repr(transparent)]
    pub struct Pte(X64PTE);

    impl PageTableEntry for Pte {
        type PteConfig = MappingFlags;

        #[inline]
        fn new_page(paddr: PhysAddr, config: MappingFlags, is_huge: bool) -> Self {
            Self(X64PTE::new_page(paddr.as_usize().into(), config, is_huge))
        }

        #[inline]
        fn new_table(paddr: PhysAddr) -> Self {
            Self(X64PTE::new_table(paddr.as_usize().into()))
        }

        #[inline]
        fn paddr(&self, _is_dir: bool) -> PhysAddr {
            PhysAddr::from_usize(self.0.paddr().as_usize())
        }

        #[inline]
        fn config(&self, _is_dir: bool) -> MappingFlags {
            self.0.flags()
        }

        #[inline]
        fn present(&self) -> bool {
            self.0.is_present()
        }

        #[inline]
        fn huge(&self, is_dir: bool) -> bool {
            // Bit 7 is PS above the last level and PAT at it.
            is_dir && self.0.is_huge()
        }

        #[inline]
        fn unused(&self) -> bool {
            self.0.is_unused()
        }

        #[inline]
        fn clear(&mut self) {
            self.0.clear()
        }
    }

    /// 4-level x86-64 geometry with blocks up to 1 GiB and a no-op flush.
    #[derive(Clone, Copy)]
    pub struct X64Meta;

    impl TableMeta for X64Meta {
        type P = Pte;
        const PAGE_SIZE: usize = FRAME_SIZE;
        const LEVEL_BITS: &[usize] = &[9, 9, 9, 9];
        const MAX_BLOCK_LEVEL: usize = 3;

        fn flush(_: Option<VirtAddr>) {}
    }

    /// Frames from `S`.
    pub struct Alloc<S>(PhantomData<S>);

    impl<S> Clone for Alloc<S> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<S> Copy for Alloc<S> {}

    impl<S> Alloc<S> {
        /// The allocator.
        pub fn new() -> Self {
            Self(PhantomData)
        }
    }

    impl<S: Frames> FrameAllocator for Alloc<S> {
        fn alloc_frame(&self) -> Option<PhysAddr> {
            S::alloc(1, FRAME_SIZE).map(PhysAddr::from_usize)
        }

        fn dealloc_frame(&self, frame: PhysAddr) {
            // SAFETY: page-table-generic frees exactly the frames it
            // allocated, once; single frames come from `alloc_frame`.
            unsafe { S::dealloc(frame.as_usize(), 1) }
        }

        fn phys_to_virt(&self, paddr: PhysAddr) -> *mut u8 {
            paddr.as_usize() as *mut u8
        }

        fn alloc_frames(&self, frames: usize, align: usize) -> Option<PhysAddr> {
            S::alloc(frames, align).map(PhysAddr::from_usize)
        }

        fn dealloc_frames(&self, start: PhysAddr, frames: usize, frame_size: usize) {
            assert_eq!(frame_size, FRAME_SIZE, "unexpected frame size");
            // SAFETY: as for `dealloc_frame`; a multi-frame free passes back
            // the start and count of one `alloc_frames` call.
            unsafe { S::dealloc(start.as_usize(), frames) }
        }
    }

    /// The peer table.
    pub type Table<S> = PageTable<X64Meta, Alloc<S>>;
}

impl<S: Frames> Walker for generic::Table<S> {
    const NAME: &'static str = "page-table-generic";

    fn new() -> Self {
        Self::new(generic::Alloc::new()).expect("root frame")
    }

    fn map(&mut self, gpa: usize, hpa: usize, len: usize, flags: MappingFlags, huge: bool) {
        // Its range map: one recursive descent, no per-page root walk (its
        // `map_region` and `map_linear_pages` call this once per page).
        let config = page_table_generic::MapConfig {
            vaddr: page_table_generic::VirtAddr::from_usize(gpa),
            paddr: page_table_generic::PhysAddr::from_usize(hpa),
            size: len,
            pte: flags,
            allow_huge: huge,
            flush: false,
        };
        page_table_generic::PageTableRef::map(self, &config).expect("page-table-generic map");
    }

    #[inline]
    fn translate(&self, gpa: usize) -> Option<usize> {
        self.translate_phys(page_table_generic::VirtAddr::from_usize(gpa))
            .ok()
            .map(|pa| pa.as_usize())
    }

    fn protect(&mut self, gpa: usize, len: usize, flags: MappingFlags) {
        self.protect_region(page_table_generic::VirtAddr::from_usize(gpa), len, flags)
            .expect("page-table-generic protect_region");
    }

    fn unmap(&mut self, gpa: usize, len: usize) {
        page_table_generic::PageTableRef::unmap(
            self,
            page_table_generic::VirtAddr::from_usize(gpa),
            len,
        )
        .expect("page-table-generic unmap");
    }
}

// ---- harness helpers ----

/// A group with the settings every scenario shares: few samples, short
/// measurement, so the whole run takes minutes on two cores.
fn group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g
}

/// Runs `op` `iters` times on `state`, each run preceded by an untimed
/// `reset`, and returns the time spent in `op` alone.
fn timed<S>(
    iters: u64,
    state: &mut S,
    mut reset: impl FnMut(&mut S),
    mut op: impl FnMut(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        reset(state);
        let start = Instant::now();
        op(state);
        total += start.elapsed();
    }
    total
}

/// Panics unless `w` maps every address of `gpas` in `[gpa, ..)` to
/// `hpa + (addr - gpa)`: proves each walker's setup did what it says.
fn check<W: Walker>(w: &W, gpa: usize, hpa: usize, gpas: &[usize]) {
    for &a in gpas {
        assert_eq!(
            w.translate(a),
            Some(hpa + (a - gpa)),
            "{} translates {a:#x} wrongly",
            W::NAME
        );
    }
}

/// A table with `[gpa, gpa + len)` mapped as 4 KiB pages to `hpa`.
fn mapped_4k<W: Walker>(gpa: usize, hpa: usize, len: usize) -> W {
    let mut w = W::new();
    w.map(gpa, hpa, len, rw(), false);
    w
}

// ---- scenarios ----

/// GPA and HPA of the 1 GiB scenarios.
const GPA_1G: usize = GIB;
const HPA_1G: usize = 4 * GIB;

/// Times `W` mapping `[gpa, gpa + len)` to `hpa` into a fresh table (the
/// new table and dropping the previous one are not timed).
fn bench_map<W: Walker>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    gpa: usize,
    hpa: usize,
    len: usize,
    huge: bool,
) {
    g.bench_function(W::NAME, |b| {
        b.iter_custom(|iters| {
            let mut table: Option<W> = None;
            timed(
                iters,
                &mut table,
                |t| *t = Some(W::new()),
                |t| {
                    if let Some(w) = t.as_mut() {
                        w.map(gpa, hpa, len, rw(), huge);
                    }
                },
            )
        })
    });
}

/// A group over the 262,144 pages of 1 GiB, one long iteration per sample.
fn group_1g_4k<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = group(c, name);
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements((GIB / (4 * KIB)) as u64));
    g
}

fn map_4k_fn<W: Walker>(g: &mut BenchmarkGroup<'_, WallTime>) {
    let probe = random_addrs(GPA_1G, GIB, 64, SEED);
    check(&mapped_4k::<W>(GPA_1G, HPA_1G, GIB), GPA_1G, HPA_1G, &probe);
    bench_map::<W>(g, GPA_1G, HPA_1G, GIB, false);
}

/// `map_1g_4k` (heap) or `map_1g_4k_arena`.
fn map_1g_4k_with<S: Frames>(c: &mut Criterion) {
    let mut g = group_1g_4k(c, &format!("map_1g_4k{}", S::SUFFIX));
    map_4k_fn::<Ours<S>>(&mut g);
    map_4k_fn::<multiarch::Table<S>>(&mut g);
    map_4k_fn::<generic::Table<S>>(&mut g);
    g.finish();
}

fn map_1g_4k(c: &mut Criterion) {
    map_1g_4k_with::<Heap>(c);
}

fn map_1g_4k_arena(c: &mut Criterion) {
    map_1g_4k_with::<Arena>(c);
}

fn translate_fn<W: Walker>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    gpa: usize,
    hpa: usize,
    len: usize,
) {
    let table = mapped_4k::<W>(gpa, hpa, len);
    let gpas = random_addrs(gpa, len, LOOKUPS, SEED);
    check(&table, gpa, hpa, &gpas);
    g.bench_function(W::NAME, |b| {
        b.iter(|| {
            for &a in black_box(&gpas) {
                black_box(table.translate(a));
            }
        })
    });
}

fn translate_group(c: &mut Criterion, name: &str, gpa: usize, hpa: usize, len: usize) {
    let mut g = group(c, name);
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    translate_fn::<Ours<Heap>>(&mut g, gpa, hpa, len);
    {
        // The batched walk of ours, on the same addresses.
        let table = mapped_4k::<Ours<Heap>>(gpa, hpa, len);
        let gpas: Vec<GuestPhysAddr> = random_addrs(gpa, len, LOOKUPS, SEED)
            .into_iter()
            .map(GuestPhysAddr::from_usize)
            .collect();
        let mut out = vec![None; gpas.len()];
        table.translate_batch(&gpas, &mut out);
        for (a, t) in gpas.iter().zip(&out) {
            assert_eq!(
                t.map(HostPhysAddr::as_usize),
                Some(hpa + (a.as_usize() - gpa)),
                "translate_batch"
            );
        }
        g.bench_function("npt-table batch", |b| {
            b.iter(|| {
                table.translate_batch(black_box(&gpas), &mut out);
                black_box(&out);
            })
        });
        // One lookup at a time through a cursor, which starts each walk from
        // the deepest table its previous walks cached for the address.
        g.bench_function("npt-table cursor", |b| {
            b.iter(|| {
                let mut cursor = table.cursor();
                for &a in black_box(&gpas) {
                    black_box(cursor.translate(a));
                }
            })
        });
    }
    translate_fn::<multiarch::Table<Heap>>(&mut g, gpa, hpa, len);
    translate_fn::<generic::Table<Heap>>(&mut g, gpa, hpa, len);
    g.finish();
}

fn translate_random_1g(c: &mut Criterion) {
    translate_group(c, "translate_random_1g", GPA_1G, HPA_1G, GIB);
}

/// Random GPAs generated inside the timed loop, as an outside harness
/// would: each lookup costs one xorshift step besides the walk, and the
/// generator runs on across iterations, so no two batches repeat.
fn translate_xorshift_fn<W: Walker>(g: &mut BenchmarkGroup<'_, WallTime>, table: &W) {
    let mut rng = XorShift64::new(SEED);
    g.bench_function(W::NAME, |b| {
        b.iter(|| {
            for _ in 0..LOOKUPS {
                let a = GPA_1G + (rng.next() as usize & (GIB - 1));
                black_box(table.translate(black_box(a)));
            }
        })
    });
}

fn translate_xorshift_1g(c: &mut Criterion) {
    let mut g = group(c, "translate_xorshift_1g");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    let ours = mapped_4k::<Ours<Heap>>(GPA_1G, HPA_1G, GIB);
    translate_xorshift_fn(&mut g, &ours);
    {
        let mut rng = XorShift64::new(SEED);
        g.bench_function("npt-table cursor", |b| {
            b.iter(|| {
                let mut cursor = ours.cursor();
                for _ in 0..LOOKUPS {
                    let a = GPA_1G + (rng.next() as usize & (GIB - 1));
                    black_box(cursor.translate(GuestPhysAddr::from_usize(black_box(a))));
                }
            })
        });
    }
    drop(ours);
    let multiarch = mapped_4k::<multiarch::Table<Heap>>(GPA_1G, HPA_1G, GIB);
    translate_xorshift_fn(&mut g, &multiarch);
    drop(multiarch);
    let generic = mapped_4k::<generic::Table<Heap>>(GPA_1G, HPA_1G, GIB);
    translate_xorshift_fn(&mut g, &generic);
    g.finish();
}

fn translate_random_16g(c: &mut Criterion) {
    translate_group(c, "translate_random_16g", 16 * GIB, 64 * GIB, 16 * GIB);
}

fn protect_fn<W: Walker>(g: &mut BenchmarkGroup<'_, WallTime>) {
    let mut table = mapped_4k::<W>(GPA_1G, HPA_1G, GIB);
    g.bench_function(W::NAME, |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                &mut table,
                |w| w.protect(GPA_1G, GIB, rw()),
                |w| w.protect(GPA_1G, GIB, MappingFlags::READ),
            )
        })
    });
    check(&table, GPA_1G, HPA_1G, &random_addrs(GPA_1G, GIB, 64, SEED));
}

fn protect_1g_4k(c: &mut Criterion) {
    let mut g = group_1g_4k(c, "protect_1g_4k");
    protect_fn::<Ours<Heap>>(&mut g);
    protect_fn::<multiarch::Table<Heap>>(&mut g);
    protect_fn::<generic::Table<Heap>>(&mut g);
    g.finish();
}

fn unmap_fn<W: Walker>(g: &mut BenchmarkGroup<'_, WallTime>) {
    // (table, whether the range is mapped)
    let mut state = (mapped_4k::<W>(GPA_1G, HPA_1G, GIB), true);
    g.bench_function(W::NAME, |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                &mut state,
                |(w, mapped)| {
                    if !*mapped {
                        w.map(GPA_1G, HPA_1G, GIB, rw(), false);
                        *mapped = true;
                    }
                },
                |(w, mapped)| {
                    w.unmap(GPA_1G, GIB);
                    *mapped = false;
                },
            )
        })
    });
    // Only when the benchmark ran (a filter may skip it).
    if !state.1 {
        assert_eq!(
            state.0.translate(GPA_1G + 0x1234),
            None,
            "{} left the range mapped",
            W::NAME
        );
    }
}

fn unmap_1g_4k(c: &mut Criterion) {
    let mut g = group_1g_4k(c, "unmap_1g_4k");
    unmap_fn::<Ours<Heap>>(&mut g);
    unmap_fn::<multiarch::Table<Heap>>(&mut g);
    unmap_fn::<generic::Table<Heap>>(&mut g);
    g.finish();
}

/// GPA, HPA and length of the huge-page scenario: 64 x 1 GiB, one 2 MiB and
/// one 4 KiB leaf.
const GPA_HUGE: usize = 256 * GIB;
const HPA_HUGE: usize = 512 * GIB;
const LEN_HUGE: usize = 64 * GIB + 2 * MIB + 4 * KIB;

fn map_huge_fn<W: Walker>(g: &mut BenchmarkGroup<'_, WallTime>) {
    let mut probe = random_addrs(GPA_HUGE, LEN_HUGE, 64, SEED);
    probe.push(GPA_HUGE + LEN_HUGE - 1);
    let mut w = W::new();
    w.map(GPA_HUGE, HPA_HUGE, LEN_HUGE, rw(), true);
    check(&w, GPA_HUGE, HPA_HUGE, &probe);
    drop(w);
    bench_map::<W>(g, GPA_HUGE, HPA_HUGE, LEN_HUGE, true);
}

/// `map_64g_huge` (heap) or `map_64g_huge_arena`.
fn map_64g_huge_with<S: Frames>(c: &mut Criterion) {
    let mut g = group(c, &format!("map_64g_huge{}", S::SUFFIX));
    map_huge_fn::<Ours<S>>(&mut g);
    map_huge_fn::<multiarch::Table<S>>(&mut g);
    map_huge_fn::<generic::Table<S>>(&mut g);
    // What every walker must do at least here: take the three table frames
    // the scenario needs below the root (for the 1 GiB, 2 MiB and 4 KiB
    // leaves) from the same handler and zero them. The frames of the
    // previous iteration are freed untimed, as the walkers' tables are.
    g.bench_function("floor: 3 table frames, alloc + zero", |b| {
        let alloc = HandlerAllocator::<multiarch::Handler<S>>::new();
        b.iter_custom(|iters| {
            let mut frames: Vec<HostPhysAddr> = Vec::with_capacity(3);
            let elapsed = timed(
                iters,
                &mut frames,
                |f| {
                    for hpa in f.drain(..) {
                        alloc.dealloc_frames(hpa, 1);
                    }
                },
                |f| {
                    for _ in 0..3 {
                        let hpa = alloc.alloc_frame().expect("floor frame");
                        // SAFETY: a fresh frame from `alloc`, owned here.
                        unsafe { std::ptr::write_bytes(alloc.phys_to_virt(hpa), 0, 4096) };
                        f.push(hpa);
                    }
                },
            );
            for hpa in frames.drain(..) {
                alloc.dealloc_frames(hpa, 1);
            }
            elapsed
        })
    });
    g.finish();
}

fn map_64g_huge(c: &mut Criterion) {
    map_64g_huge_with::<Heap>(c);
}

fn map_64g_huge_arena(c: &mut Criterion) {
    map_64g_huge_with::<Arena>(c);
}

/// Every table of every scenario is gone: none of the walkers leaked.
fn no_leaks(_: &mut Criterion) {
    assert_eq!(Heap::live_frames(), 0, "a walker leaked heap frames");
    assert_eq!(Arena::live_frames(), 0, "a walker leaked arena frames");
}

/// See [`npt_benches::keep_heap_resident`].
fn keep_heap(_: &mut Criterion) {
    npt_benches::keep_heap_resident();
}

criterion_group!(
    benches,
    keep_heap,
    map_1g_4k,
    translate_random_1g,
    translate_xorshift_1g,
    translate_random_16g,
    protect_1g_4k,
    unmap_1g_4k,
    map_64g_huge,
    map_1g_4k_arena,
    map_64g_huge_arena,
    no_leaks
);
criterion_main!(benches);
