//! Many vCPUs at once: threads fault, read, write and collect dirty pages on
//! one `SharedAddrSpace`, for every format, checked against a model after
//! each join.
//!
//! The checks do not depend on how the threads interleave:
//!
//! - each thread owns a disjoint set of 4-page blocks of RAM and is the only
//!   one to write there, so the final bytes are what each owner last wrote;
//!   a thread reading its own bytes must find them at any time;
//! - faults, reads and translations go anywhere, several threads on the
//!   same page at once (every phase starts with all threads faulting the
//!   same fresh lazy pages in the same order). A fault's outcome depends
//!   only on the region and the access; a page once seen mapped stays
//!   mapped to the same frame, so two threads populating the same page
//!   must agree on one frame, and it is counted once;
//! - while dirty logging is on, the pages any thread collected (plus a
//!   final collection after the join) are exactly the pages some thread
//!   host-wrote or write-faulted: no bit lost, none invented;
//! - between phases (no thread running) the contents, the mapped lazy
//!   pages, the fault counters, the region sizes and the frame count
//!   (live frames = table frames + parked + populated lazy pages + eager
//!   backing) match the model; after drop no frame is live.
//!
//! Three phases per format: no logging; logging on the eager and the lazy
//! RAM (started and stopped under the exclusive lock, between phases);
//! logging stopped again. Each phase opens a third of the lazy region to
//! the threads, so every phase populates pages (while logging, too).
//!
//! Under Miri (`cfg!(miri)`) fewer threads and operations and a smaller
//! eager region run:
//!
//! ```sh
//! MIRIFLAGS=-Zmiri-permissive-provenance cargo +nightly miri test -p guest-aspace --test stress
//! ```

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Barrier;

use common::*;
use guest_aspace::model::SpaceModel;
use guest_aspace::{
    Access, AspaceError, AspaceResult, FaultOutcome, GuestAddrSpace, PageSize, SharedAddrSpace,
    TlbFlush,
};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, HostFrameAllocator};

// ---- the operations under test, one place each ----
//
// Every concurrent operation of the test goes through one of these. The
// ones that take the exclusive lock today move to the shared lock when
// `SharedAddrSpace` gets the method.

fn fault<F: NptFormat, A: FrameAllocator>(
    s: &SharedAddrSpace<F, A>,
    g: usize,
    access: Access,
) -> AspaceResult<FaultOutcome> {
    s.handle_fault(gpa(g), access)
}

fn host_read<F: NptFormat, A: FrameAllocator>(
    s: &SharedAddrSpace<F, A>,
    g: usize,
    buf: &mut [u8],
) -> AspaceResult<()> {
    s.read_bytes(gpa(g), buf)
}

fn host_read_u64<F: NptFormat, A: FrameAllocator>(
    s: &SharedAddrSpace<F, A>,
    g: usize,
) -> AspaceResult<u64> {
    s.read_obj::<u64>(gpa(g))
}

fn host_write<F: NptFormat, A: FrameAllocator>(
    s: &SharedAddrSpace<F, A>,
    g: usize,
    data: &[u8],
) -> AspaceResult<()> {
    s.write_bytes(gpa(g), data)
}

fn host_write_obj<F: NptFormat, A: FrameAllocator>(
    s: &SharedAddrSpace<F, A>,
    g: usize,
    value: &[u32; 3],
) -> AspaceResult<()> {
    s.write_obj(gpa(g), value)
}

fn collect<F: NptFormat, A: FrameAllocator>(
    s: &SharedAddrSpace<F, A>,
    g: usize,
    out: &mut [u64],
) -> AspaceResult<()> {
    s.collect_dirty(gpa(g), out).map(TlbFlush::ignore)
}

fn translate<F: NptFormat, A: FrameAllocator>(
    s: &SharedAddrSpace<F, A>,
    g: usize,
) -> Option<usize> {
    s.translate(gpa(g)).map(|h| h.as_usize())
}

