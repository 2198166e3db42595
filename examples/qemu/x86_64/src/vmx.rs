//! Intel VMX: VMXON, one VMCS with EPT (EPTP from [`Eptp`]), a 64-bit
//! guest, VMLAUNCH/VMRESUME and exit decoding (Intel SDM Vol. 3C, chapters
//! 24-29; VMCS field encodings in Vol. 3D, Appendix B).
//!
//! [`Eptp`]: npt_entry::ept::Eptp

use core::arch::{asm, global_asm};

use npt_table::TlbFlush;

use crate::arch::{self, cpuid, rdmsr, wrmsr};
use crate::exit::ept;
use crate::insn::decode_mov;
use crate::scenario::Exit;

global_asm!(include_str!("vmx.S"));

/// IA32_FEATURE_CONTROL (SDM Vol. 3C, 24.7): bit 0 lock, bit 2 VMXON
/// outside SMX.
const MSR_FEATURE_CONTROL: u32 = 0x3a;
const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
const FEATURE_CONTROL_VMXON: u64 = 1 << 2;
/// VMX capability MSRs (SDM Vol. 3D, Appendix A).
const MSR_VMX_BASIC: u32 = 0x480;
const MSR_VMX_PINBASED_CTLS: u32 = 0x481;
const MSR_VMX_PROCBASED_CTLS: u32 = 0x482;
const MSR_VMX_EXIT_CTLS: u32 = 0x483;
const MSR_VMX_ENTRY_CTLS: u32 = 0x484;
const MSR_VMX_CR0_FIXED0: u32 = 0x486;
const MSR_VMX_CR0_FIXED1: u32 = 0x487;
const MSR_VMX_CR4_FIXED0: u32 = 0x488;
const MSR_VMX_CR4_FIXED1: u32 = 0x489;
const MSR_VMX_PROCBASED_CTLS2: u32 = 0x48b;
const MSR_VMX_EPT_VPID_CAP: u32 = 0x48c;
const MSR_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
const MSR_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
const MSR_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
const MSR_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
/// IA32_VMX_BASIC bit 55: the TRUE control MSRs exist (A.1).
const BASIC_TRUE_CTLS: u64 = 1 << 55;
/// IA32_VMX_EPT_VPID_CAP (A.10): execute-only leaves (bit 0), 4-level
/// walks (6), WB tables (14),
/// 2 MiB (16) and 1 GiB (17) leaves, INVEPT (20), A/D flags (21),
/// single-context (25) and all-context (26) INVEPT.
const EPT_CAP_EXEC_ONLY: u64 = 1 << 0;
const EPT_CAP_WALK4: u64 = 1 << 6;
const EPT_CAP_WB: u64 = 1 << 14;
const EPT_CAP_2M: u64 = 1 << 16;
const EPT_CAP_1G: u64 = 1 << 17;
const EPT_CAP_INVEPT: u64 = 1 << 20;
const EPT_CAP_AD: u64 = 1 << 21;
const EPT_CAP_INVEPT_SINGLE: u64 = 1 << 25;
/// CR4.VMXE, bit 13.
const CR4_VMXE: u64 = 1 << 13;
const MSR_EFER: u32 = 0xc000_0080;
/// EFER.LME | EFER.LMA.
const EFER_LME_LMA: u64 = (1 << 8) | (1 << 10);

