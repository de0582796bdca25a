//! The `seg-proxy` binary as an operator uses it: `check-config` and `run` with a signal.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_seg-proxy");

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_prints_the_effective_configuration_with_properties_imported() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "seg.toml",
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[exchange]\nurl = \"https://mail.corp.example\"\n",
    );
    let properties = write(
        dir.path(),
        "application-override.properties",
        "enable.boxer.ens.ews.proxy=true\nsome.unrelated.key=1\n",
    );
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&config)
        .arg("--properties")
        .arg(&properties)
        .env_remove("SEG_EWS__ENABLE_PROXY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("enable_proxy = true"), "{stdout}");
    assert!(
        stdout.contains("url = \"https://mail.corp.example\""),
        "{stdout}"
    );
    assert!(stdout.contains("compliance: not configured"), "{stdout}");
    assert!(stderr.contains("some.unrelated.key"), "{stderr}");
}

#[test]
fn check_config_fails_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "broken.toml",
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[exchange]\nurl = \"https://mail\"\ntimeout = \"soon\"\n",
    );
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("timeout"), "{stderr}");
    assert!(stderr.contains("broken.toml"), "{stderr}");
}

#[test]
fn run_serves_until_sigterm_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "seg.toml",
        "[listen]\nhttp = \"127.0.0.1:0\"\n[exchange]\nurl = \"http://127.0.0.1:9\"\n[ews]\nenable_proxy = true\n\
         [log]\nformat = \"json\"\n",
    );
    let mut child = Command::new(BINARY)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("seg-proxy started"))
        .expect("the start is logged");
    let log: serde_json::Value = serde_json::from_str(&started).expect("json log line");
    let addr = log["fields"]["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("Some(")
        .trim_end_matches(')');
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "listening on {addr}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "seg-proxy did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling the exit, not synchronising
    };
    assert!(exit.success(), "{exit:?}");
    assert!(
        lines
            .map_while(Result::ok)
            .any(|line| line.contains("seg-proxy stopped"))
    );
}
