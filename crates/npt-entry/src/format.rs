//! The format trait: what one walker needs to know about a table format.
//!
//! Every supported format uses a 4 KiB granule: a table is a 4 KiB frame of
//! 512 eight-byte entries, each level below the root translates 9 bits of
//! the GPA, and the last level translates bits 20:12. Formats differ only in
//! the number of levels, the size of the root (RISC-V x4 modes and Arm
//! concatenated tables widen it), which levels may hold leaves, and the
//! entry encoding. [`NptFormat`] states those numbers; [`NestedEntry`] the
//! encoding.

use core::fmt;

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, MemoryType, PageSize};
use page_table_entry::GenericPTE;

/// Bytes in one table frame.
pub const TABLE_BYTES: usize = 4096;
/// Entries in one table frame.
pub const ENTRIES_PER_TABLE: usize = 512;
/// GPA bits translated by each non-root level.
pub const BITS_PER_LEVEL: u32 = 9;
/// The most tables a root may span (Arm concatenates up to 16 at the start
/// level; RISC-V x4 roots are 4).
pub const MAX_ROOT_FRAMES: usize = 16;

/// What an entry means at the level it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Not valid: the hardware faults on it, it maps nothing.
    Empty,
    /// Points to the next-level table.
    Table,
    /// Maps a page or block of the level's size.
    Leaf,
}

/// Why the typed constructor refused a leaf.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EntryError {
    /// The host address is not aligned to the page size.
    Misaligned {
        /// The address.
        hpa: HostPhysAddr,
        /// The size it should be aligned to.
        size: PageSize,
    },
    /// The host address needs more bits than the entry's address field.
    AddressTooWide {
        /// The address.
        hpa: HostPhysAddr,
        /// How many physical-address bits the format holds.
        pa_bits: u32,
    },
    /// The flags give no access at all, or write without read (an EPT
    /// misconfiguration and a reserved RISC-V encoding; rejected everywhere
    /// so every format behaves alike).
    BadFlags(MappingFlags),
    /// Execute without read (and without write) in a format where the
    /// processor must support execute-only translations and the caller has
    /// not stated that it does: EPT without the execute-only capability of
    /// IA32_VMX_EPT_VPID_CAP bit 0 (Intel SDM Vol. 3C, 29.3.3.1, Appendix
    /// A.10; see [`crate::ept::EptCaps`]).
    ExecuteOnly(MappingFlags),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned { hpa, size } => {
                write!(
                    f,
                    "host address {hpa:#x} is not aligned to {:#x}",
                    size.bytes()
                )
            }
            Self::AddressTooWide { hpa, pa_bits } => {
                write!(
                    f,
                    "host address {hpa:#x} exceeds the {pa_bits}-bit physical address width"
                )
            }
            Self::BadFlags(flags) => {
                write!(f, "flags {flags:?} give no access or write without read")
            }
            Self::ExecuteOnly(flags) => {
                write!(
                    f,
                    "flags {flags:?} are execute-only, which the processor was not stated to support"
                )
            }
        }
    }
}

impl core::error::Error for EntryError {}

impl From<EntryError> for axerrno::AxErrorKind {
    fn from(_: EntryError) -> Self {
        axerrno::AxErrorKind::InvalidInput
    }
}

/// Checks the flag rules shared by every format: some access, and no write
/// without read.
///
/// A format may refuse more: [`NestedEntry::check_leaf_flags`] adds the
/// format's own rules (EPT refuses execute-only unless the caller states
/// the processor supports it). Prefer it where the entry type is known.
pub const fn check_flags(flags: MappingFlags) -> Result<(), EntryError> {
    let rwx = MappingFlags::READ
        .union(MappingFlags::WRITE)
        .union(MappingFlags::EXECUTE);
    if !flags.intersects(rwx)
        || (flags.contains(MappingFlags::WRITE) && !flags.contains(MappingFlags::READ))
    {
        return Err(EntryError::BadFlags(flags));
    }
    Ok(())
}

/// Checks that `hpa` is aligned to `size` and fits in `pa_bits` bits.
pub const fn check_leaf_address(
    hpa: HostPhysAddr,
    size: PageSize,
    pa_bits: u32,
) -> Result<(), EntryError> {
    if !size.is_aligned(hpa.as_usize()) {
        return Err(EntryError::Misaligned { hpa, size });
    }
    if pa_bits < usize::BITS && hpa.as_usize() >> pa_bits != 0 {
        return Err(EntryError::AddressTooWide { hpa, pa_bits });
    }
    Ok(())
}

