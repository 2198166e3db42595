//! `NestedEntry::FLAG_MASK` and `with_flags_of` against `set_flags`, for
//! every entry format: giving a leaf the flags of a template must be the
//! same as `set_flags`, and must keep every bit outside the mask (address,
//! accessed/dirty, format-specific bits) as it was.

use gpa_types::MappingFlags;
use memory_addr::PhysAddr;
use npt_entry::NestedEntry;
use npt_entry::ept::EptEntry;
use npt_entry::gstage::GStageEntry;
use npt_entry::npt::NptEntry;
use npt_entry::stage2::Stage2Entry;
use proptest::prelude::*;

/// Rights as `check_flags` accepts them (some of R/W/X, W implies R), plus
/// any of USER/DEVICE/UNCACHED.
fn flags() -> impl Strategy<Value = MappingFlags> {
    (1usize..8, 0usize..8).prop_map(|(mut rwx, extra)| {
        if rwx & 0b010 != 0 {
            rwx |= 0b001;
        }
        MappingFlags::from_bits_truncate(rwx | (extra << 3))
    })
}

/// A leaf with `old` flags, arbitrary bits outside the flag mask, then
/// given `new` flags both ways.
fn check<E: NestedEntry>(noise: u64, old: MappingFlags, new: MappingFlags, huge: bool) {
    let base = E::new_page(PhysAddr::from_usize(0), old, huge);
    let leaf = E::from_raw(base.raw() | (noise & !E::FLAG_MASK));
    let template = E::new_page(PhysAddr::from_usize(0), new, huge);
    let mut expected = leaf;
    expected.set_flags(new, huge);
    let got = leaf.with_flags_of(template);
    assert_eq!(got.raw(), expected.raw(), "{old:?} -> {new:?}, huge {huge}");
    assert_eq!(got.raw() & !E::FLAG_MASK, leaf.raw() & !E::FLAG_MASK);
}

proptest! {
    #[test]
    fn ept(noise: u64, old in flags(), new in flags(), huge: bool) {
        check::<EptEntry>(noise, old, new, huge);
    }

    #[test]
    fn npt(noise: u64, old in flags(), new in flags(), huge: bool) {
        check::<NptEntry>(noise, old, new, huge);
    }

    #[test]
    fn stage2(noise: u64, old in flags(), new in flags(), huge: bool) {
        check::<Stage2Entry>(noise, old, new, huge);
    }

    #[test]
    fn gstage(noise: u64, old in flags(), new in flags(), huge: bool) {
        check::<GStageEntry>(noise, old, new, huge);
    }
}

/// The bits hardware sets survive: EPT accessed (8) and dirty (9), NPT
/// accessed (5) and dirty (6), the Arm DBM bit (51).
#[test]
fn hardware_bits_are_outside_the_mask() {
    assert_eq!(EptEntry::FLAG_MASK & (0b11 << 8), 0);
    assert_eq!(NptEntry::FLAG_MASK & (0b11 << 5), 0);
    assert_eq!(Stage2Entry::FLAG_MASK & (1 << 51), 0);
}
