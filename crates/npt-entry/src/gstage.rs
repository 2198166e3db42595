//! RISC-V G-stage translation: the second stage of the hypervisor ("H")
//! extension's two-stage translation, from guest-physical to supervisor
//! physical addresses.
//!
//! # Sources
//!
//! The RISC-V Instruction Set Manual, Volume II: Privileged Architecture.
//! Section numbers are those of the ratified version 20211203; titles are
//! given too, because later releases renumber the chapters.
//!
//! - §8.2.10 "Hypervisor Guest Address Translation and Protection Register
//!   (`hgatp`)": MODE/VMID/PPN, the 16 KiB root. See [`Hgatp`].
//! - §8.5 "Two-Stage Address Translation" and §8.5.1 "Guest Physical Address
//!   Translation": Sv39x4/Sv48x4/Sv57x4 are Sv39/Sv48/Sv57 with 2 more GPA
//!   bits at the root, which is 16 KiB and 16 KiB aligned; PTEs have exactly
//!   the Sv39/Sv48/Sv57 format; every G-stage access counts as a *user*
//!   access; the G bit is reserved.
//! - §4.3.1 "Addressing and Memory Protection" (Sv32; Sv39/48/57 refer back
//!   to it for bits 9:0): V/R/W/X/U/G/A/D/RSW, the R/W/X encodings, the rule
//!   that D, A and U are zero in non-leaf PTEs, and the A/D update schemes.
//! - §4.4.1 "Addressing and Memory Protection" (Sv39): the 64-bit PTE layout
//!   (PPN 53:10, reserved 60:54, PBMT 62:61, N 63); §4.5 Sv48 and §4.6 Sv57:
//!   leaves at every level (terapages, petapages).
//! - Chapter 5 "Svnapot" (the N bit) and chapter 6 "Svpbmt" (the PBMT field).
//! - The "Svadu" extension and the Machine Environment Configuration register
//!   (`menvcfg`) fields PBMTE and ADUE (later releases; not in 20211203),
//!   which govern PBMT and hardware A/D updating for the G-stage.
//!
//! # Encoding choices
//!
//! | field | leaf from [`GStageEntry::new_leaf`] / `new_page` | table from `new_table` |
//! |---|---|---|
//! | V (0) | 1 (0 if the flags give no access at all) | 1 |
//! | R/W/X (3:1) | from the flags; W implies R | 0 |
//! | U (4) | **1**: G-stage checks every access as a U-mode access | 0 |
//! | G (5) | 0: reserved for the G-stage | 0 |
//! | A (6) / D (7) | A = 1; D = 1 when writable (see below) | 0 |
//! | RSW (9:8) | 0 | 0 |
//! | PPN (53:10) | HPA >> 12 | next table >> 12 |
//! | reserved (60:54) | 0 | 0 |
//! | PBMT (62:61) | from the memory type (see below) | 0 |
//! | N (63) | 0 (see [`GStageEntry::set_napot`]) | 0 |
//!
//! **Accessed/dirty.** Hardware either updates A/D itself (Svadu, enabled
//! for the G-stage by `menvcfg`.ADUE = 1) or raises a guest-page fault when
//! an access finds A = 0, or a store finds D = 0 (Svade). New leaves are
//! built with A = 1 and, when writable, D = 1, so a fresh mapping never
//! faults on first use on either kind of hardware. The bits are still
//! meaningful ([`NestedEntry::HAS_ACCESSED_DIRTY`] is true): after a
//! hypervisor clears them to harvest access or dirty information, the next
//! access either sets them again (Svadu) or faults so that the hypervisor
//! can record the access and set them itself (Svade).
//!
//! **Memory types.** PBMT (Svpbmt) overrides the physical memory attributes
//! (PMAs) of the page: `PMA` (0) keeps them, `NC` (1) is non-cacheable
//! main memory, `IO` (2) is non-cacheable strongly-ordered I/O. G-stage PBMT
//! takes effect only when the hart implements Svpbmt and M-mode has set
//! `menvcfg`.PBMTE (`henvcfg`.PBMTE governs the guest's own VS-stage
//! tables, not these). Without Svpbmt bits 62:61 are reserved and a nonzero
//! value makes every access through the entry fault: on such hardware use
//! only [`MemoryType::WriteBack`] (no `DEVICE`/`UNCACHED` flags), which
//! encodes `PMA`, and rely on the platform's PMAs, which already make device
//! regions I/O.

use core::fmt;

use bitflags::bitflags;
use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;

use crate::{EntryError, GenericPTE, NestedEntry, NptFormat, check_flags, check_leaf_address};

/// A G-stage page-table entry (the Sv39/Sv48/Sv57 PTE format, §8.5.1).
///
/// Built by [`GStageEntry::new_leaf`], [`NestedEntry::try_new_leaf`],
/// `GenericPTE::new_page` or `GenericPTE::new_table`; see the
/// [module documentation](crate::gstage) for the exact bits each writes.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GStageEntry(u64);

/// Sv39x4: 3 levels, 41-bit GPA, 16 KiB root of 2048 entries, 1 GiB leaves.
#[derive(Debug, Clone, Copy)]
pub struct Sv39x4;
/// Sv48x4: 4 levels, 50-bit GPA, 16 KiB root, leaves up to 512 GiB.
#[derive(Debug, Clone, Copy)]
pub struct Sv48x4;
/// Sv57x4: 5 levels, 59-bit GPA, 16 KiB root, leaves up to 512 GiB (Sv57
/// also has 256 TiB petapages at level 4; this crate neither creates nor
/// decodes those as leaves of a known size and reports them as invalid).
#[derive(Debug, Clone, Copy)]
pub struct Sv57x4;

