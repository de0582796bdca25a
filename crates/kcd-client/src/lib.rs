//! Kerberos constrained delegation (MS-SFU): S4U2Self then S4U2Proxy, in pure async Rust.
//!
//! For certificate-based authentication the gateway turns a user's UPN into a service ticket for
//! `HTTP/<exchange host>` on the user's behalf. This crate knows Kerberos and nothing of HTTP or
//! EWS: it takes a user and a target SPN and returns an SPNEGO token for
//! `Authorization: Negotiate`.
//!
//! [`KcdClient`] logs the gateway in with its keytab or password (AS exchange with
//! PA-ENC-TIMESTAMP), asks for a ticket to itself on the user's behalf (S4U2Self, with
//! PA-FOR-USER and PA-S4U-X509-USER, whose signed answer from the KDC it verifies: see [`sfu`]),
//! exchanges it for a ticket to the target (S4U2Proxy) and wraps an AP-REQ with a fresh
//! authenticator in SPNEGO, optionally bound to the TLS connection (RFC 5929
//! `tls-server-end-point`, for Exchange's Extended Protection). Tickets are cached per
//! (user, target) until shortly before they expire, and concurrent requests for one key share
//! one KDC exchange. It is also a [`tower::Service`] of [`KcdRequest`].
//!
//! Tokens ask for mutual authentication: the server's `WWW-Authenticate: Negotiate` answer
//! carries an AP-REP that [`verify_mutual`] (or [`NegotiateToken::verify_mutual`]) checks
//! against the token's [`TokenContext`]. Requests in flight to each KDC are bounded
//! ([`KcdConfig::max_in_flight_per_kdc`]) so that a burst of new users does not overflow the
//! KDC's UDP socket.
//!
//! # Tested against two KDCs
//!
//! The integration tests run the client over real sockets against two independent KDCs that
//! `seg-testbed` brings up on loopback:
//!
//! - MIT Kerberos (`tests/s4u.rs`, `tests/acceptor.rs` and others): logins, S4U2Self and
//!   S4U2Proxy with delegation rules in LDAP, the errors, failover, the caches, clock skew.
//! - Samba's Active Directory domain controller (`tests/samba.rs`), for what only Active
//!   Directory does. The gateway logs in as a service account (keytab exported by `samba-tool`,
//!   or its password), with protocol transition and `msDS-AllowedToDelegateTo`, and asks for a
//!   user by her UPN `alice@corp.example`, an enterprise name whose suffix is not the realm
//!   (MIT does not resolve those). The tests prove that the KDC resolves it and issues a ticket
//!   to Exchange, encrypted with RC4 as AD does for accounts without
//!   `msDS-SupportedEncryptionTypes`, that names the UPN (NT-ENTERPRISE, in the realm) and
//!   carries a PAC (AD-IF-RELEVANT, AD-WIN2K-PAC) whose UPN_DNS_INFO names the account `alice`;
//!   that her account name as a plain principal works too; that MIT's GSSAPI accepts the
//!   Negotiate token and its mutual-authentication reply verifies; that a target outside
//!   `msDS-AllowedToDelegateTo` is [`KcdError::DelegationNotAllowed`] and an unknown UPN
//!   [`KcdError::UnknownUser`]. MIT's own `kinit`/`kvno` prove the set-up first.
//!
//! ```no_run
//! use kcd_client::{Credentials, KcdClient, KcdConfig, RealmConfig, UserName};
//!
//! # async fn run() -> Result<(), kcd_client::KcdError> {
//! let config = KcdConfig::new(
//!     vec![RealmConfig::new("corp.example", ["dc1.corp.example", "dc2.corp.example:88"])],
//!     "HTTP/seg.corp.example",
//!     Credentials::KeytabFile("/etc/seg/seg.keytab".into()),
//! );
//! let client = KcdClient::new(config)?;
//! let alice = UserName::enterprise("alice@corp.example")?;
//! let token = client.negotiate_token(&alice, "HTTP/exchange.corp.example", None).await?;
//! assert!(token.to_header_value().starts_with("Negotiate "));
//! # Ok(()) }
//! ```

pub mod crypto;
pub mod keytab;
pub mod krb5_conf;

mod ap_req;
mod asn1;
mod cache;
mod client;
mod clock;
mod config;
mod error;
mod gss;
mod kdc;
mod login;
mod mutual;
mod name;
mod s4u;
pub mod sfu;
pub mod spnego;
mod transport;

pub use client::{KcdClient, KcdRequest, KdcExchanges, NegotiateToken, ServiceTicket};
pub use config::{Credentials, KcdConfig, RealmConfig};
pub use error::KcdError;
pub use gss::{
    CONTEXT_FLAGS, ChannelBindings, GSS_CHECKSUM_TYPE, gss_checksum, tls_server_end_point_hash,
};
pub use kdc::decode_kdc_reply;
pub use mutual::{TokenContext, verify_mutual};
pub use name::UserName;
pub use transport::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_UDP_TIMEOUT, TransportMode};
