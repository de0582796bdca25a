//! Identity from the client certificate, end to end: the gateway's TLS listener asks for a
//! certificate (`auth.client_cert = optional`), and the compliance layer applies the user
//! policy of the UPN the certificate names, for requests without credentials.

mod support;

use http::StatusCode;
use seg_proxy::Gateway;
use seg_testbed::client::HttpClient;
use seg_testbed::harness::{self, TestExchange, reserve_port};
use seg_testbed::pki::{ClientCert, ClientCertSpec, Validity};
use seg_testbed::uem::{self, Device, UemConfig, UemServer};
use support::*;

const ALICE: &str = "alice@test.local";
const BOB: &str = "bob@test.local";
/// Bob's device: compliant, so only a user policy can block a request from it.
const BOBS_DEVICE: &str = "EASDEV2";
const GET_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;

/// Exchange, UEM, and a gateway with compliance whose TLS listener asks for client
/// certificates issued by Exchange's test CA; alice is blocked by a user override.
struct Stand {
    exchange: TestExchange,
    gateway: Gateway,
    _uem: uem::UemHandle,
    _dir: tempfile::TempDir,
}

impl Stand {
    /// A client certificate from the test CA, as `spec` says.
    fn certificate(&self, spec: ClientCertSpec) -> ClientCert {
        self.exchange.pki.issue_client_cert(&spec).unwrap()
    }

    async fn start() -> Stand {
        let dir = tempfile::tempdir().unwrap();
        let exchange = TestExchange::start(|_| {}).await.unwrap();
        let admin = reserve_port().unwrap();
        let uem_config = UemConfig::new(vec![
            Device::new("EASDEV1", 1, ALICE),
            Device::new(BOBS_DEVICE, 2, BOB),
        ]);
        let uem =
            UemServer::spawn(harness::local_listener().await.unwrap(), None, uem_config).unwrap();
        let mut config = gateway_config(
            &exchange,
            &uem,
            "http://127.0.0.1:9/unused",
            admin,
            dir.path().join("view.snapshot"),
            dir.path(),
        );
        with_client_certificates(&mut config, &exchange, dir.path());
        let gateway = start(config).await;
        let stand = Stand {
            exchange,
            gateway,
            _uem: uem,
            _dir: dir,
        };
        stand.wait_ready().await;
        stand.block_alice().await;
        stand
    }

    async fn wait_ready(&self) {
        wait_ready(&self.gateway).await;
    }

    async fn block_alice(&self) {
        assert_eq!(
            admin_user_override(&self.gateway, ALICE, Some("block")).await,
            StatusCode::OK
        );
    }

    /// A GetFolder from bob's device over the TLS listener, presenting `cert`, with
    /// `authorization` when given.
    async fn ews(
        &self,
        cert: &ClientCert,
        authorization: Option<&str>,
    ) -> http::Response<hyper::body::Incoming> {
        let url = format!(
            "https://localhost:{}/EWS/Exchange.asmx",
            self.gateway.https_addr().unwrap().port()
        );
        let request = harness::ews_request(
            &url,
            authorization,
            &[("X-Device-Id", BOBS_DEVICE)],
            soap(GET_FOLDER),
        )
        .unwrap();
        let config = cert.client_config(self.exchange.pki.root_store()).unwrap();
        HttpClient::with_config(config).send(request).await.unwrap()
    }
}

/// The gateway's compliance verdict header; absent on a request it lets through.
fn compliance_status(response: &http::Response<hyper::body::Incoming>) -> Option<&str> {
    response
        .headers()
        .get("x-compliance-status")
        .map(|value| value.to_str().unwrap())
}

#[tokio::test]
async fn certificate_upn_is_the_user_compliance_sees() {
    let stand = Stand::start().await;
    let alice = stand.certificate(ClientCertSpec::upn(ALICE));
    let refused = stand.ews(&alice, None).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        compliance_status(&refused),
        Some("blocked; reason=user-override")
    );
}

#[tokio::test]
async fn valid_certificate_with_credentials_reaches_exchange() {
    let stand = Stand::start().await;
    let bob = stand.certificate(ClientCertSpec::upn(BOB));
    let basic = stand.exchange.basic(BOB);
    let response = stand.ews(&bob, Some(&basic)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(compliance_status(&response), None);
    assert!(text(response).await.contains("GetFolderResponse"));
}

#[tokio::test]
async fn expired_certificate_names_nobody() {
    let stand = Stand::start().await;
    let expired = stand.certificate(ClientCertSpec {
        validity: Validity::Expired,
        ..ClientCertSpec::upn(ALICE)
    });
    // Without a user, alice's override cannot apply: Exchange answers (it wants credentials).
    let response = stand.ews(&expired, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(compliance_status(&response), None);
}

#[tokio::test]
async fn credentials_decide_the_user_over_the_certificate() {
    let stand = Stand::start().await;
    let alice = stand.certificate(ClientCertSpec::upn(ALICE));
    let basic = stand.exchange.basic(BOB);
    let response = stand.ews(&alice, Some(&basic)).await;
    assert_eq!(response.status(), StatusCode::OK);
}
