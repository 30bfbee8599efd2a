//! Threads that wake the vCPU: the deadline ticker and the stdin reader.

use crate::vmm::kick::Kicker;
use std::io::Read;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Wakes the vCPU at the next device deadline while the guest runs.
pub(super) struct Ticker {
    shared: Arc<(Mutex<TickerState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    armed: Option<Instant>,
}

#[derive(Default)]
struct TickerState {
    deadline: Option<Instant>,
    shutdown: bool,
}

impl Ticker {
    pub(super) fn spawn(kicker: Kicker) -> Self {
        let shared = Arc::new((Mutex::new(TickerState::default()), Condvar::new()));
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("lore-ticker".into())
            .spawn(move || {
                let (lock, condvar) = &*thread_shared;
                let Ok(mut state) = lock.lock() else { return };
                while !state.shutdown {
                    match state.deadline {
                        None => {
                            state = match condvar.wait(state) {
                                Ok(state) => state,
                                Err(_) => return,
                            }
                        }
                        Some(deadline) => {
                            let now = Instant::now();
                            if now >= deadline {
                                state.deadline = None;
                                kicker.kick();
                            } else {
                                state = match condvar.wait_timeout(state, deadline - now) {
                                    Ok((state, _)) => state,
                                    Err(_) => return,
                                }
                            }
                        }
                    }
                }
            })
            .ok();
        Self {
            shared,
            thread,
            armed: None,
        }
    }

    /// Arms the ticker for `deadline`; cheap when it is already armed for it.
    pub(super) fn arm(&mut self, deadline: Option<Instant>) {
        if deadline == self.armed {
            return;
        }
        self.armed = deadline;
        let (lock, condvar) = &*self.shared;
        if let Ok(mut state) = lock.lock() {
            state.deadline = deadline;
            condvar.notify_one();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, condvar) = &*self.shared;
        if let Ok(mut state) = lock.lock() {
            state.shutdown = true;
            condvar.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the host's stdin on a thread and kicks the vCPU when bytes arrive.
pub(super) fn spawn_stdin_reader(kicker: Kicker) -> Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("lore-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buffer = [0u8; 256];
            loop {
                match stdin.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(len) => {
                        if sender.send(buffer[..len].to_vec()).is_err() {
                            return;
                        }
                        kicker.kick();
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot read stdin: the guest gets no serial input");
    }
    receiver
}
