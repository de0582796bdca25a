//! Authentication of ENS traffic to Exchange, the way the mail app authenticates to ActiveSync.
//!
//! Sits in the gateway's stack after the EWS operation sniffer of [`ews_proxy_core`] and before the
//! reverse proxy. It will pass `Basic` and `Bearer` credentials through untouched, answer Exchange's
//! `Negotiate` challenge with a Kerberos ticket obtained by constrained delegation ([`kcd_client`])
//! for clients that presented a valid certificate, refuse NTLM, and remove the challenges the
//! gateway cannot support (`remove.unsupported.auth.for.ews`).
//!
//! Status: skeleton. The layers land with the auth-negotiation issue; until then the crate only
//! reserves its place in the dependency graph (it uses `ews-proxy-core` and `kcd-client`, never
//! `compliance-policy`).

pub use ews_proxy_core;
pub use kcd_client;
