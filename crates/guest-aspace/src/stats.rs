//! What a space reports about itself: [`SpaceStats`], and the `Display`
//! forms of regions and of the space (an `info mem`-style dump).

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use gpa_types::PageSize;
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, TableStats};

use crate::region::{Backing, RegionInfo, RegionKind};
use crate::space::GuestAddrSpace;

/// Counters of the faults a space handled and the lazy pages it filled,
/// since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Faults resolved in place ([`crate::FaultOutcome::Fixed`]).
    pub fixed: u64,
    /// Faults reported for device emulation ([`crate::FaultOutcome::Mmio`]).
    pub mmio: u64,
    /// Accesses the region's rights forbid ([`crate::FaultOutcome::Violation`]).
    pub violation: u64,
    /// Faults where nothing is mapped ([`crate::FaultOutcome::Unmapped`]).
    pub unmapped: u64,
    /// Lazy RAM pages allocated and mapped, by faults or by host access.
    pub pages_populated: u64,
}

impl FaultCounters {
    /// Faults handled, all outcomes.
    pub fn faults(&self) -> u64 {
        self.fixed + self.mmio + self.violation + self.unmapped
    }
}

/// The space's [`FaultCounters`], in atomics: faults on many vCPUs count
/// through `&self`. The counts are spread over [`SHARDS`] shards of a
/// cache line each, picked by the faulting address's 2 MiB span, so vCPUs
/// faulting in different places do not pass one line back and forth (shared
/// counters were the main thing keeping two CPUs faulting at once from
/// running twice as fast as one). Relaxed: they are statistics, ordered with nothing; a snapshot
/// taken while faults run may lag behind them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    shards: [Shard; SHARDS],
}

/// Shards of the fault counters.
const SHARDS: usize = 8;

/// One shard, on a line of its own (128 bytes: x86 CPUs fetch lines in
/// adjacent pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard([AtomicU64; 6]);

/// Which counter an event adds to (the index in a shard). Each event adds
/// to one counter, so a fault that fills a lazy page costs one atomic add,
/// not two: on x86 every locked add is a full barrier of its own (tens of
/// cycles), and the fault path already has the table's compare-and-swap
/// and leaf count.
#[derive(Clone, Copy)]
pub(crate) enum Count {
    /// A fault fixed without filling a page.
    Fixed,
    Mmio,
    Violation,
    Unmapped,
    /// A page filled by a host access (not a fault).
    Populated,
    /// A fault fixed by filling its page: counts as fixed and populated.
    FixedPopulated,
}

impl Counters {
    /// Adds one to `which`, for a fault or a page at `gpa`.
    #[inline]
    pub(crate) fn add(&self, which: Count, gpa: usize) {
        let shard = &self.shards[(gpa >> 21) % SHARDS];
        shard.0[which as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> FaultCounters {
        let sum = |which: Count| -> u64 {
            self.shards
                .iter()
                .map(|s| s.0[which as usize].load(Ordering::Relaxed))
                .sum()
        };
        // Read once, so `fixed` and `pages_populated` agree on it.
        let fixed_populated = sum(Count::FixedPopulated);
        FaultCounters {
            fixed: sum(Count::Fixed) + fixed_populated,
            mmio: sum(Count::Mmio),
            violation: sum(Count::Violation),
            unmapped: sum(Count::Unmapped),
            pages_populated: sum(Count::Populated) + fixed_populated,
        }
    }
}

/// A snapshot of a space: its table's statistics, its regions and its
/// fault counters ([`GuestAddrSpace::stats`]). `Display` prints a few
/// lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceStats {
    /// The nested table's counters.
    pub table: TableStats,
    /// Number of regions.
    pub regions: usize,
    /// Bytes the regions cover.
    pub region_bytes: u128,
    /// Bytes of owned backing allocated (see [`RegionInfo::populated`]).
    pub populated_bytes: u128,
    /// Faults handled and lazy pages filled.
    pub faults: FaultCounters,
}

/// `bytes` in the largest binary unit not above it, exact or to one
/// decimal (rounded down): `256 MiB`, `4 KiB`, `1.5 KiB`, `208.2 MiB`.
pub(crate) struct Size(pub(crate) u128);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut unit = 0;
        let mut scale = 1u128;
        while unit + 1 < UNITS.len() && self.0 >= scale * 1024 {
            scale *= 1024;
            unit += 1;
        }
        let (whole, rest) = (self.0 / scale, self.0 % scale);
        if rest == 0 {
            write!(f, "{whole} {}", UNITS[unit])
        } else {
            write!(f, "{whole}.{} {}", rest * 10 / scale, UNITS[unit])
        }
    }
}

impl fmt::Display for SpaceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.table;
        writeln!(
            f,
            "regions {} covering {}, {} of owned backing allocated",
            self.regions,
            Size(self.region_bytes),
            Size(self.populated_bytes)
        )?;
        write!(
            f,
            "table {} frames ({}); leaves",
            t.table_frames,
            Size(t.table_frames as u128 * 4096)
        )?;
        for size in PageSize::ALL {
            write!(f, " {}:{}", PageLabel(size), t.leaves_of(size))?;
        }
        writeln!(f, "; mapped {}", Size(t.mapped_bytes()))?;
        let c = &self.faults;
        write!(
            f,
            "faults {} (fixed {}, mmio {}, violation {}, unmapped {}); lazy pages populated {}",
            c.faults(),
            c.fixed,
            c.mmio,
            c.violation,
            c.unmapped,
            c.pages_populated
        )
    }
}

