//! AMD nested paging (AMD64 APM Vol. 2, 15.25 "Nested Paging").
//!
//! Nested page tables use the long-mode page-table format (APM Vol. 2, 5.3
//! "Long-Mode Page Translation" and 5.4 "Page-Translation-Table Entry
//! Fields"), walked from nCR3 instead of CR3:
//!
//! | bit | PML4E / PDPE / PDE (table) | 1 GiB PDPE, 2 MiB PDE (PS=1) | 4 KiB PTE |
//! |---|---|---|---|
//! | 0 | P | P | P |
//! | 1 | R/W | R/W | R/W |
//! | 2 | U/S | U/S | U/S |
//! | 3, 4 | PWT, PCD | PWT, PCD | PWT, PCD |
//! | 5 | A | A | A |
//! | 6 | ignored | D | D |
//! | 7 | PS = 0 (MBZ in a PML4E) | PS = 1 | PAT |
//! | 8 | ignored (MBZ in a PML4E) | G | G |
//! | 12 | address | PAT | address |
//! | 51:12 | next table | frame 51:30 / 51:21, the bits below reserved | frame |
//! | 63 | NX | NX | NX |
//!
//! Differences from a host table, all handled here:
//! - every guest access is a user access to the nested walk (the KVM source
//!   says "NPT walks are always user-walks"; APM 15.25.5 "Nested Table
//!   Walk"), so U/S is set in **every** present entry, tables included;
//! - the nested memory type comes from PAT/PCD/PWT through the host PAT and
//!   combines with the guest's type (APM 15.25.8); this module only uses
//!   PAT entries 0-3 (WB, WT, UC-, UC), whose values are the same in the
//!   power-on PAT and the layout Linux programs;
//! - NX (bit 63) is only valid when the host had EFER.NXE set at VMRUN,
//!   which every long-mode hypervisor does.
//!
//! ```
//! use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
//! use npt_entry::NestedEntry;
//! use npt_entry::npt::{Ncr3, NptEntry};
//!
//! let rw = MappingFlags::READ | MappingFlags::WRITE;
//! let leaf = NptEntry::new_leaf(
//!     HostPhysAddr::from(0x20_0000),
//!     rw,
//!     PageSize::Size2M,
//!     MemoryType::WriteBack,
//! )?;
//! // NX | P | R/W | U/S | PS.
//! assert_eq!(leaf.raw(), 0x8000_0000_0020_0087);
//! assert_eq!(Ncr3::new(HostPhysAddr::from(0x1000), MemoryType::WriteBack)?.bits(), 0x1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::{fmt, ops::Range};

use bit_field::BitField;
use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;

use crate::{EntryError, GenericPTE, NestedEntry, NptFormat, check_flags, check_leaf_address};

/// A nested page-table entry: the long-mode PML4E/PDPE/PDE/PTE format.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NptEntry(u64);

/// AMD nested paging with 4-level tables: 48-bit GPA, 1 GiB leaves.
#[derive(Debug, Clone, Copy)]
pub struct Npt4;

