//! Host-side reads and writes of guest memory.

mod common;

use common::*;
use guest_aspace::{AspaceError, GuestAddrSpace};
use npt_entry::ept::Ept4;
use npt_table::HostFrameAllocator;

type Space<'a> = GuestAddrSpace<Ept4, &'a HostFrameAllocator>;

const EAGER: usize = 0x4000_0000; // 4 MiB eager RAM, 2 MiB frames
const LAZY: usize = EAGER + 4 * M2 / 2; // 16 pages of lazy RAM, adjacent
const MMIO: usize = LAZY + 16 * K4; // one page of MMIO, adjacent
const HOLE: usize = MMIO + K4; // one page with no region
const ROM: usize = HOLE + K4; // 4 pages of ROM

fn setup(alloc: &HostFrameAllocator) -> Space<'_> {
    let mut s = GuestAddrSpace::new(alloc, window(0, 1 << 36)).unwrap();
    s.add_ram(gpa(EAGER), 2 * M2, RW, false).unwrap().ignore();
    s.add_ram(gpa(LAZY), 16 * K4, RW, true).unwrap().ignore();
    s.add_mmio(gpa(MMIO), K4, None).unwrap().ignore();
    s.add_rom(gpa(ROM), 4 * K4, true).unwrap().ignore();
    s
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes and reads bytes and LE integers straddling `edge`.
fn straddle(s: &mut Space<'_>, edge: usize) {
    let data = pattern(64, 7);
    s.write(gpa(edge - 32), &data).unwrap();
    let mut back = [0u8; 64];
    s.read(gpa(edge - 32), &mut back).unwrap();
    assert_eq!(&back[..], &data[..]);
    // The guest sees the same bytes on both sides of the edge.
    assert_eq!(guest_visible(s, edge - 32, 64), data);
    s.write_u16(gpa(edge - 1), 0xa1b2).unwrap();
    assert_eq!(s.read_u16(gpa(edge - 1)).unwrap(), 0xa1b2);
    assert_eq!(s.read_u8(gpa(edge - 1)).unwrap(), 0xb2);
    assert_eq!(s.read_u8(gpa(edge)).unwrap(), 0xa1);
    s.write_u32(gpa(edge - 3), 0xdead_beef).unwrap();
    assert_eq!(s.read_u32(gpa(edge - 3)).unwrap(), 0xdead_beef);
    assert_eq!(guest_visible(s, edge - 3, 4), vec![0xef, 0xbe, 0xad, 0xde]);
    for k in 1..8 {
        let v = 0x0102_0304_0506_0708u64.rotate_left(k as u32 * 8);
        s.write_u64(gpa(edge - k), v).unwrap();
        assert_eq!(s.read_u64(gpa(edge - k)).unwrap(), v);
        assert_eq!(guest_visible(s, edge - k, 8), v.to_le_bytes().to_vec());
    }
}

#[test]
fn straddles_a_4k_boundary() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    straddle(&mut s, LAZY + 5 * K4);
    // Two separate frames of lazy RAM were populated by the write.
    assert_eq!(s.find_region(gpa(LAZY)).unwrap().populated, 2 * K4);
    straddle(&mut s, EAGER + 3 * K4);
}

#[test]
fn straddles_a_2m_boundary() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    assert_eq!(s.table_stats().leaves_of(gpa_types::PageSize::Size2M), 2);
    straddle(&mut s, EAGER + M2);
}

#[test]
fn straddles_two_adjacent_ram_regions() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    straddle(&mut s, LAZY);
    assert_eq!(s.find_region(gpa(LAZY)).unwrap().populated, K4);
    // A long write across the eager/lazy edge into several lazy pages.
    let data = pattern(3 * K4 + 100, 3);
    s.write(gpa(LAZY - 50), &data).unwrap();
    let mut back = vec![0; data.len()];
    s.read(gpa(LAZY - 50), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(s.find_region(gpa(LAZY)).unwrap().populated, 4 * K4);
}

