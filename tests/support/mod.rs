//! Helpers shared by the top-level integration tests: starting a gateway in-process on loopback
//! and short forms of the testbed's harness. Everything that stands in for a peer (Exchange,
//! certificates, scripted upstreams, waiting with a deadline) lives in `seg_testbed`, not here.

#![allow(dead_code)] // each test file uses a different subset

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use seg_proxy::Gateway;
use seg_proxy::config::{ComplianceConfig, Config, TlsFiles};
use seg_testbed::harness::{self, TestExchange};
use seg_testbed::uem::{self, UemHandle};
use std::path::PathBuf;
use std::time::Duration;

pub use seg_testbed::harness::soap_envelope as soap;

/// How long any single step of a test may take before it fails.
pub const STEP: Duration = Duration::from_secs(10);

/// A configuration with a plain HTTP listener on an ephemeral loopback port, EWS proxying on,
/// and Exchange at `exchange_url`.
pub fn config_for(exchange_url: &str) -> Config {
    let mut config = Config::default();
    config.listen.http = Some("127.0.0.1:0".parse().expect("loopback address"));
    config.exchange.url = exchange_url.to_owned();
    config.exchange.timeout = Duration::from_secs(5);
    config.ews.enable_proxy = true;
    config
}

/// Starts a gateway; panics (failing the test) if it cannot.
pub async fn start(config: Config) -> Gateway {
    Gateway::start(config).await.expect("gateway starts")
}

/// `http://127.0.0.1:PORT` of a gateway's plain listener.
pub fn http_base(gateway: &Gateway) -> String {
    format!("http://{}", gateway.http_addr().expect("an http listener"))
}

/// A POST of a SOAP envelope around `operation_xml` to `url`, without credentials.
pub fn soap_request(url: &str, operation_xml: &str) -> Request<Full<Bytes>> {
    harness::ews_request(url, None, &[], soap(operation_xml)).expect("valid request")
}

/// The whole body of a response, as text; fails the test after [`STEP`].
pub async fn text(response: Response<Incoming>) -> String {
    harness::within(
        STEP,
        "the whole body",
        harness::body_text(response.into_body()),
    )
    .await
    .expect("body within the step deadline")
    .expect("body reads")
}

/// The next data chunk of a streaming body; `None` at its end. Fails the test after [`STEP`].
pub async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    harness::next_chunk(body, STEP, "the next chunk")
        .await
        .expect("a chunk within the step deadline")
}

