//! Plain-old-data values: what [`GuestAddrSpace::read_obj`] and
//! [`GuestAddrSpace::write_obj`] copy between guest memory and the host.
//!
//! [`GuestAddrSpace::read_obj`]: crate::GuestAddrSpace::read_obj
//! [`GuestAddrSpace::write_obj`]: crate::GuestAddrSpace::write_obj

/// A type whose values are exactly their bytes: any bytes the guest wrote
/// form a valid value, and a value's bytes are all initialized.
///
/// Implemented for the integer and floating-point primitives and for arrays
/// of `Pod` types. Callers of `read_obj`/`write_obj` need no `unsafe`; a
/// hypervisor implements this for its own `#[repr(C)]` descriptor types
/// (virtio rings, boot parameters) once, under the contract below.
///
/// # Safety
///
/// An implementing type must:
/// - accept every bit pattern of `size_of::<Self>()` bytes as a valid value
///   (no `bool`, `char`, enums, references, `NonZero*`, niches of any kind),
///   since guest memory holds whatever the guest wrote;
/// - have no padding bytes (a `#[repr(C)]` struct whose fields are `Pod`
///   and laid out without gaps, or `#[repr(transparent)]` over a `Pod`),
///   since its bytes are copied into guest memory;
/// - contain no `UnsafeCell` and have no `Drop` meaning beyond its bytes
///   (it is `Copy`).
///
/// Alignment needs nothing: values are copied byte by byte through an
/// aligned host value, never referenced in place.
pub unsafe trait Pod: Copy + 'static {}

macro_rules! pod {
    ($($t:ty)*) => {
        $(
            // SAFETY: primitives without niches or padding; every bit
            // pattern is a value (floats included: any pattern is some
            // number or NaN).
            unsafe impl Pod for $t {}
        )*
    };
}

pod!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64);

// SAFETY: an array's elements are laid out back to back with no padding
// (the element size is a multiple of its alignment) and each accepts every
// bit pattern, so the array does.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// The bytes of `value`.
pub(crate) fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `value` is a live `T` of `size_of::<T>()` bytes, all
    // initialized (`Pod`: no padding); `u8` has alignment 1; the slice
    // borrows `value` for its lifetime.
    unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The bytes of `value`, writable: any bytes written leave a valid `T`.
pub(crate) fn bytes_of_mut<T: Pod>(value: &mut T) -> &mut [u8] {
    // SAFETY: as in `bytes_of`, and `Pod` makes every byte pattern written
    // through the slice a valid `T`; the slice borrows `value` exclusively.
    unsafe { core::slice::from_raw_parts_mut((value as *mut T).cast::<u8>(), size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_views() {
        let v: u32 = 0x1122_3344;
        assert_eq!(bytes_of(&v), &v.to_ne_bytes());
        let mut a = [0u16; 3];
        bytes_of_mut(&mut a).copy_from_slice(&[1, 0, 2, 0, 3, 0]);
        assert_eq!(
            a,
            [
                u16::from_ne_bytes([1, 0]),
                u16::from_ne_bytes([2, 0]),
                u16::from_ne_bytes([3, 0])
            ]
        );
        let z: [u8; 0] = [];
        assert!(bytes_of(&z).is_empty());
    }
}
