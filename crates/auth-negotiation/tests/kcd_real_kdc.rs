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
