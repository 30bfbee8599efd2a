/*
 * lib.c - the small freestanding library shared by every lore-dbg guest.
 * See lib.h for the interface.
 */
#include "lib.h"

/* ------------------------------------------------------------------ */
/* exit                                                                */

void exit(int status)
{
    cli();
    outl(0xf4, (uint32_t)status);       /* isa-debug-exit: QEMU exits (v<<1)|1 */
    for (;;)                            /* no such device: just stop */
        hlt();
}

/* ------------------------------------------------------------------ */
/* COM1                                                                */

void serial_init(void)
{
    outb(COM1 + UART_IER, 0x00);        /* no interrupts */
    outb(COM1 + UART_LCR, 0x80);        /* DLAB */
    outb(COM1 + 0, 0x01);               /* divisor 1: 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + UART_LCR, 0x03);        /* 8N1, DLAB off */
    /*
     * FIFOs stay off (16450 mode): enabling them clears the receiver,
     * which would drop input that arrived before this point.
     */
    outb(COM1 + UART_FCR, 0x00);
    outb(COM1 + UART_MCR, 0x0b);        /* DTR | RTS | OUT2 (routes the IRQ) */
}

void serial_putc(char c)
{
    while (!(inb(COM1 + UART_LSR) & UART_LSR_THRE))
        ;
    outb(COM1 + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        serial_putc(s[i]);
}

int serial_rx_ready(void)
{
    return inb(COM1 + UART_LSR) & UART_LSR_DR;
}

uint8_t serial_getc_nowait(void)
{
    return inb(COM1 + UART_RBR);
}

void serial_enable_rx_irq(int on)
{
    outb(COM1 + UART_IER, on ? 0x01 : 0x00);
}

/* ------------------------------------------------------------------ */
/* printing                                                            */

void puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

static void put_unsigned(uint64_t v, unsigned base, int upper, int width, char pad)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    while (n < width && n < (int)sizeof(tmp))
        tmp[n++] = pad;
    while (n)
        serial_putc(tmp[--n]);
}

void put_dec(uint64_t v) { put_unsigned(v, 10, 0, 0, ' '); }
void put_hex(uint64_t v) { puts("0x"); put_unsigned(v, 16, 0, 0, '0'); }
void put_hex64(uint64_t v) { puts("0x"); put_unsigned(v, 16, 0, 16, '0'); }

/* Supports %% %c %s %d %i %u %x %X %p with '0' flag, width, and l/ll/z. */
int kvprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng = 1;
            fmt++;
        }
        switch (*fmt) {
        case '%':
            serial_putc('%');
            break;
        case 'c':
            serial_putc((char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = (int)strlen(s);
            for (; len < width; len++)
                serial_putc(' ');
            puts(s);
            break;
        }
        case 'd':
        case 'i': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            if (v < 0) {
                serial_putc('-');
                put_unsigned((uint64_t)0 - (uint64_t)v, 10, 0, width ? width - 1 : 0, pad);
            } else {
                put_unsigned((uint64_t)v, 10, 0, width, pad);
            }
            break;
        }
        case 'u':
            put_unsigned(lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, 0, width, pad);
            break;
        case 'x':
        case 'X':
            put_unsigned(lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, *fmt == 'X', width, pad);
            break;
        case 'p':
            put_hex64((uint64_t)(uintptr_t)va_arg(ap, void *));
            break;
        case '\0':
            return 0;
        default:
            serial_putc('%');
            serial_putc(*fmt);
            break;
        }
    }
    return 0;
}

int kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    return 0;
}

/* ------------------------------------------------------------------ */
/* strings / memory (gcc may emit calls to the mem* functions)        */

void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    if (dp < sp) {
        while (n--)
            *dp++ = *sp++;
    } else {
        while (n--)
            dp[n] = sp[n];
    }
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] - y[i];
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (uint8_t)*a - (uint8_t)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (uint8_t)*a - (uint8_t)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* multiboot command line                                              */

static const struct mb_info *boot_mbi;

const char *cmdline(void)
{
    if (!boot_mbi || !(boot_mbi->flags & MB_INFO_CMDLINE) || !boot_mbi->cmdline)
        return "";
    return (const char *)(uintptr_t)boot_mbi->cmdline;
}

/*
 * Tokens are separated by spaces. QEMU passes "<kernel path> <-append>",
 * so the first token may be a file name; only tokens of the form
 * key=value are looked at.
 */
int cmdline_get(const char *key, char *buf, size_t size)
{
    const char *p = cmdline();
    size_t klen = strlen(key);
    while (*p) {
        while (*p == ' ')
            p++;
        const char *tok = p;
        while (*p && *p != ' ')
            p++;
        size_t tlen = (size_t)(p - tok);
        if (tlen > klen && strncmp(tok, key, klen) == 0 && tok[klen] == '=') {
            const char *v = tok + klen + 1;
            size_t vlen = tlen - klen - 1;
            if (size) {
                size_t n = vlen < size - 1 ? vlen : size - 1;
                memcpy(buf, v, n);
                buf[n] = '\0';
            }
            return (int)vlen;
        }
    }
    return -1;
}

uint64_t cmdline_get_u64(const char *key, uint64_t dflt)
{
    char buf[32];
    int n = cmdline_get(key, buf, sizeof(buf));
    if (n <= 0 || n >= (int)sizeof(buf))
        return dflt;
    const char *p = buf;
    unsigned base = 10;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
        if (!*p)
            return dflt;
    }
    uint64_t v = 0;
    for (; *p; p++) {
        unsigned d;
        if (*p >= '0' && *p <= '9')
            d = (unsigned)(*p - '0');
        else if (base == 16 && *p >= 'a' && *p <= 'f')
            d = (unsigned)(*p - 'a' + 10);
        else if (base == 16 && *p >= 'A' && *p <= 'F')
            d = (unsigned)(*p - 'A' + 10);
        else
            return dflt;
        v = v * base + d;
    }
    return v;
}

