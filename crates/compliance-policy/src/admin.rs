//! The admin API: diagnostics, overrides, sync and the console's change-event webhook, as an
//! axum [`Router`].
//!
//! seg-proxy serves it on its own listener (`admin.listen`), never on the EWS one. Every endpoint
//! that reads device data or changes state requires `Authorization: Bearer <admin.token>`,
//! compared in constant time; without a configured token those endpoints all answer `401`: the
//! API is never open by default. `/healthz`, `/readyz` and `/metrics` (counts and the view's
//! size, no device data) stay open. The webhook instead requires the shared secret
//! (`compliance.webhook_secret`) in `X-Seg-Webhook-Secret`, checked before the body is read.
//! Answers are JSON (`/metrics`: OpenMetrics text); an error is `{"error": "…"}` with its status.
//!
//! | Method   | Path                            | Auth    | Answer |
//! |----------|---------------------------------|---------|--------|
//! | `GET`    | `/healthz`                      | open    | `200 ok` |
//! | `GET`    | `/readyz`                       | open    | `200 {"ready":true}` once a view is loaded, else `503` |
//! | `GET`    | `/metrics`                      | open    | the [registry](AdminState::with_registry) in the OpenMetrics text format; `404` without one |
//! | `GET`    | `/policy/device/{eas_device_id}`| token   | the record, decision and overrides; `404` (same body) if unknown and not overridden |
//! | `GET`    | `/policy/account/{upn_or_email}`| token   | the user's devices with decisions, and the user override; `404` if none |
//! | `GET`    | `/policy/easdevicetype/{type}`  | token   | a [page](#pages) of devices of that EAS device type |
//! | `GET`    | `/policy/mailclient/{name}`     | token   | a [page](#pages) of devices using that mail client |
//! | `GET`    | `/devices?state=blocked\|allowed` | token | a [page](#pages) of devices by decision (`state` optional) |
//! | `GET`    | `/sync`                         | token   | the sync status, times as RFC 3339 (UTC, seconds) |
//! | `POST`   | `/sync`                         | token   | `202`, a full sync is requested; `503` without a syncer |
//! | `PUT`    | `/overrides/device/{device_id}` | token   | body `{"action":"allow"\|"block","reason":"…"}` (`reason` optional); the new decision and the transitions |
//! | `DELETE` | `/overrides/device/{device_id}` | token   | clears it (optional body `{"reason":"…"}`); the new decision and the transitions |
//! | `PUT`    | `/overrides/user/{upn}`         | token   | as for a device; the decisions of the user's devices |
//! | `DELETE` | `/overrides/user/{upn}`         | token   | clears it |
//! | `POST`   | `/events/compliance`            | secret  | a change event from the console: `200` with the transitions |
//!
//! A missing or wrong token is `401` with `WWW-Authenticate: Bearer`. The webhook answers `401`
//! for a missing or wrong secret (and when no secret is configured), without reading the body;
//! `413` past [`MAX_EVENT_BODY`]; `401` when an `X-Seg-Signature: sha256=<hex>` header is present
//! and is not the HMAC-SHA256 of the raw body keyed with the secret; `400` for an event the
//! parser refuses. A refused or malformed event never changes the view. Each event is counted
//! in the state's [metrics](crate::metrics) as applied, refused (`401`, `413`, unreadable) or
//! malformed (`400`).
//!
//! # Pages
//! The list endpoints take `?limit=&offset=` (default limit [`DEFAULT_PAGE_LIMIT`], at most
//! [`MAX_PAGE_LIMIT`]: a larger one is lowered to it) and answer
//! `{"total":N,"limit":L,"offset":O,"devices":[{"device":{…},"decision":{…},"device_override":…}]}`,
//! devices ordered by EAS device id, so that pages are stable while the view does not change.
//! They scan the view, off the async threads.
//!
//! # Who made a change
//! Every change is logged (`tracing::info!`) with the [`Operator`] who made it and the device or
//! user, never the token. Today the only operator is `admin-token`, the holder of the one admin
//! token; a later authenticator (named tokens, client certificates) puts a named [`Operator`] in
//! the request's extensions instead, and the handlers log whatever it is. An audit hook
//! ([`AdminState::with_audit`]) is also told of every override set or cleared, with the
//! operator and the reason given (at most [`MAX_REASON_LEN`] bytes).
//!
//! ```
//! use axum::body::Body;
//! use compliance_policy::admin::{AdminState, router};
//! use compliance_policy::policy::PolicySettings;
//! use compliance_policy::state::Compliance;
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let compliance = Compliance::new(PolicySettings::default());
//! // The UEM module supplies the real parser of change events.
//! let state = AdminState::new(compliance.clone(), |_body: &[u8]| Err("no events".to_string()))
//!     .with_admin_token("s3cret");
//! let app = router(state);
//!
//! // Without the token: refused.
//! let request = Request::put("/overrides/device/LAB1")
//!     .body(Body::from(r#"{"action":"allow"}"#))
//!     .unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! assert!(!compliance.decide(Some("LAB1"), None).is_allowed());
//!
//! // With it: the lab phone the console does not know is allowed.
//! let request = Request::put("/overrides/device/LAB1")
//!     .header("authorization", "Bearer s3cret")
//!     .body(Body::from(r#"{"action":"allow"}"#))
//!     .unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert!(compliance.decide(Some("LAB1"), None).is_allowed());
//! # }
//! ```

