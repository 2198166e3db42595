//! AMD SVM: nested page faults (`VMEXIT_NPF`, exit code `0x400`).
//!
//! Source: AMD APM Vol. 2, 15.25.6 "Nested versus Guest Page Faults, Fault
//! Ordering": EXITINFO1 holds a page-fault error code (bits 0-4 as for
//! `#PF`, 8.4.2 "Page-Fault Error Code") plus bits 32 and 33 saying which
//! translation faulted; EXITINFO2 holds the faulting guest-physical
//! address.

use super::{ExitDecodeError, ExitFault, FaultOrigin, bit, gpa};
use crate::fault::Access;

/// EXITINFO1 bit 0, P: the nested entry was present (a protection
/// violation); clear for a not-present fault.
pub const INFO1_P: u32 = 0;
/// EXITINFO1 bit 1, RW: the access was a write.
pub const INFO1_RW: u32 = 1;
/// EXITINFO1 bit 2, US: the access was a user-mode access.
pub const INFO1_US: u32 = 2;
/// EXITINFO1 bit 3, RSV: a reserved bit was set in a nested table entry.
pub const INFO1_RSV: u32 = 3;
/// EXITINFO1 bit 4, ID: the access was an instruction fetch.
pub const INFO1_ID: u32 = 4;
/// EXITINFO1 bit 32: the fault occurred translating the guest's final
/// physical address (the access itself).
pub const INFO1_FINAL_GPA: u32 = 32;
/// EXITINFO1 bit 33: the fault occurred translating a guest page-table
/// address (the processor walking the guest's tables).
pub const INFO1_GUEST_TABLE: u32 = 33;

/// Decodes a nested page fault from EXITINFO1 and EXITINFO2.
///
/// The access is an instruction fetch if ID is set, else a write if RW is,
/// else a read. [`FaultOrigin`] comes from bits 32 and 33; setting both
/// is [`ExitDecodeError::Inconsistent`]. A reserved-bit fault (RSV) is
/// [`ExitDecodeError::MalformedEntry`]: the nested table itself is wrong.
///
/// ```
/// use guest_aspace::Access;
/// use guest_aspace::exit::{FaultOrigin, amd};
///
/// // Not present (P clear), a write (RW), on the final GPA (bit 32).
/// let f = amd::decode_npf(0x1_0000_0002, 0xc000_1000)?;
/// assert_eq!((f.gpa.as_usize(), f.access), (0xc000_1000, Access::Write));
/// assert_eq!(f.origin, FaultOrigin::GuestAccess);
/// # Ok::<(), guest_aspace::exit::ExitDecodeError>(())
/// ```
pub fn decode_npf(exitinfo1: u64, exitinfo2: u64) -> Result<ExitFault, ExitDecodeError> {
    let e = exitinfo1;
    if bit(e, INFO1_RSV) {
        return Err(ExitDecodeError::MalformedEntry { value: e });
    }
    let access = if bit(e, INFO1_ID) {
        Access::Execute
    } else if bit(e, INFO1_RW) {
        Access::Write
    } else {
        Access::Read
    };
    let origin = match (bit(e, INFO1_FINAL_GPA), bit(e, INFO1_GUEST_TABLE)) {
        (true, false) => FaultOrigin::GuestAccess,
        (false, true) => FaultOrigin::GuestTableWalk,
        (false, false) => FaultOrigin::Unreported,
        (true, true) => return Err(ExitDecodeError::Inconsistent { value: e }),
    };
    Ok(ExitFault {
        gpa: gpa(exitinfo2)?,
        access,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(e1: u64, e2: u64) -> Result<(usize, Access, FaultOrigin), ExitDecodeError> {
        decode_npf(e1, e2).map(|f| (f.gpa.as_usize(), f.access, f.origin))
    }

    /// APM Vol. 2 8.4.2: RSV (bit 3) with P set, on the final GPA: a
    /// reserved bit in a nested entry, which no fault handling can fix.
    #[test]
    fn reserved_bit_faults_are_malformed_entries() {
        assert_eq!(
            decode(0x1_0000_0009, 0x4000_0000),
            Err(ExitDecodeError::MalformedEntry {
                value: 0x1_0000_0009
            })
        );
    }

    #[test]
    fn read_of_a_not_present_page() {
        // P clear, RW clear, bit 32.
        assert_eq!(
            decode(0x1_0000_0000, 0x4000_0010),
            Ok((0x4000_0010, Access::Read, FaultOrigin::GuestAccess))
        );
    }

    #[test]
    fn user_write_to_a_present_read_only_page() {
        // P, RW, US, bit 32.
        assert_eq!(
            decode(0x1_0000_0007, 0x8_0000_0ff8),
            Ok((0x8_0000_0ff8, Access::Write, FaultOrigin::GuestAccess))
        );
    }

    #[test]
    fn instruction_fetch() {
        // P, ID, bit 32.
        assert_eq!(
            decode(0x1_0000_0011, 0xfff0),
            Ok((0xfff0, Access::Execute, FaultOrigin::GuestAccess))
        );
    }

    #[test]
    fn guest_page_table_walk() {
        // Bit 33, a read of a guest PTE whose page is not present.
        assert_eq!(
            decode(0x2_0000_0000, 0x1000),
            Ok((0x1000, Access::Read, FaultOrigin::GuestTableWalk))
        );
        // Bit 33 with RW: the walk updating an accessed/dirty flag.
        assert_eq!(
            decode(0x2_0000_0003, 0x1008),
            Ok((0x1008, Access::Write, FaultOrigin::GuestTableWalk))
        );
    }

    #[test]
    fn reserved_bit_fault_and_no_origin() {
        // P, RSV: a misconfigured nested entry, whatever bits 32/33 say.
        assert_eq!(
            decode(0x9, 0x2000),
            Err(ExitDecodeError::MalformedEntry { value: 0x9 })
        );
        // P only, bits 32/33 clear: the origin is not reported.
        assert_eq!(
            decode(0x1, 0x2000),
            Ok((0x2000, Access::Read, FaultOrigin::Unreported))
        );
    }

    #[test]
    fn both_origins_is_inconsistent() {
        assert_eq!(
            decode(0x3_0000_0000, 0x2000),
            Err(ExitDecodeError::Inconsistent {
                value: 0x3_0000_0000
            })
        );
        for e1 in [0, u64::MAX, 1 << 63] {
            let _ = decode_npf(e1, u64::MAX);
        }
    }
}
