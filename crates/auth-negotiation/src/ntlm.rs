//! Refuses NTLM: the gateway does not support it, and must never forward it.
//!
//! A request with `Authorization: NTLM …`, or `Authorization: Negotiate …` whose token is an
//! NTLMSSP message (SPNEGO falling back to NTLM, which starts `TlRMTVNTUA` in base64), gets `401`
//! with an EWS SOAP fault saying so and `X-Seg-Fault: ntlm-not-supported`; nothing reaches
//! Exchange. Kerberos `Negotiate` tokens, Basic and Bearer pass.
//!
//! ```
//! use auth_negotiation::ntlm::RefuseNtlmLayer;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new().layer(RefuseNtlmLayer::new()).service_fn(
//!     |_request: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     },
//! );
//! let request = Request::post("/EWS/Exchange.asmx")
//!     .header("authorization", "NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==")
//!     .body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use ews_proxy_core::fault::{FaultCode, SoapFault};
use ews_proxy_core::future::ShortCircuit;
use http::{HeaderMap, Request, Response, StatusCode, header};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Whether the request's `Authorization` is NTLM, directly or inside `Negotiate`.
pub fn is_ntlm(headers: &HeaderMap) -> bool {
    // On bytes: every proxied request comes here, and `to_str` plus `splitn` cost ≈ 1 k
    // instructions for what is a look at the first word. A value that is not visible ASCII is
    // judged by its first word too: such an NTLM one is still refused.
    headers.get_all(header::AUTHORIZATION).iter().any(|value| {
        let value = value.as_bytes().trim_ascii();
        let (scheme, token) = match value.iter().position(|&b| b == b' ') {
            Some(space) => (&value[..space], value[space + 1..].trim_ascii_start()),
            None => (value, &b""[..]),
        };
        scheme.eq_ignore_ascii_case(b"NTLM")
            // "NTLMSSP\0" in base64: an NTLM message offered through SPNEGO's Negotiate.
            || (scheme.eq_ignore_ascii_case(b"Negotiate") && token.starts_with(b"TlRMTVNTUA"))
    })
}

/// Layer that applies [`RefuseNtlm`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RefuseNtlmLayer {
    _priv: (),
}

impl RefuseNtlmLayer {
    /// Refuses NTLM credentials with `401`.
    pub fn new() -> Self {
        RefuseNtlmLayer { _priv: () }
    }
}

impl<S> Layer<S> for RefuseNtlmLayer {
    type Service = RefuseNtlm<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefuseNtlm { inner }
    }
}

/// Middleware that refuses NTLM; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RefuseNtlm<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for RefuseNtlm<S>
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
        if is_ntlm(request.headers()) {
            tracing::info!("refused an NTLM authentication: not supported by the gateway");
            let fault = SoapFault::new(
                StatusCode::UNAUTHORIZED,
                FaultCode::AccessDenied,
                "NTLM authentication is not supported by the gateway; use Basic, OAuth or a client certificate",
            )
            .with_reason("ntlm-not-supported");
            return ShortCircuit::answered(fault.into_response());
        }
        ShortCircuit::called(self.inner.call(request))
    }
}

/// Response future of [`RefuseNtlm`].
pub type ResponseFuture<F, B> = ShortCircuit<F, B>;

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(authorization: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.append(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        map
    }

    #[test]
    fn ntlm_direct_or_inside_negotiate_is_recognised() {
        assert!(is_ntlm(&with("NTLM TlRMTVNTUAABAAAA")));
        assert!(is_ntlm(&with("ntlm TlRMTVNTUAABAAAA")));
        assert!(is_ntlm(&with("Negotiate TlRMTVNTUAADAAAA")));
        assert!(is_ntlm(&with("  NTLM")));
        assert!(is_ntlm(&with("Negotiate   TlRMTVNTUAADAAAA ")));
        // Bytes that are not visible ASCII after the scheme do not hide it.
        let mut map = HeaderMap::new();
        map.append(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"NTLM \xffTlRM").unwrap(),
        );
        assert!(is_ntlm(&map));
    }

    #[test]
    fn kerberos_basic_and_bearer_pass() {
        // A SPNEGO NegTokenInit with a Kerberos mechanism starts with the GSS-API tag 0x60: "YI".
        assert!(!is_ntlm(&with(
            "Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnagMDAuBgkqhkiC9xIBAgI="
        )));
        assert!(!is_ntlm(&with("Basic YWxpY2U6cHc=")));
        assert!(!is_ntlm(&with("Bearer eyJ0eXAiOiJKV1QifQ.e30.sig")));
        assert!(!is_ntlm(&HeaderMap::new()));
        assert!(!is_ntlm(&with("NTLMv2 TlRMTVNTUAABAAAA")));
        assert!(!is_ntlm(&with("Negotiate")));
    }
}
