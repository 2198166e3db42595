//! GVA walks over hostile guest memory: random bytes, random roots and
//! addresses, self-referencing tables. The walk must never panic, never read
//! more than one entry per level, and every answer it gives must be
//! internally consistent.

use std::cell::Cell;

use gpa_types::{GuestPhysAddr, GuestVirtAddr, PageSize};
use guest_aspace::gva::{
    GuestPaging, GuestPerms, GuestPhysRead, GvaFault, GvaTranslation, MAX_LEVELS, walk,
};
use proptest::prelude::*;

/// SplitMix64: a seeded, stateless mixing function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Guest memory whose every word is random: `(mix(seed ^ gpa) & and) | or`.
/// One address in `hole_one_in` is not RAM (0: none).
struct RandomMem {
    seed: u64,
    and: u64,
    or: u64,
    hole_one_in: u64,
}

impl GuestPhysRead for RandomMem {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64> {
        let h = mix(self.seed ^ gpa.as_usize() as u64);
        if self.hole_one_in != 0 && mix(h) % self.hole_one_in == 0 {
            return None;
        }
        Some((h & self.and) | self.or)
    }
}

/// Memory in which every word holds the same entry.
struct SameEverywhere(u64);

impl GuestPhysRead for SameEverywhere {
    fn read_u64(&self, _: GuestPhysAddr) -> Option<u64> {
        Some(self.0)
    }
}

/// Counts the reads made through it, and records every address read.
struct Counting<M> {
    inner: M,
    reads: Cell<usize>,
    misaligned_reads: Cell<usize>,
}

impl<M> Counting<M> {
    fn new(inner: M) -> Self {
        Self {
            inner,
            reads: Cell::new(0),
            misaligned_reads: Cell::new(0),
        }
    }
}

impl<M: GuestPhysRead> GuestPhysRead for Counting<M> {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Option<u64> {
        self.reads.set(self.reads.get() + 1);
        if gpa.as_usize() % 8 != 0 {
            self.misaligned_reads.set(self.misaligned_reads.get() + 1);
        }
        self.inner.read_u64(gpa)
    }
}

/// Valid level numbers of a leaf and of any entry, per regime.
fn leaf_level_ok(paging: &GuestPaging, t: &GvaTranslation) -> bool {
    let h = t.size.height();
    match paging {
        GuestPaging::X86 { .. } => (1..=3).contains(&t.level) && h == t.level - 1,
        GuestPaging::Arm { .. } => (1..=3).contains(&t.level) && h == 3 - t.level,
        GuestPaging::Riscv { .. } => t.level <= 3 && h == t.level,
    }
}

fn fault_level_ok(paging: &GuestPaging, level: usize) -> bool {
    match paging {
        GuestPaging::X86 { la57, .. } => (1..=if *la57 { 5 } else { 4 }).contains(&level),
        GuestPaging::Arm { .. } => level <= 3,
        GuestPaging::Riscv { .. } => level < MAX_LEVELS,
    }
}

