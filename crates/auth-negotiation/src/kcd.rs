//! Certificate-based authentication answered with Kerberos: a request from a client with a
//! verified certificate and no `Authorization` header gets `Authorization: Negotiate <SPNEGO>`
//! for Exchange, obtained by constrained delegation (S4U2Self + S4U2Proxy, [`kcd_client`]) on
//! behalf of the certificate's user.
//!
//! - **Who**: a request whose extensions hold a [`ClientIdentity`] from
//!   [`IdentitySource::Certificate`] (put there by [`crate::client_cert`]) and that has no
//!   `Authorization` header. Every other request passes untouched: Basic and Bearer credentials
//!   go to Exchange as the client sent them, and a request with neither gets Exchange's `401`
//!   and its challenges.
//! - **The user**: the certificate's UPN as a [`UserName`]: an enterprise name (NT-ENTERPRISE,
//!   which Active Directory resolves), or, with [`KcdAuthLayer::with_default_realm`], the rule of
//!   [`UserName::parse`] (a UPN whose suffix is spelled exactly as the realm is a plain principal,
//!   which MIT Kerberos needs). [`KcdAuthLayer::for_client`] uses the client's realm.
//! - **A `401` from Exchange** to a request the layer authenticated: the ticket is dropped from
//!   the cache ([`Invalidate`]) and the request is sent once more with a fresh token; the second
//!   answer is returned as it is (a second `401` does not drop the fresh ticket again: the next
//!   request would only fetch the same refusal). To send a request twice the layer keeps its body: it reads it
//!   into memory up to a limit ([`DEFAULT_RETRY_BODY_LIMIT`], EWS requests are small SOAP
//!   documents); a larger body is streamed on after what was read and sent only once.
//! - **A KDC failure** (any [`KcdError`], or an error of the layers around the client such as a
//!   timeout) is answered `503` with a SOAP fault and an `X-Seg-Fault` reason, logged with the
//!   user and the cause; the request is never forwarded without credentials. The reasons:
//!
//!   | cause | `X-Seg-Fault` |
//!   |---|---|
//!   | [`KcdError::UnknownUser`] | `kcd-unknown-user` |
//!   | [`KcdError::DelegationNotAllowed`] | `kcd-delegation-refused` |
//!   | [`KcdError::KdcUnreachable`] | `kcd-unavailable` |
//!   | a `tower` timeout around the client | `kcd-timeout` |
//!   | [`KcdError::ClockSkew`] | `kcd-clock-skew` |
//!   | [`KcdError::BadCredentials`] | `kcd-bad-credentials` |
//!   | [`KcdError::UnknownService`] | `kcd-unknown-service` |
//!   | [`KcdError::InvalidName`] | `kcd-invalid-user` |
//!   | anything else | `kcd-failed` |
//! - **Extended Protection**: with a [`ChannelBindingSource`], the token is bound to the
//!   gateway's TLS connection to Exchange (RFC 5929 `tls-server-end-point`).
//!   [`PresentedCertificateBinding`] follows the certificate Exchange presented on the
//!   gateway's latest connection to it: after a renewal, the first token (made before the
//!   connection that saw the new certificate) is refused with a `401` and the retry, bound to
//!   the new certificate, goes through. [`StaticChannelBinding`] stays on one certificate.
//! - **Mutual authentication** (off by default; [`KcdAuthLayer::verifying_mutual_authentication`]):
//!   Exchange's answer must prove that it read the ticket. A `WWW-Authenticate: Negotiate
//!   <token>` on any answer but a `401` must carry an AP-REP that [`kcd_client::verify_mutual`]
//!   accepts, and a success (`2xx`) must carry one. Otherwise the answer is not passed on: the
//!   client gets `502` with a SOAP fault and `X-Seg-Fault: kcd-mutual-auth-failed`, and the
//!   failure is logged with the user and the cause.
//!
//! Each authenticated request runs in a `kcd_auth` tracing span with the user's UPN; the token is
//! never logged (its header value is marked sensitive).
//!
//! The inner service receives a [`KcdBody`]: the client's body streamed through, or the copy
//! read into memory. It is an `http_body::Body<Data = Bytes, Error = BoxError>` that passes the
//! client body's own errors on (`http_body_util::LengthLimitError` from the body limit still
//! makes [`ReverseProxy`](ews_proxy_core::proxy::ReverseProxy) answer `413`).
//!
//! ```
//! use auth_negotiation::kcd::{KcdAuthLayer, KcdBody};
//! use ews_proxy_core::identity::{CertificateFingerprint, ClientIdentity, IdentitySource};
//! use kcd_client::{KcdError, KcdRequest, NegotiateToken, UserName};
//! use http::{Request, Response, header::AUTHORIZATION};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // In the gateway: `KcdAuthLayer::for_client(kcd_client, "HTTP/exchange.corp.example")`.
//! // Here a stand-in for the KDC that always hands out the same token.
//! let kdc = tower::service_fn(|_request: KcdRequest| async {
//!     Ok::<_, KcdError>(NegotiateToken::from_bytes(b"token".to_vec()))
//! });
//! let forget = |_user: &UserName, _target: &str| {};
//! let service = ServiceBuilder::new()
//!     .layer(KcdAuthLayer::new(kdc, forget, "HTTP/exchange.corp.example"))
//!     .service_fn(|request: Request<KcdBody<Full<Bytes>>>| async move {
//!         assert_eq!(request.headers()[AUTHORIZATION], "Negotiate dG9rZW4=");
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     });
//!
//! // What the client-certificate layer leaves for a client with a valid certificate.
//! let mut request = Request::post("/EWS/Exchange.asmx").body(Full::from("<soap/>"))?;
//! request.extensions_mut().insert(ClientIdentity {
//!     user: "alice@corp.example".into(),
//!     source: IdentitySource::Certificate { fingerprint: CertificateFingerprint([0; 32]) },
//! });
//! service.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ews_proxy_core::body::BoxError;
use ews_proxy_core::fault::{FaultCode, SoapFault};
use ews_proxy_core::identity::{ClientIdentity, IdentitySource};
use ews_proxy_core::upstream::PresentedCertificates;
use http::request::Parts;
use http::uri::Authority;
use http::{Extensions, HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use kcd_client::{KcdClient, KcdError, KcdRequest, NegotiateToken, TokenContext, UserName};
use pin_project_lite::pin_project;
use rustls_pki_types::CertificateDer;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// How much of a request body the layer keeps in memory to send it again after a `401`:
/// 1 MiB, far above an EWS SOAP request and far below what would strain the gateway.
pub const DEFAULT_RETRY_BODY_LIMIT: usize = 1 << 20;

/// The user of a request that authenticated with a verified client certificate: the UPN of its
/// [`ClientIdentity`] when that came from [`IdentitySource::Certificate`].
///
/// This is the one test of "the client presented a valid certificate" for both the Kerberos
/// answer of this module and the challenges [`crate::challenges`] keeps.
pub fn certificate_user(extensions: &Extensions) -> Option<&str> {
    extensions
        .get::<ClientIdentity>()
        .filter(|identity| matches!(identity.source, IdentitySource::Certificate { .. }))
        .map(|identity| identity.user.as_str())
}

/// Forgets a cached ticket, so that the next token for the user comes from the KDC: what the
/// layer does when Exchange answers `401` to a token.
///
/// Implemented by [`KcdClient`] (its [`KcdClient::invalidate`]) and by any
/// `Fn(&UserName, &str)`, which gets the user and the target SPN. It is separate from the token
/// service so that the client can be wrapped in `tower` layers (timeouts, concurrency limits)
/// that hide its methods.
pub trait Invalidate {
    /// Forgets the ticket for `user` to `target_spn`.
    fn invalidate(&self, user: &UserName, target_spn: &str);
}

impl Invalidate for KcdClient {
    fn invalidate(&self, user: &UserName, target_spn: &str) {
        KcdClient::invalidate(self, user, target_spn);
    }
}

impl<F> Invalidate for F
where
    F: Fn(&UserName, &str),
{
    fn invalidate(&self, user: &UserName, target_spn: &str) {
        self(user, target_spn);
    }
}

/// Where the channel bindings of the gateway's TLS connection to Exchange come from, for
/// Exchange's Extended Protection.
pub trait ChannelBindingSource {
    /// The RFC 5929 `tls-server-end-point` hash of Exchange's certificate (see
    /// [`kcd_client::tls_server_end_point_hash`]), or `None` to send an unbound token.
    fn certificate_hash(&self) -> Option<Vec<u8>>;
}

/// A [`ChannelBindingSource`] that always gives the same hash: for an Exchange whose certificate
/// is known when the gateway starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticChannelBinding(pub Vec<u8>);

impl ChannelBindingSource for StaticChannelBinding {
    fn certificate_hash(&self) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

/// A [`ChannelBindingSource`] that follows the certificate one Exchange host presented on the
/// gateway's latest TLS connection to it, as the upstream client's pools record it
/// ([`PresentedCertificates`]); until a connection has been made, the `initial` hash (if
/// any). The hash is computed once per certificate.
#[derive(Clone, Debug)]
pub struct PresentedCertificateBinding {
    presented: PresentedCertificates,
    authority: Authority,
    /// The last certificate seen and its hash; the initial hash with no certificate.
    last: Arc<Mutex<Seen>>,
}

/// What [`PresentedCertificateBinding`] last saw: a certificate (none before the first
/// connection) and its hash (the initial one before the first connection).
type Seen = (Option<CertificateDer<'static>>, Option<Vec<u8>>);

impl PresentedCertificateBinding {
    /// Binds to what `authority` (the Exchange host's `host:port`) presented, as recorded in
    /// `presented`.
    pub fn new(presented: PresentedCertificates, authority: Authority) -> Self {
        PresentedCertificateBinding {
            presented,
            authority,
            last: Arc::new(Mutex::new((None, None))),
        }
    }

    /// Uses `hash` until the first connection to the host has been recorded (e.g. from a
    /// probe at start, so that the first request needs no retry).
    pub fn with_initial(self, hash: Vec<u8>) -> Self {
        lock(&self.last).1 = Some(hash);
        self
    }
}

impl ChannelBindingSource for PresentedCertificateBinding {
    fn certificate_hash(&self) -> Option<Vec<u8>> {
        let current = self.presented.get(&self.authority);
        let mut last = lock(&self.last);
        let Some(certificate) = current else {
            return last.1.clone();
        };
        if last.0.as_ref() != Some(&certificate) {
            let hash = match kcd_client::tls_server_end_point_hash(&certificate) {
                Ok(hash) => Some(hash),
                Err(error) => {
                    tracing::warn!(authority = %self.authority, %error, "cannot hash the certificate exchange presents; tokens go unbound");
                    None
                }
            };
            *last = (Some(certificate), hash);
        }
        last.1.clone()
    }
}

/// Locks a mutex, going on with the data a panicking holder left.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The layer's settings, shared by every service it makes.
#[derive(Clone)]
struct Settings {
    target_spn: Arc<str>,
    default_realm: Option<String>,
    retry_body_limit: usize,
    invalidate: Arc<dyn Invalidate + Send + Sync>,
    channel_binding: Option<Arc<dyn ChannelBindingSource + Send + Sync>>,
    verify_mutual: bool,
}

impl Settings {
    fn user_name(&self, upn: &str) -> Result<UserName, KcdError> {
        match &self.default_realm {
            Some(realm) => UserName::parse(upn, realm),
            None => UserName::enterprise(upn),
        }
    }

    fn kcd_request(&self, user: &UserName) -> KcdRequest {
        let request = KcdRequest::new(user.clone(), self.target_spn.clone());
        match self
            .channel_binding
            .as_ref()
            .and_then(|source| source.certificate_hash())
        {
            Some(hash) => request.with_channel_binding(hash),
            None => request,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("target_spn", &self.target_spn)
            .field("default_realm", &self.default_realm)
            .field("retry_body_limit", &self.retry_body_limit)
            .field("invalidate", &"dyn Invalidate")
            .field(
                "channel_binding",
                &self
                    .channel_binding
                    .as_ref()
                    .map(|_| "dyn ChannelBindingSource"),
            )
            .field("verify_mutual", &self.verify_mutual)
            .finish()
    }
}

/// Layer that applies [`KcdAuth`]: the token service `K` and the settings.
///
/// `K` is a [`KcdClient`] or that client inside `tower` layers (a timeout, a concurrency limit):
/// any `Service<KcdRequest, Response = NegotiateToken>` whose error converts into a
/// [`BoxError`]. Cheap to clone when `K` is.
#[derive(Clone, Debug)]
pub struct KcdAuthLayer<K> {
    kcd: K,
    settings: Arc<Settings>,
}

impl<K> KcdAuthLayer<K> {
    /// Authenticates certificate users to `target_spn` (`HTTP/<EWS host>`) with tokens from
    /// `kcd`, forgetting a refused ticket with `cache`. UPNs are enterprise names, bodies up to
    /// [`DEFAULT_RETRY_BODY_LIMIT`] are kept for a retry, tokens are not bound to a channel.
    pub fn new(
        kcd: K,
        cache: impl Invalidate + Send + Sync + 'static,
        target_spn: impl Into<String>,
    ) -> Self {
        KcdAuthLayer {
            kcd,
            settings: Arc::new(Settings {
                target_spn: Arc::from(target_spn.into()),
                default_realm: None,
                retry_body_limit: DEFAULT_RETRY_BODY_LIMIT,
                invalidate: Arc::new(cache),
                channel_binding: None,
                verify_mutual: false,
            }),
        }
    }

    /// Reads UPNs with [`UserName::parse`] in `realm`: one whose suffix is spelled exactly as
    /// `realm` (`alice@TEST.LOCAL`) is the principal `alice` of that realm, any other is an
    /// enterprise name. Needed for MIT Kerberos, which does not resolve enterprise names.
    pub fn with_default_realm(mut self, realm: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.settings).default_realm = Some(realm.into());
        self
    }

    /// Keeps request bodies of up to `bytes` in memory to send them again after a `401`
    /// (default [`DEFAULT_RETRY_BODY_LIMIT`]); a larger body is sent once, without retry. `0`
    /// keeps only empty bodies.
    pub fn with_retry_body_limit(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.settings).retry_body_limit = bytes;
        self
    }

    /// Binds every token to the TLS connection to Exchange that `source` describes.
    pub fn with_channel_binding(
        mut self,
        source: impl ChannelBindingSource + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.settings).channel_binding = Some(Arc::new(source));
        self
    }

    /// Requires Exchange to prove its identity (Kerberos mutual authentication, see the
    /// [module docs](self)): an answer without a valid proof becomes a `502`. Needs tokens
    /// made by a [`KcdClient`], which keep what checks the proof.
    pub fn verifying_mutual_authentication(mut self) -> Self {
        Arc::make_mut(&mut self.settings).verify_mutual = true;
        self
    }
}

impl KcdAuthLayer<KcdClient> {
    /// Authenticates certificate users to `target_spn` with `client`, which also forgets
    /// refused tickets; UPNs are read as [`KcdClient::user_name`] reads them, in the realm of
    /// the gateway's principal.
    pub fn for_client(client: KcdClient, target_spn: impl Into<String>) -> Self {
        let principal = client.service_principal();
        let realm = principal
            .rsplit_once('@')
            .map(|(_, realm)| realm.to_owned());
        let layer = KcdAuthLayer::new(client.clone(), client, target_spn);
        match realm {
            Some(realm) => layer.with_default_realm(realm),
            None => layer,
        }
    }
}

impl<S, K: Clone> Layer<S> for KcdAuthLayer<K> {
    type Service = KcdAuth<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KcdAuth {
            inner,
            kcd: self.kcd.clone(),
            settings: self.settings.clone(),
            last_user: None,
        }
    }
}

