//! One generic second-stage page-table walker for every format of
//! [`npt_entry`]: Intel EPT, AMD NPT, AArch64 stage 2 and RISC-V G-stage.
//!
//! [`NestedPageTable<F, A>`] is generic over the format `F` (its geometry and
//! entry encoding) and the frame allocator `A`. Formats differ only in
//! numbers and bits; the walk is written once, in two pieces that every
//! operation uses: a point walk (one step function, parameterised by what it
//! records: nothing for `translate`, the directory for a [`Cursor`], the
//! path for writers, who then act where it ended, descend further or prune
//! on the way back up), and a range walk (pre-order over the entries of a
//! range, driven by a visitor that keeps, replaces or splits each leaf, with
//! a tight loop at the last level, parking emptied tables on the way up).
//!
//! - Single pages: [`map`](NestedPageTable::map), [`unmap`](NestedPageTable::unmap),
//!   [`protect`](NestedPageTable::protect), [`remap`](NestedPageTable::remap),
//!   [`query`](NestedPageTable::query), and [`entry`](NestedPageTable::entry),
//!   a handle on where one walk ended ([`Entry::Vacant`] or [`Entry::Leaf`]).
//! - Ranges: [`map_region`](NestedPageTable::map_region) (huge leaves where
//!   alignment allows), [`map_frames`](NestedPageTable::map_frames),
//!   [`unmap_region`](NestedPageTable::unmap_region) and
//!   [`protect_region`](NestedPageTable::protect_region) (splitting huge
//!   leaves at the edges), [`harvest`](NestedPageTable::harvest) of
//!   accessed/dirty bits, [`write_protect_region`](NestedPageTable::write_protect_region),
//!   [`mappings`](NestedPageTable::mappings) (an iterator of merged runs),
//!   [`for_each_mapping`](NestedPageTable::for_each_mapping),
//!   [`collapse`](NestedPageTable::collapse).
//! - Every operation is all-or-nothing: frames are counted and taken before
//!   anything changes, so a failure (out of frames included) leaves the
//!   table as it was and leaks nothing.
//! - TLB maintenance stays with the caller: mutating operations return a
//!   `#[must_use]` [`TlbFlush`] naming what became stale.
//! - Frames wait for the flush: table frames a change unlinks are parked in
//!   the table and go back to the allocator only when the caller hands the
//!   record back with [`complete`](NestedPageTable::complete) (or
//!   [`complete_all`](NestedPageTable::complete_all) after a full flush), so
//!   no vCPU's stale TLB or paging-structure cache can reach a frame that
//!   has a new owner.
//! - Every table frame, the root included, must lie below the table's
//!   physical width ([`NptError::TableFrameOutOfRange`]).
//! - Each family of operations returns an error enum of its own, holding
//!   only what it can produce ([`MapError`], [`ChangeError`],
//!   [`CollapseError`], [`QueryError`], [`RangeError`], [`FrameError`]);
//!   each converts into [`NptError`], which holds them all.
//!
//! ```
//! use npt_table::{HostFrameAllocator, MapPolicy, NestedPageTable};
//! use npt_entry::gstage::Sv39x4;
//! use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
//!
//! let alloc = HostFrameAllocator::new();
//! let mut table = NestedPageTable::<Sv39x4, _>::new(&alloc).unwrap();
//! let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
//! table.map_region(0x8000_0000.into(), 0x8000_0000.into(), 4 << 20, rwx, MapPolicy::Huge)?.ignore();
//! let flush = table.unmap_region(GuestPhysAddr::from(0x8010_0000), 0x1000)?;
//! assert!(!flush.is_empty());
//! assert_eq!(table.query(0x8010_1000.into())?.size, PageSize::Size4K);
//! assert!(table.query(0x8010_0000.into()).is_err());
//! // HFENCE.GVMA what `flush` names on every hart, then:
//! table.complete(flush);
//! drop(table);
//! assert_eq!(alloc.live_frames(), 0);
//! # Ok::<(), npt_table::NptError>(())
//! ```
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

mod collapse;
pub mod concurrent;
mod cursor;
mod entry;
mod error;
mod flush;
mod frames;
#[cfg(feature = "std")]
mod host;
mod iter;
mod map;
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub mod mmu;
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub mod model;
mod range;
mod raw;
mod retire;
mod table;
mod walk;

pub use collapse::Collapsed;
pub use concurrent::{Inserted, NewLeaf};
pub use cursor::Cursor;
pub use entry::{Entry, LeafEntry, Mappings, VacantEntry};
pub use error::{
    ChangeError, CollapseError, FrameError, MapError, NptError, NptResult, QueryError, RangeError,
};
pub use flush::{FLUSH_RANGES, TlbFlush};
#[cfg(feature = "paging-handler")]
#[cfg_attr(docsrs, doc(cfg(feature = "paging-handler")))]
pub use frames::HandlerAllocator;
pub use frames::{FRAME_SIZE, FrameAllocator};
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub use host::{FailingAllocator, HighAllocator, HostFrameAllocator, POISON, ReusingAllocator};
/// The trait [`HandlerAllocator`] adapts, re-exported so that implementing it
/// needs no direct dependency on `page_table_multiarch`.
#[cfg(feature = "paging-handler")]
#[cfg_attr(docsrs, doc(cfg(feature = "paging-handler")))]
pub use page_table_multiarch::PagingHandler;
pub use range::{AccessBit, MappedRun};
pub use table::{MapPolicy, NestedPageTable, TableStats, Translation};
