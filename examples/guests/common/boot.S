/*
 * boot.S - multiboot v1 entry shared by every lore-dbg guest.
 *
 * Boot contract (exactly what `qemu-system-x86_64 -kernel guest.elf` does):
 *   32-bit protected mode, flat segments, paging off, interrupts off,
 *   EAX = 0x2BADB002, EBX = physical address of the multiboot info.
 * A guest that also carries a multiboot2 header (vga.c) may be booted by
 * multiboot2 instead: EAX = 0x36D76289, EBX = the multiboot2 tags.
 *
 * This code checks the magic, zeroes .bss, identity-maps the first 1 GiB
 * with 2 MiB pages, enables PAE + EFER.LME + paging, loads a 64-bit GDT,
 * far-jumps to 64-bit code, sets up the stack and calls
 * guest_start(magic, info) in lib.c, which calls the guest's main().
 */

#define MB_HEADER_MAGIC  0x1BADB002
#define MB_BOOT_MAGIC    0x2BADB002
#define MB2_BOOT_MAGIC   0x36D76289
/* bit 1: memory info wanted; bit 16: address fields below are valid */
#define MB_FLAGS         0x00010002

#define EXIT_BAD_MAGIC   0x61        /* see lib.h */
#define STACK_SIZE       16384

    .section .multiboot, "a"
    .align 4
    .global multiboot_header
multiboot_header:
    .long MB_HEADER_MAGIC
    .long MB_FLAGS
    .long -(MB_HEADER_MAGIC + MB_FLAGS)
    .long multiboot_header          /* header_addr */
    .long __image_start             /* load_addr */
    .long __load_end                /* load_end_addr */
    .long __bss_end                 /* bss_end_addr */
    .long _start                    /* entry_addr */

/* ------------------------------------------------------------------ */
    .section .text.boot, "ax"
    .code32
    .global _start
    .type _start, @function
_start:
    cli
    cld
    cmpl $MB_BOOT_MAGIC, %eax
    je 0f
    cmpl $MB2_BOOT_MAGIC, %eax
    jne bad_magic
0:
    movl %eax, boot_magic
    movl %ebx, boot_info

    /* zero .bss (the loader should already have, but be sure) */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] = i * 2 MiB (first 1 GiB) */
    movl $boot_pdpt, %eax
    orl $0x3, %eax                  /* present | writable */
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt
    movl $boot_pd, %edi
    movl $0x83, %eax                /* present | writable | 2 MiB page */
    movl $512, %ecx
1:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz 1b

    /* CR4.PAE */
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    /* CR3 = PML4 */
    movl $boot_pml4, %eax
    movl %eax, %cr3
    /* EFER.LME */
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    /* CR0.PG | CR0.PE (| CR0.WP) */
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0

    lgdt gdt_desc
    ljmp $0x08, $long_mode_entry

bad_magic:
    movw $0xf4, %dx                 /* isa-debug-exit */
    movl $EXIT_BAD_MAGIC, %eax
    outl %eax, %dx
2:  hlt
    jmp 2b
    .size _start, . - _start

/* ------------------------------------------------------------------ */
    .code64
    .type long_mode_entry, @function
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl boot_magic(%rip), %edi
    movl boot_info(%rip), %esi
    call guest_start
3:  cli
    hlt
    jmp 3b
    .size long_mode_entry, . - long_mode_entry

/* ------------------------------------------------------------------ */
    .section .rodata
    .align 16
gdt:
    .quad 0                         /* 0x00 null */
    .quad 0x00AF9B000000FFFF        /* 0x08 64-bit code, ring 0 */
    .quad 0x00CF93000000FFFF        /* 0x10 data, ring 0 */
    .quad 0x00CF9B000000FFFF        /* 0x18 32-bit code (unused) */
gdt_end:
    .align 8
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .data
    .align 8
    .global boot_magic, boot_info
boot_magic: .long 0
boot_info:  .long 0

    .section .bss
    .align 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096
    .align 16
    .global boot_stack, boot_stack_top
boot_stack: .skip STACK_SIZE
boot_stack_top:

    .section .note.GNU-stack, "", @progbits
