//! Short human-readable renderings of sizes, flags and outcomes for the
//! report.

use gpa_types::{MappingFlags, PageSize};
use guest_aspace::gva::GuestPerms;
use guest_aspace::{Backing, FaultOutcome, RegionKind};
use npt_table::TlbFlush;

const KIB: u128 = 1 << 10;

/// `bytes` in the largest binary unit that divides it, or to one decimal:
/// `256 MiB`, `60 KiB`, `751.9 MiB`.
pub fn size(bytes: u128) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scale = 1u128;
    while unit + 1 < UNITS.len() && bytes >= scale * KIB {
        scale *= KIB;
        unit += 1;
    }
    if bytes % scale == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// A page size: `4K`, `2M`, `1G`, `512G`.
pub fn page(size: PageSize) -> &'static str {
    match size {
        PageSize::Size4K => "4K",
        PageSize::Size2M => "2M",
        PageSize::Size1G => "1G",
        PageSize::Size512G => "512G",
    }
}

/// Second-stage rights as `rwx` with `-` for what is missing, then the
/// memory type if not write-back: `rw- dev`, `r-x`.
pub fn flags(f: MappingFlags) -> String {
    let bit = |flag, c| if f.contains(flag) { c } else { '-' };
    let mut s: String = [
        bit(MappingFlags::READ, 'r'),
        bit(MappingFlags::WRITE, 'w'),
        bit(MappingFlags::EXECUTE, 'x'),
    ]
    .into_iter()
    .collect();
    if f.contains(MappingFlags::DEVICE) {
        s.push_str(" dev");
    } else if f.contains(MappingFlags::UNCACHED) {
        s.push_str(" uc");
    }
    s
}

/// First-stage rights as the guest's entries grant them: supervisor `rwx`,
/// then `user` (data) and `user-x` when present.
pub fn perms(p: GuestPerms) -> String {
    let bit = |flag, c| if p.contains(flag) { c } else { '-' };
    let mut s: String = [
        bit(GuestPerms::READ, 'r'),
        bit(GuestPerms::WRITE, 'w'),
        bit(GuestPerms::EXECUTE, 'x'),
    ]
    .into_iter()
    .collect();
    if p.contains(GuestPerms::USER) {
        s.push_str(" user");
    }
    if p.contains(GuestPerms::USER_EXECUTE) {
        s.push_str(" user-x");
    }
    s
}

/// The kind of a region, one word.
pub fn kind(k: RegionKind) -> &'static str {
    match k {
        RegionKind::Ram => "RAM",
        RegionKind::Identical => "identical",
        RegionKind::Linear => "linear",
        RegionKind::Mmio => "MMIO",
        RegionKind::Rom => "ROM",
    }
}

/// What backs a region, in a few words.
pub fn backing(b: Backing) -> String {
    match b {
        Backing::Alloc { lazy: false } => "allocated, eager".into(),
        Backing::Alloc { lazy: true } => "allocated, on fault".into(),
        Backing::AllocIdentical => "allocated at GPA == HPA".into(),
        Backing::Identical => "pass-through GPA == HPA".into(),
        Backing::Linear { hpa } => format!("pass-through to {:#x}", hpa.as_usize()),
        Backing::Mmio { passthrough: None } => "unmapped, emulated".into(),
        Backing::Mmio {
            passthrough: Some(hpa),
        } => format!("device at {:#x}", hpa.as_usize()),
        Backing::Rom => "allocated, read-only".into(),
    }
}

/// What a TLB-flush record asks for.
pub fn flush(f: &TlbFlush) -> String {
    if f.is_all() {
        return "flush the whole VM's TLB".into();
    }
    if f.is_empty() {
        return "nothing to flush (no stale translation existed)".into();
    }
    let ranges: Vec<String> = f
        .ranges()
        .map(|r| format!("[{:#x}, {:#x})", r.start.as_usize(), r.end.as_usize()))
        .collect();
    format!("flush {}", ranges.join(", "))
}

/// A fault outcome and what the hypervisor does next.
pub fn outcome(o: &FaultOutcome) -> String {
    match o {
        FaultOutcome::Fixed(f) => format!("Fixed: resume the guest; {}", flush(f)),
        FaultOutcome::Mmio { gpa, access } => format!(
            "Mmio: emulate the {access:?} at {:#x} in the device model",
            gpa.as_usize()
        ),
        FaultOutcome::Violation {
            gpa,
            access,
            kind: k,
        } => format!(
            "Violation: {access:?} at {:#x} not allowed in {} region; inject an abort",
            gpa.as_usize(),
            kind(*k)
        ),
        FaultOutcome::Unmapped { gpa } => {
            format!(
                "Unmapped: no region at {:#x}; inject a bus error",
                gpa.as_usize()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(256 << 20), "256 MiB");
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(0x2eff_0000), "751.9 MiB");
        assert_eq!(size(1 << 48), "256 TiB");
    }

    #[test]
    fn flag_strings() {
        let rw = MappingFlags::READ | MappingFlags::WRITE;
        assert_eq!(flags(rw | MappingFlags::DEVICE), "rw- dev");
        assert_eq!(flags(MappingFlags::READ | MappingFlags::EXECUTE), "r-x");
        assert_eq!(
            perms(GuestPerms::READ | GuestPerms::WRITE | GuestPerms::USER),
            "rw- user"
        );
    }
}
