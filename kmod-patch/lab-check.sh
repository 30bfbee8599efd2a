#!/bin/sh
# The lab check of KVM_CAP_X86_USER_NONDET (see kmod-patch/README.md):
#
#   kmod-patch/lab-check.sh [WORK_DIR]       (default: target/lab/check)
#
# 1. Patched KVM: record the `tsc` guest, replay it three times; every replay must
#    print exactly what the recording printed, end with the recorded status and
#    report that it matched the recording (final registers and memory included).
# 2. Stock KVM (`--stock`): replaying that trace must stop before the guest starts
#    with an error naming the capability; and a recording of `tsc` made on stock
#    KVM must diverge in replay, which replay must report.
# 3. Hardware breakpoints never fire in the lab, so the recorder delivers the
#    interrupts that arrive between exits at the next exit: `compute` (PIT
#    interrupts while it computes, an exit each line it prints) records and replays
#    three times identically. A guest that waits for its interrupts without exiting
#    (`timer`'s busy phase) gets them between exits after 50 ms: a replay of it
#    must stop before it starts and say why, instead of waiting forever at its
#    first asynchronous point.
# 4. gdb, outside, on the replay inside (kmod-patch/lab-gdb.sh): stepping over an
#    `rdtsc`, reverse-stepping back over it and stepping again reads the same value,
#    one the trace logged.
# 5. Xen 4.17 (Debian's xen-hypervisor-4.17-amd64, as tests/real_images.rs takes
#    it), which reads the TSC thousands of times: with the patched KVM it records
#    and replays three times identically to its reboot (on stock KVM its replay
#    diverges at the end, where it computes with TSC values).
# Prints "lab-check: PASS" and exits 0, or says what failed and exits 1.
set -eu
cd "$(dirname "$0")/.."
work=${1:-target/lab/check}
rm -rf "$work"
mkdir -p "$work"
lab() { cargo run -q --release -p xtask -- lab "$@"; }
failed=0
fail() { echo "lab-check: FAIL: $*"; failed=1; }

