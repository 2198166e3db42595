//! Zeroing guest frames before the guest can see them.
//!
//! Eagerly populated RAM is zeroed long before the guest touches it, often
//! gigabytes at a time. Ordinary stores first read every cache line they
//! write (read-for-ownership) and leave the cache full of zeros; on x86-64
//! this module uses non-temporal stores instead, which write whole lines
//! straight to memory. The `populate_1g_eager_*` benchmark rows include
//! this against a peer that zeroes with `memset`; no committed benchmark
//! compares the two ways of zeroing alone. A page populated on a fault is
//! about to be touched, and its frame often comes back cache-hot from the
//! allocator: [`zero_frames`] zeroes it with ordinary stores, as Linux's
//! `clear_page` does (a one-off `fault_in_4k` run with non-temporal
//! zeroing was slower; each iteration there reuses the frames the previous
//! one freed).
//!
//! - x86-64 with SSE2 enabled (every hosted target): 16-byte `MOVNTDQ`
//!   stores.
//! - x86-64 without SSE (kernel targets such as `x86_64-unknown-none`, which
//!   do not save vector state): 8-byte `MOVNTI` stores from general
//!   registers.
//! - Other architectures, Miri, and buffers not 64-byte aligned or sized:
//!   `write_bytes`.
//!
//! Non-temporal stores are weakly ordered: [`fence`] must run after the last
//! [`stream_frames`] and before the frames become reachable from a table.

use gpa_types::HostPhysAddr;
use npt_table::FrameAllocator;

/// Bytes written per loop step (one cache line).
#[cfg_attr(not(all(target_arch = "x86_64", not(miri))), allow(dead_code))]
const LINE: usize = 64;

/// Zeroes `len` bytes of a fresh allocation at `hpa` with ordinary stores.
pub(crate) fn zero_frames<A: FrameAllocator>(alloc: &A, hpa: HostPhysAddr, len: usize) {
    // SAFETY: callers pass an allocation of at least `len` bytes they just
    // obtained from `alloc` and own exclusively; the allocator contract makes
    // `phys_to_virt(hpa)` valid for writes of all of it.
    unsafe { core::ptr::write_bytes(alloc.phys_to_virt(hpa), 0, len) }
}

/// Zeroes `len` bytes of a fresh allocation at `hpa` with non-temporal
/// stores; [`fence`] before mapping it.
pub(crate) fn stream_frames<A: FrameAllocator>(alloc: &A, hpa: HostPhysAddr, len: usize) {
    // SAFETY: as in `zero_frames`; the frames are unreachable from any table
    // until the caller has run `fence`.
    unsafe { zero_streaming(alloc.phys_to_virt(hpa), len) }
}

/// Zeroes `len` bytes at `ptr` without pulling them into the cache where
/// the target allows it.
///
/// # Safety
///
/// `ptr` must be valid for writes of `len` bytes, and nothing else may
/// access them until [`fence`] has run.
pub(crate) unsafe fn zero_streaming(ptr: *mut u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if (ptr as usize) % LINE == 0 && len % LINE == 0 {
        // SAFETY: the caller's contract, and the alignment just checked.
        unsafe { x86::stream_zero(ptr, len) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_bytes(ptr, 0, len) }
}

/// Orders every earlier [`zero_streaming`] before later stores (the table
/// entries that publish the frames).
pub(crate) fn fence() {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `SFENCE` only orders stores; it reads and writes no memory or
    // register the compiler tracks.
    unsafe {
        core::arch::asm!("sfence", options(nostack, preserves_flags))
    };
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod x86 {
    use super::LINE;

    /// Non-temporal zeroing, one cache line per step.
    ///
    /// # Safety
    ///
    /// `ptr` must be 64-byte aligned and valid for writes of `len` bytes, a
    /// multiple of 64.
    #[cfg(target_feature = "sse2")]
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn stream_zero(ptr: *mut u8, len: usize) {
        use core::arch::x86_64::{__m128i, _mm_setzero_si128, _mm_stream_si128};
        let zero = _mm_setzero_si128();
        let mut line = ptr.cast::<__m128i>();
        for _ in 0..len / LINE {
            // SAFETY: `line` is 16-byte aligned and the four stores stay
            // inside the current 64-byte line of the caller's buffer.
            unsafe {
                _mm_stream_si128(line, zero);
                _mm_stream_si128(line.add(1), zero);
                _mm_stream_si128(line.add(2), zero);
                _mm_stream_si128(line.add(3), zero);
                line = line.add(4);
            }
        }
    }

    /// Non-temporal zeroing from a general register (`MOVNTI`, part of SSE2
    /// and so of every x86-64 CPU; it leaves vector registers alone).
    ///
    /// # Safety
    ///
    /// As for the SSE2 version.
    #[cfg(not(target_feature = "sse2"))]
    pub(super) unsafe fn stream_zero(ptr: *mut u8, len: usize) {
        let mut line = ptr;
        for _ in 0..len / LINE {
            // SAFETY: eight 8-byte stores inside the current 64-byte line of
            // the caller's buffer, which is 8-byte aligned.
            unsafe {
                core::arch::asm!(
                    "movnti [{p}], {z}",
                    "movnti [{p} + 8], {z}",
                    "movnti [{p} + 16], {z}",
                    "movnti [{p} + 24], {z}",
                    "movnti [{p} + 32], {z}",
                    "movnti [{p} + 40], {z}",
                    "movnti [{p} + 48], {z}",
                    "movnti [{p} + 56], {z}",
                    p = in(reg) line,
                    z = in(reg) 0u64,
                    options(nostack, preserves_flags),
                );
                line = line.add(LINE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeroes `[off, off + len)` of a buffer of 0xa5 and checks every byte.
    fn check(off: usize, len: usize) {
        // 64-byte aligned storage.
        #[repr(align(64))]
        struct Buf([u8; 3 * 4096]);
        let mut buf = Buf([0xa5; 3 * 4096]);
        // SAFETY: inside `buf`, which nothing else touches.
        unsafe { zero_streaming(buf.0.as_mut_ptr().add(off), len) };
        fence();
        for (i, b) in buf.0.iter().enumerate() {
            let inside = (off..off + len).contains(&i);
            assert_eq!(*b, if inside { 0 } else { 0xa5 }, "byte {i} of {off}+{len}");
        }
    }

    #[test]
    fn aligned_frames_are_zeroed_exactly() {
        check(0, 4096);
        check(4096, 2 * 4096);
        check(64, 128);
    }

    #[test]
    fn unaligned_or_odd_lengths_fall_back() {
        check(1, 4096);
        check(0, 100);
        check(8, 64);
        check(4096, 0);
    }
}
