//! GVA→GPA walks of the guest's own (first-stage) page tables, for
//! instruction emulation and debugging.
//!
//! The guest controls every byte of its tables, so the walk treats them as
//! hostile input: it never panics, reads at most one entry per level (a
//! table that points back at itself simply ends at the level bound), never
//! writes (accessed and dirty bits are left alone) and reports anything
//! unexpected as a typed [`GvaFault`].
//!
//! Guest memory is reached through [`GuestPhysRead`]; the regime (the
//! guest's control registers) is a [`GuestPaging`] value; [`walk`] does the
//! rest. The three architectures differ only in how an entry decodes and
//! where the walk starts, so the loop itself exists once (`walk` below);
//! `x86.rs`, `arm.rs` and `riscv.rs` hold the decoders.
//!
//! # Level numbers
//!
//! Levels are numbered as each manual numbers them:
//!
//! | regime | root … last | 1 GiB leaf | 2 MiB leaf | 4 KiB leaf |
//! |---|---|---|---|---|
//! | x86-64 | 5 (PML5) or 4 (PML4) … 1 (PT) | 3 (PDPTE) | 2 (PDE) | 1 (PTE) |
//! | AArch64, 4 KiB granule | 0, 1 or 2 … 3 | 1 | 2 | 3 |
//! | RISC-V Sv39/48/57 | 2, 3 or 4 … 0 | 2 | 1 | 0 |
//!
//! # Permissions
//!
//! [`GuestPerms`] reports what the entries grant, combined over the whole
//! path where the architecture does so (x86 R/W, U/S, XD; Arm APTable,
//! UXNTable, PXNTable). Policies that depend on other control bits — x86
//! CR0.WP, CR4.SMEP/SMAP/PKE, Arm PAN/WXN, RISC-V `sstatus`.SUM/MXR — are
//! left to the caller.
//!
//! # Sources
//!
//! - Intel SDM Vol. 3A, 4.5 "4-Level Paging and 5-Level Paging" (entry
//!   formats), 4.6 "Access Rights", 4.7 "Page-Fault
//!   Exceptions"; canonical addresses, Vol. 1 3.3.7.1.
//! - Arm ARM (DDI 0487), chapter D8 "The AArch64 Virtual Memory System
//!   Architecture": translation process and initial lookup level, VMSAv8-64
//!   descriptor formats, access permissions, the Access flag.
//! - RISC-V Privileged Architecture 20211203, 4.1.11 "`satp`", 4.3.1
//!   "Addressing and Memory Protection", 4.3.2 "Virtual Address Translation
//!   Process", 4.4 Sv39, 4.5 Sv48, 4.6 Sv57, chapter 6 "Svpbmt".
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use gpa_types::{GuestPhysAddr, GuestVirtAddr, PageSize};
//! use guest_aspace::gva::{GuestPaging, GuestPerms, GuestPhysRead, walk};
//!
//! struct Ram(BTreeMap<usize, u64>);
//! impl GuestPhysRead for Ram {
//!     fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64> {
//!         self.0.get(&gpa.as_usize()).copied()
//!     }
//! }
//!
//! // x86-64 4-level: PML4 at 0x1000, PDPT at 0x2000, a 2 MiB page at
//! // 0x4020_0000 mapping GVA 0x40_0000.
//! let mut ram = Ram(BTreeMap::new());
//! ram.0.insert(0x1000, 0x2003); // PML4E[0]: P | R/W -> PDPT
//! ram.0.insert(0x2000, 0x3003); // PDPTE[0]: P | R/W -> PD
//! ram.0.insert(0x3010, 0x4020_0083); // PDE[2]: P | R/W | PS
//! let paging = GuestPaging::X86 { cr3: 0x1000, la57: false, nxe: true, maxphyaddr: 52 };
//! let t = walk(&ram, &paging, GuestVirtAddr::from(0x40_1234))?;
//! assert_eq!(t.gpa, GuestPhysAddr::from(0x4020_1234));
//! assert_eq!(t.size, PageSize::Size2M);
//! assert_eq!(t.level, 2);
//! assert_eq!(t.perms, GuestPerms::READ | GuestPerms::WRITE | GuestPerms::EXECUTE);
//! # Ok::<(), guest_aspace::gva::GvaFault>(())
//! ```

