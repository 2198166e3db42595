//! The x86 extras, run on a second table after the common scenario, with
//! `NestedPageTable` used directly:
//! - `flag_sets_touched`: every set of `MappingFlags` (R, W, X, USER,
//!   DEVICE, UNCACHED: 64 sets) that `map` accepts is mapped as one 4 KiB
//!   page, and the guest loads from, stores to and executes from each. No
//!   access may end in an EPT misconfiguration or an NPT reserved-bit
//!   fault; exactly the accesses the encoded rights forbid exit, as
//!   violations.
//! - `ad_bits_harvested`: the MMU sets the accessed and dirty flags (EPT:
//!   with A/D enabled in the EPTP) and `harvest` reports exactly the pages
//!   the guest read or wrote (accessed) and wrote (dirty).

use alloc::vec::Vec;

use gpa_types::{GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize};
use guest_aspace::Access;
use npt_entry::NptFormat;
use npt_table::{AccessBit, FRAME_SIZE, FrameAllocator, NestedPageTable};

use crate::arch;
use crate::frames::PoolFrames;
use crate::scenario::{Checks, Exit, Vcpu};

/// What the extras need beyond the common vCPU: resuming the guest at the
/// return address it keeps in R14 after a refused instruction fetch.
pub trait X86Vcpu: Vcpu {
    /// Sets the guest's RIP to its R14.
    fn return_to_r14(&mut self);
}

/// `jmp r14` (REX.B, FF /4): the code at the start of every flag-set page.
const JMP_R14: [u8; 3] = [0x41, 0xff, 0xe6];

/// First page of the flag sets (one page each, in flag-set order).
const FLAGS_BASE: usize = 0x5000_0000;
/// The accessed/dirty pages.
const AD_BASE: usize = 0x6000_0000;
const AD_PAGES: usize = 16;
/// Pages (indices from `AD_BASE`) the guest loads from and stores to.
const AD_READS: [usize; 4] = [0, 2, 5, 7];
const AD_WRITES: [usize; 4] = [2, 3, 9, 15];
/// The parameter block (ROM + 0x1000): magic, counts, list addresses; the
/// read list at +0x100, the write list at +0x600, the jump list at +0xb00.
const PARAMS_GPA: usize = arch::ROM_GPA + 0x1000;
const READ_LIST: usize = 0x100;
const WRITE_LIST: usize = 0x600;
const JUMP_LIST: usize = 0xb00;
const MAGIC: u64 = 0x4e50_5452_4f4d_3333;
const MAX_EXITS: usize = 400;

/// Every flag set built from the six generic flags.
fn flag_sets() -> impl Iterator<Item = MappingFlags> {
    let all = [
        MappingFlags::READ,
        MappingFlags::WRITE,
        MappingFlags::EXECUTE,
        MappingFlags::USER,
        MappingFlags::DEVICE,
        MappingFlags::UNCACHED,
    ];
    (0..64u32).map(move |bits| {
        all.iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .fold(MappingFlags::empty(), |f, (_, &g)| f | g)
    })
}

/// Frames the extras own (backing, not tables), given back at the end.
struct Owned<'a> {
    pool: &'a PoolFrames,
    frames: Vec<usize>,
}

impl Owned<'_> {
    /// A zeroed 4 KiB frame holding `data` at its start.
    fn frame(&mut self, data: &[u8]) -> Option<HostPhysAddr> {
        let hpa = self.pool.alloc_frames(1, FRAME_SIZE)?;
        self.frames.push(hpa.as_usize());
        // SAFETY: a fresh frame from the pool, identity mapped, 4 KiB long;
        // `data` is at most that (callers pass page-sized chunks).
        unsafe {
            let p = hpa.as_usize() as *mut u8;
            core::ptr::write_bytes(p, 0, FRAME_SIZE);
            core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len().min(FRAME_SIZE));
        }
        Some(hpa)
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        for &f in &self.frames {
            self.pool.dealloc_frames(HostPhysAddr::from_usize(f), 1);
        }
    }
}

