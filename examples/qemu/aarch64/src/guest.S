// The guest: runs at EL1 with its MMU off, so its addresses are IPAs. x0 is
// the address of the parameter block in ROM (see common/scenario.rs).
    .section .rodata.guest, "a"
    .balign 16
    .global guest_image_start
    .global guest_image_end
    .global guest_entry2
guest_image_start:
    mov     x19, x0
    mov     x28, #0
    ldr     x1, [x19]                 // read the ROM: magic
    movz    x2, #0x2121
    movk    x2, #0x4f4d, lsl #16
    movk    x2, #0x5452, lsl #32
    movk    x2, #0x4e50, lsl #48
    cmp     x1, x2
    b.eq    1f
    orr     x28, x28, #1
1:  ldr     x20, [x19, #120]          // key
    ldr     x21, [x19, #8]            // count
    add     x22, x19, #16             // addresses
    mov     x23, #0
2:  cmp     x23, x21                  // write the pattern
    b.hs    3f
    ldr     x1, [x22, x23, lsl #3]
    eor     x2, x1, x20
    str     x2, [x1]
    add     x23, x23, #1
    b       2b
3:  mov     x23, #0
4:  cmp     x23, x21                  // read it back
    b.hs    5f
    ldr     x1, [x22, x23, lsl #3]
    ldr     x2, [x1]
    eor     x3, x1, x20
    cmp     x2, x3
    b.eq    6f
    orr     x28, x28, #2
6:  add     x23, x23, #1
    b       4b
5:  ldr     x1, [x19, #64]            // UART (pass-through)
    ldr     x2, [x19, #104]           // message in ROM
7:  ldrb    w3, [x2], #1
    cbz     w3, 8f
    str     w3, [x1]
    b       7b
8:  ldr     x1, [x19, #72]            // emulated device: exits
    ldr     x2, [x19, #112]
    str     x2, [x1]
    ldr     x1, [x19, #80]            // write the ROM: exits, refused
    str     x20, [x1]
    ldr     x1, [x19, #88]            // lazy RAM: exits once, filled
    eor     x2, x1, x20
    str     x2, [x1]
    ldr     x3, [x1]
    cmp     x2, x3
    b.eq    9f
    orr     x28, x28, #4
9:  mov     x0, x28
    hvc     #0
    b       .
guest_entry2:
    mov     x19, x0
    ldr     x1, [x19, #96]            // the page unmapped by the host
    ldr     x2, [x1]                  // must exit
    mov     x0, #0xe2
    hvc     #1
    b       .
    .balign 16
guest_image_end:
