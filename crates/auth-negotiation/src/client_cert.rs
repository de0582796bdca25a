//! Learns the user of a request from the client certificate of its TLS connection: the
//! certificate-based authentication (CBA) case, a request with a valid certificate and no
//! `Authorization` header.
//!
//! The listener validates the certificate once per connection (CA, validity period, key usage,
//! `clientAuth`, CRLs; see [`ews_proxy_core::tls::client_auth`]) and puts a [`PeerCertificate`]
//! in every request's extensions. This layer reads it and, when it is valid and the request has
//! no `Authorization` header, inserts a [`ClientIdentity`]: the certificate's user principal name
//! as the user, [`IdentitySource::Certificate`] with the certificate's SHA-256 fingerprint as the
//! source. With an `Authorization` header the credentials decide who the user is
//! ([`crate::identity::IdentifyLayer`]); without a valid certificate the request passes on with
//! no identity.
//!
//! The UPN is, in order ([`user_principal_name`]):
//! 1. the Microsoft UPN `otherName` of the subject alternative names
//!    (OID [`UPN_OID`], a `UTF8String` inside `[0] EXPLICIT`);
//! 2. per [`UpnFallback`], the first `rfc822Name` or the subject's common name.
//!
//! A certificate without a UPN is not a valid certificate: [`UpnRule`] makes the listener treat
//! it so (in required mode its handshake fails).
//!
//! ```
//! use auth_negotiation::client_cert::{ClientCertLayer, UpnFallback};
//! use ews_proxy_core::identity::{ClientIdentity, IdentitySource};
//! use ews_proxy_core::server::PeerCertificate;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new()
//!     .layer(ClientCertLayer::new().with_fallback(UpnFallback::Cn))
//!     .service_fn(|request: Request<Full<Bytes>>| async move {
//!         let identity = request.extensions().get::<ClientIdentity>().expect("an identity");
//!         assert_eq!(identity.user, "alice@corp.example");
//!         assert!(matches!(identity.source, IdentitySource::Certificate { .. }));
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     });
//!
//! // What the listener records for a client that presented a valid certificate.
//! let key = rcgen::KeyPair::generate()?;
//! let mut params = rcgen::CertificateParams::default();
//! params.distinguished_name.push(rcgen::DnType::CommonName, "alice@corp.example");
//! let cert = params.self_signed(&key)?;
//! let peer = PeerCertificate::new(vec![cert.der().clone()], Ok(()));
//!
//! let mut request = Request::post("/EWS/Exchange.asmx").body(Full::default())?;
//! request.extensions_mut().insert(peer);
//! service.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```

use ews_proxy_core::identity::{CertificateFingerprint, ClientIdentity, IdentitySource};
use ews_proxy_core::server::PeerCertificate;
use ews_proxy_core::tls::CertificateRule;
use http::{Request, header};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::task::{Context, Poll};
use tower::{Layer, Service};
use x509_parser::asn1_rs::{Any, Class, FromDer, Tag};
use x509_parser::prelude::{GeneralName, X509Certificate};

/// The OID of Microsoft's user principal name `otherName` (`szOID_NT_PRINCIPAL_NAME`).
pub const UPN_OID: &str = "1.3.6.1.4.1.311.20.2.3";

/// The longest user name taken from a certificate, in bytes: a `local@domain` address (64 + 1 +
/// 255). Longer is a hostile certificate, not a user.
pub const MAX_UPN_LEN: usize = 320;

/// `auth.upn_fallback`: where the user comes from when the certificate has no UPN `otherName`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpnFallback {
    /// Nowhere: a certificate without a UPN names no user.
    #[default]
    None,
    /// The first `rfc822Name` (e-mail address) of the subject alternative names.
    Rfc822,
    /// The subject's common name (`CN`).
    Cn,
}