/// Waits, at most a second, until `stream` ends or fails: cut by the gateway. Fails the test
/// naming `what` otherwise. Frames already on their way (notifications, keep-alives) are
/// skipped.
pub async fn assert_cut_within_a_second(stream: &mut Incoming, what: &str) {
    use http_body_util::BodyExt;
    let cut = harness::within(Duration::from_secs(1), what, async {
        loop {
            match stream.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "{what}: not within a second");
}

/// The webhook secret UEM's change events carry in [`gateway_config`].
pub const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";
/// The admin token of [`gateway_config`].
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// A gateway in front of `exchange` (trusting its CA, written into `dir`) with compliance from
/// `uem`, its admin listener on `admin`, the view snapshot at `snapshot`, and ENS's
/// block/unblock callback at `ens_callback_url`.
pub fn gateway_config(
    exchange: &TestExchange,
    uem: &UemHandle,
    ens_callback_url: &str,
    admin: std::net::SocketAddr,
    snapshot: PathBuf,
    dir: &std::path::Path,
) -> Config {
    let ca = dir.join("exchange-ca.pem");
    std::fs::write(&ca, exchange.pki.ca_pem()).unwrap();
    let mut config = config_for(&exchange.server.base_url());
    config.exchange.trust_store = Some(ca);
    config.admin.listen = Some(admin);
    config.admin.token = Some(ADMIN_TOKEN.into());
    config.ens.callback_url = Some(ens_callback_url.to_owned());
    config.compliance = Some(ComplianceConfig {
        uem_url: uem.base_url(),
        uem_tenant_code: uem.tenant_code().into(),
        uem_user: uem::DEFAULT_API_USER.into(),
        uem_password: uem::DEFAULT_API_PASSWORD.into(),
        uem_organization_group_id: None,
        uem_trust_store: None,
        uem_page_size: 500,
        uem_timeout: Duration::from_secs(5),
        device_id_header: "X-Device-Id".into(),
        snapshot: Some(snapshot),
        full_sync_interval: Duration::from_secs(3600),
        delta_sync_interval: Duration::from_secs(3600),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        unknown_device: Default::default(),
        activesync_discovery: Default::default(),
        policy: Default::default(),
        backend: Default::default(),
        redis_url: None,
        redis_trust_store: None,
        redis_lock_ttl: std::time::Duration::from_secs(10),
        redis_key_prefix: "seg:compliance".into(),
        redis_full_sync_batch: 5_000,
        redis_not_ready_when_down: false,
    });
    config
}

/// `listen.https` with a certificate from Exchange's test CA (for `localhost` and `127.0.0.1`,
/// written into `dir`), and `[auth]` asking for optional client certificates from the same CA.
pub fn with_client_certificates(
    config: &mut Config,
    exchange: &TestExchange,
    dir: &std::path::Path,
) {
    let (cert, key) = exchange
        .pki
        .issue_server_cert(&["localhost", "127.0.0.1"])
        .unwrap();
    let (cert_path, key_path, ca_path) = (
        dir.join("gateway.pem"),
        dir.join("gateway.key"),
        dir.join("client-ca.pem"),
    );
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&ca_path, exchange.pki.ca_pem()).unwrap();
    config.listen.https = Some("127.0.0.1:0".parse().unwrap());
    config.tls = Some(TlsFiles {
        cert: cert_path,
        key: key_path,
    });
    config.auth.client_cert = ews_proxy_core::tls::ClientCertMode::Optional;
    config.auth.client_ca = Some(ca_path);
}

/// `https://localhost:PORT/EWS/Exchange.asmx` of a gateway's TLS listener.
pub fn https_ews_url(gateway: &Gateway) -> String {
    format!(
        "https://localhost:{}/EWS/Exchange.asmx",
        gateway.https_addr().expect("a TLS listener").port()
    )
}

/// Sends `request` with `client`; fails the test after [`STEP`] or on a connection error.
pub async fn send(
    client: &seg_testbed::client::HttpClient,
    request: Request<Full<Bytes>>,
) -> Response<Incoming> {
    harness::within(STEP, "the response", client.send(request))
        .await
        .expect("a response within the step deadline")
        .expect("the request is answered")
}

/// The UEM test console with `devices`, its change-event webhook aimed at a gateway's admin
/// listener at `admin` (with [`WEBHOOK_SECRET`]).
pub async fn uem_with_webhook(devices: Vec<uem::Device>, admin: std::net::SocketAddr) -> UemHandle {
    let mut uem_config = uem::UemConfig::new(devices);
    uem_config.webhook = Some(uem::Webhook::new(
        &format!("http://{admin}/events/compliance"),
        WEBHOOK_SECRET,
    ));
    uem::UemServer::spawn(harness::local_listener().await.unwrap(), None, uem_config).unwrap()
}

/// `[audit]` with its store at `path`, and the node named `node`.
pub fn with_audit(config: &mut Config, path: PathBuf, node: &str) {
    config.audit = Some(audit_trail::AuditSettings::new(path));
    config.node = Some(node.to_owned());
}

/// Sends `method path` to a gateway's admin listener, with `Bearer token` when given and
/// `body`; the status and the whole body as text. Fails the test after [`STEP`].
pub async fn admin_request(
    gateway: &Gateway,
    method: http::Method,
    path_and_query: &str,
    token: Option<&str>,
    body: &str,
) -> (http::StatusCode, String) {
    admin_request_at(
        gateway.admin_addr().expect("an admin listener"),
        method,
        path_and_query,
        token,
        body,
    )
    .await
}

/// [`admin_request`] to the admin listener at `admin` (of a gateway process).
pub async fn admin_request_at(
    admin: std::net::SocketAddr,
    method: http::Method,
    path_and_query: &str,
    token: Option<&str>,
    body: &str,
) -> (http::StatusCode, String) {
    let url = format!("http://{admin}{path_and_query}");
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid request");
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    let response = send(&client, request).await;
    let status = response.status();
    (status, text(response).await)
}

/// Waits until a gateway's admin listener answers `/readyz` with `200` (a view is loaded).
pub async fn wait_ready(gateway: &Gateway) {
    harness::wait_until(STEP, "the gateway's first view", || async {
        admin_request(gateway, http::Method::GET, "/readyz", None, "")
            .await
            .0
            == http::StatusCode::OK
    })
    .await
    .expect("the gateway becomes ready");
}

/// The status of `/readyz` on the admin listener at `admin`; `None` while nothing answers
/// there (a process still starting, or dead).
pub async fn readyz_at(admin: std::net::SocketAddr) -> Option<http::StatusCode> {
    let request = Request::get(format!("http://{admin}/readyz"))
        .body(Full::default())
        .ok()?;
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    let response = harness::within(STEP, "a readiness answer", client.send(request))
        .await
        .ok()?
        .ok()?;
    Some(response.status())
}

/// Shares the compliance view of `config` (from [`gateway_config`]) through the Redis server at
/// `redis_url`, as node `node`, with a leader lock of `lock_ttl`; no local snapshot.
pub fn share_through_redis(config: &mut Config, redis_url: &str, lock_ttl: Duration, node: &str) {
    config.node = Some(node.to_owned());
    let compliance = config.compliance.as_mut().expect("[compliance]");
    compliance.backend = seg_proxy::config::ComplianceBackend::Redis;
    compliance.redis_url = Some(redis_url.to_owned());
    compliance.redis_lock_ttl = lock_ttl;
    compliance.snapshot = None;
}

/// The value of one series (name and labels, exactly as exposed) on a gateway's admin
/// `/metrics`; `None` if the scrape fails or lacks it.
pub async fn admin_metric(gateway: &Gateway, series: &str) -> Option<f64> {
    admin_metric_at(gateway.admin_addr()?, series).await
}

/// [`admin_metric`] from the admin listener at `admin` (of a gateway process).
pub async fn admin_metric_at(admin: std::net::SocketAddr, series: &str) -> Option<f64> {
    let url = format!("http://{admin}/metrics");
    let request = Request::get(url).body(Full::default()).ok()?;
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    let response = harness::within(STEP, "a metrics scrape", client.send(request))
        .await
        .ok()?
        .ok()?;
    let scrape = harness::body_text(response.into_body()).await.ok()?;
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Sets (`Some("allow" | "block")`) or clears (`None`) a device's override through a gateway's
/// admin API; the answer's status.
pub async fn admin_device_override(
    gateway: &Gateway,
    device: &str,
    action: Option<&str>,
) -> http::StatusCode {
    admin_override(gateway, "device", device, action).await
}

/// [`admin_device_override`] for a user (UPN).
pub async fn admin_user_override(
    gateway: &Gateway,
    user: &str,
    action: Option<&str>,
) -> http::StatusCode {
    admin_override(gateway, "user", user, action).await
}

/// Sets or clears the override of `/overrides/{kind}/{id}`.
async fn admin_override(
    gateway: &Gateway,
    kind: &str,
    id: &str,
    action: Option<&str>,
) -> http::StatusCode {
    let url = format!(
        "http://{}/overrides/{kind}/{id}",
        gateway.admin_addr().expect("an admin listener")
    );
    let builder = match action {
        Some(_) => Request::put(url),
        None => Request::delete(url),
    };
    let body = action
        .map(|action| format!(r#"{{"action":"{action}"}}"#))
        .unwrap_or_default();
    let request = builder
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request");
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    send(&client, request).await.status()
}

/// `config` listening on HTTPS only (a free port), with the server certificate of `pki`.
pub fn over_tls(mut config: Config, pki: &seg_testbed::pki::TestPki) -> Config {
    config.listen.http = None;
    config.listen.https = Some("127.0.0.1:0".parse().unwrap());
    let files = pki.files().unwrap();
    config.tls = Some(TlsFiles {
        cert: files.server_cert.clone(),
        key: files.server_key.clone(),
    });
    config
}

/// A raw TLS connection (HTTP/1.1 by ALPN) to a gateway's TLS listener, trusting `pki`'s CA:
/// for tests that write requests byte by byte.
pub async fn raw_tls(
    gateway: &Gateway,
    pki: &seg_testbed::pki::TestPki,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(pki.root_store())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gateway.https_addr().expect("a TLS listener"))
        .await
        .expect("the TLS listener accepts");
    harness::within(
        STEP,
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect("localhost".try_into().expect("a server name"), tcp),
    )
    .await
    .expect("the handshake within the step deadline")
    .expect("the handshake succeeds")
}

/// A request to the admin console (`/ui/…`) on a gateway's admin listener: with the session
/// `cookie` (`name=value`) when given, and `form` as an `application/x-www-form-urlencoded`
/// body (then a POST, else a GET). The status, the headers and the whole body as text.
pub async fn console_request(
    gateway: &Gateway,
    path_and_query: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (http::StatusCode, http::HeaderMap, String) {
    let admin = gateway.admin_addr().expect("an admin listener");
    console_request_at(admin, path_and_query, cookie, form).await
}

/// [`console_request`] to the admin listener at `admin` (of a gateway process).
pub async fn console_request_at(
    admin: std::net::SocketAddr,
    path_and_query: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (http::StatusCode, http::HeaderMap, String) {
    let url = format!("http://{admin}{path_and_query}");
    let mut request = match form {
        Some(_) => Request::post(url).header("content-type", "application/x-www-form-urlencoded"),
        None => Request::get(url),
    };
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let request = request
        .body(Full::new(Bytes::from(form.unwrap_or_default().to_owned())))
        .expect("valid request");
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    let response = send(&client, request).await;
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, text(response).await)
}

/// Opens the admin console's sign-in page as a browser does: its cookie (`name=value`) and the
/// form's CSRF token that goes with it.
pub async fn console_sign_in_form(gateway: &Gateway) -> (String, String) {
    console_sign_in_form_at(gateway.admin_addr().expect("an admin listener")).await
}

/// [`console_sign_in_form`] of the admin listener at `admin` (of a gateway process).
pub async fn console_sign_in_form_at(admin: std::net::SocketAddr) -> (String, String) {
    let (status, headers, page) = console_request_at(admin, "/ui/login", None, None).await;
    assert_eq!(status, http::StatusCode::OK, "{page}");
    let cookie = set_cookie(&headers, "seg_console_sign_in").expect("a sign-in form cookie");
    (cookie, console_csrf(&page))
}

/// The `name=value` of a response's `Set-Cookie` for `name`.
pub fn set_cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with(&format!("{name}=")))
        .and_then(|value| Some(value.split(';').next()?.to_owned()))
}

/// Signs in to the admin console with `token` through its sign-in form (fetched first, as a
/// browser does): the session cookie (`name=value`), or `None` when refused.
pub async fn console_sign_in(gateway: &Gateway, token: &str) -> Option<String> {
    console_sign_in_at(gateway.admin_addr().expect("an admin listener"), token).await
}

/// [`console_sign_in`] at the admin listener at `admin` (of a gateway process).
pub async fn console_sign_in_at(admin: std::net::SocketAddr, token: &str) -> Option<String> {
    let (form_cookie, csrf) = console_sign_in_form_at(admin).await;
    let form = format!("csrf={csrf}&token={}", form_encode(token));
    let (status, headers, _) =
        console_request_at(admin, "/ui/login", Some(&form_cookie), Some(&form)).await;
    if status != http::StatusCode::SEE_OTHER {
        return None;
    }
    set_cookie(&headers, "seg_console")
}

/// The CSRF token of the first form of a console page.
pub fn console_csrf(page: &str) -> String {
    page.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with a CSRF token")
        .to_owned()
}

/// `value` encoded as a form field's value (`application/x-www-form-urlencoded`).
pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A headless Chromium driven over WebDriver (the W3C protocol, JSON over HTTP) through a
/// `chromedriver` this process starts on a free port and kills when dropped. Debian's
/// `chromium` and `chromium-driver` (scripts/install-deps.sh).
pub struct Browser {
    _driver: tokio::process::Child,
    session: String,
    base: String,
    client: seg_testbed::client::HttpClient,
}

impl Browser {
    /// Starts chromedriver and a headless browser session.
    pub async fn start() -> Browser {
        let port = harness::reserve_port().expect("a free port").port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            // Its own process group, which the browser it starts joins: see `Drop`.
            .process_group(0)
            .spawn()
            .expect("chromedriver runs (Debian package chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let client = seg_testbed::client::HttpClient::accepting_any_certificate();
        harness::wait_until(STEP, "chromedriver to listen", || async {
            let Ok(request) = Request::get(format!("{base}/status")).body(Full::default()) else {
                return false;
            };
            match client.send(request).await {
                Ok(response) => harness::body_text(response.into_body())
                    .await
                    .is_ok_and(|body| body.contains("\"ready\":true")),
                Err(_) => false,
            }
        })
        .await
        .expect("chromedriver becomes ready");
        let mut browser = Browser {
            _driver: driver,
            session: String::new(),
            base,
            client,
        };
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking"],
            },
        }}});
        let created = browser
            .command(http::Method::POST, "/session", capabilities)
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_owned();
        browser
    }

    /// One WebDriver command: its `value`; fails the test on an error answer.
    async fn command(
        &self,
        method: http::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        // Starting the browser can take long on a busy machine.
        let response = harness::within(STEP * 3, "a WebDriver answer", self.client.send(request))
            .await
            .expect("WebDriver answers in time")
            .expect("WebDriver answers");
        let status = response.status();
        let text = text(response).await;
        assert!(status.is_success(), "WebDriver {path}: {status} {text}");
        let answer: serde_json::Value = serde_json::from_str(&text).expect("WebDriver JSON");
        answer["value"].clone()
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.command(http::Method::POST, &path, serde_json::json!({"url": url}))
            .await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.command(
            http::Method::POST,
            &path,
            serde_json::json!({"script": script, "args": []}),
        )
        .await
    }

    /// Types `text` into the element of `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        let path = format!("/session/{}/element/{element}/value", self.session);
        self.command(http::Method::POST, &path, serde_json::json!({"text": text}))
            .await;
    }

    /// Clicks the element of `css`.
    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        let path = format!("/session/{}/element/{element}/click", self.session);
        self.command(http::Method::POST, &path, serde_json::json!({}))
            .await;
    }

    async fn element(&self, css: &str) -> String {
        let path = format!("/session/{}/element", self.session);
        let found = self
            .command(
                http::Method::POST,
                &path,
                serde_json::json!({"using": "css selector", "value": css}),
            )
            .await;
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("an element {css}: {found}"))
            .to_owned()
    }

    /// Ends the browser session (chromedriver stops when the `Browser` is dropped).
    pub async fn quit(self) {
        let path = format!("/session/{}", self.session);
        self.command(http::Method::DELETE, &path, serde_json::json!({}))
            .await;
    }
}

