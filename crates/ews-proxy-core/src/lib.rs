//! The base of the gateway: an EWS reverse proxy built from tower services.
//!
//! Placeholder doc; the crate-level example lands with the proxy.

pub mod body;
pub mod fault;
pub mod operation;
