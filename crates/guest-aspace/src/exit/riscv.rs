//! RISC-V H extension: guest-page faults taken into HS-mode.
//!
//! Source: RISC-V Privileged Architecture, chapter "H" Extension for
//! Hypervisor Support, Version 1.0: "Hypervisor Trap Value (`htval`)
//! Register", "Hypervisor Trap Instruction (`htinst`) Register",
//! "Guest-Page Faults", "Transformed Instruction or Pseudoinstruction for
//! `mtinst` or `htinst`" (table "Special pseudoinstruction values for
//! guest-page faults"); exception codes from the `scause` table of the
//! Supervisor-Level ISA.

use super::{ExitDecodeError, ExitFault, FaultOrigin, gpa};
use crate::fault::Access;

/// `scause` 20: instruction guest-page fault.
pub const CAUSE_FETCH_GUEST_PAGE_FAULT: u64 = 20;
/// `scause` 21: load guest-page fault.
pub const CAUSE_LOAD_GUEST_PAGE_FAULT: u64 = 21;
/// `scause` 23: store/AMO guest-page fault.
pub const CAUSE_STORE_GUEST_PAGE_FAULT: u64 = 23;
/// `htinst` pseudoinstruction: 32-bit read for VS-stage address
/// translation (VSXLEN = 32).
pub const PSEUDO_READ_32: u64 = 0x0000_2000;
/// `htinst` pseudoinstruction: 32-bit write for VS-stage address
/// translation (an A/D update, VSXLEN = 32).
pub const PSEUDO_WRITE_32: u64 = 0x0000_2020;
/// `htinst` pseudoinstruction: 64-bit read for VS-stage address
/// translation (VSXLEN = 64).
pub const PSEUDO_READ_64: u64 = 0x0000_3000;
/// `htinst` pseudoinstruction: 64-bit write for VS-stage address
/// translation (an A/D update, VSXLEN = 64).
pub const PSEUDO_WRITE_64: u64 = 0x0000_3020;
/// `htval` holds the GPA shifted right by 2; a value with either of its
/// top two bits set has no 64-bit GPA.
const HTVAL_SHIFT: u32 = 2;
/// The two low GPA bits `htval` drops, taken from `stval`.
const LOW_BITS: u64 = 0b11;