impl NptFormat for Npt4 {
    type Entry = NptEntry;
    const NAME: &'static str = "AMD NPT 4-level";
    const LEVELS: usize = 4;
    const GPA_BITS: u32 = 48;
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

/// Bits 51:12: the physical address of the next table or 4 KiB frame (APM
/// Vol. 2, 5.3.3, Figures 5-20 to 5-23; 52 is the architectural maximum
/// physical-address width, 5.1 "Page Translation Overview").
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Bits 51:13: the address bits a 2 MiB or 1 GiB leaf may hold once bit 12
/// (PAT) is taken out (APM 5.3.4 "2-Mbyte Page Translation", 5.3.5
/// "1-Gbyte Page Translation": bits 20:13 / 29:13 are reserved).
const LARGE_ADDR_MASK: u64 = ADDR_MASK & !(1 << 12);

/// Low bits of an address inside a 2 MiB page.
const OFFSET_2M: u64 = (1 << 21) - 1;

/// `paddr` restricted to the address field `mask`.
#[inline]
fn addr_field(paddr: usize, mask: u64) -> u64 {
    paddr as u64 & mask
}

/// The PCD:PWT value (bits 4:3) for a memory type, assuming entries 0-3 of
/// the host PAT hold their power-on values WB, WT, UC-, UC (APM Vol. 2, 7.8.1
/// "PAT Register", 7.8.2 "PAT Indexing"; the PAT bit stays 0).
///
/// Write-back is 00 and write-through 01. Uncached normal memory takes 10
/// (UC-, PAT entry 2) so that it decodes back as uncached, and device
/// memory 11 (strong UC, PAT entry 3). The default PAT has no WC or WP
/// entry: write-combining takes UC- and write-protect UC, the closest
/// stronger types.
const fn cache_field(memory_type: MemoryType) -> u64 {
    match memory_type {
        MemoryType::WriteBack => 0b00,
        MemoryType::WriteThrough => 0b01,
        MemoryType::Uncached | MemoryType::WriteCombining => 0b10,
        MemoryType::Device | MemoryType::WriteProtect => 0b11,
    }
}

/// The memory type a PCD:PWT value selects with the power-on PAT.
const fn cache_type(field: u64) -> MemoryType {
    match field & 0b11 {
        0b00 => MemoryType::WriteBack,
        0b01 => MemoryType::WriteThrough,
        0b10 => MemoryType::Uncached,
        _ => MemoryType::Device,
    }
}

impl NptEntry {
    /// Bit 0, P, "Present" (APM Vol. 2, 5.4.1 "Field Definitions").
    /// A present entry is always readable: the format has no write-only or
    /// execute-only pages.
    pub const PRESENT: u64 = 1 << 0;
    /// Bit 1, R/W, "Read/Write": writes allowed when set (5.4.1).
    pub const READ_WRITE: u64 = 1 << 1;
    /// Bit 2, U/S, "User/Supervisor": user accesses allowed when set (5.4.1).
    /// The nested walk treats every access as a user access (APM 15.25.5),
    /// so every present entry has it set.
    pub const USER_SUPERVISOR: u64 = 1 << 2;
    /// Bit 3, PWT, "Page-Level Writethrough": bit 0 of the PAT index (5.4.1;
    /// 7.8.2 "PAT Indexing").
    pub const PWT: u64 = 1 << 3;
    /// Bit 4, PCD, "Page-Level Cache Disable": bit 1 of the PAT index (5.4.1;
    /// 7.8.2).
    pub const PCD: u64 = 1 << 4;
    /// Bits 4:3, PCD:PWT, read and written as one field: the low two bits of
    /// the PAT index (7.8.2).
    pub const CACHE: Range<usize> = 3..5;
    /// Bit 5, A, "Accessed": set by the processor on first use (5.4.1).
    pub const ACCESSED: u64 = 1 << 5;
    /// Bit 6, D, "Dirty": set by the processor on the first write through a
    /// leaf (5.4.1). Ignored in table entries.
    pub const DIRTY: u64 = 1 << 6;
    /// Bit 7 of a PDPE or PDE, PS, "Page Size": 1 maps a 1 GiB or 2 MiB page
    /// (5.4.1). Must be zero in a PML4E. In a 4 KiB PTE the same bit is
    /// [`NptEntry::PAT_4K`].
    pub const PAGE_SIZE: u64 = 1 << 7;
    /// Bit 7 of a 4 KiB PTE, PAT: bit 2 of the PAT index (5.4.1; 7.8.2).
    /// Never set here.
    pub const PAT_4K: u64 = 1 << 7;
    /// Bit 12 of a 2 MiB/1 GiB leaf, PAT: bit 2 of the PAT index (5.4.1;
    /// 7.8.2). Never set here.
    pub const PAT_LARGE: u64 = 1 << 12;
    /// Bit 8 of a leaf, G, "Global Page" (5.4.1). Never set here: global
    /// translations mean nothing to the nested walk.
    pub const GLOBAL: u64 = 1 << 8;
    /// Bit 63, NX, "No Execute": instruction fetches not allowed when set
    /// (5.4.1; 5.6.1 "No Execute (NX) Bit"). Needs EFER.NXE in the host.
    pub const NO_EXECUTE: u64 = 1 << 63;
    /// Bits 51:12, the physical address (Figures 5-20 to 5-23).
    pub const ADDR_MASK: u64 = ADDR_MASK;

    /// Every bit [`GenericPTE::set_flags`] derives from flags; the rest are
    /// kept.
    const FLAG_BITS: u64 = Self::PRESENT
        | Self::READ_WRITE
        | Self::USER_SUPERVISOR
        | Self::PWT
        | Self::PCD
        | Self::PAGE_SIZE
        | Self::NO_EXECUTE;

    /// The bits [`GenericPTE::set_flags`] controls for a leaf: P and U/S
    /// when `flags` grants any access, R/W for `WRITE`, NX without
    /// `EXECUTE`, PCD:PWT for `memory_type`, PS when `is_huge`.
    #[inline]
    fn leaf_bits(flags: MappingFlags, memory_type: MemoryType, is_huge: bool) -> u64 {
        let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
        let mut bits = 0;
        if flags.intersects(rwx) {
            bits |= Self::PRESENT | Self::USER_SUPERVISOR;
        }
        if flags.contains(MappingFlags::WRITE) {
            bits |= Self::READ_WRITE;
        }
        if !flags.contains(MappingFlags::EXECUTE) {
            bits |= Self::NO_EXECUTE;
        }
        if is_huge {
            bits |= Self::PAGE_SIZE;
        }
        bits.set_bits(Self::CACHE, cache_field(memory_type));
        bits
    }

