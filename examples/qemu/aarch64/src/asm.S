// Boot, EL2 exception vectors, guest entry/exit for the AArch64 example.

    .section .text.boot, "ax"
    .global _start
_start:
    ldr     x0, =__stack_top
    mov     sp, x0
    // CPTR_EL2: RES1 bits, TFP = 0 (FP/SIMD not trapped at EL2).
    mov     x0, #0x33ff
    msr     cptr_el2, x0
    ldr     x0, =el2_vectors
    msr     vbar_el2, x0
    isb
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
1:  cmp     x0, x1
    b.hs    2f
    str     xzr, [x0], #8
    b       1b
2:  bl      hyp_main
3:  wfe
    b       3b

// GuestCtx: x0..x30 at 0..248, elr at 248, spsr at 256, host sp at 264.
    .text
    .global enter_guest
enter_guest:
    stp     x19, x20, [sp, #-96]!
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    mov     x1, sp
    str     x1, [x0, #264]
    msr     tpidr_el2, x0
    ldr     x1, [x0, #248]
    msr     elr_el2, x1
    ldr     x1, [x0, #256]
    msr     spsr_el2, x1
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret

// A lower-EL exception: save the guest's registers into the context and
// return from enter_guest (SP_EL2 is still the host stack).
guest_exit:
    str     x0, [sp, #-16]!
    mrs     x0, tpidr_el2
    stp     x1, x2, [x0, #8]
    stp     x3, x4, [x0, #24]
    stp     x5, x6, [x0, #40]
    stp     x7, x8, [x0, #56]
    stp     x9, x10, [x0, #72]
    stp     x11, x12, [x0, #88]
    stp     x13, x14, [x0, #104]
    stp     x15, x16, [x0, #120]
    stp     x17, x18, [x0, #136]
    stp     x19, x20, [x0, #152]
    stp     x21, x22, [x0, #168]
    stp     x23, x24, [x0, #184]
    stp     x25, x26, [x0, #200]
    stp     x27, x28, [x0, #216]
    stp     x29, x30, [x0, #232]
    ldr     x1, [sp], #16
    str     x1, [x0, #0]
    mrs     x1, elr_el2
    str     x1, [x0, #248]
    mrs     x1, spsr_el2
    str     x1, [x0, #256]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     x19, x20, [sp], #96
    ret

    .macro vector target
    .balign 128
    b       \target
    .endm

    .section .text.vectors, "ax"
    .balign 2048
el2_vectors:
    vector el2_fatal_sync   // current EL, SP0
    vector el2_fatal_other
    vector el2_fatal_other
    vector el2_fatal_other
    vector el2_fatal_sync   // current EL, SPx
    vector el2_fatal_other
    vector el2_fatal_other
    vector el2_fatal_other
    vector guest_exit       // lower EL, AArch64: synchronous
    vector guest_exit       // IRQ
    vector guest_exit       // FIQ
    vector guest_exit       // SError
    vector el2_fatal_other  // lower EL, AArch32
    vector el2_fatal_other
    vector el2_fatal_other
    vector el2_fatal_other

el2_fatal_sync:
    mov     x0, #0
    b       el2_fatal
el2_fatal_other:
    mov     x0, #1
    b       el2_fatal
