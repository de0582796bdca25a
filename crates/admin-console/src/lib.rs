//! The gateway's admin console: web pages for its operators, served by the admin listener at
//! `/ui/`.
//!
//! It sits beside the compliance admin API (`compliance_policy::admin`) on the same listener and
//! works on the same [`Compliance`] state: the overview (readiness, UEM sync, view size, blocked
//! count, decisions per second, the reachability of Redis and the KDC as [probed](health), version),
//! a device search, a device's page with its UEM record, decision, audit trail
//! and forms to allow, block or clear an override, a user's page with the same for the user's
//! override, the audit trail, the gateway's effective
//! configuration (as [given](Console::with_configuration), secrets already redacted), and live
//! decision changes by server-sent events. Pages are rendered on the server ([`maud`]); the one
//! style sheet and the few lines of script are compiled into the binary. Nothing is fetched from
//! elsewhere.
//!
//! Operators sign in at `/ui/login` with the admin token or a named operator's token and get a
//! session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` when [configured](ConsoleSettings::secure_cookies));
//! every form that changes state carries the session's CSRF token, and the sign-in form its own
//! ([`session::SignInGuard`]). See `docs/console.md`.
//!
//! ```
//! use admin_console::{Console, ConsoleSettings};
//! use axum::body::Body;
//! use compliance_policy::policy::PolicySettings;
//! use compliance_policy::state::Compliance;
//! use http::{Request, StatusCode, header};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let compliance = Compliance::new(PolicySettings::default());
//! let settings = ConsoleSettings::new("1.2.3")
//!     .with_admin_token("an-admin-token-of-16+")
//!     .with_operator("carol", "carols-own-token-0001");
//! let app = Console::new(compliance, settings).router();
//!
//! // Not signed in: sent to the sign-in page.
//! let response = app.clone().oneshot(Request::get("/ui/").body(Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::SEE_OTHER);
//! assert_eq!(response.headers()[header::LOCATION], "/ui/login");
//!
//! // Carol opens the sign-in form: a cookie, and the form's CSRF field that goes with it.
//! let response = app.clone().oneshot(Request::get("/ui/login").body(Body::empty()).unwrap()).await.unwrap();
//! let form_cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
//! let form_cookie = form_cookie.split(';').next().unwrap().to_owned();
//! let page = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
//! let page = String::from_utf8(page.to_vec()).unwrap();
//! let csrf = page.split(r#"name="csrf" value=""#).nth(1).unwrap().split('"').next().unwrap();
//!
//! // She signs in with it and gets a session cookie.
//! let request = Request::post("/ui/login")
//!     .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
//!     .header(header::COOKIE, form_cookie)
//!     .body(Body::from(format!("csrf={csrf}&token=carols-own-token-0001")))
//!     .unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::SEE_OTHER);
//! let cookie = response.headers().get_all(header::SET_COOKIE).iter()
//!     .map(|value| value.to_str().unwrap())
//!     .find(|value| value.starts_with("seg_console="))
//!     .unwrap();
//! assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
//! let session = cookie.split(';').next().unwrap().to_owned();
//!
//! let request = Request::get("/ui/").header(header::COOKIE, session).body(Body::empty()).unwrap();
//! assert_eq!(app.oneshot(request).await.unwrap().status(), StatusCode::OK);
//! # }
//! ```

mod handlers;
pub mod health;
mod pages;
mod search;
pub mod session;

use audit_trail::AuditSink;
use audit_trail::store::Store;
use axum::Router;
use axum::response::{IntoResponse, Response};
use compliance_policy::state::Compliance;
use compliance_policy::sync::SyncHandle;
use health::{DecisionRate, Probe};
use http::StatusCode;
use session::{Credentials, Sessions, SignInGuard};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How long a session lasts when the settings name no time: a working day.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The name of the session cookie.
pub const SESSION_COOKIE: &str = "seg_console";

/// The name of the sign-in form's cookie (its CSRF protection before a session exists; see
/// [`session::SignInGuard`]), sent only to `/ui/login`.
pub const SIGN_IN_COOKIE: &str = "seg_console_sign_in";

/// How long a sign-in form stays usable in the browser that fetched it.
pub const SIGN_IN_FORM_TTL: Duration = Duration::from_secs(12 * 3600);

/// Devices per page of the device list.
pub const DEVICES_PER_PAGE: usize = 50;

/// The longest reason an override form may give, in bytes (as the admin API).
pub const MAX_REASON_LEN: usize = 1024;

/// What went wrong with a console request; each answers with its own status and an HTML page.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// A form that changes state came without its session's CSRF token, or with another: `403`.
    #[error("the form's CSRF token is missing or wrong")]
    CsrfMismatch,
    /// A form or query could not be read: `400`.
    #[error("bad form: {0}")]
    BadForm(String),
    /// The request body is larger than a form may be: `413`.
    #[error("the form is too large")]
    FormTooLarge,
    /// No such device (unknown to the console and without an override): `404`.
    #[error("no such device")]
    UnknownDevice,
    /// The audit trail could not be read: `500`.
    #[error("the audit trail cannot be read")]
    Audit(#[source] audit_trail::AuditError),
    /// A background task of the request failed: `500`.
    #[error("the request's work failed")]
    Task(#[source] tokio::task::JoinError),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::CsrfMismatch => StatusCode::FORBIDDEN,
            ConsoleError::BadForm(_) => StatusCode::BAD_REQUEST,
            ConsoleError::FormTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ConsoleError::UnknownDevice => StatusCode::NOT_FOUND,
            ConsoleError::Audit(_) | ConsoleError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %error_chain(&self), "console request failed");
        }
        pages::with_security_headers(
            (status, pages::error_page(status, &self.to_string())).into_response(),
        )
    }
}