# Xen's image: the test suite's copy, else downloaded as the tests do.
xen_cache=target/tmp/real-images/xen-hypervisor-4.17-amd64/extracted
if [ ! -f "$xen_cache/xen-4.17-amd64" ]; then
    mkdir -p "$work/xen-deb"
    (cd "$work/xen-deb" && apt-get download xen-hypervisor-4.17-amd64 >/dev/null) ||
        fail "cannot download xen-hypervisor-4.17-amd64 (apt-get download; run apt-get update)"
    dpkg-deb -x "$work"/xen-deb/*.deb "$work/xen-deb/extracted"
    xen_cache="$work/xen-deb/extracted"
    gunzip -c "$xen_cache/boot/xen-4.17-amd64.gz" >"$xen_cache/xen-4.17-amd64"
fi
cp "$xen_cache/xen-4.17-amd64" "$work/xen"

# Inside the lab each step's stdout, stderr and status go to /share.
lab --share "$work" -- sh -c '
    cd /share
    lore-dbg record -o tsc /guests/tsc.elf >record.out 2>record.err; echo $? >record.status
    for i in 1 2 3; do
        lore-dbg replay tsc >replay$i.out 2>replay$i.err; echo $? >replay$i.status
    done
    lore-dbg info tsc >info.out 2>&1
    lore-dbg record -o xen-trace xen --cmdline "console=com1 com1=115200,8n1" >xen-record.out 2>xen-record.err
    echo $? >xen-record.status
    for i in 1 2 3; do
        lore-dbg replay xen-trace >xen-replay$i.out 2>xen-replay$i.err; echo $? >xen-replay$i.status
    done
'
grep -q "(XEN) Xen version 4.17" "$work/xen-record.out" ||
    fail "Xen printed no banner: $(tail -n 3 "$work/xen-record.err")"
[ "$(cat "$work/xen-record.status")" = 0 ] ||
    fail "Xen's recording ended with status $(cat "$work/xen-record.status"), not 0 (its reboot)"
for i in 1 2 3; do
    cmp -s "$work/xen-record.out" "$work/xen-replay$i.out" || fail "Xen replay $i printed other output"
    grep -q "replay matched the recording" "$work/xen-replay$i.err" ||
        fail "Xen replay $i did not match: $(tail -n 3 "$work/xen-replay$i.err")"
done
grep -q "tsc reads recorded" "$work/record.err" ||
    fail "record did not say that TSC reads are recorded: $(cat "$work/record.err")"
grep -q "tsc: hash of the deltas" "$work/record.out" ||
    fail "the tsc guest printed no result: $(cat "$work/record.out")"
[ "$(cat "$work/record.status")" = 1 ] || fail "tsc ended with status $(cat "$work/record.status"), not 1"
for i in 1 2 3; do
    cmp -s "$work/record.out" "$work/replay$i.out" || fail "replay $i printed other output"
    [ "$(cat "$work/replay$i.status")" = "$(cat "$work/record.status")" ] ||
        fail "replay $i ended with status $(cat "$work/replay$i.status")"
    grep -q "replay matched the recording" "$work/replay$i.err" ||
        fail "replay $i did not match: $(cat "$work/replay$i.err")"
done
grep -q "tsc-read" "$work/info.out" || fail "info lists no tsc-read events"

lab --stock --share "$work" -- sh -c '
    cd /share
    lore-dbg replay tsc >stock-replay.out 2>stock-replay.err; echo $? >stock-replay.status
    lore-dbg record -o tsc-stock /guests/tsc.elf >stock-record.out 2>stock-record.err
    lore-dbg replay tsc-stock >stock-diverge.out 2>stock-diverge.err; echo $? >stock-diverge.status
    lore-dbg record -o timer /guests/timer.elf >timer-record.out 2>timer-record.err
    lore-dbg replay timer >timer-replay.out 2>timer-replay.err; echo $? >timer-replay.status
    lore-dbg record -o compute /guests/compute.elf >compute-record.out 2>compute-record.err
    for i in 1 2 3; do
        lore-dbg replay compute >compute$i.out 2>compute$i.err; echo $? >compute$i.status
    done
'
[ "$(cat "$work/stock-replay.status")" = 2 ] ||
    fail "replaying the patched trace on stock KVM ended with status $(cat "$work/stock-replay.status"), not 2"
grep -q "KVM_CAP_X86_USER_NONDET" "$work/stock-replay.err" ||
    fail "the stock replay's error does not name the capability: $(cat "$work/stock-replay.err")"
[ ! -s "$work/stock-replay.out" ] || fail "the stock replay ran the guest: $(cat "$work/stock-replay.out")"
grep -q "tsc reads not recorded" "$work/stock-record.err" ||
    fail "record on stock KVM did not say that TSC reads are not recorded"
[ "$(cat "$work/stock-diverge.status")" = 2 ] ||
    fail "the stock recording replayed with status $(cat "$work/stock-diverge.status"), not 2 (a divergence)"
grep -qi "diverge" "$work/stock-diverge.err" ||
    fail "the stock replay did not report a divergence: $(cat "$work/stock-diverge.err")"
[ "$(cat "$work/timer-replay.status")" = 2 ] ||
    fail "the replay of timer ended with status $(cat "$work/timer-replay.status"), not 2"
grep -q "hardware breakpoints never fire" "$work/timer-replay.err" ||
    fail "the replay of timer did not say that breakpoints do not fire: $(cat "$work/timer-replay.err")"

grep -q "delivered at the next exit" "$work/compute-record.err" ||
    fail "compute's interrupts were not deferred to exits: $(cat "$work/compute-record.err")"
for i in 1 2 3; do
    cmp -s "$work/compute-record.out" "$work/compute$i.out" || fail "compute replay $i printed other output"
    [ "$(cat "$work/compute$i.status")" = 1 ] ||
        fail "compute replay $i ended with status $(cat "$work/compute$i.status")"
    grep -q "replay matched the recording" "$work/compute$i.err" ||
        fail "compute replay $i did not match: $(cat "$work/compute$i.err")"
done

kmod-patch/lab-gdb.sh "$work/gdb" >"$work/gdb.log" 2>&1 || fail "$(tail -n 1 "$work/gdb.log")"
tail -n 1 "$work/gdb.log"

if [ "$failed" = 0 ]; then
    echo "lab-check: PASS (files in $work)"
else
    echo "lab-check: files in $work"
    exit 1
fi
