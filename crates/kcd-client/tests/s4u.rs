//! kcd-client against the real MIT KDC of `seg-testbed`: logins with keytab and password,
//! S4U2Self and S4U2Proxy to Exchange, the errors an operator must tell apart, failover, and
//! the caches. The proof that a ticket is alice's is independent of the client's own view: the
//! ticket is decrypted with Exchange's keytab, written by MIT's kadmin.

mod support;

use std::time::{Duration, Instant};

use kcd_client::crypto::EncType;
use kcd_client::keytab::{Keytab, KeytabEntry, Principal};
use kcd_client::sfu::{PA_S4U_X509_USER, PaS4uX509User, S4U_OPTION_USE_REPLY_KEY_USAGE};
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

/// What passed through a [`relay`]: each request and the reply the client got for it.
type Passed = std::sync::Arc<std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A TCP relay in front of `kdc` (the client is to use TCP only) that keeps every request and
/// reply, and hands the client each reply after `alter` had it: a man in the middle.
async fn relay(kdc: std::net::SocketAddr, alter: fn(&mut Vec<u8>)) -> (String, Passed) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let passed = Passed::default();
    let kept = passed.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                // RFC 4120 7.2.2: a 4-byte big-endian length, then the message.
                let mut len = [0u8; 4];
                while client.read_exact(&mut len).await.is_ok() {
                    let mut request = vec![0u8; u32::from_be_bytes(len) as usize];
                    client.read_exact(&mut request).await.unwrap();
                    let mut upstream = tokio::net::TcpStream::connect(kdc).await.unwrap();
                    upstream.write_all(&len).await.unwrap();
                    upstream.write_all(&request).await.unwrap();
                    upstream.read_exact(&mut len).await.unwrap();
                    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
                    upstream.read_exact(&mut reply).await.unwrap();
                    alter(&mut reply);
                    kept.lock().unwrap().push((request.clone(), reply.clone()));
                    let framed = u32::try_from(reply.len()).unwrap().to_be_bytes();
                    client.write_all(&framed).await.unwrap();
                    client.write_all(&reply).await.unwrap();
                }
            });
        }
    });
    (addr, passed)
}

/// The gateway's client talking to the KDC through the relay at `addr`, over TCP.
fn gateway_via(kdc: &seg_testbed::kdc::RunningKdc, addr: String) -> KcdClient {
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_path_buf();
    let mut config = config(kdc, GATEWAY_SERVICE, Credentials::KeytabFile(keytab));
    config.realms[0].kdcs = vec![addr];
    config.transport = TransportMode::TcpOnly;
    KcdClient::new(config).unwrap()
}