#[test]
fn write_into_mmio_or_hole_fails_and_writes_nothing() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    let old = pattern(2 * K4, 1);
    s.write(gpa(MMIO - 2 * K4), &old).unwrap(); // last two lazy pages
    let before = snapshot(&s);
    let live = alloc.live_frames();
    let new = pattern(2 * K4 + 8, 99);
    assert_eq!(
        s.write(gpa(MMIO - 2 * K4), &new),
        Err(AspaceError::NotRam { gpa: gpa(MMIO) })
    );
    assert_eq!(
        s.write_u64(gpa(MMIO - 4), 5),
        Err(AspaceError::NotRam { gpa: gpa(MMIO) })
    );
    assert_eq!(
        s.write_u32(gpa(MMIO + 8), 5),
        Err(AspaceError::NotRam { gpa: gpa(MMIO + 8) })
    );
    let mut back = vec![0; old.len()];
    s.read(gpa(MMIO - 2 * K4), &mut back).unwrap();
    assert_eq!(back, old, "nothing before the MMIO page was written");
    // A write starting in unpopulated lazy pages does not populate them.
    let unpopulated = MMIO - 6 * K4;
    assert_eq!(
        s.write(gpa(unpopulated), &vec![0xee; 7 * K4]),
        Err(AspaceError::NotRam { gpa: gpa(MMIO) })
    );
    assert_eq!(snapshot(&s), before);
    assert_eq!(alloc.live_frames(), live);
    // Reads fail the same way.
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(gpa(MMIO - 8), &mut buf),
        Err(AspaceError::NotRam { gpa: gpa(MMIO) })
    );
    assert_eq!(
        s.read_u8(gpa(HOLE)),
        Err(AspaceError::NotRam { gpa: gpa(HOLE) })
    );
    assert_eq!(
        s.read(gpa(EAGER - 8), &mut buf),
        Err(AspaceError::NotRam {
            gpa: gpa(EAGER - 8)
        })
    );
    // Into the hole from the eager side: the bytes before are untouched.
    {
        let f = s.remove_range(gpa(EAGER + M2), M2).unwrap();
        s.complete(f);
    };
    let old = pattern(32, 5);
    s.write(gpa(EAGER + M2 - 32), &old).unwrap();
    assert_eq!(
        s.write(gpa(EAGER + M2 - 32), &[0; 64]),
        Err(AspaceError::NotRam {
            gpa: gpa(EAGER + M2)
        })
    );
    let mut back = [0u8; 32];
    s.read(gpa(EAGER + M2 - 32), &mut back).unwrap();
    assert_eq!(&back[..], &old[..]);
}

#[test]
fn rom_rejects_writes_and_takes_images() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    assert_eq!(
        s.write_u32(gpa(ROM + 4), 1),
        Err(AspaceError::NotRam { gpa: gpa(ROM + 4) })
    );
    assert_eq!(s.read_u32(gpa(ROM + 4)).unwrap(), 0);
    let image = pattern(3 * K4 + 17, 42);
    s.load_image(gpa(ROM + 0x100), &image).unwrap();
    let mut back = vec![0; image.len()];
    s.read(gpa(ROM + 0x100), &mut back).unwrap();
    assert_eq!(back, image);
    assert_eq!(guest_visible(&s, ROM + 0x100, image.len()), image);
    // Images into RAM work too; into MMIO they do not.
    s.load_image(gpa(LAZY - 4), &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    assert_eq!(
        s.read_u64(gpa(LAZY - 4)).unwrap(),
        u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8])
    );
    assert_eq!(
        s.load_image(gpa(MMIO), &[1]),
        Err(AspaceError::NotRam { gpa: gpa(MMIO) })
    );
    // A write that starts in RAM and reaches the ROM fails at the ROM and
    // leaves the RAM untouched.
    s.add_ram(gpa(ROM - K4), K4, RW, false).unwrap().ignore(); // fills the hole
    assert_eq!(
        s.write(gpa(ROM - 8), &[0xff; 16]),
        Err(AspaceError::NotRam { gpa: gpa(ROM) })
    );
    assert_eq!(s.read_u64(gpa(ROM - 8)).unwrap(), 0);
}

