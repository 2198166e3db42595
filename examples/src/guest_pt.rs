//! A tiny first-stage page-table writer: what a guest kernel does at boot,
//! done by the demo through the space's write API so that
//! [`guest_aspace::gva::walk`] has something real to walk.
//!
//! All three regimes use 4 KiB tables of 512 eight-byte entries and 9 index
//! bits per level, so one loop builds them; only the entry encodings and the
//! number of levels differ:
//!
//! | arch | regime | levels | table entry | leaf |
//! |---|---|---|---|---|
//! | x86_64 | 4-level paging, CR3 (Intel SDM Vol. 3A, 4.5) | 4 | P, R/W, U/S | P, R/W, U/S, PS (2 MiB), XD |
//! | aarch64 | 4 KiB granule, T0SZ = T1SZ = 25 (Arm ARM D8) | 3 | `0b11` | `0b01` block / `0b11` page, AP, SH, AF, PXN, UXN |
//! | riscv64 | Sv39, `satp` (RISC-V Privileged 4.4) | 3 | V | V, R, W, X, U, A, D |

use gpa_types::{GuestPhysAddr, PageSize};
use guest_aspace::GuestAddrSpace;
use guest_aspace::gva::GuestPaging;
use npt_entry::NptFormat;
use npt_table::FrameAllocator;

use crate::config::Arch;
use crate::error::DemoError;

const TABLE: usize = 4096;

/// What a leaf grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Supervisor read + execute (kernel text).
    KernelText,
    /// User read + write, no execute (user data).
    UserData,
}

// x86-64 entry bits (Intel SDM Vol. 3A, 4.5, the entry-format tables).
/// P, present.
const X86_P: u64 = 1 << 0;
/// R/W, writes allowed.
const X86_RW: u64 = 1 << 1;
/// U/S, user accesses allowed.
const X86_US: u64 = 1 << 2;
/// PS, the PDE maps a 2 MiB page.
const X86_PS: u64 = 1 << 7;
/// XD, execute-disable (with IA32_EFER.NXE = 1).
const X86_XD: u64 = 1 << 63;
/// Bits 51:12, the address.
const X86_ADDR: u64 = 0x000f_ffff_ffff_f000;

// AArch64 stage-1 descriptor bits (Arm ARM D8, VMSAv8-64 descriptor formats).
/// Bits 1:0 = `0b11`: table (levels 0-2) or page (level 3).
const ARM_TABLE_OR_PAGE: u64 = 0b11;
/// Bits 1:0 = `0b01`: block (levels 1, 2).
const ARM_BLOCK: u64 = 0b01;
/// AP\[1\]: EL0 access.
const ARM_AP_EL0: u64 = 1 << 6;
/// AP\[2\]: read-only.
const ARM_AP_RO: u64 = 1 << 7;
/// SH = `0b11`, inner shareable.
const ARM_SH_INNER: u64 = 0b11 << 8;
/// AF, the Access flag (set: no access-flag fault).
const ARM_AF: u64 = 1 << 10;
/// PXN: no execution at EL1.
const ARM_PXN: u64 = 1 << 53;
/// UXN: no execution at EL0.
const ARM_UXN: u64 = 1 << 54;
/// Bits 47:12, the address.
const ARM_ADDR: u64 = 0x0000_ffff_ffff_f000;
/// TCR_EL1.T0SZ and T1SZ: 39-bit ranges, 3 levels from level 1.
pub const ARM_TXSZ: u8 = 25;

// RISC-V Sv39 PTE bits (Privileged 4.3.1, 4.4.1).
/// V, valid.
const RV_V: u64 = 1 << 0;
/// R, readable.
const RV_R: u64 = 1 << 1;
/// W, writable.
const RV_W: u64 = 1 << 2;
/// X, executable.
const RV_X: u64 = 1 << 3;
/// U, user-mode accessible.
const RV_U: u64 = 1 << 4;
/// A, accessed.
const RV_A: u64 = 1 << 6;
/// D, dirty.
const RV_D: u64 = 1 << 7;
/// The PPN field starts at bit 10.
const RV_PPN_SHIFT: u32 = 10;
/// PPN bits 53:10, 44 bits wide.
const RV_PPN_MASK: u64 = (1 << 44) - 1;
/// `satp`.MODE = 8, Sv39 (4.1.11).
const RV_SATP_SV39: u64 = 8 << 60;

/// A guest page table under construction in guest RAM.
pub struct GuestTables {
    arch: Arch,
    /// Next free table frame in the area.
    next: usize,
    /// End of the area.
    end: usize,
    /// Root tables: one, or TTBR0 and TTBR1 for AArch64.
    roots: [usize; 2],
    /// Tables written so far.
    count: usize,
}

impl GuestTables {
    /// Starts a table for `arch` using the guest RAM `[area, area + len)`
    /// for its table frames, and writes the empty root(s).
    pub fn new<F: NptFormat, A: FrameAllocator>(
        space: &mut GuestAddrSpace<F, A>,
        arch: Arch,
        area: usize,
        len: usize,
    ) -> Result<Self, DemoError> {
        let mut t = Self {
            arch,
            next: area,
            end: area + len,
            roots: [0; 2],
            count: 0,
        };
        t.roots[0] = t.new_table(space)?;
        t.roots[1] = if arch == Arch::Aarch64 {
            t.new_table(space)?
        } else {
            t.roots[0]
        };
        Ok(t)
    }

    /// Tables written and the GPA range they occupy.
    pub fn footprint(&self) -> (usize, usize, usize) {
        (self.count, self.roots[0], self.next)
    }

