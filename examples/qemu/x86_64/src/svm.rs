//! AMD SVM: EFER.SVME, the host save area, one VMCB with nested paging
//! (nCR3 from [`Ncr3`]), VMRUN and exit decoding (AMD64 APM Vol. 2,
//! chapter 15 "Secure Virtual Machine"; VMCB layout in Appendix B).

use core::arch::{asm, global_asm};

use npt_table::TlbFlush;

use crate::arch::{self, cpuid, rdmsr, wrmsr};
use crate::exit::npf;
use crate::insn::decode_mov;
use crate::scenario::Exit;

global_asm!(include_str!("svm.S"));

/// EFER (APM Vol. 2, 3.1.7).
const MSR_EFER: u32 = 0xc000_0080;
/// EFER.SVME, bit 12: SVM enable (15.4).
const EFER_SVME: u64 = 1 << 12;
/// EFER.LME (bit 8) and EFER.LMA (bit 10): long mode enabled and active.
const EFER_LME_LMA: u64 = (1 << 8) | (1 << 10);
/// VM_CR (15.30.1); bit 4, SVMDIS, forbids setting EFER.SVME.
const MSR_VM_CR: u32 = 0xc001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
/// VM_HSAVE_PA (15.30.4): where VMRUN saves host state.
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

// VMCB control area (Appendix B, Table B-1).
/// Intercept vector 3 (offset 00Ch): bit 1 NMI, bit 24 HLT, bit 31
/// shutdown.
const VMCB_INTERCEPT_MISC1: usize = 0x00c;
const INTERCEPT_NMI: u32 = 1 << 1;
const INTERCEPT_HLT: u32 = 1 << 24;
const INTERCEPT_SHUTDOWN: u32 = 1 << 31;
/// Intercept vector 4 (offset 010h): bit 0 VMRUN (must be set, 15.5.1),
/// bit 1 VMMCALL.
const VMCB_INTERCEPT_MISC2: usize = 0x010;
const INTERCEPT_VMRUN: u32 = 1 << 0;
const INTERCEPT_VMMCALL: u32 = 1 << 1;
/// Exception intercepts, one bit per vector (offset 008h).
const VMCB_INTERCEPT_EXCEPTIONS: usize = 0x008;
/// Guest ASID (offset 058h, bits 31:0); 0 is the host's.
const VMCB_ASID: usize = 0x058;
/// TLB_CONTROL (offset 05Ch, bits 39:32 of the quadword at 058h; 15.16.1).
const VMCB_TLB_CONTROL: usize = 0x05c;
/// TLB_CONTROL 01h: flush the whole TLB on VMRUN.
const TLB_FLUSH_ALL: u8 = 0x01;
/// TLB_CONTROL 03h: flush this guest's (ASID's) entries on VMRUN; needs
/// CPUID Fn8000_000A EDX bit 6, FlushByAsid.
const TLB_FLUSH_ASID: u8 = 0x03;
/// EXITCODE, EXITINFO1, EXITINFO2 (offsets 070h, 078h, 080h).
const VMCB_EXITCODE: usize = 0x070;
const VMCB_EXITINFO1: usize = 0x078;
const VMCB_EXITINFO2: usize = 0x080;
/// Offset 090h bit 0: NP_ENABLE (15.25.3).
const VMCB_NP_CONTROL: usize = 0x090;
const NP_ENABLE: u64 = 1 << 0;
/// N_CR3 (offset 0B0h).
const VMCB_N_CR3: usize = 0x0b0;
/// VMCB clean bits (offset 0C0h, 15.15.3): 0 = reload everything.
const VMCB_CLEAN: usize = 0x0c0;

