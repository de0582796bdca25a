//! A stand-in for Exchange Web Services, written from Microsoft's EWS reference.
//!
//! It serves `POST /EWS/Exchange.asmx` (path in any case, as IIS matches it) with `GetFolder`,
//! `GetItem`, `Subscribe` (pull, push, streaming), `GetEvents`, `GetStreamingEvents` and
//! `Unsubscribe`; pushes `SendNotification` to push subscribers; answers `GET
//! /EWS/Services.wsdl`; and offers test controls: `POST /testbed/deliver` (JSON `{"mailbox",
//! "subject"}`) delivers a message to a mailbox's Inbox, raising `NewMailEvent` and
//! `CreatedEvent`, and `GET /testbed/requests` lists the latest EWS requests received
//! ([`ExchangeConfig::record_requests`] of them).
//!
//! The ActiveSync virtual directory (`/Microsoft-Server-ActiveSync`, any case) is there only as
//! far as authentication goes: it authenticates as EWS does and answers an authenticated
//! `OPTIONS` as MS-ASHTTP 2.2.4 describes (`MS-Server-ActiveSync`, `MS-ASProtocolVersions`,
//! `MS-ASProtocolCommands`); any other method gets `501` (no ActiveSync command is served).
//!
//! Authentication is IIS's: Basic against the users, Bearer JWTs against the configured
//! verifier, Negotiate (Kerberos in SPNEGO) accepted by the system GSSAPI with a keytab when
//! [`ExchangeConfig::negotiate`] is set, optionally requiring channel bindings (Extended
//! Protection), and 401 with `Negotiate`, `NTLM` and `Basic realm="<host>"` challenges
//! otherwise. [`RecordedRequest::authenticated_user`] tells who a request was served as.
//!
//! ```
//! use seg_testbed::exchange::{ExchangeConfig, ExchangeServer, User};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> seg_testbed::Result<()> {
//! let listener = seg_testbed::harness::local_listener().await?;
//! let users = vec![User::new("alice@test.local", "s3cret")];
//! let exchange = ExchangeServer::spawn(listener, None, ExchangeConfig::new(users))?;
//! assert!(exchange.url().ends_with("/EWS/Exchange.asmx"));
//! let item = exchange.deliver("alice@test.local", "Quarterly numbers")?;
//! assert!(!item.id.is_empty());
//! exchange.shutdown().await;
//! # Ok(()) }
//! ```

mod auth;
mod gss_cred;
mod mailbox;
mod negotiate;
mod ops;
mod push;
mod responses;
mod soap;
mod streaming;
mod subscriptions;
mod xml;

use std::convert::Infallible;
use std::hash::{Hash as _, Hasher as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::client::HttpClient;
use crate::error::{Error, Result};
use crate::recording::{RequestLog, header_pairs, owned_headers, path_and_query};
use crate::serve::Running;
use crate::token::TokenVerifier;
use subscriptions::{Store, mailbox_key};

pub use negotiate::NegotiateConfig;

/// The EWS endpoint path, compared case-insensitively.
pub const EWS_PATH: &str = "/EWS/Exchange.asmx";
/// The WSDL path, compared case-insensitively.
pub const WSDL_PATH: &str = "/EWS/Services.wsdl";
/// The ActiveSync path, compared case-insensitively (a prefix of a path segment).
pub const ACTIVESYNC_PATH: &str = "/Microsoft-Server-ActiveSync";
/// The name of Exchange's back-end affinity cookie.
pub const AFFINITY_COOKIE: &str = "X-BackEndOverrideCookie";

/// A user of the users file: `{"upn": "alice@test.local", "password": "…", "mailbox":
/// "alice@test.local"}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user principal name, used as the Basic user name and matched against token claims.
    pub upn: String,
    /// The Basic password.
    pub password: String,
    /// The primary SMTP address of the user's mailbox.
    pub mailbox: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("upn", &self.upn)
            .field("password", &"<redacted>")
            .field("mailbox", &self.mailbox)
            .finish()
    }
}

