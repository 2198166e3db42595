//! What can go wrong, and in whose words.
//!
//! [`NptError`] holds every reason a table operation can be refused. Each
//! family of operations returns its own enum, holding only the variants its
//! operations can produce, so that a caller's `match` covers exactly what
//! can happen: [`MapError`] (maps), [`ChangeError`] (changes to what is
//! mapped), [`CollapseError`], [`QueryError`] (lookups), [`RangeError`]
//! (range checks and read-only range walks) and [`FrameError`] (creating a
//! table). Every family converts into [`NptError`] without loss (so `?`
//! into `NptError` works everywhere), shows the same text and converts to
//! [`axerrno::AxErrorKind`] as `NptError` does.
//!
//! The variants are written once, in `variant!`; `family!` declares an enum
//! from a list of their names and writes its conversions. A conversion to
//! a family that lacks one of the variants does not compile: the families
//! are checked subsets.

use core::fmt;

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::EntryError;

/// The variants of [`NptError`], each written once with its docs.
///
/// `variant!(Name, cb!(args))` expands to `cb!(args [definition]
/// [bindings])`: the variant as it stands in an enum, and the tokens that
/// move its fields (the same tokens serve as pattern and as expression).
macro_rules! variant {
    (ZeroLength, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// A length of zero.
            ZeroLength
        ] [] }
    };
    (GpaNotAligned, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// A guest address or length not aligned to the page size it needs.
            GpaNotAligned {
                /// The address or length.
                value: usize,
                /// The alignment it needed.
                align: usize,
            }
        ] [{ value, align }] }
    };
    (HpaNotAligned, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// A host address not aligned to the page size it needs.
            HpaNotAligned {
                /// The address.
                hpa: HostPhysAddr,
                /// The alignment it needed.
                align: usize,
            }
        ] [{ hpa, align }] }
    };
    (GpaOutOfRange, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// The range reaches past the format's guest-physical width (or wraps).
            GpaOutOfRange {
                /// The first address outside the width.
                gpa: GuestPhysAddr,
                /// The format's GPA width in bits.
                gpa_bits: u32,
            }
        ] [{ gpa, gpa_bits }] }
    };
    (HpaOutOfRange, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// A host address past the physical-address width of the format or of
            /// the host.
            HpaOutOfRange {
                /// The address (or the end of a run).
                hpa: HostPhysAddr,
                /// The width in bits.
                pa_bits: u32,
            }
        ] [{ hpa, pa_bits }] }
    };
    (UnsupportedPageSize, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// The page size cannot be a leaf in this format.
            UnsupportedPageSize(PageSize)
        ] [(size)] }
    };
    (BadFlags, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// The flags give no access, or write without read.
            BadFlags(MappingFlags)
        ] [(flags)] }
    };
    (AlreadyMapped, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// Something is already mapped at this address.
            AlreadyMapped {
                /// The first mapped address found.
                gpa: GuestPhysAddr,
            }
        ] [{ gpa }] }
    };
    (NotMapped, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// Nothing is mapped at this address (or in the whole range).
            NotMapped {
                /// The address.
                gpa: GuestPhysAddr,
            }
        ] [{ gpa }] }
    };
    (SizeMismatch, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// The mapping at this address is not a leaf of the expected size.
            SizeMismatch {
                /// The address.
                gpa: GuestPhysAddr,
                /// The size actually mapped there.
                mapped: PageSize,
            }
        ] [{ gpa, mapped }] }
    };
    (NotCollapsible, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// The span cannot be collapsed into one leaf: not fully mapped, not
            /// physically contiguous and aligned, or the flags differ.
            NotCollapsible {
                /// The first address that breaks the rule.
                gpa: GuestPhysAddr,
            }
        ] [{ gpa }] }
    };
    (FrameCount, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// A frame list (or a harvest bitmap) of the wrong length was given
            /// for a range.
            FrameCount {
                /// Frames (bitmap words) the range needs.
                expected: usize,
                /// Frames (bitmap words) given.
                given: usize,
            }
        ] [{ expected, given }] }
    };
    (NoMemory, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
            /// The frame allocator ran out.
            NoMemory
        ] [] }
    };
    (TableFrameOutOfRange, $cb:ident!($($args:tt)*)) => {
        $cb! { $($args)* [
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
            }
        ] [{ hpa, pa_bits }] }
    };
}

