//! RISC-V Sv39, Sv48 and Sv57 (RISC-V Privileged Architecture 20211203;
//! section titles are given too, because later releases renumber them).
//!
//! - 4.1.11 "Supervisor Address Translation and Protection (`satp`)
//!   Register": MODE 63:60 (0 Bare, 8 Sv39, 9 Sv48, 10 Sv57), ASID 59:44,
//!   PPN 43:0. `vsatp` (chapter 8, "Hypervisor Extension") has the same layout.
//! - 4.3.1 "Addressing and Memory Protection": V R W X U G A D in bits 7:0;
//!   R = W = X = 0 is a pointer; W without R is reserved; D, A and U are
//!   reserved in pointers.
//! - 4.3.2 "Virtual Address Translation Process": the algorithm below,
//!   step by step.
//! - 4.4.1, 4.5.1, 4.6.1 (Sv39/Sv48/Sv57 "Addressing and Memory
//!   Protection"): PPN 53:10, reserved 60:54, PBMT 62:61, N 63; the address
//!   must be the sign extension of bit 38/47/56.
//! - Chapter 6 "Svpbmt": PBMT is reserved in pointers, and value 3 is
//!   reserved.
//!
//! | bit | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 9:8 | 53:10 | 60:54 | 62:61 | 63 |
//! |---|---|---|---|---|---|---|---|---|---|---|---|---|---|
//! | | V | R | W | X | U | G | A | D | RSW | PPN | reserved | PBMT | N |
//!
//! Choices:
//! - A leaf with A = 0 is [`GvaFault::AccessFlag`], as on hardware without
//!   Svadu (Svade behaviour). A leaf with D = 0 is reported without
//!   [`GuestPerms::WRITE`] because a store through it would fault.
//! - Svnapot is not supported: N = 1 is [`GvaFault::Reserved`].
//! - A valid Sv57 leaf at level 4 (256 TiB) is [`GvaFault::Unsupported`].
//! - Supervisor code can never execute a page with U = 1, so such a page has
//!   [`GuestPerms::USER_EXECUTE`] but not [`GuestPerms::EXECUTE`]; whether
//!   supervisor code may read it (`sstatus`.SUM) and whether X implies R
//!   (`sstatus`.MXR) is the caller's business.

use super::{Decoded, EntryFault, GuestPerms, GvaFault, Regime, bit, field, mask, sign_extended};
use gpa_types::GuestVirtAddr;

/// PTE bit 0, V, "valid" (4.3.1).
const VALID: u32 = 0;
/// PTE bit 1, R, "readable" (4.3.1).
const READ: u32 = 1;
/// PTE bit 2, W, "writable" (4.3.1); reserved without R.
const WRITE: u32 = 2;
/// PTE bit 3, X, "executable" (4.3.1).
const EXECUTE: u32 = 3;
/// PTE bit 4, U, user-mode accessible (4.3.1); reserved in pointers.
const USER: u32 = 4;
/// PTE bit 6, A, "accessed" (4.3.1); reserved in pointers.
const ACCESSED: u32 = 6;
/// PTE bit 7, D, "dirty" (4.3.1); reserved in pointers.
const DIRTY: u32 = 7;
/// PTE bits 53:10, PPN: the next table or the page, in 4 KiB units (4.4.1).
const PPN_HI: u32 = 53;
/// Low bit of the PPN field.
const PPN_LO: u32 = 10;
/// PTE bits 60:54, reserved for future standard use (4.4.1).
const RESERVED: u64 = mask(60, 54);
/// PTE bits 62:61, PBMT, the Svpbmt page-based memory type (chapter 6).
const PBMT_HI: u32 = 62;
/// Low bit of the PBMT field.
const PBMT_LO: u32 = 61;
/// PBMT value 3, reserved (chapter 6).
const PBMT_RESERVED: u64 = 3;
/// PTE bit 63, N, Svnapot (chapter 5); not supported here.
const NAPOT: u32 = 63;
/// `satp` bits 63:60, MODE (4.1.11).
const SATP_MODE_LO: u32 = 60;
/// `satp` bits 43:0, PPN of the root table (4.1.11).
const SATP_PPN_HI: u32 = 43;
/// MODE 0, Bare: no translation.
const MODE_BARE: u64 = 0;

/// Levels walked for a `satp` value: 3, 4 or 5, or 0 for Bare or an unknown
/// mode.
pub(super) const fn levels(satp: u64) -> usize {
    match satp >> SATP_MODE_LO {
        8 => 3,
        9 => 4,
        10 => 5,
        _ => 0,
    }
}

/// A checked Sv39/Sv48/Sv57 regime.
pub(super) struct Riscv {
    root: u64,
    levels: usize,
    pbmte: bool,
}

