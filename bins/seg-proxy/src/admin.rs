//! What the admin listener serves: the compliance admin API when `[compliance]` is configured,
//! else only health, readiness (a plain EWS proxy is ready as soon as it listens) and metrics.
//! `/metrics` is open either way, and serves the gateway's one registry.

use crate::config::Config;
use axum::Router;
use axum::routing::get;
use compliance_policy::admin::AdminState;
use compliance_policy::state::Compliance;
use compliance_policy::sync::SyncHandle;
use ews_proxy_core::server::ConnectionInfo;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The admin router for this configuration, serving `registry` on `/metrics`.
pub fn router(
    config: &Config,
    compliance: Option<&(Compliance, SyncHandle)>,
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
    // axum's extractors read the peer address as `ConnectInfo`; the listener records it as
    // `ConnectionInfo`. The webhook logs who sent each event with it.
    compliance_policy::admin::router(state).layer(tower::util::MapRequestLayer::new(
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