/// Declares an error enum made of the named variants of [`NptError`]
/// (looked up one by one in `variant!`), with `Debug`, `Clone`, `Copy`,
/// `PartialEq`, and `From<Self>` for every type in the `into` list.
///
/// A `family` also gets `From<Self> for NptError`, `Display` (the text of
/// the `NptError`), `core::error::Error` and `From<Self> for AxErrorKind`;
/// the `umbrella` (`NptError` itself) gets only the enum.
macro_rules! family {
    // The next variant: look it up, then carry on with what it gave.
    (@look $head:tt $defs:tt $arms:tt $v:ident $($rest:ident)*) => {
        variant! { $v, family!(@got $head $defs $arms [$($rest)*] $v) }
    };
    (@got $head:tt [$($defs:tt)*] [$($arms:tt)*] [$($rest:ident)*] $v:ident
        [$($def:tt)*] [$($bind:tt)*]) => {
        family! { @look $head [$($defs)* $($def)*,] [$($arms)* [$v $($bind)*]] $($rest)* }
    };
    // Every variant found: the enum.
    (@look [$kind:ident [$(#[$meta:meta])*] $vis:vis $name:ident [$($into:ty),*]]
        [$($defs:tt)*] $arms:tt) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        $vis enum $name { $($defs)* }
        family! { @into $name $arms $($into),* }
        family! { @$kind $name $arms }
    };
    // `From<$name>` for each type of the `into` list, one at a time.
    (@into $name:ident $arms:tt) => {};
    (@into $name:ident [$([$v:ident $($bind:tt)*])*] $into:ty $(, $more:ty)*) => {
        impl From<$name> for $into {
            fn from(e: $name) -> Self {
                match e {
                    $($name::$v $($bind)* => Self::$v $($bind)*,)*
                }
            }
        }
        family! { @into $name [$([$v $($bind)*])*] $($more),* }
    };
    (@umbrella $name:ident $arms:tt) => {};
    (@family $name:ident $arms:tt) => {
        family! { @into $name $arms NptError }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&NptError::from(*self), f)
            }
        }

        impl core::error::Error for $name {}

        impl From<$name> for axerrno::AxErrorKind {
            fn from(e: $name) -> Self {
                NptError::from(e).into()
            }
        }
    };
    // The entry: `docs vis family|umbrella Name { Variant, .. } into [Type, ..]`.
    (
        $(#[$meta:meta])*
        $vis:vis $kind:ident $name:ident { $($v:ident),+ $(,)? }
        $(into [$($into:ty),* $(,)?])?
    ) => {
        family! { @look [$kind [$(#[$meta])*] $vis $name [$($($into),*)?]] [] [] $($v)+ }
    };
}

family! {
    /// Why a table operation was refused: every reason any operation gives.
    /// When an operation returns an error the table is exactly as it was
    /// before the call.
    ///
    /// Operations return the enum of their family ([`MapError`],
    /// [`ChangeError`], [`CollapseError`], [`QueryError`], [`RangeError`],
    /// [`FrameError`]), which converts into this one without loss.
    pub umbrella NptError {
        ZeroLength, GpaNotAligned, HpaNotAligned, GpaOutOfRange, HpaOutOfRange,
        UnsupportedPageSize, BadFlags, AlreadyMapped, NotMapped, SizeMismatch,
        NotCollapsible, FrameCount, NoMemory, TableFrameOutOfRange,
    }
}

family! {
    /// Why a map was refused: [`map`], [`map_region`], [`map_frames`],
    /// [`map_chunks`], [`VacantEntry::insert`], [`VacantEntry::insert_new`]
    /// and [`insert_new_concurrent`]. Nothing in the way is ever changed, so
    /// there is no `NotMapped`, `SizeMismatch` or `NotCollapsible`. On error
    /// the table is as it was.
    ///
    /// [`map`]: crate::NestedPageTable::map
    /// [`map_region`]: crate::NestedPageTable::map_region
    /// [`map_frames`]: crate::NestedPageTable::map_frames
    /// [`map_chunks`]: crate::NestedPageTable::map_chunks
    /// [`VacantEntry::insert`]: crate::VacantEntry::insert
    /// [`VacantEntry::insert_new`]: crate::VacantEntry::insert_new
    /// [`insert_new_concurrent`]: crate::NestedPageTable::insert_new_concurrent
    pub family MapError {
        ZeroLength, GpaNotAligned, HpaNotAligned, GpaOutOfRange, HpaOutOfRange,
        UnsupportedPageSize, BadFlags, AlreadyMapped, NoMemory, TableFrameOutOfRange,
    }
}

family! {
    /// Why a change to what is mapped was refused: [`unmap`], [`protect`],
    /// [`remap`] (and the same on a [`LeafEntry`]), [`unmap_region`],
    /// [`protect_region`], [`write_protect_region`], [`harvest`],
    /// [`split_region`], [`update_flags_concurrent`] and
    /// [`write_protect_concurrent`]. Nothing new is mapped, so there is no
    /// `AlreadyMapped` or `UnsupportedPageSize`. On error the table is as it
    /// was.
    ///
    /// [`unmap`]: crate::NestedPageTable::unmap
    /// [`protect`]: crate::NestedPageTable::protect
    /// [`remap`]: crate::NestedPageTable::remap
    /// [`LeafEntry`]: crate::LeafEntry
    /// [`unmap_region`]: crate::NestedPageTable::unmap_region
    /// [`protect_region`]: crate::NestedPageTable::protect_region
    /// [`write_protect_region`]: crate::NestedPageTable::write_protect_region
    /// [`harvest`]: crate::NestedPageTable::harvest
    /// [`split_region`]: crate::NestedPageTable::split_region
    /// [`update_flags_concurrent`]: crate::NestedPageTable::update_flags_concurrent
    /// [`write_protect_concurrent`]: crate::NestedPageTable::write_protect_concurrent
    pub family ChangeError {
        ZeroLength, GpaNotAligned, HpaNotAligned, GpaOutOfRange, HpaOutOfRange,
        BadFlags, NotMapped, SizeMismatch, FrameCount, NoMemory, TableFrameOutOfRange,
    }
}

family! {
    /// Why [`collapse`](crate::NestedPageTable::collapse) was refused. It
    /// takes no table frames (it only gives them up), so there is no
    /// `TableFrameOutOfRange`; `NoMemory` is room to park the frames it
    /// unlinks. On error the table is as it was.
    pub family CollapseError {
        GpaNotAligned, GpaOutOfRange, UnsupportedPageSize, NotMapped, NotCollapsible,
        NoMemory,
    }
}

family! {
    /// Why a lookup found no translation:
    /// [`query`](crate::NestedPageTable::query),
    /// [`Cursor::query`](crate::Cursor::query) and
    /// [`entry`](crate::NestedPageTable::entry) (which finds a vacant entry
    /// where nothing is mapped, so it gives only `GpaOutOfRange`).
    pub family QueryError {
        GpaOutOfRange, NotMapped,
    }
    into [ChangeError]
}

family! {
    /// Why a guest range was refused:
    /// [`check_range`](crate::NestedPageTable::check_range) and the
    /// read-only range walks [`mappings`](crate::NestedPageTable::mappings)
    /// and [`for_each_mapping`](crate::NestedPageTable::for_each_mapping).
    pub family RangeError {
        ZeroLength, GpaNotAligned, GpaOutOfRange,
    }
    into [MapError, ChangeError]
}

family! {
    /// Why a table could not be created
    /// ([`new`](crate::NestedPageTable::new),
    /// [`with_pa_bits`](crate::NestedPageTable::with_pa_bits)): no frame for
    /// the root, or a root the table's entries could not point to. Nothing
    /// stays allocated.
    pub family FrameError {
        NoMemory, TableFrameOutOfRange,
    }
    into [MapError, ChangeError]
}

family! {
    /// A guest span of a known, non-zero size that is misaligned or past
    /// the GPA width: the part of the range check that pages and leaves
    /// need.
    pub(crate) family SpanError {
        GpaNotAligned, GpaOutOfRange,
    }
    into [RangeError, MapError, ChangeError, CollapseError]
}

family! {
    /// What an entry cannot encode: a host address or flags.
    pub(crate) family EncodeError {
        HpaNotAligned, HpaOutOfRange, BadFlags,
    }
    into [MapError, ChangeError]
}

family! {
    /// No memory: for room to park frames.
    pub(crate) family OutOfMemory {
        NoMemory,
    }
    into [FrameError, MapError, ChangeError, CollapseError]
}

impl From<EntryError> for EncodeError {
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

/// `From<EntryError>` through [`EncodeError`].
macro_rules! from_entry_error {
    ($($into:ty),*) => {
        $(
            impl From<EntryError> for $into {
                fn from(e: EntryError) -> Self {
                    EncodeError::from(e).into()
                }
            }
        )*
    };
}

from_entry_error!(NptError, MapError, ChangeError);

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
