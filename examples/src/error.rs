//! What can go wrong in the demo, in a user's words.

use std::fmt;
use std::io;

use guest_aspace::AspaceError;

/// Why the demo stopped.
#[derive(Debug)]
pub enum DemoError {
    /// The config is not valid TOML, or lacks a required key
    /// (`[kernel] memory_regions`). The message names the line and column.
    Toml(toml::de::Error),
    /// A `memory_regions` record does not have the shape
    /// `[base_paddr, size, flags, map_type]`.
    Record {
        /// Index of the record in `memory_regions`.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A number that must not be negative is.
    Negative {
        /// Where it is, e.g. `memory_regions[2]: size` or `[kernel] entry_point`.
        field: String,
        /// The value.
        value: i64,
    },
    /// `[base] arch` or `--arch` names no supported architecture.
    UnknownArch {
        /// The name given.
        name: String,
    },
    /// `[demo] lazy_ram` is not `[base, size]`.
    LazyRamShape {
        /// How many values it has.
        len: usize,
    },
    /// Building the address space from `memory_regions` failed. The
    /// address-space error names the record index and field.
    Build(AspaceError),
    /// Adding the `[demo] lazy_ram` region failed.
    LazyRam(AspaceError),
    /// A step of the demo itself failed (a bug in the demo or the library).
    Step {
        /// What the demo was doing.
        step: &'static str,
        /// The address-space error.
        error: AspaceError,
    },
    /// Writing the report failed.
    Io(io::Error),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Toml(e) => write!(f, "invalid config: {}", e.to_string().trim_end()),
            Self::Record { index, message } => write!(f, "memory_regions[{index}]: {message}"),
            Self::Negative { field, value } => write!(f, "{field}: {value} is negative"),
            Self::UnknownArch { name } => write!(
                f,
                "unknown architecture `{name}` (expected x86_64, aarch64 or riscv64)"
            ),
            Self::LazyRamShape { len } => write!(
                f,
                "[demo] lazy_ram: expected [base, size], found {len} value(s)"
            ),
            Self::Build(e) => write!(f, "{e}"),
            Self::LazyRam(e) => write!(f, "[demo] lazy_ram: {e}"),
            Self::Step { step, error } => write!(f, "{step}: {error}"),
            Self::Io(e) => write!(f, "writing the report: {e}"),
        }
    }
}

impl std::error::Error for DemoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Toml(e) => Some(e),
            Self::Build(e) | Self::LazyRam(e) | Self::Step { error: e, .. } => Some(e),
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for DemoError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<toml::de::Error> for DemoError {
    fn from(e: toml::de::Error) -> Self {
        Self::Toml(e)
    }
}
