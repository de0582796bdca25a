//! Runs each request, its response future and its response body inside a `tracing` span.
//!
//! The span is made per request by a function of the request (its method and path, and fields
//! declared empty for later layers to record: the device, the user, the EWS operation). Every
//! event logged by the layers inside, while they are called, while their future is polled and
//! while the response body streams, carries those fields.
//!
//! tower-http's `TraceLayer` does this and more: it also reads the clock twice for every body
//! frame (to report each chunk's latency), on every request, whether its events are enabled or
//! not, and classifies every response. On the gateway's hot path that was about 1% of the CPU
//! per proxied request (docs/benchmarks.md), for events it does not log; the gateway's own
//! layers log failures with their reason, and `ResponseMetricsLayer` times responses.
//!
//! ```
//! use ews_proxy_core::span::RequestSpanLayer;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new()
//!     .layer(RequestSpanLayer::new(|request: &Request<Full<Bytes>>| {
//!         tracing::info_span!("request", path = %request.uri().path(), device = tracing::field::Empty)
//!     }))
//!     .service_fn(|request: Request<Full<Bytes>>| async move {
//!         tracing::Span::current().record("device", "EASDEV1");
//!         tracing::info!("answered"); // logged with path and device
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
//!     });
//! let request = Request::post("/EWS/Exchange.asmx").body(Full::new(Bytes::new()))?;
//! service.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tracing::Span;

/// Wraps services in [`RequestSpan`].
#[derive(Clone, Debug)]
pub struct RequestSpanLayer<M> {
    make_span: M,
}

impl<M> RequestSpanLayer<M> {
    /// Makes each request's span with `make_span`.
    pub fn new(make_span: M) -> Self {
        RequestSpanLayer { make_span }
    }
}

impl<S, M: Clone> Layer<S> for RequestSpanLayer<M> {
    type Service = RequestSpan<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan {
            inner,
            make_span: self.make_span.clone(),
        }
    }
}

/// Calls the inner service, polls its future and its response body inside the request's span.
#[derive(Clone, Debug)]
pub struct RequestSpan<S, M> {
    inner: S,
    make_span: M,
}

impl<S, M, B, ResBody> Service<Request<B>> for RequestSpan<S, M>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    M: Fn(&Request<B>) -> Span,
{
    type Response = Response<SpanBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let span = (self.make_span)(&request);
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture {
            future,
            span: Some(span),
        }
    }
}

pin_project! {
    /// Response future of [`RequestSpan`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        // Taken by the response body when the future completes.
        span: Option<Span>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<SpanBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span = this.span.take().unwrap_or_else(Span::none);
        let polled = span.in_scope(|| this.future.poll(cx));
        let Poll::Ready(result) = polled else {
            *this.span = Some(span);
            return Poll::Pending;
        };
        Poll::Ready(result.map(|response| response.map(|body| SpanBody { body, span })))
    }
}

pin_project! {
    /// A response body polled inside its request's span.
    pub struct SpanBody<B> {
        #[pin]
        body: B,
        span: Span,
    }
}

impl<B: Body> Body for SpanBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        this.body.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    /// An event's message, and the `device` field of the span it was in.
    type Seen = (String, Option<String>);

    /// Records every event.
    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<Seen>>>);

    struct Device(String);

    struct FieldVisitor<'a>(&'a str, Option<String>);

    impl Visit for FieldVisitor<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == self.0 {
                self.1 = Some(value.to_owned());
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == self.0 {
                self.1 = Some(format!("{value:?}"));
            }
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Events {
        fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, cx: LayerContext<'_, S>) {
            let mut visitor = FieldVisitor("device", None);
            attributes.record(&mut visitor);
            if let (Some(device), Some(span)) = (visitor.1, cx.span(id)) {
                span.extensions_mut().insert(Device(device));
            }
        }
        fn on_record(&self, id: &Id, values: &Record<'_>, cx: LayerContext<'_, S>) {
            let mut visitor = FieldVisitor("device", None);
            values.record(&mut visitor);
            if let (Some(device), Some(span)) = (visitor.1, cx.span(id)) {
                span.extensions_mut().insert(Device(device));
            }
        }
        fn on_event(&self, event: &Event<'_>, cx: LayerContext<'_, S>) {
            let mut visitor = FieldVisitor("message", None);
            event.record(&mut visitor);
            let device = cx.event_scope(event).and_then(|mut scope| {
                scope.find_map(|span| span.extensions().get::<Device>().map(|d| d.0.clone()))
            });
            self.0
                .lock()
                .unwrap()
                .push((visitor.1.unwrap_or_default(), device));
        }
    }

    #[tokio::test]
    async fn the_call_the_future_and_the_body_log_inside_the_requests_span() {
        let events = Events::default();
        let subscriber = tracing_subscriber::registry().with(events.clone());
        let _default = tracing::subscriber::set_default(subscriber);

        let service = tower::ServiceBuilder::new()
            .layer(RequestSpanLayer::new(|_: &Request<()>| {
                tracing::info_span!("request", device = tracing::field::Empty)
            }))
            .service_fn(|_: Request<()>| {
                tracing::Span::current().record("device", "EASDEV1");
                tracing::info!("called");
                async {
                    tokio::task::yield_now().await;
                    tracing::info!("polled");
                    let chunks = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                        Frame::data(Bytes::from_static(b"answer")),
                    )])
                    .inspect(|_| tracing::info!("streamed"));
                    Ok::<_, std::convert::Infallible>(Response::new(StreamBody::new(chunks)))
                }
            });
        let response = service.oneshot(Request::new(())).await.unwrap();
        tracing::info!("outside");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "answer");

        let device = Some("EASDEV1".to_owned());
        let seen = events.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("called".to_owned(), device.clone()),
                ("polled".to_owned(), device.clone()),
                ("outside".to_owned(), None),
                ("streamed".to_owned(), device),
            ]
        );
    }
}
