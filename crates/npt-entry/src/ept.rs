//! Intel EPT (Intel SDM Vol. 3C, chapter 29 "VMX Support for Address
//! Translation", 29.3 "The Extended Page Table Mechanism (EPT)").
//!
//! Section and table numbers below are those of the SDM editions where EPT is
//! section 29.3 (older editions number it 28.2; the table titles are stable).
//!
//! An EPT paging-structure entry has the same layout at every level, with a
//! few bits whose meaning depends on the level:
//!
//! | bits | table entry (PML5E..PDE) | leaf (1 GiB PDPTE, 2 MiB PDE, PTE) |
//! |---|---|---|
//! | 0, 1, 2 | read, write, execute ([`EptEntry::READ`] ...) | same |
//! | 5:3 | reserved (0) | EPT memory type ([`EptEntry::MEMORY_TYPE`]) |
//! | 6 | reserved (0) | ignore PAT ([`EptEntry::IGNORE_PAT`]) |
//! | 7 | 0: table | 1 in PDPTE/PDE: large page; ignored in a PTE |
//! | 8 | accessed | accessed |
//! | 9 | ignored | dirty |
//! | 10 | user-mode execute (MBEC); set by `new_table` | user-mode execute (MBEC); opt-in |
//! | 51:12 | next table | frame (51:30 for 1 GiB, 51:21 for 2 MiB; the low bits reserved) |
//! | 63 | ignored | suppress #VE; opt-in |
//!
//! # Encodings a processor never rejects
//!
//! An EPT misconfiguration exit (SDM Vol. 3C, 29.3.3.1 "EPT
//! Misconfigurations") follows from an entry with bit 0 (read) clear and
//! bit 1 (write) set, or, on a processor without execute-only support
//! (IA32_VMX_EPT_VPID_CAP bit 0, Appendix A.10), bit 0 clear and bit 2 (or
//! under mode-based execute control bit 10) set. So:
//!
//! - [`GenericPTE::new_page`] and [`GenericPTE::set_flags`], which cannot
//!   fail, promote `WRITE` to read+write and `EXECUTE` without `READ` to
//!   read+execute, and build no-access flags as a not-present entry (bits
//!   2:0 = 0);
//! - the checked constructors ([`NestedEntry::try_new_leaf`],
//!   [`EptEntry::new_leaf`]) refuse no access and write without read with
//!   [`EntryError::BadFlags`] and execute-only with
//!   [`EntryError::ExecuteOnly`];
//! - [`EptEntry::new_leaf_with`] builds a true execute-only leaf when its
//!   [`EptLeafOptions`] carry [`EptCaps`] stating the processor supports
//!   it.
//!
//! # Per-mapping options
//!
//! [`EptLeafOptions`] also chooses, per leaf, whether the guest PAT takes
//! part in the memory type ([`PatPolicy`], bit 6), the user-mode execute
//! right of mode-based execute control (bit 10) and suppress #VE (bit 63).
//! The defaults are those of `new_page`: ignore PAT, bits 10 and 63 clear.
//!
//! [`EptEntry`] implements [`GenericPTE`] and [`NestedEntry`]; [`Eptp`] is
//! the VM-execution control field that points the processor at the root.
//!
//! ```
//! use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
//! use npt_entry::{NestedEntry, NptFormat};
//! use npt_entry::ept::{Ept4, EptEntry, EptMemoryType, Eptp};
//!
//! let rw = MappingFlags::READ | MappingFlags::WRITE;
//! let leaf = EptEntry::new_leaf(
//!     HostPhysAddr::from(0x20_0000),
//!     rw,
//!     PageSize::Size2M,
//!     MemoryType::WriteBack,
//! )?;
//! // R|W, memory type WB (6 << 3), ignore PAT, large page.
//! assert_eq!(leaf.raw(), 0x20_00f3);
//!
//! let eptp = Eptp::new(HostPhysAddr::from(0x1000), Ept4::LEVELS, EptMemoryType::WriteBack, true)?;
//! assert_eq!(eptp.bits(), 0x105e);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::{fmt, ops::Range};

use bit_field::BitField;
use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
use memory_addr::PhysAddr;

use crate::{EntryError, GenericPTE, NestedEntry, NptFormat, check_flags, check_leaf_address};

/// The EPT capabilities that decide which leaf encodings the processor
/// accepts, as the caller read them from the processor.
///
/// Today that is one capability: execute-only translations, reported by bit
/// 0 of the IA32_VMX_EPT_VPID_CAP MSR (index 48CH; SDM Vol. 3C, Appendix
/// A.10 "VPID and EPT Capabilities"). Without it, an entry with bit 0 clear
/// and bit 2 set is an EPT misconfiguration (29.3.3.1).
///
/// [`EptCaps::NONE`] (also the `Default`) states nothing; it is what
/// [`GenericPTE::new_page`], [`NestedEntry::try_new_leaf`] and
/// [`EptEntry::new_leaf`] assume.
///
/// ```
/// use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
/// use npt_entry::{EntryError, NestedEntry};
/// use npt_entry::ept::{EptCaps, EptEntry, EptLeafOptions};
///
/// let x = MappingFlags::EXECUTE;
/// let hpa = HostPhysAddr::from(0x5000);
/// // Nothing stated: execute-only is refused ...
/// assert_eq!(EptEntry::try_new_leaf(hpa, x, PageSize::Size4K), Err(EntryError::ExecuteOnly(x)));
/// // ... unless IA32_VMX_EPT_VPID_CAP bit 0 is set (a value read with RDMSR).
/// let caps = EptCaps::from_ept_vpid_cap(0x0f01_06f1_4141);
/// let opts = EptLeafOptions::new().with_caps(caps);
/// let leaf = EptEntry::new_leaf_with(hpa, x, PageSize::Size4K, MemoryType::WriteBack, opts)?;
/// // X (0x4) | WB (6 << 3) | ignore PAT (0x40): bit 0 (read) clear.
/// assert_eq!(leaf.raw(), 0x5074);
/// # Ok::<(), EntryError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EptCaps {
    /// IA32_VMX_EPT_VPID_CAP bit 0.
    execute_only: bool,
}

impl EptCaps {
    /// Bit 0 of IA32_VMX_EPT_VPID_CAP: "the processor supports
    /// execute-only translations by EPT" (SDM Vol. 3C, Appendix A.10).
    pub const VPID_CAP_EXECUTE_ONLY: u64 = 1 << 0;

    /// No capability stated: execute-only leaves are refused or promoted.
    pub const NONE: Self = Self {
        execute_only: false,
    };

    /// The capabilities in a value of the IA32_VMX_EPT_VPID_CAP MSR (only
    /// the bits this crate uses are read).
    pub const fn from_ept_vpid_cap(msr: u64) -> Self {
        Self {
            execute_only: msr & Self::VPID_CAP_EXECUTE_ONLY != 0,
        }
    }

    /// These capabilities with execute-only support stated (`true`) or not.
    pub const fn with_execute_only(self, supported: bool) -> Self {
        Self {
            execute_only: supported,
        }
    }

    /// Whether execute-only translations are stated to be supported.
    pub const fn execute_only(self) -> bool {
        self.execute_only
    }

    /// Checks leaf flags on a processor with these capabilities:
    /// [`check_flags`] (some access, no write without read), then
    /// [`EntryError::ExecuteOnly`] for `EXECUTE` without `READ` unless
    /// execute-only is supported.
    pub const fn check_flags(self, flags: MappingFlags) -> Result<(), EntryError> {
        if let Err(e) = check_flags(flags) {
            return Err(e);
        }
        if !self.execute_only
            && flags.contains(MappingFlags::EXECUTE)
            && !flags.contains(MappingFlags::READ)
        {
            return Err(EntryError::ExecuteOnly(flags));
        }
        Ok(())
    }
}

