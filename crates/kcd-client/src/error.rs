//! The crate's one error type: what went wrong, named for the caller.

use std::time::Duration;

/// Why a ticket or token could not be had.
///
/// The variants tell apart what an operator fixes in different places: the directory (unknown
/// user, delegation rules), the network (KDC unreachable), the clock, and the gateway's own
/// credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KcdError {
    /// The KDC does not know the user the gateway asked a ticket for (S4U2Self answered
    /// `KDC_ERR_C_PRINCIPAL_UNKNOWN`).
    #[error("the KDC does not know user {user}")]
    UnknownUser {
        /// The user as asked for.
        user: String,
    },
    /// The KDC refused to let the gateway act for the user at the target: the target is not in
    /// the gateway's delegation list (`KDC_ERR_BADOPTION` on S4U2Proxy), or the gateway may not
    /// use protocol transition (the evidence ticket is not forwardable).
    #[error("the gateway may not delegate to {target}: {reason}")]
    DelegationNotAllowed {
        /// The service principal the ticket was for.
        target: String,
        /// What showed it.
        reason: String,
    },
    /// The KDC does not know a service principal (`KDC_ERR_S_PRINCIPAL_UNKNOWN`).
    #[error("the KDC does not know service {principal}")]
    UnknownService {
        /// The service principal.
        principal: String,
    },
    /// No KDC of the realm answered.
    #[error("no KDC of realm {realm} answered after {attempts} attempts")]
    KdcUnreachable {
        /// The realm.
        realm: String,
        /// How many sends (over UDP and TCP, to all KDCs) were tried.
        attempts: usize,
        /// The last failure seen.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The local clock differs from the KDC's by more than it allows, even after adopting the
    /// KDC's time once.
    #[error("the clock differs from the KDC's by about {skew:?}")]
    ClockSkew {
        /// The difference the KDC reported (absolute).
        skew: Duration,
    },
    /// The gateway's own credentials were refused: wrong password or keytab, or the keytab
    /// holds no usable key for the principal.
    #[error("the credentials of {principal} were refused: {reason}")]
    BadCredentials {
        /// The gateway's principal.
        principal: String,
        /// What showed it.
        reason: String,
    },
    /// A KDC reply could not be decoded or did not match the request.
    #[error("malformed KDC reply: {0}")]
    MalformedReply(String),
    /// The KDC answered with an error this crate has no better variant for.
    #[error("the KDC answered error {code}{}", if text.is_empty() { String::new() } else { format!(": {text}") })]
    KdcError {
        /// The Kerberos error code (RFC 4120 7.5.9).
        code: i32,
        /// The KDC's e-text, if any.
        text: String,
    },
    /// The server's answer to a token did not prove that it read the ticket (mutual
    /// authentication, [`crate::verify_mutual`]): it may not be the service the ticket was for.
    #[error("the server failed mutual authentication: {reason}")]
    MutualAuthentication {
        /// What was wrong with its answer.
        reason: String,
    },
    /// A name (user, service, target) cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why.
        reason: String,
    },
    /// The configuration is unusable (no KDC for the realm, unreadable keytab).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The keytab could not be read.
    #[error("the keytab could not be read")]
    Keytab(#[from] crate::keytab::KeytabError),
    /// Encryption or a checksum failed where no better variant applies.
    #[error("cryptography failed")]
    Crypto(#[from] crate::crypto::CryptoError),
}

impl KcdError {
    /// A malformed-reply error for `what`.
    pub(crate) fn malformed(what: impl std::fmt::Display) -> Self {
        Self::MalformedReply(what.to_string())
    }
}