impl Drop for Browser {
    /// Ends chromedriver and the browser it started (its process group), even when a test
    /// fails before [`Browser::quit`].
    fn drop(&mut self) {
        if let Some(pid) = self._driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Browser {
    /// Resizes the browser's window to `width` × `height` CSS pixels.
    pub async fn set_window_size(&self, width: u32, height: u32) {
        let path = format!("/session/{}/window/rect", self.session);
        self.command(
            http::Method::POST,
            &path,
            serde_json::json!({"width": width, "height": height}),
        )
        .await;
    }

    /// A PNG screenshot of the window's viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let path = format!("/session/{}/screenshot", self.session);
        let encoded = self
            // The command sends its body even with GET; chromedriver reads it as parameters.
            .command(http::Method::GET, &path, serde_json::json!({}))
            .await;
        decode_base64(encoded.as_str().expect("a base64 screenshot"))
    }
}

/// `bytes` in standard base64 with padding (RFC 4648), as Basic credentials and PEM bodies are
/// written.
pub fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// `text` decoded from standard base64 (padding and whitespace ignored), as WebDriver sends
/// screenshots. Panics on any other character.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => u32::from(c - b'A'),
        b'a'..=b'z' => u32::from(c - b'a') + 26,
        b'0'..=b'9' => u32::from(c - b'0') + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", char::from(c)),
    };
    let digits: Vec<u32> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | d << (18 - 6 * i));
        let [_, a, b, c] = bits.to_be_bytes();
        bytes.extend_from_slice(&[a, b, c][..chunk.len() - 1]);
    }
    bytes
}