use crate::device::{DeviceId, DeviceRecord};
use crate::metrics::WebhookOutcome;
use crate::policy::{Decision, Override, PolicySettings};
use crate::state::{ChangeSource, Compliance, Transition};
use crate::sync::SyncHandle;
use crate::view::{Change, View};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json};
use hmac::{Hmac, Mac};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The largest change event the webhook reads; a larger body is refused with `413`.
pub const MAX_EVENT_BODY: usize = 1024 * 1024;

/// The header carrying the webhook's shared secret.
pub const WEBHOOK_SECRET_HEADER: &str = "x-seg-webhook-secret";

/// The optional header carrying `sha256=<hex>`, the HMAC-SHA256 of the raw event body keyed
/// with the webhook secret.
pub const SIGNATURE_HEADER: &str = "x-seg-signature";

/// Devices per page when the request names no `limit`.
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// The largest `limit` a page honours.
pub const MAX_PAGE_LIMIT: usize = 1000;

/// The largest override body (`{"action":"allow","reason":"…"}` and a little room).
const MAX_OVERRIDE_BODY: usize = 4 * 1024;

/// The longest reason an override may give, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// The longest device id or user name accepted in a path.
const MAX_NAME_LEN: usize = 512;

/// Turns a change-event body from the console into view changes (`Err`: why it is malformed).
type EventParser = dyn Fn(&[u8]) -> Result<Vec<Change>, String> + Send + Sync;

/// Told of every override set or cleared (an audit trail); must not block.
type AuditHook = dyn Fn(&OverrideChange) + Send + Sync;

/// An override set or cleared through the admin API, as an [audit hook](AdminState::with_audit)
/// is told of it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OverrideChange {
    /// Who made it.
    pub operator: Operator,
    /// The device or user.
    pub target: OverrideTarget,
    /// The override now: `None` when cleared.
    pub action: Option<Override>,
    /// The reason the operator gave, if any.
    pub reason: Option<String>,
}

impl OverrideChange {
    /// `operator` set `action` on `target` (`None`: cleared it), giving `reason`: for other
    /// front ends (the admin console) that record their overrides as the admin API does.
    pub fn new(
        operator: Operator,
        target: OverrideTarget,
        action: Option<Override>,
        reason: Option<String>,
    ) -> Self {
        OverrideChange {
            operator,
            target,
            action,
            reason,
        }
    }
}

/// What an override names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverrideTarget {
    /// A device.
    Device(DeviceId),
    /// A user (lower-case UPN).
    User(String),
}

/// What the admin API works on: the compliance state, the syncer, and its secrets.
///
/// Cheap to clone. Secrets are held as SHA-256 digests where only a comparison needs them (the
/// admin token); the webhook secret is also kept whole, as the key of the optional signature.
#[derive(Clone)]
pub struct AdminState {
    compliance: Compliance,
    sync: Option<SyncHandle>,
    admin_token: Option<[u8; 32]>,
    webhook: Option<Arc<WebhookSecret>>,
    parser: Arc<EventParser>,
    registry: Option<Arc<Registry>>,
    audit: Option<Arc<AuditHook>>,
}

struct WebhookSecret {
    digest: [u8; 32],
    key: Box<[u8]>,
}