    /// A leaf mapping `hpa` with `flags` access rights and an explicit
    /// memory type, with the encoding for `size` (a PTE for 4 KiB, a
    /// PDPE/PDE with PS set for 1 GiB/2 MiB).
    ///
    /// Checks [`check_flags`] and [`check_leaf_address`]. Reads are always
    /// allowed, so execute-only maps readable-executable. `memory_type`
    /// becomes PCD:PWT as `cache_field` documents: WB 00, WT 01 (PWT),
    /// uncached and WC 10 (UC-), device and WP 11 (UC). `USER`, `DEVICE` and `UNCACHED`
    /// in `flags` are ignored.
    ///
    /// `size` picks the encoding only; whether a level may hold such a leaf
    /// is [`NptFormat::level_of`]'s business.
    pub fn new_leaf(
        hpa: HostPhysAddr,
        flags: MappingFlags,
        size: PageSize,
        memory_type: MemoryType,
    ) -> Result<Self, EntryError> {
        check_flags(flags)?;
        check_leaf_address(hpa, size, Self::PA_BITS)?;
        let attrs = Self::leaf_bits(flags, memory_type, size.is_huge());
        Ok(Self(addr_field(hpa.as_usize(), ADDR_MASK) | attrs))
    }

    /// Whether the U/S bit is set.
    pub const fn is_user(&self) -> bool {
        self.0 & Self::USER_SUPERVISOR != 0
    }

    /// Whether NX is set.
    pub const fn is_no_execute(&self) -> bool {
        self.0 & Self::NO_EXECUTE != 0
    }

    /// The PCD:PWT field (bits 4:3).
    pub fn cache_bits(&self) -> u64 {
        self.0.get_bits(Self::CACHE)
    }
}

impl fmt::Debug for NptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NptEntry")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("paddr", &format_args!("{:#x}", self.paddr().as_usize()))
            .field("present", &self.is_present())
            .field("writable", &(self.0 & Self::READ_WRITE != 0))
            .field("nx", &self.is_no_execute())
            .field("pcd_pwt", &self.cache_bits())
            .field("ps", &self.is_huge())
            .finish()
    }
}

