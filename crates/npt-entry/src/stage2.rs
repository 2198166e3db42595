//! AArch64 VMSAv8-64 stage-2 translation, 4 KiB granule (Arm ARM DDI 0487,
//! D8 "The AArch64 Virtual Memory System Architecture").
//!
//! * [`Stage2Entry`]: the stage-2 descriptor (D8.3 "Translation table
//!   descriptor formats"). Bits\[1:0\] are `0b11` for a table descriptor at
//!   Arm levels 0..=2 and for a page descriptor at level 3, `0b01` for a
//!   block descriptor at levels 1..=2; bit 0 clear means invalid.
//! * [`Vtcr`]: the VTCR_EL2 value that describes the walk (IPA size, start
//!   level, granule, walk cacheability, PA size).
//! * [`Vttbr`]: the VTTBR_EL2 value that points at the root (BADDR, VMID,
//!   CnP).
//! * [`Stage2`]`<IPA_BITS>`: the walk geometry for one IPA size.
//!
//! Levels: [`NptFormat`] numbers levels from the root (0) down; the Arm
//! manual numbers them by lookup level. Arm level = crate level +
//! [`Stage2::START_LEVEL`], so the last crate level is always Arm level 3.
//!
//! Citations give the section number in chapter D8 of recent issues *and*
//! the section title, which is the stable way to find it in any issue.
//! VTCR_EL2 and VTTBR_EL2 are cited by their register descriptions
//! (chapter "AArch64 System Register Descriptions"), pseudocode by function
//! name.
//! The stage-2 encodings used here are those without FEAT_S2FWB, FEAT_LPA2,
//! FEAT_S2PIE or FEAT_THE (none of which a descriptor built here relies on).

use core::fmt;

use crate::{EntryError, EntryKind, NestedEntry, NptFormat, check_flags, check_leaf_address};
use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;
use page_table_entry::GenericPTE;

/// A stage-2 descriptor (table, block or page, by level).
///
/// The same bits mean different things at different levels (see
/// [`NestedEntry::kind`]): `0b11` in bits\[1:0\] is a table above the last
/// level and a page at the last, `0b01` is a block above the last level and
/// invalid at the last.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stage2Entry(u64);

/// Stage-2 tables for an `IPA_BITS`-bit IPA space (32..=48), 4 KiB granule.
///
/// The walk starts at the level that needs the fewest levels with at most 16
/// concatenated tables at the start (the rule Linux/KVM uses): 32..=34 bits
/// start at level 2 (2 levels, 4..16 concatenated tables), 35..=43 at level
/// 1 (3 levels; 40..=43 concatenate 2..16 tables), 44..=48 at level 0
/// (4 levels). Using any other width fails to compile.
#[derive(Debug, Clone, Copy)]
pub struct Stage2<const IPA_BITS: u32>;

/// 40-bit IPA: starts at level 1 with 2 concatenated tables (1024 root entries).
pub type Stage2Ipa40 = Stage2<40>;
/// 48-bit IPA: starts at level 0 with a single 512-entry root.
pub type Stage2Ipa48 = Stage2<48>;

impl<const IPA_BITS: u32> Stage2<IPA_BITS> {
    const CHECK: () = assert!(
        IPA_BITS >= 32 && IPA_BITS <= 48,
        "stage-2 IPA size must be 32..=48 bits with a 4 KiB granule"
    );

    /// Levels walked: the fewest such that the start level concatenates at
    /// most 16 tables (each level resolves 9 bits above the 12-bit offset).
    pub const LEVELS: usize = {
        let () = Self::CHECK;
        ((IPA_BITS - 12 - 4).div_ceil(9)) as usize
    };

    /// The Arm start level (0, 1 or 2) of the walk.
    pub const START_LEVEL: usize = 4 - Self::LEVELS;
}

impl<const IPA_BITS: u32> NptFormat for Stage2<IPA_BITS> {
    type Entry = Stage2Entry;
    const NAME: &'static str = "AArch64 stage 2 (4K granule)";
    const LEVELS: usize = Stage2::<IPA_BITS>::LEVELS;
    const GPA_BITS: u32 = IPA_BITS;
    // Level-1 blocks (1 GiB) exist with the 4 KiB granule; level-0 blocks do
    // not (without FEAT_LPA2).
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

// ---------------------------------------------------------------------------
// Field helper
// ---------------------------------------------------------------------------

/// A multi-bit field `[shift + width - 1 : shift]` of a 64-bit value. Every
/// multi-bit hardware field in this module is read and written through it.
#[derive(Clone, Copy)]
struct Field {
    shift: u32,
    width: u32,
}

impl Field {
    /// The field `[high:low]`, as the manual writes it.
    const fn bits(high: u32, low: u32) -> Self {
        Self {
            shift: low,
            width: high - low + 1,
        }
    }

    /// The field's bits in place.
    const fn mask(self) -> u64 {
        (u64::MAX >> (64 - self.width)) << self.shift
    }

    /// The field's value, shifted down.
    const fn get(self, word: u64) -> u64 {
        (word & self.mask()) >> self.shift
    }

