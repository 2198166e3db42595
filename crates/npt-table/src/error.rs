//! What can go wrong, and in whose words.

use core::fmt;

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::EntryError;

/// Why a table operation was refused. When an operation returns an error the
/// table is exactly as it was before the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NptError {
    /// A length of zero.
    ZeroLength,
    /// A guest address or length not aligned to the page size it needs.
    GpaNotAligned {
        /// The address or length.
        value: usize,
        /// The alignment it needed.
        align: usize,
    },
    /// A host address not aligned to the page size it needs.
    HpaNotAligned {
        /// The address.
        hpa: HostPhysAddr,
        /// The alignment it needed.
        align: usize,
    },
    /// The range reaches past the format's guest-physical width (or wraps).
    GpaOutOfRange {
        /// The first address outside the width.
        gpa: GuestPhysAddr,
        /// The format's GPA width in bits.
        gpa_bits: u32,
    },
    /// A host address past the physical-address width of the format or of
    /// the host.
    HpaOutOfRange {
        /// The address (or the end of a run).
        hpa: HostPhysAddr,
        /// The width in bits.
        pa_bits: u32,
    },
    /// The page size cannot be a leaf in this format.
    UnsupportedPageSize(PageSize),
    /// The flags give no access, or write without read.
    BadFlags(MappingFlags),
    /// Something is already mapped at this address.
    AlreadyMapped {
        /// The first mapped address found.
        gpa: GuestPhysAddr,
    },
    /// Nothing is mapped at this address (or in the whole range).
    NotMapped {
        /// The address.
        gpa: GuestPhysAddr,
    },
    /// The mapping at this address is not a leaf of the expected size.
    SizeMismatch {
        /// The address.
        gpa: GuestPhysAddr,
        /// The size actually mapped there.
        mapped: PageSize,
    },
    /// The span cannot be collapsed into one leaf: not fully mapped, not
    /// physically contiguous and aligned, or the flags differ.
    NotCollapsible {
        /// The first address that breaks the rule.
        gpa: GuestPhysAddr,
    },
    /// A frame list of the wrong length was given for a range.
    FrameCount {
        /// Frames the range needs.
        expected: usize,
        /// Frames given.
        given: usize,
    },
    /// The frame allocator ran out.
    NoMemory,
    /// The allocator handed out a table frame (or root) that the table's
    /// entries cannot point to: it reaches past the physical-address width
    /// of the format or of the table ([`NestedPageTable::pa_bits`]). The
    /// frame went back to the allocator and nothing changed.
    ///
    /// [`NestedPageTable::pa_bits`]: crate::NestedPageTable::pa_bits
    TableFrameOutOfRange {
        /// The frame's host address.
        hpa: HostPhysAddr,
        /// The width it had to fit in.
        pa_bits: u32,
    },
}

impl From<EntryError> for NptError {
    fn from(e: EntryError) -> Self {
        match e {
            EntryError::Misaligned { hpa, size } => Self::HpaNotAligned {
                hpa,
                align: size.bytes(),
            },
            EntryError::AddressTooWide { hpa, pa_bits } => Self::HpaOutOfRange { hpa, pa_bits },
            EntryError::BadFlags(flags) | EntryError::ExecuteOnly(flags) => Self::BadFlags(flags),
        }
    }
}

impl fmt::Display for NptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroLength => write!(f, "the length is zero"),
            Self::GpaNotAligned { value, align } => {
                write!(
                    f,
                    "guest address or length {value:#x} is not aligned to {align:#x}"
                )
            }
            Self::HpaNotAligned { hpa, align } => {
                write!(
                    f,
                    "host address {:#x} is not aligned to {align:#x}",
                    hpa.as_usize()
                )
            }
            Self::GpaOutOfRange { gpa, gpa_bits } => write!(
                f,
                "guest address {gpa:#x} is outside the {gpa_bits}-bit guest-physical space"
            ),
            Self::HpaOutOfRange { hpa, pa_bits } => {
                write!(
                    f,
                    "host address {hpa:#x} is outside the {pa_bits}-bit physical space"
                )
            }
            Self::UnsupportedPageSize(size) => {
                write!(
                    f,
                    "{:#x}-byte leaves are not supported by this format",
                    size.bytes()
                )
            }
            Self::BadFlags(flags) => {
                write!(f, "flags {flags:?} give no access or write without read")
            }
            Self::AlreadyMapped { gpa } => write!(f, "{:#x} is already mapped", gpa.as_usize()),
            Self::NotMapped { gpa } => write!(f, "{:#x} is not mapped", gpa.as_usize()),
            Self::SizeMismatch { gpa, mapped } => write!(
                f,
                "{:#x} is mapped by a {:#x}-byte leaf, not the size asked for",
                gpa.as_usize(),
                mapped.bytes()
            ),
            Self::NotCollapsible { gpa } => write!(
                f,
                "cannot collapse: the mapping at {:#x} is missing, discontiguous or has other flags",
                gpa.as_usize()
            ),
            Self::FrameCount { expected, given } => {
                write!(
                    f,
                    "the range needs {expected} frames but {given} were given"
                )
            }
            Self::NoMemory => write!(f, "out of frames for page tables"),
            Self::TableFrameOutOfRange { hpa, pa_bits } => write!(
                f,
                "the allocator gave table frame {:#x}, past the {pa_bits}-bit physical width the table can point to",
                hpa.as_usize()
            ),
        }
    }
}

impl core::error::Error for NptError {}

impl From<NptError> for axerrno::AxErrorKind {
    fn from(e: NptError) -> Self {
        use axerrno::AxErrorKind as K;
        match e {
            NptError::NoMemory => K::NoMemory,
            NptError::AlreadyMapped { .. } => K::AlreadyExists,
            NptError::NotMapped { .. } => K::NotFound,
            NptError::GpaOutOfRange { .. }
            | NptError::HpaOutOfRange { .. }
            | NptError::TableFrameOutOfRange { .. } => K::OutOfRange,
            NptError::UnsupportedPageSize(_) => K::Unsupported,
            NptError::NotCollapsible { .. } | NptError::SizeMismatch { .. } => K::BadState,
            NptError::ZeroLength
            | NptError::GpaNotAligned { .. }
            | NptError::HpaNotAligned { .. }
            | NptError::BadFlags(_)
            | NptError::FrameCount { .. } => K::InvalidInput,
        }
    }
}

/// Shorthand for results of table operations.
pub type NptResult<T = ()> = Result<T, NptError>;