/// The stand of the compliance tests (tests/audit.rs, tests/console.rs): the test Exchange, the
/// test UEM holding `devices` with its webhook aimed at the gateway's admin listener, ENS's
/// callback receiver, and a gateway with `[compliance]` (its snapshot and files in `dir`),
/// ready. `configure` adds to the configuration before the start, given `dir`.
pub struct ComplianceStand {
    pub exchange: TestExchange,
    pub uem: UemHandle,
    pub ens: uem::WebhookReceiver,
    pub gateway: Gateway,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

impl ComplianceStand {
    pub async fn start(
        devices: Vec<uem::Device>,
        configure: impl FnOnce(&mut Config, &std::path::Path),
    ) -> ComplianceStand {
        let dir = tempfile::tempdir().unwrap();
        let exchange = TestExchange::start(|_| {}).await.unwrap();
        let ens = uem::WebhookReceiver::start().await.unwrap();
        let admin = harness::reserve_port().unwrap();
        let uem = uem_with_webhook(devices, admin).await;
        let mut config = gateway_config(
            &exchange,
            &uem,
            &format!("{}/gateway/compliance", ens.url()),
            admin,
            dir.path().join("view.snapshot"),
            dir.path(),
        );
        configure(&mut config, dir.path());
        let gateway = start(config.clone()).await;
        wait_ready(&gateway).await;
        ComplianceStand {
            exchange,
            uem,
            ens,
            gateway,
            config,
            dir,
        }
    }

