//! Why a guest-virtual address did not translate.

use core::fmt;

use gpa_types::{GuestPhysAddr, GuestVirtAddr};

/// Why a walk of the guest's own tables stopped without a translation.
///
/// `level` is always the architecture's own level number (see the table in
/// the [module docs](super)), so a fault can be compared with the manual and
/// turned into the exception the guest expects:
///
/// | variant | x86-64 | AArch64 | RISC-V |
/// |---|---|---|---|
/// | [`NonCanonical`](Self::NonCanonical) | #GP | translation fault, level 0 | page fault |
/// | [`NotPresent`](Self::NotPresent) | #PF, P = 0 | translation fault | page fault |
/// | [`Reserved`](Self::Reserved) | #PF, P = 1, RSVD = 1 | address size fault | page fault |
/// | [`Misaligned`](Self::Misaligned) | (reported as `Reserved`) | see [`Misaligned`](Self::Misaligned) | page fault |
/// | [`AccessFlag`](Self::AccessFlag) | (never) | access flag fault | page fault (Svade) |
/// | [`TableNotInRam`](Self::TableNotInRam) | (machine check) | synchronous external abort on walk | access fault |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GvaFault {
    /// The translation regime itself is invalid: a `TxSZ` outside 16..=39,
    /// an unknown `satp` mode, a `CR3` with bits above `MAXPHYADDR`, a
    /// `MAXPHYADDR` outside 32..=52.
    BadConfig {
        /// The register or field at fault, in the manual's words
        /// (`"T0SZ"`, `"satp.MODE"`, ...).
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The address is outside every range the regime translates: not
    /// canonical on x86-64, in neither the TTBR0 nor the TTBR1 range on
    /// AArch64, not sign-extended on RISC-V.
    NonCanonical {
        /// The address.
        gva: GuestVirtAddr,
    },
    /// An entry on the path is not valid (x86 P = 0, Arm descriptor bit 0 = 0
    /// or a block at a level that cannot hold one, RISC-V V = 0).
    NotPresent {
        /// The level of the invalid entry.
        level: usize,
        /// The address being translated.
        gva: GuestVirtAddr,
    },
    /// An entry sets a reserved bit or uses a reserved encoding (x86
    /// reserved bits, including a misaligned 2 MiB or 1 GiB frame; Arm
    /// output-address bits above 47; RISC-V reserved bits, W without R, a
    /// pointer at the last level).
    Reserved {
        /// The level of the entry.
        level: usize,
        /// The entry as read.
        entry: u64,
    },
    /// A block or superpage whose output address is not aligned to its size
    /// (Arm, RISC-V). The RISC-V walk raises a page fault here. Arm calls
    /// these bits RES0; this crate reports them rather than silently
    /// ignoring them, as a guest that sets them relies on unspecified
    /// behaviour.
    Misaligned {
        /// The level of the leaf.
        level: usize,
        /// The entry as read.
        entry: u64,
    },
    /// A leaf with its access flag clear (Arm AF = 0, RISC-V A = 0) where the
    /// hardware does not set it itself.
    AccessFlag {
        /// The level of the leaf.
        level: usize,
        /// The entry as read.
        entry: u64,
    },
    /// A table on the path is not guest RAM: [`GuestPhysRead::read_u64`]
    /// returned `None` for the entry's address.
    ///
    /// [`GuestPhysRead::read_u64`]: super::GuestPhysRead::read_u64
    TableNotInRam {
        /// The level of the entry that could not be read.
        level: usize,
        /// The guest-physical address of that entry.
        gpa: GuestPhysAddr,
    },
    /// A valid leaf this crate cannot describe: a RISC-V Sv57 level-4
    /// "petapage" (256 TiB), larger than any [`PageSize`].
    ///
    /// [`PageSize`]: gpa_types::PageSize
    Unsupported {
        /// The level of the leaf.
        level: usize,
        /// The entry as read.
        entry: u64,
    },
    /// An address read from the tables does not fit in a `usize` (only on
    /// hosts with a pointer width below 64 bits).
    AddressTooWide {
        /// The level of the entry that holds the address.
        level: usize,
        /// The address.
        addr: u64,
    },
}

