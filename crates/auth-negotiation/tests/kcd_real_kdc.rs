//! The KCD layer with the real `KcdClient` against the real MIT KDC of `seg-testbed`: concurrent
//! requests of one user share one S4U exchange, a `401` really drops the ticket, and an unknown
//! user is a `503` that never reaches Exchange.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use auth_negotiation::kcd::{KcdAuthLayer, KcdBody};
use base64::Engine as _;
use bytes::Bytes;
use ews_proxy_core::identity::{CertificateFingerprint, ClientIdentity, IdentitySource};
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::Full;
use kcd_client::{Credentials, KcdClient, KcdConfig, RealmConfig};
use seg_testbed::kdc::{
    DEFAULT_REALM, EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig, RunningKdc,
};
use tower::{Layer as _, ServiceExt as _};

/// The KDC the tests of this binary share while any of them runs; it stops when the last one
/// using it finishes.
async fn shared_kdc() -> Arc<RunningKdc> {
    Kdc::shared(KdcConfig::temporary)
        .await
        .expect("the test KDC starts")
}

/// The gateway's client, logged in with its keytab; a new one per test, so that its counters
/// and caches are the test's own.
fn gateway(kdc: &RunningKdc) -> KcdClient {
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_path_buf();
    let mut config = KcdConfig::new(
        vec![RealmConfig::new(DEFAULT_REALM, [kdc.addr().to_string()])],
        GATEWAY_SERVICE,
        Credentials::KeytabFile(keytab),
    );
    config.attempt_timeout = Duration::from_secs(2);
    KcdClient::new(config).unwrap()
}

/// A request from a client whose verified certificate names `upn`.
fn certificate_request(upn: &str) -> Request<Full<Bytes>> {
    let mut request = Request::post("/EWS/Exchange.asmx")
        .body(Full::new(Bytes::from_static(b"<GetFolder/>")))
        .unwrap();
    request.extensions_mut().insert(ClientIdentity {
        user: upn.to_owned(),
        source: IdentitySource::Certificate {
            fingerprint: CertificateFingerprint([3; 32]),
        },
    });
    request
}

/// Whether `value` is `Negotiate` with a GSS-API initial context token (tag 0x60), as SPNEGO's
/// NegTokenInit is.
fn is_spnego(value: &str) -> bool {
    value
        .strip_prefix("Negotiate ")
        .and_then(|token| base64::engine::general_purpose::STANDARD.decode(token).ok())
        .is_some_and(|token| token.first() == Some(&0x60))
}

