//! Every conversion between axaddrspace's types and ours, in one place.
//!
//! axaddrspace 0.6 is written in `axvm_types` (GPA, flags) and
//! `ax_memory_addr` 0.7 (host addresses); this workspace in `gpa_types`
//! (built on `memory_addr` 0.4 and `page_table_entry`). The address types
//! are all `usize` newtypes and convert losslessly. Flags are converted by
//! name, not by bit value, so a renumbering on either side cannot silently
//! change a permission. Page sizes and errors are the only lossy parts;
//! each case is documented where it is decided.

use ax_memory_addr::{PhysAddr, VirtAddr};
use axaddrspace::{AddrSpaceError, PageSize as AxPageSize};
use axvm_types::{GuestPhysAddr as AxGpa, MappingFlags as AxFlags};
use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use npt_table::NptError;

/// axaddrspace's guest-physical address as ours.
#[inline]
pub fn gpa(addr: AxGpa) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(addr.as_usize())
}

/// Our guest-physical address as axaddrspace's.
#[inline]
pub fn ax_gpa(addr: GuestPhysAddr) -> AxGpa {
    AxGpa::from_usize(addr.as_usize())
}

/// axaddrspace's host-physical address (`ax_memory_addr::PhysAddr`) as ours.
#[inline]
pub fn hpa(addr: PhysAddr) -> HostPhysAddr {
    HostPhysAddr::from_usize(addr.as_usize())
}

/// Our host-physical address as axaddrspace's.
#[inline]
pub fn ax_hpa(addr: HostPhysAddr) -> PhysAddr {
    PhysAddr::from_usize(addr.as_usize())
}

/// A host pointer (from `FrameAllocator::phys_to_virt`) as
/// `ax_memory_addr::VirtAddr`.
#[inline]
pub fn ax_hva(ptr: *mut u8) -> VirtAddr {
    VirtAddr::from_mut_ptr_of(ptr)
}

/// The pairs of flags with the same meaning on both sides.
const FLAG_PAIRS: [(AxFlags, MappingFlags); 6] = [
    (AxFlags::READ, MappingFlags::READ),
    (AxFlags::WRITE, MappingFlags::WRITE),
    (AxFlags::EXECUTE, MappingFlags::EXECUTE),
    (AxFlags::USER, MappingFlags::USER),
    (AxFlags::DEVICE, MappingFlags::DEVICE),
    (AxFlags::UNCACHED, MappingFlags::UNCACHED),
];

/// axaddrspace's mapping flags as ours. Unknown bits are dropped (neither
/// side defines any beyond these six).
#[inline]
pub fn flags(ax: AxFlags) -> MappingFlags {
    FLAG_PAIRS
        .iter()
        .filter(|(a, _)| ax.contains(*a))
        .fold(MappingFlags::empty(), |acc, (_, f)| acc | *f)
}

/// Our mapping flags as axaddrspace's.
#[inline]
pub fn ax_flags(ours: MappingFlags) -> AxFlags {
    FLAG_PAIRS
        .iter()
        .filter(|(_, f)| ours.contains(*f))
        .fold(AxFlags::empty(), |acc, (a, _)| acc | *a)
}

/// axaddrspace's page size as ours. `Size1M` has no leaf in any
/// second-stage format this workspace supports (it is a 32-bit Arm
/// section size): [`AddrSpaceError::InvalidMapping`].
#[inline]
pub fn page_size(ax: AxPageSize) -> Result<PageSize, AddrSpaceError> {
    match ax {
        AxPageSize::Size4K => Ok(PageSize::Size4K),
        AxPageSize::Size2M => Ok(PageSize::Size2M),
        AxPageSize::Size1G => Ok(PageSize::Size1G),
        AxPageSize::Size1M => Err(AddrSpaceError::InvalidMapping),
    }
}

/// Our page size as axaddrspace's, where it has one. A 512 GiB leaf
/// (RISC-V Sv48x4/Sv57x4, made only when asked for with
/// `MapPolicy::UpTo(Size512G)`) has none: `None`.
#[inline]
pub fn ax_page_size(size: PageSize) -> Option<AxPageSize> {
    match size {
        PageSize::Size4K => Some(AxPageSize::Size4K),
        PageSize::Size2M => Some(AxPageSize::Size2M),
        PageSize::Size1G => Some(AxPageSize::Size1G),
        PageSize::Size512G => None,
    }
}