impl GenericPTE for NptEntry {
    /// A leaf: P|U/S when `flags` has any of `READ`/`WRITE`/`EXECUTE` (no
    /// access builds a non-present entry), R/W for `WRITE`, NX without
    /// `EXECUTE`, PCD|PWT (UC) for `DEVICE`, PCD (UC-) for `UNCACHED`, nothing (WB)
    /// otherwise, PS when `is_huge`. G and PAT stay clear.
    ///
    /// Cannot fail: `paddr` is masked to bits 51:12, and to bits 51:21 when
    /// `is_huge` (which also keeps bit 12, PAT, clear; a 1 GiB leaf further
    /// needs bits 29:21 clear, which only [`NptEntry::new_leaf`] /
    /// [`NestedEntry::try_new_leaf`] check).
    #[inline]
    fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
        let mask = if is_huge {
            ADDR_MASK & !OFFSET_2M
        } else {
            ADDR_MASK
        };
        let attrs = Self::leaf_bits(flags, MemoryType::from_flags(flags), is_huge);
        Self(addr_field(paddr.as_usize(), mask) | attrs)
    }

    /// A pointer to the next table at `paddr` (masked to bits 51:12): P, R/W
    /// and U/S set, NX clear, PCD=PWT=0 (the table itself is write-back),
    /// PS clear. Rights are ANDed down the walk, so the leaf decides.
    fn new_table(paddr: PhysAddr) -> Self {
        Self(
            addr_field(paddr.as_usize(), ADDR_MASK)
                | Self::PRESENT
                | Self::READ_WRITE
                | Self::USER_SUPERVISOR,
        )
    }

    /// Bits 51:12, or 51:13 when PS is set (bit 12 is then PAT). In a 4 KiB
    /// PTE bit 7 is PAT rather than PS; this crate never sets it there.
    fn paddr(&self) -> PhysAddr {
        let mask = if self.is_huge() {
            LARGE_ADDR_MASK
        } else {
            ADDR_MASK
        };
        PhysAddr::from_usize((self.0 & mask) as usize)
    }

    /// `READ` when present (presence implies read access), `WRITE` from
    /// R/W, `EXECUTE` when NX is clear, plus the memory-type flags of
    /// [`NestedEntry::memory_type`]. A non-present entry reports no rights.
    fn flags(&self) -> MappingFlags {
        let mut flags = self.memory_type().to_flags();
        if self.is_present() {
            flags |= MappingFlags::READ;
            if self.0 & Self::READ_WRITE != 0 {
                flags |= MappingFlags::WRITE;
            }
            if self.0 & Self::NO_EXECUTE == 0 {
                flags |= MappingFlags::EXECUTE;
            }
        }
        flags
    }

    /// Replaces the address (masked as [`GenericPTE::paddr`] reads it, so a
    /// large leaf keeps its PAT bit); every other bit is kept.
    fn set_paddr(&mut self, paddr: PhysAddr) {
        let mask = if self.is_huge() {
            LARGE_ADDR_MASK
        } else {
            ADDR_MASK
        };
        self.0 = (self.0 & !mask) | addr_field(paddr.as_usize(), mask);
    }

    /// Rewrites the bits [`GenericPTE::new_page`] derives from `flags` (P,
    /// R/W, U/S, PCD, PWT, PS, NX) and keeps the address, A, D, G, PAT and
    /// the available bits. For leaves.
    fn set_flags(&mut self, flags: MappingFlags, is_huge: bool) {
        let attrs = Self::leaf_bits(flags, MemoryType::from_flags(flags), is_huge);
        self.0 = (self.0 & !Self::FLAG_BITS) | attrs;
    }

    fn bits(self) -> usize {
        self.0 as usize
    }

    fn is_unused(&self) -> bool {
        self.0 == 0
    }

    /// The P bit.
    fn is_present(&self) -> bool {
        self.0 & Self::PRESENT != 0
    }

    /// The PS bit. Meaningful in a PDPE or PDE only; in a 4 KiB PTE the bit
    /// is PAT, which this crate never sets.
    fn is_huge(&self) -> bool {
        self.0 & Self::PAGE_SIZE != 0
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

impl NestedEntry for NptEntry {
    /// P = 1 with PS = 0: a PML4E, PDPE or PDE that references the next
    /// table (APM Vol. 2, 5.3 "Long-Mode Page Translation" and 5.4 "Page-Translation-Table Entry Fields").
    #[inline]
    fn is_table(&self) -> bool {
        self.0 & (Self::PRESENT | Self::PAGE_SIZE) == Self::PRESENT
    }

    /// The nested walk sets A in every entry it uses and D in the leaf of a
    /// write, like a host walk (APM 15.25.5).
    const HAS_ACCESSED_DIRTY: bool = true;
    const PA_BITS: u32 = 52;
    const FLAG_MASK: u64 = Self::FLAG_BITS;

    fn from_raw(bits: u64) -> Self {
        Self(bits)
    }

    fn raw(&self) -> u64 {
        self.0
    }

    /// Re-encodes a 4 KiB PTE as a large leaf (`huge`) or a large leaf as a
    /// 4 KiB PTE (`!huge`), keeping every attribute (P, R/W, U/S, PWT, PCD,
    /// A, D, G, NX, the available bits) and moving the PAT bit between bit 7
    /// (PTE) and bit 12 (large leaf). An entry already in the target
    /// encoding (PS equal to `huge`, e.g. a 1 GiB leaf split into 2 MiB
    /// ones) comes back unchanged.
    ///
    /// Bit 7 is PS in one encoding and PAT in the other, and PS decides: a
    /// 4 KiB PTE with its PAT bit set reads as already huge. This crate
    /// never sets that bit. Becoming huge clears address bits 20:12 (PAT and
    /// reserved bits in a large leaf), so pass the first small leaf of an
    /// aligned run.
    fn with_huge(self, huge: bool) -> Self {
        if huge == self.is_huge() {
            self
        } else if huge {
            let pat = self.0 & Self::PAT_4K != 0;
            let mut bits = (self.0 & !(OFFSET_2M & ADDR_MASK)) | Self::PAGE_SIZE;
            if pat {
                bits |= Self::PAT_LARGE;
            }
            Self(bits)
        } else {
            let pat = self.0 & Self::PAT_LARGE != 0;
            let mut bits = self.0 & !Self::PAGE_SIZE & !Self::PAT_LARGE;
            if pat {
                bits |= Self::PAT_4K;
            }
            Self(bits)
        }
    }

    /// Clears R/W and keeps every other bit (the page stays readable).
    fn write_protected(self, _huge: bool) -> Self {
        Self(self.0 & !Self::READ_WRITE)
    }

    /// The type PCD:PWT selects under the power-on PAT: 00 WB, 01 WT, 10
    /// UC- ([`MemoryType::Uncached`]), 11 UC ([`MemoryType::Device`]: UC is
    /// what both device and uncached memory are encoded as, so the stronger
    /// reading wins and `flags()` reports `DEVICE`). The PAT bit is ignored:
    /// PAT entries 4-7 repeat 0-3 at power-on. A host that reprograms
    /// entries 1 or 2 (Linux puts WC in entry 1) changes what 01 and 10
    /// mean; 00 and 11 are WB and UC in every common layout.
    fn memory_type(&self) -> MemoryType {
        cache_type(self.cache_bits())
    }

    fn is_accessed(&self) -> bool {
        self.0 & Self::ACCESSED != 0
    }

    fn is_dirty(&self) -> bool {
        self.0 & Self::DIRTY != 0
    }

    fn clear_accessed(&mut self) {
        self.0 &= !Self::ACCESSED;
    }

    fn clear_dirty(&mut self) {
        self.0 &= !Self::DIRTY;
    }
}

/// Why [`Ncr3::new`] refused a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ncr3Error {
    /// The root table is not 4 KiB aligned.
    Misaligned {
        /// The root address.
        root: HostPhysAddr,
    },
    /// The root table address needs more than 52 bits.
    AddressTooWide {
        /// The root address.
        root: HostPhysAddr,
    },
}

