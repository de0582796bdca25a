//! What `krb5.conf` says about the transport, honoured against the real MIT KDC of
//! `seg-testbed`: `udp_preference_limit` in `[libdefaults]` and a `tcp/` prefix on a `kdc`
//! line. The KDC is reached through the testbed's fault proxy (TCP only) on a port whose UDP
//! side is a black hole owned by the test: every datagram the client sends there is seen and
//! never answered, so a UDP try would cost the UDP timeout, count as unanswered, and show.

mod support;

use std::time::Duration;

use kcd_client::krb5_conf::Krb5Conf;
use kcd_client::{Credentials, KcdClient, UserName};
use seg_testbed::fault_proxy::FaultProxy;
use seg_testbed::kdc::{DEFAULT_REALM, EXCHANGE_SERVICE, GATEWAY_SERVICE};
use support::shared_kdc;

/// What one S4U exchange for alice cost, with `libdefaults` (lines) and `kdc` (the realm's
/// `kdc` value, `{addr}` standing for the KDC's address) in `krb5.conf`.
struct Outcome {
    /// Datagrams the black hole received.
    datagrams: usize,
    /// UDP sends the client counted unanswered.
    udp_unanswered: u64,
    /// TCP connections the proxy to the KDC accepted.
    tcp_connections: u64,
}

async fn s4u_with(libdefaults: &str, kdc_line: &str) -> Outcome {
    let kdc = shared_kdc().await;
    let proxy = FaultProxy::start(kdc.addr()).await.unwrap();
    // UDP on the proxy's port: a black hole.
    let black_hole = tokio::net::UdpSocket::bind(proxy.addr())
        .await
        .expect("the proxy's port is free for UDP");
    let text = format!(
        "[libdefaults]\n default_realm = {DEFAULT_REALM}\n{libdefaults}\n[realms]\n {DEFAULT_REALM} = {{\n  kdc = {}\n }}\n",
        kdc_line.replace("{addr}", &proxy.addr().to_string())
    );
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_path_buf();
    let mut config = Krb5Conf::parse(&text)
        .unwrap()
        .kcd_config(GATEWAY_SERVICE, Credentials::KeytabFile(keytab));
    config.udp_timeout = Duration::from_millis(300);
    config.attempt_timeout = Duration::from_secs(5);
    let client = KcdClient::new(config).unwrap();
    let alice = UserName::principal("alice", DEFAULT_REALM).unwrap();

    let ticket = client.service_ticket(&alice, EXCHANGE_SERVICE).await;

    let ticket = ticket.expect("a ticket through the proxy");
    assert_eq!(ticket.client(), "alice@TEST.LOCAL");
    let mut datagrams = 0;
    let mut buffer = [0u8; 65_535];
    while black_hole.try_recv(&mut buffer).is_ok() {
        datagrams += 1;
    }
    Outcome {
        datagrams,
        udp_unanswered: client.exchanges().udp_unanswered,
        tcp_connections: proxy.handle().accepted(),
    }
}

#[tokio::test]
async fn without_a_preference_small_requests_try_udp_first() {
    // The control: the set-up does tell UDP from TCP.
    let outcome = s4u_with("", "{addr}").await;
    assert!(outcome.datagrams > 0, "no datagram reached the black hole");
    assert_eq!(outcome.udp_unanswered as usize, outcome.datagrams);
    assert!(outcome.tcp_connections > 0);
}

#[tokio::test]
async fn udp_preference_limit_of_one_sends_every_request_over_tcp() {
    let outcome = s4u_with(" udp_preference_limit = 1", "{addr}").await;
    assert_eq!(outcome.datagrams, 0, "a datagram was sent");
    assert_eq!(outcome.udp_unanswered, 0);
    // The login (two AS requests), S4U2Self and S4U2Proxy, each over its own connection.
    assert_eq!(outcome.tcp_connections, 4);
}

#[tokio::test]
async fn a_tcp_prefixed_kdc_is_reached_over_tcp_only() {
    let outcome = s4u_with("", "tcp/{addr}").await;
    assert_eq!(outcome.datagrams, 0, "a datagram was sent");
    assert_eq!(outcome.udp_unanswered, 0);
    assert_eq!(outcome.tcp_connections, 4);
}

#[tokio::test]
async fn a_udp_prefixed_kdc_tries_udp_first_as_without_prefix() {
    let outcome = s4u_with("", "udp/{addr}").await;
    assert!(outcome.datagrams > 0, "no datagram reached the black hole");
    assert!(outcome.tcp_connections > 0);
}
