//! What the admin listener serves: the compliance admin API when `[compliance]` is configured
//! (with the audit trail's `/audit` and `/audit/export` behind the same token when `[audit]`
//! is) and the admin console at `/ui/` (signing in with `admin.token` or `admin.operators`),
//! else only health, readiness (a plain EWS proxy is ready as soon as it listens) and
//! metrics. `/metrics` is open either way, and serves the gateway's one registry.
//!
//! The console's overview shows the reachability of Redis (with `compliance.backend = "redis"`:
//! the shared view's own `seg_compliance_redis_up`, which says whether Redis answered its last
//! command) and of the KDC (with `cba-kcd`: a TCP connection to the KDCs of `auth.kcd.krb5_conf`,
//! tried in order, each for at most a second).
//!
//! With `compliance.redis_not_ready_when_down`, `/readyz` also answers `503` while that gauge
//! says Redis is unreachable, so that a load balancer leaves the node out meanwhile.

use crate::config::Config;
use admin_console::health::{Reachability, probe};
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
use std::time::Duration;

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
    .with_registry(registry.clone());
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
    router = router.merge(console(config, compliance, sync, audit, &registry).router());
    if config
        .compliance
        .as_ref()
        .is_some_and(|c| c.redis_not_ready_when_down)
    {
        router = router.layer(axum::middleware::from_fn_with_state(
            registry.clone(),
            not_ready_while_redis_is_down,
        ));
    }
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
/// showing `sync` and `config` (redacted as `check-config` prints it), the reachability of Redis
/// (read from `registry`) and the KDC when they are configured, reading and writing `audit` when
/// configured.
fn console(
    config: &Config,
    compliance: &Compliance,
    sync: &SyncHandle,
    audit: Option<&AuditTrail>,
    registry: &Arc<Registry>,
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
    let mut console = Console::new(compliance.clone(), settings)
        .with_sync(sync.clone())
        .with_configuration(config.to_redacted_toml());
    if config
        .compliance
        .as_ref()
        .is_some_and(|c| c.backend == crate::config::ComplianceBackend::Redis)
    {
        let registry = registry.clone();
        console = console.with_reachability(
            "Redis",
            probe(move || {
                let up = gauge(&registry, "seg_compliance_redis_up");
                async move { redis_reachability(up) }
            }),
        );
    }
    if let Some(kcd) = config.auth.kcd.as_ref().filter(|_| config.auth.cba_kcd()) {
        let kdcs: Arc<[String]> = match kcd_client::krb5_conf::Krb5Conf::read(&kcd.krb5_conf) {
            Ok(conf) => kdcs_of(conf).into(),
            Err(error) => {
                tracing::warn!(%error, "the console cannot read auth.kcd.krb5_conf to probe the KDC");
                Arc::from([])
            }
        };
        console = console.with_reachability(
            "KDC",
            probe(move || {
                let kdcs = kdcs.clone();
                async move { kdc_reachability(&kdcs, KDC_PROBE_TIMEOUT).await }
            }),
        );
    }
    match audit {
        Some(audit) => console.with_audit(audit.store().clone(), audit.sink()),
        None => console,
    }
}