#[test]
fn reading_unpopulated_lazy_ram_is_zero_and_allocates_nothing() {
    let alloc = HostFrameAllocator::new();
    let s = setup(&alloc);
    s.write_u8(gpa(LAZY + 3 * K4 + 9), 0x5a).unwrap();
    let before = snapshot(&s);
    let live = alloc.live_frames();
    let mut buf = vec![0xffu8; 16 * K4];
    s.read(gpa(LAZY), &mut buf).unwrap();
    for (i, b) in buf.iter().enumerate() {
        assert_eq!(*b, if i == 3 * K4 + 9 { 0x5a } else { 0 }, "byte {i:#x}");
    }
    assert_eq!(s.read_u64(gpa(LAZY + 7 * K4 - 4)).unwrap(), 0);
    assert_eq!(snapshot(&s), before);
    assert_eq!(alloc.live_frames(), live);
    assert_eq!(s.translate(gpa(LAZY)), None);
}

#[test]
fn edge_cases() {
    let alloc = HostFrameAllocator::new();
    let mut s = setup(&alloc);
    // Empty accesses succeed anywhere covered, and do nothing.
    s.write(gpa(EAGER), &[]).unwrap();
    s.read(gpa(EAGER), &mut []).unwrap();
    // Wrapping ranges are refused, not wrapped.
    let mut buf = [0u8; 16];
    assert!(matches!(
        s.read(gpa(usize::MAX - 3), &mut buf),
        Err(AspaceError::NotRam { .. })
    ));
    assert!(matches!(
        s.write(gpa(usize::MAX - 3), &buf),
        Err(AspaceError::NotRam { .. })
    ));
    // Eager RAM starts zeroed.
    let mut page = vec![0xffu8; 2 * M2];
    s.read(gpa(EAGER), &mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0));
    // Pass-through memory is never host-accessed.
    s.add_identical(gpa(0x6000_0000), K4, RW).unwrap().ignore();
    s.add_linear(gpa(0x6000_1000), hpa(0x7000_0000), K4, RW)
        .unwrap()
        .ignore();
    s.add_mmio(gpa(0x6000_2000), K4, Some(hpa(0xfe00_0000)))
        .unwrap()
        .ignore();
    for g in [0x6000_0000, 0x6000_1000, 0x6000_2000] {
        assert_eq!(s.read_u8(gpa(g)), Err(AspaceError::NotRam { gpa: gpa(g) }));
        assert_eq!(
            s.write_u8(gpa(g), 1),
            Err(AspaceError::NotRam { gpa: gpa(g) })
        );
        assert_eq!(
            s.load_image(gpa(g), &[1]),
            Err(AspaceError::NotRam { gpa: gpa(g) })
        );
    }
}

/// A guest descriptor type, as a hypervisor would declare it: `#[repr(C)]`,
/// no padding (8 + 4 + 2 + 2 bytes), every bit pattern valid.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

// SAFETY: `#[repr(C)]` with `Pod` fields and no padding (16 bytes, align 8);
// every bit pattern of each field is valid.
unsafe impl guest_aspace::Pod for Desc {}

