//! x86-64 4-level and 5-level paging (Intel SDM Vol. 3A, 4.5 "4-Level
//! Paging and 5-Level Paging").
//!
//! | bit | PML5E / PML4E | PDPTE, PDE (PS = 0) | PDPTE / PDE (PS = 1) | PTE |
//! |---|---|---|---|---|
//! | 0 | P | P | P | P |
//! | 1 | R/W | R/W | R/W | R/W |
//! | 2 | U/S | U/S | U/S | U/S |
//! | 7 | PS, reserved | PS = 0 | PS = 1 | PAT |
//! | 12 | address | address | PAT | address |
//! | 29:13 / 20:13 | address | address | reserved (1 GiB / 2 MiB) | address |
//! | 51:12 | next table | next table | frame 51:30 / 51:21 | frame |
//! | 51:MAXPHYADDR | reserved | reserved | reserved | reserved |
//! | 63 | XD (reserved if EFER.NXE = 0) | XD | XD | XD |
//!
//! (the entry-format tables of 4.5). A set reserved bit in a present entry is a page
//! fault with RSVD = 1 (4.7), including the low address bits of a 2 MiB or
//! 1 GiB leaf, so x86 never reports [`GvaFault::Misaligned`]. Accessed and
//! dirty bits are neither checked nor set. 1 GiB pages are assumed to be
//! supported (CPUID 8000_0001h EDX bit 26).

use super::{Decoded, EntryFault, GuestPerms, GvaFault, Regime, bit, mask, sign_extended};
use gpa_types::GuestVirtAddr;

/// Bit 0, P, "Present" (4.5, entry formats).
const PRESENT: u32 = 0;
/// Bit 1, R/W, "Read/write": writes allowed when set on every level (4.6).
const READ_WRITE: u32 = 1;
/// Bit 2, U/S, "User/supervisor": user accesses allowed when set on every
/// level (4.6).
const USER_SUPERVISOR: u32 = 2;
/// Bit 7, PS, "Page size": the PDPTE maps 1 GiB or the PDE 2 MiB; reserved
/// in a PML4E or PML5E (4.5, entry formats).
const PAGE_SIZE: u32 = 7;
/// Bit 63, XD, "Execute-disable" when IA32_EFER.NXE = 1, otherwise reserved
/// (4.5 entry formats, 4.6).
const EXECUTE_DISABLE: u32 = 63;
/// Bits 29:13 of a 1 GiB PDPTE: reserved, as the frame is 1 GiB aligned
/// (4.5, "PDPTE that maps a 1-GByte page"; bit 12 is PAT).
const RESERVED_1G: u64 = mask(29, 13);
/// Bits 20:13 of a 2 MiB PDE: reserved (4.5, "PDE that maps a 2-MByte
/// page"; bit 12 is PAT).
const RESERVED_2M: u64 = mask(20, 13);
/// The architectural limit of MAXPHYADDR (4.1.4 "Enumeration of Paging
/// Features by CPUID").
const MAX_PHYS_BITS: u8 = 52;
/// The smallest MAXPHYADDR accepted: 32 bits (CPUID leaf 8000_0008h reports
/// at least 36 on every long-mode processor).
const MIN_PHYS_BITS: u8 = 32;

/// Levels walked: 5 with CR4.LA57, else 4.
pub(super) const fn levels(la57: bool) -> usize {
    if la57 { 5 } else { 4 }
}

/// A checked x86-64 regime.
pub(super) struct X86 {
    root: u64,
    levels: usize,
    nxe: bool,
    /// Bits MAXPHYADDR-1:12.
    addr: u64,
    /// Bits 51:MAXPHYADDR.
    above_max: u64,
}

impl X86 {
    /// Checks CR3, MAXPHYADDR and the canonical form of `gva`.
    pub(super) fn new(
        cr3: u64,
        la57: bool,
        nxe: bool,
        maxphyaddr: u8,
        gva: GuestVirtAddr,
    ) -> Result<Self, GvaFault> {
        if !(MIN_PHYS_BITS..=MAX_PHYS_BITS).contains(&maxphyaddr) {
            return Err(GvaFault::BadConfig {
                field: "MAXPHYADDR",
                value: maxphyaddr.into(),
            });
        }
        let m = u32::from(maxphyaddr);
        let addr = mask(m - 1, 12);
        let above_max = mask(51, m);
        if cr3 & above_max != 0 {
            return Err(GvaFault::BadConfig {
                field: "CR3",
                value: cr3,
            });
        }
        let levels = levels(la57);
        // Canonical: bits 63:47 (63:56 with LA57) all equal (Vol. 1 3.3.7.1).
        if !sign_extended(gva.as_usize() as u64, 12 + 9 * levels as u32) {
            return Err(GvaFault::NonCanonical { gva });
        }
        Ok(Self {
            root: cr3 & addr,
            levels,
            nxe,
            addr,
            above_max,
        })
    }
}