impl AdminState {
    /// A state for `compliance`, with `parser` turning change-event bodies into view changes.
    ///
    /// Without [`with_admin_token`](Self::with_admin_token) every protected endpoint answers
    /// `401`; without [`with_webhook_secret`](Self::with_webhook_secret) the webhook refuses every
    /// event; without [`with_sync`](Self::with_sync) `POST /sync` answers `503`.
    pub fn new<P>(compliance: Compliance, parser: P) -> Self
    where
        P: Fn(&[u8]) -> Result<Vec<Change>, String> + Send + Sync + 'static,
    {
        AdminState {
            compliance,
            sync: None,
            admin_token: None,
            webhook: None,
            parser: Arc::new(parser),
            registry: None,
            audit: None,
        }
    }

    /// Tells `hook` of every override set or cleared, after it took effect: who, what, and the
    /// reason given. The hook runs on the request's task: it must hand the change on without
    /// waiting (e.g. to a bounded queue).
    pub fn with_audit(mut self, hook: impl Fn(&OverrideChange) + Send + Sync + 'static) -> Self {
        self.audit = Some(Arc::new(hook));
        self
    }

    /// `router` (its routes so far) behind the admin token check of the protected endpoints:
    /// `401` without the right `Authorization: Bearer`, and the [`Operator`] in the request's
    /// extensions with it. For other crates' admin routes (the audit trail's).
    pub fn protect<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.route_layer(middleware::from_fn_with_state(
            self.clone(),
            require_admin_token,
        ))
    }

    /// The registry `GET /metrics` serves, open like `/healthz`. Register the compliance
    /// metrics in it ([`ComplianceMetrics::register`](crate::metrics::ComplianceMetrics::register))
    /// and count into them with [`Compliance::with_metrics`]; the webhook counts its events in
    /// the metrics of its state. Without a registry, `/metrics` answers `404`.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The syncer that `GET /sync` reports on and `POST /sync` triggers.
    pub fn with_sync(mut self, sync: SyncHandle) -> Self {
        self.sync = Some(sync);
        self
    }

    /// The admin token (`admin.token`). An empty token counts as none: the API stays shut.
    pub fn with_admin_token(mut self, token: impl AsRef<str>) -> Self {
        let token = token.as_ref();
        if token.is_empty() {
            tracing::warn!("admin.token is empty; the admin API refuses every protected request");
            self.admin_token = None;
        } else {
            self.admin_token = Some(digest(token.as_bytes()));
        }
        self
    }

    /// The webhook's shared secret (`compliance.webhook_secret`). An empty secret counts as
    /// none: the webhook refuses every event.
    pub fn with_webhook_secret(mut self, secret: impl AsRef<str>) -> Self {
        let secret = secret.as_ref().as_bytes();
        if secret.is_empty() {
            tracing::warn!("compliance.webhook_secret is empty; the webhook refuses every event");
            self.webhook = None;
        } else {
            self.webhook = Some(Arc::new(WebhookSecret {
                digest: digest(secret),
                key: secret.into(),
            }));
        }
        self
    }
}

impl fmt::Debug for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |yes: bool| if yes { "<set>" } else { "<none>" };
        f.debug_struct("AdminState")
            .field("compliance", &self.compliance)
            .field("sync", &self.sync)
            .field("admin_token", &set(self.admin_token.is_some()))
            .field("webhook_secret", &set(self.webhook.is_some()))
            .field("parser", &"Fn(&[u8]) -> Result<Vec<Change>, String>")
            .field("registry", &set(self.registry.is_some()))
            .field("audit", &set(self.audit.is_some()))
            .finish()
    }
}

/// Who made a change, as the logs name them.
///
/// The bearer-token check puts one in the request's extensions (`admin-token` for the holder of
/// `admin.token`); a finer authenticator may put a named operator there instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operator(Arc<str>);

impl Operator {
    /// An operator called `name`.
    pub fn named(name: impl Into<Arc<str>>) -> Self {
        Operator(name.into())
    }

    /// Whoever holds the one admin token.
    pub fn admin_token() -> Self {
        Operator::named("admin-token")
    }

