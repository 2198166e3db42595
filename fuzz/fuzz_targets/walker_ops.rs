//! `walker_ops`: random operation sequences on every table format, checked
//! step by step against the reference model `npt_table::model::PageModel`.
//!
//! Arguments are arbitrary (misaligned, overflowing, out of width) mixed
//! with aligned values in a small window so that real mappings happen. A
//! `FailingAllocator` fails from a fuzzer-chosen attempt. After every step:
//! - a successful operation is applied to the model and must have been
//!   legal (nothing already mapped, arguments valid);
//! - a failed operation names a reason the model agrees with, and the table
//!   still equals the model (all-or-nothing);
//! - the mapped runs (`for_each_mapping`), sampled queries, cursor lookups,
//!   statistics and the allocator's live frames agree with the model;
//! - the returned `TlbFlush` covers every page whose translation changed.
//!
//! At the end everything is unmapped, and after drop no frame is live.
#![no_main]

use arbitrary::Arbitrary;
use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use libfuzzer_sys::fuzz_target;
use npt_entry::{GenericPTE, NptFormat};
use npt_fuzz::{Fmt, FormatRun};
use npt_table::model::{ModelPage, PageModel};
use npt_table::{
    AccessBit, ChangeError, CollapseError, FailingAllocator, FrameError, HostFrameAllocator,
    MapError, MapPolicy, MappedRun, NestedPageTable, NptError, QueryError, TlbFlush,
};

const K4: usize = 0x1000;
const M2: usize = 0x20_0000;
const G1: usize = 0x4000_0000;
/// Host addresses of the structured window start here (1 GiB aligned).
const HPA_BASE: usize = 0x10_0000_0000;
/// The most bytes an operation that would succeed may map: the model keeps
/// one entry per 4 KiB page, so bigger maps are skipped (see `fits`).
const MAP_BUDGET: usize = G1 + 8 * M2;
/// Operations per input.
const MAX_OPS: usize = 48;

/// A page-size choice.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ps {
    K4,
    M2,
    G1,
    G512,
}

impl Ps {
    fn size(self) -> PageSize {
        match self {
            Ps::K4 => PageSize::Size4K,
            Ps::M2 => PageSize::Size2M,
            Ps::G1 => PageSize::Size1G,
            Ps::G512 => PageSize::Size512G,
        }
    }
}

/// A guest address.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// `g` GiB + `m` 2 MiB + `k` 4 KiB inside the first 4 GiB.
    Win { g: u8, m: u16, k: u16 },
    /// An address used earlier (so operations hit what is mapped).
    Recent(u8),
    /// `k` pages below the format's GPA limit.
    Top(u16),
    /// Anything.
    Raw(u64),
}

/// A length.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Pages(u8),
    Mix { m: u8, k: u16 },
    Giga { g: u8, m: u8 },
    Size(Ps),
    Raw(u64),
}

/// A host address.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Hpa {
    Win {
        g: u8,
        m: u16,
        k: u16,
    },
    /// The guest address of the operation (identity).
    Gpa,
    Raw(u64),
}

/// Flags: a valid combination (high bit set) or any bits.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Fl(u8);

