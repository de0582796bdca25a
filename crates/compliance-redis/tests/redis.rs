//! Two nodes sharing a view through a real `redis-server`: what one does, the other sees, and
//! a Redis that lost its data is seeded again from a node's view instead of emptying theirs.

mod support;

use compliance_policy::device::{DeviceRecord, Enrollment};
use compliance_policy::policy::Override;
use compliance_policy::state::{ChangeSource, Compliance};
use compliance_policy::view::Change;
use compliance_redis::{RedisMetrics, RedisSettings, SharedView};
use seg_testbed::pki::TestPki;
use seg_testbed::redis::RedisServer;
use support::{phone, scrape, wait_for};

/// A node on `redis`: its state and the stop of its shared view.
fn node(redis: &RedisServer, name: &str) -> (Compliance, tokio::sync::oneshot::Sender<()>) {
    let (compliance, _, _, stop) = node_with_metrics(redis, name);
    (compliance, stop)
}

/// [`node`], with its shared view's handle and metrics.
fn node_with_metrics(
    redis: &RedisServer,
    name: &str,
) -> (
    Compliance,
    SharedView,
    RedisMetrics,
    tokio::sync::oneshot::Sender<()>,
) {
    node_with(redis, name, |_| {})
}

/// [`node_with_metrics`], with `configure` changing its settings first.
fn node_with(
    redis: &RedisServer,
    name: &str,
    configure: impl FnOnce(&mut RedisSettings),
) -> (
    Compliance,
    SharedView,
    RedisMetrics,
    tokio::sync::oneshot::Sender<()>,
) {
    let node = support::spawn_node(redis.url(), name, configure);
    (node.compliance, node.shared, node.metrics, node.stop)
}

