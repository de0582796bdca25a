//! The enforcement layer: refuses the requests of blocked devices, and cuts their long-lived
//! responses the moment they become blocked.
//!
//! For each request it finds the device (a configurable header on EWS, default `X-Device-Id`;
//! the `DeviceId` query parameter on ActiveSync, plain or base64-encoded as
//! [`ews_proxy_core::activesync`] reads it) and the user (the [`ClientIdentity`] an
//! authentication layer put in the extensions, else ActiveSync's `User` parameter), and asks
//! [`Compliance::decide`]. A blocked device gets `403` with an EWS SOAP fault
//! (`ErrorAccessDenied`, the reason in the message) and `X-Compliance-Status: blocked;
//! reason=<code>`, and nothing reaches Exchange. A request without a device id is an unknown
//! device (blocked by default): the gate never opens by omission. The one exception is
//! ActiveSync's protocol discovery, an `OPTIONS` that names no device (how every EAS client
//! starts, MS-ASHTTP 2.2.3): it passes unless its user is blocked, as
//! [`ActiveSyncDiscovery`](crate::policy::ActiveSyncDiscovery) says. Each decision is counted in
//! the state's [metrics](crate::metrics), when it has some (one atomic add, no lock).
//!
//! Requests whose response may stay open are registered before the decision: EWS
//! `GetStreamingEvents`, a `POST` whose operation nobody could read (past the sniffer's prefix
//! limit, not SOAP, no sniffer in the stack: it may be a stream), ActiveSync `Ping` and `Sync`
//! (which Exchange holds back for as long as the device's heartbeat). If the device becomes
//! blocked while one is open, a response still awaited is answered at once with the same `403`
//! as a blocked request (what Exchange would have answered is dropped), and a body being
//! streamed fails at once, which closes the connection to the client.
//!
//! ```
//! use compliance_policy::enforce::ComplianceLayer;
//! use compliance_policy::policy::PolicySettings;
//! use compliance_policy::state::Compliance;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let compliance = Compliance::new(PolicySettings::default());
//! let service = ServiceBuilder::new()
//!     .layer(ComplianceLayer::new(compliance.clone()))
//!     .service_fn(|_request: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("from exchange")))
//!     });
//! // No device is known yet: an unknown device is blocked.
//! let request = Request::post("/EWS/Exchange.asmx").header("x-device-id", "EASDEV1").body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//! assert_eq!(response.headers()["x-compliance-status"], "blocked; reason=unknown-device");
//! # Ok(())
//! # }
//! ```

use crate::policy::{BlockReason, Decision};
use crate::state::Compliance;
use crate::streams::StreamGuard;
use bytes::Bytes;
use ews_proxy_core::activesync::ActiveSyncQuery;
use ews_proxy_core::body::BoxError;
use ews_proxy_core::fault::{FaultCode, SoapFault};
use ews_proxy_core::identity::ClientIdentity;
use ews_proxy_core::operation::EwsOperation;
use ews_proxy_core::routing::is_activesync_path;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// The header that tells a compliance block from any other failure.
pub const COMPLIANCE_STATUS: HeaderName = HeaderName::from_static("x-compliance-status");

/// The default header carrying the EAS device id on EWS requests.
pub const DEFAULT_DEVICE_ID_HEADER: HeaderName = HeaderName::from_static("x-device-id");

/// Layer that applies [`Enforce`].
#[derive(Clone, Debug)]
pub struct ComplianceLayer {
    compliance: Option<Compliance>,
    device_header: HeaderName,
}

impl ComplianceLayer {
    /// Enforces `compliance`, reading the device id from `X-Device-Id`.
    pub fn new(compliance: Compliance) -> Self {
        ComplianceLayer {
            compliance: Some(compliance),
            device_header: DEFAULT_DEVICE_ID_HEADER,
        }
    }

    /// Enforces nothing: every request passes. For a gateway configured without compliance,
    /// so that its stack keeps one shape (the response body type) either way.
    pub fn disabled() -> Self {
        ComplianceLayer {
            compliance: None,
            device_header: DEFAULT_DEVICE_ID_HEADER,
        }
    }