// ---- sizes and layout ----

/// Threads (vCPUs) per phase.
const THREADS: usize = if cfg!(miri) { 3 } else { 4 };
/// Random operations per thread and phase (after the shared sweep).
const OPS: usize = if cfg!(miri) { 40 } else { 8000 };
/// Eager RAM: natively 2 MiB, one huge frame where the format has 2 MiB
/// leaves, which dirty logging splits and stopping collapses again.
const EAGER_PAGES: usize = if cfg!(miri) { 16 } else { 512 };
const LAZY_PAGES: usize = if cfg!(miri) { 24 } else { 64 };
const ROM_PAGES: usize = 2;
const MMIO_PAGES: usize = 2;

/// Eager RAM, then lazy RAM right after it: one span of host-writable
/// memory that writes may cross.
const EAGER: usize = G1;
const LAZY: usize = EAGER + EAGER_PAGES * K4;
const END: usize = LAZY + LAZY_PAGES * K4;
const SPAN: usize = END - EAGER;
const ROM: usize = 0x3000_0000;
const MMIO: usize = 0x3100_0000;
/// No region here.
const HOLE: usize = 0x3200_0000;

/// The thread that owns (alone writes) page `p` of the span: blocks of 4
/// pages, shifted by 2 so that one block straddles the eager/lazy edge.
fn owner(p: usize) -> usize {
    ((p + 2) / 4) % THREADS
}

/// The lazy pages the threads touch in `phase`: phase `p` opens the `p`-th
/// third of the lazy region.
fn lazy_limit(phase: usize) -> usize {
    LAZY_PAGES * (phase + 1) / 3
}

/// The span's pages (`[start, end)`, span page numbers) of each write block
/// thread `t` owns in `phase`, split into blocks in eager RAM only and
/// blocks reaching lazy RAM.
fn owned_blocks(t: usize, phase: usize) -> [Vec<(usize, usize)>; 2] {
    let limit = EAGER_PAGES + lazy_limit(phase);
    let mut out = [Vec::new(), Vec::new()];
    let mut b = t;
    while (4 * b).saturating_sub(2) < limit {
        let (s, e) = ((4 * b).saturating_sub(2), (4 * b + 2).min(limit));
        out[usize::from(e > EAGER_PAGES)].push((s, e));
        b += THREADS;
    }
    out
}

/// A small deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 16) as usize % n
    }

    fn access(&mut self) -> Access {
        [Access::Read, Access::Write, Access::Execute][self.below(3)]
    }
}

/// Fault outcomes by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    fixed: u64,
    mmio: u64,
    violation: u64,
    unmapped: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.fixed += o.fixed;
        self.mmio += o.mmio;
        self.violation += o.violation;
        self.unmapped += o.unmapped;
    }
}

/// What one thread did and saw in one phase.
struct Vcpu<'m> {
    t: usize,
    phase: usize,
    logging: bool,
    rng: Rng,
    /// The regions (read-only during a phase): fault outcomes and which
    /// host accesses fail where.
    model: &'m SpaceModel,
    /// The ROM image.
    image: &'m [u8],
    /// The span as this thread expects it: its own blocks are exact; other
    /// threads' blocks hold what they held when the phase began.
    shadow: Vec<u8>,
    /// Lazy pages this thread populated (by a fixed fault or a write) or saw
    /// mapped.
    populated: BTreeSet<usize>,
    /// Host address each page was first seen mapped to.
    seen: HashMap<usize, usize>,
    counts: Counts,
    /// While logging: pages this thread host-wrote or write-faulted.
    dirtied: BTreeSet<usize>,
    /// While logging: pages its collections reported.
    collected: BTreeSet<usize>,
    owned: [Vec<(usize, usize)>; 2],
}

