// Boot for the x86-64 example: the multiboot v1 header QEMU's `-kernel`
// loader reads, the 32-bit entry both QEMU and the Bochs boot sector jump
// to, identity paging of the first 4 GiB with 2 MiB pages, long mode, and
// the host's exception stubs. Intel syntax.

    .section .multiboot, "a"
    .balign 4
// Multiboot Specification 0.6.96, 3.1.1 "The layout of Multiboot header":
// magic, flags, checksum, then (flag bit 16, "a.out kludge") header_addr,
// load_addr, load_end_addr, bss_end_addr, entry_addr. The loader copies
// the file from offset (header offset - (header_addr - load_addr)) = 0 to
// load_addr, so no ELF parsing is needed (QEMU refuses 64-bit ELF files).
mb_header:
    .long   0x1BADB002
    .long   0x00010000
    .long   (0 - 0x1BADB002 - 0x00010000) & 0xffffffff
    .long   mb_header
    .long   0x100000
    .long   __image_end
    .long   __image_end
    .long   entry32

    .section .text.boot, "ax"
    .code32
    .global entry32
// 32-bit protected mode, paging off, interrupts off (multiboot state, and
// what the Bochs boot sector sets up). EAX/EBX are ignored.
entry32:
    cli
    lgdt    [gdt_desc]
    mov     ax, 0x10
    mov     ds, ax
    mov     es, ax
    mov     ss, ax
    // Zero .bss (it holds the boot page tables and the stack guard).
    mov     edi, offset __bss_start
    mov     ecx, offset __bss_end
    sub     ecx, edi
    shr     ecx, 2
    xor     eax, eax
    cld
    rep stosd
    // PML4[0] -> PDPT; PDPT[0..4] -> four page directories.
    mov     eax, offset host_pdpt
    or      eax, 3
    mov     [host_pml4], eax
    mov     edi, offset host_pdpt
    mov     eax, offset host_pd
    or      eax, 3
    mov     ecx, 4
1:  mov     [edi], eax
    add     eax, 0x1000
    add     edi, 8
    loop    1b
    // 2048 PDEs: P | R/W | PS, 2 MiB each, identity (AMD APM Vol. 2,
    // 5.3.4; Intel SDM Vol. 3A, 4.5.4).
    mov     edi, offset host_pd
    mov     eax, 0x83
    mov     ecx, 2048
2:  mov     [edi], eax
    add     eax, 0x200000
    add     edi, 8
    loop    2b
    // CR4.PAE (bit 5), CR3, EFER.LME (bit 8) | EFER.NXE (bit 11): NPT
    // leaves use NX, which is reserved without NXE (APM 15.25.5).
    mov     eax, cr4
    or      eax, 0x20
    mov     cr4, eax
    mov     eax, offset host_pml4
    mov     cr3, eax
    mov     ecx, 0xC0000080
    rdmsr
    or      eax, 0x900
    wrmsr
    // CR0.PG | CR0.PE | CR0.NE; long mode becomes active.
    mov     eax, cr0
    or      eax, 0x80000021
    mov     cr0, eax
    // Far jump to the 64-bit code segment.
    .byte   0xEA
    .long   entry64
    .word   0x08

    .code64
entry64:
    mov     ax, 0x10
    mov     ds, ax
    mov     es, ax
    mov     ss, ax
    xor     eax, eax
    mov     fs, ax
    mov     gs, ax
    mov     rsp, offset __stack_top
    call    hyp_main
3:  cli
    hlt
    jmp     3b

    .balign 16
// Null, 64-bit code (0x08), flat data (0x10), and a 64-bit TSS descriptor
// (0x18, 16 bytes) that the VMX path fills in: VMX needs a non-null host TR.
    .global gdt
gdt:
    .quad   0
    .quad   0x00AF9A000000FFFF
    .quad   0x00CF92000000FFFF
    .quad   0
    .quad   0
gdt_end:
gdt_desc:
    .word   gdt_end - gdt - 1
    .long   gdt

// Host exception stubs: each pushes an error code (0 for the vectors
// without one) and the vector, then calls `host_fault(vector, error, rip)`.
    .text
    .altmacro
.macro isr n
isr_\n:
    .if (\n == 8) || ((\n >= 10) && (\n <= 14)) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
    .else
    push    0
    .endif
    push    \n
    jmp     isr_common
.endm
.set i, 0
.rept 32
    isr %i
    .set i, i + 1
.endr
isr_common:
    mov     rdi, [rsp]
    mov     rsi, [rsp + 8]
    mov     rdx, [rsp + 16]
    and     rsp, -16
    call    host_fault

.macro isr_addr n
    .quad   isr_\n
.endm
    .section .rodata.isr, "a"
    .balign 8
    .global isr_table
isr_table:
.set i, 0
.rept 32
    isr_addr %i
    .set i, i + 1
.endr
    .noaltmacro

    .section .bss.boot_tables, "aw", @nobits
    .balign 4096
    .global host_pml4
host_pml4:
    .skip   4096
host_pdpt:
    .skip   4096
host_pd:
    .skip   4 * 4096
