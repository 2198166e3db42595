//! The four address spaces a hypervisor juggles, as distinct newtypes.

use memory_addr::{AddrRange, def_usize_addr, def_usize_addr_formatter};

def_usize_addr! {
    /// A guest-physical address (GPA, ARM "IPA"): the output of the guest's
    /// own translation and the input of the nested tables.
    pub type GuestPhysAddr;

    /// A guest-virtual address (GVA): the input of the guest's own tables.
    pub type GuestVirtAddr;

    /// A host-physical address (HPA): the output of the nested tables.
    pub type HostPhysAddr;

    /// A host-virtual address (HVA): where the hypervisor itself sees a frame.
    pub type HostVirtAddr;
}

def_usize_addr_formatter! {
    GuestPhysAddr = "GPA:{}";
    GuestVirtAddr = "GVA:{}";
    HostPhysAddr = "HPA:{}";
    HostVirtAddr = "HVA:{}";
}

/// A half-open range of guest-physical addresses.
pub type GuestPhysAddrRange = AddrRange<GuestPhysAddr>;
/// A half-open range of guest-virtual addresses.
pub type GuestVirtAddrRange = AddrRange<GuestVirtAddr>;
/// A half-open range of host-physical addresses.
pub type HostPhysAddrRange = AddrRange<HostPhysAddr>;
/// A half-open range of host-virtual addresses.
pub type HostVirtAddrRange = AddrRange<HostVirtAddr>;

impl HostVirtAddr {
    /// The address as a raw const pointer.
    pub const fn as_ptr(self) -> *const u8 {
        self.as_usize() as *const u8
    }

    /// The address as a raw mutable pointer.
    pub const fn as_mut_ptr(self) -> *mut u8 {
        self.as_usize() as *mut u8
    }
}

impl From<HostPhysAddr> for memory_addr::PhysAddr {
    fn from(hpa: HostPhysAddr) -> Self {
        Self::from_usize(hpa.as_usize())
    }
}

impl From<memory_addr::PhysAddr> for HostPhysAddr {
    fn from(pa: memory_addr::PhysAddr) -> Self {
        Self::from_usize(pa.as_usize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memory_addr::MemoryAddr;
    use std::format;

    #[test]
    fn formatting_names_the_space() {
        assert_eq!(format!("{:?}", GuestPhysAddr::from(0x1000)), "GPA:0x1000");
        assert_eq!(format!("{:x}", GuestVirtAddr::from(0xabc)), "GVA:0xabc");
        assert_eq!(format!("{:X}", HostPhysAddr::from(0xabc)), "HPA:0xABC");
        assert_eq!(format!("{:?}", HostVirtAddr::from(0x10)), "HVA:0x10");
    }

    #[test]
    fn alignment_and_ranges() {
        let gpa = GuestPhysAddr::from(0x20_1234);
        assert_eq!(gpa.align_down_4k(), GuestPhysAddr::from(0x20_1000));
        assert_eq!(gpa.align_up(0x20_0000usize), GuestPhysAddr::from(0x40_0000));
        let r = GuestPhysAddrRange::from_start_size(0x1000.into(), 0x2000);
        assert!(r.contains(0x2fff.into()));
        assert!(!r.contains(0x3000.into()));
        assert_eq!(r.size(), 0x2000);
    }

    #[test]
    fn phys_addr_conversion_round_trips() {
        let hpa = HostPhysAddr::from(0x1234_5000);
        let pa: memory_addr::PhysAddr = hpa.into();
        assert_eq!(HostPhysAddr::from(pa), hpa);
    }
}
