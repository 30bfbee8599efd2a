/*
 * user - a deterministic workload in guest ring 3, interrupted by a 100 Hz
 * timer whose handler runs in ring 0.
 *
 * main (ring 0) sets up what ring 3 needs, all at run time, so that the
 * shared startup code stays as it is for every other guest:
 *   - its own GDT: the ring-0 selectors of boot.S (0x08 code, 0x10 data)
 *     plus ring-3 64-bit code (0x20, selector 0x23), ring-3 data (0x28,
 *     selector 0x2b) and a 64-bit TSS (0x30) whose RSP0 is a 16 KiB
 *     interrupt stack and whose I/O permission bitmap opens COM1
 *     (0x3f8-0x3ff), port 0x80 and isa-debug-exit (0xf4-0xf7) to ring 3;
 *     loaded with LGDT and LTR;
 *   - the U/S bit in the paging-structure entries that map the image
 *     (PML4[0], PDPT[0] and the 2 MiB PD entries from 1 MiB up to
 *     __bss_end), found through CR3;
 *   - the #UD gate (vector 6) pointed at ud_entry: the `ud2` at user_exit,
 *     executed in ring 3, is the way back to ring 0 (any other #UD is
 *     reported by lib.c as usual). IRQ 0 keeps lib.c's DPL-0 gate: a gate's
 *     DPL only restricts INT n, not hardware interrupts or exceptions;
 * and then IRETQs to user_main in ring 3 with IF = 1 and IOPL = 3.
 *
 * Why not simpler: on our host (docs/design.md, "Host facts the code relies
 * on") IRETQ does not give ring 3 IOPL 3 (RFLAGS.IOPL reads 0 there, so
 * IN/OUT rely on the TSS bitmap), INT n from ring 3 raises #UD, and SYSCALL
 * from ring 3 does not reach ring 0 (it arrives at LSTAR with CS 0x33, still
 * CPL 3). Under QEMU all of those work; what this guest uses works under both.
 *
 * In ring 3: 6 rounds; each runs `passes` passes (default 5000, `passes=N`
 * on the command line) of filling a 16 KiB buffer from an LCG (fill_round)
 * and hashing it with FNV-1a over 64-bit words (hash_buffer), each pass
 * seeded from the previous hash, and prints the round's last hash from
 * ring 3 (kprintf, COM1 through the I/O bitmap). Every `post` passes
 * (default 32: 131072 loop iterations, about 0.3 ms natively; `post=N`) it
 * writes to port 0x80: a VM exit, where an interrupt that was held back
 * while the CPU ran ring-3 code can be delivered. Exits are kept that rare
 * so that most ticks fall into native ring-3 execution rather than into
 * the handling of an exit (with an exit after every pass, nearly all ticks
 * are injected at ordinary exits). `post` does not change the output;
 * `passes` changes the hashes.
 *
 * Ring 3 is about 860 M instructions at -O1 (30000 passes of 2 x 2048
 * loop iterations), native on our host: about 0.3 s under lore-dbg, 0.6 s
 * under QEMU (TCG).
 *
 * timer_irq counts every tick in `ticks` and the ticks that interrupted
 * ring 3 (RPL 3 in the CS of the interrupt frame) in `user_ticks`. Neither
 * count is printed (they depend on the CPU's speed); only whether
 * user_ticks is non-zero ("ring-3 ticks: yes"), so the output is
 * deterministic.
 *
 * Debugging hooks: break on timer_irq / enter_user (ring 0) or
 * user_main / fill_round / hash_buffer (ring 3: on our host hardware
 * breakpoints do not fire there); watch last_hash (once per round),
 * round_no, ticks, user_ticks.
 */
#include "lib.h"

#define ROUNDS      6
#define PASSES      5000                /* per round; `passes=N` on the command line */
#define POST_EVERY  32                  /* passes between VM exits; `post=N` */
#define BUF_BYTES   16384
#define BUF_WORDS   (BUF_BYTES / sizeof(uint64_t))
#define TIMER_HZ    100

#define USER_CS     0x23                /* GDT entry 4, RPL 3 */
#define USER_DS     0x2b                /* GDT entry 5, RPL 3 */
#define TSS_SEL     0x30                /* GDT entries 6-7 */
#define POST_PORT   0x80                /* POST diagnostics: a harmless VM exit */

#define USER_RFLAGS 0x3202              /* IOPL 3 | IF | bit 1 */

