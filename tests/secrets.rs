//! No secret leaks (issue 10): the real `seg-proxy` binary (built by cargo on first use) runs
//! with every secret it holds set to a distinctive string: the UEM API password and tenant
//! code, the webhook secret, the admin token and an operator's token, the TLS listener's
//! private key and the Kerberos keytab of constrained delegation. Clients send it what it only
//! forwards: a Basic password (right and wrong), a Bearer token, a client certificate (whose
//! private key it never sees, and must not show) answered by Kerberos from the real MIT KDC.
//! The scenarios run: proxied EWS requests, a wipe through the webhook, an admin override,
//! console sign-ins and pages, refused tokens. Then every log line (at debug level for the
//! workspace's crates), every answer of the admin API and console, `/metrics`, the audit
//! store, the view snapshot, and what the gateway told ENS are searched for every secret, as
//! it is and as it travels (Basic's base64, PEM's base64, a keytab key in hex and base64).

mod support;

use http::StatusCode;
use seg_proxy::config::AdminOperator;
use seg_testbed::exchange::{NegotiateConfig, User};
use seg_testbed::harness::{self, TestExchange, reserve_port};
use seg_testbed::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE};
use seg_testbed::pki::ClientCertSpec;
use seg_testbed::uem::{self, Change, Device, UemConfig, UemServer};
use std::time::Duration;
use support::*;

const ALICE: &str = "alice@test.local";
/// Alice's Exchange password: the gateway forwards it in Basic credentials.
const CLIENT_PASSWORD: &str = "client-pw-Qx7Lm2Vb";
/// A wrong password a client tries: forwarded too, refused by Exchange.
const WRONG_PASSWORD: &str = "wrong-pw-Jd4Ks8Wp";
const UEM_PASSWORD: &str = "uem-api-pw-K4v8N1Tz";
const UEM_TENANT_CODE: &str = "uem-tenant-R5t3W8Yc";
const WEBHOOK: &str = "webhook-secret-H6j2P0Gn";
const ADMIN: &str = "admin-token-M9c4L7Fq-0001";
const OPERATOR: &str = "operator-token-B3n8V5Rd";
/// A token someone tries on the admin API and the console: refused, and not written down.
const WRONG_TOKEN: &str = "wrong-admin-token-Z8k1Hu";

const COMPLIANT: &str = "EASDEV1";
const WIPED: &str = "EASDEV2";
const GET_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
/// Workspace crates at debug (more lines to search), the rest at info as in production.
const LOG_FILTER: &str = "info,seg_proxy=debug,ews_proxy_core=debug,auth_negotiation=debug,\
    kcd_client=debug,compliance_policy=debug,audit_trail=debug,admin_console=debug";

/// A secret and the forms it may be written in.
struct Secret {
    name: String,
    forms: Vec<Vec<u8>>,
}

impl Secret {
    /// `text` as it is.
    fn text(name: &str, text: &str) -> Secret {
        Secret {
            name: name.to_owned(),
            forms: vec![text.as_bytes().to_vec()],
        }
    }

    /// `user:password` of Basic credentials: the password, and the credentials as they travel.
    fn basic(name: &str, user: &str, password: &str) -> Secret {
        let encoded = encode_base64(format!("{user}:{password}").as_bytes());
        let mut secret = Secret::text(name, password);
        secret.forms.push(encoded.into_bytes());
        secret
    }

    /// A PEM private key: each full line of its base64 body (any 64 characters of it would
    /// betray the key).
    fn pem(name: &str, pem: &str) -> Secret {
        let forms = pem
            .lines()
            .filter(|line| !line.starts_with("-----") && line.len() >= 32)
            .map(|line| line.as_bytes().to_vec())
            .collect::<Vec<_>>();
        assert!(!forms.is_empty(), "{name} has a body");
        Secret {
            name: name.to_owned(),
            forms,
        }
    }

    /// Key bytes: raw, in hex (both cases) and in base64.
    fn key(name: &str, key: &[u8]) -> Secret {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        Secret {
            name: name.to_owned(),
            forms: vec![
                key.to_vec(),
                hex.clone().into_bytes(),
                hex.to_uppercase().into_bytes(),
                encode_base64(key).trim_end_matches('=').as_bytes().to_vec(),
            ],
        }
    }

    /// The first form of this secret found in `haystack`, if any.
    fn found_in(&self, haystack: &[u8]) -> Option<usize> {
        self.forms.iter().position(|form| {
            !form.is_empty() && haystack.windows(form.len()).any(|window| window == form)
        })
    }
}

/// Everything the gateway wrote or answered, by where it came from.
#[derive(Default)]
struct Outputs(Vec<(String, Vec<u8>)>);

