//! lore-dbg: a time-travel debugger for whole KVM virtual machines.
//!
//! The crate is organised as docs/design.md, "Layers and crates", describes: [`vmm`]
//! holds the KVM objects, [`boot`] the multiboot loader, [`runner`] the vCPU loop;
//! devices live in the `lore-devices` crate, snapshots in `snapshots`, the gdb stub
//! in `lore-stub`.

pub mod boot;
pub mod clock;
pub mod digest;
pub mod gdb;
pub mod guests;
pub mod machine;
pub mod record;
pub mod replay;
pub mod runner;
pub mod trace;
pub mod vmm;