/// The first node on `redis`, once it leads (only the leader's syncs are written).
async fn leader(redis: &RedisServer, name: &str) -> (Compliance, tokio::sync::oneshot::Sender<()>) {
    let (compliance, shared, _, stop) = node_with_metrics(redis, name);
    wait_for("the first node to lead", || shared.status().leader).await;
    (compliance, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_is_seeded_again_from_a_node() {
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh)");
    let (a, _stop_a) = leader(&redis, "a").await;
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
    let (a, _stop_a) = leader(&redis, "a").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_lock_cannot_overwrite_its_successors_view() {
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh)");
    let (a, a_shared, a_metrics, _stop_a) = node_with_metrics(&redis, "a");
    wait_for("a to lead", || a_shared.status().leader).await;
    let (b, _stop_b) = node(&redis, "b");
    a.replace_all(vec![phone("A1"), phone("A2")], ChangeSource::FullSync);
    wait_for("b to read a's full sync", || b.view().len() == 2).await;

    // a is paused past its lock's expiry; meanwhile the lock expires and another node takes it
    // (a new term: what the lock script does, done here directly so that a cannot notice).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let term: u64 = redis::cmd("INCR")
        .arg("{seg:compliance}:leader-term")
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg("{seg:compliance}:leader")
        .arg(format!("{term} b"))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let version: u64 = redis::cmd("GET")
        .arg("{seg:compliance}:version")
        .query_async(&mut conn)
        .await
        .unwrap();

    // a wakes up and finishes its sync with what it fetched before: refused.
    let stale = DeviceRecord {
        enrollment: Enrollment::EnterpriseWiped,
        ..phone("A1")
    };
    a.replace_all(vec![stale], ChangeSource::FullSync);
    wait_for("a to read the shared view again", || {
        a.view().len() == 2 && a.decide(Some("A1"), None).is_allowed()
    })
    .await;
    wait_for("a to step down", || !a_shared.status().leader).await;
    let stored: (u64, usize) = redis::pipe()
        .get("{seg:compliance}:version")
        .hlen("{seg:compliance}:records")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored,
        (version, 2),
        "the stale sync left the store as it was"
    );
    assert_eq!(b.view().len(), 2);
    assert!(b.decide(Some("A1"), None).is_allowed());
    let scraped = scrape(&a_metrics);
    assert!(
        scraped.contains("seg_compliance_redis_fenced_total 1"),
        "{scraped}"
    );

    // Changes that are not syncs (a webhook event, an override) are any node's to write.
    a.set_device_override("A2", Some(Override::Block));
    wait_for("b to see a's override", || {
        !b.decide(Some("A2"), None).is_allowed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_view_over_tls_and_verify_redis_against_their_trust_store() {
    let pki = TestPki::in_memory(&[]).unwrap();
    let (cert, key) = pki.issue_server_cert(&["localhost", "127.0.0.1"]).unwrap();
    let redis = RedisServer::start_tls(&cert, &key)
        .expect("redis-server with TLS (Debian's is built with it; scripts/install-deps.sh)");
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let ca = redis.dir().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let trusting = |settings: &mut RedisSettings| settings.trust_store = Some(ca.clone());

    // Without the trust store, Redis's certificate (from a private CA) is refused.
    let (stranger, _, stranger_metrics, _stop_stranger) = node_with(&redis, "stranger", |_| {});
    let (a, a_shared, _, _stop_a) = node_with(&redis, "a", trusting);
    wait_for("a to lead over TLS", || a_shared.status().leader).await;
    let (b, b_shared, _, _stop_b) = node_with(&redis, "b", trusting);
    a.replace_all(vec![phone("A1"), phone("A2")], ChangeSource::FullSync);
    wait_for("b to read a's full sync over TLS", || b.view().len() == 2).await;
    b.apply(
        vec![Change::Upsert(DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone("A1")
        })],
        ChangeSource::ChangeEvent,
    );
    wait_for("a to see b's wipe over TLS", || {
        !a.decide(Some("A1"), None).is_allowed()
    })
    .await;
    assert!(b_shared.status().redis_up);

    assert!(!stranger.view().is_loaded(), "the stranger read nothing");
    assert!(
        !scrape(&stranger_metrics).contains("seg_compliance_redis_errors_total 0"),
        "the stranger's connections failed"
    );
}

/// `cmdstat_<command>`'s `calls` in Redis's `INFO commandstats`.
async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_bigger_than_a_batch_is_staged_in_batches_and_replaces_the_view_at_once() {
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh)");
    let (a, a_shared, _, _stop_a) = node_with(&redis, "a", |settings| {
        settings.full_sync_batch = 100;
    });
    wait_for("a to lead", || a_shared.status().leader).await;
    let (b, _stop_b) = node(&redis, "b");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let hsets_before = calls(&mut conn, "hset").await;

    let phones = |count: usize, prefix: &str| {
        (0..count)
            .map(|i| phone(&format!("{prefix}{i:05}")))
            .collect::<Vec<_>>()
    };
    a.replace_all(phones(1_050, "P"), ChangeSource::FullSync);
    wait_for("b to read a's 1,050 devices", || b.view().len() == 1_050).await;
    let hsets = calls(&mut conn, "hset").await - hsets_before;
    assert!(
        hsets >= 11,
        "1,050 records in batches of 100 take 11 HSETs, {hsets} seen"
    );
    let records: usize = redis::cmd("HLEN")
        .arg("{seg:compliance}:records")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(records, 1_050);
    let staging: Vec<String> = redis::cmd("KEYS")
        .arg("{seg:compliance}:staging*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(staging.is_empty(), "no staging left behind: {staging:?}");

    // A smaller full sync replaces the whole view: none of the old devices is left.
    a.replace_all(phones(300, "Q"), ChangeSource::FullSync);
    wait_for("b to hold only the 300 new devices", || {
        let view = b.view();
        view.len() == 300 && view.device("Q00299").is_some() && view.device("P00000").is_none()
    })
    .await;
    let records: usize = redis::cmd("HLEN")
        .arg("{seg:compliance}:records")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(records, 300);
}

/// The record of `device` in the store, as written (JSON), if any.
async fn stored_record(conn: &mut redis::aio::MultiplexedConnection, device: &str) -> String {
    let record: Option<String> = redis::cmd("HGET")
        .arg("{seg:compliance}:records")
        .arg(device)
        .query_async(conn)
        .await
        .unwrap();
    record.unwrap_or_default()
}

async fn stored_version(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("GET")
        .arg("{seg:compliance}:version")
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits until the store's version is `version`.
async fn until_version(conn: &redis::aio::MultiplexedConnection, what: &str, version: u64) {
    seg_testbed::harness::wait_until(support::STEP, what, || {
        let mut conn = conn.clone();
        async move { stored_version(&mut conn).await >= version }
    })
    .await
    .unwrap();
}

/// The window of docs/scale-out.md "A sync's answer and a change event in flight": another
/// node's event is in the store, the leader has not read it yet (its replies from Redis are
/// held back by a stalled proxy), and it writes a sync's answer fetched before the event. The
/// event stands, in the store and on every node: for a delta sync and for a full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_answer_written_before_its_leader_read_another_nodes_event_does_not_undo_it() {
    use seg_testbed::fault_proxy::{Direction, Fault, FaultProxy};
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh)");
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let faults = proxy.handle();
    // A long lock: the leader's renewals stall with its reads, and it must lead throughout.
    // (A full sync small enough to be written in one call: a staged one waits for replies.)
    let support::Node {
        compliance: leader,
        shared: leader_shared,
        metrics: leader_metrics,
        stop: _stop_leader,
    } = support::spawn_node(format!("redis://{}", proxy.addr()), "leader", |settings| {
        settings.lock_ttl = std::time::Duration::from_secs(60);
    });
    wait_for("the first node to lead", || leader_shared.status().leader).await;
    let (other, _, _, _stop_other) = node_with_metrics(&redis, "other");
    leader.replace_all(
        vec![phone("A1"), phone("A2"), phone("A3")],
        ChangeSource::FullSync,
    );
    wait_for("the other node to read the full sync", || {
        other.view().len() == 3
    })
    .await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let wiped = |id: &str| DeviceRecord {
        enrollment: Enrollment::EnterpriseWiped,
        ..phone(id)
    };

    for full in [false, true] {
        let device = if full { "A2" } else { "A1" };
        let settled = stored_version(&mut conn).await;
        wait_for("the leader to read everything written so far", || {
            leader_shared.status().version == settled
        })
        .await;
        let fetch_started = std::time::Instant::now();
        faults.set(Direction::ServerToClient, Fault::StallAfter(0));

        // The other node's event reaches the store; the leader cannot read it.
        other.apply(
            vec![Change::Upsert(wiped(device))],
            ChangeSource::ChangeEvent,
        );
        until_version(&conn, "the event to be written", settled + 1).await;
        assert!(leader.decide(Some(device), None).is_allowed());

        // The leader's sync answer, fetched before the event, still says compliant.
        if full {
            let fetched = ["A1", "A2", "A3"]
                .into_iter()
                .map(|id| std::sync::Arc::new(phone(id)))
                .collect();
            leader.replace_all_fetched(fetched, ChangeSource::FullSync, fetch_started);
        } else {
            leader.apply_fetched(
                vec![Change::Upsert(phone(device)), Change::Upsert(wiped("A3"))],
                ChangeSource::DeltaSync,
                fetch_started,
            );
        }
        until_version(&conn, "the sync's answer to be written", settled + 2).await;
        let record = stored_record(&mut conn, device).await;
        assert!(
            record.contains("enterprise_wiped"),
            "the sync's answer undid the event in the store: {record}"
        );
        faults.set(Direction::ServerToClient, Fault::Pass);

        let written = stored_version(&mut conn).await;
        wait_for("both nodes to read everything", || {
            leader_shared.status().version >= written && other.view().len() == 3
        })
        .await;
        for (name, node) in [("leader", &leader), ("other", &other)] {
            assert!(
                !node.decide(Some(device), None).is_allowed(),
                "{name} allows {device} again after the sync's answer"
            );
        }
        // The rest of the answer was written: A3 wiped by the delta, compliant again by the
        // full sync.
        let a3 = stored_record(&mut conn, "A3").await;
        assert_eq!(a3.contains("enterprise_wiped"), !full, "{a3}");
        assert_eq!(other.decide(Some("A3"), None).is_allowed(), full);
    }
    let scraped = scrape(&leader_metrics);
    assert!(
        scraped.contains("seg_compliance_redis_held_back_total 2"),
        "{scraped}"
    );

    // Once the leader has read the event, its next answer about the device is written.
    let settled = stored_version(&mut conn).await;
    wait_for("the leader to read everything", || {
        leader_shared.status().version == settled
    })
    .await;
    leader.apply_fetched(
        vec![Change::Upsert(phone("A1"))],
        ChangeSource::DeltaSync,
        std::time::Instant::now(),
    );
    wait_for("the other node to allow A1 again", || {
        other.decide(Some("A1"), None).is_allowed()
    })
    .await;
}
