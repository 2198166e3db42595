//! What a space shows: `Display` of the space, regions, statistics and
//! flush records, readable `Debug`, the fault counters, and (feature `log`)
//! the log records.

use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, HostPhysAddr, MappingFlags};
use guest_aspace::{Access, FaultCounters, GuestAddrSpace};
use npt_entry::ept::Ept4;
use npt_table::HostFrameAllocator;

type Space<'a> = GuestAddrSpace<Ept4, &'a HostFrameAllocator>;

fn rwx() -> MappingFlags {
    MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE
}

fn space(alloc: &HostFrameAllocator) -> Space<'_> {
    let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 32);
    let mut s = Space::new(alloc, window).unwrap();
    s.add_ram(GuestPhysAddr::from(0x20_0000), 0x20_0000, rwx(), false)
        .unwrap()
        .ignore();
    s.add_ram(GuestPhysAddr::from(0x100_0000), 0x10_0000, rwx(), true)
        .unwrap()
        .ignore();
    s.add_mmio(GuestPhysAddr::from(0x900_0000), 0x1000, None)
        .unwrap()
        .ignore();
    s.add_mmio(
        GuestPhysAddr::from(0xa00_0000),
        0x1000,
        Some(HostPhysAddr::from(0x1_0000_0000)),
    )
    .unwrap()
    .ignore();
    s
}

#[test]
fn region_display_is_one_readable_line() {
    let alloc = HostFrameAllocator::new();
    let s = space(&alloc);
    let lines: Vec<String> = s.regions().map(|r| r.to_string()).collect();
    assert_eq!(
        lines,
        [
            "[0x200000, 0x400000) 2 MiB RAM (allocated, eager) rwx, populated 2 MiB",
            "[0x1000000, 0x1100000) 1 MiB RAM (allocated, on fault) rwx, populated 0 B",
            "[0x9000000, 0x9001000) 4 KiB MMIO (unmapped, emulated) rw- dev",
            "[0xa000000, 0xa001000) 4 KiB MMIO (device at 0x100000000) rw- dev",
        ]
    );
}

#[test]
fn counters_follow_faults_and_population() {
    let alloc = HostFrameAllocator::new();
    let s = space(&alloc);
    assert_eq!(s.stats().faults, FaultCounters::default());
    let lazy = GuestPhysAddr::from(0x100_0000);
    let _ = s.handle_fault(lazy, Access::Write).unwrap();
    let _ = s.handle_fault(lazy, Access::Read).unwrap(); // already mapped: fixed, no page
    let _ = s
        .handle_fault(GuestPhysAddr::from(0x900_0000), Access::Read)
        .unwrap();
    let _ = s
        .handle_fault(GuestPhysAddr::from(0x8000_0000), Access::Read)
        .unwrap();
    // A host write to lazy RAM populates without a fault.
    s.write(GuestPhysAddr::from(0x100_2000), &[1]).unwrap();
    let c = s.stats().faults;
    assert_eq!(
        c,
        FaultCounters {
            fixed: 2,
            mmio: 1,
            violation: 0,
            unmapped: 1,
            pages_populated: 2,
        }
    );
    assert_eq!(c.faults(), 4);
    let text = s.stats().to_string();
    assert!(
        text.contains(
            "faults 4 (fixed 2, mmio 1, violation 0, unmapped 1); lazy pages populated 2"
        ),
        "{text}"
    );
    assert!(text.starts_with("regions 4 covering "), "{text}");
}

#[test]
fn space_display_is_an_info_mem_dump() {
    let alloc = HostFrameAllocator::new();
    let s = space(&alloc);
    let text = s.to_string();
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("EPT 4-level space, window [0x0, 0x100000000), root 0x"),
        "{text}"
    );
    assert_eq!(
        lines.next().unwrap(),
        "  [0x200000, 0x400000) 2 MiB RAM (allocated, eager) rwx, populated 2 MiB"
    );
    let run = lines.next().unwrap();
    assert!(run.starts_with("    0x200000-0x400000 -> 0x"), "{run}");
    assert!(run.ends_with(" 2 MiB rwx (largest page 2M)"), "{run}");
    assert!(
        text.contains("    0xa000000-0xa001000 -> 0x100000000 4 KiB rw- dev (largest page 4K)"),
        "{text}"
    );
    assert!(text.contains("faults 0 "), "{text}");
}

#[test]
fn debug_is_hex() {
    let alloc = HostFrameAllocator::new();
    let s = space(&alloc);
    let d = format!("{s:?}");
    assert!(d.contains("window: 0x0..0x100000000"), "{d}");
    assert!(d.contains("0x9000000..0x9001000: Mmio"), "{d}");
    let mut s = s;
    let f = s
        .remove_range(GuestPhysAddr::from(0xa00_0000), 0x1000)
        .unwrap();
    let d = format!("{f:?}");
    assert!(d.contains("ranges: [0xa000000..0x"), "{d}");
    assert!(f.to_string().starts_with("[0xa000000, 0x"), "{f}");
    s.complete(f);
}

#[cfg(feature = "log")]
mod logging {
    use super::*;
    use std::sync::Mutex;

    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            LINES
                .lock()
                .unwrap()
                .push(format!("{} {}", record.level(), record.args()));
        }
        fn flush(&self) {}
    }

    #[test]
    fn region_changes_faults_and_flushes_are_logged() {
        static CAPTURE: Capture = Capture;
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        let alloc = HostFrameAllocator::new();
        let mut s = space(&alloc);
        let _ = s
            .handle_fault(GuestPhysAddr::from(0x900_0000), Access::Write)
            .unwrap();
        let f = s
            .remove_range(GuestPhysAddr::from(0x100_0000), 0x10_0000)
            .unwrap();
        s.complete(f);
        let lines = LINES.lock().unwrap().join("\n");
        assert!(
            lines.contains("DEBUG guest-aspace: region [0x9000000, 0x9001000) added: MMIO (unmapped, emulated) rw- dev"),
            "{lines}"
        );
        assert!(
            lines.contains("TRACE guest-aspace: Write fault at 0x9000000: MMIO"),
            "{lines}"
        );
        assert!(
            lines.contains("DEBUG guest-aspace: removed [0x1000000, 0x1100000); flush "),
            "{lines}"
        );
        assert!(
            lines.contains("TRACE guest-aspace: flush completed: "),
            "{lines}"
        );
    }
}
