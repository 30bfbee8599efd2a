//! lore-dbg GDB remote stub (placeholder, see issue 5).
