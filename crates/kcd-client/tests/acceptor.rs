//! kcd-client's Negotiate tokens accepted by an independent implementation: the test Exchange
//! of `seg-testbed` accepts `Authorization: Negotiate` with the system GSSAPI (MIT krb5's
//! SPNEGO and Kerberos) and Exchange's keytab written by MIT's kadmin, over TLS, and serves the
//! request as the user the ticket names. With Extended Protection required, only tokens bound
//! to the server's certificate (RFC 5929 `tls-server-end-point`) pass.

mod support;

use base64::Engine as _;
use kcd_client::NegotiateToken;
use kcd_client::spnego::{self, NegState, NegotiationToken};
use seg_testbed::exchange::{NegotiateConfig, User};
use seg_testbed::harness::{TEST_PASSWORD, TestExchange, body_text, xml_text};
use seg_testbed::kdc::{EXCHANGE_SERVICE, RunningKdc};
use std::time::{Duration, SystemTime};

use support::{ap_req_of, gateway, kdc_with_users, names, open_ticket, shared_kdc, wait_until};

const GET_INBOX: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;

/// A TLS test Exchange for alice and bob accepting Negotiate with Exchange's keytab.
async fn exchange(kdc: &RunningKdc, require_channel_binding: bool) -> TestExchange {
    let mut negotiate = NegotiateConfig::new(kdc.keytab(EXCHANGE_SERVICE).unwrap());
    negotiate.require_channel_binding = require_channel_binding;
    TestExchange::start(|config| config.negotiate = Some(negotiate))
        .await
        .unwrap()
}

/// A token from the gateway for `user` to Exchange, bound to `certificate_hash` if given.
async fn token(kdc: &RunningKdc, user: &str, certificate_hash: Option<&[u8]>) -> NegotiateToken {
    let client = gateway(kdc);
    let user = client.user_name(user).unwrap();
    client
        .negotiate_token(&user, EXCHANGE_SERVICE, certificate_hash)
        .await
        .unwrap()
}

/// The DER of a PEM certificate.
fn der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// The `tls-server-end-point` hash of the test Exchange's own certificate.
fn server_certificate_hash(exchange: &TestExchange) -> Vec<u8> {
    kcd_client::tls_server_end_point_hash(&der(exchange.pki.server_cert_pem())).unwrap()
}

/// Posts `GetFolder` for the Inbox; returns the status code and the Inbox's `TotalCount`.
async fn get_inbox(exchange: &TestExchange, authorization: &str) -> (u16, Option<String>) {
    let response = exchange.ews(authorization, &[], GET_INBOX).await.unwrap();
    let status = response.status().as_u16();
    let body = body_text(response.into_body()).await.unwrap();
    (status, xml_text(&body, "TotalCount"))
}

/// The user the test Exchange served its last request as.
fn last_user(exchange: &TestExchange) -> Option<String> {
    exchange
        .server
        .requests()
        .last()?
        .authenticated_user
        .clone()
}

#[tokio::test]
async fn a_token_for_alice_is_accepted_by_gssapi_and_served_from_alices_mailbox() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, false).await;
    exchange
        .server
        .deliver("alice@test.local", "For alice")
        .unwrap();
    let token = token(&kdc, "alice", None).await;

    let (status, total) = get_inbox(&exchange, &token.to_header_value()).await;

    assert_eq!(status, 200);
    assert_eq!(total.as_deref(), Some("1"));
    assert_eq!(last_user(&exchange).as_deref(), Some("alice@test.local"));
}

#[tokio::test]
async fn a_token_for_bob_is_served_as_bob() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, false).await;
    exchange
        .server
        .deliver("alice@test.local", "For alice")
        .unwrap();
    let token = token(&kdc, "bob", None).await;

    let (status, total) = get_inbox(&exchange, &token.to_header_value()).await;

    assert_eq!(status, 200);
    assert_eq!(total.as_deref(), Some("0"));
    assert_eq!(last_user(&exchange).as_deref(), Some("bob@test.local"));
}

