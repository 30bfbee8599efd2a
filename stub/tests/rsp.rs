//! The stub at the protocol level, with a minimal RSP client: what gdb's
//! packets get back, without gdb's own interpretation in between.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::client::{decode_hex, Client};
use common::Served;
use lore_stub::fake::FakeConfig;
use lore_stub::{Capabilities, SessionEnd};

#[test]
fn advertises_reverse_execution_and_no_range_stepping() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    let supported = client.request("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386");
    for feature in [
        "ReverseStep+",
        "ReverseContinue+",
        "swbreak+",
        "hwbreak+",
        "qXfer:features:read+",
    ] {
        assert!(
            supported.contains(feature),
            "{feature} missing from {supported}"
        );
    }
    let vcont = client.request("vCont?");
    assert!(vcont.starts_with("vCont;c;C;s;S"), "{vcont}");
    assert!(
        !vcont.contains(";r"),
        "range stepping must not be advertised: {vcont}"
    );
    let xml = client.request("qXfer:features:read:target.xml:0,ffff");
    assert!(xml.starts_with('l') || xml.starts_with('m'), "{xml}");
    for feature in [
        "org.gnu.gdb.i386.core",
        "org.gnu.gdb.i386.sse",
        "org.gnu.gdb.i386.segments",
        "org.lore-dbg.x86_64.system",
    ] {
        assert!(
            xml.contains(feature),
            "{feature} missing from the target description"
        );
    }
    client.send("D");
    assert_eq!(client.receive(), "OK");
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn unknown_packets_get_empty_replies_and_the_session_survives() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    assert_eq!(client.request("qLoreNonsense:1234"), "");
    assert_eq!(client.request("vMustReplyEmpty"), "");
    assert_eq!(client.request("Z9,1000,1"), "");
    assert_eq!(client.request("?"), "T05thread:01;");
    let registers = client.request("g");
    assert_eq!(registers.len(), 2 * lore_stub::arch::REGISTER_BYTES);
    client.send("k");
    assert_eq!(served.finish().0, Ok(SessionEnd::Killed));
}

#[test]
fn writes_and_bad_reads_are_errors() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    assert_eq!(client.request("M2000,1:05"), "E1e");
    let registers = client.request("g");
    assert_eq!(client.request(&format!("G{registers}")), "E1e");
    assert_eq!(client.request("m0,4"), "E0e");
    assert_eq!(client.request("m2ffe,4"), "0000");
    assert_eq!(client.request("m1000,3"), "48ffc0");
    client.send("D");
    assert_eq!(client.receive(), "OK");
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn breakpoint_and_watchpoint_limits() {
    let served = Served::start(FakeConfig {
        capabilities: Capabilities {
            max_breakpoints: Some(2),
            max_watchpoints: Some(1),
        },
        ..FakeConfig::default()
    });
    let mut client = Client::connect(served.port);
    assert_eq!(client.request("Z0,1003,1"), "OK");
    assert_eq!(
        client.request("Z1,1003,1"),
        "OK",
        "sw and hw at one address are distinct"
    );
    assert_eq!(
        client.request("Z0,100b,1"),
        "E16",
        "third breakpoint is over capacity"
    );
    assert_eq!(
        client.request("z0,100b,1"),
        "E16",
        "removing a missing breakpoint fails"
    );
    assert_eq!(
        client.request("Z2,2000,3"),
        "E16",
        "length 3 is not a debug-register length"
    );
    assert_eq!(client.request("Z2,2000,8"), "OK");
    assert_eq!(
        client.request("Z3,2008,8"),
        "E16",
        "second watchpoint is over capacity"
    );
    assert_eq!(client.request("z0,1003,1"), "OK");
    assert_eq!(client.request("Z0,100b,1"), "OK", "capacity is free again");
    // The stop reports the kind gdb used for the address.
    assert_eq!(client.request("vCont;c"), "T05thread:01;hwbreak:;");
    assert_eq!(client.request("vCont;c"), "T05thread:01;swbreak:;");
    assert_eq!(client.request("vCont;c"), "T05thread:01;watch:2000;");
    client.send("D");
    assert_eq!(client.receive(), "OK");
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn history_ends_are_replaylog_stops() {
    let served = Served::start(FakeConfig {
        iterations: 1,
        ..FakeConfig::default()
    });
    let mut client = Client::connect(served.port);
    assert_eq!(client.request("bs"), "T05replaylog:begin;");
    assert_eq!(client.request("vCont;s"), "S05");
    assert_eq!(client.request("vCont;c"), "T05replaylog:end;");
    assert_eq!(client.request("bc"), "T05replaylog:begin;");
    client.send("D");
    assert_eq!(client.receive(), "OK");
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn interrupt_and_progress_during_a_long_continue() {
    let served = Served::start(FakeConfig {
        iterations: 2000,
        instruction_delay: Duration::from_millis(1),
        progress_every: 20,
        ..FakeConfig::default()
    });
    let mut client = Client::connect(served.port);
    let started = Instant::now();
    client.send("vCont;c");
    // The first progress note comes after 20 instructions (about 20 ms).
    let progress = client.receive();
    assert!(progress.starts_with('O'), "{progress}");
    let note = String::from_utf8(decode_hex(&progress[1..])).expect("utf-8 note");
    assert!(note.starts_with("lore-dbg: at position"), "{note}");
    std::thread::sleep(Duration::from_millis(200));
    client.stream.write_all(&[0x03]).expect("send Ctrl-C");
    let stop = loop {
        let packet = client.receive();
        if !packet.starts_with('O') {
            break packet;
        }
    };
    assert_eq!(stop, "S02", "a Ctrl-C stops with SIGINT");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The session goes on from where the interrupt stopped it.
    assert_eq!(client.request("bs"), "S05");
    client.send("D");
    assert_eq!(client.receive(), "OK");
    let (end, machine) = served.finish();
    assert_eq!(end, Ok(SessionEnd::Detached));
    assert!(machine.position() > 20 && machine.position() < machine.last_position());
}

#[test]
fn gdb_vanishing_ends_the_session_cleanly() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    assert_eq!(client.request("?"), "T05thread:01;");
    drop(client);
    assert_eq!(served.finish().0, Ok(SessionEnd::ConnectionClosed));
}
