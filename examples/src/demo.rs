//! The quickstart's body, written once for every table format.

use std::io::Write;
use std::time::Instant;

use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, GuestVirtAddr, MappingFlags, PageSize};
use guest_aspace::gva::{self, GvaFault, GvaTranslation};
use guest_aspace::{
    Access, AspaceError, Backing, ConfigOptions, FaultOutcome, GuestAddrSpace, RegionInfo,
};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, HostFrameAllocator, MappedRun, NptError, TableStats};

use crate::config::{Arch, VmConfig};
use crate::error::DemoError;
use crate::guest_pt::{self, GuestTables};
use crate::show;

const MIB: usize = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// Size of the lazy region placed when the config names none.
const AUTO_LAZY_SIZE: usize = 16 * MIB;
/// Where the guest page tables go in RAM, and how much room they get.
const GUEST_TABLES_OFFSET: usize = 0x1_0000;
const GUEST_TABLES_LEN: usize = 0x1_0000;
/// The guest's kernel image: one 2 MiB page at this GVA.
const KERNEL_GVA: u64 = 0xffff_ffff_8000_0000;
/// The guest's user data: one 4 KiB page at this GVA.
const USER_GVA: u64 = 0x40_0000;
/// What the demo leaves in the user page for the GVA read-back.
const GREETING: &[u8] = b"hello from guest RAM";
/// Runs of one region shown by the `info mem` dump before summarizing.
const RUNS_SHOWN: usize = 4;

/// What a run of the demo found, for tests and callers that want more than
/// the printed report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The architecture the space was built for.
    pub arch: Arch,
    /// Why that architecture (given, from the config, or assumed from a hint).
    pub arch_reason: String,
    /// Where each region came from, by its start: `memory_regions[i]`,
    /// `[devices] LIST[i] "name"`, or the demo's own lazy RAM.
    pub sources: Vec<(GuestPhysAddr, String)>,
    /// Warnings about the config (e.g. an entry point outside every region).
    pub warnings: Vec<String>,
    /// The nested-table format's name.
    pub format: &'static str,
    /// The regions, in GPA order, after the fault section ran.
    pub regions: Vec<RegionInfo>,
    /// Table statistics after the space was built (before faults).
    pub stats: TableStats,
    /// The sample GPAs and whether each translated.
    pub translations: Vec<(GuestPhysAddr, Option<gpa_types::HostPhysAddr>)>,
    /// The GVA walks: address and result. Empty when no RAM could hold the
    /// guest page table.
    pub gva_walks: Vec<(GuestVirtAddr, Result<GvaTranslation, GvaFault>)>,
    /// The string read back through the guest's own translation.
    pub greeting: Option<String>,
    /// Outcome of the first write to the lazy region.
    pub lazy_fault: Option<FaultOutcome>,
    /// Outcome of a write to the first emulated MMIO region.
    pub mmio_fault: Option<FaultOutcome>,
    /// Outcome of a guest write to the first ROM region.
    pub rom_fault: Option<FaultOutcome>,
    /// Outcome of a read where no region is.
    pub unmapped_fault: Option<FaultOutcome>,
    /// Mapped runs the `info mem` dump found.
    pub mapped_runs: usize,
    /// Frames still allocated after the space was dropped (0: nothing leaked).
    pub leaked_frames: usize,
}

/// The first region whose backing matches.
fn first(regions: &[RegionInfo], pred: impl Fn(&Backing) -> bool) -> Option<RegionInfo> {
    regions.iter().find(|r| pred(&r.backing)).copied()
}

/// The largest eager RAM region.
fn main_ram(regions: &[RegionInfo]) -> Option<RegionInfo> {
    regions
        .iter()
        .filter(|r| r.backing == Backing::Alloc { lazy: false })
        .max_by_key(|r| r.range.size())
        .copied()
}

/// The first GPA at or above `from` that no region covers, if inside the
/// window.
fn first_hole(regions: &[RegionInfo], window: GuestPhysAddrRange, from: usize) -> Option<usize> {
    let mut pos = from;
    for r in regions {
        let (s, e) = (r.range.start.as_usize(), r.range.end.as_usize());
        if e <= pos {
            continue;
        }
        if s > pos {
            break;
        }
        pos = e;
    }
    (pos < window.end.as_usize()).then_some(pos)
}

