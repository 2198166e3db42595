// The guest: runs in VS-mode with vsatp = 0 (bare), so its addresses are
// GPAs. a0 is the address of the parameter block in ROM (see
// common/scenario.rs). 4-byte instructions only, so an exit skips 4 bytes.
    .section .rodata.guest, "a"
    .option push
    .option norvc
    .balign 16
    .global guest_image_start
    .global guest_image_end
    .global guest_entry2
guest_image_start:
    mv      s0, a0
    li      s11, 0
    ld      t0, 0(s0)                 // read the ROM: magic
    li      t1, 0x4e5054524f4d2121
    beq     t0, t1, 1f
    ori     s11, s11, 1
1:  ld      s1, 120(s0)               // key
    ld      s2, 8(s0)                 // count
    addi    s3, s0, 16                // addresses
    li      s4, 0
2:  bgeu    s4, s2, 3f                // write the pattern
    slli    t0, s4, 3
    add     t0, s3, t0
    ld      t1, 0(t0)
    xor     t2, t1, s1
    sd      t2, 0(t1)
    addi    s4, s4, 1
    j       2b
3:  li      s4, 0
4:  bgeu    s4, s2, 5f                // read it back
    slli    t0, s4, 3
    add     t0, s3, t0
    ld      t1, 0(t0)
    ld      t2, 0(t1)
    xor     t3, t1, s1
    beq     t2, t3, 6f
    ori     s11, s11, 2
6:  addi    s4, s4, 1
    j       4b
5:  ld      t0, 64(s0)                // UART (pass-through)
    ld      t1, 104(s0)               // message in ROM
7:  lbu     t2, 0(t1)
    beqz    t2, 8f
    sb      t2, 0(t0)
    addi    t1, t1, 1
    j       7b
8:  ld      t0, 72(s0)                // emulated device: exits
    ld      t1, 112(s0)
    sd      t1, 0(t0)
    ld      t0, 80(s0)                // write the ROM: exits, refused
    sd      s1, 0(t0)
    ld      t0, 88(s0)                // lazy RAM: exits once, filled
    xor     t1, t0, s1
    sd      t1, 0(t0)
    ld      t2, 0(t0)
    beq     t1, t2, 9f
    ori     s11, s11, 4
9:  mv      a0, s11
    ecall
    j       .
guest_entry2:
    mv      s0, a0
    ld      t0, 96(s0)                // the page unmapped by the host
    ld      t1, 0(t0)                 // must exit
    li      a0, 0xe2
    ecall
    j       .
    .balign 16
guest_image_end:
    .option pop
