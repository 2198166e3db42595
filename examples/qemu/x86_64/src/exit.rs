//! Exit reasons of the nested-paging exits; the decoding itself is the
//! library's (`guest_aspace::exit`).

use guest_aspace::Access;

/// AMD #NPF (exit code 400h): EXITINFO1 holds a page-fault error code,
/// EXITINFO2 the faulting guest-physical address (AMD APM Vol. 2, 15.25.6
/// "Nested versus Guest Page Faults, Fault Ordering"; error code bits in
/// 8.4.2 "Page-Fault Error Code").
pub mod npf {
    use super::Access;

    /// VMCB EXITCODE of a nested page fault (APM Vol. 2, Appendix C).
    pub const EXITCODE: u64 = 0x400;

    /// The faulting GPA and the kind of access, or `None` for a reserved-bit
    /// fault (a malformed nested entry, which `handle_fault` must not see),
    /// through `guest_aspace::exit::amd::decode_npf`.
    pub fn decode(exitinfo1: u64, exitinfo2: u64) -> Option<(usize, Access)> {
        let f = guest_aspace::exit::amd::decode_npf(exitinfo1, exitinfo2).ok()?;
        Some((f.gpa.as_usize(), f.access))
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

    /// The GPA and kind of access of an EPT violation, through
    /// `guest_aspace::exit::intel::decode_ept_violation`; `None` when the
    /// qualification names no access.
    pub fn decode(qualification: u64, gpa: u64) -> Option<(usize, Access)> {
        let f = guest_aspace::exit::intel::decode_ept_violation(qualification, gpa).ok()?;
        Some((f.gpa.as_usize(), f.access))
    }
}