/// `start` rounded up to `align` (a power of two).
fn align_up(start: usize, align: usize) -> usize {
    (start + align - 1) & !(align - 1)
}

fn section(out: &mut dyn Write, n: u32, title: &str) -> std::io::Result<()> {
    let head = format!("== {n}. {title} ");
    writeln!(out)?;
    writeln!(out, "{head:=<78}")
}

/// Builds a space of format `F` from `cfg`, runs the demo on it and prints
/// the report to `out`.
pub fn run<F: NptFormat>(
    cfg: &VmConfig,
    arch: Arch,
    arch_reason: &str,
    out: &mut dyn Write,
) -> Result<Report, DemoError> {
    let alloc = HostFrameAllocator::new();
    let window =
        GuestPhysAddrRange::from_start_size(GuestPhysAddr::from_usize(0), F::GPA_LIMIT as usize);

    let started = Instant::now();
    let (mut space, flush) = GuestAddrSpace::<F, _>::from_vm_config(
        &alloc,
        window,
        &cfg.memory_regions,
        &cfg.devices,
        ConfigOptions::default(),
    )
    .map_err(DemoError::Build)?;
    // The VM has never run, so no TLB can hold a stale translation yet.
    flush.ignore();
    let lazy = add_lazy_ram(&mut space, cfg)?;
    let lazy_base = lazy.map(|(base, _)| base);
    let built = started.elapsed();
    let sources = sources(cfg, lazy);
    let warnings = warnings(&space, cfg);

    writeln!(
        out,
        "npt quickstart: VM \"{}\" ({arch}, {})",
        cfg.name,
        F::NAME
    )?;
    writeln!(
        out,
        "  architecture {arch}: {arch_reason} (--arch overrides)"
    )?;
    writeln!(
        out,
        "  guest-physical window [{:#x}, {:#x}) = {}, nested root at HPA {:#x}",
        window.start.as_usize(),
        window.end.as_usize(),
        show::size(window.size() as u128),
        space.root_hpa().as_usize()
    )?;
    writeln!(
        out,
        "  built {} regions in {:.1} ms ({} host frames allocated, zeroed)",
        space.regions().count(),
        built.as_secs_f64() * 1e3,
        alloc.live_frames()
    )?;
    match lazy {
        Some((base, LazySource::Config)) => writeln!(
            out,
            "  lazy RAM at {base:#x} from [demo] lazy_ram (no frames until the guest touches it)"
        )?,
        Some((base, LazySource::Invented)) => writeln!(
            out,
            "  lazy RAM at {base:#x}: 16 MiB added by the demo, not in the config, to show a fault filling a page"
        )?,
        None => {}
    }
    for w in &warnings {
        writeln!(out, "  warning: {w}")?;
    }
    writeln!(
        out,
        "  (host frames come from HostFrameAllocator: an HPA here is a host heap address)"
    )?;

    print_regions(&space, &sources, out)?;
    print_devices(&space, cfg, out)?;
    let stats = space.table_stats();
    print_stats(&space, out)?;
    let translations = print_translations(&space, cfg, out)?;
    let (gva_walks, greeting) = print_gva(&mut space, arch, out)?;
    let faults = print_faults(&mut space, arch, lazy_base, out)?;
    let mapped_runs = print_info_mem(&space, out)?;
    writeln!(out, "  statistics (SpaceStats's Display):")?;
    for line in space.stats().to_string().lines() {
        writeln!(out, "    {line}")?;
    }
    let regions: Vec<RegionInfo> = space.regions().collect();

    drop(space);
    let leaked_frames = alloc.live_frames();
    writeln!(out)?;
    writeln!(
        out,
        "Teardown: space dropped, {} of {} frames ever allocated still live.",
        leaked_frames,
        alloc.total_frames()
    )?;

    Ok(Report {
        arch,
        arch_reason: arch_reason.to_string(),
        sources,
        warnings,
        format: F::NAME,
        regions,
        stats,
        translations,
        gva_walks,
        greeting,
        lazy_fault: faults[0].clone(),
        mmio_fault: faults[1].clone(),
        rom_fault: faults[2].clone(),
        unmapped_fault: faults[3].clone(),
        mapped_runs,
        leaked_frames,
    })
}

