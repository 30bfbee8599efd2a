//! User-space PC devices (placeholder).
