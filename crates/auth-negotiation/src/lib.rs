//! Authentication of ENS traffic to Exchange, the way the mail app authenticates to ActiveSync.
//!
//! Sits in the gateway's stack after the EWS operation sniffer of [`ews_proxy_core`] and before
//! the compliance layer and the reverse proxy:
//!
//! - [`ntlm`]: refuses NTLM (directly or inside `Negotiate`) with `401`, never forwarding it;
//! - [`schemes`]: refuses Basic or Bearer credentials when that mode is not enabled;
//! - [`bearer`]: with the issuer's keys configured, refuses bearer tokens whose signature or
//!   claims do not verify;
//! - [`identity`]: learns the user from Basic or Bearer credentials and passes it on as an
//!   [`ews_proxy_core::identity::ClientIdentity`], the contract with the compliance layer;
//! - [`client_cert`]: learns the user from the UPN of the connection's valid client certificate
//!   when the request carries no credentials (certificate-based authentication);
//! - [`kcd`]: answers a certificate user's request with `Authorization: Negotiate` from a
//!   constrained-delegation ticket ([`kcd_client`]), retrying once after a `401`, `503` when the
//!   KDC fails;
//! - [`challenges`]: `remove.unsupported.auth.for.ews`, takes NTLM (and, without a certificate,
//!   Negotiate) out of Exchange's `WWW-Authenticate` challenges.
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

pub mod bearer;
pub mod challenges;
pub mod client_cert;
pub mod identity;
pub mod kcd;
pub mod ntlm;
pub mod schemes;

pub use ews_proxy_core;
pub use kcd_client;
