//! AArch64 EL2: the EL2 identity map, stage-2 registers, guest entry and
//! exit decoding, TLB maintenance, PL011 output and semihosting exit.

use core::arch::{asm, global_asm};

use guest_aspace::Access;
use guest_aspace::exit::arm as abort;
use guest_aspace::exit::{ExitDecodeError, ExitFault, FaultOrigin};
use npt_table::TlbFlush;

use crate::scenario::Exit;

global_asm!(include_str!("asm.S"));
global_asm!(include_str!("guest.S"));

/// The PL011 UART of `virt`.
pub const UART: usize = 0x0900_0000;
/// Where QEMU's loader device writes the table variant.
pub const VARIANT_ADDR: usize = 0x43ff_f000;
/// Frames for tables and 4 KiB backing.
pub const SMALL_POOL: (usize, usize) = (0x4400_0000, 0x8000_0000);
/// Frames for huge backing (1 GiB aligned start; `-m 3G` ends RAM at 4 GiB).
pub const LARGE_POOL: (usize, usize) = (0x8000_0000, 0x1_0000_0000);

/// HCR_EL2.VM, bit 0: stage-2 translation on.
const HCR_VM: u64 = 1 << 0;
/// HCR_EL2.RW, bit 31: EL1 is AArch64.
const HCR_RW: u64 = 1 << 31;
/// SPSR_EL2 for the guest: EL1h, D/A/I/F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// Writes one byte to the PL011 data register.
pub fn putc(b: u8) {
    // SAFETY: the PL011 at `UART` is identity mapped as device memory (or
    // the MMU is off); writing DR sends a byte (QEMU's FIFO never fills).
    unsafe { ((UART) as *mut u32).write_volatile(u32::from(b)) }
}

/// Ends QEMU through semihosting `SYS_EXIT` with status 0 or 1.
pub fn exit(ok: bool) -> ! {
    // ADP_Stopped_ApplicationExit and the exit status.
    let block: [u64; 2] = [0x20026, if ok { 0 } else { 1 }];
    loop {
        // SAFETY: semihosting call 0x18 reads the two-word block; QEMU
        // (run with -semihosting) exits and never returns.
        unsafe { asm!("hlt #0xf000", in("x0") 0x18u64, in("x1") block.as_ptr()) };
    }
}

/// The current exception level.
pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el) };
    (el >> 2) & 3
}

