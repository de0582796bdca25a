//! Identity from the client certificate, over real TLS: the listener of `ews-proxy-core` asking
//! for certificates, [`ClientCertLayer`] in front of a service that answers with the user it was
//! given, and clients presenting certificates made by `seg_testbed::pki` at test time.

use auth_negotiation::client_cert::{ClientCertLayer, UpnFallback, UpnRule, fingerprint};
use bytes::Bytes;
use ews_proxy_core::identity::{ClientIdentity, IdentitySource};
use ews_proxy_core::server::{PeerCertificate, Server, ServerSettings};
use ews_proxy_core::tls::{self, ClientAuth, ClientCertMode};
use http::{Request, Response};
use http_body_util::Full;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use seg_testbed::client::HttpClient;
use seg_testbed::harness;
use seg_testbed::pki::{ClientCert, ClientCertSpec, ClientUsage, TestPki, Validity};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;

/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(10);

/// What the service behind the layer answers: the user and the certificate fingerprint, or
/// `none: ` and why the listener found the certificate not valid.
fn describe(identity: Option<&ClientIdentity>, peer: Option<&PeerCertificate>) -> String {
    match (identity, peer.map(PeerCertificate::valid)) {
        (
            Some(ClientIdentity {
                user,
                source: IdentitySource::Certificate { fingerprint },
            }),
            _,
        ) => format!("{user} {fingerprint}"),
        (Some(other), _) => format!("{} from {:?}", other.user, other.source),
        (None, Some(Err(reason))) => format!("none: {reason}"),
        (None, Some(Ok(()))) => "none: valid".into(),
        (None, None) => "none: no certificate".into(),
    }
}