#define PTE_P       0x1ull
#define PTE_US      0x4ull
#define PTE_PS      0x80ull
#define PTE_ADDR    0x000ffffffffff000ull

#define STACK_BYTES 16384
#define IOMAP_BYTES (0x400 / 8)          /* I/O bitmap for ports 0..0x3ff */

uint64_t buffer[BUF_WORDS];
uint64_t last_hash;
unsigned round_no;
unsigned passes;
unsigned post_every;                    /* a VM exit (port 0x80) after every N passes */
volatile uint64_t ticks;                /* written only by timer_irq; never printed */
volatile uint64_t user_ticks;           /* ticks that interrupted ring 3; never printed */
volatile int user_done;                 /* set by user_main just before user_exit */

/* The stack ring 3 runs on, and the ring-0 stack for interrupts from ring 3. */
static uint8_t user_stack[STACK_BYTES] __attribute__((aligned(16)));
static uint8_t intr_stack[STACK_BYTES] __attribute__((aligned(16)));

struct tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
    uint8_t iomap[IOMAP_BYTES + 1];     /* ports 0..0x3ff; the extra byte is 0xff */
} __attribute__((packed));

static struct tss64 tss __attribute__((aligned(16)));

/* Writable: LTR sets the busy bit of the TSS descriptor. */
static uint64_t gdt[8] __attribute__((aligned(16))) = {
    0,                                  /* 0x00 null */
    0x00AF9B000000FFFFull,              /* 0x08 64-bit code, ring 0 (as boot.S) */
    0x00CF93000000FFFFull,              /* 0x10 data, ring 0 (as boot.S) */
    0x00CF9B000000FFFFull,              /* 0x18 32-bit code (unused, as boot.S) */
    0x00AFFB000000FFFFull,              /* 0x20 64-bit code, ring 3 */
    0x00CFF3000000FFFFull,              /* 0x28 data, ring 3 */
    0, 0,                               /* 0x30 TSS, filled in by setup_gdt_tss */
};

extern char __image_start[], __bss_end[];      /* link.ld */

#define STR_(x) #x
#define STR(x) STR_(x)

/*
 * void enter_user(void (*entry)(void), void *user_rsp)
 *   Saves the callee-saved registers and RSP, then IRETQs to `entry` in
 *   ring 3 on `user_rsp` with IF = 1 and IOPL = 3. Returns (in ring 0, with
 *   IF = 0) when ring 3 calls user_exit: ud_entry drops the #UD frame and
 *   resumes enter_user's caller on the saved stack.
 */
void enter_user(void (*entry)(void), void *user_rsp);
noreturn_fn void user_exit(void);
void ud_entry(void);
uint64_t ud_default;                    /* lib.c's #UD stub */
uint64_t enter_user_saved_rsp;

__asm__(
    "    .text\n"
    "    .align 16\n"
    "    .global enter_user\n"
    "    .type enter_user, @function\n"
    "enter_user:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, enter_user_saved_rsp(%rip)\n"
    "    pushq $" STR(USER_DS) "\n"     /* SS */
    "    pushq %rsi\n"                  /* RSP */
    "    pushq $" STR(USER_RFLAGS) "\n" /* RFLAGS */
    "    pushq $" STR(USER_CS) "\n"     /* CS */
    "    pushq %rdi\n"                  /* RIP */
    "    movl $" STR(USER_DS) ", %eax\n"
    "    movw %ax, %ds\n"
    "    movw %ax, %es\n"
    "    xorl %eax, %eax\n"
    "    xorl %ebx, %ebx\n"
    "    xorl %ecx, %ecx\n"
    "    xorl %edx, %edx\n"
    "    xorl %esi, %esi\n"
    "    xorl %edi, %edi\n"
    "    xorl %ebp, %ebp\n"
    "    xorl %r8d, %r8d\n"
    "    xorl %r9d, %r9d\n"
    "    xorl %r10d, %r10d\n"
    "    xorl %r11d, %r11d\n"
    "    xorl %r12d, %r12d\n"
    "    xorl %r13d, %r13d\n"
    "    xorl %r14d, %r14d\n"
    "    xorl %r15d, %r15d\n"
    "    iretq\n"
    "    .size enter_user, . - enter_user\n"
    "\n"
    "    .align 16\n"
    "    .global user_exit\n"
    "    .type user_exit, @function\n"
    "user_exit:\n"                      /* ring 3: the way back to ring 0 */
    "    ud2\n"
    "    .size user_exit, . - user_exit\n"
    "\n"
    "    .align 16\n"
    "    .global ud_entry\n"
    "    .type ud_entry, @function\n"
    "ud_entry:\n"                       /* #UD, no error code: RIP CS RFLAGS RSP SS */
    "    cmpq $user_exit, (%rsp)\n"
    "    jne 1f\n"
    "    testb $3, 8(%rsp)\n"
    "    jz 1f\n"
    "    movl $" STR(KERNEL_DS) ", %eax\n" /* the ud2 of user_exit, in ring 3 */
    "    movw %ax, %ds\n"
    "    movw %ax, %es\n"
    "    movq enter_user_saved_rsp(%rip), %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    "1:  jmp *ud_default(%rip)\n"       /* any other #UD: lib.c reports it */
    "    .size ud_entry, . - ud_entry\n");

