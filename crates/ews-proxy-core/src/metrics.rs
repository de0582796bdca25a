//! Counts the gateway's responses by route and status class, and writes a Prometheus registry as
//! the OpenMetrics text a scraper reads.
//!
//! [`ResponseMetricsLayer`] counts every response the inner service answers (not errors, which
//! the gateway's services never return) in `seg_proxy_responses_total{route, status_class}`:
//! `route` is `ews` (`/EWS…`), `activesync` (`/Microsoft-Server-ActiveSync…`) or `other`, and
//! `status_class` is `1xx` to `5xx`, counted when the response head is ready. Every series
//! exists from the start, and counting takes no lock, allocates nothing and hashes nothing: one
//! relaxed atomic add in a fixed table.
//!
//! There is no global registry: whoever serves the metrics creates a [`Registry`] and
//! [registers](ProxyMetrics::register) the metrics in it; [`exposition`] answers a scrape.
//!
//! ```
//! use ews_proxy_core::metrics::{ProxyMetrics, ResponseMetricsLayer, exposition};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use prometheus_client::registry::Registry;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let metrics = ProxyMetrics::new();
//! let mut registry = Registry::default();
//! metrics.register(&mut registry);
//! let service = ServiceBuilder::new()
//!     .layer(ResponseMetricsLayer::new(metrics))
//!     .service_fn(|_request: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("from exchange")))
//!     });
//! let request = Request::post("/EWS/Exchange.asmx").body(Full::default())?;
//! assert_eq!(service.oneshot(request).await?.status(), StatusCode::OK);
//!
//! let scrape = exposition(&registry);
//! assert!(scrape.body().contains(r#"seg_proxy_responses_total{route="ews",status_class="2xx"} 1"#));
//! # Ok(())
//! # }
//! ```

use crate::routing::{is_activesync_path, is_ews_path};
use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// The content type of what [`exposition`] writes: the OpenMetrics text format, which
/// `prometheus_client::encoding::text::encode` produces.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The answer to a scrape: `200` with `registry` in the OpenMetrics text format, or `500` if a
/// metric fails to encode.
pub fn exposition(registry: &Registry) -> Response<String> {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => {
            let mut response = Response::new(text);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
            );
            response
        }
        Err(fmt::Error) => {
            tracing::error!("the metrics could not be encoded");
            let mut response = Response::new("the metrics could not be encoded\n".to_owned());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

const ROUTES: [&str; 3] = ["ews", "activesync", "other"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `[route][status class]`.
type Table = [[Counter; STATUS_CLASSES.len()]; ROUTES.len()];

/// The gateway's response counters; see the [module docs](self). Cheap to clone: every clone
/// counts into the same counters.
#[derive(Clone)]
pub struct ProxyMetrics {
    family: Family<[(&'static str, &'static str); 2], Counter>,
    table: Arc<Table>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    /// Counters at zero, one per route and status class.
    pub fn new() -> Self {
        let family = Family::<[(&'static str, &'static str); 2], Counter>::default();
        let table = ROUTES.map(|route| {
            STATUS_CLASSES.map(|class| {
                family
                    .get_or_create(&[("route", route), ("status_class", class)])
                    .clone()
            })
        });
        ProxyMetrics {
            family,
            table: Arc::new(table),
        }
    }

    /// Adds `seg_proxy_responses_total` to `registry`. Register once per registry.
    pub fn register(&self, registry: &mut Registry) {
        // Registered without `_total`: the encoder appends it to counters.
        registry.register(
            "seg_proxy_responses",
            "Responses of the gateway, by route and status class",
            self.family.clone(),
        );
    }
}

impl fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyMetrics").finish_non_exhaustive()
    }
}

/// The index of `path`'s route in [`ROUTES`].
fn route_index(path: &str) -> usize {
    if is_ews_path(path) {
        0
    } else if is_activesync_path(path) {
        1
    } else {
        2
    }
}

/// The index of `status`'s class in [`STATUS_CLASSES`].
fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// Layer that applies [`ResponseMetrics`].
#[derive(Clone, Debug)]
pub struct ResponseMetricsLayer {
    metrics: ProxyMetrics,
}

impl ResponseMetricsLayer {
    /// Counts responses in `metrics`.
    pub fn new(metrics: ProxyMetrics) -> Self {
        ResponseMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for ResponseMetricsLayer {
    type Service = ResponseMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseMetrics {
            inner,
            table: self.metrics.table.clone(),
        }
    }
}

/// Middleware that counts responses by route and status class; see the [module docs](self).
#[derive(Clone)]
pub struct ResponseMetrics<S> {
    inner: S,
    table: Arc<Table>,
}

impl<S: fmt::Debug> fmt::Debug for ResponseMetrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for ResponseMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = route_index(request.uri().path());
        ResponseFuture {
            inner: self.inner.call(request),
            table: Some(self.table.clone()),
            route,
        }
    }
}

pin_project! {
    /// Response future of [`ResponseMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        table: Option<Arc<Table>>,
        route: usize,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(table)) = (&result, this.table.take()) {
            table[*this.route][class_index(response.status())].inc();
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    /// A service answering the status named by the request's path's last segment.
    fn answering() -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        service_fn(|request: Request<Full<Bytes>>| async move {
            let status: u16 = request
                .uri()
                .path()
                .rsplit('/')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            let mut response = Response::new(Full::default());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(response)
        })
    }

    #[tokio::test]
    async fn each_response_increments_exactly_its_route_and_class() {
        let metrics = ProxyMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let service = ResponseMetricsLayer::new(metrics).layer(answering());
        for path in [
            "/ews/exchange.asmx/200",
            "/EWS/Exchange.asmx/403",
            "/Microsoft-Server-ActiveSync/503",
            "/owa/404",
            "/owa/101",
        ] {
            let request = Request::get(path).body(Full::default()).unwrap();
            service.clone().oneshot(request).await.unwrap();
        }
        let scrape = exposition(&registry);
        assert_eq!(
            scrape.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
        let mut counted: Vec<&str> = scrape
            .body()
            .lines()
            .filter(|line| !line.starts_with('#') && !line.ends_with(" 0"))
            .collect();
        counted.sort_unstable();
        assert_eq!(
            counted,
            [
                r#"seg_proxy_responses_total{route="activesync",status_class="5xx"} 1"#,
                r#"seg_proxy_responses_total{route="ews",status_class="2xx"} 1"#,
                r#"seg_proxy_responses_total{route="ews",status_class="4xx"} 1"#,
                r#"seg_proxy_responses_total{route="other",status_class="1xx"} 1"#,
                r#"seg_proxy_responses_total{route="other",status_class="4xx"} 1"#,
            ]
        );
        assert_eq!(
            scrape
                .body()
                .lines()
                .filter(|l| l.starts_with("seg_proxy_responses_total"))
                .count(),
            15,
            "every series from the start"
        );
    }

    #[test]
    fn status_classes_are_the_first_digit() {
        assert_eq!(class_index(StatusCode::CONTINUE), 0);
        assert_eq!(class_index(StatusCode::NO_CONTENT), 1);
        assert_eq!(class_index(StatusCode::FOUND), 2);
        assert_eq!(class_index(StatusCode::FORBIDDEN), 3);
        assert_eq!(class_index(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(class_index(StatusCode::from_u16(599).unwrap()), 4);
    }
}