/// Where the demo's lazy RAM came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LazySource {
    /// `[demo] lazy_ram` of the config.
    Config,
    /// Not in the config: 16 MiB the demo placed above the highest region.
    Invented,
}

/// Adds the config's lazy RAM, or 16 MiB above the highest region; returns
/// its base and where it came from.
fn add_lazy_ram<F: NptFormat, A: FrameAllocator>(
    space: &mut GuestAddrSpace<F, A>,
    cfg: &VmConfig,
) -> Result<Option<(usize, LazySource)>, DemoError> {
    let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
    let (base, size, source) = match cfg.lazy_ram {
        Some((base, size)) => {
            let (Ok(base), Ok(size)) = (usize::try_from(base), usize::try_from(size)) else {
                return Err(DemoError::LazyRam(AspaceError::OutsideWindow {
                    gpa: GuestPhysAddr::from_usize(0),
                    len: 0,
                }));
            };
            (base, size, LazySource::Config)
        }
        None => {
            let top = space
                .regions()
                .map(|r| r.range.end.as_usize())
                .max()
                .unwrap_or(0);
            let base = align_up(top, 2 * MIB);
            if base as u64 + AUTO_LAZY_SIZE as u64 > F::GPA_LIMIT {
                return Ok(None);
            }
            (base, AUTO_LAZY_SIZE, LazySource::Invented)
        }
    };
    space
        .add_ram(GuestPhysAddr::from_usize(base), size, rwx, true)
        .map_err(DemoError::LazyRam)?
        // The VM has not run: nothing to flush.
        .ignore();
    Ok(Some((base, source)))
}

/// Where each region comes from, by its start.
fn sources(cfg: &VmConfig, lazy: Option<(usize, LazySource)>) -> Vec<(GuestPhysAddr, String)> {
    let mut out = Vec::new();
    for (i, r) in cfg.memory_regions.iter().enumerate() {
        out.push((
            GuestPhysAddr::from_usize(r[0] as usize),
            format!("memory_regions[{i}]"),
        ));
    }
    let d = &cfg.devices;
    for (i, dev) in d.passthrough_devices.iter().enumerate() {
        out.push((
            GuestPhysAddr::from_usize(dev.base_gpa as usize),
            format!("passthrough_devices[{i}] \"{}\"", dev.name),
        ));
    }
    for (i, dev) in d.passthrough_addresses.iter().enumerate() {
        out.push((
            GuestPhysAddr::from_usize(dev.base_gpa as usize),
            format!("passthrough_addresses[{i}]"),
        ));
    }
    for (i, dev) in d.emu_devices.iter().enumerate() {
        out.push((
            GuestPhysAddr::from_usize(dev.base_gpa as usize),
            format!("emu_devices[{i}] \"{}\"", dev.name),
        ));
    }
    match lazy {
        Some((base, LazySource::Config)) => {
            out.push((GuestPhysAddr::from_usize(base), "[demo] lazy_ram".into()))
        }
        Some((base, LazySource::Invented)) => out.push((
            GuestPhysAddr::from_usize(base),
            "added by the demo (not in the config)".into(),
        )),
        None => {}
    }
    out
}

/// Things in the config that are legal but probably not meant.
fn warnings<F: NptFormat, A: FrameAllocator>(
    space: &GuestAddrSpace<F, A>,
    cfg: &VmConfig,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(entry) = cfg.entry_point {
        let inside = usize::try_from(entry)
            .ok()
            .and_then(|e| space.find_region(GuestPhysAddr::from_usize(e)));
        match inside {
            None => out.push(format!(
                "[kernel] entry_point {entry:#x} is outside every region: the guest's first fetch would fault"
            )),
            Some(r) if !r.flags.contains(MappingFlags::EXECUTE) => out.push(format!(
                "[kernel] entry_point {entry:#x} is in a region without execute permission ({})",
                show::flags(r.flags)
            )),
            Some(_) => {}
        }
    }
    out
}

