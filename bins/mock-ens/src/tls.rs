//! TLS to the gateway: the roots that trust its certificate (`gateway_trust_store`, or the
//! system's), and a certificate device's client certificate, presented on that device's own
//! connections so the gateway authenticates it by its UPN (and reaches Exchange for it by
//! Kerberos constrained delegation) with no `Authorization` header.
//!
//! Every configuration is built with an explicit crypto provider (ring): nothing here sets a
//! process-wide default.
//!
//! ```no_run
//! # fn run(cert_pem: &str, key_pem: &str) -> Result<(), mock_ens::tls::TlsError> {
//! let roots = std::sync::Arc::new(mock_ens::tls::roots(Some(std::path::Path::new("ca.pem")))?);
//! let identity = mock_ens::tls::identity(cert_pem, key_pem)?;
//! let _config = mock_ens::tls::client_config(roots, Some(identity))?;
//! # Ok(()) }
//! ```

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// A certificate device's TLS identity: its certificate chain (leaf first) and private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: only the chain's length is shown.
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Trust roots or a client certificate that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The trust store file could not be read.
    #[error("trust store {path}: {source}")]
    TrustStoreUnreadable {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The trust store file holds no usable CA certificate.
    #[error("trust store {0} holds no usable PEM certificate")]
    NoTrustedCertificate(String),
    /// The system's trust roots could not be loaded.
    #[error("the system's trust roots could not be loaded")]
    NoSystemRoots,
    /// `cert_pem` holds no PEM certificate.
    #[error("auth.certificate.cert_pem holds no PEM certificate")]
    NoCertificate,
    /// `key_pem` holds no PEM private key.
    #[error("auth.certificate.key_pem holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey,
    /// rustls refused the key, or the key does not belong to the certificate.
    #[error("auth.certificate: the key does not fit the certificate: {0}")]
    Refused(#[source] rustls::Error),
}

/// The crypto provider of every configuration made here.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots that trust the gateway's certificate: the CA certificates of the PEM file at
/// `trust_store`, or the system's roots when `None`.
///
/// # Errors
///
/// The file is unreadable or holds no certificate rustls accepts as a root; or, without a
/// file, the system has no roots.
pub fn roots(trust_store: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match trust_store {
        Some(path) => {
            let name = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| TlsError::TrustStoreUnreadable {
                path: name.clone(),
                source,
            })?;
            let certificates = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(TlsError::NoTrustedCertificate(name));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// Parses a certificate device's registered PEM: every certificate of `cert_pem` (leaf
/// first) and the first private key of `key_pem`.
///
/// # Errors
///
/// [`TlsError::NoCertificate`] or [`TlsError::NoPrivateKey`]; whether they belong together is
/// checked by [`client_config`].
pub fn identity(cert_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoPrivateKey)?;
    Ok(Identity { chain, key })
}

/// A client configuration trusting `roots` and presenting `identity` when given (HTTP/1.1,
/// no ALPN, as the plain-HTTP client).
///
/// # Errors
///
/// [`TlsError::Refused`] when the key is not one rustls can sign with or does not match the
/// certificate.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<Identity>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Refused)?
        .with_root_certificates(roots);
    match identity {
        Some(Identity { chain, key }) => builder
            .with_client_auth_cert(chain, key)
            .map_err(TlsError::Refused),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Checks a certificate device's registered PEM: it parses, and the key fits the certificate.
///
/// # Errors
///
/// As [`identity`] and [`client_config`].
pub fn check_identity(cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
    let identity = identity(cert_pem, key_pem)?;
    client_config(Arc::new(RootCertStore::empty()), Some(identity)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["alice".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn matching_certificate_and_key_are_accepted() {
        let (cert, key) = issued();
        check_identity(&cert, &key).unwrap();
        assert_eq!(
            format!("{:?}", identity(&cert, &key).unwrap()),
            "Identity { certificates: 1, .. }"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = issued();
        let (_, other_key) = issued();
        assert!(matches!(
            check_identity(&cert, &other_key),
            Err(TlsError::Refused(_))
        ));
    }

    #[test]
    fn pem_without_certificate_or_key_is_named() {
        let (cert, key) = issued();
        assert!(matches!(
            check_identity(&key, &key),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            check_identity(&cert, &cert),
            Err(TlsError::NoPrivateKey)
        ));
    }

    #[test]
    fn trust_store_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(
            roots(Some(&path)),
            Err(TlsError::NoTrustedCertificate(_))
        ));
        let (cert, _) = issued();
        std::fs::write(&path, cert).unwrap();
        assert_eq!(roots(Some(&path)).unwrap().len(), 1);
        assert!(matches!(
            roots(Some(&dir.path().join("missing.pem"))),
            Err(TlsError::TrustStoreUnreadable { .. })
        ));
    }
}
