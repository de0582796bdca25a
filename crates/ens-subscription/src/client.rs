//! [`EwsClient`]: the EWS operations of a notification service as tower services over any
//! HTTP service, and as async methods.
//!
//! Each operation is a request type of [`soap`](crate::soap) ([`Subscribe`], [`GetEvents`],
//! [`Unsubscribe`], [`GetItem`], [`GetStreamingEvents`]); the client implements
//! `Service<Operation>` for each, so it composes with tower middleware (timeouts, rate limits,
//! retries) like any service. A client carries the extra headers of one device (the device id
//! header the gateway reads, `Authorization`, affinity); [`EwsClient::with_headers`] makes a
//! client for another device sharing the same HTTP service.
//!
//! Answers are mapped to [`EwsError`] in this order: `403` with `X-Compliance-Status:
//! blocked` is [`EwsError::Blocked`]; `401` is [`EwsError::Unauthorized`]; any other non-2xx is
//! the SOAP fault it carries ([`EwsError::Fault`], [`EwsError::ServerBusy`]) or
//! [`EwsError::Http`]; a 2xx document is parsed, its error response codes mapped.
//!
//! ```
//! use bytes::Bytes;
//! use ens_subscription::client::EwsClient;
//! use ens_subscription::soap::Unsubscribe;
//! use ens_subscription::EwsError;
//! use http_body_util::Full;
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A stand-in for the gateway: every device is blocked.
//! let gateway = service_fn(|request: http::Request<Full<Bytes>>| async move {
//!     assert_eq!(request.headers()["x-device-id"], "EASDEV1");
//!     let response = http::Response::builder()
//!         .status(403)
//!         .header("x-compliance-status", "blocked; reason=device-wiped")
//!         .body(Full::new(Bytes::new()))?;
//!     Ok::<_, http::Error>(response)
//! });
//! let client = EwsClient::new(gateway, "http://gateway/EWS/Exchange.asmx".parse()?)
//!     .header("x-device-id", "EASDEV1")?;
//! let error = client.oneshot(Unsubscribe::new("sub-1")).await.unwrap_err();
//! assert!(matches!(error, EwsError::Blocked { reason } if reason == "device-wiped"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tower::{Service, ServiceExt as _};

use crate::error::{BoxError, EwsError};
use crate::soap::{
    self, GetEvents, GetItem, GetStreamingEvents, Item, Notification, Subscribe, SubscribeResponse,
    Unsubscribe,
};
use crate::streaming::NotificationStream;

/// The header naming a response as the gateway's compliance decision.
pub const COMPLIANCE_STATUS_HEADER: &str = "x-compliance-status";
/// The header the gateway adds to the SOAP faults it makes itself.
pub const SEG_FAULT_HEADER: &str = "x-seg-fault";
/// The cookie by which Exchange pins a subscription to one back-end server.
pub const AFFINITY_COOKIE: &str = "X-BackEndOverrideCookie";

/// The plain-HTTP client [`EwsClient::http`] uses.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Settings shared by every client made from one [`EwsClient::with_config`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The EWS endpoint, e.g. `http://gateway:8080/EWS/Exchange.asmx`.
    pub url: Uri,
    /// The `RequestServerVersion` sent; [`soap::DEFAULT_SERVER_VERSION`] by default.
    pub server_version: String,
    /// The largest response document read; a larger one is [`EwsError::Malformed`].
    pub max_response_bytes: usize,
    /// The largest single `Envelope` of a streaming response; see
    /// [`NotificationStream`](crate::streaming::NotificationStream).
    pub max_envelope_bytes: usize,
}

impl ClientConfig {
    /// The defaults for this endpoint: Exchange 2013, 4 MiB documents, 1 MiB stream
    /// envelopes.
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            server_version: soap::DEFAULT_SERVER_VERSION.to_string(),
            max_response_bytes: 4 * 1024 * 1024,
            max_envelope_bytes: 1024 * 1024,
        }
    }
}

/// An EWS client for one device over the HTTP service `S`.
///
/// Cloning is cheap when `S` is (a hyper-util client is).
#[derive(Clone)]
pub struct EwsClient<S> {
    inner: S,
    config: Arc<ClientConfig>,
    headers: HeaderMap,
}