impl NptFormat for Sv39x4 {
    type Entry = GStageEntry;
    const NAME: &'static str = "RISC-V Sv39x4";
    const LEVELS: usize = 3;
    const GPA_BITS: u32 = 41;
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

impl NptFormat for Sv48x4 {
    type Entry = GStageEntry;
    const NAME: &'static str = "RISC-V Sv48x4";
    const LEVELS: usize = 4;
    const GPA_BITS: u32 = 50;
    const MAX_LEAF: PageSize = PageSize::Size512G;
}

impl NptFormat for Sv57x4 {
    type Entry = GStageEntry;
    const NAME: &'static str = "RISC-V Sv57x4";
    const LEVELS: usize = 5;
    const GPA_BITS: u32 = 59;
    const MAX_LEAF: PageSize = PageSize::Size512G;
}

/// A G-stage format together with the `hgatp`.MODE value that selects it.
pub trait GStageFormat: NptFormat<Entry = GStageEntry> {
    /// The `hgatp`.MODE encoding of this format (§8.2.10, "Encoding of
    /// `hgatp` MODE field").
    const MODE: HgatpMode;
}

impl GStageFormat for Sv39x4 {
    const MODE: HgatpMode = HgatpMode::Sv39x4;
}

impl GStageFormat for Sv48x4 {
    const MODE: HgatpMode = HgatpMode::Sv48x4;
}

impl GStageFormat for Sv57x4 {
    const MODE: HgatpMode = HgatpMode::Sv57x4;
}

// ---------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------

/// A multi-bit field of a 64-bit register or entry: `width` bits starting at
/// bit `lo`. Every multi-bit field in this module is read and written
/// through these `const fn`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The lowest bit.
    pub lo: u32,
    /// The number of bits (1..=63).
    pub width: u32,
}

impl Field {
    /// The field from bit `lo` to bit `hi`, inclusive, as the manuals write
    /// it (`hi:lo`).
    pub const fn bits(hi: u32, lo: u32) -> Self {
        Self {
            lo,
            width: hi - lo + 1,
        }
    }

    /// The field's bits in place.
    pub const fn mask(self) -> u64 {
        ((1u64 << self.width) - 1) << self.lo
    }

    /// The field's value, shifted down.
    pub const fn get(self, word: u64) -> u64 {
        (word & self.mask()) >> self.lo
    }

    /// `word` with the field replaced by `value`; bits of `value` that do
    /// not fit are dropped.
    pub const fn set(self, word: u64, value: u64) -> u64 {
        (word & !self.mask()) | ((value << self.lo) & self.mask())
    }

    /// Whether `value` fits in the field.
    pub const fn fits(self, value: u64) -> bool {
        value >> self.width == 0
    }
}

bitflags! {
    /// The single-bit fields of a G-stage PTE (§4.3.1 for bits 7:0, which
    /// Sv39/Sv48/Sv57 share, §4.4.1 and chapter 5 for bit 63).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// V (bit 0), *valid*: when clear the entry maps nothing and all
        /// other bits are free for software (§4.3.1).
        const V = 1 << 0;
        /// R (bit 1), *readable* (§4.3.1). R = W = X = 0 with V = 1 makes
        /// the entry a pointer to the next-level table.
        const R = 1 << 1;
        /// W (bit 2), *writable* (§4.3.1). W = 1 with R = 0 is reserved.
        const W = 1 << 2;
        /// X (bit 3), *executable* (§4.3.1).
        const X = 1 << 3;
        /// U (bit 4), *user* (§4.3.1). G-stage treats every guest access,
        /// even VS-mode's and the VS-stage walker's, as a U-mode access
        /// (§8.5.1), so a G-stage leaf without U faults on every access.
        /// Reserved (must be zero) in non-leaf entries (§4.3.1).
        const U = 1 << 4;
        /// G (bit 5), *global* (§4.3.1). Reserved in G-stage PTEs: software
        /// should keep it clear and hardware ignores it (§8.5.1).
        const G = 1 << 5;
        /// A (bit 6), *accessed* (§4.3.1). Reserved (must be zero) in
        /// non-leaf entries.
        const A = 1 << 6;
        /// D (bit 7), *dirty* (§4.3.1). Reserved (must be zero) in non-leaf
        /// entries.
        const D = 1 << 7;
        /// N (bit 63), Svnapot: the leaf is part of a naturally aligned
        /// power-of-two range of identical PTEs (chapter 5). Reserved in
        /// non-leaf entries and without Svnapot.
        const N = 1 << 63;
    }
}

/// PTE bits 9:8, RSW: reserved for supervisor software, ignored by hardware
/// (§4.3.1). This crate never sets them.
pub const PTE_RSW: Field = Field::bits(9, 8);
/// PTE bits 53:10, PPN: the physical page number, 44 bits (§4.4.1). The
/// physical address is `PPN << 12`, so 56 bits wide.
pub const PTE_PPN: Field = Field::bits(53, 10);
/// PTE bits 60:54: reserved for future standard use; must be zero or the
/// access faults (§4.4.1).
pub const PTE_RESERVED: Field = Field::bits(60, 54);
/// PTE bits 62:61, PBMT (Svpbmt, chapter 6): page-based memory type of a
/// leaf; reserved (must be zero) in non-leaf entries. See [`Pbmt`].
pub const PTE_PBMT: Field = Field::bits(62, 61);

/// Shift from a physical address to its page number (4 KiB pages, §4.4.1).
const PAGE_SHIFT: u32 = 12;

/// The PBMT field values (Svpbmt, chapter 6, "Encodings for PBMT field in
/// Sv39, Sv48, and Sv57 PTEs"). Value 3 is reserved and faults.
///
/// Only effective with Svpbmt and `menvcfg`.PBMTE = 1; see the
/// [module documentation](crate::gstage).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pbmt {
    /// 0, PMA: no override, the page keeps the attributes of the physical
    /// memory region (write-back cacheable for ordinary RAM).
    Pma = 0,
    /// 1, NC: non-cacheable, idempotent, weakly-ordered (RVWMO) main memory.
    Nc = 1,
    /// 2, IO: non-cacheable, non-idempotent, strongly-ordered I/O.
    Io = 2,
}

impl Pbmt {
    /// The type for a raw 2-bit field value; `None` for the reserved 3 (or
    /// anything wider).
    pub const fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(Self::Pma),
            1 => Some(Self::Nc),
            2 => Some(Self::Io),
            _ => None,
        }
    }

    /// The raw field value.
    pub const fn raw(self) -> u64 {
        self as u64
    }

    /// The PBMT value for a generic memory type.
    ///
    /// Svpbmt has three types, so types without an exact match take the
    /// closest stronger (less cached) one: write-back keeps the PMAs
    /// ([`Pbmt::Pma`]); uncached, write-combining, write-through and
    /// write-protect become [`Pbmt::Nc`] (non-cacheable main memory, which
    /// may combine writes); device becomes [`Pbmt::Io`].
    pub const fn from_memory_type(memory_type: MemoryType) -> Self {
        match memory_type {
            MemoryType::WriteBack => Self::Pma,
            MemoryType::Uncached
            | MemoryType::WriteCombining
            | MemoryType::WriteThrough
            | MemoryType::WriteProtect => Self::Nc,
            MemoryType::Device => Self::Io,
        }
    }

    /// The generic memory type this PBMT value gives: PMA reads as
    /// write-back (the usual PMA of RAM), NC as uncached, IO as device.
    pub const fn memory_type(self) -> MemoryType {
        match self {
            Self::Pma => MemoryType::WriteBack,
            Self::Nc => MemoryType::Uncached,
            Self::Io => MemoryType::Device,
        }
    }
}

