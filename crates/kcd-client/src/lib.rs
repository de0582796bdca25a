//! Kerberos constrained delegation (MS-SFU): S4U2Self then S4U2Proxy, in pure async Rust.
//!
//! For certificate-based authentication the gateway turns a user's UPN into a service ticket for
//! `HTTP/<exchange host>` on the user's behalf. This crate knows Kerberos and nothing of HTTP or
//! EWS: it takes a UPN and a target SPN and returns an SPNEGO token.
//!
//! Status: skeleton. The client lands with the kcd-client issue.