impl fmt::Display for Ncr3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned { root } => {
                write!(f, "nested root table {root:#x} is not 4 KiB aligned")
            }
            Self::AddressTooWide { root } => write!(
                f,
                "nested root table {root:#x} exceeds the 52-bit physical address width"
            ),
        }
    }
}

impl core::error::Error for Ncr3Error {}

impl From<Ncr3Error> for axerrno::AxErrorKind {
    fn from(_: Ncr3Error) -> Self {
        axerrno::AxErrorKind::InvalidInput
    }
}

/// The nested CR3, the VMCB field that locates the nested PML4 table (APM
/// Vol. 2, 15.25.3 "Enabling Nested Paging"; VMCB control area offset
/// 0B0h, Appendix B). Its layout is that of a long-mode CR3 without PCIDs
/// (5.3.2 "CR3", Figure 5-16 "Control Register 3 (CR3)-Long Mode"): PWT
/// bit 3, PCD bit 4, table base bits 51:12, everything else zero.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ncr3(u64);

impl Ncr3 {
    /// Bit 3, PWT, "Page-Level Writethrough" for accesses to the root table
    /// (5.3.2).
    pub const PWT: u64 = 1 << 3;
    /// Bit 4, PCD, "Page-Level Cache Disable" for accesses to the root table
    /// (5.3.2).
    pub const PCD: u64 = 1 << 4;
    /// Bits 4:3, PCD:PWT as one field.
    pub const CACHE: Range<usize> = 3..5;
    /// Bits 51:12, "Table Base Address" of the nested PML4 table (5.3.2).
    pub const ADDR_MASK: u64 = ADDR_MASK;

    /// An nCR3 for the root table at `root`, with PCD:PWT chosen for
    /// `memory_type` as for leaves (WB 00, WT 01, UC-/WC 10, UC/WP 11). Write-back is
    /// the usual choice.
    pub fn new(root: HostPhysAddr, memory_type: MemoryType) -> Result<Self, Ncr3Error> {
        let raw_root = root.as_usize() as u64;
        if raw_root & 0xfff != 0 {
            return Err(Ncr3Error::Misaligned { root });
        }
        if raw_root & !ADDR_MASK != 0 {
            return Err(Ncr3Error::AddressTooWide { root });
        }
        let mut bits = raw_root;
        bits.set_bits(Self::CACHE, cache_field(memory_type));
        Ok(Self(bits))
    }

    /// The value to write to the VMCB nCR3 field.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The root table address.
    pub fn root(self) -> HostPhysAddr {
        HostPhysAddr::from_usize((self.0 & ADDR_MASK) as usize)
    }

    /// The memory type of root-table accesses, decoded like a leaf's.
    pub fn memory_type(self) -> MemoryType {
        cache_type(self.0.get_bits(Self::CACHE))
    }
}

impl fmt::Debug for Ncr3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ncr3")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("root", &format_args!("{:#x}", self.0 & ADDR_MASK))
            .field("memory_type", &self.memory_type())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;

    const R: MappingFlags = MappingFlags::READ;
    const RW: MappingFlags = R.union(MappingFlags::WRITE);
    const RWX: MappingFlags = RW.union(MappingFlags::EXECUTE);