/// The value of the padata of type `pa_type`, if present.
fn padata(padata: Option<&Vec<rasn_kerberos::PaData>>, pa_type: i32) -> Option<Vec<u8>> {
    padata?
        .iter()
        .find(|pa| pa.r#type == pa_type)
        .map(|pa| pa.value.to_vec())
}

/// The PA-S4U-X509-USER of a TGS-REP, as sent (DER).
fn s4u_answer(reply: &[u8]) -> Option<Vec<u8>> {
    if reply.first() != Some(&0x6d) {
        return None;
    }
    let rep: rasn_kerberos::TgsRep = rasn::der::decode(reply).ok()?;
    padata(rep.0.padata.as_ref(), PA_S4U_X509_USER)
}

/// Flips a bit of the checksum of the KDC's PA-S4U-X509-USER, leaving everything else alone.
fn flip_s4u_answer_checksum(reply: &mut [u8]) {
    let Some(answer) = s4u_answer(reply) else {
        return;
    };
    let answer: PaS4uX509User = rasn::der::decode(&answer).unwrap();
    let checksum = answer.checksum.checksum.to_vec();
    let at = reply
        .windows(checksum.len())
        .position(|w| w == checksum)
        .unwrap();
    reply[at + checksum.len() - 1] ^= 1;
}

/// Takes the KDC's PA-S4U-X509-USER out of a TGS-REP, as a KDC that reads only PA-FOR-USER
/// (Heimdal, Samba AD) answers.
fn strip_s4u_answer(reply: &mut Vec<u8>) {
    if s4u_answer(reply).is_none() {
        return;
    }
    let mut rep: rasn_kerberos::TgsRep = rasn::der::decode(reply).unwrap();
    let kept: Vec<_> = rep
        .0
        .padata
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|pa| pa.r#type != PA_S4U_X509_USER)
        .collect();
    rep.0.padata = (!kept.is_empty()).then_some(kept);
    *reply = rasn::der::encode(&rep).unwrap();
}

#[tokio::test]
async fn the_mit_kdc_answers_pa_s4u_x509_user_with_a_signed_echo_of_the_request() {
    let kdc = shared_kdc().await;
    let (addr, passed) = relay(kdc.addr(), |_| {}).await;
    let client = gateway_via(&kdc, addr);

    let ticket = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    assert_eq!(ticket.client(), "alice@TEST.LOCAL");
    let passed = passed.lock().unwrap().clone();
    let tgs: Vec<_> = passed
        .iter()
        .filter(|(request, _)| request.first() == Some(&0x6c))
        .collect();
    assert_eq!(tgs.len(), 2, "S4U2Self and S4U2Proxy");
    let (request, reply) = tgs[0];
    let request: rasn_kerberos::TgsReq = rasn::der::decode(request).unwrap();
    let padata_types: Vec<i32> = request
        .0
        .padata
        .iter()
        .flatten()
        .map(|p| p.r#type)
        .collect();
    assert_eq!(padata_types, [1, 129, PA_S4U_X509_USER]);
    // What the client sent: the user, the body's nonce, use-reply-key-usage, a keyed checksum.
    let sent: PaS4uX509User =
        rasn::der::decode(&padata(request.0.padata.as_ref(), PA_S4U_X509_USER).unwrap()).unwrap();
    assert_eq!(sent.user_id.nonce, request.0.req_body.nonce);
    assert_eq!(names(sent.user_id.cname.as_ref().unwrap()), ["alice"]);
    assert_eq!(sent.user_id.crealm.as_bytes(), b"TEST.LOCAL");
    assert_eq!(sent.user_id.subject_certificate, None);
    assert_eq!(sent.user_id.option_bits(), S4U_OPTION_USE_REPLY_KEY_USAGE);
    assert!(
        [15, 16, 19, 20].contains(&sent.checksum.r#type),
        "{}",
        sent.checksum.r#type
    );
    // What MIT answered (kdc_make_s4u2self_rep): the same user and nonce, the option echoed,
    // a checksum of the same type; and rasn's DER of it is MIT's, byte for byte.
    let answer_der = s4u_answer(reply).expect("the KDC answers PA-S4U-X509-USER");
    let answer: PaS4uX509User = rasn::der::decode(&answer_der).unwrap();
    eprintln!(
        "MIT answered PA-S4U-X509-USER: options {:#010x}, checksum type {}",
        answer.user_id.option_bits(),
        answer.checksum.r#type
    );
    assert_eq!(answer.user_id.nonce, sent.user_id.nonce);
    assert_eq!(answer.user_id.cname, sent.user_id.cname);
    assert_eq!(answer.user_id.crealm, sent.user_id.crealm);
    assert_eq!(answer.user_id.option_bits(), S4U_OPTION_USE_REPLY_KEY_USAGE);
    assert_eq!(answer.checksum.r#type, sent.checksum.r#type);
    assert_ne!(
        answer.checksum.checksum, sent.checksum.checksum,
        "usage 27, not 26"
    );
    assert_eq!(rasn::der::encode(&answer).unwrap(), answer_der);
    // S4U2Proxy carries no S4U2Self padata.
    let proxy: rasn_kerberos::TgsReq = rasn::der::decode(&tgs[1].0).unwrap();
    assert_eq!(padata(proxy.0.padata.as_ref(), PA_S4U_X509_USER), None);
}

#[tokio::test]
async fn an_altered_pa_s4u_x509_user_answer_is_refused_as_a_tampered_reply() {
    let kdc = shared_kdc().await;
    let (addr, _) = relay(kdc.addr(), |reply| flip_s4u_answer_checksum(reply)).await;
    let client = gateway_via(&kdc, addr);

    let error = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap_err();

    match error {
        KcdError::MalformedReply(reason) => {
            assert!(
                reason.contains("PA-S4U-X509-USER does not verify"),
                "{reason}"
            );
        }
        other => panic!("expected MalformedReply, got {other:?}"),
    }
    assert_eq!(client.exchanges().s4u2proxy, 0);
}

#[tokio::test]
async fn a_kdc_that_does_not_answer_pa_s4u_x509_user_still_gives_the_ticket() {
    let kdc = shared_kdc().await;
    let (addr, passed) = relay(kdc.addr(), strip_s4u_answer).await;
    let client = gateway_via(&kdc, addr);

    let ticket = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    assert_eq!(ticket.client(), "alice@TEST.LOCAL");
    let passed = passed.lock().unwrap();
    assert!(passed.iter().all(|(_, reply)| s4u_answer(reply).is_none()));
}
