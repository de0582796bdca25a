//! Scale-out, over real sockets: a real `redis-server`, the test UEM console, the test
//! Exchange, and three gateways sharing one compliance view through Redis. A wipe or an
//! override received by one node holds on all of them; a dead leader's syncs are taken over;
//! Redis down never opens the gate and its return reconciles; a node joining while Redis holds
//! the view serves from it without a full sync of its own.

mod support;

use http::StatusCode;
use seg_proxy::Gateway;
use seg_testbed::harness::{self, TestExchange, reserve_port, wait_until};
use seg_testbed::redis::RedisServer;
use seg_testbed::uem::{
    self, Change, Device, Mode, UemConfig, UemHandle, UemServer, WebhookReceiver,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

const ALICE: &str = "alice@test.local";
const WIPED: &str = "EASDEV1";
const OTHER: &str = "EASDEV2";
const SUBSCRIBE: &str = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;

/// The lock expiry of the tests: a dead leader is replaced within it and a third.
const LOCK_TTL: Duration = Duration::from_secs(1);

/// Redis, UEM (its change events sent to node 0's webhook, when asked), Exchange, ENS's
/// callback receiver, and the gateway nodes.
struct Cluster {
    redis: RedisServer,
    uem: UemHandle,
    exchange: TestExchange,
    ens: WebhookReceiver,
    nodes: Vec<Gateway>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes, started one after the other; `webhook`: UEM's change events go to the
    /// first node; `delta`: the delta sync interval.
    async fn start(webhook: bool, delta: Duration) -> Cluster {
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap()
            .expect("redis-server starts (scripts/install-deps.sh installs it)");
        let exchange = TestExchange::start(|_| {}).await.unwrap();
        let ens = WebhookReceiver::start().await.unwrap();
        let first_admin = reserve_port().unwrap();
        let mut uem_config = UemConfig::new(vec![
            Device::new(WIPED, 1, ALICE),
            Device::new(OTHER, 2, "bob@test.local"),
        ]);
        if webhook {
            uem_config.webhook = Some(uem::Webhook::new(
                &format!("http://{first_admin}/events/compliance"),
                WEBHOOK_SECRET,
            ));
        }
        let uem =
            UemServer::spawn(harness::local_listener().await.unwrap(), None, uem_config).unwrap();
        let mut cluster = Cluster {
            redis,
            uem,
            exchange,
            ens,
            nodes: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        for index in 0..3 {
            let admin = if index == 0 {
                first_admin
            } else {
                reserve_port().unwrap()
            };
            let node = cluster.start_node(index, admin, delta).await;
            cluster.nodes.push(node);
        }
        cluster
    }

    /// Starts node `index` on admin address `admin` and waits until it is ready.
    async fn start_node(&self, index: usize, admin: SocketAddr, delta: Duration) -> Gateway {
        let mut config = gateway_config(
            &self.exchange,
            &self.uem,
            &format!("{}/gateway/compliance", self.ens.url()),
            admin,
            self.dir.path().join(format!("unused-{index}.snapshot")),
            self.dir.path(),
        );
        share_through_redis(
            &mut config,
            &self.redis.url(),
            LOCK_TTL,
            &format!("node-{index}"),
        );
        config.compliance.as_mut().unwrap().delta_sync_interval = delta;
        let gateway = start(config).await;
        wait_ready(&gateway).await;
        gateway
    }

    /// Sends a Subscribe through `node` as alice on `device`; the status and the compliance
    /// header.
    async fn ews(&self, node: &Gateway, device: &str) -> (StatusCode, String) {
        let url = format!("{}/EWS/Exchange.asmx", http_base(node));
        let request = harness::ews_request(
            &url,
            Some(&self.exchange.basic(ALICE)),
            &[("X-Device-Id", device)],
            soap(SUBSCRIBE),
        )
        .unwrap();
        let response = send(&self.exchange.client, request).await;
        let header = response
            .headers()
            .get("x-compliance-status")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        (response.status(), header)
    }

    /// Waits until `device` is blocked (`true`) or allowed on every node's own view.
    async fn wait_everywhere(&self, device: &str, blocked: bool, deadline: Duration) {
        let what = format!(
            "{device} {} on every node",
            if blocked { "blocked" } else { "allowed" }
        );
        wait_until(deadline, &what, || {
            let all = self.nodes.iter().all(|node| {
                let (compliance, _) = node.compliance().unwrap();
                compliance.decide(Some(device), None).is_allowed() != blocked
            });
            async move { all }
        })
        .await
        .unwrap();
    }

    /// The index of the node that leads (by its `/metrics`), if one does.
    async fn leader(&self) -> Option<usize> {
        for (index, node) in self.nodes.iter().enumerate() {
            if admin_metric(node, "seg_compliance_redis_leader").await == Some(1.0) {
                return Some(index);
            }
        }
        None
    }

    /// UEM search requests that were full syncs (no `modifiedsince`).
    fn full_syncs(&self) -> usize {
        self.uem
            .requests()
            .iter()
            .filter(|r| r.uri.contains("/search") && !r.uri.contains(uem::MODIFIED_SINCE_PARAM))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wipe_sent_to_one_node_blocks_the_device_on_all_three_within_a_second() {
    let cluster = Cluster::start(true, Duration::from_secs(3600)).await;
    for node in &cluster.nodes {
        assert_eq!(cluster.ews(node, WIPED).await.0, StatusCode::OK);
    }

    let wiped_at = Instant::now();
    cluster.uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    cluster
        .wait_everywhere(WIPED, true, Duration::from_secs(1))
        .await;
    let everywhere = wiped_at.elapsed();

    // Each node refuses it itself, and still lets the other device through.
    for node in &cluster.nodes {
        assert_eq!(
            cluster.ews(node, WIPED).await,
            (
                StatusCode::FORBIDDEN,
                "blocked; reason=enterprise-wiped".to_owned()
            )
        );
        assert_eq!(cluster.ews(node, OTHER).await.0, StatusCode::OK);
    }
    eprintln!("blocked on three nodes {everywhere:?} after the wipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_override_on_one_node_reaches_all() {
    let cluster = Cluster::start(false, Duration::from_secs(3600)).await;
    assert_eq!(
        admin_device_override(&cluster.nodes[1], OTHER, Some("block")).await,
        StatusCode::OK
    );
    cluster
        .wait_everywhere(OTHER, true, Duration::from_secs(1))
        .await;
    for node in &cluster.nodes {
        assert_eq!(
            cluster.ews(node, OTHER).await,
            (
                StatusCode::FORBIDDEN,
                "blocked; reason=device-override".to_owned()
            )
        );
    }

    // Cleared on another node: allowed again everywhere.
    assert_eq!(
        admin_device_override(&cluster.nodes[2], OTHER, None).await,
        StatusCode::OK
    );
    cluster
        .wait_everywhere(OTHER, false, Duration::from_secs(1))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_the_gate_shut_and_its_return_reconciles() {
    let mut cluster = Cluster::start(true, Duration::from_secs(3600)).await;
    cluster.uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    cluster.wait_everywhere(WIPED, true, STEP).await;

    cluster.redis.stop();
    for node in &cluster.nodes {
        wait_until(STEP, "the node to notice redis is down", || async {
            admin_metric(node, "seg_compliance_redis_up").await == Some(0.0)
        })
        .await
        .unwrap();
    }
    for node in &cluster.nodes {
        assert_eq!(cluster.ews(node, WIPED).await.0, StatusCode::FORBIDDEN);
        assert_eq!(cluster.ews(node, OTHER).await.0, StatusCode::OK);
    }

    // A change made on one node meanwhile holds there at once, and is queued.
    assert_eq!(
        admin_device_override(&cluster.nodes[2], OTHER, Some("block")).await,
        StatusCode::OK
    );
    assert_eq!(
        cluster.ews(&cluster.nodes[2], OTHER).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin_metric(&cluster.nodes[2], "seg_compliance_redis_queued").await,
        Some(1.0)
    );

    // Redis returns: the queued change reaches every node; nothing was undone.
    tokio::task::block_in_place(|| cluster.redis.restart()).unwrap();
    cluster.wait_everywhere(OTHER, true, STEP).await;
    cluster.wait_everywhere(WIPED, true, Duration::ZERO).await;
    for node in &cluster.nodes {
        assert_eq!(
            admin_metric(node, "seg_compliance_redis_up").await,
            Some(1.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_dies_another_node_takes_over_the_syncs() {
    // No webhook: a change in UEM reaches the nodes only through the leader's delta syncs.
    let mut cluster = Cluster::start(false, Duration::from_millis(200)).await;
    wait_until(STEP, "a leader", || async {
        cluster.leader().await.is_some()
    })
    .await
    .unwrap();
    let leader = cluster.leader().await.unwrap();
    let mut followers = 0;
    for (index, node) in cluster.nodes.iter().enumerate() {
        if index != leader {
            assert_eq!(
                node.compliance().unwrap().1.status().successes,
                0,
                "only the leader syncs"
            );
            followers += 1;
        }
    }
    assert_eq!(followers, 2);

    let dead = cluster.nodes.remove(leader);
    let died_at = Instant::now();
    dead.shutdown().await;
    wait_until(LOCK_TTL * 2, "another leader", || async {
        cluster.leader().await.is_some()
    })
    .await
    .unwrap();
    let took_over = died_at.elapsed();
    let leader = cluster.leader().await.unwrap();
    wait_until(STEP, "the new leader's first sync", || {
        let synced = cluster.nodes[leader]
            .compliance()
            .unwrap()
            .1
            .status()
            .successes
            > 0;
        async move { synced }
    })
    .await
    .unwrap();

    // The new leader's syncs keep both remaining nodes current.
    cluster.uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    cluster.wait_everywhere(WIPED, true, STEP).await;
    eprintln!("leadership taken over {took_over:?} after the leader died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_holds_the_view_is_ready_without_a_full_sync() {
    let mut cluster = Cluster::start(true, Duration::from_secs(3600)).await;
    cluster.uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    cluster.wait_everywhere(WIPED, true, STEP).await;
    let full_syncs = cluster.full_syncs();
    assert_eq!(
        full_syncs, 1,
        "one full sync, by the leader, for three nodes"
    );

    // UEM is down: whatever the new node serves, it read from Redis.
    cluster.uem.set_mode(Mode::Down);
    let fourth = cluster
        .start_node(3, reserve_port().unwrap(), Duration::from_secs(3600))
        .await;
    assert_eq!(
        cluster.full_syncs(),
        full_syncs,
        "no full sync for the new node"
    );
    assert_eq!(
        cluster.ews(&fourth, WIPED).await,
        (
            StatusCode::FORBIDDEN,
            "blocked; reason=enterprise-wiped".to_owned()
        )
    );
    assert_eq!(cluster.ews(&fourth, OTHER).await.0, StatusCode::OK);
    cluster.nodes.push(fourth);
}
