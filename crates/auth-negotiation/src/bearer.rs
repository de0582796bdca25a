//! Optional verification of OAuth bearer tokens: with the issuer's public keys configured (a
//! JWKS document and/or PEM public keys), a request whose `Authorization: Bearer` token has a
//! bad signature, has expired, is not yet valid, or names another issuer or audience gets `401`
//! with an EWS SOAP fault saying why and an `X-Seg-Fault` reason; it never reaches Exchange.
//! A token that verifies passes untouched, as does every request without a bearer token.
//!
//! Without this layer (no keys configured) bearer tokens pass unverified and Exchange checks
//! them, as before: the user for compliance still comes from the token's claims
//! ([`crate::identity`]).
//!
//! | refusal | `X-Seg-Fault` |
//! |---|---|
//! | the signature does not verify with any configured key | `bearer-bad-signature` |
//! | `exp` in the past (60 s leeway) | `bearer-expired` |
//! | `nbf` in the future (60 s leeway) | `bearer-not-yet-valid` |
//! | `iss` is not the configured issuer | `bearer-wrong-issuer` |
//! | `aud` is not the configured audience | `bearer-wrong-audience` |
//! | not a JWT, no `exp`, a symmetric or unknown algorithm, no key for its `kid` | `bearer-invalid` |
//!
//! Verification uses [`jsonwebtoken`]: the most used JWT crate of the Rust ecosystem,
//! maintained, with JWKS parsing and the RS/PS/ES/EdDSA algorithms built on RustCrypto (no C, no
//! `unsafe` of ours), and already the test Exchange's verifier's crate. Only asymmetric
//! algorithms are accepted: a gateway holds no shared secret of the issuer's.
//!
//! ```
//! use auth_negotiation::bearer::{BearerKeys, VerifyBearerLayer};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256",
//!     "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
//!     "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
//! let keys = BearerKeys::from_jwks(jwks)?.with_audience("https://exchange.corp.example");
//! let service = ServiceBuilder::new()
//!     .layer(VerifyBearerLayer::new(keys))
//!     .service_fn(|_request: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     });
//! let request = Request::post("/EWS/Exchange.asmx")
//!     .header("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln")
//!     .body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! // Not signed by the issuer: refused before Exchange sees it.
//! assert_eq!(response.headers()["x-seg-fault"], "bearer-bad-signature");
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use ews_proxy_core::fault::{FaultCode, SoapFault};
use ews_proxy_core::future::ShortCircuit;
use http::{HeaderMap, Request, Response, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// How far `exp` and `nbf` may be off, for clocks that disagree a little.
pub const LEEWAY_SECONDS: u64 = 60;

/// Why bearer keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BearerKeyError {
    /// A key file could not be read.
    #[error("cannot read the file")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The JWKS document is not a JSON Web Key Set, or one of its keys is unusable.
    #[error("not a usable json web key set")]
    InvalidJwks(#[source] jsonwebtoken::errors::Error),
    /// The PEM holds no RSA, EC or Ed25519 public key.
    #[error("no rsa, ec or ed25519 public key in the pem")]
    InvalidPem,
    /// The JWKS holds no public key (symmetric keys are not used).
    #[error("the json web key set holds no public key")]
    NoKeys,
}

/// One verification key, with the `kid` it answers to (JWKS keys) or none (PEM keys).
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// The issuer's public keys and the claims a token must carry; plain data, cheap to clone.
#[derive(Clone, Default)]
pub struct BearerKeys {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for BearerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerKeys")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| k.kid.as_deref())
                    .collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl BearerKeys {
    /// The public keys of a JWKS document (`{"keys": [...]}`); symmetric (`oct`) keys are
    /// skipped. Errs when it does not parse or holds no public key.
    pub fn from_jwks(json: &str) -> Result<Self, BearerKeyError> {
        let set: JwkSet = serde_json::from_str(json)
            .map_err(|error| BearerKeyError::InvalidJwks(error.into()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            ) {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(BearerKeyError::InvalidJwks)?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                key,
            });
        }
        if keys.is_empty() {
            return Err(BearerKeyError::NoKeys);
        }
        Ok(BearerKeys {
            keys,
            ..BearerKeys::default()
        })
    }

    /// One public key in PEM (SubjectPublicKeyInfo or PKCS#1 RSA): RSA, EC (P-256, P-384) or
    /// Ed25519. It verifies tokens with any `kid`.
    pub fn from_pem(pem: &str) -> Result<Self, BearerKeyError> {
        let pem = pem.as_bytes();
        let key = DecodingKey::from_ec_pem(pem)
            .or_else(|_| DecodingKey::from_rsa_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| BearerKeyError::InvalidPem)?;
        Ok(BearerKeys {
            keys: vec![Key { kid: None, key }],
            ..BearerKeys::default()
        })
    }

    /// [`BearerKeys::from_jwks`] of a file.
    pub fn read_jwks(path: &Path) -> Result<Self, BearerKeyError> {
        Self::from_jwks(&read(path)?)
    }

    /// [`BearerKeys::from_pem`] of a file.
    pub fn read_pem(path: &Path) -> Result<Self, BearerKeyError> {
        Self::from_pem(&read(path)?)
    }

    /// These keys and `other`'s (the issuer and audience stay this set's).
    pub fn and(mut self, other: BearerKeys) -> Self {
        self.keys.extend(other.keys);
        self
    }

    /// Tokens must name `issuer` in `iss`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Tokens must name `audience` in `aud`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Verifies `token`: `Ok` when a configured key verifies its signature and its claims
    /// hold, else the refusal.
    pub fn verify(&self, token: &str) -> Result<(), Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid)?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(Refusal::Invalid);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let candidates = self
            .keys
            .iter()
            .filter(|key| match (&key.kid, &header.kid) {
                (Some(kid), Some(wanted)) => kid == wanted,
                _ => true,
            });
        let mut refusal = Refusal::Invalid;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(_) => return Ok(()),
                Err(error) => match error.kind() {
                    // This key is not the one (another family, another key): try the next.
                    ErrorKind::InvalidSignature => refusal = Refusal::BadSignature,
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_) => {}
                    // The signature verified: the claims are what is wrong.
                    ErrorKind::ExpiredSignature => return Err(Refusal::Expired),
                    ErrorKind::ImmatureSignature => return Err(Refusal::NotYetValid),
                    ErrorKind::InvalidIssuer => return Err(Refusal::WrongIssuer),
                    ErrorKind::InvalidAudience => return Err(Refusal::WrongAudience),
                    _ => return Err(Refusal::Invalid),
                },
            }
        }
        Err(refusal)
    }
}