impl Regime for X86 {
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
        height + 1
    }

    fn decode(&self, entry: u64, height: usize) -> Result<Decoded, EntryFault> {
        if !bit(entry, PRESENT) {
            return Err(EntryFault::NotPresent);
        }
        let level = height + 1;
        let ps = bit(entry, PAGE_SIZE);
        let leaf = level == 1 || (ps && (level == 2 || level == 3));
        let mut reserved = self.above_max;
        if !self.nxe {
            reserved |= 1 << EXECUTE_DISABLE;
        }
        if level >= 4 {
            reserved |= 1 << PAGE_SIZE;
        }
        if leaf && level == 3 {
            reserved |= RESERVED_1G;
        } else if leaf && level == 2 {
            reserved |= RESERVED_2M;
        }
        if entry & reserved != 0 {
            return Err(EntryFault::Reserved);
        }
        let write = bit(entry, READ_WRITE);
        let user = bit(entry, USER_SUPERVISOR);
        let exec = !(self.nxe && bit(entry, EXECUTE_DISABLE));
        if leaf {
            let mut perms = GuestPerms::READ;
            perms.set(GuestPerms::WRITE, write);
            perms.set(GuestPerms::EXECUTE, exec);
            perms.set(GuestPerms::USER, user);
            perms.set(GuestPerms::USER_EXECUTE, user && exec);
            let base = entry & self.addr & mask(63, 12 + 9 * height as u32);
            Ok(Decoded::Leaf { base, perms })
        } else {
            let mut deny = GuestPerms::empty();
            if !write {
                deny |= GuestPerms::WRITE;
            }
            if !user {
                deny |= GuestPerms::USER | GuestPerms::USER_EXECUTE;
            }
            if !exec {
                deny |= GuestPerms::EXECUTE | GuestPerms::USER_EXECUTE;
            }
            Ok(Decoded::Table {
                next: entry & self.addr,
                deny,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testmem::{CountingMem, FakeMem};
    use super::super::{GuestPaging, GvaTranslation, walk};
    use super::*;
    use gpa_types::{GuestPhysAddr, PageSize};

    const RW: GuestPerms = GuestPerms::READ.union(GuestPerms::WRITE);
    const ALL: GuestPerms = GuestPerms::all();

    fn paging(cr3: u64) -> GuestPaging {
        GuestPaging::X86 {
            cr3,
            la57: false,
            nxe: true,
            maxphyaddr: 52,
        }
    }

    fn go(mem: &FakeMem, paging: GuestPaging, gva: u64) -> Result<GvaTranslation, GvaFault> {
        walk(mem, &paging, GuestVirtAddr::from(gva as usize))
    }

    /// GVA 0x80_4060_3abc: PML4 index 1, PDPT 1, PD 3, PT 3, offset 0xabc.
    fn four_level() -> FakeMem {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1008, 0x0000_0000_0000_2007); // PML4E[1]: P|RW|US -> 0x2000
        mem.set(0x2008, 0x0000_0000_0000_3007); // PDPTE[1]: P|RW|US -> 0x3000
        mem.set(0x3018, 0x0000_0000_0000_4007); // PDE[3]:   P|RW|US -> 0x4000
        mem.set(0x4018, 0x8000_0000_0123_4005); // PTE[3]:   XD|P|US -> 0x123_4000
        mem
    }

    #[test]
    fn translates_a_4k_page() {
        let t = go(&four_level(), paging(0x1000), 0x80_4060_3abc).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x0123_4abc));
        assert_eq!(t.size, PageSize::Size4K);
        assert_eq!(t.level, 1);
        assert_eq!(t.entry, 0x8000_0000_0123_4005);
        // R/W = 0 and XD = 1 on the PTE: a user read-only, no-execute page.
        assert_eq!(t.perms, GuestPerms::READ | GuestPerms::USER);
    }

    #[test]
    fn reads_one_entry_per_level() {
        let mem = CountingMem::new(four_level());
        walk(&mem, &paging(0x1000), GuestVirtAddr::from(0x80_4060_3abc)).unwrap();
        assert_eq!(mem.reads(), 4);
    }

    #[test]
    fn translates_2m_and_1g_pages() {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1000, 0x0000_0000_0000_2007); // PML4E[0]: P|RW|US -> 0x2000
        mem.set(0x2000, 0x0000_0000_0000_3003); // PDPTE[0]: P|RW -> 0x3000
        mem.set(0x3010, 0x0000_0000_4020_1083); // PDE[2]: P|RW|PS|PAT, 2 MiB at 0x4020_0000
        mem.set(0x2018, 0x0000_0001_c000_0087); // PDPTE[3]: P|RW|US|PS, 1 GiB at 0x1_c000_0000
        let t = go(&mem, paging(0x1000), 0x45_6789).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x4025_6789));
        assert_eq!((t.size, t.level), (PageSize::Size2M, 2));
        assert_eq!(t.perms, RW | GuestPerms::EXECUTE);
        let t = go(&mem, paging(0x1000), 0xc123_4567).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x1_c123_4567));
        assert_eq!((t.size, t.level), (PageSize::Size1G, 3));
        assert_eq!(t.perms, ALL);
    }

    #[test]
    fn translates_through_five_levels() {
        // GVA 0x1_0000_0000_1000: PML5 index 1, PML4 0, PDPT 0, PD 0, PT 1.
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1008, 0x0000_0000_0000_2007); // PML5E[1] -> 0x2000
        mem.set(0x2000, 0x0000_0000_0000_3007); // PML4E[0] -> 0x3000
        mem.set(0x3000, 0x0000_0000_0000_4007); // PDPTE[0] -> 0x4000
        mem.set(0x4000, 0x0000_0000_0000_5007); // PDE[0]   -> 0x5000
        mem.set(0x5008, 0x0000_0000_0abc_d007); // PTE[1]: 4 KiB at 0xabc_d000
        let la57 = GuestPaging::X86 {
            cr3: 0x1000,
            la57: true,
            nxe: true,
            maxphyaddr: 52,
        };
        let t = go(&mem, la57, 0x1_0000_0000_1ff8).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0xabc_dff8));
        assert_eq!(t.level, 1);
        // The same address is not canonical with 4-level paging.
        let gva = GuestVirtAddr::from(0x1_0000_0000_1ff8);
        assert_eq!(
            go(&mem, paging(0x1000), 0x1_0000_0000_1ff8),
            Err(GvaFault::NonCanonical { gva })
        );
        // A canonical upper-half address under LA57: bits 63:56 all one.
        let upper = GuestVirtAddr::from(0xff00_0000_0000_0000);
        assert_eq!(
            walk(&mem, &la57, upper),
            Err(GvaFault::NotPresent {
                level: 5,
                gva: upper
            })
        );
        let bad = GuestVirtAddr::from(0xfe00_0000_0000_0000);
        assert_eq!(
            walk(&mem, &la57, bad),
            Err(GvaFault::NonCanonical { gva: bad })
        );
    }

    #[test]
    fn permissions_combine_over_the_path() {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1000, 0x0000_0000_0000_2005); // PML4E[0]: P|US, R/W = 0
        mem.set(0x2000, 0x8000_0000_0000_3007); // PDPTE[0]: XD|P|RW|US
        mem.set(0x3000, 0x0000_0000_0000_4003); // PDE[0]: P|RW, U/S = 0
        mem.set(0x4000, 0x0000_0000_0000_5007); // PTE[0]: P|RW|US
        let t = go(&mem, paging(0x1000), 0x123).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x5123));
        assert_eq!(t.perms, GuestPerms::READ);
        // U/S = 0 on an upper level alone takes away user access and user
        // execution, nothing else.
        mem.set(0x1000, 0x0000_0000_0000_2003); // PML4E[0]: P|RW, U/S = 0
        mem.set(0x2000, 0x0000_0000_0000_3007); // PDPTE[0]: P|RW|US
        mem.set(0x3000, 0x0000_0000_0000_4007); // PDE[0]: P|RW|US
        let t = go(&mem, paging(0x1000), 0x123).unwrap();
        assert_eq!(t.perms, RW | GuestPerms::EXECUTE);
    }

    #[test]
    fn not_present_at_each_level() {
        let mut mem = four_level();
        let gva = GuestVirtAddr::from(0x80_4060_3abc);
        for (slot, level) in [(0x4018, 1), (0x3018, 2), (0x2008, 3), (0x1008, 4)] {
            mem.set(slot, 0x0000_0000_0000_0006); // RW|US without P
            assert_eq!(
                go(&mem, paging(0x1000), 0x80_4060_3abc),
                Err(GvaFault::NotPresent { level, gva })
            );
        }
    }

    #[test]
    fn reserved_bits_fault() {
        let gva = 0x80_4060_3abc;
        // XD without EFER.NXE.
        let no_nxe = GuestPaging::X86 {
            cr3: 0x1000,
            la57: false,
            nxe: false,
            maxphyaddr: 52,
        };
        let fault = GvaFault::Reserved {
            level: 1,
            entry: 0x8000_0000_0123_4005,
        };
        assert_eq!(go(&four_level(), no_nxe, gva), Err(fault));
        // PS in a PML4E.
        let mut mem = four_level();
        mem.set(0x1008, 0x0000_0000_0000_2087);
        assert_eq!(
            go(&mem, paging(0x1000), gva),
            Err(GvaFault::Reserved {
                level: 4,
                entry: 0x2087
            })
        );
        // A 2 MiB leaf with address bit 13 set (bit 12 is PAT, allowed).
        let mut mem = four_level();
        mem.set(0x3018, 0x0000_0000_4020_2083);
        assert_eq!(
            go(&mem, paging(0x1000), gva),
            Err(GvaFault::Reserved {
                level: 2,
                entry: 0x4020_2083
            })
        );
        mem.set(0x3018, 0x0000_0000_4020_1083);
        assert!(go(&mem, paging(0x1000), gva).is_ok());
        // A 1 GiB leaf with address bit 29 set.
        let mut mem = four_level();
        mem.set(0x2008, 0x0000_0000_6000_0083);
        assert_eq!(
            go(&mem, paging(0x1000), gva),
            Err(GvaFault::Reserved {
                level: 3,
                entry: 0x6000_0083
            })
        );
        // An address bit at or above MAXPHYADDR = 40.
        let narrow = GuestPaging::X86 {
            cr3: 0x1000,
            la57: false,
            nxe: true,
            maxphyaddr: 40,
        };
        let mut mem = four_level();
        mem.set(0x3018, 0x0000_0100_0000_4007);
        assert_eq!(
            go(&mem, narrow, gva),
            Err(GvaFault::Reserved {
                level: 2,
                entry: 0x100_0000_4007
            })
        );
        assert!(go(&four_level(), narrow, gva).is_ok());
    }

    #[test]
    fn bad_config_and_missing_tables() {
        let mem = four_level();
        let wide = GuestPaging::X86 {
            cr3: 0x1000,
            la57: false,
            nxe: true,
            maxphyaddr: 53,
        };
        assert_eq!(
            go(&mem, wide, 0),
            Err(GvaFault::BadConfig {
                field: "MAXPHYADDR",
                value: 53
            })
        );
        let cr3 = 0x0004_0000_0000_1000; // bit 50, above MAXPHYADDR 46
        let high = GuestPaging::X86 {
            cr3,
            la57: false,
            nxe: true,
            maxphyaddr: 46,
        };
        assert_eq!(
            go(&mem, high, 0),
            Err(GvaFault::BadConfig {
                field: "CR3",
                value: cr3
            })
        );
        // CR3 bits 11:0 (PCID) and 63:52 are ignored; the root is outside RAM.
        let gpa = GuestPhysAddr::from(0x10_0008);
        let cr3 = 0x8000_0000_0010_0fff;
        assert_eq!(
            go(&mem, paging(cr3), 0x80_0000_0000),
            Err(GvaFault::TableNotInRam { level: 4, gpa })
        );
    }

    #[test]
    fn recursive_entry_ends_at_the_level_bound() {
        // PML4E[0] points to the PML4 itself: GVA 0 walks it four times and
        // ends on the PML4 as a 4 KiB page.
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1000, 0x0000_0000_0000_1003);
        let mem = CountingMem::new(mem);
        let t = walk(&mem, &paging(0x1000), GuestVirtAddr::from(0x8)).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x1008));
        assert_eq!(mem.reads(), 4);
    }
}
