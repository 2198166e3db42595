//! The quickstart's library body on the built-in config, every sample
//! config, and broken configs. Reports go to a buffer: nothing is printed.

use gpa_types::{GuestPhysAddr, PageSize};
use guest_aspace::gva::GvaFault;
use guest_aspace::{Access, FaultOutcome, RegionKind};
use npt_examples::{Arch, DemoError, Report, VmConfig, run_demo};

const SAMPLES: [(&str, &str, Arch); 3] = [
    (
        "x86_64.toml",
        include_str!("../configs/x86_64.toml"),
        Arch::X86_64,
    ),
    (
        "aarch64.toml",
        include_str!("../configs/aarch64.toml"),
        Arch::Aarch64,
    ),
    (
        "riscv64.toml",
        include_str!("../configs/riscv64.toml"),
        Arch::Riscv64,
    ),
];
const BAD_OVERLAP: &str = include_str!("../configs/bad-overlap.toml");

fn run(cfg: &VmConfig, arch: Option<Arch>) -> (Report, String) {
    let mut out = Vec::new();
    let report = match run_demo(cfg, arch, None, &mut out) {
        Ok(r) => r,
        Err(e) => panic!("{} ({arch:?}): {e}", cfg.name),
    };
    (report, String::from_utf8(out).expect("the report is UTF-8"))
}

/// What every successful run must show, whatever the config and format.
fn check(report: &Report, text: &str) {
    let who = format!("{} on {}", report.arch, report.format);
    for title in [
        "1. Regions",
        "2. Nested page table",
        "3. GPA -> HPA",
        "4. GVA -> GPA",
        "5. Second-stage faults",
        "6. info mem",
    ] {
        assert!(text.contains(title), "{who}: section `{title}` missing");
    }
    assert!(report.stats.table_frames > 0, "{who}");
    assert!(
        report.stats.leaves_of(PageSize::Size2M) > 0,
        "{who}: RAM should use 2 MiB leaves"
    );
    assert!(report.mapped_runs > 0, "{who}");
    assert_eq!(report.leaked_frames, 0, "{who}: frames leaked");

    // GPA -> HPA: the first sample is RAM and translates; one has no region.
    assert!(
        report
            .translations
            .first()
            .is_some_and(|(_, hpa)| hpa.is_some()),
        "{who}"
    );
    assert!(
        report.translations.iter().any(|(_, hpa)| hpa.is_none()),
        "{who}"
    );

    // GVA -> GPA: two pages translate with the rights the demo wrote, the
    // third is not present, and the data reads back through the walk.
    let [kernel, user, unmapped] = report.gva_walks.as_slice() else {
        panic!(
            "{who}: expected three GVA walks, got {:?}",
            report.gva_walks
        );
    };
    let k = kernel.1.as_ref().expect("kernel text translates");
    assert_eq!(k.size, PageSize::Size2M, "{who}");
    assert_eq!(k.perms.bits(), 0b101, "{who}: kernel text is r-x");
    let u = user.1.as_ref().expect("user data translates");
    assert_eq!(u.size, PageSize::Size4K, "{who}");
    assert_eq!(u.perms.bits(), 0b1011, "{who}: user data is rw- user");
    assert!(
        matches!(unmapped.1, Err(GvaFault::NotPresent { .. })),
        "{who}"
    );
    assert_eq!(
        report.greeting.as_deref(),
        Some("hello from guest RAM"),
        "{who}"
    );

    // Faults: lazy RAM fixed, MMIO emulated, ROM write refused, hole unmapped.
    assert!(
        matches!(report.lazy_fault, Some(FaultOutcome::Fixed(_))),
        "{who}: {:?}",
        report.lazy_fault
    );
    assert!(
        matches!(
            report.mmio_fault,
            Some(FaultOutcome::Mmio {
                access: Access::Write,
                ..
            })
        ),
        "{who}: {:?}",
        report.mmio_fault
    );
    assert!(
        matches!(
            report.rom_fault,
            Some(FaultOutcome::Violation {
                access: Access::Write,
                kind: RegionKind::Rom,
                ..
            })
        ),
        "{who}: {:?}",
        report.rom_fault
    );
    assert!(
        matches!(report.unmapped_fault, Some(FaultOutcome::Unmapped { .. })),
        "{who}"
    );
    let lazy = report
        .regions
        .iter()
        .find(|r| r.backing == guest_aspace::Backing::Alloc { lazy: true })
        .expect("a lazy region");
    assert_eq!(
        lazy.populated, 4096,
        "{who}: one page populated by the fault"
    );
}

