//! lore-dbg: a time-travel debugger for whole KVM virtual machines.
//!
//! The crate is organised in layers (docs/design.md, "Layers and crates"), imports
//! pointing down only: the CLI (`main.rs`) and [`info`]; [`record`] and [`gdb`];
//! [`runner`] (the live vCPU loop) and [`replay`] (the replayer and its timeline);
//! [`machine`] (the one VM, devices and exit handler both drive) and [`clock`];
//! at the bottom [`vmm`] (the KVM objects), [`boot`] (the multiboot loader),
//! [`trace`] (the files of a recording, importing no other module),
//! [`digest`] and [`vga`] (the text screen, read from guest memory). Devices live in the `lore-devices` crate, snapshots in
//! `snapshots`, the gdb stub in `lore-stub`, the little-endian codec in
//! `lore-codec`.

pub mod boot;
pub mod clock;
pub mod digest;
pub mod gdb;
pub mod guests;
pub mod info;
pub mod machine;
pub mod record;
pub mod replay;
pub mod runner;
pub mod symbols;
pub mod trace;
pub mod vga;
pub mod vmm;
pub mod writes;

/// Size of a guest page in bytes, the one page size of this crate: the granularity
/// of guest-virtual to guest-physical translation (4 KiB pages; larger pages are
/// multiples), of KVM's dirty log, of the memory digests ([`digest`]) and of the
/// snapshot store.
pub const PAGE_SIZE: u64 = 4096;

// The snapshot store keeps pages of its own size; if it differed, a snapshot built
// from KVM's dirty log would miss or split pages.
const _: () = assert!(PAGE_SIZE == snapshots::PAGE_SIZE as u64);