    /// Reads the device id of EWS requests from `header` instead.
    pub fn with_device_header(mut self, header: HeaderName) -> Self {
        self.device_header = header;
        self
    }
}

impl<S> Layer<S> for ComplianceLayer {
    type Service = Enforce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Enforce {
            inner,
            compliance: self.compliance.clone(),
            device_header: self.device_header.clone(),
        }
    }
}

/// Middleware that enforces the compliance view; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Enforce<S> {
    inner: S,
    compliance: Option<Compliance>,
    device_header: HeaderName,
}

/// The device and user a request names, and whether its response is long-lived.
struct Subject<'a> {
    device: Option<Cow<'a, str>>,
    user: Option<Cow<'a, str>>,
    /// ActiveSync's `DeviceType`.
    device_type: Option<Cow<'a, str>>,
    /// The EWS operation or the ActiveSync command, when known.
    operation: Option<Cow<'a, str>>,
    /// Its response may stay open: registered to be cut on a block.
    watched: bool,
    /// ActiveSync named a parameter twice with different values: refused, not decided.
    conflicting: bool,
    /// An ActiveSync `OPTIONS` naming no device: protocol discovery, decided by
    /// [`Compliance::decide_discovery`].
    discovery: bool,
}

impl<S> Enforce<S> {
    fn subject<'a, B>(&self, request: &'a Request<B>) -> Subject<'a> {
        let identity = request
            .extensions()
            .get::<ClientIdentity>()
            .map(|i| Cow::Borrowed(i.user.as_str()));
        if is_activesync_path(request.uri().path()) {
            // Plain (`Cmd=…&DeviceId=…`) or base64-encoded: a device id missed here would
            // make a blocked device an unknown one.
            let query = ActiveSyncQuery::parse(request.uri().query().unwrap_or(""));
            return Subject {
                watched: query.may_hang(),
                discovery: request.method() == Method::OPTIONS && query.device_id.is_none(),
                device: query.device_id,
                user: identity.or(query.user),
                device_type: query.device_type,
                operation: query.command,
                conflicting: query.conflicting,
            };
        }
        let device = request
            .headers()
            .get(&self.device_header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(Cow::Borrowed);
        let operation = request.extensions().get::<EwsOperation>();
        // An operation nobody could name may be a stream as well as anything else.
        let watched = match operation {
            Some(operation) => {
                operation.is_long_lived() || matches!(operation, EwsOperation::Unknown)
            }
            None => request.method() == Method::POST,
        };
        Subject {
            device,
            user: identity,
            device_type: None,
            operation: operation.map(|operation| Cow::Borrowed(operation.as_str())),
            watched,
            conflicting: false,
            discovery: false,
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Enforce<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<CutOnBlock<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (decision, guard) = match &self.compliance {
            Some(compliance) => match self.check(compliance, &request) {
                Ok(checked) => checked,
                Err(refused) => {
                    return ResponseFuture {
                        kind: Kind::Blocked {
                            response: Some(refused.into_response()),
                        },
                    };
                }
            },
            None => (None, None),
        };
        match decision {
            None | Some(Decision::Allow(_)) => ResponseFuture {
                kind: Kind::Called {
                    inner: self.inner.call(request),
                    guard,
                },
            },
            Some(Decision::Block(reason)) => ResponseFuture {
                kind: Kind::Blocked {
                    response: Some(blocked(reason)),
                },
            },
        }
    }
}

/// The answer to a request of a blocked device: `403`, an EWS SOAP fault naming the reason,
/// and `X-Compliance-Status`.
fn blocked<B: From<Bytes>>(reason: BlockReason) -> Response<B> {
    let fault = SoapFault::new(
        StatusCode::FORBIDDEN,
        FaultCode::AccessDenied,
        format!("access denied by the gateway's compliance policy: {reason}"),
    )
    .with_reason("compliance");
    let mut response: Response<B> = fault.into_response();
    let status = format!("blocked; reason={reason}");
    if let Ok(value) = HeaderValue::from_str(&status) {
        response.headers_mut().insert(COMPLIANCE_STATUS, value);
    }
    response
}

