//! Learns the EWS operation of each request from the first element of its SOAP `Body`, while the
//! body streams on to Exchange unchanged.
//!
//! [`EwsOperationLayer`] reads the beginning of a `POST` body, at most a bounded prefix (64 KiB
//! unless [set otherwise](EwsOperationLayer::with_prefix_limit)), until it has seen the first
//! element inside the SOAP 1.1 or SOAP 1.2 `Body`: `<m:GetItem>` is the operation
//! [`EwsOperation::GetItem`]. It puts the operation in the request's extensions, where the
//! compliance and authentication layers read it, records it in the current tracing span, and
//! calls the inner service with a [`SniffedBody`]: the frames already read, then the rest of the
//! original body, byte for byte, with its trailers and size hint. The body is never buffered
//! beyond the prefix.
//!
//! ```
//! use bytes::Bytes;
//! use ews_proxy_core::operation::{EwsOperation, EwsOperationLayer, SniffedBody};
//! use http::{Method, Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use std::convert::Infallible;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(EwsOperationLayer::new())
//!     .service_fn(|request: Request<SniffedBody<Full<Bytes>>>| async move {
//!         // What the compliance layer would read.
//!         let operation = request.extensions().get::<EwsOperation>().cloned();
//!         assert_eq!(operation, Some(EwsOperation::GetItem));
//!         // The body reaches the handler whole.
//!         let body = request.into_body().collect().await.unwrap().to_bytes();
//!         assert!(body.ends_with(b"</soap:Envelope>"));
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(operation.unwrap().to_string()))))
//!     });
//!
//! let soap = r#"<?xml version="1.0" encoding="utf-8"?>
//! <soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
//!     xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
//!     xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
//!   <soap:Header><t:RequestServerVersion Version="Exchange2016"/></soap:Header>
//!   <soap:Body>
//!     <m:GetItem>
//!       <m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>
//!       <m:ItemIds><t:ItemId Id="AAMkA="/></m:ItemIds>
//!     </m:GetItem>
//!   </soap:Body>
//! </soap:Envelope>"#;
//! let request = Request::builder()
//!     .method(Method::POST)
//!     .uri("/EWS/Exchange.asmx")
//!     .body(Full::new(Bytes::from(soap)))
//!     .unwrap();
//!
//! let response = service.oneshot(request).await.unwrap();
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "GetItem");
//! # }
//! ```
//!
//! # What the inner service sees
//!
//! - A `POST` whose operation was found carries that [`EwsOperation`] in its extensions.
//! - A `POST` whose operation could not be learned (not SOAP, an empty `Body`, no `Body` element
//!   within the prefix limit) carries [`EwsOperation::Unknown`] with [`EwsOperationLayer::new`];
//!   with [`EwsOperationLayer::requiring_soap`] it never reaches the inner service: the client
//!   gets a `400 Bad Request` SOAP fault (`ErrorSchemaValidation`, `X-Seg-Fault: not-soap`).
//! - Any other method (`GET /EWS/Services.wsdl`, `OPTIONS`) passes through unread and carries
//!   no `EwsOperation`. A later layer that finds none on a `POST` knows this layer is missing.
//!
//! A request body that fails while the prefix is read is answered with a `400 Bad Request` SOAP
//! fault (`ErrorInvalidRequest`, `X-Seg-Fault: request-body-unreadable`) in either mode, and
//! logged with `tracing::warn!`: the bytes read so far cannot be forwarded without the rest.
//!
//! # Tracing
//!
//! The operation of each `POST` (`unknown` when not learned) is recorded in the field
//! `ews.operation` of the span that is current when the response future is polled. A span only
//! keeps fields it declares, so the span around this layer (e.g. [`crate::span::RequestSpanLayer`]'s
//! or tower-http's `TraceLayer`'s) must declare `ews.operation = tracing::field::Empty`.

mod sniff;

pub use sniff::{Sniff, sniff_operation};

use crate::body::BoxError;
use crate::fault::{FaultCode, SoapFault};
use bytes::{Buf, Bytes};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sniff::Sniffer;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use tower::{Layer, Service};

/// The prefix limit of [`EwsOperationLayer::new`]: 64 KiB, room for the largest SOAP headers EWS
/// clients send (impersonation, time zone definitions) before the `Body`.
pub const DEFAULT_PREFIX_LIMIT: usize = 64 * 1024;