impl Vcpu<'_> {
    fn is_lazy(g: usize) -> bool {
        (LAZY..END).contains(&g)
    }

    /// A page to fault or translate: mostly the open lazy pages (often the
    /// phase's first four new ones, where every thread goes), then eager
    /// RAM, ROM, MMIO and no region.
    fn any_page(&mut self) -> usize {
        let limit = lazy_limit(self.phase);
        let hot = LAZY_PAGES * self.phase / 3;
        match self.rng.below(20) {
            0..=4 => LAZY + (hot + self.rng.below(4)) * K4,
            5..=9 => LAZY + self.rng.below(limit) * K4,
            10..=13 => EAGER + self.rng.below(EAGER_PAGES) * K4,
            14..=15 => ROM + self.rng.below(ROM_PAGES) * K4,
            16..=17 => MMIO + self.rng.below(MMIO_PAGES) * K4,
            _ => HOLE + self.rng.below(4) * K4,
        }
    }

    /// An address to read from: anywhere in the span (other threads' blocks
    /// and lazy pages no thread has touched yet included), near its end (the
    /// read then fails where RAM ends), or in ROM, MMIO or no region.
    ///
    /// Under Miri a thread reads RAM only in its own blocks. A host read of
    /// bytes another thread is writing is a data race in Rust's memory
    /// model (as is every host access to memory a running guest writes; the
    /// crate documents such bytes as some mix of the writers'), and Miri
    /// reports it whenever the two threads' lock slots do not happen to
    /// order them. What this test checks (tables, frames, counters, the
    /// dirty log) does not depend on those bytes; natively the reads still
    /// go anywhere.
    fn any_read(&mut self) -> (usize, usize) {
        let len = self.len();
        let g = match self.rng.below(10) {
            0..=7 if cfg!(miri) => return self.own_range(len),
            0..=6 => EAGER + self.rng.below(SPAN),
            7 => END - self.rng.below(64) - 1,
            8 => ROM + self.rng.below(ROM_PAGES * K4 + 64),
            _ => [MMIO, HOLE][self.rng.below(2)] + self.rng.below(K4),
        };
        (g, len)
    }

    /// A write length: mostly small, sometimes across a page boundary.
    fn len(&mut self) -> usize {
        match self.rng.below(20) {
            // Under Miri shorter, still crossing pages often.
            0 => 1 + self.rng.below(if cfg!(miri) { 512 } else { 2 * K4 }),
            1..=4 => 17 + self.rng.below(240),
            _ => 1 + self.rng.below(16),
        }
    }

    /// A range of `len` bytes (shortened to fit) inside one of this
    /// thread's blocks, as (guest address, length).
    fn own_range(&mut self, len: usize) -> (usize, usize) {
        let lazy = usize::from(self.rng.below(2) == 0 && !self.owned[1].is_empty());
        let blocks = &self.owned[if self.owned[0].is_empty() { 1 } else { lazy }];
        let (s, e) = blocks[self.rng.below(blocks.len())];
        let size = (e - s) * K4;
        let len = len.min(size);
        let off = self.rng.below(size - len + 1);
        (EAGER + s * K4 + off, len)
    }

    fn fault<F: NptFormat, A: FrameAllocator>(&mut self, s: &SharedAddrSpace<F, A>, g: usize) {
        let access = self.rng.access();
        self.fault_at(s, g, access);
    }

    fn fault_at<F: NptFormat, A: FrameAllocator>(
        &mut self,
        s: &SharedAddrSpace<F, A>,
        g: usize,
        access: Access,
    ) {
        let out = fault(s, g, access).unwrap_or_else(|e| panic!("fault at {g:#x}: {e}"));
        let want = self.model.fault(g, access);
        match (out, want) {
            (FaultOutcome::Fixed(flush), None) => {
                flush.ignore();
                self.counts.fixed += 1;
                let page = g & !(K4 - 1);
                if Self::is_lazy(g) {
                    self.populated.insert(page);
                }
                if self.logging && access == Access::Write {
                    self.dirtied.insert(page);
                }
                // Whoever populated it: it is there now, for good.
                self.check_translation(s, page, true);
            }
            (out, Some(want)) if out == want => match out {
                FaultOutcome::Mmio { .. } => self.counts.mmio += 1,
                FaultOutcome::Violation { .. } => self.counts.violation += 1,
                FaultOutcome::Unmapped { .. } => self.counts.unmapped += 1,
                FaultOutcome::Fixed(_) => unreachable!("the model never predicts Fixed"),
            },
            (out, want) => panic!("{access:?} fault at {g:#x}: got {out:?}, want {want:?}"),
        }
    }

    /// Checks what `page` translates to against what this thread saw
    /// before; `must` if it has to be mapped.
    fn check_translation<F: NptFormat, A: FrameAllocator>(
        &mut self,
        s: &SharedAddrSpace<F, A>,
        page: usize,
        must: bool,
    ) {
        let off = self.rng.below(K4);
        let got = translate(s, page + off);
        let mapped_for_good = must
            || (EAGER..LAZY).contains(&page)
            || (ROM..ROM + ROM_PAGES * K4).contains(&page)
            || self.populated.contains(&page);
        match got {
            Some(h) => {
                assert_eq!(h % K4, off, "{page:#x}+{off:#x}: offset kept");
                let first = *self.seen.entry(page).or_insert(h - off);
                assert_eq!(first, h - off, "{page:#x} moved to another frame");
                assert!(
                    self.model
                        .region_at(page)
                        .is_some_and(|r| r.kind.host_ok(false, true)),
                    "{page:#x} mapped outside RAM and ROM"
                );
                if Self::is_lazy(page) {
                    self.populated.insert(page);
                }
            }
            None => assert!(!mapped_for_good, "{page:#x} not mapped"),
        }
    }

    fn read<F: NptFormat, A: FrameAllocator>(&mut self, s: &SharedAddrSpace<F, A>) {
        let (g, len) = self.any_read();
        let mut buf = vec![0x5au8; len];
        let got = host_read(s, g, &mut buf);
        match self.model.first_inaccessible(g, len, false, false) {
            Some(bad) => assert_eq!(got, Err(AspaceError::NotRam { gpa: gpa(bad) })),
            None => {
                assert_eq!(got, Ok(()), "read [{g:#x}, +{len:#x})");
                self.check_bytes(g, &buf);
            }
        }
    }

    fn read_u64<F: NptFormat, A: FrameAllocator>(&mut self, s: &SharedAddrSpace<F, A>) {
        // Often its own bytes, so that the check below has something to
        // compare.
        let g = if self.rng.below(2) == 0 {
            self.own_range(8).0
        } else {
            self.any_read().0
        };
        let got = host_read_u64(s, g);
        match self.model.first_inaccessible(g, 8, false, false) {
            Some(bad) => assert_eq!(got, Err(AspaceError::NotRam { gpa: gpa(bad) })),
            None => {
                let v = got.unwrap_or_else(|e| panic!("read_obj at {g:#x}: {e}"));
                self.check_bytes(g, &v.to_ne_bytes());
            }
        }
    }

    /// Compares the bytes read at `g` that this thread can know: its own
    /// blocks and ROM.
    fn check_bytes(&self, g: usize, buf: &[u8]) {
        // Page by page, each compared whole (a byte loop is slow under
        // Miri).
        let end = g + buf.len();
        let mut pos = g;
        while pos < end {
            let stop = ((pos & !(K4 - 1)) + K4).min(end);
            let got = &buf[pos - g..stop - g];
            let want = if (EAGER..END).contains(&pos) {
                (owner((pos - EAGER) / K4) == self.t)
                    .then(|| &self.shadow[pos - EAGER..stop - EAGER])
            } else if (ROM..ROM + ROM_PAGES * K4).contains(&pos) {
                Some(&self.image[pos - ROM..stop - ROM])
            } else {
                None
            };
            if let Some(want) = want {
                assert!(
                    got == want,
                    "thread {} reads [{pos:#x}, {stop:#x}): {got:x?}, want {want:x?}",
                    self.t
                );
            }
            pos = stop;
        }
    }

    /// The guest accepted a host write of `data` at `g`.
    fn wrote(&mut self, g: usize, data: &[u8]) {
        self.shadow[g - EAGER..][..data.len()].copy_from_slice(data);
        let mut page = g & !(K4 - 1);
        while page < g + data.len() {
            if Self::is_lazy(page) {
                self.populated.insert(page);
            }
            if self.logging {
                self.dirtied.insert(page);
            }
            page += K4;
        }
    }

    fn write<F: NptFormat, A: FrameAllocator>(&mut self, s: &SharedAddrSpace<F, A>) {
        let len = self.len();
        let (g, len) = self.own_range(len);
        let fill = self.rng.next();
        let data: Vec<u8> = (0..len)
            .map(|i| (fill >> (8 * (i % 8))) as u8 ^ (i / 8) as u8)
            .collect();
        host_write(s, g, &data).unwrap_or_else(|e| panic!("write [{g:#x}, +{len:#x}): {e}"));
        self.wrote(g, &data);
    }

    fn write_obj<F: NptFormat, A: FrameAllocator>(&mut self, s: &SharedAddrSpace<F, A>) {
        let (g, _) = self.own_range(12);
        let v = [
            self.rng.next() as u32,
            self.rng.next() as u32,
            self.rng.next() as u32,
        ];
        host_write_obj(s, g, &v).unwrap_or_else(|e| panic!("write_obj at {g:#x}: {e}"));
        let bytes: Vec<u8> = v.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.wrote(g, &bytes);
    }

    /// A host write the space must refuse whole: ROM, MMIO, no region.
    fn bad_write<F: NptFormat, A: FrameAllocator>(&mut self, s: &SharedAddrSpace<F, A>) {
        let len = self.len();
        let g = [ROM, MMIO, HOLE][self.rng.below(3)] + self.rng.below(K4);
        let got = host_write(s, g, &vec![0xeeu8; len]);
        assert_eq!(got, Err(AspaceError::NotRam { gpa: gpa(g) }));
    }

    fn collect<F: NptFormat, A: FrameAllocator>(&mut self, s: &SharedAddrSpace<F, A>) {
        let (start, pages) = if self.rng.below(2) == 0 {
            (LAZY, LAZY_PAGES)
        } else {
            (EAGER, EAGER_PAGES)
        };
        let g = start + self.rng.below(pages * K4);
        // One word more than needed: it must come back zero.
        let mut out = vec![u64::MAX; pages.div_ceil(64) + 1];
        let got = collect(s, g, &mut out);
        if !self.logging {
            assert_eq!(got, Err(AspaceError::WrongRegionState { gpa: gpa(g) }));
            return;
        }
        assert_eq!(got, Ok(()), "collect at {g:#x}");
        for (w, &word) in out.iter().enumerate() {
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    let p = w * 64 + bit;
                    assert!(p < pages, "bit {p} past the region's {pages} pages");
                    self.collected.insert(start + p * K4);
                }
            }
        }
    }

    /// The thread's body: the shared sweep, then random operations.
    fn run<F: NptFormat, A: FrameAllocator>(
        mut self,
        s: &SharedAddrSpace<F, A>,
        start: &Barrier,
    ) -> Self {
        // Every thread faults the phase's new lazy pages in the same
        // order, right after the others start: the same empty slots, the
        // same vacant leaves, raced for at once.
        start.wait();
        for p in LAZY_PAGES * self.phase / 3..lazy_limit(self.phase) {
            let access = [Access::Read, Access::Write, Access::Execute][(p + self.t) % 3];
            let off = self.rng.below(K4);
            self.fault_at(s, LAZY + p * K4 + off, access);
        }
        for _ in 0..OPS {
            match self.rng.below(100) {
                0..=29 => {
                    let page = self.any_page();
                    let off = self.rng.below(K4);
                    self.fault(s, page + off);
                }
                30..=49 => self.read(s),
                50..=54 => self.read_u64(s),
                55..=74 => self.write(s),
                75..=79 => self.write_obj(s),
                80..=82 => self.bad_write(s),
                83..=94 => {
                    let page = self.any_page();
                    self.check_translation(s, page, false);
                }
                _ => self.collect(s),
            }
        }
        self
    }
}