/// How long the console waits for one KDC to accept a connection.
const KDC_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The value of the gauge `name` (without labels) in `registry`, if it has one.
fn gauge(registry: &Registry, name: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// With `compliance.redis_not_ready_when_down`: `/readyz` answers `503` while the shared view's
/// `seg_compliance_redis_up` gauge (read from `registry`) is not 1, i.e. Redis did not answer
/// its last command (or has not been reached yet); otherwise the request goes on (to the
/// compliance API's `/readyz`, which still requires a loaded view).
async fn not_ready_while_redis_is_down(
    axum::extract::State(registry): axum::extract::State<Arc<Registry>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.uri().path() == "/readyz"
        && gauge(&registry, "seg_compliance_redis_up").is_none_or(|up| up < 1.0)
    {
        return axum::response::IntoResponse::into_response((
            http::StatusCode::SERVICE_UNAVAILABLE,
            [(http::header::CONTENT_TYPE, "application/json")],
            r#"{"error":"redis is unreachable (compliance.redis_not_ready_when_down)"}"#,
        ));
    }
    next.run(request).await
}

/// Redis's reachability from the shared view's `seg_compliance_redis_up` gauge.
fn redis_reachability(up: Option<f64>) -> Reachability {
    match up {
        Some(up) if up >= 1.0 => Reachability::Reachable("it answered the last command".into()),
        Some(_) => Reachability::Unreachable("it did not answer the last command".into()),
        None => Reachability::Unreachable("the shared view reports nothing".into()),
    }
}

/// The KDCs of `conf`, its default realm's first, each as the `host:port` the Kerberos client
/// connects to (port 88 when the file names none).
fn kdcs_of(conf: kcd_client::krb5_conf::Krb5Conf) -> Vec<String> {
    conf.realms_default_first()
        .into_iter()
        .flat_map(|realm| realm.kdcs)
        .map(|kdc| kcd_client::krb5_conf::kdc_socket_address(&kdc))
        .collect()
}

/// Whether one of `kdcs` (`host:port`, tried in order) accepts a TCP connection within
/// `timeout`; the connection is closed at once.
async fn kdc_reachability(kdcs: &[String], timeout: Duration) -> Reachability {
    if kdcs.is_empty() {
        return Reachability::Unreachable("auth.kcd.krb5_conf names no KDC".into());
    }
    let mut failures = Vec::new();
    for kdc in kdcs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(kdc.as_str())).await {
            Ok(Ok(_)) => return Reachability::Reachable(format!("{kdc} accepted a connection")),
            Ok(Err(error)) => failures.push(format!("{kdc}: {error}")),
            Err(_) => failures.push(format!(
                "{kdc}: no connection within {} ms",
                timeout.as_millis()
            )),
        }
    }
    Reachability::Unreachable(failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kdc_that_accepts_is_reachable_and_one_that_refuses_is_not() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listening.local_addr().unwrap().to_string();
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let timeout = Duration::from_secs(5);
        assert_eq!(
            kdc_reachability(&[closed.clone(), open.clone()], timeout).await,
            Reachability::Reachable(format!("{open} accepted a connection"))
        );
        match kdc_reachability(std::slice::from_ref(&closed), timeout).await {
            Reachability::Unreachable(why) => {
                assert!(why.starts_with(&format!("{closed}: ")), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            kdc_reachability(&[], timeout).await,
            Reachability::Unreachable(_)
        ));
    }

    #[test]
    fn kdcs_come_from_krb5_conf_default_realm_first_with_port_88_when_unnamed() {
        let conf = kcd_client::krb5_conf::Krb5Conf::parse(
            "[libdefaults]\n default_realm = CORP.EXAMPLE\n\
             [realms]\n OTHER.EXAMPLE = {\n  kdc = kdc.other.example\n }\n\
             CORP.EXAMPLE = {\n  kdc = 127.0.0.1:8888\n  kdc = kdc2.corp.example\n }\n",
        )
        .unwrap();
        assert_eq!(
            kdcs_of(conf),
            [
                "127.0.0.1:8888",
                "kdc2.corp.example:88",
                "kdc.other.example:88"
            ]
        );
    }

    #[test]
    fn redis_is_reachable_while_the_shared_view_says_it_answers() {
        let mut registry = Registry::default();
        let up = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        registry.register("seg_compliance_redis_up", "up", up.clone());
        up.set(1);
        assert!(matches!(
            redis_reachability(gauge(&registry, "seg_compliance_redis_up")),
            Reachability::Reachable(_)
        ));
        up.set(0);
        assert!(matches!(
            redis_reachability(gauge(&registry, "seg_compliance_redis_up")),
            Reachability::Unreachable(_)
        ));
        assert_eq!(gauge(&registry, "seg_compliance_redis"), None);
    }
}