mod arm;
mod fault;
mod riscv;
#[cfg(test)]
mod testmem;
mod x86;

use bitflags::bitflags;
use gpa_types::{GuestPhysAddr, GuestVirtAddr, PageSize};

pub use fault::GvaFault;

/// The deepest walk of any supported regime (x86 5-level paging, Sv57).
pub const MAX_LEVELS: usize = 5;

/// Little-endian reads of guest-physical memory, as the guest's page-table
/// walker sees it.
pub trait GuestPhysRead {
    /// The 8 bytes at `gpa`, little-endian, or `None` when `gpa` is not
    /// guest RAM. Walks only ask for 8-byte aligned addresses.
    fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64>;
}

impl<T: GuestPhysRead + ?Sized> GuestPhysRead for &T {
    #[inline]
    fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64> {
        (**self).read_u64(gpa)
    }
}

/// The guest's translation regime: the control-register values that decide
/// how its first-stage tables are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestPaging {
    /// x86-64 long mode, 4-level or 5-level paging (Intel SDM Vol. 3A, 4.5).
    X86 {
        /// CR3. Bits 51:12 (up to `maxphyaddr`) hold the root table; bits
        /// 11:0 (PCID or PWT/PCD) and 63:52 (LAM, no-flush) are ignored.
        cr3: u64,
        /// CR4.LA57: 5-level paging with 57-bit addresses.
        la57: bool,
        /// IA32_EFER.NXE: bit 63 of an entry is XD (execute-disable) when
        /// set and reserved when clear.
        nxe: bool,
        /// The guest's MAXPHYADDR (CPUID 8000_0008h EAX bits 7:0), 32..=52.
        /// Entry bits 51:MAXPHYADDR are reserved. Use 52 when unknown.
        maxphyaddr: u8,
    },
    /// AArch64 stage 1 of the EL1&0 regime with the 4 KiB granule (Arm ARM
    /// D8), 48-bit output addresses, TBI and hardware AF/DBM updates off.
    Arm {
        /// TTBR0_EL1: table for addresses whose bit 55 is 0. BADDR is bits
        /// 47:1; ASID (63:48) and CnP (bit 0) are ignored.
        ttbr0: u64,
        /// TTBR1_EL1: table for addresses whose bit 55 is 1.
        ttbr1: u64,
        /// TCR_EL1.T0SZ: the TTBR0 range is 2^(64 - T0SZ) bytes; 16..=39.
        t0sz: u8,
        /// TCR_EL1.T1SZ: the TTBR1 range is the top 2^(64 - T1SZ) bytes;
        /// 16..=39.
        t1sz: u8,
    },
    /// RISC-V Sv39/Sv48/Sv57, or Bare (RISC-V Privileged 4.1.11, 4.3).
    Riscv {
        /// `satp` (`vsatp` for a guest in VS-mode): MODE bits 63:60 (0 Bare,
        /// 8 Sv39, 9 Sv48, 10 Sv57), ASID 59:44 (ignored), PPN 43:0.
        satp: u64,
        /// Whether Svpbmt is enabled for the guest (`henvcfg`.PBMTE or
        /// `menvcfg`.PBMTE): leaves may then carry PBMT values 0..=2 in bits
        /// 62:61. Without it those bits are reserved.
        pbmte: bool,
    },
}

impl GuestPaging {
    /// The most entries any walk under this regime reads: its number of
    /// levels (for Arm, the deeper of the two ranges; 0 for RISC-V Bare or
    /// an invalid setting).
    pub const fn max_levels(&self) -> usize {
        match *self {
            Self::X86 { la57, .. } => x86::levels(la57),
            Self::Arm { t0sz, t1sz, .. } => {
                let (a, b) = (arm::levels(t0sz), arm::levels(t1sz));
                if a > b { a } else { b }
            }
            Self::Riscv { satp, .. } => riscv::levels(satp),
        }
    }
}

