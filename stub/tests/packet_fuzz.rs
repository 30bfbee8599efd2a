//! Property test of the gdb packet path, end to end over TCP: whatever bytes
//! gdb sends — well-formed commands with random arguments, malformed ones,
//! bad checksums, stray bytes, acknowledgements, Ctrl-C, oversized packets —
//! the session neither panics nor fails nor hangs, and still ends cleanly
//! when gdb detaches afterwards.
//!
//! Bounded: a few hundred cases, each a short session with the fake machine
//! (a few milliseconds), so it runs in the normal test suite.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::client::{encode_hex, frame};
use lore_stub::fake::{FakeConfig, FakeMachine};
use lore_stub::{serve, SessionEnd};
use proptest::prelude::*;

/// Longest one case may take: a session of a few dozen packets against the
/// fake machine takes milliseconds.
const CASE_LIMIT: Duration = Duration::from_secs(10);

/// Commands gdb sends, with arguments drawn at random (some out of range,
/// some malformed by construction).
fn command() -> impl Strategy<Value = String> {
    let address = prop_oneof![0x1000u64..0x1020, 0x2000u64..0x2010, any::<u64>()];
    let length = prop_oneof![0u64..16, any::<u32>().prop_map(u64::from)];
    let word = "[a-z0-9,;:.=-]{0,12}";
    prop_oneof![
        Just("?".to_string()),
        Just("g".to_string()),
        Just("vCont?".to_string()),
        Just("vCont;c".to_string()),
        Just("vCont;s".to_string()),
        Just("vCont;s:1".to_string()),
        Just("bc".to_string()),
        Just("bs".to_string()),
        Just("QStartNoAckMode".to_string()),
        Just("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386".to_string()),
        Just("qAttached".to_string()),
        prop_oneof![
            Just("c"),
            Just("s"),
            Just("C05"),
            Just("S05"),
            Just("k"),
            Just("D"),
            Just("vKill;1"),
            Just("vCont;c:-1"),
            Just("vCont;s:p1.1"),
            Just("qfThreadInfo"),
            Just("qsThreadInfo"),
            Just("qC"),
            Just("T1"),
            Just("qOffsets"),
            Just("qTStatus"),
            Just("QNonStop:1"),
            Just("vMustReplyEmpty"),
            Just("p10"),
            Just("P10=00"),
        ]
        .prop_map(str::to_string),
        "H[gc](-1|0|1|p1\\.1|p1\\.-1|zz)",
        (address.clone(), length.clone()).prop_map(|(a, l)| format!("m{a:x},{l:x}")),
        (address.clone(), "[0-9a-f]{0,8}")
            .prop_map(|(a, d)| format!("M{a:x},{:x}:{d}", d.len() / 2)),
        (address.clone(), "[ -~]{0,8}").prop_map(|(a, d)| format!("X{a:x},{:x}:{d}", d.len())),
        "[0-9a-f]{0,64}".prop_map(|registers| format!("G{registers}")),
        (0u8..5, address.clone(), 0u64..10).prop_map(|(k, a, l)| format!("Z{k},{a:x},{l:x}")),
        (0u8..5, address.clone(), 0u64..10).prop_map(|(k, a, l)| format!("z{k},{a:x},{l:x}")),
        (0u64..0x2000, 0u64..0x2000)
            .prop_map(|(o, l)| format!("qXfer:features:read:target.xml:{o:x},{l:x}")),
        prop_oneof![
            Just("help"),
            Just("when"),
            Just("goto 3"),
            Just("goto x"),
            Just("checkpoint"),
            Just("restart 1"),
            Just("info checkpoints"),
            Just("info trace"),
            Just("phys 0x1000 16"),
            Just("phys 1 99999"),
        ]
        .prop_map(|text| format!("qRcmd,{}", encode_hex(text))),
        // Anything: mostly unknown or malformed commands.
        ("[?a-zA-Z]", word).prop_map(|(head, tail)| format!("{head}{tail}")),
    ]
}

/// One piece of what gdb sends.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => command().prop_map(|command| frame(command.as_bytes())),
        1 => command().prop_map(|command| {
            let mut packet = frame(command.as_bytes());
            let last = packet.len() - 1;
            packet[last] = if packet[last] == b'0' { b'1' } else { b'0' };
            packet
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..24),
        1 => prop_oneof![Just(b"+".to_vec()), Just(b"-".to_vec()), Just(vec![0x03])],
        1 => Just(frame(format!("qRcmd,{}", "61".repeat(9000)).as_bytes())),
    ]
}

/// Sends `input` then a detach to a fresh session; returns how it ended.
fn session(input: &[u8]) -> Result<SessionEnd, String> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let port = listener.local_addr().expect("local address").port();
    let server = std::thread::spawn(move || {
        let mut machine = FakeMachine::new(FakeConfig::default());
        serve(&listener, &mut machine).map_err(|error| error.to_string())
    });
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the stub");
    // Drain the replies so that the stub never blocks on a full socket.
    let mut reader = stream.try_clone().expect("clone the socket");
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    // Whatever state the input left the framing in, `#00` ends a packet
    // being received, so the detach is read as a packet of its own.
    let mut all = input.to_vec();
    all.extend_from_slice(b"#00");
    all.extend_from_slice(&frame(b"D"));
    // The stub may end the session before reading everything (`D`, `k`).
    let _ = stream.write_all(&all);
    let deadline = Instant::now() + CASE_LIMIT;
    while !server.is_finished() {
        if Instant::now() > deadline {
            return Err(format!(
                "the session hung on {:?}",
                String::from_utf8_lossy(&all)
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = stream.shutdown(Shutdown::Both);
    let _ = drain.join();
    server.join().map_err(|_| "the stub panicked".to_string())?
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_input_leaves_the_session_able_to_detach(
        pieces in proptest::collection::vec(piece(), 0..24)
    ) {
        let input = pieces.concat();
        let end = session(&input);
        prop_assert!(
            matches!(end, Ok(SessionEnd::Detached | SessionEnd::Killed)),
            "{end:?} after {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}
