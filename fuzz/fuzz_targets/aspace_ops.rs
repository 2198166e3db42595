//! `aspace_ops`: random region, fault, guest-memory and dirty-log operations
//! on a `GuestAddrSpace` of every format, against the reference model
//! `guest_aspace::model` (regions, owned backing layout, populated lazy
//! pages, written bytes, dirty pages), which the `aspace_model` test uses too.
//!
//! After every step the space's regions, translations, flags, populated
//! counts and the allocator's live frames agree with the model; errors are
//! the ones the model predicts and leave the space unchanged. A
//! `FailingAllocator` fails from a fuzzer-chosen attempt. After drop no
//! frame is live.
#![no_main]

use arbitrary::Arbitrary;
use gpa_types::{
    ConfigError, ConfigField, GuestPhysAddr, GuestPhysAddrRange, HostPhysAddr, MapType,
    MappingFlags, RegionConfig,
};
use guest_aspace::model::{ModelKind as Kind, SpaceModel as Model};
use guest_aspace::{
    Access, AspaceError, ConfigOptions, FaultOutcome, GuestAddrSpace, PlacementError,
};
use libfuzzer_sys::fuzz_target;
use npt_entry::{GenericPTE, NptFormat};
use npt_fuzz::{Fmt, FormatRun};
use npt_table::{FailingAllocator, HostFrameAllocator, NptError};

const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const G1: usize = 0x4000_0000;
const HPA_BASE: usize = 0x10_0000_0000;
/// Largest region the space allocates eagerly (backing is zeroed by the
/// host, so big ones are slow); bigger eager adds that would succeed are
/// skipped.
const EAGER_MAX: usize = 4 * M2;
/// Total eagerly allocated bytes the model allows.
const EAGER_TOTAL: usize = 12 * M2;
/// Largest pass-through (or lazy) region added.
const PASSTHROUGH_MAX: usize = 64 * G1;
const MAX_OPS: usize = 40;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Window {
    /// `[0, 4 GiB)`.
    Low,
    /// The whole GPA width of the format.
    Full,
    /// Anything; falls back to `Low` when refused.
    Raw(u64, u64),
}