fn print_regions<F: NptFormat, A: FrameAllocator>(
    space: &GuestAddrSpace<F, A>,
    sources: &[(GuestPhysAddr, String)],
    out: &mut dyn Write,
) -> Result<(), DemoError> {
    section(out, 1, "Regions")?;
    writeln!(
        out,
        "  {:<2} {:<29} {:>10}  {:<9} {:<24} {:<7} {:>10}  from",
        "#", "GPA range", "size", "kind", "backing", "flags", "populated"
    )?;
    for (i, r) in space.regions().enumerate() {
        let range = format!(
            "{:#x}-{:#x}",
            r.range.start.as_usize(),
            r.range.end.as_usize()
        );
        let from = sources
            .iter()
            .find(|(start, _)| *start == r.range.start)
            .map_or("?", |(_, s)| s.as_str());
        writeln!(
            out,
            "  {:<2} {:<29} {:>10}  {:<9} {:<24} {:<7} {:>10}  {}",
            i,
            range,
            show::size(r.range.size() as u128),
            show::kind(r.backing.kind()),
            show::backing(r.backing),
            show::flags(r.flags),
            show::size(r.populated as u128),
            from,
        )?;
    }
    Ok(())
}

/// The `[devices]` table and what each record became.
fn print_devices<F: NptFormat, A: FrameAllocator>(
    space: &GuestAddrSpace<F, A>,
    cfg: &VmConfig,
    out: &mut dyn Write,
) -> Result<(), DemoError> {
    let d = &cfg.devices;
    if d.is_empty() {
        writeln!(out, "  [devices]: none in the config")?;
        return Ok(());
    }
    writeln!(
        out,
        "  [devices]: {} pass-through device(s), {} pass-through address range(s), {} emulated device(s)",
        d.passthrough_devices.len(),
        d.passthrough_addresses.len(),
        d.emu_devices.len()
    )?;
    let became = |gpa: u64| {
        space
            .find_region(GuestPhysAddr::from_usize(gpa as usize))
            .map_or("?".to_string(), |r| show::backing(r.backing))
    };
    for (i, dev) in d.passthrough_devices.iter().enumerate() {
        writeln!(
            out,
            "    passthrough_devices[{i}]   {:<22} GPA {:#x}+{:#x} -> HPA {:#x}, irq {}: {}",
            format!("\"{}\"", dev.name),
            dev.base_gpa,
            dev.length,
            dev.base_hpa,
            dev.irq,
            became(dev.base_gpa)
        )?;
    }
    for (i, dev) in d.passthrough_addresses.iter().enumerate() {
        writeln!(
            out,
            "    passthrough_addresses[{i}] {:<22} GPA {:#x}+{:#x}: {}",
            "",
            dev.base_gpa,
            dev.length,
            became(dev.base_gpa)
        )?;
    }
    for (i, dev) in d.emu_devices.iter().enumerate() {
        writeln!(
            out,
            "    emu_devices[{i}]           {:<22} GPA {:#x}+{:#x}, irq {}, emu_type {:#x}, config {:?}: {}",
            format!("\"{}\"", dev.name),
            dev.base_gpa,
            dev.length,
            dev.irq,
            dev.emu_type,
            dev.config,
            became(dev.base_gpa)
        )?;
    }
    Ok(())
}

