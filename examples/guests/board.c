/*
 * board - the parts of the PC that a Linux kernel leans on beyond the PIC, PIT,
 * UART and RTC, one per run, chosen by `test=NAME` on the command line:
 *
 *   int3      an `int3` in ring 0, caught by a #BP gate of its own whose
 *             handler notes the return address of the frame; prints it and how
 *             often the handler ran (KVM's emulator on our hosts cannot run
 *             `int3` in ring 0, and lore-dbg raises the #BP itself); status 0
 *             when the frame points just past the `int3`, exactly once
 *   fwait     `fninit; fwait` in ring 0: KVM's emulator on our hosts cannot
 *             run `fwait`, which lore-dbg skips where no x87 exception is pending
 *   cx16      a `cmpxchg16b` in ring 0, which KVM's emulator on our hosts
 *             cannot run: lore-dbg names it and what avoids it
 *   reboot    waits for the keyboard controller's input buffer to empty, as
 *             Linux's kb_wait() does, then pulses its reset line (0xFE to port
 *             0x64): the run ends with status 0, as qemu -no-reboot does
 *   cpuid     prints the CPUID feature bits the guest sees (leaves 1, 7 and
 *             0x80000001), and whether CX16, POPCNT, XSAVE and SMAP are offered
 *   poweroff  finds the ACPI RSDP by scanning the BIOS area 0xE0000-0xFFFFF as
 *             Linux does, checks every checksum on the way to the FADT, reads
 *             the sleep type of \_S5 from the DSDT's AML and writes it with
 *             SLP_EN to the FADT's PM1a control register, as ACPICA does: the
 *             machine powers off and the run ends with status 0
 *
 * Without `test=`, or where the machine does not do what is asked, it exits
 * through isa-debug-exit with a status that says what went wrong.
 */
#include "lib.h"

#define STR_(x) #x
#define STR(x) STR_(x)

/* ------------------------------------------------------------------ */
/* int3                                                                */

uint64_t bp_return;     /* the rip of the last #BP frame */
uint64_t bp_hits;       /* how often the #BP handler ran */
extern char int3_at[], after_int3[], bp_entry[];

/* The #BP gate: note the frame's rip, count, return. */
__asm__(".text\n"
        ".global bp_entry\n"
        "bp_entry:\n"
        "    pushq %rax\n"
        "    movq 8(%rsp), %rax\n"          /* the frame's rip */
        "    movq %rax, bp_return(%rip)\n"
        "    incq bp_hits(%rip)\n"
        "    popq %rax\n"
        "    iretq\n");

static void set_gate(int vector, void *handler)
{
    struct desc_ptr p;
    __asm__ volatile("sidt %0" : "=m"(p));
    struct idt_entry *g = &((struct idt_entry *)(uintptr_t)p.base)[vector];
    uint64_t a = (uint64_t)(uintptr_t)handler;
    g->offset_lo = (uint16_t)a;
    g->offset_mid = (uint16_t)(a >> 16);
    g->offset_hi = (uint32_t)(a >> 32);
}

static int test_int3(void)
{
    set_gate(3, bp_entry);
    __asm__ volatile(".global int3_at\n"
                     "int3_at: int3\n"
                     ".global after_int3\n"
                     "after_int3:\n" ::: "memory");
    kprintf("int3: at %p, #BP returned to %p (the next instruction: %p), handler ran %lu time(s)\n",
            (void *)int3_at, (void *)bp_return, (void *)after_int3, bp_hits);
    return bp_return == (uint64_t)(uintptr_t)after_int3 && bp_hits == 1 ? 0 : 10;
}

/* ------------------------------------------------------------------ */
/* fwait                                                               */

static int test_fwait(void)
{
    uint16_t status = 0xffff;
    /* No x87 exception pending after fninit: fwait does nothing. */
    __asm__ volatile("fninit\n\tfwait\n\tfnstsw %0" : "=m"(status) :: "memory");
    kprintf("fwait: done, x87 status word 0x%x\n", status);
    return status == 0 ? 0 : 13;
}

/* ------------------------------------------------------------------ */
/* cx16                                                                */

