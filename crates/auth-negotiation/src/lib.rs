//! Authentication of ENS traffic to Exchange, the way the mail app authenticates to ActiveSync.
//!
//! Sits in the gateway's stack after the EWS operation sniffer of [`ews_proxy_core`] and before
//! the compliance layer and the reverse proxy:
//!
//! - [`ntlm`]: refuses NTLM (directly or inside `Negotiate`) with `401`, never forwarding it;
//! - [`identity`]: learns the user from Basic or Bearer credentials and passes it on as an
//!   [`ews_proxy_core::identity::ClientIdentity`], the contract with the compliance layer.
//!
//! Still to come with the auth issue: certificate-based authentication answered with a
//! Kerberos ticket from [`kcd_client`], and `remove.unsupported.auth.for.ews`.
//!
//! ```
//! use auth_negotiation::{identity::IdentifyLayer, ntlm::RefuseNtlmLayer};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::ServiceBuilder;
//!
//! let stack = ServiceBuilder::new()
//!     .layer(RefuseNtlmLayer::new())
//!     .layer(IdentifyLayer::new())
//!     .service_fn(|_request: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     });
//! # let _ = stack;
//! ```

pub mod identity;
pub mod ntlm;

pub use ews_proxy_core;
pub use kcd_client;