fn print_stats<F: NptFormat, A: FrameAllocator>(
    space: &GuestAddrSpace<F, A>,
    out: &mut dyn Write,
) -> Result<(), DemoError> {
    section(out, 2, &format!("Nested page table ({})", F::NAME))?;
    let s = space.table_stats();
    let table_bytes = (s.table_frames * npt_table::FRAME_SIZE) as u128;
    let mapped = s.mapped_bytes();
    writeln!(
        out,
        "  table frames     {} ({}; root {} frame(s), {} levels)",
        s.table_frames,
        show::size(table_bytes),
        F::ROOT_FRAMES,
        F::LEVELS
    )?;
    for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
        let n = s.leaves_of(size);
        writeln!(
            out,
            "  {:>2} leaves       {:<6} mapping {}",
            show::page(size),
            n,
            show::size(n as u128 * size.bytes() as u128)
        )?;
    }
    writeln!(out, "  mapped           {}", show::size(mapped))?;
    if mapped > 0 {
        // The root and the upper levels cost the same for 1 MiB as for
        // 1 GiB: a per-GiB rate from a small space would be mostly that
        // fixed cost, so it is given only from 1 GiB mapped up.
        let pct = table_bytes as f64 * 100.0 / mapped as f64;
        if mapped as f64 >= GIB {
            let per_gib = table_bytes as f64 / (mapped as f64 / GIB);
            writeln!(
                out,
                "  table overhead   {} ({pct:.3}% of mapped), {} per GiB (4K-only would need >= 2 MiB per GiB)",
                show::size(table_bytes),
                show::size(per_gib.round() as u128)
            )?;
        } else {
            writeln!(
                out,
                "  table overhead   {} for {} mapped ({pct:.3}%; mostly the fixed cost of the upper levels)",
                show::size(table_bytes),
                show::size(mapped)
            )?;
        }
    }
    Ok(())
}

fn print_translations<F: NptFormat, A: FrameAllocator>(
    space: &GuestAddrSpace<F, A>,
    cfg: &VmConfig,
    out: &mut dyn Write,
) -> Result<Vec<(GuestPhysAddr, Option<gpa_types::HostPhysAddr>)>, DemoError> {
    section(out, 3, "GPA -> HPA")?;
    let regions: Vec<RegionInfo> = space.regions().collect();
    let mut samples: Vec<(usize, String)> = Vec::new();
    let ram = main_ram(&regions);
    if let Some(r) = ram {
        let (s, len) = (r.range.start.as_usize(), r.range.size());
        samples.push((s + 0x1234, "RAM".into()));
        samples.push((s + len / 2 + 0xabc, "RAM, middle".into()));
    }
    if let Some(e) = cfg.entry_point {
        samples.push((e as usize, "kernel entry point".into()));
    }
    let passthrough = |b: &Backing| {
        matches!(
            b,
            Backing::Identical
                | Backing::Linear { .. }
                | Backing::Mmio {
                    passthrough: Some(_)
                }
        )
    };
    if let Some(r) = first(&regions, passthrough) {
        samples.push((r.range.start.as_usize() + 0x10, "pass-through".into()));
    }
    if let Some(r) = first(&regions, |b| *b == Backing::Rom) {
        samples.push((r.range.start.as_usize(), "ROM".into()));
    }
    if let Some(r) = first(&regions, |b| *b == Backing::Mmio { passthrough: None }) {
        samples.push((r.range.start.as_usize(), "emulated MMIO".into()));
    }
    if let Some(r) = first(&regions, |b| *b == Backing::Alloc { lazy: true }) {
        samples.push((r.range.start.as_usize(), "lazy RAM".into()));
    }
    let from = ram.map_or(0, |r| r.range.end.as_usize());
    if let Some(hole) = first_hole(&regions, space.window(), from) {
        samples.push((hole, "no region".into()));
    }

    writeln!(
        out,
        "  {:<20} {:<18} {:<16} {:<4} {:<7} kind",
        "what", "GPA", "HPA", "page", "flags"
    )?;
    let mut results = Vec::new();
    for (gpa, what) in samples {
        let g = GuestPhysAddr::from_usize(gpa);
        match space.query(g) {
            Ok(info) => {
                writeln!(
                    out,
                    "  {:<20} {:<18} {:<16} {:<4} {:<7} {}",
                    what,
                    format!("{gpa:#x}"),
                    format!("{:#x}", info.hpa.as_usize()),
                    show::page(info.page_size),
                    show::flags(info.flags),
                    show::kind(info.kind)
                )?;
                results.push((g, Some(info.hpa)));
            }
            Err(e) => {
                let why = match e {
                    AspaceError::NoRegion { .. } => {
                        "not mapped: no region (a guest access faults)".to_string()
                    }
                    AspaceError::Table(NptError::NotMapped { .. }) => match space.find_region(g) {
                        Some(r) if r.backing == (Backing::Alloc { lazy: true }) => {
                            "not populated yet: the first touch faults and allocates".to_string()
                        }
                        Some(r) => format!(
                            "not mapped: {} region, accesses exit to the hypervisor",
                            show::kind(r.backing.kind())
                        ),
                        None => "not mapped".to_string(),
                    },
                    other => other.to_string(),
                };
                writeln!(out, "  {:<20} {:<18} {why}", what, format!("{gpa:#x}"))?;
                results.push((g, None));
            }
        }
    }
    if let Some((g, Some(hpa))) = results.first() {
        let back = space.hpa_to_gpa(*hpa);
        writeln!(
            out,
            "  reverse: hpa_to_gpa({:#x}) = {}",
            hpa.as_usize(),
            back.map_or("none".to_string(), |b| format!(
                "{:#x}{}",
                b.as_usize(),
                if b == *g { " (round trip ok)" } else { "" }
            ))
        )?;
    }
    Ok(results)
}