// ---------------------------------------------------------------------------
// The entry
// ---------------------------------------------------------------------------

impl GStageEntry {
    /// The all-zero, invalid entry.
    pub const EMPTY: Self = Self(0);

    /// Checked leaf constructor with an explicit memory type.
    ///
    /// `hpa` must be aligned to `size` and fit in 56 bits, and `flags` must
    /// pass [`check_flags`] (some access, no write without read). The
    /// encoding is the same at every level, so `size` only sets the
    /// alignment check. `USER`, `DEVICE` and `UNCACHED` in `flags` are
    /// ignored: U is always set and the memory type comes from
    /// `memory_type` (see [`Pbmt::from_memory_type`]).
    pub const fn new_leaf(
        hpa: HostPhysAddr,
        flags: MappingFlags,
        size: PageSize,
        memory_type: MemoryType,
    ) -> Result<Self, EntryError> {
        if let Err(e) = check_flags(flags) {
            return Err(e);
        }
        if let Err(e) = check_leaf_address(hpa, size, <Self as NestedEntry>::PA_BITS) {
            return Err(e);
        }
        Ok(Self::encode_leaf(
            hpa.as_usize(),
            flags,
            Pbmt::from_memory_type(memory_type),
        ))
    }

    /// The leaf encoding of the module table. No-access flags give V = 0
    /// (V = 1 with R = W = X = 0 would be a table pointer); WRITE without
    /// READ gets R too (W without R is reserved).
    const fn encode_leaf(paddr: usize, flags: MappingFlags, pbmt: Pbmt) -> Self {
        let mut bits = PteFlags::U.union(PteFlags::A);
        if flags.contains(MappingFlags::READ) {
            bits = bits.union(PteFlags::R);
        }
        if flags.contains(MappingFlags::WRITE) {
            bits = bits
                .union(PteFlags::R)
                .union(PteFlags::W)
                .union(PteFlags::D);
        }
        if flags.contains(MappingFlags::EXECUTE) {
            bits = bits.union(PteFlags::X);
        }
        if bits.intersects(Self::RWX) {
            bits = bits.union(PteFlags::V);
        }
        let raw = PTE_PPN.set(bits.bits(), (paddr as u64) >> PAGE_SHIFT);
        Self(PTE_PBMT.set(raw, pbmt.raw()))
    }

    /// R, W and X: any of them makes a valid entry a leaf.
    const RWX: PteFlags = PteFlags::R.union(PteFlags::W).union(PteFlags::X);

    /// The single-bit fields; multi-bit fields have their own accessors.
    pub const fn pte_flags(&self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0)
    }

    /// The physical page number (PPN, bits 53:10).
    pub const fn ppn(&self) -> u64 {
        PTE_PPN.get(self.0)
    }

    /// The physical address in the PPN field (`PPN << 12`).
    pub const fn hpa(&self) -> HostPhysAddr {
        HostPhysAddr::from_usize((self.ppn() << PAGE_SHIFT) as usize)
    }

    /// Whether V = 1 and any of R/W/X is set: a leaf at any level (§4.3.1).
    pub const fn is_leaf(&self) -> bool {
        let f = self.pte_flags();
        f.contains(PteFlags::V) && f.intersects(Self::RWX)
    }

    /// Whether V = 1 and R = W = X = 0: a pointer to the next-level table.
    pub const fn is_table(&self) -> bool {
        let f = self.pte_flags();
        f.contains(PteFlags::V) && !f.intersects(Self::RWX)
    }

    /// The page-based memory type (PBMT, bits 62:61), or `None` for the
    /// reserved value 3.
    pub const fn pbmt(&self) -> Option<Pbmt> {
        Pbmt::from_raw(PTE_PBMT.get(self.0))
    }

    /// Sets the PBMT field. Meaningful in leaves only (non-leaf entries must
    /// keep it zero), and only with Svpbmt and `menvcfg`.PBMTE = 1.
    pub const fn set_pbmt(&mut self, pbmt: Pbmt) {
        self.0 = PTE_PBMT.set(self.0, pbmt.raw());
    }

    /// Whether the Svnapot N bit (63) is set.
    pub const fn is_napot(&self) -> bool {
        self.pte_flags().contains(PteFlags::N)
    }

    /// Sets or clears the Svnapot N bit (63). Only for leaves, only on
    /// harts with Svnapot, and the PPN must then carry the NAPOT size
    /// encoding (chapter 5); no constructor of this crate sets it.
    pub const fn set_napot(&mut self, napot: bool) {
        self.0 = if napot {
            self.0 | PteFlags::N.bits()
        } else {
            self.0 & !PteFlags::N.bits()
        };
    }

    /// The reserved bits 60:54, which must be zero (§4.4.1).
    pub const fn reserved(&self) -> u64 {
        PTE_RESERVED.get(self.0)
    }

    /// The software bits 9:8 (RSW), ignored by hardware (§4.3.1).
    pub const fn rsw(&self) -> u64 {
        PTE_RSW.get(self.0)
    }
}

impl fmt::Debug for GStageEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GStageEntry")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("hpa", &format_args!("{:#x}", self.ppn() << PAGE_SHIFT))
            .field("flags", &self.pte_flags())
            .field("pbmt", &self.pbmt())
            .finish()
    }
}

impl GenericPTE for GStageEntry {
    /// A leaf mapping `paddr` with `flags`.
    ///
    /// G-stage leaves look the same at every level, so `is_huge` is unused.
    /// `paddr` is masked to the PPN field: bits 11:0 and bits above 55 are
    /// dropped. The memory type is [`MemoryType::from_flags`] (`DEVICE` →
    /// IO, `UNCACHED` → NC, else PMA); `USER` is ignored (U is always set).
    /// WRITE without READ also sets R, and flags with no access at all give
    /// an invalid entry (V = 0). Use [`NestedEntry::try_new_leaf`] or
    /// [`GStageEntry::new_leaf`] for checked construction.
    #[inline]
    fn new_page(paddr: PhysAddr, flags: MappingFlags, _is_huge: bool) -> Self {
        let pbmt = Pbmt::from_memory_type(MemoryType::from_flags(flags));
        Self::encode_leaf(paddr.as_usize(), flags, pbmt)
    }