impl User {
    /// A user whose mailbox address is its UPN.
    pub fn new(upn: &str, password: &str) -> Self {
        Self {
            upn: upn.to_string(),
            password: password.to_string(),
            mailbox: upn.to_string(),
        }
    }

    /// Parses a users file's JSON array.
    ///
    /// # Errors
    ///
    /// [`Error::UsersFile`] if the JSON is not an array of users.
    pub fn parse_list(json: &str) -> Result<Vec<User>> {
        serde_json::from_str(json).map_err(Error::UsersFile)
    }

    /// Reads and parses a users file.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if it cannot be read, [`Error::UsersFile`] if it is not valid.
    pub fn load_list(path: &Path) -> Result<Vec<User>> {
        Self::parse_list(&crate::pki::read(path)?)
    }
}

/// The version the server reports in every `ServerVersionInfo` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// `MajorVersion`, 15 for Exchange 2013 to 2019.
    pub major: u32,
    /// `MinorVersion`: 1 for Exchange 2016, 2 for Exchange 2019.
    pub minor: u32,
    /// `MajorBuildNumber`.
    pub major_build: u32,
    /// `MinorBuildNumber`.
    pub minor_build: u32,
    /// `Version`, the schema version name.
    pub version: String,
}

impl Default for ServerVersion {
    /// Exchange Server 2016 CU23.
    fn default() -> Self {
        Self {
            major: 15,
            minor: 1,
            major_build: 2507,
            minor_build: 6,
            version: "V2017_07_11".into(),
        }
    }
}

/// How the server behaves; plain data.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// The users, each acting on its own mailbox; one mailbox is created per distinct address.
    pub users: Vec<User>,
    /// Verifies `Authorization: Bearer` tokens; `None` refuses them.
    pub token_verifier: Option<TokenVerifier>,
    /// Accepts `Authorization: Negotiate` with the system GSSAPI and this keytab; `None` refuses
    /// it (the `Negotiate` challenge is offered either way, as Exchange does).
    pub negotiate: Option<NegotiateConfig>,
    /// The length of one EWS "minute" (`StatusFrequency`, `ConnectionTimeout`, pull `Timeout`),
    /// 60 s by default; tests shrink it.
    pub minute: Duration,
    /// How often an open `GetStreamingEvents` response sends `ConnectionStatus` `OK`.
    pub keepalive_interval: Duration,
    /// The back-end server name, the first part of the affinity cookie (e.g. `EXCH01`).
    pub server_name: String,
    /// The version reported in `ServerVersionInfo`.
    pub server_version: ServerVersion,
    /// The roots trusted for `https` push callbacks; `None` accepts any certificate.
    pub push_roots: Option<RootCertStore>,
    /// How long a push callback may take to answer.
    pub push_timeout: Duration,
    /// The largest request body accepted (413 beyond).
    pub max_body: usize,
    /// How long each EWS call waits before it is served (none by default). A real Exchange
    /// spends milliseconds on a call, this stand-in microseconds; benchmarks that ask how much
    /// of an upstream's throughput a proxy keeps need the former. `GetStreamingEvents` is not
    /// delayed (its stream has its own timing).
    pub service_time: Duration,
    /// How many of the latest requests [`ExchangeHandle::requests`] keeps
    /// ([`DEFAULT_RECORDED_REQUESTS`](crate::DEFAULT_RECORDED_REQUESTS) by default; 0 keeps
    /// none). Their bodies are kept up to 64 MiB in all, the newest request's whatever its size.
    pub record_requests: usize,
}

impl ExchangeConfig {
    /// The defaults for these users.
    pub fn new(users: Vec<User>) -> Self {
        Self {
            users,
            ..Self::default()
        }
    }
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            token_verifier: None,
            negotiate: None,
            minute: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            server_name: "EXCH01".into(),
            server_version: ServerVersion::default(),
            push_roots: None,
            push_timeout: Duration::from_secs(30),
            max_body: 10 * 1024 * 1024,
            record_requests: crate::DEFAULT_RECORDED_REQUESTS,
            service_time: Duration::ZERO,
        }
    }
}

