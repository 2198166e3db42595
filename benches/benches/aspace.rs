//! guest-aspace against axaddrspace 0.6, each scenario one criterion group
//! with both address spaces measured in the same run.
//!
//! - `guest-aspace`: `GuestAddrSpace<Ept4, _>` over `HandlerAllocator` of
//!   the frame handler in `common/mod.rs`, capped to 2 MiB runs
//!   ([`MaxRun`]) unless a row says `4k-frames` or the group is
//!   `populate_1g_eager_4k` (single 4 KiB frames only).
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
//! The frame handler, both spaces' constructors and the harness helpers
//! live in `common/mod.rs`, shared with `benches/vcpus.rs`.
//!
//! Run: `cargo bench -p npt-benches --bench aspace` (about two minutes on
//! two cores).

mod common;

use std::hint::black_box;

use common::*;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use gpa_types::{GuestPhysAddr, GuestPhysAddrRange};
use guest_aspace::{Access, FaultOutcome, GuestAddrSpace, ZeroedPool};
use npt_benches::random_addrs;
use npt_entry::ept::Ept4;
use npt_table::FrameAllocator;

/// First-touch faults per iteration of `fault_in_4k`.
const FAULTS: usize = 4096;
/// Addresses translated per iteration of `translate_random`.
const LOOKUPS: usize = 4096;
/// Size of the eagerly populated region of the copy groups.
const COPY_REGION: usize = 8 * MIB;

/// Ours, with frames of up to 2 MiB.
type Ours = GuestAddrSpace<Ept4, MaxRun<512>>;
/// Ours, with single 4 KiB frames.
type Ours4K = GuestAddrSpace<Ept4, MaxRun<1>>;

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