/// A stand-in for Exchange: `200` to a SPNEGO token, `400` to anything else; counts calls.
fn exchange(
    calls: Arc<AtomicUsize>,
    first_status: StatusCode,
) -> impl tower::Service<
    Request<KcdBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(move |request: Request<KcdBody<Full<Bytes>>>| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let spnego = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_spnego);
            let status = match (spnego, call) {
                (false, _) => StatusCode::BAD_REQUEST,
                (true, 0) => first_status,
                (true, _) => StatusCode::OK,
            };
            let mut response = Response::new(Full::default());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_of_one_user_make_one_s4u2self_and_one_s4u2proxy() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);
    let calls = Arc::new(AtomicUsize::new(0));
    let service = KcdAuthLayer::for_client(client.clone(), EXCHANGE_SERVICE)
        .layer(exchange(calls.clone(), StatusCode::OK));

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let service = service.clone();
        requests.spawn(async move {
            service
                .oneshot(certificate_request("alice@TEST.LOCAL"))
                .await
                .unwrap()
                .status()
        });
    }
    let statuses = requests.join_all().await;

    assert_eq!(statuses, vec![StatusCode::OK; 100]);
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    let exchanges = client.exchanges();
    assert_eq!(
        (exchanges.logins, exchanges.s4u2self, exchanges.s4u2proxy),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_401_makes_the_real_client_ask_the_kdc_again() {
    let kdc = shared_kdc().await;
    let client = gateway(&kdc);
    let calls = Arc::new(AtomicUsize::new(0));
    let service = KcdAuthLayer::for_client(client.clone(), EXCHANGE_SERVICE)
        .layer(exchange(calls.clone(), StatusCode::UNAUTHORIZED));

    let response = service
        .oneshot(certificate_request("alice@TEST.LOCAL"))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let exchanges = client.exchanges();
    assert_eq!((exchanges.s4u2self, exchanges.s4u2proxy), (2, 2));
}

#[tokio::test]
async fn a_user_the_kdc_does_not_know_is_a_503_and_never_reaches_exchange() {
    let kdc = shared_kdc().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let service = KcdAuthLayer::for_client(gateway(&kdc), EXCHANGE_SERVICE)
        .layer(exchange(calls.clone(), StatusCode::OK));

    let response = service
        .oneshot(certificate_request("mallory@TEST.LOCAL"))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-seg-fault"], "kcd-unknown-user");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

const GET_INBOX: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;

/// An Exchange stand-in that sends the gateway's `Authorization` on to the test Exchange of
/// `seg-testbed` (which accepts Negotiate with MIT's GSSAPI and Exchange's keytab) and answers
/// with its status and `WWW-Authenticate` headers.
fn gssapi_exchange(
    exchange: Arc<seg_testbed::harness::TestExchange>,
) -> impl tower::Service<
    Request<KcdBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(move |request: Request<KcdBody<Full<Bytes>>>| {
        let exchange = Arc::clone(&exchange);
        async move {
            let authorization = request.headers()[AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_owned();
            let answer = exchange.ews(&authorization, &[], GET_INBOX).await.unwrap();
            let mut response = Response::new(Full::default());
            *response.status_mut() = answer.status();
            for value in answer.headers().get_all(http::header::WWW_AUTHENTICATE) {
                response
                    .headers_mut()
                    .append(http::header::WWW_AUTHENTICATE, value.clone());
            }
            Ok::<_, Infallible>(response)
        }
    })
}

#[tokio::test]
async fn exchanges_gssapi_proof_of_identity_is_verified_and_the_answer_passed_on() {
    let kdc = shared_kdc().await;
    let keytab = kdc.keytab(EXCHANGE_SERVICE).unwrap().to_path_buf();
    let exchange = seg_testbed::harness::TestExchange::start(|config| {
        config.negotiate = Some(seg_testbed::exchange::NegotiateConfig::new(keytab));
    })
    .await
    .unwrap();
    let service = KcdAuthLayer::for_client(gateway(&kdc), EXCHANGE_SERVICE)
        .verifying_mutual_authentication()
        .layer(gssapi_exchange(Arc::new(exchange)));

    let response = service
        .oneshot(certificate_request("alice@TEST.LOCAL"))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-seg-fault").is_none());
}

#[tokio::test]
async fn an_answer_without_a_valid_proof_of_identity_is_a_502_when_verifying() {
    let kdc = shared_kdc().await;
    // What a server that could not read the ticket might answer: completed, but no AP-REP.
    let no_ap_rep = base64::engine::general_purpose::STANDARD
        .encode([0xa1, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x0a, 0x01, 0x00]);
    for (status, negotiate) in [
        (StatusCode::OK, Some(format!("Negotiate {no_ap_rep}"))),
        (StatusCode::OK, Some("Negotiate %%%".to_owned())),
        (StatusCode::OK, None),
        (
            StatusCode::FORBIDDEN,
            Some(format!("Negotiate {no_ap_rep}")),
        ),
    ] {
        let answer = negotiate.clone();
        let impostor = tower::service_fn(move |_: Request<KcdBody<Full<Bytes>>>| {
            let answer = answer.clone();
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(b"<secret/>")));
                *response.status_mut() = status;
                if let Some(value) = answer {
                    response.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_str(&value).unwrap(),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        });
        let service = KcdAuthLayer::for_client(gateway(&kdc), EXCHANGE_SERVICE)
            .verifying_mutual_authentication()
            .layer(impostor);

        let response = service
            .oneshot(certificate_request("alice@TEST.LOCAL"))
            .await
            .unwrap();

        assert_eq!(
            response.status(),
            StatusCode::BAD_GATEWAY,
            "{status} {negotiate:?}"
        );
        assert_eq!(response.headers()["x-seg-fault"], "kcd-mutual-auth-failed");
    }
}

#[tokio::test]
async fn without_verification_or_for_an_error_without_a_token_the_answer_passes() {
    let kdc = shared_kdc().await;
    for (verify, status) in [(false, StatusCode::OK), (true, StatusCode::FORBIDDEN)] {
        let layer = KcdAuthLayer::for_client(gateway(&kdc), EXCHANGE_SERVICE);
        let layer = if verify {
            layer.verifying_mutual_authentication()
        } else {
            layer
        };
        let service = layer.layer(tower::service_fn(
            move |_: Request<KcdBody<Full<Bytes>>>| async move {
                let mut response = Response::new(Full::<Bytes>::default());
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            },
        ));

        let response = service
            .oneshot(certificate_request("alice@TEST.LOCAL"))
            .await
            .unwrap();

        assert_eq!(response.status(), status);
    }
}
