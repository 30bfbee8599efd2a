//! Trace files: everything a recording writes and a replay reads (docs/design.md,
//! "The trace format").
//!
//! The trace is the bottom layer of the crate: it depends on no other module of
//! lore-dbg (the VMM, the runner and the replayer build on it, never the other
//! way round), and its own modules import each other in one direction only:
//!
//! * [`id`] — the recording id that ties the files of one trace together;
//! * [`chunk`] — the self-checking container every trace file is made of;
//! * [`event`] and [`event_codec`] — the events and their binary records;
//! * [`header`] — the header record;
//! * [`layout`] — file names and kinds; [`error`] — [`TraceError`];
//! * [`reader`] and [`writer`] — the event log, built on the above;
//! * [`store`] — trace directories and the default trace store, built on all of it.

pub mod chunk;
pub mod error;
pub mod event;
pub mod event_codec;
pub mod header;
pub mod id;
pub mod layout;
pub mod reader;
pub mod store;
pub mod writer;

pub use error::{Corruption, TraceError};
pub use header::{ClockBackend, CpuidRecord, HostFacts, TraceHeader};
pub use id::RecordingId;
pub use reader::{EventLog, EventReader};
pub use store::{Store, TraceDir, TraceSummary};
pub use writer::{EventWriter, WriterStats};