    fn pa(a: usize) -> PhysAddr {
        PhysAddr::from_usize(a)
    }

    #[test]
    fn single_bits_match_the_manual() {
        assert_eq!(NptEntry::PRESENT, 0x1);
        assert_eq!(NptEntry::READ_WRITE, 0x2);
        assert_eq!(NptEntry::USER_SUPERVISOR, 0x4);
        assert_eq!(NptEntry::PWT, 0x8);
        assert_eq!(NptEntry::PCD, 0x10);
        assert_eq!(NptEntry::CACHE, 3..5);
        assert_eq!(NptEntry::ACCESSED, 0x20);
        assert_eq!(NptEntry::DIRTY, 0x40);
        assert_eq!(NptEntry::PAGE_SIZE, 0x80);
        assert_eq!(NptEntry::PAT_4K, 0x80);
        assert_eq!(NptEntry::GLOBAL, 0x100);
        assert_eq!(NptEntry::PAT_LARGE, 0x1000);
        assert_eq!(NptEntry::NO_EXECUTE, 0x8000_0000_0000_0000);
        assert_eq!(NptEntry::ADDR_MASK, 0x000f_ffff_ffff_f000);
    }

    #[test]
    fn worked_example_4k_leaf() {
        // RWX write-back 4 KiB page at 0x1234_5000: P | R/W | U/S.
        let e = NptEntry::new_page(pa(0x1234_5000), RWX, false);
        assert_eq!(e.raw(), 0x0000_0000_1234_5007);
        assert_eq!(e.kind(true), EntryKind::Leaf);
        assert_eq!(e.flags(), RWX);
        assert_eq!(e.paddr(), pa(0x1234_5000));
        // Read-only: P | U/S and NX.
        let ro = NptEntry::new_page(pa(0x1234_5000), R, false);
        assert_eq!(ro.raw(), 0x8000_0000_1234_5005);
        assert_eq!(ro.flags(), R);
    }

    #[test]
    fn worked_example_2m_device_leaf() {
        // RW device 2 MiB page at 0x4020_0000: P|R/W|U/S 0x7, PWT 0x8, PCD 0x10,
        // PS 0x80, NX.
        let dev = RW | MappingFlags::DEVICE;
        let e = NptEntry::new_page(pa(0x4020_0000), dev, true);
        assert_eq!(e.raw(), 0x8000_0000_4020_009f);
        assert_eq!(e.kind(false), EntryKind::Leaf);
        assert_eq!(e.memory_type(), MemoryType::Device);
        assert_eq!(e.flags(), dev);
        // Uncached normal memory is PCD alone (UC-, PAT entry 2): 0x97.
        let uc = NptEntry::new_page(pa(0x4020_0000), RW | MappingFlags::UNCACHED, true);
        assert_eq!(uc.raw(), 0x8000_0000_4020_0097);
        assert_eq!(uc.memory_type(), MemoryType::Uncached);
    }

    #[test]
    fn worked_example_1g_leaf() {
        // RWX write-back 1 GiB page at 0x1_4000_0000: P|R/W|U/S, PS.
        let typed = NptEntry::new_leaf(
            HostPhysAddr::from(0x1_4000_0000),
            RWX,
            PageSize::Size1G,
            MemoryType::WriteBack,
        );
        assert_eq!(typed.map(|e| e.raw()), Ok(0x0000_0001_4000_0087));
        assert_eq!(
            NptEntry::new_page(pa(0x1_4000_0000), RWX, true).raw(),
            0x1_4000_0087
        );
    }

    #[test]
    fn worked_example_table() {
        let t = NptEntry::new_table(pa(0x8_0000_3000));
        assert_eq!(t.raw(), 0x0000_0008_0000_3007);
        assert_eq!(t.kind(false), EntryKind::Table);
        assert!(t.is_user() && !t.is_no_execute() && !t.is_huge());
        assert_eq!(t.paddr(), pa(0x8_0000_3000));
        assert_eq!(t.flags(), RWX);
    }

    #[test]
    fn user_bit_on_every_present_entry() {
        for flags in [R, RW, RWX, MappingFlags::EXECUTE, R | MappingFlags::EXECUTE] {
            for huge in [false, true] {
                assert!(NptEntry::new_page(pa(0x20_0000), flags, huge).is_user());
            }
        }
        assert!(NptEntry::new_table(pa(0x1000)).is_user());
    }

    #[test]
    fn execute_only_reads_back_readable() {
        let x = NptEntry::new_page(pa(0x1000), MappingFlags::EXECUTE, false);
        assert_eq!(x.raw(), 0x1005);
        assert_eq!(x.flags(), R | MappingFlags::EXECUTE);
        let none = NptEntry::new_page(pa(0x1000), MappingFlags::empty(), false);
        assert!(!none.is_present());
        assert_eq!(none.kind(true), EntryKind::Empty);
    }

