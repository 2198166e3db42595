//! Maps. A single page is mapped in one walk: the first missing table on
//! the way fixes how many frames to take, all of them are taken, then the
//! path and the leaf are written. A range is planned first (check, count
//! table frames, take them), then written without any step that can fail.
//!
//! A range is cut into *runs*: consecutive leaves of one size inside one
//! table. The planner and the writer cut it the same way, so the number of
//! tables the planner counts is exactly the number the writer creates.

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_entry::{BITS_PER_LEVEL, GenericPTE, NestedEntry, NptFormat};

use crate::error::MapError;
use crate::flush::TlbFlush;
use crate::frames::FrameAllocator;
use crate::table::{Ledger, MapPolicy, NestedPageTable, Stash};
use crate::walk::{MAX_LEVELS, Path, Step, entry_span};

/// Where the host frames of a range map come from.
#[derive(Clone, Copy)]
enum Source<'s> {
    /// One contiguous host range starting here.
    Linear(usize),
    /// One 4 KiB frame per page.
    Frames(&'s [HostPhysAddr]),
    /// One leaf per chunk, chunks laid out back to back in GPA order.
    Chunks(&'s [(HostPhysAddr, PageSize)]),
}

/// Consecutive leaves of one size in one table.
#[derive(Clone, Copy)]
struct Run {
    gpa: usize,
    level: usize,
    size: PageSize,
    count: usize,
    /// Index of the run's first frame or chunk in the source (or the host
    /// address of its first byte for a linear source).
    src: usize,
}

/// Cuts `[gpa, end)` into runs for leaves no larger than `max`.
struct Runs<'s, F> {
    gpa: usize,
    end: usize,
    /// Host address (linear) or frame/chunk index (lists).
    src: usize,
    source: Source<'s>,
    max: PageSize,
    _f: core::marker::PhantomData<F>,
}

impl<F: NptFormat> Iterator for Runs<'_, F> {
    type Item = Run;

    #[inline]
    fn next(&mut self) -> Option<Run> {
        if self.gpa >= self.end {
            return None;
        }
        let remaining = self.end - self.gpa;
        let (size, limit) = match self.source {
            Source::Linear(_) => {
                // The largest leaf up to `max` that both addresses are
                // aligned to and that fits in what remains, in bit
                // arithmetic: both addresses are 4 KiB aligned and at
                // least 4 KiB remain, so `bits` is at least 12.
                let bits = (self.gpa | self.src)
                    .trailing_zeros()
                    .min(remaining.checked_ilog2().unwrap_or(0))
                    .min(self.max.shift());
                let height = bits.saturating_sub(PageSize::Size4K.shift()) / BITS_PER_LEVEL;
                let mut size = PageSize::from_height(height as usize).unwrap_or(PageSize::Size4K);
                // `max` is a size the format allows, and so is every
                // smaller one; this only guards that promise.
                while F::level_of(size).is_none() && size > PageSize::Size4K {
                    size = size.smaller().unwrap_or(PageSize::Size4K);
                }
                (size, usize::MAX)
            }
            Source::Frames(_) => (PageSize::Size4K, usize::MAX),
            Source::Chunks(chunks) => {
                let rest = chunks.get(self.src..).unwrap_or(&[]);
                let size = rest.first()?.1;
                // A run never spans more entries than one table holds.
                let room = F::level_of(size).map_or(1, |l| F::entries(l) - F::index(self.gpa, l));
                let same = rest.iter().take(room).take_while(|c| c.1 == size).count();
                (size, same)
            }
        };
        let level = F::level_of(size)?;
        let idx = F::index(self.gpa, level);
        let count = (F::entries(level) - idx)
            .min(remaining / size.bytes())
            .min(limit);
        let run = Run {
            gpa: self.gpa,
            level,
            size,
            count,
            src: self.src,
        };
        let bytes = count * size.bytes();
        self.gpa += bytes;
        self.src += match self.source {
            Source::Linear(_) => bytes,
            Source::Frames(_) | Source::Chunks(_) => count,
        };
        Some(run)
    }
}

impl<F: NptFormat, A: FrameAllocator> NestedPageTable<F, A> {
    /// Maps `len` bytes at `gpa` to the contiguous host range at `hpa`.
    ///
    /// With [`MapPolicy::Huge`] each step uses the largest leaf that the GPA,
    /// the HPA and the remaining length allow. `gpa`, `hpa` and `len` must be
    /// 4 KiB aligned, the range must be inside the format's GPA width and the
    /// host range inside its PA width, and nothing in the range may be
    /// mapped already. On error nothing changes.
    ///
    /// # Errors
    ///
    /// [`MapError`]: a range that is empty, misaligned or past the GPA
    /// width; a host range misaligned or past the PA width; `BadFlags`;
    /// [`AlreadyMapped`](MapError::AlreadyMapped) with the first mapped
    /// address; `NoMemory` or `TableFrameOutOfRange` for table frames.
    pub fn map_region(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: usize,
        flags: MappingFlags,
        policy: MapPolicy,
    ) -> Result<TlbFlush, MapError> {
        self.map_linear(gpa, hpa, len, flags, policy.max_size::<F>())
    }