/// Why a certificate names no user. `Display` is one line without the certificate's contents.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpnError {
    /// The certificate is not DER X.509.
    #[error("certificate does not parse")]
    BadCertificate,
    /// The subject alternative names extension does not parse, or is present twice.
    #[error("certificate subject alternative names do not parse")]
    BadSubjectAltName,
    /// A UPN `otherName` is present but is not a `UTF8String` in `[0] EXPLICIT`, or is empty,
    /// too long or holds control characters.
    #[error("certificate user principal name is malformed")]
    MalformedUpn,
    /// No UPN `otherName`, and the configured fallback found no usable name.
    #[error("certificate names no user")]
    NoUpn,
}

/// The user principal name a certificate (DER) names; see the [module docs](self).
///
/// A malformed UPN `otherName` is an error even when a fallback would find a name: a certificate
/// whose UPN does not parse is not trusted to name anyone.
pub fn user_principal_name(der: &[u8], fallback: UpnFallback) -> Result<String, UpnError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| UpnError::BadCertificate)?;
    let names = cert
        .subject_alternative_name()
        .map_err(|_| UpnError::BadSubjectAltName)?
        .map(|san| san.value.general_names.as_slice())
        .unwrap_or_default();
    for name in names {
        if let GeneralName::OtherName(oid, value) = name
            && oid.to_id_string() == UPN_OID
        {
            return upn_value(value).ok_or(UpnError::MalformedUpn);
        }
    }
    let found = match fallback {
        UpnFallback::None => None,
        UpnFallback::Rfc822 => names.iter().find_map(|name| match name {
            GeneralName::RFC822Name(address) => Some(*address),
            _ => None,
        }),
        UpnFallback::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok()),
    };
    found.and_then(usable).ok_or(UpnError::NoUpn)
}

/// The UTF8String inside `[0] EXPLICIT`, the whole of `value` and nothing else.
fn upn_value(value: &[u8]) -> Option<String> {
    let (rest, explicit) = Any::from_der(value).ok()?;
    if !rest.is_empty()
        || explicit.class() != Class::ContextSpecific
        || explicit.tag() != Tag(0)
        || !explicit.header.is_constructed()
    {
        return None;
    }
    let (rest, string) = Any::from_der(explicit.data).ok()?;
    if !rest.is_empty() || string.class() != Class::Universal || string.tag() != Tag::Utf8String {
        return None;
    }
    usable(std::str::from_utf8(string.data).ok()?)
}

/// A user name worth passing on: not empty, not too long, no control characters.
fn usable(user: &str) -> Option<String> {
    (!user.is_empty() && user.len() <= MAX_UPN_LEN && !user.chars().any(char::is_control))
        .then(|| user.to_owned())
}

/// The SHA-256 fingerprint of a certificate's DER encoding.
pub fn fingerprint(der: &[u8]) -> CertificateFingerprint {
    CertificateFingerprint(Sha256::digest(der).into())
}

/// The identity a valid client certificate (DER) gives: its UPN, and its fingerprint as source.
pub fn certificate_identity(der: &[u8], fallback: UpnFallback) -> Result<ClientIdentity, UpnError> {
    Ok(ClientIdentity {
        user: user_principal_name(der, fallback)?,
        source: IdentitySource::Certificate {
            fingerprint: fingerprint(der),
        },
    })
}

/// The listener's rule that a valid client certificate names a user
/// ([`ews_proxy_core::tls::ClientAuth::with_rule`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct UpnRule {
    fallback: UpnFallback,
}

impl UpnRule {
    /// Requires a UPN, found as `fallback` allows.
    pub fn new(fallback: UpnFallback) -> Self {
        UpnRule { fallback }
    }
}

impl CertificateRule for UpnRule {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), String> {
        user_principal_name(end_entity, self.fallback)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

/// Layer that applies [`ClientCert`]; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientCertLayer {
    fallback: UpnFallback,
}

impl ClientCertLayer {
    /// Learns the user from the UPN `otherName` of a valid client certificate only.
    pub fn new() -> Self {
        ClientCertLayer::default()
    }

    /// Falls back to the rfc822Name or the common name as `fallback` says.
    pub fn with_fallback(mut self, fallback: UpnFallback) -> Self {
        self.fallback = fallback;
        self
    }
}

