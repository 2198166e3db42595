//! `SharedAddrSpace`: vCPUs translating and reading while another one
//! faults lazy pages in.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use guest_aspace::{Access, FaultOutcome, GuestAddrSpace, SharedAddrSpace};
use npt_entry::ept::Ept4;
use npt_table::HostFrameAllocator;

const EAGER: usize = 0x4000_0000;
const LAZY: usize = 0x5000_0000;
const PAGES: usize = 512;

#[test]
fn concurrent_translate_and_read_while_faulting() {
    let alloc = HostFrameAllocator::new();
    {
        let mut space = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 36)).unwrap();
        space.add_ram(gpa(EAGER), M2, RW, false).unwrap().ignore();
        space
            .add_ram(gpa(LAZY), PAGES * K4, RW, true)
            .unwrap()
            .ignore();
        space
            .write_u64(gpa(EAGER + 0x100), 0xfeed_f00d_dead_beef)
            .unwrap();
        let shared = SharedAddrSpace::new(space);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for seed in 0..2usize {
                let (shared, done) = (&shared, &done);
                scope.spawn(move || {
                    let mut seen: HashMap<usize, usize> = HashMap::new();
                    let mut x = seed * 7919 + 1;
                    let mut rounds = 0usize;
                    while !done.load(Ordering::Acquire) || rounds < 1000 {
                        rounds += 1;
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let page = (x >> 33) % (PAGES - 1);
                        let g = LAZY + page * K4;
                        // Once a page is mapped it stays mapped to the same frame.
                        match shared.translate(gpa(g + 8)) {
                            Some(h) => {
                                let prev = *seen.entry(page).or_insert(h.as_usize() - 8);
                                assert_eq!(prev, h.as_usize() - 8, "page {page} moved");
                            }
                            None => assert!(!seen.contains_key(&page), "page {page} vanished"),
                        }
                        // Lazy pages read as zeros whether populated or not.
                        let mut buf = [0xffu8; 64];
                        shared.read_bytes(gpa(g + K4 - 32), &mut buf).unwrap();
                        assert!(buf.iter().all(|&b| b == 0));
                        let mut word = [0u8; 8];
                        shared.read_bytes(gpa(EAGER + 0x100), &mut word).unwrap();
                        assert_eq!(u64::from_le_bytes(word), 0xfeed_f00d_dead_beef);
                        assert!(shared.read().contains(gpa(g)));
                    }
                    seen.len()
                });
            }
            let (shared, done) = (&shared, &done);
            scope.spawn(move || {
                for page in (0..PAGES).rev() {
                    let access = if page % 2 == 0 {
                        Access::Read
                    } else {
                        Access::Write
                    };
                    match shared
                        .handle_fault(gpa(LAZY + page * K4 + 1), access)
                        .unwrap()
                    {
                        FaultOutcome::Fixed(flush) => flush.ignore(),
                        other => panic!("{other:?}"),
                    }
                    // A second vCPU faulting on the same page finds it there.
                    match shared
                        .handle_fault(gpa(LAZY + page * K4 + 2), Access::Read)
                        .unwrap()
                    {
                        FaultOutcome::Fixed(flush) => assert!(flush.is_empty()),
                        other => panic!("{other:?}"),
                    }
                }
                done.store(true, Ordering::Release);
            });
        });
        let space = shared.into_inner();
        assert_eq!(space.find_region(gpa(LAZY)).unwrap().populated, PAGES * K4);
        let mut hpas: Vec<usize> = (0..PAGES)
            .map(|p| space.translate(gpa(LAZY + p * K4)).unwrap().as_usize())
            .collect();
        hpas.sort_unstable();
        hpas.dedup();
        assert_eq!(hpas.len(), PAGES, "every page has its own frame");
    }
    assert_eq!(alloc.live_frames(), 0);
}

/// Host writes from four threads at once, under the shared lock, into
/// lazy pages they populate as they go.
#[test]
fn host_writes_run_concurrently() {
    let alloc = HostFrameAllocator::new();
    let mut space = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 36)).unwrap();
    space
        .add_ram(gpa(LAZY), 64 * K4, RW, true)
        .unwrap()
        .ignore();
    let shared = SharedAddrSpace::new(space);
    std::thread::scope(|scope| {
        for t in 0..4usize {
            let shared = &shared;
            scope.spawn(move || {
                for i in 0..16 {
                    let g = LAZY + (t * 16 + i) * K4;
                    shared
                        .read()
                        .write_u64(gpa(g), (t * 100 + i) as u64)
                        .unwrap();
                }
            });
        }
    });
    let space = shared.into_inner();
    for t in 0..4 {
        for i in 0..16 {
            assert_eq!(
                space.read_u64(gpa(LAZY + (t * 16 + i) * K4)).unwrap(),
                (t * 100 + i) as u64
            );
        }
    }
    assert_eq!(space.find_region(gpa(LAZY)).unwrap().populated, 64 * K4);
}

