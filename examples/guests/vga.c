/*
 * vga - a guest that boots like a kernel for real PCs: it carries a
 * multiboot2 header next to the v1 one, takes a multiboot module, reads the
 * BIOS data area and writes to the VGA text screen at 0xB8000, moving the
 * hardware cursor through the CRT controller (ports 0x3D4/0x3D5).
 *
 * Booted by multiboot v1 (QEMU's -kernel, lore-dbg by default) or multiboot2
 * (lore-dbg --multiboot2), it finds the first module and its command line in
 * either protocol's information, checksums the module (FNV-1a) and shows the
 * same report on the screen and on COM1. Exit status 0 (QEMU: 1) when the
 * BIOS data area says what a PC's says and a module was given; EXIT_FAIL
 * otherwise.
 *
 * Output is deterministic for a given module.
 */
#include "lib.h"

/* ---- the multiboot2 header (the v1 header is in boot.S) ---- */
#define MB2_HEADER_MAGIC 0xE85250D6
__asm__(
    "    .section .multiboot2, \"a\"\n"
    "    .align 8\n"
    "mb2_header:\n"
    "    .long 0xE85250D6, 0, mb2_header_end - mb2_header\n"
    "    .long -(0xE85250D6 + (mb2_header_end - mb2_header))\n"
    /* information request (required): command line, module, mmap, framebuffer */
    "    .word 1, 0\n"
    "    .long 24\n"
    "    .long 1, 3, 6, 8\n"
    /* address tag: load the file as it is linked (the a.out kludge) */
    "    .word 2, 0\n"
    "    .long 24\n"
    "    .long mb2_header, __image_start, __load_end, __bss_end\n"
    /* entry address tag */
    "    .word 3, 0\n"
    "    .long 12\n"
    "    .long _start\n"
    "    .long 0\n"
    /* framebuffer tag (optional): text is fine */
    "    .word 5, 1\n"
    "    .long 20\n"
    "    .long 80, 25, 0\n"
    "    .long 0\n"
    /* module alignment */
    "    .word 6, 0\n"
    "    .long 8\n"
    /* end */
    "    .word 0, 0\n"
    "    .long 8\n"
    "mb2_header_end:\n"
    "    .text\n");

/* ---- multiboot information, either protocol ---- */
#define MB_INFO_MODULES     (1u << 3)
#define MB_INFO_FRAMEBUFFER (1u << 12)
#define MB2_TAG_END         0
#define MB2_TAG_MODULE      3
#define MB2_TAG_FRAMEBUFFER 8

struct boot_facts {
    const char *protocol;
    uint32_t module_start, module_end;
    const char *module_cmdline;
    uint64_t screen;            /* text screen address, from the loader */
};

struct mb_module {
    uint32_t start, end, string, reserved;
};

static void facts_v1(const struct mb_info *mbi, struct boot_facts *facts)
{
    facts->protocol = "multiboot";
    if ((mbi->flags & MB_INFO_MODULES) && mbi->mods_count > 0) {
        const struct mb_module *module = (const void *)(uintptr_t)mbi->mods_addr;
        facts->module_start = module->start;
        facts->module_end = module->end;
        facts->module_cmdline = (const char *)(uintptr_t)module->string;
    }
    if (mbi->flags & MB_INFO_FRAMEBUFFER)
        facts->screen = *(const uint64_t *)((const uint8_t *)mbi + 88);
}

static void facts_v2(const uint8_t *tags, struct boot_facts *facts)
{
    facts->protocol = "multiboot2";
    uint32_t total = *(const uint32_t *)tags;
    for (uint32_t at = 8; at + 8 <= total;) {
        const uint32_t *tag = (const uint32_t *)(tags + at);
        if (tag[0] == MB2_TAG_END)
            break;
        if (tag[0] == MB2_TAG_MODULE && !facts->module_cmdline) {
            facts->module_start = tag[2];
            facts->module_end = tag[3];
            facts->module_cmdline = (const char *)&tag[4];
        }
        if (tag[0] == MB2_TAG_FRAMEBUFFER)
            facts->screen = *(const uint64_t *)&tag[2];
        at += (tag[1] + 7) & ~7u;
    }
}

/* ---- the text screen ---- */
#define COLUMNS 80
#define ROWS 25
static volatile uint16_t *screen;
static int row, column;

static void set_cursor(void)
{
    uint16_t cell = (uint16_t)(row * COLUMNS + column);
    outb(0x3d4, 0x0e);
    outb(0x3d5, (uint8_t)(cell >> 8));
    outb(0x3d4, 0x0f);
    outb(0x3d5, (uint8_t)cell);
}

