//! kcd-client against the real MIT KDC of `seg-testbed`: logins with keytab and password,
//! S4U2Self and S4U2Proxy to Exchange, the errors an operator must tell apart, failover, and
//! the caches. The proof that a ticket is alice's is independent of the client's own view: the
//! ticket is decrypted with Exchange's keytab, written by MIT's kadmin.

mod support;

use std::time::{Duration, Instant};

use kcd_client::crypto::EncType;
use kcd_client::keytab::{Keytab, KeytabEntry, Principal};
use kcd_client::spnego::{self, NegotiationToken};
use kcd_client::{
    ChannelBindings, Credentials, KcdClient, KcdError, KcdRequest, TransportMode, UserName,
};
use rasn_kerberos::{ApReq, Authenticator, Ticket};
use seg_testbed::kdc::{DEFAULT_REALM, EXCHANGE_SERVICE, GATEWAY_SERVICE, OTHER_SERVICE};
use support::{
    LoggedRequests, PASSWORD, PASSWORD_SERVICE, config, gateway, kdc_with_users, names,
    numbered_user, open_ticket, own_kdc, shared_kdc,
};
use tower::ServiceExt as _;

fn alice() -> UserName {
    UserName::principal("alice", DEFAULT_REALM).unwrap()
}

#[tokio::test]
async fn keytab_login_then_s4u_gives_exchange_a_ticket_that_names_alice() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);

    let ticket = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    assert_eq!(ticket.service(), "HTTP/exchange.test.local@TEST.LOCAL");
    assert_eq!(ticket.client(), "alice@TEST.LOCAL");
    let der = ticket.ticket_der();
    let ticket: Ticket = rasn::der::decode(&der).unwrap();
    assert_eq!(names(&ticket.sname), ["HTTP", "exchange.test.local"]);
    let opened = open_ticket(&kdc, EXCHANGE_SERVICE, &ticket);
    assert_eq!(names(&opened.cname), ["alice"]);
    assert_eq!(opened.crealm.as_bytes(), b"TEST.LOCAL");
    // The KDC's own account of it, once its log has caught up.
    let logged = |line: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = kdc.log();
            if log.contains(line) || Instant::now() > deadline {
                return log.contains(line);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(
        logged("PROTOCOL-TRANSITION s4u-client=alice@TEST.LOCAL"),
        "{}",
        kdc.log()
    );
    assert!(
        logged("CONSTRAINED-DELEGATION s4u-client=alice@TEST.LOCAL"),
        "{}",
        kdc.log()
    );
}