    /// The name, as logged.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The admin API over `state`; see the [module docs](self) for its endpoints.
///
/// Serve it with `axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())`
/// to have the webhook log the sender's address.
pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/policy/device/{device_id}", get(policy_device))
        .route("/policy/account/{user}", get(policy_account))
        .route(
            "/policy/easdevicetype/{device_type}",
            get(policy_device_type),
        )
        .route("/policy/mailclient/{client}", get(policy_mail_client))
        .route("/devices", get(devices))
        .route("/sync", get(sync_status).post(sync_trigger))
        .route(
            "/overrides/device/{device_id}",
            put(put_device_override).delete(delete_device_override),
        )
        .route(
            "/overrides/user/{user}",
            put(put_user_override).delete(delete_user_override),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/events/compliance", post(compliance_event))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error answer: `{"error": message}` with `status`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    /// Answer with `WWW-Authenticate: Bearer` (a refused admin token, not the webhook).
    bearer_challenge: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
            bearer_challenge: false,
        }
    }

    /// `401` for a missing or wrong admin token, with the challenge.
    fn bearer(message: &'static str) -> Self {
        ApiError {
            bearer_challenge: true,
            ..ApiError::new(StatusCode::UNAUTHORIZED, message)
        }
    }

    fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response();
        if self.bearer_challenge {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

// ---------------------------------------------------------------------------------------------
// Authentication

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares digests of equal length in constant time: neither the content nor the length of the
/// expected secret leaks through timing.
fn same_secret(given: &[u8], expected: &[u8; 32]) -> bool {
    bool::from(digest(given).ct_eq(expected))
}

/// The token of `Authorization: Bearer <token>` (the scheme without regard to case).
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

async fn require_admin_token(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.admin_token else {
        return ApiError::bearer("the admin API has no token configured (admin.token)")
            .into_response();
    };
    match bearer_token(request.headers()) {
        Some(token) if same_secret(token, expected) => {
            request.extensions_mut().insert(Operator::admin_token());
            next.run(request).await
        }
        Some(_) => {
            tracing::warn!(path = request.uri().path(), remote = %remote(&request), "admin request with a wrong token refused");
            ApiError::bearer("wrong bearer token").into_response()
        }
        None => ApiError::bearer("a bearer token is required").into_response(),
    }
}

/// The peer's address, when the server was started with connect info.
fn remote(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.to_string())
}

// ---------------------------------------------------------------------------------------------
// Reading the view

/// One consistent reading: a view, the policy, and the time the decisions are made at.
struct Reading {
    view: Arc<View>,
    policy: Arc<PolicySettings>,
    now: u64,
}

impl Reading {
    fn of(compliance: &Compliance) -> Self {
        let policy = compliance.policy();
        // As `Compliance::decide` does: the clock matters only to the inactivity policy.
        let now = if policy.inactivity_days > 0 {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        } else {
            0
        };
        Reading {
            view: compliance.view(),
            policy,
            now,
        }
    }

    /// The decision for the device `id` (upper-case), whose record may be missing.
    fn decide(&self, id: &str, record: Option<&DeviceRecord>) -> Decision {
        self.policy
            .decide_for(Some(id), record, None, self.view.overrides(), self.now)
    }

    fn device_override(&self, id: &DeviceId) -> Option<Override> {
        self.view.overrides().devices.get(id).copied()
    }

    fn entry(&self, record: &DeviceRecord) -> DeviceEntry {
        DeviceEntry {
            device: record.clone(),
            decision: self.decide(record.device_id.as_str(), Some(record)),
            device_override: self.device_override(&record.device_id),
        }
    }
}

/// A device with its decision, as lists show it.
#[derive(Serialize)]
struct DeviceEntry {
    device: DeviceRecord,
    decision: Decision,
    device_override: Option<Override>,
}

/// A path segment naming a device or a user: decoded, not empty, not absurdly long.
fn name_in_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::bad_request("the name in the path is empty"));
    }
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "the name in the path is too long or has control characters",
        ));
    }
    Ok(name.to_string())
}

// ---------------------------------------------------------------------------------------------
// Open endpoints

async fn healthz() -> &'static str {
    "ok"
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
}

async fn readyz(State(state): State<AdminState>) -> Result<Json<Ready>, ApiError> {
    if state.compliance.view().is_loaded() {
        Ok(Json(Ready { ready: true }))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no compliance view loaded yet (waiting for the first full sync or a saved view)",
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Diagnostics

#[derive(Serialize)]
struct DeviceReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    device_id: DeviceId,
    device: Option<DeviceRecord>,
    decision: Decision,
    device_override: Option<Override>,
    user_override: Option<Override>,
}

async fn policy_device(
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = DeviceId::new(&name_in_path(path)?);
    let reading = Reading::of(&state.compliance);
    let record = reading.view.device(id.as_str()).map(|r| (**r).clone());
    let device_override = reading.device_override(&id);
    let user_override = record
        .as_ref()
        .and_then(|r| r.user.as_deref())
        .and_then(|user| reading.view.overrides().for_user(user));
    let known = record.is_some() || device_override.is_some();
    let report = DeviceReport {
        error: (!known).then_some("the console does not know this device and it has no override"),
        decision: reading.decide(id.as_str(), record.as_ref()),
        device_id: id,
        device: record,
        device_override,
        user_override,
    };
    let status = if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok((status, Json(report)).into_response())
}

#[derive(Serialize)]
struct AccountReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    user: String,
    user_override: Option<Override>,
    devices: Vec<DeviceEntry>,
}