    /// `word` with the field replaced by `value` (truncated to the width).
    const fn set(self, word: u64, value: u64) -> u64 {
        (word & !self.mask()) | ((value << self.shift) & self.mask())
    }
}

const fn bit(word: u64, mask: u64) -> bool {
    word & mask != 0
}

const fn with_bit(word: u64, mask: u64, on: bool) -> u64 {
    if on { word | mask } else { word & !mask }
}

// ---------------------------------------------------------------------------
// Descriptor bits (D8.3 "Translation table descriptor formats")
// ---------------------------------------------------------------------------

/// Descriptor bit\[0\], valid. Clear: an invalid descriptor, the walk faults
/// (D8.3 "Translation table descriptor formats").
const DESC_VALID: u64 = 1 << 0;

/// Descriptor bit\[1\], descriptor type. With bit 0 set: 1 is a table
/// descriptor at levels 0..=2 and a page descriptor at level 3; 0 is a block
/// descriptor at levels 1..=2, and reserved (treated as invalid) at level 3
/// and at level 0 with the 4 KiB granule without FEAT_LPA2 (D8.3
/// "Translation table descriptor formats").
const DESC_TYPE_TABLE_OR_PAGE: u64 = 1 << 1;

/// Output address / next-level table address, bits\[47:12\] with a 48-bit
/// OA (D8.3 "Translation table descriptor formats": "Table descriptor
/// format", "Block descriptor and Page descriptor formats"). For a block,
/// bits below the block size are RES0.
const OUTPUT_ADDRESS: Field = Field::bits(47, 12);

/// Stage-2 `MemAttr[3:0]`, bits\[5:2\] of a block or page descriptor (D8.3,
/// stage 2 lower attributes; encodings in D8.6 "Memory region attributes",
/// "Stage 2 memory type and Cacheability attributes when FEAT_S2FWB is
/// disabled").
const MEM_ATTR: Field = Field::bits(5, 2);

/// Stage-2 `S2AP[1:0]`, bits\[7:6\]: data access permissions (D8.4 "Memory
/// access control", "Stage 2 data access permissions").
const S2AP: Field = Field::bits(7, 6);

/// `S2AP[0]`, bit 6: read access allowed (D8.4, "Stage 2 data access
/// permissions").
const S2AP_READ: u64 = 1 << 6;

/// `S2AP[1]`, bit 7: write access allowed (D8.4, "Stage 2 data access
/// permissions"). With DBM set, FEAT_HAFDBS hardware sets it on the first
/// write (D8.5 "Hardware updates to the translation tables").
const S2AP_WRITE: u64 = 1 << 7;

/// `SH[1:0]`, bits\[9:8\]: shareability of Normal cacheable memory (D8.3,
/// lower attributes; D8.6 "Memory region attributes", "Shareable Normal
/// memory").
const SH: Field = Field::bits(9, 8);

/// `AF`, bit 10: the Access flag. A walk that finds it clear takes an Access
/// flag fault unless FEAT_HAFDBS hardware management (VTCR_EL2.HA) sets it
/// (D8.5 "Hardware updates to the translation tables", "The Access flag").
const AF: u64 = 1 << 10;

/// `DBM`, bit 51: Dirty Bit Modifier (FEAT_HAFDBS). With VTCR_EL2.HD set, a
/// write to a block or page whose `S2AP[1]` is clear and DBM is set makes
/// hardware set `S2AP[1]` instead of faulting (D8.5 "Hardware updates to the
/// translation tables", "Hardware management of the dirty state").
const DBM: u64 = 1 << 51;

/// `Contiguous`, bit 52: a hint that this descriptor is one of a contiguous
/// aligned set with identical attributes (16 entries with the 4 KiB granule)
/// (D8.3 upper attributes; D8.7 "Translation Lookaside Buffers", "The
/// Contiguous bit").
const CONTIGUOUS: u64 = 1 << 52;

/// Stage-2 `XN[1:0]`, bits\[54:53\]: execute-never. Without FEAT_XNX only
/// bit 54 is used and bit 53 is RES0 (D8.4 "Memory access control",
/// "Instruction execution permissions" / stage 2 execute-never).
const XN: Field = Field::bits(54, 53);

/// `MemAttr[3:2]` value `0b00`: Device memory; `MemAttr[1:0]` then selects
/// the Device type (D8.6, stage-2 encodings without FEAT_S2FWB).
const MEMATTR_OUTER_DEVICE: u8 = 0b00;
/// `MemAttr[3:2]` / `MemAttr[1:0]` value `0b01`: Normal, Non-cacheable
/// (outer and inner halves respectively) (D8.6).
const MEMATTR_HALF_NC: u8 = 0b01;
/// `MemAttr[3:2]` / `MemAttr[1:0]` value `0b10`: Normal, Write-Through
/// cacheable (D8.6).
const MEMATTR_HALF_WT: u8 = 0b10;
/// `MemAttr[3:2]` / `MemAttr[1:0]` value `0b11`: Normal, Write-Back
/// cacheable (D8.6).
const MEMATTR_HALF_WB: u8 = 0b11;

// ---------------------------------------------------------------------------
// Public field values
// ---------------------------------------------------------------------------

/// `MemAttr = 0b0000`: Device-nGnRnE (D8.6, stage 2 without FEAT_S2FWB).
/// Decodes as [`MemoryType::Device`]; never produced by this crate.
pub const MEMATTR_DEVICE_NGNRNE: u8 = 0b0000;
/// `MemAttr = 0b0001`: Device-nGnRE (D8.6). Used for [`MemoryType::Device`].
pub const MEMATTR_DEVICE_NGNRE: u8 = 0b0001;
/// `MemAttr = 0b0101`: Normal, Outer and Inner Non-cacheable (D8.6). Used
/// for [`MemoryType::Uncached`] and [`MemoryType::WriteCombining`] (Arm
/// Normal Non-cacheable memory may gather writes).
pub const MEMATTR_NORMAL_NC: u8 = 0b0101;
/// `MemAttr = 0b1010`: Normal, Outer and Inner Write-Through (D8.6). Used
/// for [`MemoryType::WriteThrough`] and, as the closest Arm type,
/// [`MemoryType::WriteProtect`].
pub const MEMATTR_NORMAL_WT: u8 = 0b1010;
/// `MemAttr = 0b1111`: Normal, Outer and Inner Write-Back (D8.6). Used for
/// [`MemoryType::WriteBack`] (guest RAM).
pub const MEMATTR_NORMAL_WB: u8 = 0b1111;

/// `S2AP = 0b00`: no data access (D8.4, "Stage 2 data access permissions").
pub const S2AP_NONE: u8 = 0b00;
/// `S2AP = 0b01`: read-only (D8.4).
pub const S2AP_READ_ONLY: u8 = 0b01;
/// `S2AP = 0b10`: write-only (D8.4). Never produced: [`check_flags`]
/// rejects write without read and [`GenericPTE::new_page`] promotes it to
/// read/write, as every format does (see [`NestedEntry`]).
pub const S2AP_WRITE_ONLY: u8 = 0b10;
/// `S2AP = 0b11`: read/write (D8.4).
pub const S2AP_READ_WRITE: u8 = 0b11;

/// `SH = 0b00`: Non-shareable (D8.6, "Shareable Normal memory").
pub const SH_NON_SHAREABLE: u8 = 0b00;
/// `SH = 0b10`: Outer Shareable (D8.6).
pub const SH_OUTER_SHAREABLE: u8 = 0b10;
/// `SH = 0b11`: Inner Shareable (D8.6). Every leaf built here uses it.
pub const SH_INNER_SHAREABLE: u8 = 0b11;

/// `XN = 0b00`: executable at EL1 and EL0 (D8.4, stage 2 execute-never).
pub const XN_EXECUTABLE: u8 = 0b00;
/// `XN = 0b01` (FEAT_XNX only): not executable at EL1, executable at EL0.
pub const XN_EL0_ONLY: u8 = 0b01;
/// `XN = 0b10`: not executable at EL1 nor EL0 (with or without FEAT_XNX).
/// Used for every leaf without [`MappingFlags::EXECUTE`].
pub const XN_NEVER: u8 = 0b10;
/// `XN = 0b11` (FEAT_XNX only): executable at EL1, not at EL0.
pub const XN_EL1_ONLY: u8 = 0b11;

// ---------------------------------------------------------------------------
// Stage2Entry
// ---------------------------------------------------------------------------

/// The stage-2 `MemAttr` value for a memory type.
const fn mem_attr_for(memory_type: MemoryType) -> u8 {
    match memory_type {
        MemoryType::WriteBack => MEMATTR_NORMAL_WB,
        MemoryType::WriteThrough | MemoryType::WriteProtect => MEMATTR_NORMAL_WT,
        MemoryType::Uncached | MemoryType::WriteCombining => MEMATTR_NORMAL_NC,
        MemoryType::Device => MEMATTR_DEVICE_NGNRE,
    }
}

/// Cacheability of one half (outer `MemAttr[3:2]` or inner `MemAttr[1:0]`)
/// of a Normal-memory `MemAttr`, as a rank: 0 non-cacheable, 1
/// write-through, 2 write-back. The reserved inner value `0b00` ranks as
/// non-cacheable.
const fn cacheability_rank(half: u8) -> u8 {
    match half {
        MEMATTR_HALF_WB => 2,
        MEMATTR_HALF_WT => 1,
        MEMATTR_HALF_NC => 0,
        _ => 0,
    }
}

impl Stage2Entry {
    /// An invalid descriptor (all zero).
    pub const INVALID: Self = Self(0);

    /// Builds a leaf with an explicit memory type: a page descriptor
    /// (bits\[1:0\] = `0b11`) for [`PageSize::Size4K`], a block descriptor
    /// (`0b01`) for larger sizes.
    ///
    /// Checks [`check_flags`] and [`check_leaf_address`] (alignment to
    /// `size`, fits 48 bits). The encoding does not depend on the level, so
    /// the size is used for the alignment check only; the format's
    /// [`NptFormat::MAX_LEAF`] (1 GiB) is what rules out 512 GiB blocks.
    ///
    /// Attributes are those of [`GenericPTE::new_page`]; only `MemAttr`
    /// comes from `memory_type` instead of the flags.
    pub fn new_leaf(
        hpa: HostPhysAddr,
        flags: MappingFlags,
        size: PageSize,
        memory_type: MemoryType,
    ) -> Result<Self, EntryError> {
        check_flags(flags)?;
        check_leaf_address(hpa, size, <Self as NestedEntry>::PA_BITS)?;
        Ok(Self::leaf_bits(
            hpa.as_usize() as u64,
            flags,
            size.is_huge(),
            memory_type,
        ))
    }

    /// The leaf encoding shared by every constructor; `addr` is masked to
    /// bits\[47:12\]. `WRITE` sets `S2AP[0]` (read) too. Flags with none of
    /// `READ`/`WRITE`/`EXECUTE` give the same bits with bit 0 (valid)
    /// clear: an invalid descriptor, not a valid one with `S2AP = 0b00`,
    /// `XN = 0b10` (a translation with no rights, which the TLB may cache
    /// and which faults as a permission fault rather than a translation
    /// fault), so "no access" means not present in every format.
    const fn leaf_bits(
        addr: u64,
        flags: MappingFlags,
        block: bool,
        memory_type: MemoryType,
    ) -> Self {
        let any = MappingFlags::READ
            .union(MappingFlags::WRITE)
            .union(MappingFlags::EXECUTE);
        let write = flags.contains(MappingFlags::WRITE);
        let mut bits = AF;
        bits = with_bit(bits, DESC_VALID, flags.intersects(any));
        bits = with_bit(bits, DESC_TYPE_TABLE_OR_PAGE, !block);
        bits = OUTPUT_ADDRESS.set(bits, addr >> 12);
        bits = MEM_ATTR.set(bits, mem_attr_for(memory_type) as u64);
        bits = with_bit(bits, S2AP_READ, write || flags.contains(MappingFlags::READ));
        bits = with_bit(bits, S2AP_WRITE, write);
        bits = SH.set(bits, SH_INNER_SHAREABLE as u64);
        let xn = if flags.contains(MappingFlags::EXECUTE) {
            XN_EXECUTABLE
        } else {
            XN_NEVER
        };
        bits = XN.set(bits, xn as u64);
        Self(bits)
    }

    /// The address in bits\[47:12\] (output address of a leaf, next-level
    /// table of a table descriptor).
    pub const fn address(&self) -> u64 {
        OUTPUT_ADDRESS.get(self.0) << 12
    }

    /// Whether bits\[1:0\] are `0b01`: a block descriptor at Arm levels 1..=2
    /// (invalid at level 3).
    pub const fn is_block(&self) -> bool {
        bit(self.0, DESC_VALID) && !bit(self.0, DESC_TYPE_TABLE_OR_PAGE)
    }

