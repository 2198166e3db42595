//! Exit decoding for the nested-paging exits, kept in one file so the
//! library's decoders can replace it.

use guest_aspace::Access;

/// AMD #NPF (exit code 400h): EXITINFO1 holds a page-fault error code,
/// EXITINFO2 the faulting guest-physical address (AMD APM Vol. 2, 15.25.6
/// "Nested versus Guest Page Faults, Fault Ordering"; error code bits in
/// 8.4.2 "Page-Fault Error Code").
pub mod npf {
    use super::Access;

    /// VMCB EXITCODE of a nested page fault (APM Vol. 2, Appendix C).
    pub const EXITCODE: u64 = 0x400;
    /// Error code bit 1, R/W: the access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// Error code bit 3, RSV: a reserved bit was set in a nested entry.
    pub const RESERVED: u64 = 1 << 3;
    /// Error code bit 4, I/D: the access was an instruction fetch.
    pub const FETCH: u64 = 1 << 4;

    /// The faulting GPA and the kind of access, or `None` for a reserved-bit
    /// fault (a malformed nested entry, which `handle_fault` must not see).
    pub fn decode(exitinfo1: u64, exitinfo2: u64) -> Option<(usize, Access)> {
        if exitinfo1 & RESERVED != 0 {
            return None;
        }
        let access = if exitinfo1 & FETCH != 0 {
            Access::Execute
        } else if exitinfo1 & WRITE != 0 {
            Access::Write
        } else {
            Access::Read
        };
        Some((exitinfo2 as usize, access))
    }
}

/// Intel EPT violation (basic exit reason 48): the exit qualification says
/// which access (Intel SDM Vol. 3C, 28.2.1 "Basic VM-Exit Information",
/// Table 28-7 "Exit Qualification for EPT Violations"); the VMCS field
/// "guest-physical address" (encoding 2400h) holds the GPA.
pub mod ept {
    use super::Access;

    /// Basic exit reason: EPT violation (SDM Vol. 3D, Appendix C).
    pub const VIOLATION: u32 = 48;
    /// Basic exit reason: EPT misconfiguration.
    pub const MISCONFIG: u32 = 49;
    /// Qualification bit 1: the access was a data write.
    pub const WRITE: u64 = 1 << 1;
    /// Qualification bit 2: the access was an instruction fetch.
    pub const FETCH: u64 = 1 << 2;

    /// The GPA and kind of access of an EPT violation (bit 0, a data read,
    /// is what is left when bits 1 and 2 are clear).
    pub fn decode(qualification: u64, gpa: u64) -> (usize, Access) {
        let access = if qualification & FETCH != 0 {
            Access::Execute
        } else if qualification & WRITE != 0 {
            Access::Write
        } else {
            Access::Read
        };
        (gpa as usize, access)
    }
}
