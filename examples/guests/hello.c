/*
 * hello - the smallest guest: boots, prints a greeting and exits with the
 * status given on the multiboot command line as `status=N` (default 0).
 *
 * Demonstrates: the multiboot boot path, COM1 output, the command line,
 * isa-debug-exit. Output is fully deterministic.
 */
#include "lib.h"

static const char *const greeting[] = {
    "Hello from a lore-dbg guest!",
    "Booted by multiboot, running in 64-bit long mode, ring 0.",
};

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    (void)mbi;
    for (size_t i = 0; i < sizeof(greeting) / sizeof(greeting[0]); i++) {
        puts(greeting[i]);
        puts("\n");
    }
    if (mb_magic != MB_BOOT_MAGIC)
        return EXIT_BAD_MAGIC;
    int status = (int)cmdline_get_u64("status", 0);
    kprintf("exit status %d\n", status);
    return status;
}