// VM-execution, exit and entry controls (SDM Vol. 3C, 25.6-25.8).
/// Primary processor-based: HLT exiting (bit 7), use MSR bitmaps (28),
/// activate secondary controls (31). I/O is not intercepted (bits 24, 25
/// clear), so port 0xE9 output passes through.
const PROC_HLT_EXITING: u32 = 1 << 7;
const PROC_USE_MSR_BITMAPS: u32 = 1 << 28;
const PROC_SECONDARY: u32 = 1 << 31;
/// Secondary: enable EPT (bit 1), enable VPID (bit 5). With a VPID the
/// guest's combined (linear + guest-physical) translations survive VM exits
/// and entries (SDM Vol. 3C, 29.1.3), so only INVEPT drops a stale one.
const PROC2_ENABLE_EPT: u32 = 1 << 1;
const PROC2_ENABLE_VPID: u32 = 1 << 5;
/// The guest's VPID (0 is the host's).
const GUEST_VPID: u64 = 1;
/// Exit: host address-space size (bit 9), load IA32_EFER (21).
const EXIT_HOST_64: u32 = 1 << 9;
const EXIT_LOAD_EFER: u32 = 1 << 21;
/// Entry: IA-32e mode guest (bit 9), load IA32_EFER (15).
const ENTRY_IA32E: u32 = 1 << 9;
const ENTRY_LOAD_EFER: u32 = 1 << 15;

// VMCS field encodings (SDM Vol. 3D, Appendix B).
const VMCS_VPID: u64 = 0x0000;
const VMCS_GUEST_ES_SEL: u64 = 0x0800;
const VMCS_GUEST_CS_SEL: u64 = 0x0802;
const VMCS_GUEST_SS_SEL: u64 = 0x0804;
const VMCS_GUEST_DS_SEL: u64 = 0x0806;
const VMCS_GUEST_FS_SEL: u64 = 0x0808;
const VMCS_GUEST_GS_SEL: u64 = 0x080a;
const VMCS_GUEST_LDTR_SEL: u64 = 0x080c;
const VMCS_GUEST_TR_SEL: u64 = 0x080e;
const VMCS_HOST_ES_SEL: u64 = 0x0c00;
const VMCS_HOST_CS_SEL: u64 = 0x0c02;
const VMCS_HOST_SS_SEL: u64 = 0x0c04;
const VMCS_HOST_DS_SEL: u64 = 0x0c06;
const VMCS_HOST_FS_SEL: u64 = 0x0c08;
const VMCS_HOST_GS_SEL: u64 = 0x0c0a;
const VMCS_HOST_TR_SEL: u64 = 0x0c0c;
const VMCS_MSR_BITMAP: u64 = 0x2004;
const VMCS_EPTP: u64 = 0x201a;
const VMCS_GUEST_PHYS_ADDR: u64 = 0x2400;
const VMCS_LINK_POINTER: u64 = 0x2800;
const VMCS_GUEST_DEBUGCTL: u64 = 0x2802;
const VMCS_GUEST_EFER: u64 = 0x2806;
const VMCS_HOST_EFER: u64 = 0x2c02;
const VMCS_PIN_CONTROLS: u64 = 0x4000;
const VMCS_PROC_CONTROLS: u64 = 0x4002;
const VMCS_EXCEPTION_BITMAP: u64 = 0x4004;
const VMCS_PF_MASK: u64 = 0x4006;
const VMCS_PF_MATCH: u64 = 0x4008;
const VMCS_CR3_TARGET_COUNT: u64 = 0x400a;
const VMCS_EXIT_CONTROLS: u64 = 0x400c;
const VMCS_EXIT_MSR_STORE_COUNT: u64 = 0x400e;
const VMCS_EXIT_MSR_LOAD_COUNT: u64 = 0x4010;
const VMCS_ENTRY_CONTROLS: u64 = 0x4012;
const VMCS_ENTRY_MSR_LOAD_COUNT: u64 = 0x4014;
const VMCS_ENTRY_INTR_INFO: u64 = 0x4016;
const VMCS_PROC_CONTROLS2: u64 = 0x401e;
const VMCS_INSTRUCTION_ERROR: u64 = 0x4400;
const VMCS_EXIT_REASON: u64 = 0x4402;
const VMCS_EXIT_INTR_INFO: u64 = 0x4404;
const VMCS_GUEST_ES_LIMIT: u64 = 0x4800;
const VMCS_GUEST_ES_AR: u64 = 0x4814;
const VMCS_GUEST_GDTR_LIMIT: u64 = 0x4810;
const VMCS_GUEST_IDTR_LIMIT: u64 = 0x4812;
const VMCS_GUEST_INTERRUPTIBILITY: u64 = 0x4824;
const VMCS_GUEST_ACTIVITY: u64 = 0x4826;
const VMCS_GUEST_SYSENTER_CS: u64 = 0x482a;
const VMCS_HOST_SYSENTER_CS: u64 = 0x4c00;
const VMCS_CR0_MASK: u64 = 0x6000;
const VMCS_CR4_MASK: u64 = 0x6002;
const VMCS_EXIT_QUALIFICATION: u64 = 0x6400;
const VMCS_GUEST_CR0: u64 = 0x6800;
const VMCS_GUEST_CR3: u64 = 0x6802;
const VMCS_GUEST_CR4: u64 = 0x6804;
const VMCS_GUEST_ES_BASE: u64 = 0x6806;
const VMCS_GUEST_GDTR_BASE: u64 = 0x6816;
const VMCS_GUEST_IDTR_BASE: u64 = 0x6818;
const VMCS_GUEST_DR7: u64 = 0x681a;
const VMCS_GUEST_RSP: u64 = 0x681c;
const VMCS_GUEST_RIP: u64 = 0x681e;
const VMCS_GUEST_RFLAGS: u64 = 0x6820;
const VMCS_GUEST_PENDING_DBG: u64 = 0x6822;
const VMCS_GUEST_SYSENTER_ESP: u64 = 0x6824;
const VMCS_GUEST_SYSENTER_EIP: u64 = 0x6826;
const VMCS_HOST_CR0: u64 = 0x6c00;
const VMCS_HOST_CR3: u64 = 0x6c02;
const VMCS_HOST_CR4: u64 = 0x6c04;
const VMCS_HOST_FS_BASE: u64 = 0x6c06;
const VMCS_HOST_GS_BASE: u64 = 0x6c08;
const VMCS_HOST_TR_BASE: u64 = 0x6c0a;
const VMCS_HOST_GDTR_BASE: u64 = 0x6c0c;
const VMCS_HOST_IDTR_BASE: u64 = 0x6c0e;
const VMCS_HOST_SYSENTER_ESP: u64 = 0x6c10;
const VMCS_HOST_SYSENTER_EIP: u64 = 0x6c12;

