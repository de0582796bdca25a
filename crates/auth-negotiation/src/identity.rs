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
use ews_proxy_core::identity::{ClientIdentity, IdentitySource};
use http::{HeaderMap, Request, header};
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

impl<S, B> Service<Request<B>> for Identify<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if request.extensions().get::<ClientIdentity>().is_none()
            && let Some(identity) = identity_of(request.headers())
        {
            request.extensions_mut().insert(identity);
        }
        self.inner.call(request)
    }
}

/// The user named by the `Authorization` header, if any.
///
/// Read on bytes, and Basic credentials decoded on the stack: this runs for every request with
/// the auth layers on, and the `str` conversions, checks and allocations of the obvious version
/// were ≈ 1.8 k instructions per request, 40% of what every layer adds to proxying
/// (docs/benchmarks.md). What it accepts is unchanged (tests below).
pub fn identity_of(headers: &HeaderMap) -> Option<ClientIdentity> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes().trim_ascii();
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
        let credentials = std::str::from_utf8(credentials).ok()?;
        if !credentials
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return None;
        }
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

/// The user of Basic credentials (base64 of `user:password`): the part before the first `:`.
fn basic_user(credentials: &[u8]) -> Option<String> {
    let engine = &base64::engine::general_purpose::STANDARD;
    // Decoded on the stack when it fits (any user name up to the 320 bytes `non_empty` allows,
    // with a password of over 400); longer credentials take the heap.
    let mut stack = [0u8; 768];
    let heap;
    let decoded: &[u8] = match engine.decode_slice(credentials, &mut stack) {
        Ok(len) => &stack[..len],
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            heap = engine.decode(credentials).ok()?;
            &heap
        }
        Err(base64::DecodeSliceError::DecodeError(_)) => return None,
    };
    let decoded = std::str::from_utf8(decoded).ok()?;
    let user = match decoded.bytes().position(|b| b == b':') {
        Some(colon) => &decoded[..colon],
        None => decoded,
    };
    non_empty(user)
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
