//! A bare-metal RISC-V hypervisor for QEMU `virt` (`-bios none`): boots in
//! M-mode, drops to HS-mode, runs a small guest in VS-mode on G-stage
//! tables built by `guest-aspace`, and checks the results.
//!
//! The table variant is picked at boot from a word QEMU's loader device
//! writes at [`arch::VARIANT_ADDR`]: 48 selects Sv48x4, anything else
//! Sv39x4.
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

use npt_entry::gstage::{GStageFormat, Hgatp, Sv39x4, Sv48x4};

use crate::frames::PoolFrames;
use crate::scenario::Layout;

/// The guest-physical layout. The UART is mapped with the default memory
/// type (PBMT = PMA): the platform's PMAs already make it I/O, and a PBMT
/// value would need Svpbmt and `menvcfg`.PBMTE.
const LAYOUT: Layout = Layout {
    ram: 0x8000_0000,
    lazy: 0x1_0000_0000,
    rom: 0x0010_0000,
    uart: arch::UART,
    uart_flags: gpa_types::MappingFlags::READ.union(gpa_types::MappingFlags::WRITE),
    mmio: 0x0a00_0000,
};

/// Entered in HS-mode from `_start` with a stack and a zeroed `.bss`.
#[unsafe(no_mangle)]
extern "C" fn hyp_main() -> ! {
    println!("npt-rs QEMU example: RISC-V hypervisor in HS-mode");
    // SAFETY: QEMU's loader device writes this word (or leaves RAM zero);
    // nothing else uses it.
    let variant = unsafe { (arch::VARIANT_ADDR as *const u32).read_volatile() };
    let ok = if variant == 48 {
        run::<Sv48x4>()
    } else {
        run::<Sv39x4>()
    };
    println!("{}", if ok { "PASS" } else { "FAIL" });
    arch::exit(ok)
}

/// Runs the scenario on format `F` with a fresh frame pool.
fn run<F: GStageFormat>() -> bool {
    let pool = PoolFrames::new(arch::SMALL_POOL, arch::LARGE_POOL);
    let mut vcpu = arch::Vcpu::new();
    let (guest, entry2) = arch::guest_image();
    let ok = scenario::run::<F, _, _>(&pool, &LAYOUT, guest, entry2, &mut vcpu, |space, _vcpu| {
        let hgatp = match Hgatp::for_format::<F>(1, space.root_hpa()) {
            Ok(h) => h,
            Err(e) => {
                println!("hgatp: {e}");
                return false;
            }
        };
        println!(
            "hgatp = {:#x} ({:?}, VMID {}, root {:#x})",
            hgatp.bits(),
            hgatp.mode(),
            hgatp.vmid(),
            hgatp.root().as_usize()
        );
        arch::activate(hgatp.bits());
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