/// Whether a leaf's EPT memory type is the final type or combines with the
/// guest's PAT type: bit 6 of the leaf, "ignore PAT memory type" (SDM
/// Vol. 3C, 29.3.7.2 "Memory Type Used for Translated Guest-Physical
/// Addresses").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PatPolicy {
    /// Bit 6 set: the EPT memory type is the type of the access, whatever
    /// the guest's PAT selects. The default, and what
    /// [`GenericPTE::new_page`] builds: guest RAM is write-back and device
    /// memory UC no matter what the guest programs.
    #[default]
    IgnoreGuestPat,
    /// Bit 6 clear: the EPT memory type takes the place of the MTRR type and
    /// combines with the type the guest's PAT selects as Vol. 3A, 13.5.2.2,
    /// Table 13-7 "Effective Page-Level Memory Types" gives. With EPT type UC
    /// the result is UC for every guest PAT type except WC, which stays WC:
    /// the guest can make a frame buffer write-combining, as KVM allows for
    /// MMIO.
    CombineWithGuestPat,
}

/// Per-leaf EPT choices beyond access rights and memory type, for
/// [`EptEntry::new_leaf_with`]. [`EptLeafOptions::new`] (also the
/// `Default`) gives the leaf [`GenericPTE::new_page`] builds.
///
/// ```
/// use gpa_types::{HostPhysAddr, MappingFlags, MemoryType, PageSize};
/// use npt_entry::NestedEntry;
/// use npt_entry::ept::{EptEntry, EptLeafOptions, PatPolicy};
///
/// // An MMIO page whose caching the guest's PAT may relax to WC.
/// let opts = EptLeafOptions::new().with_pat(PatPolicy::CombineWithGuestPat);
/// let rw = MappingFlags::READ | MappingFlags::WRITE;
/// let hpa = HostPhysAddr::from(0xfd00_0000);
/// let leaf = EptEntry::new_leaf_with(hpa, rw, PageSize::Size4K, MemoryType::Device, opts)?;
/// // R|W, memory type UC (0), bit 6 clear.
/// assert_eq!(leaf.raw(), 0xfd00_0003);
/// # Ok::<(), npt_entry::EntryError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EptLeafOptions {
    /// What the processor supports.
    caps: EptCaps,
    /// Bit 6.
    pat: PatPolicy,
    /// Bit 10.
    user_execute: bool,
    /// Bit 63.
    suppress_ve: bool,
}

impl EptLeafOptions {
    /// The options of [`GenericPTE::new_page`]: no capability stated,
    /// [`PatPolicy::IgnoreGuestPat`], user execute and suppress #VE clear.
    pub const fn new() -> Self {
        Self {
            caps: EptCaps::NONE,
            pat: PatPolicy::IgnoreGuestPat,
            user_execute: false,
            suppress_ve: false,
        }
    }

    /// The processor's capabilities: with [`EptCaps::execute_only`],
    /// `EXECUTE` without `READ` builds an execute-only leaf.
    pub const fn with_caps(self, caps: EptCaps) -> Self {
        Self { caps, ..self }
    }

    /// Whether the guest PAT combines with the leaf's memory type.
    pub const fn with_pat(self, pat: PatPolicy) -> Self {
        Self { pat, ..self }
    }

    /// Sets bit 10, "execute access for user-mode linear addresses", for a
    /// hypervisor that enables the "mode-based execute control for EPT"
    /// VM-execution control (secondary processor-based control bit 22, SDM
    /// Vol. 3C, 25.6.2 "Processor-Based VM-Execution Controls"; 29.3.2,
    /// Tables 29-2, 29-4, 29-6). Under that control
    /// `EXECUTE` (bit 2) allows supervisor-mode fetches only and this bit
    /// user-mode fetches; without it the bit is ignored. Table entries from
    /// [`GenericPTE::new_table`] set bit 10, so the leaf decides.
    pub const fn with_user_execute(self, allow: bool) -> Self {
        Self {
            user_execute: allow,
            ..self
        }
    }

    /// Sets bit 63, "suppress #VE", for a hypervisor that enables the
    /// "EPT-violation #VE" VM-execution control (secondary processor-based
    /// control bit 18, 25.6.2 "Processor-Based VM-Execution Controls"; SDM
    /// Vol. 3C, 29.3.2, Tables 29-2, 29-4, 29-6, and the section
    /// "Virtualization Exceptions" of the chapter "VMX Non-Root
    /// Operation"): an EPT violation on the leaf
    /// then causes a VM exit rather than a #VE in the guest. Ignored without
    /// that control.
    pub const fn with_suppress_ve(self, suppress: bool) -> Self {
        Self {
            suppress_ve: suppress,
            ..self
        }
    }

    /// The stated capabilities.
    pub const fn caps(&self) -> EptCaps {
        self.caps
    }

    /// The guest-PAT policy.
    pub const fn pat(&self) -> PatPolicy {
        self.pat
    }

    /// Whether bit 10 (user-mode execute) is set.
    pub const fn user_execute(&self) -> bool {
        self.user_execute
    }

    /// Whether bit 63 (suppress #VE) is set.
    pub const fn suppress_ve(&self) -> bool {
        self.suppress_ve
    }
}

/// An EPT paging-structure entry (PML5E/PML4E/PDPTE/PDE/PTE).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EptEntry(u64);

/// EPT with a 4-level walk (EPTP page-walk length 3): 48-bit GPA, 1 GiB leaves.
#[derive(Debug, Clone, Copy)]
pub struct Ept4;

/// EPT with a 5-level walk (EPTP page-walk length 4): 57-bit GPA, 1 GiB leaves.
#[derive(Debug, Clone, Copy)]
pub struct Ept5;

impl NptFormat for Ept4 {
    type Entry = EptEntry;
    const NAME: &'static str = "EPT 4-level";
    const LEVELS: usize = 4;
    const GPA_BITS: u32 = 48;
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

impl NptFormat for Ept5 {
    type Entry = EptEntry;
    const NAME: &'static str = "EPT 5-level";
    const LEVELS: usize = 5;
    const GPA_BITS: u32 = 57;
    const MAX_LEAF: PageSize = PageSize::Size1G;
}

/// Bits 51:12 of an entry or of the EPTP: a 4 KiB-aligned physical address
/// (SDM Vol. 3C, 29.3.2, Tables 29-1 to 29-6, "N-1:12 Physical address";
/// bits 51:N are reserved and N is at most 52).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Low bits of an address inside a 2 MiB page: reserved (bits 20:12) in a
/// 2 MiB leaf (Table 29-4, "Format of an EPT Page-Directory Entry (PDE) that
/// Maps a 2-MByte Page").
const OFFSET_2M: u64 = (1 << 21) - 1;

/// `paddr` restricted to the address field `mask`.
#[inline]
fn addr_field(paddr: usize, mask: u64) -> u64 {
    paddr as u64 & mask
}

/// An EPT memory type: the encoding of bits 5:3 of an EPT leaf and of bits
/// 2:0 of the EPTP (SDM Vol. 3C, 29.3.7 "EPT and Memory Typing"; the values
/// are those of the x86 memory types, Vol. 3A, 13.3 "Methods of Caching
/// Available", Table 13-2). Values 2, 3 and 7 are reserved: a leaf holding
/// one causes an EPT misconfiguration (29.3.3.1).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EptMemoryType {
    /// `0`, UC: strong uncacheable.
    Uncacheable = 0,
    /// `1`, WC: write combining.
    WriteCombining = 1,
    /// `4`, WT: write-through.
    WriteThrough = 4,
    /// `5`, WP: write-protected.
    WriteProtected = 5,
    /// `6`, WB: write-back.
    WriteBack = 6,
}

