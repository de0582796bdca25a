//! Removes hop-by-hop headers from requests and responses (RFC 9110 §7.6.1).
//!
//! These headers describe one connection, not the message: forwarding them would let a client
//! steer the gateway's connection to Exchange (`Connection: close`, `Upgrade`) or leak proxy
//! credentials. Removed in both directions: `Connection` and every header it names, `Keep-Alive`,
//! `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, and every `Proxy-*` header.
//!
//! Exchange's affinity headers (`X-AnchorMailbox`, `X-PreferServerAffinity`) and cookies are
//! end-to-end and pass untouched, unless a client lists them in `Connection`, which means that it
//! asked for them to be dropped.
//!
//! ```
//! use ews_proxy_core::hop_by_hop::StripHopByHopLayer;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new().layer(StripHopByHopLayer::new()).service_fn(
//!     |request: Request<Full<Bytes>>| async move {
//!         assert!(request.headers().get("keep-alive").is_none());
//!         assert_eq!(request.headers()["x-anchormailbox"], "alice@test.local");
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
//!     },
//! );
//! let request = Request::post("/EWS/Exchange.asmx")
//!     .header("connection", "keep-alive")
//!     .header("keep-alive", "timeout=5")
//!     .header("x-anchormailbox", "alice@test.local")
//!     .body(Full::new(Bytes::new()))?;
//! service.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```

use http::{HeaderMap, HeaderName, Request, Response, header};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// The fixed hop-by-hop headers, besides `Connection`, `Proxy-*` and those `Connection` names.
const HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers from `headers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (a message has a handful, and most have no hop-by-hop
    // header but `Connection`) instead of a hashed removal of each fixed name: ≈ 1 k
    // instructions of every proxied request otherwise.
    let (mut connection, mut fixed, mut proxy) = (false, false, false);
    for name in headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if HOP_BY_HOP.contains(name) {
            fixed = true;
        } else if is_proxy_header(name) {
            proxy = true;
        }
    }
    if connection {
        // Headers named in Connection go first, while Connection is still there to read.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if fixed {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
    if proxy {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| is_proxy_header(n))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

fn is_proxy_header(name: &HeaderName) -> bool {
    // Header names are lower-case in `http`.
    name.as_str().starts_with("proxy-")
}

/// Layer that applies [`StripHopByHop`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StripHopByHopLayer {
    _priv: (),
}

impl StripHopByHopLayer {
    /// Strips hop-by-hop headers from requests and from responses.
    pub fn new() -> Self {
        StripHopByHopLayer { _priv: () }
    }
}

impl<S> Layer<S> for StripHopByHopLayer {
    type Service = StripHopByHop<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StripHopByHop { inner }
    }
}

/// Middleware that removes hop-by-hop headers from requests and responses.
#[derive(Clone, Debug)]
pub struct StripHopByHop<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for StripHopByHop<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        strip_hop_by_hop(request.headers_mut());
        ResponseFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// Response future of [`StripHopByHop`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(self.project().inner.poll(cx))?;
        strip_hop_by_hop(response.headers_mut());
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn removes_fixed_named_and_proxy_headers_keeps_end_to_end() {
        let mut map = headers(&[
            ("connection", "close, x-secret-hop"),
            ("connection", "X-Other-Hop"),
            ("x-secret-hop", "1"),
            ("x-other-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-connection", "keep-alive"),
            ("x-anchormailbox", "alice@test.local"),
            ("x-preferserveraffinity", "true"),
            ("cookie", "X-BackEndOverrideCookie=EXCH01~1"),
            ("authorization", "Basic YWxpY2U6cHc="),
        ]);
        strip_hop_by_hop(&mut map);
        let mut left: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "authorization",
                "cookie",
                "x-anchormailbox",
                "x-preferserveraffinity"
            ]
        );
    }

    /// Each kind alone: the one-pass look at the names must not skip a kind when another is
    /// absent.
    #[test]
    fn each_kind_is_removed_without_the_others() {
        for (pairs, left) in [
            (&[("te", "trailers"), ("x-keep", "1")][..], 1),
            (
                &[("proxy-authorization", "Basic c2VjcmV0"), ("x-keep", "1")][..],
                1,
            ),
            (
                &[("connection", "x-hop"), ("x-hop", "1"), ("x-keep", "1")][..],
                1,
            ),
            (
                &[("connection", "keep-alive"), ("keep-alive", "timeout=5")][..],
                0,
            ),
            (&[("x-keep", "1"), ("x-also", "2")][..], 2),
        ] {
            let mut map = headers(pairs);
            strip_hop_by_hop(&mut map);
            assert_eq!(map.len(), left, "{pairs:?} left {map:?}");
            assert!(
                map.keys()
                    .all(|k| k.as_str().starts_with("x-k") || k == "x-also")
            );
        }
    }

    #[test]
    fn garbage_in_connection_is_ignored_not_fatal() {
        let mut map = headers(&[("connection", ",,  , b@d name, ()"), ("x-keep", "1")]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
    }

    #[tokio::test]
    async fn response_headers_are_stripped_too() {
        let service =
            StripHopByHopLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
                let response = Response::builder()
                    .header("connection", "keep-alive")
                    .header("keep-alive", "timeout=5")
                    .header("set-cookie", "X-BackEndOverrideCookie=EXCH01~1; path=/")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }));
        let response = service
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        assert!(response.headers().get("connection").is_none());
        assert!(response.headers().get("keep-alive").is_none());
        assert_eq!(
            response.headers()["set-cookie"],
            "X-BackEndOverrideCookie=EXCH01~1; path=/"
        );
    }
}