    /// A pointer to the next-level table at `paddr` (masked like
    /// `new_page`): V = 1 and nothing else but the PPN, since R/W/X make a
    /// leaf and D/A/U, PBMT and N are reserved in non-leaf entries (§4.3.1,
    /// §4.4.1, chapters 5 and 6).
    fn new_table(paddr: PhysAddr) -> Self {
        Self(PTE_PPN.set(PteFlags::V.bits(), (paddr.as_usize() as u64) >> PAGE_SHIFT))
    }

    fn paddr(&self) -> PhysAddr {
        self.hpa().into()
    }

    /// READ/WRITE/EXECUTE from R/W/X plus the memory type's generic flags;
    /// never `USER`.
    fn flags(&self) -> MappingFlags {
        let f = self.pte_flags();
        let mut flags = self.memory_type().to_flags();
        if f.contains(PteFlags::R) {
            flags |= MappingFlags::READ;
        }
        if f.contains(PteFlags::W) {
            flags |= MappingFlags::WRITE;
        }
        if f.contains(PteFlags::X) {
            flags |= MappingFlags::EXECUTE;
        }
        flags
    }

    /// Replaces the PPN (masked like `new_page`), keeping every other bit.
    fn set_paddr(&mut self, paddr: PhysAddr) {
        self.0 = PTE_PPN.set(self.0, (paddr.as_usize() as u64) >> PAGE_SHIFT);
    }

    /// Makes the entry the leaf `new_page` would build for `flags` at the
    /// current PPN, keeping only the PPN and the N bit.
    fn set_flags(&mut self, flags: MappingFlags, is_huge: bool) {
        let keep = self.0 & !Self::FLAG_MASK;
        let leaf = Self::new_page(PhysAddr::from_usize(0), flags, is_huge);
        self.0 = keep | leaf.0;
    }

    fn bits(self) -> usize {
        self.0 as usize
    }

    fn is_unused(&self) -> bool {
        self.0 == 0
    }

    /// V (bit 0).
    fn is_present(&self) -> bool {
        self.pte_flags().contains(PteFlags::V)
    }

    /// Any of R/W/X: the leaf encoding, identical at every level.
    fn is_huge(&self) -> bool {
        self.pte_flags().intersects(Self::RWX)
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

impl NestedEntry for GStageEntry {
    /// V = 1 with R = W = X = 0: a pointer to the next table (§4.3.1, the
    /// R/W/X encodings; the same rule at every level).
    #[inline]
    fn is_table(&self) -> bool {
        let bits = PteFlags::from_bits_retain(self.0);
        bits.intersection(PteFlags::V.union(Self::RWX)) == PteFlags::V
    }

    /// True: see the accessed/dirty policy in the module documentation.
    const HAS_ACCESSED_DIRTY: bool = true;
    /// 56: PPN bits 53:10 hold a 44-bit page number.
    const PA_BITS: u32 = 56;
    /// Everything but the PPN and the Svnapot N bit.
    const FLAG_MASK: u64 = !(PTE_PPN.mask() | PteFlags::N.bits());

    fn from_raw(bits: u64) -> Self {
        Self(bits)
    }

    /// The entry unchanged: G-stage leaves have the same encoding at every
    /// level, so A/D, PBMT and N all survive a split or collapse.
    #[inline]
    fn with_huge(self, _huge: bool) -> Self {
        self
    }

    /// The entry with W cleared and every other bit kept (D included: D = 1
    /// on a read-only leaf is allowed and simply records past writes). A
    /// reserved write-only entry would become V = 1 with R = W = X = 0, a
    /// table pointer, so it loses V instead.
    #[inline]
    fn write_protected(self, _huge: bool) -> Self {
        let bits = self.0 & !PteFlags::W.bits();
        if PteFlags::from_bits_truncate(bits).intersects(Self::RWX) {
            Self(bits)
        } else {
            Self(bits & !PteFlags::V.bits())
        }
    }

    fn raw(&self) -> u64 {
        self.0
    }

    /// From PBMT: PMA → write-back, NC → uncached, IO → device; the reserved
    /// value 3 (which faults) reads as device, the strongest type.
    fn memory_type(&self) -> MemoryType {
        match self.pbmt() {
            Some(pbmt) => pbmt.memory_type(),
            None => MemoryType::Device,
        }
    }

    fn is_accessed(&self) -> bool {
        self.pte_flags().contains(PteFlags::A)
    }

    fn is_dirty(&self) -> bool {
        self.pte_flags().contains(PteFlags::D)
    }

    fn clear_accessed(&mut self) {
        self.0 &= !PteFlags::A.bits();
    }

    fn clear_dirty(&mut self) {
        self.0 &= !PteFlags::D.bits();
    }
}

// ---------------------------------------------------------------------------
// hgatp
// ---------------------------------------------------------------------------

/// `hgatp` bits 63:60, MODE (§8.2.10).
pub const HGATP_MODE: Field = Field::bits(63, 60);
/// `hgatp` bits 57:44, VMID: up to 14 bits (VMIDMAX = 14 for HSXLEN = 64);
/// the implemented width VMIDLEN may be smaller, even zero (§8.2.10).
pub const HGATP_VMID: Field = Field::bits(57, 44);
/// `hgatp` bits 43:0, PPN of the root table (§8.2.10). `PPN[1:0]` reads as zero
/// in the paged modes because the root is 16 KiB aligned.
pub const HGATP_PPN: Field = Field::bits(43, 0);
/// Size and required alignment of a paged-mode G-stage root: 16 KiB
/// (§8.2.10, §8.5.1).
pub const HGATP_ROOT_ALIGN: usize = 16 * 1024;

/// `hgatp`.MODE values for HSXLEN = 64 (§8.2.10, "Encoding of `hgatp` MODE
/// field"). 1–7 and 11–15 are reserved.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HgatpMode {
    /// 0: no translation or protection; VMID and PPN must be zero.
    Bare = 0,
    /// 8: 41-bit guest-physical addresses ([`Sv39x4`]).
    Sv39x4 = 8,
    /// 9: 50-bit guest-physical addresses ([`Sv48x4`]).
    Sv48x4 = 9,
    /// 10: 59-bit guest-physical addresses ([`Sv57x4`]).
    Sv57x4 = 10,
}

impl HgatpMode {
    /// The mode for a raw MODE value, if it is a defined one.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(Self::Bare),
            8 => Some(Self::Sv39x4),
            9 => Some(Self::Sv48x4),
            10 => Some(Self::Sv57x4),
            _ => None,
        }
    }

    /// The raw MODE value.
    pub const fn raw(self) -> u64 {
        self as u64
    }
}

