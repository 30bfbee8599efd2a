#!/bin/sh
# Run inside the lab by `xtask lab --linux` (kmod-patch/README.md), with /share
# holding: vmlinuz and inner.cpio (the inner guest: Debian's kernel and the
# workload of lab/linux/init), cmdline (its kernel command line), mem, port (for
# the gdb server) and mode (`patched` or `stock`).
#
# Boots the inner Linux under lore-dbg: `run`, `record`, then three `replay`s of
# that trace, each timed (wall clock of the lore-dbg process, and the moment the
# kernel printed "Run /init"); then serves the trace to gdb on this host until it
# detaches (patched KVM only). Everything it finds goes into /share as files
# (NAME.out: the serial output, NAME.err: lore-dbg's own words, NAME.status,
# NAME.start/.init/.end: milliseconds), which xtask reads and judges.
cd /share
kernel=/share/vmlinuz
initrd=/share/inner.cpio
cmdline=$(cat cmdline)
mem=$(cat mem)
port=$(cat port)
mode=$(cat mode)
trace=/tmp/linux-trace

# The kernel's symbols for gdb outside: this VM boots the same kernel with
# nokaslr, so its addresses are the inner guest's (kptr_restrict 0: shown to
# every reader, whatever the distribution's default).
echo 0 >/proc/sys/kernel/kptr_restrict
cat /proc/kallsyms >kallsyms.tmp && mv kallsyms.tmp kallsyms

# busybox date has no %N: the monotonic clock of /proc/timer_list, in ms.
ms() { echo $(($(sed -n "s/^now at \\([0-9]*\\) nsecs$/\\1/p" /proc/timer_list) / 1000000)); }

# timed NAME lore-dbg ARGS...: runs it with its serial output in NAME.out (byte for
# byte: tee), notes when /init's first line passes by and when it ends.
timed() {
    name=$1
    shift
    rm -f "$name.init"
    ms >"$name.start"
    { "$@" 2>"$name.err"; echo $? >"$name.status"; } |
        tee "$name.out" | { grep -q 'linux-workload: init started' && ms >"$name.init"; cat >/dev/null; }
    ms >"$name.end"
}

timed run lore-dbg run --mem "$mem" --initrd "$initrd" --cmdline "$cmdline" "$kernel"
rm -rf "$trace"
# Hardware breakpoints never fire here, so an interrupt that arrives between exits
# waits for the next exit where the guest can take it; the kernel keeps interrupts
# off across many exits (each byte it prints) and computes for long stretches
# without one (early in boot for seconds of this VM's time): 10 s instead of 50 ms,
# beyond which the interrupt would be delivered between exits, where replay here
# cannot find it (at 50 ms a boot had 95 such points, at 1 s one, at 10 s none).
timed record lore-dbg record -o "$trace" --max-delay 10s --mem "$mem" --initrd "$initrd" --cmdline "$cmdline" "$kernel"
lore-dbg info "$trace" >info.out 2>&1
du -sk "$trace" >trace-size.out 2>&1
# The header and the event log (small) for a look from outside: where the
# interrupts went, what the exits were.
mkdir -p trace
cp "$trace/header" "$trace/events" trace/ 2>/dev/null
for i in 1 2 3; do
    timed "replay$i" lore-dbg replay "$trace"
done

if [ "$mode" = patched ] && [ "$(cat record.status)" = 0 ]; then
    # gdb on the host connects through the forwarded port; it ends the server
    # with `kill`. The limit is for a gdb that never comes.
    echo ready >gdb-ready
    timeout 900 lore-dbg replay "$trace" --gdb "0.0.0.0:$port" >gdb-server.out 2>&1
    echo $? >gdb-server.status
fi
echo done >inside.done
