/*
 * echo - serial input by interrupt.
 *
 * Enables the COM1 "received data available" interrupt (IER bit 0, IRQ 4),
 * idles in HLT, drains the receiver in the IRQ 4 handler (serial_irq) into
 * a ring buffer, and echoes every line, upper-cased, as "> LINE". A line
 * "quit" or a byte 0x04 (Ctrl-D) ends the run with status 0.
 *
 * Demonstrates: device input that the recorder must log (the received
 * bytes and the position of each IRQ 4), HLT wake-ups by a device.
 *
 * Debugging hooks: break on serial_irq / handle_line; watch rx_head.
 */
#include "lib.h"

#define RING_SIZE   256                 /* power of two */
#define LINE_MAX    128

volatile uint8_t rx_ring[RING_SIZE];
volatile unsigned rx_head;              /* written by serial_irq */
unsigned rx_tail;                       /* written by main */
volatile uint64_t rx_irqs;
uint64_t rx_dropped;

BREAKABLE struct frame *serial_irq(struct frame *f)
{
    rx_irqs++;
    while (serial_rx_ready()) {
        uint8_t c = serial_getc_nowait();
        if (rx_head - rx_tail < RING_SIZE) {
            rx_ring[rx_head % RING_SIZE] = c;
            rx_head = rx_head + 1;
        } else {
            rx_dropped++;
        }
    }
    return f;
}

/* Waits for and returns the next received byte. */
static uint8_t next_byte(void)
{
    cli();
    while (rx_head == rx_tail) {
        sti_hlt();                      /* an IRQ between the test and HLT still wakes us */
        cli();
    }
    uint8_t c = rx_ring[rx_tail % RING_SIZE];
    rx_tail++;
    sti();
    return c;
}

/* Echoes one line; returns 1 when it asks to quit. */
BREAKABLE int handle_line(char *line)
{
    int quit = strcmp(line, "quit") == 0;
    for (char *p = line; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    kprintf("> %s\n", line);
    return quit;
}

int main(uint32_t mb_magic, const struct mb_info *mbi)
{
    (void)mb_magic;
    (void)mbi;
    pic_remap();
    irq_set_handler(4, serial_irq);
    pic_unmask(4);
    serial_enable_rx_irq(1);
    puts("echo: ready; a line 'quit' or Ctrl-D ends\n");
    sti();

    char line[LINE_MAX];
    size_t len = 0;
    uint8_t prev = 0;
    for (;;) {
        uint8_t c = next_byte();
        if (c == 0x04) {
            puts("echo: end of transmission\n");
            break;
        }
        if (c == '\r' || c == '\n') {
            if (c == '\n' && prev == '\r') {    /* CR LF counts once */
                prev = c;
                continue;
            }
            line[len] = '\0';
            len = 0;
            prev = c;
            if (handle_line(line))
                break;
            continue;
        }
        prev = c;
        if (len < LINE_MAX - 1)
            line[len++] = (char)c;
    }
    cli();
    serial_enable_rx_irq(0);
    puts("echo: bye\n");
    return 0;
}