impl<S> fmt::Debug for EwsClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The headers hold credentials: only their names are shown.
        f.debug_struct("EwsClient")
            .field("inner", &std::any::type_name::<S>())
            .field("url", &self.config.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EwsClient<HttpClient> {
    /// A client over a plain-HTTP hyper-util client (HTTP/1.1, pooled). Must be called within
    /// a Tokio runtime.
    pub fn http(url: Uri) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self::new(client, url)
    }
}

impl<S> EwsClient<S> {
    /// A client posting to `url` through `service`, with the default [`ClientConfig`].
    pub fn new(service: S, url: Uri) -> Self {
        Self::with_config(service, ClientConfig::new(url))
    }

    /// A client with these settings.
    pub fn with_config(service: S, config: ClientConfig) -> Self {
        Self {
            inner: service,
            config: Arc::new(config),
            headers: HeaderMap::new(),
        }
    }

    /// Adds a header sent with every request (replacing one of the same name), e.g. the device
    /// id header the gateway expects or `Authorization`.
    ///
    /// # Errors
    ///
    /// [`EwsError::InvalidRequest`] if the name or value is not a valid header.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, EwsError> {
        let name = HeaderName::try_from(name)
            .map_err(|e| EwsError::InvalidRequest(format!("header name {name:?}: {e}")))?;
        let mut value = HeaderValue::try_from(value)
            .map_err(|e| EwsError::InvalidRequest(format!("header {name}: {e}")))?;
        if name == header::AUTHORIZATION || name == header::COOKIE {
            value.set_sensitive(true);
        }
        self.headers.insert(name, value);
        Ok(self)
    }

    /// The headers sent with every request.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The headers sent with every request, to change.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// A client for another device: the same service and settings, these headers.
    pub fn with_headers(&self, headers: HeaderMap) -> Self
    where
        S: Clone,
    {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
            headers,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The HTTP request of an operation element.
    fn request(&self, operation: &str) -> Result<Request<Full<Bytes>>, EwsError> {
        let document = soap::envelope(&self.config.server_version, operation);
        let mut request = Request::post(self.config.url.clone())
            .body(Full::new(Bytes::from(document)))
            .map_err(|e| EwsError::InvalidRequest(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/xml"));
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        Ok(request)
    }
}

impl<S, B> EwsClient<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Creates a subscription.
    ///
    /// # Errors
    ///
    /// Any [`EwsError`]; see the [module](self) for how answers map to errors.
    pub async fn subscribe(&self, request: Subscribe) -> Result<SubscribeResponse, EwsError> {
        self.clone().oneshot(request).await
    }

    /// Polls a pull subscription.
    ///
    /// # Errors
    ///
    /// Any [`EwsError`]; a subscription gone is [`EwsError::SubscriptionNotFound`] or
    /// [`EwsError::ExpiredSubscription`].
    pub async fn get_events(&self, request: GetEvents) -> Result<Notification, EwsError> {
        self.clone().oneshot(request).await
    }

    /// Ends a subscription.
    ///
    /// # Errors
    ///
    /// Any [`EwsError`].
    pub async fn unsubscribe(&self, request: Unsubscribe) -> Result<(), EwsError> {
        self.clone().oneshot(request).await
    }

    /// Fetches the preview properties of items.
    ///
    /// # Errors
    ///
    /// Any [`EwsError`]; an item not found is `EwsError::Ews { code: "ErrorItemNotFound", .. }`.
    pub async fn get_item(&self, request: GetItem) -> Result<Vec<Item>, EwsError> {
        self.clone().oneshot(request).await
    }

    /// Opens a notification stream; see [`NotificationStream`].
    ///
    /// # Errors
    ///
    /// An [`EwsError`] if the server or gateway refuses the request outright (e.g.
    /// [`EwsError::Blocked`]); errors after the response started come from the stream.
    pub async fn get_streaming_events(
        &self,
        request: GetStreamingEvents,
    ) -> Result<NotificationStream<B>, EwsError> {
        self.clone().oneshot(request).await
    }
}

/// An EWS operation with a whole-document response: its request element and the parser of its
/// response. Implemented by the request types of [`soap`](crate::soap).
pub trait Operation: sealed::Sealed {
    /// What a successful response yields.
    type Output;

    /// The operation element (`m:Subscribe`, …) of the request.
    fn to_xml(&self) -> String;

    /// Reads the response document; `headers` are the response's (for cookies).
    ///
    /// # Errors
    ///
    /// The mapped [`EwsError`] of an error response or an unreadable document.
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self::Output, EwsError>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::soap::Subscribe {}
    impl Sealed for crate::soap::GetEvents {}
    impl Sealed for crate::soap::Unsubscribe {}
    impl Sealed for crate::soap::GetItem {}
}

impl Operation for Subscribe {
    type Output = SubscribeResponse;
    fn to_xml(&self) -> String {
        Subscribe::to_xml(self)
    }
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<SubscribeResponse, EwsError> {
        let mut response = Subscribe::parse_response(body)?;
        response.affinity_cookie = affinity_cookie(headers);
        Ok(response)
    }
}

impl Operation for GetEvents {
    type Output = Notification;
    fn to_xml(&self) -> String {
        GetEvents::to_xml(self)
    }
    fn parse(_: &HeaderMap, body: &[u8]) -> Result<Notification, EwsError> {
        GetEvents::parse_response(body)
    }
}

impl Operation for Unsubscribe {
    type Output = ();
    fn to_xml(&self) -> String {
        Unsubscribe::to_xml(self)
    }
    fn parse(_: &HeaderMap, body: &[u8]) -> Result<(), EwsError> {
        Unsubscribe::parse_response(body)
    }
}

impl Operation for GetItem {
    type Output = Vec<Item>;
    fn to_xml(&self) -> String {
        GetItem::to_xml(self)
    }
    fn parse(_: &HeaderMap, body: &[u8]) -> Result<Vec<Item>, EwsError> {
        GetItem::parse_response(body)
    }
}

/// The `X-BackEndOverrideCookie` value among the response's `Set-Cookie` headers.
fn affinity_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.trim().split_once('='))
        .find(|(name, _)| *name == AFFINITY_COOKIE)
        .map(|(_, value)| value.to_string())
}

fn transport(error: impl Into<BoxError>) -> EwsError {
    EwsError::Transport(error.into())
}

/// The error of an answer decided by its status and headers alone, before the body is read:
/// the gateway's compliance block and `401`.
fn refusal(status: StatusCode, headers: &HeaderMap) -> Option<EwsError> {
    if status == StatusCode::FORBIDDEN
        && let Some(reason) = blocked_reason(headers)
    {
        return Some(EwsError::Blocked { reason });
    }
    (status == StatusCode::UNAUTHORIZED).then_some(EwsError::Unauthorized)
}

/// The reason of `X-Compliance-Status: blocked; reason=<reason>`, if the header says blocked.
pub fn blocked_reason(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(COMPLIANCE_STATUS_HEADER)?.to_str().ok()?;
    let mut parts = value.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("blocked") {
        return None;
    }
    let reason = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("reason"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .unwrap_or_default();
    Some(reason)
}

/// The error of a non-2xx answer with this body.
fn error_answer(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> EwsError {
    let gateway = headers
        .get(SEG_FAULT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    soap::parse_fault(body, gateway).unwrap_or(EwsError::Http { status })
}

fn limited_collect<B>(body: B, limit: usize) -> Collect<Limited<B>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    Limited::new(body, limit).collect()
}

fn read_error(error: BoxError) -> EwsError {
    if error.is::<http_body_util::LengthLimitError>() {
        EwsError::Malformed("the response is larger than the configured limit".into())
    } else {
        EwsError::Transport(error)
    }
}

impl<S, B, O> Service<O> for EwsClient<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    O: Operation,
{
    type Response = O::Output;
    type Error = EwsError;
    type Future = ResponseFuture<S::Future, B, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(transport)
    }

    fn call(&mut self, operation: O) -> Self::Future {
        let state = match self.request(&operation.to_xml()) {
            Ok(request) => State::Calling {
                future: self.inner.call(request),
            },
            Err(error) => State::Failed { error: Some(error) },
        };
        ResponseFuture {
            state,
            limit: self.config.max_response_bytes,
            _operation: PhantomData,
        }
    }
}

pin_project! {
    /// Response future of [`EwsClient`] for an [`Operation`]: sends the request, reads the
    /// whole (bounded) answer and parses it.
    pub struct ResponseFuture<F, B, O> where B: Body, B::Error: Into<BoxError> {
        #[pin]
        state: State<F, B>,
        limit: usize,
        _operation: PhantomData<fn() -> O>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> where B: Body, B::Error: Into<BoxError> {
        Failed { error: Option<EwsError> },
        Calling { #[pin] future: F },
        Reading { status: StatusCode, headers: HeaderMap, #[pin] body: Collect<Limited<B>> },
    }
}

impl<F, B, O> fmt::Debug for ResponseFuture<F, B, O>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("operation", &std::any::type_name::<O>())
            .finish_non_exhaustive()
    }
}

impl<F, E, B, O> Future for ResponseFuture<F, B, O>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    O: Operation,
{
    type Output = Result<O::Output, EwsError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                        EwsError::InvalidRequest("polled after completion".into())
                    })));
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx)).map_err(transport)?;
                    let (parts, body) = response.into_parts();
                    if let Some(error) = refusal(parts.status, &parts.headers) {
                        return Poll::Ready(Err(error));
                    }
                    this.state.set(State::Reading {
                        status: parts.status,
                        headers: parts.headers,
                        body: limited_collect(body, *this.limit),
                    });
                }
                StateProj::Reading {
                    status,
                    headers,
                    body,
                } => {
                    let bytes = ready!(body.poll(cx)).map_err(read_error)?.to_bytes();
                    let result = if status.is_success() {
                        O::parse(headers, &bytes)
                    } else {
                        Err(error_answer(*status, headers, &bytes))
                    };
                    return Poll::Ready(result);
                }
            }
        }
    }
}