impl EptMemoryType {
    /// The type encoded by `value`, or `None` for a reserved encoding
    /// (2, 3, 7) or a value wider than 3 bits.
    pub const fn from_bits(value: u64) -> Option<Self> {
        match value {
            0 => Some(Self::Uncacheable),
            1 => Some(Self::WriteCombining),
            4 => Some(Self::WriteThrough),
            5 => Some(Self::WriteProtected),
            6 => Some(Self::WriteBack),
            _ => None,
        }
    }

    /// The 3-bit encoding.
    pub const fn bits(self) -> u64 {
        self as u64
    }

    /// The EPT type that gives `memory_type`: x86 has an exact match for
    /// every type; [`MemoryType::Device`] and [`MemoryType::Uncached`] both
    /// become UC, which is uncached, unspeculated and strongly ordered.
    pub const fn from_memory_type(memory_type: MemoryType) -> Self {
        match memory_type {
            MemoryType::WriteBack => Self::WriteBack,
            MemoryType::Uncached | MemoryType::Device => Self::Uncacheable,
            MemoryType::WriteCombining => Self::WriteCombining,
            MemoryType::WriteThrough => Self::WriteThrough,
            MemoryType::WriteProtect => Self::WriteProtected,
        }
    }

    /// The generic type this EPT type gives. UC decodes as
    /// [`MemoryType::Device`]: UC is what both device and uncached memory
    /// are encoded as, and the stronger of the two is the safe reading.
    pub const fn to_memory_type(self) -> MemoryType {
        match self {
            Self::Uncacheable => MemoryType::Device,
            Self::WriteCombining => MemoryType::WriteCombining,
            Self::WriteThrough => MemoryType::WriteThrough,
            Self::WriteProtected => MemoryType::WriteProtect,
            Self::WriteBack => MemoryType::WriteBack,
        }
    }
}

impl From<MemoryType> for EptMemoryType {
    fn from(memory_type: MemoryType) -> Self {
        Self::from_memory_type(memory_type)
    }
}

impl From<EptMemoryType> for MemoryType {
    fn from(memory_type: EptMemoryType) -> Self {
        memory_type.to_memory_type()
    }
}

impl EptEntry {
    /// Bit 0, "Read access": reads allowed from the region or page (SDM
    /// Vol. 3C, 29.3.2, Tables 29-1 to 29-6).
    pub const READ: u64 = 1 << 0;
    /// Bit 1, "Write access": writes allowed (Tables 29-1 to 29-6). Write
    /// without read is an EPT misconfiguration (29.3.3.1).
    pub const WRITE: u64 = 1 << 1;
    /// Bit 2, "Execute access": instruction fetches allowed; with the
    /// "mode-based execute control for EPT" VM-execution control it allows
    /// supervisor-mode fetches only (Tables 29-1 to 29-6). Execute without
    /// read needs the execute-only capability of IA32_VMX_EPT_VPID_CAP
    /// (29.3.3.1, Appendix A.10).
    pub const EXECUTE: u64 = 1 << 2;
    /// Bits 5:3, "EPT memory type" of a leaf (Tables 29-2, 29-4, 29-6;
    /// 29.3.7 "EPT and Memory Typing"). Reserved (0) in table entries.
    pub const MEMORY_TYPE: Range<usize> = 3..6;
    /// Bit 6, "Ignore PAT memory type" of a leaf (Tables 29-2, 29-4, 29-6;
    /// 29.3.7). Reserved (0) in table entries.
    pub const IGNORE_PAT: u64 = 1 << 6;
    /// Bit 7 of a PDPTE or PDE: "Must be 1" for an entry that maps a 1 GiB or
    /// 2 MiB page, 0 for one that references a table (Tables 29-2 to 29-5).
    /// Ignored in a PTE. Reserved in a PML4E/PML5E.
    pub const LARGE_PAGE: u64 = 1 << 7;
    /// Bit 8, "Accessed" (every level; set by the processor only when the
    /// EPTP enables accessed and dirty flags; 29.3.5 "Accessed and Dirty
    /// Flags for EPT").
    pub const ACCESSED: u64 = 1 << 8;
    /// Bit 9, "Dirty" (leaves only; set by the processor only when the EPTP
    /// enables accessed and dirty flags; 29.3.5).
    pub const DIRTY: u64 = 1 << 9;
    /// Bit 10, "Execute access for user-mode linear addresses": with the
    /// "mode-based execute control for EPT" VM-execution control, bit 2
    /// controls supervisor-mode and this bit user-mode fetches (every level,
    /// Tables 29-1 to 29-6). Ignored without that control.
    pub const USER_EXECUTE: u64 = 1 << 10;
    /// Bit 63, "Suppress #VE" of a leaf: with the "EPT-violation #VE"
    /// VM-execution control, an EPT violation on this page causes a VM exit
    /// instead of a virtualization exception (Tables 29-2, 29-4, 29-6;
    /// Vol. 3C, "Virtualization Exceptions"). Ignored in table entries.
    pub const SUPPRESS_VE: u64 = 1 << 63;
    /// Bits 51:12, the physical address of the next table or the frame
    /// (Tables 29-1 to 29-6).
    pub const ADDR_MASK: u64 = ADDR_MASK;

    /// The access-right bits 2:0.
    const RWX: u64 = Self::READ | Self::WRITE | Self::EXECUTE;
    /// Every bit [`GenericPTE::set_flags`] derives from flags; the rest are
    /// kept.
    const FLAG_BITS: u64 = Self::RWX | (0b111 << 3) | Self::IGNORE_PAT | Self::LARGE_PAGE;

    /// The access-right bits 2:0 for the generic flags, never a
    /// misconfiguration (29.3.3.1): `WRITE` sets read too, and `EXECUTE`
    /// without `READ` sets read too unless `execute_only` (the processor
    /// supports execute-only translations). No rights give 0 (not present).
    #[inline]
    fn rights(flags: MappingFlags, execute_only: bool) -> u64 {
        let mut bits = 0;
        if flags.contains(MappingFlags::READ) {
            bits |= Self::READ;
        }
        if flags.contains(MappingFlags::WRITE) {
            bits |= Self::READ | Self::WRITE;
        }
        if flags.contains(MappingFlags::EXECUTE) {
            bits |= Self::EXECUTE;
            if !execute_only {
                bits |= Self::READ;
            }
        }
        bits
    }

    /// The bits [`GenericPTE::set_flags`] controls for a leaf with these
    /// rights (bits 2:0), memory type and PAT policy: access rights, memory
    /// type, ignore PAT, and the large-page bit when `is_huge`.
    #[inline]
    fn leaf_bits(rights: u64, memory_type: EptMemoryType, pat: PatPolicy, is_huge: bool) -> u64 {
        let mut bits = rights;
        if matches!(pat, PatPolicy::IgnoreGuestPat) {
            bits |= Self::IGNORE_PAT;
        }
        bits.set_bits(Self::MEMORY_TYPE, memory_type.bits());
        if is_huge {
            bits |= Self::LARGE_PAGE;
        }
        bits
    }

    /// A leaf mapping `hpa` with `flags` access rights and an explicit
    /// memory type, with the encoding for `size` (a PTE for 4 KiB, a
    /// PDPTE/PDE with bit 7 set for 1 GiB/2 MiB).
    ///
    /// Checks [`EptCaps::NONE`]'s [`EptCaps::check_flags`] (some access, no
    /// write without read, no execute-only: each a misconfiguration, the
    /// last on processors without the capability, 29.3.3.1) and
    /// [`check_leaf_address`]. The leaf gets [`EptEntry::IGNORE_PAT`], so
    /// `memory_type` is the type the guest gets, whatever its own PAT says.
    /// `USER`, `DEVICE` and `UNCACHED` in `flags` are ignored: `memory_type`
    /// decides the cacheability. [`EptEntry::new_leaf_with`] takes the other
    /// choices.
    ///
    /// `size` picks the encoding only; whether a level may hold such a leaf
    /// is [`NptFormat::level_of`]'s business (EPT has no 512 GiB leaves).
    pub fn new_leaf(
        hpa: HostPhysAddr,
        flags: MappingFlags,
        size: PageSize,
        memory_type: MemoryType,
    ) -> Result<Self, EntryError> {
        Self::new_leaf_with(hpa, flags, size, memory_type, EptLeafOptions::new())
    }