static void screen_clear(uint8_t attribute)
{
    for (int i = 0; i < COLUMNS * ROWS; i++)
        screen[i] = (uint16_t)(attribute << 8 | ' ');
    row = column = 0;
}

static void screen_puts(const char *s, uint8_t attribute)
{
    for (; *s; s++) {
        if (*s == '\n' || column == COLUMNS) {
            row++;
            column = 0;
            if (*s == '\n')
                continue;
        }
        if (row == ROWS) {
            /* Scroll by copying, as a kernel without hardware scrolling does. */
            for (int i = 0; i < COLUMNS * (ROWS - 1); i++)
                screen[i] = screen[i + COLUMNS];
            for (int i = 0; i < COLUMNS; i++)
                screen[(ROWS - 1) * COLUMNS + i] = (uint16_t)(0x07 << 8 | ' ');
            row = ROWS - 1;
        }
        screen[row * COLUMNS + column++] = (uint16_t)(attribute << 8 | (uint8_t)*s);
    }
    set_cursor();
}

/* Shows a line on the screen and on COM1. */
static void report(uint8_t attribute, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static char line[160];
static size_t line_len;

static void line_putc(char c)
{
    if (line_len + 1 < sizeof(line))
        line[line_len++] = c;
}

static void report(uint8_t attribute, const char *fmt, ...)
{
    /* Format with kvprintf into COM1, and again by hand into `line` for the
     * screen: the library prints only to the serial port. */
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    line_len = 0;
    va_start(ap, fmt);
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            line_putc(*p);
            continue;
        }
        p++;
        if (*p == 's') {
            for (const char *s = va_arg(ap, const char *); *s; s++)
                line_putc(*s);
        } else if (*p == 'u') {
            char digits[24];
            int n = 0;
            unsigned v = va_arg(ap, unsigned);
            do {
                digits[n++] = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            while (n)
                line_putc(digits[--n]);
        } else if (*p == 'x') {
            unsigned v = va_arg(ap, unsigned);
            for (int shift = 28; shift >= 0; shift -= 4) {
                unsigned digit = (v >> shift) & 0xf;
                if (digit || shift == 0 || (v >> shift))
                    line_putc("0123456789abcdef"[digit]);
            }
        }
    }
    va_end(ap);
    line[line_len] = 0;
    screen_puts(line, attribute);
}

static uint16_t bda_word(uintptr_t address)
{
    return *(volatile const uint16_t *)address;
}

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    struct boot_facts facts = {0};
    facts.screen = 0xb8000;
    if (mb_magic == MB2_BOOT_MAGIC)
        facts_v2((const uint8_t *)mbi, &facts);
    else if (mb_magic == MB_BOOT_MAGIC)
        facts_v1(mbi, &facts);
    else
        return EXIT_BAD_MAGIC;
    screen = (volatile uint16_t *)(uintptr_t)facts.screen;

    screen_clear(0x1f);
    report(0x1e, "lore-dbg VGA guest, booted by %s\n", facts.protocol);
    uint16_t base_kib = bda_word(0x413), ebda = bda_word(0x40e), com1 = bda_word(0x400);
    report(0x1f, "BIOS data area: %u KiB base memory, EBDA at 0x%x, COM1 at 0x%x\n",
           (unsigned)base_kib, (unsigned)ebda << 4, (unsigned)com1);
    int ok = base_kib == 639 && ebda == 0x9fc0 && com1 == 0x3f8;

    if (facts.module_cmdline) {
        uint64_t hash = 0xcbf29ce484222325ull;
        const uint8_t *bytes = (const uint8_t *)(uintptr_t)facts.module_start;
        size_t len = facts.module_end - facts.module_start;
        for (size_t i = 0; i < len; i++)
            hash = (hash ^ bytes[i]) * 0x100000001b3ull;
        report(0x1f, "module '%s': %u bytes, fnv 0x%x\n", facts.module_cmdline,
               (unsigned)len, (unsigned)(hash ^ (hash >> 32)));
        /* The module's first line, as text. */
        char first[64];
        size_t n = 0;
        while (n < len && n + 1 < sizeof(first) && bytes[n] != '\n')
            first[n] = (char)bytes[n], n++;
        first[n] = 0;
        report(0x1a, "module says: %s\n", first);
    } else {
        report(0x4f, "no module given\n");
        ok = 0;
    }
    report(ok ? 0x2f : 0x4f, "%s\n", ok ? "all checks passed" : "CHECKS FAILED");
    return ok ? EXIT_OK : EXIT_FAIL;
}