/// The model between phases, and the checks that compare it with the
/// space while no thread runs.
struct World {
    model: SpaceModel,
    image: Vec<u8>,
    /// The span's contents.
    mem: Vec<u8>,
    /// Lazy pages populated.
    populated: BTreeSet<usize>,
    /// Host address of every page a thread saw mapped.
    seen: HashMap<usize, usize>,
    counts: Counts,
    /// 2 MiB leaves the eager backing has when not logging.
    huge_leaves: usize,
}

impl World {
    /// Takes in what the threads of one phase did.
    fn merge(&mut self, vcpus: Vec<Vcpu<'_>>) {
        let mut mem = self.mem.clone();
        for v in vcpus {
            for p in (0..SPAN / K4).filter(|&p| owner(p) == v.t) {
                mem[p * K4..][..K4].copy_from_slice(&v.shadow[p * K4..][..K4]);
            }
            self.populated.extend(&v.populated);
            for (page, h) in v.seen {
                let first = *self.seen.entry(page).or_insert(h);
                assert_eq!(first, h, "two threads saw {page:#x} at different frames");
            }
            self.counts.add(v.counts);
        }
        self.mem = mem;
        for &page in &self.populated {
            if let Some(r) = self.model.region_at_mut(page) {
                r.chunks.insert(page, K4);
            }
        }
    }

