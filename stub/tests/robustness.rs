//! A gdb session survives bad input: a packet with a bad checksum is refused
//! with `-` and can be sent again, a malformed command gets an error reply,
//! stray bytes between packets are skipped, gdb's `-` gets the last reply
//! again, and a packet larger than the stub's buffer is refused; after each,
//! the session answers as before.
//!
//! Every case here ended the session (and `lore-dbg` with status 2) before
//! the stub screened what it hands to `gdbstub` (`lore_stub::framing`).

mod common;

use std::io::Write;
use std::time::Duration;

use common::client::{frame, Client};
use common::Served;
use lore_stub::fake::FakeConfig;
use lore_stub::SessionEnd;

/// The stop reply of the fake machine at rest, to check that a session is
/// still alive and answering.
const AT_REST: &str = "T05thread:01;";

/// Commands that `gdbstub` recognises by their first letters but cannot
/// parse or carry out: each used to end the session with a protocol error.
const MALFORMED: &[&str] = &[
    "?zz",
    "Hg",
    "Hgzz",
    "Hczz",
    "Hg-2",
    "Hgp1.zz",
    "T",
    "Tzz",
    "Tp1.zz",
    "czz",
    "c1000zz",
    "szz",
    "bczz",
    "bszz",
    "vCont?zz",
    "vCont;",
    "vCont;x",
    "vCont;t",
    "vCont;c:zz",
    "vCont;c:-2",
    "vCont;c:p1.zz",
    "vCont;Czz",
    "vCont;Szz",
    "vCont;s;s",
    "vCont;c;s",
    "vCont;r1000",
    "vCont;r1000,zz",
    "vKill;zz",
    "D;zz",
    "qRcmd,zz",
    "m",
    "m1000",
    "m1000,",
    "mzz,4",
    "m1000,zz",
    "M1000",
    "M1000,2:zz",
    "M1000,zz:00",
    "X1000",
    "X1000,zz:ab",
    "G0102",
    "Z0,1000",
    "Z0,zz,1",
    "Z1,zz,1",
    "z0,1000",
    "Z2,2000",
    "Z2,2000,zz",
    "Z3",
    "qXfer:features:read:target.xml",
    "qXfer:features:read:target.xml:0,",
    "qXfer:features:read:target.xml:zz,10",
    "qXfer:features:read:zz:0,10",
    "qSupported:;;",
    "qAttached:zz",
    "QStartNoAckModezz",
];

fn detach(client: &mut Client, served: Served) {
    assert_eq!(client.request("D"), "OK");
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn malformed_commands_get_error_replies_and_the_session_goes_on() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    for command in MALFORMED {
        let reply = client.request(command);
        assert!(
            reply.starts_with('E'),
            "{command:?} got {reply:?}, not an error reply"
        );
        assert_eq!(client.request("?"), AT_REST, "after {command:?}");
    }
    detach(&mut client, served);
}

#[test]
fn malformed_commands_are_acknowledged_then_refused_before_no_ack_mode() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect_with_acks(served.port);
    for command in ["Hgzz", "vCont;s;s", "qRcmd,zz", "QStartNoAckModezz"] {
        assert!(client.request(command).starts_with('E'), "{command:?}");
        assert_eq!(client.request("?"), AT_REST, "after {command:?}");
    }
    detach(&mut client, served);
}

#[test]
fn a_command_refused_in_the_session_state_gets_an_error_reply() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    // After `Hc-1` (resume all threads), gdbstub cannot step backwards.
    assert_eq!(client.request("Hc-1"), "OK");
    assert!(client.request("bs").starts_with('E'));
    assert_eq!(client.request("Hc1"), "OK");
    assert_eq!(client.request("bs"), "T05replaylog:begin;");
    detach(&mut client, served);
}

#[test]
fn a_bad_checksum_is_refused_with_a_nak_and_the_packet_can_be_sent_again() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect_with_acks(served.port);
    client.send_raw(b"$?#00");
    assert_eq!(client.acknowledgement(), b'-');
    client.send_raw(b"$?#zz");
    assert_eq!(client.acknowledgement(), b'-', "checksum digits not hex");
    // gdb resends the packet after a `-`.
    assert_eq!(client.request("?"), AT_REST);
    detach(&mut client, served);
}

#[test]
fn a_bad_checksum_in_no_ack_mode_is_dropped() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    // No acknowledgements in this mode, so nothing answers the corrupt packet
    // and the next reply is that of the next packet.
    client.send_raw(b"$m1000,3#00");
    assert_eq!(client.request("?"), AT_REST);
    detach(&mut client, served);
}

#[test]
fn stray_bytes_between_packets_are_skipped() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    client.send_raw(b"\n\r garbage %Stop:T05;#00 }*");
    assert_eq!(client.request("?"), AT_REST);
    // A `$` inside a packet starts a new one: the first is incomplete.
    client.send_raw(b"$m1000,3$?#3f");
    assert_eq!(client.receive(), AT_REST);
    detach(&mut client, served);
}

#[test]
fn a_nak_from_gdb_gets_the_last_reply_again() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect_with_acks(served.port);
    client.send("m1000,3");
    assert_eq!(client.acknowledgement(), b'+');
    // Read the reply without acknowledging it, then ask for it again.
    client.acks = false;
    assert_eq!(client.receive(), "48ffc0");
    client.acks = true;
    client.send_raw(b"-");
    assert_eq!(client.receive(), "48ffc0");
    assert_eq!(client.request("?"), AT_REST);
    detach(&mut client, served);
}

#[test]
fn an_oversized_packet_is_refused() {
    let served = Served::start(FakeConfig::default());
    let mut client = Client::connect(served.port);
    let huge = format!("qRcmd,{}", "61".repeat(64 << 10));
    client.send_raw(&frame(huge.as_bytes()));
    assert!(client.receive().starts_with('E'));
    assert_eq!(client.request("?"), AT_REST);
    detach(&mut client, served);
}

#[test]
fn bad_input_while_the_machine_runs_does_not_stop_the_session() {
    let served = Served::start(FakeConfig {
        iterations: 400,
        instruction_delay: Duration::from_millis(1),
        progress_every: 0,
        ..FakeConfig::default()
    });
    let mut client = Client::connect(served.port);
    client.send("vCont;c");
    std::thread::sleep(Duration::from_millis(50));
    // Stray bytes and a corrupt packet while running, then Ctrl-C.
    client.send_raw(b"xyz$?#00");
    std::thread::sleep(Duration::from_millis(50));
    client.stream.write_all(&[0x03]).expect("send Ctrl-C");
    let stop = client.receive();
    assert!(
        stop == "S02" || stop == "T05thread:01;replaylog:end;",
        "{stop}"
    );
    assert!(client.request("?").starts_with('T'));
    detach(&mut client, served);
}