    /// Stops the gateway and starts it again with `change` made to its configuration: the
    /// same admin address (UEM's webhook still reaches it), snapshot and files.
    pub async fn restart(self, change: impl FnOnce(&mut Config)) -> ComplianceStand {
        let ComplianceStand {
            exchange,
            uem,
            ens,
            gateway,
            mut config,
            dir,
        } = self;
        gateway.shutdown().await;
        change(&mut config);
        let gateway = start(config.clone()).await;
        wait_ready(&gateway).await;
        ComplianceStand {
            exchange,
            uem,
            ens,
            gateway,
            config,
            dir,
        }
    }
}

/// The debug `seg-proxy` binary of this workspace, built by cargo (`cargo build -p seg-proxy
/// --bin seg-proxy`, a no-op when it is current) the first time a test of this process asks:
/// the umbrella package's tests have no `CARGO_BIN_EXE_seg-proxy`, the binary being another
/// package's. Panics, with cargo's output, if it does not build.
pub fn seg_proxy_binary() -> &'static std::path::Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo
            .args(["build", "-p", "seg-proxy", "--bin", "seg-proxy"])
            .arg("--message-format=json-render-diagnostics")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(std::process::Stdio::inherit());
        // What the test runner set for this test, not the user for cargo: build scripts that
        // watch these (the library search path, for bindgen's) would otherwise see a change
        // and rebuild half the workspace at every run, and again at the next `cargo build`.
        let keep = [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "CARGO_BUILD_",
            "CARGO_PROFILE_",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTR",
            "CARGO_TERM_",
        ];
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let runner = ["CARGO_", "NEXTEST", "__NEXTEST", "__CARGO", "RUST_TEST_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
                || name == "LD_LIBRARY_PATH"
                || name == "DYLD_FALLBACK_LIBRARY_PATH";
            if runner && !keep.iter().any(|kept| name.starts_with(kept)) {
                cargo.env_remove(name.as_ref());
            }
        }
        let output = cargo.output().expect("cargo runs");
        assert!(output.status.success(), "cargo build -p seg-proxy failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| message["target"]["name"] == "seg-proxy")
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the seg-proxy executable it built")
    })
}

