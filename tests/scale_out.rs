//! Scale-out, over real sockets: a real `redis-server`, the test UEM console, the test
//! Exchange, and three gateways sharing one compliance view through Redis. A wipe or an
//! override received by one node holds on all of them; a dead leader's syncs are taken over;
//! Redis down never opens the gate and its return reconciles; a node joining while Redis holds
//! the view serves from it without a full sync of its own.
//!
//! Most tests run the gateways in this process; one runs them as the issue's stand does in
//! production: three `seg-proxy` processes (the debug binary, built by cargo on first use)
//! behind HAProxy, its leader killed with `SIGKILL`. HAProxy (Debian's `haproxy`,
//! scripts/install-deps.sh) is required: without it that test fails saying so.

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

/// Sends a Subscribe as alice on `device` to the gateway (or the balancer) at `base`
/// (`http://…`): the status, the compliance header, and the balancer's `X-Seg-Node` (the node
/// that answered; empty from a node itself).
async fn subscribe(
    exchange: &TestExchange,
    base: &str,
    device: &str,
) -> (StatusCode, String, String) {
    let request = harness::ews_request(
        &format!("{base}/EWS/Exchange.asmx"),
        Some(&exchange.basic(ALICE)),
        &[("X-Device-Id", device)],
        soap(SUBSCRIBE),
    )
    .unwrap();
    let response = send(&exchange.client, request).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let (compliance, node) = (header("x-compliance-status"), header("x-seg-node"));
    (response.status(), compliance, node)
}

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
        self.start_node_with(index, admin, delta, |_| {}).await
    }

    /// [`Cluster::start_node`], with `configure` adding to the node's configuration.
    async fn start_node_with(
        &self,
        index: usize,
        admin: SocketAddr,
        delta: Duration,
        configure: impl FnOnce(&mut seg_proxy::config::Config),
    ) -> Gateway {
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
        configure(&mut config);
        let gateway = start(config).await;
        wait_ready(&gateway).await;
        gateway
    }

    /// Sends a Subscribe through `node` as alice on `device`; the status and the compliance
    /// header.
    async fn ews(&self, node: &Gateway, device: &str) -> (StatusCode, String) {
        let (status, compliance, _) = subscribe(&self.exchange, &http_base(node), device).await;
        (status, compliance)
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

/// Opens a `GetStreamingEvents` stream as alice on `device` through `node`: its body, once
/// it delivered a first notification.
async fn open_stream(cluster: &Cluster, node: &Gateway, device: &str) -> hyper::body::Incoming {
    let url = format!("{}/EWS/Exchange.asmx", http_base(node));
    let request = |operation: &str| {
        harness::ews_request(
            &url,
            Some(&cluster.exchange.basic(ALICE)),
            &[("X-Device-Id", device)],
            soap(operation),
        )
        .unwrap()
    };
    let subscribed = text(send(&cluster.exchange.client, request(SUBSCRIBE)).await).await;
    let subscription = harness::xml_text(&subscribed, "SubscriptionId")
        .unwrap_or_else(|| panic!("a subscription id: {subscribed}"));
    let stream = send(
        &cluster.exchange.client,
        request(&format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{subscription}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents>")),
    )
    .await;
    assert_eq!(stream.status(), StatusCode::OK);
    stream.into_body()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wipe_sent_to_one_node_cuts_the_devices_streams_on_the_others() {
    let cluster = Cluster::start(true, Duration::from_secs(3600)).await;
    // The webhook reaches node 0; the streams are held by nodes 1 and 2.
    let mut on_1 = open_stream(&cluster, &cluster.nodes[1], WIPED).await;
    let mut on_2 = open_stream(&cluster, &cluster.nodes[2], WIPED).await;
    let mut other = open_stream(&cluster, &cluster.nodes[1], OTHER).await;
    cluster
        .exchange
        .server
        .deliver(ALICE, "before the wipe")
        .unwrap();
    for (name, stream) in [
        ("node 1", &mut on_1),
        ("node 2", &mut on_2),
        ("the other device's", &mut other),
    ] {
        let chunk = harness::next_chunk(stream, STEP, "the first notification").await;
        assert!(
            matches!(chunk, Ok(Some(_))),
            "the stream on {name} delivers while compliant: {chunk:?}"
        );
    }

    cluster.uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    assert_cut_within_a_second(&mut on_1, "the wiped device's stream on node 1 to be cut").await;
    assert_cut_within_a_second(&mut on_2, "the wiped device's stream on node 2 to be cut").await;

    // The other device's stream (same user, same node) goes on.
    cluster
        .exchange
        .server
        .deliver(ALICE, "after the wipe")
        .unwrap();
    let delivered = next_chunk(&mut other).await;
    assert!(
        delivered.is_some(),
        "the other device's stream still delivers after the wipe"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_told_to_is_not_ready_while_redis_is_down_and_others_stay_ready() {
    let mut cluster = Cluster::start(true, Duration::from_secs(3600)).await;
    let strict = cluster
        .start_node_with(
            3,
            reserve_port().unwrap(),
            Duration::from_secs(3600),
            |config| {
                config
                    .compliance
                    .as_mut()
                    .unwrap()
                    .redis_not_ready_when_down = true;
            },
        )
        .await;
    cluster.uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    cluster.wait_everywhere(WIPED, true, STEP).await;

    cluster.redis.stop();
    wait_until(STEP, "the strict node to report not ready", || async {
        readyz_at(strict.admin_addr().unwrap()).await == Some(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await
    .unwrap();
    let (_, reason) = admin_request(&strict, http::Method::GET, "/readyz", None, "").await;
    assert!(reason.contains("redis is unreachable"), "{reason}");
    // Not ready, yet still deciding from its last view: the wiped device stays blocked.
    assert_eq!(cluster.ews(&strict, WIPED).await.0, StatusCode::FORBIDDEN);
    assert_eq!(cluster.ews(&strict, OTHER).await.0, StatusCode::OK);
    // The others (the default) know Redis is down and stay ready.
    for node in &cluster.nodes {
        wait_until(STEP, "the node to notice redis is down", || async {
            admin_metric(node, "seg_compliance_redis_up").await == Some(0.0)
        })
        .await
        .unwrap();
        assert_eq!(
            readyz_at(node.admin_addr().unwrap()).await,
            Some(StatusCode::OK)
        );
    }

    tokio::task::block_in_place(|| cluster.redis.restart()).unwrap();
    wait_ready(&strict).await;
    cluster.nodes.push(strict);
}

/// The metric series of a node's successful delta syncs.
const DELTA_SYNCS: &str = r#"seg_compliance_sync_total{kind="delta",outcome="success"}"#;

/// Sends Subscribes for `device` through `haproxy` until each node of `names` has answered
/// one, asserting that every answer, from whichever node, is `expected`.
async fn through_the_balancer(
    exchange: &TestExchange,
    haproxy: &Haproxy,
    device: &str,
    expected: StatusCode,
    names: &[String],
) {
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let what = format!("{device} answered {expected} by each of {names:?} through haproxy");
    wait_until(STEP, &what, || async {
        let (status, _, node) = subscribe(exchange, &haproxy.base(), device).await;
        assert_eq!(
            status, expected,
            "{device} through haproxy, answered by {node:?}"
        );
        let mut seen = seen.borrow_mut();
        seen.insert(node);
        names.iter().all(|name| seen.contains(name))
    })
    .await
    .unwrap();
}

/// Which of `nodes` (indices into it, the dead left out) leads, by its `/metrics`.
async fn process_leader(nodes: &[GatewayProcess], alive: &[usize]) -> Option<usize> {
    for &index in alive {
        let leading = admin_metric_at(nodes[index].admin_addr(), "seg_compliance_redis_leader");
        if leading.await == Some(1.0) {
            return Some(index);
        }
    }
    None
}

/// The issue's stand with separate processes: three real `seg-proxy` nodes (the debug binary)
/// sharing a real `redis-server`, behind HAProxy, with the test UEM (its change events sent to
/// node 0's webhook) and the test Exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_behind_haproxy_block_a_wipe_everywhere_and_outlive_their_leader() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server starts (scripts/install-deps.sh installs it)");
    let exchange = TestExchange::start(|_| {}).await.unwrap();
    let ens = WebhookReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admins: Vec<SocketAddr> = (0..3).map(|_| reserve_port().unwrap()).collect();
    let uem = uem_with_webhook(
        vec![
            uem::Device::new(WIPED, 1, ALICE),
            uem::Device::new(OTHER, 2, ALICE),
        ],
        admins[0],
    )
    .await;
    let names: Vec<String> = (0..3).map(|index| format!("node-{index}")).collect();
    let mut nodes = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let mut config = gateway_config(
            &exchange,
            &uem,
            &format!("{}/gateway/compliance", ens.url()),
            admins[index],
            dir.path().join(format!("unused-{index}.snapshot")),
            dir.path(),
        );
        config.listen.http = Some(reserve_port().unwrap());
        share_through_redis(&mut config, &redis.url(), LOCK_TTL, name);
        config.compliance.as_mut().unwrap().delta_sync_interval = Duration::from_millis(300);
        // One after the other: the first leads and syncs, the others read the view from Redis.
        let mut node = GatewayProcess::spawn(name, &config, dir.path());
        node.wait_ready().await;
        nodes.push(node);
    }
    let backends: Vec<_> = names
        .iter()
        .zip(&nodes)
        .map(|(name, node)| (name.as_str(), node.http_addr(), node.admin_addr()))
        .collect();
    let haproxy = Haproxy::start(&backends, dir.path()).await;
    through_the_balancer(&exchange, &haproxy, WIPED, StatusCode::OK, &names).await;

    // The wipe reaches node 0's webhook; each node refuses the device itself within a second.
    let wiped_at = Instant::now();
    uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    wait_until(
        Duration::from_secs(1),
        "the wipe to hold on every node",
        || async {
            for node in &nodes {
                if subscribe(&exchange, &node.http_base(), WIPED).await.0 != StatusCode::FORBIDDEN {
                    return false;
                }
            }
            true
        },
    )
    .await
    .unwrap();
    let everywhere = wiped_at.elapsed();
    for node in &nodes {
        let (status, compliance, _) = subscribe(&exchange, &node.http_base(), WIPED).await;
        assert_eq!(
            (status, compliance.as_str()),
            (StatusCode::FORBIDDEN, "blocked; reason=enterprise-wiped")
        );
        assert_eq!(
            subscribe(&exchange, &node.http_base(), OTHER).await.0,
            StatusCode::OK
        );
    }
    through_the_balancer(&exchange, &haproxy, WIPED, StatusCode::FORBIDDEN, &names).await;
    through_the_balancer(&exchange, &haproxy, OTHER, StatusCode::OK, &names).await;
    eprintln!("blocked on three processes {everywhere:?} after the wipe");

    // Only the leader syncs with UEM.
    let alive: Vec<usize> = (0..3).collect();
    wait_until(STEP, "a leader", || async {
        process_leader(&nodes, &alive).await.is_some()
    })
    .await
    .unwrap();
    let leader = process_leader(&nodes, &alive).await.unwrap();
    for &index in alive.iter().filter(|&&index| index != leader) {
        let syncs = admin_metric_at(nodes[index].admin_addr(), DELTA_SYNCS).await;
        assert_eq!(
            syncs.unwrap_or(0.0),
            0.0,
            "{} syncs but does not lead",
            names[index]
        );
    }

    // SIGKILL: the lock is not released, it expires; another node leads and syncs.
    nodes[leader].kill();
    let died_at = Instant::now();
    let alive: Vec<usize> = alive.into_iter().filter(|&index| index != leader).collect();
    wait_until(LOCK_TTL * 3, "another leader", || async {
        process_leader(&nodes, &alive).await.is_some()
    })
    .await
    .unwrap();
    let took_over = died_at.elapsed();
    let new_leader = process_leader(&nodes, &alive).await.unwrap();
    wait_until(STEP, "the new leader's delta syncs", || async {
        admin_metric_at(nodes[new_leader].admin_addr(), DELTA_SYNCS)
            .await
            .unwrap_or(0.0)
            > 0.0
    })
    .await
    .unwrap();

    // A change in UEM still reaches both live nodes, and the balancer skips the dead one.
    uem.update(OTHER, Change::EnterpriseWipe).unwrap();
    wait_until(STEP, "the second wipe on the live nodes", || async {
        for &index in &alive {
            let base = nodes[index].http_base();
            if subscribe(&exchange, &base, OTHER).await.0 != StatusCode::FORBIDDEN {
                return false;
            }
        }
        true
    })
    .await
    .unwrap();
    let live_names: Vec<String> = alive.iter().map(|&index| names[index].clone()).collect();
    through_the_balancer(
        &exchange,
        &haproxy,
        OTHER,
        StatusCode::FORBIDDEN,
        &live_names,
    )
    .await;
    eprintln!(
        "{} took over {took_over:?} after the leader was killed",
        names[new_leader]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shares_its_view_over_rediss_trusting_the_configured_ca() {
    let pki = seg_testbed::pki::TestPki::in_memory(&[]).unwrap();
    let (cert, key) = pki.issue_server_cert(&["localhost", "127.0.0.1"]).unwrap();
    let redis = tokio::task::spawn_blocking(move || RedisServer::start_tls(&cert, &key))
        .await
        .unwrap()
        .expect("redis-server with TLS (scripts/install-deps.sh installs Debian's)");
    let ca = redis.dir().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let stand = ComplianceStand::start(vec![Device::new(WIPED, 1, ALICE)], |config, _| {
        share_through_redis(config, &redis.url(), LOCK_TTL, "tls-node");
        config.compliance.as_mut().unwrap().redis_trust_store = Some(ca.clone());
    })
    .await;
    assert!(redis.url().starts_with("rediss://"));
    wait_until(
        STEP,
        "the node's first sync written to redis over TLS",
        || async {
            admin_metric(&stand.gateway, "seg_compliance_redis_up").await == Some(1.0)
                && admin_metric(&stand.gateway, "seg_compliance_redis_written_total")
                    .await
                    .unwrap_or(0.0)
                    >= 1.0
        },
    )
    .await
    .unwrap();
}
