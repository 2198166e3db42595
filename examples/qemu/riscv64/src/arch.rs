//! RISC-V HS-mode: `hgatp`, guest entry into VS-mode and exit decoding,
//! HFENCE.GVMA, ns16550 output and the SiFive test device for exiting.

use core::arch::{asm, global_asm};

use guest_aspace::exit::riscv::decode_guest_page_fault;
use npt_table::TlbFlush;

use crate::scenario::Exit;

global_asm!(include_str!("asm.S"));
global_asm!(include_str!("guest.S"));

/// The ns16550 UART of `virt`.
pub const UART: usize = 0x1000_0000;
/// The SiFive test device of `virt`: ends QEMU.
const TEST_DEVICE: usize = 0x10_0000;
/// Where QEMU's loader device writes the table variant.
pub const VARIANT_ADDR: usize = 0x83ff_f000;
/// Frames for tables and 4 KiB backing.
pub const SMALL_POOL: (usize, usize) = (0x8400_0000, 0xc000_0000);
/// Frames for huge backing (1 GiB aligned start; `-m 3G` ends RAM at 5 GiB).
pub const LARGE_POOL: (usize, usize) = (0xc000_0000, 0x1_4000_0000);

/// `hstatus`.SPV, bit 7: `sret` enters a virtualized mode (VS).
const HSTATUS_SPV: u64 = 1 << 7;
/// `hstatus`.SPVP, bit 8: the guest was in VS-mode (not VU).
const HSTATUS_SPVP: u64 = 1 << 8;
/// `sstatus`.SPP, bit 8: `sret` returns to S (here VS) mode.
const SSTATUS_SPP: u64 = 1 << 8;
/// `sstatus`.SPIE, bit 5: interrupts stay off in the guest.
const SSTATUS_SPIE: u64 = 1 << 5;

/// Writes one byte to the ns16550 transmit register once it is empty.
pub fn putc(b: u8) {
    let base = UART as *mut u8;
    // SAFETY: the UART's registers are at `UART` (HS-mode has no
    // translation); LSR bit 5 is "transmit holding register empty".
    unsafe {
        while base.add(5).read_volatile() & 0x20 == 0 {}
        base.write_volatile(b);
    }
}

/// Ends QEMU through the SiFive test device: status 0 or 1.
pub fn exit(ok: bool) -> ! {
    let value: u32 = if ok { 0x5555 } else { (1 << 16) | 0x3333 };
    loop {
        // SAFETY: writing the test device's register ends the machine.
        unsafe { (TEST_DEVICE as *mut u32).write_volatile(value) };
    }
}

/// Programs the G-stage: `hgatp`, a full HFENCE.GVMA, guest satp off.
pub fn activate(hgatp: u64) {
    // SAFETY: the value comes from the crate's checked `Hgatp` builder; the
    // guest is not running.
    unsafe {
        asm!(
            "csrw 0x680, {h}",
            "csrw 0x280, zero",
            ".insn r 0x73, 0, 0x31, x0, x0, x0",
            "fence.i",
            h = in(reg) hgatp,
        )
    };
}

unsafe extern "C" {
    static guest_image_start: u8;
    static guest_image_end: u8;
    static guest_entry2: u8;
    fn enter_guest(ctx: *mut GuestCtx);
}

/// The guest's code and the offset of its second entry point.
pub fn guest_image() -> (&'static [u8], usize) {
    let start = core::ptr::addr_of!(guest_image_start);
    let end = core::ptr::addr_of!(guest_image_end) as usize;
    let entry2 = core::ptr::addr_of!(guest_entry2) as usize - start as usize;
    // SAFETY: the symbols delimit the guest code in `.rodata`.
    (
        unsafe { core::slice::from_raw_parts(start, end - start as usize) },
        entry2,
    )
}

/// Guest registers while it is not running (layout used by `asm.S`).
#[repr(C)]
struct GuestCtx {
    x: [u64; 32],
    sepc: u64,
    host_sp: u64,
}

/// The guest's vCPU.
pub struct Vcpu {
    ctx: GuestCtx,
}