macro_rules! operations {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// An EWS operation: the local name of the first element of a request's SOAP `Body`.
        ///
        /// Cheap to clone (the well-known operations are plain variants, any other name is shared
        /// behind an [`Arc`]). Two values are equal when their names are, so
        /// `EwsOperation::from_local_name("GetItem") == EwsOperation::GetItem`;
        /// [`EwsOperation::Unknown`] equals only itself.
        #[derive(Clone, Debug)]
        #[non_exhaustive]
        pub enum EwsOperation {
            $($(#[doc = $doc])+ $name,)+
            /// An operation not listed above, by its local name.
            Other(Arc<str>),
            /// The operation could not be learned: the body is not SOAP, or its `Body` did not
            /// begin within the prefix limit. Only [`EwsOperationLayer::new`] lets such a request
            /// through.
            Unknown,
        }

        impl EwsOperation {
            /// Whether the operation's response stays open for minutes (`GetStreamingEvents`,
            /// up to 30): the compliance layer cuts such a stream when the device is blocked,
            /// the host pool sends it over HTTP/2.
            pub fn is_long_lived(&self) -> bool {
                *self == EwsOperation::GetStreamingEvents
            }

            /// The operation's name as in the EWS schema (`"GetItem"`); `"unknown"` for
            /// [`EwsOperation::Unknown`].
            pub fn as_str(&self) -> &str {
                match self {
                    $(EwsOperation::$name => stringify!($name),)+
                    EwsOperation::Other(name) => name,
                    EwsOperation::Unknown => "unknown",
                }
            }

            /// The operation of that local name: a well-known variant if there is one, else
            /// [`EwsOperation::Other`].
            pub fn from_local_name(name: &str) -> Self {
                match name {
                    $(stringify!($name) => EwsOperation::$name,)+
                    other => EwsOperation::Other(Arc::from(other)),
                }
            }
        }
    };
}

operations! {
    /// `Subscribe`: creates a pull, push or streaming notification subscription.
    Subscribe,
    /// `Unsubscribe`: ends a pull or streaming subscription.
    Unsubscribe,
    /// `GetEvents`: pulls the events of a pull subscription.
    GetEvents,
    /// `GetStreamingEvents`: opens a long-lived stream of notifications.
    GetStreamingEvents,
    /// `GetItem`: reads items (messages, events, contacts).
    GetItem,
    /// `FindItem`: searches the items of folders.
    FindItem,
    /// `CreateItem`: creates items, including sending mail.
    CreateItem,
    /// `UpdateItem`: changes items.
    UpdateItem,
    /// `DeleteItem`: deletes items.
    DeleteItem,
    /// `MoveItem`: moves items to another folder.
    MoveItem,
    /// `CopyItem`: copies items to another folder.
    CopyItem,
    /// `SendItem`: sends existing items.
    SendItem,
    /// `ArchiveItem`: moves items to the archive mailbox.
    ArchiveItem,
    /// `MarkAllItemsAsRead`: sets the read flag of all items of folders.
    MarkAllItemsAsRead,
    /// `MarkAsJunk`: marks items as junk or not junk.
    MarkAsJunk,
    /// `ExportItems`: exports items as full-fidelity streams.
    ExportItems,
    /// `UploadItems`: imports items from full-fidelity streams.
    UploadItems,
    /// `GetFolder`: reads folders.
    GetFolder,
    /// `FindFolder`: searches for folders.
    FindFolder,
    /// `CreateFolder`: creates folders.
    CreateFolder,
    /// `UpdateFolder`: changes folders.
    UpdateFolder,
    /// `DeleteFolder`: deletes folders.
    DeleteFolder,
    /// `MoveFolder`: moves folders.
    MoveFolder,
    /// `CopyFolder`: copies folders.
    CopyFolder,
    /// `EmptyFolder`: deletes the contents of folders.
    EmptyFolder,
    /// `SyncFolderItems`: synchronizes the items of a folder.
    SyncFolderItems,
    /// `SyncFolderHierarchy`: synchronizes the folder hierarchy.
    SyncFolderHierarchy,
    /// `GetAttachment`: reads attachments.
    GetAttachment,
    /// `CreateAttachment`: adds attachments to items.
    CreateAttachment,
    /// `DeleteAttachment`: removes attachments.
    DeleteAttachment,
    /// `FindConversation`: lists conversations.
    FindConversation,
    /// `GetConversationItems`: reads the items of conversations.
    GetConversationItems,
    /// `ApplyConversationAction`: applies actions to conversations.
    ApplyConversationAction,
    /// `ResolveNames`: resolves ambiguous names against the directory and contacts.
    ResolveNames,
    /// `ExpandDL`: lists the members of a distribution list.
    ExpandDL,
    /// `FindPeople`: searches for people.
    FindPeople,
    /// `GetUserPhoto`: reads a user's photo.
    GetUserPhoto,
    /// `GetUserAvailability`: reads free/busy information.
    GetUserAvailability,
    /// `GetUserOofSettings`: reads out-of-office settings.
    GetUserOofSettings,
    /// `SetUserOofSettings`: changes out-of-office settings.
    SetUserOofSettings,
    /// `GetServerTimeZones`: reads the server's time zone definitions.
    GetServerTimeZones,
    /// `GetRoomLists`: lists room lists.
    GetRoomLists,
    /// `GetRooms`: lists the rooms of a room list.
    GetRooms,
    /// `GetMailTips`: reads mail tips for recipients.
    GetMailTips,
    /// `GetServiceConfiguration`: reads service configuration.
    GetServiceConfiguration,
    /// `GetDelegate`: reads a mailbox's delegates.
    GetDelegate,
    /// `AddDelegate`: adds delegates to a mailbox.
    AddDelegate,
    /// `UpdateDelegate`: changes delegates.
    UpdateDelegate,
    /// `RemoveDelegate`: removes delegates.
    RemoveDelegate,
    /// `GetInboxRules`: reads inbox rules.
    GetInboxRules,
    /// `UpdateInboxRules`: changes inbox rules.
    UpdateInboxRules,
    /// `GetUserConfiguration`: reads a user configuration object.
    GetUserConfiguration,
    /// `CreateUserConfiguration`: creates a user configuration object.
    CreateUserConfiguration,
    /// `UpdateUserConfiguration`: changes a user configuration object.
    UpdateUserConfiguration,
    /// `DeleteUserConfiguration`: deletes a user configuration object.
    DeleteUserConfiguration,
    /// `ConvertId`: converts item identifiers between formats.
    ConvertId,
    /// `GetSharingMetadata`: reads metadata for sharing a folder.
    GetSharingMetadata,
    /// `GetPasswordExpirationDate`: reads when the user's password expires.
    GetPasswordExpirationDate,
}

impl PartialEq for EwsOperation {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (EwsOperation::Unknown, EwsOperation::Unknown) => true,
            (EwsOperation::Unknown, _) | (_, EwsOperation::Unknown) => false,
            _ => self.as_str() == other.as_str(),
        }
    }
}