    /// The rights rules every format shares (`NestedEntry` docs), in AMD
    /// encodings (APM Vol. 2, 5.4.1): a present entry is always readable, so
    /// write means P|R/W and execute-only means P with NX clear; no access
    /// is P = 0 (not present, 5.4.1 "Present (P) Bit").
    #[test]
    fn rights_rules_worked_examples() {
        let w = MappingFlags::WRITE;
        let x = MappingFlags::EXECUTE;
        // W -> NX (bit 63) | U/S 0x4 | R/W 0x2 | P 0x1.
        let e = NptEntry::new_page(pa(0x7000), w, false);
        assert_eq!(e.raw(), 0x8000_0000_0000_7007);
        assert_eq!(e.flags(), RW);
        // X -> U/S | P, NX clear: read+execute.
        assert_eq!(NptEntry::new_page(pa(0x7000), x, false).raw(), 0x7005);
        assert_eq!(
            NptEntry::try_new_leaf(HostPhysAddr::from(0x7000), x, PageSize::Size4K)
                .map(|e| e.raw()),
            Ok(0x7005)
        );
        // No access: NX and the address, P = 0, at every level.
        for huge in [false, true] {
            let none = NptEntry::new_page(pa(0x20_0000), MappingFlags::DEVICE, huge);
            assert_eq!(none.raw() & NptEntry::PRESENT, 0);
            assert_eq!(none.kind(true), EntryKind::Empty);
            assert_eq!(none.kind(false), EntryKind::Empty);
        }
        assert_eq!(
            NptEntry::new_page(pa(0x7000), MappingFlags::empty(), false).raw(),
            0x8000_0000_0000_7000
        );
        assert_eq!(NptEntry::check_leaf_flags(x), Ok(()));
        assert_eq!(NptEntry::check_leaf_flags(w), Err(EntryError::BadFlags(w)));
    }

    #[test]
    fn memory_type_encodings() {
        let cases = [
            (MemoryType::WriteBack, 0x0, MemoryType::WriteBack),
            (MemoryType::WriteThrough, 0x8, MemoryType::WriteThrough),
            (MemoryType::Uncached, 0x10, MemoryType::Uncached),
            (MemoryType::Device, 0x18, MemoryType::Device),
            (MemoryType::WriteCombining, 0x10, MemoryType::Uncached),
            (MemoryType::WriteProtect, 0x18, MemoryType::Device),
        ];
        for (t, bits, back) in cases {
            let e = NptEntry::new_leaf(HostPhysAddr::from(0x1000), R, PageSize::Size4K, t);
            let e = e.unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(e.raw() & 0x18, bits, "{t:?}");
            assert_eq!(e.memory_type(), back, "{t:?}");
        }
        // PCD alone is UC- under the default PAT.
        assert_eq!(
            NptEntry::from_raw(0x1015).memory_type(),
            MemoryType::Uncached
        );
        assert_eq!(
            NptEntry::from_raw(0x1015).flags(),
            R | MappingFlags::EXECUTE | MappingFlags::UNCACHED
        );
    }

    #[test]
    fn large_leaf_pat_bit_is_not_address() {
        let e = NptEntry::from_raw(0x4020_1000 | 0x87);
        assert_eq!(e.paddr(), pa(0x4020_0000));
        let mut e = e;
        e.set_paddr(pa(0x8000_0000));
        assert_eq!(e.raw(), 0x8000_1087);
        // In a 4 KiB PTE bit 12 is address.
        assert_eq!(NptEntry::from_raw(0x1007).paddr(), pa(0x1000));
    }

    #[test]
    fn huge_conversion_moves_pat_and_keeps_bits() {
        // WT 4 KiB leaf with A, D, G and NX.
        let small = NptEntry::from_raw(0x8000_0000_4020_016f);
        let huge = small.with_huge(true);
        assert_eq!(huge.raw(), 0x8000_0000_4020_01ef);
        assert_eq!(huge.paddr(), pa(0x4020_0000));
        assert_eq!(huge.with_huge(false), small);
        // Already in the target encoding: unchanged (1 GiB -> 2 MiB split).
        assert_eq!(huge.with_huge(true), huge);
        assert_eq!(small.with_huge(false), small);
        // The PAT bit moves between bit 12 (large leaf) and bit 7 (PTE).
        let pat_huge = NptEntry::from_raw(0x8000_0000_4020_11ef);
        assert_eq!(pat_huge.paddr(), pa(0x4020_0000));
        assert_eq!(pat_huge.with_huge(false).raw(), 0x8000_0000_4020_01ef);
        // Address bits 20:12 are PAT and reserved in a large leaf.
        let e = NptEntry::new_page(pa(0x4020_1000), RWX, false);
        assert_eq!(e.with_huge(true).raw(), 0x4020_0087);
        let ro = huge.write_protected(true);
        assert_eq!(ro.raw(), 0x8000_0000_4020_01ed);
        assert_eq!(ro.flags(), R);
    }