impl<S> Layer<S> for ClientCertLayer {
    type Service = ClientCert<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientCert {
            inner,
            fallback: self.fallback,
        }
    }
}

/// Middleware that puts a client certificate's [`ClientIdentity`] in the request's extensions.
#[derive(Clone, Debug)]
pub struct ClientCert<S> {
    inner: S,
    fallback: UpnFallback,
}

impl<S, B> Service<Request<B>> for ClientCert<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    // Nothing happens on the way back: the inner future is returned as it is.
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !request.headers().contains_key(header::AUTHORIZATION)
            && request.extensions().get::<ClientIdentity>().is_none()
            && let Some(identity) = request
                .extensions()
                .get::<PeerCertificate>()
                .and_then(|peer| {
                    // Learnt once per connection, not parsed and hashed again for each request.
                    peer.identity(self.fallback as u64, |der| {
                        certificate_identity(der, self.fallback).ok()
                    })
                })
        {
            tracing::Span::current().record("user", identity.user.as_str());
            request.extensions_mut().insert(identity);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair, OtherNameValue, SanType};
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    fn certificate(edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Common Name");
        edit(&mut params);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn upn_san(upn: &str) -> SanType {
        SanType::OtherName((
            vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
            OtherNameValue::Utf8String(upn.into()),
        ))
    }

    fn email_san(address: &str) -> SanType {
        SanType::Rfc822Name(address.try_into().unwrap())
    }

    /// A subjectAltName extension whose one name is an otherName with the UPN OID and `value`
    /// (the bytes after the OID) as given.
    fn raw_upn_san(value: &[u8]) -> CustomExtension {
        let oid = [
            0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x14, 0x02, 0x03,
        ];
        let mut other_name = vec![0xa0];
        push_len(&mut other_name, oid.len() + value.len());
        other_name.extend_from_slice(&oid);
        other_name.extend_from_slice(value);
        let mut san = vec![0x30];
        push_len(&mut san, other_name.len());
        san.extend_from_slice(&other_name);
        CustomExtension::from_oid_content(&[2, 5, 29, 17], san)
    }

    fn push_len(out: &mut Vec<u8>, len: usize) {
        match len {
            0..0x80 => out.push(len as u8),
            0x80..0x100 => out.extend_from_slice(&[0x81, len as u8]),
            _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        }
    }

    fn utf8_in_explicit(bytes: &[u8]) -> Vec<u8> {
        let mut string = vec![0x0c];
        push_len(&mut string, bytes.len());
        string.extend_from_slice(bytes);
        let mut explicit = vec![0xa0];
        push_len(&mut explicit, string.len());
        explicit.extend_from_slice(&string);
        explicit
    }

    #[test]
    fn upn_other_name_is_the_user_whatever_the_fallback() {
        let der = certificate(|p| {
            p.subject_alt_names = vec![
                email_san("mail@corp.example"),
                upn_san("alice@corp.example"),
            ]
        });
        for fallback in [UpnFallback::None, UpnFallback::Rfc822, UpnFallback::Cn] {
            assert_eq!(
                user_principal_name(&der, fallback).as_deref(),
                Ok("alice@corp.example")
            );
        }
    }

    #[test]
    fn without_upn_the_fallback_decides() {
        let der = certificate(|p| p.subject_alt_names = vec![email_san("bob@corp.example")]);
        assert_eq!(
            user_principal_name(&der, UpnFallback::None),
            Err(UpnError::NoUpn)
        );
        assert_eq!(
            user_principal_name(&der, UpnFallback::Rfc822).as_deref(),
            Ok("bob@corp.example")
        );
        assert_eq!(
            user_principal_name(&der, UpnFallback::Cn).as_deref(),
            Ok("Common Name")
        );
    }

    #[test]
    fn rfc822_fallback_without_an_address_names_nobody() {
        let der = certificate(|_| {});
        assert_eq!(
            user_principal_name(&der, UpnFallback::Rfc822),
            Err(UpnError::NoUpn)
        );
    }

    #[test]
    fn hand_encoded_upn_reads_like_rcgen_s() {
        let der = certificate(|p| {
            p.custom_extensions = vec![raw_upn_san(&utf8_in_explicit(b"carol@corp.example"))]
        });
        assert_eq!(
            user_principal_name(&der, UpnFallback::None).as_deref(),
            Ok("carol@corp.example")
        );
    }

    #[test]
    fn malformed_upn_names_nobody_even_with_a_fallback() {
        let too_long = vec![b'a'; MAX_UPN_LEN + 1];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not utf-8", utf8_in_explicit(&[0xff, 0xfe, b'@'])),
            ("empty", utf8_in_explicit(b"")),
            (
                "control character",
                utf8_in_explicit(b"alice\n@corp.example"),
            ),
            ("too long", utf8_in_explicit(&too_long)),
            // An IA5String where a UTF8String belongs.
            (
                "wrong string type",
                vec![0xa0, 0x05, 0x16, 0x03, b'a', b'@', b'b'],
            ),
            // The string without its [0] EXPLICIT wrapper.
            ("no explicit tag", vec![0x0c, 0x03, b'a', b'@', b'b']),
            (
                "trailing bytes",
                [utf8_in_explicit(b"a@b"), vec![0x05, 0x00]].concat(),
            ),
            ("length beyond the end", vec![0xa0, 0x7f, 0x0c, 0x7d, b'a']),
            ("nothing", vec![]),
        ];
        for (case, value) in cases {
            let der = certificate(|p| p.custom_extensions = vec![raw_upn_san(&value)]);
            let result = user_principal_name(&der, UpnFallback::Cn);
            assert!(
                matches!(
                    result,
                    Err(UpnError::MalformedUpn | UpnError::BadSubjectAltName)
                ),
                "{case}: {result:?}"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        for der in [
            &b""[..],
            b"\x30\x03abc",
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert_eq!(
                user_principal_name(der, UpnFallback::Cn),
                Err(UpnError::BadCertificate)
            );
        }
    }

    #[test]
    fn fingerprint_is_the_sha256_of_the_der() {
        // SHA-256 of the empty input.
        assert_eq!(
            fingerprint(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    async fn identity_seen(request: Request<()>) -> Option<ClientIdentity> {
        let service = ClientCertLayer::new().layer(service_fn(|request: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(
                request.extensions().get::<ClientIdentity>().cloned(),
            ))
        }));
        service.oneshot(request).await.unwrap().into_body()
    }

    fn with_peer(valid: bool, der: &[u8]) -> Request<()> {
        let mut request = Request::new(());
        let validity = if valid {
            Ok(())
        } else {
            Err(ews_proxy_core::tls::CertificateRejection::NotChecked)
        };
        request.extensions_mut().insert(PeerCertificate::new(
            vec![CertificateDer::from(der.to_vec())],
            validity,
        ));
        request
    }

    #[tokio::test]
    async fn valid_certificate_without_authorization_gives_its_identity() {
        let der = certificate(|p| p.subject_alt_names = vec![upn_san("alice@corp.example")]);
        let identity = identity_seen(with_peer(true, &der)).await.unwrap();
        assert_eq!(identity.user, "alice@corp.example");
        assert_eq!(
            identity.source,
            IdentitySource::Certificate {
                fingerprint: fingerprint(&der)
            }
        );
    }

    #[tokio::test]
    async fn invalid_certificate_gives_no_identity() {
        let der = certificate(|p| p.subject_alt_names = vec![upn_san("alice@corp.example")]);
        assert_eq!(identity_seen(with_peer(false, &der)).await, None);
    }

    #[tokio::test]
    async fn authorization_header_leaves_the_user_to_the_credentials() {
        let der = certificate(|p| p.subject_alt_names = vec![upn_san("alice@corp.example")]);
        let mut request = with_peer(true, &der);
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, "Basic Ym9iOng=".parse().unwrap());
        assert_eq!(identity_seen(request).await, None);
    }

    #[tokio::test]
    async fn no_certificate_gives_no_identity() {
        assert_eq!(identity_seen(Request::new(())).await, None);
    }
}