#[tokio::test]
async fn the_acceptors_spnego_reply_comes_back_with_the_response_and_says_accept_completed() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, false).await;
    let token = token(&kdc, "alice", None).await;

    let response = exchange
        .ews(&token.to_header_value(), &[], GET_INBOX)
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 200);
    let reply = response.headers()["www-authenticate"].to_str().unwrap();
    let reply = base64::engine::general_purpose::STANDARD
        .decode(reply.strip_prefix("Negotiate ").unwrap())
        .unwrap();
    let NegotiationToken::Resp(resp) = spnego::parse_negotiation_token(&reply).unwrap() else {
        panic!("not a NegTokenResp");
    };
    assert_eq!(resp.neg_state, Some(NegState::AcceptCompleted));
}

/// The decoded token of a `WWW-Authenticate: Negotiate <base64>` header value.
fn negotiate_reply(value: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Negotiate ").unwrap())
        .unwrap()
}

#[tokio::test]
async fn gssapis_mutual_authentication_reply_verifies_and_fits_only_its_own_token() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, false).await;
    let client = gateway(&kdc);
    let alice = client.user_name("alice").unwrap();
    let token = client
        .negotiate_token(&alice, EXCHANGE_SERVICE, None)
        .await
        .unwrap();
    // Another token from the same ticket, never sent: same session key, another time.
    let other = client
        .negotiate_token(&alice, EXCHANGE_SERVICE, None)
        .await
        .unwrap();

    let response = exchange
        .ews(&token.to_header_value(), &[], GET_INBOX)
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 200);
    let reply = negotiate_reply(response.headers()["www-authenticate"].to_str().unwrap());
    let NegotiationToken::Resp(resp) = spnego::parse_negotiation_token(&reply).unwrap() else {
        panic!("not a NegTokenResp");
    };
    assert!(
        resp.response_token.is_some(),
        "MIT answers the mutual flag with an AP-REP"
    );
    token.verify_mutual(&reply).unwrap();
    kcd_client::verify_mutual(token.context().unwrap(), &reply).unwrap();
    assert!(matches!(
        other.verify_mutual(&reply),
        Err(kcd_client::KcdError::MutualAuthentication { .. })
    ));
}

#[tokio::test]
async fn garbage_negotiate_gets_401_with_the_negotiate_challenge() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, false).await;
    // Base64 of bytes that are no SPNEGO token: refused by GSSAPI itself.
    let not_a_token = base64::engine::general_purpose::STANDARD.encode(b"\x60\x03garbage");

    for authorization in [
        format!("Negotiate {not_a_token}"),
        "Negotiate %%%".to_string(),
        "Negotiate".to_string(),
    ] {
        let response = exchange.ews(&authorization, &[], GET_INBOX).await.unwrap();

        assert_eq!(response.status().as_u16(), 401, "{authorization}");
        let challenges: Vec<_> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(challenges[0], "Negotiate", "{authorization}");
        assert_eq!(last_user(&exchange), None);
    }
}

#[tokio::test]
async fn a_replayed_token_is_refused() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, false).await;
    let token = token(&kdc, "alice", None).await;
    let (first, _) = get_inbox(&exchange, &token.to_header_value()).await;
    assert_eq!(first, 200);

    let (replayed, _) = get_inbox(&exchange, &token.to_header_value()).await;

    assert_eq!(replayed, 401);
}

#[tokio::test]
async fn a_kerberos_user_without_a_mailbox_is_refused() {
    let kdc = shared_kdc().await;
    let keytab = kdc.keytab(EXCHANGE_SERVICE).unwrap().to_path_buf();
    // Only alice has a mailbox on this server; bob is a KDC user all the same.
    let exchange = TestExchange::start(|config| {
        config.users = vec![User::new("alice@test.local", TEST_PASSWORD)];
        config.negotiate = Some(NegotiateConfig::new(keytab));
    })
    .await
    .unwrap();
    let token = token(&kdc, "bob", None).await;

    let (status, _) = get_inbox(&exchange, &token.to_header_value()).await;

    assert_eq!(status, 401);
}

