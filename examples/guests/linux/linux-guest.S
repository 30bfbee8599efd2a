/*
 * linux-guest.S - a stand-in for a Linux kernel, small enough to run in
 * seconds where guest ring 0 is emulated, to test lore-dbg's Linux boot.
 *
 * build.rs assembles it twice:
 *
 *  -DPVH     an ELF with the PVH entry note (Xen note XEN_ELFNOTE_PHYS32_ENTRY,
 *            as a kernel built with CONFIG_PVH has). Entered in 32-bit
 *            protected mode, paging off, EBX = struct hvm_start_info.
 *  (without) the protected-mode part of a bzImage booted by the 32-bit boot
 *            protocol (Documentation/x86/boot.rst): entered at code32_start
 *            with ESI = struct boot_params, CS = __BOOT_CS (0x10),
 *            DS = __BOOT_DS (0x18). Linked as a flat binary.
 *
 * Either way it prints what a kernel reads first to COM1 - the command line,
 * the first bytes of the initrd, how many e820 entries the memory map has -
 * and exits through isa-debug-exit with 0x10 (process exit status 33), or
 * with 0x01 (status 3) after "FAIL" when the boot information is wrong.
 * The tests wrap these at test time into synthetic bzImages.
 */

#define COM1            0x3f8
#define DEBUG_EXIT      0xf4
#define EXIT_OK         0x10
#define EXIT_FAIL       0x01
#define HVM_START_MAGIC 0x336ec578
#define INITRD_SHOWN    16

#ifdef PVH
    /* The PVH entry, as Linux's arch/x86/platform/pvh/head.S declares it. */
    .section .note.Xen, "a"
    .balign 4
    .long 4                         /* name size: "Xen\0" */
    .long 8                         /* descriptor size: a .quad */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _start
#endif

    .text
    .code32
    .global _start
_start:
    cli
    cld
    movl $stack_top, %esp
#ifdef PVH
    movl %ebx, %ebp                 /* struct hvm_start_info */
    movl $banner, %esi
    call puts
    cmpl $HVM_START_MAGIC, (%ebp)
    jne fail
    cmpl $1, 4(%ebp)                /* version 1: the memory map is there */
    jne fail
    movl 48(%ebp), %eax             /* memmap_entries */
    xorl %ebx, %ebx
    xorl %edx, %edx
    cmpl $0, 12(%ebp)               /* nr_modules */
    je 1f
    movl 16(%ebp), %edi             /* modlist_paddr: module 0 is the initrd */
    movl (%edi), %ebx               /* paddr */
    movl 8(%edi), %edx              /* size */
1:  movl 24(%ebp), %esi             /* cmdline_paddr */
#else
    movl %esi, %ebp                 /* struct boot_params */
    movl $banner, %esi
    call puts
    movw %cs, %ax
    cmpw $0x10, %ax
    jne fail
    movw %ds, %ax
    cmpw $0x18, %ax
    jne fail
    cmpb $0xff, 0x210(%ebp)         /* type_of_loader */
    jne fail
    cmpl $0x53726448, 0x202(%ebp)   /* "HdrS": the setup header was copied */
    jne fail
    movzbl 0x1e8(%ebp), %eax        /* e820_entries */
    movl 0x218(%ebp), %ebx          /* ramdisk_image */
    movl 0x21c(%ebp), %edx          /* ramdisk_size */
    movl 0x228(%ebp), %esi          /* cmd_line_ptr */
#endif
    pushl %eax
    pushl %esi
    movl $cmdline_label, %esi
    call puts
    popl %esi
    call puts
    movl $initrd_label, %esi
    call puts
    movl %edx, %ecx
    cmpl $INITRD_SHOWN, %ecx
    jbe 2f
    movl $INITRD_SHOWN, %ecx
2:  movl %ebx, %esi
    call putn
    movl $e820_label, %esi
    call puts
    popl %eax
    addb $'0', %al
    call putc
    movb $'\n', %al
    call putc
    movb $EXIT_OK, %al
    outb %al, $DEBUG_EXIT
    hlt

fail:
    movl $fail_text, %esi
    call puts
    movb $EXIT_FAIL, %al
    outb %al, $DEBUG_EXIT
    hlt

/* putc: AL to COM1. */
putc:
    pushl %edx
    movw $COM1, %dx
    outb %al, %dx
    popl %edx
    ret

/* puts: the NUL-terminated string at ESI (a null pointer prints nothing). */
puts:
    pushl %esi
    testl %esi, %esi
    jz 2f
1:  lodsb
    testb %al, %al
    jz 2f
    call putc
    jmp 1b
2:  popl %esi
    ret

/* putn: ECX bytes at ESI, then a newline. */
putn:
    jecxz 2f
1:  lodsb
    call putc
    loop 1b
2:  movb $'\n', %al
    jmp putc

    .data
#ifdef PVH
banner:         .asciz "linux-guest: PVH entry\n"
#else
banner:         .asciz "linux-guest: 32-bit boot protocol\n"
#endif
cmdline_label:  .asciz "cmdline: "
initrd_label:   .asciz "\ninitrd: "
e820_label:     .asciz "e820 entries: "
fail_text:      .asciz "FAIL\n"
    .balign 16
stack:          .fill 256, 1, 0
stack_top:
