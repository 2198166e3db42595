//! Many vCPUs at once: faults and host writes from 1 and from 2 threads on
//! one shared address space, guest-aspace's `SharedAddrSpace` against
//! axaddrspace 0.6 behind a `std::sync::RwLock`, each scenario one criterion
//! group with every peer measured in the same run.
//!
//! - `faults_4096_threads`: 4,096 write faults on distinct 4 KiB pages of a
//!   lazy 1 GiB region (the pages of `fault_in_4k` in `benches/aspace.rs`:
//!   spread evenly, in a fixed random order), split in halves between the
//!   threads. Ours calls `SharedAddrSpace::handle_fault(&self, ..)` from
//!   every thread. axaddrspace's `handle_page_fault` takes `&mut self`, so a
//!   hypervisor sharing the space among vCPUs holds the write side of a
//!   lock for every fault: here `std::sync::RwLock::write` (a reader-writer
//!   lock, so that translations could share it; with only faults running it
//!   behaves as a mutex).
//! - `host_write_4k_threads`: 4,096 host writes of 4 KiB, one per page of an
//!   eagerly populated 16 MiB region, in a fixed random order, split in
//!   halves, as device threads copy packets into guest memory. Ours through
//!   `SharedAddrSpace::write_bytes(&self, ..)`; `guest-aspace lazy` writes
//!   into lazy RAM, so every write populates its page first. axaddrspace's
//!   host access, `translated_byte_buffer`, takes `&self` (and hands out
//!   `&'static mut` slices), so its rows hold the read side of the lock:
//!   it has no host access that populates lazy RAM, hence no lazy peer.
//! - `floor` rows: what the threads would do with no address space at all
//!   (take a frame from the arena and zero it; copy 4 KiB into host
//!   memory), in the same harness. They show how far the harness and the
//!   machine scale from 1 to 2 threads, the ceiling for every peer.
//!
//! Timing: every iteration starts fresh threads in the untimed part (a
//! `std::thread::scope`, a `Barrier`, then a spinning start line so that no
//! thread starts while another is still being woken); each thread reads the
//! clock after the start line and after its last operation, and the
//! iteration counts from the first start to the last end. Spaces are built
//! and dropped untimed. Every row is checked once, untimed, before it is
//! measured: every page mapped (and zeroed, or holding what was written).
//!
//! Frames come from `npt_benches::ArenaFrames` for every peer and floor row
//! (see `common/mod.rs`). Its single frames go through a per-thread cache of
//! up to 256 free frames, refilled and drained 64 at a time under the arena
//! lock: with one global lock per frame, the floor row alone took 2.6 times
//! longer on 2 threads than on 1 (the lock, not the zeroing, was the
//! bottleneck), and every 2-thread row would have measured the arena. It is
//! the same allocator for every peer, and it counts live frames exactly
//! (`no_leaks` checks them after the last group).
//!
//! Run: `cargo bench -p npt-benches --bench vcpus`. The 2-thread rows mean
//! something only on an otherwise idle machine with at least 2 cores.

mod common;

use std::hint::spin_loop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use gpa_types::GuestPhysAddr;
use guest_aspace::{Access, FaultOutcome, SharedAddrSpace};
use npt_benches::ArenaFrames;
use npt_entry::ept::Ept4;
use npt_table::FrameAllocator;

/// First-touch faults per iteration of `faults_4096_threads`.
const FAULTS: usize = 4096;
/// Host writes per iteration of `host_write_4k_threads`.
const WRITES: usize = 4096;
/// Bytes of one host write.
const WRITE_LEN: usize = 4 * KIB;
/// The region of `host_write_4k_threads`: one page per write.
const WRITE_REGION: usize = WRITES * WRITE_LEN;
/// Thread counts of every scenario.
const THREADS: [usize; 2] = [1, 2];

/// Ours, shared, with frames of up to 2 MiB.
type Shared = SharedAddrSpace<Ept4, MaxRun<512>>;