async fn policy_account(
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user = name_in_path(path)?;
    let reading = Reading::of(&state.compliance);
    let mut devices: Vec<DeviceEntry> = reading
        .view
        .devices_of_user(&user)
        .into_iter()
        .map(|record| reading.entry(record))
        .collect();
    devices.sort_unstable_by(|a, b| a.device.device_id.cmp(&b.device.device_id));
    // Overrides are kept by UPN: looked up by the name asked for, or by the UPN of the devices
    // found when the name was an e-mail address.
    let overrides = reading.view.overrides();
    let user_override = overrides.for_user(&user).or_else(|| {
        devices
            .iter()
            .find_map(|entry| overrides.for_user(entry.device.user.as_deref()?))
    });
    let known = !devices.is_empty() || user_override.is_some();
    let report = AccountReport {
        error: (!known).then_some("no device of this user and no override"),
        user,
        user_override,
        devices,
    };
    let status = if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok((status, Json(report)).into_response())
}

/// `?limit=&offset=` (and `state=` where `with_state`), checked.
#[derive(Debug, Default)]
struct PageQuery {
    limit: usize,
    offset: usize,
    state: Option<bool>,
}

impl PageQuery {
    fn parse(query: Option<&str>, with_state: bool) -> Result<Self, ApiError> {
        let mut page = PageQuery {
            limit: DEFAULT_PAGE_LIMIT,
            ..PageQuery::default()
        };
        let number = |key: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer")))
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "limit" => {
                    let limit = number("limit", &value)?;
                    if limit == 0 {
                        return Err(ApiError::bad_request("limit must be at least 1"));
                    }
                    page.limit = limit.min(MAX_PAGE_LIMIT);
                }
                "offset" => page.offset = number("offset", &value)?,
                "state" if with_state => {
                    page.state = match &*value {
                        "allowed" => Some(true),
                        "blocked" => Some(false),
                        _ => {
                            return Err(ApiError::bad_request(
                                "state must be `blocked` or `allowed`",
                            ));
                        }
                    }
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter `{other}`"
                    )));
                }
            }
        }
        Ok(page)
    }
}

#[derive(Serialize)]
struct Page {
    total: usize,
    limit: usize,
    offset: usize,
    devices: Vec<DeviceEntry>,
}

/// A page of the devices that `matches`, ordered by id. Scans the whole view, on a blocking
/// thread so as not to hold up the other requests of the listener.
async fn page_of<F>(state: &AdminState, page: PageQuery, matches: F) -> Result<Json<Page>, ApiError>
where
    F: Fn(&Reading, &DeviceRecord) -> bool + Send + 'static,
{
    let reading = Reading::of(&state.compliance);
    let listed = tokio::task::spawn_blocking(move || {
        let mut found: Vec<&Arc<DeviceRecord>> = reading
            .view
            .devices()
            .filter(|record| matches(&reading, record))
            .collect();
        let total = found.len();
        let end = page.offset.saturating_add(page.limit).min(total);
        let start = page.offset.min(end);
        if end < total {
            found.select_nth_unstable_by(end, |a, b| a.device_id.cmp(&b.device_id));
            found.truncate(end);
        }
        found.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id));
        let devices = found[start..end]
            .iter()
            .map(|record| reading.entry(record))
            .collect();
        Page {
            total,
            limit: page.limit,
            offset: page.offset,
            devices,
        }
    })
    .await
    .map_err(|error| {
        tracing::error!(%error, "listing devices failed");
        ApiError::internal("listing devices failed")
    })?;
    Ok(Json(listed))
}

fn same_name(value: Option<&str>, wanted: &str) -> bool {
    value.is_some_and(|value| value.eq_ignore_ascii_case(wanted))
}