    /// [`EptEntry::new_leaf`] with per-leaf options: execute-only when
    /// `options` states the processor supports it, the guest-PAT policy
    /// (bit 6), user-mode execute (bit 10) and suppress #VE (bit 63).
    ///
    /// Checks `options.caps()`'s [`EptCaps::check_flags`] and
    /// [`check_leaf_address`]. The rights are exactly `READ`/`WRITE`/
    /// `EXECUTE` of `flags` (nothing to promote once checked).
    pub fn new_leaf_with(
        hpa: HostPhysAddr,
        flags: MappingFlags,
        size: PageSize,
        memory_type: MemoryType,
        options: EptLeafOptions,
    ) -> Result<Self, EntryError> {
        options.caps.check_flags(flags)?;
        check_leaf_address(hpa, size, Self::PA_BITS)?;
        let rights = Self::rights(flags, options.caps.execute_only);
        let mut bits = addr_field(hpa.as_usize(), ADDR_MASK)
            | Self::leaf_bits(rights, memory_type.into(), options.pat, size.is_huge());
        if options.user_execute {
            bits |= Self::USER_EXECUTE;
        }
        if options.suppress_ve {
            bits |= Self::SUPPRESS_VE;
        }
        Ok(Self(bits))
    }

    /// The raw memory-type field, or `None` for a reserved encoding.
    pub fn ept_memory_type(&self) -> Option<EptMemoryType> {
        EptMemoryType::from_bits(self.0.get_bits(Self::MEMORY_TYPE))
    }

    /// Whether the leaf ignores the guest PAT ([`EptEntry::IGNORE_PAT`]).
    pub const fn ignores_pat(&self) -> bool {
        self.0 & Self::IGNORE_PAT != 0
    }

    /// The guest-PAT policy bit 6 encodes.
    pub const fn pat_policy(&self) -> PatPolicy {
        if self.ignores_pat() {
            PatPolicy::IgnoreGuestPat
        } else {
            PatPolicy::CombineWithGuestPat
        }
    }

    /// Sets bit 6 for `pat` (leaves only: bit 6 is reserved in table
    /// entries). [`GenericPTE::set_flags`] and
    /// [`NestedEntry::with_flags_of`] rebuild the memory type and set bit 6
    /// again, as `new_page` does.
    pub fn set_pat_policy(&mut self, pat: PatPolicy) {
        self.0.set_bit(6, matches!(pat, PatPolicy::IgnoreGuestPat));
    }

    /// Whether user-mode fetches are allowed under mode-based execute
    /// control ([`EptEntry::USER_EXECUTE`]).
    pub const fn user_execute(&self) -> bool {
        self.0 & Self::USER_EXECUTE != 0
    }

    /// Sets or clears [`EptEntry::USER_EXECUTE`]. Only meaningful with the
    /// "mode-based execute control for EPT" VM-execution control, and then
    /// needed on every entry of the walk (rights are ANDed down the walk;
    /// [`GenericPTE::new_table`] sets it in table entries). Under that
    /// control an entry with bit 10 set is present even with bits 2:0
    /// clear, and bit 10 with bit 0 clear needs execute-only support
    /// (29.3.3.1), so set it on leaves that allow reads, or on execute-only
    /// leaves built with [`EptCaps::execute_only`]. Kept by
    /// [`GenericPTE::set_flags`].
    pub fn set_user_execute(&mut self, allow: bool) {
        self.0.set_bit(10, allow);
    }

    /// Whether EPT violations on this leaf are kept from becoming #VE
    /// ([`EptEntry::SUPPRESS_VE`]).
    pub const fn suppress_ve(&self) -> bool {
        self.0 & Self::SUPPRESS_VE != 0
    }

    /// Sets or clears [`EptEntry::SUPPRESS_VE`]. [`GenericPTE::new_page`]
    /// leaves it clear; [`GenericPTE::set_flags`] keeps it. Only meaningful
    /// with the "EPT-violation #VE" VM-execution control.
    pub fn set_suppress_ve(&mut self, suppress: bool) {
        self.0.set_bit(63, suppress);
    }
}

impl fmt::Debug for EptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EptEntry")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("paddr", &format_args!("{:#x}", self.0 & ADDR_MASK))
            .field("rwx", &format_args!("{:03b}", self.0 & Self::RWX))
            .field("memory_type", &self.ept_memory_type())
            .field("ignore_pat", &self.ignores_pat())
            .field("large", &self.is_huge())
            .field("user_execute", &self.user_execute())
            .field("suppress_ve", &self.suppress_ve())
            .finish()
    }
}

