// Boot (M-mode to HS-mode), HS trap entry, guest entry/exit for the RISC-V
// example. CSRs of the H extension are named by number.

    .section .text.boot, "ax"
    .global _start
_start:
    la      sp, __stack_top
    // PMP: one NAPOT entry covering everything, R/W/X.
    li      t0, -1
    csrw    pmpaddr0, t0
    li      t0, 0x1f
    csrw    pmpcfg0, t0
    // Delegate to HS: misaligned/access faults, illegal instruction,
    // breakpoint, ECALL from U/VU and VS (10), page faults, guest-page
    // faults (20, 21, 23) and virtual instruction (22). No interrupts.
    li      t0, 0xf0b5ff
    csrw    medeleg, t0
    csrw    mideleg, zero
    csrw    mie, zero
    // mstatus: MPP = S (HS, MPV = 0), FS = Initial.
    li      t0, 0x2800
    csrw    mstatus, t0
    la      t0, m_trap
    csrw    mtvec, t0
    la      t0, hs_start
    csrw    mepc, t0
    mret

hs_start:
    la      t0, hs_trap
    csrw    stvec, t0
    csrw    sscratch, zero
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
2:  call    hyp_main
3:  wfi
    j       3b

    .balign 4
m_trap:
    csrr    a0, mcause
    csrr    a1, mepc
    csrr    a2, mtval
    call    m_fatal

// GuestCtx: x0..x31 at 8 * i (x0 unused), sepc at 256, host sp at 264.
// sscratch holds the context while the guest runs, 0 otherwise.
    .text
    .global enter_guest
enter_guest:
    addi    sp, sp, -112
    sd      ra, 0(sp)
    sd      s0, 8(sp)
    sd      s1, 16(sp)
    sd      s2, 24(sp)
    sd      s3, 32(sp)
    sd      s4, 40(sp)
    sd      s5, 48(sp)
    sd      s6, 56(sp)
    sd      s7, 64(sp)
    sd      s8, 72(sp)
    sd      s9, 80(sp)
    sd      s10, 88(sp)
    sd      s11, 96(sp)
    sd      sp, 264(a0)
    ld      t0, 256(a0)
    csrw    sepc, t0
    csrw    sscratch, a0
    ld      x1, 8(a0)
    ld      x2, 16(a0)
    ld      x3, 24(a0)
    ld      x4, 32(a0)
    ld      x5, 40(a0)
    ld      x6, 48(a0)
    ld      x7, 56(a0)
    ld      x8, 64(a0)
    ld      x9, 72(a0)
    ld      x11, 88(a0)
    ld      x12, 96(a0)
    ld      x13, 104(a0)
    ld      x14, 112(a0)
    ld      x15, 120(a0)
    ld      x16, 128(a0)
    ld      x17, 136(a0)
    ld      x18, 144(a0)
    ld      x19, 152(a0)
    ld      x20, 160(a0)
    ld      x21, 168(a0)
    ld      x22, 176(a0)
    ld      x23, 184(a0)
    ld      x24, 192(a0)
    ld      x25, 200(a0)
    ld      x26, 208(a0)
    ld      x27, 216(a0)
    ld      x28, 224(a0)
    ld      x29, 232(a0)
    ld      x30, 240(a0)
    ld      x31, 248(a0)
    ld      x10, 80(a0)
    sret

    .balign 4
hs_trap:
    csrrw   t6, sscratch, t6
    beqz    t6, hs_trap_from_hs
    sd      x1, 8(t6)
    sd      x2, 16(t6)
    sd      x3, 24(t6)
    sd      x4, 32(t6)
    sd      x5, 40(t6)
    sd      x6, 48(t6)
    sd      x7, 56(t6)
    sd      x8, 64(t6)
    sd      x9, 72(t6)
    sd      x10, 80(t6)
    sd      x11, 88(t6)
    sd      x12, 96(t6)
    sd      x13, 104(t6)
    sd      x14, 112(t6)
    sd      x15, 120(t6)
    sd      x16, 128(t6)
    sd      x17, 136(t6)
    sd      x18, 144(t6)
    sd      x19, 152(t6)
    sd      x20, 160(t6)
    sd      x21, 168(t6)
    sd      x22, 176(t6)
    sd      x23, 184(t6)
    sd      x24, 192(t6)
    sd      x25, 200(t6)
    sd      x26, 208(t6)
    sd      x27, 216(t6)
    sd      x28, 224(t6)
    sd      x29, 232(t6)
    sd      x30, 240(t6)
    csrr    t5, sscratch
    sd      t5, 248(t6)
    csrw    sscratch, zero
    csrr    t5, sepc
    sd      t5, 256(t6)
    ld      sp, 264(t6)
    ld      ra, 0(sp)
    ld      s0, 8(sp)
    ld      s1, 16(sp)
    ld      s2, 24(sp)
    ld      s3, 32(sp)
    ld      s4, 40(sp)
    ld      s5, 48(sp)
    ld      s6, 56(sp)
    ld      s7, 64(sp)
    ld      s8, 72(sp)
    ld      s9, 80(sp)
    ld      s10, 88(sp)
    ld      s11, 96(sp)
    addi    sp, sp, 112
    ret
hs_trap_from_hs:
    csrr    a0, scause
    csrr    a1, sepc
    csrr    a2, stval
    call    hs_fatal