impl Eq for EwsOperation {}

impl Hash for EwsOperation {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            EwsOperation::Unknown => state.write_u8(0),
            known => {
                state.write_u8(1);
                known.as_str().hash(state);
            }
        }
    }
}

impl fmt::Display for EwsOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a request, shared by the layer and the service.
#[derive(Clone, Copy, Debug)]
struct Config {
    prefix_limit: usize,
    require_soap: bool,
    /// How long the prefix may take to arrive; `None`: as long as the body takes.
    read_timeout: Option<std::time::Duration>,
}

impl Config {
    const LENIENT: Config = Config {
        prefix_limit: DEFAULT_PREFIX_LIMIT,
        require_soap: false,
        read_timeout: None,
    };
    const REQUIRING_SOAP: Config = Config {
        prefix_limit: DEFAULT_PREFIX_LIMIT,
        require_soap: true,
        read_timeout: None,
    };
}

/// Layer that applies [`SniffOperation`]: learns the EWS operation of each `POST` request.
///
/// See the [module docs](self) for an example and what the inner service sees.
#[derive(Clone, Copy, Debug)]
pub struct EwsOperationLayer {
    config: Config,
}

impl EwsOperationLayer {
    /// Learns the operation where it can; a `POST` whose operation cannot be learned passes with
    /// [`EwsOperation::Unknown`].
    pub fn new() -> Self {
        EwsOperationLayer {
            config: Config::LENIENT,
        }
    }

