//! AArch64: stage-2 instruction and data aborts taken to EL2 from a lower
//! Exception level.
//!
//! Sources: Arm ARM (DDI 0487), AArch64 system register descriptions:
//! ESR_EL2 (EC values; "ISS encoding for an exception from an Instruction
//! Abort" and "... from a Data Abort"; the fault status codes), HPFAR_EL2
//! (which faults write it), FAR_EL2, PAR_EL1.

use super::{ExitDecodeError, ExitFault, FaultOrigin, bit, field, gpa};
use crate::fault::Access;

/// ESR_EL2.EC, bits [31:26].
const EC_SHIFT: u32 = 26;
/// ESR_EL2.EC width.
const EC_BITS: u32 = 6;
/// EC `0b100000`: Instruction Abort from a lower Exception level.
pub const EC_IABT_LOW: u64 = 0x20;
/// EC `0b100100`: Data Abort from a lower Exception level.
pub const EC_DABT_LOW: u64 = 0x24;
/// ISS bit 10, FnV: FAR_EL2 is not valid (set only for external aborts).
pub const ISS_FNV: u32 = 10;
/// ISS bit 7, S1PTW: the stage-2 fault was on an access made for a stage-1
/// translation table walk.
pub const ISS_S1PTW: u32 = 7;
/// ISS bit 6 (Data Abort), WnR: the instruction wrote (cache maintenance
/// and address translation instructions report 1).
pub const ISS_WNR: u32 = 6;
/// ISS bits [5:0]: DFSC / IFSC, the fault status code.
const FSC_BITS: u32 = 6;
/// HPFAR_EL2.FIPA, bits [43:4]: IPA bits [51:12] (bits [43:40] with
/// FEAT_LPA, RES0 otherwise).
const FIPA_SHIFT: u32 = 4;
/// HPFAR_EL2.FIPA width.
const FIPA_BITS: u32 = 40;
/// PAR_EL1.F, bit 0: the address translation instruction failed.
const PAR_F: u32 = 0;
/// PAR_EL1.PA (F = 0), bits [51:12] (bits [51:48] with FEAT_LPA).
const PAR_PA_MASK: u64 = 0x000f_ffff_ffff_f000;
/// The offset within a 4 KiB page.
const PAGE_OFFSET_MASK: u64 = 0xfff;

/// What a fault status code says (DFSC/IFSC, ESR_EL2 ISS bits [5:0]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fsc {
    /// `0b0000LL` levels 0-3, `0b101001` level -1 (FEAT_LPA2).
    AddressSize,
    /// `0b0001LL` levels 0-3, `0b101011` level -1 (FEAT_LPA2).
    Translation,
    /// `0b0010LL`: Access flag fault, levels 0-3.
    AccessFlag,
    /// `0b0011LL`: Permission fault, levels 0-3.
    Permission,
    /// Anything else: external aborts, alignment, TLB conflict, ...
    Other,
}

fn fsc(code: u64) -> Fsc {
    match code {
        0x00..=0x03 | 0x29 => Fsc::AddressSize,
        0x04..=0x07 | 0x2b => Fsc::Translation,
        0x08..=0x0b => Fsc::AccessFlag,
        0x0c..=0x0f => Fsc::Permission,
        _ => Fsc::Other,
    }
}

