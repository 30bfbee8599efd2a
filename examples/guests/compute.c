/*
 * compute - a deterministic workload with memory writes, interrupted by a
 * 100 Hz timer: 8 rounds of filling a 16 KiB buffer from an LCG
 * (fill_round) and hashing it with FNV-1a over 64-bit words (hash_buffer).
 * Each round's seed comes from the previous round's hash, so any divergence
 * shows in every later line.
 *
 * While it computes, PIT channel 0 raises IRQ 0 at 100 Hz and timer_irq
 * counts the interrupts in `ticks` (isr_dispatch sends the EOI). The
 * interrupts land at arbitrary instructions of fill_round / hash_buffer,
 * which is what recording and replaying this guest exercises. The handler
 * touches nothing but `ticks`, so the printed output is still fully
 * deterministic; the tick count depends on the CPU's speed and is never
 * printed.
 *
 * The multiboot command line `rounds=N` runs N rounds instead of 8 (a longer
 * history for `cargo xtask revbench`); without it the output is unchanged.
 *
 * Debugging hooks: break on fill_round / hash_buffer / timer_irq; watch
 * last_hash (written once per round), `ticks`, or any word of `buffer`.
 */
#include "lib.h"

#define ROUNDS      8                 /* default; `rounds=N` on the command line */
#define BUF_BYTES   16384
#define BUF_WORDS   (BUF_BYTES / sizeof(uint64_t))
#define TIMER_HZ    100

uint64_t buffer[BUF_WORDS];
uint64_t last_hash;
unsigned round_no;
volatile uint64_t ticks;                /* written only by timer_irq; never printed */

/* IRQ 0: count the tick; isr_dispatch sends the EOI after we return. */
BREAKABLE struct frame *timer_irq(struct frame *f)
{
    ticks++;
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

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    (void)mb_magic;
    (void)mbi;
    uint64_t seed = 1;
    unsigned rounds = (unsigned)cmdline_get_u64("rounds", ROUNDS);

    pic_remap();
    irq_set_handler(0, timer_irq);
    pit_set_hz(TIMER_HZ);
    pic_unmask(0);
    sti();

    kprintf("compute: %d rounds over a %d-byte buffer\n", (int)rounds, BUF_BYTES);
    for (round_no = 0; round_no < rounds; round_no++) {
        fill_round(buffer, BUF_WORDS, seed);
        last_hash = hash_buffer(buffer, BUF_WORDS);
        kprintf("round %u hash 0x%016lx\n", round_no, last_hash);
        seed = last_hash ^ round_no;
    }

    cli();
    pic_mask(0);
    kprintf("compute: done, final hash 0x%016lx\n", last_hash);
    return 0;
}