type GvaResults = (
    Vec<(GuestVirtAddr, Result<GvaTranslation, GvaFault>)>,
    Option<String>,
);

fn print_gva<F: NptFormat, A: FrameAllocator>(
    space: &mut GuestAddrSpace<F, A>,
    arch: Arch,
    out: &mut dyn Write,
) -> Result<GvaResults, DemoError> {
    section(out, 4, "GVA -> GPA through the guest's own page table")?;
    let regions: Vec<RegionInfo> = space.regions().collect();
    let two_mib = PageSize::Size2M.bytes();
    let layout = main_ram(&regions).and_then(|r| {
        let (start, end) = (r.range.start.as_usize(), r.range.end.as_usize());
        let tables = start + GUEST_TABLES_OFFSET;
        let kernel = align_up(tables + GUEST_TABLES_LEN, two_mib);
        let data = kernel + two_mib + 0x3000;
        (data + PageSize::Size4K.bytes() <= end).then_some((tables, kernel, data))
    });
    let Some((tables_at, kernel_page, data_page)) = layout else {
        writeln!(
            out,
            "  skipped: no eager RAM region large enough for the guest's tables and pages"
        )?;
        return Ok((Vec::new(), None));
    };

    let mut pt = GuestTables::new(space, arch, tables_at, GUEST_TABLES_LEN)?;
    pt.map(
        space,
        KERNEL_GVA,
        kernel_page,
        PageSize::Size2M,
        guest_pt::Access::KernelText,
    )?;
    pt.map(
        space,
        USER_GVA,
        data_page,
        PageSize::Size4K,
        guest_pt::Access::UserData,
    )?;
    space
        .write(GuestPhysAddr::from_usize(data_page + 0x10), GREETING)
        .map_err(|error| DemoError::Step {
            step: "writing guest data",
            error,
        })?;
    let (count, first_table, end) = pt.footprint();
    writeln!(out, "  regime   {}", pt.describe())?;
    writeln!(
        out,
        "  the demo wrote {count} tables ({}) at GPA {first_table:#x}-{end:#x} with GuestAddrSpace::write_u64",
        show::size((end - first_table) as u128)
    )?;
    writeln!(
        out,
        "  {:<20} {:<20} {:<12} {:<4} {:<5} {:<9} HPA",
        "what", "GVA", "GPA", "page", "level", "perms"
    )?;

    let paging = pt.paging();
    let samples = [
        (KERNEL_GVA + 0x12_3456, "kernel text"),
        (USER_GVA + 0x10, "user data"),
        (USER_GVA + 0x1000, "unmapped"),
    ];
    let mut walks = Vec::new();
    let mut greeting = None;
    for (gva, what) in samples {
        let v = GuestVirtAddr::from_usize(gva as usize);
        let result = gva::walk(&*space, &paging, v);
        match &result {
            Ok(t) => {
                let hpa = space
                    .translate(t.gpa)
                    .map_or("unmapped".to_string(), |h| format!("{:#x}", h.as_usize()));
                writeln!(
                    out,
                    "  {:<20} {:<20} {:<12} {:<4} {:<5} {:<9} {}",
                    what,
                    format!("{gva:#x}"),
                    format!("{:#x}", t.gpa.as_usize()),
                    show::page(t.size),
                    t.level,
                    show::perms(t.perms),
                    hpa
                )?;
                if what == "user data" {
                    let mut buf = [0u8; GREETING.len()];
                    if space.read(t.gpa, &mut buf).is_ok() {
                        greeting = Some(String::from_utf8_lossy(&buf).into_owned());
                    }
                }
            }
            Err(fault) => writeln!(
                out,
                "  {:<20} {:<20} fault: {fault}",
                what,
                format!("{gva:#x}")
            )?,
        }
        walks.push((v, result));
    }
    if let Some(g) = &greeting {
        writeln!(out, "  read through GVA {:#x}: \"{g}\"", USER_GVA + 0x10)?;
    }
    Ok((walks, greeting))
}

