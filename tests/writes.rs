//! `lore-dbg writes` on the `writes` guest: every kind of store a watchpoint must
//! see is listed with its function, its value before and after, and a position
//! that `monitor goto` stands at, while the watched page is written thousands of
//! times by a counter beside the targets (memory traps: replay exact, the writes
//! found without single-stepping the recording).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `writes` guest, recorded once for every test here.
fn trace() -> &'static PathBuf {
    static TRACE: OnceLock<PathBuf> = OnceLock::new();
    TRACE.get_or_init(|| {
        require_kvm();
        record_trace("writes", "writes-guest")
    })
}

/// Address of a symbol of the `writes` guest.
fn symbol(name: &str) -> u64 {
    let image = std::fs::read(guest("writes")).expect("read the writes guest");
    let file = object::File::parse(&*image).expect("parse the writes guest");
    use object::{Object, ObjectSymbol};
    file.symbols()
        .find(|symbol| symbol.name() == Ok(name))
        .map(|symbol| symbol.address())
        .unwrap_or_else(|| panic!("no symbol {name} in the writes guest"))
}

/// A range inside the guest's `zone` (offsets as in writes.c).
fn zone(offset: u64, len: u64) -> String {
    format!("{:#x}:{len}", symbol("zone") + offset)
}

/// `lore-dbg writes TRACE RANGE --json`, parsed; the writes made after boot
/// (the boot code's zeroing of the bss touches every zone byte first).
fn writes(trace: &Path, range: &str) -> Vec<Value> {
    let finished = lore(&["writes", trace.to_str().unwrap(), range, "--json"]);
    assert_eq!(finished.code(), 0, "writes {range}: {finished:#?}");
    assert!(
        finished
            .stderr
            .contains("guest accesses to the watched pages trapped"),
        "the trap count is reported: {finished:#?}"
    );
    let list: Vec<Value> = serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|error| panic!("writes {range}: {error}: {}", finished.stdout));
    list.into_iter()
        .filter(|write| write["function"] != "_start")
        .collect()
}

/// (function, old, new) of each write, values as numbers.
fn summary(list: &[Value]) -> Vec<(String, Value, Value)> {
    list.iter()
        .map(|write| {
            for key in ["position", "pc", "function", "file", "line", "old", "new"] {
                assert!(write.get(key).is_some(), "{key} missing in {write}");
            }
            (
                write["function"].as_str().unwrap_or("??").to_string(),
                write["old"].clone(),
                write["new"].clone(),
            )
        })
        .collect()
}

fn one(function: &str, old: u64, new: u64) -> (String, Value, Value) {
    (function.to_string(), old.into(), new.into())
}

#[test]
fn stores_of_every_width_straddling_and_at_the_edge() {
    let trace = trace();
    for (offset, len, new) in [
        (0x100, 1, 0x11u64),
        (0x108, 2, 0x2222),
        (0x110, 4, 0x4444_4444),
        (0x118, 8, 0x8888_8888_8888_8888),
    ] {
        assert_eq!(
            summary(&writes(trace, &zone(offset, len))),
            [one("case_sizes", 0, new)],
            "{len}-byte store"
        );
    }
    // 16 bytes with SSE: KVM hands the store over in two halves.
    let sixteen = writes(trace, &zone(0x120, 16));
    assert_eq!(sixteen.len(), 1, "{sixteen:?}");
    assert_eq!(sixteen[0]["function"], "case_sizes");
    assert_eq!(
        sixteen[0]["new"],
        Value::from((0x10u8..0x20).collect::<Vec<u8>>())
    );
    // Across the boundary of the zone's two pages.
    assert_eq!(
        summary(&writes(trace, &zone(4096 - 4, 8))),
        [one("case_straddle", 0, 0x0123_4567_89ab_cdef)]
    );
    // An 8-byte store whose upper half is the 4-byte target.
    assert_eq!(
        summary(&writes(trace, &zone(0x140, 4))),
        [one("case_edge", 0, 0xeeee_eeee)]
    );
}