/// Basic exit reasons (SDM Vol. 3D, Appendix C).
const EXIT_EXCEPTION: u32 = 0;
const EXIT_TRIPLE_FAULT: u32 = 2;
const EXIT_HLT: u32 = 12;
/// Exit reason bit 31: VM-entry failure.
const EXIT_ENTRY_FAILURE: u32 = 1 << 31;

/// Guest segment access rights (SDM Vol. 3C, 25.4.1, Table 25-2): 64-bit
/// code (type 0xB, S, P, L, G), flat data (type 3, S, P, D/B, G), busy
/// 64-bit TSS (type 0xB, P), unusable (bit 16).
const AR_CODE64: u64 = 0xa09b;
const AR_DATA: u64 = 0xc093;
const AR_TSS: u64 = 0x008b;
const AR_UNUSABLE: u64 = 1 << 16;

/// Host TR selector (the TSS descriptor in boot.S's GDT).
const HOST_TR: u16 = 0x18;

/// A 4 KiB VMX region (VMXON, VMCS, MSR bitmap).
#[repr(C, align(4096))]
struct Page([u8; 4096]);

static mut VMXON_REGION: Page = Page([0; 4096]);
static mut VMCS_REGION: Page = Page([0; 4096]);
static mut MSR_BITMAP: Page = Page([0; 4096]);
/// The host TSS: only its existence matters (no privilege changes).
static mut TSS: [u32; 26] = [0; 26];

unsafe extern "C" {
    static mut gdt: [u64; 5];
    /// Enters the guest (vmx.S); 0 after a VM exit, 1 on VM-entry failure.
    fn vmx_run(regs: *mut [u64; 16], launched: u64) -> u64;
}

