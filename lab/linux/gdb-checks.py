# gdb checks of `xtask lab --linux` (kmod-patch/README.md), run by gdb on the host:
#
#   gdb -batch -nx SYMBOLS.elf -x lab/linux/gdb-checks.py
#
# with LAB_GDB_PORT (the port forwarded to `lore-dbg replay --gdb` inside the lab)
# and LAB_GDB_BREAK (a kernel function the workload surely reaches) in the
# environment. SYMBOLS.elf is made by xtask from the lab kernel's /proc/kallsyms.
# The checks: break on a kernel function + continue; watch jiffies + continue
# (the timer interrupt); reverse-stepi comes back to the same registers; watch
# jiffies + reverse-continue. Each prints "gdb-check: NAME: PASS|FAIL|UNSUPPORTED:
# DETAIL"; the last line is "gdb-checks: K/N [unsupported=NAME]" (no check is
# unsupported today). A failed connection prints "gdb-connect: FAIL: ..." only,
# so that xtask tries again (the server inside may not listen yet).
import os
import time

import gdb

port = os.environ.get("LAB_GDB_PORT", "47001")
function = os.environ.get("LAB_GDB_BREAK", "__x64_sys_write")
# Where the kernel adds a tick to jiffies: the periodic tick handler or, once the
# tick runs in one-shot mode, the tick-sched code (both end in the same store).
TIMER_PATH = ("do_timer", "tick_do_update_jiffies64", "tick_periodic", "tick_handle_periodic",
              "tick_sched_do_timer", "tick_sched_timer", "tick_nohz_handler")

# Kernel addresses start here (the entry runs at physical addresses, paging off).
KERNEL_HALF = 0xFFFF800000000000
# An exit well after the kernel turned paging on and started its timer (a boot has
# about 240,000 exits).
INTO_THE_KERNEL = 20000

results = []


def run(command):
    return gdb.execute(command, to_string=True)


def pc():
    return int(gdb.parse_and_eval("$pc")) & 0xFFFFFFFFFFFFFFFF


def function_at(address):
    """The name of the symbol holding address ("" when none)."""
    text = run("info symbol %#x" % address).strip()
    if text.startswith("No symbol"):
        return ""
    return text.split(" + ")[0].split(" in section")[0].strip()


def registers():
    names = ("rip", "rsp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "eflags")
    return {name: int(gdb.parse_and_eval("$" + name)) for name in names}


unsupported = []


def check(name, body):
    """Runs a check; `body` returns (True, False or None for "unsupported here",
    detail)."""
    started = time.monotonic()
    try:
        ok, detail = body()
    except gdb.error as error:
        ok, detail = False, "gdb: %s" % error
    if ok is None:
        unsupported.append(name)
        verdict = "UNSUPPORTED"
    else:
        results.append(ok)
        verdict = "PASS" if ok else "FAIL"
    print("gdb-check: %s: %s: %s (%.1f s)" % (name, verdict, detail,
                                              time.monotonic() - started), flush=True)


def break_on_function():
    address = int(gdb.parse_and_eval("(long) &%s" % function)) & 0xFFFFFFFFFFFFFFFF
    run("break %s" % function)
    out = run("continue")
    run("delete")
    here = pc()
    name = function_at(here)
    detail = "break %s (%#x), continue stopped at %#x (%s)" % (function, address, here, name or "?")
    if name != function:
        detail += "; gdb said: %s" % " ".join(out.split())[:1500]
    return name == function, detail


def reverse_stepi():
    before = registers()
    run("stepi")
    after = registers()
    run("reverse-stepi")
    back = registers()
    moved = after["rip"] != before["rip"]
    same = back == before
    detail = "stepi %#x -> %#x (%s), reverse-stepi back to %#x%s" % (
        before["rip"], after["rip"], function_at(after["rip"]) or "?", back["rip"],
        "" if same else "; registers differ: %s" % {
            k: (hex(before[k]), hex(back[k])) for k in before if before[k] != back[k]})
    return moved and same, detail


def jiffies_address():
    return int(gdb.parse_and_eval("(long) &jiffies")) & 0xFFFFFFFFFFFFFFFF


def jiffies_value():
    return int(gdb.parse_and_eval("*(unsigned long *) %#x" % jiffies_address()))


def watch_jiffies(command, ticks):
    """Runs `command` with a watchpoint on jiffies `ticks` times; the stop must be
    in the timer interrupt's path with jiffies moved the right way."""
    jiffies = jiffies_address()
    value_before = jiffies_value()
    # The symbol file types data symbols by their size (`lore-dbg symbols`), so
    # `watch jiffies` works as written.
    run("watch jiffies")
    out = ""
    for _ in range(ticks):
        out = run(command)
    run("delete")
    here = pc()
    name = function_at(here)
    value_after = jiffies_value()
    instruction = " ".join(run("x/i $pc").split())
    moved = value_after > value_before if command == "continue" else value_after < value_before
    ok = name in TIMER_PATH and moved
    detail = "jiffies (%#x) was %d; %s x%d stopped in %s with jiffies = %d (%s)" % (
        jiffies, value_before, command, ticks, name or "?", value_after, instruction)
    if not ok:
        detail += "; gdb said: %s" % " ".join(out.split())[:1500]
    return ok, detail


gdb.execute("set pagination off")
gdb.execute("set confirm off")
try:
    gdb.execute("target remote 127.0.0.1:%s" % port)
except gdb.error as error:
    print("gdb-connect: FAIL: %s" % error, flush=True)
    gdb.execute("quit")
print("gdb-connect: OK: at %#x (%s)" % (pc(), function_at(pc()) or "?"), flush=True)
if pc() < KERNEL_HALF:
    # Still at the entry (paging off): kernel virtual addresses mean nothing yet.
    # Jump well into the kernel's boot, by exit ordinal.
    run("monitor goto %d" % INTO_THE_KERNEL)
    run("maintenance flush register-cache")
    print("gdb-note: monitor goto %d: at %#x (%s)" % (INTO_THE_KERNEL, pc(), function_at(pc()) or "?"),
          flush=True)
# Hardware breakpoints never fire in the lab: lore-dbg traps the page holding the
# function instead (docs/design.md, "Breakpoints by page traps").
check("break", break_on_function)
check("watch-jiffies-continue", lambda: watch_jiffies("continue", 20))
check("reverse-stepi", reverse_stepi)
check("watch-jiffies-reverse", lambda: watch_jiffies("reverse-continue", 1))
print("gdb-checks: %d/%d%s" % (sum(results), len(results),
                               "".join(" unsupported=%s" % name for name in unsupported)),
      flush=True)
try:
    gdb.execute("kill")
except gdb.error:
    pass
