//! What the caller must invalidate after a change: [`TlbFlush`].
//!
//! The library never runs INVEPT, INVLPGA, TLBI or HFENCE.GVMA. Every
//! mutating operation returns a record of the guest-physical ranges whose
//! cached translations became stale; the hypervisor turns it into the
//! instructions of its architecture.
//!
//! Maps of previously invalid entries name their range too: x86 and Arm do
//! not cache invalid entries, so a hypervisor there may skip that flush,
//! but the RISC-V privileged architecture allows implementations to cache
//! invalid translations, so an `HFENCE.GVMA` is needed before the guest is
//! sure to see a new mapping.
//!
//! Frames wait for the flush. A frame a change unlinks (a table emptied by
//! an unmap, the tables under a collapsed span, and in `guest-aspace` the
//! owned guest frames of removed RAM) may still be reachable through
//! another CPU's TLB or paging-structure cache until the caller has
//! flushed. Such frames are *parked* in the table under a ticket that the
//! returned record carries; they go back to the allocator only when the
//! caller hands the record to [`NestedPageTable::complete`] after acting on
//! it. A record that is dropped or [`ignore`](TlbFlush::ignore)d releases
//! nothing: its frames stay parked until a later "everything" record with
//! a higher ticket is completed (a full flush covers them too), or the
//! table is dropped.
//!
//! [`NestedPageTable::complete`]: crate::NestedPageTable::complete
//!
//! Splitting a huge leaf (by a partial unmap or protect, or
//! `split_region`) replaces it with a table entry in one store and names
//! the whole huge range. Arm requires break-before-make for that change
//! unless FEAT_BBM level 2 is implemented: on such hosts, pause the VM's
//! vCPUs (or invalidate first) around operations that split. `collapse`
//! makes the reverse change (a table entry becomes a block entry in one
//! store) and needs the same care: the Arm ARM (DDI 0487, "Using break-before-make
//! when updating translation table entries", under the TLB maintenance
//! requirements) lists a change of block size among the changes that
//! require break-before-make, in either direction.

use gpa_types::{GuestPhysAddr, GuestPhysAddrRange};

/// How many separate ranges a record keeps before it gives up and asks for a
/// full flush of the VM's translations.
pub const FLUSH_RANGES: usize = 8;

/// Ranges are kept in whole 4 KiB pages.
const PAGE_SHIFT: u32 = 12;

/// A record of stale guest-physical translations.
///
/// Ranges that touch or overlap merge; once more than [`FLUSH_RANGES`]
/// disjoint ranges accumulate, or the total exceeds
/// [`TlbFlush::FULL_THRESHOLD`] bytes, the record becomes "everything".
///
/// Ranges are whole 4 KiB pages (an added range is widened to them).
/// Every mutating call returns one, so it is kept small enough to move
/// without a `memcpy` call (104 bytes, parking tickets included): no range
/// of a record that is not "everything" is longer than the threshold, so
/// lengths fit in 16 bits of pages.
#[must_use = "stale translations stay cached until the caller flushes what this record names"]
#[derive(Clone)]
pub struct TlbFlush {
    /// First byte of each range (4 KiB aligned).
    starts: [usize; FLUSH_RANGES],
    /// Length of each range in 4 KiB pages (at most `FULL_THRESHOLD`
    /// bytes, 16,384 pages).
    lens: [u16; FLUSH_RANGES],
    len: u8,
    all: bool,
    /// Tickets of the frames the recorded changes parked in their table:
    /// the span `[retired_lo, retired_hi]`, both 0 when none. Tickets are
    /// numbered from 1 per table, one per change that parks frames.
    retired_lo: u64,
    retired_hi: u64,
}

impl Default for TlbFlush {
    fn default() -> Self {
        Self::none()
    }
}

impl TlbFlush {
    /// Above this many bytes, per-page invalidation costs more than a full
    /// flush: 64 MiB (16384 4 KiB pages).
    pub const FULL_THRESHOLD: usize = 64 << 20;

