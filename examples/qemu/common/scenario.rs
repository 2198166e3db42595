//! The test scenario both hypervisors run: build a guest address space with
//! the library exactly as a user would, run the guest, handle its exits with
//! `handle_fault`, unmap a page, and check every step against the tables.
//!
//! The architecture part (`crate::arch`) supplies a [`Vcpu`]: entering the
//! guest, decoding its exits, skipping an instruction and turning a
//! [`TlbFlush`] record into TLB maintenance.

use alloc::vec::Vec;

use gpa_types::{GuestPhysAddr, GuestPhysAddrRange, HostPhysAddr, MappingFlags, PageSize};
use guest_aspace::{Access, FaultOutcome, GuestAddrSpace, RegionKind};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, TlbFlush};

/// The guest-physical layout of one board.
pub struct Layout {
    /// Eager RAM: 1 GiB + 4 MiB + 16 KiB, so it gets 1 GiB, 2 MiB and 4 KiB
    /// backing frames and leaves. 1 GiB aligned.
    pub ram: usize,
    /// Lazy RAM (2 MiB), populated page by page on faults.
    pub lazy: usize,
    /// Read-only, executable memory holding the guest code and its
    /// parameter block.
    pub rom: usize,
    /// The UART, passed through at GPA == HPA.
    pub uart: usize,
    /// Flags of the UART mapping.
    pub uart_flags: MappingFlags,
    /// Emulated device page: left unmapped, every access exits.
    pub mmio: usize,
}

/// Size of the eager RAM region.
pub const RAM_SIZE: usize = (1 << 30) + (4 << 20) + (16 << 10);
/// Size of the lazy RAM region.
pub const LAZY_SIZE: usize = 2 << 20;
/// Size of the ROM region.
pub const ROM_SIZE: usize = 64 << 10;
/// Offset of the parameter block in the ROM (the code sits below it).
pub const PARAMS_OFFSET: usize = 0x1000;
/// First word of the parameter block; the guest checks it.
pub const MAGIC: u64 = 0x4e50_5452_4f4d_2121;
/// Every pattern word is its address XOR this key.
pub const KEY: u64 = 0x5a5a_5a5a_a5a5_a5a5;
/// The value the guest stores to the emulated device.
pub const MMIO_VALUE: u64 = 0x0bad_f00d_1234_5678;
/// The exit code of the second entry point.
pub const ENTRY2_DONE: u64 = 0xe2;
/// How many exits one guest run may take before it counts as a fault storm.
const MAX_EXITS: usize = 16;

/// One guest exit, decoded by the architecture.
#[derive(Debug, Clone, Copy)]
pub enum Exit {
    /// A second-stage fault.
    Fault {
        /// Faulting guest-physical address.
        gpa: usize,
        /// Kind of access.
        access: Access,
        /// The architecture's raw fault code (DFSC, scause).
        code: u64,
    },
    /// The guest asked to stop (HVC / ECALL) with this code.
    Done(u64),
    /// Anything else: (syndrome, pc, extra).
    Other(u64, u64, u64),
}

/// What the scenario needs from the CPU.
pub trait Vcpu {
    /// Enters the guest at `entry` with `arg` in its first argument register.
    fn enter(&mut self, entry: usize, arg: usize) -> Exit;
    /// Resumes the guest where it stopped.
    fn resume(&mut self) -> Exit;
    /// Steps the guest past the instruction that exited.
    fn skip(&mut self);
    /// Invalidates what `flush` names.
    fn flush(&mut self, flush: &TlbFlush);
    /// The value of the store that last exited, decoding the instruction
    /// with `fetch` (reads a 32-bit word of guest memory) if need be.
    fn store_value(&self, fetch: &dyn Fn(usize) -> Option<u32>) -> Option<u64>;
}

/// Pass/fail lines.
pub struct Checks {
    failed: usize,
}

impl Checks {
    /// No checks yet.
    pub const fn new() -> Self {
        Self { failed: 0 }
    }

    /// Records and prints one check.
    pub fn check(&mut self, name: &str, ok: bool) {
        if !ok {
            self.failed += 1;
        }
        println!("check {}: {}", name, if ok { "ok" } else { "FAILED" });
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failed == 0
    }
}