/// Why an [`Hgatp`] value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GStageConfigError {
    /// The VMID needs more than the 14 bits of `hgatp`.VMID.
    VmidTooWide {
        /// The VMID.
        vmid: u16,
    },
    /// The root table is not aligned to 16 KiB.
    RootMisaligned {
        /// The root's address.
        root: HostPhysAddr,
    },
    /// The root table's address needs more than the 56 bits `hgatp`.PPN
    /// can hold.
    RootTooWide {
        /// The root's address.
        root: HostPhysAddr,
    },
    /// MODE = Bare with a nonzero VMID or root: the other fields must be
    /// zero in Bare mode.
    BareNotZero {
        /// The VMID.
        vmid: u16,
        /// The root's address.
        root: HostPhysAddr,
    },
}

impl fmt::Display for GStageConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::VmidTooWide { vmid } => {
                write!(
                    f,
                    "VMID {vmid:#x} does not fit in the 14-bit hgatp.VMID field"
                )
            }
            Self::RootMisaligned { root } => {
                write!(f, "G-stage root {root:#x} is not aligned to 16 KiB")
            }
            Self::RootTooWide { root } => {
                write!(
                    f,
                    "G-stage root {root:#x} exceeds the 56-bit physical address width"
                )
            }
            Self::BareNotZero { vmid, root } => write!(
                f,
                "hgatp MODE=Bare needs VMID and root zero, got VMID {vmid:#x} and root {root:#x}"
            ),
        }
    }
}

impl core::error::Error for GStageConfigError {}

impl From<GStageConfigError> for axerrno::AxErrorKind {
    fn from(_: GStageConfigError) -> Self {
        axerrno::AxErrorKind::InvalidInput
    }
}

/// A value for the `hgatp` CSR (§8.2.10): MODE, VMID and root PPN.
///
/// The library only builds the value; writing the CSR and the HFENCE.GVMA
/// that may have to go with it are the hypervisor's business.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hgatp(u64);

impl Hgatp {
    /// MODE = Bare, all fields zero: G-stage translation off.
    pub const BARE: Self = Self(0);

    /// Checks and encodes MODE, VMID and the root table's address.
    ///
    /// For the paged modes `root` must be 16 KiB aligned and fit in 56 bits
    /// (the spec makes the root 16 KiB and requires that alignment, §8.2.10
    /// and §8.5.1); `vmid` must fit in 14 bits (hardware may implement fewer
    /// and ignore the upper ones; find VMIDLEN by writing ones and reading
    /// back). For [`HgatpMode::Bare`] both must be zero.
    pub const fn new(
        mode: HgatpMode,
        vmid: u16,
        root: HostPhysAddr,
    ) -> Result<Self, GStageConfigError> {
        let addr = root.as_usize() as u64;
        if let HgatpMode::Bare = mode {
            if vmid != 0 || addr != 0 {
                return Err(GStageConfigError::BareNotZero { vmid, root });
            }
            return Ok(Self::BARE);
        }
        if !HGATP_VMID.fits(vmid as u64) {
            return Err(GStageConfigError::VmidTooWide { vmid });
        }
        if addr % HGATP_ROOT_ALIGN as u64 != 0 {
            return Err(GStageConfigError::RootMisaligned { root });
        }
        if !HGATP_PPN.fits(addr >> PAGE_SHIFT) {
            return Err(GStageConfigError::RootTooWide { root });
        }
        let bits = HGATP_MODE.set(0, mode.raw());
        let bits = HGATP_VMID.set(bits, vmid as u64);
        Ok(Self(HGATP_PPN.set(bits, addr >> PAGE_SHIFT)))
    }

    /// [`Hgatp::new`] with the mode of format `F`.
    pub const fn for_format<F: GStageFormat>(
        vmid: u16,
        root: HostPhysAddr,
    ) -> Result<Self, GStageConfigError> {
        Self::new(F::MODE, vmid, root)
    }

    /// A value with exactly these bits, e.g. read back from the CSR.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw CSR value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The MODE field, or `None` for a reserved value.
    pub const fn mode(self) -> Option<HgatpMode> {
        HgatpMode::from_raw(HGATP_MODE.get(self.0))
    }

    /// The VMID field.
    pub const fn vmid(self) -> u16 {
        HGATP_VMID.get(self.0) as u16
    }

    /// The PPN field.
    pub const fn ppn(self) -> u64 {
        HGATP_PPN.get(self.0)
    }

    /// The root table's address (`PPN << 12`).
    pub const fn root(self) -> HostPhysAddr {
        HostPhysAddr::from_usize((self.ppn() << PAGE_SHIFT) as usize)
    }
}

