/*
 * writes - every kind of store a watchpoint has to see, for `lore-dbg writes`
 * and gdb's `watch`/`rwatch`/`awatch`.
 *
 * All targets live in `zone`, two pages that also hold `noise`, a counter
 * written thousands of times between the cases: a watch on any target shares
 * its page with constant unrelated writes, as a real variable does. Each case
 * is its own function (the tests match writers by function name):
 *
 *   case_sizes      1, 2, 4, 8 and 16-byte stores (the last with SSE movups)
 *   case_straddle   an 8-byte store across the boundary of the zone's pages
 *   case_edge       an 8-byte store whose upper half covers a 4-byte target
 *   case_strings    rep stosb over a buffer, rep movsq into another
 *   case_atomics    lock cmpxchg, xchg, lock xadd
 *   case_stack      push and call on a stack inside the zone
 *   case_same       a store that writes the value already there
 *   case_fxsave     fxsave of 512 bytes into the zone
 *   case_paging     builds page tables for 0x40000000 in `tables` (the CPU
 *                   sets their accessed and dirty bits), stores through that
 *                   address to `remap_old`, remaps it to `remap_new`, stores
 *                   through it again
 *
 * `loaded` starts at 0x600d from the image (the loader's write, before the
 * first instruction) and is written once. Interrupts stay off. Output is
 * deterministic.
 */
#include "lib.h"

#define PAGE            4096
#define NOISE           0x000
#define V1              0x100
#define V2              0x108
#define V4              0x110
#define V8              0x118
#define V16             0x120
#define EDGE            0x140   /* a 4-byte target; the store starts 4 bytes before */
#define REP_BUF         0x200   /* 64 bytes */
#define MOVS_BUF        0x280   /* 64 bytes */
#define CMPXCHG         0x300
#define XCHG            0x308
#define XADD            0x310
#define SAME            0x318
#define STACK_TOP       0x800   /* the stack grows down from here */
#define FXSAVE_AREA     0x400   /* 512 bytes, below the stack's reach */
#define STRADDLE        (PAGE - 4)
#define REMAP_VA        0x40000000ull

__attribute__((aligned(4096))) uint8_t zone[2 * PAGE];
/* Page tables for REMAP_VA: a page directory and a page table. */
__attribute__((aligned(4096))) uint64_t tables[2][512];
__attribute__((aligned(4096))) volatile uint64_t remap_old[512];
__attribute__((aligned(4096))) volatile uint64_t remap_new[512];
volatile uint64_t loaded = 0x600d;

#define AT(type, offset) (*(volatile type *)&zone[offset])

BREAKABLE void noise_burst(unsigned count)
{
    for (unsigned i = 0; i < count; i++)
        AT(uint64_t, NOISE) += 1;
}

BREAKABLE void case_sizes(void)
{
    AT(uint8_t, V1) = 0x11;
    AT(uint16_t, V2) = 0x2222;
    AT(uint32_t, V4) = 0x44444444;
    AT(uint64_t, V8) = 0x8888888888888888ull;
    static const uint8_t sixteen[16] = {
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
        0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    };
    __asm__ volatile("movups (%0), %%xmm0\n\tmovups %%xmm0, (%1)"
                     : : "r"(sixteen), "r"(&zone[V16]) : "memory");
}

BREAKABLE void case_straddle(void)
{
    AT(uint64_t, STRADDLE) = 0x0123456789abcdefull;
}

BREAKABLE void case_edge(void)
{
    AT(uint64_t, EDGE - 4) = 0xeeeeeeee55555555ull;
}

BREAKABLE void case_strings(void)
{
    void *dst = (void *)&zone[REP_BUF];
    size_t count = 64;
    __asm__ volatile("rep stosb" : "+D"(dst), "+c"(count) : "a"(0xab) : "memory");
    const void *src = (const void *)&zone[REP_BUF];
    dst = (void *)&zone[MOVS_BUF];
    count = 8;
    __asm__ volatile("rep movsq" : "+S"(src), "+D"(dst), "+c"(count) : : "memory");
}

