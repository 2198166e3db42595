//! An AxVisor-style hypervisor's first afternoon with guest-aspace: a VM
//! from its memory-regions config, an EPT violation decoded and handled, a
//! kernel image and the guest's page tables copied in, a guest-virtual
//! address walked, and every frame back in the pool at the end.

use guest_aspace::exit::{FaultOrigin, intel};
use guest_aspace::gva::{self, GuestPaging, GuestPerms};
use guest_aspace::npt_entry::ept::Ept4;
use guest_aspace::{
    Access, ConfigOptions, FaultOutcome, GuestAddrSpace, GuestPhysAddr, GuestPhysAddrRange,
    GuestVirtAddr, HandlerAllocator, HostPhysAddr, PageSize, RegionKind,
};
use npt_adopter::{FRAMES, HPA_BASE, PoolHandler};

/// `memory_regions` of an AxVisor VM config (`configs/vms/*.toml`), as
/// `[base_paddr, size, flags, map_type]`:
///
/// ```toml
/// memory_regions = [
///     [0x0000_0000, 0x100_0000, 0x7, 0],  # RAM, rwx, MAP_ALLOC
///     [0xfec0_0000, 0x1000, 0x13, 2],     # IO APIC, rw + device, MAP_RESERVED
/// ]
/// ```
const MEMORY_REGIONS: [[u64; 4]; 2] = [
    [0x0000_0000, 0x100_0000, 0x7, 0],
    [0xfec0_0000, 0x1000, 0x13, 2],
];

type Space = GuestAddrSpace<Ept4, HandlerAllocator<PoolHandler>>;

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a)
}

fn in_pool(hpa: HostPhysAddr) -> bool {
    (HPA_BASE..HPA_BASE + FRAMES * 4096).contains(&hpa.as_usize())
}

#[test]
fn an_axvisor_vm_on_guest_aspace() {
    // 1. The space from the config; RAM populated on first touch.
    let window = GuestPhysAddrRange::from_start_size(gpa(0), 1 << 32);
    let options = ConfigOptions {
        lazy_alloc: true,
        ..ConfigOptions::default()
    };
    let (mut space, flush): (Space, _) =
        GuestAddrSpace::from_config(HandlerAllocator::new(), window, &MEMORY_REGIONS, options)
            .expect("config");
    space.complete(flush);
    assert_eq!(space.regions().count(), 2);
    let ram = space.find_region(gpa(0x1000)).unwrap();
    assert_eq!(ram.backing.kind(), RegionKind::Ram);
    // The IO APIC passes through at GPA == HPA.
    assert_eq!(
        space.translate(gpa(0xfec0_0020)),
        Some(HostPhysAddr::from_usize(0xfec0_0020))
    );
    assert_eq!(space.translate(gpa(0x10_0000)), None, "lazy");

    // 2. An EPT violation: the exit qualification says write (bit 1) by the
    // guest's own access (bits 7 and 8); decode it and let the space fix it.
    let exit = intel::decode_ept_violation(0x182, 0x10_0008).unwrap();
    assert_eq!(
        (exit.access, exit.origin),
        (Access::Write, FaultOrigin::GuestAccess)
    );
    match space.handle_fault(exit.gpa, exit.access).unwrap() {
        // INVEPT what the record names, then hand it back.
        FaultOutcome::Fixed(flush) => {
            space.complete(flush);
        }
        other => panic!("not fixed: {other:?}"),
    }
    let hpa = space.translate(gpa(0x10_0008)).unwrap();
    assert!(in_pool(hpa), "{hpa:?}");
    assert_eq!(hpa.as_usize() % 4096, 8);
    // Outside every region: for the hypervisor to report.
    assert_eq!(
        space.handle_fault(gpa(0x2000_0000), Access::Read).unwrap(),
        FaultOutcome::Unmapped {
            gpa: gpa(0x2000_0000)
        }
    );

    // 3. The kernel image, copied in at 2 MiB (populating what it covers).
    let kernel: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    space.load_image(gpa(0x20_0000), &kernel).unwrap();
    let mut back = vec![0; kernel.len()];
    space.read(gpa(0x20_0000), &mut back).unwrap();
    assert_eq!(back, kernel);
    let (first, limit) = space.translate_and_get_limit(gpa(0x20_0000)).unwrap();
    assert!(in_pool(first) && limit >= 4096);

    // 4. The guest's own page tables (x86-64, 4-level), written as a boot
    // loader would: GVA 0xffff_8000_0000_0000 + 2 MiB page -> GPA 0x20_0000.
    let (pml4, pdpt, pd) = (0x1000usize, 0x2000usize, 0x3000usize);
    let present_rw = 0x3u64;
    space
        .write_obj(gpa(pml4 + 256 * 8), &(pdpt as u64 | present_rw))
        .unwrap();
    space
        .write_obj(gpa(pdpt), &(pd as u64 | present_rw))
        .unwrap();
    space
        .write_obj(gpa(pd + 8), &(0x20_0000u64 | present_rw | 0x80))
        .unwrap();
    let paging = GuestPaging::X86 {
        cr3: pml4 as u64,
        la57: false,
        nxe: true,
        maxphyaddr: 52,
    };
    let gva = GuestVirtAddr::from_usize(0xffff_8000_0020_0000 + 0x1234);
    let t = gva::walk(&space, &paging, gva).unwrap();
    assert_eq!(t.gpa, gpa(0x20_1234));
    assert_eq!(t.size, PageSize::Size2M);
    assert!(t.perms.contains(GuestPerms::READ | GuestPerms::WRITE));
    // What the guest sees there is the image.
    assert_eq!(space.read_obj::<u8>(t.gpa).unwrap(), kernel[0x1234]);

    // 5. Teardown: every frame back in the hypervisor's pool.
    assert!(PoolHandler::live_frames() > 0);
    let flush = space.clear().unwrap();
    space.complete(flush);
    drop(space);
    assert_eq!(PoolHandler::live_frames(), 0);
}