// VMCB state save area (Appendix B, Table B-2), from offset 400h.
/// Segment registers: selector (u16), attributes (u16), limit (u32), base
/// (u64), 16 bytes each from ES at 400h: ES, CS, SS, DS, FS, GS, GDTR,
/// LDTR, IDTR, TR.
const VMCB_ES: usize = 0x400;
const VMCB_CS: usize = 0x410;
const VMCB_SS: usize = 0x420;
const VMCB_DS: usize = 0x430;
const VMCB_FS: usize = 0x440;
const VMCB_GS: usize = 0x450;
const VMCB_GDTR: usize = 0x460;
const VMCB_LDTR: usize = 0x470;
const VMCB_IDTR: usize = 0x480;
const VMCB_TR: usize = 0x490;
const VMCB_CPL: usize = 0x4cb;
const VMCB_EFER: usize = 0x4d0;
const VMCB_CR4: usize = 0x548;
const VMCB_CR3: usize = 0x550;
const VMCB_CR0: usize = 0x558;
const VMCB_DR7: usize = 0x560;
const VMCB_DR6: usize = 0x568;
const VMCB_RFLAGS: usize = 0x570;
const VMCB_RIP: usize = 0x578;
const VMCB_RSP: usize = 0x5d8;
const VMCB_RAX: usize = 0x5f8;
const VMCB_G_PAT: usize = 0x668;

/// Exit codes (Appendix C): exceptions 40h + vector, HLT, shutdown,
/// VMMCALL, and VMEXIT_INVALID (-1: the VMCB failed a consistency check).
const EXIT_EXCEPTION_BASE: u64 = 0x40;
const EXIT_HLT: u64 = 0x78;
const EXIT_INVALID: u64 = u64::MAX;

/// Segment attributes in the VMCB's packed form (descriptor bits 47:40 in
/// 7:0, bits 55:52 in 11:8; 15.5.1): 64-bit code (type 0xB, S, P, L),
/// flat data (type 3, S, P, D/B, G), busy 64-bit TSS (type 0xB, P).
const ATTR_CODE64: u16 = 0x029b;
const ATTR_DATA: u16 = 0x0c93;
const ATTR_TSS: u16 = 0x008b;

/// The power-on PAT (WB, WT, UC-, UC repeated; APM Vol. 2, 7.8.1): the
/// guest's PAT while nested paging is on.
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

/// A page for the VMCB or the host save area.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

static mut VMCB: Page = Page([0; 4096]);
static mut HSAVE: Page = Page([0; 4096]);

unsafe extern "C" {
    /// Loads the guest registers from `regs` (all but RAX and RSP, which
    /// the VMCB holds), runs VMRUN with RAX = `vmcb`, and stores them back
    /// on #VMEXIT (svm.S).
    fn svm_run(vmcb: u64, regs: *mut [u64; 16]);
}

/// Whether the CPU has SVM with nested paging and firmware left it usable.
pub fn supported() -> bool {
    let ext = cpuid(0x8000_0000).0;
    if ext < 0x8000_000a || cpuid(0x8000_0001).2 & (1 << 2) == 0 {
        return false;
    }
    cpuid(0x8000_000a).3 & 1 != 0 && rdmsr(MSR_VM_CR) & VM_CR_SVMDIS == 0
}

/// The guest's virtual CPU: the VMCB and the registers VMRUN does not
/// switch.
pub struct Vcpu {
    regs: [u64; 16],
    vmcb: *mut u8,
    flush_by_asid: bool,
    /// The guest image (what the ROM holds), for decoding instructions to
    /// skip.
    image: &'static [u8],
}

impl Vcpu {
    /// Turns SVM on and prepares a VMCB with nested paging off.
    pub fn new() -> Self {
        let vmcb = core::ptr::addr_of_mut!(VMCB) as *mut u8;
        // SAFETY: SVM is supported (checked by the caller); the host save
        // area is a page nothing else uses.
        unsafe {
            wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
            wrmsr(MSR_VM_HSAVE_PA, core::ptr::addr_of!(HSAVE) as u64);
        }
        let (_, nasid, _, features) = cpuid(0x8000_000a);
        println!(
            "SVM: {} ASIDs, CPUID Fn8000_000A EDX {features:#x} (NRIPS {}, FlushByAsid {}, DecodeAssists {})",
            nasid,
            features >> 3 & 1,
            features >> 6 & 1,
            features >> 7 & 1
        );
        Self {
            regs: [0; 16],
            vmcb,
            flush_by_asid: features & (1 << 6) != 0,
            image: arch::guest_image().0,
        }
    }