/// A second-stage entry: the `GenericPTE` interface plus the typed API one
/// walker needs for every format.
///
/// `GenericPTE::new_page(paddr, flags, is_huge)` builds a leaf at the last
/// level when `is_huge` is false and a 2 MiB/1 GiB leaf above it when true.
/// It cannot report errors: it masks the address to the format's address
/// field. [`NestedEntry::try_new_leaf`] is the checked constructor.
///
/// `GenericPTE::flags` reports `READ`/`WRITE`/`EXECUTE` and the memory type
/// as [`MemoryType::to_flags`] of [`NestedEntry::memory_type`]; it never
/// reports `USER`, which has no meaning at the second stage.
///
/// # Rights every format encodes alike
///
/// `new_page` and `GenericPTE::set_flags` cannot fail, so they never build
/// an encoding the hardware rejects; the checked paths
/// ([`NestedEntry::try_new_leaf`], [`NestedEntry::check_leaf_flags`], the
/// formats' `new_leaf`) refuse what `new_page` would have to change:
///
/// | flags (of `READ`/`WRITE`/`EXECUTE`) | `new_page` / `set_flags` | checked paths |
/// |---|---|---|
/// | none | **not present** in every format: [`NestedEntry::kind`] is [`EntryKind::Empty`] at every level and `is_present()` is false (EPT bits 2:0 = 0, NPT P = 0, Arm descriptor bit 0 = 0, RISC-V V = 0) | [`EntryError::BadFlags`] |
/// | `WRITE` without `READ` | promoted to `READ \| WRITE` (write-only is an EPT misconfiguration and a reserved RISC-V encoding; Arm and AMD follow the same rule) | [`EntryError::BadFlags`] |
/// | `EXECUTE` alone | execute-only where the format can always express it (Arm stage 2 `S2AP = 00`, `XN = 00`; RISC-V `X` alone); read+execute on AMD NPT (a present entry is always readable) and on EPT (execute-only needs a CPU capability) | accepted, except EPT: [`EntryError::ExecuteOnly`]; execute-only EPT leaves come from [`crate::ept::EptEntry::new_leaf_with`] with [`crate::ept::EptCaps`] stating the CPU supports them |
pub trait NestedEntry: GenericPTE + PartialEq + Eq + 'static {
    /// Whether the hardware sets accessed/dirty bits in this format's leaves.
    const HAS_ACCESSED_DIRTY: bool;
    /// How many physical-address bits the address field can hold.
    const PA_BITS: u32;

    /// The bits [`GenericPTE::set_flags`] rewrites in a leaf: those that
    /// encode `MappingFlags` (rights, memory type) and the leaf encoding.
    /// Every other bit (the address, hardware-set accessed/dirty state,
    /// format-specific bits such as Arm's DBM) survives a change of flags.
    const FLAG_MASK: u64;

    /// An entry with exactly these raw bits.
    fn from_raw(bits: u64) -> Self;

    /// The raw bits.
    fn raw(&self) -> u64;

    /// What the entry means when read from a table at the last level
    /// (`last_level`, where only 4 KiB leaves live) or above it.
    ///
    /// The default uses `is_present`/`is_huge`; formats whose encodings
    /// depend on the level (Arm) override it.
    #[inline]
    fn kind(&self, last_level: bool) -> EntryKind {
        if !self.is_present() {
            EntryKind::Empty
        } else if last_level || self.is_huge() {
            EntryKind::Leaf
        } else {
            EntryKind::Table
        }
    }

    /// Whether the entry, read above the last level, points to a table:
    /// `kind(false) == EntryKind::Table`. A walk asks only this at every
    /// level it passes through; formats override it with one mask and one
    /// compare, so the hot loop of a translation takes one branch per level.
    ///
    /// Every format keeps a second rule with it: above the last level, an
    /// entry that is not a table is a leaf exactly when it is present
    /// (`is_present`), so a walk that stops early needs no other test.
    #[inline]
    fn is_table(&self) -> bool {
        self.kind(false) == EntryKind::Table
    }

    /// Checks `flags` for a leaf of this format: [`check_flags`] plus the
    /// format's own rules (see the table above). The default is
    /// [`check_flags`]; EPT also refuses execute-only
    /// ([`EntryError::ExecuteOnly`]), since nothing states the processor
    /// supports it.
    #[inline]
    fn check_leaf_flags(flags: MappingFlags) -> Result<(), EntryError> {
        check_flags(flags)
    }

    /// Checked leaf constructor: `hpa` must be aligned to `size` and fit the
    /// address field, `flags` must pass [`NestedEntry::check_leaf_flags`]. A
    /// 4 KiB leaf gets the last-level encoding, larger sizes the huge-leaf
    /// encoding.
    fn try_new_leaf(
        hpa: HostPhysAddr,
        flags: MappingFlags,
        size: PageSize,
    ) -> Result<Self, EntryError> {
        Self::check_leaf_flags(flags)?;
        check_leaf_address(hpa, size, Self::PA_BITS)?;
        Ok(Self::new_page(hpa.into(), flags, size.is_huge()))
    }

    /// The same leaf re-encoded as a huge (`true`) or last-level (`false`)
    /// leaf, keeping its address and every attribute the other encoding can
    /// hold (used when splitting and collapsing).
    ///
    /// The default rebuilds the entry from `paddr()` and `flags()`, which
    /// drops accessed/dirty state; formats override it to keep the bits.
    #[inline]
    fn with_huge(self, huge: bool) -> Self {
        Self::new_page(self.paddr(), self.flags(), huge)
    }

    /// The same leaf without write permission (for dirty logging), every
    /// other bit kept. `huge` says which leaf encoding it is in.
    ///
    /// The default rebuilds the entry from `paddr()` and `flags()`; formats
    /// override it to keep the remaining bits.
    #[inline]
    fn write_protected(self, huge: bool) -> Self {
        let flags = self.flags() - page_table_entry::MappingFlags::WRITE;
        Self::new_page(self.paddr(), flags, huge)
    }

    /// This leaf with the flags of `template` (a leaf of the same encoding
    /// from [`GenericPTE::new_page`]): `set_flags` without converting the
    /// flags again, for operations that give many leaves the same flags.
    #[inline]
    fn with_flags_of(self, template: Self) -> Self {
        Self::from_raw((self.raw() & !Self::FLAG_MASK) | (template.raw() & Self::FLAG_MASK))
    }

    /// The memory type a leaf gives the guest.
    fn memory_type(&self) -> MemoryType;

    /// Whether the accessed bit is set (always false where the format has
    /// none).
    fn is_accessed(&self) -> bool;
    /// Whether the dirty bit is set (always false where the format has none).
    fn is_dirty(&self) -> bool;
    /// Clears the accessed bit (no-op where the format has none).
    fn clear_accessed(&mut self);
    /// Clears the dirty bit (no-op where the format has none).
    fn clear_dirty(&mut self);
}