impl GenericPTE for EptEntry {
    /// A leaf: rights from `READ`/`WRITE`/`EXECUTE`, memory type
    /// [`MemoryType::from_flags`] (WB for RAM, UC for `DEVICE` or
    /// `UNCACHED`), [`EptEntry::IGNORE_PAT`] set, and [`EptEntry::LARGE_PAGE`]
    /// when `is_huge`.
    ///
    /// Cannot fail, and never builds a misconfiguration (29.3.3.1): `WRITE`
    /// without `READ` gives read+write, `EXECUTE` without `READ` gives
    /// read+execute (execute-only needs a capability nothing has stated; see
    /// [`EptEntry::new_leaf_with`]), and no rights give a not-present entry
    /// (bits 2:0 clear). `paddr` is masked to bits 51:12, and to bits 51:21
    /// when `is_huge` (a 1 GiB leaf also needs bits 29:21 clear, which only
    /// [`EptEntry::new_leaf`] / [`NestedEntry::try_new_leaf`] check).
    #[inline]
    fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
        let mask = if is_huge {
            ADDR_MASK & !OFFSET_2M
        } else {
            ADDR_MASK
        };
        let memory_type = EptMemoryType::from_memory_type(MemoryType::from_flags(flags));
        let rights = Self::rights(flags, false);
        let attrs = Self::leaf_bits(rights, memory_type, PatPolicy::IgnoreGuestPat, is_huge);
        Self(addr_field(paddr.as_usize(), mask) | attrs)
    }

    /// A pointer to the next table at `paddr` (masked to bits 51:12) with
    /// read, write, execute and user-mode execute (bit 10) all set: rights
    /// are ANDed along the walk, so the leaf alone decides, with or without
    /// mode-based execute control (bit 10 is ignored without it; Table 29-1
    /// and the other table-entry formats of 29.3.2). Memory type,
    /// ignore-PAT and bit 7 stay 0 (reserved in table entries).
    fn new_table(paddr: PhysAddr) -> Self {
        Self(addr_field(paddr.as_usize(), ADDR_MASK) | Self::RWX | Self::USER_EXECUTE)
    }

    /// Bits 51:12. For leaves built here that is the frame address; a foreign
    /// huge leaf with reserved low bits set reports them too.
    fn paddr(&self) -> PhysAddr {
        PhysAddr::from_usize((self.0 & ADDR_MASK) as usize)
    }

    /// `READ`/`WRITE`/`EXECUTE` from bits 2:0 and the memory-type flags of
    /// [`NestedEntry::memory_type`]. Meaningful on leaves: the reserved
    /// memory-type field of a table entry reads as UC, so a table entry
    /// reports `DEVICE` as well. Bit 10 (user execute) is not reported.
    fn flags(&self) -> MappingFlags {
        let mut flags = self.memory_type().to_flags();
        if self.0 & Self::READ != 0 {
            flags |= MappingFlags::READ;
        }
        if self.0 & Self::WRITE != 0 {
            flags |= MappingFlags::WRITE;
        }
        if self.0 & Self::EXECUTE != 0 {
            flags |= MappingFlags::EXECUTE;
        }
        flags
    }

    /// Replaces bits 51:12 with `paddr` (masked); every other bit is kept.
    fn set_paddr(&mut self, paddr: PhysAddr) {
        self.0 = (self.0 & !ADDR_MASK) | addr_field(paddr.as_usize(), ADDR_MASK);
    }

    /// Rewrites the bits [`GenericPTE::new_page`] derives from `flags`
    /// (rights, promoted as `new_page` does; memory type; ignore PAT set;
    /// large page) and keeps the address, accessed/dirty, user execute and
    /// suppress #VE. For leaves only: on a table entry it would set reserved
    /// bits.
    fn set_flags(&mut self, flags: MappingFlags, is_huge: bool) {
        let memory_type = EptMemoryType::from_memory_type(MemoryType::from_flags(flags));
        let rights = Self::rights(flags, false);
        let attrs = Self::leaf_bits(rights, memory_type, PatPolicy::IgnoreGuestPat, is_huge);
        self.0 = (self.0 & !Self::FLAG_BITS) | attrs;
    }

    fn bits(self) -> usize {
        self.0 as usize
    }

    fn is_unused(&self) -> bool {
        self.0 == 0
    }

    /// Any of bits 2:0 set (SDM 29.3.2: an entry with bits 2:0 all 0 is "not
    /// present"). Under mode-based execute control the processor also counts
    /// an entry with only bit 10 set as present; this crate never builds one
    /// and, not knowing the VM-execution controls, reports it as not present.
    fn is_present(&self) -> bool {
        self.0 & Self::RWX != 0
    }

    /// Bit 7. Meaningful in a PDPTE or PDE only; ignored by the processor in
    /// a PTE, where [`GenericPTE::new_page`] leaves it clear.
    fn is_huge(&self) -> bool {
        self.0 & Self::LARGE_PAGE != 0
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

impl NestedEntry for EptEntry {
    /// Present (bits 2:0 not all zero) with bit 7 clear: a PML4E, PDPTE or
    /// PDE that references the next table (SDM Vol. 3C, 29.3.2 "EPT
    /// Translation Mechanism", the PML4E/PDPTE/PDE formats). One mask and one unsigned compare: the masked value
    /// minus one is below `RWX` exactly when it is 1 to 7.
    #[inline]
    fn is_table(&self) -> bool {
        (self.0 & (Self::RWX | Self::LARGE_PAGE)).wrapping_sub(1) < Self::RWX
    }

    /// The processor sets bits 8 and 9 only when bit 6 of the EPTP enables
    /// accessed and dirty flags ([`Eptp::new`] `ad_enable`; 29.3.5) and the
    /// processor supports it (IA32_VMX_EPT_VPID_CAP bit 21).
    const HAS_ACCESSED_DIRTY: bool = true;
    const PA_BITS: u32 = 52;
    const FLAG_MASK: u64 = Self::FLAG_BITS;

    fn from_raw(bits: u64) -> Self {
        Self(bits)
    }

    fn raw(&self) -> u64 {
        self.0
    }

    /// [`EptCaps::NONE`]'s [`EptCaps::check_flags`]: no access and write
    /// without read give [`EntryError::BadFlags`], execute-only
    /// [`EntryError::ExecuteOnly`] (use [`EptEntry::new_leaf_with`] with
    /// [`EptCaps::execute_only`] for execute-only leaves).
    fn check_leaf_flags(flags: MappingFlags) -> Result<(), EntryError> {
        EptCaps::NONE.check_flags(flags)
    }

    /// Sets or clears bit 7 and keeps every other bit: rights, memory type,
    /// ignore PAT, accessed/dirty, user execute and suppress #VE mean the
    /// same in a PTE and in a 2 MiB/1 GiB leaf. Becoming huge clears address
    /// bits 20:12 (reserved in a large leaf), so pass the first small leaf of
    /// an aligned run when collapsing.
    fn with_huge(self, huge: bool) -> Self {
        if huge {
            Self((self.0 & !(OFFSET_2M & ADDR_MASK)) | Self::LARGE_PAGE)
        } else {
            Self(self.0 & !Self::LARGE_PAGE)
        }
    }

    /// Clears bit 1 (write access) and keeps every other bit. A leaf whose
    /// only right was write (a misconfiguration) becomes not present.
    fn write_protected(self, _huge: bool) -> Self {
        Self(self.0 & !Self::WRITE)
    }

    /// The type of bits 5:3 as [`EptMemoryType::to_memory_type`] reads it
    /// (UC as [`MemoryType::Device`]). The reserved encodings 2, 3 and 7 are
    /// reported as [`MemoryType::Device`], the strongest type. With
    /// [`EptEntry::IGNORE_PAT`] clear the guest PAT still combines with it
    /// (29.3.7); this reports the EPT half only.
    fn memory_type(&self) -> MemoryType {
        match self.ept_memory_type() {
            Some(t) => t.to_memory_type(),
            None => MemoryType::Device,
        }
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

/// Why [`Eptp::new`] refused a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EptpError {
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
    /// The walk length is neither 4 nor 5 levels.
    BadLevels {
        /// The requested number of levels.
        levels: usize,
    },
    /// The EPTP memory type is neither UC nor WB.
    UnsupportedMemoryType(EptMemoryType),
}

impl fmt::Display for EptpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned { root } => {
                write!(f, "EPT root table {root:#x} is not 4 KiB aligned")
            }
            Self::AddressTooWide { root } => {
                write!(
                    f,
                    "EPT root table {root:#x} exceeds the 52-bit physical address width"
                )
            }
            Self::BadLevels { levels } => {
                write!(f, "EPT walks have 4 or 5 levels, not {levels}")
            }
            Self::UnsupportedMemoryType(t) => {
                write!(f, "EPT paging-structure memory type {t:?} is not UC or WB")
            }
        }
    }
}

impl core::error::Error for EptpError {}

impl From<EptpError> for axerrno::AxErrorKind {
    fn from(_: EptpError) -> Self {
        axerrno::AxErrorKind::InvalidInput
    }
}

/// The extended-page-table pointer, the 64-bit VM-execution control field
/// that locates the EPT root (SDM Vol. 3C, 25.6.11 "Extended-Page-Table
/// Pointer (EPTP)", Table 25-9 "Format of Extended-Page-Table Pointer").
///
/// Bit 7 (supervisor shadow-stack enforcement) and bits 11:8 and 63:52
/// (reserved) are always 0.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Eptp(u64);

impl Eptp {
    /// Bits 2:0, "EPT paging-structure memory type": the type of the
    /// processor's accesses to the EPT tables, UC (0) or WB (6) (Table 25-9;
    /// support is reported by IA32_VMX_EPT_VPID_CAP bits 8 and 14).
    pub const MEMORY_TYPE: Range<usize> = 0..3;
    /// Bits 5:3, "EPT page-walk length minus 1": 3 for 4 levels, 4 for 5
    /// levels (Table 25-9).
    pub const WALK_LENGTH: Range<usize> = 3..6;
    /// Bit 6, "enable accessed and dirty flags for EPT" (Table 25-9; 29.3.5).
    pub const ENABLE_AD: u64 = 1 << 6;
    /// Bits 51:12, the physical address of the 4 KiB-aligned EPT PML4 or
    /// PML5 table (Table 25-9).
    pub const ADDR_MASK: u64 = ADDR_MASK;