#[test]
fn string_instructions_atomics_and_the_stack() {
    let trace = trace();
    assert_eq!(
        summary(&writes(trace, &zone(0x200 + 40, 4))),
        [one("case_strings", 0, 0xabab_abab)],
        "rep stosb"
    );
    assert_eq!(
        summary(&writes(trace, &zone(0x280 + 8, 8))),
        [one("case_strings", 0, 0xabab_abab_abab_abab)],
        "rep movsq"
    );
    assert_eq!(
        summary(&writes(trace, &zone(0x300, 8))),
        [one("case_atomics", 0, 0xc0c0_c0c0)],
        "lock cmpxchg"
    );
    assert_eq!(
        summary(&writes(trace, &zone(0x308, 8))),
        [one("case_atomics", 0, 0x5a5a_5a5a)],
        "xchg"
    );
    assert_eq!(
        summary(&writes(trace, &zone(0x310, 8))),
        [one("case_atomics", 0, 0x33)],
        "lock xadd"
    );
    // The push, then the call's return address, on a stack inside the zone.
    let stack = writes(trace, &zone(0x800 - 16, 16));
    assert_eq!(stack.len(), 2, "{stack:?}");
    assert!(stack.iter().all(|write| write["function"] == "case_stack"));
    let pushed: Vec<u8> = [[0u8; 8], 0x5a5au64.to_le_bytes()].concat();
    assert_eq!(stack[0]["new"], Value::from(pushed));
    // A store of the value already there is a write too.
    assert_eq!(
        summary(&writes(trace, &zone(0x318, 8))),
        [one("case_same", 0, 0x77), one("case_same", 0x77, 0x77)]
    );
    // fxsave, which KVM's emulator cannot store to a trapped page: it runs once
    // untrapped. Its first 8 bytes: FCW 0x37f, FSW 0, FTW 0, FOP 0.
    assert_eq!(
        summary(&writes(trace, &zone(0x400, 8))),
        [one("case_fxsave", 0, 0x37f)]
    );
}

#[test]
fn physical_memory_is_followed_not_virtual_addresses() {
    let trace = trace();
    // remap_old is written once through 0x40000000 while that maps to it, and
    // never through its own address; remap_new once after the remap.
    assert_eq!(
        summary(&writes(trace, "remap_old:8")),
        [one("case_paging", 0, 0xaaaa)]
    );
    assert_eq!(
        summary(&writes(trace, "remap_new:8")),
        [one("case_paging", 0, 0xbbbb)]
    );
    // The loader's value is where the list starts: it is no write.
    let loaded = writes(trace, "loaded");
    assert_eq!(summary(&loaded), [one("main", 0x600d, 0xbad)]);
    let line = line_of("writes", "loaded = 0xbad;");
    assert_eq!(loaded[0]["line"], Value::from(line));
    assert!(loaded[0]["file"]
        .as_str()
        .is_some_and(|file| file.ends_with("writes.c")));
}

#[test]
fn a_watched_page_that_becomes_a_page_table_is_reported_not_hidden() {
    // `tables` becomes the page tables of 0x40000000 after the watch is set:
    // the CPU cannot set accessed and dirty bits in a read-only page, and the
    // replay's checks say so instead of listing a wrong history.
    let trace = trace();
    let finished = lore(&["writes", trace.to_str().unwrap(), "tables:16"]);
    assert_eq!(finished.code(), 2, "{finished:#?}");
    assert!(
        finished.stderr.contains("diverged"),
        "a divergence is reported: {finished:#?}"
    );
}

#[test]
fn ranges_that_do_not_resolve_are_clear_errors() {
    let trace = trace();
    for (range, says) in [
        ("no_such_variable", "no symbol 'no_such_variable'"),
        ("zone:0", "the length must be"),
        ("zone:x", "'x' is not a length"),
    ] {
        let finished = lore(&["writes", trace.to_str().unwrap(), range]);
        assert_eq!(finished.code(), 2, "{range}: {finished:#?}");
        assert!(finished.stderr.contains(says), "{range}: {finished:#?}");
    }
}

#[test]
fn the_noisy_counter_beside_the_targets_costs_traps_not_steps() {
    // Every write of the counter (3100 of them) is listed, in order, each with
    // a position; the count matches what the guest printed.
    let trace = trace();
    let list = writes(trace, &zone(0, 8));
    let counted: Vec<u64> = list
        .iter()
        .filter(|write| write["function"] == "noise_burst")
        .map(|write| write["new"].as_u64().expect("a number"))
        .collect();
    assert_eq!(counted.len(), 3100);
    assert!(counted.iter().copied().eq(1..=3100), "in order, one by one");
    assert!(list
        .iter()
        .all(|write| write["position"].as_str().is_some_and(|p| p.contains('@'))));
}