#[test]
fn default_config_runs_on_x86_64() {
    let cfg = VmConfig::builtin().unwrap();
    let (report, text) = run(&cfg, None);
    assert_eq!(report.arch, Arch::X86_64);
    assert_eq!(report.format, "EPT 4-level");
    assert_eq!(report.regions.len(), 7);
    // The 1 GiB PCI window is one 1 GiB leaf.
    assert_eq!(report.stats.leaves_of(PageSize::Size1G), 1);
    // The pass-through sample maps to itself.
    let passthrough = GuestPhysAddr::from_usize(0x8000_0010);
    assert!(
        report
            .translations
            .iter()
            .any(|(g, h)| *g == passthrough && h.map(|h| h.as_usize()) == Some(0x8000_0010))
    );
    assert!(text.contains("VM \"quickstart-pc\""));
    check(&report, &text);
}

#[test]
fn default_config_runs_on_every_format() {
    let cfg = VmConfig::builtin().unwrap();
    for arch in Arch::ALL {
        let (report, text) = run(&cfg, Some(arch));
        assert_eq!(report.arch, arch);
        check(&report, &text);
    }
}

#[test]
fn each_sample_config_runs_for_its_arch() {
    for (file, text, arch) in SAMPLES {
        let cfg = VmConfig::parse(text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(cfg.arch, Some(arch), "{file}");
        let (report, out) = run(&cfg, None);
        assert_eq!(report.arch, arch, "{file}");
        check(&report, &out);
        // Every sample ships RAM, identical device memory, MMIO and ROM.
        let kinds: Vec<RegionKind> = report.regions.iter().map(|r| r.backing.kind()).collect();
        for kind in [
            RegionKind::Ram,
            RegionKind::Identical,
            RegionKind::Mmio,
            RegionKind::Rom,
        ] {
            assert!(kinds.contains(&kind), "{file}: no {kind:?} region");
        }
        assert!(
            report
                .regions
                .iter()
                .any(|r| r.backing.kind() == RegionKind::Identical
                    && r.flags.contains(gpa_types::MappingFlags::DEVICE)),
            "{file}: no identical device region"
        );
    }
}

#[test]
fn bad_overlap_config_names_the_record() {
    let cfg = VmConfig::parse(BAD_OVERLAP).unwrap();
    let mut out = Vec::new();
    let e = run_demo(&cfg, None, None, &mut out).unwrap_err();
    assert!(matches!(e, DemoError::Build(_)), "{e:?}");
    let msg = e.to_string();
    assert_eq!(
        msg,
        "memory_regions[2]: base_paddr: overlaps the region at 0x0"
    );
    assert!(
        out.is_empty(),
        "nothing is reported for a config that does not build"
    );
}

#[test]
fn bad_records_name_index_and_field() {
    let cases = [
        (
            "[[0x0, 0x1000, 0x7, 0], [0x2000, 0x1800, 0x7, 0]]",
            "memory_regions[1]: size",
        ),
        ("[[0x0, 0x1000, 0x47, 0]]", "memory_regions[0]: flags"),
        (
            "[[0x0, 0x1000, 0x7, 0], [0x3000, 0x1000, 0x7, 9]]",
            "memory_regions[1]: map_type",
        ),
        (
            "[[0x0, 0x1000, 0x7, 0], [0x1001, 0x1000, 0x7, 0]]",
            "memory_regions[1]: base_paddr",
        ),
        (
            "[[0x0, 0x1000, 0x7, 0], [0x2000, 0x1000, 0x7]]",
            "memory_regions[1]: expected 4 values",
        ),
        ("[[0x0, -4096, 0x7, 0]]", "memory_regions[0]: size"),
    ];
    for (records, expected) in cases {
        let text = format!("[kernel]\nmemory_regions = {records}\n");
        let result =
            VmConfig::parse(&text).and_then(|cfg| run_demo(&cfg, None, None, &mut Vec::new()));
        let msg = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with(expected), "{records}: got `{msg}`");
    }
}

#[test]
fn toml_errors_say_where() {
    let e = VmConfig::parse("[kernel]\nmemory_regions = [[0x0, 0x1000 0x7, 0]]\n").unwrap_err();
    assert!(matches!(e, DemoError::Toml(_)));
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn lazy_region_is_placed_when_the_config_names_none() {
    let cfg = VmConfig::parse("[kernel]\nmemory_regions = [[0x4000_0000, 0x100_0000, 0x7, 0]]\n")
        .unwrap();
    assert_eq!(cfg.lazy_ram, None);
    let (report, _) = run(&cfg, Some(Arch::Aarch64));
    let lazy = report
        .regions
        .iter()
        .find(|r| r.backing == guest_aspace::Backing::Alloc { lazy: true })
        .expect("an automatic lazy region");
    assert_eq!(lazy.range.start.as_usize(), 0x4100_0000);
    assert!(matches!(report.lazy_fault, Some(FaultOutcome::Fixed(_))));
    // No ROM and no MMIO in this config: those outcomes are absent.
    assert!(report.rom_fault.is_none() && report.mmio_fault.is_none());
    assert_eq!(report.leaked_frames, 0);
}