#[tokio::test]
async fn with_extended_protection_a_token_without_bindings_is_refused() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, true).await;
    let token = token(&kdc, "alice", None).await;

    let (status, _) = get_inbox(&exchange, &token.to_header_value()).await;

    assert_eq!(status, 401);
}

#[tokio::test]
async fn with_extended_protection_a_token_bound_to_the_server_certificate_is_accepted() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, true).await;
    let token = token(&kdc, "alice", Some(&server_certificate_hash(&exchange))).await;

    let (status, _) = get_inbox(&exchange, &token.to_header_value()).await;

    assert_eq!(status, 200);
    assert_eq!(last_user(&exchange).as_deref(), Some("alice@test.local"));
}

#[tokio::test]
async fn with_extended_protection_a_token_bound_to_another_certificate_is_refused() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, true).await;
    let (other_pem, _key) = exchange
        .pki
        .issue_server_cert(&["exchange.test.local"])
        .unwrap();
    let other_hash = kcd_client::tls_server_end_point_hash(&der(&other_pem)).unwrap();
    let token = token(&kdc, "alice", Some(&other_hash)).await;

    let (status, _) = get_inbox(&exchange, &token.to_header_value()).await;

    assert_eq!(status, 401);
}

#[tokio::test]
async fn without_extended_protection_bindings_are_not_checked() {
    let kdc = shared_kdc().await;
    let exchange = exchange(&kdc, false).await;
    let token = token(&kdc, "alice", Some(&[0x5a; 32])).await;

    let (status, _) = get_inbox(&exchange, &token.to_header_value()).await;

    assert_eq!(status, 200);
}

#[tokio::test]
async fn when_the_tickets_really_expire_the_next_token_carries_new_ones_and_is_accepted() {
    // A realm whose tickets, the gateway's TGT included, live 6 s.
    const LIFE: Duration = Duration::from_secs(6);
    let kdc = kdc_with_users(0, |config| config.max_ticket_life = LIFE).await;
    let exchange = exchange(&kdc, false).await;
    // The default refresh margin (5 minutes) exceeds the life: a quarter of it is used.
    let client = gateway(&kdc);
    let alice = client.user_name("alice").unwrap();
    let first = client
        .service_ticket(&alice, EXCHANGE_SERVICE)
        .await
        .unwrap();
    assert!(first.end_time() <= SystemTime::now() + LIFE);
    let token = client
        .negotiate_token(&alice, EXCHANGE_SERVICE, None)
        .await
        .unwrap();
    assert_eq!(get_inbox(&exchange, &token.to_header_value()).await.0, 200);
    let reused = client.exchanges();
    assert_eq!(
        (reused.logins, reused.s4u2self, reused.s4u2proxy),
        (1, 1, 1)
    );

    // The service ticket, and the TGT it came from (obtained just before), expire.
    wait_until(first.end_time() + Duration::from_secs(1)).await;
    let token = client
        .negotiate_token(&alice, EXCHANGE_SERVICE, None)
        .await
        .unwrap();

    let (status, _) = get_inbox(&exchange, &token.to_header_value()).await;
    assert_eq!(status, 200);
    assert_eq!(last_user(&exchange).as_deref(), Some("alice@test.local"));
    let renewed = client.exchanges();
    assert_eq!(
        (renewed.logins, renewed.s4u2self, renewed.s4u2proxy),
        (2, 2, 2)
    );
    // MIT's acceptor tolerates a ticket expired within its clock skew, so the proof that the
    // token carries a new ticket is the ticket itself, opened with Exchange's key.
    let ticket = open_ticket(&kdc, EXCHANGE_SERVICE, &ap_req_of(&token).ticket);
    assert_eq!(names(&ticket.cname), ["alice"]);
    let end = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(ticket.end_time.0.timestamp()).unwrap());
    assert!(
        end > SystemTime::now(),
        "the token's ticket has not expired"
    );
    assert!(end > first.end_time());
    tokio::task::spawn_blocking(move || drop(kdc))
        .await
        .unwrap();
}