    /// Whether bits\[1:0\] are `0b11`: a page descriptor at Arm level 3, and
    /// a table descriptor at levels 0..=2.
    pub const fn is_page(&self) -> bool {
        bit(self.0, DESC_VALID) && bit(self.0, DESC_TYPE_TABLE_OR_PAGE)
    }

    /// The stage-2 `MemAttr[3:0]` field, bits\[5:2\] (see the `MEMATTR_*`
    /// constants).
    pub const fn mem_attr(&self) -> u8 {
        MEM_ATTR.get(self.0) as u8
    }

    /// The `S2AP[1:0]` field, bits\[7:6\] (see the `S2AP_*` constants).
    pub const fn s2ap(&self) -> u8 {
        S2AP.get(self.0) as u8
    }

    /// The `SH[1:0]` field, bits\[9:8\] (see the `SH_*` constants).
    pub const fn sh(&self) -> u8 {
        SH.get(self.0) as u8
    }

    /// The Access flag, bit 10.
    pub const fn af(&self) -> bool {
        bit(self.0, AF)
    }

    /// The stage-2 `XN[1:0]` field, bits\[54:53\] (see the `XN_*` constants).
    pub const fn xn(&self) -> u8 {
        XN.get(self.0) as u8
    }

    /// The Dirty Bit Modifier, bit 51.
    pub const fn dbm(&self) -> bool {
        bit(self.0, DBM)
    }

    /// Sets or clears the Dirty Bit Modifier, bit 51. To start dirty
    /// tracking on a writable leaf: `set_dbm(true)` then
    /// [`NestedEntry::clear_dirty`].
    pub const fn set_dbm(&mut self, on: bool) {
        self.0 = with_bit(self.0, DBM, on);
    }

    /// The Contiguous hint, bit 52.
    pub const fn contiguous(&self) -> bool {
        bit(self.0, CONTIGUOUS)
    }

    /// Sets or clears the Contiguous hint, bit 52. The caller must keep the
    /// whole aligned set of 16 entries consistent; no constructor sets it.
    pub const fn set_contiguous(&mut self, on: bool) {
        self.0 = with_bit(self.0, CONTIGUOUS, on);
    }
}

impl fmt::Debug for Stage2Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !bit(self.0, DESC_VALID) {
            return write!(f, "Stage2Entry(invalid {:#x})", self.0);
        }
        f.debug_struct("Stage2Entry")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field(
                "type",
                &if self.is_block() {
                    "block"
                } else {
                    "table/page"
                },
            )
            .field("address", &format_args!("{:#x}", self.address()))
            .field("mem_attr", &format_args!("{:#06b}", self.mem_attr()))
            .field("s2ap", &format_args!("{:#04b}", self.s2ap()))
            .field("sh", &format_args!("{:#04b}", self.sh()))
            .field("af", &self.af())
            .field("xn", &format_args!("{:#04b}", self.xn()))
            .field("dbm", &self.dbm())
            .field("contiguous", &self.contiguous())
            .finish()
    }
}