impl<S> Enforce<S> {
    /// The decision for `request`, and the registration of its response if long-lived; a fault
    /// for a request that names its device ambiguously.
    fn check<B>(
        &self,
        compliance: &Compliance,
        request: &Request<B>,
    ) -> Result<(Option<Decision>, Option<StreamGuard>), SoapFault> {
        let subject = self.subject(request);
        if subject.conflicting {
            // Deciding on one of two device ids while Exchange reads both would let a blocked
            // device name a compliant one beside its own.
            tracing::info!(
                device = subject.device.as_deref().unwrap_or(""),
                "refused: the activesync query names a parameter twice with different values"
            );
            return Err(SoapFault::new(
                StatusCode::BAD_REQUEST,
                FaultCode::InvalidRequest,
                "the ActiveSync query names a parameter (DeviceId, User, DeviceType or Cmd) \
                 twice with different values",
            )
            .with_reason("conflicting-activesync-parameters"));
        }
        let span = tracing::Span::current();
        if let Some(device) = &subject.device {
            span.record("device", &**device);
        }
        if let Some(user) = &subject.user {
            span.record("user", &**user);
        }
        // Registered before deciding: a block that lands in between still cuts the stream.
        let guard = subject.watched.then(|| {
            compliance.register_stream(subject.device.as_deref(), subject.user.as_deref())
        });
        let decision = if subject.discovery {
            compliance.decide_discovery(subject.user.as_deref())
        } else {
            compliance.decide_request(
                subject.device.as_deref(),
                subject.user.as_deref(),
                subject.device_type.as_deref(),
            )
        };
        if let Some(metrics) = compliance.metrics() {
            metrics.decision(decision);
        }
        if let Some(device) = &subject.device {
            let operation = subject.operation.as_deref().unwrap_or("");
            compliance
                .recent_requests()
                .record(device, operation, decision);
        }
        if let Decision::Block(reason) = decision {
            tracing::info!(
                device = subject.device.as_deref().unwrap_or(""),
                user = subject.user.as_deref().unwrap_or(""),
                reason = reason.as_str(),
                "blocked by compliance"
            );
        }
        Ok((Some(decision), guard))
    }
}

pin_project! {
    /// Response future of [`Enforce`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Called { #[pin] inner: F, guard: Option<StreamGuard> },
        Blocked { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<CutOnBlock<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner, guard } => {
                // Blocked while Exchange holds the answer back (a Ping waits for as long as
                // the heartbeat): answered now, as a request of a blocked device is.
                if let Some(cut) = guard.as_ref().filter(|guard| guard.poll_cut(cx)) {
                    // The reason is set before the cut; the fallback is never taken.
                    let reason = cut.cut_reason().unwrap_or(BlockReason::NonCompliant);
                    *guard = None;
                    tracing::info!(%reason, "answered a waiting request of a device that became blocked");
                    return Poll::Ready(Ok(blocked(reason).map(|body| CutOnBlock {
                        inner: body,
                        guard: None,
                    })));
                }
                let response = ready!(inner.poll(cx))?;
                let guard = guard.take();
                Poll::Ready(Ok(response.map(|body| CutOnBlock { inner: body, guard })))
            }
            KindProj::Blocked { response } => {
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(response.map(|body| CutOnBlock {
                    inner: body,
                    guard: None,
                })))
            }
        }
    }
}

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
#[error("the device became blocked: its stream was cut")]
pub struct StreamCut;

pin_project! {
    /// A response body that fails with [`StreamCut`] as soon as its device becomes blocked.
    pub struct CutOnBlock<B> {
        #[pin]
        inner: B,
        guard: Option<StreamGuard>,
    }
}

impl<B: From<Bytes>> From<Bytes> for CutOnBlock<B> {
    fn from(bytes: Bytes) -> Self {
        CutOnBlock {
            inner: B::from(bytes),
            guard: None,
        }
    }
}