/// `error` and its causes, joined by `: `.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Who may sign in, for how long, and what the console shows about the gateway.
#[derive(Clone)]
pub struct ConsoleSettings {
    version: String,
    admin_token: Option<String>,
    operators: Vec<(String, String)>,
    session_ttl: Duration,
    secure_cookies: bool,
}

impl ConsoleSettings {
    /// Settings for a gateway of `version`: nobody can sign in yet, sessions last
    /// [`DEFAULT_SESSION_TTL`], cookies are not `Secure` (the admin listener is plain HTTP).
    pub fn new(version: impl Into<String>) -> Self {
        ConsoleSettings {
            version: version.into(),
            admin_token: None,
            operators: Vec::new(),
            session_ttl: DEFAULT_SESSION_TTL,
            secure_cookies: false,
        }
    }

    /// The admin token (`admin.token`) signs in, as the operator `admin-token`.
    pub fn with_admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// `token` signs in as the operator `name` (`admin.operators`), the actor of the overrides
    /// they make.
    pub fn with_operator(mut self, name: impl Into<String>, token: impl Into<String>) -> Self {
        self.operators.push((name.into(), token.into()));
        self
    }

    /// Sessions last `ttl` from sign-in (`admin.session_ttl`).
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// The session cookie is marked `Secure` (`admin.secure_cookies`): browsers then send it only
    /// over HTTPS. Turn it on when the console is reached over TLS.
    pub fn secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }
}

impl fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("version", &self.version)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "operators",
                &self.operators.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("session_ttl", &self.session_ttl)
            .field("secure_cookies", &self.secure_cookies)
            .finish()
    }
}

/// The console: its state and its [router](Console::router). Cheap to clone; clones share the
/// sessions.
#[derive(Clone)]
pub struct Console {
    compliance: Compliance,
    sync: Option<SyncHandle>,
    audit: Option<(Store, AuditSink)>,
    credentials: Credentials,
    sessions: Sessions,
    sign_in: SignInGuard,
    version: String,
    secure_cookies: bool,
    configuration: Option<Arc<str>>,
    decision_rate: Option<Arc<DecisionRate>>,
    probes: Vec<(Arc<str>, Probe)>,
    blocked_count: search::BlockedCount,
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("compliance", &self.compliance)
            .field("sync", &self.sync.is_some())
            .field("audit", &self.audit.is_some())
            .field("credentials", &self.credentials)
            .field("sessions", &self.sessions)
            .field("version", &self.version)
            .field("secure_cookies", &self.secure_cookies)
            .field("decision_rate", &self.decision_rate)
            .field(
                "probes",
                &self.probes.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Console {
    /// The console over `compliance`, with `settings`.
    pub fn new(compliance: Compliance, settings: ConsoleSettings) -> Self {
        let credentials = Credentials::new(
            settings.admin_token.as_deref(),
            settings
                .operators
                .iter()
                .map(|(n, t)| (n.as_str(), t.as_str())),
        );
        if credentials.is_empty() {
            tracing::warn!(
                "the admin console has no admin.token and no admin.operators: nobody can sign in"
            );
        }
        let decision_rate = compliance.metrics().map(DecisionRate::of);
        Console {
            compliance,
            sync: None,
            audit: None,
            credentials,
            sessions: Sessions::new(settings.session_ttl),
            sign_in: SignInGuard::new(),
            version: settings.version,
            secure_cookies: settings.secure_cookies,
            configuration: None,
            decision_rate,
            probes: Vec::new(),
            blocked_count: search::BlockedCount::default(),
        }
    }

    /// The syncer whose state the overview shows.
    pub fn with_sync(mut self, sync: SyncHandle) -> Self {
        self.sync = Some(sync);
        self
    }

    /// The audit trail: the device and audit pages read `store`, and the overrides made on the
    /// console are recorded through `sink` with the signed-in operator as their actor.
    pub fn with_audit(mut self, store: Store, sink: AuditSink) -> Self {
        self.audit = Some((store, sink));
        self
    }

    /// The gateway's effective configuration, shown as given on `/ui/config` (escaped, never
    /// interpreted). The caller renders it and redacts its secrets: the gateway passes what
    /// `seg-proxy check-config` prints. Without it the page says that none was given.
    pub fn with_configuration(mut self, text: impl Into<String>) -> Self {
        self.configuration = Some(Arc::from(text.into()));
        self
    }

    /// The overview shows whether `name` (e.g. `Redis`, `KDC`) can be reached, as `probe`
    /// says each time it is shown (for at most [`health::PROBE_TIMEOUT`]). In the order given.
    pub fn with_reachability(mut self, name: impl Into<String>, probe: Probe) -> Self {
        self.probes.push((Arc::from(name.into()), probe));
        self
    }

    /// The open sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The console's routes, every one under `/ui`, to merge into the admin listener's router.
    /// It has no fallback of its own.
    ///
    /// When the compliance state has [metrics](Compliance::with_metrics), this also starts (on
    /// the current Tokio runtime) the task that reads their decision count once a second for
    /// the overview's decisions per second; it ends once the router is dropped.
    pub fn router(self) -> Router {
        if let Some(rate) = &self.decision_rate {
            DecisionRate::keep_sampling(rate);
        }
        handlers::router(self)
    }
}

#[cfg(test)]
mod tests;