impl fmt::Debug for Hgatp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hgatp")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("mode", &self.mode())
            .field("vmid", &self.vmid())
            .field("root", &format_args!("{:#x}", self.ppn() << PAGE_SHIFT))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;
    use std::format;
    use std::string::ToString;

    const R: MappingFlags = MappingFlags::READ;
    const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);
    const RX: MappingFlags = MappingFlags::READ.union(MappingFlags::EXECUTE);
    const RWX: MappingFlags = RW.union(MappingFlags::EXECUTE);

    fn hpa(a: usize) -> HostPhysAddr {
        HostPhysAddr::from_usize(a)
    }

    fn pa(a: usize) -> PhysAddr {
        PhysAddr::from_usize(a)
    }

    // ---- fields, one by one (§4.3.1, §4.4.1, chapters 5 and 6) ----

    #[test]
    fn single_bit_positions() {
        assert_eq!(PteFlags::V.bits(), 1 << 0);
        assert_eq!(PteFlags::R.bits(), 1 << 1);
        assert_eq!(PteFlags::W.bits(), 1 << 2);
        assert_eq!(PteFlags::X.bits(), 1 << 3);
        assert_eq!(PteFlags::U.bits(), 1 << 4);
        assert_eq!(PteFlags::G.bits(), 1 << 5);
        assert_eq!(PteFlags::A.bits(), 1 << 6);
        assert_eq!(PteFlags::D.bits(), 1 << 7);
        assert_eq!(PteFlags::N.bits(), 1 << 63);
    }

    #[test]
    fn multi_bit_fields_tile_the_entry() {
        assert_eq!(PTE_RSW.mask(), 0x0000_0000_0000_0300);
        assert_eq!(PTE_PPN.mask(), 0x003f_ffff_ffff_fc00);
        assert_eq!(PTE_RESERVED.mask(), 0x1fc0_0000_0000_0000);
        assert_eq!(PTE_PBMT.mask(), 0x6000_0000_0000_0000);
        assert_eq!(PTE_PPN.width, 44);
        let all = PteFlags::all().bits()
            | PTE_RSW.mask()
            | PTE_PPN.mask()
            | PTE_RESERVED.mask()
            | PTE_PBMT.mask();
        assert_eq!(all, u64::MAX);
        assert_eq!(PteFlags::all().bits() & PTE_PPN.mask(), 0);
    }

    #[test]
    fn field_helper() {
        let f = Field::bits(7, 4);
        assert_eq!(f.mask(), 0xf0);
        assert_eq!(f.get(0xabcd), 0xc);
        assert_eq!(f.set(0xabcd, 0x3), 0xab3d);
        assert_eq!(f.set(0, 0x1f), 0xf0);
        assert!(f.fits(0xf));
        assert!(!f.fits(0x10));
    }

    #[test]
    fn pbmt_encodings() {
        assert_eq!(Pbmt::Pma.raw(), 0);
        assert_eq!(Pbmt::Nc.raw(), 1);
        assert_eq!(Pbmt::Io.raw(), 2);
        assert_eq!(Pbmt::from_raw(3), None);
        for p in [Pbmt::Pma, Pbmt::Nc, Pbmt::Io] {
            assert_eq!(Pbmt::from_raw(p.raw()), Some(p));
            assert_eq!(Pbmt::from_memory_type(p.memory_type()), p);
            let mut e = GStageEntry::new_page(pa(0x1000), R, false);
            e.set_pbmt(p);
            assert_eq!(e.raw() >> 61, p.raw());
            assert_eq!(e.pbmt(), Some(p));
            assert_eq!(e.memory_type(), p.memory_type());
        }
        assert_eq!(Pbmt::from_memory_type(MemoryType::WriteThrough), Pbmt::Nc);
        assert_eq!(Pbmt::from_memory_type(MemoryType::WriteProtect), Pbmt::Nc);
        assert_eq!(Pbmt::from_memory_type(MemoryType::WriteCombining), Pbmt::Nc);
        let reserved = GStageEntry::from_raw(0x6000_0000_0000_0000 | 0xd7);
        assert_eq!(reserved.pbmt(), None);
        assert_eq!(reserved.memory_type(), MemoryType::Device);
    }

    #[test]
    fn napot_accessor_only() {
        let mut e = GStageEntry::new_page(pa(0x1_0000), RW, false);
        assert!(!e.is_napot());
        e.set_napot(true);
        assert!(e.is_napot());
        assert_eq!(e.raw() >> 63, 1);
        e.set_napot(false);
        assert!(!e.is_napot());
    }

    // ---- worked examples ----

    #[test]
    fn worked_4k_rw_leaf() {
        // PPN 0x80200 << 10 = 0x2008_0000; V|R|W|U|A|D = 0xd7.
        let e = GStageEntry::try_new_leaf(hpa(0x8020_0000), RW, PageSize::Size4K).unwrap();
        assert_eq!(e.raw(), 0x0000_0000_2008_00d7);
        assert_eq!(e.paddr(), pa(0x8020_0000));
        assert_eq!(e.flags(), RW);
        assert_eq!(e.kind(true), EntryKind::Leaf);
        assert_eq!(e.memory_type(), MemoryType::WriteBack);
    }

    #[test]
    fn worked_2m_rx_leaf() {
        // PPN 0x80400 << 10 = 0x2010_0000; V|R|X|U|A = 0x5b (no D: read-only).
        let e = GStageEntry::try_new_leaf(hpa(0x8040_0000), RX, PageSize::Size2M).unwrap();
        assert_eq!(e.raw(), 0x0000_0000_2010_005b);
        assert!(e.is_huge());
        assert!(!e.is_dirty());
        assert_eq!(e.kind(false), EntryKind::Leaf);
    }

    #[test]
    fn worked_1g_rwx_leaf() {
        // PPN 0xc0000 << 10 = 0x3000_0000; V|R|W|X|U|A|D = 0xdf.
        let e = GStageEntry::try_new_leaf(hpa(0xc000_0000), RWX, PageSize::Size1G).unwrap();
        assert_eq!(e.raw(), 0x0000_0000_3000_00df);
        assert_eq!(e.flags(), RWX);
    }

    #[test]
    fn worked_table_pointer() {
        // PPN 0x80601 << 10 = 0x2018_0400; V only.
        let e = GStageEntry::new_table(pa(0x8060_1000));
        assert_eq!(e.raw(), 0x0000_0000_2018_0401);
        assert!(e.is_table() && !e.is_leaf() && !e.is_huge());
        assert_eq!(e.kind(false), EntryKind::Table);
        assert_eq!(e.paddr(), pa(0x8060_1000));
        assert_eq!(e.flags(), MappingFlags::empty());
    }

    #[test]
    fn worked_io_and_nc_leaves() {
        // A UART page: PPN 0x10000 << 10 = 0x0400_0000, 0xd7, PBMT=IO (2 << 61).
        let dev = RW | MappingFlags::DEVICE;
        let e = GStageEntry::new_page(pa(0x1000_0000), dev, false);
        assert_eq!(e.raw(), 0x4000_0000_0400_00d7);
        assert_eq!(e.memory_type(), MemoryType::Device);
        assert_eq!(e.flags(), dev);
        // PBMT=NC (1 << 61).
        let e = GStageEntry::new_leaf(hpa(0x1000_0000), RW, PageSize::Size4K, MemoryType::Uncached)
            .unwrap();
        assert_eq!(e.raw(), 0x2000_0000_0400_00d7);
        assert_eq!(e.flags(), RW | MappingFlags::UNCACHED);
    }

    #[test]
    fn worked_hgatp_sv39x4() {
        // MODE 8 << 60, VMID 1 << 44, PPN 0x80400.
        let h = Hgatp::for_format::<Sv39x4>(1, hpa(0x8040_0000)).unwrap();
        assert_eq!(h.bits(), 0x8000_1000_0008_0400);
        assert_eq!(h.mode(), Some(HgatpMode::Sv39x4));
        assert_eq!(h.vmid(), 1);
        assert_eq!(h.ppn(), 0x80400);
        assert_eq!(h.root(), hpa(0x8040_0000));
    }

    #[test]
    fn worked_hgatp_sv48x4_and_sv57x4() {
        // MODE 9 << 60, VMID 5 << 44, PPN 0x90000.
        let h = Hgatp::new(HgatpMode::Sv48x4, 5, hpa(0x9000_0000)).unwrap();
        assert_eq!(h.bits(), 0x9000_5000_0009_0000);
        // MODE 10 << 60, VMID 0x3fff << 44, PPN 0x100_0004 (0x10_0000_4000 >> 12).
        let h = Hgatp::for_format::<Sv57x4>(0x3fff, hpa(0x10_0000_4000)).unwrap();
        assert_eq!(h.bits(), 0xa3ff_f000_0100_0004);
        assert_eq!(h.vmid(), 0x3fff);
        assert_eq!(h.root(), hpa(0x10_0000_4000));
    }

    // ---- hgatp fields and errors (§8.2.10) ----

    #[test]
    fn hgatp_fields() {
        assert_eq!(HGATP_MODE.mask(), 0xf000_0000_0000_0000);
        assert_eq!(HGATP_VMID.mask(), 0x03ff_f000_0000_0000);
        assert_eq!(HGATP_PPN.mask(), 0x0000_0fff_ffff_ffff);
        assert_eq!(HgatpMode::Bare.raw(), 0);
        assert_eq!(HgatpMode::Sv39x4.raw(), 8);
        assert_eq!(HgatpMode::Sv48x4.raw(), 9);
        assert_eq!(HgatpMode::Sv57x4.raw(), 10);
        for raw in 0..16 {
            let m = HgatpMode::from_raw(raw);
            assert_eq!(m.is_some(), matches!(raw, 0 | 8..=10), "{raw}");
            if let Some(m) = m {
                assert_eq!(m.raw(), raw);
            }
        }
        assert_eq!(Sv39x4::MODE, HgatpMode::Sv39x4);
        assert_eq!(Sv48x4::MODE, HgatpMode::Sv48x4);
        assert_eq!(Sv57x4::MODE, HgatpMode::Sv57x4);
        assert_eq!(Hgatp::from_bits(0x1000_0000_0000_0000).mode(), None);
    }

    #[test]
    fn hgatp_errors() {
        assert_eq!(
            Hgatp::new(HgatpMode::Sv39x4, 0x4000, hpa(0x8000_0000)),
            Err(GStageConfigError::VmidTooWide { vmid: 0x4000 })
        );
        assert_eq!(
            Hgatp::new(HgatpMode::Sv39x4, 1, hpa(0x8000_1000)),
            Err(GStageConfigError::RootMisaligned {
                root: hpa(0x8000_1000)
            })
        );
        assert_eq!(
            Hgatp::new(HgatpMode::Sv48x4, 1, hpa(1 << 56)),
            Err(GStageConfigError::RootTooWide { root: hpa(1 << 56) })
        );
        assert_eq!(
            Hgatp::new(HgatpMode::Bare, 1, hpa(0)),
            Err(GStageConfigError::BareNotZero {
                vmid: 1,
                root: hpa(0)
            })
        );
        assert_eq!(Hgatp::new(HgatpMode::Bare, 0, hpa(0)), Ok(Hgatp::BARE));
        assert_eq!(Hgatp::BARE.bits(), 0);
        assert_eq!(Hgatp::BARE.mode(), Some(HgatpMode::Bare));
        let msg = GStageConfigError::RootMisaligned {
            root: hpa(0x8000_1000),
        }
        .to_string();
        assert!(
            msg.contains("0x80001000") && msg.contains("16 KiB"),
            "{msg}"
        );
        let msg = GStageConfigError::VmidTooWide { vmid: 0x4000 }.to_string();
        assert!(msg.contains("0x4000"), "{msg}");
        assert_eq!(
            axerrno::AxErrorKind::from(GStageConfigError::VmidTooWide { vmid: 0x4000 }),
            axerrno::AxErrorKind::InvalidInput
        );
    }

    // ---- leaf policy ----

    #[test]
    fn every_leaf_has_u_a_and_no_g() {
        for flags in [R, RW, RX, RWX, MappingFlags::EXECUTE] {
            let e = GStageEntry::new_page(pa(0x4000), flags, false);
            let f = e.pte_flags();
            assert!(
                f.contains(PteFlags::V | PteFlags::U | PteFlags::A),
                "{flags:?}"
            );
            assert!(!f.contains(PteFlags::G));
            assert_eq!(f.contains(PteFlags::D), flags.contains(MappingFlags::WRITE));
            assert_eq!(e.rsw(), 0);
            assert_eq!(e.reserved(), 0);
            assert!(!e.is_napot());
        }
    }

    #[test]
    fn user_flag_is_ignored_and_never_reported() {
        let e = GStageEntry::new_page(pa(0x4000), RW | MappingFlags::USER, false);
        assert_eq!(e, GStageEntry::new_page(pa(0x4000), RW, false));
        assert!(!e.flags().contains(MappingFlags::USER));
    }

    #[test]
    fn write_without_read_gets_read_in_new_page_and_is_refused_typed() {
        let e = GStageEntry::new_page(pa(0x4000), MappingFlags::WRITE, false);
        assert_eq!(e.flags(), RW);
        assert_eq!(
            GStageEntry::new_leaf(
                hpa(0x4000),
                MappingFlags::WRITE,
                PageSize::Size4K,
                MemoryType::WriteBack
            ),
            Err(EntryError::BadFlags(MappingFlags::WRITE))
        );
        assert_eq!(
            GStageEntry::try_new_leaf(hpa(0x4000), MappingFlags::empty(), PageSize::Size4K),
            Err(EntryError::BadFlags(MappingFlags::empty()))
        );
    }

    #[test]
    fn no_access_new_page_is_not_a_table() {
        let e = GStageEntry::new_page(pa(0x4000), MappingFlags::empty(), false);
        assert!(!e.is_present());
        assert_eq!(e.kind(false), EntryKind::Empty);
        assert_eq!(e.kind(true), EntryKind::Empty);
    }

    /// The rights rules every format shares (`NestedEntry` docs), in
    /// Sv39/48/57 encodings (privileged spec §4.3.1 Table "Encoding of PTE
    /// R/W/X fields": W without R is reserved, X alone is execute-only; V
    /// = 0 is invalid).
    #[test]
    fn rights_rules_worked_examples() {
        let w = MappingFlags::WRITE;
        let x = MappingFlags::EXECUTE;
        // W at 0x4000 (PPN 4 << 10 = 0x1000): V|R|W|U|A|D = 0xd7.
        assert_eq!(GStageEntry::new_page(pa(0x4000), w, false).raw(), 0x10d7);
        // X alone stays execute-only: V|X|U|A = 0x59, checked paths agree.
        assert_eq!(GStageEntry::new_page(pa(0x4000), x, false).raw(), 0x1059);
        assert_eq!(
            GStageEntry::try_new_leaf(hpa(0x4000), x, PageSize::Size4K).map(|e| e.raw()),
            Ok(0x1059)
        );
        // No access: U|A = 0x50, V = 0.
        assert_eq!(
            GStageEntry::new_page(pa(0x4000), MappingFlags::empty(), true).raw(),
            0x1050
        );
        assert_eq!(GStageEntry::check_leaf_flags(x), Ok(()));
    }

    #[test]
    fn typed_constructor_checks_address() {
        assert_eq!(
            GStageEntry::new_leaf(hpa(0x20_1000), R, PageSize::Size2M, MemoryType::WriteBack),
            Err(EntryError::Misaligned {
                hpa: hpa(0x20_1000),
                size: PageSize::Size2M
            })
        );
        assert_eq!(
            GStageEntry::new_leaf(hpa(1 << 56), R, PageSize::Size4K, MemoryType::WriteBack),
            Err(EntryError::AddressTooWide {
                hpa: hpa(1 << 56),
                pa_bits: 56
            })
        );
        let top = (1usize << 56) - 0x1000;
        let e =
            GStageEntry::new_leaf(hpa(top), R, PageSize::Size4K, MemoryType::WriteBack).unwrap();
        assert_eq!(e.paddr(), pa(top));
        assert_eq!(e.ppn(), 0xfff_ffff_ffff);
    }

    #[test]
    fn new_page_masks_the_address() {
        let e = GStageEntry::new_page(pa(0xff00_0000_8020_0abc), R, false);
        assert_eq!(e.paddr(), pa(0x0000_0000_8020_0000));
        assert_eq!(e.reserved(), 0);
        assert_eq!(e.pbmt(), Some(Pbmt::Pma));
        let t = GStageEntry::new_table(pa(0xff00_0000_8020_0abc));
        assert_eq!(t.raw(), 0x0000_0000_2008_0001);
    }

    #[test]
    fn set_paddr_and_set_flags() {
        let mut e = GStageEntry::new_page(pa(0x8020_0000), RW | MappingFlags::DEVICE, false);
        e.set_paddr(pa(0x9000_0000));
        assert_eq!(e.paddr(), pa(0x9000_0000));
        assert_eq!(e.flags(), RW | MappingFlags::DEVICE);
        e.set_flags(R, false);
        assert_eq!(e.flags(), R);
        assert_eq!(e.paddr(), pa(0x9000_0000));
        assert!(!e.is_dirty() && e.is_accessed());
        assert_eq!(e, GStageEntry::new_page(pa(0x9000_0000), R, false));
        // A table pointer turned into a leaf in place.
        let mut t = GStageEntry::new_table(pa(0x8060_1000));
        t.set_flags(RWX, true);
        assert_eq!(t.raw(), 0x0000_0000_2018_04df);
    }

    #[test]
    fn accessed_dirty_harvest() {
        let mut e = GStageEntry::new_page(pa(0x8020_0000), RW, false);
        const { assert!(GStageEntry::HAS_ACCESSED_DIRTY) };
        assert!(e.is_accessed() && e.is_dirty());
        e.clear_dirty();
        assert!(!e.is_dirty() && e.is_accessed());
        assert_eq!(e.raw(), 0x0000_0000_2008_0057);
        e.clear_accessed();
        assert!(!e.is_accessed());
        assert_eq!(e.raw(), 0x0000_0000_2008_0017);
        assert_eq!(e.kind(true), EntryKind::Leaf);
    }

    #[test]
    fn with_huge_and_write_protected_keep_bits() {
        let mut e = GStageEntry::new_page(pa(0x1000_0000), RW | MappingFlags::DEVICE, false);
        e.clear_accessed();
        assert_eq!(e.with_huge(true), e);
        assert_eq!(e.with_huge(false), e);
        // 0x4000_0000_0400_0097 minus W (0x4).
        assert_eq!(e.raw(), 0x4000_0000_0400_0097);
        assert_eq!(e.write_protected(false).raw(), 0x4000_0000_0400_0093);
        // A reserved write-only entry must not turn into a table pointer.
        let w_only = GStageEntry::from_raw(0x2008_00d5);
        let p = w_only.write_protected(false);
        assert_eq!(p.raw(), 0x2008_00d0);
        assert_eq!(p.kind(false), EntryKind::Empty);
    }

    #[test]
    fn generic_pte_basics() {
        let mut e = GStageEntry::new_page(pa(0x8020_0000), RW, false);
        assert_eq!(GenericPTE::bits(e), 0x2008_00d7);
        assert!(!e.is_unused());
        e.clear();
        assert!(e.is_unused() && !e.is_present());
        assert_eq!(e, GStageEntry::EMPTY);
        assert_eq!(e.kind(false), EntryKind::Empty);
    }

    #[test]
    fn debug_shows_fields() {
        let e = GStageEntry::new_page(pa(0x1000_0000), RW | MappingFlags::DEVICE, false);
        let s = format!("{e:?}");
        assert!(s.contains("0x40000000040000d7") && s.contains("Io"), "{s}");
        let h = Hgatp::for_format::<Sv39x4>(1, hpa(0x8040_0000)).unwrap();
        let s = format!("{h:?}");
        assert!(s.contains("Sv39x4") && s.contains("0x80400000"), "{s}");
    }
}
