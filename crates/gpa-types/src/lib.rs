//! Address newtypes, page sizes, mapping flags and VM region records for
//! hypervisors that manage second-stage (nested) page tables.
//!
//! A guest runs under two translations: its own tables map a
//! [`GuestVirtAddr`] to a [`GuestPhysAddr`], and the hypervisor's nested
//! tables map that to a [`HostPhysAddr`]. Keeping the four address spaces
//! apart in the type system makes mixing them a compile error.
//!
//! VM config records: [`RegionConfig`] (one `memory_regions` record) and
//! [`DevicesConfig`] (the `[devices]` table), checked with errors that name
//! the field. Feature `serde` derives `serde::Deserialize` for the
//! `[devices]` records, so a hypervisor reading a TOML config needs no glue.
//!
//! ```
//! use gpa_types::{GuestPhysAddr, HostPhysAddr, MemoryAddr, PageSize};
//!
//! let gpa = GuestPhysAddr::from_usize(0x8020_1000);
//! assert!(PageSize::Size4K.is_aligned(gpa.as_usize()));
//! assert_eq!(gpa.align_down(PageSize::Size2M), GuestPhysAddr::from_usize(0x8020_0000));
//! assert_eq!(format!("{gpa:x}"), "GPA:0x80201000");
//! let _hpa: HostPhysAddr = HostPhysAddr::from_usize(0x4000_0000);
//! ```
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod addr;
mod config;
mod devices;
mod flags;
mod size;

pub use addr::{
    GuestPhysAddr, GuestPhysAddrRange, GuestVirtAddr, GuestVirtAddrRange, HostPhysAddr,
    HostPhysAddrRange, HostVirtAddr, HostVirtAddrRange,
};
pub use config::{ConfigError, ConfigField, MapType, RegionConfig};
pub use devices::{
    DeviceError, DeviceField, DeviceSection, DevicesConfig, EmulatedDevice, PassthroughAddress,
    PassthroughDevice,
};
pub use flags::{MappingFlags, MemoryType};
pub use memory_addr::{AddrRange, MemoryAddr};
pub use size::PageSize;

/// The README's examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