/// An EWS item or folder id with its change key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ItemId {
    /// The `Id` attribute.
    pub id: String,
    /// The `ChangeKey` attribute.
    pub change_key: String,
}

/// A message to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The subject.
    pub subject: String,
    /// The sender's display name.
    #[serde(default = "default_from_name")]
    pub from_name: String,
    /// The sender's SMTP address.
    #[serde(default = "default_from_address")]
    pub from_address: String,
    /// The plain-text body.
    #[serde(default)]
    pub body: String,
}

fn default_from_name() -> String {
    "Testbed Sender".into()
}

fn default_from_address() -> String {
    "sender@test.local".into()
}

impl NewMessage {
    /// A message with this subject from `Testbed Sender <sender@test.local>` and an empty body.
    pub fn new(subject: &str) -> Self {
        Self {
            subject: subject.to_string(),
            from_name: default_from_name(),
            from_address: default_from_address(),
            body: String::new(),
        }
    }
}

/// A request that reached the server (test controls under `/testbed/` excepted).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub uri: String,
    /// All headers, as received.
    pub headers: HeaderMap,
    /// The EWS operation (the local name of the SOAP body's first element), if any.
    pub operation: Option<String>,
    /// The UPN of the user the request authenticated as (by any scheme), `None` when it was
    /// refused or needs no authentication.
    pub authenticated_user: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// Starts Exchange stand-ins.
#[derive(Debug)]
pub struct ExchangeServer;

impl ExchangeServer {
    /// Serves EWS on `listener` (TLS when `tls` is given, HTTP/1.1 and h2) until the handle is
    /// shut down or dropped. Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the listener's address cannot be read; [`Error::File`] if
    /// Negotiate is configured and GSSAPI cannot acquire credentials from its keytab (missing,
    /// unreadable or empty).
    pub fn spawn(
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        config: ExchangeConfig,
    ) -> Result<ExchangeHandle> {
        let addr = listener.local_addr().map_err(|source| Error::Connect {
            addr: "the listener".into(),
            source,
        })?;
        let (tls, acceptor) = match &config.negotiate {
            None => (tls, None),
            Some(negotiate) => {
                // The acceptor learns the certificate the TLS presents (for channel bindings)
                // from the configuration's resolver, wrapped to record what it serves.
                let (tls, certificate) = match tls {
                    None => (None, None),
                    Some(tls) => {
                        let certificate = Arc::new(negotiate::ServedCertificate::wrapping(
                            tls.cert_resolver.clone(),
                        ));
                        let mut recording = (*tls).clone();
                        recording.cert_resolver = certificate.clone();
                        (Some(Arc::new(recording)), Some(certificate))
                    }
                };
                let acceptor = negotiate::Acceptor::new(negotiate, certificate)?;
                (tls, Some(acceptor))
            }
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let push_client = match &config.push_roots {
            Some(roots) => HttpClient::trusting(roots.clone()),
            None => HttpClient::accepting_any_certificate(),
        };
        let mut store = Store::default();
        for user in &config.users {
            store
                .mailboxes
                .entry(mailbox_key(&user.mailbox))
                .or_insert_with(|| mailbox::Mailbox::new(&user.mailbox));
        }
        let record_requests = config.record_requests;
        let shared = Arc::new(Shared {
            affinity_salt: rand::random(),
            acceptor,
            config,
            store: Mutex::new(store),
            requests: RequestLog::new(record_requests),
            shutdown: shutdown_rx,
            push_client,
            next_token: AtomicU64::new(1),
        });
        let handler_state = shared.clone();
        let running = Running::spawn(listener, addr, tls, shutdown_tx, move |request| {
            handle(handler_state.clone(), request)
        });
        Ok(ExchangeHandle { running, shared })
    }
}

/// A running Exchange stand-in. Dropping it stops the server.
#[derive(Debug)]
pub struct ExchangeHandle {
    running: Running,
    shared: Arc<Shared>,
}

impl ExchangeHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// The scheme, host and port, e.g. `https://127.0.0.1:8443`.
    pub fn base_url(&self) -> String {
        self.running.base_url()
    }