    /// Nothing to flush.
    pub const fn none() -> Self {
        Self {
            starts: [0; FLUSH_RANGES],
            lens: [0; FLUSH_RANGES],
            len: 0,
            all: false,
            retired_lo: 0,
            retired_hi: 0,
        }
    }

    /// The record of the one 4 KiB page at `page` (4 KiB aligned): what
    /// `one(page, 4096)` gives for any page a table can hold, without the
    /// overflow and threshold checks such a page never needs (a fault's
    /// record, built where the fault returns: see [`crate::NewLeaf::flush`]).
    #[inline]
    pub(crate) const fn page(page: usize) -> Self {
        let mut flush = Self::none();
        flush.starts[0] = page & !((1 << PAGE_SHIFT) - 1);
        flush.lens[0] = 1;
        flush.len = 1;
        flush
    }

    /// The record of one change to `[gpa, gpa + size)`: what `none()` then
    /// `add(gpa, size)` give, built in one expression (see
    /// [`crate::NewLeaf::flush`] for why that matters right after zeroing).
    #[inline]
    pub(crate) fn one(gpa: usize, size: usize) -> Self {
        if size == 0 {
            return Self::none();
        }
        let start = gpa & !((1 << PAGE_SHIFT) - 1);
        let pages = gpa
            .checked_add(size)
            .and_then(|e| e.checked_next_multiple_of(1 << PAGE_SHIFT))
            .map(|end| end - start)
            .filter(|&bytes| bytes <= Self::FULL_THRESHOLD)
            .and_then(|bytes| u16::try_from(bytes >> PAGE_SHIFT).ok());
        let Some(pages) = pages else {
            return Self::all();
        };
        let mut starts = [0; FLUSH_RANGES];
        starts[0] = start;
        let mut lens = [0; FLUSH_RANGES];
        lens[0] = pages;
        Self {
            starts,
            lens,
            len: 1,
            all: false,
            retired_lo: 0,
            retired_hi: 0,
        }
    }

    /// Everything must be flushed.
    pub const fn all() -> Self {
        let mut f = Self::none();
        f.all = true;
        f
    }

    /// Range `i` as `(start, end)`.
    #[inline]
    fn range(&self, i: usize) -> (usize, usize) {
        (
            self.starts[i],
            self.starts[i] + ((self.lens[i] as usize) << PAGE_SHIFT),
        )
    }

    /// Sets range `i` to `[start, end)`, or gives up on ranges when it is
    /// longer than the threshold.
    #[inline]
    fn set_range(&mut self, i: usize, (start, end): (usize, usize)) {
        match u16::try_from((end - start) >> PAGE_SHIFT) {
            Ok(pages) if end - start <= Self::FULL_THRESHOLD => {
                self.starts[i] = start;
                self.lens[i] = pages;
            }
            _ => self.all = true,
        }
    }

    /// Bytes the ranges cover.
    #[inline]
    fn total(&self) -> usize {
        self.lens[..self.len as usize]
            .iter()
            .map(|&l| (l as usize) << PAGE_SHIFT)
            .sum()
    }

    /// Turns into "everything" past the threshold.
    #[inline]
    fn retotal(&mut self) {
        if self.total() > Self::FULL_THRESHOLD {
            self.all = true;
        }
    }

    /// Adds the `size` bytes at `gpa` (widened to whole 4 KiB pages).
    #[inline]
    pub fn add(&mut self, gpa: usize, size: usize) {
        if self.all || size == 0 {
            return;
        }
        let Some(end) = gpa
            .checked_add(size)
            .and_then(|e| e.checked_next_multiple_of(1 << PAGE_SHIFT))
        else {
            self.all = true;
            return;
        };
        let gpa = gpa & !((1 << PAGE_SHIFT) - 1);
        // Merge with the most recent range first: range operations add in
        // ascending order, so this is the common case.
        let mut merged = None;
        for i in (0..self.len as usize).rev() {
            let r = self.range(i);
            if gpa <= r.1 && r.0 <= end {
                self.set_range(i, (r.0.min(gpa), r.1.max(end)));
                merged = Some(i);
                break;
            }
        }
        match merged {
            // The grown range may now touch others: fold them in.
            Some(i) => self.coalesce(i),
            None if self.len as usize == FLUSH_RANGES => self.all = true,
            None => {
                let i = self.len as usize;
                self.len += 1;
                self.set_range(i, (gpa, end));
            }
        }
        if !self.all {
            self.retotal();
        }
    }

