//! The one instruction form the guest uses for accesses that may exit: a
//! MOV between a general register and memory addressed by a register, with
//! an optional REX prefix and an 8- or 32-bit displacement (Intel SDM
//! Vol. 2A, 2.1 "Instruction Format", 2.2.1 "REX Prefixes"; MOV opcodes
//! 88/89 "MOV r/m, r" and 8A/8B "MOV r, r/m", Vol. 2B). Anything else is
//! `None`: this is an example's decoder, not an emulator.

/// A decoded register/memory MOV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mov {
    /// Instruction length in bytes.
    pub len: usize,
    /// The register operand (0 = RAX .. 15 = R15, ModRM.reg extended by
    /// REX.R).
    pub reg: usize,
    /// A store (88/89) rather than a load (8A/8B).
    pub store: bool,
    /// Operand size in bytes (1, 4 or 8).
    pub size: usize,
}

/// Decodes `bytes` (at least the instruction's length) as a MOV.
pub fn decode_mov(bytes: &[u8]) -> Option<Mov> {
    let mut i = 0;
    let mut rex = 0u8;
    if let Some(&b) = bytes.first()
        && b & 0xf0 == 0x40
    {
        rex = b;
        i = 1;
    }
    let opcode = *bytes.get(i)?;
    let modrm = *bytes.get(i + 1)?;
    let (store, byte) = match opcode {
        0x88 => (true, true),
        0x89 => (true, false),
        0x8a => (false, true),
        0x8b => (false, false),
        _ => return None,
    };
    let md = modrm >> 6;
    let rm = modrm & 7;
    // Register operands, SIB bytes and RIP-relative forms are not used.
    if md == 3 || rm == 4 || (md == 0 && rm == 5) {
        return None;
    }
    let disp = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    let size = if byte {
        1
    } else if rex & 0x08 != 0 {
        8
    } else {
        4
    };
    Some(Mov {
        len: i + 2 + disp,
        reg: usize::from(((rex >> 2) & 1) << 3 | ((modrm >> 3) & 7)),
        store,
        size,
    })
}