    /// Answers a `POST` whose operation cannot be learned (not SOAP, an empty `Body`, no `Body`
    /// element within the prefix limit) with a `400 Bad Request` SOAP fault, without calling the
    /// inner service.
    pub fn requiring_soap() -> Self {
        EwsOperationLayer {
            config: Config::REQUIRING_SOAP,
        }
    }

    /// Sets how many bytes of a body are read, at most, to find the operation
    /// ([`DEFAULT_PREFIX_LIMIT`] unless set).
    ///
    /// The frames read are held until the inner service is called, so this bounds the memory a
    /// request takes before it is forwarded (plus one frame: a frame is never split).
    pub fn with_prefix_limit(mut self, bytes: usize) -> Self {
        self.config.prefix_limit = bytes;
        self
    }

    /// Bounds the time the prefix may take to arrive, from the first time the body has nothing
    /// to give (at once, for a body still on its way; never, for one already read with its
    /// headers, which needs no timer): a client that sends
    /// its headers and then trickles (or stops sending) the start of its body is answered with
    /// a `408 Request Timeout` SOAP fault (`X-Seg-Fault: request-body-timeout`) once `timeout`
    /// has passed, without calling the inner service; the connection is then closed, its body
    /// unread. Without it, only the listener's idle timeout ends such a request, and a client
    /// that sends a byte now and then is never idle.
    pub fn with_read_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.read_timeout = Some(timeout);
        self
    }
}

impl Default for EwsOperationLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for EwsOperationLayer {
    type Service = SniffOperation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SniffOperation {
            inner,
            config: self.config,
        }
    }
}

/// Middleware that learns the EWS operation of each `POST` request from the beginning of its body.
///
/// See the [module docs](self) for an example and what the inner service sees. The inner service
/// is called only once the operation is known: in `call` itself when the body brought it with the
/// headers (most requests), else from the response future, which then takes the service made
/// ready and leaves a clone in its place.
#[derive(Clone, Debug)]
pub struct SniffOperation<S> {
    inner: S,
    config: Config,
}

impl<S> SniffOperation<S> {
    /// Wraps `inner` as [`EwsOperationLayer::new`] does.
    pub fn new(inner: S) -> Self {
        SniffOperation {
            inner,
            config: Config::LENIENT,
        }
    }

    /// Wraps `inner` as [`EwsOperationLayer::requiring_soap`] does.
    pub fn requiring_soap(inner: S) -> Self {
        SniffOperation {
            inner,
            config: Config::REQUIRING_SOAP,
        }
    }

    /// Sets the prefix limit, as [`EwsOperationLayer::with_prefix_limit`] does.
    pub fn with_prefix_limit(mut self, bytes: usize) -> Self {
        self.config.prefix_limit = bytes;
        self
    }

    /// Sets the read timeout, as [`EwsOperationLayer::with_read_timeout`] does.
    pub fn with_read_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.read_timeout = Some(timeout);
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SniffOperation<S>
where
    S: Service<Request<SniffedBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body + Unpin,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if request.method() != Method::POST {
            let future = self.inner.call(request.map(SniffedBody::unread));
            return ResponseFuture {
                state: State::Calling { future },
            };
        }
        let (parts, body) = request.into_parts();
        let mut reading = Reading {
            parts,
            body,
            config: self.config,
            frames: Vec::new(),
            frames_len: 0,
            prefix: Vec::new(),
            seen: 0,
            sniffer: Sniffer::new(),
            body_done: false,
            deadline: None,
        };
        // Most requests bring the start of their body with their headers: read what is there
        // now and call the service made ready, with no clone of it (the whole stack below) and
        // no box. Nothing waits on the no-op waker: if the body has nothing more yet, the
        // future reads again with its own, and starts the read timer then.
        let mut no_waker = Context::from_waker(Waker::noop());
        if let Poll::Ready(outcome) = reading.poll_sniff(&mut no_waker, false) {
            let state = match reading.finish(&mut self.inner, outcome) {
                Ok(future) => State::Calling { future },
                Err(fault) => State::Answered {
                    response: Some(fault),
                },
            };
            return ResponseFuture { state };
        }
        // The service that was made ready goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Sniffing {
                pending: Some(Box::new(Pending { inner, reading })),
            },
        }
    }
}

