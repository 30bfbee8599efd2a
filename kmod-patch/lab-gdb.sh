#!/bin/sh
# Reverse debugging over a recorded `rdtsc`, in the lab (kmod-patch/README.md):
#
#   kmod-patch/lab-gdb.sh [WORK_DIR]        (default: target/lab/gdb)
#
# Inside the lab (patched KVM): record `tsc`, then serve its replay to gdb on a
# port forwarded to this host. Outside: gdb runs to the first write of `sink` (a
# software watchpoint: hardware breakpoints never fire in the lab), single-steps
# into `read_tsc`, steps over its `rdtsc`, reverse-steps back over it and steps
# over it again. The value must be the same both times (it comes from the trace),
# and the reverse step must land on the `rdtsc`; the value must be one of the
# trace's logged TSC reads (`lore-dbg info --events`). Prints the gdb transcript and
# "lab-gdb: PASS", or what failed (exit 1). Needs gdb.
set -eu
cd "$(dirname "$0")/.."
work=${1:-target/lab/gdb}
port=${LAB_GDB_PORT:-47000}
rm -rf "$work"
mkdir -p "$work"

cargo run -q --release -p xtask -- lab --share "$work" --forward "$port" -- sh -c "
    lore-dbg record -o /share/tsc /guests/tsc.elf --cmdline reads=50 >/share/record.out 2>&1
    lore-dbg replay /share/tsc --gdb 0.0.0.0:$port >/share/server.out 2>&1
" &
lab=$!

cat >"$work/commands.gdb" <<'EOF'
set pagination off
set confirm off
watch sink
continue
delete
while $pc != (long) &read_tsc
  stepi
end
printf "at the rdtsc: pc=%#lx\n", $pc
stepi
printf "stepi: rdtsc read %#lx\n", ($rdx << 32) | ($rax & 0xffffffff)
reverse-stepi
printf "reverse-stepi: pc=%#lx\n", $pc
stepi
printf "stepi again: rdtsc read %#lx\n", ($rdx << 32) | ($rax & 0xffffffff)
kill
EOF

# The server is up once the recording is written and the replay has started;
# until then QEMU accepts the connection and drops it, and gdb says so.
tries=0
until [ -f "$work/tsc/header" ] && grep -q "rdtsc read" "$work/gdb.out" 2>/dev/null; do
    tries=$((tries + 1))
    if [ $tries -gt 90 ] || ! kill -0 $lab 2>/dev/null; then
        break
    fi
    sleep 2
    [ -f "$work/tsc/guest.elf" ] || continue
    gdb -q -batch -nx "$work/tsc/guest.elf" -ex "target remote 127.0.0.1:$port" \
        -x "$work/commands.gdb" >"$work/gdb.out" 2>&1 || true
done
wait $lab || true
cat "$work/gdb.out" 2>/dev/null || true

first=$(sed -n 's/^stepi: rdtsc read //p' "$work/gdb.out" 2>/dev/null)
again=$(sed -n 's/^stepi again: rdtsc read //p' "$work/gdb.out" 2>/dev/null)
at=$(sed -n 's/^at the rdtsc: pc=//p' "$work/gdb.out" 2>/dev/null)
back=$(sed -n 's/^reverse-stepi: pc=//p' "$work/gdb.out" 2>/dev/null)
# The value gdb saw must be one the recorder logged: read the trace's events on
# this host (reading a trace needs no KVM).
recorded=no
if [ -n "$first" ] && target/release/lore-dbg info --events "$work/tsc" >"$work/events.txt" 2>&1 &&
    grep -q ": tsc-read value $first\$" "$work/events.txt"; then
    recorded=yes
fi
if [ -n "$first" ] && [ "$first" = "$again" ] && [ -n "$at" ] && [ "$at" = "$back" ] && [ $recorded = yes ]; then
    echo "lab-gdb: PASS (rdtsc at $at read $first, forward and again after reverse-stepi; the trace's tsc-read events hold it)"
elif [ $recorded = no ] && [ -n "$first" ]; then
    echo "lab-gdb: FAIL: gdb read $first, which no tsc-read event of the trace holds (events in $work/events.txt)"
    exit 1
else
    echo "lab-gdb: FAIL: rdtsc read '$first' then '$again'; at '$at', reverse-stepi to '$back' (files in $work)"
    exit 1
fi