bitflags! {
    /// What a translation lets the guest do, as its entries say.
    ///
    /// `READ` and `WRITE` are the data rights of the page, for supervisor
    /// code always and for user code when `USER` is set. Instruction fetch
    /// is split by privilege because all three architectures can tell the
    /// two apart.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct GuestPerms: u8 {
        /// Loads are allowed (x86: every present page; Arm: every valid
        /// page; RISC-V: R).
        const READ = 1 << 0;
        /// Stores are allowed (x86 R/W on every level; Arm AP\[2\] = 0 and
        /// APTable\[1\] = 0; RISC-V W, and D = 1 because a store to a clean
        /// page faults when hardware does not set D).
        const WRITE = 1 << 1;
        /// Supervisor (CPL 0-2, EL1, S-mode) instruction fetch is allowed:
        /// x86 XD = 0 on every level; Arm PXN = 0, PXNTable = 0 and the page
        /// not writable at EL0; RISC-V X on a page without U.
        const EXECUTE = 1 << 2;
        /// User mode (CPL 3, EL0, U-mode) may load and store as `READ` and
        /// `WRITE` allow (x86 U/S on every level; Arm AP\[1\] = 1 and
        /// APTable\[0\] = 0; RISC-V U).
        const USER = 1 << 3;
        /// User instruction fetch is allowed: x86 U/S and XD = 0 on every
        /// level; Arm UXN = 0 and UXNTable = 0; RISC-V X and U.
        const USER_EXECUTE = 1 << 4;
    }
}

/// A successful walk: where the address lands and what maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GvaTranslation {
    /// The guest-physical address of the byte at the walked GVA (page base
    /// plus offset).
    pub gpa: GuestPhysAddr,
    /// The size of the page or block that maps it.
    pub size: PageSize,
    /// The combined permissions of the path.
    pub perms: GuestPerms,
    /// The level of the leaf, in the architecture's numbering (see the
    /// [module docs](self)).
    pub level: usize,
    /// The leaf entry as read (0 for RISC-V Bare), for attributes this type
    /// does not decode: memory type, global, accessed/dirty, software bits.
    pub entry: u64,
}

impl GvaTranslation {
    /// The guest-physical address of the start of the page.
    pub const fn page_gpa(&self) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(self.size.align_down(self.gpa.as_usize()))
    }
}

/// Translates `gva` through the guest's own tables.
///
/// Reads at most [`GuestPaging::max_levels`] entries from `mem`, one per
/// level, and nothing when the regime or address is rejected up front.
pub fn walk<M: GuestPhysRead + ?Sized>(
    mem: &M,
    paging: &GuestPaging,
    gva: GuestVirtAddr,
) -> Result<GvaTranslation, GvaFault> {
    match *paging {
        GuestPaging::X86 {
            cr3,
            la57,
            nxe,
            maxphyaddr,
        } => run(mem, &x86::X86::new(cr3, la57, nxe, maxphyaddr, gva)?, gva),
        GuestPaging::Arm {
            ttbr0,
            ttbr1,
            t0sz,
            t1sz,
        } => run(mem, &arm::Arm::select(ttbr0, ttbr1, t0sz, t1sz, gva)?, gva),
        GuestPaging::Riscv { satp, pbmte } => match riscv::Riscv::new(satp, pbmte, gva)? {
            Some(regime) => run(mem, &regime, gva),
            None => Ok(GvaTranslation {
                gpa: GuestPhysAddr::from_usize(gva.as_usize()),
                size: PageSize::Size4K,
                perms: GuestPerms::all(),
                level: 0,
                entry: 0,
            }),
        },
    }
}

/// What one entry says, as an architecture decodes it.
enum Decoded {
    /// A pointer to the next table.
    Table {
        /// Guest-physical address of the next table.
        next: u64,
        /// Rights this entry takes away from everything below it.
        deny: GuestPerms,
    },
    /// A leaf mapping a page of the size of its level.
    Leaf {
        /// Guest-physical address of the page, aligned to its size.
        base: u64,
        /// The rights the leaf grants.
        perms: GuestPerms,
    },
}

