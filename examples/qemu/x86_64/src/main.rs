//! A bare-metal x86-64 hypervisor that runs a small 64-bit guest on nested
//! tables built by `guest-aspace`, and checks the results:
//! - AMD SVM with `Npt4` tables (nCR3 from `Ncr3`), under QEMU TCG;
//! - Intel VMX with `Ept4` tables (EPTP from `Eptp`), under Bochs.
//!
//! Which one runs is picked from CPUID. QEMU loads the image through its
//! multiboot header; Bochs through the boot sector in `bootsect.S`.
#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
#[path = "../../common/console.rs"]
mod console;
mod arch;
mod exit;
mod extras;
#[path = "../../common/frames.rs"]
mod frames;
#[path = "../../common/heap.rs"]
mod heap;
mod insn;
#[path = "../../common/scenario.rs"]
mod scenario;
mod svm;
mod vmx;

use gpa_types::{MappingFlags, MemoryType};
use npt_entry::NptFormat;
use npt_entry::ept::{Ept4, EptMemoryType, Eptp};
use npt_entry::npt::{Ncr3, Npt4};

use crate::frames::PoolFrames;
use crate::scenario::Layout;

/// The guest-physical layout. The pass-through page is the VGA text
/// buffer (GPA == HPA, uncached device memory); the guest prints through
/// port 0xE9 instead, which is passed through as well.
const LAYOUT: Layout = Layout {
    ram: 0x4000_0000,
    lazy: 0xc000_0000,
    rom: arch::ROM_GPA,
    uart: 0xb_8000,
    uart_flags: MappingFlags::READ
        .union(MappingFlags::WRITE)
        .union(MappingFlags::DEVICE),
    mmio: 0x0a00_0000,
};

/// Entered from `entry64` in long mode with a stack and a zeroed `.bss`.
#[unsafe(no_mangle)]
extern "C" fn hyp_main() -> ! {
    arch::init_idt();
    println!("npt-rs x86 example: hypervisor in long mode");
    let ok = if svm::supported() {
        run_svm()
    } else if vmx::supported() {
        run_vmx()
    } else {
        println!("neither SVM with nested paging nor VMX");
        false
    };
    println!("{}", if ok { "PASS" } else { "FAIL" });
    arch::exit(ok)
}

/// SVM with nested paging: `Npt4`.
fn run_svm() -> bool {
    let pool = PoolFrames::new(arch::SMALL_POOL, arch::LARGE_POOL);
    let mut vcpu = svm::Vcpu::new();
    let (guest, entry2) = arch::guest_image();
    let ok =
        scenario::run::<Npt4, _, _>(&pool, &LAYOUT, guest, entry2, &mut vcpu, |space, vcpu| {
            let ncr3 = match Ncr3::new(space.root_hpa(), MemoryType::WriteBack) {
                Ok(n) => n,
                Err(e) => {
                    println!("ncr3: {e}");
                    return false;
                }
            };
            println!(
                "nCR3 = {:#x} (root {:#x})",
                ncr3.bits(),
                ncr3.root().as_usize()
            );
            vcpu.activate(ncr3.bits());
            load_guest_tables(space)
        });
    let mut checks = scenario::Checks::new();
    extras::run::<Npt4, _>(&pool, &mut vcpu, &mut checks, |root, vcpu| {
        match Ncr3::new(root, MemoryType::WriteBack) {
            Ok(ncr3) => vcpu.activate(ncr3.bits()),
            Err(e) => println!("ncr3: {e}"),
        }
        // The nested walk always sets A, and D on writes (APM 15.25.5).
        true
    });
    finish(&pool) && ok && checks.passed()
}

/// VMX with EPT: `Ept4`.
fn run_vmx() -> bool {
    let Some(mut vcpu) = vmx::Vcpu::new() else {
        return false;
    };
    if !vcpu.ept_ok() {
        println!("VMX: EPT lacks 4-level walks, WB tables, 2 MiB or 1 GiB leaves");
        return false;
    }
    let pool = PoolFrames::new(arch::SMALL_POOL, arch::LARGE_POOL);
    let (guest, entry2) = arch::guest_image();
    let ok =
        scenario::run::<Ept4, _, _>(&pool, &LAYOUT, guest, entry2, &mut vcpu, |space, vcpu| {
            let eptp = match Eptp::new(
                space.root_hpa(),
                Ept4::LEVELS,
                EptMemoryType::WriteBack,
                false,
            ) {
                Ok(e) => e,
                Err(e) => {
                    println!("eptp: {e}");
                    return false;
                }
            };
            println!("EPTP = {eptp:?}");
            vcpu.activate(eptp.bits());
            load_guest_tables(space)
        });
    let mut checks = scenario::Checks::new();
    let ad = vcpu.ept_ad();
    extras::run::<Ept4, _>(&pool, &mut vcpu, &mut checks, |root, vcpu| {
        match Eptp::new(root, Ept4::LEVELS, EptMemoryType::WriteBack, ad) {
            Ok(eptp) => {
                println!("EPTP = {eptp:?}");
                vcpu.activate(eptp.bits());
            }
            Err(e) => println!("eptp: {e}"),
        }
        ad
    });
    finish(&pool) && ok && checks.passed()
}

/// Writes the guest's own page tables into its RAM.
fn load_guest_tables<F: npt_entry::NptFormat, A: npt_table::FrameAllocator>(
    space: &mut guest_aspace::GuestAddrSpace<F, A>,
) -> bool {
    let gpa = gpa_types::GuestPhysAddr::from_usize(arch::GUEST_TABLES_GPA);
    match space.write(gpa, &arch::guest_tables()) {
        Ok(()) => true,
        Err(e) => {
            println!("guest tables: {e}");
            false
        }
    }
}

/// The checks after the space is gone.
fn finish(pool: &PoolFrames) -> bool {
    let mut checks = scenario::Checks::new();
    checks.check("no_frame_leak", pool.live_frames() == 0);
    println!("heap used: {} KiB", heap::HEAP.used() / 1024);
    checks.passed()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("panic: {info}");
    println!("FAIL");
    arch::exit(false)
}
