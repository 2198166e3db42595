//! The quickstart on AxVisor-format configs, and the oddities a new user
//! hit in its report.

use npt_examples::{Arch, DemoError, Report, VmConfig, run_demo};

fn run(text: &str, path: Option<&str>) -> Result<(Report, String), DemoError> {
    let cfg = VmConfig::parse(text)?;
    let mut out = Vec::new();
    let report = run_demo(&cfg, None, path, &mut out)?;
    Ok((report, String::from_utf8(out).unwrap()))
}

const ONE_MIB: &str =
    "[kernel]\nentry_point = 0x8000\nmemory_regions = [[0x0, 0x10_0000, 0x7, 0]]\n";

#[test]
fn small_configs_get_no_per_gib_extrapolation() {
    let (_, out) = run(ONE_MIB, None).unwrap();
    let line = out.lines().find(|l| l.contains("table overhead")).unwrap();
    assert!(!line.contains("per GiB"), "{line}");
    assert!(line.contains("mapped ("), "{line}");
}

#[test]
fn one_run_is_singular() {
    let text = "[kernel]\nmemory_regions = []\n[demo]\nlazy_ram = [0x1000_0000, 0x10_0000]\n";
    let (report, out) = run(text, None).unwrap();
    assert_eq!(report.mapped_runs, 1);
    assert!(out.contains("  1 run, 4 KiB mapped"), "{out}");
    assert!(!out.contains("1 runs"), "{out}");
}

#[test]
fn writable_rom_is_refused_clearly() {
    let text = "[kernel]\nmemory_regions = [[0xfff0_0000, 0x10_0000, 0x7, 4]]\n";
    let e = run(text, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "memory_regions[0]: flags: ROM cannot be guest-writable (clear bit1 write)"
    );
}

#[test]
fn entry_point_outside_every_region_is_warned() {
    let text = "[kernel]\nentry_point = 0x8000_0000\nmemory_regions = [[0x0, 0x10_0000, 0x7, 0]]\n";
    let (report, out) = run(text, None).unwrap();
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        out.contains("warning: [kernel] entry_point 0x80000000 is outside every region"),
        "{out}"
    );
    let (report, _) = run(ONE_MIB, None).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn invented_lazy_region_is_labelled() {
    let (report, out) = run(ONE_MIB, None).unwrap();
    let invented: Vec<_> = report
        .sources
        .iter()
        .filter(|(_, s)| s.contains("added by the demo"))
        .collect();
    assert_eq!(invented.len(), 1);
    assert!(
        out.contains("16 MiB added by the demo, not in the config"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.contains("allocated, on fault"))
        .unwrap();
    assert!(
        row.ends_with("added by the demo (not in the config)"),
        "{row}"
    );
    let row = out
        .lines()
        .find(|l| l.contains("allocated, eager"))
        .unwrap();
    assert!(row.ends_with("memory_regions[0]"), "{row}");
}

#[test]
fn arch_is_assumed_with_a_reason_and_overridable() {
    let (report, out) = run(ONE_MIB, None).unwrap();
    assert_eq!(report.arch, Arch::X86_64);
    assert!(out.contains("architecture x86_64: assumed:"), "{out}");
    let (report, _) = run(ONE_MIB, Some("vms/tiny-riscv64.toml")).unwrap();
    assert_eq!(report.arch, Arch::Riscv64);
    let cfg = VmConfig::parse(ONE_MIB).unwrap();
    let r = run_demo(
        &cfg,
        Some(Arch::Aarch64),
        Some("x86_64.toml"),
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(r.arch, Arch::Aarch64);
    assert_eq!(r.arch_reason, "given with --arch");
}

fn sample(name: &str) -> String {
    let path = format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn shipped_axvisor_configs_run_with_their_devices() {
    for (name, arch, devices) in [
        ("axvisor-x86_64.toml", Arch::X86_64, 5),
        ("axvisor-aarch64.toml", Arch::Aarch64, 5),
        ("axvisor-riscv64.toml", Arch::Riscv64, 3),
    ] {
        let text = sample(name);
        assert!(
            !text.contains("\narch"),
            "{name}: AxVisor's files have no arch key"
        );
        let (report, out) = run(&text, Some(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.arch, arch, "{name}");
        assert_eq!(report.leaked_frames, 0, "{name}");
        let from_devices = report
            .sources
            .iter()
            .filter(|(_, s)| s.contains("_devices[") || s.contains("passthrough_addresses["))
            .count();
        assert_eq!(from_devices, devices, "{name}");
        assert!(out.contains("[devices]: "), "{name}");
        assert!(report.warnings.is_empty(), "{name}: {:?}", report.warnings);
    }
}

#[test]
fn bad_device_sample_names_section_index_and_field() {
    let e = run(&sample("bad-device.toml"), Some("bad-device.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "[devices] emu_devices[1]: length: 0x200 is not a multiple of 4 KiB"
    );
}