/* IRQ 0: count the tick, and whether it interrupted ring 3. */
BREAKABLE struct frame *timer_irq(struct frame *f)
{
    ticks++;
    if ((f->cs & 3) == 3)
        user_ticks++;
    return f;
}

/* Knuth's MMIX LCG. */
static inline uint64_t lcg_next(uint64_t x)
{
    return x * 6364136223846793005ull + 1442695040888963407ull;
}

BREAKABLE void fill_round(uint64_t *buf, size_t words, uint64_t seed)
{
    uint64_t x = seed;
    for (size_t i = 0; i < words; i++) {
        x = lcg_next(x);
        buf[i] = x ^ (x >> 29);
    }
}

/* FNV-1a, one 64-bit word at a time. */
BREAKABLE uint64_t hash_buffer(const uint64_t *buf, size_t words)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < words; i++) {
        h ^= buf[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* A VM exit from ring 3, where a held-back interrupt can be delivered. */
static inline void post(unsigned v)
{
    outb(POST_PORT, (uint8_t)v);
}

static inline uint16_t read_cs(void)
{
    uint16_t cs;
    __asm__ volatile("movw %%cs, %0" : "=r"(cs));
    return cs;
}

static inline uint64_t read_rflags(void)
{
    uint64_t f;
    __asm__ volatile("pushfq; popq %0" : "=r"(f));
    return f;
}

/* Runs in ring 3: IN/OUT only to the ports the TSS bitmap opens; no CLI/HLT. */
BREAKABLE void user_main(void)
{
    kprintf("user: in ring %u, IF %u\n", read_cs() & 3u, (unsigned)((read_rflags() >> 9) & 1));

    uint64_t seed = 1;
    for (round_no = 0; round_no < ROUNDS; round_no++) {
        for (unsigned p = 0; p < passes; p++) {
            fill_round(buffer, BUF_WORDS, seed);
            last_hash = hash_buffer(buffer, BUF_WORDS);
            if (p % post_every == 0)
                post(p);
            seed = last_hash ^ p;
        }
        kprintf("round %u hash 0x%016lx\n", round_no, last_hash);
        seed ^= round_no;
    }
    user_done = 1;
    user_exit();
}

static void setup_gdt_tss(void)
{
    tss.rsp[0] = (uint64_t)(uintptr_t)(intr_stack + STACK_BYTES);
    /*
     * The I/O permission bitmap lets ring 3 reach COM1, port 0x80 and
     * isa-debug-exit even where RFLAGS.IOPL does not take effect (our host).
     */
    tss.iomap_base = (uint16_t)__builtin_offsetof(struct tss64, iomap);
    for (unsigned i = 0; i <= IOMAP_BYTES; i++)
        tss.iomap[i] = 0xff;
    static const uint16_t allowed[][2] = { { POST_PORT, 1 }, { 0xf4, 4 }, { COM1, 8 } };
    for (unsigned k = 0; k < sizeof(allowed) / sizeof(allowed[0]); k++)
        for (unsigned port = allowed[k][0]; port < allowed[k][0] + allowed[k][1]; port++)
            tss.iomap[port / 8] &= (uint8_t)~(1u << (port % 8));

    uint64_t base = (uint64_t)(uintptr_t)&tss;
    uint64_t limit = sizeof(tss) - 1;
    gdt[6] = (limit & 0xffff) | ((base & 0xffffff) << 16) |
             (0x89ull << 40) |          /* present, DPL 0, 64-bit available TSS */
             (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt[7] = base >> 32;

    struct desc_ptr p = { sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "pushq %2\n\t"
                     "leaq 1f(%%rip), %%rax\n\t"
                     "pushq %%rax\n\t"
                     "lretq\n"
                     "1:\n\t"
                     "movl %3, %%eax\n\t"
                     "movw %%ax, %%ds\n\t"
                     "movw %%ax, %%es\n\t"
                     "movw %%ax, %%ss\n\t"
                     "ltr %w1"
                     :
                     : "m"(p), "r"((uint16_t)TSS_SEL), "i"(KERNEL_CS), "i"(KERNEL_DS)
                     : "rax", "memory");
}

/*
 * Routes #UD (vector 6) through ud_entry: the ud2 at user_exit, executed in
 * ring 3, returns to enter_user's caller in ring 0; any other #UD goes on
 * to lib.c's stub, which reports it as usual.
 */
static void setup_user_exit(void)
{
    struct desc_ptr p;
    __asm__ volatile("sidt %0" : "=m"(p));
    struct idt_entry *g = &((struct idt_entry *)(uintptr_t)p.base)[6];
    ud_default = g->offset_lo | ((uint64_t)g->offset_mid << 16) | ((uint64_t)g->offset_hi << 32);
    uint64_t a = (uint64_t)(uintptr_t)ud_entry;
    g->offset_lo = (uint16_t)a;
    g->offset_mid = (uint16_t)(a >> 16);
    g->offset_hi = (uint32_t)(a >> 32);
}

/*
 * Sets U/S in the entries that map the image (identity map of boot.S:
 * PML4[0] -> PDPT[0] -> PD of 2 MiB pages). Returns 0 if the layout is not
 * the expected one.
 */
static int make_image_user_accessible(void)
{
    uint64_t cr3, cr4;
    __asm__ volatile("movq %%cr3, %0" : "=r"(cr3));
    __asm__ volatile("movq %%cr4, %0" : "=r"(cr4));
    /* The kernel's code is in user pages now: SMEP/SMAP would forbid that. */
    if (cr4 & ((1ull << 20) | (1ull << 21))) {
        cr4 &= ~((1ull << 20) | (1ull << 21));
        __asm__ volatile("movq %0, %%cr4" : : "r"(cr4) : "memory");
    }

    uint64_t start = (uint64_t)(uintptr_t)__image_start;
    uint64_t end = (uint64_t)(uintptr_t)__bss_end;
    if (end > (1ull << 30))
        return 0;                       /* beyond PDPT[0] */
    uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & PTE_ADDR);
    if (!(pml4[0] & PTE_P))
        return 0;
    uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & PTE_ADDR);
    if (!(pdpt[0] & PTE_P) || (pdpt[0] & PTE_PS))
        return 0;
    uint64_t *pd = (uint64_t *)(uintptr_t)(pdpt[0] & PTE_ADDR);
    for (uint64_t i = start >> 21; i <= (end - 1) >> 21; i++) {
        if ((pd[i] & (PTE_P | PTE_PS)) != (PTE_P | PTE_PS))
            return 0;
        pd[i] |= PTE_US;
    }
    pdpt[0] |= PTE_US;
    pml4[0] |= PTE_US;
    __asm__ volatile("movq %0, %%cr3" : : "r"(cr3) : "memory");   /* flush the TLB */
    return 1;
}

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    (void)mb_magic;
    (void)mbi;
    passes = (unsigned)cmdline_get_u64("passes", PASSES);
    post_every = (unsigned)cmdline_get_u64("post", POST_EVERY);
    if (post_every == 0)
        post_every = 1;
    if (passes == 0)
        passes = 1;

    if (!make_image_user_accessible()) {
        puts("user: unexpected page-table layout\n");
        return EXIT_FAIL;
    }
    setup_gdt_tss();
    setup_user_exit();

    pic_remap();
    irq_set_handler(0, timer_irq);
    pit_set_hz(TIMER_HZ);
    pic_unmask(0);

    kprintf("user: %d rounds of %u passes over a %d-byte buffer in ring 3\n",
            ROUNDS, passes, BUF_BYTES);
    enter_user(user_main, user_stack + STACK_BYTES - 8);
    /* back in ring 0 through the #UD of user_exit; IF = 0 (interrupt gate) */
    cli();
    pic_mask(0);

    if (!user_done || (read_cs() & 3) != 0) {
        puts("user: did not come back from ring 3 properly\n");
        return EXIT_FAIL;
    }
    kprintf("user: back in ring %u\n", read_cs() & 3u);
    kprintf("ring-3 ticks: %s\n", user_ticks > 0 ? "yes" : "no");
    kprintf("user: done, final hash 0x%016lx\n", last_hash);
    return 0;
}
