//! Two nodes sharing a view through a real `redis-server`: what one does, the other sees, and
//! a Redis that lost its data is seeded again from a node's view instead of emptying theirs.

use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use compliance_policy::policy::{Override, PolicySettings};
use compliance_policy::state::{ChangeSource, Compliance};
use compliance_policy::view::Change;
use compliance_redis::{RedisMetrics, RedisSettings, SharedView};
use seg_testbed::harness::wait_until;
use seg_testbed::redis::RedisServer;
use std::time::Duration;

const STEP: Duration = Duration::from_secs(10);

fn phone(id: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: DeviceId::new(id),
        user: Some("alice@test.local".into()),
        enrollment: Enrollment::Enrolled,
        compliance: ComplianceStatus::Compliant,
        managed: true,
        ..Default::default()
    }
}

/// A node on `redis`: its state and the stop of its shared view.
fn node(redis: &RedisServer, name: &str) -> (Compliance, tokio::sync::oneshot::Sender<()>) {
    let compliance = Compliance::new(PolicySettings::default());
    let mut settings = RedisSettings::new(redis.url());
    settings.node_name = name.into();
    settings.lock_ttl = Duration::from_millis(500);
    let shared = SharedView::new(compliance.clone(), settings, RedisMetrics::new()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(shared.run(async move {
        let _ = stopped.await;
    }));
    (compliance, stop)
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    wait_until(STEP, what, || {
        let holds = condition();
        async move { holds }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_is_seeded_again_from_a_node() {
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh)");
    let (a, _stop_a) = node(&redis, "a");
    let (b, _stop_b) = node(&redis, "b");
    a.replace_all(vec![phone("A1"), phone("A2")], ChangeSource::FullSync);
    wait_for("b to read a's full sync", || b.view().len() == 2).await;
    b.apply(
        vec![Change::Upsert(DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone("A1")
        })],
        ChangeSource::ChangeEvent,
    );
    wait_for("a to see b's wipe", || {
        !a.decide(Some("A1"), None).is_allowed()
    })
    .await;

    // Redis loses everything under live connections.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    // A change made now must not become the whole view: the store is seeded with a's view.
    a.set_device_override("A2", Some(Override::Block));
    wait_for("b to see a's override", || {
        !b.decide(Some("A2"), None).is_allowed()
    })
    .await;
    assert_eq!(b.view().len(), 2, "b still knows every device");
    assert!(
        !b.decide(Some("A1"), None).is_allowed(),
        "the wipe still holds"
    );
    let records: usize = redis::cmd("HLEN")
        .arg("{seg:compliance}:records")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(records, 2, "the store holds every device again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_from_the_log_are_caught_up_by_reading_everything() {
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh)");
    let (a, _stop_a) = node(&redis, "a");
    let (b, _stop_b) = node(&redis, "b");
    a.replace_all(vec![phone("A1"), phone("A2")], ChangeSource::FullSync);
    wait_for("b to read a's full sync", || b.view().len() == 2).await;

    // A change whose log entry is gone (trimmed) before b could read it, written directly:
    // b learns of it from the version alone and reads the whole view again.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let wiped = serde_json::to_string(&DeviceRecord {
        enrollment: Enrollment::EnterpriseWiped,
        ..phone("A2")
    })
    .unwrap();
    let () = redis::pipe()
        .atomic()
        .hset("{seg:compliance}:records", "A2", wiped)
        .ignore()
        .incr("{seg:compliance}:version", 1)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_for("b to read the view again", || {
        !b.decide(Some("A2"), None).is_allowed()
    })
    .await;
    wait_for("a too", || !a.decide(Some("A2"), None).is_allowed()).await;
}
