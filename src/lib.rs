//! Umbrella package of the SEG workspace.
//!
//! It holds no behaviour of its own: the top-level `tests/` (end-to-end tests over real sockets)
//! and `examples/` (one runnable example per crate) belong to it. It re-exports the crates so that
//! an example can name them from one place.

pub use ews_proxy_core;
pub use seg_proxy;