impl Riscv {
    /// Checks the mode and that `gva` is sign-extended; `None` for Bare.
    pub(super) fn new(
        satp: u64,
        pbmte: bool,
        gva: GuestVirtAddr,
    ) -> Result<Option<Self>, GvaFault> {
        let mode = satp >> SATP_MODE_LO;
        if mode == MODE_BARE {
            return Ok(None);
        }
        let levels = levels(satp);
        if levels == 0 {
            return Err(GvaFault::BadConfig {
                field: "satp.MODE",
                value: mode,
            });
        }
        if !sign_extended(gva.as_usize() as u64, 12 + 9 * levels as u32) {
            return Err(GvaFault::NonCanonical { gva });
        }
        let root = field(satp, SATP_PPN_HI, 0) << 12;
        Ok(Some(Self {
            root,
            levels,
            pbmte,
        }))
    }
}

impl Regime for Riscv {
    fn root(&self) -> u64 {
        self.root
    }

    fn levels(&self) -> usize {
        self.levels
    }

    fn va_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }

    fn level(&self, height: usize) -> usize {
        height
    }

    fn decode(&self, entry: u64, height: usize) -> Result<Decoded, EntryFault> {
        // Step 3: invalid, W without R, or reserved bits.
        if !bit(entry, VALID) {
            return Err(EntryFault::NotPresent);
        }
        let (r, w, x) = (bit(entry, READ), bit(entry, WRITE), bit(entry, EXECUTE));
        if (w && !r) || entry & RESERVED != 0 || bit(entry, NAPOT) {
            return Err(EntryFault::Reserved);
        }
        let leaf = r || x;
        let pbmt = field(entry, PBMT_HI, PBMT_LO);
        if pbmt != 0 && (!self.pbmte || pbmt == PBMT_RESERVED || !leaf) {
            return Err(EntryFault::Reserved);
        }
        let base = field(entry, PPN_HI, PPN_LO) << 12;
        // Step 4: a pointer, which must not be at the last level nor carry
        // D, A or U.
        if !leaf {
            let du_a = bit(entry, DIRTY) || bit(entry, ACCESSED) || bit(entry, USER);
            if height == 0 || du_a {
                return Err(EntryFault::Reserved);
            }
            return Ok(Decoded::Table {
                next: base,
                deny: GuestPerms::empty(),
            });
        }
        // Step 6: a superpage must be aligned.
        if base & mask(11 + 9 * height as u32, 12) != 0 {
            return Err(EntryFault::Misaligned);
        }
        // Step 7: A = 0 faults (Svade).
        if !bit(entry, ACCESSED) {
            return Err(EntryFault::AccessFlag);
        }
        let user = bit(entry, USER);
        let mut perms = GuestPerms::empty();
        perms.set(GuestPerms::READ, r);
        perms.set(GuestPerms::WRITE, w && bit(entry, DIRTY));
        perms.set(GuestPerms::USER, user);
        perms.set(GuestPerms::EXECUTE, x && !user);
        perms.set(GuestPerms::USER_EXECUTE, x && user);
        Ok(Decoded::Leaf { base, perms })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testmem::{CountingMem, FakeMem};
    use super::super::{GuestPaging, GvaTranslation, walk};
    use super::*;
    use gpa_types::{GuestPhysAddr, PageSize};

    const R: GuestPerms = GuestPerms::READ;
    const W: GuestPerms = GuestPerms::WRITE;
    const X: GuestPerms = GuestPerms::EXECUTE;
    const U: GuestPerms = GuestPerms::USER;
    const UX: GuestPerms = GuestPerms::USER_EXECUTE;

    /// Sv39, root at 0x1000.
    const SV39: u64 = 0x8000_0000_0000_0001;
    /// Sv48, root at 0x1000.
    const SV48: u64 = 0x9000_0000_0000_0001;
    /// Sv57, root at 0x1000.
    const SV57: u64 = 0xa000_0000_0000_0001;

    fn go(mem: &FakeMem, satp: u64, gva: u64) -> Result<GvaTranslation, GvaFault> {
        walk(
            mem,
            &GuestPaging::Riscv { satp, pbmte: false },
            GuestVirtAddr::from(gva as usize),
        )
    }

    /// Sv39, GVA 0x4060_3abc: VPN\[2\] 1, VPN\[1\] 3, VPN\[0\] 3, offset 0xabc.
    fn sv39() -> FakeMem {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1008, 0x0000_0000_0000_0801); // [2][1]: V, PPN 2 -> 0x2000
        mem.set(0x2018, 0x0000_0000_0000_0c01); // [1][3]: V, PPN 3 -> 0x3000
        mem.set(0x3018, 0x0000_0000_0048_d0c7); // [0][3]: D A W R V, PPN 0x1234
        mem
    }

    #[test]
    fn sv39_translates_a_4k_page() {
        let mem = CountingMem::new(sv39());
        let paging = GuestPaging::Riscv {
            satp: SV39,
            pbmte: false,
        };
        let t = walk(&mem, &paging, GuestVirtAddr::from(0x4060_3abc)).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x0123_4abc));
        assert_eq!((t.size, t.level), (PageSize::Size4K, 0));
        assert_eq!(t.perms, R | W);
        assert_eq!(mem.reads(), 3);
    }

    #[test]
    fn sv39_megapage_and_gigapage() {
        let mut mem = sv39();
        mem.set(0x2018, 0x0000_0000_1008_00cb); // [1][3]: D A X R V, PPN 0x4_0200
        let t = go(&mem, SV39, 0x4060_3abc).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x4020_3abc));
        assert_eq!((t.size, t.level), (PageSize::Size2M, 1));
        assert_eq!(t.perms, R | X);
        mem.set(0x1008, 0x0000_0000_2000_00df); // [2][1]: D A U X W R V, PPN 0x8_0000
        let t = go(&mem, SV39, 0x4060_3abc).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x8060_3abc));
        assert_eq!((t.size, t.level), (PageSize::Size1G, 2));
        // U = 1: user-executable, never supervisor-executable.
        assert_eq!(t.perms, R | W | U | UX);
    }

    #[test]
    fn sv48_terapage_and_sign_extension() {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1000, 0x0000_0020_0000_00c7); // [3][0]: D A W R V, PPN 0x800_0000
        let t = go(&mem, SV48, 0x12_3456_789a).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x92_3456_789a));
        assert_eq!((t.size, t.level), (PageSize::Size512G, 3));
        let gva = GuestVirtAddr::from(0x0000_8000_0000_0000);
        assert_eq!(
            go(&mem, SV48, 0x0000_8000_0000_0000),
            Err(GvaFault::NonCanonical { gva })
        );
        // The same address is fine under Sv57.
        let empty = FakeMem::ram(0x1_0000);
        assert!(matches!(
            go(&empty, SV57, 0x0000_8000_0000_0000),
            Err(GvaFault::NotPresent { level: 4, .. })
        ));
    }

    #[test]
    fn sv57_walks_five_levels() {
        // GVA 0x1_0000_0000_1abc: VPN[4] 1, VPN[3..1] 0, VPN[0] 1.
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1008, 0x0000_0000_0000_0801); // [4][1] -> 0x2000
        mem.set(0x2000, 0x0000_0000_0000_0c01); // [3][0] -> 0x3000
        mem.set(0x3000, 0x0000_0000_0000_1001); // [2][0] -> 0x4000
        mem.set(0x4000, 0x0000_0000_0000_1401); // [1][0] -> 0x5000
        mem.set(0x5008, 0x0000_0000_02af_34c3); // [0][1]: D A R V, PPN 0xabcd
        let mem = CountingMem::new(mem);
        let paging = GuestPaging::Riscv {
            satp: SV57,
            pbmte: false,
        };
        let t = walk(&mem, &paging, GuestVirtAddr::from(0x1_0000_0000_1abc)).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x0abc_dabc));
        assert_eq!(t.perms, R);
        assert_eq!(mem.reads(), 5);
        // Upper half: bits 63:57 copy bit 56.
        let upper = GuestVirtAddr::from(0xff00_0000_0000_0000);
        assert_eq!(
            walk(&mem, &paging, upper),
            Err(GvaFault::NotPresent {
                level: 4,
                gva: upper
            })
        );
        let bad = GuestVirtAddr::from(0x0100_0000_0000_0000);
        assert_eq!(
            walk(&mem, &paging, bad),
            Err(GvaFault::NonCanonical { gva: bad })
        );
        // A level-4 leaf (a 256 TiB petapage) cannot be described.
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1000, 0x0000_0000_0000_00c3);
        assert_eq!(
            go(&mem, SV57, 0x1234),
            Err(GvaFault::Unsupported {
                level: 4,
                entry: 0xc3
            })
        );
    }

    #[test]
    fn invalid_and_reserved_entries() {
        let gva = 0x4060_3abc;
        let case = |slot: u64, entry: u64| {
            let mut mem = sv39();
            mem.set(slot, entry);
            go(&mem, SV39, gva)
        };
        let not_present = GvaFault::NotPresent {
            level: 1,
            gva: GuestVirtAddr::from(gva as usize),
        };
        assert_eq!(case(0x2018, 0x0000_0000_0000_0c00), Err(not_present));
        let reserved = |level, entry| Err(GvaFault::Reserved { level, entry });
        // W without R.
        assert_eq!(case(0x3018, 0x0000_0000_0048_d0c5), reserved(0, 0x48_d0c5));
        // Bit 54, reserved.
        assert_eq!(
            case(0x3018, 0x0040_0000_0048_d0c7),
            reserved(0, 0x40_0000_0048_d0c7)
        );
        // N (Svnapot) is not supported.
        assert_eq!(
            case(0x3018, 0x8000_0000_0048_d0c7),
            reserved(0, 0x8000_0000_0048_d0c7)
        );
        // PBMT without Svpbmt.
        assert_eq!(
            case(0x3018, 0x2000_0000_0048_d0c7),
            reserved(0, 0x2000_0000_0048_d0c7)
        );
        // A, U or D in a pointer.
        assert_eq!(case(0x2018, 0x0000_0000_0000_0c41), reserved(1, 0xc41));
        assert_eq!(case(0x2018, 0x0000_0000_0000_0c11), reserved(1, 0xc11));
        // A pointer at the last level.
        assert_eq!(case(0x3018, 0x0000_0000_0048_d001), reserved(0, 0x48_d001));
    }

    #[test]
    fn pbmt_with_svpbmt() {
        let paging = GuestPaging::Riscv {
            satp: SV39,
            pbmte: true,
        };
        let gva = GuestVirtAddr::from(0x4060_3abc);
        let mut mem = sv39();
        mem.set(0x3018, 0x4000_0000_0048_d0c7); // PBMT = 2 (IO)
        let t = walk(&mem, &paging, gva).unwrap();
        assert_eq!(
            (t.gpa, t.entry),
            (GuestPhysAddr::from(0x0123_4abc), 0x4000_0000_0048_d0c7)
        );
        mem.set(0x3018, 0x6000_0000_0048_d0c7); // PBMT = 3, reserved
        assert!(matches!(
            walk(&mem, &paging, gva),
            Err(GvaFault::Reserved { level: 0, .. })
        ));
        let mut mem = sv39();
        mem.set(0x2018, 0x2000_0000_0000_0c01); // PBMT in a pointer
        assert!(matches!(
            walk(&mem, &paging, gva),
            Err(GvaFault::Reserved { level: 1, .. })
        ));
    }

    #[test]
    fn misaligned_superpage_access_and_dirty() {
        let gva = 0x4060_3abc;
        let mut mem = sv39();
        mem.set(0x2018, 0x0000_0000_1008_04cb); // megapage with PPN bit 0 set
        assert_eq!(
            go(&mem, SV39, gva),
            Err(GvaFault::Misaligned {
                level: 1,
                entry: 0x1008_04cb
            })
        );
        mem.set(0x1008, 0x0000_0000_2008_00df); // gigapage with PPN bit 9 set
        assert_eq!(
            go(&mem, SV39, gva),
            Err(GvaFault::Misaligned {
                level: 2,
                entry: 0x2008_00df
            })
        );
        let mut mem = sv39();
        mem.set(0x3018, 0x0000_0000_0048_d087); // A = 0
        assert_eq!(
            go(&mem, SV39, gva),
            Err(GvaFault::AccessFlag {
                level: 0,
                entry: 0x48_d087
            })
        );
        mem.set(0x3018, 0x0000_0000_0048_d047); // D = 0: a store would fault
        assert_eq!(go(&mem, SV39, gva).unwrap().perms, R);
    }

    #[test]
    fn bad_mode_and_missing_tables() {
        let mem = sv39();
        assert_eq!(
            go(&mem, 0x1000_0000_0000_0001, 0),
            Err(GvaFault::BadConfig {
                field: "satp.MODE",
                value: 1
            })
        );
        let gpa = GuestPhysAddr::from(0x10_0008);
        // Root PPN 0x100, ASID 0xffff ignored.
        let satp = 0x8fff_f000_0000_0100;
        assert_eq!(
            go(&mem, satp, 0x4000_0000),
            Err(GvaFault::TableNotInRam { level: 2, gpa })
        );
    }

    #[test]
    fn self_referencing_pointer_ends_at_level_0() {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1000, 0x0000_0000_0000_0401); // [*][0] -> 0x1000, itself
        let mem = CountingMem::new(mem);
        let paging = GuestPaging::Riscv {
            satp: SV39,
            pbmte: false,
        };
        let fault = GvaFault::Reserved {
            level: 0,
            entry: 0x401,
        };
        assert_eq!(walk(&mem, &paging, GuestVirtAddr::from(0x10)), Err(fault));
        assert_eq!(mem.reads(), 3);
    }
}