impl GenericPTE for Stage2Entry {
    /// A page descriptor (`is_huge == false`, bits\[1:0\] = `0b11`) or a
    /// block descriptor (`is_huge`, `0b01`) with:
    /// `MemAttr` from [`MemoryType::from_flags`] (Device-nGnRE, Normal
    /// Non-cacheable or Normal Write-Back), `S2AP` from READ/WRITE, `SH`
    /// Inner Shareable for every type (the hardware ignores it for Device
    /// and Normal Non-cacheable memory, which are Outer Shareable), `AF`
    /// set (so the first access takes no Access flag fault), `XN = 0b10`
    /// without EXECUTE and `0b00` with it; DBM and Contiguous clear. `USER`
    /// is ignored. `WRITE` without `READ` gives `S2AP = 0b11` (read/write)
    /// and flags without any of `READ`/`WRITE`/`EXECUTE` an invalid
    /// descriptor (bit 0 clear), the rules of [`NestedEntry`]. Execute-only
    /// (`S2AP = 0b00`, `XN = 0b00`) is valid stage-2 encoding and kept. The
    /// address is masked to bits\[47:12\]; it is not checked against the
    /// block size (use [`NestedEntry::try_new_leaf`] or
    /// [`Stage2Entry::new_leaf`] for that).
    #[inline]
    fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
        Self::leaf_bits(
            paddr.as_usize() as u64,
            flags,
            is_huge,
            MemoryType::from_flags(flags),
        )
    }

    /// A table descriptor: bits\[1:0\] = `0b11` and the next-level table
    /// address in bits\[47:12\] (masked); no attributes.
    fn new_table(paddr: PhysAddr) -> Self {
        let bits = DESC_VALID | DESC_TYPE_TABLE_OR_PAGE;
        Self(OUTPUT_ADDRESS.set(bits, paddr.as_usize() as u64 >> 12))
    }

    fn paddr(&self) -> PhysAddr {
        PhysAddr::from_usize(self.address() as usize)
    }

    /// READ from `S2AP[0]`, WRITE from `S2AP[1]`, EXECUTE only when `XN` is
    /// `0b00` (the FEAT_XNX values `0b01`/`0b11` allow execution at one
    /// exception level only and report no EXECUTE), plus the memory type's
    /// flags. Meaningful for blocks and pages, not for table descriptors.
    fn flags(&self) -> MappingFlags {
        let mut flags = self.memory_type().to_flags();
        if bit(self.0, S2AP_READ) {
            flags |= MappingFlags::READ;
        }
        if bit(self.0, S2AP_WRITE) {
            flags |= MappingFlags::WRITE;
        }
        if self.xn() == XN_EXECUTABLE {
            flags |= MappingFlags::EXECUTE;
        }
        flags
    }

    fn set_paddr(&mut self, paddr: PhysAddr) {
        self.0 = OUTPUT_ADDRESS.set(self.0, paddr.as_usize() as u64 >> 12);
    }

    /// Rewrites the type, `MemAttr`, `S2AP`, `SH`, `AF` and `XN` as
    /// [`GenericPTE::new_page`] would; keeps the address, DBM and the
    /// Contiguous hint.
    fn set_flags(&mut self, flags: MappingFlags, is_huge: bool) {
        let keep = self.0 & !Self::FLAG_MASK;
        let fresh = Self::leaf_bits(0, flags, is_huge, MemoryType::from_flags(flags));
        self.0 = fresh.0 | keep;
    }

    fn bits(self) -> usize {
        self.0 as usize
    }

    fn is_unused(&self) -> bool {
        self.0 == 0
    }

    /// Bit 0, valid.
    fn is_present(&self) -> bool {
        bit(self.0, DESC_VALID)
    }

    /// Whether this is a block descriptor (bits\[1:0\] = `0b01`); only
    /// meaningful above the last level.
    fn is_huge(&self) -> bool {
        self.is_block()
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

impl NestedEntry for Stage2Entry {
    /// Bits\[1:0\] = `0b11` above the last level: a table descriptor (D8.3
    /// "Translation table descriptor formats").
    #[inline]
    fn is_table(&self) -> bool {
        let both = DESC_VALID | DESC_TYPE_TABLE_OR_PAGE;
        self.0 & both == both
    }

    /// The Access flag and, with DBM, the write permission are updated by
    /// hardware only with FEAT_HAFDBS enabled through VTCR_EL2.HA / HD
    /// ([`Vtcr::with_ha`], [`Vtcr::with_hd`]); otherwise AF and S2AP change
    /// only in software.
    const HAS_ACCESSED_DIRTY: bool = true;
    const PA_BITS: u32 = 48;
    /// Everything but the output address, DBM and the contiguous hint.
    const FLAG_MASK: u64 = !(OUTPUT_ADDRESS.mask() | DBM | CONTIGUOUS);

    fn from_raw(bits: u64) -> Self {
        Self(bits)
    }

    fn raw(&self) -> u64 {
        self.0
    }

    /// At the last level (Arm level 3) `0b11` is a page (Leaf) and `0b01` is
    /// reserved, which the hardware treats as invalid (Empty). Above it
    /// `0b11` is a Table and `0b01` a block (Leaf). Bit 0 clear is Empty
    /// everywhere. (A block at Arm level 0 is invalid too; the format never
    /// allows a leaf there, see [`NptFormat::leaf_size`].)
    fn kind(&self, last_level: bool) -> EntryKind {
        match (
            bit(self.0, DESC_VALID),
            bit(self.0, DESC_TYPE_TABLE_OR_PAGE),
            last_level,
        ) {
            (false, _, _) => EntryKind::Empty,
            (true, true, true) => EntryKind::Leaf,
            (true, false, true) => EntryKind::Empty,
            (true, true, false) => EntryKind::Table,
            (true, false, false) => EntryKind::Leaf,
        }
    }

    /// Decodes `MemAttr` (without FEAT_S2FWB): `MemAttr[3:2] = 0b00` is
    /// Device (any of nGnRnE/nGnRE/nGRE/GRE). Otherwise the less cached of
    /// the outer (`[3:2]`) and inner (`[1:0]`) halves decides: any
    /// Non-cacheable half gives Uncached, else any Write-Through half gives
    /// WriteThrough, else WriteBack. The reserved inner value `0b00` decodes
    /// as Uncached.
    fn memory_type(&self) -> MemoryType {
        let attr = self.mem_attr();
        let outer = attr >> 2;
        let inner = attr & 0b11;
        if outer == MEMATTR_OUTER_DEVICE {
            return MemoryType::Device;
        }
        let rank = {
            let (o, i) = (cacheability_rank(outer), cacheability_rank(inner));
            if o < i { o } else { i }
        };
        match rank {
            0 => MemoryType::Uncached,
            1 => MemoryType::WriteThrough,
            _ => MemoryType::WriteBack,
        }
    }

    /// Flips only the descriptor type bit (page `0b11` <-> block `0b01`);
    /// every attribute, DBM, Contiguous and the address are kept.
    fn with_huge(self, huge: bool) -> Self {
        Self(with_bit(self.0, DESC_TYPE_TABLE_OR_PAGE, !huge))
    }

    /// Clears `S2AP[1]` (write), keeping every other bit. With DBM set and
    /// VTCR_EL2.HD, the hardware grants the write again on the next write,
    /// which then reads as dirty.
    fn write_protected(self, _huge: bool) -> Self {
        Self(self.0 & !S2AP_WRITE)
    }

    /// The Access flag, bit 10.
    fn is_accessed(&self) -> bool {
        self.af()
    }

    /// Arm has no dirty bit. With DBM, a clean leaf is write-protected
    /// (`S2AP[1]` clear) and the first write sets `S2AP[1]` (hardware with
    /// VTCR_EL2.HD, or software on the permission fault). So a leaf is dirty
    /// when DBM is set and `S2AP[1]` is set; without DBM it is never dirty.
    fn is_dirty(&self) -> bool {
        self.dbm() && bit(self.0, S2AP_WRITE)
    }

    /// Clears the Access flag; the next access sets it again (VTCR_EL2.HA)
    /// or takes an Access flag fault.
    fn clear_accessed(&mut self) {
        self.0 &= !AF;
    }

    /// When DBM is set, clears `S2AP[1]`, re-arming dirty tracking: the
    /// next write marks the leaf dirty again. Without DBM this does nothing
    /// (it must not silently revoke write permission).
    fn clear_dirty(&mut self) {
        if self.dbm() {
            self.0 &= !S2AP_WRITE;
        }
    }
}

// ---------------------------------------------------------------------------
// Control values: VTCR_EL2 and VTTBR_EL2
// ---------------------------------------------------------------------------

/// VTCR_EL2.T0SZ, bits\[5:0\]: IPA size is `64 - T0SZ` (register description
/// VTCR_EL2).
const VTCR_T0SZ: Field = Field::bits(5, 0);
/// VTCR_EL2.SL0, bits\[7:6\]: start level; with TG0 = 4 KiB `0b00` is level
/// 2, `0b01` level 1, `0b10` level 0 (VTCR_EL2 description).
const VTCR_SL0: Field = Field::bits(7, 6);
/// VTCR_EL2.IRGN0, bits\[9:8\]: inner cacheability of walk accesses
/// (VTCR_EL2 description).
const VTCR_IRGN0: Field = Field::bits(9, 8);
/// VTCR_EL2.ORGN0, bits\[11:10\]: outer cacheability of walk accesses
/// (VTCR_EL2 description).
const VTCR_ORGN0: Field = Field::bits(11, 10);
/// VTCR_EL2.SH0, bits\[13:12\]: shareability of walk accesses (VTCR_EL2
/// description).
const VTCR_SH0: Field = Field::bits(13, 12);
/// VTCR_EL2.TG0, bits\[15:14\]: granule, `0b00` = 4 KiB (VTCR_EL2
/// description).
const VTCR_TG0: Field = Field::bits(15, 14);
/// VTCR_EL2.PS, bits\[18:16\]: physical address size of the stage-2 output
/// (VTCR_EL2 description).
const VTCR_PS: Field = Field::bits(18, 16);
/// VTCR_EL2.VS, bit 19: 16-bit VMID when set (FEAT_VMID16) (VTCR_EL2
/// description).
const VTCR_VS: u64 = 1 << 19;
/// VTCR_EL2.HA, bit 21: hardware Access flag update (FEAT_HAFDBS) (VTCR_EL2
/// description).
const VTCR_HA: u64 = 1 << 21;
/// VTCR_EL2.HD, bit 22: hardware dirty-state management through DBM
/// (FEAT_HAFDBS) (VTCR_EL2 description).
const VTCR_HD: u64 = 1 << 22;
/// VTCR_EL2 bit 31, RES1 (VTCR_EL2 description).
const VTCR_RES1: u64 = 1 << 31;

/// IRGN0/ORGN0 value `0b01`: Normal, Write-Back Read-Allocate
/// Write-Allocate cacheable (VTCR_EL2 description).
const VTCR_RGN_WBWA: u64 = 0b01;
/// SH0 value `0b11`: Inner Shareable (VTCR_EL2 description).
const VTCR_SH0_INNER: u64 = 0b11;
/// TG0 value `0b00`: 4 KiB granule (VTCR_EL2 description).
const VTCR_TG0_4K: u64 = 0b00;

/// PS encodings and their widths: `(PS, bits)` (VTCR_EL2 description).
/// `0b110` (52 bits) needs FEAT_LPA; with the 4 KiB granule and
/// VTCR_EL2.DS = 0 the walk treats it as 48 bits
/// (pseudocode `AArch64.PhysicalAddressSize`).
const VTCR_PS_ENCODINGS: [(u64, u32); 7] = [
    (0b000, 32),
    (0b001, 36),
    (0b010, 40),
    (0b011, 42),
    (0b100, 44),
    (0b101, 48),
    (0b110, 52),
];

/// VTTBR_EL2.CnP, bit 0: common-not-private (FEAT_TTCNP) (register
/// description VTTBR_EL2).
const VTTBR_CNP: u64 = 1 << 0;
/// VTTBR_EL2.BADDR, bits\[47:1\]: base address of the (concatenated) start
/// table; bits below the table's alignment are RES0 (VTTBR_EL2
/// description).
const VTTBR_BADDR: Field = Field::bits(47, 1);
/// VTTBR_EL2.VMID, bits\[63:48\]; with VTCR_EL2.VS = 0 only bits\[55:48\]
/// are used and \[63:56\] are RES0 (VTTBR_EL2 description).
const VTTBR_VMID: Field = Field::bits(63, 48);

/// Why a stage-2 control value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage2ConfigError {
    /// The IPA size is outside 32..=48 bits (4 KiB granule, no FEAT_LPA2).
    IpaBitsOutOfRange {
        /// The requested IPA width.
        ipa_bits: u32,
    },
    /// The host PA size has no VTCR_EL2.PS encoding (32, 36, 40, 42, 44,
    /// 48 and 52 do).
    UnsupportedPaBits {
        /// The requested PA width.
        pa_bits: u32,
    },
    /// The IPA is wider than the host PA size; the Arm walk is then
    /// CONSTRAINED UNPREDICTABLE (the `inputsize > PAMax()` check of the
    /// stage-2 walk pseudocode), so it is refused.
    IpaExceedsPa {
        /// The requested IPA width.
        ipa_bits: u32,
        /// The host PA width.
        pa_bits: u32,
    },
    /// The start level is not 0..=2, or the start table for this IPA size
    /// would need fewer than 2 entries or more than 16 concatenated tables
    /// (pseudocode `AArch64.S2InconsistentSL`).
    InvalidStartLevel {
        /// The requested IPA width.
        ipa_bits: u32,
        /// The requested Arm start level.
        start_level: usize,
    },
    /// Start level 0 with the 4 KiB granule needs a PA size of at least 44
    /// bits (pseudocode `AArch64.S2InvalidSL`).
    Level0NeedsWiderPa {
        /// The host PA width.
        pa_bits: u32,
    },
    /// The root alignment given is not a power of two.
    BadRootAlign {
        /// The alignment.
        align: usize,
    },
    /// The root is not aligned to the size of the (concatenated) start table.
    RootMisaligned {
        /// The root address.
        root: HostPhysAddr,
        /// The required alignment in bytes.
        align: usize,
    },
    /// The root does not fit in BADDR's 48 bits.
    RootTooWide {
        /// The root address.
        root: HostPhysAddr,
    },
    /// The VMID needs 16 bits but the VMID width is 8 bits.
    VmidTooWide {
        /// The VMID.
        vmid: u16,
    },
}

