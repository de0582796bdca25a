//! Client certificates on the listener: which ones count as valid, and the rustls verifier that
//! asks for them.
//!
//! A certificate is valid when webpki accepts its chain against the configured client CA bundle
//! (signature, validity period, the `clientAuth` extended key usage when the certificate has that
//! extension, and revocation by the configured CRLs), its key usage (when present) allows digital
//! signatures, and every [`CertificateRule`] added accepts it (the authentication layer adds one
//! that requires a user name).
//!
//! - [`ClientCertMode::Required`]: an invalid or missing certificate fails the handshake.
//! - [`ClientCertMode::Optional`]: rustls's own verifier would also fail the handshake on an
//!   invalid certificate, which is not what "optional" means to an administrator: a client with a
//!   stale certificate should still reach Exchange with its other credentials. So at handshake
//!   time any chain is accepted, and only the proof of possession of its key (the
//!   `CertificateVerify` signature) is checked; the listener then validates the chain with
//!   [`ClientAuth::validate`] and records the outcome in the connection's
//!   [`PeerCertificate`](crate::server::PeerCertificate). Only a valid one ever names a user.
//!
//! ```no_run
//! use ews_proxy_core::server::{PeerCertificate, Server, ServerSettings};
//! use ews_proxy_core::tls::{self, ClientAuth, ClientCertMode};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use std::path::Path;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client_auth = ClientAuth::load(
//!     ClientCertMode::Optional,
//!     Path::new("/etc/seg/client-ca.pem"),
//!     &["/etc/seg/revoked.crl".into()],
//! )?
//! .expect("optional is not off");
//! let config = tls::server_config_with_client_auth(
//!     Path::new("/etc/seg/cert.pem"),
//!     Path::new("/etc/seg/key.pem"),
//!     &client_auth,
//! )?;
//! let service = tower::service_fn(|request: Request<hyper::body::Incoming>| async move {
//!     let valid = request
//!         .extensions()
//!         .get::<PeerCertificate>()
//!         .is_some_and(|peer| peer.valid().is_ok());
//!     let body = if valid { "valid certificate" } else { "no valid certificate" };
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
//! });
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! Server::new(listener, ServerSettings::default())
//!     .with_tls(config)
//!     .with_client_auth(client_auth)
//!     .serve(service, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # Ok(())
//! # }
//! ```

use super::{TlsError, load_certificates};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{SignatureScheme, pki_types::pem::SectionKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `auth.client_cert`: whether the listener asks clients for a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// No certificate is asked for.
    #[default]
    Off,
    /// A certificate is asked for; a client without one, or with an invalid one, still connects,
    /// without a certificate identity.
    Optional,
    /// A valid certificate is needed to complete the TLS handshake.
    Required,
}

/// Why a client certificate does not count as valid. Its `Display` is one line without secrets,
/// fit for the log.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateRejection {
    /// webpki refused the chain: unknown CA, expired, not yet valid, revoked, wrong extended key
    /// usage, bad encoding…
    #[error("certificate chain refused: {0}")]
    Chain(rustls::Error),
    /// The certificate has a key usage extension without `digitalSignature`, so it may not
    /// authenticate a TLS client.
    #[error("certificate key usage does not allow digital signatures")]
    KeyUsage,
    /// A [`CertificateRule`] refused it; the reason is the rule's.
    #[error("certificate refused: {0}")]
    Rule(String),
    /// The listener has no [`ClientAuth`] to check it with (a configuration mistake of the
    /// embedding application); treated as invalid.
    #[error("certificate not checked: the listener has no client certificate settings")]
    NotChecked,
}

/// An extra condition a client certificate must meet to count as valid, checked after its chain.
///
/// Used for what the TLS layer cannot know: the authentication layer requires that the
/// certificate names a user.
pub trait CertificateRule: std::fmt::Debug + Send + Sync {
    /// `Ok` when the end-entity certificate (DER) is acceptable; otherwise why not, in one line
    /// without secrets.
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), String>;
}

/// How the listener asks for and validates client certificates; cheap to clone.
///
/// Build the listener's TLS configuration with [`server_config_with_client_auth`](super::server_config_with_client_auth)
/// and give the same value to [`Server::with_client_auth`](crate::server::Server::with_client_auth),
/// which validates each presented chain after the handshake.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    required: bool,
    /// rustls's verifier with the CA bundle and CRLs: the definition of a valid chain.
    webpki: Arc<dyn ClientCertVerifier>,
    rules: Vec<Arc<dyn CertificateRule>>,
}