    fn w64(&mut self, off: usize, v: u64) {
        // SAFETY: `off + 8` is inside the VMCB page, which only this vCPU
        // touches while the guest is not running.
        unsafe { (self.vmcb.add(off) as *mut u64).write_volatile(v) }
    }

    fn w32(&mut self, off: usize, v: u32) {
        // SAFETY: as `w64`.
        unsafe { (self.vmcb.add(off) as *mut u32).write_volatile(v) }
    }

    fn w8(&mut self, off: usize, v: u8) {
        // SAFETY: as `w64`.
        unsafe { self.vmcb.add(off).write_volatile(v) }
    }

    fn r64(&self, off: usize) -> u64 {
        // SAFETY: as `w64`.
        unsafe { (self.vmcb.add(off) as *const u64).read_volatile() }
    }

    fn segment(&mut self, off: usize, selector: u16, attr: u16, limit: u32) {
        self.w64(
            off,
            u64::from(selector) | u64::from(attr) << 16 | u64::from(limit) << 32,
        );
        self.w64(off + 8, 0);
    }

    /// Sets the control area: intercepts, ASID 1, nested paging on with
    /// `ncr3`, a full TLB flush on the first VMRUN.
    pub fn activate(&mut self, ncr3: u64) {
        self.w32(VMCB_INTERCEPT_EXCEPTIONS, u32::MAX);
        self.w32(
            VMCB_INTERCEPT_MISC1,
            INTERCEPT_NMI | INTERCEPT_HLT | INTERCEPT_SHUTDOWN,
        );
        self.w32(VMCB_INTERCEPT_MISC2, INTERCEPT_VMRUN | INTERCEPT_VMMCALL);
        self.w32(VMCB_ASID, 1);
        self.w8(VMCB_TLB_CONTROL, TLB_FLUSH_ALL);
        self.w64(VMCB_NP_CONTROL, NP_ENABLE);
        self.w64(VMCB_N_CR3, ncr3);
    }

    /// Loads the guest state for a fresh entry: 64-bit mode at CPL 0 with
    /// the image's identity tables, interrupts off.
    fn reset(&mut self, rip: u64) {
        self.segment(VMCB_CS, 0x08, ATTR_CODE64, u32::MAX);
        for off in [VMCB_ES, VMCB_SS, VMCB_DS, VMCB_FS, VMCB_GS] {
            self.segment(off, 0x10, ATTR_DATA, u32::MAX);
        }
        self.segment(VMCB_GDTR, 0, 0, 0);
        self.segment(VMCB_IDTR, 0, 0, 0);
        self.segment(VMCB_LDTR, 0, 0, 0);
        self.segment(VMCB_TR, 0, ATTR_TSS, 0x67);
        self.w8(VMCB_CPL, 0);
        self.w64(VMCB_EFER, EFER_LME_LMA | EFER_SVME);
        // CR0: PG | NE | ET | PE. CR4: PAE.
        self.w64(VMCB_CR0, 0x8000_0031);
        self.w64(VMCB_CR3, arch::GUEST_TABLES_GPA as u64);
        self.w64(VMCB_CR4, 1 << 5);
        self.w64(VMCB_DR6, 0xffff_0ff0);
        self.w64(VMCB_DR7, 0x400);
        self.w64(VMCB_RFLAGS, 0x2);
        self.w64(VMCB_RIP, rip);
        self.w64(VMCB_RSP, 0);
        self.w64(VMCB_RAX, 0);
        self.w64(VMCB_G_PAT, DEFAULT_PAT);
    }