/// A page size as `4K`, `2M`, `1G`, `512G`.
pub(crate) struct PageLabel(pub(crate) PageSize);

impl fmt::Display for PageLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            PageSize::Size4K => "4K",
            PageSize::Size2M => "2M",
            PageSize::Size1G => "1G",
            PageSize::Size512G => "512G",
        })
    }
}

/// Second-stage rights as `rwx` with `-` for what is missing, then ` dev`
/// or ` uc` for the memory type.
pub(crate) struct Rights(pub(crate) gpa_types::MappingFlags);

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use gpa_types::MappingFlags as M;
        let fl = self.0;
        for (flag, c) in [(M::READ, "r"), (M::WRITE, "w"), (M::EXECUTE, "x")] {
            f.write_str(if fl.contains(flag) { c } else { "-" })?;
        }
        if fl.contains(M::DEVICE) {
            f.write_str(" dev")?;
        } else if fl.contains(M::UNCACHED) {
            f.write_str(" uc")?;
        }
        Ok(())
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ram => "RAM",
            Self::Identical => "identical",
            Self::Linear => "linear",
            Self::Mmio => "MMIO",
            Self::Rom => "ROM",
        })
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Alloc { lazy: false } => f.write_str("allocated, eager"),
            Self::Alloc { lazy: true } => f.write_str("allocated, on fault"),
            Self::AllocIdentical => f.write_str("allocated at GPA == HPA"),
            Self::Identical => f.write_str("pass-through GPA == HPA"),
            Self::Linear { hpa } => write!(f, "pass-through to {:#x}", hpa.as_usize()),
            Self::Mmio { passthrough: None } => f.write_str("unmapped, emulated"),
            Self::Mmio {
                passthrough: Some(hpa),
            } => write!(f, "device at {:#x}", hpa.as_usize()),
            Self::Rom => f.write_str("allocated, read-only"),
        }
    }
}

/// One line: `[0x0, 0xa0000) 640 KiB RAM (allocated, eager) rwx, populated
/// 640 KiB`, plus `, dirty logging` when on.
impl fmt::Display for RegionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#x}, {:#x}) {} {} ({}) {}",
            self.range.start.as_usize(),
            self.range.end.as_usize(),
            Size(self.range.size() as u128),
            self.backing.kind(),
            self.backing,
            Rights(self.flags)
        )?;
        if self.backing.is_owned() {
            write!(f, ", populated {}", Size(self.populated as u128))?;
        }
        if self.dirty_logging {
            f.write_str(", dirty logging")?;
        }
        Ok(())
    }
}

/// An `info mem`-style dump: a header line with the format, window and
/// root, one line per region, and under each region the runs its table
/// maps (a run: contiguous GPAs to contiguous HPAs with the same flags),
/// then the statistics. Large spaces print many lines: runs of one region
/// past the first 8 are summarized.
impl<F: NptFormat, A: FrameAllocator> fmt::Display for GuestAddrSpace<F, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const RUNS_SHOWN: usize = 8;
        let w = self.window();
        writeln!(
            f,
            "{} space, window [{:#x}, {:#x}), root {:#x}",
            F::NAME,
            w.start.as_usize(),
            w.end.as_usize(),
            self.root_hpa().as_usize()
        )?;
        for r in self.regions() {
            writeln!(f, "  {r}")?;
            let (start, len) = (r.range.start, r.range.size());
            let mut shown = 0usize;
            let (mut more, mut more_bytes) = (0usize, 0usize);
            let mut result = Ok(());
            let walked = self.table.for_each_mapping(start, len, |run| {
                if shown < RUNS_SHOWN {
                    shown += 1;
                    if result.is_ok() {
                        result = writeln!(
                            f,
                            "    {:#x}-{:#x} -> {:#x} {} {} (largest page {})",
                            run.gpa.as_usize(),
                            run.gpa.as_usize() + run.len,
                            run.hpa.as_usize(),
                            Size(run.len as u128),
                            Rights(run.flags),
                            PageLabel(run.max_page)
                        );
                    }
                } else {
                    more += 1;
                    more_bytes += run.len;
                }
            });
            result?;
            if walked.is_err() {
                writeln!(f, "    (runs could not be listed)")?;
            } else if more > 0 {
                writeln!(
                    f,
                    "    ... {more} more run{} ({})",
                    if more == 1 { "" } else { "s" },
                    Size(more_bytes as u128)
                )?;
            }
        }
        write!(f, "{}", self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn sizes() {
        assert_eq!(format!("{}", Size(0)), "0 B");
        assert_eq!(format!("{}", Size(4096)), "4 KiB");
        assert_eq!(format!("{}", Size(0xa_0000)), "640 KiB");
        assert_eq!(format!("{}", Size(1 << 30)), "1 GiB");
        assert_eq!(format!("{}", Size(1536)), "1.5 KiB");
        assert_eq!(format!("{}", Size(213_208 << 10)), "208.2 MiB");
        assert_eq!(format!("{}", Size(1023)), "1023 B");
    }
}
