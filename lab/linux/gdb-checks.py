# gdb checks of `xtask lab --linux` (kmod-patch/README.md), run by gdb on the host:
#
#   gdb -batch -nx SYMBOLS.elf -x lab/linux/gdb-checks.py
#
# with LAB_GDB_PORT (the port forwarded to `lore-dbg replay --gdb` inside the lab)
# and LAB_GDB_BREAK (a kernel function the workload surely reaches) in the
# environment. SYMBOLS.elf is made by xtask from the lab kernel's /proc/kallsyms.
# Each check prints "gdb-check: NAME: PASS|FAIL: DETAIL"; the last line is
# "gdb-checks: K/N". A failed connection prints "gdb-connect: FAIL: ..." only, so
# that xtask tries again (the server inside may not listen yet).
import os

import gdb

port = os.environ.get("LAB_GDB_PORT", "47001")
function = os.environ.get("LAB_GDB_BREAK", "__x64_sys_write")
# Where the kernel adds a tick to jiffies: the periodic tick handler or, once the
# tick runs in one-shot mode, the tick-sched code (both end in the same store).
TIMER_PATH = ("do_timer", "tick_do_update_jiffies64", "tick_periodic", "tick_handle_periodic",
              "tick_sched_do_timer", "tick_sched_timer", "tick_nohz_handler")

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


def check(name, body):
    try:
        ok, detail = body()
    except gdb.error as error:
        ok, detail = False, "gdb: %s" % error
    results.append(ok)
    print("gdb-check: %s: %s: %s" % (name, "PASS" if ok else "FAIL", detail), flush=True)


def break_on_function():
    address = int(gdb.parse_and_eval("(long) &%s" % function)) & 0xFFFFFFFFFFFFFFFF
    run("break %s" % function)
    out = run("continue")
    run("delete")
    here = pc()
    name = function_at(here)
    detail = "break %s (%#x), continue stopped at %#x (%s)" % (function, address, here, name or "?")
    if name != function:
        detail += "; gdb said: %s" % " ".join(out.split())[-200:]
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


def watch_jiffies_backwards():
    jiffies = int(gdb.parse_and_eval("(long) &jiffies")) & 0xFFFFFFFFFFFFFFFF
    value_now = int(gdb.parse_and_eval("*(unsigned long *) %#x" % jiffies))
    run("watch *(unsigned long *) %#x" % jiffies)
    out = run("reverse-continue")
    run("delete")
    here = pc()
    name = function_at(here)
    value_then = int(gdb.parse_and_eval("*(unsigned long *) %#x" % jiffies))
    instruction = " ".join(run("x/i $pc").split())
    ok = name in TIMER_PATH and value_then < value_now
    detail = "jiffies %#x = %d; reverse-continue stopped in %s with jiffies = %d (%s)" % (
        jiffies, value_now, name or "?", value_then, instruction)
    if not ok:
        detail += "; gdb said: %s" % " ".join(out.split())[-200:]
    return ok, detail


gdb.execute("set pagination off")
gdb.execute("set confirm off")
try:
    gdb.execute("target remote 127.0.0.1:%s" % port)
except gdb.error as error:
    print("gdb-connect: FAIL: %s" % error, flush=True)
    gdb.execute("quit")
print("gdb-connect: OK: at %#x (%s)" % (pc(), function_at(pc()) or "?"), flush=True)
check("break", break_on_function)
check("reverse-stepi", reverse_stepi)
check("watch-jiffies-reverse", watch_jiffies_backwards)
print("gdb-checks: %d/%d" % (sum(results), len(results)), flush=True)
try:
    gdb.execute("kill")
except gdb.error:
    pass