/// A region change (exclusive access; faults took it too before they ran
/// under the shared lock) must not wait without bound behind vCPUs
/// translating in a loop: with a reader-preferring lock (`spin::RwLock`)
/// one acquisition waited seconds on a 2-core machine. Each of the 20
/// acquisitions here must take well under a second; the translating
/// threads give up after 20 s, so the test ends (and fails) even under a
/// lock that starves writers.
#[test]
fn a_fault_gets_in_while_three_vcpus_translate() {
    use std::time::{Duration, Instant};

    const ROUNDS: usize = 20;
    let alloc = HostFrameAllocator::new();
    let mut space = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 36)).unwrap();
    space.add_ram(gpa(EAGER), M2, RW, false).unwrap().ignore();
    space
        .add_ram(gpa(LAZY), ROUNDS * K4, RW, true)
        .unwrap()
        .ignore();
    let shared = SharedAddrSpace::new(space);
    let stop = AtomicBool::new(false);
    let started = std::sync::atomic::AtomicUsize::new(0);
    let give_up = Instant::now() + Duration::from_secs(20);
    let waits = std::thread::scope(|scope| {
        for t in 0..3usize {
            let (shared, stop, started) = (&shared, &stop, &started);
            scope.spawn(move || {
                started.fetch_add(1, Ordering::AcqRel);
                let mut i = t;
                while !stop.load(Ordering::Acquire) && Instant::now() < give_up {
                    for _ in 0..64 {
                        i = (i + 1) % 512;
                        assert!(shared.translate(gpa(EAGER + i * K4)).is_some());
                    }
                }
            });
        }
        while started.load(Ordering::Acquire) < 3 {
            std::thread::yield_now();
        }
        let mut waits = Vec::new();
        for page in 0..ROUNDS {
            let t0 = Instant::now();
            let space = shared.write();
            waits.push(t0.elapsed());
            match space.handle_fault(gpa(LAZY + page * K4), Access::Write) {
                Ok(FaultOutcome::Fixed(flush)) => flush.ignore(),
                other => panic!("{other:?}"),
            }
            drop(space);
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Release);
        waits
    });
    let max = waits.iter().max().copied().unwrap_or_default();
    assert!(
        max < Duration::from_millis(500),
        "a writer waited {max:?} behind translating readers (all waits: {waits:?})"
    );
}

/// vCPUs faulting on the same lazy pages at the same moment: each page
/// ends with one frame, every vCPU is told it is fixed, the page is
/// counted as populated once, and the frames of the races lost went back.
#[test]
fn vcpus_faulting_the_same_page_map_one_frame() {
    const PAGES: usize = if cfg!(miri) { 4 } else { 256 };
    const VCPUS: usize = 4;
    let alloc = HostFrameAllocator::new();
    let mut space = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 36)).unwrap();
    space
        .add_ram(gpa(LAZY), PAGES * K4, RW, true)
        .unwrap()
        .ignore();
    let shared = SharedAddrSpace::new(space);
    let barrier = std::sync::Barrier::new(VCPUS);
    let seen: Vec<Vec<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..VCPUS)
            .map(|_| {
                let (shared, barrier) = (&shared, &barrier);
                scope.spawn(move || {
                    let mut hpas = Vec::new();
                    for page in 0..PAGES {
                        if page % 32 == 0 {
                            barrier.wait();
                        }
                        let g = gpa(LAZY + page * K4);
                        match shared.handle_fault(g, Access::Write) {
                            Ok(FaultOutcome::Fixed(flush)) => flush.ignore(),
                            other => panic!("{other:?}"),
                        }
                        hpas.push(shared.translate(g).unwrap().as_usize());
                    }
                    hpas
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for vcpu in &seen[1..] {
        assert_eq!(vcpu, &seen[0], "every vCPU sees the one frame of each page");
    }
    let space = shared.into_inner();
    let stats = space.stats();
    assert_eq!(stats.faults.pages_populated, PAGES as u64);
    assert_eq!(stats.faults.fixed, (PAGES * VCPUS) as u64);
    assert_eq!(stats.table.leaves_of(gpa_types::PageSize::Size4K), PAGES);
    assert_eq!(alloc.live_frames(), stats.table.table_frames + PAGES);
    drop(space);
    assert_eq!(alloc.live_frames(), 0);
}
