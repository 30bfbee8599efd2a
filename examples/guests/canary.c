/*
 * canary - compute's workload with a realistic memory-corruption bug, the
 * reverse-debugging demo.
 *
 * Each of 8 rounds (`rounds=N` on the command line: N) fills a record into a
 * fixed 2048-word buffer and terminates it with an end marker. The length is
 * clamped to the capacity, but the end marker is written at records[len]:
 * when a round's length equals the capacity (round 5) the marker lands one
 * element past the end of the buffer - on `canary`, the global placed right
 * after it (the linker script orders the two sections; main() checks it).
 *
 * At the end the canary no longer holds its initial 0xc0ffeec0ffeec0ff.
 * To find the culprit: run to the end, `watch canary`, `reverse-continue`:
 * gdb stops in fill_round on the line marked BUG below, in round 5.
 * Output is fully deterministic.
 */
#include "lib.h"

#define ROUNDS          8               /* default; `rounds=N` on the command line */
#define BUF_WORDS       2048                    /* 16 KiB */
#define CANARY_INIT     0xc0ffeec0ffeec0ffull
#define RECORD_END      0x00000000deadbeefull   /* end-of-record marker */

/* Order guaranteed by link.ld: records, then canary, nothing in between. */
__attribute__((section(".data.canary_zone.0"), aligned(64)))
uint64_t records[BUF_WORDS];
__attribute__((section(".data.canary_zone.1"), aligned(8)))
volatile uint64_t canary = CANARY_INIT;

uint64_t last_hash;
unsigned round_no;

static inline uint64_t lcg_next(uint64_t x)
{
    return x * 6364136223846793005ull + 1442695040888963407ull;
}

/* Round r uses (r*3 % 8 + 1) eighths of the buffer: 1,4,7,2,5,8,3,6; 7 for the 8s after round 5. */
static size_t round_length(unsigned r)
{
    return (BUF_WORDS / 8) * ((r * 3) % 8 + 1 - (r > 5 && (r * 3) % 8 == 7));
}

/*
 * Fills rec[0..len) from the LCG and terminates the record with RECORD_END.
 * Returns the number of words filled.
 */
BREAKABLE size_t fill_round(uint64_t *rec, size_t cap, size_t len, uint64_t seed)
{
    if (len > cap)
        len = cap;
    uint64_t x = seed;
    for (size_t i = 0; i < len; i++) {
        x = lcg_next(x);
        rec[i] = x ^ (x >> 29);
    }
    rec[len] = RECORD_END;      /* BUG: off by one when len == cap */
    return len;
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

    /* The demo only works if the canary really follows the buffer. */
    uintptr_t end = (uintptr_t)&records[BUF_WORDS];
    uintptr_t where = (uintptr_t)&canary;
    __asm__("" : "+r"(end), "+r"(where));       /* no folding by the compiler */
    if (end != where) {
        kprintf("canary: layout error: records end 0x%lx, canary at 0x%lx\n",
                (uint64_t)end, (uint64_t)where);
        return EXIT_FAIL;
    }

    unsigned rounds = (unsigned)cmdline_get_u64("rounds", ROUNDS);
    kprintf("canary: %d rounds, buffer of %d words, canary = 0x%016lx\n",
            (int)rounds, BUF_WORDS, canary);
    uint64_t seed = 1;
    for (round_no = 0; round_no < rounds; round_no++) {
        size_t words = fill_round(records, BUF_WORDS, round_length(round_no), seed);
        last_hash = hash_buffer(records, words);
        kprintf("round %u words %lu hash 0x%016lx\n", round_no, (uint64_t)words, last_hash);
        seed = last_hash ^ round_no;
    }

    uint64_t value = canary;
    kprintf("canary = 0x%016lx (%s)\n", value, value == CANARY_INIT ? "intact" : "CORRUPTED");
    return 0;
}
