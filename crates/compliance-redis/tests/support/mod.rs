//! Helpers shared by this crate's integration tests: a device record, a node of the shared view
//! on a given Redis URL, its metrics as scraped, and waiting for a condition with a deadline.

#![allow(dead_code)] // each test file uses a different subset

use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use compliance_policy::policy::PolicySettings;
use compliance_policy::state::Compliance;
use compliance_redis::{RedisMetrics, RedisSettings, SharedView};
use seg_testbed::harness::wait_until;
use std::time::Duration;

/// How long each awaited step may take: a deadline, not a delay (steps normally take
/// milliseconds). Generous, because a node that failed to connect under a loaded machine
/// retries with backoff: the Cluster test once missed 10 s in a full-suite run beside a soak
/// run and fuzzing, and passed in 2 s alone.
pub const STEP: Duration = Duration::from_secs(30);

/// An enrolled, compliant, managed phone of alice's.
pub fn phone(id: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: DeviceId::new(id),
        user: Some("alice@test.local".into()),
        enrollment: Enrollment::Enrolled,
        compliance: ComplianceStatus::Compliant,
        managed: true,
        ..Default::default()
    }
}

/// A running node of the shared view; it stops when dropped.
pub struct Node {
    /// Its compliance state.
    pub compliance: Compliance,
    /// Its shared view's handle.
    pub shared: SharedView,
    /// Its metrics.
    pub metrics: RedisMetrics,
    /// Dropping it stops the node.
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// A node named `name` on the Redis at `url` (lock ttl 500 ms), `configure` changing its
/// settings first.
pub fn spawn_node(url: String, name: &str, configure: impl FnOnce(&mut RedisSettings)) -> Node {
    let compliance = Compliance::new(PolicySettings::default());
    let mut settings = RedisSettings::new(url);
    settings.node_name = name.into();
    settings.lock_ttl = Duration::from_millis(500);
    configure(&mut settings);
    let metrics = RedisMetrics::new();
    let shared = SharedView::new(compliance.clone(), settings, metrics.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(shared.clone().run(async move {
        let _ = stopped.await;
    }));
    Node {
        compliance,
        shared,
        metrics,
        stop,
    }
}

/// `metrics` as `/metrics` shows them.
pub fn scrape(metrics: &RedisMetrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// Waits until `condition` holds, failing the test after [`STEP`] saying `what` did not happen.
pub async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    wait_until(STEP, what, || {
        let holds = condition();
        async move { holds }
    })
    .await
    .unwrap();
}