    /// The EWS endpoint URL, e.g. `https://127.0.0.1:8443/EWS/Exchange.asmx`.
    pub fn url(&self) -> String {
        format!("{}{EWS_PATH}", self.base_url())
    }

    /// Delivers a message with this subject to the Inbox of `mailbox`, raising `NewMailEvent`
    /// and `CreatedEvent` for every subscription watching it.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownMailbox`] if the server holds no such mailbox.
    pub fn deliver(&self, mailbox: &str, subject: &str) -> Result<ItemId> {
        self.deliver_message(mailbox, NewMessage::new(subject))
    }

    /// Delivers a message to the Inbox of `mailbox`; see [`ExchangeHandle::deliver`].
    ///
    /// # Errors
    ///
    /// [`Error::UnknownMailbox`] if the server holds no such mailbox.
    pub fn deliver_message(&self, mailbox: &str, message: NewMessage) -> Result<ItemId> {
        self.shared.deliver(mailbox, message)
    }

    /// The requests received so far, oldest first: the latest
    /// [`ExchangeConfig::record_requests`] of them.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.to_vec()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.shared.requests.clear();
    }

    /// How many requests arrived since the start, kept by [`requests`](Self::requests) or not
    /// (test controls under `/testbed/` excepted).
    pub fn requests_received(&self) -> u64 {
        self.shared.requests.received()
    }

    /// The number of live subscriptions (all mailboxes, all kinds).
    pub fn subscription_count(&self) -> usize {
        self.shared.store().subscriptions.len()
    }

    /// The `X-BackEndOverrideCookie` value this server sets for a `Subscribe` anchored (by
    /// `X-AnchorMailbox`) to `anchor_mailbox`.
    pub fn affinity_cookie(&self, anchor_mailbox: &str) -> String {
        self.shared.affinity_cookie(anchor_mailbox)
    }

    /// Stops accepting, closes every connection (open streams included) and stops push
    /// deliveries; returns once the accept loop has ended.
    pub async fn shutdown(self) {
        self.running.stop().await;
    }
}

/// State shared by connections, streams and push tasks of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    config: ExchangeConfig,
    acceptor: Option<negotiate::Acceptor>,
    store: Mutex<Store>,
    requests: RequestLog<RecordedRequest>,
    shutdown: watch::Receiver<bool>,
    push_client: HttpClient,
    affinity_salt: u64,
    next_token: AtomicU64,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    fn deliver(&self, mailbox: &str, message: NewMessage) -> Result<ItemId> {
        self.store()
            .deliver(mailbox, message)
            .ok_or_else(|| Error::UnknownMailbox(mailbox.to_string()))
    }

    fn affinity_cookie(&self, anchor_mailbox: &str) -> String {
        let mut hasher = std::hash::DefaultHasher::new();
        self.affinity_salt.hash(&mut hasher);
        mailbox_key(anchor_mailbox).hash(&mut hasher);
        format!("{}~{}", self.config.server_name, hasher.finish() as u32)
    }

    async fn until_shutdown(&self) {
        let mut shutdown = self.shutdown.clone();
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    }
}