BREAKABLE void case_atomics(void)
{
    uint64_t expected = 0;
    __asm__ volatile("lock cmpxchgq %2, %1"
                     : "+a"(expected), "+m"(AT(uint64_t, CMPXCHG))
                     : "r"(0xc0c0c0c0ull) : "memory");
    uint64_t swapped = 0x5a5a5a5a;
    __asm__ volatile("xchgq %0, %1" : "+r"(swapped), "+m"(AT(uint64_t, XCHG)) : : "memory");
    uint64_t added = 0x33;
    __asm__ volatile("lock xaddq %0, %1" : "+r"(added), "+m"(AT(uint64_t, XADD)) : : "memory");
}

BREAKABLE void stack_callee(void)
{
    barrier();
}

BREAKABLE void case_stack(void)
{
    __asm__ volatile("mov %%rsp, %%rbx\n\t"
                     "mov %0, %%rsp\n\t"
                     "pushq $0x5a5a\n\t"
                     "call stack_callee\n\t"
                     "popq %%rax\n\t"
                     "mov %%rbx, %%rsp"
                     : : "r"(&zone[STACK_TOP]) : "rbx", "rax", "memory");
}

BREAKABLE void case_same(void)
{
    AT(uint64_t, SAME) = 0x77;
    noise_burst(100);
    AT(uint64_t, SAME) = 0x77;
}

BREAKABLE void case_fxsave(void)
{
    __asm__ volatile("fxsave64 (%0)" : : "r"(&zone[FXSAVE_AREA]) : "memory");
}

static inline uint64_t read_cr3(void)
{
    uint64_t value;
    __asm__ volatile("mov %%cr3, %0" : "=r"(value));
    return value;
}

BREAKABLE void case_paging(void)
{
    uint64_t *pml4 = (uint64_t *)(read_cr3() & ~0xfffull);
    uint64_t *pdpt = (uint64_t *)(pml4[0] & ~0xfffull);
    tables[0][0] = (uint64_t)(uintptr_t)tables[1] | 3;          /* PD[0] -> PT */
    tables[1][0] = (uint64_t)(uintptr_t)remap_old | 3;          /* PT[0] -> remap_old */
    pdpt[1] = (uint64_t)(uintptr_t)tables[0] | 3;               /* 1 GiB -> PD */
    __asm__ volatile("mov %0, %%cr3" : : "r"(read_cr3()) : "memory");
    *(volatile uint64_t *)REMAP_VA = 0xaaaa;                   /* lands in remap_old */
    tables[1][0] = (uint64_t)(uintptr_t)remap_new | 3;
    __asm__ volatile("invlpg (%0)" : : "r"(REMAP_VA) : "memory");
    *(volatile uint64_t *)REMAP_VA = 0xbbbb;                   /* lands in remap_new */
}

static void enable_sse(void)
{
    uint64_t cr4;
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 |= (1u << 9) | (1u << 10);      /* OSFXSR, OSXMMEXCPT */
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4));
}

int main(uint32_t magic, const struct mb_info *mbi)
{
    (void)magic;
    (void)mbi;
    enable_sse();
    noise_burst(500);
    case_sizes();
    noise_burst(500);
    case_straddle();
    case_edge();
    noise_burst(500);
    case_strings();
    case_atomics();
    noise_burst(500);
    case_stack();
    case_same();
    case_fxsave();
    noise_burst(500);
    case_paging();
    loaded = 0xbad;
    noise_burst(500);
    kprintf("writes: v8 %lx straddle %lx edge %x rep %x movs %lx atomics %lx %lx %lx\n",
           AT(uint64_t, V8), AT(uint64_t, STRADDLE), AT(uint32_t, EDGE),
           AT(uint32_t, REP_BUF + 40), AT(uint64_t, MOVS_BUF + 8),
           AT(uint64_t, CMPXCHG), AT(uint64_t, XCHG), AT(uint64_t, XADD));
    kprintf("writes: remap_old %lx remap_new %lx loaded %lx noise %lu\n",
           remap_old[0], remap_new[0], loaded, AT(uint64_t, NOISE));
    return 0;
}