/// A tiny firmware image per architecture: an endless loop at the reset
/// vector, and where it goes in the ROM.
fn firmware(arch: Arch, rom: &RegionInfo) -> (usize, &'static [u8], &'static str) {
    let (start, end) = (rom.range.start.as_usize(), rom.range.end.as_usize());
    match arch {
        // At the x86 reset vector (16 bytes below 4 GiB when the ROM ends
        // there): `jmp $` (EB FE).
        Arch::X86_64 => (end - 16, &[0xeb, 0xfe], "jmp $"),
        // `b .` (0x14000000), little-endian.
        Arch::Aarch64 => (start, &[0x00, 0x00, 0x00, 0x14], "b ."),
        // `j .` (jal x0, 0 = 0x0000006f), little-endian.
        Arch::Riscv64 => (start, &[0x6f, 0x00, 0x00, 0x00], "j ."),
    }
}

fn print_faults<F: NptFormat, A: FrameAllocator>(
    space: &mut GuestAddrSpace<F, A>,
    arch: Arch,
    lazy_base: Option<usize>,
    out: &mut dyn Write,
) -> Result<[Option<FaultOutcome>; 4], DemoError> {
    section(out, 5, "Second-stage faults (handle_fault)")?;
    let step = |step| move |error| DemoError::Step { step, error };
    let regions: Vec<RegionInfo> = space.regions().collect();
    let mut outcomes: [Option<FaultOutcome>; 4] = Default::default();

    // Lazy RAM: the first touch allocates one zeroed 4 KiB frame.
    if let Some(base) = lazy_base {
        let gpa = GuestPhysAddr::from_usize(base + 0x5008);
        let before = space.find_region(gpa).map_or(0, |r| r.populated);
        let o = space
            .handle_fault(gpa, Access::Write)
            .map_err(step("lazy fault"))?;
        let after = space.find_region(gpa).map_or(0, |r| r.populated);
        writeln!(out, "  write to lazy RAM at {:#x}", gpa.as_usize())?;
        writeln!(out, "    -> {}", show::outcome(&o))?;
        let hpa = space
            .translate(gpa)
            .map_or("unmapped".into(), |h| format!("{:#x}", h.as_usize()));
        writeln!(
            out,
            "    region populated {} -> {}; the GPA now maps HPA {hpa}",
            show::size(before as u128),
            show::size(after as u128)
        )?;
        outcomes[0] = Some(o);
    }

    // Emulated MMIO: the space tells the hypervisor to emulate.
    if let Some(r) = first(&regions, |b| *b == Backing::Mmio { passthrough: None }) {
        let gpa = GuestPhysAddr::from_usize(r.range.start.as_usize());
        let o = space
            .handle_fault(gpa, Access::Write)
            .map_err(step("MMIO fault"))?;
        writeln!(out, "  write to MMIO at {:#x}", gpa.as_usize())?;
        writeln!(out, "    -> {}", show::outcome(&o))?;
        outcomes[1] = Some(o);
    }

    // ROM: the host loads it; a guest write is a violation.
    if let Some(rom) = first(&regions, |b| *b == Backing::Rom) {
        let (at, image, asm) = firmware(arch, &rom);
        let at = GuestPhysAddr::from_usize(at);
        space
            .load_image(at, image)
            .map_err(step("loading the ROM image"))?;
        let mut check = vec![0u8; image.len()];
        space
            .read(at, &mut check)
            .map_err(step("reading the ROM back"))?;
        writeln!(
            out,
            "  loaded firmware `{asm}` ({} bytes) at {:#x} with load_image; read back {}",
            image.len(),
            at.as_usize(),
            if check == image { "ok" } else { "MISMATCH" }
        )?;
        let host_write = space.write(at, &[0]);
        writeln!(
            out,
            "    host write through write(): {}",
            host_write.map_or_else(|e| format!("refused: {e}"), |()| "accepted".into())
        )?;
        let o = space
            .handle_fault(at, Access::Write)
            .map_err(step("ROM fault"))?;
        writeln!(out, "  guest write to ROM at {:#x}", at.as_usize())?;
        writeln!(out, "    -> {}", show::outcome(&o))?;
        outcomes[2] = Some(o);
    }

    // Nothing there at all.
    let from = main_ram(&regions).map_or(0, |r| r.range.end.as_usize());
    if let Some(hole) = first_hole(&regions, space.window(), from) {
        let gpa = GuestPhysAddr::from_usize(hole);
        let o = space
            .handle_fault(gpa, Access::Read)
            .map_err(step("unmapped fault"))?;
        writeln!(out, "  read at {:#x}", gpa.as_usize())?;
        writeln!(out, "    -> {}", show::outcome(&o))?;
        outcomes[3] = Some(o);
    }
    Ok(outcomes)
}