    /// Everything observable, with no thread running.
    fn check<F: NptFormat>(
        &self,
        space: &GuestAddrSpace<F, &HostFrameAllocator>,
        alloc: &HostFrameAllocator,
        when: &str,
    ) {
        let name = F::NAME;
        // Contents: the owners' last writes, zeros elsewhere.
        let mut buf = vec![0u8; SPAN];
        space.read(gpa(EAGER), &mut buf).unwrap();
        // Compared whole first (a `memcmp`: a byte loop is slow under Miri).
        if buf != self.mem {
            let i = (0..SPAN).find(|&i| buf[i] != self.mem[i]).unwrap_or(0);
            panic!(
                "{name} {when}: {:#x} holds {:#x}, want {:#x}",
                EAGER + i,
                buf[i],
                self.mem[i]
            );
        }
        let mut rom = vec![0u8; ROM_PAGES * K4];
        space.read(gpa(ROM), &mut rom).unwrap();
        assert!(rom == self.image, "{name} {when}: ROM changed");
        // Mapped pages: exactly the populated lazy ones, one frame each,
        // where the threads saw them.
        let mut frames = BTreeSet::new();
        for p in 0..LAZY_PAGES {
            let page = LAZY + p * K4;
            let h = space.translate(gpa(page));
            assert_eq!(
                h.is_some(),
                self.populated.contains(&page),
                "{name} {when}: lazy page {page:#x}"
            );
            if let Some(h) = h {
                assert!(frames.insert(h.as_usize()), "{name}: {h:?} mapped twice");
            }
        }
        for (&page, &h) in &self.seen {
            assert_eq!(
                space.translate(gpa(page)).map(|h| h.as_usize()),
                Some(h),
                "{name} {when}: {page:#x} moved"
            );
        }
        for p in 0..MMIO_PAGES {
            assert_eq!(space.translate(gpa(MMIO + p * K4)), None);
        }
        // Counters: every fault counted once by outcome; a page two
        // threads raced to populate counted once.
        let stats = space.stats();
        let c = stats.faults;
        let got = Counts {
            fixed: c.fixed,
            mmio: c.mmio,
            violation: c.violation,
            unmapped: c.unmapped,
        };
        assert_eq!(got, self.counts, "{name} {when}: fault counters");
        assert_eq!(
            c.pages_populated,
            self.populated.len() as u64,
            "{name} {when}: pages populated"
        );
        for r in space.regions() {
            let want = self.model.region_at(r.range.start.as_usize()).unwrap();
            assert_eq!(
                r.populated,
                want.populated(),
                "{name} {when}: populated bytes of {:?}",
                r.range
            );
        }
        // Frames: the table's, those parked for a flush, the populated
        // lazy pages and the eager backing; nothing else.
        let t = stats.table;
        let eager = EAGER_PAGES + ROM_PAGES;
        assert_eq!(
            alloc.live_frames(),
            t.table_frames + space.parked_frames() + self.populated.len() + eager,
            "{name} {when}: live frames ({t:?}, {} parked)",
            space.parked_frames()
        );
        assert_eq!(
            t.leaves_of(PageSize::Size4K) + 512 * t.leaves_of(PageSize::Size2M),
            self.populated.len() + eager,
            "{name} {when}: leaves"
        );
    }
}