impl Outputs {
    fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.0.push((what.into(), bytes.into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_log_answer_or_file_of_a_gateway_process() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let kdc = start_kdc().await;
    let exchange_keytab = kdc.keytab(EXCHANGE_SERVICE).unwrap().to_path_buf();
    let exchange = TestExchange::start(|config| {
        config.users = vec![User::new(ALICE, CLIENT_PASSWORD)];
        config.negotiate = Some(NegotiateConfig::new(exchange_keytab));
    })
    .await
    .unwrap();
    let ens = uem::WebhookReceiver::start().await.unwrap();
    let (http, https, admin) = (
        reserve_port().unwrap(),
        reserve_port().unwrap(),
        reserve_port().unwrap(),
    );
    let mut uem_config = UemConfig::new(vec![
        Device::new(COMPLIANT, 1, ALICE),
        Device::new(WIPED, 2, ALICE),
    ]);
    uem_config.credentials.password = UEM_PASSWORD.into();
    uem_config.tenant_code = UEM_TENANT_CODE.into();
    uem_config.webhook = Some(uem::Webhook::new(
        &format!("http://{admin}/events/compliance"),
        WEBHOOK,
    ));
    let uem = UemServer::spawn(harness::local_listener().await.unwrap(), None, uem_config).unwrap();

    let mut config = gateway_config(
        &exchange,
        &uem,
        &format!("{}/gateway/compliance", ens.url()),
        admin,
        state.join("view.snapshot"),
        dir.path(),
    );
    config.listen.http = Some(http);
    let compliance = config.compliance.as_mut().unwrap();
    compliance.uem_password = UEM_PASSWORD.into();
    compliance.webhook_secret = Some(WEBHOOK.into());
    config.admin.token = Some(ADMIN.into());
    config.admin.operators = vec![AdminOperator {
        name: "carol".into(),
        token: OPERATOR.into(),
    }];
    with_audit(&mut config, state.join("audit.redb"), "seg-secrets");
    with_client_certificates(&mut config, &exchange, dir.path());
    config.listen.https = Some(https);
    with_cba_kcd(&mut config, &kdc, false);

    let keytab = kcd_client::keytab::Keytab::read(kdc.keytab(GATEWAY_SERVICE).unwrap()).unwrap();
    let client_cert = exchange
        .pki
        .issue_client_cert(&ClientCertSpec::upn("alice@TEST.LOCAL"))
        .unwrap();
    let bearer = exchange
        .tokens
        .issue(ALICE, Duration::from_secs(3600))
        .unwrap();
    let mut secrets = vec![
        Secret::basic("alice's password", ALICE, CLIENT_PASSWORD),
        Secret::basic("a wrong password", ALICE, WRONG_PASSWORD),
        Secret::basic("the UEM password", uem::DEFAULT_API_USER, UEM_PASSWORD),
        Secret::text("the UEM tenant code", UEM_TENANT_CODE),
        Secret::text("the webhook secret", WEBHOOK),
        Secret::text("the admin token", ADMIN),
        Secret::text("the operator's token", OPERATOR),
        Secret::text("a refused token", WRONG_TOKEN),
        Secret::text("the bearer token", &bearer),
        Secret::text(
            "the bearer token's signature",
            bearer.rsplit('.').next().unwrap(),
        ),
        Secret::pem(
            "the TLS private key",
            &std::fs::read_to_string(dir.path().join("gateway.key")).unwrap(),
        ),
        Secret::pem("the client's private key", &client_cert.key_pem),
    ];
    for (i, entry) in keytab.entries().iter().enumerate() {
        secrets.push(Secret::key(
            &format!("keytab key {i} ({:?})", entry.key.etype()),
            entry.key.bytes(),
        ));
    }

    // The configuration file is the one place the secrets belong. Created open to others
    // (writing it later keeps the mode): the gateway must warn, naming it.
    let config_file = dir.path().join("seg.toml");
    std::fs::write(&config_file, "").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut gateway = GatewayProcess::spawn_logging("seg", &config, dir.path(), LOG_FILTER);
    gateway.wait_ready().await;
    let mut outputs = Outputs::default();

    // Proxied EWS: Basic (right and wrong), Bearer, and a certificate answered by Kerberos.
    let ews_url = format!("{}/EWS/Exchange.asmx", gateway.http_base());
    let ews = |authorization: String, device: &'static str| {
        harness::ews_request(
            &ews_url,
            Some(&authorization),
            &[("X-Device-Id", device)],
            soap(GET_FOLDER),
        )
        .unwrap()
    };
    let plain = seg_testbed::client::HttpClient::accepting_any_certificate();
    for (authorization, expected) in [
        (harness::basic_auth(ALICE, CLIENT_PASSWORD), StatusCode::OK),
        (
            harness::basic_auth(ALICE, WRONG_PASSWORD),
            StatusCode::UNAUTHORIZED,
        ),
        (format!("Bearer {bearer}"), StatusCode::OK),
    ] {
        let response = send(&plain, ews(authorization, COMPLIANT)).await;
        let status = response.status();
        let body = text(response).await;
        assert_eq!(status, expected, "{body}");
        outputs.add("an EWS answer", body);
    }
    let with_certificate = seg_testbed::client::HttpClient::with_config(
        client_cert
            .client_config(exchange.pki.root_store())
            .unwrap(),
    );
    let url = format!("https://localhost:{}/EWS/Exchange.asmx", https.port());
    let response = send(
        &with_certificate,
        harness::ews_request(&url, None, &[("X-Device-Id", COMPLIANT)], soap(GET_FOLDER)).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK, "certificate by Kerberos");
    outputs.add("an EWS answer by Kerberos", text(response).await);

    // A wipe through UEM's webhook (with its secret), then the device is refused.
    uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    harness::wait_until(STEP, "the wiped device refused", || {
        let request = ews(harness::basic_auth(ALICE, CLIENT_PASSWORD), WIPED);
        let plain = &plain;
        async move { send(plain, request).await.status() == StatusCode::FORBIDDEN }
    })
    .await
    .unwrap();

    // The admin API: an override, reads, and a refused token.
    let put = |token: &'static str| async move {
        admin_request_at(
            admin,
            http::Method::PUT,
            &format!("/overrides/device/{COMPLIANT}"),
            Some(token),
            r#"{"action":"block"}"#,
        )
        .await
    };
    let (status, body) = put(ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    outputs.add("the override's answer", body);
    let (status, body) = put(WRONG_TOKEN).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    outputs.add("a refused override's answer", body);
    harness::wait_until(STEP, "the override in the audit trail", || async {
        let (_, body) = admin_request_at(admin, http::Method::GET, "/audit", Some(ADMIN), "").await;
        body.contains(COMPLIANT)
    })
    .await
    .unwrap();
    for path in [
        "/healthz".to_owned(),
        "/readyz".to_owned(),
        "/metrics".to_owned(),
        "/sync".to_owned(),
        "/devices".to_owned(),
        format!("/policy/device/{COMPLIANT}"),
        format!("/policy/device/{WIPED}"),
        "/audit".to_owned(),
        "/audit/export".to_owned(),
    ] {
        for token in [Some(ADMIN), Some(WRONG_TOKEN), None] {
            let (status, body) = admin_request_at(admin, http::Method::GET, &path, token, "").await;
            outputs.add(format!("GET {path} ({status})"), body);
        }
    }

    // The console: a refused sign-in, then the operator's and the admin token's, every page.
    assert_eq!(console_sign_in_at(admin, WRONG_TOKEN).await, None);
    for token in [OPERATOR, ADMIN] {
        let cookie = console_sign_in_at(admin, token)
            .await
            .expect("the console signs in");
        outputs.add("the session cookie", cookie.clone());
        for path in [
            "/ui/".to_owned(),
            "/ui/devices".to_owned(),
            "/ui/devices?q=alice".to_owned(),
            format!("/ui/devices/{COMPLIANT}"),
            format!("/ui/devices/{WIPED}"),
            "/ui/users/alice%40test.local".to_owned(),
            "/ui/audit".to_owned(),
            "/ui/config".to_owned(),
        ] {
            let (status, headers, page) =
                console_request_at(admin, &path, Some(&cookie), None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {page}");
            outputs.add(format!("console {path}"), page);
            outputs.add(format!("console {path} headers"), format!("{headers:?}"));
        }
    }

    // What the gateway told ENS.
    for request in ens.received() {
        outputs.add(
            format!("to ENS: {} {}", request.method, request.path),
            format!(
                "{:?}\n{}",
                request.headers,
                String::from_utf8_lossy(&request.body)
            ),
        );
    }

    gateway.kill();
    let log = gateway.log();
    assert!(log.contains("seg-proxy started"), "{log}");
    let warning = log
        .lines()
        .find(|line| line.contains("a file holding a secret is open to other users"))
        .unwrap_or_else(|| panic!("no warning about the open configuration file:\n{log}"));
    assert!(
        warning.contains("key=\"--config\"")
            && warning.contains(&config_file.display().to_string()),
        "{warning}"
    );
    outputs.add("the log", log);
    for file in std::fs::read_dir(&state).unwrap() {
        let path = file.unwrap().path();
        outputs.add(format!("{}", path.display()), std::fs::read(&path).unwrap());
    }
    assert!(
        outputs
            .0
            .iter()
            .any(|(what, _)| what.ends_with("audit.redb")),
        "the audit store was written"
    );
    assert!(
        outputs
            .0
            .iter()
            .any(|(what, _)| what.ends_with("view.snapshot")),
        "the snapshot was written"
    );

    let mut leaks = Vec::new();
    for secret in &secrets {
        for (what, bytes) in &outputs.0 {
            if let Some(form) = secret.found_in(bytes) {
                leaks.push(format!("{} (form {form}) in {what}", secret.name));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    eprintln!(
        "{} secrets ({} forms) searched in {} outputs ({} bytes): none found",
        secrets.len(),
        secrets.iter().map(|s| s.forms.len()).sum::<usize>(),
        outputs.0.len(),
        outputs.0.iter().map(|(_, b)| b.len()).sum::<usize>()
    );
    stop_kdc(kdc).await;
}
