//! Building a space from a whole AxVisor VM config: `memory_regions` and the
//! `[devices]` table.

use gpa_types::{
    DeviceError, DeviceField, DeviceSection, DevicesConfig, EmulatedDevice, GuestPhysAddr,
    GuestPhysAddrRange, HostPhysAddr, MappingFlags, PassthroughAddress, PassthroughDevice,
};
use guest_aspace::{
    Access, AspaceError, Backing, ConfigOptions, FaultOutcome, GuestAddrSpace, PlacementError,
};
use npt_entry::ept::Ept4;
use npt_table::HostFrameAllocator;

type Space<'a> = GuestAddrSpace<Ept4, &'a HostFrameAllocator>;

const RAM: [[u64; 4]; 1] = [[0x0, 0x100_0000, 0x7, 0]];

fn window() -> GuestPhysAddrRange {
    GuestPhysAddrRange::from_start_size(0.into(), 1 << 32)
}

fn pt(name: &str, gpa: u64, hpa: u64, len: u64) -> PassthroughDevice {
    PassthroughDevice {
        name: name.into(),
        base_gpa: gpa,
        base_hpa: hpa,
        length: len,
        irq: 1,
    }
}

fn emu(name: &str, gpa: u64, len: u64) -> EmulatedDevice {
    EmulatedDevice {
        name: name.into(),
        base_gpa: gpa,
        length: len,
        irq: 0,
        emu_type: 0x21,
        config: vec![1, 2],
    }
}

fn devices() -> DevicesConfig {
    DevicesConfig {
        passthrough_devices: vec![
            pt("IO APIC", 0xfec0_0000, 0xfec0_0000, 0x1000),
            pt("uart", 0x0900_0000, 0x1_0900_0000, 0x1000),
        ],
        passthrough_addresses: vec![PassthroughAddress {
            base_gpa: 0x2000_0000,
            length: 0x20_0000,
        }],
        emu_devices: vec![emu("gicd", 0x0800_0000, 0x1_0000)],
    }
}

fn build<'a>(
    alloc: &'a HostFrameAllocator,
    devices: &DevicesConfig,
) -> Result<Space<'a>, AspaceError> {
    Space::from_vm_config(alloc, window(), &RAM, devices, ConfigOptions::default()).map(|(s, f)| {
        f.ignore();
        s
    })
}

#[test]
fn every_device_kind_becomes_its_region() {
    let alloc = HostFrameAllocator::new();
    let space = build(&alloc, &devices()).unwrap();
    assert_eq!(space.regions().count(), 5);
    let rw_dev = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::DEVICE;

    let uart = space.find_region(GuestPhysAddr::from(0x0900_0000)).unwrap();
    assert_eq!(
        uart.backing,
        Backing::Mmio {
            passthrough: Some(HostPhysAddr::from(0x1_0900_0000))
        }
    );
    assert_eq!(uart.flags, rw_dev);
    assert_eq!(
        space.translate(GuestPhysAddr::from(0x0900_0010)),
        Some(HostPhysAddr::from(0x1_0900_0010))
    );

    let pa = space.find_region(GuestPhysAddr::from(0x2000_0000)).unwrap();
    assert_eq!(pa.backing, Backing::Identical);
    assert_eq!(pa.flags, rw_dev);
    assert_eq!(
        space.translate(GuestPhysAddr::from(0x2010_0000)),
        Some(HostPhysAddr::from(0x2010_0000))
    );

    let gicd = GuestPhysAddr::from(0x0800_0040);
    assert_eq!(space.translate(gicd), None);
    assert!(matches!(
        space.handle_fault(gicd, Access::Write).unwrap(),
        FaultOutcome::Mmio { .. }
    ));
}

#[test]
fn empty_devices_is_from_config() {
    let alloc = HostFrameAllocator::new();
    let space = build(&alloc, &DevicesConfig::default()).unwrap();
    assert_eq!(space.regions().count(), 1);
}

