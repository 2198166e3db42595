//! `guest_walk`: the guest controls its own page tables, so a GVA walk gets
//! arbitrary bytes as guest memory, an arbitrary regime (x86-64, AArch64,
//! RISC-V) and arbitrary addresses.
//!
//! Every walk returns a translation or a typed `GvaFault`, never panics,
//! reads at most `paging.max_levels()` entries (each 8-byte aligned), is
//! deterministic, and a translation keeps the GVA's offset inside its page.
#![no_main]

use std::cell::Cell;

use arbitrary::Arbitrary;
use gpa_types::{GuestPhysAddr, GuestVirtAddr, PageSize};
use guest_aspace::gva::{GuestPaging, GuestPhysRead, GvaFault, MAX_LEVELS, walk};
use libfuzzer_sys::fuzz_target;

/// Guest memory: `bytes` at `base`; with `wrap`, every address reads the
/// buffer at `addr % len` so that arbitrary pointers land in it.
struct Mem<'a> {
    base: u64,
    bytes: &'a [u8],
    wrap: bool,
    reads: Cell<usize>,
}

impl GuestPhysRead for Mem<'_> {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64> {
        self.reads.set(self.reads.get() + 1);
        let addr = gpa.as_usize() as u64;
        assert_eq!(addr % 8, 0, "unaligned table read at {addr:#x}");
        let len = self.bytes.len() as u64 & !7;
        if len == 0 {
            return None;
        }
        let off = if self.wrap {
            addr.wrapping_sub(self.base) % len
        } else {
            let off = addr.checked_sub(self.base)?;
            if off + 8 > len {
                return None;
            }
            off
        };
        let off = off as usize & !7;
        let chunk: [u8; 8] = self.bytes.get(off..off + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(chunk))
    }
}

/// A register value: raw, or the memory base plus a page offset.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Reg {
    Base(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Regime {
    X86 {
        cr3: Reg,
        la57: bool,
        nxe: bool,
        maxphyaddr: u8,
    },
    Arm {
        ttbr0: Reg,
        ttbr1: Reg,
        t0sz: u8,
        t1sz: u8,
    },
    Riscv {
        mode: u8,
        ppn: Reg,
        asid: u16,
        pbmte: bool,
        raw: Option<u64>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    regime: Regime,
    base: Reg,
    wrap: bool,
    gvas: Vec<u64>,
    memory: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let base = match input.base {
        Reg::Base(p) => u64::from(p) << 12,
        Reg::Raw(v) => v & !0xfff,
    };
    let reg = |r: Reg| match r {
        Reg::Base(p) => base.wrapping_add(u64::from(p) << 12),
        Reg::Raw(v) => v,
    };
    let paging = match input.regime {
        Regime::X86 {
            cr3,
            la57,
            nxe,
            maxphyaddr,
        } => GuestPaging::X86 {
            cr3: reg(cr3),
            la57,
            nxe,
            maxphyaddr: if maxphyaddr & 0x80 != 0 {
                32 + maxphyaddr % 21
            } else {
                maxphyaddr
            },
        },
        Regime::Arm {
            ttbr0,
            ttbr1,
            t0sz,
            t1sz,
        } => {
            let tsz = |v: u8| if v & 0x80 != 0 { 16 + v % 24 } else { v };
            GuestPaging::Arm {
                ttbr0: reg(ttbr0),
                ttbr1: reg(ttbr1),
                t0sz: tsz(t0sz),
                t1sz: tsz(t1sz),
            }
        }
        Regime::Riscv {
            mode,
            ppn,
            asid,
            pbmte,
            raw,
        } => {
            let satp = raw.unwrap_or_else(|| {
                let mode = if mode & 0x80 != 0 {
                    [0u64, 8, 9, 10][mode as usize % 4]
                } else {
                    u64::from(mode % 16)
                };
                (mode << 60) | (u64::from(asid) << 44) | ((reg(ppn) >> 12) & ((1 << 44) - 1))
            });
            GuestPaging::Riscv { satp, pbmte }
        }
    };
    let mem = Mem {
        base,
        bytes: &input.memory,
        wrap: input.wrap,
        reads: Cell::new(0),
    };
    let max = paging.max_levels();
    assert!(max <= MAX_LEVELS);
    let gvas = input
        .gvas
        .iter()
        .take(16)
        .copied()
        .chain([base, reg(Reg::Base(1)) | 0x123]);
    for gva in gvas {
        let gva = GuestVirtAddr::from(gva as usize);
        mem.reads.set(0);
        let first = walk(&mem, &paging, gva);
        let reads = mem.reads.get();
        assert!(
            reads <= max,
            "{reads} reads > max_levels {max} for {paging:?} at {gva:?}"
        );
        mem.reads.set(0);
        let second = walk(&mem, &paging, gva);
        assert_eq!(first, second, "walk is not deterministic");
        match first {
            Ok(t) => {
                let off = t.size.offset(gva.as_usize());
                assert_eq!(
                    t.size.offset(t.gpa.as_usize()),
                    off,
                    "{t:?} lost the page offset of {gva:?}"
                );
                assert_eq!(t.page_gpa().as_usize() + off, t.gpa.as_usize());
                assert!(t.size <= PageSize::Size1G || t.size == PageSize::Size512G);
                if let GuestPaging::Riscv { satp, .. } = paging
                    && satp >> 60 == 0
                {
                    assert_eq!(
                        (t.gpa.as_usize(), reads),
                        (gva.as_usize(), 0),
                        "Bare is identity"
                    );
                }
            }
            Err(fault) => {
                let _ = format!("{fault}");
                match fault {
                    GvaFault::BadConfig { .. } | GvaFault::NonCanonical { .. } => {
                        assert_eq!(fault.level(), None);
                        assert_eq!(reads, 0, "{fault:?} after reading tables");
                    }
                    _ => assert!(fault.level().is_some()),
                }
            }
        }
    }
});
