//! A guest's address space: the crate a hypervisor talks to when it creates
//! a VM, loads its image, handles its exits and tears it down.
//!
//! [`GuestAddrSpace<F, A>`] owns one nested table ([`npt_table`]) of format
//! `F` and a sorted set of non-overlapping regions inside a guest-physical
//! window:
//!
//! | kind | backing | owned |
//! |---|---|---|
//! | RAM (`MAP_ALLOC`) | allocated, zeroed; eager (huge frames where possible) or lazy | yes |
//! | identical (`MAP_IDENTICAL`, `MAP_RESERVED`) | GPA == HPA pass-through, or allocated and placed at its own address | no / yes |
//! | linear | GPA = HPA + offset pass-through | no |
//! | MMIO | unmapped (exits, reported by [`GuestAddrSpace::handle_fault`]) or device pass-through | no |
//! | ROM | allocated, read-only (+execute), host-loaded | yes |
//!
//! It translates GPAs ([`GuestAddrSpace::translate`], [`GuestAddrSpace::query`],
//! [`GuestAddrSpace::translate_and_get_limit`], [`GuestAddrSpace::hpa_to_gpa`]),
//! changes the guest's rights on a range ([`GuestAddrSpace::protect_range`]),
//! classifies faults ([`FaultOutcome`]),
//! reads and writes guest memory safely, walks the guest's own page tables
//! ([`gva`]) and logs dirty pages. Every mutating call returns the
//! [`npt_table::TlbFlush`] record for the caller to act on.
//!
//! One dependency is enough: the crates underneath are re-exported
//! ([`gpa_types`], [`npt_entry`], [`npt_table`]), and so are the types most
//! code names (addresses, flags, [`FrameAllocator`], [`TlbFlush`],
//! [`NptFormat`], ...). Features:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `paging-handler` | yes | `HandlerAllocator`: a `page_table_multiarch::PagingHandler` as a [`FrameAllocator`] |
//! | `log` | no | `log` records: region changes and removals (debug), faults, their outcomes and completed flushes (trace) |
//! | `serde` | no | `serde::Deserialize` for the VM config records ([`DevicesConfig`] and its records) |
//! | `std` | no | the host allocators of [`npt_table`] for tests: `HostFrameAllocator`, `FailingAllocator`, `POISON`; `model`, a reference model of the space for tests and fuzz targets |
//!
//! Frames come from the [`FrameAllocator`] the space is built with (a
//! `PagingHandler` through `HandlerAllocator`, or your own). Wrapping it in a
//! [`ZeroedPool`] takes zeroing off the fault path: the hypervisor calls
//! [`ZeroedPool::refill`] from its idle loop or a housekeeping thread, and
//! lazy RAM faults and host writes into lazy RAM take a frame that is
//! already zero ([`FrameAllocator::alloc_zeroed_frame`]), falling back to
//! zeroing in place when the pool is empty. Frames given back go to the
//! inner allocator, never straight back into the pool.
//!
//! ```
//! // With feature `std` (the host allocator); everything from one crate.
//! use guest_aspace::{ConfigOptions, GuestAddrSpace, GuestPhysAddr, GuestPhysAddrRange};
//! use guest_aspace::HostFrameAllocator;
//! use guest_aspace::npt_entry::gstage::Sv39x4;
//!
//! let alloc = HostFrameAllocator::new();
//! let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 34);
//! let records = [
//!     [0x8000_0000, 0x400_0000, 0x7, 0], // 64 MiB RAM
//!     [0x1000_0000, 0x1000, 0x3, 3],     // UART, emulated
//!     [0x2000_0000, 0x10_0000, 0x5, 4],  // 1 MiB flash ROM
//! ];
//! let (space, flush) =
//!     GuestAddrSpace::<Sv39x4, _>::from_config(&alloc, window, &records, ConfigOptions::default()).unwrap();
//! flush.ignore();
//! assert!(space.translate(GuestPhysAddr::from(0x8000_0000)).is_some());
//! assert_eq!(space.regions().count(), 3);
//! ```
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

/// Logs at debug level with feature `log`; otherwise only type-checks the
/// arguments (no code, no cost).
macro_rules! debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "log")]
        log::debug!($($arg)*);
        #[cfg(not(feature = "log"))]
        if false {
            let _ = format_args!($($arg)*);
        }
    }};
}

/// Logs at trace level with feature `log`; otherwise only type-checks the
/// arguments (no code, no cost).
macro_rules! trace {
    ($($arg:tt)*) => {{
        #[cfg(feature = "log")]
        log::trace!($($arg)*);
        #[cfg(not(feature = "log"))]
        if false {
            let _ = format_args!($($arg)*);
        }
    }};
}

mod compat;
mod config;
mod dirty;
mod error;
pub mod exit;
mod fault;
pub mod gva;
mod memory;
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub mod model;
mod pod;
mod pool;
mod region;
mod rwlock;
mod shared;
mod space;
mod stats;
mod zero;

pub use config::ConfigOptions;
pub use error::{AspaceError, AspaceResult, PlacementError};
pub use fault::{Access, FaultOutcome};
pub use pod::Pod;
pub use pool::ZeroedPool;
pub use region::{Backing, RegionInfo, RegionKind};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use shared::SharedAddrSpace;
pub use space::{GpaInfo, GuestAddrSpace, HostChunk};
pub use stats::{FaultCounters, SpaceStats};

// One dependency: the crates underneath, and the types most code names.
pub use gpa_types;
pub use gpa_types::{
    DevicesConfig, EmulatedDevice, GuestPhysAddr, GuestPhysAddrRange, GuestVirtAddr, HostPhysAddr,
    HostVirtAddr, MapType, MappingFlags, MemoryAddr, PageSize, PassthroughAddress,
    PassthroughDevice, RegionConfig,
};
/// The address types `PagingHandler` and `axerrno`-based code are written in.
pub use memory_addr;
pub use npt_entry;
pub use npt_entry::NptFormat;
pub use npt_table;
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub use npt_table::{FailingAllocator, HostFrameAllocator, POISON};
pub use npt_table::{FrameAllocator, MapPolicy, NestedPageTable, NptError, TableStats, TlbFlush};
#[cfg(feature = "paging-handler")]
#[cfg_attr(docsrs, doc(cfg(feature = "paging-handler")))]
pub use npt_table::{HandlerAllocator, PagingHandler};

/// The README's examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