static int test_cx16(void)
{
    static uint64_t pair[2] __attribute__((aligned(16))) = { 1, 2 };
    uint64_t lo = 1, hi = 2;
    uint8_t swapped;
    __asm__ volatile("lock cmpxchg16b %1\n\tsete %0"
                     : "=q"(swapped), "+m"(pair), "+a"(lo), "+d"(hi)
                     : "b"((uint64_t)3), "c"((uint64_t)4)
                     : "memory", "cc");
    kprintf("cx16: cmpxchg16b %s, pair = {%lu, %lu}\n", swapped ? "swapped" : "did not swap",
            pair[0], pair[1]);
    return swapped ? 0 : 11;
}

/* ------------------------------------------------------------------ */
/* reboot                                                              */

static int test_reboot(void)
{
    unsigned spins = 0;
    while ((inb(0x64) & 0x02) && spins < 0x10000)     /* kb_wait() */
        spins++;
    kprintf("reboot: keyboard controller status 0x%x after %u waits; pulsing reset\n",
            inb(0x64), spins);
    outb(0x64, 0xfe);
    puts("reboot: still running after the reset pulse\n");
    return 12;
}

/* ------------------------------------------------------------------ */
/* poweroff                                                            */

struct sdt_header {
    char signature[4];
    uint32_t length;
    uint8_t revision;
    uint8_t checksum;
    char oem_id[6];
    char oem_table_id[8];
    uint32_t oem_revision;
    uint32_t creator_id;
    uint32_t creator_revision;
} __attribute__((packed));

static uint8_t sum(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint8_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += b[i];
    return s;
}

static const struct sdt_header *table(uint64_t address, const char *signature)
{
    const struct sdt_header *h = (const struct sdt_header *)(uintptr_t)address;
    if (memcmp(h->signature, signature, 4) != 0) {
        kprintf("poweroff: no %s at 0x%lx\n", signature, address);
        return 0;
    }
    if (sum(h, h->length) != 0) {
        kprintf("poweroff: bad checksum in %s\n", signature);
        return 0;
    }
    kprintf("poweroff: %s at 0x%lx, %u bytes, revision %u\n", signature, address, h->length,
            h->revision);
    return h;
}

/* The SLP_TYPa of \_S5: `Name (_S5_, Package () { a, ... })` in the AML. */
static int s5_sleep_type(const struct sdt_header *dsdt)
{
    const uint8_t *aml = (const uint8_t *)(dsdt + 1);
    size_t n = dsdt->length - sizeof(*dsdt);
    for (size_t i = 0; i + 8 < n; i++) {
        if (aml[i] != 0x08 || memcmp(&aml[i + 1], "_S5_", 4) != 0 || aml[i + 5] != 0x12)
            continue;
        const uint8_t *element = &aml[i + 8];   /* after PkgLength (1 byte), NumElements */
        switch (element[0]) {
        case 0x00: return 0;                    /* ZeroOp */
        case 0x01: return 1;                    /* OneOp */
        case 0x0a: return element[1];           /* BytePrefix */
        default: return element[0] < 0x0a ? element[0] : -1;
        }
    }
    return -1;
}