impl fmt::Display for Stage2ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::IpaBitsOutOfRange { ipa_bits } => {
                write!(f, "stage-2 IPA size {ipa_bits} is outside 32..=48 bits")
            }
            Self::UnsupportedPaBits { pa_bits } => write!(
                f,
                "physical address size {pa_bits} has no VTCR_EL2.PS encoding (32, 36, 40, 42, 44, 48, 52)"
            ),
            Self::IpaExceedsPa { ipa_bits, pa_bits } => write!(
                f,
                "stage-2 IPA size {ipa_bits} exceeds the {pa_bits}-bit physical address size"
            ),
            Self::InvalidStartLevel {
                ipa_bits,
                start_level,
            } => write!(
                f,
                "start level {start_level} cannot walk a {ipa_bits}-bit IPA with 2..=16 start tables"
            ),
            Self::Level0NeedsWiderPa { pa_bits } => write!(
                f,
                "start level 0 needs a physical address size of at least 44 bits, not {pa_bits}"
            ),
            Self::BadRootAlign { align } => {
                write!(f, "root alignment {align:#x} is not a power of two")
            }
            Self::RootMisaligned { root, align } => {
                write!(f, "stage-2 root {root:#x} is not aligned to {align:#x}")
            }
            Self::RootTooWide { root } => {
                write!(f, "stage-2 root {root:#x} does not fit in 48 bits")
            }
            Self::VmidTooWide { vmid } => write!(f, "VMID {vmid} does not fit in 8 bits"),
        }
    }
}

impl core::error::Error for Stage2ConfigError {}

impl From<Stage2ConfigError> for axerrno::AxErrorKind {
    fn from(_: Stage2ConfigError) -> Self {
        axerrno::AxErrorKind::InvalidInput
    }
}

/// The VMID width, VTCR_EL2.VS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmidWidth {
    /// 8-bit VMIDs (VS = 0); VTTBR_EL2.VMID\[15:8\] must be zero.
    Bits8,
    /// 16-bit VMIDs (VS = 1, needs FEAT_VMID16).
    Bits16,
}

/// A VTCR_EL2 value for a 4 KiB-granule stage-2 walk.
///
/// [`Vtcr::new`] sets T0SZ, SL0, IRGN0/ORGN0 = Write-Back Write-Allocate,
/// SH0 = Inner Shareable, TG0 = 4 KiB, PS and the RES1 bit 31. VS, HA and
/// HD start clear; set them with the `with_*` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vtcr(u64);

impl Vtcr {
    /// Builds VTCR_EL2 for an `ipa_bits` IPA walked from Arm level
    /// `start_level` on a host with `pa_bits` physical-address bits (the
    /// implemented size, ID_AA64MMFR0_EL1.PARange, which also goes into PS).
    ///
    /// Refuses an IPA size outside 32..=48, a PA size without a PS
    /// encoding, an IPA wider than the PA, a start level whose start table
    /// would have fewer than 2 entries or more than 16 concatenated tables,
    /// and start level 0 with a PA below 44 bits.
    pub fn new(ipa_bits: u32, start_level: usize, pa_bits: u32) -> Result<Self, Stage2ConfigError> {
        if !(32..=48).contains(&ipa_bits) {
            return Err(Stage2ConfigError::IpaBitsOutOfRange { ipa_bits });
        }
        let Some(&(ps, _)) = VTCR_PS_ENCODINGS.iter().find(|&&(_, bits)| bits == pa_bits) else {
            return Err(Stage2ConfigError::UnsupportedPaBits { pa_bits });
        };
        if ipa_bits > pa_bits {
            return Err(Stage2ConfigError::IpaExceedsPa { ipa_bits, pa_bits });
        }
        let sl0 = match start_level {
            2 => 0b00,
            1 => 0b01,
            0 => 0b10,
            _ => {
                return Err(Stage2ConfigError::InvalidStartLevel {
                    ipa_bits,
                    start_level,
                });
            }
        };
        // log2 of the start table's entries: each level below the start
        // resolves 9 bits, the page offset 12. Allowed: 2 entries up to 16
        // concatenated tables (9 + 4 bits).
        let resolved_below = (3 - start_level as u32) * 9 + 12;
        let start_bits = ipa_bits.saturating_sub(resolved_below);
        if !(1..=13).contains(&start_bits) {
            return Err(Stage2ConfigError::InvalidStartLevel {
                ipa_bits,
                start_level,
            });
        }
        if start_level == 0 && pa_bits < 44 {
            return Err(Stage2ConfigError::Level0NeedsWiderPa { pa_bits });
        }
        let mut bits = VTCR_RES1;
        bits = VTCR_T0SZ.set(bits, u64::from(64 - ipa_bits));
        bits = VTCR_SL0.set(bits, sl0);
        bits = VTCR_IRGN0.set(bits, VTCR_RGN_WBWA);
        bits = VTCR_ORGN0.set(bits, VTCR_RGN_WBWA);
        bits = VTCR_SH0.set(bits, VTCR_SH0_INNER);
        bits = VTCR_TG0.set(bits, VTCR_TG0_4K);
        bits = VTCR_PS.set(bits, ps);
        Ok(Self(bits))
    }

    /// VTCR_EL2 for the format `F` (any [`Stage2`]`<N>`): IPA size
    /// `F::GPA_BITS`, start level `4 - F::LEVELS` (= [`Stage2::START_LEVEL`]).
    pub fn for_format<F: NptFormat<Entry = Stage2Entry>>(
        pa_bits: u32,
    ) -> Result<Self, Stage2ConfigError> {
        let start_level =
            4usize
                .checked_sub(F::LEVELS)
                .ok_or(Stage2ConfigError::InvalidStartLevel {
                    ipa_bits: F::GPA_BITS,
                    start_level: usize::MAX,
                })?;
        Self::new(F::GPA_BITS, start_level, pa_bits)
    }

    /// The raw register value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// T0SZ, bits\[5:0\].
    pub const fn t0sz(self) -> u32 {
        VTCR_T0SZ.get(self.0) as u32
    }

    /// The IPA width, `64 - T0SZ`.
    pub const fn ipa_bits(self) -> u32 {
        64 - self.t0sz()
    }

    /// The Arm start level SL0 selects with the 4 KiB granule (`None` for
    /// `0b11`, which needs FEAT_TTST).
    pub const fn start_level(self) -> Option<usize> {
        match VTCR_SL0.get(self.0) {
            0b00 => Some(2),
            0b01 => Some(1),
            0b10 => Some(0),
            _ => None,
        }
    }

    /// The PA width PS encodes (`None` for reserved encodings).
    pub fn pa_bits(self) -> Option<u32> {
        let ps = VTCR_PS.get(self.0);
        VTCR_PS_ENCODINGS
            .iter()
            .find(|&&(enc, _)| enc == ps)
            .map(|&(_, bits)| bits)
    }

    /// The VMID width, VS (bit 19).
    pub const fn vmid_width(self) -> VmidWidth {
        if bit(self.0, VTCR_VS) {
            VmidWidth::Bits16
        } else {
            VmidWidth::Bits8
        }
    }

    /// With VS (bit 19) set for 16-bit VMIDs (FEAT_VMID16) or clear.
    #[must_use]
    pub const fn with_vmid_width(self, width: VmidWidth) -> Self {
        Self(with_bit(
            self.0,
            VTCR_VS,
            matches!(width, VmidWidth::Bits16),
        ))
    }

    /// HA (bit 21): hardware sets the Access flag.
    pub const fn ha(self) -> bool {
        bit(self.0, VTCR_HA)
    }

    /// With HA (bit 21) set or clear; only valid with FEAT_HAFDBS.
    #[must_use]
    pub const fn with_ha(self, on: bool) -> Self {
        Self(with_bit(self.0, VTCR_HA, on))
    }

    /// HD (bit 22): hardware dirty-state management through DBM.
    pub const fn hd(self) -> bool {
        bit(self.0, VTCR_HD)
    }

    /// With HD (bit 22) set or clear; only valid with FEAT_HAFDBS.
    #[must_use]
    pub const fn with_hd(self, on: bool) -> Self {
        Self(with_bit(self.0, VTCR_HD, on))
    }
}

/// A VTTBR_EL2 value: root table address, VMID and CnP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vttbr(u64);

impl Vttbr {
    /// Builds VTTBR_EL2 for a root at `root` that must be aligned to
    /// `root_align` bytes (a power of two of at least 4 KiB: the size of
    /// the concatenated start table, [`NptFormat::ROOT_ALIGN`]) and fit 48
    /// bits. `vmid` must fit `width` (VTCR_EL2.VS must match). CnP starts
    /// clear.
    pub fn new(
        root: HostPhysAddr,
        root_align: usize,
        vmid: u16,
        width: VmidWidth,
    ) -> Result<Self, Stage2ConfigError> {
        // A table is at least one 4 KiB frame; smaller alignments would let
        // low address bits through that BADDR drops (bit 0 is CnP).
        if !root_align.is_power_of_two() || root_align < 4096 {
            return Err(Stage2ConfigError::BadRootAlign { align: root_align });
        }
        let addr = root.as_usize();
        if addr & (root_align - 1) != 0 {
            return Err(Stage2ConfigError::RootMisaligned {
                root,
                align: root_align,
            });
        }
        if (addr as u64) >> 48 != 0 {
            return Err(Stage2ConfigError::RootTooWide { root });
        }
        if width == VmidWidth::Bits8 && vmid > 0xff {
            return Err(Stage2ConfigError::VmidTooWide { vmid });
        }
        let bits = VTTBR_BADDR.set(0, addr as u64 >> 1);
        Ok(Self(VTTBR_VMID.set(bits, u64::from(vmid))))
    }