    fn run(&mut self) -> Exit {
        self.w32(VMCB_CLEAN, 0);
        // SAFETY: the VMCB holds a consistent guest (set by `reset`) and
        // the nested root the space owns; `svm_run` saves and restores the
        // host's callee-saved registers and VMRUN/#VMEXIT switch the rest.
        unsafe {
            asm!("cli");
            svm_run(self.vmcb as u64, &mut self.regs);
        }
        self.w8(VMCB_TLB_CONTROL, 0);
        let code = self.r64(VMCB_EXITCODE);
        let info1 = self.r64(VMCB_EXITINFO1);
        let info2 = self.r64(VMCB_EXITINFO2);
        let rip = self.r64(VMCB_RIP);
        match code {
            EXIT_HLT => Exit::Done(self.r64(VMCB_RAX)),
            npf::EXITCODE => match npf::decode(info1, info2) {
                Some((gpa, access)) => Exit::Fault {
                    gpa,
                    access,
                    code: info1,
                },
                None => Exit::Other(code, rip, info1),
            },
            EXIT_INVALID => {
                println!("VMRUN: VMEXIT_INVALID (VMCB consistency check failed)");
                Exit::Other(code, rip, info1)
            }
            c if (EXIT_EXCEPTION_BASE..EXIT_EXCEPTION_BASE + 32).contains(&c) => {
                println!(
                    "guest exception {} (error {info1:#x})",
                    c - EXIT_EXCEPTION_BASE
                );
                Exit::Other(code, rip, info2)
            }
            _ => Exit::Other(code, rip, info1),
        }
    }

    /// The instruction at the guest's RIP, from the image the ROM holds.
    fn insn_at_rip(&self) -> Option<crate::insn::Mov> {
        let off = (self.r64(VMCB_RIP) as usize).checked_sub(arch::ROM_GPA)?;
        decode_mov(self.image.get(off..)?)
    }
}

impl crate::scenario::Vcpu for Vcpu {
    fn enter(&mut self, entry: usize, arg: usize) -> Exit {
        self.regs = [0; 16];
        self.regs[7] = arg as u64;
        self.reset(entry as u64);
        self.run()
    }

    fn resume(&mut self) -> Exit {
        self.run()
    }

    fn skip(&mut self) {
        if let Some(mov) = self.insn_at_rip() {
            let rip = self.r64(VMCB_RIP);
            self.w64(VMCB_RIP, rip + mov.len as u64);
        }
    }

    /// Nested-paging changes are flushed per ASID (TLB_CONTROL 03h, or a
    /// full flush without FlushByAsid) on the next VMRUN: INVLPGA takes a
    /// guest-virtual address, so it cannot drop a GPA translation (15.16).
    fn flush(&mut self, flush: &TlbFlush) {
        if flush.is_empty() {
            return;
        }
        let control = if self.flush_by_asid {
            TLB_FLUSH_ASID
        } else {
            TLB_FLUSH_ALL
        };
        self.w8(VMCB_TLB_CONTROL, control);
    }

    fn store_value(&self, fetch: &dyn Fn(usize) -> Option<u32>) -> Option<u64> {
        // Paging is identity in the guest, so RIP is a GPA.
        let rip = self.r64(VMCB_RIP) as usize;
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&fetch(rip)?.to_le_bytes());
        bytes[4..].copy_from_slice(&fetch(rip + 4)?.to_le_bytes());
        let mov = decode_mov(&bytes)?;
        if !mov.store {
            return None;
        }
        let value = if mov.reg == 0 {
            self.r64(VMCB_RAX)
        } else {
            self.regs[mov.reg]
        };
        Some(match mov.size {
            1 => value & 0xff,
            4 => value & 0xffff_ffff,
            _ => value,
        })
    }
}

impl crate::extras::X86Vcpu for Vcpu {
    fn return_to_r14(&mut self) {
        self.w64(VMCB_RIP, self.regs[14]);
    }
}