/// Addresses the guest writes its pattern to: both sides of the 1 GiB/2 MiB
/// leaf boundary, both sides of a 2 MiB/2 MiB boundary, inside the 1 GiB
/// leaf, and in a 4 KiB leaf (the page unmapped later), with the leaf size
/// each must sit in.
fn pattern_addrs(l: &Layout) -> [(usize, PageSize); 6] {
    let g = 1 << 30;
    [
        (l.ram + 0x2345_6780, PageSize::Size1G),
        (l.ram + g - 8, PageSize::Size1G),
        (l.ram + g, PageSize::Size2M),
        (l.ram + g + (2 << 20) - 8, PageSize::Size2M),
        (l.ram + g + (2 << 20), PageSize::Size2M),
        (unmap_page(l) + 8, PageSize::Size4K),
    ]
}

/// The 4 KiB page unmapped before the second entry.
fn unmap_page(l: &Layout) -> usize {
    l.ram + (1 << 30) + (4 << 20) + 0x1000
}

fn rom_write_addr(l: &Layout) -> usize {
    l.rom + PARAMS_OFFSET + 0x800
}

fn lazy_addr(l: &Layout) -> usize {
    l.lazy + 0x3000 + 0x10
}

fn mmio_addr(l: &Layout) -> usize {
    l.mmio + 0x8
}

/// The parameter block the guest reads from ROM (word `i` at `8 * i`):
/// magic, count, 6 pattern addresses, UART, MMIO address, ROM address to
/// write, lazy address, unmapped address, message address, MMIO value,
/// key; then the message.
fn params(l: &Layout) -> Vec<u8> {
    let msg_gpa = l.rom + PARAMS_OFFSET + 0x100;
    let mut words: Vec<u64> = Vec::new();
    words.push(MAGIC);
    words.push(6);
    words.extend(pattern_addrs(l).iter().map(|&(a, _)| a as u64));
    for w in [
        l.uart,
        mmio_addr(l),
        rom_write_addr(l),
        lazy_addr(l),
        unmap_page(l) + 8,
        msg_gpa,
    ] {
        words.push(w as u64);
    }
    words.push(MMIO_VALUE);
    words.push(KEY);
    let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.resize(0x100, 0);
    out.extend_from_slice(b"guest: hello through the pass-through UART\n\0");
    out.resize(0x1000, 0);
    out
}

/// Prints the table's leaf counts.
fn print_stats<F: NptFormat, A: FrameAllocator>(space: &GuestAddrSpace<F, A>, when: &str) {
    let s = space.table_stats();
    println!(
        "table stats ({when}): {} table frames, leaves 4K={} 2M={} 1G={}",
        s.table_frames,
        s.leaves_of(PageSize::Size4K),
        s.leaves_of(PageSize::Size2M),
        s.leaves_of(PageSize::Size1G)
    );
}

/// Displays a [`TlbFlush`] record as the ranges it names.
struct ShowFlush<'a>(&'a TlbFlush);

impl core::fmt::Display for ShowFlush<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0.is_all() {
            return f.write_str("all");
        }
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, r) in self.0.ranges().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(
                f,
                "{sep}[{:#x}, {:#x})",
                r.start.as_usize(),
                r.end.as_usize()
            )?;
        }
        Ok(())
    }
}

/// What one guest run produced.
#[derive(Default)]
struct RunLog {
    /// (gpa, access, store value) of emulated device accesses.
    mmio: Vec<(usize, Access, Option<u64>)>,
    /// (gpa, access, kind) of refused accesses.
    violations: Vec<(usize, Access, RegionKind)>,
    /// GPAs of faults the space fixed.
    fixed: Vec<usize>,
    /// GPAs of faults outside every region.
    unmapped: Vec<usize>,
    /// The done code.
    done: Option<u64>,
}