#[test]
fn objects_round_trip_at_any_alignment_and_across_pages() {
    let alloc = HostFrameAllocator::new();
    let s = setup(&alloc);
    // Unaligned u64 straddling the eager RAM's two 2 MiB frames.
    let edge = EAGER + M2;
    s.write_obj(gpa(edge - 3), &0x0102_0304_0506_0708u64)
        .unwrap();
    assert_eq!(s.read_obj::<u64>(gpa(edge - 3)), Ok(0x0102_0304_0506_0708));
    let mut raw = [0u8; 8];
    s.read(gpa(edge - 3), &mut raw).unwrap();
    assert_eq!(raw, 0x0102_0304_0506_0708u64.to_ne_bytes());
    // An odd-sized array straddling two lazy pages (populated on write).
    let arr: [u16; 5] = [1, 2, 3, 0xfffe, 0x8000];
    s.write_obj(gpa(LAZY + K4 - 5), &arr).unwrap();
    assert_eq!(s.read_obj::<[u16; 5]>(gpa(LAZY + K4 - 5)), Ok(arr));
    // A descriptor across the eager/lazy region boundary.
    let d = Desc {
        addr: 0xdead_beef_0000_1000,
        len: 0x600,
        flags: 3,
        next: 7,
    };
    s.write_obj(gpa(LAZY - 8), &d).unwrap();
    assert_eq!(s.read_obj::<Desc>(gpa(LAZY - 8)), Ok(d));
    // Signed, float and nested arrays.
    s.write_obj(gpa(EAGER + 0x101), &-5i32).unwrap();
    assert_eq!(s.read_obj::<i32>(gpa(EAGER + 0x101)), Ok(-5));
    s.write_obj(gpa(EAGER + 0x201), &[[1.5f64, -0.25]; 2])
        .unwrap();
    assert_eq!(
        s.read_obj::<[[f64; 2]; 2]>(gpa(EAGER + 0x201)),
        Ok([[1.5, -0.25]; 2])
    );
}

#[test]
fn objects_obey_the_byte_apis_rules() {
    let alloc = HostFrameAllocator::new();
    let s = setup(&alloc);
    // Unpopulated lazy RAM reads as zeros and allocates nothing.
    let frames = alloc.live_frames();
    assert_eq!(s.read_obj::<[u64; 2]>(gpa(LAZY + 3 * K4)), Ok([0, 0]));
    assert_eq!(alloc.live_frames(), frames);
    // MMIO, the hole and ROM writes fail before anything is written.
    assert_eq!(
        s.read_obj::<u32>(gpa(MMIO)),
        Err(AspaceError::NotRam { gpa: gpa(MMIO) })
    );
    assert_eq!(
        s.write_obj(gpa(MMIO - 2), &0xffff_ffffu32),
        Err(AspaceError::NotRam { gpa: gpa(MMIO) })
    );
    assert_eq!(s.read_obj::<u16>(gpa(MMIO - 2)), Ok(0));
    assert_eq!(
        s.write_obj(gpa(ROM), &1u8),
        Err(AspaceError::NotRam { gpa: gpa(ROM) })
    );
    // A value past the end of the address space.
    assert!(s.read_obj::<u64>(gpa(usize::MAX - 3)).is_err());
    // Zero-sized values touch nothing.
    assert_eq!(s.read_obj::<[u8; 0]>(gpa(HOLE)), Ok([]));
}

#[test]
fn shared_space_reads_and_writes_objects() {
    let alloc = HostFrameAllocator::new();
    let shared = guest_aspace::SharedAddrSpace::new(setup(&alloc));
    std::thread::scope(|scope| {
        for t in 0..2usize {
            let shared = &shared;
            scope.spawn(move || {
                for i in 0..8usize {
                    let g = gpa(LAZY + (t * 8 + i) * K4 + 6);
                    shared.write_obj(g, &[t as u32, i as u32]).unwrap();
                    assert_eq!(shared.read_obj::<[u32; 2]>(g), Ok([t as u32, i as u32]));
                }
            });
        }
    });
    assert_eq!(
        shared.read_obj::<[u32; 2]>(gpa(LAZY + 9 * K4 + 6)),
        Ok([1, 1])
    );
}

/// An empty host write names any address and is accepted (it writes
/// nothing); marking its pages dirty stepped past the end of the address
/// space (`attempt to add with overflow`, found by `aspace_ops`:
/// `fuzz/regressions/aspace_ops/empty-write-at-top`).
#[test]
fn an_empty_write_at_the_top_marks_nothing() {
    let alloc = HostFrameAllocator::new();
    let s = setup(&alloc);
    for at in [usize::MAX, usize::MAX - 1, usize::MAX - 4096] {
        assert_eq!(s.write(at.into(), &[]), Ok(()));
        assert_eq!(s.load_image(at.into(), &[]), Ok(()));
    }
}
