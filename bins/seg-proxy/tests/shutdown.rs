//! SIGTERM under load, with the real `seg-proxy` binary in front of the test Exchange: every
//! request the gateway accepted gets its whole answer (a stream included), new connections are
//! refused at once, and the process exits within `server.shutdown_grace`.
//!
//! Exchange sits behind the testbed's fault proxy, which delays each chunk of its answers, so
//! that the requests are still in flight when the signal arrives.

use seg_testbed::fault_proxy::{Direction, Fault, FaultProxy};
use seg_testbed::harness::{self, TestExchange, wait_until, xml_text};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_seg-proxy");
const ALICE: &str = "alice@test.local";
const STEP: Duration = Duration::from_secs(15);
const GRACE: Duration = Duration::from_secs(10);
/// How long the fault proxy holds each chunk Exchange sends.
const DELAY: Duration = Duration::from_millis(800);
/// Requests in flight when SIGTERM is sent (besides the stream).
const IN_FLIGHT: usize = 6;
/// Requests started at the moment SIGTERM is sent: accepted or refused, never half-served.
const RACING: usize = 8;
const GET_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
const STREAMING_SUBSCRIBE: &str = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;

/// The `seg-proxy run` process, killed if the test ends before it exits.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `seg-proxy run` with `config` (TOML) and waits for its listening address.
    fn start(config: &std::path::Path) -> Gateway {
        let mut child = Command::new(BINARY)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let started = log
            .iter()
            .find(|line| line.contains("seg-proxy started"))
            .expect("the start is logged");
        let started: serde_json::Value = serde_json::from_str(&started).expect("a json log line");
        let addr = started["fields"]["http"]
            .as_str()
            .expect("an http listener")
            .trim_start_matches("Some(")
            .trim_end_matches(')')
            .parse()
            .unwrap();
        Gateway { child, addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}/EWS/Exchange.asmx", self.addr)
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// The status and whole body of an answer, or why there was none.
type Answer = Result<(http::StatusCode, String), seg_testbed::Error>;

/// Posts `operation` through the gateway at `url` as alice: the status and whole body.
async fn post(
    client: &seg_testbed::client::HttpClient,
    basic: &str,
    url: &str,
    operation: &str,
) -> Answer {
    let request = harness::ews_request(url, Some(basic), &[], harness::soap_envelope(operation))?;
    let response = client.send(request).await?;
    let status = response.status();
    Ok((status, harness::body_text(response.into_body()).await?))
}

/// [`post`] in a task of its own.
fn spawn_post(
    client: &seg_testbed::client::HttpClient,
    exchange: &TestExchange,
    url: &str,
    operation: String,
) -> tokio::task::JoinHandle<Answer> {
    let (client, basic, url) = (client.clone(), exchange.basic(ALICE), url.to_owned());
    tokio::spawn(async move { post(&client, &basic, &url, &operation).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_request_refuses_new_ones_and_exits_in_grace() {
    let dir = tempfile::tempdir().unwrap();
    // One EWS "minute" of 3 s: the stream below ends by itself 3 s after it starts.
    let exchange = TestExchange::start(|config| config.minute = Duration::from_secs(3))
        .await
        .unwrap();
    let proxy = FaultProxy::start(exchange.server.addr()).await.unwrap();
    let faults = proxy.handle();
    let ca = dir.path().join("exchange-ca.pem");
    std::fs::write(&ca, exchange.pki.ca_pem()).unwrap();
    let config = dir.path().join("seg.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n\
             [exchange]\nurl = \"https://{}\"\ntrust_store = \"{}\"\ntimeout = \"10s\"\n\
             [ews]\nenable_proxy = true\n\
             [server]\nshutdown_grace = \"{}s\"\n\
             [log]\nformat = \"json\"\n",
            proxy.addr(),
            ca.display(),
            GRACE.as_secs()
        ),
    )
    .unwrap();
    let mut gateway = Gateway::start(&config);
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    let url = gateway.url();
    let (status, subscribed) = post(&client, &exchange.basic(ALICE), &url, STREAMING_SUBSCRIBE)
        .await
        .unwrap();
    assert_eq!(status, http::StatusCode::OK, "{subscribed}");
    let subscription = xml_text(&subscribed, "SubscriptionId").expect(&subscribed);
    exchange.server.clear_requests();

    // Load: a stream and IN_FLIGHT ordinary requests, each answered slowly.
    faults.set(Direction::ServerToClient, Fault::Delay(DELAY));
    let stream = spawn_post(
        &client,
        &exchange,
        &url,
        format!(
            "<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{subscription}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>"
        ),
    );
    let mut in_flight = Vec::new();
    for _ in 0..IN_FLIGHT {
        in_flight.push(spawn_post(&client, &exchange, &url, GET_FOLDER.to_owned()));
    }
    wait_until(STEP, "every request to reach Exchange", || async {
        exchange.server.requests().len() == IN_FLIGHT + 1
    })
    .await
    .unwrap();

    // SIGTERM, with more requests racing it.
    let mut racing = Vec::new();
    for _ in 0..RACING {
        racing.push(spawn_post(&client, &exchange, &url, GET_FOLDER.to_owned()));
    }
    gateway.terminate();
    let signalled = Instant::now();

    // New connections are refused while the accepted requests drain.
    wait_until(STEP, "the listener to close", || async {
        tokio::net::TcpStream::connect(gateway.addr).await.is_err()
    })
    .await
    .unwrap();
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "seg-proxy exited before draining"
    );
    assert!(
        in_flight.iter().any(|request| !request.is_finished()),
        "the requests were answered before the listener closed: not a test under load"
    );
    // The stream still delivers while the gateway drains.
    exchange
        .server
        .deliver(ALICE, "delivered while draining")
        .unwrap();

    for request in in_flight {
        let (status, body) = request
            .await
            .unwrap()
            .expect("an accepted request is answered");
        assert_eq!(status, http::StatusCode::OK, "{body}");
        assert!(body.contains("GetFolderResponseMessage"), "{body}");
        assert!(
            body.trim_end().ends_with("Envelope>"),
            "a whole body: {body}"
        );
    }
    let (status, streamed) = stream
        .await
        .unwrap()
        .expect("the stream ends cleanly, not cut");
    assert_eq!(status, http::StatusCode::OK, "{streamed}");
    assert!(streamed.contains("NewMailEvent"), "{streamed}");
    assert!(
        streamed.contains("Closed"),
        "the stream's own end: {streamed}"
    );

    let mut answered = 0;
    // Refused, or reset unread in the accept queue: such a request never reached Exchange
    // (checked below).
    for request in racing {
        if let Ok((status, body)) = request.await.unwrap() {
            assert_eq!(status, http::StatusCode::OK, "{body}");
            assert!(body.contains("GetFolderResponseMessage"), "{body}");
            answered += 1;
        }
    }
    let exit = harness::within(GRACE, "seg-proxy to exit", async {
        loop {
            if let Some(exit) = gateway.child.try_wait().unwrap() {
                return exit;
            }
            tokio::time::sleep(harness::POLL_INTERVAL).await; // polling the exit
        }
    })
    .await
    .expect("seg-proxy exits within the grace period");
    assert!(exit.success(), "{exit:?}");
    assert!(
        signalled.elapsed() < GRACE,
        "exited {:?} after SIGTERM",
        signalled.elapsed()
    );
    // Every request that reached Exchange was answered: the in-flight ones, the stream, and
    // those of the racing ones that were accepted.
    assert_eq!(
        exchange.server.requests().len(),
        IN_FLIGHT + 1 + answered,
        "{answered} racing requests answered"
    );
    // The process has exited: its log ends.
    let log: Vec<String> = gateway.log.iter().collect();
    assert!(
        log.iter()
            .any(|line| line.contains("all connections drained")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|line| line.contains("seg-proxy stopped")),
        "{log:#?}"
    );
}