#[tokio::test]
async fn the_negotiate_token_carries_an_ap_req_exchange_accepts_with_bound_channel() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);
    let cert_hash = [0x5au8; 32];

    let token = client
        .negotiate_token(&alice(), EXCHANGE_SERVICE, Some(&cert_hash))
        .await
        .unwrap();

    assert!(token.to_header_value().starts_with("Negotiate YII"));
    let NegotiationToken::Init(init) = spnego::parse_negotiation_token(token.as_bytes()).unwrap()
    else {
        panic!("not a NegTokenInit");
    };
    let (oid, inner) = spnego::parse_initial_token(init.mech_token.as_deref().unwrap()).unwrap();
    assert_eq!(&*oid, spnego::KRB5_OID);
    assert_eq!(&inner[..2], &[1, 0], "TOK_ID of an AP-REQ");
    let ap_req: ApReq = rasn::der::decode(&inner[2..]).unwrap();
    // Accept it as Exchange would: open the ticket, then the authenticator with its key.
    let opened = open_ticket(&kdc, EXCHANGE_SERVICE, &ap_req.ticket);
    assert_eq!(names(&opened.cname), ["alice"]);
    let session_key = kcd_client::crypto::Key::new(
        EncType::from_i32(opened.key.r#type).unwrap(),
        &opened.key.value,
    )
    .unwrap();
    let plain = session_key
        .decrypt(11, &ap_req.authenticator.cipher)
        .unwrap();
    let authenticator: Authenticator = rasn::der::decode_with_remainder(&plain).unwrap().0;
    assert_eq!(names(&authenticator.cname), ["alice"]);
    let cksum = authenticator.cksum.unwrap();
    assert_eq!(cksum.r#type, 0x8003);
    assert_eq!(&cksum.checksum[..4], &[16, 0, 0, 0]);
    assert_eq!(
        &cksum.checksum[4..20],
        &ChannelBindings::tls_server_end_point(&cert_hash).md5()
    );
    // Mutual authentication, confidentiality, integrity, sequencing; mutual-required too.
    assert_eq!(&cksum.checksum[20..24], &[0x3a, 0, 0, 0]);
    assert_eq!(ap_req.ap_options.0.as_raw_slice()[0], 0x20);
}

#[tokio::test]
async fn password_login_works_for_a_service_account() {
    let kdc = shared_kdc().await;
    let client = KcdClient::new(config(
        &kdc,
        PASSWORD_SERVICE,
        Credentials::Password(PASSWORD.into()),
    ))
    .unwrap();

    let ticket = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    assert_eq!(ticket.client(), "alice@TEST.LOCAL");
    assert_eq!(client.exchanges().logins, 1);
}

#[tokio::test]
async fn a_wrong_password_is_bad_credentials() {
    let kdc = shared_kdc().await;
    let client = KcdClient::new(config(
        &kdc,
        PASSWORD_SERVICE,
        Credentials::Password("not-the-password".into()),
    ))
    .unwrap();

    let error = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap_err();

    assert!(
        matches!(error, KcdError::BadCredentials { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn another_services_keys_under_the_gateways_name_are_bad_credentials() {
    let kdc = shared_kdc().await;
    // other.keytab's keys, labelled as the gateway's: the KDC refuses the pre-authentication.
    let other = Keytab::read(kdc.keytab(OTHER_SERVICE).unwrap()).unwrap();
    let gateway = Principal::parse(GATEWAY_SERVICE, Some(DEFAULT_REALM)).unwrap();
    let mut forged = Keytab::new();
    for entry in other.entries() {
        forged.push(KeytabEntry {
            principal: gateway.clone(),
            ..entry.clone()
        });
    }
    let client = KcdClient::new(config(
        &kdc,
        GATEWAY_SERVICE,
        Credentials::KeytabBytes(forged.to_bytes()),
    ))
    .unwrap();

    let error = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap_err();

    assert!(
        matches!(error, KcdError::BadCredentials { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_keytab_without_the_gateways_keys_is_bad_credentials() {
    let kdc = shared_kdc().await;
    let other = kdc.keytab(OTHER_SERVICE).unwrap().to_path_buf();
    let client = KcdClient::new(config(
        &kdc,
        GATEWAY_SERVICE,
        Credentials::KeytabFile(other),
    ))
    .unwrap();

    let error = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap_err();

    assert!(
        matches!(error, KcdError::BadCredentials { .. }),
        "{error:?}"
    );
    assert_eq!(
        client.exchanges().requests,
        0,
        "no KDC is asked without a key"
    );
}

#[tokio::test]
async fn delegating_to_a_service_not_in_the_list_is_refused() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);

    let error = client
        .service_ticket(&alice(), OTHER_SERVICE)
        .await
        .unwrap_err();

    match error {
        KcdError::DelegationNotAllowed { target, .. } => {
            assert_eq!(target, "HTTP/other.test.local@TEST.LOCAL");
        }
        other => panic!("expected DelegationNotAllowed, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_user_is_reported_as_such() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);
    let mallory = UserName::principal("mallory", DEFAULT_REALM).unwrap();

    let error = client
        .service_ticket(&mallory, EXCHANGE_SERVICE)
        .await
        .unwrap_err();

    match error {
        KcdError::UnknownUser { user } => assert_eq!(user, "mallory@TEST.LOCAL"),
        other => panic!("expected UnknownUser, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hundred_concurrent_requests_for_one_user_make_one_exchange_of_each_kind() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);

    let calls = (0..100).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .negotiate_token(&alice(), EXCHANGE_SERVICE, None)
                .await
        })
    });
    let tokens: Vec<_> = futures_join(calls).await;

    assert!(tokens.iter().all(Result::is_ok));
    let exchanges = client.exchanges();
    assert_eq!(
        (exchanges.logins, exchanges.s4u2self, exchanges.s4u2proxy),
        (1, 1, 1)
    );
    // Fresh authenticators: no two tokens alike.
    let mut distinct: Vec<_> = tokens
        .iter()
        .map(|t| t.as_ref().unwrap().as_bytes().to_vec())
        .collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_requests_over_a_hundred_users_loses_no_kdc_request() {
    const USERS: usize = 100;
    const REQUESTS: usize = 1000;
    let kdc = kdc_with_users(USERS, |_| {}).await;
    eprintln!(
        "KDC with {USERS} more users started in {:?}",
        kdc.startup_time()
    );
    let client = gateway(&kdc);
    let users: Vec<UserName> = (0..USERS)
        .map(|i| UserName::principal(&numbered_user(i), DEFAULT_REALM).unwrap())
        .collect();
    let before = LoggedRequests::now(&kdc);

    // Request i is for user i mod 100: every user's first requests arrive together.
    let started = Instant::now();
    let calls = (0..REQUESTS).map(|i| {
        let (client, user) = (client.clone(), users[i % USERS].clone());
        tokio::spawn(async move {
            let ticket = client.service_ticket(&user, EXCHANGE_SERVICE).await;
            (user, ticket)
        })
    });
    let results = futures_join(calls).await;
    eprintln!(
        "{REQUESTS} requests over {USERS} users took {:?}",
        started.elapsed()
    );

    // Each ticket names its user, by the client's account and by Exchange's key.
    let mut distinct = std::collections::BTreeMap::new();
    for (user, ticket) in results {
        let ticket = ticket.unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(ticket.client(), user.to_string());
        assert_eq!(ticket.service(), "HTTP/exchange.test.local@TEST.LOCAL");
        distinct.insert(ticket.ticket_der(), user.to_string());
    }
    assert_eq!(
        distinct.len(),
        USERS,
        "one ticket per user, shared by its requests"
    );
    for (der, user) in &distinct {
        let opened = open_ticket(&kdc, EXCHANGE_SERVICE, &rasn::der::decode(der).unwrap());
        assert_eq!(format!("{}@TEST.LOCAL", names(&opened.cname)[0]), *user);
    }
    // One login, one S4U2Self and one S4U2Proxy per user; no datagram lost on the way (a lost
    // one would have waited out the UDP timeout and gone again over TCP).
    let exchanges = client.exchanges();
    assert_eq!(
        (exchanges.logins, exchanges.s4u2self, exchanges.s4u2proxy),
        (1, USERS as u64, USERS as u64)
    );
    assert_eq!(exchanges.requests, 2 + 2 * USERS as u64);
    assert_eq!(exchanges.udp_unanswered, 0);
    // The KDC saw exactly those: two AS requests (the first learns the salt), 200 TGS.
    let after = LoggedRequests::once_tgs_reaches(&kdc, before.tgs_req + 2 * USERS).await;
    assert_eq!(after.tgs_req - before.tgs_req, 2 * USERS);
    assert_eq!(after.as_req - before.as_req, 2);
    tokio::task::spawn_blocking(move || drop(kdc))
        .await
        .unwrap();
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn invalidate_makes_the_next_request_ask_the_kdc_again() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);
    client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    client.invalidate(&alice(), EXCHANGE_SERVICE);
    client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    let exchanges = client.exchanges();
    assert_eq!(
        (exchanges.logins, exchanges.s4u2self, exchanges.s4u2proxy),
        (1, 2, 2)
    );
}

#[tokio::test]
async fn a_clock_an_hour_off_is_corrected_from_the_kdcs_time() {
    let kdc = shared_kdc().await;
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_path_buf();
    let mut config = config(&kdc, GATEWAY_SERVICE, Credentials::KeytabFile(keytab));
    config.clock_offset_secs = 3600;
    let client = KcdClient::new(config).unwrap();

    let ticket = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    assert_eq!(ticket.client(), "alice@TEST.LOCAL");
}

#[tokio::test]
async fn tcp_only_and_failover_past_a_dead_kdc_work() {
    let kdc = shared_kdc().await;
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_path_buf();
    let mut config = config(&kdc, GATEWAY_SERVICE, Credentials::KeytabFile(keytab));
    config.realms[0].kdcs.insert(0, dead_addr);
    config.attempt_timeout = Duration::from_millis(500);
    for mode in [TransportMode::UdpThenTcp, TransportMode::TcpOnly] {
        config.transport = mode;
        let client = KcdClient::new(config.clone()).unwrap();

        let ticket = client.service_ticket(&alice(), EXCHANGE_SERVICE).await;

        assert_eq!(ticket.unwrap().client(), "alice@TEST.LOCAL", "{mode:?}");
    }
}

#[tokio::test]
async fn the_tower_service_answers_with_a_negotiate_header_value() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);

    let token = client
        .oneshot(KcdRequest::new(alice(), EXCHANGE_SERVICE).with_channel_binding([1u8; 32]))
        .await
        .unwrap();

    assert!(token.to_header_value().starts_with("Negotiate "));
}

#[tokio::test]
async fn a_stopped_kdc_is_unreachable_and_a_restarted_one_serves_again() {
    let mut kdc = own_kdc().await;
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_path_buf();
    let mut config = config(&kdc, GATEWAY_SERVICE, Credentials::KeytabFile(keytab));
    config.attempt_timeout = Duration::from_millis(300);
    let client = KcdClient::new(config).unwrap();
    kdc.stop_kdc();

    let error = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap_err();
    match error {
        KcdError::KdcUnreachable {
            realm, attempts, ..
        } => {
            assert_eq!(realm, "TEST.LOCAL");
            assert_eq!(attempts, 2, "UDP then TCP to the one KDC");
        }
        other => panic!("expected KdcUnreachable, got {other:?}"),
    }

    let mut kdc = tokio::task::spawn_blocking(move || {
        kdc.restart_kdc().unwrap();
        kdc
    })
    .await
    .unwrap();
    // The KDC serves once restart_kdc returns; allow a few tries within a deadline anyway.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ticket = loop {
        match client.service_ticket(&alice(), EXCHANGE_SERVICE).await {
            Ok(ticket) => break ticket,
            Err(error) if Instant::now() < deadline => {
                eprintln!("not yet: {error}");
                tokio::task::yield_now().await;
            }
            Err(error) => panic!("the restarted KDC does not serve: {error}"),
        }
    };
    assert_eq!(ticket.client(), "alice@TEST.LOCAL");
    assert!(kdc.is_serving());
    tokio::task::spawn_blocking(move || drop(kdc))
        .await
        .unwrap();
}
