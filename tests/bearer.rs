//! OAuth bearer tokens verified by the gateway (`[auth.oauth]`), end to end: the test Exchange's
//! issuer signs ES256 tokens; the gateway holds its public key (a JWKS file or a PEM file) and
//! refuses, with `401` and a SOAP fault, a token that does not verify, before Exchange sees it.

mod support;

use http::StatusCode;
use seg_proxy::Gateway;
use seg_proxy::config::OAuth;
use seg_testbed::harness::{TestExchange, ews_request};
use seg_testbed::token::{ISSUER, TokenIssuer};
use std::time::Duration;
use support::*;

const GET_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;

/// Which of the issuer's key files the gateway is given.
enum Keys {
    /// No `[auth.oauth]`: tokens pass unverified.
    None,
    Jwks,
    Pem,
}

struct Stand {
    exchange: TestExchange,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

impl Stand {
    async fn start(keys: Keys) -> Stand {
        let dir = tempfile::tempdir().unwrap();
        let exchange = TestExchange::start(|_| {}).await.unwrap();
        let mut config = config_for(&exchange.server.base_url());
        let ca = dir.path().join("exchange-ca.pem");
        std::fs::write(&ca, exchange.pki.ca_pem()).unwrap();
        config.exchange.trust_store = Some(ca);
        let mut oauth = OAuth {
            issuer: Some(ISSUER.into()),
            audience: Some(exchange.tokens.audience().into()),
            ..OAuth::default()
        };
        match keys {
            Keys::None => {}
            Keys::Jwks => {
                let path = dir.path().join("issuer.jwks");
                std::fs::write(&path, exchange.tokens.jwks().unwrap()).unwrap();
                oauth.jwks = Some(path);
            }
            Keys::Pem => {
                let path = dir.path().join("issuer.pem");
                exchange.tokens.write_public_key(&path).unwrap();
                oauth.public_key = Some(path);
            }
        }
        if !matches!(keys, Keys::None) {
            config.auth.oauth = Some(oauth);
        }
        let gateway = start(config).await;
        Stand {
            exchange,
            gateway,
            _dir: dir,
        }
    }

    async fn get_folder(&self, token: &str) -> http::Response<hyper::body::Incoming> {
        let url = format!("{}/EWS/Exchange.asmx", http_base(&self.gateway));
        let authorization = format!("Bearer {token}");
        let request = ews_request(&url, Some(&authorization), &[], soap(GET_FOLDER)).unwrap();
        send(
            &seg_testbed::client::HttpClient::accepting_any_certificate(),
            request,
        )
        .await
    }

    /// The `Authorization` headers that reached Exchange.
    fn forwarded(&self) -> Vec<String> {
        self.exchange
            .server
            .requests()
            .iter()
            .filter_map(|r| {
                r.headers
                    .get("authorization")?
                    .to_str()
                    .ok()
                    .map(String::from)
            })
            .collect()
    }
}

fn expired(issuer: &TokenIssuer) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    issuer
        .issue_claims(&serde_json::json!({
            "aud": issuer.audience(), "iss": ISSUER, "upn": "alice@test.local",
            "nbf": now - 7200, "exp": now - 3600,
        }))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_verifies_against_the_jwks_reaches_exchange_untouched() {
    let stand = Stand::start(Keys::Jwks).await;
    let token = stand
        .exchange
        .tokens
        .issue("alice@test.local", Duration::from_secs(600))
        .unwrap();

    let response = stand.get_folder(&token).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stand.forwarded(), vec![format!("Bearer {token}")]);
    stand.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_with_401_and_never_forwarded() {
    let stand = Stand::start(Keys::Jwks).await;

    let response = stand.get_folder(&expired(&stand.exchange.tokens)).await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["x-seg-fault"], "bearer-expired");
    assert!(
        text(response)
            .await
            .contains("the bearer token has expired")
    );
    assert!(stand.exchange.server.requests().is_empty());
    stand.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_another_key_is_refused_with_the_pem_key_too() {
    let stand = Stand::start(Keys::Pem).await;
    let forger = TokenIssuer::generate(stand.exchange.tokens.audience()).unwrap();
    let forged = forger
        .issue("alice@test.local", Duration::from_secs(600))
        .unwrap();
    let genuine = stand
        .exchange
        .tokens
        .issue("alice@test.local", Duration::from_secs(600))
        .unwrap();

    let refused = stand.get_folder(&forged).await;
    let accepted = stand.get_folder(&genuine).await;

    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["x-seg-fault"], "bearer-bad-signature");
    assert_eq!(accepted.status(), StatusCode::OK);
    assert_eq!(stand.forwarded(), vec![format!("Bearer {genuine}")]);
    stand.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_oauth_tokens_pass_unverified_and_exchange_judges_them() {
    let stand = Stand::start(Keys::None).await;
    let token = expired(&stand.exchange.tokens);

    let response = stand.get_folder(&token).await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get("x-seg-fault").is_none());
    assert_eq!(stand.forwarded(), vec![format!("Bearer {token}")]);
    stand.gateway.shutdown().await;
}