    /// An EPTP for the root table at `root`, a walk of `levels` (4 or 5:
    /// `<Ept4 as NptFormat>::LEVELS` or `<Ept5 as NptFormat>::LEVELS`), the
    /// memory type of table accesses (UC or WB), and whether the processor
    /// sets accessed/dirty bits.
    pub fn new(
        root: HostPhysAddr,
        levels: usize,
        memory_type: EptMemoryType,
        ad_enable: bool,
    ) -> Result<Self, EptpError> {
        let raw_root = root.as_usize() as u64;
        if raw_root & !ADDR_MASK & 0xfff != 0 {
            return Err(EptpError::Misaligned { root });
        }
        if raw_root & !ADDR_MASK != 0 {
            return Err(EptpError::AddressTooWide { root });
        }
        if !matches!(levels, 4 | 5) {
            return Err(EptpError::BadLevels { levels });
        }
        if !matches!(
            memory_type,
            EptMemoryType::Uncacheable | EptMemoryType::WriteBack
        ) {
            return Err(EptpError::UnsupportedMemoryType(memory_type));
        }
        let mut bits = raw_root;
        bits.set_bits(Self::MEMORY_TYPE, memory_type.bits());
        bits.set_bits(Self::WALK_LENGTH, levels as u64 - 1);
        if ad_enable {
            bits |= Self::ENABLE_AD;
        }
        Ok(Self(bits))
    }

    /// The value to write to the EPTP field.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The root table address.
    pub fn root(self) -> HostPhysAddr {
        HostPhysAddr::from_usize((self.0 & ADDR_MASK) as usize)
    }

    /// The number of levels walked (the page-walk length field plus 1).
    pub fn levels(self) -> usize {
        self.0.get_bits(Self::WALK_LENGTH) as usize + 1
    }

    /// The memory type of table accesses.
    pub fn memory_type(self) -> EptMemoryType {
        // `new` stores UC or WB only.
        EptMemoryType::from_bits(self.0.get_bits(Self::MEMORY_TYPE))
            .unwrap_or(EptMemoryType::Uncacheable)
    }

    /// Whether accessed and dirty flags are enabled.
    pub const fn ad_enabled(self) -> bool {
        self.0 & Self::ENABLE_AD != 0
    }
}

impl fmt::Debug for Eptp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eptp")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("root", &format_args!("{:#x}", self.0 & ADDR_MASK))
            .field("levels", &self.levels())
            .field("memory_type", &self.memory_type())
            .field("ad", &self.ad_enabled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;

    const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);
    const RWX: MappingFlags = RW.union(MappingFlags::EXECUTE);

    fn pa(a: usize) -> PhysAddr {
        PhysAddr::from_usize(a)
    }

    #[test]
    fn single_bits_match_the_tables() {
        assert_eq!(EptEntry::READ, 0x1);
        assert_eq!(EptEntry::WRITE, 0x2);
        assert_eq!(EptEntry::EXECUTE, 0x4);
        assert_eq!(EptEntry::IGNORE_PAT, 0x40);
        assert_eq!(EptEntry::LARGE_PAGE, 0x80);
        assert_eq!(EptEntry::ACCESSED, 0x100);
        assert_eq!(EptEntry::DIRTY, 0x200);
        assert_eq!(EptEntry::USER_EXECUTE, 0x400);
        assert_eq!(EptEntry::SUPPRESS_VE, 0x8000_0000_0000_0000);
        assert_eq!(EptEntry::ADDR_MASK, 0x000f_ffff_ffff_f000);
        assert_eq!(EptEntry::MEMORY_TYPE, 3..6);
    }

    #[test]
    fn memory_type_encodings() {
        let table = [
            (0, EptMemoryType::Uncacheable, MemoryType::Device),
            (1, EptMemoryType::WriteCombining, MemoryType::WriteCombining),
            (4, EptMemoryType::WriteThrough, MemoryType::WriteThrough),
            (5, EptMemoryType::WriteProtected, MemoryType::WriteProtect),
            (6, EptMemoryType::WriteBack, MemoryType::WriteBack),
        ];
        for (bits, ept, generic) in table {
            assert_eq!(EptMemoryType::from_bits(bits), Some(ept));
            assert_eq!(ept.bits(), bits);
            assert_eq!(ept.to_memory_type(), generic);
            let leaf = EptEntry::from_raw(0x1000 | EptEntry::READ | (bits << 3));
            assert_eq!(leaf.memory_type(), generic);
            assert_eq!(leaf.ept_memory_type(), Some(ept));
        }
        for reserved in [2, 3, 7, 8] {
            assert_eq!(EptMemoryType::from_bits(reserved), None);
        }
        let bad = EptEntry::from_raw(0x1000 | EptEntry::READ | (7 << 3));
        assert_eq!(bad.ept_memory_type(), None);
        assert_eq!(bad.memory_type(), MemoryType::Device);
        assert_eq!(
            EptMemoryType::from(MemoryType::Uncached),
            EptMemoryType::Uncacheable
        );
        assert_eq!(
            EptMemoryType::from(MemoryType::Device),
            EptMemoryType::Uncacheable
        );
    }

    #[test]
    fn worked_example_4k_leaf() {
        // RWX write-back 4 KiB page at 0x1234_5000:
        // rights 0x7 | WB (6 << 3 = 0x30) | ignore PAT 0x40.
        let e = EptEntry::new_page(pa(0x1234_5000), RWX, false);
        assert_eq!(e.raw(), 0x0000_0000_1234_5077);
        assert_eq!(e.paddr(), pa(0x1234_5000));
        assert_eq!(e.flags(), RWX);
        assert!(!e.is_huge());
        assert_eq!(e.kind(true), EntryKind::Leaf);
        assert!(e.ignores_pat());
        assert!(!e.suppress_ve());
    }

    #[test]
    fn worked_example_2m_leaf() {
        // RW write-back 2 MiB page at 0x4020_0000: 0x3 | 0x30 | 0x40 | large 0x80.
        let e = EptEntry::new_page(pa(0x4020_0000), RW, true);
        assert_eq!(e.raw(), 0x0000_0000_4020_00f3);
        assert_eq!(e.kind(false), EntryKind::Leaf);
        assert_eq!(e.flags(), RW);
        let typed = EptEntry::new_leaf(
            HostPhysAddr::from(0x4020_0000),
            RW,
            PageSize::Size2M,
            MemoryType::WriteBack,
        );
        assert_eq!(typed, Ok(e));
    }

    #[test]
    fn worked_example_1g_device_leaf() {
        // Read+execute UC 1 GiB page at 0x1_4000_0000: 0x5 | UC (0) | 0x40 | 0x80.
        let rx_dev = MappingFlags::READ | MappingFlags::EXECUTE | MappingFlags::DEVICE;
        let e = EptEntry::new_page(pa(0x1_4000_0000), rx_dev, true);
        assert_eq!(e.raw(), 0x0000_0001_4000_00c5);
        assert_eq!(e.memory_type(), MemoryType::Device);
        assert_eq!(e.flags(), rx_dev);
        // UNCACHED alone gives the same UC encoding.
        let uc = MappingFlags::READ | MappingFlags::EXECUTE | MappingFlags::UNCACHED;
        assert_eq!(EptEntry::new_page(pa(0x1_4000_0000), uc, true), e);
    }

    #[test]
    fn worked_example_table() {
        // R|W|X (0x7) | user-mode execute (bit 10, 0x400): rights are ANDed
        // down the walk, with or without mode-based execute control.
        let t = EptEntry::new_table(pa(0x8_0000_3000));
        assert_eq!(t.raw(), 0x0000_0008_0000_3407);
        assert!(t.user_execute());
        assert_eq!(t.kind(false), EntryKind::Table);
        assert!(t.is_present());
        assert!(!t.is_huge());
        assert_eq!(t.paddr(), pa(0x8_0000_3000));
        // Reserved bits 7:3 stay clear.
        assert_eq!(t.raw() & 0xf8, 0);
    }

    #[test]
    fn widest_address() {
        let e = EptEntry::new_page(pa(0x000f_ffff_ffff_f000), RW, false);
        assert_eq!(e.raw(), 0x000f_ffff_ffff_f073);
        // new_page masks what does not fit.
        let masked = EptEntry::new_page(pa(0x00f0_0000_0000_1234), RW, false);
        assert_eq!(masked.paddr(), pa(0x1000));
        let huge = EptEntry::new_page(pa(0x4030_1000), RW, true);
        assert_eq!(huge.paddr(), pa(0x4020_0000));
    }

