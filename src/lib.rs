//! lore-dbg library.
