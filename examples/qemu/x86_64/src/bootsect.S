// The Bochs boot sector: 512 bytes at file offset 0x1000 of the image
// (link.ld). run.sh builds the floppy from it followed by the whole image
// file (sectors 1..). Loaded by the BIOS at 0x7C00 in real mode, it reads
// the image one sector at a time (int 13h, AH=02h, CHS of a 1.44 MB floppy:
// 18 sectors, 2 heads) to 0x10000, enables A20, enters 32-bit protected
// mode, copies the image to 1 MiB and jumps to `entry32`. Addresses inside
// the sector are written as (label - bs_start + 0x7C00).
// AT&T syntax (LLVM's Intel parser takes one symbol per memory operand).
    .section .bootsect, "ax"
    .code16
#define (x - bs_start + 0x7C00) ((x) - bs_start + 0x7C00)
bs_start:
    cli
    xorw    %ax, %ax
    movw    %ax, %ds
    movw    %ax, %ss
    movw    $0x7C00, %sp
    movb    %dl, (bs_drive - bs_start + 0x7C00)
    movw    $1, %si                   // LBA of the image's first sector
    movw    $0x1000, %di              // destination segment (0x10000)
1:  cmpw    (bs_count - bs_start + 0x7C00), %si
    ja      3f
    movw    %si, %ax                  // CHS from the LBA
    xorw    %dx, %dx
    movw    $18, %cx
    divw    %cx                       // ax = LBA / 18, dx = LBA % 18
    movb    %dl, %cl
    incb    %cl                       // sector, 1-based
    movb    %al, %dh
    andb    $1, %dh                   // head = (LBA / 18) % 2
    shrw    $1, %ax
    movb    %al, %ch                  // cylinder = LBA / 36
    movb    (bs_drive - bs_start + 0x7C00), %dl
    movw    %di, %es
    xorw    %bx, %bx
    movw    $3, %bp                   // tries
2:  movw    $0x0201, %ax
    pushw   %cx
    pushw   %dx
    int     $0x13
    popw    %dx
    popw    %cx
    jnc     4f
    decw    %bp
    jnz     2b
    movb    $'!', %al                 // read failed: say so on port 0xE9
    outb    %al, $0xE9
    hlt
4:  addw    $0x20, %di                // next 512 bytes
    incw    %si
    jmp     1b
3:  inb     $0x92, %al                // fast A20
    orb     $2, %al
    outb    %al, $0x92
    lgdtl   (bs_gdt_desc - bs_start + 0x7C00)
    movl    %cr0, %eax
    orl     $1, %eax
    movl    %eax, %cr0
    ljmpl   $0x08, $(bs_pm32 - bs_start + 0x7C00)
    .code32
bs_pm32:
    movw    $0x10, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movl    $0x7C00, %esp
    movzwl  (bs_count - bs_start + 0x7C00), %ecx
    shll    $7, %ecx                  // sectors * 512 / 4
    movl    $0x10000, %esi
    movl    $0x100000, %edi
    cld
    rep movsl
    movl    $entry32, %eax
    jmp     *%eax

    .balign 8
bs_gdt:
    .quad   0
    .quad   0x00CF9A000000FFFF        // 32-bit flat code
    .quad   0x00CF92000000FFFF        // flat data
bs_gdt_desc:
    .word   3 * 8 - 1
    .long   (bs_gdt - bs_start + 0x7C00)
bs_drive:
    .byte   0
    .balign 2
// Sectors to read: the loaded part of the image, from link.ld. At most
// 1152 (576 KiB below 0xA0000); run.sh checks the image size.
bs_count:
    .word   __image_sectors
    .org    510
    .word   0xAA55
    .code64