/// Walks `gva` and checks everything that must hold whatever the memory.
fn check<M: GuestPhysRead>(mem: M, paging: &GuestPaging, gva: u64) -> Result<(), TestCaseError> {
    let mem = Counting::new(mem);
    let gva = GuestVirtAddr::from(gva as usize);
    let first = walk(&mem, paging, gva);
    let reads = mem.reads.get();
    prop_assert!(
        reads <= paging.max_levels(),
        "{reads} reads, bound {}",
        paging.max_levels()
    );
    prop_assert!(reads <= MAX_LEVELS);
    prop_assert_eq!(mem.misaligned_reads.get(), 0);
    // Deterministic: the same memory gives the same answer.
    prop_assert_eq!(walk(&mem, paging, gva), first);
    match first {
        Ok(t) => {
            prop_assert!(leaf_level_ok(paging, &t) || reads == 0, "{t:?}");
            prop_assert_eq!(
                t.size.offset(t.gpa.as_usize()),
                t.size.offset(gva.as_usize())
            );
            prop_assert_eq!(t.page_gpa().as_usize() % t.size.bytes(), 0);
            if !matches!(paging, GuestPaging::Riscv { .. }) {
                prop_assert!(t.perms.contains(GuestPerms::READ));
            }
            if matches!(paging, GuestPaging::X86 { .. })
                && t.perms.contains(GuestPerms::USER_EXECUTE)
            {
                prop_assert!(
                    t.perms.contains(GuestPerms::USER | GuestPerms::EXECUTE),
                    "{t:?}"
                );
            }
            if matches!(paging, GuestPaging::Arm { .. }) {
                let el0_writable = t.perms.contains(GuestPerms::USER | GuestPerms::WRITE);
                prop_assert!(!(el0_writable && t.perms.contains(GuestPerms::EXECUTE)));
            }
            // (Bare mode, with no reads, grants everything.)
            if matches!(paging, GuestPaging::Riscv { .. })
                && reads > 0
                && t.perms.contains(GuestPerms::USER)
            {
                prop_assert!(!t.perms.contains(GuestPerms::EXECUTE));
            }
            let riscv = matches!(paging, GuestPaging::Riscv { .. });
            prop_assert!(riscv || t.size != PageSize::Size512G, "{t:?}");
        }
        Err(e) => {
            if let Some(level) = e.level() {
                prop_assert!(fault_level_ok(paging, level), "{e:?}");
            }
            if matches!(
                e,
                GvaFault::BadConfig { .. } | GvaFault::NonCanonical { .. }
            ) {
                prop_assert_eq!(reads, 0);
            }
            // Every fault renders.
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

fn any_paging() -> impl Strategy<Value = GuestPaging> {
    let phys = prop_oneof![Just(52u8), 32u8..=52, any::<u8>()];
    let txsz = || prop_oneof![16u8..=39, any::<u8>()];
    prop_oneof![
        (any::<u64>(), any::<bool>(), any::<bool>(), phys).prop_map(
            |(cr3, la57, nxe, maxphyaddr)| {
                GuestPaging::X86 {
                    cr3,
                    la57,
                    nxe,
                    maxphyaddr,
                }
            }
        ),
        (any::<u64>(), any::<u64>(), txsz(), txsz()).prop_map(|(ttbr0, ttbr1, t0sz, t1sz)| {
            GuestPaging::Arm {
                ttbr0,
                ttbr1,
                t0sz,
                t1sz,
            }
        }),
        (
            prop_oneof![Just(0u64), 8u64..=10, 0u64..16],
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(mode, rest, pbmte)| GuestPaging::Riscv {
                satp: (mode << 60) | (rest & ((1 << 60) - 1)),
                pbmte,
            }),
    ]
}

/// Addresses biased towards the ranges the regimes translate.
fn any_gva() -> impl Strategy<Value = u64> {
    (any::<u64>(), 0u32..6).prop_map(|(raw, shape)| {
        let sign_extend = |bits: u32| (((raw << (64 - bits)) as i64) >> (64 - bits)) as u64;
        match shape {
            0 => raw,
            1 => sign_extend(39),
            2 => sign_extend(48),
            3 => sign_extend(57),
            4 => sign_extend(25),
            _ => raw & 0x3fff_ffff,
        }
    })
}

/// `(and, or)` masks applied to random words so that walks go deep and
/// reach leaves of every size, in addition to raw random words.
const SHAPES: [(u64, u64); 6] = [
    // Raw random words.
    (u64::MAX, 0),
    // Valid (x86 P|R/W, Arm table/page, RISC-V V|R), addresses below 4 GiB.
    (0x0000_0000_ffff_f0ff, 0x3),
    // Valid with A/AF set.
    (0x0000_0000_3fff_fcff, 0x441),
    // Valid with AF, output addresses 1 GiB aligned: x86 and Arm blocks.
    (0x0000_0000_c000_00ff, 0x401),
    // RISC-V: V set, U = G = 0, so pointers and leaves both occur.
    (0x0000_0000_0fff_fccf, 0x1),
    // RISC-V: as above with superpage-aligned PPNs.
    (0x0000_0000_f000_00cf, 0x1),
];

fn any_entry_shape() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        prop::sample::select(&SHAPES[..]),
        (any::<u64>(), any::<u64>())
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Random memory, random regime, random address: no panic, the read
    /// bound holds, answers are consistent.
    #[test]
    fn random_memory_never_breaks_the_walk(
        paging in any_paging(),
        gva in any_gva(),
        seed in any::<u64>(),
        (and, or) in any_entry_shape(),
        hole_one_in in prop_oneof![Just(0u64), 2u64..64],
    ) {
        check(RandomMem { seed, and, or, hole_one_in }, &paging, gva)?;
    }

    /// A table whose every entry points back at itself, with random extra
    /// attribute bits: the walk ends within the level bound.
    #[test]
    fn self_referencing_tables_terminate(
        root_frame in 0u64..0x10_0000,
        extra in any::<u64>(),
        la57 in any::<bool>(),
        txsz in 16u8..=39,
        sv in 8u64..=10,
        gva in any_gva(),
    ) {
        let root = root_frame << 12;
        // x86: P|R/W|U/S pointing to the root, attribute bits 11:3 random.
        let x86 = GuestPaging::X86 { cr3: root, la57, nxe: true, maxphyaddr: 52 };
        check(SameEverywhere(root | 0x7 | (extra & 0x0ff8)), &x86, gva)?;
        check(SameEverywhere(root | 0x7), &x86, gva)?;
        // Arm: a table descriptor to the root, in both ranges.
        let arm = GuestPaging::Arm { ttbr0: root, ttbr1: root, t0sz: txsz, t1sz: txsz };
        check(SameEverywhere(root | 0x3 | (extra & 0x0ffc)), &arm, gva)?;
        check(SameEverywhere(root | 0x403), &arm, gva)?;
        // RISC-V: a V-only pointer to the root, or with random low bits.
        let riscv = GuestPaging::Riscv { satp: (sv << 60) | root_frame, pbmte: false };
        check(SameEverywhere((root_frame << 10) | 0x1), &riscv, gva)?;
        check(SameEverywhere((root_frame << 10) | 0x1 | (extra & 0x3fe)), &riscv, gva)?;
    }
}

/// Self-referencing tables read exactly one entry per level and end at the
/// last level, for every regime depth.
#[test]
fn self_reference_reads_exactly_the_level_count() {
    let cases = [
        (
            GuestPaging::X86 {
                cr3: 0x1000,
                la57: false,
                nxe: true,
                maxphyaddr: 52,
            },
            0x1007,
            4,
        ),
        (
            GuestPaging::X86 {
                cr3: 0x1000,
                la57: true,
                nxe: true,
                maxphyaddr: 52,
            },
            0x1007,
            5,
        ),
        (
            GuestPaging::Arm {
                ttbr0: 0x1000,
                ttbr1: 0,
                t0sz: 16,
                t1sz: 16,
            },
            0x1403,
            4,
        ),
        (
            GuestPaging::Arm {
                ttbr0: 0x1000,
                ttbr1: 0,
                t0sz: 25,
                t1sz: 16,
            },
            0x1403,
            3,
        ),
        (
            GuestPaging::Arm {
                ttbr0: 0x1000,
                ttbr1: 0,
                t0sz: 34,
                t1sz: 16,
            },
            0x1403,
            2,
        ),
        (
            GuestPaging::Riscv {
                satp: 0x8000_0000_0000_0001,
                pbmte: false,
            },
            0x401,
            3,
        ),
        (
            GuestPaging::Riscv {
                satp: 0x9000_0000_0000_0001,
                pbmte: false,
            },
            0x401,
            4,
        ),
        (
            GuestPaging::Riscv {
                satp: 0xa000_0000_0000_0001,
                pbmte: false,
            },
            0x401,
            5,
        ),
    ];
    for (paging, entry, levels) in cases {
        let mem = Counting::new(SameEverywhere(entry));
        let result = walk(&mem, &paging, GuestVirtAddr::from(0x1234));
        assert_eq!(mem.reads.get(), levels, "{paging:?}: {result:?}");
        match paging {
            // x86 and Arm: the last read is a 4 KiB leaf onto the table.
            GuestPaging::X86 { .. } | GuestPaging::Arm { .. } => {
                assert_eq!(
                    result.map(|t| t.gpa),
                    Ok(GuestPhysAddr::from(0x1234)),
                    "{paging:?}"
                );
            }
            // RISC-V: a pointer at level 0 is a page fault.
            GuestPaging::Riscv { .. } => {
                assert_eq!(result, Err(GvaFault::Reserved { level: 0, entry }));
            }
        }
    }
}

/// All-ones memory: every reserved bit set, nothing valid to follow far.
#[test]
fn all_ones_memory_faults_cleanly() {
    let pagings = [
        GuestPaging::X86 {
            cr3: 0x1000,
            la57: true,
            nxe: false,
            maxphyaddr: 36,
        },
        GuestPaging::Arm {
            ttbr0: 0x1000,
            ttbr1: 0x2000,
            t0sz: 16,
            t1sz: 16,
        },
        GuestPaging::Riscv {
            satp: 0xa000_0000_0000_0001,
            pbmte: true,
        },
    ];
    for paging in pagings {
        for gva in [0u64, 0x1234, u64::MAX, 0xffff_8000_0000_0000] {
            let mem = Counting::new(SameEverywhere(u64::MAX));
            let r = walk(&mem, &paging, GuestVirtAddr::from(gva as usize));
            assert!(r.is_err(), "{paging:?} {gva:#x}: {r:?}");
            assert!(mem.reads.get() <= 1, "{paging:?} {gva:#x}");
        }
    }
}

/// Memory with no RAM at all: the root read fails and is reported.
#[test]
fn no_ram_reports_the_root_entry() {
    struct NoRam;
    impl GuestPhysRead for NoRam {
        fn read_u64(&self, _: GuestPhysAddr) -> Option<u64> {
            None
        }
    }
    let paging = GuestPaging::X86 {
        cr3: 0x5000,
        la57: false,
        nxe: true,
        maxphyaddr: 52,
    };
    let gpa = GuestPhysAddr::from(0x57f8);
    let r = walk(
        &NoRam as &dyn GuestPhysRead,
        &paging,
        GuestVirtAddr::from(0x7fff_ffff_f000),
    );
    assert_eq!(r, Err(GvaFault::TableNotInRam { level: 4, gpa }));
}

/// The random shapes above are not vacuous: over a fixed set of seeds, each
/// regime produces translations of every leaf size it has and every kind of
/// fault its format can raise.
#[test]
fn random_walks_reach_every_outcome() {
    use std::collections::BTreeSet;
    let mut seen = BTreeSet::new();
    for i in 0..60_000u64 {
        let r = |k: u64| mix(i.wrapping_mul(0x100).wrapping_add(k));
        let (and, or) = SHAPES[(r(5) % SHAPES.len() as u64) as usize];
        let hole_one_in = if i % 5 == 0 { 8 } else { 0 };
        let mem = RandomMem {
            seed: r(1),
            and,
            or,
            hole_one_in,
        };
        let root = r(2) & 0xffff_f000;
        let (arch, paging) = match i % 3 {
            0 => {
                let (la57, nxe) = (r(3) % 2 == 0, r(3) % 4 != 1);
                (
                    "x86",
                    GuestPaging::X86 {
                        cr3: root,
                        la57,
                        nxe,
                        maxphyaddr: 52,
                    },
                )
            }
            1 => {
                let t0sz = 16 + (r(3) % 24) as u8;
                (
                    "arm",
                    GuestPaging::Arm {
                        ttbr0: root,
                        ttbr1: root,
                        t0sz,
                        t1sz: 16,
                    },
                )
            }
            _ => {
                let satp = ((8 + r(3) % 3) << 60) | (root >> 12);
                (
                    "riscv",
                    GuestPaging::Riscv {
                        satp,
                        pbmte: r(3) % 2 == 0,
                    },
                )
            }
        };
        let gva = (r(4) & 0x3f_ffff_ffff) as usize;
        let outcome = match walk(&mem, &paging, GuestVirtAddr::from(gva)) {
            Ok(t) => format!("{:?}", t.size),
            Err(e) => format!("{e:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or("")
                .to_string(),
        };
        seen.insert(format!("{arch} {outcome}"));
    }
    let common = [
        "Size4K",
        "Size2M",
        "Size1G",
        "NotPresent",
        "Reserved",
        "TableNotInRam",
    ];
    let more: [(&str, &[&str]); 3] = [
        ("x86", &[]),
        ("arm", &["Misaligned", "AccessFlag", "NonCanonical"]),
        ("riscv", &["Misaligned", "AccessFlag"]),
    ];
    for (arch, extra) in more {
        for outcome in common.iter().chain(extra) {
            let key = format!("{arch} {outcome}");
            assert!(seen.contains(&key), "never saw {key}: {seen:#?}");
        }
    }
}
