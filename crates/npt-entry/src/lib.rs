//! Bit-exact second-stage page-table entry formats and the control values
//! that point hardware at a table.
//!
//! | module | hardware | entry | control values | formats |
//! |---|---|---|---|---|
//! | [`ept`] | Intel VMX EPT | [`ept::EptEntry`] | [`ept::Eptp`] | [`ept::Ept4`], [`ept::Ept5`] |
//! | [`npt`] | AMD SVM nested paging | [`npt::NptEntry`] | [`npt::Ncr3`] | [`npt::Npt4`] |
//! | [`stage2`] | AArch64 VMSAv8-64 stage 2, 4 KiB granule | [`stage2::Stage2Entry`] | [`stage2::Vtcr`], [`stage2::Vttbr`] | [`stage2::Stage2`]`<IPA_BITS>` |
//! | [`gstage`] | RISC-V H-extension G-stage | [`gstage::GStageEntry`] | [`gstage::Hgatp`] | [`gstage::Sv39x4`], [`gstage::Sv48x4`], [`gstage::Sv57x4`] |
//!
//! Every entry implements [`page_table_entry::GenericPTE`] and the typed
//! [`NestedEntry`] API; every format implements [`NptFormat`], which gives a
//! generic walker (crate `npt-table`) the geometry of the walk. All formats
//! build on every host: pick one with a type parameter. [`for_each_format!`]
//! lists them all, for code (tests, benches, fuzz targets) that runs once per
//! format.
//!
//! ```
//! use npt_entry::{GenericPTE, NestedEntry, NptFormat, ept::Ept4};
//! use gpa_types::{HostPhysAddr, MappingFlags, PageSize};
//!
//! type E = <Ept4 as NptFormat>::Entry;
//! let rw = MappingFlags::READ | MappingFlags::WRITE;
//! let leaf = E::try_new_leaf(HostPhysAddr::from(0x20_0000), rw, PageSize::Size2M).unwrap();
//! assert!(leaf.is_huge());
//! assert_eq!(Ept4::ROOT_ENTRIES, 512);
//! ```
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(test)]
extern crate std;

mod each_format;
mod format;

pub mod ept;
pub mod gstage;
pub mod npt;
pub mod stage2;

pub use format::{
    BITS_PER_LEVEL, ENTRIES_PER_TABLE, EntryError, EntryKind, MAX_ROOT_FRAMES, NestedEntry,
    NptFormat, TABLE_BYTES, check_flags, check_leaf_address,
};
pub use page_table_entry::GenericPTE;
