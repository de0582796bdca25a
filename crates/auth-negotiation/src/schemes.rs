//! Refuses credentials of an authentication mode the deployment has not enabled (`auth.modes`):
//! a gateway set up for certificates only must not pass a Basic password on to Exchange.
//!
//! A request whose `Authorization` scheme is refused gets `401` with an EWS SOAP fault and
//! `X-Seg-Fault: basic-not-enabled` or `oauth-not-enabled`; nothing reaches Exchange. Other
//! schemes, and requests without credentials, pass.
//!
//! ```
//! use auth_negotiation::schemes::RefuseSchemesLayer;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new()
//!     .layer(RefuseSchemesLayer::new().refusing_basic())
//!     .service_fn(|_request: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     });
//! let request = Request::post("/EWS/Exchange.asmx")
//!     .header("authorization", "Basic YWxpY2U6cHc=")
//!     .body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(response.headers()["x-seg-fault"], "basic-not-enabled");
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use ews_proxy_core::fault::{FaultCode, SoapFault};
use ews_proxy_core::future::ShortCircuit;
use http::{HeaderMap, Request, Response, StatusCode, header};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Layer that applies [`RefuseSchemes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefuseSchemesLayer {
    basic: bool,
    bearer: bool,
}

impl RefuseSchemesLayer {
    /// Refuses nothing yet; add schemes with the `refusing_*` methods.
    pub fn new() -> Self {
        RefuseSchemesLayer::default()
    }

    /// Also refuses `Authorization: Basic` (the `basic` mode is off).
    pub fn refusing_basic(mut self) -> Self {
        self.basic = true;
        self
    }

    /// Also refuses `Authorization: Bearer` (the `oauth` mode is off).
    pub fn refusing_bearer(mut self) -> Self {
        self.bearer = true;
        self
    }

    /// Whether it refuses anything at all (a gateway leaves it out otherwise).
    pub fn refuses_any(&self) -> bool {
        self.basic || self.bearer
    }

    /// The reason a request with these headers is refused, if it is.
    fn refusal(&self, headers: &HeaderMap) -> Option<(&'static str, &'static str)> {
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .find_map(|value| {
                let scheme = value.as_bytes().split(|b| *b == b' ').next()?;
                if self.basic && scheme.eq_ignore_ascii_case(b"Basic") {
                    Some((
                        "basic-not-enabled",
                        "Basic authentication is not enabled on this gateway",
                    ))
                } else if self.bearer && scheme.eq_ignore_ascii_case(b"Bearer") {
                    Some((
                        "oauth-not-enabled",
                        "OAuth authentication is not enabled on this gateway",
                    ))
                } else {
                    None
                }
            })
    }
}

impl<S> Layer<S> for RefuseSchemesLayer {
    type Service = RefuseSchemes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefuseSchemes {
            inner,
            layer: *self,
        }
    }
}

/// Middleware that refuses disabled authentication schemes; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RefuseSchemes<S> {
    inner: S,
    layer: RefuseSchemesLayer,
}

impl<S, B, ResBody> Service<Request<B>> for RefuseSchemes<S>
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
        if let Some((reason, message)) = self.layer.refusal(request.headers()) {
            tracing::info!(
                reason,
                "refused credentials of a disabled authentication mode"
            );
            let fault = SoapFault::new(StatusCode::UNAUTHORIZED, FaultCode::AccessDenied, message)
                .with_reason(reason);
            return ShortCircuit::answered(fault.into_response());
        }
        ShortCircuit::called(self.inner.call(request))
    }
}

/// Response future of [`RefuseSchemes`].
pub type ResponseFuture<F, B> = ShortCircuit<F, B>;

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(authorization: &[u8]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.append(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(authorization).unwrap(),
        );
        map
    }

    #[test]
    fn only_the_refused_schemes_are_refused_in_any_case() {
        let basic_off = RefuseSchemesLayer::new().refusing_basic();
        assert_eq!(
            basic_off.refusal(&with(b"basic YWxpY2U6cHc=")).map(|r| r.0),
            Some("basic-not-enabled")
        );
        assert_eq!(basic_off.refusal(&with(b"Bearer eyJ0.e30.sig")), None);
        assert_eq!(basic_off.refusal(&with(b"Negotiate YIIGhg==")), None);
        assert_eq!(basic_off.refusal(&HeaderMap::new()), None);

        let bearer_off = RefuseSchemesLayer::new().refusing_bearer();
        assert_eq!(
            bearer_off
                .refusal(&with(b"BEARER eyJ0.e30.sig"))
                .map(|r| r.0),
            Some("oauth-not-enabled")
        );
        assert_eq!(bearer_off.refusal(&with(b"Basic YWxpY2U6cHc=")), None);
        assert!(!RefuseSchemesLayer::new().refuses_any());
    }

    #[test]
    fn hostile_header_values_do_not_panic() {
        let layer = RefuseSchemesLayer::new().refusing_basic().refusing_bearer();
        for value in [&b""[..], b" ", b"\xffBasic", b"Basic", b"Bearer"] {
            let _ = layer.refusal(&with(value));
        }
        assert!(layer.refusal(&with(b"Basic")).is_some());
    }
}