/* ------------------------------------------------------------------ */
/* IDT and interrupt dispatch                                          */

#define IDT_VECTORS 48
extern const uint64_t isr_stub_table[IDT_VECTORS];      /* isr.S */

static struct idt_entry idt[256] __attribute__((aligned(16)));
static irq_handler_t irq_handlers[16];
static uint64_t spurious_irqs;

static const char *const exception_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint",
    "#OF overflow", "#BR bound range", "#UD invalid opcode", "#NM device not available",
    "#DF double fault", "coprocessor overrun", "#TS invalid TSS", "#NP segment not present",
    "#SS stack fault", "#GP general protection", "#PF page fault", "reserved",
    "#MF x87 error", "#AC alignment check", "#MC machine check", "#XM SIMD error",
    "#VE virtualization", "#CP control protection", "reserved", "reserved",
    "reserved", "reserved", "reserved", "reserved",
    "#HV hypervisor injection", "#VC VMM communication", "#SX security", "reserved",
};

void idt_init(void)
{
    for (int v = 0; v < IDT_VECTORS; v++) {
        uint64_t a = isr_stub_table[v];
        idt[v].offset_lo = (uint16_t)a;
        idt[v].selector = KERNEL_CS;
        idt[v].ist = 0;
        idt[v].type_attr = 0x8e;        /* present, DPL 0, 64-bit interrupt gate */
        idt[v].offset_mid = (uint16_t)(a >> 16);
        idt[v].offset_hi = (uint32_t)(a >> 32);
        idt[v].zero = 0;
    }
    struct desc_ptr p = { sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(p));
}

void irq_set_handler(int irq, irq_handler_t h)
{
    irq_handlers[irq & 15] = h;
}

static noreturn_fn void exception(struct frame *f)
{
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    kprintf("\n*** EXCEPTION vector %lu (%s) error 0x%lx at rip 0x%lx\n",
            f->vector, exception_names[f->vector & 31], f->error, f->rip);
    kprintf("*** rsp 0x%lx rflags 0x%lx cr2 0x%lx\n", f->rsp, f->rflags, cr2);
    exit(EXIT_EXCEPTION);
}

struct frame *isr_dispatch(struct frame *f)
{
    if (f->vector < 32)
        exception(f);
    int irq = (int)(f->vector - IRQ_BASE);
    /* Spurious IRQ 7/15: the PIC's in-service bit is clear; no EOI to that PIC. */
    if (irq == 7 || irq == 15) {
        uint16_t cmd = irq == 7 ? 0x20 : 0xa0;
        outb(cmd, 0x0b);                /* OCW3: read ISR */
        if (!(inb(cmd) & 0x80)) {
            spurious_irqs++;
            if (irq == 15)
                outb(0x20, 0x20);       /* the cascade on the master was real */
            return f;
        }
    }
    struct frame *next = f;
    if (irq_handlers[irq])
        next = irq_handlers[irq](f);
    pic_eoi(irq);
    return next;
}

/* ------------------------------------------------------------------ */
/* 8259A PIC                                                           */

#define PIC1_CMD  0x20
#define PIC1_DATA 0x21
#define PIC2_CMD  0xa0
#define PIC2_DATA 0xa1

void pic_remap(void)
{
    outb(PIC1_CMD, 0x11);               /* ICW1: edge, cascade, ICW4 needed */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, IRQ_BASE);          /* ICW2: vector base */
    outb(PIC2_DATA, IRQ_BASE2);
    outb(PIC1_DATA, 0x04);              /* ICW3: slave on IRQ2 */
    outb(PIC2_DATA, 0x02);              /*       slave identity 2 */
    outb(PIC1_DATA, 0x01);              /* ICW4: 8086 mode, normal EOI */
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xfb);              /* everything masked but the cascade */
    outb(PIC2_DATA, 0xff);
}

void pic_unmask(int irq)
{
    uint16_t port = irq < 8 ? PIC1_DATA : PIC2_DATA;
    outb(port, inb(port) & (uint8_t)~(1u << (irq & 7)));
}

void pic_mask(int irq)
{
    uint16_t port = irq < 8 ? PIC1_DATA : PIC2_DATA;
    outb(port, inb(port) | (uint8_t)(1u << (irq & 7)));
}

void pic_eoi(int irq)
{
    if (irq >= 8)
        outb(PIC2_CMD, 0x20);
    outb(PIC1_CMD, 0x20);
}

/* ------------------------------------------------------------------ */
/* 8254 PIT                                                            */

uint16_t pit_set_hz(uint32_t hz)
{
    uint32_t div = (PIT_HZ + hz / 2) / hz;
    if (div > 0xffff)
        div = 0;                        /* 0 means 65536 */
    outb(0x43, 0x34);                   /* channel 0, lo/hi byte, mode 2, binary */
    outb(0x40, (uint8_t)div);
    outb(0x40, (uint8_t)(div >> 8));
    return (uint16_t)div;
}

/* ------------------------------------------------------------------ */
/* C entry (called from boot.S in long mode)                           */

noreturn_fn void guest_start(uint32_t magic, uint32_t info);

void guest_start(uint32_t magic, uint32_t info)
{
    serial_init();
    idt_init();
    /* Only a multiboot v1 information structure has the command line field. */
    boot_mbi = magic == MB_BOOT_MAGIC ? (const struct mb_info *)(uintptr_t)info : NULL;
    exit(main(magic, (const struct mb_info *)(uintptr_t)info));
}