/// Why one entry ends the walk; the walker adds the level and addresses.
enum EntryFault {
    /// See [`GvaFault::NotPresent`].
    NotPresent,
    /// See [`GvaFault::Reserved`].
    Reserved,
    /// See [`GvaFault::Misaligned`].
    Misaligned,
    /// See [`GvaFault::AccessFlag`].
    AccessFlag,
}

/// One architecture's walk, already checked against the address: where the
/// walk starts and how its entries decode.
trait Regime {
    /// Guest-physical address of the root table, aligned to its size.
    fn root(&self) -> u64;
    /// Number of levels walked, root included (at most [`MAX_LEVELS`]).
    fn levels(&self) -> usize;
    /// Width of the input address the tables index, in bits.
    fn va_bits(&self) -> u32;
    /// The manual's number for the level `height` levels above the last.
    fn level(&self, height: usize) -> usize;
    /// Decodes the entry found `height` levels above the last.
    fn decode(&self, entry: u64, height: usize) -> Result<Decoded, EntryFault>;
    /// Rules applied to the combined permissions of a leaf.
    fn finish(&self, perms: GuestPerms) -> GuestPerms {
        perms
    }
}

/// The walk, once for every architecture: one read per level, from the root
/// down, never more than [`MAX_LEVELS`].
fn run<M: GuestPhysRead + ?Sized, R: Regime>(
    mem: &M,
    regime: &R,
    gva: GuestVirtAddr,
) -> Result<GvaTranslation, GvaFault> {
    let va = gva.as_usize() as u64;
    let input = va & mask(regime.va_bits().saturating_sub(1), 0);
    let levels = regime.levels().min(MAX_LEVELS);
    let mut table = regime.root();
    let mut deny = GuestPerms::empty();
    let mut last = (regime.level(0), 0);
    for height in (0..levels).rev() {
        let level = regime.level(height);
        let index = field(input, 20 + 9 * height as u32, 12 + 9 * height as u32);
        let slot = table | (index << 3);
        let gpa = to_usize(slot, level)?;
        let gpa = GuestPhysAddr::from_usize(gpa);
        let entry = mem
            .read_u64(gpa)
            .ok_or(GvaFault::TableNotInRam { level, gpa })?;
        last = (level, entry);
        let decoded = regime.decode(entry, height).map_err(|e| match e {
            EntryFault::NotPresent => GvaFault::NotPresent { level, gva },
            EntryFault::Reserved => GvaFault::Reserved { level, entry },
            EntryFault::Misaligned => GvaFault::Misaligned { level, entry },
            EntryFault::AccessFlag => GvaFault::AccessFlag { level, entry },
        })?;
        match decoded {
            Decoded::Table { next, deny: d } => {
                table = next;
                deny |= d;
            }
            Decoded::Leaf { base, perms } => {
                let size =
                    PageSize::from_height(height).ok_or(GvaFault::Unsupported { level, entry })?;
                let out = base | (va & mask(size.shift() - 1, 0));
                let gpa = GuestPhysAddr::from_usize(to_usize(out, level)?);
                let perms = regime.finish(perms & !deny);
                return Ok(GvaTranslation {
                    gpa,
                    size,
                    perms,
                    level,
                    entry,
                });
            }
        }
    }
    // Only reached when the last level holds a table pointer, which every
    // decoder reports itself; kept so that no decoder bug can loop or panic.
    let (level, entry) = last;
    Err(GvaFault::Reserved { level, entry })
}

/// `addr` as a `usize`, or the fault for a host too narrow to hold it.
fn to_usize(addr: u64, level: usize) -> Result<usize, GvaFault> {
    usize::try_from(addr).map_err(|_| GvaFault::AddressTooWide { level, addr })
}

/// Bits `hi:lo` (inclusive) set, the rest clear; empty when `lo > hi`.
const fn mask(hi: u32, lo: u32) -> u64 {
    if lo > hi || lo > 63 {
        return 0;
    }
    let top = if hi >= 63 {
        u64::MAX
    } else {
        (1u64 << (hi + 1)) - 1
    };
    top & (u64::MAX << lo)
}