/// The walk geometry of one format, and its entry type.
///
/// Levels are numbered from the root: level 0 is the root table, level
/// `LEVELS - 1` holds 4 KiB leaves. A level's *height* is its distance from
/// the last level; a leaf at height `h` maps `PageSize::from_height(h)`.
pub trait NptFormat: Sized + Send + Sync + 'static {
    /// The entry encoding.
    type Entry: NestedEntry;

    /// A short human name, e.g. `"EPT 4-level"`.
    const NAME: &'static str;
    /// Number of levels walked (2 to 5).
    const LEVELS: usize;
    /// Width of the guest-physical address the table translates.
    const GPA_BITS: u32;
    /// The largest leaf the hardware accepts. The walker decodes leaves up to
    /// this size and creates them only when asked for explicitly.
    const MAX_LEAF: PageSize;

    /// Width of the host-physical address a leaf can hold.
    const PA_BITS: u32 = <Self::Entry as NestedEntry>::PA_BITS;
    /// Shift of the root level's index.
    const ROOT_SHIFT: u32 = 12 + BITS_PER_LEVEL * (Self::LEVELS as u32 - 1);
    /// Entries in the root (512 for a plain root, more when concatenated).
    const ROOT_ENTRIES: usize = 1 << (Self::GPA_BITS - Self::ROOT_SHIFT);
    /// 4 KiB frames in the root (1, or 2..=16 for a wide root).
    const ROOT_FRAMES: usize = Self::ROOT_ENTRIES.div_ceil(ENTRIES_PER_TABLE);
    /// Required alignment of the root in bytes (its own size).
    const ROOT_ALIGN: usize = Self::ROOT_FRAMES * TABLE_BYTES;
    /// One past the largest GPA.
    const GPA_LIMIT: u64 = 1 << Self::GPA_BITS;

    /// The shift of `level`'s index in a GPA.
    #[inline(always)]
    fn shift(level: usize) -> u32 {
        12 + BITS_PER_LEVEL * (Self::LEVELS - 1 - level) as u32
    }

    /// Entries in a table at `level`.
    #[inline(always)]
    fn entries(level: usize) -> usize {
        if level == 0 {
            Self::ROOT_ENTRIES
        } else {
            ENTRIES_PER_TABLE
        }
    }

    /// The index of `gpa` in the table at `level`.
    #[inline(always)]
    fn index(gpa: usize, level: usize) -> usize {
        (gpa >> Self::shift(level)) & (Self::entries(level) - 1)
    }

    /// The page size a leaf at `level` maps, if the hardware allows a leaf
    /// there.
    #[inline(always)]
    fn leaf_size(level: usize) -> Option<PageSize> {
        let size = PageSize::from_height(Self::LEVELS - 1 - level)?;
        if size <= Self::MAX_LEAF {
            Some(size)
        } else {
            None
        }
    }

    /// The level at which a leaf of `size` sits, if the format allows one.
    #[inline(always)]
    fn level_of(size: PageSize) -> Option<usize> {
        if size > Self::MAX_LEAF || size.height() >= Self::LEVELS {
            None
        } else {
            Some(Self::LEVELS - 1 - size.height())
        }
    }

    /// Whether `gpa` lies inside the format's guest-physical width.
    #[inline(always)]
    fn gpa_in_range(gpa: GuestPhysAddr) -> bool {
        (gpa.as_usize() as u64) < Self::GPA_LIMIT
    }
}