/// Runs the extras on a fresh table of format `F`. `activate` points the
/// vCPU at the table's root and says whether the MMU will set A/D flags.
pub fn run<F, V>(
    pool: &PoolFrames,
    vcpu: &mut V,
    checks: &mut Checks,
    activate: impl FnOnce(HostPhysAddr, &mut V) -> bool,
) where
    F: NptFormat,
    V: X86Vcpu,
{
    println!("extras: flag sets and A/D on a second {} table", F::NAME);
    let mut owned = Owned {
        pool,
        frames: Vec::new(),
    };
    let mut table = match NestedPageTable::<F, &PoolFrames>::new(pool) {
        Ok(t) => t,
        Err(e) => {
            println!("extras: new table: {e}");
            checks.check("flag_sets_touched", false);
            return;
        }
    };
    let rw = MappingFlags::READ | MappingFlags::WRITE;
    let rx = MappingFlags::READ | MappingFlags::EXECUTE;
    let (image, _) = arch::guest_image();
    let mut reads: Vec<u64> = Vec::new();
    let mut writes: Vec<u64> = Vec::new();
    let mut jumps: Vec<u64> = Vec::new();
    // (GPA, rights the entry encodes) of every flag-set page.
    let mut pages: Vec<(usize, MappingFlags)> = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    let built = (|| {
        let map = |t: &mut NestedPageTable<F, &PoolFrames>, gpa: usize, hpa, flags| {
            t.map(GuestPhysAddr::from_usize(gpa), hpa, PageSize::Size4K, flags)
                .map(|_| ())
        };
        let code = owned.frame(image.get(..FRAME_SIZE.min(image.len()))?)?;
        map(&mut table, arch::ROM_GPA, code, rx).ok()?;
        let tables = arch::guest_tables();
        for (i, chunk) in tables.chunks(FRAME_SIZE).enumerate() {
            let hpa = owned.frame(chunk)?;
            map(&mut table, arch::GUEST_TABLES_GPA + i * FRAME_SIZE, hpa, rw).ok()?;
        }
        for (i, flags) in flag_sets().enumerate() {
            let gpa = FLAGS_BASE + i * FRAME_SIZE;
            let hpa = owned.frame(&JMP_R14)?;
            match map(&mut table, gpa, hpa, flags) {
                Ok(()) => {
                    accepted += 1;
                    let encoded = table.query(GuestPhysAddr::from_usize(gpa)).ok()?.flags;
                    pages.push((gpa, encoded));
                    reads.push((gpa + 8) as u64);
                    writes.push((gpa + 16) as u64);
                    jumps.push(gpa as u64);
                }
                Err(_) => refused += 1,
            }
        }
        for i in 0..AD_PAGES {
            let hpa = owned.frame(&[])?;
            map(&mut table, AD_BASE + i * FRAME_SIZE, hpa, rw).ok()?;
        }
        reads.extend(
            AD_READS
                .iter()
                .map(|&i| (AD_BASE + i * FRAME_SIZE + 8) as u64),
        );
        writes.extend(
            AD_WRITES
                .iter()
                .map(|&i| (AD_BASE + i * FRAME_SIZE + 16) as u64),
        );
        let mut params = alloc::vec![0u8; FRAME_SIZE];
        let header = [
            MAGIC,
            reads.len() as u64,
            writes.len() as u64,
            (PARAMS_GPA + READ_LIST) as u64,
            (PARAMS_GPA + WRITE_LIST) as u64,
            jumps.len() as u64,
            (PARAMS_GPA + JUMP_LIST) as u64,
        ];
        for (off, list) in [
            (0, &header[..]),
            (READ_LIST, &reads[..]),
            (WRITE_LIST, &writes[..]),
            (JUMP_LIST, &jumps[..]),
        ] {
            for (i, w) in list.iter().enumerate() {
                params
                    .get_mut(off + 8 * i..off + 8 * i + 8)?
                    .copy_from_slice(&w.to_le_bytes());
            }
        }
        let hpa = owned.frame(&params)?;
        map(&mut table, PARAMS_GPA, hpa, rx).ok()?;
        Some(())
    })();
    println!("extras: {accepted} flag sets accepted by map, {refused} refused");
    if built.is_none() {
        println!("extras: building the table failed");
        checks.check("flag_sets_touched", false);
        return;
    }
    let ad = activate(table.root_hpa(), vcpu);

    // Every access the encoded rights forbid must exit once.
    let expected = pages
        .iter()
        .map(|(_, f)| {
            [
                MappingFlags::READ,
                MappingFlags::WRITE,
                MappingFlags::EXECUTE,
            ]
            .iter()
            .filter(|&&r| !f.contains(r))
            .count()
        })
        .sum::<usize>();
    let (mut violations, mut unexpected, mut done) = (0, 0, false);
    let mut exit = vcpu.enter(arch::ROM_GPA + arch::guest_entry3_offset(), PARAMS_GPA);
    for _ in 0..MAX_EXITS {
        match exit {
            Exit::Done(code) => {
                done = code == 0;
                break;
            }
            Exit::Fault { gpa, access, code } => {
                let page = gpa & !(FRAME_SIZE - 1);
                let forbidden = pages
                    .iter()
                    .find(|(g, _)| *g == page)
                    .is_some_and(|(_, f)| !f.contains(access.needs()));
                if forbidden {
                    violations += 1;
                } else {
                    unexpected += 1;
                    println!("extras: unexpected exit at GPA {gpa:#x} {access:?} (code {code:#x})");
                }
                if access == Access::Execute {
                    vcpu.return_to_r14();
                } else {
                    vcpu.skip();
                }
            }
            Exit::Other(syndrome, pc, extra) => {
                println!("extras: exit {syndrome:#x} at {pc:#x} ({extra:#x})");
                break;
            }
        }
        exit = vcpu.resume();
    }
    println!("extras: {violations} violation exits, {expected} expected");
    checks.check(
        "flag_sets_touched",
        done && unexpected == 0 && violations == expected,
    );

    if ad {
        let len = AD_PAGES * FRAME_SIZE;
        let (mut accessed, mut dirty) = ([0u64; 1], [0u64; 1]);
        let a = table.harvest(
            GuestPhysAddr::from_usize(AD_BASE),
            len,
            AccessBit::Accessed,
            &mut accessed,
        );
        let d = table.harvest(
            GuestPhysAddr::from_usize(AD_BASE),
            len,
            AccessBit::Dirty,
            &mut dirty,
        );
        let bits = |pages: &[usize]| pages.iter().fold(0u64, |m, &i| m | 1 << i);
        let want_a = bits(&AD_READS) | bits(&AD_WRITES);
        let want_d = bits(&AD_WRITES);
        println!(
            "extras: accessed {:#06x} (want {want_a:#06x}), dirty {:#06x} (want {want_d:#06x})",
            accessed[0], dirty[0]
        );
        checks.check(
            "ad_bits_harvested",
            a.is_ok() && d.is_ok() && accessed[0] == want_a && dirty[0] == want_d,
        );
    } else {
        println!("extras: the MMU does not set A/D here; ad_bits_harvested not run");
    }
}
