//! The per-device compliance view and the tower layer that blocks non-compliant devices.
//!
//! The gateway keeps a view of every device known to the management console (UEM), decides for each
//! ENS request whether its device may reach Exchange, and answers a blocked device with `403` and an
//! EWS SOAP fault. It uses [`ews_proxy_core`] for the request metadata and faults.
//!
//! Status: skeleton. The view, the UEM sync and the enforcement layer land with the compliance issue.

pub use ews_proxy_core;