fn read(path: &Path) -> Result<String, BearerKeyError> {
    std::fs::read_to_string(path).map_err(|source| BearerKeyError::Unreadable {
        path: path.to_owned(),
        source,
    })
}

/// Why a bearer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No configured key verifies the signature.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` has not come yet.
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` is not the configured audience.
    WrongAudience,
    /// Not a JWT this gateway can verify (malformed, no `exp`, symmetric or unknown algorithm,
    /// no key for its `kid`).
    Invalid,
}

impl Refusal {
    /// The `X-Seg-Fault` reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadSignature => "bearer-bad-signature",
            Refusal::Expired => "bearer-expired",
            Refusal::NotYetValid => "bearer-not-yet-valid",
            Refusal::WrongIssuer => "bearer-wrong-issuer",
            Refusal::WrongAudience => "bearer-wrong-audience",
            Refusal::Invalid => "bearer-invalid",
        }
    }

    /// What the SOAP fault says.
    fn message(self) -> &'static str {
        match self {
            Refusal::BadSignature => {
                "the bearer token's signature does not verify with the issuer's keys"
            }
            Refusal::Expired => "the bearer token has expired",
            Refusal::NotYetValid => "the bearer token is not valid yet",
            Refusal::WrongIssuer => "the bearer token is from another issuer",
            Refusal::WrongAudience => "the bearer token is for another audience",
            Refusal::Invalid => "the bearer token cannot be verified (not a signed JWT with exp)",
        }
    }
}

/// The token of the request's `Authorization: Bearer`, if any.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
}

/// Layer that applies [`VerifyBearer`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VerifyBearerLayer {
    keys: Arc<BearerKeys>,
}

impl VerifyBearerLayer {
    /// Verifies bearer tokens with `keys`.
    pub fn new(keys: BearerKeys) -> Self {
        VerifyBearerLayer {
            keys: Arc::new(keys),
        }
    }
}

impl<S> Layer<S> for VerifyBearerLayer {
    type Service = VerifyBearer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyBearer {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// Middleware that refuses bearer tokens that do not verify; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct VerifyBearer<S> {
    inner: S,
    keys: Arc<BearerKeys>,
}

impl<S, B, ResBody> Service<Request<B>> for VerifyBearer<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(token) = bearer_token(request.headers())
            && let Err(refusal) = self.keys.verify(token)
        {
            tracing::info!(reason = refusal.reason(), "refused a bearer token");
            let fault = SoapFault::new(
                StatusCode::UNAUTHORIZED,
                FaultCode::AccessDenied,
                refusal.message(),
            )
            .with_reason(refusal.reason());
            return ShortCircuit::answered(fault.into_response());
        }
        ShortCircuit::called(self.inner.call(request))
    }
}

/// Response future of [`VerifyBearer`].
pub type ResponseFuture<F, B> = ShortCircuit<F, B>;

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// A P-256 key pair: (private PKCS#8 PEM, public SPKI PEM).
    fn key_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (key.serialize_pem(), key.public_key_pem())
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn sign(private_pem: &str, claims: serde_json::Value) -> String {
        let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let (private, public) = key_pair();
        let (stranger, _) = key_pair();
        let keys = BearerKeys::from_pem(&public)
            .unwrap()
            .with_issuer("https://sts.corp.example")
            .with_audience("https://exchange.corp.example");
        let claims = |exp: i64, nbf: i64, iss: &str, aud: &str| json!({"upn": "alice@corp.example", "exp": exp, "nbf": nbf, "iss": iss, "aud": aud});
        let (iss, aud, t) = (
            "https://sts.corp.example",
            "https://exchange.corp.example",
            now(),
        );

        assert_eq!(
            keys.verify(&sign(&private, claims(t + 600, t, iss, aud))),
            Ok(())
        );
        for (token, refusal) in [
            (
                sign(&stranger, claims(t + 600, t, iss, aud)),
                Refusal::BadSignature,
            ),
            (
                sign(&private, claims(t - 600, t - 900, iss, aud)),
                Refusal::Expired,
            ),
            (
                sign(&private, claims(t + 1200, t + 600, iss, aud)),
                Refusal::NotYetValid,
            ),
            (
                sign(&private, claims(t + 600, t, "https://evil.example", aud)),
                Refusal::WrongIssuer,
            ),
            (
                sign(&private, claims(t + 600, t, iss, "https://other.example")),
                Refusal::WrongAudience,
            ),
            (
                sign(
                    &private,
                    json!({"upn": "alice@corp.example", "iss": iss, "aud": aud}),
                ),
                Refusal::Invalid,
            ),
            ("not-a-jwt".to_owned(), Refusal::Invalid),
        ] {
            assert_eq!(keys.verify(&token), Err(refusal), "{refusal:?}");
        }
    }

    #[test]
    fn a_jwks_key_is_chosen_by_kid() {
        let (private, public) = key_pair();
        let jwk = |kid: &str| {
            let key = jsonwebtoken::jwk::Jwk::from_encoding_key(
                &EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
                Algorithm::ES256,
            )
            .unwrap();
            let mut value = serde_json::to_value(key).unwrap();
            value["kid"] = json!(kid);
            value
        };
        let keys = BearerKeys::from_jwks(&json!({"keys": [jwk("k1")]}).to_string()).unwrap();
        let _ = public;
        let mut header = Header::new(Algorithm::ES256);
        let claims = json!({"upn": "alice@corp.example", "exp": now() + 600});
        let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
        header.kid = Some("k1".into());
        let good = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        header.kid = Some("k2".into());
        let unknown_kid = jsonwebtoken::encode(&header, &claims, &key).unwrap();

        assert_eq!(keys.verify(&good), Ok(()));
        assert_eq!(keys.verify(&unknown_kid), Err(Refusal::Invalid));
    }

    #[test]
    fn unusable_key_files_are_errors() {
        assert!(matches!(
            BearerKeys::from_pem("not a key"),
            Err(BearerKeyError::InvalidPem)
        ));
        assert!(matches!(
            BearerKeys::from_jwks(r#"{"keys": []}"#),
            Err(BearerKeyError::NoKeys)
        ));
        assert!(matches!(
            BearerKeys::from_jwks("{"),
            Err(BearerKeyError::InvalidJwks(_))
        ));
    }
}