/// A `seg-proxy run` process (the real binary, [`seg_proxy_binary`]) serving `config`, its
/// configuration file and log in a directory of the test's. Killed (`SIGKILL`) when dropped;
/// a test that fails meanwhile prints the end of its log.
pub struct GatewayProcess {
    name: String,
    child: std::process::Child,
    http: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    log: PathBuf,
}

impl GatewayProcess {
    /// Writes `config` (which must name its plain HTTP and admin listeners' ports: nothing else
    /// learns them) to `dir/<name>.toml` and starts `seg-proxy run` on it, logging to
    /// `dir/<name>.log`. Does not wait: see [`GatewayProcess::wait_ready`].
    pub fn spawn(name: &str, config: &Config, dir: &std::path::Path) -> GatewayProcess {
        GatewayProcess::spawn_logging(name, config, dir, "info")
    }

    /// [`GatewayProcess::spawn`] logging what `filter` (`RUST_LOG`) lets through.
    pub fn spawn_logging(
        name: &str,
        config: &Config,
        dir: &std::path::Path,
        filter: &str,
    ) -> GatewayProcess {
        let http = config.listen.http.expect("listen.http");
        let admin = config.admin.listen.expect("admin.listen");
        assert!(
            http.port() != 0 && admin.port() != 0,
            "a process's listeners need fixed ports (harness::reserve_port)"
        );
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            toml::to_string(config).expect("the configuration as TOML"),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(seg_proxy_binary())
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", filter)
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("seg-proxy starts");
        GatewayProcess {
            name: name.to_owned(),
            child,
            http,
            admin,
            log,
        }
    }