impl GvaFault {
    /// The level the walk stopped at, for the faults that have one.
    pub const fn level(&self) -> Option<usize> {
        match *self {
            Self::BadConfig { .. } | Self::NonCanonical { .. } => None,
            Self::NotPresent { level, .. }
            | Self::Reserved { level, .. }
            | Self::Misaligned { level, .. }
            | Self::AccessFlag { level, .. }
            | Self::TableNotInRam { level, .. }
            | Self::Unsupported { level, .. }
            | Self::AddressTooWide { level, .. } => Some(level),
        }
    }
}

impl fmt::Display for GvaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadConfig { field, value } => {
                write!(
                    f,
                    "the guest's {field} = {value:#x} is not a valid translation setting"
                )
            }
            Self::NonCanonical { gva } => write!(
                f,
                "guest-virtual address {:#x} is outside the ranges the guest's tables translate",
                gva.as_usize()
            ),
            Self::NotPresent { level, gva } => write!(
                f,
                "guest-virtual address {:#x} is not mapped: invalid entry at level {level}",
                gva.as_usize()
            ),
            Self::Reserved { level, entry } => {
                write!(
                    f,
                    "guest entry {entry:#018x} at level {level} sets a reserved bit or encoding"
                )
            }
            Self::Misaligned { level, entry } => write!(
                f,
                "guest leaf {entry:#018x} at level {level} maps an address not aligned to its size"
            ),
            Self::AccessFlag { level, entry } => {
                write!(
                    f,
                    "guest leaf {entry:#018x} at level {level} has its access flag clear"
                )
            }
            Self::TableNotInRam { level, gpa } => write!(
                f,
                "the guest's level-{level} table entry at guest-physical {:#x} is not in guest RAM",
                gpa.as_usize()
            ),
            Self::Unsupported { level, entry } => write!(
                f,
                "guest leaf {entry:#018x} at level {level} maps a page size this crate cannot describe"
            ),
            Self::AddressTooWide { level, addr } => write!(
                f,
                "address {addr:#x} in the guest's level-{level} entry does not fit this host's usize"
            ),
        }
    }
}

impl core::error::Error for GvaFault {}

impl From<GvaFault> for axerrno::AxErrorKind {
    fn from(e: GvaFault) -> Self {
        use axerrno::AxErrorKind as K;
        match e {
            GvaFault::BadConfig { .. } => K::InvalidInput,
            GvaFault::NonCanonical { .. } | GvaFault::TableNotInRam { .. } => K::BadAddress,
            GvaFault::NotPresent { .. } => K::NotFound,
            GvaFault::Reserved { .. } | GvaFault::Misaligned { .. } => K::InvalidData,
            GvaFault::AccessFlag { .. } => K::BadState,
            GvaFault::Unsupported { .. } => K::Unsupported,
            GvaFault::AddressTooWide { .. } => K::OutOfRange,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn display_names_the_address_and_level() {
        let e = GvaFault::NotPresent {
            level: 2,
            gva: GuestVirtAddr::from(0x7fff_1000),
        };
        assert_eq!(
            e.to_string(),
            "guest-virtual address 0x7fff1000 is not mapped: invalid entry at level 2"
        );
        let e = GvaFault::Reserved {
            level: 4,
            entry: 0x80 | 1,
        };
        assert!(e.to_string().contains("0x0000000000000081"), "{e}");
        let e = GvaFault::BadConfig {
            field: "T0SZ",
            value: 12,
        };
        assert_eq!(
            e.to_string(),
            "the guest's T0SZ = 0xc is not a valid translation setting"
        );
    }

    #[test]
    fn level_and_error_kind() {
        let e = GvaFault::TableNotInRam {
            level: 1,
            gpa: GuestPhysAddr::from(0x1000),
        };
        assert_eq!(e.level(), Some(1));
        assert_eq!(
            axerrno::AxErrorKind::from(e),
            axerrno::AxErrorKind::BadAddress
        );
        let e = GvaFault::NonCanonical {
            gva: GuestVirtAddr::from(0),
        };
        assert_eq!(e.level(), None);
        let e = GvaFault::AccessFlag {
            level: 3,
            entry: 0x403,
        };
        assert_eq!(
            axerrno::AxErrorKind::from(e),
            axerrno::AxErrorKind::BadState
        );
    }
}
