//! Page sizes of the 4 KiB-granule formats.

use memory_addr::{align_down, align_up, is_aligned};

/// The size of one translation: what a leaf entry at some level maps.
///
/// All supported formats use a 4 KiB granule with 9 index bits per level, so
/// a leaf maps 4 KiB at the last level, 2 MiB one level up and 1 GiB above
/// that. [`PageSize::Size512G`] exists because RISC-V Sv48x4/Sv57x4 allow a
/// leaf one level higher still ("terapage"); the walker decodes such leaves
/// but never creates them unless asked explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB (2^12 bytes): a leaf at the last level.
    Size4K,
    /// 2 MiB (2^21 bytes): a leaf one level above the last.
    Size2M,
    /// 1 GiB (2^30 bytes): a leaf two levels above the last.
    Size1G,
    /// 512 GiB (2^39 bytes): a leaf three levels above the last (RISC-V
    /// Sv48x4/Sv57x4 only).
    Size512G,
}

impl PageSize {
    /// Every size, smallest first.
    pub const ALL: [PageSize; 4] = [Self::Size4K, Self::Size2M, Self::Size1G, Self::Size512G];

    /// The size in bytes.
    #[inline]
    pub const fn bytes(self) -> usize {
        1 << self.shift()
    }

    /// log2 of the size: 12, 21, 30 or 39.
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            Self::Size4K => 12,
            Self::Size2M => 21,
            Self::Size1G => 30,
            Self::Size512G => 39,
        }
    }

    /// How many levels above the last level a leaf of this size sits
    /// (0 for 4 KiB, 1 for 2 MiB, ...).
    #[inline]
    pub const fn height(self) -> usize {
        ((self.shift() - 12) / 9) as usize
    }

    /// The size of a leaf `height` levels above the last level, if any.
    #[inline]
    pub const fn from_height(height: usize) -> Option<Self> {
        match height {
            0 => Some(Self::Size4K),
            1 => Some(Self::Size2M),
            2 => Some(Self::Size1G),
            3 => Some(Self::Size512G),
            _ => None,
        }
    }

    /// The next smaller size, the one a split of this leaf produces.
    #[inline]
    pub const fn smaller(self) -> Option<Self> {
        match self {
            Self::Size4K => None,
            Self::Size2M => Some(Self::Size4K),
            Self::Size1G => Some(Self::Size2M),
            Self::Size512G => Some(Self::Size1G),
        }
    }

    /// Whether this is larger than 4 KiB.
    #[inline]
    pub const fn is_huge(self) -> bool {
        !matches!(self, Self::Size4K)
    }

    /// Whether `addr_or_size` is a multiple of this size.
    #[inline]
    pub const fn is_aligned(self, addr_or_size: usize) -> bool {
        is_aligned(addr_or_size, self.bytes())
    }

    /// `addr` rounded down to this size.
    #[inline]
    pub const fn align_down(self, addr: usize) -> usize {
        align_down(addr, self.bytes())
    }

    /// `addr` rounded up to this size, or `None` on overflow.
    #[inline]
    pub const fn checked_align_up(self, addr: usize) -> Option<usize> {
        if addr > usize::MAX - (self.bytes() - 1) {
            None
        } else {
            Some(align_up(addr, self.bytes()))
        }
    }

    /// The offset of `addr` inside its page of this size.
    #[inline]
    pub const fn offset(self, addr: usize) -> usize {
        addr & (self.bytes() - 1)
    }
}

impl From<PageSize> for usize {
    #[inline]
    fn from(size: PageSize) -> usize {
        size.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shifts_agree() {
        for size in PageSize::ALL {
            assert_eq!(1usize << size.shift(), size.bytes());
            assert_eq!(PageSize::from_height(size.height()), Some(size));
        }
        assert_eq!(PageSize::from_height(4), None);
    }

    #[test]
    fn alignment_helpers() {
        let s = PageSize::Size2M;
        assert!(s.is_aligned(0x40_0000));
        assert!(!s.is_aligned(0x40_1000));
        assert_eq!(s.align_down(0x5f_ffff), 0x40_0000);
        assert_eq!(s.checked_align_up(0x40_0001), Some(0x60_0000));
        assert_eq!(s.checked_align_up(usize::MAX), None);
        assert_eq!(s.offset(0x40_1234), 0x1234);
    }

    #[test]
    fn smaller_walks_down_to_4k() {
        assert_eq!(PageSize::Size512G.smaller(), Some(PageSize::Size1G));
        assert_eq!(PageSize::Size1G.smaller(), Some(PageSize::Size2M));
        assert_eq!(PageSize::Size2M.smaller(), Some(PageSize::Size4K));
        assert_eq!(PageSize::Size4K.smaller(), None);
    }
}
