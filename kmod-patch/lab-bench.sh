#!/bin/sh
# The price of KVM_CAP_X86_USER_NONDET, measured in the lab (kmod-patch/README.md):
#
#   kmod-patch/lab-bench.sh [REPS] [WORK_DIR]    (defaults: 5, target/lab/bench)
#
# Boots the lab with the patched KVM and then with the stock one; in each, REPS
# interleaved repetitions of `lore-dbg run` and `lore-dbg record` on `tsc` (1000
# reads; `reads=20000`) and `compute`, each timed inside the VM (wall clock of the
# whole lore-dbg process). Prints a Markdown table of the medians, with the record
# / run ratio and, for `tsc`, the exits and trace bytes of one recording.
set -eu
cd "$(dirname "$0")/.."
reps=${1:-5}
work=${2:-target/lab/bench}
rm -rf "$work"
mkdir -p "$work/patched" "$work/stock"

inside='
cd /share
# busybox date has no %N: the monotonic clock of /proc/timer_list, in ms.
ms() { echo $(($(sed -n "s/^now at \\([0-9]*\\) nsecs$/\\1/p" /proc/timer_list) / 1000000)); }
rep=1
while [ $rep -le '"$reps"' ]; do
    for case in "tsc /guests/tsc.elf" "tsc20k /guests/tsc.elf --cmdline reads=20000" "compute /guests/compute.elf"; do
        set -- $case
        name=$1; shift
        for op in run record; do
            if [ $op = record ]; then out="-o /tmp/$name-$rep"; else out=""; fi
            start=$(ms)
            lore-dbg $op $out "$@" >/dev/null 2>&1
            end=$(ms)
            echo "$name $op $((end - start))" >>times
        done
        if [ $rep = 1 ]; then
            lore-dbg info --json /tmp/$name-1 >$name.json 2>&1
        fi
        rm -rf /tmp/$name-$rep
    done
    rep=$((rep + 1))
done
'
cargo run -q --release -p xtask -- lab --share "$work/patched" -- sh -c "$inside"
cargo run -q --release -p xtask -- lab --stock --share "$work/stock" -- sh -c "$inside"

median() { # kind name op: "median [min-max]"
    awk -v name="$2" -v op="$3" '$1 == name && $2 == op { print $3 }' "$work/$1/times" |
        sort -n | awk '{ v[NR] = $1 } END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%d [%d-%d]", m, v[1], v[NR] }'
}
field() { # kind name key
    sed -n "s/^ *\"$3\": \\([0-9.]*\\),*$/\\1/p" "$work/$1/$2.json" | head -n 1
}
echo "| guest | KVM | run (ms) | record (ms) | record / run (medians) | exits | tsc-read events | event log bytes |"
echo "|---|---|---|---|---|---|---|---|"
for name in tsc tsc20k compute; do
    for kind in patched stock; do
        run=$(median $kind $name run)
        record=$(median $kind $name record)
        ratio=$(awk -v a="${record%% *}" -v b="${run%% *}" 'BEGIN { printf "%.2f", a / b }')
        tsc=$(sed -n 's/.*"tsc-read": \([0-9]*\).*/\1/p' "$work/$kind/$name.json")
        echo "| $name | $kind | $run | $record | $ratio | $(field $kind $name exits) | ${tsc:-0} | $(field $kind $name event_log_bytes) |"
    done
done
echo
echo "($reps repetitions each: median [min-max] of the wall time of the lore-dbg process inside the lab VM)"
