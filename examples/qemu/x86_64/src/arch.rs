//! x86-64 host basics shared by the SVM and VMX paths: port I/O, console
//! output on port 0xE9, ending the emulator, MSRs, the host IDT, and the
//! guest image.

use core::arch::{asm, global_asm};

global_asm!(include_str!("boot.S"));
global_asm!(include_str!("bootsect.S"), options(att_syntax));
global_asm!(include_str!("guest.S"));

/// The debug console port: QEMU `-debugcon`, Bochs `port_e9_hack`.
const DEBUG_PORT: u16 = 0xe9;
/// QEMU `isa-debug-exit` (`iobase=0xf4`): writing `v` ends QEMU with exit
/// status `(v << 1) | 1`.
const QEMU_EXIT_PORT: u16 = 0xf4;
/// The value written to [`QEMU_EXIT_PORT`] on PASS: exit status 33.
const QEMU_EXIT_PASS: u32 = 0x10;
/// The value written on FAIL: exit status 35.
const QEMU_EXIT_FAIL: u32 = 0x11;
/// Bochs' shutdown port: the string `Shutdown` written to it ends Bochs.
const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;

/// Guest-physical address of the ROM (the guest image's tables assume it).
pub const ROM_GPA: usize = 0x10_0000;
/// Guest-physical address of the guest's own page tables (PML4, PDPT,
/// four page directories), 1 MiB into the eager RAM, inside its 1 GiB leaf
/// and away from the pattern addresses.
pub const GUEST_TABLES_GPA: usize = 0x4010_0000;
/// Size of the guest's page tables.
pub const GUEST_TABLES_SIZE: usize = 6 * 4096;
/// Frames for tables and 4 KiB backing (above the image, heap and stack).
pub const SMALL_POOL: (usize, usize) = (0x0100_0000, 0x4000_0000);
/// Frames for huge backing, 1 GiB aligned; the machine needs 2.25 GiB of
/// RAM below its PCI hole.
pub const LARGE_POOL: (usize, usize) = (0x4000_0000, 0x9000_0000);

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: the ports written here (debug console, exit devices) have no
    // effect on memory.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

fn outl(port: u16, value: u32) {
    // SAFETY: as `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

/// Writes one byte to the debug console.
pub fn putc(b: u8) {
    outb(DEBUG_PORT, b);
}

/// Ends the emulator: QEMU through `isa-debug-exit` (status 33 on PASS, 35
/// on FAIL), Bochs through its shutdown port (the log says which). Each
/// port is ignored by the other emulator.
pub fn exit(ok: bool) -> ! {
    outl(
        QEMU_EXIT_PORT,
        if ok { QEMU_EXIT_PASS } else { QEMU_EXIT_FAIL },
    );
    for b in b"Shutdown" {
        outb(BOCHS_SHUTDOWN_PORT, *b);
    }
    loop {
        // SAFETY: stops the CPU; interrupts are off.
        unsafe { asm!("cli", "hlt") };
    }
}

/// Reads an MSR.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers read architectural MSRs the CPU reports.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// The write must be valid for the MSR and keep the host running.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

/// CPUID leaf `leaf`, subleaf 0: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// One IDT gate (Intel SDM Vol. 3A, 6.14.1, Figure 6-8).
#[repr(C, align(16))]
struct Idt([u64; 64]);

static mut IDT: Idt = Idt([0; 64]);

unsafe extern "C" {
    static isr_table: [u64; 32];
    static guest_image_start: u8;
    static guest_image_end: u8;
    static guest_entry2: u8;
    static guest_entry3: u8;
}

/// Installs interrupt gates for the 32 exception vectors: any host fault
/// prints and FAILs instead of resetting the machine.
pub fn init_idt() {
    // SAFETY: `isr_table` holds the 32 stub addresses (boot.S); `IDT` is
    // written once here, before any exception can use it, and lives forever.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (v, &isr) in isr_table.iter().enumerate() {
            // 64-bit interrupt gate: offset 15:0, selector 0x08, type 0xE,
            // P; offset 31:16; offset 63:32.
            idt.0[2 * v] =
                (isr & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((isr >> 16) & 0xffff) << 48;
            idt.0[2 * v + 1] = isr >> 32;
        }
        let desc: [u16; 5] = {
            let base = core::ptr::addr_of!(IDT) as u64;
            [
                (64 * 8 - 1) as u16,
                base as u16,
                (base >> 16) as u16,
                (base >> 32) as u16,
                (base >> 48) as u16,
            ]
        };
        asm!("lidt [{}]", in(reg) desc.as_ptr(), options(nostack));
    }
}

/// An exception in the hypervisor itself: a bug.
#[unsafe(no_mangle)]
extern "C" fn host_fault(vector: u64, error: u64, rip: u64) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2) };
    println!("host exception {vector} error {error:#x} rip {rip:#x} cr2 {cr2:#x}");
    println!("FAIL");
    exit(false)
}

/// The guest's identity tables for the first 4 GiB, to be written at
/// [`GUEST_TABLES_GPA`]: PML4[0] -> PDPT, PDPT[0..4] -> page directories,
/// 2048 PDEs of 2 MiB. Tables: P | R/W | A; leaves also PS | D (Intel SDM
/// Vol. 3A, 4.5, Tables 4-15, 4-17, 4-18; AMD APM Vol. 2, 5.3.3). A and D
/// are preset so the guest's walks need not set them.
pub fn guest_tables() -> alloc::vec::Vec<u8> {
    const TABLE: u64 = 0x23;
    const LEAF_2M: u64 = 0xe3;
    let base = GUEST_TABLES_GPA as u64;
    let mut entries = alloc::vec![0u64; GUEST_TABLES_SIZE / 8];
    entries[0] = (base + 0x1000) | TABLE;
    for i in 0..4 {
        entries[512 + i] = (base + 0x2000 + 0x1000 * i as u64) | TABLE;
    }
    for (i, pde) in entries[1024..].iter_mut().enumerate() {
        *pde = ((i as u64) << 21) | LEAF_2M;
    }
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// The offset of the guest's third entry point (`extras.rs`).
pub fn guest_entry3_offset() -> usize {
    core::ptr::addr_of!(guest_entry3) as usize - core::ptr::addr_of!(guest_image_start) as usize
}

/// The guest's image (code only) and the offset of its second
/// entry point.
pub fn guest_image() -> (&'static [u8], usize) {
    let start = core::ptr::addr_of!(guest_image_start);
    let end = core::ptr::addr_of!(guest_image_end) as usize;
    let entry2 = core::ptr::addr_of!(guest_entry2) as usize - start as usize;
    // SAFETY: the symbols delimit the guest image in `.rodata`.
    (
        unsafe { core::slice::from_raw_parts(start, end - start as usize) },
        entry2,
    )
}