/// Decodes a stage-2 abort from ESR_EL2, FAR_EL2 and HPFAR_EL2.
///
/// HPFAR_EL2 is written only for stage-2 Translation, Access flag and
/// Address size faults, and for Translation, Access flag and Permission
/// faults on a stage-1 walk (S1PTW); for a stage-2 Permission fault of the
/// access itself it is UNKNOWN, and this returns
/// [`ExitDecodeError::AddressNotReported`]: translate FAR_EL2 with
/// `AT S1E1R` and pass PAR_EL1 to [`ipa_from_par`] (as KVM does).
///
/// The GPA is FIPA with FAR_EL2's page offset; for a walk (S1PTW), FAR_EL2
/// holds the instruction's address, not the descriptor's, so the GPA is
/// that of the descriptor's page. The access is a fetch for an Instruction
/// Abort and WnR for a Data Abort; for a walk it is a write only for a
/// Permission fault (the walk could read the descriptor, so what failed is
/// the hardware update of its Access flag or dirty state) and a read
/// otherwise, the rule KVM applies (WnR describes the instruction's access).
///
/// ```
/// use guest_aspace::Access;
/// use guest_aspace::exit::{FaultOrigin, arm};
///
/// // EC 0x24, IL, WnR, DFSC 0x07 (Translation fault, level 3);
/// // HPFAR FIPA 0x4_0123 (IPA 0x4012_3000), FAR page offset 0x458.
/// let f = arm::decode_abort(0x9200_0047, 0xffff_0000_1234_5458, 0x40_1230)?;
/// assert_eq!((f.gpa.as_usize(), f.access), (0x4012_3458, Access::Write));
/// assert_eq!(f.origin, FaultOrigin::GuestAccess);
/// # Ok::<(), guest_aspace::exit::ExitDecodeError>(())
/// ```
pub fn decode_abort(esr: u64, far: u64, hpfar: u64) -> Result<ExitFault, ExitDecodeError> {
    let ec = field(esr, EC_SHIFT, EC_BITS);
    if ec != EC_IABT_LOW && ec != EC_DABT_LOW {
        return Err(ExitDecodeError::NotStageTwoFault { value: esr });
    }
    let walk = bit(esr, ISS_S1PTW);
    let code = fsc(field(esr, 0, FSC_BITS));
    let hpfar_valid = match code {
        Fsc::AddressSize | Fsc::Translation | Fsc::AccessFlag => true,
        Fsc::Permission => walk,
        Fsc::Other => return Err(ExitDecodeError::NotStageTwoFault { value: esr }),
    };
    if !hpfar_valid {
        return Err(ExitDecodeError::AddressNotReported { value: esr });
    }
    let access = if walk {
        if code == Fsc::Permission {
            Access::Write
        } else {
            Access::Read
        }
    } else if ec == EC_IABT_LOW {
        Access::Execute
    } else if bit(esr, ISS_WNR) {
        Access::Write
    } else {
        Access::Read
    };
    let page = field(hpfar, FIPA_SHIFT, FIPA_BITS) << 12;
    let offset = if walk || bit(esr, ISS_FNV) {
        0
    } else {
        far & PAGE_OFFSET_MASK
    };
    Ok(ExitFault {
        gpa: gpa(page | offset)?,
        access,
        origin: if walk {
            FaultOrigin::GuestTableWalk
        } else {
            FaultOrigin::GuestAccess
        },
    })
}

