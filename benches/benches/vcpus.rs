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
//!   `floor: alloc` takes the frames without touching them: the arena
//!   alone, a few nanoseconds a frame, so its rows are short enough that
//!   the cache refills under the arena lock and the start line show.
//!
//! Timing: the worker threads live as long as one criterion measurement
//! (as vCPU threads do: their frame caches stay warm). Each iteration hands
//! them the state over a channel, lines them up at a spinning start line
//! (so no thread starts while another is still being woken), and counts
//! from the first thread's start to the last thread's end. Spaces are built
//! and dropped untimed. Every row is checked once, untimed, before it is
//! measured: every page mapped (and zeroed, or holding what was written).
//!
//! Frames come from `npt_benches::ArenaFrames` for every peer and floor row
//! (see `common/mod.rs`). Its single frames go through a per-thread cache of
//! up to 1,024 free frames, refilled and drained 256 at a time under the
//! arena lock: with one global lock round-trip per frame (and the floor's
//! two frame lists on one cache line, now apart), `floor: alloc + zero`
//! took 2.6 times longer on 2 threads than on 1, and every 2-thread row
//! would have measured the arena rather than the address spaces. It is the same allocator for every peer, and it counts live
//! frames exactly (`no_leaks` checks them after the last group).
//!
//! Run: `cargo bench -p npt-benches --bench vcpus`. The 2-thread rows mean
//! something only on an otherwise idle machine with at least 2 cores.

mod common;

use std::hint::spin_loop;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use gpa_types::GuestPhysAddr;
use guest_aspace::{Access, FaultOutcome, SharedAddrSpace};
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

/// Runs `work(state, i)` on `threads` worker threads (`i` in `0..threads`)
/// `iters` times, each time on the state `setup` returns, and returns the
/// sum over the iterations of the time from the first thread's start to
/// the last thread's end.
///
/// The workers live for the whole call, as vCPU threads do (their frame
/// caches stay warm); `setup`, handing the state over, and dropping it
/// (on this thread, after every worker has let it go) are not counted.
/// A worker's panic is raised again here.
fn timed_threads<S: Send + Sync>(
    iters: u64,
    threads: usize,
    mut setup: impl FnMut() -> Arc<S>,
    work: &(impl Fn(&S, usize) + Sync),
) -> Duration {
    let arrived = AtomicUsize::new(0);
    thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel();
        let inboxes: Vec<mpsc::Sender<Arc<S>>> = (0..threads)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Arc<S>>();
                let (done, arrived) = (done_tx.clone(), &arrived);
                scope.spawn(move || {
                    let mut round = 0;
                    while let Ok(state) = rx.recv() {
                        round += 1;
                        // The start line: every worker has its state and
                        // is awake before any starts. Relaxed: the counter
                        // publishes no data (the state came through the
                        // channel), it only lines the workers up.
                        arrived.fetch_add(1, Ordering::Relaxed);
                        while arrived.load(Ordering::Relaxed) < round * threads {
                            spin_loop();
                        }
                        let run = panic::catch_unwind(AssertUnwindSafe(|| {
                            let start = Instant::now();
                            work(&state, i);
                            (start, Instant::now())
                        }));
                        drop(state);
                        if done.send(run).is_err() {
                            break;
                        }
                    }
                });
                tx
            })
            .collect();
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let state = setup();
            for inbox in &inboxes {
                inbox.send(Arc::clone(&state)).expect("worker gone");
            }
            let mut first = None::<Instant>;
            let mut last = None::<Instant>;
            for _ in 0..threads {
                match done_rx.recv().expect("worker gone") {
                    Ok((start, end)) => {
                        first = Some(first.map_or(start, |f| f.min(start)));
                        last = Some(last.map_or(end, |l| l.max(end)));
                    }
                    Err(p) => panic::resume_unwind(p),
                }
            }
            if let (Some(first), Some(last)) = (first, last) {
                total += last - first;
            }
            // The last reference: the state is dropped here, untimed.
            drop(state);
        }
        // Closing the inboxes ends the workers' loops.
        drop(inboxes);
        total
    })
}

/// [`timed_threads`] on a fresh state from `setup` every iteration.
fn timed_fresh<S: Send + Sync>(
    iters: u64,
    threads: usize,
    mut setup: impl FnMut() -> S,
    work: &(impl Fn(&S, usize) + Sync),
) -> Duration {
    timed_threads(iters, threads, || Arc::new(setup()), work)
}