/// Middleware that authenticates certificate users to Exchange with Kerberos; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct KcdAuth<S, K> {
    inner: S,
    kcd: K,
    settings: Arc<Settings>,
    /// The last certificate UPN read and its user name. The gateway gives each client
    /// connection its own clone of the stack, and a connection's certificate never changes:
    /// its requests need the name read once.
    last_user: Option<(Arc<str>, UserName)>,
}

impl<S, K> KcdAuth<S, K> {
    /// The UPN (shared) and its user name, from the last request's if it is the same UPN.
    fn user(&mut self, upn: &str) -> Result<(Arc<str>, UserName), KcdError> {
        if let Some((last, user)) = &self.last_user
            && **last == *upn
        {
            return Ok((Arc::clone(last), user.clone()));
        }
        let user = self.settings.user_name(upn)?;
        let upn: Arc<str> = Arc::from(upn);
        self.last_user = Some((Arc::clone(&upn), user.clone()));
        Ok((upn, user))
    }
}

impl<S, K, B, ResBody> Service<Request<B>> for KcdAuth<S, K>
where
    S: Service<Request<KcdBody<B>>, Response = Response<ResBody>> + Clone,
    K: Service<KcdRequest, Response = NegotiateToken> + Clone,
    K::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, K, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let upn = match certificate_user(request.extensions()) {
            Some(upn) if !request.headers().contains_key(header::AUTHORIZATION) => upn,
            _ => {
                return ResponseFuture::passed(self.inner.call(request.map(KcdBody::streamed)));
            }
        };
        let span = tracing::info_span!("kcd_auth", user = %upn);
        let (upn, user) = match self.user(upn) {
            Ok(named) => named,
            Err(error) => {
                let _entered = span.enter();
                return ResponseFuture::answered(kcd_fault(upn, &error.into()));
            }
        };
        // The ready service goes with the request; this one gets a fresh clone (tower's rule
        // for services called from a future).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        let limit = self.settings.retry_body_limit;
        // A body that says it is larger than the limit is not read at all.
        let body = if body.size_hint().lower() > limit as u64 {
            Held::Once(KcdBody::streamed(body))
        } else {
            Held::Reading {
                body,
                buffer: BytesMut::new(),
            }
        };
        ResponseFuture {
            kind: Kind::Authenticating {
                auth: Box::pin(Authenticate {
                    inner,
                    kcd: self.kcd.clone(),
                    settings: self.settings.clone(),
                    user,
                    upn,
                    parts,
                    body,
                    authorization: None,
                    context: None,
                    retried: false,
                    span,
                    step: Step::KcdReady,
                }),
            },
        }
    }
}