fn run<F: NptFormat>() {
    // A seed per format (the stage-2 formats share a name).
    let seed = F::NAME
        .bytes()
        .fold(F::GPA_LIMIT ^ F::LEVELS as u64, |h, b| {
            h.wrapping_mul(31) ^ u64::from(b)
        });
    let alloc = HostFrameAllocator::new();
    {
        let mut space = GuestAddrSpace::<F, _>::new(&alloc, window(0, 1 << 32)).unwrap();
        space
            .add_ram(gpa(EAGER), EAGER_PAGES * K4, RW, false)
            .unwrap()
            .ignore();
        space
            .add_ram(gpa(LAZY), LAZY_PAGES * K4, RWX, true)
            .unwrap()
            .ignore();
        space
            .add_rom(gpa(ROM), ROM_PAGES * K4, true)
            .unwrap()
            .ignore();
        space
            .add_mmio(gpa(MMIO), MMIO_PAGES * K4, None)
            .unwrap()
            .ignore();
        let image: Vec<u8> = (0..ROM_PAGES * K4).map(|i| (i * 7 + 3) as u8).collect();
        space.load_image(gpa(ROM), &image).unwrap();
        let model = SpaceModel::from_space(&space);
        let huge_leaves = space.table_stats().leaves_of(PageSize::Size2M);
        let expected_huge = model
            .region_at(EAGER)
            .unwrap()
            .chunks
            .values()
            .filter(|&&c| c == PageSize::Size2M.bytes())
            .count();
        assert_eq!(huge_leaves, expected_huge, "{}: eager layout", F::NAME);
        let mut world = World {
            model,
            image,
            mem: vec![0; SPAN],
            populated: BTreeSet::new(),
            seen: HashMap::new(),
            counts: Counts::default(),
            huge_leaves,
        };
        world.check(&space, &alloc, "before");
        let shared = SharedAddrSpace::new(space);

        for phase in 0..3 {
            let logging = phase == 1;
            if logging {
                let mut s = shared.write();
                for g in [EAGER, LAZY] {
                    let f = s.start_dirty_log(gpa(g)).unwrap();
                    s.complete(f);
                }
            }
            // The regions do not change during a phase.
            let (model, image) = (world.model.clone(), world.image.clone());
            let start = Barrier::new(THREADS);
            let vcpus: Vec<Vcpu<'_>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let vcpu = Vcpu {
                            t,
                            phase,
                            logging,
                            rng: Rng::new(seed ^ (((phase * THREADS + t) as u64 + 1) << 32)),
                            model: &model,
                            image: &image,
                            shadow: world.mem.clone(),
                            populated: world.populated.clone(),
                            seen: HashMap::new(),
                            counts: Counts::default(),
                            dirtied: BTreeSet::new(),
                            collected: BTreeSet::new(),
                            owned: owned_blocks(t, phase),
                        };
                        let (shared, start) = (&shared, &start);
                        scope.spawn(move || vcpu.run(shared, start))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            if logging {
                check_dirty(&shared, &vcpus);
            }
            world.merge(vcpus);
            let when = format!("after phase {phase}");
            world.check(&*shared.read(), &alloc, &when);
            if logging {
                let mut s = shared.write();
                for g in [EAGER, LAZY] {
                    let f = s.stop_dirty_log(gpa(g)).unwrap();
                    s.complete(f);
                }
                drop(s);
                let space = shared.read();
                // Write access back everywhere, huge leaves collapsed again.
                for page in mapped_ram(&*space) {
                    let flags = space.query(gpa(page)).unwrap().flags;
                    assert!(flags.contains(RW), "{} {page:#x}: {flags:?}", F::NAME);
                }
                assert_eq!(
                    space.table_stats().leaves_of(PageSize::Size2M),
                    world.huge_leaves,
                    "{}: huge eager backing collapsed after logging",
                    F::NAME
                );
                world.check(&space, &alloc, "after stopping the log");
            }
        }

        let mut space = shared.into_inner();
        space.complete_all();
        assert_eq!(space.parked_frames(), 0);
        world.check(&space, &alloc, "at the end");
    }
    assert_eq!(alloc.live_frames(), 0, "{}: frames leaked", F::NAME);
}

