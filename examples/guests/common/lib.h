/*
 * lib.h - the small freestanding library shared by every lore-dbg guest.
 *
 * Everything runs in ring 0, in 64-bit long mode, on an identity-mapped
 * first GiB (see boot.S). Devices used: COM1 16550 UART (0x3f8, IRQ 4),
 * 8259A PIC pair (0x20/0xa0), 8254 PIT channel 0 (0x40/0x43, IRQ 0) and
 * QEMU's isa-debug-exit (0xf4).
 */
#ifndef LORE_GUEST_LIB_H
#define LORE_GUEST_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define noreturn_fn __attribute__((noreturn))
/* A function a test can `break` on by name: never inlined, cloned or renamed. */
#define BREAKABLE __attribute__((noipa, noinline))

/* ---- exit statuses (value v written to port 0xf4; QEMU exits (v<<1)|1) ---- */
#define EXIT_OK         0x00
#define EXIT_EXCEPTION  0x60    /* CPU exception: QEMU status 193 */
#define EXIT_BAD_MAGIC  0x61    /* not booted by a multiboot loader: 195 */
#define EXIT_FAIL       0x62    /* a guest's own sanity check failed: 197 */

/* ---- multiboot v1 info ---- */
#define MB_BOOT_MAGIC      0x2BADB002u
#define MB2_BOOT_MAGIC     0x36D76289u     /* booted by multiboot2 (vga.c) */
#define MB_INFO_MEMORY     (1u << 0)
#define MB_INFO_CMDLINE    (1u << 2)
#define MB_INFO_MEM_MAP    (1u << 6)

struct mb_info {
    uint32_t flags;
    uint32_t mem_lower;     /* KiB below 1 MiB */
    uint32_t mem_upper;     /* KiB above 1 MiB */
    uint32_t boot_device;
    uint32_t cmdline;       /* physical address of a NUL-terminated string */
    uint32_t mods_count;
    uint32_t mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length;
    uint32_t mmap_addr;
} __attribute__((packed));

/* `mbi` points to multiboot2 tags instead when mb_magic is MB2_BOOT_MAGIC. */
/* Entry point every guest defines; its return value is the exit status. */
int main(uint32_t mb_magic, const struct mb_info *mbi);

/* ---- port I/O ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* ---- CPU ---- */
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }
/* Atomically enable interrupts and halt (an IRQ pending at STI wakes the HLT). */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline uint64_t irq_save(void)
{
    uint64_t flags;
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags) : : "memory");
    return flags;
}
static inline void irq_restore(uint64_t flags)
{
    __asm__ volatile("pushq %0; popfq" : : "r"(flags) : "memory", "cc");
}
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* ---- exit ---- */
noreturn_fn void exit(int status);      /* outl(0xf4, status), then halt forever */

/* ---- COM1 serial ---- */
#define COM1        0x3f8
#define UART_RBR    0   /* receive buffer (read) */
#define UART_THR    0   /* transmit holding (write) */
#define UART_IER    1
#define UART_IIR    2
#define UART_FCR    2
#define UART_LCR    3
#define UART_MCR    4
#define UART_LSR    5
#define UART_LSR_DR   0x01
#define UART_LSR_THRE 0x20

void serial_init(void);                 /* 115200 8N1, no FIFO, OUT2, RX IRQ off */
void serial_putc(char c);
void serial_write(const char *s, size_t n);
int serial_rx_ready(void);
uint8_t serial_getc_nowait(void);       /* caller checks serial_rx_ready() first */
void serial_enable_rx_irq(int on);      /* IER bit 0 */

/* ---- printing ---- */
void puts(const char *s);               /* no newline added */
void put_dec(uint64_t v);
void put_hex(uint64_t v);               /* 0x, minimal digits */
void put_hex64(uint64_t v);             /* 0x, 16 digits */
int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int kvprintf(const char *fmt, va_list ap);

/* ---- strings / memory ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* ---- multiboot command line: "key=value key2=value2" ---- */
const char *cmdline(void);              /* "" when the loader gave none */
/* Copies the value of `key` into buf (NUL-terminated); returns its length, or -1. */
int cmdline_get(const char *key, char *buf, size_t size);
/* Parses a decimal or 0x-hex value; returns `dflt` when absent or malformed. */
uint64_t cmdline_get_u64(const char *key, uint64_t dflt);

/* ---- interrupts ---- */
struct frame {          /* as pushed by isr.S + the CPU; see isr_common */
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rdi, rsi, rbp, rbx, rdx, rcx, rax;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss;      /* pushed by the CPU */
};

#define IRQ_BASE     0x20       /* master PIC vectors 0x20..0x27 */
#define IRQ_BASE2    0x28       /* slave PIC vectors 0x28..0x2f */
#define KERNEL_CS    0x08
#define KERNEL_DS    0x10

/* An IRQ handler returns the frame to resume (normally f itself). */
typedef struct frame *(*irq_handler_t)(struct frame *f);

/* A 64-bit IDT gate, and the operand of lgdt/lidt/sgdt/sidt. */
struct idt_entry {
    uint16_t offset_lo;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attr;
    uint16_t offset_mid;
    uint32_t offset_hi;
    uint32_t zero;
} __attribute__((packed));

struct desc_ptr {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

void idt_init(void);                    /* exceptions + IRQ 0..15 gates */
void irq_set_handler(int irq, irq_handler_t h);
struct frame *isr_dispatch(struct frame *f);

/* ---- 8259A PIC ---- */
void pic_remap(void);                   /* ICW1-4: vectors 0x20/0x28, all masked */
void pic_unmask(int irq);
void pic_mask(int irq);
void pic_eoi(int irq);

/* ---- 8254 PIT ---- */
#define PIT_HZ 1193182u
uint16_t pit_set_hz(uint32_t hz);       /* channel 0, mode 2, lo/hi; returns divisor */

#endif