/// The request body, kept in memory for a retry, or to be sent once.
enum Held<B> {
    /// Being read into `buffer`.
    Reading { body: B, buffer: BytesMut },
    /// Read to its end: can be sent again.
    Whole {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Larger than the limit, or failed while read: sent once.
    Once(KcdBody<B>),
    /// Sent once.
    Sent,
}

impl<B> Held<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads the body until its end, the limit or an error.
    fn poll_read(&mut self, limit: usize, cx: &mut Context<'_>) -> Poll<()> {
        if !matches!(self, Held::Reading { .. }) {
            return Poll::Ready(());
        }
        let Held::Reading {
            mut body,
            mut buffer,
        } = std::mem::replace(self, Held::Sent)
        else {
            return Poll::Ready(());
        };
        loop {
            let frame = match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending => {
                    *self = Held::Reading { body, buffer };
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            };
            match frame {
                None => {
                    *self = Held::Whole {
                        data: buffer.freeze(),
                        trailers: None,
                    };
                    return Poll::Ready(());
                }
                Some(Err(error)) => {
                    // Sent on as far as it came, then the error: the inner service reports it
                    // (the proxy turns an over-limit body into 413) as it would have.
                    *self = Held::Once(KcdBody::failed(buffer.freeze(), error.into()));
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let over = buffer.len().saturating_add(data.remaining()) > limit;
                        buffer.put(data);
                        if over {
                            *self = Held::Once(KcdBody::prefixed(buffer.freeze(), body));
                            return Poll::Ready(());
                        }
                    }
                    Err(frame) => {
                        // Trailers end a body; a frame of another kind is of no use to Exchange.
                        if let Ok(trailers) = frame.into_trailers() {
                            *self = Held::Whole {
                                data: buffer.freeze(),
                                trailers: Some(trailers),
                            };
                            return Poll::Ready(());
                        }
                    }
                },
            }
        }
    }

    /// The body for the next attempt: a copy of a whole body (kept for another), or the body
    /// that can be sent only once.
    fn next(&mut self) -> KcdBody<B> {
        match std::mem::replace(self, Held::Sent) {
            Held::Whole { data, trailers } => {
                let body = KcdBody::whole(data.clone(), trailers.clone());
                *self = Held::Whole { data, trailers };
                body
            }
            Held::Once(body) => body,
            // Not reached: the body is read before the first attempt and a body sent once is
            // never sent again. An empty body is the harmless answer.
            Held::Reading { .. } | Held::Sent => KcdBody::whole(Bytes::new(), None),
        }
    }

    fn is_whole(&self) -> bool {
        matches!(self, Held::Whole { .. })
    }
}

pin_project! {
    /// Response future of [`KcdAuth`].
    pub struct ResponseFuture<S, K, B>
    where
        S: Service<Request<KcdBody<B>>>,
        K: Service<KcdRequest>,
    {
        #[pin]
        kind: Kind<S, K, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, K, B>
    where
        S: Service<Request<KcdBody<B>>>,
        K: Service<KcdRequest>,
    {
        // Not a request to authenticate: the inner service's answer.
        Passed { #[pin] future: S::Future },
        // Refused before anything was sent.
        Answered { response: Option<S::Response> },
        // Token, body, request, and perhaps the same again after a 401. Boxed: its size (the
        // request head, the services, both futures) would otherwise be carried, and copied
        // layer by layer, by every request's future, certificate-authenticated or not.
        Authenticating { auth: Pin<Box<Authenticate<S, K, B>>> },
    }
}

pin_project! {
    /// A request being authenticated, and what it takes to send it again.
    struct Authenticate<S, K, B>
    where
        S: Service<Request<KcdBody<B>>>,
        K: Service<KcdRequest>,
    {
        inner: S,
        kcd: K,
        settings: Arc<Settings>,
        user: UserName,
        upn: Arc<str>,
        // The request head without the token, kept for a retry.
        parts: Parts,
        body: Held<B>,
        // The token for the next attempt, between getting it and sending the request.
        authorization: Option<HeaderValue>,
        // What checks Exchange's mutual-authentication answer to the token sent.
        context: Option<TokenContext>,
        retried: bool,
        span: tracing::Span,
        #[pin]
        step: Step<S::Future, K::Future>,
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<SF, KF> {
        KcdReady,
        Token { #[pin] future: KF },
        Reading,
        InnerReady,
        Inner { #[pin] future: SF },
    }
}

impl<S, K, B> ResponseFuture<S, K, B>
where
    S: Service<Request<KcdBody<B>>>,
    K: Service<KcdRequest>,
{
    fn passed(future: S::Future) -> Self {
        ResponseFuture {
            kind: Kind::Passed { future },
        }
    }

    fn answered(response: S::Response) -> Self {
        ResponseFuture {
            kind: Kind::Answered {
                response: Some(response),
            },
        }
    }
}

impl<S, K, B, ResBody> Future for ResponseFuture<S, K, B>
where
    S: Service<Request<KcdBody<B>>, Response = Response<ResBody>>,
    K: Service<KcdRequest, Response = NegotiateToken>,
    K::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passed { future } => future.poll(cx),
            KindProj::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after it completed, a caller's bug: a 500 rather than a panic.
                None => Poll::Ready(Ok(SoapFault::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    FaultCode::InternalServerError,
                    "response future polled after completion",
                )
                .into_response())),
            },
            KindProj::Authenticating { auth } => auth.as_mut().poll_response(cx),
        }
    }
}

impl<S, K, B, ResBody> Authenticate<S, K, B>
where
    S: Service<Request<KcdBody<B>>, Response = Response<ResBody>>,
    K: Service<KcdRequest, Response = NegotiateToken>,
    K::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    fn poll_response(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<ResBody>, S::Error>> {
        let this = self.project();
        let (inner, kcd, settings, user, upn) =
            (this.inner, this.kcd, this.settings, this.user, this.upn);
        let (parts, body, authorization, context, retried) = (
            this.parts,
            this.body,
            this.authorization,
            this.context,
            this.retried,
        );
        let mut step = this.step;
        let _entered = this.span.enter();
        loop {
            match step.as_mut().project() {
                StepProj::KcdReady => {
                    if let Err(error) = ready!(kcd.poll_ready(cx)) {
                        return Poll::Ready(Ok(kcd_fault(upn, &error.into())));
                    }
                    let future = kcd.call(settings.kcd_request(user));
                    step.set(Step::Token { future });
                }
                StepProj::Token { future } => {
                    let token = match ready!(future.poll(cx)) {
                        Ok(token) => token,
                        Err(error) => return Poll::Ready(Ok(kcd_fault(upn, &error.into()))),
                    };
                    // From the `String` itself: no copy of the 1.3 KB value.
                    let Ok(mut value) = HeaderValue::try_from(token.to_header_value()) else {
                        // Base64 always makes a valid header value; this is for a stand-in K.
                        let error =
                            KcdError::MalformedReply("the token is not a header value".into());
                        return Poll::Ready(Ok(kcd_fault(upn, &error.into())));
                    };
                    value.set_sensitive(true);
                    *authorization = Some(value);
                    *context = token.context().cloned();
                    step.set(if *retried {
                        Step::InnerReady
                    } else {
                        Step::Reading
                    });
                }
                StepProj::Reading => {
                    ready!(body.poll_read(settings.retry_body_limit, cx));
                    step.set(Step::InnerReady);
                }
                StepProj::InnerReady => {
                    ready!(inner.poll_ready(cx))?;
                    // Only a whole body can be sent again; otherwise the head is not needed
                    // after this attempt either.
                    let mut head = if body.is_whole() {
                        parts.clone()
                    } else {
                        std::mem::replace(parts, Request::new(()).into_parts().0)
                    };
                    if let Some(value) = authorization.take() {
                        head.headers.insert(header::AUTHORIZATION, value);
                    }
                    let future = inner.call(Request::from_parts(head, body.next()));
                    step.set(Step::Inner { future });
                }
                StepProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        if settings.verify_mutual
                            && let Err(error) = check_mutual(&response, context.as_ref())
                        {
                            return Poll::Ready(Ok(mutual_fault(upn, response.status(), &error)));
                        }
                        return Poll::Ready(Ok(response));
                    }
                    if *retried {
                        tracing::warn!(
                            user = %upn,
                            "Exchange refused a fresh Kerberos ticket too; answering its 401"
                        );
                        return Poll::Ready(Ok(response));
                    }
                    // A ticket the KDC issued but Exchange refuses is stale (Exchange's keys
                    // changed, the account was reset): drop it, so the next request gets a fresh
                    // one, and try this one once more if its body can be sent again.
                    settings.invalidate.invalidate(user, &settings.target_spn);
                    if !body.is_whole() {
                        tracing::warn!(
                            user = %upn,
                            "Exchange refused the Kerberos ticket; the body was too large to keep, so no retry"
                        );
                        return Poll::Ready(Ok(response));
                    }
                    tracing::info!(
                        user = %upn,
                        "Exchange refused the Kerberos ticket; retrying once with a fresh one"
                    );
                    drop(response);
                    *retried = true;
                    step.set(Step::KcdReady);
                }
            }
        }
    }
}

/// Checks Exchange's mutual-authentication answer: a `Negotiate` token must verify against
/// `context`, and a success must carry one.
fn check_mutual<B>(response: &Response<B>, context: Option<&TokenContext>) -> Result<(), KcdError> {
    let failed = |reason: &str| KcdError::MutualAuthentication {
        reason: reason.to_owned(),
    };
    let token = response
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("Negotiate")
                .then(|| token.trim())
        });
    let Some(token) = token else {
        return if response.status().is_success() {
            Err(failed("Exchange's answer carries no Negotiate token"))
        } else {
            Ok(())
        };
    };
    let context =
        context.ok_or_else(|| failed("the token sent has nothing to check the answer against"))?;
    let reply = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| failed("Exchange's Negotiate token is not base64"))?;
    kcd_client::verify_mutual(context, &reply)
}

/// The `502` answer to Exchange's failed mutual authentication, and its log line.
fn mutual_fault<B: From<Bytes>>(upn: &str, status: StatusCode, error: &KcdError) -> Response<B> {
    tracing::error!(
        user = %upn,
        exchange_status = status.as_u16(),
        error = %error,
        "Exchange did not prove its identity (Kerberos mutual authentication); its answer is not passed on"
    );
    SoapFault::new(
        StatusCode::BAD_GATEWAY,
        FaultCode::ConnectionFailed,
        "Exchange did not prove its identity to the gateway (Kerberos mutual authentication)",
    )
    .with_reason("kcd-mutual-auth-failed")
    .into_response()
}

/// The `503` answer to a failure to get a token, and its log line.
fn kcd_fault<B: From<Bytes>>(upn: &str, error: &BoxError) -> Response<B> {
    let (reason, code, message) = classify(error.as_ref());
    tracing::warn!(
        user = %upn,
        reason,
        error = %error_chain(error.as_ref()),
        "no Kerberos ticket for the user; the request is not forwarded"
    );
    SoapFault::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        .with_reason(reason)
        .into_response()
}

/// The `X-Seg-Fault` reason, the EWS response code and the client's message for a failure.
///
/// The response codes tell a client whether trying again can help: `ErrorAccessDenied` when the
/// directory refuses this user, `ErrorConnectionFailed`/`ErrorTimeoutExpired` when the KDC may
/// come back, `ErrorInternalServerError` when the gateway's set-up is wrong.
fn classify(error: &(dyn std::error::Error + 'static)) -> (&'static str, FaultCode, &'static str) {
    if error.is::<tower::timeout::error::Elapsed>() {
        return (
            "kcd-timeout",
            FaultCode::TimeoutExpired,
            "the Kerberos KDC did not answer the gateway in time",
        );
    }
    let Some(error) = error.downcast_ref::<KcdError>() else {
        return (
            "kcd-failed",
            FaultCode::InternalServerError,
            "the gateway could not obtain a Kerberos ticket for Exchange",
        );
    };
    match error {
        KcdError::UnknownUser { .. } => (
            "kcd-unknown-user",
            FaultCode::AccessDenied,
            "the directory does not know the user of the client certificate",
        ),
        KcdError::DelegationNotAllowed { .. } => (
            "kcd-delegation-refused",
            FaultCode::AccessDenied,
            "the gateway is not allowed to act for the user at Exchange (Kerberos constrained delegation)",
        ),
        KcdError::KdcUnreachable { .. } => (
            "kcd-unavailable",
            FaultCode::ConnectionFailed,
            "no Kerberos KDC answered the gateway",
        ),
        KcdError::ClockSkew { .. } => (
            "kcd-clock-skew",
            FaultCode::InternalServerError,
            "the gateway's clock differs too much from the Kerberos KDC's",
        ),
        KcdError::BadCredentials { .. } => (
            "kcd-bad-credentials",
            FaultCode::InternalServerError,
            "the Kerberos KDC refused the gateway's own credentials",
        ),
        KcdError::UnknownService { .. } => (
            "kcd-unknown-service",
            FaultCode::InternalServerError,
            "the Kerberos KDC does not know Exchange's or the gateway's service principal",
        ),
        KcdError::InvalidName { .. } => (
            "kcd-invalid-user",
            FaultCode::AccessDenied,
            "the user of the client certificate cannot be named in Kerberos",
        ),
        _ => (
            "kcd-failed",
            FaultCode::InternalServerError,
            "the gateway could not obtain a Kerberos ticket for Exchange",
        ),
    }
}

/// An error and its causes, for the log.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pin_project! {
    /// The request body [`KcdAuth`] sends on: the client's body streamed (after the part read
    /// while deciding whether it could be sent twice), or the copy kept in memory.
    ///
    /// Errors of the client's body are passed on as they are, boxed.
    pub struct KcdBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        // What was read (if anything), then the rest of the client's body.
        Streamed { prefix: Option<Bytes>, #[pin] body: B },
        // A copy of a whole body.
        Whole { data: Option<Bytes>, trailers: Option<HeaderMap> },
        // What was read, then the error that stopped the reading.
        Failed { prefix: Option<Bytes>, error: Option<BoxError> },
    }
}

impl<B> KcdBody<B> {
    /// The client's body, unchanged.
    fn streamed(body: B) -> Self {
        KcdBody {
            kind: BodyKind::Streamed { prefix: None, body },
        }
    }

    fn prefixed(prefix: Bytes, body: B) -> Self {
        KcdBody {
            kind: BodyKind::Streamed {
                prefix: Some(prefix),
                body,
            },
        }
    }

    fn whole(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        KcdBody {
            kind: BodyKind::Whole {
                data: Some(data),
                trailers,
            },
        }
    }

    fn failed(prefix: Bytes, error: BoxError) -> Self {
        KcdBody {
            kind: BodyKind::Failed {
                prefix: Some(prefix),
                error: Some(error),
            },
        }
    }
}

impl<B> fmt::Debug for KcdBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            BodyKind::Streamed { .. } => "Streamed",
            BodyKind::Whole { .. } => "Whole",
            BodyKind::Failed { .. } => "Failed",
        };
        f.debug_tuple("KcdBody").field(&kind).finish()
    }
}

/// Takes `bytes` unless empty: an empty data frame is noise to the peer.
fn non_empty(bytes: &mut Option<Bytes>) -> Option<Bytes> {
    bytes.take().filter(|bytes| !bytes.is_empty())
}