#[test]
fn bad_record_names_section_index_and_field() {
    let alloc = HostFrameAllocator::new();
    let mut d = devices();
    d.emu_devices.push(emu("virtio", 0x0a00_0000, 0x200));
    let e = build(&alloc, &d).unwrap_err();
    assert_eq!(
        e,
        AspaceError::DeviceConfig {
            section: DeviceSection::EmuDevices,
            index: 1,
            error: DeviceError::NotAligned {
                field: DeviceField::Length,
                value: 0x200
            }
        }
    );
    assert_eq!(
        e.to_string(),
        "[devices] emu_devices[1]: length: 0x200 is not a multiple of 4 KiB"
    );
    // Checked before anything is added: a bad record late in the table
    // leaves no device region behind in a space built step by step.
    let (mut space, f) =
        Space::from_config(&alloc, window(), &RAM, ConfigOptions::default()).unwrap();
    f.ignore();
    assert!(space.add_devices(&d).is_err());
    assert_eq!(space.regions().count(), 1);
}

#[test]
fn overlap_names_the_device_and_its_base() {
    let alloc = HostFrameAllocator::new();
    let mut d = devices();
    // Inside the RAM of memory_regions[0].
    d.passthrough_devices
        .push(pt("clash", 0x8000, 0xfed0_0000, 0x1000));
    let e = build(&alloc, &d).unwrap_err();
    assert_eq!(
        e,
        AspaceError::DevicePlacement {
            section: DeviceSection::PassthroughDevices,
            index: 2,
            field: DeviceField::BaseGpa,
            error: PlacementError::Overlap(GuestPhysAddr::from(0)),
        }
    );
    assert_eq!(
        e.to_string(),
        "[devices] passthrough_devices[2]: base_gpa: overlaps the region at 0x0"
    );
}

#[test]
fn window_errors_blame_base_or_length() {
    let alloc = HostFrameAllocator::new();
    let mut d = DevicesConfig::default();
    d.emu_devices.push(emu("far", 0x1_0000_0000, 0x1000));
    let e = build(&alloc, &d).unwrap_err();
    assert!(
        matches!(
            e,
            AspaceError::DevicePlacement {
                section: DeviceSection::EmuDevices,
                index: 0,
                field: DeviceField::BaseGpa,
                error: PlacementError::OutsideWindow
            }
        ),
        "{e:?}"
    );
    let mut d = DevicesConfig::default();
    d.passthrough_addresses.push(PassthroughAddress {
        base_gpa: 0xffff_f000,
        length: 0x2000,
    });
    let e = build(&alloc, &d).unwrap_err();
    assert!(
        matches!(
            e,
            AspaceError::DevicePlacement {
                field: DeviceField::Length,
                error: PlacementError::OutsideWindow,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn host_width_is_the_hpa_field() {
    let alloc = HostFrameAllocator::new();
    let mut d = DevicesConfig::default();
    // Above Ept4's 52-bit host-physical width.
    d.passthrough_devices
        .push(pt("wide", 0x0900_0000, 1 << 60, 0x1000));
    let e = build(&alloc, &d).unwrap_err();
    assert!(
        matches!(
            e,
            AspaceError::DevicePlacement {
                section: DeviceSection::PassthroughDevices,
                index: 0,
                field: DeviceField::BaseHpa,
                error: PlacementError::Table(_)
            }
        ),
        "{e:?}"
    );
}

#[test]
fn placement_is_checked_before_anything_is_added() {
    let alloc = HostFrameAllocator::new();
    let (mut space, f) =
        Space::from_config(&alloc, window(), &RAM, ConfigOptions::default()).unwrap();
    f.ignore();
    let mut d = devices();
    // The last record overlaps the first: nothing of the table is added.
    d.emu_devices.push(emu("clash", 0xfec0_0000, 0x2000));
    let e = space.add_devices(&d).unwrap_err();
    assert_eq!(
        e,
        AspaceError::DevicePlacement {
            section: DeviceSection::EmuDevices,
            index: 1,
            field: DeviceField::BaseGpa,
            error: PlacementError::Overlap(GuestPhysAddr::from(0xfec0_0000)),
        }
    );
    assert_eq!(space.regions().count(), 1);
    assert_eq!(space.table_stats().mapped_bytes(), 0x100_0000);
    // The same table without the clash goes in whole.
    d.emu_devices.pop();
    space.add_devices(&d).unwrap().ignore();
    assert_eq!(space.regions().count(), 5);
}
