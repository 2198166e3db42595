//! Running out of frames at every possible point: the failed operation
//! reports `NoMemory` and leaves the space (and the allocator) as it was.

mod common;

use common::*;
use guest_aspace::{Access, AspaceError, ConfigOptions, GuestAddrSpace};
use npt_entry::NptFormat;
use npt_entry::ept::Ept4;
use npt_entry::gstage::Sv39x4;
use npt_entry::stage2::Stage2Ipa40;
use npt_table::{FailingAllocator, HostFrameAllocator};

type Failing = FailingAllocator<HostFrameAllocator>;

/// An operation under test on a space over the failing allocator.
type SpaceOp<'a, F> = &'a dyn Fn(&mut GuestAddrSpace<F, &Failing>) -> Result<(), AspaceError>;

/// Runs `op` once to count its allocation attempts, undoes it with `undo`,
/// then makes it fail at every attempt and checks nothing changed.
fn every_failure_point<F: NptFormat>(
    alloc: &Failing,
    s: &mut GuestAddrSpace<F, &Failing>,
    op: SpaceOp<'_, F>,
    undo: &dyn Fn(&mut GuestAddrSpace<F, &Failing>),
) -> usize {
    let before = snapshot(s);
    let live = alloc.inner().live_frames();
    alloc.heal();
    op(s).unwrap();
    let attempts = alloc.attempts();
    assert!(attempts > 0);
    undo(s);
    assert_eq!(snapshot(s), before, "undo restores the layout");
    assert_eq!(alloc.inner().live_frames(), live, "undo frees everything");
    for k in 1..=attempts {
        alloc.fail_from(k);
        assert_eq!(
            op(s),
            Err(AspaceError::NoMemory),
            "failing at attempt {k} of {attempts}"
        );
        assert_eq!(snapshot(s), before, "attempt {k} of {attempts}");
        assert_eq!(
            alloc.inner().live_frames(),
            live,
            "attempt {k} of {attempts}"
        );
    }
    alloc.heal();
    attempts
}

fn populated_space<F: NptFormat>(alloc: &Failing) -> GuestAddrSpace<F, &Failing> {
    let mut s = GuestAddrSpace::new(alloc, window(0, 1 << 36)).unwrap();
    s.add_ram(gpa(0x4000_0000), M2 + 3 * K4, RW, false)
        .unwrap()
        .ignore();
    s.add_ram(gpa(0x5000_0000), 16 * K4, RW, true)
        .unwrap()
        .ignore();
    let _ = s.handle_fault(gpa(0x5000_3000), Access::Write).unwrap();
    s.add_mmio(gpa(0x900_0000), K4, None).unwrap().ignore();
    s
}

fn eager_ram_add<F: NptFormat>() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    {
        let mut s = populated_space::<F>(&alloc);
        let (g, size) = (0x8000_0000, 3 * M2 + 3 * K4);
        let n = every_failure_point(
            &alloc,
            &mut s,
            &|s| s.add_ram(gpa(g), size, RW, false).map(|f| f.ignore()),
            &|s| {
                let f = s.remove_range(gpa(g), size).unwrap();
                s.complete(f);
            },
        );
        // 3 frames of 2 MiB, 3 of 4 KiB, and table frames.
        assert!(n > 6, "{n}");
        // ROM goes the same way.
        every_failure_point(
            &alloc,
            &mut s,
            &|s| s.add_rom(gpa(g), 2 * M2 + K4, true).map(|f| f.ignore()),
            &|s| {
                let f = s.remove_range(gpa(g), 2 * M2 + K4).unwrap();
                s.complete(f);
            },
        );
        // After all those failures the space still works.
        s.add_ram(gpa(g), size, RW, false).unwrap().ignore();
        s.write_u64(gpa(g + M2 - 4), 0x55).unwrap();
        assert_eq!(s.read_u64(gpa(g + M2 - 4)).unwrap(), 0x55);
    }
    assert_eq!(alloc.inner().live_frames(), 0);
}

#[test]
fn eager_ram_add_fails_cleanly_ept() {
    eager_ram_add::<Ept4>();
}

#[test]
fn eager_ram_add_fails_cleanly_stage2() {
    eager_ram_add::<Stage2Ipa40>();
}

#[test]
fn eager_ram_add_fails_cleanly_sv39x4() {
    eager_ram_add::<Sv39x4>();
}