/// The field `hi:lo` (inclusive) of `value`, shifted down to bit 0.
const fn field(value: u64, hi: u32, lo: u32) -> u64 {
    if lo > 63 {
        0
    } else {
        (value & mask(hi, lo)) >> lo
    }
}

/// Whether bit `n` of `value` is set.
const fn bit(value: u64, n: u32) -> bool {
    field(value, n, n) != 0
}

/// Whether `va` is the sign extension of its low `bits` bits.
const fn sign_extended(va: u64, bits: u32) -> bool {
    if bits == 0 || bits >= 64 {
        return true;
    }
    let high = va >> (bits - 1);
    high == 0 || high == u64::MAX >> (bits - 1)
}

#[cfg(test)]
mod tests {
    use super::testmem::{CountingMem, FakeMem};
    use super::*;

    #[test]
    fn bit_helpers() {
        assert_eq!(mask(51, 12), 0x000f_ffff_ffff_f000);
        assert_eq!(mask(63, 0), u64::MAX);
        assert_eq!(mask(3, 4), 0);
        assert_eq!(field(0xabcd, 11, 4), 0xbc);
        assert!(bit(0x80, 7));
        assert!(sign_extended(0xffff_8000_0000_0000, 48));
        assert!(sign_extended(0x0000_7fff_ffff_ffff, 48));
        assert!(!sign_extended(0x0000_8000_0000_0000, 48));
        assert!(!sign_extended(0xfffe_0000_0000_0000, 48));
    }

    #[test]
    fn reference_impl_forwards() {
        let mut mem = FakeMem::default();
        mem.set(0x1000, 0x1122_3344_5566_7788);
        let by_ref: &FakeMem = &mem;
        assert_eq!(
            (&by_ref).read_u64(GuestPhysAddr::from(0x1000)),
            Some(0x1122_3344_5566_7788)
        );
        let dyn_mem: &dyn GuestPhysRead = &mem;
        let paging = GuestPaging::Riscv {
            satp: 0,
            pbmte: false,
        };
        assert!(walk(dyn_mem, &paging, GuestVirtAddr::from(0x1234)).is_ok());
    }

    #[test]
    fn riscv_bare_is_identity_without_reads() {
        let mem = CountingMem::new(FakeMem::default());
        let paging = GuestPaging::Riscv {
            satp: 0,
            pbmte: false,
        };
        let t = walk(&mem, &paging, GuestVirtAddr::from(0x8020_1234)).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x8020_1234));
        assert_eq!(t.page_gpa(), GuestPhysAddr::from(0x8020_1000));
        assert_eq!(t.perms, GuestPerms::all());
        assert_eq!(mem.reads(), 0);
        assert_eq!(paging.max_levels(), 0);
    }

    #[test]
    fn max_levels_per_regime() {
        let x = |la57| GuestPaging::X86 {
            cr3: 0,
            la57,
            nxe: true,
            maxphyaddr: 52,
        };
        assert_eq!(x(false).max_levels(), 4);
        assert_eq!(x(true).max_levels(), 5);
        let a = |t0sz, t1sz| GuestPaging::Arm {
            ttbr0: 0,
            ttbr1: 0,
            t0sz,
            t1sz,
        };
        assert_eq!(a(16, 25).max_levels(), 4);
        assert_eq!(a(25, 34).max_levels(), 3);
        assert_eq!(a(34, 39).max_levels(), 2);
        assert_eq!(a(8, 64).max_levels(), 0);
        let r = |mode: u64| GuestPaging::Riscv {
            satp: mode << 60,
            pbmte: false,
        };
        assert_eq!(r(8).max_levels(), 3);
        assert_eq!(r(9).max_levels(), 4);
        assert_eq!(r(10).max_levels(), 5);
        assert_eq!(r(11).max_levels(), 0);
    }

    #[test]
    fn page_gpa_strips_the_offset() {
        let t = GvaTranslation {
            gpa: GuestPhysAddr::from(0x4020_1234),
            size: PageSize::Size2M,
            perms: GuestPerms::READ,
            level: 2,
            entry: 0,
        };
        assert_eq!(t.page_gpa(), GuestPhysAddr::from(0x4020_0000));
    }
}
