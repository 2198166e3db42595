//! The body of the `quickstart` example: build a VM's guest-physical address
//! space from an AxVisor-format config and show what it holds.
//!
//! Run it from the repository root:
//!
//! ```text
//! cargo run --release --example quickstart                      # built-in x86-64 PC
//! cargo run --release --example quickstart -- examples/configs/aarch64.toml
//! cargo run --release --example quickstart -- --arch riscv64    # same config, Sv39x4
//! ```
//!
//! The report has six sections: the region table, nested-table statistics,
//! sample GPA→HPA translations, a GVA→GPA walk through a guest page table
//! the demo writes into guest RAM, the outcomes of a lazy-RAM, an MMIO and a
//! ROM fault, and an `info mem`-style dump of mapped runs.
//!
//! The address space is generic over the table format, so the demo is one
//! generic function ([`run`]) and [`run_demo`] picks the format for the
//! architecture:
//!
//! | arch | nested format | guest page table |
//! |---|---|---|
//! | `x86_64` | [`npt_entry::ept::Ept4`] | x86-64 4-level |
//! | `aarch64` | [`npt_entry::stage2::Stage2Ipa40`] | AArch64, 4 KiB granule, 39-bit VA |
//! | `riscv64` | [`npt_entry::gstage::Sv39x4`] | Sv39 |
//!
//! ```
//! use npt_examples::{Arch, VmConfig, run_demo};
//!
//! let cfg = VmConfig::builtin()?;
//! let mut report = Vec::new();
//! let found = run_demo(&cfg, Some(Arch::Riscv64), None, &mut report)?;
//! assert_eq!(found.format, "RISC-V Sv39x4");
//! assert_eq!(found.leaked_frames, 0);
//! assert!(String::from_utf8_lossy(&report).contains("info mem"));
//! # Ok::<(), npt_examples::DemoError>(())
//! ```
#![warn(missing_docs)]

mod config;
mod demo;
mod error;
pub mod guest_pt;
pub mod show;

use std::io::Write;

use npt_entry::ept::Ept4;
use npt_entry::gstage::Sv39x4;
use npt_entry::stage2::Stage2Ipa40;

pub use config::{Arch, DEFAULT_CONFIG, VmConfig, choose_arch};
pub use demo::{Report, run};
pub use error::DemoError;

/// Runs the demo on `cfg` for `arch` if given, else the architecture
/// [`choose_arch`] finds in the config and its file name (`path`), printing
/// the report to `out`.
pub fn run_demo(
    cfg: &VmConfig,
    arch: Option<Arch>,
    path: Option<&str>,
    out: &mut dyn Write,
) -> Result<Report, DemoError> {
    let (arch, why) = choose_arch(cfg, arch, path);
    match arch {
        Arch::X86_64 => run::<Ept4>(cfg, arch, &why, out),
        Arch::Aarch64 => run::<Stage2Ipa40>(cfg, arch, &why, out),
        Arch::Riscv64 => run::<Sv39x4>(cfg, arch, &why, out),
    }
}
