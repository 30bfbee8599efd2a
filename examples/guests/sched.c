/*
 * sched - preemptive round-robin multitasking driven by the timer.
 *
 * Three tasks (A, B, C), each on its own stack, loop: do some computation,
 * then append their letter to a shared log. IRQ 0 (PIT at 1000 Hz) enters
 * timer_irq, which calls schedule(): it saves the interrupted task's frame
 * and returns the next task's frame, which isr.S restores (a stack switch).
 * The printed interleaving depends on exactly where each interrupt lands,
 * so it differs between runs - and must be identical in a replay.
 *
 * The amount of computation between appends is calibrated at start-up
 * (work units per tick, averaged over 4 ticks, / 4), so that every time slice holds a few
 * appends whether the CPU is fast (QEMU TCG) or slow (emulated ring 0,
 * ~1-2 M instructions/s). The run ends when the log holds LOG_LEN entries.
 *
 * Debugging hooks: break on schedule / timer_irq / log_append / task_main;
 * watch log_len or switches.
 */
#include "lib.h"

#define TIMER_HZ    1000
#define NTASKS      3
#define LOG_LEN     128
#define STACK_SIZE  4096
#define MAX_UNITS   (1u << 24)
#define CALIBRATE_TICKS 4

struct task {
    struct frame *frame;        /* saved state while not running */
    uint64_t acc;               /* result of the task's computation */
    char name;
};

/* tasks[0] is main (the boot context); tasks[1..NTASKS] are A, B, C. */
struct task tasks[NTASKS + 1];
static uint8_t task_stacks[NTASKS][STACK_SIZE] __attribute__((aligned(16)));

volatile int current;           /* index into tasks[] */
volatile int sched_running;
volatile uint64_t ticks;
volatile uint64_t switches;
volatile unsigned log_len;
volatile char sched_log[LOG_LEN];
unsigned units_per_append = 1;

/* One unit of computation: 16 LCG steps. */
static uint64_t work(uint64_t x, unsigned units)
{
    for (unsigned u = 0; u < units; u++)
        for (int i = 0; i < 16; i++)
            x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}

/* Picks the next task and returns the frame to resume. Called with IF=0. */
BREAKABLE struct frame *schedule(struct frame *f)
{
    tasks[current].frame = f;
    int next;
    if (log_len >= LOG_LEN)
        next = 0;                               /* done: back to main */
    else
        next = current % NTASKS + 1;            /* 0->1, 1->2, 2->3, 3->1 */
    if (next != current)
        switches++;
    current = next;
    return tasks[next].frame;
}

BREAKABLE struct frame *timer_irq(struct frame *f)
{
    ticks++;
    if (!sched_running)
        return f;
    return schedule(f);
}

/* Appends `c` to the log; returns 0 once the log is full. */
BREAKABLE int log_append(char c)
{
    uint64_t flags = irq_save();
    int ok = log_len < LOG_LEN;
    if (ok) {
        sched_log[log_len] = c;
        log_len = log_len + 1;
    }
    irq_restore(flags);
    return ok;
}

BREAKABLE void task_main(int id)
{
    struct task *t = &tasks[id];
    uint64_t x = (uint64_t)id;
    for (;;) {
        x = work(x, units_per_append);
        t->acc = x;
        if (!log_append(t->name))
            break;
    }
    for (;;)                                    /* wait to be switched away */
        hlt();
}

static void task_exit(void)
{
    puts("sched: task returned\n");
    exit(EXIT_FAIL);
}

/* Builds an interrupt frame on the task's stack that "returns" into task_main(id). */
static void task_create(int id, char name)
{
    uint64_t top = (uint64_t)(uintptr_t)&task_stacks[id - 1][STACK_SIZE];
    uint64_t *ret = (uint64_t *)(uintptr_t)(top - 16);
    ret[0] = (uint64_t)(uintptr_t)task_exit;    /* return address: rsp = 8 mod 16 */
    struct frame *f = (struct frame *)(uintptr_t)(top - 64 - sizeof(struct frame));
    memset(f, 0, sizeof(*f));
    f->rdi = (uint64_t)id;
    f->rip = (uint64_t)(uintptr_t)task_main;
    f->cs = KERNEL_CS;
    f->rflags = 0x202;                          /* IF */
    f->rsp = (uint64_t)(uintptr_t)ret;
    f->ss = KERNEL_DS;
    tasks[id].frame = f;
    tasks[id].name = name;
}

/* Counts work units done per timer tick, averaged over CALIBRATE_TICKS ticks. */
static unsigned calibrate(void)
{
    uint64_t t0 = ticks;
    while (ticks == t0)                         /* align to a tick edge */
        hlt();
    uint64_t end = ticks + CALIBRATE_TICKS;
    unsigned units = 0;
    uint64_t x = 1;
    while (ticks < end && units < MAX_UNITS) {
        x = work(x, 1);
        units++;
    }
    tasks[0].acc = x;
    return units / CALIBRATE_TICKS;
}

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    (void)mb_magic;
    (void)mbi;
    tasks[0].name = 'M';
    for (int id = 1; id <= NTASKS; id++)
        task_create(id, (char)('A' + id - 1));

    pic_remap();
    irq_set_handler(0, timer_irq);
    pit_set_hz(TIMER_HZ);
    pic_unmask(0);
    sti();

    unsigned per_tick = calibrate();
    units_per_append = per_tick / 4 ? per_tick / 4 : 1;
    kprintf("sched: %d tasks, PIT %d Hz, log of %d entries\n", NTASKS, TIMER_HZ, LOG_LEN);

    sched_running = 1;
    while (log_len < LOG_LEN)                   /* the first tick switches to A */
        hlt();
    cli();
    sched_running = 0;

    unsigned count[NTASKS + 1] = { 0 };
    for (int i = 0; i < LOG_LEN; i++) {
        if (i % 64 == 0)
            puts("log: ");
        serial_putc(sched_log[i]);
        if (i % 64 == 63 || i == LOG_LEN - 1)
            puts("\n");
        count[sched_log[i] - 'A' + 1]++;
    }
    kprintf("appends: A=%u B=%u C=%u\n", count[1], count[2], count[3]);
    kprintf("calibration: %u units/tick, %u units/append; switches: %lu\n",
            per_tick, units_per_append, switches);
    puts("sched: done\n");
    return 0;
}