    #[test]
    fn typed_constructor_checks() {
        let hpa = HostPhysAddr::from(0x20_1000);
        assert_eq!(
            EptEntry::new_leaf(hpa, RW, PageSize::Size2M, MemoryType::WriteBack),
            Err(EntryError::Misaligned {
                hpa,
                size: PageSize::Size2M
            })
        );
        let wide = HostPhysAddr::from(1 << 52);
        assert_eq!(
            EptEntry::new_leaf(wide, RW, PageSize::Size4K, MemoryType::WriteBack),
            Err(EntryError::AddressTooWide {
                hpa: wide,
                pa_bits: 52
            })
        );
        let hpa = HostPhysAddr::from(0x1000);
        for bad in [
            MappingFlags::empty(),
            MappingFlags::WRITE,
            MappingFlags::DEVICE,
        ] {
            assert_eq!(
                EptEntry::new_leaf(hpa, bad, PageSize::Size4K, MemoryType::WriteBack),
                Err(EntryError::BadFlags(bad))
            );
        }
        let wc = EptEntry::new_leaf(hpa, RW, PageSize::Size4K, MemoryType::WriteCombining);
        assert_eq!(wc.map(|e| e.raw()), Ok(0x104b));
        // Execute-only needs IA32_VMX_EPT_VPID_CAP bit 0, which nothing has
        // stated here (29.3.3.1, A.10).
        let x = MappingFlags::EXECUTE;
        assert_eq!(
            EptEntry::try_new_leaf(hpa, x, PageSize::Size4K),
            Err(EntryError::ExecuteOnly(x))
        );
        assert_eq!(
            EptEntry::new_leaf(hpa, x, PageSize::Size4K, MemoryType::WriteBack),
            Err(EntryError::ExecuteOnly(x))
        );
        assert_eq!(
            EptEntry::check_leaf_flags(x),
            Err(EntryError::ExecuteOnly(x))
        );
        // Write checks come first: W|X without R is BadFlags.
        let wx = MappingFlags::WRITE | x;
        assert_eq!(
            EptEntry::check_leaf_flags(wx),
            Err(EntryError::BadFlags(wx))
        );
        let msg = std::format!("{}", EntryError::ExecuteOnly(x));
        assert!(msg.contains("execute-only"), "{msg}");
    }

    /// SDM Vol. 3C, 29.3.3.1: bits 2:0 = 010b (write-only) and 110b
    /// (write/execute) are EPT misconfigurations on every processor.
    /// `new_page` promotes write to read+write: the result always has bit 0.
    #[test]
    fn new_page_never_builds_write_without_read() {
        let w = MappingFlags::WRITE;
        let x = MappingFlags::EXECUTE;
        // W -> R|W: 0x3 | WB 0x30 | ignore PAT 0x40.
        let e = EptEntry::new_page(pa(0x7000), w, false);
        assert_eq!(e.raw(), 0x7073);
        assert_eq!(e.flags(), RW);
        // W|X -> R|W|X: 0x7 | 0x30 | 0x40 | large 0x80.
        let e = EptEntry::new_page(pa(0x20_0000), w | x, true);
        assert_eq!(e.raw(), 0x20_00f7);
        assert_eq!(e.flags(), RWX);
        // set_flags follows the same rule.
        let mut e = EptEntry::new_page(pa(0x7000), MappingFlags::READ, false);
        e.set_flags(w | MappingFlags::DEVICE, false);
        assert_eq!(e.raw(), 0x7043);
        for rights in 0..8usize {
            let f = MappingFlags::from_bits_truncate(rights);
            for huge in [false, true] {
                let raw = EptEntry::new_page(pa(0x20_0000), f, huge).raw();
                assert!(raw & 0b111 == 0 || raw & 0b001 != 0, "{f:?} -> {raw:#x}");
            }
        }
    }

    /// 29.3.3.1 and Appendix A.10: bits 2:0 = 100b (execute-only) is a
    /// misconfiguration unless IA32_VMX_EPT_VPID_CAP bit 0 is set.
    /// `new_page` knows no capabilities and promotes to read+execute;
    /// `new_leaf_with` builds execute-only when the caller states it.
    #[test]
    fn execute_only_needs_the_capability() {
        let x = MappingFlags::EXECUTE;
        // X -> R|X: 0x5 | WB 0x30 | ignore PAT 0x40.
        let promoted = EptEntry::new_page(pa(0x9000), x, false);
        assert_eq!(promoted.raw(), 0x9075);
        assert_eq!(promoted.flags(), MappingFlags::READ | x);
        let hpa = HostPhysAddr::from(0x9000);
        let caps = EptCaps::from_ept_vpid_cap(EptCaps::VPID_CAP_EXECUTE_ONLY);
        assert!(caps.execute_only());
        assert_eq!(caps, EptCaps::NONE.with_execute_only(true));
        assert!(!EptCaps::from_ept_vpid_cap(!1).execute_only());
        assert_eq!(EptCaps::default(), EptCaps::NONE);
        let opts = EptLeafOptions::new().with_caps(caps);
        let e = EptEntry::new_leaf_with(hpa, x, PageSize::Size4K, MemoryType::WriteBack, opts);
        // 0x4 | 0x30 | 0x40: bit 0 clear.
        assert_eq!(e.map(|e| e.raw()), Ok(0x9074));
        // A 2 MiB execute-only UC leaf: 0x4 | UC 0 | 0x40 | large 0x80.
        let big = HostPhysAddr::from(0x4020_0000);
        let e = EptEntry::new_leaf_with(big, x, PageSize::Size2M, MemoryType::Device, opts);
        assert_eq!(e.map(|e| e.raw()), Ok(0x4020_00c4));
        // Stating the capability does not allow write without read.
        let wx = MappingFlags::WRITE | x;
        assert_eq!(
            EptEntry::new_leaf_with(hpa, wx, PageSize::Size4K, MemoryType::WriteBack, opts),
            Err(EntryError::BadFlags(wx))
        );
        assert_eq!(caps.check_flags(x), Ok(()));
        assert_eq!(
            EptCaps::NONE.check_flags(x),
            Err(EntryError::ExecuteOnly(x))
        );
        assert_eq!(EptCaps::NONE.check_flags(MappingFlags::READ | x), Ok(()));
    }

    /// SDM 29.3.2: bits 2:0 = 000b is "not present"; no access builds one.
    #[test]
    fn no_access_is_not_present() {
        for extra in [
            MappingFlags::empty(),
            MappingFlags::USER,
            MappingFlags::DEVICE,
            MappingFlags::UNCACHED | MappingFlags::USER,
        ] {
            for huge in [false, true] {
                let e = EptEntry::new_page(pa(0x20_0000), extra, huge);
                assert_eq!(e.raw() & 0b111, 0);
                assert!(!e.is_present());
                assert_eq!(e.kind(true), EntryKind::Empty);
                assert_eq!(e.kind(false), EntryKind::Empty);
            }
        }
    }