/// Runs the guest until it is done, handling its faults with the space.
fn run_guest<F: NptFormat, A: FrameAllocator, V: Vcpu>(
    space: &mut GuestAddrSpace<F, A>,
    vcpu: &mut V,
    entry: usize,
    arg: usize,
) -> RunLog {
    let mut log = RunLog::default();
    let mut exit = vcpu.enter(entry, arg);
    for _ in 0..MAX_EXITS {
        match exit {
            Exit::Done(code) => {
                println!("exit: done, code {code:#x}");
                log.done = Some(code);
                return log;
            }
            Exit::Other(syndrome, pc, extra) => {
                println!("exit: unexpected, syndrome {syndrome:#x} pc {pc:#x} ({extra:#x})");
                return log;
            }
            Exit::Fault { gpa, access, code } => {
                let outcome = space.handle_fault(GuestPhysAddr::from_usize(gpa), access);
                print!("exit: fault at GPA {gpa:#x} {access:?} (code {code:#x}) -> ");
                match &outcome {
                    Ok(FaultOutcome::Fixed(flush)) => println!("Fixed, flush {}", ShowFlush(flush)),
                    Ok(other) => println!("{other:?}"),
                    Err(e) => println!("error: {e}"),
                }
                match outcome {
                    Ok(FaultOutcome::Fixed(flush)) => {
                        vcpu.flush(&flush);
                        log.fixed.push(gpa);
                    }
                    Ok(FaultOutcome::Mmio { gpa, access }) => {
                        let fetch = |pc: usize| space.read_u32(GuestPhysAddr::from_usize(pc)).ok();
                        log.mmio
                            .push((gpa.as_usize(), access, vcpu.store_value(&fetch)));
                        vcpu.skip();
                    }
                    Ok(FaultOutcome::Violation { gpa, access, kind }) => {
                        log.violations.push((gpa.as_usize(), access, kind));
                        vcpu.skip();
                    }
                    Ok(FaultOutcome::Unmapped { gpa }) => {
                        log.unmapped.push(gpa.as_usize());
                        vcpu.skip();
                    }
                    Err(_) => return log,
                }
            }
        }
        exit = vcpu.resume();
    }
    println!("exit: more than {MAX_EXITS} exits, giving up");
    log
}

