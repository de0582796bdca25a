//! Learns the user of each request from its credentials, for the layers after it (compliance's
//! user policies), without checking them: Exchange does that.
//!
//! - `Authorization: Basic` → the user name before the `:` ([`IdentitySource::Basic`]).
//! - `Authorization: Bearer` → the `upn`, `preferred_username`, `unique_name` or `email` claim of
//!   the token's payload, in that order ([`IdentitySource::Bearer`]). The signature is not
//!   verified here: the claim only names the user for policy; Exchange verifies the token.
//!
//! The identity goes into the request's extensions as a [`ClientIdentity`]; one already there
//! (from a verified client certificate) is kept. Credentials are never logged.
//!
//! A request with more than one `Authorization` header gets `400` (`ErrorInvalidRequest`,
//! `X-Seg-Fault: duplicate-authorization`) and never reaches Exchange: the header holds one set
//! of credentials (RFC 9110 §11.6.2), and with two the gateway could decide on one user while
//! Exchange signs in the other.
//!
//! ```
//! use auth_negotiation::identity::IdentifyLayer;
//! use ews_proxy_core::identity::ClientIdentity;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new().layer(IdentifyLayer::new()).service_fn(
//!     |request: Request<Full<Bytes>>| async move {
//!         let user = request.extensions().get::<ClientIdentity>().map(|i| i.user.clone());
//!         assert_eq!(user.as_deref(), Some("alice@corp.example"));
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     },
//! );
//! // "alice@corp.example:secret"
//! let request = Request::post("/EWS/Exchange.asmx")
//!     .header("authorization", "Basic YWxpY2VAY29ycC5leGFtcGxlOnNlY3JldA==")
//!     .body(Full::default())?;
//! service.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```

use base64::Engine as _;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use ews_proxy_core::fault::{FaultCode, SoapFault};
use ews_proxy_core::future::ShortCircuit;
use ews_proxy_core::identity::{ClientIdentity, IdentitySource};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use std::borrow::Cow;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Layer that applies [`Identify`].
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentifyLayer {
    _priv: (),
}

impl IdentifyLayer {
    /// Learns the user from Basic and Bearer credentials.
    pub fn new() -> Self {
        IdentifyLayer { _priv: () }
    }
}

impl<S> Layer<S> for IdentifyLayer {
    type Service = Identify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Identify { inner }
    }
}

/// Middleware that puts the request's [`ClientIdentity`] in its extensions.
#[derive(Clone, Debug)]
pub struct Identify<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for Identify<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut credentials = request.headers().get_all(header::AUTHORIZATION).iter();
        let first = credentials.next();
        if credentials.next().is_some() {
            tracing::info!("refused a request with more than one Authorization header");
            let fault = SoapFault::new(
                StatusCode::BAD_REQUEST,
                FaultCode::InvalidRequest,
                "the request carries more than one Authorization header",
            )
            .with_reason("duplicate-authorization");
            return ShortCircuit::answered(fault.into_response());
        }
        let identity = first
            .filter(|_| request.extensions().get::<ClientIdentity>().is_none())
            .and_then(identity_of_credentials);
        if let Some(identity) = identity {
            request.extensions_mut().insert(identity);
        }
        ShortCircuit::called(self.inner.call(request))
    }
}

/// Response future of [`Identify`].
pub type ResponseFuture<F, B> = ShortCircuit<F, B>;

/// The user named by the `Authorization` header, if any.
///
/// Read on bytes, and credentials decoded on the stack: this runs for every request with the
/// auth layers on, and the obvious version (`str` conversions and checks, base64 into a `Vec`,
/// the claims as a `serde_json::Value`) cost 82 ns for Basic and 1.5 µs for a Bearer token
/// (`benches/header_rules.rs`), now 80 ns and 0.6 µs; under callgrind Basic was 40% of what
/// every layer adds to proxying (docs/benchmarks.md). Who it names is unchanged: a test
/// compares it with the obvious version on a corpus of headers.
pub fn identity_of(headers: &HeaderMap) -> Option<ClientIdentity> {
    identity_of_credentials(headers.get(header::AUTHORIZATION)?)
}