    /// VTTBR_EL2 for the format `F`, requiring alignment to `F::ROOT_ALIGN`.
    pub fn for_format<F: NptFormat<Entry = Stage2Entry>>(
        root: HostPhysAddr,
        vmid: u16,
        width: VmidWidth,
    ) -> Result<Self, Stage2ConfigError> {
        Self::new(root, F::ROOT_ALIGN, vmid, width)
    }

    /// The raw register value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The root address, BADDR (bits\[47:1\]).
    pub const fn baddr(self) -> HostPhysAddr {
        HostPhysAddr::from_usize((VTTBR_BADDR.get(self.0) << 1) as usize)
    }

    /// The VMID, bits\[63:48\].
    pub const fn vmid(self) -> u16 {
        VTTBR_VMID.get(self.0) as u16
    }

    /// CnP, bit 0.
    pub const fn cnp(self) -> bool {
        bit(self.0, VTTBR_CNP)
    }

    /// With CnP (bit 0) set or clear; only meaningful with FEAT_TTCNP.
    #[must_use]
    pub const fn with_cnp(self, on: bool) -> Self {
        Self(with_bit(self.0, VTTBR_CNP, on))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::ToString;

    const R: MappingFlags = MappingFlags::READ;
    const W: MappingFlags = MappingFlags::WRITE;
    const X: MappingFlags = MappingFlags::EXECUTE;

    fn pa(addr: usize) -> PhysAddr {
        PhysAddr::from_usize(addr)
    }

    fn hpa(addr: usize) -> HostPhysAddr {
        HostPhysAddr::from_usize(addr)
    }

    // ---- worked examples, every bit spelled out ----

    #[test]
    fn worked_example_4k_page_rw_write_back() {
        // 0b11 page | MemAttr 0b1111 << 2 | S2AP 0b11 << 6 | SH 0b11 << 8
        // | AF << 10 | XN 0b10 << 53 | address.
        let e = Stage2Entry::new_page(pa(0x4000_1000), R | W, false);
        assert_eq!(e.raw(), 0x0040_0000_4000_17ff);
        assert!(e.is_page() && !e.is_block() && !e.is_huge());
        assert_eq!(e.kind(true), EntryKind::Leaf);
        assert_eq!(e.flags(), R | W);
        assert_eq!(e.memory_type(), MemoryType::WriteBack);
    }

    #[test]
    fn worked_example_2m_block_rwx_write_back() {
        // 0b01 block | 0x3c | 0xc0 | 0x300 | 0x400, XN 0b00.
        let e = Stage2Entry::new_page(pa(0x8020_0000), R | W | X, true);
        assert_eq!(e.raw(), 0x0000_0000_8020_07fd);
        assert!(e.is_block() && e.is_huge());
        assert_eq!(e.kind(false), EntryKind::Leaf);
        assert_eq!(e.flags(), R | W | X);
    }

    #[test]
    fn worked_example_1g_block_read_only_device() {
        // 0b01 | MemAttr 0b0001 << 2 (0x4) | S2AP 0b01 << 6 (0x40) | 0x300
        // | 0x400 | XN 0b10 << 53.
        let e = Stage2Entry::new_page(pa(0x1_4000_0000), R | MappingFlags::DEVICE, true);
        assert_eq!(e.raw(), 0x0040_0001_4000_0745);
        assert_eq!(e.memory_type(), MemoryType::Device);
        assert_eq!(e.flags(), R | MappingFlags::DEVICE);
    }

    #[test]
    fn worked_example_4k_page_rx_uncached() {
        // 0b11 | MemAttr 0b0101 << 2 (0x14) | 0x40 | 0x300 | 0x400, XN 0.
        let e = Stage2Entry::new_page(pa(0x9000_0000), R | X | MappingFlags::UNCACHED, false);
        assert_eq!(e.raw(), 0x0000_0000_9000_0757);
        assert_eq!(e.flags(), R | X | MappingFlags::UNCACHED);
    }

    #[test]
    fn worked_example_table_descriptor() {
        let t = Stage2Entry::new_table(pa(0x4008_2000));
        assert_eq!(t.raw(), 0x0000_0000_4008_2003);
        assert_eq!(t.kind(false), EntryKind::Table);
        assert!(!t.is_huge());
        assert_eq!(t.paddr(), pa(0x4008_2000));
    }

    #[test]
    fn worked_example_vtcr_40_bit_ipa_level_1() {
        // T0SZ 24 (0x18) | SL0 0b01 << 6 (0x40) | IRGN0 0b01 << 8 (0x100)
        // | ORGN0 0b01 << 10 (0x400) | SH0 0b11 << 12 (0x3000) | TG0 0
        // | PS 0b101 << 16 (0x5_0000) | RES1 bit 31.
        let v = Vtcr::new(40, 1, 48).unwrap();
        assert_eq!(v.bits(), 0x8005_3558);
        assert_eq!(Vtcr::for_format::<Stage2<40>>(48), Ok(v));
        assert_eq!(
            (v.ipa_bits(), v.start_level(), v.pa_bits()),
            (40, Some(1), Some(48))
        );
    }

    #[test]
    fn worked_example_vtcr_48_bit_ipa_level_0() {
        // T0SZ 16 (0x10) | SL0 0b10 << 6 (0x80) | 0x3500 | 0x5_0000 | bit 31.
        let v = Vtcr::new(48, 0, 48).unwrap();
        assert_eq!(v.bits(), 0x8005_3590);
        assert_eq!(Vtcr::for_format::<Stage2<48>>(48), Ok(v));
        assert_eq!(v.start_level(), Some(0));
    }

    #[test]
    fn worked_example_vtcr_32_bit_ipa_level_2() {
        // T0SZ 32 (0x20) | SL0 0 | 0x3500 | PS 0b010 << 16 | bit 31.
        let v = Vtcr::new(32, 2, 40).unwrap();
        assert_eq!(v.bits(), 0x8002_3520);
        assert_eq!(Vtcr::for_format::<Stage2<32>>(40), Ok(v));
    }

    #[test]
    fn worked_example_vttbr_vmid_5() {
        // VMID 5 << 48 | BADDR 0x4008_0000 (8 KiB aligned: two concatenated
        // level-1 tables for a 40-bit IPA).
        let t = Vttbr::for_format::<Stage2<40>>(hpa(0x4008_0000), 5, VmidWidth::Bits8).unwrap();
        assert_eq!(t.bits(), 0x0005_0000_4008_0000);
        assert_eq!((t.baddr(), t.vmid(), t.cnp()), (hpa(0x4008_0000), 5, false));
        assert_eq!(t.with_cnp(true).bits(), 0x0005_0000_4008_0001);
    }

    // ---- fields from the descriptor tables ----

    #[test]
    fn descriptor_field_positions() {
        let e = Stage2Entry::from_raw;
        assert_eq!(e(0b1111 << 2).mem_attr(), 0b1111);
        assert_eq!(e(1 << 6).s2ap(), S2AP_READ_ONLY);
        assert_eq!(e(1 << 7).s2ap(), S2AP_WRITE_ONLY);
        assert_eq!(e(0b11 << 6).s2ap(), S2AP_READ_WRITE);
        assert_eq!(e(0b10 << 8).sh(), SH_OUTER_SHAREABLE);
        assert_eq!(e(0).sh(), SH_NON_SHAREABLE);
        assert!(e(1 << 10).af());
        assert!(e(1 << 51).dbm());
        assert!(e(1 << 52).contiguous());
        assert_eq!(e(1 << 53).xn(), XN_EL0_ONLY);
        assert_eq!(e(1 << 54).xn(), XN_NEVER);
        assert_eq!(e(0b11 << 53).xn(), XN_EL1_ONLY);
        // The address field is exactly bits 47:12.
        assert_eq!(e(u64::MAX).address(), 0x0000_ffff_ffff_f000);
        assert_eq!(e(u64::MAX).paddr(), pa(0xffff_ffff_f000));
    }

    #[test]
    fn every_leaf_has_af_and_inner_shareable() {
        for flags in [
            R,
            R | W,
            X,
            R | X,
            R | MappingFlags::DEVICE,
            W | R | MappingFlags::UNCACHED,
        ] {
            for huge in [false, true] {
                let e = Stage2Entry::new_page(pa(0x20_0000), flags, huge);
                assert!(e.af() && e.is_accessed());
                assert_eq!(e.sh(), SH_INNER_SHAREABLE);
                assert!(!e.dbm() && !e.contiguous());
                assert!(!e.flags().contains(MappingFlags::USER));
            }
        }
        let user = Stage2Entry::new_page(pa(0x1000), R | MappingFlags::USER, false);
        assert_eq!(user, Stage2Entry::new_page(pa(0x1000), R, false));
    }

    /// The rights rules every format shares (`NestedEntry` docs), in
    /// stage-2 encodings (D8.3: bit 0 clear is an invalid descriptor; D8.4
    /// S2AP/XN): no access is invalid rather than a valid descriptor with
    /// `S2AP = 0b00`, `XN = 0b10`; write gets read; execute-only is
    /// `S2AP = 0b00`, `XN = 0b00`.
    #[test]
    fn rights_rules_worked_examples() {
        // No access, 4 KiB: page bit 0x2 | WB 0x3c | SH 0x300 | AF 0x400 |
        // XN 0b10 << 53, bit 0 clear.
        let none = Stage2Entry::new_page(pa(0x4000_1000), MappingFlags::empty(), false);
        assert_eq!(none.raw(), 0x0040_0000_4000_173e);
        assert!(!none.is_present());
        assert_eq!(none.kind(true), EntryKind::Empty);
        // No access, block: 0x3c | 0x300 | 0x400 | XN, bits 1:0 = 0.
        let none = Stage2Entry::new_page(pa(0x4020_0000), MappingFlags::DEVICE, true);
        assert_eq!(none.raw() & 0b11, 0);
        assert_eq!(none.kind(false), EntryKind::Empty);
        assert_eq!(
            Stage2Entry::new_page(pa(0x4020_0000), MappingFlags::USER, true).raw(),
            0x0040_0000_4020_073c
        );
        // set_flags to no access leaves an invalid descriptor, address kept.
        let mut e = Stage2Entry::new_page(pa(0x4000_1000), R | W, false);
        e.set_flags(MappingFlags::empty(), false);
        assert_eq!(e.raw(), 0x0040_0000_4000_173e);
        // W alone: S2AP 0b11, the same descriptor as R|W.
        let wo = Stage2Entry::new_page(pa(0x4000_1000), W, false);
        assert_eq!(wo.raw(), 0x0040_0000_4000_17ff);
        assert_eq!(wo.s2ap(), S2AP_READ_WRITE);
        // X alone: 0x3 | 0x3c | S2AP 00 | 0x300 | 0x400 | XN 00.
        assert_eq!(
            Stage2Entry::new_page(pa(0x4000_1000), X, false).raw(),
            0x4000_173f
        );
        assert_eq!(Stage2Entry::check_leaf_flags(X), Ok(()));
    }

    #[test]
    fn s2ap_and_xn_from_flags() {
        let e = |f| Stage2Entry::new_page(pa(0x1000), f, false);
        assert_eq!((e(R).s2ap(), e(R).xn()), (S2AP_READ_ONLY, XN_NEVER));
        assert_eq!(
            (e(R | W).s2ap(), e(R | W).xn()),
            (S2AP_READ_WRITE, XN_NEVER)
        );
        assert_eq!((e(X).s2ap(), e(X).xn()), (S2AP_NONE, XN_EXECUTABLE));
        assert_eq!(e(X).flags(), X);
        assert_eq!(
            (e(R | X).s2ap(), e(R | X).xn()),
            (S2AP_READ_ONLY, XN_EXECUTABLE)
        );
    }

    #[test]
    fn xnx_partial_execute_is_not_reported_as_execute() {
        let base = Stage2Entry::new_page(pa(0x1000), R | X, false).raw();
        for (xn, exec) in [
            (XN_EXECUTABLE, true),
            (XN_EL0_ONLY, false),
            (XN_NEVER, false),
            (XN_EL1_ONLY, false),
        ] {
            let e = Stage2Entry::from_raw(XN.set(base, xn as u64));
            assert_eq!(e.flags().contains(X), exec, "xn {xn:#b}");
        }
    }

    #[test]
    fn mem_attr_encodings_and_decoding() {
        use MemoryType::*;
        let cases = [
            (WriteBack, MEMATTR_NORMAL_WB, WriteBack),
            (WriteThrough, MEMATTR_NORMAL_WT, WriteThrough),
            (WriteProtect, MEMATTR_NORMAL_WT, WriteThrough),
            (Uncached, MEMATTR_NORMAL_NC, Uncached),
            (WriteCombining, MEMATTR_NORMAL_NC, Uncached),
            (Device, MEMATTR_DEVICE_NGNRE, Device),
        ];
        for (ty, attr, back) in cases {
            let e = Stage2Entry::new_leaf(hpa(0x20_0000), R | W, PageSize::Size2M, ty).unwrap();
            assert_eq!(e.mem_attr(), attr, "{ty:?}");
            assert_eq!(e.memory_type(), back, "{ty:?}");
            assert!(e.is_block());
        }
        // All 16 MemAttr values: [3:2] outer, [1:0] inner (or Device type).
        let decode = |attr: u64| Stage2Entry::from_raw(MEM_ATTR.set(1, attr)).memory_type();
        for attr in 0..4 {
            assert_eq!(decode(attr), Device, "Device-{attr:#b}");
        }
        assert_eq!(decode(u64::from(MEMATTR_DEVICE_NGNRNE)), Device);
        let expect = [
            // inner: reserved, NC, WT, WB
            [Uncached, Uncached, Uncached, Uncached], // outer NC
            [Uncached, Uncached, WriteThrough, WriteThrough], // outer WT
            [Uncached, Uncached, WriteThrough, WriteBack], // outer WB
        ];
        for (o, row) in expect.iter().enumerate() {
            for (i, &ty) in row.iter().enumerate() {
                let attr = ((o as u64 + 1) << 2) | i as u64;
                assert_eq!(decode(attr), ty, "MemAttr {attr:#06b}");
            }
        }
    }

    #[test]
    fn kind_by_level() {
        let page_or_table = Stage2Entry::from_raw(0x1000 | 0b11);
        let block = Stage2Entry::from_raw(0x20_0000 | 0b01);
        let invalid_with_type = Stage2Entry::from_raw(0x1000 | 0b10);
        assert_eq!(page_or_table.kind(true), EntryKind::Leaf);
        assert_eq!(page_or_table.kind(false), EntryKind::Table);
        assert_eq!(block.kind(true), EntryKind::Empty);
        assert_eq!(block.kind(false), EntryKind::Leaf);
        for last in [false, true] {
            assert_eq!(invalid_with_type.kind(last), EntryKind::Empty);
            assert_eq!(Stage2Entry::INVALID.kind(last), EntryKind::Empty);
        }
        assert!(!invalid_with_type.is_present() && !invalid_with_type.is_huge());
        assert!(Stage2Entry::INVALID.is_unused());
    }

    #[test]
    fn accessed_and_dirty_with_dbm() {
        let mut e = Stage2Entry::new_page(pa(0x3000), R | W, false);
        assert!(e.is_accessed());
        e.clear_accessed();
        assert!(!e.is_accessed() && !e.af());
        // Without DBM: never dirty, and clear_dirty keeps write permission.
        assert!(!e.is_dirty());
        e.clear_dirty();
        assert!(e.flags().contains(W));
        // Arm tracking: DBM set, then clear_dirty write-protects.
        e.set_dbm(true);
        assert!(e.dbm() && e.is_dirty());
        e.clear_dirty();
        assert!(!e.is_dirty() && !e.flags().contains(W) && e.dbm());
        // The hardware (or the fault handler) sets S2AP[1] on the write.
        let written = Stage2Entry::from_raw(e.raw() | S2AP_WRITE);
        assert!(written.is_dirty());
        e.set_dbm(false);
        assert!(!e.dbm());
    }

    #[test]
    fn with_huge_and_write_protected_keep_bits() {
        let mut e = Stage2Entry::new_page(pa(0x20_0000), R | W | X, true);
        e.set_dbm(true);
        e.clear_accessed();
        let page = e.with_huge(false);
        assert_eq!(page.raw(), e.raw() | 0b10);
        assert!(page.is_page() && page.with_huge(true) == e);
        let ro = e.write_protected(true);
        assert_eq!(ro.raw(), e.raw() & !(1 << 7));
        assert_eq!(ro.flags(), R | X);
        assert!(ro.dbm() && !ro.is_dirty());
    }

    #[test]
    fn contiguous_accessor() {
        let mut e = Stage2Entry::new_page(pa(0x1_0000), R, false);
        e.set_contiguous(true);
        assert_eq!(e.raw() & (1 << 52), 1 << 52);
        e.set_contiguous(false);
        assert!(!e.contiguous());
    }

    #[test]
    fn set_flags_and_set_paddr() {
        let mut e = Stage2Entry::new_page(pa(0x4000_0000), R, true);
        e.set_dbm(true);
        e.set_contiguous(true);
        e.set_flags(R | W | X | MappingFlags::DEVICE, false);
        assert_eq!(e.paddr(), pa(0x4000_0000));
        assert!(e.dbm() && e.contiguous() && e.is_page());
        assert_eq!(e.flags(), R | W | X | MappingFlags::DEVICE);
        e.set_paddr(pa(0x1234_5000));
        assert_eq!(e.paddr(), pa(0x1234_5000));
        assert_eq!(e.flags(), R | W | X | MappingFlags::DEVICE);
        // Addresses are masked to bits 47:12.
        e.set_paddr(pa(0xffff_0000_0000_1fff));
        assert_eq!(e.paddr(), pa(0x1000));
        assert_eq!(
            Stage2Entry::new_table(pa(0x1_0000_0000_2000)).paddr(),
            pa(0x2000)
        );
        e.clear();
        assert!(e.is_unused() && !e.is_present());
    }

    #[test]
    fn new_leaf_checks() {
        let wb = MemoryType::WriteBack;
        assert_eq!(
            Stage2Entry::new_leaf(hpa(0x1000), R, PageSize::Size2M, wb),
            Err(EntryError::Misaligned {
                hpa: hpa(0x1000),
                size: PageSize::Size2M
            })
        );
        assert_eq!(
            Stage2Entry::new_leaf(hpa(1 << 48), R, PageSize::Size4K, wb),
            Err(EntryError::AddressTooWide {
                hpa: hpa(1 << 48),
                pa_bits: 48
            })
        );
        assert_eq!(
            Stage2Entry::new_leaf(hpa(0x1000), W, PageSize::Size4K, wb),
            Err(EntryError::BadFlags(W))
        );
        let leaf = Stage2Entry::new_leaf(hpa(0x4000_0000), R | W, PageSize::Size1G, wb).unwrap();
        assert_eq!(
            Ok(leaf),
            Stage2Entry::try_new_leaf(hpa(0x4000_0000), R | W, PageSize::Size1G)
        );
    }

    #[test]
    fn vtcr_accessors() {
        let v = Vtcr::new(40, 1, 44).unwrap();
        assert_eq!(v.t0sz(), 24);
        assert_eq!(v.pa_bits(), Some(44));
        assert_eq!(v.vmid_width(), VmidWidth::Bits8);
        assert!(!v.ha() && !v.hd());
        let v = v
            .with_vmid_width(VmidWidth::Bits16)
            .with_ha(true)
            .with_hd(true);
        // 0x3558 as above | PS 0b100 << 16 | VS bit 19 | HA bit 21 | HD bit 22
        // | RES1 bit 31.
        assert_eq!(v.bits(), 0x806c_3558);
        assert_eq!(v.vmid_width(), VmidWidth::Bits16);
        assert!(v.ha() && v.hd());
        assert_eq!(
            v.with_hd(false)
                .with_ha(false)
                .with_vmid_width(VmidWidth::Bits8),
            Vtcr::new(40, 1, 44).unwrap()
        );
        for (pa_bits, ps) in [
            (32, 0b000),
            (36, 0b001),
            (40, 0b010),
            (42, 0b011),
            (44, 0b100),
            (48, 0b101),
            (52, 0b110),
        ] {
            let v = Vtcr::new(32, 1, pa_bits).unwrap();
            assert_eq!(VTCR_PS.get(v.bits()), ps);
            assert_eq!(v.pa_bits(), Some(pa_bits));
        }
    }

    #[test]
    fn vtcr_rejects() {
        use Stage2ConfigError::*;
        assert_eq!(
            Vtcr::new(31, 2, 48),
            Err(IpaBitsOutOfRange { ipa_bits: 31 })
        );
        assert_eq!(
            Vtcr::new(49, 0, 52),
            Err(IpaBitsOutOfRange { ipa_bits: 49 })
        );
        assert_eq!(Vtcr::new(40, 1, 41), Err(UnsupportedPaBits { pa_bits: 41 }));
        assert_eq!(
            Vtcr::new(44, 0, 40),
            Err(IpaExceedsPa {
                ipa_bits: 44,
                pa_bits: 40
            })
        );
        // Level 2 walks at most 34 bits (16 tables), level 1 at most 43.
        assert_eq!(
            Vtcr::new(35, 2, 48),
            Err(InvalidStartLevel {
                ipa_bits: 35,
                start_level: 2
            })
        );
        assert_eq!(
            Vtcr::new(44, 1, 48),
            Err(InvalidStartLevel {
                ipa_bits: 44,
                start_level: 1
            })
        );
        // Level 0 needs at least 2 entries: 40 bits.
        assert_eq!(
            Vtcr::new(39, 0, 48),
            Err(InvalidStartLevel {
                ipa_bits: 39,
                start_level: 0
            })
        );
        assert_eq!(
            Vtcr::new(40, 3, 48),
            Err(InvalidStartLevel {
                ipa_bits: 40,
                start_level: 3
            })
        );
        assert_eq!(
            Vtcr::new(40, 0, 42),
            Err(Level0NeedsWiderPa { pa_bits: 42 })
        );
        assert!(Vtcr::new(40, 0, 44).is_ok());
        assert!(Vtcr::new(34, 2, 36).is_ok());
        assert!(Vtcr::new(43, 1, 44).is_ok());
    }

    #[test]
    fn vttbr_rejects_and_vmid16() {
        use Stage2ConfigError::*;
        let b8 = VmidWidth::Bits8;
        assert_eq!(
            Vttbr::for_format::<Stage2<40>>(hpa(0x4008_1000), 5, b8),
            Err(RootMisaligned {
                root: hpa(0x4008_1000),
                align: 0x2000
            })
        );
        assert_eq!(
            Vttbr::for_format::<Stage2<43>>(hpa(0x4008_8000), 5, b8),
            Err(RootMisaligned {
                root: hpa(0x4008_8000),
                align: 0x1_0000
            })
        );
        assert_eq!(
            Vttbr::new(hpa(1 << 48), 0x1000, 1, b8),
            Err(RootTooWide { root: hpa(1 << 48) })
        );
        assert_eq!(
            Vttbr::new(hpa(0x1000), 0x1800, 1, b8),
            Err(BadRootAlign { align: 0x1800 })
        );
        assert_eq!(
            Vttbr::new(hpa(0x1000), 0x1000, 0x100, b8),
            Err(VmidTooWide { vmid: 0x100 })
        );
        let t = Vttbr::for_format::<Stage2<48>>(hpa(0xffff_ffff_f000), 0xabcd, VmidWidth::Bits16)
            .unwrap();
        assert_eq!(t.bits(), 0xabcd_ffff_ffff_f000);
        assert_eq!((t.vmid(), t.baddr()), (0xabcd, hpa(0xffff_ffff_f000)));
    }

    #[test]
    fn messages_and_debug() {
        let msg = Vtcr::new(50, 0, 48).unwrap_err().to_string();
        assert!(msg.contains("50"), "{msg}");
        let msg = Vttbr::new(hpa(0x1800), 0x1000, 0, VmidWidth::Bits8)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("0x1800"), "{msg}");
        let kind: axerrno::AxErrorKind = Stage2ConfigError::VmidTooWide { vmid: 300 }.into();
        assert_eq!(kind, axerrno::AxErrorKind::InvalidInput);
        let dbg = format!("{:?}", Stage2Entry::new_page(pa(0x4000_1000), R | W, false));
        assert!(
            dbg.contains("0x00400000400017ff") && dbg.contains("table/page"),
            "{dbg}"
        );
        assert_eq!(
            format!("{:?}", Stage2Entry::INVALID),
            "Stage2Entry(invalid 0x0)"
        );
    }