/// axaddrspace as a hypervisor shares it among vCPUs.
type AxShared = RwLock<ax::Space>;

/// `"1 thread"` or `"N threads"`.
fn threads_label(threads: usize) -> String {
    if threads == 1 {
        "1 thread".to_string()
    } else {
        format!("{threads} threads")
    }
}

/// Thread `i`'s share of `items` when `threads` threads split them.
fn part<T>(items: &[T], i: usize, threads: usize) -> &[T] {
    let per = items.len().div_ceil(threads);
    items.chunks(per).nth(i).unwrap_or(&[])
}

// ---- the threaded harness ----

/// Runs `work(state, i)` on `threads` new threads (`i` in `0..threads`) and
/// returns the time from the first thread's start to the last thread's
/// end. Starting and joining the threads is not counted.
fn run_threads<S: Sync>(state: &S, threads: usize, work: &(impl Fn(&S, usize) + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    let arrived = AtomicUsize::new(0);
    let spans: Vec<(Instant, Instant)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let (barrier, arrived) = (&barrier, &arrived);
                s.spawn(move || {
                    // Every thread is running before any starts: the
                    // barrier puts them to sleep until the last arrives,
                    // and the start line then waits out their wake-ups.
                    barrier.wait();
                    // Relaxed: the counter publishes no data (the state
                    // was handed over by `spawn`), it only lines the
                    // threads up.
                    arrived.fetch_add(1, Ordering::Relaxed);
                    while arrived.load(Ordering::Relaxed) < threads {
                        spin_loop();
                    }
                    let start = Instant::now();
                    work(state, i);
                    (start, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker thread panicked"))
            .collect()
    });
    let start = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let end = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    end - start
}

/// Runs `work` on `threads` threads `iters` times, each time on a fresh
/// state from the untimed `setup` (the previous state is dropped untimed
/// too), and returns the time spent in `work` alone.
fn timed_threads<S: Sync>(
    iters: u64,
    threads: usize,
    mut setup: impl FnMut() -> S,
    work: &(impl Fn(&S, usize) + Sync),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut state = None;
    for _ in 0..iters {
        drop(state.take());
        let s = setup();
        total += run_threads(&s, threads, work);
        state = Some(s);
    }
    total
}

/// Runs `work` on `threads` threads `iters` times on the same state.
fn timed_threads_reuse<S: Sync>(
    iters: u64,
    threads: usize,
    state: &S,
    work: &(impl Fn(&S, usize) + Sync),
) -> Duration {
    (0..iters).map(|_| run_threads(state, threads, work)).sum()
}

/// One row per thread count: `name, N thread(s)` timed by `measure`.
fn rows(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    measure: impl Fn(u64, usize) -> Duration,
) {
    for threads in THREADS {
        g.bench_function(format!("{name}, {}", threads_label(threads)), |b| {
            b.iter_custom(|iters| measure(iters, threads))
        });
    }
}

// ---- faults ----

/// Ours with `[BASE, BASE + GIB)` lazy RAM, shared.
fn shared_lazy_gib() -> Shared {
    SharedAddrSpace::new(ours_ram::<512>(GIB, true))
}

/// axaddrspace with `[BASE, BASE + GIB)` lazy RAM, behind the lock.
fn ax_lazy_gib() -> AxShared {
    RwLock::new(ax_ram(GIB, true))
}

/// Per-thread frame lists of the floor row (one uncontended lock each, so
/// the threads share nothing but the arena).
fn floor_frames(threads: usize) -> Vec<Mutex<FloorFrames>> {
    (0..threads)
        .map(|_| {
            let mut f = FloorFrames::default();
            f.frames.reserve(FAULTS);
            Mutex::new(f)
        })
        .collect()
}

fn faults_4096_threads(c: &mut Criterion) {
    let pages = shuffled_pages(GIB, FAULTS);
    let mut g = group(c, "faults_4096_threads");
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(FAULTS as u64));

    let ours_work = |s: &Shared, i: usize, threads: usize| {
        for &p in part(&pages, i, threads) {
            let out = s.handle_fault(GuestPhysAddr::from_usize(p), Access::Write);
            assert!(
                matches!(out, Ok(FaultOutcome::Fixed(_))),
                "guest-aspace fault at {p:#x}: {out:?}"
            );
        }
    };
    let ax_work = |s: &AxShared, i: usize, threads: usize| {
        for &p in part(&pages, i, threads) {
            // The write side: `handle_page_fault` takes `&mut self`.
            let fixed = s
                .write()
                .expect("axaddrspace lock")
                .handle_page_fault(ax_gpa(p), axaddrspace::MappingFlags::WRITE);
            assert!(fixed, "axaddrspace fault at {p:#x}");
        }
    };
    let floor_work = |f: &Vec<Mutex<FloorFrames>>, i: usize, threads: usize| {
        let mut f = f[i].lock().expect("floor frames");
        for _ in part(&pages, i, threads) {
            let hpa = f.alloc.alloc_frame().expect("floor frame");
            // SAFETY: a fresh 4 KiB frame from `alloc`, owned here.
            unsafe { std::ptr::write_bytes(f.alloc.phys_to_virt(hpa), 0, 4096) };
            f.frames.push(hpa);
        }
    };

    // Checked once, untimed, with the most threads.
    {
        let threads = THREADS[THREADS.len() - 1];
        let s = shared_lazy_gib();
        run_threads(&s, threads, &|s, i| ours_work(s, i, threads));
        check_ours(&s.read(), &pages);
        let s = ax_lazy_gib();
        run_threads(&s, threads, &|s, i| ax_work(s, i, threads));
        check_ax(&s.read().expect("axaddrspace lock"), &pages);
    }

    rows(&mut g, "guest-aspace", |iters, threads| {
        timed_threads(iters, threads, shared_lazy_gib, &|s, i| {
            ours_work(s, i, threads)
        })
    });
    rows(&mut g, "axaddrspace behind a lock", |iters, threads| {
        timed_threads(iters, threads, ax_lazy_gib, &|s, i| ax_work(s, i, threads))
    });
    // What every fault handler must do at least, on every thread: take a
    // frame from the same arena and zero it (nothing looked up or mapped).
    rows(&mut g, "floor: alloc + zero", |iters, threads| {
        timed_threads(iters, threads, || floor_frames(threads), &|f, i| {
            floor_work(f, i, threads)
        })
    });
    g.finish();
}

// ---- host writes ----

/// Writes `data` at `gpa` through the shared space.
fn host_write(s: &Shared, gpa: GuestPhysAddr, data: &[u8]) {
    s.write_bytes(gpa, data).expect("guest-aspace write");
}

/// Host memory that several threads write at disjoint pages: the floor of
/// the host-write group.
struct HostPages {
    base: *mut u8,
    len: usize,
    _buf: Vec<u8>,
}

// SAFETY: `HostPages` owns its buffer; shared access writes only through
// `write`, whose contract keeps concurrent writes disjoint.
unsafe impl Sync for HostPages {}

impl HostPages {
    /// `len` resident bytes (touched now).
    fn new(len: usize) -> Self {
        let mut buf = vec![1u8; len];
        Self {
            base: buf.as_mut_ptr(),
            len,
            _buf: buf,
        }
    }

    /// Copies `data` to offset `off`.
    ///
    /// # Safety
    ///
    /// No other thread reads or writes `off .. off + data.len()` meanwhile.
    unsafe fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len, "outside the host pages");
        // SAFETY: in bounds (checked above) of the buffer `base` points
        // into, which lives as long as `self`; no other thread touches the
        // range (this function's contract).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off), data.len()) }
    }

    /// A copy of the bytes at `off .. off + len`.
    ///
    /// # Safety
    ///
    /// No other thread writes that range meanwhile.
    unsafe fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len, "outside the host pages");
        // SAFETY: in bounds (checked above) of the live buffer; no thread
        // writes the range (this function's contract).
        unsafe { std::slice::from_raw_parts(self.base.add(off), len) }.to_vec()
    }
}