/// Whether the CPU reports VMX.
pub fn supported() -> bool {
    cpuid(1).2 & (1 << 5) != 0
}

fn vmwrite(field: u64, value: u64) {
    let ok: u8;
    // SAFETY: a current VMCS is loaded (after `Vcpu::new`); VMWRITE to a
    // valid field only changes that VMCS.
    unsafe {
        asm!("vmwrite {f}, {v}", "setna {ok}", f = in(reg) field, v = in(reg) value, ok = out(reg_byte) ok)
    };
    if ok != 0 {
        println!("vmwrite {field:#x} = {value:#x} failed");
    }
}

fn vmread(field: u64) -> u64 {
    let value: u64;
    // SAFETY: as `vmwrite`; VMREAD has no side effects.
    unsafe { asm!("vmread {v}, {f}", f = in(reg) field, v = out(reg) value) };
    value
}

/// `want` adjusted to a control capability MSR: bits 31:0 must be 1,
/// bits 63:32 may be 1 (SDM Vol. 3D, A.3).
fn adjust(msr: u32, want: u32) -> u32 {
    let cap = rdmsr(msr);
    (want | cap as u32) & (cap >> 32) as u32
}

/// The guest's virtual CPU.
pub struct Vcpu {
    regs: [u64; 16],
    launched: bool,
    eptp: u64,
    ept_caps: u64,
    guest_cr0: u64,
    guest_cr4: u64,
    load_efer: bool,
    image: &'static [u8],
}