async fn policy_device_type(
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page>, ApiError> {
    let wanted = name_in_path(path)?;
    let page = PageQuery::parse(query.as_deref(), false)?;
    page_of(&state, page, move |_, record| {
        same_name(record.eas_device_type.as_deref(), &wanted)
    })
    .await
}

async fn policy_mail_client(
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page>, ApiError> {
    let wanted = name_in_path(path)?;
    let page = PageQuery::parse(query.as_deref(), false)?;
    page_of(&state, page, move |_, record| {
        same_name(record.mail_client.as_deref(), &wanted)
    })
    .await
}

async fn devices(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page>, ApiError> {
    let page = PageQuery::parse(query.as_deref(), true)?;
    let wanted = page.state;
    page_of(&state, page, move |reading, record| match wanted {
        None => true,
        Some(allowed) => {
            reading
                .decide(record.device_id.as_str(), Some(record))
                .is_allowed()
                == allowed
        }
    })
    .await
}

/// `GET /sync`: times are RFC 3339 in UTC, to the second; `null` when it never happened.
#[derive(Serialize)]
struct SyncReport {
    /// A syncer is running (else the view only changes by events and overrides).
    configured: bool,
    /// A view was loaded (full sync or saved view): the gateway is ready.
    loaded: bool,
    /// Devices in the view.
    devices: usize,
    /// When the data of the current view was last fully synced.
    view_synced_at: Option<String>,
    last_full_sync: Option<String>,
    last_delta_sync: Option<String>,
    last_error: Option<String>,
    successes: u64,
    failures: u64,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

async fn sync_status(State(state): State<AdminState>) -> Json<SyncReport> {
    let view = state.compliance.view();
    let status = state
        .sync
        .as_ref()
        .map(SyncHandle::status)
        .unwrap_or_default();
    Json(SyncReport {
        configured: state.sync.is_some(),
        loaded: view.is_loaded(),
        devices: view.len(),
        view_synced_at: view.synced_at().map(rfc3339),
        last_full_sync: status.last_full_sync.map(rfc3339),
        last_delta_sync: status.last_delta_sync.map(rfc3339),
        last_error: status.last_error,
        successes: status.successes,
        failures: status.failures,
    })
}

// ---------------------------------------------------------------------------------------------
// Changes

#[derive(Serialize)]
struct Accepted {
    status: &'static str,
}

async fn sync_trigger(
    State(state): State<AdminState>,
    Extension(operator): Extension<Operator>,
) -> Result<Response, ApiError> {
    let Some(sync) = &state.sync else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no sync with the console is configured",
        ));
    };
    sync.trigger_full_sync();
    tracing::info!(%operator, "full sync requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: "full sync requested",
        }),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideRequest {
    action: Override,
    #[serde(default)]
    reason: Option<String>,
}

/// The optional body of a `DELETE` of an override.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// Reads a body of at most `limit` bytes: `413` past it (by `Content-Length` before reading, or
/// while reading), `400` if it cannot be read.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => {
            tracing::debug!(%error, "could not read a request body");
            Err(ApiError::bad_request("could not read the request body"))
        }
    }
}

async fn override_action(request: Request) -> Result<(Override, Option<String>), ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, MAX_OVERRIDE_BODY).await?;
    let parsed: OverrideRequest = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(format!(
            r#"the body must be {{"action":"allow"|"block","reason":"…"}}: {error}"#
        ))
    })?;
    Ok((parsed.action, checked_reason(parsed.reason)?))
}

/// The reason of a `DELETE`: its optional body `{"reason":"…"}`.
async fn clear_reason(request: Request) -> Result<Option<String>, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, MAX_OVERRIDE_BODY).await?;
    if body.trim_ascii().is_empty() {
        return Ok(None);
    }
    let parsed: ClearRequest = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(format!(
            r#"the body must be empty or {{"reason":"…"}}: {error}"#
        ))
    })?;
    checked_reason(parsed.reason)
}

/// A reason: trimmed, none when empty, at most [`MAX_REASON_LEN`] bytes of printable text.
fn checked_reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(reason) = reason else {
        return Ok(None);
    };
    let reason = reason.trim();
    if reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "the reason must be at most {MAX_REASON_LEN} bytes without control characters"
        )));
    }
    Ok((!reason.is_empty()).then(|| reason.to_owned()))
}

impl AdminState {
    /// Tells the audit hook, if any, of an override change.
    fn audit(
        &self,
        operator: &Operator,
        target: OverrideTarget,
        action: Option<Override>,
        reason: Option<String>,
    ) {
        if let Some(hook) = &self.audit {
            hook(&OverrideChange {
                operator: operator.clone(),
                target,
                action,
                reason,
            });
        }
    }
}

#[derive(Serialize)]
struct DeviceOverrideReport {
    device_id: DeviceId,
    #[serde(rename = "override")]
    action: Option<Override>,
    decision: Decision,
    transitions: Vec<Transition>,
}