static int test_poweroff(void)
{
    uint64_t rsdp = 0;
    for (uint64_t at = 0xe0000; at < 0x100000; at += 16) {
        if (memcmp((const void *)(uintptr_t)at, "RSD PTR ", 8) == 0 &&
            sum((const void *)(uintptr_t)at, 20) == 0) {
            rsdp = at;
            break;
        }
    }
    if (!rsdp) {
        puts("poweroff: no RSDP in 0xe0000-0xfffff\n");
        return 20;
    }
    const uint8_t *r = (const uint8_t *)(uintptr_t)rsdp;
    uint32_t length;
    uint64_t xsdt_address;
    memcpy(&length, r + 20, 4);
    memcpy(&xsdt_address, r + 24, 8);
    char oem[7] = { 0 };
    memcpy(oem, r + 9, 6);
    kprintf("poweroff: RSDP at 0x%lx, revision %u, OEM %s\n", rsdp, r[15], oem);
    if (r[15] < 2 || sum(r, length) != 0) {
        puts("poweroff: the RSDP's extended checksum is wrong\n");
        return 21;
    }
    const struct sdt_header *xsdt = table(xsdt_address, "XSDT");
    if (!xsdt)
        return 22;
    const struct sdt_header *fadt = 0;
    size_t entries = (xsdt->length - sizeof(*xsdt)) / 8;
    for (size_t i = 0; i < entries; i++) {
        uint64_t entry;
        memcpy(&entry, (const uint8_t *)(xsdt + 1) + 8 * i, 8);
        if (memcmp((const void *)(uintptr_t)entry, "FACP", 4) == 0)
            fadt = table(entry, "FACP");
    }
    if (!fadt)
        return 23;
    const uint8_t *f = (const uint8_t *)fadt;
    uint32_t flags, pm1a_event, pm1a_control;
    uint64_t dsdt_address;
    memcpy(&pm1a_event, f + 56, 4);
    memcpy(&pm1a_control, f + 64, 4);
    memcpy(&flags, f + 112, 4);
    memcpy(&dsdt_address, f + 140, 8);
    kprintf("poweroff: FADT flags 0x%x, SMI_CMD %u, PM1a event block port 0x%x (%u bytes), "
            "control port 0x%x (%u bytes)\n",
            flags, f[48], pm1a_event, f[88], pm1a_control, f[89]);
    if (!pm1a_control || f[89] != 2)
        return 24;
    const struct sdt_header *dsdt = table(dsdt_address, "DSDT");
    if (!dsdt)
        return 25;
    int slp_typ = s5_sleep_type(dsdt);
    if (slp_typ < 0)
        return 26;
    /* As ACPICA: clear WAK_STS, write the sleep type, then the type with SLP_EN. */
    uint16_t control = (uint16_t)((inw((uint16_t)pm1a_control) & ~0x3c00) | (slp_typ << 10));
    kprintf("poweroff: \\_S5 sleep type %d; writing 0x%x to port 0x%x\n", slp_typ,
            control | 0x2000, pm1a_control);
    outw((uint16_t)(pm1a_event), 0x8000);
    outw((uint16_t)pm1a_control, control);
    outw((uint16_t)pm1a_control, control | 0x2000);
    puts("poweroff: still running after the sleep request\n");
    return 27;
}

/* ------------------------------------------------------------------ */
/* cpuid                                                               */

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static int test_cpuid(void)
{
    uint32_t l1[4], l7[4], e1[4];
    cpuid(1, 0, l1);
    cpuid(7, 0, l7);
    cpuid(0x80000001, 0, e1);
    kprintf("cpuid: leaf 1 ecx 0x%x edx 0x%x; leaf 7 ebx 0x%x ecx 0x%x; leaf 0x80000001 ecx 0x%x edx 0x%x\n",
            l1[2], l1[3], l7[1], l7[2], e1[2], e1[3]);
    kprintf("cpuid: cx16 %u popcnt %u xsave %u smap %u\n", (l1[2] >> 13) & 1, (l1[2] >> 23) & 1,
            (l1[2] >> 26) & 1, (l7[1] >> 20) & 1);
    return 0;
}

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    (void)mbi;
    if (mb_magic != MB_BOOT_MAGIC)
        return EXIT_BAD_MAGIC;
    char test[16];
    if (cmdline_get("test", test, sizeof(test)) < 0) {
        puts("board: give test=int3|fwait|cx16|cpuid|reboot|poweroff\n");
        return 2;
    }
    if (strcmp(test, "int3") == 0)
        return test_int3();
    if (strcmp(test, "cx16") == 0)
        return test_cx16();
    if (strcmp(test, "fwait") == 0)
        return test_fwait();
    if (strcmp(test, "reboot") == 0)
        return test_reboot();
    if (strcmp(test, "poweroff") == 0)
        return test_poweroff();
    if (strcmp(test, "cpuid") == 0)
        return test_cpuid();
    kprintf("board: no test '%s'\n", test);
    return 3;
}