    #[test]
    fn typed_constructor_checks() {
        let hpa = HostPhysAddr::from(0x4000_1000);
        assert_eq!(
            NptEntry::new_leaf(hpa, RW, PageSize::Size1G, MemoryType::WriteBack),
            Err(EntryError::Misaligned {
                hpa,
                size: PageSize::Size1G
            })
        );
        let wide = HostPhysAddr::from(1 << 52);
        assert_eq!(
            NptEntry::new_leaf(wide, RW, PageSize::Size4K, MemoryType::WriteBack),
            Err(EntryError::AddressTooWide {
                hpa: wide,
                pa_bits: 52
            })
        );
        let w = MappingFlags::WRITE;
        assert_eq!(
            NptEntry::new_leaf(
                HostPhysAddr::from(0),
                w,
                PageSize::Size4K,
                MemoryType::WriteBack
            ),
            Err(EntryError::BadFlags(w))
        );
    }

    #[test]
    fn accessed_dirty_and_set_flags() {
        let mut e = NptEntry::from_raw(0x1000 | 0x167);
        assert!(e.is_accessed() && e.is_dirty());
        e.clear_accessed();
        assert!(!e.is_accessed() && e.is_dirty());
        e.clear_dirty();
        assert_eq!(e.raw(), 0x1107);
        // set_flags keeps the address, A/D and G; rewrites the rest.
        let mut f = NptEntry::from_raw(0x1000 | 0x167);
        f.set_flags(R | MappingFlags::DEVICE, false);
        assert_eq!(f.raw(), 0x8000_0000_0000_117d);
        f.clear();
        assert!(f.is_unused());
    }

    #[test]
    fn ncr3_worked_examples() {
        let wb = Ncr3::new(HostPhysAddr::from(0x1234_5000), MemoryType::WriteBack);
        let wb = wb.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(wb.bits(), 0x0000_0000_1234_5000);
        assert_eq!(wb.root(), HostPhysAddr::from(0x1234_5000));
        assert_eq!(wb.memory_type(), MemoryType::WriteBack);
        let uc = Ncr3::new(
            HostPhysAddr::from(0x000f_ffff_ffff_f000),
            MemoryType::Device,
        );
        assert_eq!(uc.map(Ncr3::bits), Ok(0x000f_ffff_ffff_f018));
        let wt = Ncr3::new(HostPhysAddr::from(0x2000), MemoryType::WriteThrough);
        assert_eq!(wt.map(Ncr3::bits), Ok(0x2008));
    }

    #[test]
    fn ncr3_errors() {
        let root = HostPhysAddr::from(0x1008);
        assert_eq!(
            Ncr3::new(root, MemoryType::WriteBack),
            Err(Ncr3Error::Misaligned { root })
        );
        let root = HostPhysAddr::from(1 << 52);
        assert_eq!(
            Ncr3::new(root, MemoryType::WriteBack),
            Err(Ncr3Error::AddressTooWide { root })
        );
        let msg = std::format!(
            "{}",
            Ncr3Error::Misaligned {
                root: HostPhysAddr::from(8)
            }
        );
        assert!(msg.contains("not 4 KiB aligned"), "{msg}");
    }
}

#[cfg(test)]
mod regressions {
    use super::*;
    use crate::GenericPTE;

    /// Found by the `entry_decode` fuzz target: UNCACHED was encoded as
    /// PCD:PWT = 11, which decodes as device memory.
    #[test]
    fn uncached_round_trips_as_uncached() {
        let flags = MappingFlags::READ | MappingFlags::UNCACHED;
        let e = NptEntry::new_page(0x1000.into(), flags, false);
        assert_eq!(e.raw() & (0b11 << 3), 0b10 << 3);
        assert_eq!(e.memory_type(), MemoryType::Uncached);
        assert_eq!(e.flags(), MappingFlags::READ | MappingFlags::UNCACHED);
        let dev = NptEntry::new_page(
            0x1000.into(),
            MappingFlags::READ | MappingFlags::DEVICE,
            false,
        );
        assert_eq!(dev.raw() & (0b11 << 3), 0b11 << 3);
        assert_eq!(dev.memory_type(), MemoryType::Device);
    }
}
