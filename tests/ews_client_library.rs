//! An independent EWS client library, Python's `exchangelib`, works unchanged against the test
//! Exchange server through the gateway: two independent readings of the EWS reference agree.
//!
//! The client is `tests/clients/exchangelib_smoke.py`, run with the interpreter of the
//! `.venv-tests` virtual environment that `scripts/install-deps.sh` creates (or `SEG_TEST_PYTHON`).

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use seg_testbed::harness::{self, TEST_PASSWORD, TestExchange};
use support::*;

/// How long the whole client run may take: a dozen requests and two streams of one (shrunk)
/// EWS minute each.
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// The interpreter to run the client with: `SEG_TEST_PYTHON`, else the workspace's test venv.
/// Fails the test, never skips it, when there is none.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("SEG_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-tests/bin/python3");
    assert!(
        venv.is_file(),
        "{} is missing: run scripts/install-deps.sh to create the test venv with exchangelib \
         (or set SEG_TEST_PYTHON to a python3 that has it)",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchangelib_subscribes_and_receives_mail_through_the_gateway() {
    let mut testbed = TestExchange::start(|config| {
        // One EWS "minute" is short here so that a stream of `ConnectionTimeout` 1 ends, with
        // `ConnectionStatus` Closed, within the test, after a few `OK` keep-alives.
        config.minute = Duration::from_secs(2);
        config.keepalive_interval = Duration::from_millis(500);
    })
    .await
    .expect("test Exchange starts");
    let pki_dir = tempfile::tempdir().expect("temporary directory");
    let ca = testbed
        .pki
        .write_to(pki_dir.path())
        .expect("PKI files written")
        .ca
        .clone();
    let mut config = config_for(&testbed.server.base_url());
    config.exchange.trust_store = Some(ca.clone());
    let gateway = start(config).await;

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/exchangelib_smoke.py");
    let python = python();
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(&script)
        .args([
            "--ews-url",
            &format!("{}/EWS/Exchange.asmx", http_base(&gateway)),
        ])
        .args([
            "--deliver-url",
            &format!("{}/testbed/deliver", testbed.server.base_url()),
        ])
        .arg("--ca-file")
        .arg(&ca)
        .args(["--user", "alice@test.local", "--password", TEST_PASSWORD])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|error| {
        panic!(
            "cannot run {}: {error}; run scripts/install-deps.sh",
            python.display()
        )
    });
    let output = harness::within(
        CLIENT_DEADLINE,
        "the exchangelib client",
        child.wait_with_output(),
    )
    .await
    .expect("the client finishes within its deadline")
    .expect("the client's output is read");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exchangelib client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    // Shown with `--nocapture`, or when a later assertion fails.
    println!("{stdout}{stderr}");

    // Every EWS request reached Exchange through the gateway, which marks what it forwards.
    let requests = testbed.server.requests();
    let direct: Vec<_> = requests
        .iter()
        .filter(|r| !r.headers.contains_key("x-forwarded-for"))
        .map(|r| (r.method.as_str(), r.uri.as_str(), r.operation.as_deref()))
        .collect();
    assert!(
        direct.is_empty(),
        "requests bypassed the gateway: {direct:?}"
    );
    let operations: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.operation.as_deref())
        .collect();
    for expected in [
        "GetFolder",
        "Subscribe",
        "GetEvents",
        "GetItem",
        "GetStreamingEvents",
        "Unsubscribe",
    ] {
        assert!(
            operations.contains(&expected),
            "{expected} never reached Exchange; it saw {operations:?}"
        );
    }
    assert_eq!(
        testbed.server.subscription_count(),
        0,
        "both subscriptions were ended"
    );
}