/// The user named by one `Authorization` value.
fn identity_of_credentials(value: &HeaderValue) -> Option<ClientIdentity> {
    let value = value.as_bytes().trim_ascii();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, credentials) = (&value[..space], value[space + 1..].trim_ascii());
    if scheme.eq_ignore_ascii_case(b"Basic") {
        return basic_user(credentials).map(|user| ClientIdentity {
            user,
            source: IdentitySource::Basic,
        });
    }
    if scheme.eq_ignore_ascii_case(b"Bearer") {
        // A header value that is not visible ASCII names nobody (as `to_str` would have it).
        // Without an early exit, so that the check of a long token is vectorised.
        let visible = credentials.iter().fold(true, |all, &b| {
            all & ((b' '..=b'~').contains(&b) | (b == b'\t'))
        });
        if !visible {
            return None;
        }
        // On `str`: its split on a character searches with memchr, which a byte loop over the
        // slice does not (+20% for the whole function).
        let credentials = std::str::from_utf8(credentials).ok()?;
        let payload = credentials.split('.').nth(1)?;
        return bearer_user(payload.trim_end_matches('=').as_bytes()).map(|user| ClientIdentity {
            user,
            source: IdentitySource::Bearer,
        });
    }
    None
}

/// The user of Basic credentials (base64 of `user:password`): the part before the first `:`.
fn basic_user(credentials: &[u8]) -> Option<String> {
    // On the stack: any user name up to the 320 bytes `non_empty` allows, with a password of
    // over 400.
    decoded::<768, _>(&STANDARD, credentials, |decoded| {
        let decoded = std::str::from_utf8(decoded).ok()?;
        let user = match decoded.bytes().position(|b| b == b':') {
            Some(colon) => &decoded[..colon],
            None => decoded,
        };
        non_empty(user)
    })
}

/// `read` applied to `input` decoded with `engine`: into an `N`-byte buffer on the stack when
/// it fits, else on the heap; `None` when `input` is not base64.
fn decoded<const N: usize, R>(
    engine: &GeneralPurpose,
    input: &[u8],
    read: impl FnOnce(&[u8]) -> Option<R>,
) -> Option<R> {
    let mut stack = [0u8; N];
    match engine.decode_slice(input, &mut stack) {
        Ok(len) => read(&stack[..len]),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => read(&engine.decode(input).ok()?),
        Err(base64::DecodeSliceError::DecodeError(_)) => None,
    }
}

/// The user named by a token's payload (base64url of a JSON object): its `upn`,
/// `preferred_username`, `unique_name` or `email` claim, the first present as a string.
///
/// Decoded on the stack when it fits, and only those four claims read (borrowed when they have
/// no escapes; every other claim skipped without being built): OAuth is how most mail apps sign
/// in today, so this is most requests' path.
fn bearer_user(payload: &[u8]) -> Option<String> {
    decoded::<2048, _>(&URL_SAFE_NO_PAD, payload, |json| {
        let mut reader = serde_json::Deserializer::from_slice(json);
        let claims = serde::Deserializer::deserialize_map(&mut reader, UserClaims).ok()?;
        reader.end().ok()?; // nothing but whitespace after the object
        let [upn, preferred_username, unique_name, email] = claims;
        non_empty(&upn.or(preferred_username).or(unique_name).or(email)?)
    })
}

/// Reads, from a JSON object of claims, those that can name the user, in the order they are
/// asked: `upn`, `preferred_username`, `unique_name`, `email`. A claim that is not a string
/// counts as absent and a repeated one as its last value, as in a `serde_json::Value`.
struct UserClaims;

impl<'de> serde::de::Visitor<'de> for UserClaims {
    type Value = [Option<Cow<'de, str>>; 4];

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const NAMES: [&str; 4] = ["upn", "preferred_username", "unique_name", "email"];
        let mut claims: [Option<Cow<'de, str>>; 4] = Default::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match NAMES.iter().position(|name| *name == key) {
                Some(i) => claims[i] = map.next_value::<StringOrNot<'de>>()?.0,
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(claims)
    }
}

/// A JSON value kept if it is a string, skipped otherwise.
struct StringOrNot<'a>(Option<Cow<'a, str>>);