/// Builds the space, activates it with `activate` (which programs the
/// second-stage registers, may put boot data such as the guest's own page
/// tables into guest RAM, and returns `false` on failure), runs both guest
/// entries and checks everything. Returns whether every check passed.
///
/// `guest` is the guest image (loaded at the ROM's base); `entry2` the
/// offset of its second entry point.
pub fn run<F, A, V>(
    alloc: A,
    layout: &Layout,
    guest: &[u8],
    entry2: usize,
    vcpu: &mut V,
    activate: impl FnOnce(&mut GuestAddrSpace<F, A>, &mut V) -> bool,
) -> bool
where
    F: NptFormat,
    A: FrameAllocator,
    V: Vcpu,
{
    let mut checks = Checks::new();
    let l = layout;
    println!(
        "format: {} ({} levels, {}-bit GPA, {} root frame(s))",
        F::NAME,
        F::LEVELS,
        F::GPA_BITS,
        F::ROOT_FRAMES
    );

    // ---- build ----
    let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
    let rw = MappingFlags::READ | MappingFlags::WRITE;
    let window = GuestPhysAddrRange::from_start_size(GuestPhysAddr::from_usize(0), 1 << 36);
    let mut space = match GuestAddrSpace::<F, A>::new(alloc, window) {
        Ok(s) => s,
        Err(e) => {
            println!("new: {e}");
            checks.check("build", false);
            return false;
        }
    };
    let mut flush = TlbFlush::none();
    // The VM has not run, but the records are honoured anyway (after the
    // registers are programmed) rather than ignored.
    let built = (|| {
        flush.merge(space.add_ram(GuestPhysAddr::from_usize(l.ram), RAM_SIZE, rwx, false)?);
        flush.merge(space.add_ram(GuestPhysAddr::from_usize(l.lazy), LAZY_SIZE, rw, true)?);
        flush.merge(space.add_identical(
            GuestPhysAddr::from_usize(l.uart),
            0x1000,
            l.uart_flags,
        )?);
        flush.merge(space.add_mmio(GuestPhysAddr::from_usize(l.mmio), 0x1000, None)?);
        flush.merge(space.add_rom(GuestPhysAddr::from_usize(l.rom), ROM_SIZE, true)?);
        space.load_image(GuestPhysAddr::from_usize(l.rom), guest)?;
        space.load_image(GuestPhysAddr::from_usize(l.rom + PARAMS_OFFSET), &params(l))?;
        Ok::<(), guest_aspace::AspaceError>(())
    })();
    if let Err(e) = built {
        println!("build: {e}");
    }
    checks.check("build", built.is_ok());
    if built.is_err() {
        return false;
    }
    for r in space.regions() {
        println!(
            "region [{:#x}, {:#x}) {:?} {:?} populated {:#x}",
            r.range.start.as_usize(),
            r.range.end.as_usize(),
            r.backing,
            r.flags,
            r.populated
        );
    }
    print_stats(&space, "built");
    let stats = space.table_stats();
    let sizes_ok = pattern_addrs(l).iter().all(|&(a, size)| {
        let q = space.query(GuestPhysAddr::from_usize(a));
        if let Ok(q) = q {
            println!(
                "  GPA {a:#x} -> HPA {:#x} in a {:?} leaf",
                q.hpa.as_usize(),
                q.page_size
            );
        }
        matches!(q, Ok(q) if q.page_size == size)
    });
    checks.check(
        "leaf_sizes",
        sizes_ok
            && stats.leaves_of(PageSize::Size1G) >= 1
            && stats.leaves_of(PageSize::Size2M) >= 1
            && stats.leaves_of(PageSize::Size4K) >= 1,
    );
    checks.check(
        "lazy_unpopulated",
        space
            .translate(GuestPhysAddr::from_usize(lazy_addr(l)))
            .is_none(),
    );

    // ---- activate and run the guest ----
    if !activate(&mut space, vcpu) {
        checks.check("activate", false);
        return false;
    }
    vcpu.flush(&flush);
    let params_gpa = l.rom + PARAMS_OFFSET;
    println!("entering guest at {:#x}", l.rom);
    let log = run_guest(&mut space, vcpu, l.rom, params_gpa);
    print_stats(&space, "after guest run");
    checks.check("guest_done", log.done == Some(0));

    let landed = pattern_addrs(l).iter().all(|&(a, _)| {
        let gpa = GuestPhysAddr::from_usize(a);
        let want = a as u64 ^ KEY;
        let via_api = space.read_u64(gpa).ok();
        // SAFETY: RAM is identity mapped and `hpa` is owned guest backing
        // the table maps; an aligned 8-byte read of it is valid.
        let via_hpa = space
            .translate(gpa)
            .map(|h| unsafe { (h.as_usize() as *const u64).read_volatile() });
        let ok = via_api == Some(want) && via_hpa == Some(want);
        if !ok {
            println!("  GPA {a:#x}: want {want:#x}, read API {via_api:x?}, at HPA {via_hpa:x?}");
        }
        ok
    });
    checks.check("ram_landed_at_hpa", landed);
    checks.check(
        "mmio_trap",
        log.mmio.as_slice() == [(mmio_addr(l), Access::Write, Some(MMIO_VALUE))],
    );
    checks.check(
        "rom_write_violation",
        log.violations.as_slice() == [(rom_write_addr(l), Access::Write, RegionKind::Rom)],
    );
    checks.check(
        "rom_intact",
        space
            .read_u64(GuestPhysAddr::from_usize(rom_write_addr(l)))
            .ok()
            == Some(0),
    );
    let lazy = lazy_addr(l);
    let lazy_region = space.find_region(GuestPhysAddr::from_usize(lazy));
    checks.check(
        "lazy_filled_on_first_fault",
        log.fixed.as_slice() == [lazy]
            && space.read_u64(GuestPhysAddr::from_usize(lazy)).ok() == Some(lazy as u64 ^ KEY)
            && lazy_region.map(|r| r.populated) == Some(0x1000),
    );
    checks.check("no_unmapped_faults", log.unmapped.is_empty());

    // ---- unmap a page the guest used, flush, and touch it again ----
    let page = unmap_page(l);
    let hpa_before = space.translate(GuestPhysAddr::from_usize(page));
    match space.remove_range(GuestPhysAddr::from_usize(page), 0x1000) {
        Ok(flush) => {
            println!(
                "unmapped GPA {page:#x} (was HPA {:#x}); flush {}",
                hpa_before.map_or(0, HostPhysAddr::as_usize),
                ShowFlush(&flush)
            );
            vcpu.flush(&flush);
        }
        Err(e) => println!("remove_range: {e}"),
    }
    checks.check(
        "unmapped_in_table",
        space.translate(GuestPhysAddr::from_usize(page)).is_none(),
    );
    println!("entering guest at second entry {:#x}", l.rom + entry2);
    let log2 = run_guest(&mut space, vcpu, l.rom + entry2, params_gpa);
    checks.check(
        "post_unmap_access_faults",
        log2.unmapped.as_slice() == [page + 8] && log2.done == Some(ENTRY2_DONE),
    );
    print_stats(&space, "end");
    checks.passed()
}