impl Fl {
    fn get(self) -> MappingFlags {
        let r = MappingFlags::READ;
        let w = MappingFlags::WRITE;
        let x = MappingFlags::EXECUTE;
        if self.0 & 0x80 != 0 {
            [
                r,
                r | w,
                r | x,
                r | w | x,
                r | w | MappingFlags::DEVICE,
                r | MappingFlags::UNCACHED,
                x,
            ][(self.0 & 0x7f) as usize % 7]
        } else {
            MappingFlags::from_bits_truncate((self.0 & 0x3f) as usize)
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Policy {
    Only4K,
    Huge,
    UpTo(Ps),
}

impl Policy {
    fn get(self) -> MapPolicy {
        match self {
            Policy::Only4K => MapPolicy::Only4K,
            Policy::Huge => MapPolicy::Huge,
            Policy::UpTo(ps) => MapPolicy::UpTo(ps.size()),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Map {
        gpa: Addr,
        hpa: Hpa,
        size: Ps,
        flags: Fl,
    },
    MapRegion {
        gpa: Addr,
        hpa: Hpa,
        len: Len,
        flags: Fl,
        policy: Policy,
    },
    MapFrames {
        gpa: Addr,
        frames: Vec<Hpa>,
        flags: Fl,
    },
    MapChunks {
        gpa: Addr,
        chunks: Vec<(Hpa, Ps)>,
        flags: Fl,
    },
    Unmap {
        gpa: Addr,
    },
    UnmapRegion {
        gpa: Addr,
        len: Len,
    },
    Protect {
        gpa: Addr,
        flags: Fl,
    },
    ProtectRegion {
        gpa: Addr,
        len: Len,
        flags: Fl,
    },
    Remap {
        gpa: Addr,
        hpa: Hpa,
        flags: Fl,
    },
    SplitRegion {
        gpa: Addr,
        len: Len,
    },
    WriteProtectRegion {
        gpa: Addr,
        len: Len,
    },
    Query {
        gpa: Addr,
    },
    Translate {
        gpa: Addr,
    },
    TranslateBatch {
        gpas: Vec<Addr>,
        out_len: u8,
    },
    Collapse {
        gpa: Addr,
        size: Ps,
    },
    Harvest {
        gpa: Addr,
        len: Len,
        dirty: bool,
        words: u8,
    },
    FailFrom(u8),
    Heal,
}

#[derive(Arbitrary, Debug)]
struct Input {
    fmt: Fmt,
    /// `with_pa_bits` instead of `new`.
    pa_bits: Option<u8>,
    /// Make the root allocation fail once first.
    root_fails: bool,
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

fn run<F: NptFormat>(input: &Input) {
    let alloc: Alloc = FailingAllocator::new(HostFrameAllocator::new());
    fn make<F: NptFormat>(
        a: &Alloc,
        pa_bits: Option<u8>,
    ) -> Result<NestedPageTable<F, &Alloc>, FrameError> {
        match pa_bits {
            // Table frames come from the host heap, below 2^47 on x86-64
            // Linux: narrower tables refuse them (TableFrameOutOfRange).
            Some(bits) => NestedPageTable::with_pa_bits(a, u32::from(bits).max(48)),
            None => NestedPageTable::new(a),
        }
    }
    if input.root_fails {
        alloc.fail_from(1);
        assert!(matches!(
            make::<F>(&alloc, input.pa_bits),
            Err(FrameError::NoMemory)
        ));
        assert_eq!(alloc.inner().live_frames(), 0, "failed new() leaked");
        alloc.heal();
    }
    {
        let table =
            make::<F>(&alloc, input.pa_bits).expect("root allocation with a healthy allocator");
        assert_eq!(table.stats().table_frames, F::ROOT_FRAMES);
        if let Some(bits) = input.pa_bits {
            assert_eq!(table.pa_bits(), u32::from(bits).max(48).min(F::PA_BITS));
        }
        let mut h = Harness::<F> {
            t: table,
            model: PageModel::new(),
            recent: Vec::new(),
            failing: false,
            alloc: &alloc,
        };
        for op in input.ops.iter().take(MAX_OPS) {
            let probes = h.step(op);
            h.check(&probes);
        }
        alloc.heal();
        h.failing = false;
        h.check(&[]);
        if !h.model.is_empty() {
            let flush =
                h.t.unmap_region(GuestPhysAddr::from(0), F::GPA_LIMIT as usize)
                    .expect("unmapping everything");
            h.t.complete(flush);
        } else {
            assert!(matches!(
                h.t.unmap_region(GuestPhysAddr::from(0), F::GPA_LIMIT as usize),
                Err(ChangeError::NotMapped { .. })
            ));
        }
        assert_eq!(h.t.stats().table_frames, F::ROOT_FRAMES);
        assert_eq!(h.t.stats().mapped_bytes(), 0);
        h.t.complete_all();
        assert_eq!(h.t.parked_frames(), 0);
        assert_eq!(alloc.inner().live_frames(), F::ROOT_FRAMES);
    }
    assert_eq!(alloc.inner().live_frames(), 0, "frames leaked after drop");
}

struct Harness<'a, F: NptFormat> {
    t: NestedPageTable<F, &'a Alloc>,
    model: PageModel,
    recent: Vec<usize>,
    failing: bool,
    alloc: &'a Alloc,
}

/// Flags as the format reports them for a leaf built with `flags`.
fn norm<F: NptFormat>(flags: MappingFlags) -> MappingFlags {
    <F::Entry as GenericPTE>::new_page(0.into(), flags, false).flags()
}

fn covers(flush: &TlbFlush, lo: usize, hi: usize) -> bool {
    flush.is_all()
        || flush
            .ranges()
            .any(|r| r.start.as_usize() <= lo && hi <= r.end.as_usize())
}

fn pick(v: u16) -> usize {
    if v & 0x8000 != 0 {
        [0usize, 1, 511, 256][(v as usize) % 4]
    } else {
        v as usize % 512
    }
}

/// Errors that argument validation may return.
fn is_arg_error<E: Copy + Into<NptError>>(e: &E) -> bool {
    matches!(
        (*e).into(),
        NptError::ZeroLength
            | NptError::GpaNotAligned { .. }
            | NptError::HpaNotAligned { .. }
            | NptError::GpaOutOfRange { .. }
            | NptError::HpaOutOfRange { .. }
            | NptError::BadFlags(_)
            | NptError::UnsupportedPageSize(_)
    )
}

impl<F: NptFormat> Harness<'_, F> {
    fn addr(&self, a: Addr) -> usize {
        match a {
            Addr::Win { g, m, k } => (g as usize % 4) * G1 + pick(m) * M2 + pick(k) * K4,
            Addr::Recent(i) => {
                if self.recent.is_empty() {
                    0
                } else {
                    self.recent[i as usize % self.recent.len()]
                }
            }
            Addr::Top(k) => (F::GPA_LIMIT as usize).wrapping_sub((k as usize % 1024) * K4),
            Addr::Raw(v) => v as usize,
        }
    }

    fn len(&self, l: Len) -> usize {
        match l {
            Len::Pages(n) => (n as usize % 64) * K4,
            Len::Mix { m, k } => (m as usize % 5) * M2 + (k as usize % 512) * K4,
            Len::Giga { g, m } => (1 + g as usize % 2) * G1 + (m as usize % 4) * M2,
            Len::Size(ps) => ps.size().bytes(),
            Len::Raw(v) => v as usize,
        }
    }

    fn hpa(&self, h: Hpa, gpa: usize) -> usize {
        match h {
            Hpa::Win { g, m, k } => HPA_BASE + (g as usize % 4) * G1 + pick(m) * M2 + pick(k) * K4,
            Hpa::Gpa => gpa,
            Hpa::Raw(v) => v as usize,
        }
    }

    fn remember(&mut self, a: usize) {
        if self.recent.len() >= 32 {
            self.recent.remove(0);
        }
        self.recent.push(a);
    }

    /// `[gpa, gpa + len)` passes the table's range check for `align`.
    fn gpa_ok(gpa: usize, len: usize, align: usize) -> bool {
        len != 0
            && gpa.is_multiple_of(align)
            && len.is_multiple_of(align)
            && gpa
                .checked_add(len)
                .is_some_and(|end| end as u64 <= F::GPA_LIMIT)
    }

    fn hpa_ok(&self, hpa: usize, len: usize, align: usize) -> bool {
        let bits = self.t.pa_bits();
        hpa.is_multiple_of(align)
            && hpa
                .checked_add(len)
                .is_some_and(|end| bits >= usize::BITS || end <= 1usize << bits)
    }

    /// Model pages in `[gpa, gpa + len)` (a validated range).
    fn pages_in(&self, gpa: usize, len: usize) -> Vec<(usize, ModelPage)> {
        if !self.model.any_mapped(gpa, len) {
            return Vec::new();
        }
        self.model
            .iter()
            .filter(|(g, _)| *g >= gpa && *g - gpa < len)
            .collect()
    }

    /// Every page of `before` whose translation changed is in `flush`.
    fn check_flush(&self, before: &[(usize, ModelPage)], flush: &TlbFlush, what: &str) {
        for &(g, page) in before {
            let now = self
                .model
                .query(g)
                .map(|(hpa, flags)| ModelPage { hpa, flags });
            if now != Some(page) {
                assert!(
                    covers(flush, g, g + K4),
                    "{what}: changed page {g:#x} not in {flush:?}"
                );
            }
        }
    }

    fn no_memory_ok<E: Copy + Into<NptError>>(&self, e: &E) {
        if (*e).into() == NptError::NoMemory {
            assert!(self.failing, "NoMemory from a healthy allocator");
        }
    }

    /// Whether a map of `len` bytes that may succeed fits the model budget.
    fn fits(&self, len: usize) -> bool {
        len <= MAP_BUDGET && self.model.len() * K4 + len <= 2 * MAP_BUDGET
    }

    /// Runs one operation; returns addresses worth probing afterwards.
    fn step(&mut self, op: &Op) -> Vec<usize> {
        let mut probes = Vec::new();
        match *op {
            Op::Map {
                gpa,
                hpa,
                size,
                flags,
            } => {
                let (gpa, size, flags) = (self.addr(gpa), size.size(), flags.get());
                let hpa = self.hpa(hpa, gpa);
                let len = size.bytes();
                let valid = F::level_of(size).is_some()
                    && Self::gpa_ok(gpa, len, len)
                    && self.hpa_ok(hpa, len, len)
                    && npt_entry::check_flags(flags).is_ok();
                self.map_like(
                    valid,
                    gpa,
                    len,
                    flags,
                    &mut probes,
                    |s| s.t.map(gpa.into(), hpa.into(), size, flags),
                    |m| m.map(gpa, hpa, len, norm::<F>(flags)),
                );
            }
            Op::MapRegion {
                gpa,
                hpa,
                len,
                flags,
                policy,
            } => {
                let (gpa, len, flags) = (self.addr(gpa), self.len(len), flags.get());
                let hpa = self.hpa(hpa, gpa);
                let valid = Self::gpa_ok(gpa, len, K4)
                    && self.hpa_ok(hpa, len, K4)
                    && npt_entry::check_flags(flags).is_ok();
                // Whether this map can succeed: only then are the leaves at
                // `gpa` its own (a refused map leaves older, larger ones).
                let was_free = valid && !self.model.any_mapped(gpa, len);
                self.map_like(
                    valid,
                    gpa,
                    len,
                    flags,
                    &mut probes,
                    |s| {
                        s.t.map_region(gpa.into(), hpa.into(), len, flags, policy.get())
                    },
                    |m| m.map(gpa, hpa, len, norm::<F>(flags)),
                );
                if was_free && self.model.query(gpa).is_some() {
                    // A huge-policy map must not use leaves larger than the
                    // policy allows.
                    if let Ok(t) = self.t.query(gpa.into()) {
                        assert!(
                            t.size <= policy.get_max::<F>(),
                            "{:?} > policy {policy:?}",
                            t.size
                        );
                    }
                }
            }
            Op::MapFrames {
                gpa,
                ref frames,
                flags,
            } => {
                let (gpa, flags) = (self.addr(gpa), flags.get());
                let frames: Vec<usize> = frames
                    .iter()
                    .take(300)
                    .enumerate()
                    .map(|(i, h)| self.hpa(*h, gpa.wrapping_add(i * K4)))
                    .collect();
                let len = frames.len() * K4;
                let valid = Self::gpa_ok(gpa, len, K4)
                    && frames.iter().all(|f| self.hpa_ok(*f, K4, K4))
                    && npt_entry::check_flags(flags).is_ok();
                let list: Vec<HostPhysAddr> =
                    frames.iter().map(|f| HostPhysAddr::from(*f)).collect();
                self.map_like(
                    valid,
                    gpa,
                    len,
                    flags,
                    &mut probes,
                    |s| s.t.map_frames(gpa.into(), &list, flags),
                    |m| m.map_frames(gpa, &frames, norm::<F>(flags)),
                );
            }
            Op::MapChunks {
                gpa,
                ref chunks,
                flags,
            } => {
                let (gpa, flags) = (self.addr(gpa), flags.get());
                let mut list = Vec::new();
                let mut pos = Some(gpa);
                let mut valid = npt_entry::check_flags(flags).is_ok() && !chunks.is_empty();
                for (h, ps) in chunks.iter().take(8) {
                    let size = ps.size();
                    let at = pos.unwrap_or(0);
                    let hpa = self.hpa(*h, at);
                    valid &= pos.is_some()
                        && F::level_of(size).is_some()
                        && Self::gpa_ok(at, size.bytes(), size.bytes())
                        && self.hpa_ok(hpa, size.bytes(), size.bytes());
                    list.push((HostPhysAddr::from(hpa), size));
                    pos = pos.and_then(|p| p.checked_add(size.bytes()));
                }
                let len = list
                    .iter()
                    .map(|c| c.1.bytes())
                    .fold(0usize, usize::saturating_add);
                let chunks_model = list.clone();
                self.map_like(
                    valid,
                    gpa,
                    len,
                    flags,
                    &mut probes,
                    |s| s.t.map_chunks(gpa.into(), &list, flags),
                    |m| {
                        let mut at = gpa;
                        for (hpa, size) in &chunks_model {
                            m.map(at, hpa.as_usize(), size.bytes(), norm::<F>(flags));
                            at += size.bytes();
                        }
                    },
                );
            }
            Op::Unmap { gpa } => {
                let gpa = self.addr(gpa);
                let pre = self.t.query(gpa.into());
                probes.extend([gpa.saturating_sub(K4), gpa]);
                match self.t.unmap(gpa.into()) {
                    Ok((tr, flush)) => {
                        let pre = pre.expect("unmap succeeded where query failed");
                        assert_eq!(pre.size, tr.size);
                        assert!(
                            tr.size.is_aligned(gpa),
                            "unmap of a leaf not starting at {gpa:#x}"
                        );
                        let (hpa, flags) = self
                            .model
                            .query(gpa)
                            .expect("unmapped a page the model lacks");
                        assert_eq!((tr.hpa.as_usize(), tr.flags), (hpa, flags));
                        let len = tr.size.bytes();
                        let before = self.pages_in(gpa, len);
                        assert_eq!(
                            self.model.unmap(gpa, len),
                            len / K4,
                            "leaf not fully mapped in model"
                        );
                        self.check_flush(&before, &flush, "unmap");
                        probes.push(gpa + len);
                    }
                    Err(ChangeError::NotMapped { gpa: g }) => {
                        assert_eq!(g.as_usize(), gpa);
                        assert!(self.model.query(gpa).is_none());
                    }
                    Err(ChangeError::SizeMismatch { mapped, .. }) => {
                        assert!(self.model.query(gpa).is_some());
                        assert!(!mapped.is_aligned(gpa));
                    }
                    Err(e) => {
                        assert!(is_arg_error(&e), "unmap: {e:?}");
                        assert!(
                            !Self::gpa_ok(gpa, K4, K4),
                            "unmap: {e:?} for a valid address"
                        );
                    }
                }
            }
            Op::Protect { gpa, flags } => {
                let (gpa, flags) = (self.addr(gpa), flags.get());
                let pre = self.t.query(gpa.into());
                probes.extend([gpa.saturating_sub(K4), gpa]);
                let r = self.t.protect(gpa.into(), flags);
                self.single_leaf_result(gpa, pre.ok().map(|t| t.size), r, flags, None, "protect");
            }
            Op::Remap { gpa, hpa, flags } => {
                let (gpa, flags) = (self.addr(gpa), flags.get());
                let hpa = self.hpa(hpa, gpa);
                let pre = self.t.query(gpa.into());
                probes.extend([gpa.saturating_sub(K4), gpa]);
                let r = self.t.remap(gpa.into(), hpa.into(), flags);
                self.single_leaf_result(
                    gpa,
                    pre.ok().map(|t| t.size),
                    r,
                    flags,
                    Some(hpa),
                    "remap",
                );
            }
            Op::UnmapRegion { gpa, len } => {
                let (gpa, len) = (self.addr(gpa), self.len(len));
                let valid = Self::gpa_ok(gpa, len, K4);
                let before = if valid {
                    self.pages_in(gpa, len)
                } else {
                    Vec::new()
                };
                let r = self.t.unmap_region(gpa.into(), len);
                self.region_result(valid, gpa, len, &before, r, "unmap_region", |m| {
                    m.unmap(gpa, len);
                });
                probes.extend(edges(gpa, len));
            }
            Op::ProtectRegion { gpa, len, flags } => {
                let (gpa, len, flags) = (self.addr(gpa), self.len(len), flags.get());
                let valid = Self::gpa_ok(gpa, len, K4) && npt_entry::check_flags(flags).is_ok();
                let before = if valid {
                    self.pages_in(gpa, len)
                } else {
                    Vec::new()
                };
                let r = self.t.protect_region(gpa.into(), len, flags);
                self.region_result(valid, gpa, len, &before, r, "protect_region", |m| {
                    m.protect(gpa, len, norm::<F>(flags));
                });
                probes.extend(edges(gpa, len));
            }
            Op::WriteProtectRegion { gpa, len } => {
                let (gpa, len) = (self.addr(gpa), self.len(len));
                let valid = Self::gpa_ok(gpa, len, K4);
                let before = if valid {
                    self.pages_in(gpa, len)
                } else {
                    Vec::new()
                };
                let r = self.t.write_protect_region(gpa.into(), len);
                let pages = before.clone();
                self.region_result(valid, gpa, len, &before, r, "write_protect_region", |m| {
                    for (g, p) in &pages {
                        m.protect(*g, K4, p.flags - MappingFlags::WRITE);
                    }
                });
                probes.extend(edges(gpa, len));
            }
            Op::SplitRegion { gpa, len } => {
                let (gpa, len) = (self.addr(gpa), self.len(len));
                let valid = Self::gpa_ok(gpa, len, K4);
                let frames = self.t.stats().table_frames;
                match self.t.split_region(gpa.into(), len) {
                    Ok(flush) => {
                        assert!(valid, "split_region accepted an invalid range");
                        flush.ignore();
                        let mut big = None;
                        self.t
                            .for_each_mapping(gpa.into(), len, |r| {
                                if r.max_page != PageSize::Size4K {
                                    big = Some(r);
                                }
                            })
                            .expect("valid range");
                        assert!(big.is_none(), "split_region left {big:?}");
                    }
                    Err(e) => {
                        self.no_memory_ok(&e);
                        assert!(
                            e == ChangeError::NoMemory || (!valid && is_arg_error(&e)),
                            "split_region: {e:?}"
                        );
                        assert_eq!(self.t.stats().table_frames, frames);
                    }
                }
                probes.extend(edges(gpa, len));
            }
            Op::Query { gpa } => {
                let gpa = self.addr(gpa);
                probes.extend([gpa, gpa.wrapping_add(0x123)]);
            }
            Op::Translate { gpa } => {
                let gpa = self.addr(gpa);
                let want = self.model.query(gpa).map(|(h, _)| h);
                let got = self.t.translate(gpa.into()).map(|h| h.as_usize());
                assert_eq!(got, want, "translate {gpa:#x}");
            }
            Op::TranslateBatch { ref gpas, out_len } => {
                let gpas: Vec<GuestPhysAddr> = gpas
                    .iter()
                    .take(64)
                    .map(|a| GuestPhysAddr::from(self.addr(*a)))
                    .collect();
                let sentinel = Some(HostPhysAddr::from(0x5a5a_5000usize));
                let mut out = vec![sentinel; out_len as usize % 80];
                self.t.translate_batch(&gpas, &mut out);
                for (i, o) in out.iter().enumerate() {
                    match gpas.get(i) {
                        Some(g) => {
                            let want = self.model.query(g.as_usize()).map(|(h, _)| h);
                            assert_eq!(o.map(|h| h.as_usize()), want, "translate_batch[{i}] {g:?}");
                        }
                        None => assert_eq!(*o, sentinel, "translate_batch wrote past gpas"),
                    }
                }
            }
            Op::Collapse { gpa, size } => {
                let (gpa, size) = (self.addr(gpa), size.size());
                let pre = self.t.query(gpa.into()).ok();
                let frames = self.t.stats().table_frames;
                let collapsible = self.model_collapsible(gpa, size);
                match self.t.collapse(gpa.into(), size) {
                    Ok(c) => {
                        assert!(collapsible, "collapse of a span the model cannot collapse");
                        assert_eq!(self.t.query(gpa.into()).map(|t| t.size).ok(), Some(size));
                        assert_eq!(frames - self.t.stats().table_frames, c.retired_tables);
                        if c.retired_tables > 0 {
                            assert!(c.flush.parks_frames(), "collapse parks its tables");
                            assert!(covers(&c.flush, gpa, gpa + size.bytes()), "collapse flush");
                        }
                    }
                    Err(e) => {
                        assert_eq!(self.t.stats().table_frames, frames);
                        if collapsible {
                            let inside_bigger = pre.is_some_and(|t| t.size > size);
                            assert!(
                                inside_bigger && matches!(e, CollapseError::NotCollapsible { .. }),
                                "collapse of a collapsible span failed: {e:?}"
                            );
                        }
                        assert!(e != CollapseError::NoMemory, "collapse allocates nothing");
                    }
                }
                probes.extend([gpa, gpa.wrapping_add(size.bytes() - K4)]);
            }
            Op::Harvest {
                gpa,
                len,
                dirty,
                words,
            } => {
                let (gpa, len) = (self.addr(gpa), self.len(len));
                let bit = if dirty {
                    AccessBit::Dirty
                } else {
                    AccessBit::Accessed
                };
                let mut bitmap = vec![0u64; words as usize % 130];
                let frames = self.t.stats().table_frames;
                match self.t.harvest(gpa.into(), len, bit, &mut bitmap) {
                    Ok(flush) => {
                        assert!(
                            Self::gpa_ok(gpa, len, K4),
                            "harvest accepted an invalid range"
                        );
                        for (w, word) in bitmap.iter().enumerate() {
                            for b in 0..64 {
                                if word & (1 << b) != 0 {
                                    let page = gpa + (w * 64 + b) * K4;
                                    assert!(page - gpa < len, "harvest bit past the range");
                                    assert!(
                                        self.model.query(page).is_some(),
                                        "harvest marked unmapped {page:#x}"
                                    );
                                    assert!(
                                        covers(&flush, page, page + K4),
                                        "harvested page not flushed"
                                    );
                                }
                            }
                        }
                        let mut again = vec![0u64; bitmap.len()];
                        self.t
                            .harvest(gpa.into(), len, bit, &mut again)
                            .expect("second harvest")
                            .ignore();
                        assert!(
                            again.iter().all(|w| *w == 0),
                            "harvest did not clear the bits"
                        );
                    }
                    Err(ChangeError::FrameCount { expected, given }) => {
                        assert_eq!(given, bitmap.len());
                        assert!(given * 64 < len / K4 && expected == (len / K4).div_ceil(64));
                    }
                    Err(e) => {
                        assert!(
                            is_arg_error(&e) && !Self::gpa_ok(gpa, len, K4),
                            "harvest: {e:?}"
                        );
                    }
                }
                assert_eq!(
                    self.t.stats().table_frames,
                    frames,
                    "harvest changed the table shape"
                );
                probes.extend(edges(gpa, len));
            }
            Op::FailFrom(n) => {
                self.alloc.fail_from(n as usize % 12 + 1);
                self.failing = true;
            }
            Op::Heal => {
                self.alloc.heal();
                self.failing = false;
            }
        }
        probes
    }

    /// A map operation: checks the outcome against the model and applies it.
    #[allow(clippy::too_many_arguments)]
    fn map_like(
        &mut self,
        valid: bool,
        gpa: usize,
        len: usize,
        _flags: MappingFlags,
        probes: &mut Vec<usize>,
        op: impl FnOnce(&mut Self) -> Result<TlbFlush, MapError>,
        apply: impl FnOnce(&mut PageModel),
    ) {
        let overlap = valid && self.model.any_mapped(gpa, len);
        if valid && !overlap && !self.fits(len) {
            return; // would succeed, too big for the model
        }
        if valid && len > MAP_BUDGET {
            return; // planning a huge range is slow whatever the outcome
        }
        let frames = self.t.stats().table_frames;
        match op(self) {
            Ok(flush) => {
                assert!(valid, "map accepted invalid arguments at {gpa:#x}+{len:#x}");
                assert!(
                    !overlap,
                    "map over an existing mapping at {gpa:#x}+{len:#x}"
                );
                assert!(covers(&flush, gpa, gpa + len), "map flush {flush:?}");
                apply(&mut self.model);
                self.remember(gpa);
                self.remember(gpa + len);
            }
            Err(e) => {
                assert_eq!(
                    self.t.stats().table_frames,
                    frames,
                    "failed map changed the table"
                );
                self.no_memory_ok(&e);
                match e {
                    MapError::AlreadyMapped { gpa: g } => {
                        assert!(valid && overlap, "AlreadyMapped without overlap");
                        let g = g.as_usize();
                        assert!(
                            g >= gpa && g - gpa < len && self.model.query(g).is_some(),
                            "AlreadyMapped names {g:#x}"
                        );
                    }
                    MapError::NoMemory => assert!(valid && !overlap),
                    e => assert!(!valid && is_arg_error(&e), "map: {e:?} (valid: {valid})"),
                }
            }
        }
        probes.extend([
            gpa.saturating_sub(K4),
            gpa,
            gpa.wrapping_add(len).wrapping_sub(1),
            gpa.wrapping_add(len),
        ]);
    }

    /// Outcome of `protect`/`remap` of the leaf starting at `gpa`.
    fn single_leaf_result(
        &mut self,
        gpa: usize,
        pre: Option<PageSize>,
        r: Result<TlbFlush, ChangeError>,
        flags: MappingFlags,
        hpa: Option<usize>,
        what: &str,
    ) {
        match r {
            Ok(flush) => {
                let size = pre.expect("changed a leaf query did not find");
                assert!(size.is_aligned(gpa));
                assert!(npt_entry::check_flags(flags).is_ok());
                let len = size.bytes();
                let before = self.pages_in(gpa, len);
                assert_eq!(before.len(), len / K4, "{what}: leaf not fully in model");
                match hpa {
                    None => {
                        self.model.protect(gpa, len, norm::<F>(flags));
                    }
                    Some(h) => {
                        assert!(self.hpa_ok(h, len, len), "{what}: bad hpa accepted");
                        self.model.unmap(gpa, len);
                        self.model.map(gpa, h, len, norm::<F>(flags));
                    }
                }
                self.check_flush(&before, &flush, what);
            }
            Err(ChangeError::NotMapped { .. }) => assert!(self.model.query(gpa).is_none()),
            Err(ChangeError::SizeMismatch { mapped, .. }) => {
                assert_eq!(pre, Some(mapped));
                assert!(!mapped.is_aligned(gpa));
            }
            Err(e) => {
                assert!(is_arg_error(&e), "{what}: {e:?}");
                let bad_flags = npt_entry::check_flags(flags).is_err();
                let bad_hpa =
                    hpa.is_some_and(|h| pre.is_none_or(|s| !self.hpa_ok(h, s.bytes(), s.bytes())));
                assert!(
                    bad_flags || bad_hpa || !Self::gpa_ok(gpa, K4, K4),
                    "{what}: {e:?} for valid arguments"
                );
            }
        }
    }

    /// Outcome of a range operation that needs something mapped.
    #[allow(clippy::too_many_arguments)]
    fn region_result(
        &mut self,
        valid: bool,
        gpa: usize,
        len: usize,
        before: &[(usize, ModelPage)],
        r: Result<TlbFlush, ChangeError>,
        what: &str,
        apply: impl FnOnce(&mut PageModel),
    ) {
        match r {
            Ok(flush) => {
                assert!(valid, "{what} accepted invalid arguments");
                assert!(!before.is_empty(), "{what} succeeded with nothing mapped");
                apply(&mut self.model);
                self.check_flush(before, &flush, what);
                self.remember(gpa);
            }
            Err(e) => {
                self.no_memory_ok(&e);
                match e {
                    ChangeError::NotMapped { .. } => {
                        assert!(
                            valid && before.is_empty(),
                            "{what}: NotMapped over mapped pages"
                        )
                    }
                    ChangeError::NoMemory => assert!(valid),
                    e => assert!(!valid && is_arg_error(&e), "{what}: {e:?}"),
                }
            }
        }
        let _ = len;
    }

    /// The model says `[gpa, gpa + size)` is one aligned host run with
    /// equal flags, fully mapped.
    fn model_collapsible(&self, gpa: usize, size: PageSize) -> bool {
        if !size.is_huge()
            || F::level_of(size).is_none()
            || !Self::gpa_ok(gpa, size.bytes(), size.bytes())
        {
            return false;
        }
        let Some((base, flags)) = self.model.query(gpa) else {
            return false;
        };
        if !size.is_aligned(base) {
            return false;
        }
        let pages = self.pages_in(gpa, size.bytes());
        pages.len() == size.bytes() / K4
            && pages
                .iter()
                .all(|(g, p)| p.hpa == base + (g - gpa) && p.flags == flags)
    }

    /// The table agrees with the model.
    fn check(&self, probes: &[usize]) {
        let stats = self.t.stats();
        assert_eq!(
            stats.mapped_bytes(),
            (self.model.len() * K4) as u128,
            "mapped bytes"
        );
        assert_eq!(
            stats.table_frames + self.t.parked_frames(),
            self.alloc.inner().live_frames(),
            "table and parked frames vs live frames"
        );
        assert_eq!(table_runs(&self.t), model_runs(&self.model), "mapped runs");
        let mut cursor = self.t.cursor();
        let first = self.model.iter().next().map(|(g, _)| g);
        let sample = probes
            .iter()
            .copied()
            .chain(first)
            .chain(self.recent.iter().rev().take(4).copied());
        for p in sample {
            let want = self.model.query(p);
            let got = self
                .t
                .query(p.into())
                .ok()
                .map(|t| (t.hpa.as_usize(), t.flags));
            assert_eq!(got, want, "query {p:#x}");
            let c = cursor
                .query(p.into())
                .ok()
                .map(|t| (t.hpa.as_usize(), t.flags));
            assert_eq!(c, want, "cursor query {p:#x}");
            assert_eq!(
                cursor.translate(p.into()).map(|h| h.as_usize()),
                want.map(|w| w.0),
                "cursor translate {p:#x}"
            );
            if (p as u64) >= F::GPA_LIMIT {
                assert!(matches!(
                    self.t.query(p.into()),
                    Err(QueryError::GpaOutOfRange { .. })
                ));
            }
        }
    }
}

impl Policy {
    /// The largest leaf the policy allows in format `F`.
    fn get_max<F: NptFormat>(self) -> PageSize {
        let wanted = match self {
            Policy::Only4K => PageSize::Size4K,
            Policy::Huge => PageSize::Size1G,
            Policy::UpTo(ps) => ps.size(),
        };
        wanted.min(F::MAX_LEAF)
    }
}

fn edges(gpa: usize, len: usize) -> [usize; 4] {
    let end = gpa.wrapping_add(len);
    [gpa.saturating_sub(K4), gpa, end.wrapping_sub(1), end]
}

/// The model's pages merged into maximal runs, as `for_each_mapping` merges.
fn model_runs(model: &PageModel) -> Vec<(usize, usize, usize, MappingFlags)> {
    let mut runs: Vec<(usize, usize, usize, MappingFlags)> = Vec::new();
    for (gpa, page) in model.iter() {
        if let Some(last) = runs.last_mut()
            && last.0 + last.2 == gpa
            && last.1 + last.2 == page.hpa
            && last.3 == page.flags
        {
            last.2 += K4;
            continue;
        }
        runs.push((gpa, page.hpa, K4, page.flags));
    }
    runs
}

fn table_runs<F: NptFormat>(
    t: &NestedPageTable<F, &Alloc>,
) -> Vec<(usize, usize, usize, MappingFlags)> {
    let mut runs = Vec::new();
    t.for_each_mapping(
        GuestPhysAddr::from(0),
        F::GPA_LIMIT as usize,
        |r: MappedRun| runs.push((r.gpa.as_usize(), r.hpa.as_usize(), r.len, r.flags)),
    )
    .expect("the whole GPA space is a valid range");
    runs
}
