/*
 * isr.S - interrupt entry stubs (vectors 0..47) shared by every guest.
 *
 * Each stub pushes a dummy error code where the CPU does not push one,
 * then the vector number, then all 15 general registers, and calls
 *     struct frame *isr_dispatch(struct frame *f)
 * (lib.c). The returned pointer becomes the new stack pointer before the
 * registers are popped and IRETQ runs, so a handler may switch to another
 * task by returning that task's saved frame (see sched.c).
 * The layout must match struct frame in lib.h.
 */
    .code64
    .text

.macro ISR_NOERR n
    .align 16
isr_stub_\n:
    pushq $0
    pushq $\n
    jmp isr_common
.endm

.macro ISR_ERR n
    .align 16
isr_stub_\n:
    pushq $\n
    jmp isr_common
.endm

/* exceptions; 8, 10-14, 17, 21, 29, 30 push an error code */
ISR_NOERR 0
ISR_NOERR 1
ISR_NOERR 2
ISR_NOERR 3
ISR_NOERR 4
ISR_NOERR 5
ISR_NOERR 6
ISR_NOERR 7
ISR_ERR   8
ISR_NOERR 9
ISR_ERR   10
ISR_ERR   11
ISR_ERR   12
ISR_ERR   13
ISR_ERR   14
ISR_NOERR 15
ISR_NOERR 16
ISR_ERR   17
ISR_NOERR 18
ISR_NOERR 19
ISR_NOERR 20
ISR_ERR   21
ISR_NOERR 22
ISR_NOERR 23
ISR_NOERR 24
ISR_NOERR 25
ISR_NOERR 26
ISR_NOERR 27
ISR_NOERR 28
ISR_ERR   29
ISR_ERR   30
ISR_NOERR 31
/* IRQ 0..15 after the PIC remap: vectors 0x20..0x2f */
.irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
ISR_NOERR \n
.endr

    .align 16
    .global isr_common
    .type isr_common, @function
isr_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rbx
    pushq %rbp
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi                 /* struct frame * (16-byte aligned here) */
    cld
    call isr_dispatch
    movq %rax, %rsp                 /* possibly another task's frame */
    .global isr_return
isr_return:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rbp
    popq %rbx
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp                  /* vector, error code */
    iretq
    .size isr_common, . - isr_common

    .section .rodata
    .align 8
    .global isr_stub_table
isr_stub_table:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
    .quad isr_stub_\n
.endr

    .section .note.GNU-stack, "", @progbits
