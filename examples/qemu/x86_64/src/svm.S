// svm_run(vmcb: rdi, regs: rsi): guest registers by number (RAX = 0 ..
// R15 = 15; RAX and RSP live in the VMCB). VMRUN saves the host's RSP and
// RAX in the host save area and restores them on #VMEXIT (AMD APM Vol. 2,
// 15.5.1 "Basic Operation"); everything else is switched here.
    .text
    .global svm_run
svm_run:
    push    rbx
    push    rbp
    push    r12
    push    r13
    push    r14
    push    r15
    push    rsi
    mov     rax, rdi
    mov     rcx, [rsi + 8]
    mov     rdx, [rsi + 16]
    mov     rbx, [rsi + 24]
    mov     rbp, [rsi + 40]
    mov     rdi, [rsi + 56]
    mov     r8, [rsi + 64]
    mov     r9, [rsi + 72]
    mov     r10, [rsi + 80]
    mov     r11, [rsi + 88]
    mov     r12, [rsi + 96]
    mov     r13, [rsi + 104]
    mov     r14, [rsi + 112]
    mov     r15, [rsi + 120]
    mov     rsi, [rsi + 48]
    .byte   0x0f, 0x01, 0xd8          // vmrun rax
    mov     rax, [rsp]
    mov     [rax + 8], rcx
    mov     [rax + 16], rdx
    mov     [rax + 24], rbx
    mov     [rax + 40], rbp
    mov     [rax + 48], rsi
    mov     [rax + 56], rdi
    mov     [rax + 64], r8
    mov     [rax + 72], r9
    mov     [rax + 80], r10
    mov     [rax + 88], r11
    mov     [rax + 96], r12
    mov     [rax + 104], r13
    mov     [rax + 112], r14
    mov     [rax + 120], r15
    pop     rsi
    pop     r15
    pop     r14
    pop     r13
    pop     r12
    pop     rbp
    pop     rbx
    ret