    #[test]
    fn format_geometry() {
        assert_eq!(
            (Stage2::<32>::START_LEVEL, Stage2::<34>::START_LEVEL),
            (2, 2)
        );
        assert_eq!(
            (Stage2::<35>::START_LEVEL, Stage2::<43>::START_LEVEL),
            (1, 1)
        );
        assert_eq!(
            (Stage2::<44>::START_LEVEL, Stage2::<48>::START_LEVEL),
            (0, 0)
        );
        assert_eq!(<Stage2<40> as NptFormat>::PA_BITS, 48);
    }
}

#[cfg(test)]
mod regressions {
    use super::*;

    /// Found by the `entry_decode` fuzz target: an alignment of 1 let an odd
    /// root through, and BADDR silently dropped bit 0.
    #[test]
    fn vttbr_refuses_alignments_below_a_frame() {
        let odd = HostPhysAddr::from(0x11f_2a5f);
        assert!(Vttbr::new(odd, 1, 0, VmidWidth::Bits8).is_err());
        assert!(Vttbr::new(HostPhysAddr::from(0x1000), 2048, 0, VmidWidth::Bits8).is_err());
        assert!(Vttbr::new(HostPhysAddr::from(0x1000), 4096, 0, VmidWidth::Bits8).is_ok());
    }
}
