/*
 * crunch - long computation under a 100 Hz timer with no exits between rounds:
 * the shape of a kernel that computes while its tick runs. Each round fills a
 * 16 KiB buffer from an LCG, mixes it in place three times (a nested loop
 * with a data-dependent branch) and folds it into a running digest; nothing is
 * printed until all rounds are done, so the only exits while it computes are
 * the timer interrupt's EOI. Every timer interrupt therefore lands on an
 * arbitrary instruction of a hot loop, which is what replay must find again.
 *
 * The command line `rounds=N` runs N rounds instead of 6.
 *
 * Debugging hooks: break on mix_pass / fold; watch `digest` (written once per
 * round) or `ticks` (written by the timer handler only).
 */
#include "lib.h"

#define ROUNDS      6
#define BUF_WORDS   (16384 / sizeof(uint64_t))
#define PASSES      3
#define TIMER_HZ    100

uint64_t buffer[BUF_WORDS];
uint64_t digest;
volatile uint64_t ticks;

BREAKABLE struct frame *timer_irq(struct frame *f)
{
    ticks++;
    return f;
}

BREAKABLE void fill(uint64_t *buf, size_t words, uint64_t seed)
{
    uint64_t x = seed;
    for (size_t i = 0; i < words; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = x ^ (x >> 31);
    }
}

/* One pass: each word absorbs its left neighbour; odd words rotate. */
BREAKABLE void mix_pass(uint64_t *buf, size_t words, unsigned pass)
{
    for (size_t i = 1; i < words; i++) {
        uint64_t v = buf[i] + (buf[i - 1] ^ pass);
        if (v & 1)
            v = (v << 13) | (v >> 51);
        buf[i] = v;
    }
}

BREAKABLE uint64_t fold(const uint64_t *buf, size_t words, uint64_t h)
{
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
    unsigned rounds = (unsigned)cmdline_get_u64("rounds", ROUNDS);

    pic_remap();
    irq_set_handler(0, timer_irq);
    pit_set_hz(TIMER_HZ);
    pic_unmask(0);
    sti();

    kprintf("crunch: %d rounds\n", (int)rounds);
    digest = 0xcbf29ce484222325ull;
    for (unsigned round = 0; round < rounds; round++) {
        fill(buffer, BUF_WORDS, digest ^ round);
        for (unsigned pass = 0; pass < PASSES; pass++)
            mix_pass(buffer, BUF_WORDS, pass);
        digest = fold(buffer, BUF_WORDS, digest);
    }

    cli();
    pic_mask(0);
    kprintf("crunch: digest 0x%016lx\n", digest);
    return 0;
}
