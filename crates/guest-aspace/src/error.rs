//! Errors of address-space operations.

use core::fmt;

use gpa_types::{ConfigError, ConfigField, DeviceError, DeviceField, DeviceSection, GuestPhysAddr};
use npt_table::{
    ChangeError, CollapseError, FrameError, MapError, NptError, QueryError, RangeError,
};

/// Why an address-space operation was refused. On error the space is as it
/// was before the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AspaceError {
    /// The nested table refused (alignment, widths, out of frames, ...).
    Table(NptError),
    /// A size of zero.
    ZeroSize,
    /// An address or size not aligned to 4 KiB (or to what it needs).
    NotAligned {
        /// The value.
        value: usize,
        /// The alignment it needed.
        align: usize,
    },
    /// The range leaves the space's guest-physical window.
    OutsideWindow {
        /// Start of the range.
        gpa: GuestPhysAddr,
        /// Its length.
        len: usize,
    },
    /// The range overlaps an existing region.
    Overlap {
        /// Start of the new range.
        gpa: GuestPhysAddr,
        /// Start of the region it overlaps.
        existing: GuestPhysAddr,
    },
    /// No region covers this address.
    NoRegion {
        /// The address.
        gpa: GuestPhysAddr,
    },
    /// Guest memory access reached an address that is not host-accessible
    /// RAM (MMIO, unmapped, or pass-through memory the space does not own).
    NotRam {
        /// The first failing address.
        gpa: GuestPhysAddr,
    },
    /// A removal would cut a huge backing frame of an owned region.
    CutsBacking {
        /// The address of the cut.
        gpa: GuestPhysAddr,
    },
    /// The operation does not apply to this region (e.g. dirty logging on
    /// MMIO, or logging already on/off).
    WrongRegionState {
        /// Start of the region.
        gpa: GuestPhysAddr,
    },
    /// A caller's buffer is too small.
    BufferTooSmall {
        /// Elements needed.
        needed: usize,
        /// Elements given.
        given: usize,
    },
    /// A config record is invalid.
    Config {
        /// Index of the record in the list.
        index: usize,
        /// What is wrong with it.
        error: ConfigError,
    },
    /// A config record is valid alone but cannot be placed (overlap, window).
    ConfigPlacement {
        /// Index of the record in the list.
        index: usize,
        /// The field at fault.
        field: ConfigField,
        /// The underlying error.
        error: PlacementError,
    },
    /// A `[devices]` record is invalid (zero length, unaligned, overflow).
    DeviceConfig {
        /// The list it is in.
        section: DeviceSection,
        /// Index of the record in that list.
        index: usize,
        /// What is wrong with it (it names the field).
        error: DeviceError,
    },
    /// A `[devices]` record is valid alone but cannot be placed (overlap,
    /// window, host width).
    DevicePlacement {
        /// The list it is in.
        section: DeviceSection,
        /// Index of the record in that list.
        index: usize,
        /// The field at fault.
        field: DeviceField,
        /// The underlying error.
        error: PlacementError,
    },
    /// The frame allocator ran out.
    NoMemory,
}

/// Why a valid config record could not be placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlacementError {
    /// Outside the window.
    OutsideWindow,
    /// Overlaps the region starting at this address.
    Overlap(GuestPhysAddr),
    /// The flags give no access, or write without read.
    Flags,
    /// A ROM record asks for write access; ROM is never guest-writable.
    WritableRom,
    /// Memory allocated for an allocating `MAP_IDENTICAL` record (placed at
    /// GPA == HPA, see [`crate::ConfigOptions::allocate_identical`]) landed
    /// at `[at, at + len)`, which leaves the guest-physical window.
    LandedOutsideWindow {
        /// Where the memory landed.
        at: GuestPhysAddr,
        /// Its length.
        len: usize,
    },
    /// Memory allocated for an allocating `MAP_IDENTICAL` record landed at
    /// `at`, overlapping the region that starts at `existing`.
    LandedOverlap {
        /// Where the memory landed.
        at: GuestPhysAddr,
        /// Start of the region it overlaps.
        existing: GuestPhysAddr,
    },
    /// The nested table refused it, for this reason.
    Table(NptError),
    /// Out of frames.
    NoMemory,
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutsideWindow => write!(f, "outside the guest-physical window"),
            Self::Overlap(at) => write!(f, "overlaps the region at {:#x}", at.as_usize()),
            Self::Flags => write!(f, "no access, or write without read"),
            Self::WritableRom => write!(f, "ROM cannot be guest-writable (clear bit1 write)"),
            Self::LandedOutsideWindow { at, len } => write!(
                f,
                "MAP_IDENTICAL memory was allocated at [{:#x}, {:#x}), outside the guest-physical window",
                at.as_usize(),
                at.as_usize().saturating_add(len)
            ),
            Self::LandedOverlap { at, existing } => write!(
                f,
                "MAP_IDENTICAL memory was allocated at {:#x}, overlapping the region at {:#x}",
                at.as_usize(),
                existing.as_usize()
            ),
            Self::Table(e) => write!(f, "rejected by the nested table: {e}"),
            Self::NoMemory => write!(f, "out of memory"),
        }
    }
}

