//! Intel VMX: EPT violations (basic exit reason 48).
//!
//! Sources: Intel SDM Vol. 3C, 28.2.1 "Basic VM-Exit Information", Table
//! 28-7 "Exit Qualification for EPT Violations"; 29.3.3.2 "EPT
//! Violations". The guest-physical address is VMCS field `0x2400`
//! (Appendix B.2.4, "64-Bit Read-Only Data Fields").

use super::{ExitDecodeError, ExitFault, FaultOrigin, bit, gpa};
use crate::fault::Access;

/// Bit 0: the access was a data read (Table 28-7).
pub const QUAL_READ: u32 = 0;
/// Bit 1: the access was a data write (Table 28-7). With EPT
/// accessed/dirty flags on, the processor's accesses to guest
/// paging-structure entries count as writes and set bits 0 and 1
/// (29.3.3.2).
pub const QUAL_WRITE: u32 = 1;
/// Bit 2: the access was an instruction fetch (Table 28-7).
pub const QUAL_FETCH: u32 = 2;
/// Bit 3: the GPA was readable (AND of bit 0 of the EPT entries used),
/// Table 28-7.
pub const QUAL_READABLE: u32 = 3;
/// Bit 4: the GPA was writable (AND of bit 1), Table 28-7.
pub const QUAL_WRITABLE: u32 = 4;
/// Bit 5: the GPA was executable (AND of bit 2; for supervisor-mode linear
/// addresses with mode-based execute control), Table 28-7.
pub const QUAL_EXECUTABLE: u32 = 5;
/// Bit 7: the guest linear-address field is valid (Table 28-7). Clear for
/// e.g. a violation while loading the PDPTE registers.
pub const QUAL_LINEAR_VALID: u32 = 7;
/// Bit 8, meaningful when bit 7 is set: 1 if the access was to the
/// translation of a linear address, 0 if it was to a paging-structure
/// entry during a page walk or an accessed/dirty flag update (Table 28-7).
/// Reserved (cleared) when bit 7 is clear.
pub const QUAL_LINEAR_TRANSLATION: u32 = 8;
/// Bit 12: NMI unblocking due to IRET (Table 28-7); the handler must
/// re-block NMIs before resuming the guest when set.
pub const QUAL_NMI_UNBLOCKING: u32 = 12;

/// Decodes an EPT violation from its exit qualification and the
/// guest-physical address field.
///
/// The access is an instruction fetch if bit 2 is set, else a write if bit
/// 1 is, else a read (bit 0): a guest paging-structure access with EPT A/D
/// flags on sets bits 0 and 1 and is reported as a write, which is what the
/// second stage must allow. [`FaultOrigin`] comes from bits 7 and 8.
///
/// ```
/// use guest_aspace::Access;
/// use guest_aspace::exit::{FaultOrigin, intel};
///
/// // Bits 0, 1 and 7: the processor setting an accessed flag in a guest
/// // page-table entry at GPA 0x3008 (bit 8 clear: a paging-structure access).
/// let f = intel::decode_ept_violation(0x83, 0x3008)?;
/// assert_eq!((f.access, f.origin), (Access::Write, FaultOrigin::GuestTableWalk));
/// # Ok::<(), guest_aspace::exit::ExitDecodeError>(())
/// ```
pub fn decode_ept_violation(
    qualification: u64,
    guest_physical: u64,
) -> Result<ExitFault, ExitDecodeError> {
    let q = qualification;
    let access = if bit(q, QUAL_FETCH) {
        Access::Execute
    } else if bit(q, QUAL_WRITE) {
        Access::Write
    } else if bit(q, QUAL_READ) {
        Access::Read
    } else {
        return Err(ExitDecodeError::NoAccessKind { value: q });
    };
    let origin = match (bit(q, QUAL_LINEAR_VALID), bit(q, QUAL_LINEAR_TRANSLATION)) {
        (true, true) => FaultOrigin::GuestAccess,
        (true, false) => FaultOrigin::GuestTableWalk,
        (false, false) => FaultOrigin::Unreported,
        // Bit 8 is cleared when bit 7 is.
        (false, true) => return Err(ExitDecodeError::Inconsistent { value: q }),
    };
    Ok(ExitFault {
        gpa: gpa(guest_physical)?,
        access,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use gpa_types::GuestPhysAddr;

    use super::*;

    fn decode(q: u64, g: u64) -> Result<(usize, Access, FaultOrigin), ExitDecodeError> {
        decode_ept_violation(q, g).map(|f| (f.gpa.as_usize(), f.access, f.origin))
    }

    #[test]
    fn data_read_of_a_not_present_page() {
        // Bit 0 (read), bits 3-5 clear (not present), bits 7 and 8.
        assert_eq!(
            decode(0x181, 0x1234_5678),
            Ok((0x1234_5678, Access::Read, FaultOrigin::GuestAccess))
        );
    }

    #[test]
    fn write_to_a_read_only_page() {
        // Bit 1 (write), bit 3 (readable), bit 5 (executable), bits 7 and 8.
        assert_eq!(
            decode(0x1aa, 0x8000_0ff8),
            Ok((0x8000_0ff8, Access::Write, FaultOrigin::GuestAccess))
        );
    }

    #[test]
    fn instruction_fetch() {
        // Bit 2 (fetch), bits 3 and 4 (readable, writable), bits 7 and 8.
        assert_eq!(
            decode(0x19c, 0xfff0),
            Ok((0xfff0, Access::Execute, FaultOrigin::GuestAccess))
        );
    }

    #[test]
    fn guest_paging_structure_access() {
        // Bit 0 (read), bit 7, bit 8 clear: a guest PTE read during a walk.
        assert_eq!(
            decode(0x81, 0x7000),
            Ok((0x7000, Access::Read, FaultOrigin::GuestTableWalk))
        );
        // Bits 0 and 1 with EPT A/D on: an accessed-flag update.
        assert_eq!(
            decode(0x83, 0x7008),
            Ok((0x7008, Access::Write, FaultOrigin::GuestTableWalk))
        );
    }

    #[test]
    fn no_linear_address() {
        // Bit 0 only, bit 7 clear (e.g. loading PDPTEs): origin unreported.
        assert_eq!(
            decode(0x1, 0x2000),
            Ok((0x2000, Access::Read, FaultOrigin::Unreported))
        );
    }

    #[test]
    fn nmi_unblocking_and_other_bits_do_not_change_the_result() {
        let f = decode_ept_violation(0x1182, 0x3000).unwrap();
        assert!(bit(0x1182, QUAL_NMI_UNBLOCKING));
        assert_eq!(f.gpa, GuestPhysAddr::from(0x3000));
        assert_eq!(f.access, Access::Write);
    }

    #[test]
    fn malformed_qualifications() {
        // No access bit.
        assert_eq!(
            decode(0x180, 0x1000),
            Err(ExitDecodeError::NoAccessKind { value: 0x180 })
        );
        // Bit 8 without bit 7.
        assert_eq!(
            decode(0x101, 0x1000),
            Err(ExitDecodeError::Inconsistent { value: 0x101 })
        );
        for q in [0, u64::MAX, 1 << 63] {
            let _ = decode_ept_violation(q, u64::MAX);
        }
    }
}