    fn new_table<F: NptFormat, A: FrameAllocator>(
        &mut self,
        space: &mut GuestAddrSpace<F, A>,
    ) -> Result<usize, DemoError> {
        if self.next + TABLE > self.end {
            return Err(DemoError::Step {
                step: "writing the guest page table",
                error: guest_aspace::AspaceError::NoMemory,
            });
        }
        let gpa = self.next;
        space
            .write(GuestPhysAddr::from_usize(gpa), &[0; TABLE])
            .map_err(|error| DemoError::Step {
                step: "zeroing a guest page table",
                error,
            })?;
        self.next += TABLE;
        self.count += 1;
        Ok(gpa)
    }

    fn levels(&self) -> usize {
        match self.arch {
            Arch::X86_64 => 4,
            Arch::Aarch64 | Arch::Riscv64 => 3,
        }
    }

    /// The entry pointing at the table at `table`.
    fn pointer(&self, table: usize) -> u64 {
        let t = table as u64;
        match self.arch {
            Arch::X86_64 => t | X86_P | X86_RW | X86_US,
            Arch::Aarch64 => t | ARM_TABLE_OR_PAGE,
            Arch::Riscv64 => ((t >> 12) << RV_PPN_SHIFT) | RV_V,
        }
    }

    /// The table a pointer entry points at, or `None` if the entry is empty.
    fn target(&self, entry: u64) -> Option<usize> {
        if entry & 1 == 0 {
            return None;
        }
        let addr = match self.arch {
            Arch::X86_64 => entry & X86_ADDR,
            Arch::Aarch64 => entry & ARM_ADDR,
            Arch::Riscv64 => ((entry >> RV_PPN_SHIFT) & RV_PPN_MASK) << 12,
        };
        Some(addr as usize)
    }

    /// A leaf mapping `gpa` with a page of `size`.
    fn leaf(&self, gpa: usize, size: PageSize, access: Access) -> u64 {
        let g = gpa as u64;
        let huge = size != PageSize::Size4K;
        match (self.arch, access) {
            (Arch::X86_64, Access::KernelText) => g | X86_P | if huge { X86_PS } else { 0 },
            (Arch::X86_64, Access::UserData) => {
                g | X86_P | X86_RW | X86_US | X86_XD | if huge { X86_PS } else { 0 }
            }
            (Arch::Aarch64, a) => {
                let kind = if huge { ARM_BLOCK } else { ARM_TABLE_OR_PAGE };
                let rights = match a {
                    Access::KernelText => ARM_AP_RO | ARM_UXN,
                    Access::UserData => ARM_AP_EL0 | ARM_PXN | ARM_UXN,
                };
                g | kind | ARM_SH_INNER | ARM_AF | rights
            }
            (Arch::Riscv64, a) => {
                let rights = match a {
                    Access::KernelText => RV_R | RV_X,
                    Access::UserData => RV_R | RV_W | RV_U,
                };
                ((g >> 12) << RV_PPN_SHIFT) | RV_V | RV_A | RV_D | rights
            }
        }
    }

    /// Maps the page of `size` at `gva` to `gpa`, creating tables as needed.
    pub fn map<F: NptFormat, A: FrameAllocator>(
        &mut self,
        space: &mut GuestAddrSpace<F, A>,
        gva: u64,
        gpa: usize,
        size: PageSize,
        access: Access,
    ) -> Result<(), DemoError> {
        let step = |error| DemoError::Step {
            step: "writing the guest page table",
            error,
        };
        let upper = self.arch == Arch::Aarch64 && gva & (1 << 55) != 0;
        let mut table = self.roots[usize::from(upper)];
        let leaf_height = size.height();
        for height in (leaf_height..self.levels()).rev() {
            let index = ((gva >> (12 + 9 * height)) & 0x1ff) as usize;
            let slot = GuestPhysAddr::from_usize(table + index * 8);
            if height == leaf_height {
                return space
                    .write_u64(slot, self.leaf(gpa, size, access))
                    .map_err(step);
            }
            let entry = space.read_u64(slot).map_err(step)?;
            table = match self.target(entry) {
                Some(next) => next,
                None => {
                    let next = self.new_table(space)?;
                    space.write_u64(slot, self.pointer(next)).map_err(step)?;
                    next
                }
            };
        }
        Ok(())
    }

    /// The translation regime that points the guest's MMU at these tables.
    pub fn paging(&self) -> GuestPaging {
        match self.arch {
            Arch::X86_64 => GuestPaging::X86 {
                cr3: self.roots[0] as u64,
                la57: false,
                nxe: true,
                maxphyaddr: 48,
            },
            Arch::Aarch64 => GuestPaging::Arm {
                ttbr0: self.roots[0] as u64,
                ttbr1: self.roots[1] as u64,
                t0sz: ARM_TXSZ,
                t1sz: ARM_TXSZ,
            },
            Arch::Riscv64 => GuestPaging::Riscv {
                satp: RV_SATP_SV39 | (self.roots[0] as u64 >> 12),
                pbmte: false,
            },
        }
    }

    /// The regime in a line, with its register values.
    pub fn describe(&self) -> String {
        match self.paging() {
            GuestPaging::X86 { cr3, .. } => {
                format!("x86-64 4-level paging, EFER.NXE = 1, CR3 = {cr3:#x}")
            }
            GuestPaging::Arm {
                ttbr0, ttbr1, t0sz, ..
            } => format!(
                "AArch64 4K granule, T0SZ = T1SZ = {t0sz} (39-bit VA), TTBR0_EL1 = {ttbr0:#x}, TTBR1_EL1 = {ttbr1:#x}"
            ),
            GuestPaging::Riscv { satp, .. } => format!("RISC-V Sv39, satp = {satp:#x}"),
        }
    }
}