/// A guest address.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// `m` 2 MiB + `k` 4 KiB inside the first 4 GiB.
    Win {
        m: u16,
        k: u16,
    },
    /// `pages` 4 KiB + `bytes` after the start of an existing region.
    InRegion {
        i: u8,
        pages: i8,
        bytes: u16,
    },
    /// Just before the end of an existing region.
    RegionEnd {
        i: u8,
        back: u16,
    },
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Pages(u8),
    Mega { m: u8, k: u16 },
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Hpa {
    Win { m: u16, k: u16 },
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Fl(u8);

impl Fl {
    fn get(self) -> MappingFlags {
        let r = MappingFlags::READ;
        let w = MappingFlags::WRITE;
        let x = MappingFlags::EXECUTE;
        if self.0 & 0x80 != 0 {
            [
                r | w,
                r | w | x,
                r,
                r | x,
                x,
                r | w | MappingFlags::UNCACHED,
            ][(self.0 & 0x7f) as usize % 6]
        } else {
            MappingFlags::from_bits_truncate((self.0 & 0x3f) as usize)
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Acc {
    Read,
    Write,
    Execute,
}

/// A raw config field: structured or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Field {
    Small(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    AddRam {
        gpa: Addr,
        size: Size,
        flags: Fl,
        lazy: bool,
    },
    AddRom {
        gpa: Addr,
        size: Size,
        exec: bool,
    },
    AddIdentical {
        gpa: Addr,
        size: Size,
        flags: Fl,
    },
    AddLinear {
        gpa: Addr,
        hpa: Hpa,
        size: Size,
        flags: Fl,
    },
    AddMmio {
        gpa: Addr,
        size: Size,
        passthrough: Option<Hpa>,
    },
    AddIdenticalAlloc {
        size: Size,
        flags: Fl,
    },
    AddConfig {
        base: Addr,
        size: Size,
        flags: Field,
        map_type: Field,
        lazy: bool,
        alloc_identical: bool,
    },
    Remove {
        gpa: Addr,
        len: Size,
    },
    Fault {
        gpa: Addr,
        access: Acc,
    },
    Read {
        gpa: Addr,
        len: u16,
    },
    Write {
        gpa: Addr,
        len: u16,
        seed: u8,
    },
    Load {
        gpa: Addr,
        len: u16,
        seed: u8,
    },
    StartDirty {
        gpa: Addr,
    },
    CollectDirty {
        gpa: Addr,
        words: u8,
    },
    StopDirty {
        gpa: Addr,
    },
    Query {
        gpa: Addr,
    },
    Clear,
    FailFrom(u8),
    Heal,
}

#[derive(Arbitrary, Debug)]
struct Input {
    fmt: Fmt,
    window: Window,
    /// Records for `from_config`, tried first.
    records: Vec<[Field; 4]>,
    ops: Vec<Op>,
}

/// Runs one input with the format it picked.
struct Run<'a>(&'a Input);

impl FormatRun for Run<'_> {
    type Output = ();
    fn run<F: NptFormat>(self) {
        run::<F>(self.0);
    }
}

fuzz_target!(|input: Input| input.fmt.dispatch(Run(&input)));

type Alloc = FailingAllocator<HostFrameAllocator>;
type Space<'a, F> = GuestAddrSpace<F, &'a Alloc>;

fn field(f: Field, small: impl Fn(u8) -> u64) -> u64 {
    match f {
        Field::Small(v) => small(v),
        Field::Raw(v) => v,
    }
}

fn record(r: &[Field; 4]) -> [u64; 4] {
    [
        field(r[0], |v| u64::from(v) * M2 as u64),
        field(r[1], |v| u64::from(v % 16 + 1) * K4 as u64),
        field(r[2], |v| [0x7u64, 0x3, 0x1, 0x5, 0x13][v as usize % 5]),
        field(r[3], |v| u64::from(v % 5)),
    ]
}

fn run<F: NptFormat>(input: &Input) {
    let alloc: Alloc = FailingAllocator::new(HostFrameAllocator::new());
    let low = GuestPhysAddrRange::from_start_size(GuestPhysAddr::from(0), 4 * G1);
    let window = match input.window {
        Window::Low => low,
        Window::Full => {
            GuestPhysAddrRange::from_start_size(GuestPhysAddr::from(0), F::GPA_LIMIT as usize)
        }
        Window::Raw(s, e) => {
            match GuestPhysAddrRange::try_new(
                GuestPhysAddr::from(s as usize),
                GuestPhysAddr::from(e as usize),
            ) {
                Some(w) => match GuestAddrSpace::<F, _>::new(&alloc, w) {
                    Ok(_) => w,
                    Err(err) => {
                        assert!(
                            matches!(
                                err,
                                AspaceError::ZeroSize
                                    | AspaceError::NotAligned { .. }
                                    | AspaceError::OutsideWindow { .. }
                            ),
                            "new({w:?}): {err:?}"
                        );
                        low
                    }
                },
                None => low,
            }
        }
    };
    assert_eq!(alloc.inner().live_frames(), 0);
    {
        let records: Vec<[u64; 4]> = input.records.iter().take(4).map(record).collect();
        let opts = ConfigOptions {
            lazy_alloc: records.len() % 2 == 1,
            allocate_identical: false,
        };
        // ROM is always populated; MAP_ALLOC only when not lazy.
        let eager: u64 = records
            .iter()
            .filter(|r| r[3] == 4 || (r[3] == 0 && !opts.lazy_alloc))
            .map(|r| r[1])
            .fold(0, u64::saturating_add);
        let small =
            window.size() <= 16 * G1 || records.iter().all(|r| r[1] <= PASSTHROUGH_MAX as u64);
        let space = if !records.is_empty() && small && eager <= EAGER_TOTAL as u64 {
            match GuestAddrSpace::<F, _>::from_config(&alloc, window, &records, opts) {
                Ok((s, flush)) => {
                    flush.ignore();
                    Some(s)
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            AspaceError::Config { .. } | AspaceError::ConfigPlacement { .. }
                        ),
                        "{e:?}"
                    );
                    assert_eq!(alloc.inner().live_frames(), 0, "failed from_config leaked");
                    None
                }
            }
        } else {
            None
        };
        let space = space
            .unwrap_or_else(|| GuestAddrSpace::<F, _>::new(&alloc, window).expect("valid window"));
        let mut h = Harness::<F> {
            model: Model::from_space(&space),
            s: space,
            alloc: &alloc,
            failing: false,
        };
        h.check();
        for op in input.ops.iter().take(MAX_OPS) {
            h.step(op);
            h.check();
        }
        alloc.heal();
        let flush = h.s.clear().expect("clear");
        h.s.complete(flush);
        h.s.complete_all();
        assert_eq!(h.s.parked_frames(), 0);
        assert_eq!(h.s.regions().count(), 0);
        assert_eq!(h.s.table_stats().mapped_bytes(), 0);
        assert_eq!(alloc.inner().live_frames(), h.s.table_stats().table_frames);
    }
    assert_eq!(alloc.inner().live_frames(), 0, "frames leaked after drop");
}

