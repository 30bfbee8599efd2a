/*
 * timer - the PIT and the PIC: IRQ 0 at 100 Hz counts ticks, first while
 * the CPU idles in HLT, then while it spins in a busy loop that watches
 * the tick counter.
 *
 * Demonstrates: PIC remap, PIT channel 0 mode 2, interrupt delivery
 * both into HLT and into running code, EOI. The number of busy-loop
 * iterations depends on where the interrupts land (non-deterministic
 * between runs; replay must reproduce it exactly).
 */
#include "lib.h"

#define TIMER_HZ    100
#define IDLE_TICKS  10
#define BUSY_TICKS  10

volatile uint64_t ticks;                /* written only by timer_irq */

BREAKABLE struct frame *timer_irq(struct frame *f)
{
    ticks++;
    return f;
}

/* Spin until `n` more ticks have arrived; returns the number of iterations. */
BREAKABLE uint64_t busy_wait_ticks(uint64_t n)
{
    uint64_t end = ticks + n;
    uint64_t iterations = 0;
    while (ticks < end)
        iterations++;
    return iterations;
}

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    (void)mb_magic;
    (void)mbi;
    pic_remap();
    irq_set_handler(0, timer_irq);
    uint16_t div = pit_set_hz(TIMER_HZ);
    kprintf("timer: PIT channel 0 at %u Hz (divisor %u)\n", TIMER_HZ, div);
    pic_unmask(0);
    sti();

    uint64_t wakeups = 0;
    while (ticks < IDLE_TICKS) {
        hlt();
        wakeups++;
    }
    kprintf("idle: %lu ticks, %lu hlt wakeups\n", ticks, wakeups);

    uint64_t start = ticks;
    uint64_t iterations = busy_wait_ticks(BUSY_TICKS);
    kprintf("busy: %lu ticks, %lu loop iterations\n", ticks - start, iterations);

    cli();
    pic_mask(0);
    puts("timer: done\n");
    return 0;
}