pin_project! {
    /// Response future of [`SniffOperation`]: reads the prefix of the body, then calls the inner
    /// service or answers with a fault.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<SniffedBody<B>>>,
        B: Body,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<SniffedBody<B>>>,
        B: Body,
    {
        // Boxed: the request head, the service and the prefix read so far would otherwise be
        // part of the future every layer above moves and copies, after sniffing too.
        Sniffing { pending: Option<Box<Pending<S, B>>> },
        Calling { #[pin] future: S::Future },
        // A fault made without calling the service.
        Answered { response: Option<S::Response> },
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<SniffedBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Sniffing { .. } => "sniffing",
            State::Calling { .. } => "calling",
            State::Answered { .. } => "answered",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<SniffedBody<B>>, Response = Response<ResBody>>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Sniffing { pending } => {
                    let sniffing = pending
                        .as_mut()
                        .expect("ResponseFuture polled after completion");
                    let outcome = ready!(sniffing.reading.poll_sniff(cx, true));
                    let Pending { mut inner, reading } = *pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match reading.finish(&mut inner, outcome) {
                        Ok(future) => this.state.set(State::Calling { future }),
                        Err(fault) => return Poll::Ready(Ok(fault)),
                    }
                }
                StateProj::Calling { future } => return future.poll(cx),
                StateProj::Answered { response } => {
                    let fault = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(fault));
                }
            }
        }
    }
}

/// How reading the prefix ended.
enum Outcome {
    Found(EwsOperation),
    NotSoap,
    /// The body ended before the answer.
    Ended,
    LimitReached,
    BodyError(BoxError),
    /// The prefix did not arrive within the read timeout.
    TimedOut,
}

/// A `POST` whose prefix is being read after the call, with the service to call.
struct Pending<S, B> {
    inner: S,
    reading: Reading<B>,
}

