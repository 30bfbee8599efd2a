//! Where each part of a trace lives: the file names inside a trace directory and
//! the file and chunk kinds of the chunk container ([`super::chunk`]) that mark
//! each trace file's content.
//!
//! A trace directory holds:
//! * `header` — one header chunk ([`super::TraceHeader`]);
//! * `events` — event chunks ([`super::EventWriter`], [`super::EventReader`]);
//! * `guest.elf` — a copy of the guest image;
//! * `module-0`, `module-1`, … — copies of the multiboot modules, if any;
//! * `snapshots` — written by the snapshot store.
//!
//! These values are part of the on-disk format: changing one means bumping
//! [`super::chunk::TRACE_VERSION`]. They live apart from the modules that read and
//! write the files so that those modules need not import one another.

/// File kind (chunk preamble) of the header file.
pub const HEADER_FILE_KIND: u8 = 1;
/// File kind of the events file.
pub const EVENTS_FILE_KIND: u8 = 2;
/// File kind reserved for a snapshots file built on the chunk container.
pub const SNAPSHOTS_FILE_KIND: u8 = 3;
/// Chunk kind of the header chunk.
pub const HEADER_CHUNK_KIND: u8 = 1;
/// Chunk kind of event chunks.
pub const EVENT_CHUNK_KIND: u8 = 2;

/// Name of the header file in a trace directory.
pub const HEADER_FILE: &str = "header";
/// Name of the events file.
pub const EVENTS_FILE: &str = "events";
/// Name of the copy of the guest image.
pub const IMAGE_FILE: &str = "guest.elf";
/// Name of the copy of multiboot module `index`.
pub fn module_file(index: usize) -> String {
    format!("module-{index}")
}
/// Name reserved for the snapshots.
pub const SNAPSHOTS_FILE: &str = "snapshots";
/// Name of the symlink to the newest trace in the default directory.
pub const LATEST_LINK: &str = "latest-trace";