fn print_info_mem<F: NptFormat, A: FrameAllocator>(
    space: &GuestAddrSpace<F, A>,
    out: &mut dyn Write,
) -> Result<usize, DemoError> {
    section(out, 6, "info mem: mapped runs (for_each_mapping)")?;
    let window = space.window();
    let mut runs: Vec<MappedRun> = Vec::new();
    space
        .table()
        .for_each_mapping(window.start, window.size(), |run| runs.push(run))
        .map_err(|e| DemoError::Step {
            step: "listing mappings",
            error: e.into(),
        })?;
    writeln!(
        out,
        "  {:<29} {:<16} {:>10}  {:<7} largest page",
        "GPA range", "HPA", "size", "flags"
    )?;
    // Group runs by region so that RAM backed by many separate host
    // allocations does not flood the screen.
    let mut i = 0;
    while i < runs.len() {
        let region = space.find_region(runs[i].gpa).map(|r| r.range.start);
        let mut j = i;
        while j < runs.len() && space.find_region(runs[j].gpa).map(|r| r.range.start) == region {
            j += 1;
        }
        let group = &runs[i..j];
        for run in group.iter().take(RUNS_SHOWN) {
            let range = format!(
                "{:#x}-{:#x}",
                run.gpa.as_usize(),
                run.gpa.as_usize() + run.len
            );
            writeln!(
                out,
                "  {:<29} {:<16} {:>10}  {:<7} {}",
                range,
                format!("{:#x}", run.hpa.as_usize()),
                show::size(run.len as u128),
                show::flags(run.flags),
                show::page(run.max_page)
            )?;
        }
        if group.len() > RUNS_SHOWN {
            let rest = &group[RUNS_SHOWN..];
            let bytes: usize = rest.iter().map(|r| r.len).sum();
            writeln!(
                out,
                "  ... {} more run{} in this region ({}), each a separate host allocation",
                rest.len(),
                if rest.len() == 1 { "" } else { "s" },
                show::size(bytes as u128)
            )?;
        }
        i = j;
    }
    let total: usize = runs.iter().map(|r| r.len).sum();
    writeln!(
        out,
        "  {} run{}, {} mapped",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        show::size(total as u128)
    )?;
    Ok(runs.len())
}