impl<B> Body for KcdBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyKindProj::Streamed { prefix, body } => {
                if let Some(prefix) = non_empty(prefix) {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                body.poll_frame(cx).map(|frame| {
                    frame.map(|frame| {
                        frame
                            .map(|frame| {
                                frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                            })
                            .map_err(Into::into)
                    })
                })
            }
            BodyKindProj::Whole { data, trailers } => {
                if let Some(data) = non_empty(data) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(
                    trailers
                        .take()
                        .map(|trailers| Ok(Frame::trailers(trailers))),
                )
            }
            BodyKindProj::Failed { prefix, error } => {
                if let Some(prefix) = non_empty(prefix) {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Poll::Ready(error.take().map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let empty = |bytes: &Option<Bytes>| bytes.as_ref().is_none_or(Bytes::is_empty);
        match &self.kind {
            BodyKind::Streamed { prefix, body } => empty(prefix) && body.is_end_stream(),
            BodyKind::Whole { data, trailers } => empty(data) && trailers.is_none(),
            BodyKind::Failed { prefix, error } => empty(prefix) && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let length = |bytes: &Option<Bytes>| bytes.as_ref().map_or(0, |b| b.len() as u64);
        match &self.kind {
            BodyKind::Streamed { prefix, body } => {
                let extra = length(prefix);
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(extra));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
            BodyKind::Whole { data, .. } => SizeHint::with_exact(length(data)),
            BodyKind::Failed { prefix, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(length(prefix));
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ews_proxy_core::fault::SEG_FAULT_HEADER;
    use ews_proxy_core::identity::CertificateFingerprint;
    use http_body_util::{BodyExt, Full, Limited};
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::time::Duration;
    use tower::ServiceExt;

    const SPN: &str = "HTTP/exchange.corp.example";
    const UPN: &str = "alice@corp.example";
    /// `Negotiate` and the base64 of [`token`].
    const NEGOTIATE: &str = "Negotiate dG9rZW4=";

    fn token() -> NegotiateToken {
        NegotiateToken::from_bytes(b"token".to_vec())
    }

    /// A stand-in for the KDC: records each request and answers with `answer`.
    #[derive(Clone)]
    struct StubKdc {
        requests: Arc<Mutex<Vec<KcdRequest>>>,
        answer: fn() -> Result<NegotiateToken, KcdError>,
    }

    impl StubKdc {
        fn answering(answer: fn() -> Result<NegotiateToken, KcdError>) -> Self {
            StubKdc {
                requests: Arc::default(),
                answer,
            }
        }

        fn requests(&self) -> Vec<KcdRequest> {
            self.requests.lock().unwrap().clone()
        }
    }

    impl Service<KcdRequest> for StubKdc {
        type Response = NegotiateToken;
        type Error = KcdError;
        type Future = std::future::Ready<Result<NegotiateToken, KcdError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), KcdError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: KcdRequest) -> Self::Future {
            self.requests.lock().unwrap().push(request);
            std::future::ready((self.answer)())
        }
    }

    /// What the stand-in for Exchange saw of one request.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        authorization: Option<String>,
        sensitive: bool,
        body: Result<Bytes, String>,
    }

    /// A stand-in for Exchange: records each request (its body read to the end) and answers
    /// with the next status of `statuses`, then 200.
    #[derive(Clone)]
    struct StubExchange {
        seen: Arc<Mutex<Vec<Seen>>>,
        statuses: Arc<Mutex<VecDeque<StatusCode>>>,
    }

    impl StubExchange {
        fn answering(statuses: &[StatusCode]) -> Self {
            StubExchange {
                seen: Arc::default(),
                statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl<B> Service<Request<B>> for StubExchange
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future =
            Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<B>) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                let (parts, body) = request.into_parts();
                let authorization = parts.headers.get(header::AUTHORIZATION);
                let seen = Seen {
                    authorization: authorization.map(|v| v.to_str().unwrap().to_owned()),
                    sensitive: authorization.is_some_and(HeaderValue::is_sensitive),
                    body: body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .map_err(|e| e.to_string()),
                };
                this.seen.lock().unwrap().push(seen);
                let status = this
                    .statuses
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(StatusCode::OK);
                let mut response = Response::new(Full::default());
                *response.status_mut() = status;
                Ok(response)
            })
        }
    }

    /// Records the (user, target) of each invalidation.
    #[derive(Clone, Default)]
    struct Forgotten(Arc<Mutex<Vec<(UserName, String)>>>);

    impl Invalidate for Forgotten {
        fn invalidate(&self, user: &UserName, target_spn: &str) {
            self.0
                .lock()
                .unwrap()
                .push((user.clone(), target_spn.to_owned()));
        }
    }

    fn certificate_identity(user: &str) -> ClientIdentity {
        ClientIdentity {
            user: user.to_owned(),
            source: IdentitySource::Certificate {
                fingerprint: CertificateFingerprint([1; 32]),
            },
        }
    }

    fn request_with<B>(
        body: B,
        identity: Option<ClientIdentity>,
        authorization: Option<&str>,
    ) -> Request<B> {
        let mut request = Request::post("/EWS/Exchange.asmx").body(body).unwrap();
        if let Some(identity) = identity {
            request.extensions_mut().insert(identity);
        }
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        request
    }

    fn certificate_request(body: &'static str) -> Request<Full<Bytes>> {
        request_with(full(body), Some(certificate_identity(UPN)), None)
    }

    fn full(text: &'static str) -> Full<Bytes> {
        Full::new(Bytes::from_static(text.as_bytes()))
    }

    fn seen_ok(authorization: Option<&str>, body: &'static str) -> Seen {
        Seen {
            authorization: authorization.map(str::to_owned),
            sensitive: authorization.is_some_and(|a| a.starts_with("Negotiate")),
            body: Ok(Bytes::from_static(body.as_bytes())),
        }
    }

    /// Every request's future goes through this layer, with KCD on or not (an `option_layer`'s
    /// future is as large as its largest side): the authentication's state is boxed, so that
    /// the future is not much larger than the inner service's future or a refusal.
    #[test]
    fn the_future_of_a_request_not_authenticated_here_is_about_the_inner_ones() {
        type Inner = <StubExchange as Service<Request<KcdBody<Full<Bytes>>>>>::Future;
        // A refusal is answered from the future itself.
        let inner = std::mem::size_of::<Inner>().max(std::mem::size_of::<Response<Full<Bytes>>>());
        let ours = std::mem::size_of::<ResponseFuture<StubExchange, StubKdc, Full<Bytes>>>();
        assert!(
            ours <= inner + 32,
            "{ours} bytes around a future of {inner}"
        );
    }

    #[tokio::test]
    async fn certificate_user_without_authorization_gets_negotiate_for_the_upn() {
        let kdc = StubKdc::answering(|| Ok(token()));
        let exchange = StubExchange::answering(&[]);
        let service =
            KcdAuthLayer::new(kdc.clone(), Forgotten::default(), SPN).layer(exchange.clone());

        let response = service
            .oneshot(certificate_request("<soap/>"))
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(exchange.seen(), [seen_ok(Some(NEGOTIATE), "<soap/>")]);
        assert_eq!(
            kdc.requests(),
            [KcdRequest::new(UserName::enterprise(UPN).unwrap(), SPN)]
        );
    }

    #[tokio::test]
    async fn with_a_default_realm_a_upn_in_the_realm_is_a_principal_name() {
        let kdc = StubKdc::answering(|| Ok(token()));
        let service = KcdAuthLayer::new(kdc.clone(), Forgotten::default(), SPN)
            .with_default_realm("TEST.LOCAL")
            .layer(StubExchange::answering(&[]));

        let request = request_with(
            full("x"),
            Some(certificate_identity("alice@TEST.LOCAL")),
            None,
        );
        service.oneshot(request).await.unwrap();

        assert_eq!(
            kdc.requests()[0].user,
            UserName::principal("alice", "TEST.LOCAL").unwrap()
        );
    }

    /// The service keeps the last UPN's user name; a request with another UPN must not get it.
    #[tokio::test]
    async fn one_service_asks_for_each_requests_own_user() {
        let kdc = StubKdc::answering(|| Ok(token()));
        let mut service = KcdAuthLayer::new(kdc.clone(), Forgotten::default(), SPN)
            .with_default_realm("TEST.LOCAL")
            .layer(StubExchange::answering(&[]));

        for upn in ["alice@TEST.LOCAL", "alice@TEST.LOCAL", "bob@corp.example"] {
            let request = request_with(full("x"), Some(certificate_identity(upn)), None);
            ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
                .await
                .unwrap()
                .call(request)
                .await
                .unwrap();
        }

        let users: Vec<UserName> = kdc.requests().into_iter().map(|r| r.user).collect();
        assert_eq!(
            users,
            [
                UserName::principal("alice", "TEST.LOCAL").unwrap(),
                UserName::principal("alice", "TEST.LOCAL").unwrap(),
                UserName::enterprise("bob@corp.example").unwrap(),
            ]
        );
    }

    #[tokio::test]
    async fn the_token_is_bound_to_the_channel_when_a_source_gives_a_hash() {
        let kdc = StubKdc::answering(|| Ok(token()));
        let service = KcdAuthLayer::new(kdc.clone(), Forgotten::default(), SPN)
            .with_channel_binding(StaticChannelBinding(vec![0xab; 32]))
            .layer(StubExchange::answering(&[]));

        service.oneshot(certificate_request("x")).await.unwrap();

        assert_eq!(kdc.requests()[0].channel_binding, Some(vec![0xab; 32]));
    }

    #[tokio::test]
    async fn basic_and_bearer_credentials_pass_untouched_even_with_a_certificate() {
        for credentials in ["Basic YWxpY2U6cHc=", "Bearer eyJ0eXAiOiJKV1QifQ.e30.sig"] {
            let kdc = StubKdc::answering(|| Ok(token()));
            let exchange = StubExchange::answering(&[]);
            let service =
                KcdAuthLayer::new(kdc.clone(), Forgotten::default(), SPN).layer(exchange.clone());

            let request = request_with(
                full("b"),
                Some(certificate_identity(UPN)),
                Some(credentials),
            );
            service.oneshot(request).await.unwrap();

            assert_eq!(
                exchange.seen(),
                [seen_ok(Some(credentials), "b")],
                "{credentials}"
            );
            assert!(kdc.requests().is_empty());
        }
    }

    #[tokio::test]
    async fn a_request_without_certificate_or_credentials_passes_untouched() {
        let identities = [
            None,
            Some(ClientIdentity {
                user: UPN.into(),
                source: IdentitySource::Basic,
            }),
        ];
        for identity in identities {
            let kdc = StubKdc::answering(|| Ok(token()));
            let exchange = StubExchange::answering(&[StatusCode::UNAUTHORIZED]);
            let service =
                KcdAuthLayer::new(kdc.clone(), Forgotten::default(), SPN).layer(exchange.clone());

            let response = service
                .oneshot(request_with(full("b"), identity, None))
                .await
                .unwrap();

            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(exchange.seen(), [seen_ok(None, "b")]);
            assert!(kdc.requests().is_empty());
        }
    }

    #[tokio::test]
    async fn a_401_drops_the_ticket_and_retries_once_with_the_same_body() {
        let kdc = StubKdc::answering(|| Ok(token()));
        let exchange = StubExchange::answering(&[StatusCode::UNAUTHORIZED]);
        let forgotten = Forgotten::default();
        let service =
            KcdAuthLayer::new(kdc.clone(), forgotten.clone(), SPN).layer(exchange.clone());

        let response = service
            .oneshot(certificate_request("<GetItem/>"))
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            exchange.seen(),
            [
                seen_ok(Some(NEGOTIATE), "<GetItem/>"),
                seen_ok(Some(NEGOTIATE), "<GetItem/>")
            ]
        );
        assert_eq!(kdc.requests().len(), 2);
        assert_eq!(
            *forgotten.0.lock().unwrap(),
            [(UserName::enterprise(UPN).unwrap(), SPN.to_owned())]
        );
    }

