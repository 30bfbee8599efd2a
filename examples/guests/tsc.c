/*
 * tsc - reads the time-stamp counter with `rdtsc` (and `rdtscp`, where CPUID
 * offers it) in a loop around a little work, and prints values derived from
 * the differences between consecutive reads: their minimum, maximum, sum and
 * an FNV-1a hash of all of them.
 *
 * Every read is a non-deterministic input. Stock KVM runs `rdtsc` without an
 * exit, so lore-dbg cannot record it: a replay sees other differences, prints
 * other numbers and is caught diverging. With the patched KVM of kmod-patch/
 * (KVM_CAP_X86_USER_NONDET) each read exits to lore-dbg, which records the
 * value and supplies it again in replay: the output is then reproduced exactly,
 * however it varied between recordings.
 *
 * `rdtscp` also returns IA32_TSC_AUX in ECX; the guest writes 42 there first
 * and checks that it reads 42 back. lore-dbg shows RDTSCP in CPUID only where
 * it exits (on other hosts the guest uses `rdtsc` alone and says so).
 *
 * The multiboot command line `reads=N` takes N reads instead of 1000.
 * Debugging hooks: break on `read_tsc`/`read_tscp`, or `reverse-stepi` over
 * the `rdtsc` in them and print $rax / $rdx.
 */
#include "lib.h"

#define READS        1000            /* default; `reads=N` on the command line */
#define IA32_TSC_AUX 0xc0000103u
#define TSC_AUX      42u

uint64_t sink = 1;                      /* the work's result, printed at the end */

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static int has_rdtscp(void)
{
    uint32_t a, b, c, d;
    cpuid(0x80000000u, &a, &b, &c, &d);
    if (a < 0x80000001u)
        return 0;
    cpuid(0x80000001u, &a, &b, &c, &d);
    return (d >> 27) & 1;
}

static inline void wrmsr(uint32_t index, uint64_t value)
{
    __asm__ volatile("wrmsr" ::"c"(index), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)));
}

BREAKABLE uint64_t read_tsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

BREAKABLE uint64_t read_tscp(uint32_t *aux)
{
    uint32_t lo, hi, c;
    __asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(c));
    *aux = c;
    return ((uint64_t)hi << 32) | lo;
}

/* Knuth's MMIX LCG, `rounds` times: something to measure. */
BREAKABLE uint64_t work(uint64_t x, unsigned rounds)
{
    for (unsigned i = 0; i < rounds; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    (void)mb_magic;
    (void)mbi;
    unsigned reads = (unsigned)cmdline_get_u64("reads", READS);
    int tscp = has_rdtscp();
    unsigned bad_aux = 0;

    if (tscp)
        wrmsr(IA32_TSC_AUX, TSC_AUX);
    kprintf("tsc: %u reads, rdtscp %s\n", reads, tscp ? "too" : "not offered by CPUID");

    uint64_t previous = read_tsc();
    uint64_t min = ~0ull, max = 0, total = 0;
    uint64_t hash = 0xcbf29ce484222325ull;
    for (unsigned i = 0; i < reads; i++) {
        sink = work(sink, 64 + (i % 7) * 32);
        uint64_t now;
        if (tscp && (i & 1)) {
            uint32_t aux;
            now = read_tscp(&aux);
            bad_aux += aux != TSC_AUX;
        } else {
            now = read_tsc();
        }
        uint64_t delta = now - previous;
        previous = now;
        if (delta < min)
            min = delta;
        if (delta > max)
            max = delta;
        total += delta;
        hash = (hash ^ delta) * 0x100000001b3ull;
    }
    kprintf("tsc: delta min %lu max %lu total %lu\n", min, max, total);
    kprintf("tsc: hash of the deltas 0x%lx, work 0x%lx\n", hash, sink);
    if (tscp)
        kprintf("tsc: rdtscp aux %s\n", bad_aux ? "WRONG" : "42 every time");
    exit(bad_aux ? 1 : 0);
}
