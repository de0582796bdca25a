//! Routes requests by path: EWS (`/EWS/…`, any case) to one stack, ActiveSync
//! (`/Microsoft-Server-ActiveSync…`) to another, anything else to `404`.
//!
//! A path that IIS would read otherwise than the router does gets a `400` SOAP fault
//! (`X-Seg-Fault: path-not-canonical`) before any route ([`is_canonical_path`]): IIS resolves `.` and `..` segments (also percent-encoded) and takes
//! `\` for `/` before it picks the application, so `/EWS/../ecp/` would reach the Exchange admin
//! center through the EWS route, and `/Microsoft-Server-ActiveSync/%2e%2e/EWS/Exchange.asmx` EWS
//! through ActiveSync's, even with EWS off.
//!
//! A route that is `None` is not served: with `enable.boxer.ens.ews.proxy` off the gateway answers
//! `404` on `/EWS`, exactly as if it knew nothing of EWS. IIS matches paths without regard to case,
//! and EWS clients rely on it (`/ews/exchange.asmx`), so the prefix match ignores case too.
//!
//! ```
//! use ews_proxy_core::routing::PathRouter;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let ews = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("ews")))
//! });
//! // The same service on both routes, for brevity.
//! let router = PathRouter::new(Some(ews.clone()), Some(ews));
//! let ok = router.clone().oneshot(Request::post("/ews/exchange.asmx").body(Full::<Bytes>::default())?).await?;
//! assert_eq!(ok.status(), StatusCode::OK);
//! let owa = router.oneshot(Request::get("/owa/").body(Full::<Bytes>::default())?).await?;
//! assert_eq!(owa.status(), StatusCode::NOT_FOUND);
//! # Ok(())
//! # }
//! ```

use crate::activesync::ActiveSyncQuery;
use crate::fault::{FaultCode, SoapFault};
use crate::operation::EwsOperation;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::Service;
use tower::util::{Oneshot, ServiceExt};

/// True for `/ews` and every path below it, in any case.
pub fn is_ews_path(path: &str) -> bool {
    has_segment_prefix(path, "/ews")
}

/// True for `/Microsoft-Server-ActiveSync` and every path below it, in any case.
pub fn is_activesync_path(path: &str) -> bool {
    has_segment_prefix(path, "/microsoft-server-activesync")
}

/// Whether an ActiveSync command's response stays open for minutes: `Ping`, a device's hanging
/// request for changes (any case).
pub fn is_long_lived_activesync_command(command: &str) -> bool {
    command.eq_ignore_ascii_case("Ping")
}

/// Whether an ActiveSync command may hold back its whole answer until the mailbox changes or
/// the device's heartbeat ends (any case): `Ping`, and `Sync`, which does when its body carries
/// `Wait` (1 to 59 minutes, MS-ASCMD 2.2.3.198) or `HeartbeatInterval` (2.2.3.88.2). The body is
/// WBXML the gateway does not read, so every `Sync` is taken as one that may.
pub fn is_hanging_activesync_command(command: &str) -> bool {
    command.eq_ignore_ascii_case("Ping") || command.eq_ignore_ascii_case("Sync")
}

/// Whether Exchange may hold back the request's response head for as long as the device's
/// heartbeat (up to 59 minutes): an ActiveSync `Ping` or `Sync`
/// ([`is_hanging_activesync_command`]), its query read in either form. EWS streams
/// (`GetStreamingEvents`) are not: Exchange answers their head at once and streams the body.
pub fn may_hang<B>(request: &Request<B>) -> bool {
    is_activesync_path(request.uri().path())
        && request
            .uri()
            .query()
            .is_some_and(|query| ActiveSyncQuery::parse(query).may_hang())
}

/// Whether the request's response may stay open for minutes: an EWS operation that does
/// ([`EwsOperation::is_long_lived`], as the operation sniffer put it in the extensions), or an
/// ActiveSync command that does (its query read in either form, [`ActiveSyncQuery`]).
pub fn is_long_lived<B>(request: &Request<B>) -> bool {
    if let Some(operation) = request.extensions().get::<EwsOperation>() {
        return operation.is_long_lived();
    }
    is_activesync_path(request.uri().path())
        && request
            .uri()
            .query()
            .is_some_and(|query| ActiveSyncQuery::parse(query).is_long_lived())
}

