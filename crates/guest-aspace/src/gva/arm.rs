//! AArch64 stage 1 of the EL1&0 regime, 4 KiB granule (Arm ARM DDI 0487,
//! chapter D8 "The AArch64 Virtual Memory System Architecture").
//!
//! | bits | table descriptor (levels 0-2) | block (levels 1, 2) / page (level 3) |
//! |---|---|---|
//! | 1:0 | `0b11` | `0b01` block, `0b11` page |
//! | 6 | ignored | AP\[1\]: EL0 access |
//! | 7 | ignored | AP\[2\]: read-only |
//! | 10 | ignored | AF, the Access flag |
//! | 16 | address | nT in a block (FEAT_BBM), address in a page |
//! | 47:12 | next table | output address 47:30 / 47:21 / 47:12, the bits below RES0 |
//! | 50:48 / 49:48 | RES0 | RES0 |
//! | 53 | ignored | PXN |
//! | 54 | ignored | UXN |
//! | 59, 60 | PXNTable, UXNTable | ignored |
//! | 62:61 | APTable | ignored |
//!
//! Choices, each the conservative reading of the architecture:
//! - Bit 55 of the address picks TTBR0 or TTBR1; the bits above the range
//!   size must all equal it (TBI off), otherwise the address is
//!   [`GvaFault::NonCanonical`] (a level-0 translation fault on hardware).
//! - TxSZ must be 16..=39 (no FEAT_LPA2, no FEAT_TTST). The start level
//!   follows from the input size 64 - TxSZ: above 39 bits level 0, 31..=39
//!   level 1, 25..=30 level 2.
//! - Output addresses are 48 bits: a set RES0 bit among 50:48 (tables) or
//!   49:48 (blocks, pages) is [`GvaFault::Reserved`], the address size fault.
//! - A block whose output address has bits set below its size (bit 16, nT,
//!   excepted) is [`GvaFault::Misaligned`].
//! - `0b01` at level 0 or 3 is invalid, like bit 0 clear
//!   ([`GvaFault::NotPresent`], a translation fault).
//! - Hardware Access-flag and dirty-state management (TCR_EL1.HA/HD) are
//!   taken as off: AF = 0 is [`GvaFault::AccessFlag`] and AP\[2\] = 1 is
//!   read-only whatever DBM says.
//! - Hierarchical permissions (TCR_EL1.HPD0/1 = 0) are applied: APTable,
//!   UXNTable and PXNTable take rights away from everything below, and a
//!   page writable at EL0 is never executable at EL1.

use super::{Decoded, EntryFault, GuestPerms, GvaFault, Regime, bit, mask};
use gpa_types::GuestVirtAddr;

/// Bit 0: the descriptor is valid.
const VALID: u32 = 0;
/// Bit 1: with bit 0, `0b11` is a table (levels 0-2) or page (level 3),
/// `0b01` a block.
const TABLE_OR_PAGE: u32 = 1;
/// Bit 6, AP\[1\]: EL0 has the same data access as EL1.
const AP_EL0: u32 = 6;
/// Bit 7, AP\[2\]: read-only at every level of privilege.
const AP_READ_ONLY: u32 = 7;
/// Bit 10, AF, the Access flag: an access through a leaf with AF = 0 faults
/// unless hardware manages the flag.
const ACCESS_FLAG: u32 = 10;
/// Bit 16 of a block, nT (FEAT_BBM): not part of the output address.
const NOT_TRANSLATED: u32 = 16;
/// Bit 53, PXN: no instruction fetch at EL1.
const PXN: u32 = 53;
/// Bit 54, UXN: no instruction fetch at EL0.
const UXN: u32 = 54;
/// Bit 59 of a table descriptor, PXNTable: PXN for everything below.
const PXN_TABLE: u32 = 59;
/// Bit 60 of a table descriptor, UXNTable: UXN for everything below.
const UXN_TABLE: u32 = 60;
/// Bit 61 of a table descriptor, APTable\[0\]: no EL0 data access below.
const AP_TABLE_NO_EL0: u32 = 61;
/// Bit 62 of a table descriptor, APTable\[1\]: no writes below.
const AP_TABLE_READ_ONLY: u32 = 62;
/// Bits 47:12: next-level table or output address.
const OUTPUT_ADDRESS: u64 = mask(47, 12);
/// Bits 50:48 of a table descriptor: RES0 with 48-bit output addresses.
const TABLE_RES0: u64 = mask(50, 48);
/// Bits 49:48 of a block or page descriptor: RES0 without FEAT_LPA2.
const LEAF_RES0: u64 = mask(49, 48);
/// The smallest TxSZ with the 4 KiB granule (48-bit ranges).
const MIN_TXSZ: u8 = 16;
/// The largest TxSZ with the 4 KiB granule without FEAT_TTST (25-bit
/// ranges).
const MAX_TXSZ: u8 = 39;
/// TTBRn_EL1 bit 55 of the address selects TTBR1.
const SELECT_TTBR1: u32 = 55;