/// The IPA of a guest virtual address from PAR_EL1 after `AT S1E1R` (or
/// `S1E1W`) of FAR_EL2: PAR_EL1.PA with FAR_EL2's page offset. For a
/// stage-2 Permission fault, where [`decode_abort`] reports
/// [`ExitDecodeError::AddressNotReported`]. PAR_EL1.F set (the guest's
/// tables changed under the exit) gives
/// [`ExitDecodeError::TranslationAborted`].
///
/// ```
/// use guest_aspace::exit::arm;
///
/// // F = 0, PA 0x10_1000 (attributes in bits [63:56] are ignored).
/// let ipa = arm::ipa_from_par(0xff00_0000_0010_1000, 0x10_1800)?;
/// assert_eq!(ipa.as_usize(), 0x10_1800);
/// # Ok::<(), guest_aspace::exit::ExitDecodeError>(())
/// ```
pub fn ipa_from_par(par: u64, far: u64) -> Result<gpa_types::GuestPhysAddr, ExitDecodeError> {
    if bit(par, PAR_F) {
        return Err(ExitDecodeError::TranslationAborted { par });
    }
    gpa((par & PAR_PA_MASK) | (far & PAGE_OFFSET_MASK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(
        esr: u64,
        far: u64,
        hpfar: u64,
    ) -> Result<(u64, Access, FaultOrigin), ExitDecodeError> {
        decode_abort(esr, far, hpfar).map(|f| (f.gpa.as_usize() as u64, f.access, f.origin))
    }

    /// HPFAR_EL2 for an IPA: FIPA = IPA[51:12] in bits [43:4].
    const fn hpfar(ipa: u64) -> u64 {
        (ipa >> 12) << 4
    }

    #[test]
    fn data_abort_read_translation_fault() {
        // 0x9383_0006: EC 0x24, IL, ISV, SAS 0b10, SRT 3, WnR 0,
        // DFSC 0b000110 (Translation fault, level 2).
        assert_eq!(
            decode(0x9383_0006, 0x8_0000_0abc, hpfar(0x8_0000_0000)),
            Ok((0x8_0000_0abc, Access::Read, FaultOrigin::GuestAccess))
        );
        assert_eq!(hpfar(0x8_0000_0000), 0x800_0000);
    }

    #[test]
    fn data_abort_write_access_flag_fault_with_lpa_ipa() {
        // EC 0x24, IL, WnR, DFSC 0b001011 (Access flag fault, level 3);
        // a 52-bit IPA 0xf_1234_5678_9000 (FIPA bits [43:40] = 0xf).
        let ipa = 0xf_1234_5678_9000;
        assert_eq!(hpfar(ipa), 0xf12_3456_7890);
        assert_eq!(
            decode(0x9200_004b, 0x7ff8, hpfar(ipa) | 1 << 63),
            Ok((ipa | 0xff8, Access::Write, FaultOrigin::GuestAccess))
        );
    }

    #[test]
    fn instruction_abort() {
        // 0x8200_0007: EC 0x20, IL, IFSC 0b000111 (Translation fault, L3).
        assert_eq!(
            decode(0x8200_0007, 0x4008_0004, hpfar(0x4008_0000)),
            Ok((0x4008_0004, Access::Execute, FaultOrigin::GuestAccess))
        );
        // Address size fault, level 0 (IFSC 0b000000).
        assert_eq!(
            decode(0x8200_0000, 0x10, hpfar(0x1_0000_0000_0000)),
            Ok((
                0x1_0000_0000_0010,
                Access::Execute,
                FaultOrigin::GuestAccess
            ))
        );
    }

    #[test]
    fn stage_one_walk() {
        // 0x9200_00c7: EC 0x24, IL, S1PTW, WnR, DFSC 0b000111: the walk of a
        // store could not read a descriptor in IPA page 0x4000_2000. FAR's
        // offset belongs to the instruction's VA and is dropped; WnR (the
        // store's) does not make the walk a write.
        assert_eq!(
            decode(0x9200_00c7, 0xffff_0000_0000_0123, hpfar(0x4000_2000)),
            Ok((0x4000_2000, Access::Read, FaultOrigin::GuestTableWalk))
        );
        // 0x8200_008f: an Instruction Abort whose walk hit a stage-2
        // Permission fault (a hardware Access flag update): a write.
        assert_eq!(
            decode(0x8200_008f, 0x0, hpfar(0x4000_3000)),
            Ok((0x4000_3000, Access::Write, FaultOrigin::GuestTableWalk))
        );
    }

    #[test]
    fn permission_fault_without_walk_has_no_ipa() {
        // 0x9200_004f: EC 0x24, IL, WnR, DFSC 0b001111 (Permission, L3).
        assert_eq!(
            decode(0x9200_004f, 0x10_1800, 0),
            Err(ExitDecodeError::AddressNotReported { value: 0x9200_004f })
        );
        // The fallback: AT S1E1R gave PAR_EL1 with PA 0x10_1000.
        assert_eq!(
            ipa_from_par(0x0000_0000_0010_1000, 0x10_1800).map(|g| g.as_usize()),
            Ok(0x10_1800)
        );
        // PAR_EL1.F = 1, FST in bits [6:1].
        assert_eq!(
            ipa_from_par(0x0000_0000_0000_0809, 0x10_1800),
            Err(ExitDecodeError::TranslationAborted { par: 0x809 })
        );
    }

    #[test]
    fn unrelated_syndromes() {
        // 0x5a00_0000: EC 0x16 (HVC from AArch64).
        assert_eq!(
            decode(0x5a00_0000, 0, 0),
            Err(ExitDecodeError::NotStageTwoFault { value: 0x5a00_0000 })
        );
        // EC 0x25 (Data Abort from EL2 itself).
        assert_eq!(
            decode(0x9600_0007, 0, 0),
            Err(ExitDecodeError::NotStageTwoFault { value: 0x9600_0007 })
        );
        // DFSC 0b010000: synchronous external abort; 0b100001 alignment.
        for esr in [0x9200_0010, 0x9200_0021, 0x9200_0030] {
            assert_eq!(
                decode(esr, 0, 0),
                Err(ExitDecodeError::NotStageTwoFault { value: esr })
            );
        }
        for esr in [0, u64::MAX, 0x9200_0000 | (1 << 63)] {
            let _ = decode_abort(esr, u64::MAX, u64::MAX);
        }
    }

    #[test]
    fn lpa2_level_minus_one() {
        // DFSC 0b101011: Translation fault, level -1 (FEAT_LPA2).
        assert_eq!(
            decode(0x9200_002b, 0x8, hpfar(0x2_0000_0000_0000)),
            Ok((0x2_0000_0000_0008, Access::Read, FaultOrigin::GuestAccess))
        );
    }
}
