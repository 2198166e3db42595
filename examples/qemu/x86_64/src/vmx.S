// vmx_run(regs: rdi, launched: rsi) -> rax: 0 after a VM exit, 1 when
// VMLAUNCH/VMRESUME failed. `regs` holds the guest's general registers by
// number (RAX = 0 .. R15 = 15; RSP lives in the VMCS). HOST_RSP and
// HOST_RIP are written here so the exit lands in `vmx_exit` with `regs` on
// top of the stack (Intel SDM Vol. 3C, 27.5 "Loading Host State").
    .text
    .global vmx_run
vmx_run:
    push    rbx
    push    rbp
    push    r12
    push    r13
    push    r14
    push    r15
    push    rdi
    mov     rax, 0x6C14               // HOST_RSP
    vmwrite rax, rsp
    mov     rax, 0x6C16               // HOST_RIP
    lea     rbx, [rip + vmx_exit]
    vmwrite rax, rbx
    test    rsi, rsi                  // flags survive the loads below
    mov     rax, [rdi]
    mov     rcx, [rdi + 8]
    mov     rdx, [rdi + 16]
    mov     rbx, [rdi + 24]
    mov     rbp, [rdi + 40]
    mov     rsi, [rdi + 48]
    mov     r8, [rdi + 64]
    mov     r9, [rdi + 72]
    mov     r10, [rdi + 80]
    mov     r11, [rdi + 88]
    mov     r12, [rdi + 96]
    mov     r13, [rdi + 104]
    mov     r14, [rdi + 112]
    mov     r15, [rdi + 120]
    mov     rdi, [rdi + 56]
    jnz     1f
    vmlaunch
    jmp     2f
1:  vmresume
2:  add     rsp, 8                    // VM entry failed
    pop     r15
    pop     r14
    pop     r13
    pop     r12
    pop     rbp
    pop     rbx
    mov     eax, 1
    ret
vmx_exit:
    push    rax
    mov     rax, [rsp + 8]
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
    pop     rcx
    mov     [rax], rcx
    add     rsp, 8
    pop     r15
    pop     r14
    pop     r13
    pop     r12
    pop     rbp
    pop     rbx
    xor     eax, eax
    ret