/// Levels walked for a TxSZ, or 0 when it is invalid.
pub(super) const fn levels(txsz: u8) -> usize {
    if txsz < MIN_TXSZ || txsz > MAX_TXSZ {
        return 0;
    }
    match 64 - txsz {
        40.. => 4,
        31..=39 => 3,
        _ => 2,
    }
}

/// A checked AArch64 regime for one address: the TTBR and range it uses.
pub(super) struct Arm {
    root: u64,
    levels: usize,
    va_bits: u32,
}

impl Arm {
    /// Picks TTBR0 or TTBR1 for `gva` and checks the range it belongs to.
    pub(super) fn select(
        ttbr0: u64,
        ttbr1: u64,
        t0sz: u8,
        t1sz: u8,
        gva: GuestVirtAddr,
    ) -> Result<Self, GvaFault> {
        let va = gva.as_usize() as u64;
        let upper = bit(va, SELECT_TTBR1);
        let (ttbr, txsz, field) = if upper {
            (ttbr1, t1sz, "T1SZ")
        } else {
            (ttbr0, t0sz, "T0SZ")
        };
        let levels = levels(txsz);
        if levels == 0 {
            return Err(GvaFault::BadConfig {
                field,
                value: txsz.into(),
            });
        }
        let va_bits = 64 - u32::from(txsz);
        let top = va >> va_bits;
        if top != if upper { u64::MAX >> va_bits } else { 0 } {
            return Err(GvaFault::NonCanonical { gva });
        }
        // The first table has 2^top_bits entries and is aligned to its
        // size; BADDR bits below that are taken as zero.
        let top_bits = va_bits - (12 + 9 * (levels as u32 - 1));
        Ok(Self {
            root: ttbr & mask(47, 3 + top_bits),
            levels,
            va_bits,
        })
    }
}

impl Regime for Arm {
    fn root(&self) -> u64 {
        self.root
    }

    fn levels(&self) -> usize {
        self.levels
    }

    fn va_bits(&self) -> u32 {
        self.va_bits
    }

    fn level(&self, height: usize) -> usize {
        3usize.saturating_sub(height)
    }