/// The response body type: whole documents or a stream of chunks.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    if request.version() == http::Version::HTTP_2 && auth::is_windows_auth(request.headers()) {
        // IIS does not support Windows authentication over HTTP/2 ("HTTP/2 on IIS"): it asks
        // the client to send the request again over HTTP/1.1, and serves nothing.
        tracing::debug!("Windows authentication over HTTP/2: HTTP_1_1_REQUIRED");
        let mut reset = Response::new(full(Bytes::new()));
        reset
            .extensions_mut()
            .insert(crate::serve::ResetStream(h2::Reason::HTTP_1_1_REQUIRED));
        return reset;
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, shared.config.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "request too large",
            );
        }
        Err(_) => return respond(StatusCode::BAD_REQUEST, "text/plain", "unreadable body"),
    };
    let path = parts.uri.path().to_ascii_lowercase();
    if path.starts_with("/testbed/") {
        return control(&shared, &parts.method, &path, &body);
    }
    let is_ews = path == EWS_PATH.to_ascii_lowercase();
    let envelope = (is_ews && parts.method == Method::POST).then(|| xml::parse(&body));
    let operation = envelope
        .as_ref()
        .and_then(|e| e.as_ref().ok())
        .and_then(soap::operation_name);
    let is_service = path.starts_with("/ews/") || is_activesync_path(&path);
    let authenticated = if is_service {
        Some(
            auth::authenticate(
                &parts.headers,
                &shared.config.users,
                shared.config.token_verifier.as_ref(),
                shared.acceptor.as_ref(),
            )
            .await,
        )
    } else {
        None
    };
    let delayed = is_ews && operation.as_deref() != Some("GetStreamingEvents");
    shared.requests.record(body.len(), || RecordedRequest {
        method: parts.method.clone(),
        uri: path_and_query(&parts.uri),
        headers: owned_headers(&parts.headers),
        operation,
        authenticated_user: match &authenticated {
            Some(Ok(principal)) => Some(principal.upn.clone()),
            _ => None,
        },
        // A copy: the body as read shares the connection's read buffer, which a kept slice
        // of it would hold.
        body: Bytes::copy_from_slice(&body),
    });
    let principal = match authenticated {
        None => return respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
        Some(Ok(principal)) => principal,
        Some(Err(refusal)) => {
            if let auth::Refusal::BadNegotiate(why) = &refusal {
                tracing::warn!(reason = %why, "Negotiate authentication refused");
            }
            return unauthorized(&parts, &refusal);
        }
    };
    if delayed && !shared.config.service_time.is_zero() {
        tokio::time::sleep(shared.config.service_time).await;
    }
    let mut response = serve(&shared, &parts, &path, envelope, &principal).await;
    if let Some(reply) = &principal.negotiate_reply {
        // The mutual-authentication token goes back with the response, as IIS sends it.
        let value = format!(
            "Negotiate {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, reply)
        );
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// Whether a lower-case `path` is the ActiveSync virtual directory or under it.
fn is_activesync_path(path: &str) -> bool {
    let prefix = ACTIVESYNC_PATH.to_ascii_lowercase();
    path.strip_prefix(prefix.as_str())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// An authenticated ActiveSync request: the `OPTIONS` answer of MS-ASHTTP 2.2.4 (Exchange
/// 2016's protocol versions and commands), `501` for anything else.
fn activesync(method: &Method) -> Response<Body> {
    if method != Method::OPTIONS {
        return respond(
            StatusCode::NOT_IMPLEMENTED,
            "text/plain",
            "this stand-in serves only OPTIONS on ActiveSync",
        );
    }
    let mut response = respond(StatusCode::OK, "text/plain", "");
    for (name, value) in [
        ("allow", "OPTIONS,POST"),
        ("ms-server-activesync", "15.1"),
        (
            "ms-asprotocolversions",
            "2.0,2.1,2.5,12.0,12.1,14.0,14.1,16.0,16.1",
        ),
        (
            "ms-asprotocolcommands",
            "Sync,SendMail,SmartForward,SmartReply,GetAttachment,GetHierarchy,CreateCollection,\
             DeleteCollection,MoveCollection,FolderSync,FolderCreate,FolderDelete,FolderUpdate,\
             MoveItems,GetItemEstimate,MeetingResponse,Search,Settings,Ping,ItemOperations,\
             Provision,ResolveRecipients,ValidateCert,Find",
        ),
    ] {
        response
            .headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// Serves an authenticated request under `/EWS/` or ActiveSync's directory.
async fn serve(
    shared: &Arc<Shared>,
    parts: &http::request::Parts,
    path: &str,
    envelope: Option<std::result::Result<xml::Element, String>>,
    principal: &auth::Principal,
) -> Response<Body> {
    let is_ews = path == EWS_PATH.to_ascii_lowercase();
    let is_wsdl = path == WSDL_PATH.to_ascii_lowercase();
    if is_activesync_path(path) {
        return activesync(&parts.method);
    }
    match (&parts.method, envelope) {
        (&Method::POST, Some(envelope)) => {
            ops::handle(shared, principal, &parts.headers, envelope).await
        }
        (&Method::GET, _) if is_ews => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><body>Exchange Web Services</body></html>",
        ),
        (&Method::GET, _) if is_wsdl => respond(StatusCode::OK, "text/xml; charset=utf-8", WSDL),
        _ if is_ews || is_wsdl => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed",
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}

fn unauthorized(parts: &http::request::Parts, refusal: &auth::Refusal) -> Response<Body> {
    let mut response = respond(
        StatusCode::UNAUTHORIZED,
        "text/html",
        "<html><head><title>401 - Unauthorized</title></head><body><h1>401 - Unauthorized: Access is denied due to invalid credentials.</h1></body></html>",
    );
    let host = auth::request_host(&parts.headers, &parts.uri);
    for challenge in auth::challenges(&host) {
        response
            .headers_mut()
            .append(header::WWW_AUTHENTICATE, challenge);
    }
    if let auth::Refusal::BadToken(why) = refusal {
        let diagnostics = format!(
            "2000003;reason=\"{}\";error_category=\"invalid_token\"",
            why.replace(['"', '\r', '\n'], "'")
        );
        if let Ok(value) = header::HeaderValue::from_str(&diagnostics) {
            response.headers_mut().insert("x-ms-diagnostics", value);
        }
    }
    response
}

/// The test controls: `POST /testbed/deliver` and `GET /testbed/requests`.
fn control(shared: &Shared, method: &Method, path: &str, body: &Bytes) -> Response<Body> {
    let json = |status: StatusCode, value: serde_json::Value| {
        respond(status, "application/json", value.to_string())
    };
    match (method, path) {
        (&Method::POST, "/testbed/deliver") => {
            #[derive(Deserialize)]
            struct Delivery {
                mailbox: String,
                #[serde(flatten)]
                message: NewMessage,
            }
            let delivery: Delivery = match serde_json::from_slice(body) {
                Ok(delivery) => delivery,
                Err(error) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": error.to_string()}),
                    );
                }
            };
            match shared.deliver(&delivery.mailbox, delivery.message) {
                Ok(item) => json(
                    StatusCode::OK,
                    serde_json::json!({"item_id": item.id, "change_key": item.change_key}),
                ),
                Err(error) => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": error.to_string()}),
                ),
            }
        }
        (&Method::GET, "/testbed/requests") => {
            let requests = shared.requests.map(|r| {
                serde_json::json!({
                    "method": r.method.as_str(),
                    "uri": r.uri,
                    "operation": r.operation,
                    "authenticated_user": r.authenticated_user,
                    "headers": header_pairs(&r.headers),
                    "body": String::from_utf8_lossy(&r.body),
                })
            });
            json(StatusCode::OK, serde_json::Value::Array(requests))
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}

/// A WSDL stub naming the service and its SOAP binding; enough for clients that only probe it.
const WSDL: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:tns="http://schemas.microsoft.com/exchange/services/2006/messages" targetNamespace="http://schemas.microsoft.com/exchange/services/2006/messages">
  <wsdl:binding name="ExchangeServiceBinding" type="tns:ExchangeServicePortType">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
  </wsdl:binding>
  <wsdl:service name="ExchangeServices">
    <wsdl:port name="ExchangeServicePort" binding="tns:ExchangeServiceBinding">
      <soap:address location="https://localhost/EWS/Exchange.asmx"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"#;
