//! Decoding second-stage fault exits: from the registers a VM exit leaves
//! behind to the `(GPA, access)` pair [`GuestAddrSpace::handle_fault`]
//! takes.
//!
//! | architecture | exit | inputs | decoder |
//! |---|---|---|---|
//! | Intel VMX | EPT violation (basic exit reason 48) | exit qualification, guest-physical address (VMCS field `0x2400`) | [`intel::decode_ept_violation`] |
//! | AMD SVM | `VMEXIT_NPF` (exit code `0x400`) | EXITINFO1, EXITINFO2 | [`amd::decode_npf`] |
//! | AArch64 | instruction / data abort from a lower EL (ESR_EL2.EC `0x20` / `0x24`) | ESR_EL2, FAR_EL2, HPFAR_EL2 | [`arm::decode_abort`] |
//! | RISC-V H | instruction / load / store guest-page fault (`scause` 20 / 21 / 23) | `scause`, `stval`, `htval`, optionally `htinst` | [`riscv::decode_guest_page_fault`] |
//!
//! Each decoder is a pure function of register values: no instruction is
//! executed, and every architecture's decoder is compiled and tested on
//! every host. Register values are taken as `u64` whatever the register's
//! width. Unrelated or malformed values give an [`ExitDecodeError`]; no
//! input panics.
//!
//! Besides the address and the access, a decoder reports
//! [`FaultOrigin::GuestTableWalk`] when the hardware says the faulting
//! access was the processor walking the guest's own page tables (the GPA
//! is then that of a guest table entry, not of the instruction's operand),
//! [`FaultOrigin::GuestAccess`] when it says the opposite, and
//! [`FaultOrigin::Unreported`] when it says neither.
//!
//! ```
//! use gpa_types::GuestPhysAddr;
//! use guest_aspace::Access;
//! use guest_aspace::exit::{FaultOrigin, intel};
//!
//! // A data write (bit 1) to a linear address's translation (bits 7 and 8).
//! let f = intel::decode_ept_violation(0x182, 0xfee0_0030)?;
//! assert_eq!(f.gpa, GuestPhysAddr::from(0xfee0_0030));
//! assert_eq!(f.access, Access::Write);
//! assert_eq!(f.origin, FaultOrigin::GuestAccess);
//! // An exit handler then calls `space.handle_fault(f.gpa, f.access)`.
//! # Ok::<(), guest_aspace::exit::ExitDecodeError>(())
//! ```
//!
//! [`GuestAddrSpace::handle_fault`]: crate::GuestAddrSpace::handle_fault

use core::fmt;

use gpa_types::GuestPhysAddr;

use crate::fault::Access;

pub mod amd;
pub mod arm;
pub mod intel;
pub mod riscv;

/// A decoded second-stage fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitFault {
    /// The guest-physical address whose translation faulted.
    pub gpa: GuestPhysAddr,
    /// The access the second stage must allow for the guest to proceed.
    pub access: Access,
    /// Whether the access was the guest's own or the processor's walk of
    /// the guest's page tables.
    pub origin: FaultOrigin,
}

/// Which access faulted, as far as the hardware reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOrigin {
    /// The access the instruction made (the translation of its virtual
    /// address, or the address itself with guest paging off).
    GuestAccess,
    /// An access the processor made while walking the guest's own page
    /// tables for that instruction: reading an entry, or updating its
    /// accessed/dirty flags. `gpa` is the guest table entry's address (or
    /// its page, where the hardware reports only the page).
    GuestTableWalk,
    /// The registers do not say which.
    Unreported,
}