impl Vcpu {
    /// VMXON, a fresh VMCS with host state and controls; `None` with a
    /// message when the CPU lacks what the example needs.
    pub fn new() -> Option<Self> {
        let fc = rdmsr(MSR_FEATURE_CONTROL);
        if fc & FEATURE_CONTROL_LOCK == 0 {
            // SAFETY: the firmware left the MSR unlocked; allowing VMXON
            // and locking it is what firmware does.
            unsafe {
                wrmsr(
                    MSR_FEATURE_CONTROL,
                    fc | FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMXON,
                )
            };
        } else if fc & FEATURE_CONTROL_VMXON == 0 {
            println!("VMX: disabled by IA32_FEATURE_CONTROL");
            return None;
        }
        let basic = rdmsr(MSR_VMX_BASIC);
        let ept_caps = rdmsr(MSR_VMX_EPT_VPID_CAP);
        println!(
            "VMX: basic {basic:#x}, EPT/VPID caps {ept_caps:#x} (execute-only {}, 4-level {}, WB {}, 2M {}, 1G {}, INVEPT {}, single-context {}, A/D {})",
            ept_caps & EPT_CAP_EXEC_ONLY != 0,
            ept_caps & EPT_CAP_WALK4 != 0,
            ept_caps & EPT_CAP_WB != 0,
            ept_caps & EPT_CAP_2M != 0,
            ept_caps & EPT_CAP_1G != 0,
            ept_caps & EPT_CAP_INVEPT != 0,
            ept_caps & EPT_CAP_INVEPT_SINGLE != 0,
            ept_caps & EPT_CAP_AD != 0,
        );
        let revision = (basic & 0x7fff_ffff) as u32;
        let fixed = |v: u64, f0: u32, f1: u32| (v | rdmsr(f0)) & rdmsr(f1);
        let (cr0, cr4): (u64, u64);
        // SAFETY: reading control registers has no side effects.
        unsafe { asm!("mov {}, cr0", "mov {}, cr4", out(reg) cr0, out(reg) cr4) };
        let host_cr0 = fixed(cr0, MSR_VMX_CR0_FIXED0, MSR_VMX_CR0_FIXED1);
        let host_cr4 = fixed(cr4 | CR4_VMXE, MSR_VMX_CR4_FIXED0, MSR_VMX_CR4_FIXED1);
        let vmxon = core::ptr::addr_of_mut!(VMXON_REGION) as u64;
        let vmcs = core::ptr::addr_of_mut!(VMCS_REGION) as u64;
        let failed: u8;
        // SAFETY: CR0/CR4 take values the fixed-bit MSRs allow; the VMXON
        // region and VMCS are 4 KiB pages nothing else uses, each starting
        // with the revision identifier (SDM Vol. 3C, 25.2, 25.11.5).
        unsafe {
            (vmxon as *mut u32).write_volatile(revision);
            (vmcs as *mut u32).write_volatile(revision);
            asm!("mov cr0, {}", "mov cr4, {}", in(reg) host_cr0, in(reg) host_cr4);
            asm!(
                "vmxon [{on}]",
                "setna {f}",
                "vmclear [{cs}]",
                "vmptrld [{cs}]",
                "adc {f}, 0",
                on = in(reg) &vmxon,
                cs = in(reg) &vmcs,
                f = out(reg_byte) failed,
            );
        }
        if failed != 0 {
            println!("VMX: VMXON/VMCLEAR/VMPTRLD failed");
            return None;
        }
        let true_ctls = basic & BASIC_TRUE_CTLS != 0;
        let (pin_msr, proc_msr, exit_msr, entry_msr) = if true_ctls {
            (
                MSR_VMX_TRUE_PINBASED_CTLS,
                MSR_VMX_TRUE_PROCBASED_CTLS,
                MSR_VMX_TRUE_EXIT_CTLS,
                MSR_VMX_TRUE_ENTRY_CTLS,
            )
        } else {
            (
                MSR_VMX_PINBASED_CTLS,
                MSR_VMX_PROCBASED_CTLS,
                MSR_VMX_EXIT_CTLS,
                MSR_VMX_ENTRY_CTLS,
            )
        };
        let proc = adjust(
            proc_msr,
            PROC_HLT_EXITING | PROC_USE_MSR_BITMAPS | PROC_SECONDARY,
        );
        let proc2 = adjust(
            MSR_VMX_PROCBASED_CTLS2,
            PROC2_ENABLE_EPT | PROC2_ENABLE_VPID,
        );
        let exit = adjust(exit_msr, EXIT_HOST_64 | EXIT_LOAD_EFER);
        let entry = adjust(entry_msr, ENTRY_IA32E | ENTRY_LOAD_EFER);
        let need = [
            (
                proc,
                PROC_HLT_EXITING | PROC_SECONDARY,
                "HLT exiting, secondary controls",
            ),
            (proc2, PROC2_ENABLE_EPT, "EPT"),
            (exit, EXIT_HOST_64, "64-bit host"),
            (entry, ENTRY_IA32E, "IA-32e mode guest"),
        ];
        for (have, bits, what) in need {
            if have & bits != bits {
                println!("VMX: no {what}");
                return None;
            }
        }
        let load_efer = exit & EXIT_LOAD_EFER != 0 && entry & ENTRY_LOAD_EFER != 0;
        let mut exit = exit;
        let mut entry = entry;
        if !load_efer {
            exit &= !EXIT_LOAD_EFER;
            entry &= !ENTRY_LOAD_EFER;
        }
        vmwrite(VMCS_PIN_CONTROLS, u64::from(adjust(pin_msr, 0)));
        vmwrite(VMCS_PROC_CONTROLS, u64::from(proc));
        vmwrite(VMCS_PROC_CONTROLS2, u64::from(proc2));
        if proc2 & PROC2_ENABLE_VPID != 0 {
            vmwrite(VMCS_VPID, GUEST_VPID);
        }
        println!(
            "VMX: VPID {}",
            if proc2 & PROC2_ENABLE_VPID != 0 {
                "on"
            } else {
                "off"
            }
        );
        vmwrite(VMCS_EXIT_CONTROLS, u64::from(exit));
        vmwrite(VMCS_ENTRY_CONTROLS, u64::from(entry));
        vmwrite(VMCS_EXCEPTION_BITMAP, u64::from(u32::MAX));
        vmwrite(VMCS_PF_MASK, 0);
        vmwrite(VMCS_PF_MATCH, 0);
        vmwrite(VMCS_CR3_TARGET_COUNT, 0);
        vmwrite(VMCS_EXIT_MSR_STORE_COUNT, 0);
        vmwrite(VMCS_EXIT_MSR_LOAD_COUNT, 0);
        vmwrite(VMCS_ENTRY_MSR_LOAD_COUNT, 0);
        vmwrite(VMCS_ENTRY_INTR_INFO, 0);
        vmwrite(VMCS_MSR_BITMAP, core::ptr::addr_of!(MSR_BITMAP) as u64);
        vmwrite(VMCS_CR0_MASK, 0);
        vmwrite(VMCS_CR4_MASK, 0);
        vmwrite(VMCS_LINK_POINTER, u64::MAX);
        Self::host_state(host_cr0, host_cr4);
        Some(Self {
            regs: [0; 16],
            launched: false,
            eptp: 0,
            ept_caps,
            guest_cr0: fixed(0x8000_0031, MSR_VMX_CR0_FIXED0, MSR_VMX_CR0_FIXED1),
            guest_cr4: fixed(1 << 5, MSR_VMX_CR4_FIXED0, MSR_VMX_CR4_FIXED1),
            load_efer,
            image: arch::guest_image().0,
        })
    }

