//! Inserts and flag updates from many threads at once on a shared table
//! (`NestedPageTable::*_concurrent`), on every format: each page ends with
//! one frame, every frame is accounted for, and a failed insert changes
//! nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::NptFormat;
use npt_table::{
    FailingAllocator, FrameAllocator, HostFrameAllocator, Inserted, NestedPageTable, TlbFlush,
};

const THREADS: usize = 4;
/// Pages each thread faults, drawn from a small set so threads collide.
const FAULTS: usize = if cfg!(miri) { 24 } else { 2000 };
/// Distinct pages, spread over a few tables of every level.
const PAGES: usize = if cfg!(miri) { 16 } else { 600 };

fn rw() -> MappingFlags {
    MappingFlags::READ | MappingFlags::WRITE
}

/// The page `i` of the test: clusters in different 2 MiB and 1 GiB spans,
/// so both table slots and leaf slots are raced for.
fn page(i: usize) -> usize {
    let cluster = i % 5;
    let within = i / 5;
    cluster * (3 << 28) + (cluster % 2) * (3 << 21) + within * 4096
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn racing_inserts<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let table = NestedPageTable::<F, _>::new(&alloc).unwrap();
    // Page -> frame, for every `New` outcome; each `Present` must name it.
    let winners = Mutex::new(HashMap::new());
    let seen = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (table, winners, seen) = (&table, &winners, &seen);
            s.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                for _ in 0..FAULTS {
                    let gpa = page(xorshift(&mut rng) as usize % PAGES);
                    let out = table
                        .insert_new_concurrent(GuestPhysAddr::from_usize(gpa + 8), rw(), |a| {
                            a.alloc_frame()
                        })
                        .unwrap();
                    match out {
                        Inserted::New(leaf) => {
                            assert_eq!(leaf.page.as_usize(), gpa);
                            let mut one = TlbFlush::none();
                            one.add(gpa, 4096);
                            assert_eq!(leaf.flush(), one, "the record names the page");
                            one.ignore();
                            let old = winners.lock().unwrap().insert(gpa, leaf.hpa);
                            assert_eq!(old, None, "two frames mapped at {gpa:#x}");
                        }
                        Inserted::Present(t) => {
                            assert_eq!(t.size, PageSize::Size4K);
                            seen.lock().unwrap().push((gpa, t.hpa));
                        }
                    }
                }
            });
        }
    });
    let winners = winners.into_inner().unwrap();
    for (gpa, hpa) in seen.into_inner().unwrap() {
        assert_eq!(Some(&(hpa - 8)), winners.get(&gpa), "{}: {gpa:#x}", F::NAME);
    }
    for (&gpa, &hpa) in &winners {
        assert_eq!(table.translate(gpa.into()), Some(hpa), "{}", F::NAME);
    }
    let stats = table.stats();
    assert_eq!(stats.leaves[0], winners.len());
    // Every frame handed out is a table frame or a mapped page: the losers
    // gave theirs back.
    assert_eq!(alloc.live_frames(), stats.table_frames + winners.len());
    drop(table);
    for hpa in winners.values() {
        alloc.dealloc_frames(*hpa, 1);
    }
    assert_eq!(alloc.live_frames(), 0);
}

/// Out of frames at every allocation of an insert in turn: the table and
/// the allocator are as before.
fn failed_insert_changes_nothing<F: NptFormat>() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    let table = NestedPageTable::<F, _>::new(&alloc).unwrap();
    let gpa = GuestPhysAddr::from_usize(page(3));
    // One frame per missing table below the root, then the page's.
    for n in 1..=F::LEVELS + 1 {
        let before = (table.stats(), alloc.inner().live_frames());
        alloc.fail_from(n);
        let out = table.insert_new_concurrent(gpa, rw(), |a| a.alloc_frame());
        alloc.heal();
        match out {
            Ok(Inserted::New(leaf)) => {
                leaf.flush().ignore();
                assert_eq!(n, F::LEVELS + 1, "{}", F::NAME);
                drop(table);
                alloc.dealloc_frames(leaf.hpa, 1);
                assert_eq!(alloc.inner().live_frames(), 0);
                return;
            }
            Ok(Inserted::Present(_)) => panic!("{}: nothing was mapped", F::NAME),
            Err(e) => {
                assert_eq!(e, npt_table::MapError::NoMemory);
                assert_eq!(before, (table.stats(), alloc.inner().live_frames()));
                assert_eq!(table.translate(gpa), None);
            }
        }
    }
    panic!("{}: the insert never succeeded", F::NAME);
}

/// Write-protecting and granting write on the same pages from two threads
/// ends with each leaf's address unchanged and its flags one of the two.
fn racing_flag_updates<F: NptFormat>() {
    let alloc = HostFrameAllocator::new();
    let mut table = NestedPageTable::<F, _>::new(&alloc).unwrap();
    let len = 16 * 4096;
    table
        .map_region(
            0x20_0000.into(),
            HostPhysAddr::from(0x4000_0000),
            len,
            rw(),
            npt_table::MapPolicy::Only4K,
        )
        .unwrap()
        .ignore();
    let table = &table;
    std::thread::scope(|s| {
        s.spawn(move || {
            for _ in 0..if cfg!(miri) { 2 } else { 200 } {
                table
                    .write_protect_concurrent(0x20_0000.into(), len)
                    .unwrap()
                    .ignore();
            }
        });
        s.spawn(move || {
            for i in 0..if cfg!(miri) { 32 } else { 3200 } {
                let gpa = GuestPhysAddr::from_usize(0x20_0000 + (i % 16) * 4096);
                let _ = table
                    .update_flags_concurrent(gpa, |f| {
                        (!f.contains(MappingFlags::WRITE)).then_some(f | MappingFlags::WRITE)
                    })
                    .unwrap();
            }
        });
    });
    for i in 0..16 {
        let t = table
            .query(GuestPhysAddr::from_usize(0x20_0000 + i * 4096))
            .unwrap();
        assert_eq!(t.hpa, HostPhysAddr::from_usize(0x4000_0000 + i * 4096));
        assert!(t.flags.contains(MappingFlags::READ), "{}", F::NAME);
    }
}

macro_rules! per_format {
    ($($name:ident: $fmt:ty,)*) => {
        mod racing_inserts {
            $( #[test] fn $name() { super::racing_inserts::<$fmt>(); } )*
        }
        mod failed_insert {
            $( #[test] fn $name() { super::failed_insert_changes_nothing::<$fmt>(); } )*
        }
        mod flag_updates {
            $( #[test] fn $name() { super::racing_flag_updates::<$fmt>(); } )*
        }
    };
}

npt_entry::for_each_format!(per_format);