fn set_device_override(
    state: &AdminState,
    operator: &Operator,
    id: &str,
    action: Option<Override>,
    reason: Option<String>,
) -> Json<DeviceOverrideReport> {
    let id = DeviceId::new(id);
    let transitions = state.compliance.set_device_override(id.as_str(), action);
    state.audit(operator, OverrideTarget::Device(id.clone()), action, reason);
    tracing::info!(
        %operator,
        device = %id,
        action = action.map_or("clear", |a| match a {
            Override::Allow => "allow",
            Override::Block => "block",
        }),
        transitions = transitions.len(),
        "device override changed"
    );
    let reading = Reading::of(&state.compliance);
    let record = reading.view.device(id.as_str()).cloned();
    Json(DeviceOverrideReport {
        decision: reading.decide(id.as_str(), record.as_deref()),
        device_id: id,
        action,
        transitions,
    })
}

async fn put_device_override(
    State(state): State<AdminState>,
    Extension(operator): Extension<Operator>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Json<DeviceOverrideReport>, ApiError> {
    let id = name_in_path(path)?;
    let (action, reason) = override_action(request).await?;
    Ok(set_device_override(
        &state,
        &operator,
        &id,
        Some(action),
        reason,
    ))
}

async fn delete_device_override(
    State(state): State<AdminState>,
    Extension(operator): Extension<Operator>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Json<DeviceOverrideReport>, ApiError> {
    let id = name_in_path(path)?;
    let reason = clear_reason(request).await?;
    Ok(set_device_override(&state, &operator, &id, None, reason))
}

#[derive(Serialize)]
struct UserOverrideReport {
    user: String,
    #[serde(rename = "override")]
    action: Option<Override>,
    /// The user's devices, with their decisions now.
    devices: Vec<DeviceDecision>,
    transitions: Vec<Transition>,
}

#[derive(Serialize)]
struct DeviceDecision {
    device_id: DeviceId,
    decision: Decision,
}

fn set_user_override(
    state: &AdminState,
    operator: &Operator,
    user: &str,
    action: Option<Override>,
    reason: Option<String>,
) -> Json<UserOverrideReport> {
    let user = user.to_ascii_lowercase();
    let transitions = state.compliance.set_user_override(&user, action);
    state.audit(operator, OverrideTarget::User(user.clone()), action, reason);
    tracing::info!(
        %operator,
        user = %user,
        action = action.map_or("clear", |a| match a {
            Override::Allow => "allow",
            Override::Block => "block",
        }),
        transitions = transitions.len(),
        "user override changed"
    );
    let reading = Reading::of(&state.compliance);
    let mut devices: Vec<DeviceDecision> = reading
        .view
        .devices_of_user(&user)
        .into_iter()
        .map(|record| DeviceDecision {
            device_id: record.device_id.clone(),
            decision: reading.decide(record.device_id.as_str(), Some(record)),
        })
        .collect();
    devices.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id));
    Json(UserOverrideReport {
        user,
        action,
        devices,
        transitions,
    })
}

