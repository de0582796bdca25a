//! Caps the size of request bodies, answering `413` with a SOAP fault beyond the cap.
//!
//! A body that announces its length is refused before anything reaches Exchange. A chunked body
//! streams on and fails at the cap; the proxy turns that failure into the same `413`
//! ([`crate::proxy`]). Either way the body is never buffered to be measured.
//!
//! ```
//! use ews_proxy_core::body_limit::RequestBodyLimitLayer;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new().layer(RequestBodyLimitLayer::new(4)).service_fn(
//!     |_request: Request<_>| async { Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default())) },
//! );
//! let request = Request::post("/EWS/Exchange.asmx").body(Full::new(Bytes::from_static(b"too long")))?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
//! # Ok(())
//! # }
//! ```

use crate::fault::{FaultCode, SoapFault};
use crate::future::ShortCircuit;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Limited;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Layer that applies [`RequestBodyLimit`].
#[derive(Clone, Copy, Debug)]
pub struct RequestBodyLimitLayer {
    limit: usize,
}

impl RequestBodyLimitLayer {
    /// Refuses request bodies longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        RequestBodyLimitLayer { limit }
    }
}

impl<S> Layer<S> for RequestBodyLimitLayer {
    type Service = RequestBodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// Middleware that caps request bodies; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RequestBodyLimit<S> {
    inner: S,
    limit: usize,
}

impl<S, B, ResBody> Service<Request<B>> for RequestBodyLimit<S>
where
    S: Service<Request<Limited<B>>, Response = Response<ResBody>>,
    B: Body,
    ResBody: From<Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let announced = request.body().size_hint().exact().or_else(|| {
            request
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        });
        if announced.is_some_and(|len| len > self.limit as u64) {
            tracing::info!(
                limit = self.limit,
                length = announced,
                "request body over the size limit"
            );
            let fault = SoapFault::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                FaultCode::InvalidRequest,
                format!(
                    "the request body is larger than the gateway accepts ({} bytes)",
                    self.limit
                ),
            )
            .with_reason("body-too-large");
            return ShortCircuit::answered(fault.into_response());
        }
        let request = request.map(|body| Limited::new(body, self.limit));
        ShortCircuit::called(self.inner.call(request))
    }
}

/// Response future of [`RequestBodyLimit`].
pub type ResponseFuture<F, B> = ShortCircuit<F, B>;