/// Decodes a guest-page fault from `scause`, `stval`, `htval` and, if the
/// hypervisor reads it, `htinst`.
///
/// `htval` zero means the hardware did not report the GPA (the
/// specification allows that for any guest-page fault), and gives
/// [`ExitDecodeError::AddressNotReported`].
///
/// With `htinst`: for a fault of an implicit access made by VS-stage
/// translation with a nonzero `htval`, the hart must write one of the
/// pseudoinstructions ([`PSEUDO_READ_64`], ...) there, zero not allowed.
/// A pseudoinstruction therefore gives [`FaultOrigin::GuestTableWalk`], the
/// GPA `htval << 2` (the guest PTE's address; its low bits are zero) and the
/// access it names (a write is an A/D update); any other value gives
/// [`FaultOrigin::GuestAccess`]. Without `htinst` the origin is
/// [`FaultOrigin::Unreported`]. Outside a walk the two low GPA bits are
/// those of `stval` and the access is the one `scause` names.
///
/// ```
/// use guest_aspace::Access;
/// use guest_aspace::exit::{FaultOrigin, riscv};
///
/// // A store to GPA 0x8020_1006: htval = GPA >> 2, stval's low bits 0b10.
/// let f = riscv::decode_guest_page_fault(23, 0x1006, 0x2008_0401, Some(0))?;
/// assert_eq!((f.gpa.as_usize(), f.access), (0x8020_1006, Access::Write));
/// assert_eq!(f.origin, FaultOrigin::GuestAccess);
/// # Ok::<(), guest_aspace::exit::ExitDecodeError>(())
/// ```
pub fn decode_guest_page_fault(
    scause: u64,
    stval: u64,
    htval: u64,
    htinst: Option<u64>,
) -> Result<ExitFault, ExitDecodeError> {
    let access = match scause {
        CAUSE_FETCH_GUEST_PAGE_FAULT => Access::Execute,
        CAUSE_LOAD_GUEST_PAGE_FAULT => Access::Read,
        CAUSE_STORE_GUEST_PAGE_FAULT => Access::Write,
        // Other exceptions, and interrupts (top bit set).
        _ => return Err(ExitDecodeError::NotStageTwoFault { value: scause }),
    };
    if htval == 0 {
        return Err(ExitDecodeError::AddressNotReported { value: scause });
    }
    if htval.leading_zeros() < HTVAL_SHIFT {
        return Err(ExitDecodeError::AddressTooWide { value: htval });
    }
    let base = htval << HTVAL_SHIFT;
    let walk = match htinst {
        Some(PSEUDO_READ_32 | PSEUDO_READ_64) => Some(Access::Read),
        Some(PSEUDO_WRITE_32 | PSEUDO_WRITE_64) => Some(Access::Write),
        _ => None,
    };
    Ok(match walk {
        Some(access) => ExitFault {
            gpa: gpa(base)?,
            access,
            origin: FaultOrigin::GuestTableWalk,
        },
        None => ExitFault {
            gpa: gpa(base | (stval & LOW_BITS))?,
            access,
            origin: if htinst.is_some() {
                FaultOrigin::GuestAccess
            } else {
                FaultOrigin::Unreported
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(
        scause: u64,
        stval: u64,
        htval: u64,
        htinst: Option<u64>,
    ) -> Result<(u64, Access, FaultOrigin), ExitDecodeError> {
        decode_guest_page_fault(scause, stval, htval, htinst)
            .map(|f| (f.gpa.as_usize() as u64, f.access, f.origin))
    }

    #[test]
    fn the_three_causes() {
        // GPA 0x8040_1008: htval 0x2010_0402.
        assert_eq!(
            decode(21, 0x8040_1008, 0x2010_0402, None),
            Ok((0x8040_1008, Access::Read, FaultOrigin::Unreported))
        );
        assert_eq!(
            decode(23, 0x8040_1008, 0x2010_0402, None),
            Ok((0x8040_1008, Access::Write, FaultOrigin::Unreported))
        );
        assert_eq!(
            decode(20, 0x8040_1008, 0x2010_0402, None),
            Ok((0x8040_1008, Access::Execute, FaultOrigin::Unreported))
        );
    }

    #[test]
    fn low_bits_come_from_stval() {
        // A halfword load at GVA 0xffff_ffc0_0000_0003 (guest paging on),
        // GPA 0x1_0000_3003: htval 0x4000_0c00, stval's low bits 0b11.
        assert_eq!(
            decode(21, 0xffff_ffc0_0000_0003, 0x4000_0c00, Some(0x0000_1083)),
            Ok((0x1_0000_3003, Access::Read, FaultOrigin::GuestAccess))
        );
    }

    #[test]
    fn vs_stage_walk_pseudoinstructions() {
        // A fetch whose VS-stage walk could not read the PTE at GPA
        // 0x8000_2ff8 (htval 0x2000_0bfe): 64-bit read pseudoinstruction.
        // stval (the fetch's GVA) does not contribute low bits.
        assert_eq!(
            decode(20, 0x1_2345_6787, 0x2000_0bfe, Some(0x0000_3000)),
            Ok((0x8000_2ff8, Access::Read, FaultOrigin::GuestTableWalk))
        );
        // A load whose walk sets the A bit of that PTE: 64-bit write.
        assert_eq!(
            decode(21, 0x1_2345_6787, 0x2000_0bfe, Some(0x0000_3020)),
            Ok((0x8000_2ff8, Access::Write, FaultOrigin::GuestTableWalk))
        );
        // RV32 guests: 0x2000 and 0x2020; PTE at 0x8000_1004.
        assert_eq!(
            decode(23, 0x4003, 0x2000_0401, Some(0x0000_2000)),
            Ok((0x8000_1004, Access::Read, FaultOrigin::GuestTableWalk))
        );
        assert_eq!(
            decode(23, 0x4003, 0x2000_0401, Some(0x0000_2020)),
            Ok((0x8000_1004, Access::Write, FaultOrigin::GuestTableWalk))
        );
    }

    #[test]
    fn unreported_and_unrelated() {
        assert_eq!(
            decode(21, 0x1000, 0, Some(0)),
            Err(ExitDecodeError::AddressNotReported { value: 21 })
        );
        // 13: load page fault (first stage, not a guest-page fault);
        // 10: ecall from VS-mode; an interrupt (top bit set).
        for scause in [13, 10, 22, (1 << 63) | 21] {
            assert_eq!(
                decode(scause, 0, 0x400, None),
                Err(ExitDecodeError::NotStageTwoFault { value: scause })
            );
        }
        assert_eq!(
            decode(21, 0, 1 << 62, None),
            Err(ExitDecodeError::AddressTooWide { value: 1 << 62 })
        );
        for v in [0, u64::MAX] {
            let _ = decode_guest_page_fault(v, v, v, Some(v));
            let _ = decode_guest_page_fault(21, v, v, None);
        }
    }
}
