// The guest: 64-bit code at CPL 0, loaded at the ROM's base (GPA 0x10_0000,
// `ROM_GPA`). RDI is the address of the parameter block (see
// common/scenario.rs). Long mode needs paging: the hypervisor writes
// identity tables for the first 4 GiB into guest RAM (`arch::guest_tables`)
// before the first entry. They cannot live in the ROM: QEMU 7.2 walks guest
// tables through the nested table with write access (to set A/D), so a
// read-only mapping faults even with A and D preset.
//
// Every access that may exit is a REX.W MOV between a register and [reg]
// (`mov [rax], rbx` / `mov rbx, [rax]`), the only form `insn.rs` decodes.
// The guest prints through port 0xE9, which neither hypervisor intercepts.
// HLT ends a run with the result in RAX. Intel syntax.
    .section .rodata.guest, "a"
    .balign 16
    .global guest_image_start
    .global guest_image_end
    .global guest_entry2
guest_image_start:
    mov     r15, rdi
    xor     r14d, r14d                // error mask
    mov     rax, [r15]                // read the ROM: magic
    mov     rcx, 0x4e5054524f4d2121
    cmp     rax, rcx
    je      1f
    or      r14, 1
1:  mov     r13, [r15 + 120]          // key
    mov     r12, [r15 + 8]            // count
    lea     r11, [r15 + 16]           // addresses
    xor     r10d, r10d
2:  cmp     r10, r12                  // write the pattern
    jae     3f
    mov     rax, [r11 + r10 * 8]
    mov     rbx, rax
    xor     rbx, r13
    mov     [rax], rbx
    inc     r10
    jmp     2b
3:  xor     r10d, r10d
4:  cmp     r10, r12                  // read it back
    jae     5f
    mov     rax, [r11 + r10 * 8]
    mov     rbx, [rax]
    xor     rbx, r13
    cmp     rbx, rax
    je      6f
    or      r14, 2
6:  inc     r10
    jmp     4b
5:  mov     rsi, [r15 + 104]          // message in ROM, to port 0xE9
7:  movzx   eax, byte ptr [rsi]
    test    al, al
    jz      8f
    out     0xE9, al
    inc     rsi
    jmp     7b
8:  mov     rax, [r15 + 72]           // emulated device: exits
    mov     rbx, [r15 + 112]
    mov     [rax], rbx
    mov     rax, [r15 + 80]           // write the ROM: exits, refused
    mov     [rax], r13
    mov     rax, [r15 + 88]           // lazy RAM: exits once, filled
    mov     rbx, rax
    xor     rbx, r13
    mov     [rax], rbx
    mov     rcx, [rax]
    cmp     rbx, rcx
    je      9f
    or      r14, 4
9:  mov     rax, r14
    hlt
    jmp     9b
guest_entry2:
    mov     r15, rdi
    mov     rax, [r15 + 96]           // the page unmapped by the host
    mov     rbx, [rax]                // must exit
    mov     eax, 0xe2
    hlt
    jmp     guest_entry2

// Third entry (extras.rs): loads from every address of the read list,
// stores to every address of the write list, then jumps to every address
// of the jump list with the return address in R14 (the host put `jmp r14`
// there). Parameter block: magic, read count, write count, read list
// address, write list address, jump count, jump list address.
    .global guest_entry3
guest_entry3:
    mov     r15, rdi
    mov     r12, [r15 + 8]
    mov     r11, [r15 + 24]
    xor     r10d, r10d
1:  cmp     r10, r12
    jae     2f
    mov     rax, [r11 + r10 * 8]
    mov     rbx, [rax]                // may exit
    inc     r10
    jmp     1b
2:  mov     r12, [r15 + 16]
    mov     r11, [r15 + 32]
    xor     r10d, r10d
3:  cmp     r10, r12
    jae     4f
    mov     rax, [r11 + r10 * 8]
    mov     rbx, rax
    mov     [rax], rbx                // may exit
    inc     r10
    jmp     3b
4:  mov     r12, [r15 + 40]
    mov     r11, [r15 + 48]
    xor     r10d, r10d
5:  cmp     r10, r12
    jae     6f
    mov     rax, [r11 + r10 * 8]
    lea     r14, [rip + 7f]
    jmp     rax                       // may exit; the host resumes at R14
7:  inc     r10
    jmp     5b
6:  xor     eax, eax
    hlt
    jmp     6b
    .balign 16
guest_image_end:
