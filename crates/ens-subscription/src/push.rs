//! [`PushReceiver`]: the tower service that answers Exchange's `SendNotification` posts to a
//! push subscription's callback URL.
//!
//! Each notification of the request goes to a [`PushHandler`], which says whether the
//! subscription is still wanted. The answer is `SendNotificationResult` with
//! `SubscriptionStatus` `OK`, or `Unsubscribe` if the handler declined any notification: that
//! is how ENS ends a push subscription of a device the gateway blocked, since Exchange calls
//! ENS directly and the gateway never sees those posts. Malformed input gets `400` with a
//! plain-text reason, a body over the limit `413`, another method `405`.
//!
//! ```
//! use bytes::Bytes;
//! use ens_subscription::push::{PushAnswer, PushReceiver};
//! use ens_subscription::soap::Notification;
//! use http_body_util::{BodyExt as _, Full};
//! use tower::ServiceExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let receiver = PushReceiver::new(|_uri: &http::Uri, n: Notification| {
//!     if n.subscription_id == "wanted" { PushAnswer::Ok } else { PushAnswer::Unsubscribe }
//! });
//! let post = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
//!   <m:SendNotification xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
//!   <m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
//!   <m:Notification><t:SubscriptionId>stale</t:SubscriptionId><t:StatusEvent><t:Watermark>w</t:Watermark></t:StatusEvent></m:Notification>
//!   </m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></s:Body></s:Envelope>"#;
//! let request = http::Request::post("/push/token").body(Full::new(Bytes::from(post)))?;
//! let response = receiver.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! let body = response.into_body().collect().await?.to_bytes();
//! assert!(String::from_utf8_lossy(&body).contains("<m:SubscriptionStatus>Unsubscribe</m:SubscriptionStatus>"));
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt as _, Full, Limited};
use pin_project_lite::pin_project;
use tower::Service;

use crate::error::BoxError;
use crate::soap::{self, Notification};

/// The largest `SendNotification` body read by default: Exchange sends at most a few dozen
/// events per post.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Whether the subscription of a notification is still wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushAnswer {
    /// `SubscriptionStatus` `OK`: keep sending.
    Ok,
    /// `SubscriptionStatus` `Unsubscribe`: Exchange ends the subscription.
    Unsubscribe,
}

/// Receives the notifications of push subscriptions.
///
/// Called synchronously on the connection's task, so it should only record the notification
/// (e.g. send it on a channel) and decide; fetching previews belongs elsewhere.
pub trait PushHandler {
    /// Handles one notification posted to `uri` (the callback URL's path and query, which may
    /// carry an opaque per-device token); returns whether its subscription is still wanted.
    fn on_notification(&self, uri: &Uri, notification: Notification) -> PushAnswer;
}

impl<F> PushHandler for F
where
    F: Fn(&Uri, Notification) -> PushAnswer,
{
    fn on_notification(&self, uri: &Uri, notification: Notification) -> PushAnswer {
        self(uri, notification)
    }
}

impl<H: PushHandler + ?Sized> PushHandler for Arc<H> {
    fn on_notification(&self, uri: &Uri, notification: Notification) -> PushAnswer {
        (**self).on_notification(uri, notification)
    }
}

/// The push callback service; see the [module](self).
pub struct PushReceiver<H> {
    handler: Arc<H>,
    max_body: usize,
}

impl<H> Clone for PushReceiver<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            max_body: self.max_body,
        }
    }
}