/// A `POST` whose prefix is being read.
struct Reading<B> {
    parts: http::request::Parts,
    body: B,
    config: Config,
    /// The frames read, to be replayed.
    frames: Vec<Frame<Bytes>>,
    /// The data bytes in `frames`.
    frames_len: u64,
    /// A copy of the first `seen` bytes, once they span more than one frame.
    prefix: Vec<u8>,
    /// How many bytes the sniffer has been given, at most the prefix limit.
    seen: usize,
    sniffer: Sniffer,
    /// The body returned its last frame.
    body_done: bool,
    /// When the read timeout expires, if one is set: started when the body first has nothing
    /// to give, so that a prefix that came with the headers (most requests) costs no timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Reading<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads until the operation is known or cannot be. `timed`: whether to start the read
    /// timer when the body has nothing to give (not while `cx` is the no-op one of `call`).
    fn poll_sniff(&mut self, cx: &mut Context<'_>, timed: bool) -> Poll<Outcome> {
        loop {
            if self.seen >= self.config.prefix_limit {
                return Poll::Ready(Outcome::LimitReached);
            }
            if self.body_done || self.body.is_end_stream() {
                return Poll::Ready(Outcome::Ended);
            }
            let polled = Pin::new(&mut self.body).poll_frame(cx);
            if polled.is_pending() && timed {
                if self.deadline.is_none()
                    && let Some(timeout) = self.config.read_timeout
                {
                    self.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                }
                if let Some(deadline) = self.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Outcome::TimedOut);
                }
            }
            let frame = match ready!(polled) {
                None => {
                    self.body_done = true;
                    return Poll::Ready(Outcome::Ended);
                }
                Some(Err(error)) => return Poll::Ready(Outcome::BodyError(error.into())),
                Some(Ok(frame)) => frame.map_data(|mut data| data.copy_to_bytes(data.remaining())),
            };
            let sniff = frame.data_ref().map(|data| {
                self.frames_len += data.len() as u64;
                self.read(data)
            });
            self.frames.push(frame);
            match sniff {
                Some(Sniff::Found(operation)) => return Poll::Ready(Outcome::Found(operation)),
                Some(Sniff::NotSoap) => return Poll::Ready(Outcome::NotSoap),
                // Trailers: the data has ended.
                None => return Poll::Ready(Outcome::Ended),
                Some(Sniff::NeedMore) => {}
            }
        }
    }

    /// Gives the sniffer the next data, up to the prefix limit.
    fn read(&mut self, data: &Bytes) -> Sniff {
        let take = data.len().min(self.config.prefix_limit - self.seen);
        let data = &data[..take];
        let sniff = if self.seen == 0 {
            // The first data: read in place, copied only if more is needed.
            let sniff = self.sniffer.advance(data);
            if sniff == Sniff::NeedMore {
                self.prefix.extend_from_slice(data);
            }
            sniff
        } else {
            self.prefix.extend_from_slice(data);
            self.sniffer.advance(&self.prefix)
        };
        self.seen += take;
        sniff
    }

    /// Calls `inner` (made ready) with the operation, or makes the fault.
    fn finish<S, ResBody>(
        self,
        inner: &mut S,
        outcome: Outcome,
    ) -> Result<S::Future, Response<ResBody>>
    where
        S: Service<Request<SniffedBody<B>>, Response = Response<ResBody>>,
        ResBody: From<Bytes>,
    {
        let Reading {
            mut parts,
            body,
            config,
            frames,
            frames_len,
            body_done,
            ..
        } = self;
        let why = match outcome {
            Outcome::Found(operation) => Ok(operation),
            Outcome::BodyError(error) => {
                tracing::warn!(%error, "request body failed while its EWS operation was read");
                return Err(SoapFault::new(
                    StatusCode::BAD_REQUEST,
                    FaultCode::InvalidRequest,
                    "the request body could not be read",
                )
                .with_reason("request-body-unreadable")
                .into_response());
            }
            Outcome::TimedOut => {
                tracing::warn!(
                    timeout = ?config.read_timeout,
                    read = frames_len,
                    "request body too slow: its EWS operation did not arrive in time"
                );
                return Err(SoapFault::new(
                    StatusCode::REQUEST_TIMEOUT,
                    FaultCode::TimeoutExpired,
                    "the request body did not arrive in time",
                )
                .with_reason("request-body-timeout")
                .into_response());
            }
            Outcome::NotSoap => Err("the request body is not a SOAP request".to_owned()),
            Outcome::Ended => {
                Err("the request body ends before the first element of its SOAP Body".to_owned())
            }
            Outcome::LimitReached => Err(format!(
                "the first element of the SOAP Body is not within the first {} bytes of the request body",
                config.prefix_limit
            )),
        };
        let operation = match why {
            Ok(operation) => operation,
            Err(why) if config.require_soap => {
                tracing::debug!(%why, "request refused: no EWS operation");
                return Err(SoapFault::new(
                    StatusCode::BAD_REQUEST,
                    FaultCode::SchemaValidation,
                    why,
                )
                .with_reason("not-soap")
                .into_response());
            }
            Err(why) => {
                tracing::debug!(%why, "EWS operation unknown");
                EwsOperation::Unknown
            }
        };
        tracing::Span::current().record("ews.operation", operation.as_str());
        parts.extensions.insert(operation);
        let body = SniffedBody {
            buffered: frames.into_iter(),
            buffered_len: frames_len,
            inner: body,
            inner_done: body_done,
        };
        Ok(inner.call(Request::from_parts(parts, body)))
    }
}

pin_project! {
    /// The request body [`SniffOperation`] passes on: the frames it read, then the rest of the
    /// original body.
    ///
    /// The bytes, their order, the trailers and the size hint are the original body's; only the
    /// data type becomes [`Bytes`] (without a copy when it was `Bytes` already) and the frames
    /// read while sniffing may arrive in one go.
    #[derive(Debug)]
    pub struct SniffedBody<B> {
        buffered: std::vec::IntoIter<Frame<Bytes>>,
        // The data bytes still in `buffered`.
        buffered_len: u64,
        #[pin]
        inner: B,
        inner_done: bool,
    }
}

impl<B> SniffedBody<B> {
    /// A body passed on without being read.
    fn unread(inner: B) -> Self {
        SniffedBody {
            buffered: Vec::new().into_iter(),
            buffered_len: 0,
            inner,
            inner_done: false,
        }
    }
}

impl<B: Body> Body for SniffedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(frame) = this.buffered.next() {
            if let Some(data) = frame.data_ref() {
                *this.buffered_len -= data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if *this.inner_done {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            None => {
                *this.inner_done = true;
                Poll::Ready(None)
            }
            Some(frame) => {
                Poll::Ready(Some(frame.map(|frame| {
                    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                })))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.len() == 0 && (self.inner_done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let rest = if self.inner_done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(self.buffered_len));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(self.buffered_len));
        }
        hint
    }
}

#[cfg(test)]
mod tests;
