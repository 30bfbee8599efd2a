//! Trace files (docs/design.md, "The trace format"). [`chunk`] is the self-checking
//! container; the event log, snapshots and the end record are built on it.

pub mod chunk;
pub mod event;
pub mod event_codec;
pub mod header;
pub mod reader;
pub mod store;
pub mod writer;

pub use header::{ClockBackend, HostFacts, TraceHeader};
pub use reader::{EventLog, EventReader};
pub use store::{Store, TraceDir, TraceError, TraceSummary};
pub use writer::{EventWriter, WriterStats};