    /// 29.3.7.2: with bit 6 (ignore PAT) clear the EPT type combines with
    /// the guest PAT type (Vol. 3A, Table 13-7: UC with PAT WC gives WC).
    #[test]
    fn pat_policy_per_leaf() {
        let hpa = HostPhysAddr::from(0xfd00_0000);
        let combine = EptLeafOptions::new().with_pat(PatPolicy::CombineWithGuestPat);
        // MMIO for the guest to make WC: R|W (0x3), UC (0), bit 6 clear.
        let mmio = EptEntry::new_leaf_with(hpa, RW, PageSize::Size4K, MemoryType::Device, combine);
        let mmio = mmio.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mmio.raw(), 0xfd00_0003);
        assert!(!mmio.ignores_pat());
        assert_eq!(mmio.pat_policy(), PatPolicy::CombineWithGuestPat);
        assert_eq!(mmio.memory_type(), MemoryType::Device);
        // The default is unchanged: RAM WB with ignore PAT (0x73).
        let ram = EptEntry::new_leaf(hpa, RW, PageSize::Size4K, MemoryType::WriteBack);
        assert_eq!(ram.map(|e| e.raw()), Ok(0xfd00_0073));
        assert_eq!(EptLeafOptions::default(), EptLeafOptions::new());
        assert_eq!(PatPolicy::default(), PatPolicy::IgnoreGuestPat);
        // The setter flips bit 6 only; set_flags sets it again.
        let mut e = EptEntry::new_page(pa(0x1000), RW, false);
        e.set_pat_policy(PatPolicy::CombineWithGuestPat);
        assert_eq!(e.raw(), 0x1033);
        e.set_pat_policy(PatPolicy::IgnoreGuestPat);
        assert_eq!(e.raw(), 0x1073);
        e.set_pat_policy(PatPolicy::CombineWithGuestPat);
        e.set_flags(RW, false);
        assert_eq!(e.pat_policy(), PatPolicy::IgnoreGuestPat);
    }

    /// Bits 10 (user-mode execute, mode-based execute control) and 63
    /// (suppress #VE) are opt-in per leaf (29.3.2, Tables 29-2, 29-4, 29-6).
    #[test]
    fn user_execute_and_suppress_ve_options() {
        let hpa = HostPhysAddr::from(0x3000);
        let rx = MappingFlags::READ | MappingFlags::EXECUTE;
        let opts = EptLeafOptions::new()
            .with_user_execute(true)
            .with_suppress_ve(true);
        assert!(opts.user_execute() && opts.suppress_ve());
        assert_eq!(opts.pat(), PatPolicy::IgnoreGuestPat);
        assert_eq!(opts.caps(), EptCaps::NONE);
        // R|X 0x5 | WB 0x30 | 0x40 | bit 10 0x400 | bit 63.
        let e = EptEntry::new_leaf_with(hpa, rx, PageSize::Size4K, MemoryType::WriteBack, opts);
        assert_eq!(e.map(|e| e.raw()), Ok(0x8000_0000_0000_3475));
        // User-mode fetches only (supervisor execute clear): R | bit 10.
        let user_only = EptLeafOptions::new().with_user_execute(true);
        let e = EptEntry::new_leaf_with(
            hpa,
            MappingFlags::READ,
            PageSize::Size4K,
            MemoryType::WriteBack,
            user_only,
        );
        assert_eq!(e.map(|e| e.raw()), Ok(0x3471));
        // new_page sets neither.
        let plain = EptEntry::new_page(pa(0x3000), rx, false);
        assert!(!plain.user_execute() && !plain.suppress_ve());
    }

    #[test]
    fn accessed_dirty_and_extras() {
        let mut e = EptEntry::from_raw(0x1000 | 0x373);
        assert!(e.is_accessed() && e.is_dirty());
        e.clear_accessed();
        assert!(!e.is_accessed() && e.is_dirty());
        e.clear_dirty();
        assert_eq!(e.raw(), 0x1073);
        e.set_user_execute(true);
        assert!(e.user_execute());
        assert_eq!(e.raw(), 0x1473);
        e.set_suppress_ve(true);
        assert!(e.suppress_ve());
        assert_eq!(e.raw(), 0x8000_0000_0000_1473);
        // set_flags keeps the address, A/D, user execute and suppress #VE.
        let mut f = EptEntry::from_raw(e.raw() | EptEntry::DIRTY);
        f.set_flags(MappingFlags::READ | MappingFlags::DEVICE, false);
        assert_eq!(f.raw(), 0x8000_0000_0000_1641);
        f.set_paddr(pa(0x5000));
        assert_eq!(f.raw(), 0x8000_0000_0000_5641);
        f.clear();
        assert!(f.is_unused() && !f.is_present());
        assert_eq!(f.kind(true), EntryKind::Empty);
    }

    #[test]
    fn huge_conversion_and_write_protect_keep_bits() {
        // WT leaf with A/D, user execute and suppress #VE.
        let small = EptEntry::from_raw(0x8000_0000_4020_0767);
        let huge = small.with_huge(true);
        assert_eq!(huge.raw(), 0x8000_0000_4020_07e7);
        assert_eq!(huge.with_huge(false), small);
        assert_eq!(huge.memory_type(), MemoryType::WriteThrough);
        // Address bits 20:12 are reserved in a large leaf.
        assert_eq!(
            EptEntry::from_raw(0x4020_1077).with_huge(true).raw(),
            0x4020_00f7
        );
        let ro = huge.write_protected(true);
        assert_eq!(ro.raw(), 0x8000_0000_4020_07e5);
        assert_eq!(ro.flags(), MappingFlags::READ | MappingFlags::EXECUTE);
    }

    #[test]
    fn presence_is_bits_2_0() {
        for rights in 1..8u64 {
            assert!(EptEntry::from_raw(rights).is_present());
        }
        assert!(!EptEntry::from_raw(0xffff_ffff_ffff_fff8).is_present());
        assert!(!EptEntry::from_raw(EptEntry::USER_EXECUTE).is_present());
        // No rights: new_page builds a non-present entry.
        assert!(!EptEntry::new_page(pa(0x1000), MappingFlags::empty(), false).is_present());
    }

    #[test]
    fn eptp_worked_examples() {
        // WB (6) | walk length 3 (0x18) | A/D (0x40), the usual 4-level value.
        let e = Eptp::new(
            HostPhysAddr::from(0x1234_5000),
            4,
            EptMemoryType::WriteBack,
            true,
        );
        let e = e.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(e.bits(), 0x0000_0000_1234_505e);
        assert_eq!(e.root(), HostPhysAddr::from(0x1234_5000));
        assert_eq!(e.levels(), 4);
        assert_eq!(e.memory_type(), EptMemoryType::WriteBack);
        assert!(e.ad_enabled());
        // UC (0) | walk length 4 (0x20), no A/D.
        let root = HostPhysAddr::from(0x000f_ffff_ffff_f000);
        let e = Eptp::new(root, 5, EptMemoryType::Uncacheable, false);
        let e = e.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(e.bits(), 0x000f_ffff_ffff_f020);
        assert_eq!(e.levels(), 5);
        assert_eq!(e.memory_type(), EptMemoryType::Uncacheable);
        assert!(!e.ad_enabled());
        assert_eq!(
            Eptp::new(
                HostPhysAddr::from(0x1000),
                Ept5::LEVELS,
                EptMemoryType::WriteBack,
                false
            )
            .map(Eptp::bits),
            Ok(0x1026)
        );
    }

    #[test]
    fn eptp_errors() {
        let wb = EptMemoryType::WriteBack;
        let root = HostPhysAddr::from(0x1234);
        assert_eq!(
            Eptp::new(root, 4, wb, false),
            Err(EptpError::Misaligned { root })
        );
        let root = HostPhysAddr::from(1 << 52);
        assert_eq!(
            Eptp::new(root, 4, wb, false),
            Err(EptpError::AddressTooWide { root })
        );
        let root = HostPhysAddr::from(0x1000);
        for levels in [0, 3, 6] {
            assert_eq!(
                Eptp::new(root, levels, wb, false),
                Err(EptpError::BadLevels { levels })
            );
        }
        for t in [
            EptMemoryType::WriteCombining,
            EptMemoryType::WriteThrough,
            EptMemoryType::WriteProtected,
        ] {
            assert_eq!(
                Eptp::new(root, 4, t, false),
                Err(EptpError::UnsupportedMemoryType(t))
            );
        }
        let msg = std::format!("{}", EptpError::BadLevels { levels: 3 });
        assert!(msg.contains("not 3"), "{msg}");
    }
}