impl<B> Body for CutOnBlock<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(guard) = this.guard.as_ref()
            && guard.poll_cut(cx)
        {
            *this.guard = None;
            return Poll::Ready(Some(Err(Box::new(StreamCut))));
        }
        this.inner.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
    use crate::policy::{Override, PolicySettings};
    use crate::state::ChangeSource;
    use http_body_util::{BodyExt, Either, Full, StreamBody};
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use tower::{ServiceExt, service_fn};

    fn compliance() -> Compliance {
        let compliance = Compliance::new(PolicySettings::default());
        let phone = DeviceRecord {
            device_id: DeviceId::new("EASDEV1"),
            user: Some("alice@test.local".into()),
            enrollment: Enrollment::Enrolled,
            compliance: ComplianceStatus::Compliant,
            managed: true,
            ..Default::default()
        };
        compliance.replace_all(vec![phone], ChangeSource::FullSync);
        compliance
    }

    /// An inner service that counts calls and answers 200.
    fn counting(
        calls: Arc<Mutex<usize>>,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        service_fn(move |_request: Request<Full<Bytes>>| {
            let calls = calls.clone();
            async move {
                *calls.lock().unwrap() += 1;
                Ok::<_, Infallible>(Response::new(Full::from("exchange")))
            }
        })
    }

    fn ews(device: Option<&str>) -> Request<Full<Bytes>> {
        let mut builder = Request::post("/EWS/Exchange.asmx");
        if let Some(device) = device {
            builder = builder.header("x-device-id", device);
        }
        builder.body(Full::default()).unwrap()
    }

    #[tokio::test]
    async fn compliant_device_passes_and_blocked_one_gets_403_without_reaching_exchange() {
        let compliance = compliance();
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance.clone()).layer(counting(calls.clone()));

        let ok = service.clone().oneshot(ews(Some("easdev1"))).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(ok.headers().get(COMPLIANCE_STATUS).is_none());

        compliance.set_device_override("EASDEV1", Some(Override::Block));
        let blocked = service.oneshot(ews(Some("EASDEV1"))).await.unwrap();
        assert_eq!(blocked.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            blocked.headers()[COMPLIANCE_STATUS],
            "blocked; reason=device-override"
        );
        let body = blocked.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains(">ErrorAccessDenied</e:ResponseCode>"),
            "{body}"
        );
        assert!(body.contains("device-override"), "{body}");
        assert_eq!(*calls.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn disabled_layer_lets_everything_through() {
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::disabled().layer(counting(calls.clone()));
        let response = service.oneshot(ews(None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(*calls.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn request_without_device_id_is_an_unknown_device() {
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance()).layer(counting(calls.clone()));
        for request in [ews(None), ews(Some("  "))] {
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(
                response.headers()[COMPLIANCE_STATUS],
                "blocked; reason=unknown-device"
            );
        }
        assert_eq!(*calls.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn device_header_name_is_configurable() {
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance())
            .with_device_header(HeaderName::from_static("x-ens-device"))
            .layer(counting(calls.clone()));
        let request = Request::post("/EWS/Exchange.asmx")
            .header("x-ens-device", "EASDEV1")
            .body(Full::default())
            .unwrap();
        assert_eq!(
            service.oneshot(request).await.unwrap().status(),
            StatusCode::OK
        );
    }

    /// `method` on the ActiveSync path with `query` (empty: none), as `user` (a client
    /// identity an authentication layer would have set).
    fn activesync(method: Method, query: &str, user: Option<&str>) -> Request<Full<Bytes>> {
        let uri = if query.is_empty() {
            "/Microsoft-Server-ActiveSync".to_owned()
        } else {
            format!("/Microsoft-Server-ActiveSync?{query}")
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::default())
            .unwrap();
        if let Some(user) = user {
            request.extensions_mut().insert(ClientIdentity {
                user: user.into(),
                source: ews_proxy_core::identity::IdentitySource::Basic,
            });
        }
        request
    }

    #[tokio::test]
    async fn activesync_discovery_passes_without_a_device_unless_its_user_is_blocked() {
        let compliance = compliance();
        compliance.set_user_override("bob@test.local", Some(Override::Block));
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance).layer(counting(calls.clone()));
        let status = |response: &Response<_>| {
            response
                .headers()
                .get(COMPLIANCE_STATUS)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        // How every EAS client starts: no query, its user in the authentication.
        for request in [
            activesync(Method::OPTIONS, "", Some("alice@test.local")),
            activesync(Method::OPTIONS, "", None),
            activesync(Method::OPTIONS, "User=alice%40test.local", None),
        ] {
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(status(&response), None);
        }
        assert_eq!(*calls.lock().unwrap(), 3);
        // A blocked user, a device UEM does not know, and a command without a device: refused.
        for (request, expected) in [
            (
                activesync(Method::OPTIONS, "", Some("bob@test.local")),
                "blocked; reason=user-override",
            ),
            (
                activesync(Method::OPTIONS, "User=bob%40test.local", None),
                "blocked; reason=user-override",
            ),
            (
                activesync(Method::OPTIONS, "DeviceId=STRANGER", None),
                "blocked; reason=unknown-device",
            ),
            (
                activesync(Method::POST, "Cmd=FolderSync", Some("alice@test.local")),
                "blocked; reason=unknown-device",
            ),
        ] {
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            assert_eq!(status(&response).as_deref(), Some(expected));
        }
        assert_eq!(*calls.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn activesync_discovery_is_an_unknown_device_when_the_policy_says_decide() {
        let compliance = Compliance::new(PolicySettings {
            activesync_discovery: crate::policy::ActiveSyncDiscovery::Decide,
            ..PolicySettings::default()
        });
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance).layer(counting(calls.clone()));
        let request = activesync(Method::OPTIONS, "", Some("alice@test.local"));
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(
            response.headers()[COMPLIANCE_STATUS],
            "blocked; reason=unknown-device"
        );
        assert_eq!(*calls.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn activesync_device_and_user_come_from_the_query() {
        let compliance = compliance();
        compliance.set_user_override("bob@test.local", Some(Override::Block));
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance).layer(counting(calls.clone()));
        let allowed = Request::post("/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice%40test.local&DeviceId=easdev1&DeviceType=iPhone")
            .body(Full::default())
            .unwrap();
        assert_eq!(
            service.clone().oneshot(allowed).await.unwrap().status(),
            StatusCode::OK
        );
        let bob = Request::post(
            "/Microsoft-Server-ActiveSync?Cmd=Sync&User=bob%40test.local&DeviceId=EASDEV1",
        )
        .body(Full::default())
        .unwrap();
        let response = service.oneshot(bob).await.unwrap();
        assert_eq!(
            response.headers()[COMPLIANCE_STATUS],
            "blocked; reason=user-override"
        );
    }

    /// An ActiveSync request in the base64-encoded query form (MS-ASHTTP 2.2.1.1.1.1),
    /// protocol 14.1, with the `User` parameter.
    fn activesync_base64(command: u8, device: &str, user: &str) -> Request<Full<Bytes>> {
        use base64::Engine as _;
        let mut bytes = vec![141, command, 0x09, 0x04];
        for field in [device.as_bytes(), b"", b"WP8"] {
            bytes.push(u8::try_from(field.len()).unwrap());
            bytes.extend_from_slice(field);
        }
        bytes.extend_from_slice(&[8, u8::try_from(user.len()).unwrap()]);
        bytes.extend_from_slice(user.as_bytes());
        let query = base64::engine::general_purpose::STANDARD.encode(bytes);
        Request::post(format!("/Microsoft-Server-ActiveSync?{query}"))
            .body(Full::default())
            .unwrap()
    }

    #[tokio::test]
    async fn a_base64_activesync_query_names_the_device_and_user_as_the_plain_one_does() {
        // Unknown devices allowed: a device id this layer failed to read would pass as one.
        let compliance = Compliance::new(PolicySettings {
            unknown_device: crate::policy::UnknownDevice::Allow,
            ..PolicySettings::default()
        });
        let device = |id: &str, status| DeviceRecord {
            device_id: DeviceId::new(id),
            enrollment: Enrollment::Enrolled,
            compliance: status,
            managed: true,
            ..Default::default()
        };
        compliance.replace_all(
            vec![
                device("WPGOOD1", ComplianceStatus::Compliant),
                device("WPBAD1", ComplianceStatus::NonCompliant),
            ],
            ChangeSource::FullSync,
        );
        compliance.set_user_override("bob@test.local", Some(Override::Block));
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance.clone()).layer(counting(calls.clone()));
        // (command code, device, user, X-Compliance-Status): a Ping (18), then Syncs (0).
        for (command, device, user, status) in [
            (18, "wpgood1", "alice@test.local", None),
            (
                0,
                "WPBAD1",
                "alice@test.local",
                Some("blocked; reason=noncompliant"),
            ),
            (
                0,
                "WPGOOD1",
                "bob@test.local",
                Some("blocked; reason=user-override"),
            ),
        ] {
            let request = activesync_base64(command, device, user);
            let response = service.clone().oneshot(request).await.unwrap();
            let said = response.headers().get(COMPLIANCE_STATUS);
            assert_eq!(said.map(|v| v.to_str().unwrap()), status, "{device} {user}");
        }
        assert_eq!(
            *calls.lock().unwrap(),
            1,
            "only the compliant Ping reached Exchange"
        );
        let recent = compliance.recent_requests().for_device("WPGOOD1", 10);
        let seen: Vec<&str> = recent.iter().map(|r| r.operation.as_str()).collect();
        assert_eq!(seen, ["Sync", "Ping"]);
    }

    #[tokio::test]
    async fn an_activesync_device_named_twice_is_refused_not_decided() {
        let compliance = compliance();
        compliance.set_device_override("BLOCKED1", Some(Override::Block));
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance).layer(counting(calls.clone()));
        // A blocked device naming a compliant one beside its own: Exchange would read both.
        let request = Request::post(
            "/Microsoft-Server-ActiveSync?Cmd=Sync&DeviceId=BLOCKED1&DeviceId=EASDEV1",
        )
        .body(Full::default())
        .unwrap();
        let refused = service.oneshot(request).await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            refused.headers()["x-seg-fault"],
            "conflicting-activesync-parameters"
        );
        assert_eq!(*calls.lock().unwrap(), 0, "nothing of it reached Exchange");
    }

    #[tokio::test]
    async fn activesync_device_type_meets_the_device_type_policy() {
        let compliance = Compliance::new(PolicySettings {
            blocked_device_types: vec!["BlackBerry".into()],
            ..PolicySettings::default()
        });
        let phone = DeviceRecord {
            device_id: DeviceId::new("EASDEV1"),
            enrollment: Enrollment::Enrolled,
            compliance: ComplianceStatus::Compliant,
            managed: true,
            ..Default::default()
        };
        compliance.replace_all(vec![phone], ChangeSource::FullSync);
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance.clone()).layer(counting(calls.clone()));
        let request = |device_type: &str| {
            Request::post(format!(
                "/Microsoft-Server-ActiveSync?Cmd=Sync&DeviceId=EASDEV1&DeviceType={device_type}"
            ))
            .body(Full::default())
            .unwrap()
        };
        let refused = service
            .clone()
            .oneshot(request("blackberry"))
            .await
            .unwrap();
        assert_eq!(
            refused.headers()[COMPLIANCE_STATUS],
            "blocked; reason=device-type"
        );
        assert_eq!(*calls.lock().unwrap(), 0, "nothing of it reached Exchange");
        let passed = service.oneshot(request("iPhone")).await.unwrap();
        assert_eq!(passed.status(), StatusCode::OK);
        // Both decisions are kept for the console's device page, newest first.
        let recent = compliance.recent_requests().for_device("easdev1", 10);
        let seen: Vec<(&str, bool)> = recent
            .iter()
            .map(|r| (r.operation.as_str(), r.decision.is_allowed()))
            .collect();
        assert_eq!(seen, [("Sync", true), ("Sync", false)]);
    }

    #[tokio::test]
    async fn identity_from_authentication_is_the_user() {
        let compliance = compliance();
        compliance.set_user_override("carol@test.local", Some(Override::Block));
        let calls = Arc::new(Mutex::new(0));
        let service = ComplianceLayer::new(compliance).layer(counting(calls.clone()));
        let mut request = ews(Some("EASDEV1"));
        request.extensions_mut().insert(ClientIdentity {
            user: "carol@test.local".into(),
            source: ews_proxy_core::identity::IdentitySource::Basic,
        });
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(
            response.headers()[COMPLIANCE_STATUS],
            "blocked; reason=user-override"
        );
    }

    type TestStream = StreamBody<
        Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>,
    >;

    /// A streaming body that can also be made from bytes, as the layer's faults need.
    struct TestBody(Either<Full<Bytes>, TestStream>);

    impl From<Bytes> for TestBody {
        fn from(bytes: Bytes) -> Self {
            TestBody(Either::Left(Full::new(bytes)))
        }
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }
    }

    /// Which responses a block must be able to end: streams, ActiveSync's long polls, and what
    /// nobody could name (it may be a stream); not an ordinary request.
    #[tokio::test]
    async fn streams_long_polls_and_unnamed_posts_are_watched_nothing_else_is() {
        let compliance = compliance();
        let service = ComplianceLayer::new(compliance.clone()).layer(counting(Arc::default()));
        let with = |operation: Option<EwsOperation>| {
            let mut request = ews(Some("EASDEV1"));
            if let Some(operation) = operation {
                request.extensions_mut().insert(operation);
            }
            request
        };
        let activesync = |command: &str| {
            Request::post(format!(
                "/Microsoft-Server-ActiveSync?Cmd={command}&DeviceId=EASDEV1&DeviceType=iPhone"
            ))
            .body(Full::default())
            .unwrap()
        };
        let get = Request::get("/EWS/Services.wsdl")
            .header("x-device-id", "EASDEV1")
            .body(Full::default())
            .unwrap();
        for (what, request, watched) in [
            (
                "GetStreamingEvents",
                with(Some(EwsOperation::GetStreamingEvents)),
                true,
            ),
            (
                "an operation the sniffer could not read",
                with(Some(EwsOperation::Unknown)),
                true,
            ),
            ("a POST no sniffer looked at", with(None), true),
            ("GetItem", with(Some(EwsOperation::GetItem)), false),
            ("a GET", get, false),
            ("Ping", activesync("Ping"), true),
            ("Sync", activesync("Sync"), true),
            ("SendMail", activesync("SendMail"), false),
        ] {
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{what}");
            assert_eq!(compliance.open_streams(), usize::from(watched), "{what}");
            drop(response);
            assert_eq!(compliance.open_streams(), 0, "{what}");
        }
    }

    #[tokio::test]
    async fn open_stream_is_cut_when_its_device_becomes_blocked() {
        let compliance = compliance();
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let receiver = Arc::new(Mutex::new(Some(receiver)));
        let inner = service_fn(move |_request: Request<Full<Bytes>>| {
            let receiver = receiver.lock().unwrap().take().unwrap();
            let stream = futures_util::stream::unfold(receiver, |mut r| async move {
                r.recv().await.map(|f| (f, r))
            });
            let body: TestStream = StreamBody::new(Box::pin(stream));
            async move { Ok::<_, Infallible>(Response::new(TestBody(Either::Right(body)))) }
        });
        let service = ComplianceLayer::new(compliance.clone()).layer(inner);
        let mut request = ews(Some("EASDEV1"));
        request
            .extensions_mut()
            .insert(EwsOperation::GetStreamingEvents);
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(compliance.open_streams(), 1);
        let mut body = response.into_body();

        sender
            .send(Ok(Frame::data(Bytes::from_static(b"<Envelope/>"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "<Envelope/>");

        compliance.set_device_override("EASDEV1", Some(Override::Block));
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<StreamCut>(), "{error}");
        drop(body);
        assert_eq!(compliance.open_streams(), 0);
    }
}