#[test]
fn pass_through_add_and_split_fail_cleanly() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    {
        let mut s = populated_space::<Ept4>(&alloc);
        let g = 0x1_0000_0000;
        every_failure_point(
            &alloc,
            &mut s,
            &|s| {
                s.add_identical(gpa(g), 2 * M2 + 5 * K4, RW)
                    .map(|f| f.ignore())
            },
            &|s| {
                let f = s.remove_range(gpa(g), 2 * M2 + 5 * K4).unwrap();
                s.complete(f);
            },
        );
        every_failure_point(
            &alloc,
            &mut s,
            &|s| {
                s.add_mmio(gpa(g), M2, Some(hpa(0xfe00_0000)))
                    .map(|f| f.ignore())
            },
            &|s| {
                let f = s.remove_range(gpa(g), M2).unwrap();
                s.complete(f);
            },
        );
        // Cutting a 2 MiB pass-through leaf needs a table frame.
        s.add_identical(gpa(g), 2 * M2, RW).unwrap().ignore();
        every_failure_point(
            &alloc,
            &mut s,
            &|s| {
                s.remove_range(gpa(g + K4), K4).map(|f| {
                    s.complete(f);
                })
            },
            &|s| {
                {
                    let f = s.remove_range(gpa(g), K4).unwrap();
                    s.complete(f);
                };
                {
                    let f = s.remove_range(gpa(g + 2 * K4), 2 * M2 - 2 * K4).unwrap();
                    s.complete(f);
                };
                s.add_identical(gpa(g), 2 * M2, RW).unwrap().ignore();
            },
        );
    }
    assert_eq!(alloc.inner().live_frames(), 0);
}

#[test]
fn identical_alloc_fails_cleanly() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    {
        let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 47)).unwrap();
        let before = snapshot(&s);
        let live = alloc.inner().live_frames();
        alloc.heal();
        let (g, f) = s.add_identical_alloc(2 * M2, RW).unwrap();
        f.ignore();
        let attempts = alloc.attempts();
        {
            let f = s.remove_range(g, 2 * M2).unwrap();
            s.complete(f);
        };
        for k in 1..=attempts {
            alloc.fail_from(k);
            assert_eq!(
                s.add_identical_alloc(2 * M2, RW).map(|_| ()),
                Err(AspaceError::NoMemory),
                "attempt {k}"
            );
            assert_eq!(snapshot(&s), before);
            assert_eq!(alloc.inner().live_frames(), live);
        }
        alloc.heal();
    }
    assert_eq!(alloc.inner().live_frames(), 0);
}

#[test]
fn start_dirty_log_fails_cleanly() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    {
        let mut s = populated_space::<Ept4>(&alloc);
        let g = 0x4000_0000;
        let n = every_failure_point(
            &alloc,
            &mut s,
            &|s| s.start_dirty_log(gpa(g)).map(|f| f.ignore()),
            &|s| {
                let f = s.stop_dirty_log(gpa(g)).unwrap();
                s.complete(f);
            },
        );
        assert!(n >= 1);
        assert!(!s.find_region(gpa(g)).unwrap().dirty_logging);
    }
    assert_eq!(alloc.inner().live_frames(), 0);
}

#[test]
fn lazy_writes_out_of_memory_write_nothing() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    {
        let mut s = GuestAddrSpace::<Ept4, _>::new(&alloc, window(0, 1 << 36)).unwrap();
        let g = 0x5000_0000;
        s.add_ram(gpa(g), 8 * K4, RW, true).unwrap().ignore();
        // Pages populated before a failure may stay (the guest reads zeros
        // either way), so each round needs fewer attempts; go until it works.
        let data = [0xab; 3 * K4 + 2];
        let mut k = 1;
        loop {
            alloc.fail_from(k);
            let r = s.write(gpa(g + K4 - 1), &data); // five lazy pages
            alloc.heal();
            let mut back = vec![0xffu8; 8 * K4];
            s.read(gpa(g), &mut back).unwrap();
            if r.is_ok() {
                assert!(back[K4 - 1..4 * K4 + 1].iter().all(|&b| b == 0xab));
                break;
            }
            assert_eq!(r, Err(AspaceError::NoMemory), "attempt {k}");
            assert!(back.iter().all(|&b| b == 0), "attempt {k}: nothing written");
            k += 1;
            assert!(k < 100);
        }
    }
    assert_eq!(alloc.inner().live_frames(), 0);
}

#[test]
fn from_config_out_of_memory_leaks_nothing() {
    let alloc = FailingAllocator::new(HostFrameAllocator::new());
    let records = [
        [0x8000_0000, 0x40_1000, 0x7, 0],
        [0x1000_0000, 0x1000, 0x3, 3],
        [0x2000_0000, 0x3000, 0x5, 4],
    ];
    alloc.heal();
    let (s, f) = GuestAddrSpace::<Ept4, _>::from_config(
        &alloc,
        window(0, 1 << 36),
        &records,
        ConfigOptions::default(),
    )
    .unwrap();
    f.ignore();
    let attempts = alloc.attempts();
    drop(s);
    assert_eq!(alloc.inner().live_frames(), 0);
    for k in 1..=attempts {
        alloc.fail_from(k);
        let r = GuestAddrSpace::<Ept4, _>::from_config(
            &alloc,
            window(0, 1 << 36),
            &records,
            ConfigOptions::default(),
        );
        match r {
            Err(AspaceError::NoMemory) => {}
            Err(AspaceError::ConfigPlacement {
                error: guest_aspace::PlacementError::NoMemory,
                ..
            }) => {}
            other => panic!("attempt {k}: {other:?}"),
        }
        assert_eq!(alloc.inner().live_frames(), 0, "attempt {k}");
    }
}