    fn decode(&self, entry: u64, height: usize) -> Result<Decoded, EntryFault> {
        if !bit(entry, VALID) {
            return Err(EntryFault::NotPresent);
        }
        let level = self.level(height);
        let table_or_page = bit(entry, TABLE_OR_PAGE);
        if table_or_page && level < 3 {
            if entry & TABLE_RES0 != 0 {
                return Err(EntryFault::Reserved);
            }
            let mut deny = GuestPerms::empty();
            deny.set(GuestPerms::EXECUTE, bit(entry, PXN_TABLE));
            deny.set(GuestPerms::USER_EXECUTE, bit(entry, UXN_TABLE));
            deny.set(GuestPerms::USER, bit(entry, AP_TABLE_NO_EL0));
            deny.set(GuestPerms::WRITE, bit(entry, AP_TABLE_READ_ONLY));
            return Ok(Decoded::Table {
                next: entry & OUTPUT_ADDRESS,
                deny,
            });
        }
        let page = table_or_page && level == 3;
        let block = !table_or_page && (level == 1 || level == 2);
        if !page && !block {
            return Err(EntryFault::NotPresent);
        }
        if entry & LEAF_RES0 != 0 {
            return Err(EntryFault::Reserved);
        }
        let shift = 12 + 9 * height as u32;
        if entry & mask(shift.saturating_sub(1), 12) & !(1 << NOT_TRANSLATED) != 0 {
            return Err(EntryFault::Misaligned);
        }
        if !bit(entry, ACCESS_FLAG) {
            return Err(EntryFault::AccessFlag);
        }
        let mut perms = GuestPerms::READ;
        perms.set(GuestPerms::WRITE, !bit(entry, AP_READ_ONLY));
        perms.set(GuestPerms::USER, bit(entry, AP_EL0));
        perms.set(GuestPerms::EXECUTE, !bit(entry, PXN));
        perms.set(GuestPerms::USER_EXECUTE, !bit(entry, UXN));
        Ok(Decoded::Leaf {
            base: entry & mask(47, shift),
            perms,
        })
    }

    fn finish(&self, mut perms: GuestPerms) -> GuestPerms {
        // Memory writable at EL0 is never executable at EL1.
        if perms.contains(GuestPerms::USER | GuestPerms::WRITE) {
            perms.remove(GuestPerms::EXECUTE);
        }
        perms
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

    fn paging(ttbr0: u64, t0sz: u8) -> GuestPaging {
        GuestPaging::Arm {
            ttbr0,
            ttbr1: 0x8000,
            t0sz,
            t1sz: 25,
        }
    }

    fn go(mem: &FakeMem, paging: GuestPaging, gva: u64) -> Result<GvaTranslation, GvaFault> {
        walk(mem, &paging, GuestVirtAddr::from(gva as usize))
    }

    /// T0SZ = 16, GVA 0x80_4060_3abc: level-0 index 1, level-1 1, level-2 3,
    /// level-3 3, offset 0xabc.
    fn four_level() -> FakeMem {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1008, 0x0000_0000_0000_2003); // L0[1]: table -> 0x2000
        mem.set(0x2008, 0x0000_0000_0000_3003); // L1[1]: table -> 0x3000
        mem.set(0x3018, 0x0000_0000_0000_4003); // L2[3]: table -> 0x4000
        mem.set(0x4018, 0x0040_0000_0123_4703); // L3[3]: page, UXN|AF|SH=11, AP=00
        mem
    }