/// [`timed_threads`] on the same state every iteration.
fn timed_reuse<S: Send + Sync>(
    iters: u64,
    threads: usize,
    state: &Arc<S>,
    work: &(impl Fn(&S, usize) + Sync),
) -> Duration {
    timed_threads(iters, threads, || Arc::clone(state), work)
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

/// One thread's frame list of the floor rows, on cache lines of its own:
/// every push updates the list's length, and two lists on one line would
/// bounce it between the cores.
#[repr(align(128))]
struct FloorSlot(Mutex<FloorFrames>);

/// Per-thread frame lists of the floor rows (one uncontended lock each, so
/// the threads share nothing but the arena).
fn floor_frames(threads: usize) -> Vec<FloorSlot> {
    (0..threads)
        .map(|_| {
            let mut f = FloorFrames::default();
            f.frames.reserve(FAULTS);
            FloorSlot(Mutex::new(f))
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
    let floor_work = |f: &Vec<FloorSlot>, i: usize, threads: usize, zero: bool| {
        let mut f = f[i].0.lock().expect("floor frames");
        for _ in part(&pages, i, threads) {
            let hpa = f.alloc.alloc_frame().expect("floor frame");
            if zero {
                // SAFETY: a fresh 4 KiB frame from `alloc`, owned here.
                unsafe { std::ptr::write_bytes(f.alloc.phys_to_virt(hpa), 0, 4096) };
            }
            f.frames.push(hpa);
        }
    };

    // Checked once, untimed, with the most threads.
    {
        let threads = THREADS[THREADS.len() - 1];
        let s = Arc::new(shared_lazy_gib());
        timed_reuse(1, threads, &s, &|s, i| ours_work(s, i, threads));
        check_ours(&s.read(), &pages);
        let s = Arc::new(ax_lazy_gib());
        timed_reuse(1, threads, &s, &|s, i| ax_work(s, i, threads));
        check_ax(&s.read().expect("axaddrspace lock"), &pages);
    }

    rows(&mut g, "guest-aspace", |iters, threads| {
        timed_fresh(iters, threads, shared_lazy_gib, &|s, i| {
            ours_work(s, i, threads)
        })
    });
    rows(&mut g, "axaddrspace behind a lock", |iters, threads| {
        timed_fresh(iters, threads, ax_lazy_gib, &|s, i| ax_work(s, i, threads))
    });
    // What every fault handler must do at least, on every thread: take a
    // frame from the same arena and zero it (nothing looked up or mapped).
    rows(&mut g, "floor: alloc + zero", |iters, threads| {
        timed_fresh(iters, threads, || floor_frames(threads), &|f, i| {
            floor_work(f, i, threads, true)
        })
    });
    // The arena alone: how far taking frames scales.
    rows(&mut g, "floor: alloc", |iters, threads| {
        timed_fresh(iters, threads, || floor_frames(threads), &|f, i| {
            floor_work(f, i, threads, false)
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

// SAFETY: `HostPages` owns its buffer (the pointer is into it), so it may
// move to another thread with it.
unsafe impl Send for HostPages {}

// SAFETY: shared access writes only through `write` and reads only through
// `read`, whose contracts keep concurrent accesses to a range apart.
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

    let eager = Arc::new(SharedAddrSpace::new(ours_ram::<512>(WRITE_REGION, false)));
    let lazy = || SharedAddrSpace::new(ours_ram::<512>(WRITE_REGION, true));
    let ax_eager = Arc::new(RwLock::new(ax_ram(WRITE_REGION, false)));
    let host = Arc::new(HostPages::new(WRITE_REGION));

    // Checked once, untimed, with the most threads.
    {
        let threads = THREADS[THREADS.len() - 1];
        timed_reuse(1, threads, &eager, &|s, i| ours_work(s, i, threads));
        check_ours_written(&eager);
        let s = Arc::new(lazy());
        timed_reuse(1, threads, &s, &|s, i| ours_work(s, i, threads));
        check_ours_written(&s);
        timed_reuse(1, threads, &ax_eager, &|s, i| ax_work(s, i, threads));
        let mut buf = vec![0u8; WRITE_LEN];
        for &p in &pages {
            ax_read(&ax_eager.read().expect("axaddrspace lock"), p, &mut buf);
            assert_eq!(buf, data, "axaddrspace: {p:#x} not written");
        }
        timed_reuse(1, threads, &host, &|h, i| floor_work(h, i, threads));
        for &p in &pages {
            // SAFETY: the writers have been joined.
            let bytes = unsafe { host.read(p - BASE, WRITE_LEN) };
            assert_eq!(bytes, data, "floor: not written");
        }
    }

    rows(&mut g, "guest-aspace", |iters, threads| {
        timed_reuse(iters, threads, &eager, &|s, i| ours_work(s, i, threads))
    });
    rows(&mut g, "guest-aspace lazy", |iters, threads| {
        timed_fresh(iters, threads, lazy, &|s, i| ours_work(s, i, threads))
    });
    rows(&mut g, "axaddrspace behind a lock", |iters, threads| {
        timed_reuse(iters, threads, &ax_eager, &|s, i| ax_work(s, i, threads))
    });
    // A plain copy of the same bytes into host memory, no address space.
    rows(&mut g, "floor: memcpy", |iters, threads| {
        timed_reuse(iters, threads, &host, &|h, i| floor_work(h, i, threads))
    });
    g.finish();
}

criterion_group!(
    benches,
    keep_heap,
    faults_4096_threads,
    host_write_4k_threads,
    no_leaks
);
criterion_main!(benches);