    /// Host-state fields: the running CR0/CR3/CR4, flat selectors, a TSS
    /// (filled into the GDT and loaded: a VM exit needs a non-null TR).
    fn host_state(cr0: u64, cr4: u64) {
        let tss = core::ptr::addr_of!(TSS) as u64;
        let limit = (core::mem::size_of::<[u32; 26]>() - 1) as u64;
        let cr3: u64;
        let mut gdtr = [0u8; 10];
        let mut idtr = [0u8; 10];
        // SAFETY: the GDT's slots 3-4 are reserved for this descriptor
        // (boot.S); LTR marks it busy, which is what a VM exit expects.
        unsafe {
            let g = &mut *core::ptr::addr_of_mut!(gdt);
            // 64-bit TSS descriptor (SDM Vol. 3A, 8.2.3, Figure 8-4): limit
            // 15:0, base 23:0, type 9 (available), P, base 31:24, base 63:32.
            g[3] = (limit & 0xffff)
                | (tss & 0xff_ffff) << 16
                | (0x89 << 40)
                | ((tss >> 24) & 0xff) << 56;
            g[4] = tss >> 32;
            asm!("ltr {0:x}", in(reg) HOST_TR);
            asm!("mov {}, cr3", "sgdt [{}]", "sidt [{}]", out(reg) cr3, in(reg) gdtr.as_mut_ptr(), in(reg) idtr.as_mut_ptr());
        }
        let base = |d: [u8; 10]| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[2..10]);
            u64::from_le_bytes(b)
        };
        vmwrite(VMCS_HOST_CR0, cr0);
        vmwrite(VMCS_HOST_CR3, cr3);
        vmwrite(VMCS_HOST_CR4, cr4);
        vmwrite(VMCS_HOST_CS_SEL, 0x08);
        for f in [
            VMCS_HOST_ES_SEL,
            VMCS_HOST_SS_SEL,
            VMCS_HOST_DS_SEL,
            VMCS_HOST_FS_SEL,
            VMCS_HOST_GS_SEL,
        ] {
            vmwrite(f, 0x10);
        }
        vmwrite(VMCS_HOST_TR_SEL, u64::from(HOST_TR));
        vmwrite(VMCS_HOST_FS_BASE, 0);
        vmwrite(VMCS_HOST_GS_BASE, 0);
        vmwrite(VMCS_HOST_TR_BASE, tss);
        vmwrite(VMCS_HOST_GDTR_BASE, base(gdtr));
        vmwrite(VMCS_HOST_IDTR_BASE, base(idtr));
        vmwrite(VMCS_HOST_SYSENTER_CS, 0);
        vmwrite(VMCS_HOST_SYSENTER_ESP, 0);
        vmwrite(VMCS_HOST_SYSENTER_EIP, 0);
        vmwrite(VMCS_HOST_EFER, rdmsr(MSR_EFER));
    }

    /// Whether the EPT capabilities cover the space: 4-level walks, WB
    /// tables, 2 MiB and 1 GiB leaves.
    pub fn ept_ok(&self) -> bool {
        let need = EPT_CAP_WALK4 | EPT_CAP_WB | EPT_CAP_2M | EPT_CAP_1G;
        self.ept_caps & need == need
    }

    /// Whether the EPT can set accessed and dirty flags (EPTP bit 6).
    pub fn ept_ad(&self) -> bool {
        self.ept_caps & EPT_CAP_AD != 0
    }

    /// Installs the EPTP.
    pub fn activate(&mut self, eptp: u64) {
        self.eptp = eptp;
        vmwrite(VMCS_EPTP, eptp);
        self.invept();
    }

    /// INVEPT for this EPTP (single-context, or all-context when that is
    /// all the CPU has; SDM Vol. 3C, 29.4.3.1, and the INVEPT reference in
    /// Vol. 2A).
    fn invept(&self) {
        if self.ept_caps & EPT_CAP_INVEPT == 0 {
            return;
        }
        let kind: u64 = if self.ept_caps & EPT_CAP_INVEPT_SINGLE != 0 {
            1
        } else {
            2
        };
        let desc: [u64; 2] = [self.eptp, 0];
        // SAFETY: INVEPT only drops cached translations.
        unsafe { asm!("invept {}, [{}]", in(reg) kind, in(reg) desc.as_ptr()) };
    }

    /// A fresh 64-bit guest at `rip` with the image's identity tables.
    fn reset(&mut self, rip: u64) {
        let segs = [
            (VMCS_GUEST_ES_SEL, 0x10, AR_DATA),
            (VMCS_GUEST_CS_SEL, 0x08, AR_CODE64),
            (VMCS_GUEST_SS_SEL, 0x10, AR_DATA),
            (VMCS_GUEST_DS_SEL, 0x10, AR_DATA),
            (VMCS_GUEST_FS_SEL, 0x10, AR_DATA),
            (VMCS_GUEST_GS_SEL, 0x10, AR_DATA),
            (VMCS_GUEST_LDTR_SEL, 0, AR_UNUSABLE),
            (VMCS_GUEST_TR_SEL, 0x18, AR_TSS),
        ];
        // Selector, limit, access rights and base fields of segment `i`
        // are at the same index in their groups.
        for (i, (sel, value, ar)) in segs.into_iter().enumerate() {
            let i = i as u64 * 2;
            vmwrite(sel, value);
            vmwrite(
                VMCS_GUEST_ES_LIMIT + i,
                if ar == AR_TSS { 0x67 } else { 0xffff_ffff },
            );
            vmwrite(VMCS_GUEST_ES_AR + i, ar);
            vmwrite(VMCS_GUEST_ES_BASE + i, 0);
        }
        vmwrite(VMCS_GUEST_GDTR_BASE, 0);
        vmwrite(VMCS_GUEST_GDTR_LIMIT, 0);
        vmwrite(VMCS_GUEST_IDTR_BASE, 0);
        vmwrite(VMCS_GUEST_IDTR_LIMIT, 0);
        vmwrite(VMCS_GUEST_CR0, self.guest_cr0);
        vmwrite(VMCS_GUEST_CR3, arch::GUEST_TABLES_GPA as u64);
        vmwrite(VMCS_GUEST_CR4, self.guest_cr4);
        vmwrite(VMCS_GUEST_DR7, 0x400);
        vmwrite(VMCS_GUEST_RSP, 0);
        vmwrite(VMCS_GUEST_RIP, rip);
        vmwrite(VMCS_GUEST_RFLAGS, 0x2);
        vmwrite(VMCS_GUEST_PENDING_DBG, 0);
        vmwrite(VMCS_GUEST_INTERRUPTIBILITY, 0);
        vmwrite(VMCS_GUEST_ACTIVITY, 0);
        vmwrite(VMCS_GUEST_SYSENTER_CS, 0);
        vmwrite(VMCS_GUEST_SYSENTER_ESP, 0);
        vmwrite(VMCS_GUEST_SYSENTER_EIP, 0);
        vmwrite(VMCS_GUEST_DEBUGCTL, 0);
        if self.load_efer {
            vmwrite(VMCS_GUEST_EFER, EFER_LME_LMA);
        }
    }

    fn run(&mut self) -> Exit {
        // SAFETY: the VMCS is current and complete (controls and host state
        // from `new`, guest state from `reset`, EPTP from `activate`);
        // `vmx_run` saves and restores the host's callee-saved registers.
        let failed = unsafe { vmx_run(&mut self.regs, u64::from(self.launched)) };
        if failed != 0 {
            let err = vmread(VMCS_INSTRUCTION_ERROR);
            println!("VM entry instruction failed, VM-instruction error {err}");
            return Exit::Other(u64::MAX, 0, err);
        }
        self.launched = true;
        let reason = vmread(VMCS_EXIT_REASON) as u32;
        let qual = vmread(VMCS_EXIT_QUALIFICATION);
        let rip = vmread(VMCS_GUEST_RIP);
        if reason & EXIT_ENTRY_FAILURE != 0 {
            println!("VM entry failed: reason {reason:#x}, qualification {qual:#x}");
            self.launched = false;
            return Exit::Other(u64::from(reason), rip, qual);
        }
        match reason & 0xffff {
            EXIT_HLT => Exit::Done(self.regs[0]),
            ept::VIOLATION => match ept::decode(qual, vmread(VMCS_GUEST_PHYS_ADDR)) {
                Some((gpa, access)) => Exit::Fault {
                    gpa,
                    access,
                    code: qual,
                },
                None => Exit::Other(u64::from(reason), rip, qual),
            },
            ept::MISCONFIG => {
                println!(
                    "EPT misconfiguration at GPA {:#x}",
                    vmread(VMCS_GUEST_PHYS_ADDR)
                );
                Exit::Other(u64::from(reason), rip, vmread(VMCS_GUEST_PHYS_ADDR))
            }
            EXIT_EXCEPTION => {
                let info = vmread(VMCS_EXIT_INTR_INFO);
                println!("guest exception {} (qualification {qual:#x})", info & 0xff);
                Exit::Other(u64::from(reason), rip, info)
            }
            EXIT_TRIPLE_FAULT => {
                println!("guest triple fault");
                Exit::Other(u64::from(reason), rip, qual)
            }
            r => Exit::Other(u64::from(r), rip, qual),
        }
    }

    fn insn_at_rip(&self) -> Option<crate::insn::Mov> {
        let off = (vmread(VMCS_GUEST_RIP) as usize).checked_sub(arch::ROM_GPA)?;
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
            vmwrite(VMCS_GUEST_RIP, vmread(VMCS_GUEST_RIP) + mov.len as u64);
        }
    }

    /// Any change: INVEPT for this EPTP (EPT has no per-GPA invalidation).
    fn flush(&mut self, flush: &TlbFlush) {
        if !flush.is_empty() {
            self.invept();
        }
    }

    fn store_value(&self, fetch: &dyn Fn(usize) -> Option<u32>) -> Option<u64> {
        let rip = vmread(VMCS_GUEST_RIP) as usize;
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&fetch(rip)?.to_le_bytes());
        bytes[4..].copy_from_slice(&fetch(rip + 4)?.to_le_bytes());
        let mov = decode_mov(&bytes)?;
        if !mov.store {
            return None;
        }
        let value = self.regs[mov.reg];
        Some(match mov.size {
            1 => value & 0xff,
            4 => value & 0xffff_ffff,
            _ => value,
        })
    }
}

impl crate::extras::X86Vcpu for Vcpu {
    fn return_to_r14(&mut self) {
        vmwrite(VMCS_GUEST_RIP, self.regs[14]);
    }
}
