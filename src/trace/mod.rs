//! Trace files (DESIGN §4). [`chunk`] is the self-checking container; the event log,
//! snapshots and the end record are built on it.

pub mod chunk;