/// Our page size as axaddrspace's for reports of a lookup: a 512 GiB leaf
/// is reported as 1 GiB. That understates the leaf, which is safe for every
/// use axaddrspace makes of a queried size (stepping through a buffer leaf
/// by leaf steps in 1 GiB pieces of the same leaf; the host address is
/// exact either way).
#[inline]
pub fn ax_page_size_at_most(size: PageSize) -> AxPageSize {
    ax_page_size(size).unwrap_or(AxPageSize::Size1G)
}

/// A table error (an [`NptError`] or the error of any operation family of
/// `npt-table`) in axaddrspace's terms. axaddrspace has no out-of-memory
/// variant: [`NptError::NoMemory`] becomes
/// [`AddrSpaceError::MappingState`] (the table is unchanged, as after every
/// error of `npt-table`).
pub fn error(e: impl Into<NptError>) -> AddrSpaceError {
    match e.into() {
        NptError::AlreadyMapped { .. } => AddrSpaceError::MappingConflict,
        NptError::NotMapped { gpa } => AddrSpaceError::Unmapped {
            address: ax_gpa(gpa),
        },
        NptError::GpaNotAligned { value, align } => AddrSpaceError::Unaligned {
            subject: "guest physical address or size",
            value,
            alignment: align,
        },
        NptError::HpaNotAligned { hpa, align } => AddrSpaceError::Unaligned {
            subject: "host physical address",
            value: hpa.as_usize(),
            alignment: align,
        },
        NptError::NoMemory => AddrSpaceError::MappingState,
        _ => AddrSpaceError::InvalidMapping,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_by_name() {
        for (a, f) in FLAG_PAIRS {
            assert_eq!(flags(a), f);
            assert_eq!(ax_flags(f), a);
        }
        let rwx = AxFlags::READ | AxFlags::WRITE | AxFlags::EXECUTE;
        assert_eq!(
            flags(rwx),
            MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE
        );
        assert_eq!(ax_flags(flags(AxFlags::all())), AxFlags::all());
        assert_eq!(flags(AxFlags::empty()), MappingFlags::empty());
    }

    #[test]
    fn addresses_convert_losslessly() {
        let g = AxGpa::from_usize(0x1234_5000);
        assert_eq!(ax_gpa(gpa(g)), g);
        let h = PhysAddr::from_usize(0xf_ffff_f000);
        assert_eq!(ax_hpa(hpa(h)), h);
    }

    #[test]
    fn page_sizes() {
        for s in [AxPageSize::Size4K, AxPageSize::Size2M, AxPageSize::Size1G] {
            let ours = page_size(s).unwrap();
            assert_eq!(ours.bytes(), usize::from(s));
            assert_eq!(ax_page_size(ours), Some(s));
        }
        assert_eq!(
            page_size(AxPageSize::Size1M),
            Err(AddrSpaceError::InvalidMapping)
        );
        assert_eq!(ax_page_size(PageSize::Size512G), None);
        assert_eq!(ax_page_size_at_most(PageSize::Size512G), AxPageSize::Size1G);
    }

    #[test]
    fn errors_keep_what_axaddrspace_can_say() {
        let g = GuestPhysAddr::from_usize(0x5000);
        assert_eq!(
            error(NptError::AlreadyMapped { gpa: g }),
            AddrSpaceError::MappingConflict
        );
        assert_eq!(
            error(NptError::NotMapped { gpa: g }),
            AddrSpaceError::Unmapped {
                address: AxGpa::from_usize(0x5000)
            }
        );
        assert!(matches!(
            error(NptError::GpaNotAligned {
                value: 0x5001,
                align: 0x1000
            }),
            AddrSpaceError::Unaligned {
                value: 0x5001,
                alignment: 0x1000,
                ..
            }
        ));
        assert_eq!(error(NptError::NoMemory), AddrSpaceError::MappingState);
        assert_eq!(error(NptError::ZeroLength), AddrSpaceError::InvalidMapping);
    }
}