    #[test]
    fn translates_a_4k_page_from_level_0() {
        let mem = CountingMem::new(four_level());
        let t = walk(
            &mem,
            &paging(0x1000, 16),
            GuestVirtAddr::from(0x80_4060_3abc),
        )
        .unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x0123_4abc));
        assert_eq!((t.size, t.level), (PageSize::Size4K, 3));
        assert_eq!(t.perms, R | W | X);
        assert_eq!(mem.reads(), 4);
    }

    #[test]
    fn translates_2m_and_1g_blocks() {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1000, 0x0000_0000_0000_2003); // L0[0]: table -> 0x2000
        mem.set(0x2000, 0x0000_0000_0000_3003); // L1[0]: table -> 0x3000
        mem.set(0x3010, 0x0000_0000_4020_0781); // L2[2]: 2 MiB block, AP=10 (EL1 RO)
        mem.set(0x2018, 0x0000_0001_c000_0741); // L1[3]: 1 GiB block, AP=01 (EL0 RW)
        let t = go(&mem, paging(0x1000, 16), 0x45_6789).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x4025_6789));
        assert_eq!((t.size, t.level), (PageSize::Size2M, 2));
        assert_eq!(t.perms, R | X | UX);
        let t = go(&mem, paging(0x1000, 16), 0xc123_4567).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x1_c123_4567));
        assert_eq!((t.size, t.level), (PageSize::Size1G, 1));
        // Writable at EL0, so not executable at EL1.
        assert_eq!(t.perms, R | W | U | UX);
        // nT (bit 16) in a block is not an address bit.
        mem.set(0x3010, 0x0000_0000_4021_0781);
        assert_eq!(
            go(&mem, paging(0x1000, 16), 0x45_6789).unwrap().gpa,
            GuestPhysAddr::from(0x4025_6789)
        );
    }

    #[test]
    fn ttbr1_translates_high_addresses() {
        // T1SZ = 25: 39-bit range, walk starts at level 1. GVA
        // 0xffff_ffc0_0020_1abc: level-1 index 0x100, level-2 1, level-3 1.
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x8800, 0x0000_0000_0000_9003); // L1[0x100]: table -> 0x9000
        mem.set(0x9008, 0x0000_0000_0000_a003); // L2[1]: table -> 0xa000
        mem.set(0xa008, 0x0040_0000_0555_5783); // L3[1]: page, UXN|AF, AP=10
        // ASID 5 and CnP in TTBR1 are ignored.
        let paging = GuestPaging::Arm {
            ttbr0: 0x1000,
            ttbr1: 0x0005_0000_0000_8001,
            t0sz: 16,
            t1sz: 25,
        };
        let mem = CountingMem::new(mem);
        let t = walk(&mem, &paging, GuestVirtAddr::from(0xffff_ffc0_0020_1abc)).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x0555_5abc));
        assert_eq!(t.level, 3);
        assert_eq!(t.perms, R | X);
        assert_eq!(mem.reads(), 3);
        assert_eq!(paging.max_levels(), 4);
        // Bit 55 set, but bits 63:56 clear: in neither range.
        for gva in [
            0x00ff_ffc0_0000_0000,
            0xffff_ff00_0000_0000,
            0x0001_0000_0000_0000,
        ] {
            let gva = GuestVirtAddr::from(gva);
            assert_eq!(
                walk(&mem, &paging, gva),
                Err(GvaFault::NonCanonical { gva })
            );
        }
    }

    #[test]
    fn start_levels_follow_txsz() {
        // T0SZ = 34: 30-bit range, levels 2 and 3. GVA 0x2020_1abc:
        // level-2 index 0x101, level-3 1.
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1808, 0x0000_0000_0000_2003); // L2[0x101]: table -> 0x2000
        mem.set(0x2008, 0x0000_0000_0777_7743); // L3[1]: page, AP=01
        let t = go(&mem, paging(0x1000, 34), 0x2020_1abc).unwrap();
        assert_eq!((t.gpa, t.level), (GuestPhysAddr::from(0x0777_7abc), 3));
        assert_eq!(t.perms, R | W | U | UX);
        // T0SZ = 24: 40-bit range, a 2-entry (16-byte) level-0 table at
        // 0x1010. GVA 0x80_0000_1010: level-0 index 1, level-3 index 1.
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1018, 0x0000_0000_0000_2003); // L0[1] -> 0x2000
        mem.set(0x2000, 0x0000_0000_0000_3003); // L1[0] -> 0x3000
        mem.set(0x3000, 0x0000_0000_0000_4003); // L2[0] -> 0x4000
        mem.set(0x4008, 0x0000_0000_0999_9703); // L3[1]: page
        let t = go(&mem, paging(0x1010, 24), 0x80_0000_1010).unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from(0x0999_9010));
    }

    #[test]
    fn invalid_descriptors() {
        let gva = 0x80_4060_3abc;
        let at = |level| GvaFault::NotPresent {
            level,
            gva: GuestVirtAddr::from(gva as usize),
        };
        let mut mem = four_level();
        mem.set(0x4018, 0x0040_0000_0123_4702); // bit 0 clear
        assert_eq!(go(&mem, paging(0x1000, 16), gva), Err(at(3)));
        mem.set(0x4018, 0x0040_0000_0123_4701); // 0b01 at level 3
        assert_eq!(go(&mem, paging(0x1000, 16), gva), Err(at(3)));
        mem.set(0x1008, 0x0000_0000_0000_0701); // 0b01 (block) at level 0
        assert_eq!(go(&mem, paging(0x1000, 16), gva), Err(at(0)));
    }

    #[test]
    fn reserved_misaligned_and_access_flag() {
        let gva = 0x80_4060_3abc;
        let mut mem = four_level();
        mem.set(0x2008, 0x0001_0000_0000_3003); // table with bit 48
        assert_eq!(
            go(&mem, paging(0x1000, 16), gva),
            Err(GvaFault::Reserved {
                level: 1,
                entry: 0x1_0000_0000_3003
            })
        );
        let mut mem = four_level();
        mem.set(0x4018, 0x0002_0000_0123_4703); // page with bit 49
        assert_eq!(
            go(&mem, paging(0x1000, 16), gva),
            Err(GvaFault::Reserved {
                level: 3,
                entry: 0x2_0000_0123_4703
            })
        );
        let mut mem = four_level();
        mem.set(0x3018, 0x0000_0000_4020_2701); // 2 MiB block with bit 13
        assert_eq!(
            go(&mem, paging(0x1000, 16), gva),
            Err(GvaFault::Misaligned {
                level: 2,
                entry: 0x4020_2701
            })
        );
        mem.set(0x2008, 0x0000_0000_4020_0701); // 1 GiB block with bit 21
        assert_eq!(
            go(&mem, paging(0x1000, 16), gva),
            Err(GvaFault::Misaligned {
                level: 1,
                entry: 0x4020_0701
            })
        );
        let mut mem = four_level();
        mem.set(0x4018, 0x0040_0000_0123_4303); // AF clear
        assert_eq!(
            go(&mem, paging(0x1000, 16), gva),
            Err(GvaFault::AccessFlag {
                level: 3,
                entry: 0x40_0000_0123_4303
            })
        );
    }

    #[test]
    fn table_attributes_restrict_the_leaf() {
        let gva = 0x80_4060_3abc;
        let mut mem = four_level();
        mem.set(0x4018, 0x0000_0000_0123_4743); // page, AP=01: EL0 RW, executable
        assert_eq!(
            go(&mem, paging(0x1000, 16), gva).unwrap().perms,
            R | W | U | UX
        );
        mem.set(0x1008, 0x6800_0000_0000_2003); // L0: APTable=11, PXNTable
        assert_eq!(go(&mem, paging(0x1000, 16), gva).unwrap().perms, R | UX);
        mem.set(0x1008, 0x1000_0000_0000_2003); // L0: UXNTable
        assert_eq!(go(&mem, paging(0x1000, 16), gva).unwrap().perms, R | W | U);
    }

    #[test]
    fn bad_txsz_and_missing_tables() {
        let mem = four_level();
        assert_eq!(
            go(&mem, paging(0x1000, 15), 0),
            Err(GvaFault::BadConfig {
                field: "T0SZ",
                value: 15
            })
        );
        let p = GuestPaging::Arm {
            ttbr0: 0x1000,
            ttbr1: 0x8000,
            t0sz: 16,
            t1sz: 40,
        };
        assert_eq!(
            go(&mem, p, u64::MAX),
            Err(GvaFault::BadConfig {
                field: "T1SZ",
                value: 40
            })
        );
        assert_eq!(levels(40), 0);
        let gpa = GuestPhysAddr::from(0x10_0008);
        assert_eq!(
            go(&mem, paging(0x10_0000, 16), 0x80_0000_0000),
            Err(GvaFault::TableNotInRam { level: 0, gpa })
        );
    }

    #[test]
    fn self_referencing_table_ends_at_level_3() {
        let mut mem = FakeMem::ram(0x1_0000);
        mem.set(0x1000, 0x0000_0000_0000_1003); // L0[0] -> its own table
        let mem = CountingMem::new(mem);
        let fault = GvaFault::AccessFlag {
            level: 3,
            entry: 0x1003,
        };
        assert_eq!(
            walk(&mem, &paging(0x1000, 16), GuestVirtAddr::from(0)),
            Err(fault)
        );
        assert_eq!(mem.reads(), 4);
    }
}