/// The implemented physical address size (ID_AA64MMFR0_EL1.PARange).
pub fn pa_bits() -> u32 {
    let mmfr0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe { asm!("mrs {}, id_aa64mmfr0_el1", out(reg) mmfr0) };
    match mmfr0 & 0xf {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// The EL2 stage-1 table: one level-1 table of 1 GiB blocks.
#[repr(C, align(4096))]
struct L1Table([u64; 512]);

static mut EL2_L1: L1Table = L1Table([0; 512]);

/// Turns on the EL2 MMU with an identity map: 0..1 GiB device (UART, test
/// devices), 1..4 GiB normal write-back (RAM).
pub fn mmu_on() {
    const BLOCK: u64 = 0b01;
    const AF: u64 = 1 << 10;
    const SH_INNER: u64 = 0b11 << 8;
    const ATTR_DEVICE: u64 = 0 << 2;
    const ATTR_NORMAL: u64 = 1 << 2;
    // SAFETY: runs once at boot before anything else uses EL2_L1.
    let table = unsafe { &mut *core::ptr::addr_of_mut!(EL2_L1) };
    table.0[0] = BLOCK | AF | ATTR_DEVICE;
    for i in 1..4u64 {
        table.0[i as usize] = (i << 30) | BLOCK | AF | SH_INNER | ATTR_NORMAL;
    }
    let ps = match pa_bits() {
        32 => 0,
        36 => 1,
        40 => 2,
        42 => 3,
        44 => 4,
        _ => 5,
    };
    // MAIR: attr0 Device-nGnRnE, attr1 Normal WB RW-allocate.
    let mair: u64 = 0xff << 8;
    // TCR_EL2: RES1 31 and 23, PS, TG0 4K, SH0 inner, WBWA walks, T0SZ 25.
    let tcr: u64 =
        (1 << 31) | (1 << 23) | (ps << 16) | (0b11 << 12) | (0b01 << 10) | (0b01 << 8) | 25;
    let ttbr = table.0.as_ptr() as u64;
    // SAFETY: the table maps all memory the hypervisor touches with the
    // same addresses, so turning the MMU on does not move anything.
    unsafe {
        asm!(
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {ttbr}",
            "dsb ish",
            "isb",
            "tlbi alle2",
            "dsb ish",
            "mrs {t}, sctlr_el2",
            "orr {t}, {t}, #1",
            "orr {t}, {t}, #4",
            "orr {t}, {t}, #0x1000",
            "msr sctlr_el2, {t}",
            "isb",
            mair = in(reg) mair, tcr = in(reg) tcr, ttbr = in(reg) ttbr, t = out(reg) _,
        )
    };
}

/// Programs stage 2 for the guest: VTCR_EL2, VTTBR_EL2 and HCR_EL2.
pub fn activate(vtcr: u64, vttbr: u64) {
    // SAFETY: the values come from the crate's checked control-value
    // builders; the guest is not running. The I-cache is invalidated because
    // the guest's code was written as data.
    unsafe {
        asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "msr hcr_el2, {hcr}",
            "isb",
            "dsb ish",
            "ic ialluis",
            "tlbi vmalls12e1is",
            "dsb ish",
            "isb",
            vtcr = in(reg) vtcr, vttbr = in(reg) vttbr, hcr = in(reg) HCR_VM | HCR_RW,
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
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    host_sp: u64,
}

/// The guest's vCPU.
pub struct Vcpu {
    ctx: GuestCtx,
    esr: u64,
}

impl Vcpu {
    /// A vCPU that has not run.
    pub fn new() -> Self {
        Self {
            ctx: GuestCtx {
                x: [0; 31],
                elr: 0,
                spsr: 0,
                host_sp: 0,
            },
            esr: 0,
        }
    }

    fn run(&mut self) -> Exit {
        // SAFETY: `enter_guest` saves the host's callee-saved registers,
        // erets into the guest and comes back here on its next exception,
        // with the guest's registers in `ctx`.
        unsafe { enter_guest(&mut self.ctx) };
        let (esr, far, hpfar): (u64, u64, u64);
        // SAFETY: reading the syndrome registers has no side effects.
        unsafe {
            asm!("mrs {}, esr_el2", "mrs {}, far_el2", "mrs {}, hpfar_el2",
                 out(reg) esr, out(reg) far, out(reg) hpfar)
        };
        self.esr = esr;
        // HVC from AArch64 (ESR_EL2.EC 0x16): the guest is done.
        if esr >> 26 == 0x16 {
            return Exit::Done(self.ctx.x[0]);
        }
        let fault = match abort::decode_abort(esr, far, hpfar) {
            Ok(f) => f,
            // A stage-2 Permission fault leaves HPFAR_EL2 UNKNOWN: translate
            // FAR_EL2 through the guest's stage 1 instead.
            Err(ExitDecodeError::AddressNotReported { .. }) => {
                match abort::ipa_from_par(translate_s1e1r(far), far) {
                    Ok(gpa) => ExitFault {
                        gpa,
                        // Only Data Aborts reach here with a write; an
                        // Instruction Abort is a fetch.
                        access: if esr >> 26 == abort::EC_IABT_LOW {
                            Access::Execute
                        } else if esr & (1 << abort::ISS_WNR) != 0 {
                            Access::Write
                        } else {
                            Access::Read
                        },
                        origin: FaultOrigin::GuestAccess,
                    },
                    Err(_) => return Exit::Other(esr, self.ctx.elr, far),
                }
            }
            Err(_) => return Exit::Other(esr, self.ctx.elr, far),
        };
        Exit::Fault {
            gpa: fault.gpa.as_usize(),
            access: fault.access,
            code: esr & 0x3f,
        }
    }
}

/// `AT S1E1R` of `va` through the guest's EL1&0 stage 1: PAR_EL1, which is
/// saved and restored around it.
fn translate_s1e1r(va: u64) -> u64 {
    let par: u64;
    // SAFETY: AT only writes PAR_EL1, which is put back; the guest's stage-1
    // registers are still loaded since the exit.
    unsafe {
        asm!(
            "mrs {saved}, par_el1",
            "at s1e1r, {va}",
            "isb",
            "mrs {par}, par_el1",
            "msr par_el1, {saved}",
            va = in(reg) va, saved = out(reg) _, par = out(reg) par,
        )
    };
    par
}

impl crate::scenario::Vcpu for Vcpu {
    fn enter(&mut self, entry: usize, arg: usize) -> Exit {
        self.ctx.x = [0; 31];
        self.ctx.x[0] = arg as u64;
        self.ctx.elr = entry as u64;
        self.ctx.spsr = SPSR_EL1H_MASKED;
        self.run()
    }

    fn resume(&mut self) -> Exit {
        self.run()
    }

    fn skip(&mut self) {
        self.ctx.elr += 4;
    }

    fn flush(&mut self, flush: &TlbFlush) {
        if flush.is_empty() {
            return;
        }
        // SAFETY: TLB maintenance for the current VMID only.
        unsafe { asm!("dsb ishst") };
        if flush.is_all() {
            // SAFETY: as above.
            unsafe { asm!("tlbi vmalls12e1is", "dsb ish", "isb") };
            return;
        }
        for range in flush.ranges() {
            let mut ipa = range.start.as_usize();
            while ipa < range.end.as_usize() {
                // SAFETY: invalidates stage-2 entries of one IPA page.
                unsafe { asm!("tlbi ipas2e1is, {}", in(reg) (ipa >> 12) as u64) };
                ipa += 0x1000;
            }
        }
        // Combined stage-1+2 entries may still hold the old output: drop them.
        // SAFETY: as above.
        unsafe { asm!("dsb ish", "tlbi vmalle1is", "dsb ish", "isb") };
    }

    fn store_value(&self, _fetch: &dyn Fn(usize) -> Option<u32>) -> Option<u64> {
        // ISV: the syndrome describes the access; SRT names the register.
        if self.esr & (1 << 24) == 0 || self.esr & (1 << 6) == 0 {
            return None;
        }
        let srt = ((self.esr >> 16) & 0x1f) as usize;
        Some(if srt == 31 { 0 } else { self.ctx.x[srt] })
    }
}

/// An exception taken from EL2 itself: a hypervisor bug.
#[unsafe(no_mangle)]
extern "C" fn el2_fatal(kind: u64) -> ! {
    let (esr, elr, far): (u64, u64, u64);
    // SAFETY: reading the syndrome registers has no side effects.
    unsafe {
        asm!("mrs {}, esr_el2", "mrs {}, elr_el2", "mrs {}, far_el2", out(reg) esr, out(reg) elr, out(reg) far)
    };
    println!("EL2 exception (kind {kind}): ESR {esr:#x} ELR {elr:#x} FAR {far:#x}");
    println!("FAIL");
    exit(false)
}