/// The mapped pages of both RAM regions.
fn mapped_ram<F: NptFormat, A: FrameAllocator>(space: &GuestAddrSpace<F, A>) -> Vec<usize> {
    (EAGER..END)
        .step_by(K4)
        .filter(|&p| space.translate(gpa(p)).is_some())
        .collect()
}

/// After a logging phase: the collections of every thread plus one final
/// collection are exactly the pages written in it; afterwards every page
/// is write-protected again.
fn check_dirty<F: NptFormat, A: FrameAllocator>(s: &SharedAddrSpace<F, A>, vcpus: &[Vcpu<'_>]) {
    let mut collected = BTreeSet::new();
    let mut dirtied = BTreeSet::new();
    for v in vcpus {
        collected.extend(&v.collected);
        dirtied.extend(&v.dirtied);
    }
    for (start, pages) in [(EAGER, EAGER_PAGES), (LAZY, LAZY_PAGES)] {
        let mut out = vec![0u64; pages.div_ceil(64)];
        collect(s, start, &mut out).unwrap();
        for p in 0..pages {
            if out[p / 64] & (1 << (p % 64)) != 0 {
                collected.insert(start + p * K4);
            }
        }
    }
    let lost: Vec<_> = dirtied.difference(&collected).collect();
    assert!(lost.is_empty(), "{}: dirty bits lost: {lost:#x?}", F::NAME);
    let invented: Vec<_> = collected.difference(&dirtied).collect();
    assert!(
        invented.is_empty(),
        "{}: pages reported dirty that nobody wrote: {invented:#x?}",
        F::NAME
    );
    let space = s.read();
    for page in mapped_ram(&*space) {
        let flags = space.query(gpa(page)).unwrap().flags;
        assert!(
            !flags.contains(guest_aspace::MappingFlags::WRITE),
            "{} {page:#x}: writable after the last collection",
            F::NAME
        );
    }
}

macro_rules! stress_tests {
    ($($name:ident: $fmt:ty,)*) => {$(
        #[test]
        fn $name() {
            run::<$fmt>();
        }
    )*};
}

npt_entry::for_each_format!(stress_tests);
