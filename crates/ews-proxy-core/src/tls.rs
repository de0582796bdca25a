//! TLS settings of both sides of the gateway, with rustls: the listener ENS connects to, and the
//! client that connects to Exchange.
//!
//! The listener may ask clients for a certificate ([`ClientAuth`], see [`client_auth`]).
//!
//! Only TLS 1.2 and 1.3 are offered. The crypto provider is passed explicitly (ring), never taken
//! from a process-wide default, so that an application embedding these crates can install its own.
//!
//! ```no_run
//! use ews_proxy_core::tls::{self, UpstreamTrust};
//! use std::path::Path;
//!
//! # fn main() -> Result<(), ews_proxy_core::tls::TlsError> {
//! let listener = tls::server_config(Path::new("/etc/seg/cert.pem"), Path::new("/etc/seg/key.pem"))?;
//! let upstream = tls::upstream_client_config(&UpstreamTrust {
//!     trust_store: Some("/etc/seg/exchange-ca.pem".into()),
//!     ignore_ssl_errors: false,
//! })?;
//! # let _ = (listener, upstream);
//! # Ok(())
//! # }
//! ```

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod client_auth;

pub use client_auth::{CertificateRejection, CertificateRule, ClientAuth, ClientCertMode};

/// What went wrong while loading certificates, keys or trust stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds no usable item.
    #[error("cannot read {what} from {path}")]
    Pem {
        /// What was expected in the file (certificate chain, private key, trust store).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file holds no certificate where at least one is needed.
    #[error("no certificate in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of a trust store was refused by rustls.
    #[error("certificate in trust store {path} is not usable")]
    BadTrustAnchor {
        /// The trust store file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the certificate and key (e.g. the key does not match the certificate).
    #[error("certificate {cert} and key {key} do not make a usable TLS identity")]
    BadIdentity {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// A certificate revocation list file could not be read.
    #[error("cannot read certificate revocation list {path}")]
    CrlFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file given as a certificate revocation list holds none.
    #[error("no certificate revocation list in {path}")]
    NoCrl {
        /// The file.
        path: PathBuf,
    },
    /// A certificate revocation list does not parse.
    #[error("certificate revocation list {path} is not usable")]
    BadCrl {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<rustls::server::VerifierBuilderError>,
    },
    /// rustls refused the client CA bundle and CRLs together (e.g. no usable CA).
    #[error("client certificate verifier refused its settings")]
    ClientVerifier(#[source] Box<rustls::server::VerifierBuilderError>),
    /// rustls refused the protocol versions (only possible with a custom provider).
    #[error("tls protocol versions not supported by the crypto provider")]
    Versions(#[source] rustls::Error),
}

/// How the gateway trusts Exchange's certificate: the `exchange.trust_store` and
/// `exchange.ignore_ssl_errors` (SEG V2 `ignoreSslErrorsWithExch`) settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTrust {
    /// A PEM bundle of extra trust anchors (private CA or a self-signed Exchange certificate),
    /// trusted in addition to the system's roots.
    pub trust_store: Option<PathBuf>,
    /// Accept any certificate from Exchange. Insecure: for test labs only; logged at start.
    pub ignore_ssl_errors: bool,
}

/// The crypto provider used by every TLS configuration of this crate.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads every certificate of a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            what: "certificates",
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "private key",
        path: path.into(),
        source,
    })
}

/// The listener's TLS configuration: certificate chain and key from PEM files, TLS 1.2 and 1.3,
/// ALPN `h2` and `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    listener_config(cert, key, None)
}

/// [`server_config`], asking clients for a certificate as `client_auth` says.
///
/// Give the same `client_auth` to
/// [`Server::with_client_auth`](crate::server::Server::with_client_auth): in optional mode the
/// chain is only validated there, after the handshake.
pub fn server_config_with_client_auth(
    cert: &Path,
    key: &Path,
    client_auth: &ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    listener_config(cert, key, Some(client_auth))
}

fn listener_config(
    cert: &Path,
    key: &Path,
    client_auth: Option<&ClientAuth>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certificates(cert)?;
    let private_key = load_private_key(key)?;
    let builder = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Versions)?;
    let builder = match client_auth {
        Some(client_auth) => builder.with_client_cert_verifier(client_auth.verifier()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|source| TlsError::BadIdentity {
            cert: cert.into(),
            key: key.into(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The roots the upstream client trusts: the system's, plus the configured trust store.
///
/// An unreadable system store is not an error (a minimal container has none); an unreadable
/// configured trust store is.
pub fn upstream_roots(trust: &UpstreamTrust) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping part of the system trust store");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &trust.trust_store {
        for cert in load_certificates(path)? {
            roots.add(cert).map_err(|source| TlsError::BadTrustAnchor {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(roots)
}

/// The TLS configuration of the client that connects to Exchange.
///
/// With `ignore_ssl_errors` the certificate chain and name are not checked (handshake signatures
/// still are, so the connection is at least consistent); the caller logs that loudly at start.
pub fn upstream_client_config(trust: &UpstreamTrust) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Versions)?;
    let config = if trust.ignore_ssl_errors {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(upstream_roots(trust)?)
            .with_no_client_auth()
    };
    // ALPN stays empty: the HTTPS connector sets it from the protocols it enables.
    Ok(config)
}

/// `ignoreSslErrorsWithExch`: accepts any certificate, still verifying handshake signatures.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