/// Whether IIS reads `path` as it is written, segment by segment, so that routing on it routes
/// what Exchange will serve: no segment made of dots (and spaces), literal or percent-encoded
/// (`.`, `..`, `%2e%2E`, `.. `), which IIS resolves; no `\`, which it takes for `/`; no encoded
/// `/`, `\`, `%` or NUL (`%2f`, `%5c`, `%25`, `%00`), no IIS `%u` escape and no cut-off escape.
/// No EWS or ActiveSync client sends any of these.
///
/// ```
/// use ews_proxy_core::routing::is_canonical_path;
///
/// assert!(is_canonical_path("/EWS/Exchange.asmx"));
/// assert!(is_canonical_path("/ews/.well-known/x%20y"));
/// assert!(!is_canonical_path("/EWS/../ecp/"));
/// assert!(!is_canonical_path("/EWS/%2E%2e/owa/"));
/// assert!(!is_canonical_path("/EWS\\..\\ecp"));
/// ```
pub fn is_canonical_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Every request comes here: the usual path has neither `%`, `\` nor `/.` (searched without
    // building a `memmem` finder per call).
    let dot_after_slash =
        memchr::memchr_iter(b'/', bytes).any(|at| bytes.get(at + 1) == Some(&b'.'));
    if !dot_after_slash && memchr::memchr2(b'%', b'\\', bytes).is_none() {
        return true;
    }
    if bytes.contains(&b'\\') {
        return false;
    }
    for at in memchr::memchr_iter(b'%', bytes) {
        let escape = bytes.get(at + 1..at + 3).map(<[u8]>::to_ascii_lowercase);
        match escape.as_deref() {
            None | Some(b"2f" | b"5c" | b"25" | b"00") => return false,
            Some([b'u', _]) => return false,
            Some(_) => {}
        }
    }
    !path.split('/').any(is_dot_segment)
}

/// A segment of dots and spaces with at least one dot, each literal or percent-encoded: what
/// IIS (Windows, which drops trailing dots and spaces from names) reads as `.` or `..`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while let Some(&first) = rest.first() {
        let (byte, width) = match rest {
            [b'%', high, low, ..] => {
                let escaped = [high.to_ascii_lowercase(), low.to_ascii_lowercase()];
                match &escaped {
                    b"2e" => (b'.', 3),
                    b"20" => (b' ', 3),
                    _ => return false,
                }
            }
            _ => (first, 1),
        };
        match byte {
            b'.' => dots += 1,
            b' ' => {}
            _ => return false,
        }
        rest = &rest[width..];
    }
    dots > 0
}

/// `path` is `prefix` or starts with `prefix/`, ignoring ASCII case.
fn has_segment_prefix(path: &str, prefix: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.len() >= prefix.len()
        && bytes[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        && matches!(bytes.get(prefix.len()), None | Some(b'/'))
}

/// The router; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct PathRouter<Ews, Eas> {
    ews: Option<Ews>,
    activesync: Option<Eas>,
}

impl<Ews, Eas> PathRouter<Ews, Eas> {
    /// Routes EWS paths to `ews` and ActiveSync paths to `activesync`; `None` leaves a route unserved.
    pub fn new(ews: Option<Ews>, activesync: Option<Eas>) -> Self {
        PathRouter { ews, activesync }
    }
}

impl<Ews, Eas, B, ResBody, E> Service<Request<B>> for PathRouter<Ews, Eas>
where
    Ews: Service<Request<B>, Response = Response<ResBody>, Error = E> + Clone,
    Eas: Service<Request<B>, Response = Response<ResBody>, Error = E> + Clone,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = E;
    type Future = ResponseFuture<Ews, Eas, B>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per request on the chosen route (by `oneshot`), so that one busy
        // route never holds up the other.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !is_canonical_path(path) {
            tracing::info!(path, "refused a path that Exchange would read otherwise");
            let fault = SoapFault::new(
                StatusCode::BAD_REQUEST,
                FaultCode::InvalidRequest,
                "dot segments, backslashes and encoded separators are not served",
            )
            .with_reason("path-not-canonical");
            return ResponseFuture {
                route: Route::Answered {
                    response: Some(fault.into_response()),
                },
            };
        }
        if is_ews_path(path) {
            if let Some(ews) = &self.ews {
                return ResponseFuture {
                    route: Route::Ews {
                        inner: ews.clone().oneshot(request),
                    },
                };
            }
        } else if let Some(activesync) = self
            .activesync
            .as_ref()
            .filter(|_| is_activesync_path(path))
        {
            return ResponseFuture {
                route: Route::ActiveSync {
                    inner: activesync.clone().oneshot(request),
                },
            };
        }
        tracing::debug!(path, "no route");
        let mut response = Response::new(ResBody::from(Bytes::from_static(b"not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        ResponseFuture {
            route: Route::Answered {
                response: Some(response),
            },
        }
    }
}

pin_project! {
    /// Response future of [`PathRouter`].
    pub struct ResponseFuture<Ews, Eas, B>
    where
        Ews: Service<Request<B>>,
        Eas: Service<Request<B>>,
    {
        #[pin]
        route: Route<Ews, Eas, B>,
    }
}

pin_project! {
    #[project = RouteProj]
    enum Route<Ews, Eas, B>
    where
        Ews: Service<Request<B>>,
        Eas: Service<Request<B>>,
    {
        Ews { #[pin] inner: Oneshot<Ews, Request<B>> },
        ActiveSync { #[pin] inner: Oneshot<Eas, Request<B>> },
        /// Not routed: `404`, or `400` for a path not in canonical form.
        Answered { response: Option<Ews::Response> },
    }
}

impl<Ews, Eas, B, ResBody, E> Future for ResponseFuture<Ews, Eas, B>
where
    Ews: Service<Request<B>, Response = Response<ResBody>, Error = E>,
    Eas: Service<Request<B>, Response = Response<ResBody>, Error = E>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().route.project() {
            RouteProj::Ews { inner } => inner.poll(cx),
            RouteProj::ActiveSync { inner } => inner.poll(cx),
            RouteProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lived_requests_are_streaming_events_and_activesync_pings() {
        let request = |uri: &str, operation: Option<EwsOperation>| {
            let mut request = Request::post(uri).body(()).expect("request");
            if let Some(operation) = operation {
                request.extensions_mut().insert(operation);
            }
            request
        };
        let ews = "/EWS/Exchange.asmx";
        assert!(is_long_lived(&request(
            ews,
            Some(EwsOperation::GetStreamingEvents)
        )));
        assert!(!is_long_lived(&request(ews, Some(EwsOperation::GetItem))));
        assert!(!is_long_lived(&request(ews, Some(EwsOperation::GetEvents))));
        assert!(!is_long_lived(&request(ews, None)));
        for (query, long_lived) in [
            ("Cmd=Ping&User=alice&DeviceId=EAS1&DeviceType=iPhone", true),
            ("DeviceId=EAS1&cmd=ping", true),
            ("Cmd=Sync&DeviceId=EAS1", false),
            ("Cmd=Pings", false),
            ("XCmd=Ping", false),
            // Decoded as a client may encode it.
            ("Cmd=P%69ng", true),
            // The base64-encoded form (MS-ASHTTP 2.2.1.1.1.1): a Ping (code 18), then a Sync
            // (0), from device DEV1 of type WP8, protocol 14.1.
            ("jRIJBARERVYxAANXUDg%3D", true),
            ("jQAJBARERVYxAANXUDg=", false),
        ] {
            let uri = format!("/Microsoft-Server-ActiveSync?{query}");
            assert_eq!(is_long_lived(&request(&uri, None)), long_lived, "{query}");
        }
        // Only on ActiveSync's path.
        assert!(!is_long_lived(&request("/owa/?Cmd=Ping", None)));
    }

    #[test]
    fn activesync_pings_and_syncs_may_hang_nothing_else_does() {
        let request = |uri: &str| Request::post(uri).body(()).expect("request");
        for (query, hangs) in [
            ("Cmd=Ping&User=alice&DeviceId=EAS1&DeviceType=iPhone", true),
            ("Cmd=Sync&User=alice&DeviceId=EAS1&DeviceType=iPhone", true),
            ("cmd=sync&DeviceId=EAS1", true),
            ("Cmd=FolderSync&DeviceId=EAS1", false),
            ("Cmd=SendMail&DeviceId=EAS1", false),
            ("Cmd=Syncs", false),
            ("", false),
            // The base64-encoded form: a Sync (code 0) and a SendMail (code 1) of DEV1.
            ("jQAJBARERVYxAANXUDg=", true),
            ("jQEJBARERVYxAANXUDg=", false),
        ] {
            let uri = format!("/Microsoft-Server-ActiveSync?{query}");
            assert_eq!(may_hang(&request(&uri)), hangs, "{query}");
        }
        // Only ActiveSync's; an EWS stream answers its head at once.
        assert!(!may_hang(&request("/EWS/Exchange.asmx?Cmd=Ping")));
    }

    #[test]
    fn ews_prefix_matches_any_case_and_only_whole_segments() {
        for path in [
            "/EWS/Exchange.asmx",
            "/ews/exchange.asmx",
            "/Ews/Services.wsdl",
            "/ews",
            "/EWS/",
        ] {
            assert!(is_ews_path(path), "{path}");
        }
        for path in ["/", "/ewsx", "/ew", "/owa/ews", "/EWSExchange.asmx"] {
            assert!(!is_ews_path(path), "{path}");
        }
    }

    #[test]
    fn only_paths_iis_reads_as_written_are_canonical() {
        for path in [
            "/EWS/Exchange.asmx",
            "/Microsoft-Server-ActiveSync",
            "/ews/.well-known/a%20b",
            "/EWS/Exchange.asmx.",
            "/EWS/a..b/c.d",
            "/EWS/%41%7e",
            "/",
            "",
        ] {
            assert!(is_canonical_path(path), "{path}");
        }
        for path in [
            "/EWS/../ecp/",
            "/EWS/..",
            "/EWS/./Exchange.asmx",
            "/EWS/%2e%2e/owa/",
            "/EWS/%2E./owa/",
            "/EWS/.%2e/owa/",
            "/EWS/.../owa/",
            "/EWS/..%20/owa/",
            "/EWS/. ./owa/",
            "/Microsoft-Server-ActiveSync/%2e%2e/EWS/Exchange.asmx",
            "/EWS\\..\\ecp",
            "/EWS/..%2fecp",
            "/EWS/..%5Cecp",
            "/EWS/%252e%252e/ecp",
            "/EWS/%00",
            "/EWS/%u002e%u002e/ecp",
            "/EWS/Exchange.asmx%",
            "/EWS/Exchange.asmx%2",
        ] {
            assert!(!is_canonical_path(path), "{path}");
        }
    }

    #[tokio::test]
    async fn a_path_iis_would_read_otherwise_gets_400_from_no_route() {
        use http_body_util::Full;
        use tower::ServiceExt;
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let route = tower::service_fn(move |_request: Request<()>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default())) }
        });
        let router = PathRouter::new(Some(route.clone()), Some(route));
        for path in [
            "/EWS/../ecp/",
            "/Microsoft-Server-ActiveSync/%2e%2e/EWS/Exchange.asmx",
        ] {
            let request = Request::get(path).body(()).unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(response.headers()["x-seg-fault"], "path-not-canonical");
        }
        let served = router.oneshot(Request::get("/EWS/Exchange.asmx").body(()).unwrap());
        assert_eq!(served.await.unwrap().status(), StatusCode::OK);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn activesync_prefix_matches_any_case() {
        assert!(is_activesync_path("/Microsoft-Server-ActiveSync"));
        assert!(is_activesync_path("/microsoft-server-activesync"));
        assert!(!is_activesync_path("/Microsoft-Server-ActiveSyncX"));
    }
}
