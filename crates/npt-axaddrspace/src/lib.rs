//! Runs [axaddrspace](https://crates.io/crates/axaddrspace) 0.6's
//! `AddrSpace` (ArceOS-Hypervisor, AxVisor) on `npt-table`.
//!
//! axaddrspace owns no page table: it drives one through its
//! [`NestedPageTableOps`](axaddrspace::NestedPageTableOps) trait. [`AxNpt`]
//! implements that trait on [`npt_table::NestedPageTable`] for every format
//! (Intel EPT, AMD NPT, AArch64 stage 2, RISC-V G-stage), so a hypervisor
//! keeps its `AddrSpace` calls and gets this workspace's table underneath.
//! What the trait cannot carry is kept here:
//!
//! - **Flushes.** The trait returns no flush records; every change is merged
//!   into one pending [`TlbFlush`](npt_table::TlbFlush), which the hypervisor
//!   takes with [`AxNpt::take_flush`], carries out, and hands back with
//!   [`AxNpt::complete`].
//! - **Frames.** Table frames an unmap unlinks and guest frames axaddrspace
//!   gives back are parked until that record is completed.
//! - **Types.** axaddrspace is written in `axvm_types` 0.7 and
//!   `ax_memory_addr` 0.7, this workspace in `gpa_types`; every conversion
//!   (addresses, flags, page sizes, errors) is in [`convert`].
//!
//! ```
//! use axaddrspace::{AddrSpace, MappingFlags};
//! use axvm_types::GuestPhysAddr;
//! use npt_axaddrspace::AxNpt;
//! use npt_entry::ept::Ept4;
//! use npt_table::HostFrameAllocator;
//!
//! let alloc = HostFrameAllocator::new();
//! let table = AxNpt::<Ept4, _>::new(&alloc).unwrap();
//! let mut space = AddrSpace::new_empty(table, GuestPhysAddr::from_usize(0), 1 << 32).unwrap();
//! let rw = MappingFlags::READ | MappingFlags::WRITE;
//! space.map_alloc(GuestPhysAddr::from_usize(0x8000_0000), 0x4000, rw, false).unwrap();
//! // The guest touches 0x8000_1234: an EPT violation.
//! assert!(space.handle_page_fault(GuestPhysAddr::from_usize(0x8000_1234), MappingFlags::WRITE));
//! space.unmap(GuestPhysAddr::from_usize(0x8000_0000), 0x4000).unwrap();
//! // INVEPT what the record names on every CPU running the VM, then:
//! let flush = space.page_table().take_flush();
//! assert!(!flush.is_empty());
//! // The guest frame and the three tables the unmap emptied go back.
//! assert_eq!(space.page_table().complete(flush), 4);
//! drop(space);
//! assert_eq!(alloc.live_frames(), 0);
//! ```
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod convert;
mod ops;
mod table;

pub use table::AxNpt;

/// The README's example, compiled and run as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
