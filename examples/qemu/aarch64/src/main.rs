//! A bare-metal EL2 hypervisor for QEMU `virt` that runs a small guest at
//! EL1 on stage-2 tables built by `guest-aspace`, and checks the results.
//!
//! The table variant is picked at boot from a word QEMU's loader device
//! writes at [`arch::VARIANT_ADDR`]: 48 selects `Stage2<48>` (4 levels from
//! level 0), anything else `Stage2<40>` (3 levels, 2 concatenated tables at
//! level 1).
#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
#[path = "../../common/console.rs"]
mod console;
mod arch;
#[path = "../../common/frames.rs"]
mod frames;
#[path = "../../common/heap.rs"]
mod heap;
#[path = "../../common/scenario.rs"]
mod scenario;

use npt_entry::NptFormat;
use npt_entry::stage2::{Stage2, Stage2Entry, VmidWidth, Vtcr, Vttbr};

use crate::frames::PoolFrames;
use crate::scenario::Layout;

/// The guest-physical layout.
const LAYOUT: Layout = Layout {
    ram: 0x4000_0000,
    lazy: 0xc000_0000,
    rom: 0x0010_0000,
    uart: arch::UART,
    uart_flags: gpa_types::MappingFlags::READ
        .union(gpa_types::MappingFlags::WRITE)
        .union(gpa_types::MappingFlags::DEVICE),
    mmio: 0x0a00_0000,
};

/// Entered from `_start` at EL2 with a stack and a zeroed `.bss`.
#[unsafe(no_mangle)]
extern "C" fn hyp_main() -> ! {
    arch::mmu_on();
    println!(
        "npt-rs QEMU example: AArch64 hypervisor at EL{}",
        arch::current_el()
    );
    // SAFETY: QEMU's loader device writes this word (or leaves RAM zero);
    // nothing else uses it.
    let variant = unsafe { (arch::VARIANT_ADDR as *const u32).read_volatile() };
    let ok = if variant == 48 {
        run::<Stage2<48>>()
    } else {
        run::<Stage2<40>>()
    };
    println!("{}", if ok { "PASS" } else { "FAIL" });
    arch::exit(ok)
}

/// Runs the scenario on format `F` with a fresh frame pool.
fn run<F: NptFormat<Entry = Stage2Entry>>() -> bool {
    let pool = PoolFrames::new(arch::SMALL_POOL, arch::LARGE_POOL);
    let mut vcpu = arch::Vcpu::new();
    let (guest, entry2) = arch::guest_image();
    let ok = scenario::run::<F, _, _>(&pool, &LAYOUT, guest, entry2, &mut vcpu, |space, _vcpu| {
        let pa_bits = arch::pa_bits();
        let vtcr = match Vtcr::for_format::<F>(pa_bits) {
            Ok(v) => v,
            Err(e) => {
                println!("VTCR_EL2: {e}");
                return false;
            }
        };
        let vttbr = match Vttbr::for_format::<F>(space.root_hpa(), 1, VmidWidth::Bits8) {
            Ok(v) => v,
            Err(e) => {
                println!("VTTBR_EL2: {e}");
                return false;
            }
        };
        println!(
            "PA {pa_bits} bits; VTCR_EL2 = {:#x} (IPA {} bits, start level {:?}); VTTBR_EL2 = {:#x}",
            vtcr.bits(),
            vtcr.ipa_bits(),
            vtcr.start_level(),
            vttbr.bits()
        );
        arch::activate(vtcr.bits(), vttbr.bits());
        true
    });
    let mut checks = scenario::Checks::new();
    checks.check("no_frame_leak", pool.live_frames() == 0);
    println!("heap used: {} KiB", heap::HEAP.used() / 1024);
    ok && checks.passed()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("panic: {info}");
    println!("FAIL");
    arch::exit(false)
}
