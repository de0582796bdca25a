//! Certificate-based authentication answered with Kerberos, end to end: a client presents a
//! certificate naming `alice@TEST.LOCAL` and no credentials; the gateway gets a ticket to
//! Exchange on her behalf from the real MIT KDC (S4U2Self + S4U2Proxy) and the test Exchange
//! accepts it with the system GSSAPI. The same holds on the ActiveSync stack, and for an
//! Exchange whose certificate is renewed while the gateway runs (Extended Protection).

mod support;

use http::StatusCode;
use http::header::WWW_AUTHENTICATE;
use seg_proxy::Gateway;
use seg_proxy::config::Config;
use seg_testbed::client::HttpClient;
use seg_testbed::exchange::NegotiateConfig;
use seg_testbed::harness::TestExchange;
use seg_testbed::kdc::{EXCHANGE_SERVICE, RunningKdc};
use seg_testbed::pki::ClientCertSpec;
use support::*;

const GET_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;

/// Whether Exchange requires Extended Protection, and the gateway binds its tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Binding {
    Off,
    Required,
}

/// A KDC, Exchange accepting Negotiate with its keytab, and a gateway with `cba-kcd` and
/// `ews.remove_unsupported_auth` whose TLS listener asks for client certificates.
struct Stand {
    kdc: RunningKdc,
    exchange: TestExchange,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

impl Stand {
    async fn start(binding: Binding) -> Stand {
        Stand::start_with(binding, |_| {}).await
    }

    /// [`Stand::start`] with `configure` making its changes to the gateway's configuration.
    async fn start_with(binding: Binding, configure: impl FnOnce(&mut Config)) -> Stand {
        let dir = tempfile::tempdir().unwrap();
        let kdc = start_kdc().await;
        let exchange_keytab = kdc.keytab(EXCHANGE_SERVICE).unwrap().to_path_buf();
        let exchange = TestExchange::start(|config| {
            let negotiate = NegotiateConfig::new(exchange_keytab);
            config.negotiate = Some(match binding {
                Binding::Off => negotiate,
                Binding::Required => negotiate.requiring_channel_binding(),
            });
        })
        .await
        .unwrap();
        let mut config = config_for(&exchange.server.base_url());
        let ca = dir.path().join("exchange-ca.pem");
        std::fs::write(&ca, exchange.pki.ca_pem()).unwrap();
        config.exchange.trust_store = Some(ca);
        config.ews.remove_unsupported_auth = true;
        with_client_certificates(&mut config, &exchange, dir.path());
        with_cba_kcd(&mut config, &kdc, binding == Binding::Required);
        configure(&mut config);
        let gateway = start(config).await;
        Stand {
            kdc,
            exchange,
            gateway,
            _dir: dir,
        }
    }

    /// A GetFolder without credentials over the TLS listener, presenting a certificate naming
    /// `alice@TEST.LOCAL` when `with_certificate`.
    async fn get_folder(&self, with_certificate: bool) -> http::Response<hyper::body::Incoming> {
        let request = soap_request(&https_ews_url(&self.gateway), GET_FOLDER);
        send(&self.client(with_certificate), request).await
    }

    /// An ActiveSync `OPTIONS` without credentials over the TLS listener, presenting a
    /// certificate naming `alice@TEST.LOCAL` when `with_certificate`, else with `authorization`
    /// when given.
    async fn activesync_options(
        &self,
        with_certificate: bool,
        authorization: Option<&str>,
    ) -> http::Response<hyper::body::Incoming> {
        let url = format!(
            "https://localhost:{}/Microsoft-Server-ActiveSync?Cmd=Options&DeviceId=EAS1&DeviceType=iPhone",
            self.gateway.https_addr().expect("a TLS listener").port()
        );
        let mut request = http::Request::options(url);
        if let Some(authorization) = authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let request = request.body(Default::default()).unwrap();
        send(&self.client(with_certificate), request).await
    }

    /// A client of the gateway's TLS listener, presenting alice's certificate when
    /// `with_certificate`.
    fn client(&self, with_certificate: bool) -> HttpClient {
        if with_certificate {
            let cert = self
                .exchange
                .pki
                .issue_client_cert(&ClientCertSpec::upn("alice@TEST.LOCAL"))
                .unwrap();
            HttpClient::with_config(cert.client_config(self.exchange.pki.root_store()).unwrap())
        } else {
            HttpClient::trusting(self.exchange.pki.root_store())
        }
    }