fn host_write_4k_threads(c: &mut Criterion) {
    let pages = shuffled_pages(WRITE_REGION, WRITES);
    let data: Vec<u8> = (0..WRITE_LEN).map(|i| i as u8).collect();
    let mut g = group(c, "host_write_4k_threads");
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes((WRITES * WRITE_LEN) as u64));

    let ours_work = |s: &Shared, i: usize, threads: usize| {
        for &p in part(&pages, i, threads) {
            host_write(s, GuestPhysAddr::from_usize(p), &data);
        }
    };
    let ax_work = |s: &AxShared, i: usize, threads: usize| {
        for &p in part(&pages, i, threads) {
            // The read side: `translated_byte_buffer` takes `&self`.
            ax_write(&s.read().expect("axaddrspace lock"), p, &data);
        }
    };
    let floor_work = |h: &HostPages, i: usize, threads: usize| {
        for &p in part(&pages, i, threads) {
            // SAFETY: every page is in exactly one thread's part.
            unsafe { h.write(p - BASE, &data) };
        }
    };
    let check_ours_written = |s: &Shared| {
        let mut buf = vec![0u8; WRITE_LEN];
        for &p in &pages {
            s.read_bytes(GuestPhysAddr::from_usize(p), &mut buf)
                .expect("guest-aspace read");
            assert_eq!(buf, data, "guest-aspace: {p:#x} not written");
        }
    };

    let eager = SharedAddrSpace::new(ours_ram::<512>(WRITE_REGION, false));
    let lazy = || SharedAddrSpace::new(ours_ram::<512>(WRITE_REGION, true));
    let ax_eager: AxShared = RwLock::new(ax_ram(WRITE_REGION, false));
    let host = HostPages::new(WRITE_REGION);

    // Checked once, untimed, with the most threads.
    {
        let threads = THREADS[THREADS.len() - 1];
        run_threads(&eager, threads, &|s, i| ours_work(s, i, threads));
        check_ours_written(&eager);
        let s = lazy();
        run_threads(&s, threads, &|s, i| ours_work(s, i, threads));
        check_ours_written(&s);
        run_threads(&ax_eager, threads, &|s, i| ax_work(s, i, threads));
        let mut buf = vec![0u8; WRITE_LEN];
        for &p in &pages {
            ax_read(&ax_eager.read().expect("axaddrspace lock"), p, &mut buf);
            assert_eq!(buf, data, "axaddrspace: {p:#x} not written");
        }
        run_threads(&host, threads, &|h, i| floor_work(h, i, threads));
        for &p in &pages {
            // SAFETY: the writers have been joined.
            let bytes = unsafe { host.read(p - BASE, WRITE_LEN) };
            assert_eq!(bytes, data, "floor: not written");
        }
    }

    rows(&mut g, "guest-aspace", |iters, threads| {
        timed_threads_reuse(iters, threads, &eager, &|s, i| ours_work(s, i, threads))
    });
    rows(&mut g, "guest-aspace lazy", |iters, threads| {
        timed_threads(iters, threads, lazy, &|s, i| ours_work(s, i, threads))
    });
    rows(&mut g, "axaddrspace behind a lock", |iters, threads| {
        timed_threads_reuse(iters, threads, &ax_eager, &|s, i| ax_work(s, i, threads))
    });
    // A plain copy of the same bytes into host memory, no address space.
    rows(&mut g, "floor: memcpy", |iters, threads| {
        timed_threads_reuse(iters, threads, &host, &|h, i| floor_work(h, i, threads))
    });
    g.finish();
}

/// See [`npt_benches::keep_heap_resident`].
fn keep_heap(_: &mut Criterion) {
    npt_benches::keep_heap_resident();
}

/// Every space of every scenario is gone: no side leaked frames.
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
    faults_4096_threads,
    host_write_4k_threads,
    no_leaks
);
criterion_main!(benches);