impl From<NptError> for AspaceError {
    fn from(e: NptError) -> Self {
        match e {
            NptError::NoMemory => Self::NoMemory,
            e => Self::Table(e),
        }
    }
}

/// `From` each error family of `npt-table`, through [`NptError`].
macro_rules! from_table_errors {
    ($($family:ty),*) => {
        $(
            impl From<$family> for AspaceError {
                fn from(e: $family) -> Self {
                    NptError::from(e).into()
                }
            }
        )*
    };
}

from_table_errors!(
    MapError,
    ChangeError,
    CollapseError,
    QueryError,
    RangeError,
    FrameError
);

impl fmt::Display for AspaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Table(e) => write!(f, "nested table: {e}"),
            Self::ZeroSize => write!(f, "size is zero"),
            Self::NotAligned { value, align } => {
                write!(f, "{value:#x} is not aligned to {align:#x}")
            }
            Self::OutsideWindow { gpa, len } => write!(
                f,
                "[{:#x}, {:#x}) leaves the guest-physical window",
                gpa.as_usize(),
                gpa.as_usize().saturating_add(len)
            ),
            Self::Overlap { gpa, existing } => write!(
                f,
                "range at {:#x} overlaps the region at {:#x}",
                gpa.as_usize(),
                existing.as_usize()
            ),
            Self::NoRegion { gpa } => write!(f, "no region at {:#x}", gpa.as_usize()),
            Self::NotRam { gpa } => {
                write!(f, "{:#x} is not host-accessible guest RAM", gpa.as_usize())
            }
            Self::CutsBacking { gpa } => {
                write!(
                    f,
                    "{:#x} cuts a huge backing frame of an owned region",
                    gpa.as_usize()
                )
            }
            Self::WrongRegionState { gpa } => {
                write!(
                    f,
                    "the region at {:#x} is not in a state for this operation",
                    gpa.as_usize()
                )
            }
            Self::BufferTooSmall { needed, given } => {
                write!(f, "buffer holds {given} elements, {needed} needed")
            }
            Self::Config { index, error } => write!(f, "memory_regions[{index}]: {error}"),
            Self::ConfigPlacement {
                index,
                field,
                error,
            } => {
                write!(f, "memory_regions[{index}]: {field}: {error}")
            }
            Self::DeviceConfig {
                section,
                index,
                error,
            } => write!(f, "[devices] {section}[{index}]: {error}"),
            Self::DevicePlacement {
                section,
                index,
                field,
                error,
            } => write!(f, "[devices] {section}[{index}]: {field}: {error}"),
            Self::NoMemory => write!(f, "out of memory"),
        }
    }
}

impl core::error::Error for AspaceError {}

impl From<AspaceError> for axerrno::AxErrorKind {
    fn from(e: AspaceError) -> Self {
        use axerrno::AxErrorKind as K;
        match e {
            AspaceError::Table(t) => t.into(),
            AspaceError::NoMemory => K::NoMemory,
            AspaceError::Overlap { .. } => K::AlreadyExists,
            AspaceError::NoRegion { .. } => K::NotFound,
            AspaceError::NotRam { .. } => K::BadAddress,
            AspaceError::OutsideWindow { .. } => K::OutOfRange,
            AspaceError::WrongRegionState { .. } | AspaceError::CutsBacking { .. } => K::BadState,
            AspaceError::ZeroSize
            | AspaceError::BufferTooSmall { .. }
            | AspaceError::NotAligned { .. }
            | AspaceError::Config { .. }
            | AspaceError::ConfigPlacement { .. }
            | AspaceError::DeviceConfig { .. }
            | AspaceError::DevicePlacement { .. } => K::InvalidInput,
        }
    }
}

/// Shorthand for address-space results.
pub type AspaceResult<T = ()> = Result<T, AspaceError>;
