//! Who a request is from, as the layers that learn it tell the layers after them.
//!
//! The authentication layer (crate `auth-negotiation`) puts a [`ClientIdentity`] in the
//! request's extensions; the compliance layer reads it to apply user policies. Neither crate
//! knows the other: this type, in the base crate, is their contract.

/// How the user of a request was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdentitySource {
    /// The user name of `Authorization: Basic`.
    Basic,
    /// A claim (`upn`, `preferred_username`, `email`) of an OAuth bearer token.
    Bearer,
    /// The UPN of a verified client certificate.
    Certificate,
}

/// The user a request acts for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    /// The user principal name or e-mail address, as given.
    pub user: String,
    /// Where it came from.
    pub source: IdentitySource,
}