/// The CRL file a [`Listener`] is given, revoking serial numbers.
enum Crl<'a> {
    None,
    Der(&'a [u64]),
    Pem(&'a [u64]),
}

/// A TLS listener asking for client certificates issued by `pki`'s CA.
struct Listener {
    addr: SocketAddr,
    pki: Arc<TestPki>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Listener {
    /// Starts one with `mode`, `fallback`, and `crl`.
    async fn start(
        pki: Arc<TestPki>,
        mode: ClientCertMode,
        fallback: UpnFallback,
        crl: Crl<'_>,
    ) -> Listener {
        let dir = tempfile::tempdir().unwrap();
        // The server certificate comes from the same CA, so one root store serves the client.
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), pki.server_cert_pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), pki.server_key_pem()).unwrap();
        let path = dir.path().join("revoked.crl");
        let crls = match crl {
            Crl::None => vec![],
            Crl::Der(revoked) => {
                std::fs::write(&path, pki.crl_der(revoked).unwrap()).unwrap();
                vec![path]
            }
            Crl::Pem(revoked) => {
                std::fs::write(&path, pki.crl_pem(revoked).unwrap()).unwrap();
                vec![path]
            }
        };
        let auth = ClientAuth::load(mode, &dir.path().join("ca.pem"), &crls)
            .unwrap()
            .expect("a mode other than off")
            .with_rule(Arc::new(UpnRule::new(fallback)));
        let config = tls::server_config_with_client_auth(
            &dir.path().join("server.pem"),
            &dir.path().join("server.key"),
            &auth,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::new(listener, ServerSettings::default())
            .with_tls(config)
            .with_client_auth(auth);
        let addr = server.local_addr().unwrap();
        let service = ServiceBuilder::new()
            .layer(ClientCertLayer::new().with_fallback(fallback))
            .service_fn(|request: Request<hyper::body::Incoming>| async move {
                let extensions = request.extensions();
                let body = describe(extensions.get(), extensions.get());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(service, async {
            let _ = stopped.await;
        }));
        Listener {
            addr,
            pki,
            _dir: dir,
            _stop: stop,
        }
    }

    /// What the service answers a client presenting `cert` (none when `None`), or the error
    /// when the exchange fails.
    async fn ask(&self, cert: Option<&ClientCert>) -> Result<String, seg_testbed::Error> {
        let client = match cert {
            Some(cert) => HttpClient::with_config(cert.client_config(self.pki.root_store())?),
            None => HttpClient::trusting(self.pki.root_store()),
        };
        let request = Request::get(format!("https://localhost:{}/", self.addr.port()))
            .body(Full::default())
            .unwrap();
        harness::within(STEP, "the response", async {
            let response = client.send(request).await?;
            harness::body_text(response.into_body()).await
        })
        .await?
    }
}

fn pki() -> Arc<TestPki> {
    Arc::new(TestPki::in_memory(&[]).unwrap())
}

fn sha256_of(cert: &ClientCert) -> String {
    let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
    fingerprint(&der).to_string()
}

#[tokio::test]
async fn valid_certificate_names_its_upn_and_fingerprint() {
    let pki = pki();
    let cert = pki
        .issue_client_cert(&ClientCertSpec::upn("alice@corp.example"))
        .unwrap();
    for mode in [ClientCertMode::Optional, ClientCertMode::Required] {
        let listener = Listener::start(pki.clone(), mode, UpnFallback::None, Crl::None).await;
        assert_eq!(
            listener.ask(Some(&cert)).await.unwrap(),
            format!("alice@corp.example {}", sha256_of(&cert)),
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn without_upn_the_configured_fallback_names_the_user() {
    let pki = pki();
    let cert = pki
        .issue_client_cert(&ClientCertSpec {
            common_name: "Bob Builder".into(),
            email: Some("bob@corp.example".into()),
            ..ClientCertSpec::default()
        })
        .unwrap();
    let fingerprint = sha256_of(&cert);
    for (fallback, expected) in [
        (
            UpnFallback::Rfc822,
            format!("bob@corp.example {fingerprint}"),
        ),
        (UpnFallback::Cn, format!("Bob Builder {fingerprint}")),
        (
            UpnFallback::None,
            "none: certificate refused: certificate names no user".into(),
        ),
    ] {
        let listener =
            Listener::start(pki.clone(), ClientCertMode::Optional, fallback, Crl::None).await;
        assert_eq!(
            listener.ask(Some(&cert)).await.unwrap(),
            expected,
            "{fallback:?}"
        );
    }
}

/// The certificates that are not valid, each with a part of the reason the listener gives.
fn invalid_certificates(pki: &TestPki) -> Vec<(&'static str, ClientCert)> {
    let good = ClientCertSpec::upn("mallory@corp.example");
    let other_ca = TestPki::in_memory(&[]).unwrap();
    vec![
        (
            "certificate expired",
            pki.issue_client_cert(&ClientCertSpec {
                validity: Validity::Expired,
                ..good.clone()
            })
            .unwrap(),
        ),
        (
            "certificate not valid yet",
            pki.issue_client_cert(&ClientCertSpec {
                validity: Validity::NotYetValid,
                ..good.clone()
            })
            .unwrap(),
        ),
        // Same CA name, other key: the signature does not verify.
        ("BadSignature", other_ca.issue_client_cert(&good).unwrap()),
        (
            "does not allow extended key usage for client authentication",
            pki.issue_client_cert(&ClientCertSpec {
                usage: ClientUsage::ServerAuthOnly,
                ..good.clone()
            })
            .unwrap(),
        ),
        (
            "key usage does not allow digital signatures",
            pki.issue_client_cert(&ClientCertSpec {
                usage: ClientUsage::NoDigitalSignature,
                ..good.clone()
            })
            .unwrap(),
        ),
        (
            "certificate names no user",
            pki.issue_client_cert(&ClientCertSpec {
                common_name: "mallory@corp.example".into(),
                ..ClientCertSpec::default()
            })
            .unwrap(),
        ),
        (
            "user principal name is malformed",
            pki.issue_client_cert(&ClientCertSpec {
                // [0] EXPLICIT around an OCTET STRING of bytes that are not UTF-8.
                raw_upn_value: Some(vec![0xa0, 0x04, 0x04, 0x02, 0xff, 0xfe]),
                ..good.clone()
            })
            .unwrap(),
        ),
    ]
}

#[tokio::test]
async fn invalid_certificates_give_no_identity_in_optional_mode() {
    let pki = pki();
    let listener = Listener::start(
        pki.clone(),
        ClientCertMode::Optional,
        UpnFallback::None,
        Crl::None,
    )
    .await;
    for (reason, cert) in invalid_certificates(&pki) {
        let answer = listener.ask(Some(&cert)).await.unwrap();
        assert!(
            answer.starts_with("none: ") && answer.contains(reason),
            "{reason}: {answer}"
        );
    }
}

#[tokio::test]
async fn invalid_certificates_fail_the_handshake_in_required_mode() {
    let pki = pki();
    let listener = Listener::start(
        pki.clone(),
        ClientCertMode::Required,
        UpnFallback::None,
        Crl::None,
    )
    .await;
    for (reason, cert) in invalid_certificates(&pki) {
        let outcome = listener.ask(Some(&cert)).await;
        assert!(
            matches!(
                outcome,
                Err(seg_testbed::Error::Connect { .. } | seg_testbed::Error::Http(_))
            ),
            "{reason}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn certificate_revoked_by_a_pem_or_der_crl_is_no_certificate() {
    let pki = pki();
    let revoked = pki
        .issue_client_cert(&ClientCertSpec::upn("revoked@corp.example"))
        .unwrap();
    let kept = pki
        .issue_client_cert(&ClientCertSpec::upn("kept@corp.example"))
        .unwrap();
    let optional = Listener::start(
        pki.clone(),
        ClientCertMode::Optional,
        UpnFallback::None,
        Crl::Pem(&[revoked.serial]),
    )
    .await;
    assert_eq!(
        optional.ask(Some(&revoked)).await.unwrap(),
        "none: certificate chain refused: invalid peer certificate: Revoked"
    );
    assert_eq!(
        optional.ask(Some(&kept)).await.unwrap(),
        format!("kept@corp.example {}", sha256_of(&kept))
    );
    let required = Listener::start(
        pki.clone(),
        ClientCertMode::Required,
        UpnFallback::None,
        Crl::Der(&[revoked.serial]),
    )
    .await;
    assert!(required.ask(Some(&revoked)).await.is_err());
}

#[tokio::test]
async fn no_certificate_passes_without_identity_in_optional_mode_only() {
    let pki = pki();
    let optional = Listener::start(
        pki.clone(),
        ClientCertMode::Optional,
        UpnFallback::Cn,
        Crl::None,
    )
    .await;
    assert_eq!(optional.ask(None).await.unwrap(), "none: no certificate");
    let required = Listener::start(
        pki.clone(),
        ClientCertMode::Required,
        UpnFallback::Cn,
        Crl::None,
    )
    .await;
    assert!(required.ask(None).await.is_err());
}
