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
pub fn identity_of(headers: &HeaderMap) -> Option<ClientIdentity> {
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

/// A user name worth keeping: not empty, not absurdly long, no control characters.
fn non_empty(user: &str) -> Option<String> {
    let user = user.trim();
    (!user.is_empty() && user.len() <= 320 && !user.chars().any(char::is_control))
        .then(|| user.to_owned())
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
}