async fn put_user_override(
    State(state): State<AdminState>,
    Extension(operator): Extension<Operator>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Json<UserOverrideReport>, ApiError> {
    let user = name_in_path(path)?;
    let (action, reason) = override_action(request).await?;
    Ok(set_user_override(
        &state,
        &operator,
        &user,
        Some(action),
        reason,
    ))
}

async fn delete_user_override(
    State(state): State<AdminState>,
    Extension(operator): Extension<Operator>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Json<UserOverrideReport>, ApiError> {
    let user = name_in_path(path)?;
    let reason = clear_reason(request).await?;
    Ok(set_user_override(&state, &operator, &user, None, reason))
}

// ---------------------------------------------------------------------------------------------
// The console's webhook

#[derive(Serialize)]
struct EventReport {
    /// Changes the event carried.
    changes: usize,
    transitions: Vec<Transition>,
}

/// `sha256=<hex>` → the 32 bytes.
fn parse_signature(value: &[u8]) -> Option<[u8; 32]> {
    let (scheme, hex) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"sha256=") || hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn signature_matches(key: &[u8], body: &[u8], signature: &[u8; 32]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(signature).is_ok()
}

async fn compliance_event(
    State(state): State<AdminState>,
    request: Request,
) -> Result<Json<EventReport>, ApiError> {
    let received = receive_event(&state, request).await;
    if let Some(metrics) = state.compliance.metrics() {
        metrics.webhook_event(match &received {
            Ok(_) => WebhookOutcome::Applied,
            Err((outcome, _)) => *outcome,
        });
    }
    received.map_err(|(_, error)| error)
}

/// The webhook's work; an error says whether the event was refused or malformed.
async fn receive_event(
    state: &AdminState,
    request: Request,
) -> Result<Json<EventReport>, (WebhookOutcome, ApiError)> {
    let sender = remote(&request);
    let refused = |why: &'static str| {
        tracing::warn!(%sender, why, "compliance change event refused");
        (
            WebhookOutcome::Refused,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "webhook secret missing or wrong, or bad signature",
            ),
        )
    };
    // 1. The secret, before anything of the body is read.
    let Some(secret) = &state.webhook else {
        return Err(refused("no webhook secret is configured"));
    };
    let given = request
        .headers()
        .get(WEBHOOK_SECRET_HEADER)
        .map(HeaderValue::as_bytes);
    match given {
        Some(given) if same_secret(given, &secret.digest) => {}
        Some(_) => return Err(refused("wrong secret")),
        None => return Err(refused("no secret")),
    }
    let signature = match request.headers().get(SIGNATURE_HEADER) {
        None => None,
        Some(value) => match parse_signature(value.as_bytes()) {
            Some(signature) => Some(signature),
            None => return Err(refused("malformed signature header")),
        },
    };
    // 2. The body, capped.
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, MAX_EVENT_BODY)
        .await
        .map_err(|error| {
            tracing::warn!(%sender, error = %error.message, "compliance change event refused");
            (WebhookOutcome::Refused, error)
        })?;
    // 3. The signature of the raw body, when the sender signs.
    if let Some(signature) = signature
        && !signature_matches(&secret.key, &body, &signature)
    {
        return Err(refused("signature does not match the body"));
    }
    // 4. Only now is the body parsed; a malformed event changes nothing.
    let changes = (state.parser)(&body).map_err(|error| {
        tracing::warn!(%sender, %error, "malformed compliance change event");
        (
            WebhookOutcome::Malformed,
            ApiError::bad_request(format!("malformed change event: {error}")),
        )
    })?;
    let count = changes.len();
    let transitions = state.compliance.apply(changes, ChangeSource::ChangeEvent);
    tracing::info!(
        %sender,
        operator = "uem-webhook",
        changes = count,
        transitions = transitions.len(),
        "compliance change event applied"
    );
    Ok(Json(EventReport {
        changes: count,
        transitions,
    }))
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// `GET /metrics`: the registry in the OpenMetrics text format; `404` without one.
async fn metrics(State(state): State<AdminState>) -> Result<Response, ApiError> {
    match &state.registry {
        Some(registry) => Ok(ews_proxy_core::metrics::exposition(registry).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no metrics registry is configured",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_taken_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer_token(&headers), Some(&b"abc"[..]));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn secrets_compare_by_digest() {
        let expected = digest(b"s3cret");
        assert!(same_secret(b"s3cret", &expected));
        assert!(!same_secret(b"s3cre", &expected));
        assert!(!same_secret(b"", &expected));
    }

    #[test]
    fn signatures_parse_as_sha256_hex() {
        let hex = "00ff".repeat(16);
        let parsed = parse_signature(format!("sha256={hex}").as_bytes()).unwrap();
        assert_eq!(parsed[..2], [0x00, 0xff]);
        assert_eq!(parse_signature(b"sha256=zz"), None);
        assert_eq!(parse_signature(format!("sha1={hex}").as_bytes()), None);
        assert_eq!(parse_signature("sha256=é".as_bytes()), None);
    }

    #[test]
    fn page_queries_are_checked_and_bounded() {
        let page = PageQuery::parse(None, false).unwrap();
        assert_eq!((page.limit, page.offset), (DEFAULT_PAGE_LIMIT, 0));
        let page = PageQuery::parse(Some("limit=5000&offset=3"), false).unwrap();
        assert_eq!((page.limit, page.offset), (MAX_PAGE_LIMIT, 3));
        assert!(PageQuery::parse(Some("limit=0"), false).is_err());
        assert!(PageQuery::parse(Some("limit=-1"), false).is_err());
        assert!(PageQuery::parse(Some("state=blocked"), false).is_err());
        let page = PageQuery::parse(Some("state=blocked"), true).unwrap();
        assert_eq!(page.state, Some(false));
        assert!(PageQuery::parse(Some("state=maybe"), true).is_err());
    }
}