impl ClientAuth {
    /// Asks for a certificate issued by `roots`; clients without a valid one still connect.
    ///
    /// # Errors
    ///
    /// [`TlsError::ClientVerifier`] when `roots` is empty or a CRL does not parse.
    pub fn optional(
        roots: RootCertStore,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsError> {
        Self::build(false, roots, crls)
    }

    /// Requires a valid certificate issued by `roots` to complete the handshake.
    ///
    /// # Errors
    ///
    /// As [`ClientAuth::optional`].
    pub fn required(
        roots: RootCertStore,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsError> {
        Self::build(true, roots, crls)
    }

    /// The settings `mode` asks for, from a PEM CA bundle and CRL files (PEM or DER); `None` for
    /// [`ClientCertMode::Off`] (no file is read then).
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file that cannot be read or used.
    pub fn load(
        mode: ClientCertMode,
        ca: &Path,
        crl_files: &[PathBuf],
    ) -> Result<Option<Self>, TlsError> {
        if mode == ClientCertMode::Off {
            return Ok(None);
        }
        let mut roots = RootCertStore::empty();
        for cert in load_certificates(ca)? {
            roots.add(cert).map_err(|source| TlsError::BadTrustAnchor {
                path: ca.into(),
                source,
            })?;
        }
        let mut crls = Vec::new();
        for path in crl_files {
            let crl = load_crl(path)?;
            // Parsed here, one file at a time, so that an error names its file.
            WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots.clone()),
                super::crypto_provider(),
            )
            .with_crls([crl.clone()])
            .build()
            .map_err(|source| TlsError::BadCrl {
                path: path.clone(),
                source: Box::new(source),
            })?;
            crls.push(crl);
        }
        Self::build(mode == ClientCertMode::Required, roots, crls).map(Some)
    }

    fn build(
        required: bool,
        roots: RootCertStore,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsError> {
        let webpki =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::crypto_provider())
                .with_crls(crls)
                // A CRL file revokes what it lists; an issuer without a configured CRL (an
                // intermediate the operator has no CRL for) is not a reason to refuse everyone.
                .allow_unknown_revocation_status()
                .build()
                .map_err(|source| TlsError::ClientVerifier(Box::new(source)))?;
        Ok(ClientAuth {
            inner: Arc::new(Inner {
                required,
                webpki,
                rules: Vec::new(),
            }),
        })
    }

    /// Adds a rule every valid certificate must also meet.
    pub fn with_rule(self, rule: Arc<dyn CertificateRule>) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.rules.push(rule);
        ClientAuth {
            inner: Arc::new(inner),
        }
    }

    /// The mode: [`ClientCertMode::Optional`] or [`ClientCertMode::Required`].
    pub fn mode(&self) -> ClientCertMode {
        if self.inner.required {
            ClientCertMode::Required
        } else {
            ClientCertMode::Optional
        }
    }

    /// Whether `chain` (end entity first, as the client sent it) is a valid client certificate
    /// now; see the [module docs](self).
    pub fn validate(&self, chain: &[CertificateDer<'_>]) -> Result<(), CertificateRejection> {
        self.validate_at(chain, UnixTime::now())
    }

    fn validate_at(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), CertificateRejection> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(CertificateRejection::Chain(
                rustls::Error::NoCertificatesPresented,
            ));
        };
        self.inner
            .webpki
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(CertificateRejection::Chain)?;
        check_key_usage(end_entity)?;
        for rule in &self.inner.rules {
            rule.check(end_entity).map_err(CertificateRejection::Rule)?;
        }
        Ok(())
    }

    /// The rustls verifier for the listener's configuration; see the [module docs](self).
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(HandshakeVerifier { auth: self.clone() })
    }
}

/// webpki checks the extended key usage but not the key usage of an end-entity certificate.
fn check_key_usage(end_entity: &CertificateDer<'_>) -> Result<(), CertificateRejection> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad_encoding = || {
        CertificateRejection::Chain(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))
    };
    let (_, cert) = X509Certificate::from_der(end_entity).map_err(|_| bad_encoding())?;
    match cert.key_usage() {
        Ok(Some(usage)) if !usage.value.digital_signature() => Err(CertificateRejection::KeyUsage),
        Ok(_) => Ok(()),
        // Two key usage extensions, or one that does not parse.
        Err(_) => Err(bad_encoding()),
    }
}

/// Reads one CRL: PEM (the first `X509 CRL` section) or DER.
fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::CrlFile {
        path: path.into(),
        source,
    })?;
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let pem_error = |source| TlsError::Pem {
            what: "certificate revocation list",
            path: path.into(),
            source,
        };
        let mut found = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
            let (kind, der) = section.map_err(pem_error)?;
            if kind == SectionKind::Crl {
                found = Some(CertificateRevocationListDer::from(der));
                break;
            }
        }
        found.ok_or_else(|| TlsError::NoCrl { path: path.into() })
    } else {
        Ok(CertificateRevocationListDer::from(bytes))
    }
}

/// The verifier rustls calls during the handshake.
#[derive(Debug)]
struct HandshakeVerifier {
    auth: ClientAuth,
}

impl ClientCertVerifier for HandshakeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth.inner.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.auth.inner.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !self.auth.inner.required {
            // Optional: validated after the handshake, so that an invalid certificate means
            // "no identity", not "no connection". The signature checks below still prove that
            // the client holds the certificate's key.
            return Ok(ClientCertVerified::assertion());
        }
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        match self.auth.validate_at(&chain, now) {
            Ok(()) => Ok(ClientCertVerified::assertion()),
            Err(rejection) => {
                tracing::info!(reason = %rejection, "client certificate refused: handshake failed");
                Err(match rejection {
                    CertificateRejection::Chain(error) => error,
                    CertificateRejection::KeyUsage => {
                        rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose)
                    }
                    _ => rustls::Error::InvalidCertificate(
                        CertificateError::ApplicationVerificationFailure,
                    ),
                })
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.auth
            .inner
            .webpki
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.auth
            .inner
            .webpki
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.auth.inner.webpki.supported_verify_schemes()
    }
}