impl<'de> serde::Deserialize<'de> for StringOrNot<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StringOrNotVisitor)
    }
}

struct StringOrNotVisitor;

impl<'de> serde::de::Visitor<'de> for StringOrNotVisitor {
    type Value = StringOrNot<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(StringOrNot(Some(Cow::Borrowed(value))))
    }
    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(StringOrNot(Some(Cow::Owned(value.to_owned()))))
    }
    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(StringOrNot(Some(Cow::Owned(value))))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(StringOrNot(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(StringOrNot(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(StringOrNot(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(StringOrNot(None))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(StringOrNot(None))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(StringOrNot(None))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(StringOrNot(None))
    }
}

/// A user name worth keeping: not empty, not absurdly long, no control characters.
fn non_empty(user: &str) -> Option<String> {
    let user = user.trim();
    let control = if user.is_ascii() {
        user.bytes().any(|b| b.is_ascii_control())
    } else {
        user.chars().any(char::is_control)
    };
    (!user.is_empty() && user.len() <= 320 && !control).then(|| user.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        map
    }

    fn bearer(claims: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "Bearer {}.{}.c2lnbmF0dXJl",
            engine.encode(r#"{"alg":"RS256"}"#),
            engine.encode(claims)
        )
    }

    #[tokio::test]
    async fn two_authorization_headers_are_refused_one_names_the_user() {
        use tower::ServiceExt;
        let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = reached.clone();
        let service = IdentifyLayer::new().layer(tower::service_fn(
            move |request: Request<http_body_util::Full<Bytes>>| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let user = request
                    .extensions()
                    .get::<ClientIdentity>()
                    .map(|i| i.user.clone());
                async move {
                    let mut response = Response::new(http_body_util::Full::<Bytes>::default());
                    if let Some(user) = user {
                        response
                            .headers_mut()
                            .insert("x-user", user.parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            },
        ));
        let basic = |credentials: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            )
        };
        let alice = basic("alice@corp.example:anything");
        let bob = basic("bob@corp.example:secret");

        let one = Request::post("/EWS/Exchange.asmx")
            .header(header::AUTHORIZATION, &bob)
            .body(Default::default())
            .unwrap();
        let answered = service.clone().oneshot(one).await.unwrap();
        assert_eq!(answered.headers()["x-user"], "bob@corp.example");

        // A user policy would see alice; Exchange might sign in bob.
        let two = Request::post("/EWS/Exchange.asmx")
            .header(header::AUTHORIZATION, &alice)
            .header(header::AUTHORIZATION, &bob)
            .body(Default::default())
            .unwrap();
        let refused = service.oneshot(two).await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refused.headers()["x-seg-fault"], "duplicate-authorization");
        assert_eq!(
            reached.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the refused request never reached the inner service"
        );
    }

    #[test]
    fn basic_user_is_the_part_before_the_colon() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice@corp.example:pa:ss");
        let identity = identity_of(&headers(&format!("basic {encoded}"))).unwrap();
        assert_eq!(identity.user, "alice@corp.example");
        assert_eq!(identity.source, IdentitySource::Basic);
    }

    #[test]
    fn bearer_user_comes_from_the_first_claim_present() {
        let identity = identity_of(&headers(&bearer(
            r#"{"email":"e@x","upn":"alice@corp.example"}"#,
        )))
        .unwrap();
        assert_eq!(identity.user, "alice@corp.example");
        assert_eq!(identity.source, IdentitySource::Bearer);
        let identity = identity_of(&headers(&bearer(r#"{"preferred_username":"bob@x"}"#))).unwrap();
        assert_eq!(identity.user, "bob@x");
    }

    #[test]
    fn garbage_credentials_name_nobody() {
        for value in [
            "Basic !!!not-base64",
            "Basic",
            "Bearer not.a-jwt",
            "Bearer a.e30.c", // {} : no claim
            "NTLM TlRMTVNTUAABAAAA",
            "Negotiate YIIB",
        ] {
            assert_eq!(identity_of(&headers(value)), None, "{value}");
        }
        let empty_user = base64::engine::general_purpose::STANDARD.encode(":password");
        assert_eq!(identity_of(&headers(&format!("Basic {empty_user}"))), None);
    }

    #[test]
    fn basic_credentials_are_read_as_before_on_bytes() {
        let engine = base64::engine::general_purpose::STANDARD;
        let basic = |plain: &[u8]| format!("Basic {}", engine.encode(plain));
        let user = |value: &str| identity_of(&headers(value)).map(|identity| identity.user);
        // Spaces and tabs around the value and the credentials; the scheme in any case.
        let alice = engine.encode("alice:pw");
        assert_eq!(
            user(&format!(" \tbAsIc  {alice}\t ")).as_deref(),
            Some("alice")
        );
        // No colon: all of it is the user; spaces around the user are trimmed.
        assert_eq!(user(&basic(b" bob ")).as_deref(), Some("bob"));
        // Non-ASCII users are kept; control characters, ASCII or not, name nobody.
        assert_eq!(user(&basic("zoë:pw".as_bytes())).as_deref(), Some("zoë"));
        assert_eq!(user(&basic(b"al\x07ice:pw")), None);
        assert_eq!(user(&basic("al\u{85}ice:pw".as_bytes())), None);
        // What was decoded must be UTF-8 as a whole, the password too.
        assert_eq!(user(&basic(b"alice:\xff\xfe")), None);
        // Users over 320 bytes name nobody; long passwords are fine, even past the stack buffer.
        assert_eq!(
            user(&basic(format!("{}:pw", "u".repeat(321)).as_bytes())),
            None
        );
        let long = format!("{}:{}", "u".repeat(320), "p".repeat(4000));
        assert_eq!(user(&basic(long.as_bytes())), Some("u".repeat(320)));
        // Not base64, or base64 with garbage after it.
        assert_eq!(user(&format!("Basic {alice}!")), None);
        assert_eq!(user("Basic "), None);
    }

    #[test]
    fn bearer_claims_are_read_as_a_json_value_would_read_them() {
        let user = |claims: &str| {
            let map = headers(&bearer(claims));
            let identity = identity_of(&map);
            assert_eq!(identity, identity_of_as_before(&map), "{claims}");
            identity.map(|i| i.user)
        };
        // A claim that is not a string counts as absent: the next one names the user.
        assert_eq!(
            user(r#"{"upn":42,"preferred_username":"bob@x"}"#).as_deref(),
            Some("bob@x")
        );
        assert_eq!(
            user(r#"{"upn":null,"unique_name":["a"],"email":{"v":"x"},"preferred_username":true}"#),
            None
        );
        // A repeated claim counts with its last value; escapes are read.
        assert_eq!(user(r#"{"upn":"a@x","upn":"b@x"}"#).as_deref(), Some("b@x"));
        assert_eq!(user(r#"{"upn":"z\u00f6e@x"}"#).as_deref(), Some("zöe@x"));
        // Nested objects and arrays of other claims are skipped; the order of claims in the
        // token does not matter, the order of preference does.
        assert_eq!(
            user(r#"{"email":"e@x","roles":[{"a":[1,2]}],"x":{"upn":"no"},"upn":"u@x"}"#)
                .as_deref(),
            Some("u@x")
        );
        // Not an object, not JSON, trailing bytes, an empty or blank user: nobody.
        for claims in [
            r#"["upn"]"#,
            "not json",
            r#"{"upn":"a@x"} x"#,
            r#"{"upn":"  "}"#,
        ] {
            assert_eq!(user(claims), None, "{claims}");
        }
        // A payload larger than the stack buffer is read too.
        let big = format!(r#"{{"groups":"{}","upn":"big@x"}}"#, "g".repeat(5000));
        assert_eq!(user(&big).as_deref(), Some("big@x"));
        // Padding at the end of the payload is tolerated, as before.
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let padded = format!("Bearer e30.{}==.c2ln", engine.encode(r#"{"upn":"p@x"}"#));
        let padded = identity_of(&headers(&padded)).map(|i| i.user);
        assert_eq!(padded.as_deref(), Some("p@x"));
    }

    /// The obvious version `identity_of` replaced (on `str`, base64 into a `Vec`, the claims
    /// as a `serde_json::Value`): both must name the same user for every header.
    fn identity_of_as_before(headers: &HeaderMap) -> Option<ClientIdentity> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
        let (scheme, credentials) = value.split_once(' ')?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("Basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let user = decoded
                .split_once(':')
                .map_or(decoded.as_str(), |(user, _)| user);
            return non_empty(user).map(|user| ClientIdentity {
                user,
                source: IdentitySource::Basic,
            });
        }
        if scheme.eq_ignore_ascii_case("Bearer") {
            let payload = credentials.split('.').nth(1)?;
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()?;
            let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
            let user = ["upn", "preferred_username", "unique_name", "email"]
                .iter()
                .find_map(|claim| claims.get(*claim).and_then(|v| v.as_str()))?;
            return non_empty(user).map(|user| ClientIdentity {
                user,
                source: IdentitySource::Bearer,
            });
        }
        None
    }

    #[test]
    fn every_header_names_the_user_it_named_before() {
        let standard = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let users = [
            "alice",
            " bob ",
            "zoë",
            "al\u{7}ice",
            "a\u{85}b",
            "",
            " ",
            "x:y",
            ":",
            "a\tb",
        ];
        let passwords = ["", "pw", ":", "p\u{0}w"];
        let mut values: Vec<Vec<u8>> = Vec::new();
        for user in users {
            for password in passwords {
                let plain = format!("{user}:{password}");
                for scheme in ["Basic", "basic", "BASIC", "Basi", "Bearer"] {
                    values.push(format!("{scheme} {}", standard.encode(&plain)).into_bytes());
                    values.push(format!("  {scheme}\t {}  ", standard.encode(&plain)).into_bytes());
                }
                values.push(format!("Basic {}", standard.encode(user)).into_bytes());
            }
            for claim in ["upn", "preferred_username", "unique_name", "email", "sub"] {
                let json = serde_json::json!({ claim: user, "n": 1 }).to_string();
                for token in [
                    format!("Bearer h.{}.s", url.encode(&json)),
                    format!("bearer h.{}==.s", url.encode(&json)),
                    format!("Bearer {}", url.encode(&json)),
                    format!("Bearer h.{}.s", standard.encode(&json)),
                    format!("Basic h.{}.s", url.encode(&json)),
                ] {
                    values.push(token.into_bytes());
                }
            }
        }
        for raw in [
            &b"Basic YWxpY2U6cHc=\xff"[..],
            b"Basic \xffYWxpY2U6cHc=",
            b"Basic YWxpY2U6cHc",
            b"Basic YWxpY2U6cHc==",
            b"Basic  ",
            b"Basic",
            b"",
            b" ",
            b"Negotiate YIIB",
            b"Bearer",
            b"Bearer .",
            b"Bearer a.\xe9.b",
            b"Bearer a.e30.b\xe9",
        ] {
            values.push(raw.to_vec());
        }
        for value in values {
            let Ok(value) = HeaderValue::from_bytes(&value) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.insert(header::AUTHORIZATION, value.clone());
            assert_eq!(identity_of(&map), identity_of_as_before(&map), "{value:?}");
        }
    }

    #[test]
    fn bearer_tokens_that_are_not_visible_ascii_name_nobody() {
        let token = bearer(r#"{"upn":"alice@corp.example"}"#);
        let mut map = HeaderMap::new();
        let value = format!("{token}\u{e9}");
        map.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
        assert_eq!(identity_of(&map), None);
        assert!(identity_of(&headers(&token)).is_some());
    }
}