    #[tokio::test]
    async fn a_second_401_is_answered_as_it_is() {
        let kdc = StubKdc::answering(|| Ok(token()));
        let exchange =
            StubExchange::answering(&[StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED]);
        let forgotten = Forgotten::default();
        let service =
            KcdAuthLayer::new(kdc.clone(), forgotten.clone(), SPN).layer(exchange.clone());

        let response = service.oneshot(certificate_request("x")).await.unwrap();

        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(exchange.seen().len(), 2);
        assert_eq!(kdc.requests().len(), 2);
        assert_eq!(forgotten.0.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn each_kdc_failure_is_a_503_with_its_reason_and_nothing_is_forwarded() {
        type Answer = fn() -> Result<NegotiateToken, KcdError>;
        let cases: [(Answer, &str); 9] = [
            (
                || Err(KcdError::UnknownUser { user: UPN.into() }),
                "kcd-unknown-user",
            ),
            (
                || {
                    Err(KcdError::DelegationNotAllowed {
                        target: SPN.into(),
                        reason: "badoption".into(),
                    })
                },
                "kcd-delegation-refused",
            ),
            (
                || {
                    Err(KcdError::KdcUnreachable {
                        realm: "CORP".into(),
                        attempts: 4,
                        source: None,
                    })
                },
                "kcd-unavailable",
            ),
            (
                || {
                    Err(KcdError::ClockSkew {
                        skew: Duration::from_secs(600),
                    })
                },
                "kcd-clock-skew",
            ),
            (
                || {
                    Err(KcdError::BadCredentials {
                        principal: "HTTP/seg".into(),
                        reason: "preauth".into(),
                    })
                },
                "kcd-bad-credentials",
            ),
            (
                || {
                    Err(KcdError::UnknownService {
                        principal: SPN.into(),
                    })
                },
                "kcd-unknown-service",
            ),
            (
                || {
                    Err(KcdError::InvalidName {
                        name: UPN.into(),
                        reason: "x".into(),
                    })
                },
                "kcd-invalid-user",
            ),
            (
                || Err(KcdError::MalformedReply("short".into())),
                "kcd-failed",
            ),
            (
                || {
                    Err(KcdError::KdcError {
                        code: 60,
                        text: String::new(),
                    })
                },
                "kcd-failed",
            ),
        ];
        for (answer, reason) in cases {
            let exchange = StubExchange::answering(&[]);
            let service = KcdAuthLayer::new(StubKdc::answering(answer), Forgotten::default(), SPN)
                .layer(exchange.clone());

            let response = service.oneshot(certificate_request("x")).await.unwrap();

            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{reason}"
            );
            assert_eq!(response.headers()[SEG_FAULT_HEADER], reason);
            assert!(exchange.seen().is_empty(), "{reason}");
        }
    }

    #[tokio::test]
    async fn a_kdc_that_times_out_is_a_503_kcd_timeout() {
        let silent = tower::service_fn(|_: KcdRequest| {
            std::future::pending::<Result<NegotiateToken, KcdError>>()
        });
        let kdc = tower::ServiceBuilder::new()
            .timeout(Duration::from_millis(20))
            .service(silent);
        let exchange = StubExchange::answering(&[]);
        let service = KcdAuthLayer::new(kdc, Forgotten::default(), SPN).layer(exchange.clone());

        let response = service.oneshot(certificate_request("x")).await.unwrap();

        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[SEG_FAULT_HEADER], "kcd-timeout");
        assert!(exchange.seen().is_empty());
    }

