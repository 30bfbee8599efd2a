//! Incremental page store (placeholder, see issue 3).