impl Vcpu {
    /// A vCPU that has not run.
    pub fn new() -> Self {
        Self {
            ctx: GuestCtx {
                x: [0; 32],
                sepc: 0,
                host_sp: 0,
            },
        }
    }

    fn run(&mut self) -> Exit {
        // SAFETY: sets up `sret` into VS-mode; `enter_guest` saves the
        // host's callee-saved registers, enters the guest and comes back here
        // on its next trap, with the guest's registers in `ctx`.
        unsafe {
            asm!(
                "csrs 0x600, {hs}",
                "csrs sstatus, {spp}",
                "csrc sstatus, {spie}",
                hs = in(reg) HSTATUS_SPV | HSTATUS_SPVP,
                spp = in(reg) SSTATUS_SPP,
                spie = in(reg) SSTATUS_SPIE,
            );
            enter_guest(&mut self.ctx);
        }
        let (scause, stval, htval, htinst): (u64, u64, u64, u64);
        // SAFETY: reading trap CSRs has no side effects.
        unsafe {
            asm!("csrr {}, scause", "csrr {}, stval", "csrr {}, 0x643", "csrr {}, 0x64a",
                 out(reg) scause, out(reg) stval, out(reg) htval, out(reg) htinst)
        };
        // ecall from VS-mode: the guest is done.
        if scause == 10 {
            return Exit::Done(self.ctx.x[10]);
        }
        match decode_guest_page_fault(scause, stval, htval, Some(htinst)) {
            Ok(fault) => Exit::Fault {
                gpa: fault.gpa.as_usize(),
                access: fault.access,
                code: scause,
            },
            Err(_) => Exit::Other(scause, self.ctx.sepc, stval),
        }
    }
}

impl crate::scenario::Vcpu for Vcpu {
    fn enter(&mut self, entry: usize, arg: usize) -> Exit {
        self.ctx.x = [0; 32];
        self.ctx.x[10] = arg as u64;
        self.ctx.sepc = entry as u64;
        self.run()
    }

    fn resume(&mut self) -> Exit {
        self.run()
    }

    fn skip(&mut self) {
        self.ctx.sepc += 4;
    }

    fn flush(&mut self, flush: &TlbFlush) {
        if flush.is_empty() {
            return;
        }
        // SAFETY: orders the table writes before the fences below.
        unsafe { asm!("fence w, r") };
        if flush.is_all() {
            // SAFETY: invalidates all G-stage translations.
            unsafe { asm!(".insn r 0x73, 0, 0x31, x0, x0, x0") };
            return;
        }
        for range in flush.ranges() {
            let mut gpa = range.start.as_usize();
            while gpa < range.end.as_usize() {
                // SAFETY: HFENCE.GVMA rs1 = GPA >> 2, rs2 = x0 (all VMIDs).
                unsafe { asm!(".insn r 0x73, 0, 0x31, x0, {}, x0", in(reg) gpa >> 2) };
                gpa += 0x1000;
            }
        }
    }

    fn store_value(&self, fetch: &dyn Fn(usize) -> Option<u32>) -> Option<u64> {
        // The guest runs bare, so its pc is a GPA: decode the store there.
        let insn = fetch(self.ctx.sepc as usize)?;
        if insn & 0x7f != 0x23 {
            return None;
        }
        Some(self.ctx.x[((insn >> 20) & 0x1f) as usize])
    }
}

/// A trap taken in HS-mode itself: a hypervisor bug.
#[unsafe(no_mangle)]
extern "C" fn hs_fatal(scause: u64, sepc: u64, stval: u64) -> ! {
    println!("HS trap: scause {scause:#x} sepc {sepc:#x} stval {stval:#x}");
    println!("FAIL");
    exit(false)
}

/// A trap taken into M-mode: a hypervisor bug.
#[unsafe(no_mangle)]
extern "C" fn m_fatal(mcause: u64, mepc: u64, mtval: u64) -> ! {
    println!("M trap: mcause {mcause:#x} mepc {mepc:#x} mtval {mtval:#x}");
    println!("FAIL");
    exit(false)
}
