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
    Certificate {
        /// Which certificate: the SHA-256 of its DER encoding.
        fingerprint: CertificateFingerprint,
    },
}

/// The SHA-256 digest of a certificate's DER encoding, as administrators compare certificates.
/// `Display` and `Debug` show it as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertificateFingerprint(pub [u8; 32]);

impl std::fmt::Display for CertificateFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl std::fmt::Debug for CertificateFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertificateFingerprint({self})")
    }
}

/// The user a request acts for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    /// The user principal name or e-mail address, as given.
    pub user: String,
    /// Where it came from.
    pub source: IdentitySource,
}