    /// `http://127.0.0.1:PORT` of its plain listener.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Its plain listener.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http
    }

    /// Its admin listener.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its `/readyz` answers `200`; fails the test, with its log, if it exits first
    /// or is not ready after [`STEP`].
    pub async fn wait_ready(&mut self) {
        let give_up = tokio::time::Instant::now() + STEP;
        loop {
            if readyz_at(self.admin).await == Some(http::StatusCode::OK) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "{} not ready after {STEP:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(harness::POLL_INTERVAL).await;
        }
    }

    /// Kills it with `SIGKILL` (no shutdown of its own: its leader lock is not released) and
    /// reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- the end of {}'s log ---\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Debian's HAProxy (`haproxy`, scripts/install-deps.sh) on a free loopback port, in HTTP mode,
/// balancing requests round robin over gateway processes' plain listeners. A server is used
/// while its admin `/readyz` answers `200` (checked every 100 ms), and every answer names the
/// server that gave it in `X-Seg-Node`. Killed when dropped.
pub struct Haproxy {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Haproxy {
    /// Starts HAProxy in front of `nodes` (`(name, plain listener, admin listener)`), its
    /// configuration in `dir`, and waits until it listens. Panics, saying how to install it, if
    /// `haproxy` is missing: the test must not pass without its balancer.
    pub async fn start(
        nodes: &[(&str, std::net::SocketAddr, std::net::SocketAddr)],
        dir: &std::path::Path,
    ) -> Haproxy {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let program = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|dir| dir.join("haproxy"))
            .find(|path| path.is_file())
            .expect(
                "haproxy is not installed: the scale-out test needs it as the load balancer \
                 (scripts/install-deps.sh installs Debian's `haproxy`)",
            );
        let addr = harness::reserve_port().unwrap();
        let mut config = format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
             option redispatch\n  retries 2\n\
             frontend gateways\n  bind {addr}\n  default_backend nodes\n\
             backend nodes\n  balance roundrobin\n  option httpchk GET /readyz\n  \
             http-check expect status 200\n  http-response set-header X-Seg-Node %s\n"
        );
        for (name, http, admin) in nodes {
            config.push_str(&format!(
                "  server {name} {http} check port {} inter 100ms fall 1 rise 1\n",
                admin.port()
            ));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let log = dir.join("haproxy.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("haproxy starts");
        let mut haproxy = Haproxy { child, addr };
        harness::wait_until(STEP, "haproxy to listen", || {
            let exited = matches!(haproxy.child.try_wait(), Ok(Some(_)));
            async move { exited || tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await
        .expect("haproxy listens");
        if let Ok(Some(status)) = haproxy.child.try_wait() {
            panic!(
                "haproxy exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        haproxy
    }

    /// `http://127.0.0.1:PORT` of its front end.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a real MIT KDC on loopback (on the blocking pool: starting waits for it to listen).
pub async fn start_kdc() -> seg_testbed::kdc::RunningKdc {
    tokio::task::spawn_blocking(|| {
        seg_testbed::kdc::Kdc::start(seg_testbed::kdc::KdcConfig::temporary())
    })
    .await
    .unwrap()
    .expect("the test KDC starts")
}

/// Stops a KDC from [`start_kdc`] (on the blocking pool: stopping waits for the process).
pub async fn stop_kdc(kdc: seg_testbed::kdc::RunningKdc) {
    tokio::task::spawn_blocking(move || drop(kdc))
        .await
        .unwrap();
}

/// `[auth]` with Basic, OAuth and certificate authentication answered by Kerberos constrained
/// delegation through `kdc` to the test Exchange's service; `channel_binding` as Exchange's
/// Extended Protection requires. The TLS listener asking for certificates is
/// [`with_client_certificates`].
pub fn with_cba_kcd(
    config: &mut Config,
    kdc: &seg_testbed::kdc::RunningKdc,
    channel_binding: bool,
) {
    use seg_testbed::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE};
    config.auth.modes = vec![
        seg_proxy::config::AuthMode::Basic,
        seg_proxy::config::AuthMode::Oauth,
        seg_proxy::config::AuthMode::CbaKcd,
    ];
    let mut kcd = seg_proxy::config::Kcd::new(
        kdc.krb5_conf(),
        kdc.keytab(GATEWAY_SERVICE).unwrap(),
        GATEWAY_SERVICE,
    );
    kcd.target_spn = Some(EXCHANGE_SERVICE.into());
    kcd.channel_binding = channel_binding;
    kcd.timeout = Duration::from_secs(10);
    config.auth.kcd = Some(kcd);
}
