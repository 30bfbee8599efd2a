//! The stub serves one gdb after another ([`lore_stub::serve_until_killed`]):
//! after gdb detaches or drops the connection, even in the middle of a
//! packet, the next gdb connects and finds the machine where the last one
//! left it; gdb's `kill` stops the server.

mod common;

use std::net::TcpListener;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::client::Client;
use common::{run_batch, GDB_TIMEOUT};
use lore_stub::fake::{FakeConfig, FakeMachine};
use lore_stub::{serve_until_killed, SessionEnd};

/// A fake machine served until killed, on a background thread.
struct Server {
    port: u16,
    /// How each session that did not stop the server ended.
    ended: mpsc::Receiver<Result<SessionEnd, String>>,
    thread: JoinHandle<(Result<(), String>, FakeMachine)>,
}

impl Server {
    fn start(config: FakeConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let port = listener.local_addr().expect("local address").port();
        let (sender, ended) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut machine = FakeMachine::new(config);
            let result = serve_until_killed(&listener, &mut machine, |end| {
                let _ = sender.send(end.as_ref().copied().map_err(|error| error.to_string()));
            });
            (result.map_err(|error| error.to_string()), machine)
        });
        Self {
            port,
            ended,
            thread,
        }
    }

    /// How the next session ended (the server goes on).
    fn session_ended(&self) -> Result<SessionEnd, String> {
        self.ended
            .recv_timeout(GDB_TIMEOUT)
            .expect("the session did not end")
    }

    /// Waits for the server to stop (after a kill).
    fn stopped(self) -> (Result<(), String>, FakeMachine) {
        let deadline = Instant::now() + GDB_TIMEOUT;
        while !self.thread.is_finished() {
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.thread.join().expect("the server thread panicked")
    }
}

#[test]
fn the_next_gdb_connects_after_a_detach_and_a_dropped_connection() {
    let server = Server::start(FakeConfig::default());

    let mut first = Client::connect(server.port);
    assert_eq!(first.request("vCont;s"), "S05");
    assert_eq!(first.request("vCont;s"), "S05");
    assert_eq!(first.request("D"), "OK");
    assert_eq!(server.session_ended(), Ok(SessionEnd::Detached));

    // The machine is where the first session left it: two steps in.
    let mut second = Client::connect(server.port);
    assert!(second.monitor("when").contains("position 2"));
    assert_eq!(second.request("m1000,3"), "48ffc0");
    drop(second);
    assert_eq!(server.session_ended(), Ok(SessionEnd::ConnectionClosed));

    // A session that ends in the middle of a packet is just closed.
    let mut third = Client::connect(server.port);
    third.send_raw(b"$m1000,");
    drop(third);
    assert_eq!(server.session_ended(), Ok(SessionEnd::ConnectionClosed));

    let mut last = Client::connect(server.port);
    assert_eq!(last.request("vCont;s"), "S05");
    last.send("k");
    let (result, machine) = server.stopped();
    assert_eq!(result, Ok(()));
    assert_eq!(machine.position(), 3);
    assert!(server_is_gone(&last));
}

/// After `kill`, the server closes the connection.
fn server_is_gone(client: &Client) -> bool {
    use std::io::Read;
    let mut stream = client.stream.try_clone().expect("clone the socket");
    let mut byte = [0u8];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn real_gdb_sessions_one_after_another() {
    let server = Server::start(FakeConfig::default());
    let out = run_batch(server.port, &["stepi", "stepi", "p/x $pc"]);
    assert!(out.contains("$1 = 0x100b"), "{out}");
    assert_eq!(server.session_ended(), Ok(SessionEnd::Detached));

    // The second gdb starts where the first stopped, and can go back.
    let out = run_batch(
        server.port,
        &["p/x $pc", "reverse-stepi", "p/x $pc", "monitor when"],
    );
    assert!(out.contains("$1 = 0x100b"), "{out}");
    assert!(out.contains("$2 = 0x1003"), "{out}");
    assert_eq!(server.session_ended(), Ok(SessionEnd::Detached));

    let out = run_batch(server.port, &["stepi", "p/x $pc", "kill"]);
    assert!(out.contains("$1 = 0x100b"), "{out}");
    let (result, machine) = server.stopped();
    assert_eq!(result, Ok(()));
    assert_eq!(machine.position(), 2);
}