    #[tokio::test]
    async fn a_body_above_the_retry_limit_is_sent_once_whole() {
        let kdc = StubKdc::answering(|| Ok(token()));
        let exchange = StubExchange::answering(&[StatusCode::UNAUTHORIZED]);
        let forgotten = Forgotten::default();
        let service = KcdAuthLayer::new(kdc.clone(), forgotten.clone(), SPN)
            .with_retry_body_limit(8)
            .layer(exchange.clone());
        // Chunks, so that the limit is crossed after some were read; no size hint gives it away.
        let body = Chunks(
            ["<Get", "Item>", "…the rest", "</GetItem>"]
                .into_iter()
                .map(Bytes::from)
                .collect(),
        );

        let request = request_with(body, Some(certificate_identity(UPN)), None);
        let response = service.oneshot(request).await.unwrap();

        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            exchange.seen(),
            [seen_ok(Some(NEGOTIATE), "<GetItem>…the rest</GetItem>")]
        );
        assert_eq!(kdc.requests().len(), 1);
        // The refused ticket is still dropped, for the next request.
        assert_eq!(forgotten.0.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_body_that_says_it_is_above_the_limit_is_streamed_without_reading() {
        let exchange = StubExchange::answering(&[StatusCode::UNAUTHORIZED]);
        let service = KcdAuthLayer::new(
            StubKdc::answering(|| Ok(token())),
            Forgotten::default(),
            SPN,
        )
        .with_retry_body_limit(4)
        .layer(exchange.clone());

        let response = service
            .oneshot(certificate_request("0123456789"))
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(exchange.seen(), [seen_ok(Some(NEGOTIATE), "0123456789")]);
    }

    #[tokio::test]
    async fn a_body_error_while_reading_reaches_the_inner_service_after_the_bytes_read() {
        let exchange = StubExchange::answering(&[]);
        let service = KcdAuthLayer::new(
            StubKdc::answering(|| Ok(token())),
            Forgotten::default(),
            SPN,
        )
        .layer(exchange.clone());
        // The gateway's body limit in front, smaller than the body.
        let body = Limited::new(
            Chunks(["abc", "defgh"].into_iter().map(Bytes::from).collect()),
            4,
        );

        let request = request_with(body, Some(certificate_identity(UPN)), None);
        service.oneshot(request).await.unwrap();

        let seen = exchange.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].authorization.as_deref(), Some(NEGOTIATE));
        assert_eq!(seen[0].body, Err("length limit exceeded".to_owned()));
    }

    #[tokio::test]
    async fn the_token_header_is_marked_sensitive() {
        let exchange = StubExchange::answering(&[]);
        let service = KcdAuthLayer::new(
            StubKdc::answering(|| Ok(token())),
            Forgotten::default(),
            SPN,
        )
        .layer(exchange.clone());

        service.oneshot(certificate_request("x")).await.unwrap();

        assert!(exchange.seen()[0].sensitive);
    }

    #[tokio::test]
    async fn trailers_of_a_kept_body_are_sent_on_each_attempt() {
        let exchange = tower::service_fn(|request: Request<KcdBody<WithTrailers>>| async move {
            let collected = request.into_body().collect().await?;
            let trailers = collected.trailers().cloned();
            assert_eq!(collected.to_bytes(), "data");
            assert_eq!(trailers.unwrap()["x-check"], "1");
            Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
        });
        let service = KcdAuthLayer::new(
            StubKdc::answering(|| Ok(token())),
            Forgotten::default(),
            SPN,
        )
        .layer(exchange);

        let request = request_with(
            WithTrailers(Some(Bytes::from("data")), true),
            Some(certificate_identity(UPN)),
            None,
        );
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// A body of the given chunks, without a size hint.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    /// A body of one chunk and then a trailer `x-check: 1`.
    struct WithTrailers(Option<Bytes>, bool);

    impl Body for WithTrailers {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if let Some(data) = self.0.take() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if std::mem::take(&mut self.1) {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-check", HeaderValue::from_static("1"));
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            Poll::Ready(None)
        }
    }

    /// A self-signed certificate for `name`, as DER.
    fn certificate(name: &str) -> rustls_pki_types::CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .clone()
    }

    #[test]
    fn presented_certificate_binding_follows_the_latest_certificate_of_its_host() {
        let presented = PresentedCertificates::default();
        let exchange: Authority = "exchange.corp.example:443".parse().unwrap();
        let other: Authority = "other.corp.example:443".parse().unwrap();
        let binding = PresentedCertificateBinding::new(presented.clone(), exchange.clone())
            .with_initial(vec![0xab; 32]);
        let (old, renewed) = (certificate("exchange"), certificate("exchange"));
        let hash = |der: &rustls_pki_types::CertificateDer<'_>| {
            kcd_client::tls_server_end_point_hash(der).unwrap()
        };

        assert_eq!(binding.certificate_hash(), Some(vec![0xab; 32]));
        presented.record(&other, certificate("other"));
        assert_eq!(binding.certificate_hash(), Some(vec![0xab; 32]));
        presented.record(&exchange, old.clone());
        assert_eq!(binding.certificate_hash(), Some(hash(&old)));
        presented.record(&exchange, renewed.clone());
        assert_eq!(binding.certificate_hash(), Some(hash(&renewed)));
        assert_ne!(hash(&old), hash(&renewed));
    }
}
