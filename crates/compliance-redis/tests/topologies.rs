//! The shared view over the Redis topologies a URL can name: a master found through Sentinel
//! (followed across a failover) and a Redis Cluster, each made of real `redis-server`
//! processes on loopback.

mod support;

use compliance_policy::device::{DeviceRecord, Enrollment};
use compliance_policy::policy::Override;
use compliance_policy::state::ChangeSource;
use compliance_policy::view::Change;
use seg_testbed::redis::{RedisCluster, RedisSentinel};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{phone, scrape, spawn_node, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_over_sentinel_keep_their_view_through_a_failover_and_follow_the_new_master() {
    let mut group = tokio::task::block_in_place(RedisSentinel::start)
        .expect("redis-server with sentinel (scripts/install-deps.sh)");
    let a = spawn_node(group.url(), "a", |_| {});
    wait_for("a to lead", || a.shared.status().leader).await;
    let b = spawn_node(group.url(), "b", |_| {});
    a.compliance
        .replace_all(vec![phone("A1"), phone("A2")], ChangeSource::FullSync);
    wait_for("b to read a's full sync", || b.compliance.view().len() == 2).await;
    b.compliance.apply(
        vec![Change::Upsert(DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone("A1")
        })],
        ChangeSource::ChangeEvent,
    );
    wait_for("a to see b's wipe", || {
        !a.compliance.decide(Some("A1"), None).is_allowed()
    })
    .await;

    // While the master dies and the replica is promoted, both nodes decide from their last
    // view: the wiped phone stays blocked, the other allowed.
    let failing_over = Arc::new(AtomicBool::new(true));
    let checks = Arc::new(AtomicUsize::new(0));
    let watcher = tokio::spawn({
        let (a, b) = (a.compliance.clone(), b.compliance.clone());
        let (failing_over, checks) = (failing_over.clone(), checks.clone());
        async move {
            while failing_over.load(Ordering::Relaxed) {
                for node in [&a, &b] {
                    assert!(!node.decide(Some("A1"), None).is_allowed(), "failed open");
                    assert!(node.decide(Some("A2"), None).is_allowed(), "lost its view");
                }
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let before = group.master_addr();
    let promoted = tokio::task::block_in_place(|| group.kill_master()).expect("a failover");
    assert_ne!(Some(promoted), before);
    failing_over.store(false, Ordering::Relaxed);
    watcher.await.expect("the view held during the failover");
    assert!(checks.load(Ordering::Relaxed) > 0);

    // A change made after the failover reaches the other node through the new master.
    a.compliance
        .set_device_override("A2", Some(Override::Block));
    wait_for("b to see a's override through the new master", || {
        !b.compliance.decide(Some("A2"), None).is_allowed()
    })
    .await;
    let client = redis::Client::open(format!("redis://{promoted}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stored: Option<String> = redis::cmd("HGET")
        .arg("{seg:compliance}:overrides")
        .arg("device:A2")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some("block"),
        "written to the new master"
    );
    assert!(
        !scrape(&a.metrics).contains("seg_compliance_redis_errors_total 0"),
        "a noticed the master go"
    );
    wait_for("both nodes up again", || {
        a.shared.status().redis_up && b.shared.status().redis_up
    })
    .await;
    assert!(
        !b.compliance.decide(Some("A1"), None).is_allowed(),
        "the wipe still holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_over_a_cluster_share_the_view_and_elect_one_leader() {
    let cluster = tokio::task::block_in_place(RedisCluster::start)
        .expect("redis-server with cluster mode (scripts/install-deps.sh)");
    let a = spawn_node(cluster.url(), "a", |_| {});
    let b = spawn_node(cluster.url(), "b", |_| {});
    wait_for("one of the two to lead", || {
        a.shared.status().leader || b.shared.status().leader
    })
    .await;
    let (leader, follower) = if a.shared.status().leader {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(!follower.shared.status().leader, "only one leads");

    leader
        .compliance
        .replace_all(vec![phone("A1"), phone("A2")], ChangeSource::FullSync);
    wait_for("the follower to read the leader's full sync", || {
        follower.compliance.view().len() == 2
    })
    .await;
    follower.compliance.apply(
        vec![Change::Upsert(DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone("A1")
        })],
        ChangeSource::ChangeEvent,
    );
    wait_for("the leader to see the follower's wipe", || {
        !leader.compliance.decide(Some("A1"), None).is_allowed()
    })
    .await;
    leader
        .compliance
        .set_device_override("A2", Some(Override::Block));
    wait_for("the follower to see the leader's override", || {
        !follower.compliance.decide(Some("A2"), None).is_allowed()
    })
    .await;
    assert!(leader.shared.status().leader && !follower.shared.status().leader);
    assert_eq!(
        leader.shared.status().version,
        follower.shared.status().version,
        "both applied the same log"
    );
}
