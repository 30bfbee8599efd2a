//! The guest corpus of `examples/guests/`, built from source by `build.rs`.
//!
//! The demo guest is embedded in the binary so that `lore-dbg run` and
//! `lore-dbg record` work with no argument on a fresh machine.

/// Directory holding every built guest, `NAME.elf`.
pub const GUEST_DIR: &str = env!("LORE_GUEST_DIR");

/// Name of the demo guest run when no image is given.
pub const DEMO_NAME: &str = "canary";

/// The demo guest image.
pub const DEMO_IMAGE: &[u8] = include_bytes!(concat!(env!("LORE_GUEST_DIR"), "/canary.elf"));

/// Path of the built guest `name`.
pub fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(GUEST_DIR).join(format!("{name}.elf"))
}