    /// Folds every range that touches range `i` into it.
    fn coalesce(&mut self, i: usize) {
        let mut j = 0;
        while j < self.len as usize && !self.all {
            let (a, b) = (self.range(i), self.range(j));
            if j != i && b.0 <= a.1 && a.0 <= b.1 {
                self.set_range(i, (a.0.min(b.0), a.1.max(b.1)));
                self.len -= 1;
                let last = self.len as usize;
                self.starts[j] = self.starts[last];
                self.lens[j] = self.lens[last];
                if i == last {
                    // Range `i` was the last one and moved to `j`.
                    return self.coalesce(j);
                }
                j = 0;
                continue;
            }
            j += 1;
        }
    }

    /// Adds everything another record names, frames it parked included.
    ///
    /// Records of consecutive changes to one table merge exactly. Merging
    /// records whose parked frames are not consecutive (a record of a
    /// change in between was left out) makes the result "everything": only
    /// a full flush then covers every frame its tickets reach.
    pub fn merge(&mut self, other: TlbFlush) {
        self.join_tickets(other.retired_lo, other.retired_hi);
        if other.all {
            self.all = true;
            return;
        }
        for i in 0..other.len as usize {
            let (start, end) = other.range(i);
            self.add(start, end - start);
        }
    }

    /// Whether nothing needs flushing.
    pub fn is_empty(&self) -> bool {
        !self.all && self.len == 0
    }

    /// Whether every translation of the VM must be flushed.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// The ranges to flush, unless [`TlbFlush::is_all`].
    pub fn ranges(&self) -> impl Iterator<Item = GuestPhysAddrRange> + '_ {
        let n = if self.all { 0 } else { self.len as usize };
        (0..n).map(|i| {
            let (s, e) = self.range(i);
            GuestPhysAddrRange::new(GuestPhysAddr::from_usize(s), GuestPhysAddr::from_usize(e))
        })
    }

    /// Consumes the record, stating that the caller has acted on it (or has
    /// a reason not to, e.g. the VM never ran).
    ///
    /// Frames the record parked stay parked (see the module docs): hand a
    /// record that [`TlbFlush::parks_frames`] to `complete` instead.
    pub fn ignore(self) {}

    /// Whether frames wait in the table for this record to be completed.
    pub fn parks_frames(&self) -> bool {
        self.retired_hi != 0
    }

    /// The span of parking tickets the record covers, if any.
    pub(crate) fn tickets(&self) -> Option<(u64, u64)> {
        (self.retired_hi != 0).then_some((self.retired_lo, self.retired_hi))
    }

    /// Adds the tickets `[lo, hi]` (nothing when `hi` is 0). A span that
    /// leaves a gap with the record's own turns the record into
    /// "everything".
    pub(crate) fn join_tickets(&mut self, lo: u64, hi: u64) {
        if hi == 0 {
            return;
        }
        if self.retired_hi == 0 {
            (self.retired_lo, self.retired_hi) = (lo, hi);
            return;
        }
        let touches =
            lo <= self.retired_hi.saturating_add(1) && self.retired_lo <= hi.saturating_add(1);
        if !touches {
            self.all = true;
        }
        self.retired_lo = self.retired_lo.min(lo);
        self.retired_hi = self.retired_hi.max(hi);
    }
}

