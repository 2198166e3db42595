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
//! Splitting a huge leaf (by a partial unmap or protect, or
//! `split_region`) replaces it with a table entry in one store and names
//! the whole huge range. Arm requires break-before-make for that change
//! unless FEAT_BBM level 2 is implemented: on such hosts, pause the VM's
//! vCPUs (or invalidate first) around operations that split.

use gpa_types::{GuestPhysAddr, GuestPhysAddrRange};

/// How many separate ranges a record keeps before it gives up and asks for a
/// full flush of the VM's translations.
pub const FLUSH_RANGES: usize = 8;

/// A record of stale guest-physical translations.
///
/// Ranges that touch or overlap merge; once more than [`FLUSH_RANGES`]
/// disjoint ranges accumulate, or the total exceeds
/// [`TlbFlush::FULL_THRESHOLD`] bytes, the record becomes "everything".
#[must_use = "stale translations stay cached until the caller flushes what this record names"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlbFlush {
    ranges: [(usize, usize); FLUSH_RANGES],
    len: usize,
    /// Bytes the ranges cover.
    total: usize,
    all: bool,
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
            ranges: [(0, 0); FLUSH_RANGES],
            len: 0,
            total: 0,
            all: false,
        }
    }

    /// Everything must be flushed.
    pub const fn all() -> Self {
        Self {
            ranges: [(0, 0); FLUSH_RANGES],
            len: 0,
            total: 0,
            all: true,
        }
    }

    /// Adds the `size` bytes at `gpa`.
    #[inline]
    pub fn add(&mut self, gpa: usize, size: usize) {
        if self.all || size == 0 {
            return;
        }
        let end = gpa.saturating_add(size);
        // Merge with the most recent range first: range operations add in
        // ascending order, so this is the common case.
        let mut merged = None;
        for (i, r) in self.ranges[..self.len].iter_mut().enumerate().rev() {
            if gpa <= r.1 && r.0 <= end {
                let before = r.1 - r.0;
                r.0 = r.0.min(gpa);
                r.1 = r.1.max(end);
                self.total += (r.1 - r.0) - before;
                merged = Some(i);
                break;
            }
        }
        match merged {
            // The grown range may now touch others: fold them in.
            Some(i) => self.coalesce(i),
            None if self.len == FLUSH_RANGES => self.all = true,
            None => {
                self.ranges[self.len] = (gpa, end);
                self.len += 1;
                self.total += end - gpa;
            }
        }
        if self.total > Self::FULL_THRESHOLD {
            self.all = true;
        }
    }

    /// Folds every range that touches range `i` into it.
    fn coalesce(&mut self, i: usize) {
        let mut j = 0;
        while j < self.len {
            let (a, b) = (self.ranges[i], self.ranges[j]);
            if j != i && b.0 <= a.1 && a.0 <= b.1 {
                let union = (a.0.min(b.0), a.1.max(b.1));
                self.total = self.total - (a.1 - a.0) - (b.1 - b.0) + (union.1 - union.0);
                self.ranges[i] = union;
                self.len -= 1;
                self.ranges[j] = self.ranges[self.len];
                if i == self.len {
                    // Range `i` was the last one and moved to `j`.
                    return self.coalesce(j);
                }
                j = 0;
                continue;
            }
            j += 1;
        }
    }

    /// Adds everything another record names.
    pub fn merge(&mut self, other: TlbFlush) {
        if other.all {
            self.all = true;
            return;
        }
        for (start, end) in other.ranges.into_iter().take(other.len) {
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
        let n = if self.all { 0 } else { self.len };
        self.ranges[..n].iter().map(|&(s, e)| {
            GuestPhysAddrRange::new(GuestPhysAddr::from_usize(s), GuestPhysAddr::from_usize(e))
        })
    }

    /// Consumes the record, stating that the caller has acted on it (or has
    /// a reason not to, e.g. the VM never ran).
    pub fn ignore(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

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
        assert_eq!(f.total, 0x4000);
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
