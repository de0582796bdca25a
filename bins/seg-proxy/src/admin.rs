//! What the admin listener serves: the compliance admin API when `[compliance]` is configured
//! (with the audit trail's `/audit` and `/audit/export` behind the same token when `[audit]`
//! is) and the admin console at `/ui/` (signing in with `admin.token` or `admin.operators`),
//! else only health, readiness (a plain EWS proxy is ready as soon as it listens) and
//! metrics. `/metrics` is open either way, and serves the gateway's one registry.

use crate::config::Config;
use admin_console::{Console, ConsoleSettings};
use audit_trail::AuditTrail;
use audit_trail::entry::Record;
use axum::Router;
use axum::routing::get;
use compliance_policy::admin::AdminState;
use compliance_policy::state::Compliance;
use compliance_policy::sync::SyncHandle;
use ews_proxy_core::server::ConnectionInfo;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The admin router for this configuration, serving `registry` on `/metrics`, and `audit`'s
/// queries (recording the overrides made through it there).
pub fn router(
    config: &Config,
    compliance: Option<&(Compliance, SyncHandle)>,
    audit: Option<&AuditTrail>,
    registry: Arc<Registry>,
) -> Router {
    let Some((compliance, sync)) = compliance else {
        return Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(|| async { "ready: plain EWS proxy, no compliance view to wait for" }),
            )
            .route(
                "/metrics",
                get(move || async move { ews_proxy_core::metrics::exposition(&registry) }),
            );
    };
    let mut state = AdminState::new(
        compliance.clone(),
        compliance_policy::uem::parse_change_event,
    )
    .with_sync(sync.clone())
    .with_registry(registry);
    if let Some(token) = &config.admin.token {
        state = state.with_admin_token(token);
    }
    if let Some(secret) = config
        .compliance
        .as_ref()
        .and_then(|c| c.webhook_secret.as_ref())
    {
        state = state.with_webhook_secret(secret);
    }
    let audit_routes = audit.map(|audit| {
        let sink = audit.sink();
        state = state.clone().with_audit(move |change| {
            sink.record(Record::override_change(change));
        });
        audit_trail::api::router(audit.store().clone(), &state)
    });
    let mut router = compliance_policy::admin::router(state);
    if let Some(audit_routes) = audit_routes {
        router = router.merge(audit_routes);
    }
    router = router.merge(console(config, compliance, sync, audit).router());
    // axum's extractors read the peer address as `ConnectInfo`; the listener records it as
    // `ConnectionInfo`. The webhook logs who sent each event with it.
    router.layer(tower::util::MapRequestLayer::new(
        |mut request: http::Request<axum::body::Body>| {
            if let Some(info) = request.extensions().get::<ConnectionInfo>().copied() {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(info.remote_addr()));
            }
            request
        },
    ))
}

/// The admin console over `compliance`: signing in with `admin.token` or an operator's token,
/// showing `sync` and `config` (redacted as `check-config` prints it), reading and writing
/// `audit` when configured.
fn console(
    config: &Config,
    compliance: &Compliance,
    sync: &SyncHandle,
    audit: Option<&AuditTrail>,
) -> Console {
    let mut settings = ConsoleSettings::new(env!("CARGO_PKG_VERSION"))
        .session_ttl(config.admin.session_ttl)
        .secure_cookies(config.admin.secure_cookies);
    if let Some(token) = &config.admin.token {
        settings = settings.with_admin_token(token);
    }
    for operator in &config.admin.operators {
        settings = settings.with_operator(&operator.name, &operator.token);
    }
    let console = Console::new(compliance.clone(), settings)
        .with_sync(sync.clone())
        .with_configuration(config.to_redacted_toml());
    match audit {
        Some(audit) => console.with_audit(audit.store().clone(), audit.sink()),
        None => console,
    }
}