    /// The users Exchange saw authenticate, one per request that reached it.
    fn exchange_users(&self) -> Vec<Option<String>> {
        self.exchange
            .server
            .requests()
            .into_iter()
            .map(|request| request.authenticated_user)
            .collect()
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        stop_kdc(self.kdc).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_without_credentials_reaches_exchange_as_its_user_by_kerberos() {
    let stand = Stand::start(Binding::Off).await;

    let response = stand.get_folder(true).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        stand.exchange_users(),
        vec![Some("alice@test.local".to_owned())]
    );
    stand.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_token_is_bound_to_exchange_s_certificate_when_extended_protection_requires_it() {
    let stand = Stand::start(Binding::Required).await;

    let response = stand.get_folder(true).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        stand.exchange_users(),
        vec![Some("alice@test.local".to_owned())]
    );
    stand.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_and_no_credentials_leaves_only_the_basic_challenge() {
    let stand = Stand::start(Binding::Off).await;

    let response = stand.get_folder(false).await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<String> = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    assert!(
        !challenges.is_empty()
            && challenges
                .iter()
                .all(|c| c.trim_start().to_ascii_lowercase().starts_with("basic")),
        "{challenges:?}"
    );
    stand.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdc_down_is_a_503_and_nothing_reaches_exchange() {
    let mut stand = Stand::start(Binding::Off).await;
    let mut kdc = stand.kdc;
    stand.kdc = tokio::task::spawn_blocking(move || {
        kdc.stop_kdc();
        kdc
    })
    .await
    .unwrap();

    let response = stand.get_folder(true).await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers().get("x-seg-fault").unwrap(),
        "kcd-unavailable"
    );
    assert!(text(response).await.contains("Fault"));
    assert!(stand.exchange_users().is_empty());
    stand.stop().await;
}

/// The `WWW-Authenticate` challenges of a response, one per value.
fn challenges(response: &http::Response<hyper::body::Incoming>) -> Vec<String> {
    response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect()
}

/// ActiveSync proxied, with `activesync.remove_unsupported_auth`.
fn with_activesync(config: &mut Config) {
    config.activesync.enable_proxy = true;
    config.activesync.remove_unsupported_auth = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activesync_certificate_without_credentials_reaches_exchange_as_its_user_by_kerberos() {
    let stand = Stand::start_with(Binding::Off, with_activesync).await;

    let response = stand.activesync_options(true, None).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("ms-asprotocolversions"));
    assert_eq!(
        stand.exchange_users(),
        vec![Some("alice@test.local".to_owned())]
    );
    stand.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activesync_without_certificate_leaves_only_the_basic_challenge() {
    let stand = Stand::start_with(Binding::Off, with_activesync).await;

    let response = stand.activesync_options(false, None).await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenges = challenges(&response);
    assert!(
        !challenges.is_empty()
            && challenges
                .iter()
                .all(|c| c.trim_start().to_ascii_lowercase().starts_with("basic")),
        "{challenges:?}"
    );
    assert_eq!(stand.exchange_users(), vec![None]);
    stand.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activesync_ntlm_is_refused_and_never_forwarded() {
    let stand = Stand::start_with(Binding::Off, with_activesync).await;

    let response = stand
        .activesync_options(
            false,
            Some("NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAPRlAAAADw=="),
        )
        .await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(stand.exchange_users().is_empty());
    stand.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activesync_kerberos_is_bound_to_exchange_s_certificate_when_extended_protection_requires_it()
 {
    let stand = Stand::start_with(Binding::Required, with_activesync).await;

    let response = stand.activesync_options(true, None).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        stand.exchange_users(),
        vec![Some("alice@test.local".to_owned())]
    );
    stand.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_binding_follows_a_renewed_exchange_certificate_without_a_restart() {
    let mut stand = Stand::start(Binding::Required).await;
    assert_eq!(stand.get_folder(true).await.status(), StatusCode::OK);
    let keytab = stand.kdc.keytab(EXCHANGE_SERVICE).unwrap().to_path_buf();

    // Exchange comes back on the same address with a renewed certificate.
    stand.exchange = stand
        .exchange
        .restart_with_new_certificate(|config| {
            config.negotiate = Some(NegotiateConfig::new(keytab).requiring_channel_binding());
        })
        .await
        .unwrap();
    let response = stand.get_folder(true).await;

    assert_eq!(response.status(), StatusCode::OK);
    // The token made before the gateway met the new certificate is refused; the retry, bound
    // to the certificate of the connection that met it, is accepted.
    assert_eq!(
        stand.exchange_users(),
        vec![None, Some("alice@test.local".to_owned())]
    );
    stand.stop().await;
}