    /// Maps one page of `size` at `gpa` to `hpa`, in one walk: tables that
    /// exist are followed; from the first missing one, the frames for every
    /// table still needed are taken before anything is written.
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::map_region`] (never `ZeroLength`), and
    /// [`UnsupportedPageSize`](MapError::UnsupportedPageSize) for a size
    /// the format has no leaf of.
    #[inline]
    pub fn map(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: PageSize,
        flags: MappingFlags,
    ) -> Result<TlbFlush, MapError> {
        let level = F::level_of(size).ok_or(MapError::UnsupportedPageSize(size))?;
        Self::check_page(gpa, size)?;
        self.check_hpa_range(hpa, size.bytes(), size.bytes())?;
        npt_entry::check_flags(flags)?;
        let addr = gpa.as_usize();
        let mut path = self.tree().path();
        let slot = self.tree().walk_path(&mut path, addr, level);
        if slot.entry.raw() != 0 && !(slot.level < level && matches!(slot.step, Step::Empty)) {
            return Err(MapError::AlreadyMapped { gpa });
        }
        self.insert_at(&mut path, addr, slot.level, level, hpa, size, flags)
    }

    /// Maps `frames.len()` pages of 4 KiB at `gpa`, page `i` to `frames[i]`
    /// (for allocated backing that is not contiguous). Same rules as
    /// [`NestedPageTable::map_region`]; every frame must be 4 KiB aligned.
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::map_region`], the host checks applying to
    /// each frame.
    pub fn map_frames(
        &mut self,
        gpa: GuestPhysAddr,
        frames: &[HostPhysAddr],
        flags: MappingFlags,
    ) -> Result<TlbFlush, MapError> {
        let len =
            frames
                .len()
                .checked_mul(PageSize::Size4K.bytes())
                .ok_or(MapError::GpaOutOfRange {
                    gpa: GuestPhysAddr::from_usize(usize::MAX),
                    gpa_bits: F::GPA_BITS,
                })?;
        let end = Self::check_range(gpa, len, PageSize::Size4K.bytes())?;
        npt_entry::check_flags(flags)?;
        for &frame in frames {
            self.check_hpa_range(frame, PageSize::Size4K.bytes(), PageSize::Size4K.bytes())?;
        }
        self.map_checked(
            gpa.as_usize(),
            end,
            Source::Frames(frames),
            flags,
            PageSize::Size4K,
        )
    }

    /// Maps host chunks back to back from `gpa`: chunk `i` of `size` bytes
    /// becomes one leaf of that size, at the GPA where chunk `i - 1` ends.
    /// Every chunk's GPA and HPA must be aligned to its size. This is how a
    /// region backed by a mix of 1 GiB, 2 MiB and 4 KiB frames is mapped in
    /// one all-or-nothing step.
    ///
    /// # Errors
    ///
    /// As [`NestedPageTable::map_region`] (`ZeroLength` for no chunks), and
    /// [`UnsupportedPageSize`](MapError::UnsupportedPageSize) for a chunk
    /// size the format has no leaf of.
    pub fn map_chunks(
        &mut self,
        gpa: GuestPhysAddr,
        chunks: &[(HostPhysAddr, PageSize)],
        flags: MappingFlags,
    ) -> Result<TlbFlush, MapError> {
        npt_entry::check_flags(flags)?;
        let mut pos = gpa.as_usize();
        for &(hpa, size) in chunks {
            if F::level_of(size).is_none() {
                return Err(MapError::UnsupportedPageSize(size));
            }
            let at = GuestPhysAddr::from_usize(pos);
            let end = Self::check_page(at, size)?;
            self.check_hpa_range(hpa, size.bytes(), size.bytes())?;
            pos = end;
        }
        if pos == gpa.as_usize() {
            return Err(MapError::ZeroLength);
        }
        self.map_checked(
            gpa.as_usize(),
            pos,
            Source::Chunks(chunks),
            flags,
            PageSize::Size4K,
        )
    }

    pub(crate) fn map_linear(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: usize,
        flags: MappingFlags,
        max: PageSize,
    ) -> Result<TlbFlush, MapError> {
        let align = PageSize::Size4K.bytes();
        let end = Self::check_range(gpa, len, align)?;
        self.check_hpa_range(hpa, len, align)?;
        npt_entry::check_flags(flags)?;
        self.map_checked(
            gpa.as_usize(),
            end,
            Source::Linear(hpa.as_usize()),
            flags,
            max,
        )
    }

    fn runs<'s>(start: usize, end: usize, source: Source<'s>, max: PageSize) -> Runs<'s, F> {
        let src = match source {
            Source::Linear(hpa) => hpa,
            Source::Frames(_) | Source::Chunks(_) => 0,
        };
        Runs {
            gpa: start,
            end,
            src,
            source,
            max,
            _f: core::marker::PhantomData,
        }
    }

    fn map_checked(
        &mut self,
        start: usize,
        end: usize,
        src: Source<'_>,
        flags: MappingFlags,
        max: PageSize,
    ) -> Result<TlbFlush, MapError> {
        let needed = self.plan_map(Self::runs(start, end, src, max))?;
        let mut stash = self.take_stash(needed)?;
        self.write_map(Self::runs(start, end, src, max), src, flags, &mut stash);
        stash.give_back(&self.alloc);
        Ok(TlbFlush::one(start, end - start))
    }

    /// Read-only pass: fails if anything in the runs is mapped, else counts
    /// the table frames the writer will create.
    fn plan_map(&self, runs: Runs<'_, F>) -> Result<usize, MapError> {
        let tree = self.tree();
        let mut needed = 0;
        // Base GPA of the table the writer will have created at each level
        // by the time it reaches the current run.
        let mut planned = [usize::MAX; MAX_LEVELS];
        let mut path = tree.path();
        for run in runs {
            let slot = tree.walk_path(&mut path, run.gpa, run.level);
            if slot.level < run.level {
                if let Step::Leaf(_) = slot.step {
                    return Err(MapError::AlreadyMapped {
                        gpa: GuestPhysAddr::from_usize(run.gpa),
                    });
                }
                // Tables missing from below the slot down to the run.
                for level in slot.level..run.level {
                    let base = run.gpa & !(entry_span::<F>(level) - 1);
                    if planned[level + 1] != base {
                        planned[level + 1] = base;
                        needed += 1;
                    }
                }
                continue;
            }
            let idx = F::index(run.gpa, run.level);
            for i in 0..run.count {
                if slot.table.get(idx + i).raw() != 0 {
                    let gpa = run.gpa + i * run.size.bytes();
                    return Err(MapError::AlreadyMapped {
                        gpa: GuestPhysAddr::from_usize(gpa),
                    });
                }
            }
        }
        Ok(needed)
    }

    /// Writes the runs, creating tables from the stash. Cannot fail.
    fn write_map(
        &mut self,
        runs: Runs<'_, F>,
        src: Source<'_>,
        flags: MappingFlags,
        stash: &mut Stash,
    ) {
        // The walk path of the previous run. Runs ascend, so a prefix is
        // usually reused.
        let mut path: Path<F::Entry> = self.tree().path();
        let templates = [
            F::Entry::new_page(0.into(), flags, false),
            F::Entry::new_page(0.into(), flags, true),
        ];
        for run in runs {
            let (tree, books) = self.parts();
            let Some(table) = tree.descend(books, &mut path, run.gpa, run.level, stash, None)
            else {
                debug_assert!(false, "plan and write disagree");
                continue;
            };
            let template = templates[run.size.is_huge() as usize];
            let idx = F::index(run.gpa, run.level);
            match src {
                Source::Linear(_) => {
                    let mut pa = run.src;
                    for i in idx..idx + run.count {
                        let mut entry = template;
                        entry.set_paddr(pa.into());
                        table.set(i, entry);
                        pa += run.size.bytes();
                    }
                }
                Source::Frames(frames) => {
                    let run_frames = frames.get(run.src..run.src + run.count).unwrap_or(&[]);
                    for (i, frame) in (idx..idx + run.count).zip(run_frames) {
                        let mut entry = template;
                        entry.set_paddr((*frame).into());
                        table.set(i, entry);
                    }
                }
                Source::Chunks(chunks) => {
                    let run_chunks = chunks.get(run.src..run.src + run.count).unwrap_or(&[]);
                    for (i, chunk) in (idx..idx + run.count).zip(run_chunks) {
                        let mut entry = template;
                        entry.set_paddr(chunk.0.into());
                        table.set(i, entry);
                    }
                }
            }
            self.books.leaves(run.size, run.count, true);
        }
    }
}