/// Why exit registers could not be decoded into a second-stage fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitDecodeError {
    /// The syndrome names another kind of exit or fault (the ESR_EL2 EC or
    /// fault status code, the `scause` value).
    NotStageTwoFault {
        /// The value that says so.
        value: u64,
    },
    /// The syndrome names no access kind (an Intel exit qualification with
    /// bits 0-2 clear).
    NoAccessKind {
        /// The syndrome.
        value: u64,
    },
    /// The syndrome contradicts itself (e.g. AMD EXITINFO1 bits 32 and 33
    /// both set, or Intel bit 8 set with bit 7 clear).
    Inconsistent {
        /// The syndrome.
        value: u64,
    },
    /// The hardware did not report the faulting guest-physical address:
    /// HPFAR_EL2 is UNKNOWN for a stage-2 permission fault that is not on a
    /// stage-1 walk (translate FAR_EL2 with `AT S1E1R` and use
    /// [`arm::ipa_from_par`]), or `htval` is zero.
    AddressNotReported {
        /// The syndrome.
        value: u64,
    },
    /// An address translation instruction reported failure (PAR_EL1.F set):
    /// the guest changed its tables; resume it and let it fault again.
    TranslationAborted {
        /// The PAR_EL1 value.
        par: u64,
    },
    /// The fault reports a malformed second-stage entry, not a missing or
    /// forbidding one (AMD EXITINFO1 RSV: a reserved bit set in a nested
    /// entry; the Intel counterpart is the separate EPT-misconfiguration
    /// exit). The hypervisor's table is wrong; `handle_fault` cannot fix it.
    MalformedEntry {
        /// The syndrome.
        value: u64,
    },
    /// The address does not fit this host's `usize`.
    AddressTooWide {
        /// The address.
        value: u64,
    },
}

impl fmt::Display for ExitDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotStageTwoFault { value } => {
                write!(f, "{value:#x} does not describe a second-stage fault")
            }
            Self::NoAccessKind { value } => {
                write!(f, "syndrome {value:#x} names no read, write or fetch")
            }
            Self::Inconsistent { value } => write!(f, "syndrome {value:#x} contradicts itself"),
            Self::MalformedEntry { value } => write!(
                f,
                "syndrome {value:#x} reports a malformed second-stage entry"
            ),
            Self::AddressNotReported { value } => write!(
                f,
                "syndrome {value:#x}: the hardware did not report the guest-physical address"
            ),
            Self::TranslationAborted { par } => {
                write!(f, "address translation failed (PAR {par:#x})")
            }
            Self::AddressTooWide { value } => {
                write!(f, "address {value:#x} does not fit a host usize")
            }
        }
    }
}

impl core::error::Error for ExitDecodeError {}

impl From<ExitDecodeError> for axerrno::AxErrorKind {
    fn from(e: ExitDecodeError) -> Self {
        use axerrno::AxErrorKind as K;
        match e {
            ExitDecodeError::AddressTooWide { .. } => K::OutOfRange,
            ExitDecodeError::TranslationAborted { .. } | ExitDecodeError::MalformedEntry { .. } => {
                K::BadState
            }
            _ => K::InvalidInput,
        }
    }
}

/// Bit `n` of `value`.
const fn bit(value: u64, n: u32) -> bool {
    (value >> n) & 1 != 0
}

/// Bits `lo..lo + len` of `value`, shifted down.
const fn field(value: u64, lo: u32, len: u32) -> u64 {
    (value >> lo) & ((1u64 << len) - 1)
}

/// A guest-physical address from a 64-bit register value.
fn gpa(value: u64) -> Result<GuestPhysAddr, ExitDecodeError> {
    usize::try_from(value)
        .map(GuestPhysAddr::from_usize)
        .map_err(|_| ExitDecodeError::AddressTooWide { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_helpers() {
        assert!(bit(0x80, 7));
        assert!(!bit(0x80, 8));
        assert_eq!(field(0x9200_0046, 26, 6), 0x24);
        assert_eq!(field(u64::MAX, 4, 40), 0xff_ffff_ffff);
    }

    #[test]
    fn errors_display_and_convert() {
        let e = ExitDecodeError::AddressNotReported { value: 0x9200_004f };
        assert!(alloc::format!("{e}").contains("0x9200004f"));
        assert_eq!(
            axerrno::AxErrorKind::from(ExitDecodeError::AddressTooWide { value: 1 << 40 }),
            axerrno::AxErrorKind::OutOfRange
        );
    }

    #[cfg(target_pointer_width = "32")]
    #[test]
    fn wide_address_on_a_32_bit_host() {
        assert_eq!(
            gpa(1 << 32),
            Err(ExitDecodeError::AddressTooWide { value: 1 << 32 })
        );
    }
}