impl<S, B> Service<GetStreamingEvents> for EwsClient<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = NotificationStream<B>;
    type Error = EwsError;
    type Future = StreamingFuture<S::Future, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(transport)
    }

    fn call(&mut self, request: GetStreamingEvents) -> Self::Future {
        let state = match self.request(&request.to_xml()) {
            Ok(request) => State::Calling {
                future: self.inner.call(request),
            },
            Err(error) => State::Failed { error: Some(error) },
        };
        StreamingFuture {
            state,
            limit: self.config.max_response_bytes,
            max_envelope: self.config.max_envelope_bytes,
        }
    }
}

pin_project! {
    /// Response future of [`EwsClient`] for [`GetStreamingEvents`]: resolves to the stream as
    /// soon as the response head arrives, or to the error of a refused request.
    pub struct StreamingFuture<F, B> where B: Body, B::Error: Into<BoxError> {
        #[pin]
        state: State<F, B>,
        limit: usize,
        max_envelope: usize,
    }
}

impl<F, B> fmt::Debug for StreamingFuture<F, B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingFuture").finish_non_exhaustive()
    }
}

impl<F, E, B> Future for StreamingFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<NotificationStream<B>, EwsError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                        EwsError::InvalidRequest("polled after completion".into())
                    })));
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx)).map_err(transport)?;
                    let (parts, body) = response.into_parts();
                    if let Some(error) = refusal(parts.status, &parts.headers) {
                        return Poll::Ready(Err(error));
                    }
                    if parts.status.is_success() {
                        return Poll::Ready(Ok(NotificationStream::new(body, *this.max_envelope)));
                    }
                    this.state.set(State::Reading {
                        status: parts.status,
                        headers: parts.headers,
                        body: limited_collect(body, *this.limit),
                    });
                }
                StateProj::Reading {
                    status,
                    headers,
                    body,
                } => {
                    let bytes = ready!(body.poll(cx)).map_err(read_error)?.to_bytes();
                    return Poll::Ready(Err(error_answer(*status, headers, &bytes)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn compliance_blocks_are_read_from_the_header() {
        assert_eq!(
            blocked_reason(&headers(&[(
                "x-compliance-status",
                "blocked; reason=device-wiped"
            )])),
            Some("device-wiped".into())
        );
        assert_eq!(
            blocked_reason(&headers(&[("x-compliance-status", "Blocked")])),
            Some(String::new())
        );
        assert_eq!(
            blocked_reason(&headers(&[("x-compliance-status", "allowed")])),
            None
        );
        // A 403 without the header is Exchange's, not a block.
        assert!(refusal(StatusCode::FORBIDDEN, &HeaderMap::new()).is_none());
    }

    #[test]
    fn the_affinity_cookie_is_taken_from_set_cookie() {
        let h = headers(&[
            ("set-cookie", "other=1; path=/"),
            ("set-cookie", "X-BackEndOverrideCookie=EXCH01~42; path=/"),
        ]);
        assert_eq!(affinity_cookie(&h), Some("EXCH01~42".into()));
    }

    #[test]
    fn non_soap_errors_keep_their_status() {
        let error = error_answer(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"<html/>");
        assert!(matches!(error, EwsError::Http { status } if status == StatusCode::BAD_GATEWAY));
    }
}