fn norm<F: NptFormat>(flags: MappingFlags) -> MappingFlags {
    <F::Entry as GenericPTE>::new_page(0.into(), flags, false).flags()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 8) as u8)
        .collect()
}

struct Harness<'a, F: NptFormat> {
    s: Space<'a, F>,
    model: Model,
    alloc: &'a Alloc,
    failing: bool,
}

impl<F: NptFormat> Harness<'_, F> {
    fn window(&self) -> (usize, usize) {
        let w = self.s.window();
        (w.start.as_usize(), w.end.as_usize())
    }

    fn addr(&self, a: Addr) -> usize {
        let nth = |i: u8| {
            self.model
                .regions
                .values()
                .nth(i as usize % self.model.regions.len().max(1))
        };
        match a {
            Addr::Win { m, k } => (m as usize % 2048) * M2 + (k as usize % 512) * K4,
            Addr::InRegion { i, pages, bytes } => match nth(i) {
                Some(r) => {
                    (r.start as isize + pages as isize * K4 as isize) as usize
                        + (bytes as usize % K4)
                }
                None => 0,
            },
            Addr::RegionEnd { i, back } => match nth(i) {
                Some(r) => r.end().wrapping_sub(back as usize % (2 * K4)),
                None => 0,
            },
            Addr::Raw(v) => v as usize,
        }
    }

    fn size(&self, s: Size) -> usize {
        match s {
            Size::Pages(n) => (n as usize % 48) * K4,
            Size::Mega { m, k } => (m as usize % 5) * M2 + (k as usize % 512) * K4,
            Size::Raw(v) => v as usize,
        }
    }

    fn hpa(&self, h: Hpa) -> usize {
        match h {
            Hpa::Win { m, k } => HPA_BASE + (m as usize % 2048) * M2 + (k as usize % 512) * K4,
            Hpa::Raw(v) => v as usize,
        }
    }

    fn no_memory(&self, what: &str) {
        assert!(self.failing, "{what}: NoMemory from a healthy allocator");
    }

    /// An add: checks the outcome against `check_free` and applies it.
    /// `pre` is what the space checks after `check_free` (flags), `config`
    /// the record index when the add comes from a config record.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        gpa: usize,
        size: usize,
        flags: MappingFlags,
        kind: Kind,
        config: Option<usize>,
        call: impl FnOnce(&mut Space<'_, F>) -> Result<(), AspaceError>,
    ) {
        let free = self.model.check_free(gpa, size, self.window());
        let eager = matches!(kind, Kind::Ram { lazy: false } | Kind::Rom);
        if free.is_ok()
            && eager
            && (size > EAGER_MAX || self.model.eager_bytes() + size > EAGER_TOTAL)
        {
            return;
        }
        // Pass-through maps use 1 GiB leaves at most: a huge window (2^59
        // bytes on Sv57x4) would need millions of tables.
        if free.is_ok() && !eager && size > PASSTHROUGH_MAX {
            return;
        }
        let before = self.s.regions().count();
        let result = call(&mut self.s);
        let unwrap_config = |e: AspaceError| -> AspaceError {
            match (config, e) {
                (
                    Some(index),
                    AspaceError::ConfigPlacement {
                        index: i,
                        field,
                        error,
                    },
                ) => {
                    assert_eq!(i, index);
                    match error {
                        PlacementError::OutsideWindow => {
                            assert_eq!(field, ConfigField::Base);
                            AspaceError::OutsideWindow {
                                gpa: gpa.into(),
                                len: size,
                            }
                        }
                        PlacementError::Overlap(existing) => {
                            assert_eq!(field, ConfigField::Base);
                            AspaceError::Overlap {
                                gpa: gpa.into(),
                                existing,
                            }
                        }
                        PlacementError::NoMemory => {
                            assert_eq!(field, ConfigField::Size);
                            AspaceError::NoMemory
                        }
                        PlacementError::Flags => {
                            assert_eq!(field, ConfigField::Flags);
                            assert!(npt_entry::check_flags(flags).is_err());
                            AspaceError::Table(NptError::BadFlags(flags))
                        }
                        PlacementError::WritableRom => {
                            assert_eq!(field, ConfigField::Flags);
                            assert!(kind == Kind::Rom && flags.contains(MappingFlags::WRITE));
                            AspaceError::Table(NptError::BadFlags(flags))
                        }
                        PlacementError::Table(e) => AspaceError::Table(e),
                        e @ (PlacementError::LandedOutsideWindow { .. }
                        | PlacementError::LandedOverlap { .. }) => {
                            panic!("config add of a placed kind returned {e:?}")
                        }
                    }
                }
                (Some(_), e) => panic!("config add returned {e:?}"),
                (None, e) => e,
            }
        };
        match result {
            Ok(()) => {
                assert!(
                    free.is_ok(),
                    "add at {gpa:#x}+{size:#x} accepted, model says {free:?}"
                );
                if kind == Kind::Rom && config.is_some() {
                    assert!(
                        !flags.contains(MappingFlags::WRITE),
                        "writable ROM accepted"
                    );
                }
                if matches!(kind, Kind::Ram { .. } | Kind::Linear(_) | Kind::Identical)
                    || config.is_some()
                {
                    assert!(
                        npt_entry::check_flags(flags).is_ok(),
                        "bad flags {flags:?} accepted"
                    );
                }
                self.model.insert::<F>(gpa, size, flags, kind);
                let lo = gpa;
                let stale: Vec<usize> = self
                    .model
                    .bytes
                    .range(lo..lo + size)
                    .map(|(k, _)| *k)
                    .collect();
                assert!(stale.is_empty(), "model bytes left in a free range");
            }
            Err(e) => {
                assert_eq!(
                    self.s.regions().count(),
                    before,
                    "failed add changed the regions"
                );
                let e = unwrap_config(e);
                match free {
                    Err(want) => assert_eq!(e, want, "add at {gpa:#x}+{size:#x}"),
                    Ok(()) => match e {
                        AspaceError::NoMemory => self.no_memory("add"),
                        AspaceError::Table(_) => {}
                        e => panic!("add at {gpa:#x}+{size:#x}: unexpected {e:?}"),
                    },
                }
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::AddRam {
                gpa,
                size,
                flags,
                lazy,
            } => {
                let (gpa, size, flags) = (self.addr(gpa), self.size(size), flags.get());
                self.add(gpa, size, flags, Kind::Ram { lazy }, None, |s| {
                    s.add_ram(gpa.into(), size, flags, lazy).map(|f| f.ignore())
                });
            }
            Op::AddRom { gpa, size, exec } => {
                let (gpa, size) = (self.addr(gpa), self.size(size));
                let flags = if exec {
                    MappingFlags::READ | MappingFlags::EXECUTE
                } else {
                    MappingFlags::READ
                };
                self.add(gpa, size, flags, Kind::Rom, None, |s| {
                    s.add_rom(gpa.into(), size, exec).map(|f| f.ignore())
                });
            }
            Op::AddIdentical { gpa, size, flags } => {
                let (gpa, size, flags) = (self.addr(gpa), self.size(size), flags.get());
                self.add(gpa, size, flags, Kind::Identical, None, |s| {
                    s.add_identical(gpa.into(), size, flags).map(|f| f.ignore())
                });
            }
            Op::AddLinear {
                gpa,
                hpa,
                size,
                flags,
            } => {
                let (gpa, size, flags, hpa) =
                    (self.addr(gpa), self.size(size), flags.get(), self.hpa(hpa));
                self.add(gpa, size, flags, Kind::Linear(hpa), None, |s| {
                    s.add_linear(gpa.into(), hpa.into(), size, flags)
                        .map(|f| f.ignore())
                });
            }
            Op::AddMmio {
                gpa,
                size,
                passthrough,
            } => {
                let (gpa, size) = (self.addr(gpa), self.size(size));
                let pass = passthrough.map(|h| self.hpa(h));
                let flags = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::DEVICE;
                self.add(gpa, size, flags, Kind::Mmio(pass), None, |s| {
                    s.add_mmio(gpa.into(), size, pass.map(HostPhysAddr::from))
                        .map(|f| f.ignore())
                });
            }
            Op::AddIdenticalAlloc { size, flags } => {
                let (size, flags) = (self.size(size), flags.get());
                if size > EAGER_MAX || self.model.eager_bytes() + size > EAGER_TOTAL {
                    return;
                }
                let live = self.alloc.inner().live_frames();
                match self.s.add_identical_alloc(size, flags) {
                    Ok((gpa, flush)) => {
                        flush.ignore();
                        let gpa = gpa.as_usize();
                        assert!(self.model.check_free(gpa, size, self.window()).is_ok());
                        self.model
                            .insert::<F>(gpa, size, flags, Kind::AllocIdentical);
                    }
                    Err(e) => {
                        assert_eq!(
                            self.alloc.inner().live_frames(),
                            live,
                            "failed add_identical_alloc leaked"
                        );
                        match e {
                            AspaceError::NoMemory => self.no_memory("add_identical_alloc"),
                            AspaceError::ZeroSize => assert_eq!(size, 0),
                            AspaceError::NotAligned { .. } => assert!(size % K4 != 0),
                            AspaceError::OutsideWindow { .. }
                            | AspaceError::Overlap { .. }
                            | AspaceError::Table(_) => {}
                            e => panic!("add_identical_alloc: {e:?}"),
                        }
                    }
                }
            }
            Op::AddConfig {
                base,
                size,
                flags,
                map_type,
                lazy,
                alloc_identical,
            } => {
                let raw = [
                    self.addr(base) as u64,
                    self.size(size) as u64,
                    field(flags, |v| {
                        [0x7u64, 0x3, 0x1, 0x5, 0x13, 0x2][v as usize % 6]
                    }),
                    field(map_type, |v| u64::from(v % 5)),
                ];
                let want = config_check(raw);
                let got = RegionConfig::from_raw(raw[0], raw[1], raw[2], raw[3]);
                let cfg = match (got, want) {
                    (Ok(c), Ok(())) => c,
                    (Err(a), Err(b)) => {
                        assert_eq!(a, b, "from_raw({raw:x?})");
                        assert_eq!(a.field(), b.field());
                        let _ = format!("{a}");
                        return;
                    }
                    (a, b) => panic!("from_raw({raw:x?}) = {a:?}, expected {b:?}"),
                };
                assert_eq!(
                    (
                        cfg.base.as_usize() as u64,
                        cfg.size as u64,
                        cfg.flags.bits() as u64
                    ),
                    (raw[0], raw[1], raw[2])
                );
                let options = ConfigOptions {
                    lazy_alloc: lazy,
                    allocate_identical: alloc_identical,
                };
                let (gpa, size, flags) = (cfg.base.as_usize(), cfg.size, cfg.flags);
                let index = raw[3] as usize ^ 0x55;
                let kind = match cfg.map_type {
                    MapType::Alloc => Kind::Ram { lazy },
                    MapType::Identical if alloc_identical => return, // placement is the allocator's choice
                    MapType::Identical | MapType::Reserved => Kind::Identical,
                    MapType::Mmio => Kind::Mmio(None),
                    MapType::Rom => Kind::Rom,
                };
                // The flags apply to every kind; MMIO adds DEVICE.
                let flags = match kind {
                    Kind::Mmio(_) => flags | MappingFlags::DEVICE,
                    _ => flags,
                };
                self.add(gpa, size, flags, kind, Some(index), |s| {
                    s.add_config(index, &cfg, options).map(|f| f.ignore())
                });
            }
            Op::Remove { gpa, len } => {
                let (gpa, len) = (self.addr(gpa), self.size(len));
                self.remove(gpa, len);
            }
            Op::Fault { gpa, access } => {
                let gpa = self.addr(gpa);
                let access = match access {
                    Acc::Read => Access::Read,
                    Acc::Write => Access::Write,
                    Acc::Execute => Access::Execute,
                };
                self.fault(gpa, access);
            }
            Op::Read { gpa, len } => {
                let (gpa, len) = (self.addr(gpa), len as usize % (3 * K4 + 17));
                let mut buf = vec![0xa5u8; len];
                let r = self.s.read(gpa.into(), &mut buf);
                match self.model.first_inaccessible(gpa, len, false, false) {
                    Some(bad) => assert_eq!(
                        r,
                        Err(AspaceError::NotRam { gpa: bad.into() }),
                        "read {gpa:#x}+{len:#x}"
                    ),
                    None => {
                        assert_eq!(r, Ok(()), "read {gpa:#x}+{len:#x}");
                        for (i, b) in buf.iter().enumerate() {
                            let want = self.model.bytes.get(&(gpa + i)).copied().unwrap_or(0);
                            assert_eq!(*b, want, "byte at {:#x}", gpa + i);
                        }
                    }
                }
            }
            Op::Write { gpa, len, seed } => self.write(gpa, len, seed, false),
            Op::Load { gpa, len, seed } => self.write(gpa, len, seed, true),
            Op::StartDirty { gpa } => {
                let gpa = self.addr(gpa);
                let r = self.s.start_dirty_log(gpa.into());
                let key = self.model.region_at(gpa).map(|r| r.start);
                match key.and_then(|k| self.model.regions.get_mut(&k)) {
                    None => assert_eq!(
                        r.map(|f| f.ignore()),
                        Err(AspaceError::NoRegion { gpa: gpa.into() })
                    ),
                    Some(reg)
                        if reg.logging
                            || matches!(reg.kind, Kind::Mmio(_))
                            || !reg.flags.contains(MappingFlags::WRITE) =>
                    {
                        assert_eq!(
                            r.map(|f| f.ignore()),
                            Err(AspaceError::WrongRegionState { gpa: gpa.into() })
                        )
                    }
                    Some(reg) => match r {
                        Ok(flush) => {
                            flush.ignore();
                            reg.logging = true;
                            reg.writable.clear();
                            let (start, end) = (reg.start, reg.end());
                            let stale: Vec<usize> =
                                self.model.dirty.range(start..end).copied().collect();
                            for p in stale {
                                self.model.dirty.remove(&p);
                            }
                        }
                        Err(AspaceError::NoMemory) => self.no_memory("start_dirty_log"),
                        Err(e) => panic!("start_dirty_log: {e:?}"),
                    },
                }
            }
            Op::CollectDirty { gpa, words } => {
                let gpa = self.addr(gpa);
                let mut out = vec![u64::MAX; words as usize % 40];
                let r = self.s.collect_dirty(gpa.into(), &mut out);
                let key = self.model.region_at(gpa).map(|r| r.start);
                match key.and_then(|k| self.model.regions.get_mut(&k)) {
                    None => assert_eq!(
                        r.map(|f| f.ignore()),
                        Err(AspaceError::NoRegion { gpa: gpa.into() })
                    ),
                    Some(reg) if !reg.logging => {
                        assert_eq!(
                            r.map(|f| f.ignore()),
                            Err(AspaceError::WrongRegionState { gpa: gpa.into() })
                        )
                    }
                    Some(reg) => {
                        let pages = reg.size / K4;
                        if out.len() * 64 < pages {
                            let want = AspaceError::BufferTooSmall {
                                needed: pages.div_ceil(64),
                                given: out.len(),
                            };
                            assert_eq!(r.map(|f| f.ignore()), Err(want));
                            return;
                        }
                        r.expect("collect_dirty").ignore();
                        let (start, end) = (reg.start, reg.end());
                        for (w, word) in out.iter().enumerate() {
                            for b in 0..64 {
                                let page = start + (w * 64 + b) * K4;
                                let want = page < end && self.model.dirty.contains(&page);
                                assert_eq!(
                                    word & (1 << b) != 0,
                                    want,
                                    "dirty bit of {page:#x} (region {start:#x}..{end:#x})"
                                );
                            }
                        }
                        let named: Vec<usize> =
                            self.model.dirty.range(start..end).copied().collect();
                        for p in named {
                            self.model.dirty.remove(&p);
                            reg.writable.remove(&p);
                        }
                    }
                }
            }
            Op::StopDirty { gpa } => {
                let gpa = self.addr(gpa);
                let r = self.s.stop_dirty_log(gpa.into());
                let key = self.model.region_at(gpa).map(|r| r.start);
                match key.and_then(|k| self.model.regions.get_mut(&k)) {
                    None => assert_eq!(
                        r.map(|f| f.ignore()),
                        Err(AspaceError::NoRegion { gpa: gpa.into() })
                    ),
                    Some(reg) if !reg.logging => {
                        assert_eq!(
                            r.map(|f| f.ignore()),
                            Err(AspaceError::WrongRegionState { gpa: gpa.into() })
                        )
                    }
                    Some(reg) => {
                        r.expect("stop_dirty_log").ignore();
                        reg.logging = false;
                        reg.writable.clear();
                        let (start, end) = (reg.start, reg.end());
                        let stale: Vec<usize> =
                            self.model.dirty.range(start..end).copied().collect();
                        for p in stale {
                            self.model.dirty.remove(&p);
                        }
                        // Huge backing is mapped by huge leaves again.
                        let huge: Vec<(usize, usize)> = reg
                            .chunks
                            .iter()
                            .filter(|(_, s)| **s > K4)
                            .map(|(g, s)| (*g, *s))
                            .collect();
                        for (g, size) in huge {
                            let t = self.s.query(g.into()).expect("owned chunk mapped");
                            assert_eq!(
                                t.page_size.bytes(),
                                size,
                                "chunk at {g:#x} not collapsed after stop_dirty_log"
                            );
                        }
                    }
                }
            }
            Op::Query { gpa } => {
                let gpa = self.addr(gpa);
                self.check_gpa(gpa);
            }
            Op::Clear => match self.s.clear() {
                Ok(f) => {
                    self.s.complete(f);
                    self.model = Model::default();
                }
                Err(AspaceError::NoMemory) => self.no_memory("clear"),
                Err(e) => panic!("clear: {e:?}"),
            },
            Op::FailFrom(n) => {
                self.alloc.fail_from(n as usize % 16 + 1);
                self.failing = true;
            }
            Op::Heal => {
                self.alloc.heal();
                self.failing = false;
            }
        }
    }

    fn remove(&mut self, gpa: usize, len: usize) {
        let r = self.s.remove_range(gpa.into(), len).map(|f| {
            self.s.complete(f);
        });
        let expect = self.model.check_remove(gpa, len);
        match (r, expect) {
            (Ok(()), Ok(())) => self.model.remove(gpa, gpa + len),
            (Err(AspaceError::NoMemory), Ok(())) => self.no_memory("remove_range"),
            (Err(a), Err(b)) => assert_eq!(a, b, "remove_range({gpa:#x}, {len:#x})"),
            (a, b) => panic!("remove_range({gpa:#x}, {len:#x}) = {a:?}, model expects {b:?}"),
        }
    }

    fn fault(&mut self, gpa: usize, access: Access) {
        let r = self.s.handle_fault(gpa.into(), access);
        if let Some(want) = self.model.fault(gpa, access) {
            assert_eq!(r, Ok(want), "fault {gpa:#x} {access:?}");
            return;
        }
        let populated = self.model.mapped(gpa);
        match r {
            Ok(FaultOutcome::Fixed(flush)) => {
                flush.ignore();
                self.model.fixed(gpa, access);
            }
            Err(AspaceError::NoMemory) => {
                assert!(!populated, "fault on a populated page allocated");
                self.no_memory("handle_fault");
            }
            other => panic!("fault {gpa:#x} {access:?}: {other:?}"),
        }
    }

    fn write(&mut self, gpa: Addr, len: u16, seed: u8, load: bool) {
        let (gpa, len) = (self.addr(gpa), len as usize % (3 * K4 + 17));
        let data = pattern(seed, len);
        let r = if load {
            self.s.load_image(gpa.into(), &data)
        } else {
            self.s.write(gpa.into(), &data)
        };
        if let Some(bad) = self.model.first_inaccessible(gpa, len, true, load) {
            assert_eq!(
                r,
                Err(AspaceError::NotRam { gpa: bad.into() }),
                "write {gpa:#x}+{len:#x}"
            );
            return;
        }
        // Lazy pages the write touched: populated on success, maybe on failure.
        let mut page = gpa & !(K4 - 1);
        while page < gpa + len {
            let mapped = self.s.translate(page.into()).is_some();
            if let Some(reg) = self.model.region_at_mut(page)
                && reg.kind == (Kind::Ram { lazy: true })
                && mapped
            {
                reg.chunks.insert(page, K4);
            }
            match page.checked_add(K4) {
                Some(p) => page = p,
                None => break,
            }
        }
        match r {
            Ok(()) => self.model.written(gpa, &data),
            Err(AspaceError::NoMemory) => self.no_memory("write"),
            Err(e) => panic!("write {gpa:#x}+{len:#x}: {e:?}"),
        }
    }

    /// One address: region, translation and flags as the model says.
    fn check_gpa(&self, gpa: usize) {
        let page = gpa & !(K4 - 1);
        let info = self.s.find_region(gpa.into());
        let reg = self.model.region_at(gpa);
        assert_eq!(
            info.map(|i| i.range.start.as_usize()),
            reg.map(|r| r.start),
            "region at {gpa:#x}"
        );
        assert_eq!(self.s.contains(gpa.into()), reg.is_some());
        let t = self.s.translate(gpa.into());
        let Some(reg) = reg else {
            if (gpa as u64) < F::GPA_LIMIT {
                assert_eq!(t, None, "translation outside regions at {gpa:#x}");
            }
            assert!(matches!(
                self.s.query(gpa.into()),
                Err(AspaceError::NoRegion { .. })
            ));
            return;
        };
        let mapped = match reg.kind {
            Kind::Mmio(None) => false,
            Kind::Ram { lazy: true } => reg.chunks.contains_key(&page),
            _ => true,
        };
        assert_eq!(t.is_some(), mapped, "mapped at {gpa:#x} ({:?})", reg.kind);
        if let (Some(t), Some(h)) = (t, reg.kind.passthrough(reg.start, gpa)) {
            assert_eq!(t.as_usize(), h, "pass-through translation at {gpa:#x}");
        }
        if let Ok(q) = self.s.query(gpa.into()) {
            assert_eq!(q.kind, reg.kind.region_kind());
            let full = norm::<F>(reg.flags);
            let want = if reg.logging && !reg.writable.contains(&page) {
                full - MappingFlags::WRITE
            } else {
                full
            };
            assert_eq!(q.flags, want, "flags at {gpa:#x} (logging {})", reg.logging);
            if reg.kind.host_ok(true, true) && reg.kind != Kind::AllocIdentical {
                assert_eq!(
                    self.s.hpa_to_gpa(q.hpa),
                    Some(GuestPhysAddr::from(gpa)),
                    "hpa_to_gpa of {gpa:#x}"
                );
            }
        }
    }

    fn check(&self) {
        let regions: Vec<_> = self.s.regions().collect();
        assert_eq!(regions.len(), self.model.regions.len(), "region count");
        let mut owned_frames = 0;
        for (info, reg) in regions.iter().zip(self.model.regions.values()) {
            assert_eq!(
                (info.range.start.as_usize(), info.range.size()),
                (reg.start, reg.size)
            );
            assert_eq!(info.flags, reg.flags, "flags of region {:#x}", reg.start);
            assert_eq!(
                Kind::of(info.backing),
                reg.kind,
                "backing of region {:#x}",
                reg.start
            );
            assert_eq!(
                info.dirty_logging, reg.logging,
                "logging of region {:#x}",
                reg.start
            );
            // An allocating identical region is one allocation, all of it
            // populated, with no chunk records.
            let populated: usize = if reg.kind == Kind::AllocIdentical {
                reg.size
            } else {
                reg.chunks.values().sum()
            };
            assert_eq!(
                info.populated, populated,
                "populated bytes of region {:#x}",
                reg.start
            );
            owned_frames += populated / K4;
            for gpa in [reg.start, reg.end() - 1, reg.start + reg.size / 2] {
                self.check_gpa(gpa);
            }
            if let Some(prev) = reg.start.checked_sub(1) {
                self.check_gpa(prev);
            }
            self.check_gpa(reg.end());
        }
        let stats = self.s.table_stats();
        assert_eq!(
            self.alloc.inner().live_frames(),
            stats.table_frames + owned_frames + self.s.parked_frames(),
            "live frames = table frames + owned backing + parked frames"
        );
    }
}

/// `RegionConfig::from_raw`'s rules, written out.
fn config_check(raw: [u64; 4]) -> Result<(), ConfigError> {
    let [base, size, flags, map_type] = raw;
    if size == 0 {
        return Err(ConfigError::ZeroSize);
    }
    if base % 4096 != 0 {
        return Err(ConfigError::NotAligned {
            field: ConfigField::Base,
            value: base,
        });
    }
    if size % 4096 != 0 {
        return Err(ConfigError::NotAligned {
            field: ConfigField::Size,
            value: size,
        });
    }
    if base.checked_add(size).is_none() {
        return Err(ConfigError::Overflow { base, size });
    }
    if flags & !0x3f != 0 {
        return Err(ConfigError::UnknownFlags {
            value: flags,
            unknown: flags & !0x3f,
        });
    }
    if map_type > 4 {
        return Err(ConfigError::UnknownMapType { value: map_type });
    }
    Ok(())
}