/// The ranges in hex, `all` or `none`, then the parked tickets if any:
/// `[0x8000_0000, 0x8020_0000) + [0x9000_0000, 0x9000_1000)`,
/// `all (parks frames: tickets 3..=4)`.
impl core::fmt::Display for TlbFlush {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.all {
            f.write_str("all")?;
        } else if self.len == 0 {
            f.write_str("none")?;
        } else {
            for (i, r) in self.ranges().enumerate() {
                if i > 0 {
                    f.write_str(" + ")?;
                }
                write!(f, "[{:#x}, {:#x})", r.start.as_usize(), r.end.as_usize())?;
            }
        }
        if let Some((lo, hi)) = self.tickets() {
            write!(f, " (parks frames: tickets {lo}..={hi})")?;
        }
        Ok(())
    }
}

/// Records are equal when they ask for the same flush and park the same
/// tickets: two "everything" records are equal whatever range slots they
/// filled before they gave up on ranges.
impl PartialEq for TlbFlush {
    fn eq(&self, other: &Self) -> bool {
        self.all == other.all
            && self.tickets() == other.tickets()
            && self.ranges().eq(other.ranges())
    }
}

impl Eq for TlbFlush {}

/// Ranges in hex as `start..end`, not the packed arrays:
/// `TlbFlush { all: false, ranges: [0x1000..0x3000], tickets: None }`.
impl core::fmt::Debug for TlbFlush {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        struct Ranges<'a>(&'a TlbFlush);
        impl core::fmt::Debug for Ranges<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                struct Hex(usize, usize);
                impl core::fmt::Debug for Hex {
                    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        write!(f, "{:#x}..{:#x}", self.0, self.1)
                    }
                }
                f.debug_list()
                    .entries(
                        self.0
                            .ranges()
                            .map(|r| Hex(r.start.as_usize(), r.end.as_usize())),
                    )
                    .finish()
            }
        }
        f.debug_struct("TlbFlush")
            .field("all", &self.all)
            .field("ranges", &Ranges(self))
            .field("tickets", &self.tickets())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Two records asking for everything are equal, however they got there
    /// (`add` past the threshold used to leave a range slot behind, and
    /// the derived equality saw it).
    #[test]
    fn everything_equals_everything() {
        let mut grown = TlbFlush::none();
        grown.add(0x4000_0000, TlbFlush::FULL_THRESHOLD + 0x1000);
        assert_eq!(grown, TlbFlush::all());
        grown.ignore();
    }

    /// `one` builds what `none` then `add` build, at the edges too: empty,
    /// unaligned, at the threshold and past it, wrapping.
    #[test]
    fn one_is_none_then_add() {
        let t = TlbFlush::FULL_THRESHOLD;
        let cases = [
            (0, 0),
            (0x1000, 0x1000),
            (0x1234, 0x10),
            (0x1fff, 2),
            (0x4000_0000, t),
            (0x4000_0000, t + 1),
            (0x4000_0800, t),
            (usize::MAX - 0xfff, 0x1000),
            (usize::MAX - 0x800, 0x1000),
            (usize::MAX, 1),
        ];
        for (gpa, size) in cases {
            let mut added = TlbFlush::none();
            added.add(gpa, size);
            assert_eq!(TlbFlush::one(gpa, size), added, "{gpa:#x} + {size:#x}");
            added.ignore();
        }
    }

    #[test]
    fn page_is_one_page() {
        // Pages below 2^57, the widest GPA of any format, up to its last.
        for page in [
            0,
            0x1000,
            0x8000_0000,
            0x7_f000_0000_f000,
            (1 << 57) - 0x1000,
        ] {
            assert_eq!(
                TlbFlush::page(page),
                TlbFlush::one(page, 0x1000),
                "{page:#x}"
            );
        }
    }

    #[test]
    fn display_and_debug_are_hex() {
        use std::format;
        assert_eq!(format!("{}", TlbFlush::none()), "none");
        assert_eq!(format!("{}", TlbFlush::all()), "all");
        let mut f = TlbFlush::none();
        f.add(0x8000_0000, 0x20_0000);
        f.add(0x9000_0000, 0x1000);
        assert_eq!(
            format!("{f}"),
            "[0x80000000, 0x80200000) + [0x90000000, 0x90001000)"
        );
        assert_eq!(
            format!("{f:?}"),
            "TlbFlush { all: false, ranges: [0x80000000..0x80200000, 0x90000000..0x90001000], tickets: None }"
        );
        f.join_tickets(3, 4);
        assert_eq!(
            format!("{f}"),
            "[0x80000000, 0x80200000) + [0x90000000, 0x90001000) (parks frames: tickets 3..=4)"
        );
    }

    #[test]
    fn adjacent_ranges_merge() {
        let mut f = TlbFlush::none();
        assert!(f.is_empty());
        f.add(0x1000, 0x1000);
        f.add(0x2000, 0x1000);
        f.add(0x0, 0x1000);
        let r: Vec<_> = f.ranges().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].start.as_usize(), 0);
        assert_eq!(r[0].end.as_usize(), 0x3000);
    }

    #[test]
    fn too_many_ranges_become_all() {
        let mut f = TlbFlush::none();
        for i in 0..FLUSH_RANGES {
            f.add(i * 0x10000, 0x1000);
        }
        assert!(!f.is_all());
        f.add(0x100_0000, 0x1000);
        assert!(f.is_all());
        assert_eq!(f.ranges().count(), 0);
    }

    #[test]
    fn big_ranges_become_all() {
        let mut f = TlbFlush::none();
        f.add(0, TlbFlush::FULL_THRESHOLD + 0x1000);
        assert!(f.is_all());
    }

    #[test]
    fn a_range_bridging_two_merges_all_three() {
        let mut f = TlbFlush::none();
        f.add(0, 0x1000);
        f.add(0x3000, 0x1000);
        f.add(0x1000, 0x2000);
        let r: Vec<_> = f.ranges().collect();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].start.as_usize(), r[0].end.as_usize()), (0, 0x4000));
        assert_eq!(f.total(), 0x4000);
    }

    #[test]
    fn small_enough_to_move_without_memcpy() {
        // At 120 bytes (u32 byte lengths and the tickets) the fault path
        // copied records with `memcpy` calls again.
        assert_eq!(core::mem::size_of::<TlbFlush>(), 104);
    }

    #[test]
    fn merging_consecutive_tickets_keeps_ranges() {
        let mut a = TlbFlush::none();
        a.add(0, 0x1000);
        a.join_tickets(3, 3);
        let mut b = TlbFlush::none();
        b.add(0x10_0000, 0x1000);
        b.join_tickets(4, 4);
        a.merge(b);
        assert!(!a.is_all());
        assert_eq!(a.tickets(), Some((3, 4)));
        assert!(a.parks_frames());
    }

    #[test]
    fn merging_tickets_with_a_gap_asks_for_everything() {
        let mut a = TlbFlush::none();
        a.add(0, 0x1000);
        a.join_tickets(3, 3);
        let mut b = TlbFlush::none();
        b.join_tickets(5, 5);
        a.merge(b);
        assert!(a.is_all());
        assert_eq!(a.tickets(), Some((3, 5)));
    }

    #[test]
    fn a_merge_past_the_threshold_becomes_all() {
        let mut f = TlbFlush::none();
        f.add(0, TlbFlush::FULL_THRESHOLD - 0x1000);
        assert!(!f.is_all());
        f.add(TlbFlush::FULL_THRESHOLD - 0x1000, 0x2000);
        assert!(f.is_all());
        let mut g = TlbFlush::none();
        g.add(usize::MAX - 0x1000, 0x1000);
        g.add(0, usize::MAX);
        assert!(g.is_all());
    }

    #[test]
    fn merge_combines_records() {
        let mut a = TlbFlush::none();
        a.add(0, 0x1000);
        let mut b = TlbFlush::none();
        b.add(0x1000, 0x1000);
        a.merge(b);
        assert_eq!(a.ranges().count(), 1);
        a.merge(TlbFlush::all());
        assert!(a.is_all());
    }
}