impl<H> fmt::Debug for PushReceiver<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushReceiver")
            .field("handler", &std::any::type_name::<H>())
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl<H> PushReceiver<H> {
    /// A receiver handing notifications to `handler`, reading bodies up to
    /// [`DEFAULT_MAX_BODY`].
    pub fn new(handler: H) -> Self {
        Self {
            handler: Arc::new(handler),
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Reads bodies up to `max_body` bytes instead.
    pub fn max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }
}

impl<H, B> Service<Request<B>> for PushReceiver<H>
where
    H: PushHandler,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = PushFuture<B, H>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let state = if request.method() != Method::POST {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "SendNotification is a POST");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            PushState::Done {
                response: Some(response),
            }
        } else {
            let (parts, body) = request.into_parts();
            PushState::Reading {
                body: Limited::new(body, self.max_body).collect(),
                uri: parts.uri,
                handler: self.handler.clone(),
            }
        };
        PushFuture { state }
    }
}

pin_project! {
    /// Response future of [`PushReceiver`].
    pub struct PushFuture<B, H> where B: Body, B::Error: Into<BoxError> {
        #[pin]
        state: PushState<B, H>,
    }
}

pin_project! {
    #[project = PushStateProj]
    enum PushState<B, H> where B: Body, B::Error: Into<BoxError> {
        Done { response: Option<Response<Full<Bytes>>> },
        Reading { #[pin] body: Collect<Limited<B>>, uri: Uri, handler: Arc<H> },
    }
}

impl<B, H> fmt::Debug for PushFuture<B, H>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushFuture").finish_non_exhaustive()
    }
}

impl<B, H> Future for PushFuture<B, H>
where
    H: PushHandler,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            PushStateProj::Done { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "polled after completion")
                })))
            }
            PushStateProj::Reading { body, uri, handler } => {
                let bytes = match ready!(body.poll(cx)) {
                    Ok(collected) => collected.to_bytes(),
                    Err(error) => {
                        let error: BoxError = error;
                        let response = if error.is::<http_body_util::LengthLimitError>() {
                            plain(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "the notification is too large",
                            )
                        } else {
                            plain(
                                StatusCode::BAD_REQUEST,
                                "the request body could not be read",
                            )
                        };
                        return Poll::Ready(Ok(response));
                    }
                };
                Poll::Ready(Ok(answer(handler.as_ref(), uri, &bytes)))
            }
        }
    }
}

/// Parses a `SendNotification` body, consults the handler and writes the answer.
fn answer<H: PushHandler + ?Sized>(handler: &H, uri: &Uri, body: &[u8]) -> Response<Full<Bytes>> {
    let notifications = match soap::parse_send_notification(body) {
        Ok(notifications) => notifications,
        Err(error) => {
            tracing::debug!(%uri, %error, "unreadable SendNotification");
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("not a SendNotification request: {error}"),
            );
        }
    };
    // Every notification is handed over even after one was declined: each may belong to its own
    // subscription, and the handler records what arrived.
    let mut unsubscribe = false;
    for notification in notifications {
        unsubscribe |= handler.on_notification(uri, notification) == PushAnswer::Unsubscribe;
    }
    let mut response = Response::new(Full::new(Bytes::from(soap::send_notification_result(
        unsubscribe,
    ))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    fn ok_receiver() -> PushReceiver<impl PushHandler> {
        PushReceiver::new(|_: &Uri, _: Notification| PushAnswer::Ok)
    }

    async fn post(body: &'static [u8]) -> (StatusCode, String) {
        let request = Request::post("/cb")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let response = ok_receiver().oneshot(request).await.unwrap();
        let status = response.status();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&text).into_owned())
    }

    #[tokio::test]
    async fn garbage_gets_400_with_a_reason() {
        for body in [&b""[..], b"<x/>", b"\x00\xff", b"<s:Envelope"] {
            let (status, text) = post(body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(text.starts_with("not a SendNotification request"), "{text}");
        }
    }

    #[tokio::test]
    async fn other_methods_and_huge_bodies_are_refused() {
        let get = Request::get("/cb").body(Full::new(Bytes::new())).unwrap();
        let response = ok_receiver().oneshot(get).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let big = Request::post("/cb")
            .body(Full::new(Bytes::from(vec![b' '; 100])))
            .unwrap();
        let response = ok_receiver().max_body(10).oneshot(big).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
