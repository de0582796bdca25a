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

/// `kcd-token` against the real MIT KDC: a token for a delegation the KDC allows, and a clear
/// error for one it refuses.
#[test]
fn kcd_token_prints_a_spnego_token_or_the_kdc_refusal() {
    use base64::Engine as _;
    use seg_testbed::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig, OTHER_SERVICE};
    let kdc = Kdc::start(KdcConfig::temporary()).unwrap();
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_owned();
    let run = |target: &str| {
        Command::new(BINARY)
            .arg("kcd-token")
            .arg("--krb5-conf")
            .arg(kdc.krb5_conf())
            .arg("--keytab")
            .arg(&keytab)
            .args([
                "--service",
                GATEWAY_SERVICE,
                "--user",
                "alice",
                "--target",
                target,
            ])
            .output()
            .unwrap()
    };

    let allowed = run(EXCHANGE_SERVICE);
    let stderr = String::from_utf8_lossy(&allowed.stderr);
    assert!(allowed.status.success(), "{stderr}");
    let token = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&allowed.stdout).trim())
        .unwrap();
    // An SPNEGO NegTokenInit: [APPLICATION 0] then the SPNEGO OID 1.3.6.1.5.5.2.
    assert_eq!(token[0], 0x60);
    assert!(
        token
            .windows(8)
            .any(|w| w == [0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02])
    );

    let refused = run(OTHER_SERVICE);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(stderr.contains("delegat"), "{stderr}");
}

#[test]
fn check_config_says_where_compliance_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "seg.toml",
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[exchange]\nurl = \"https://mail.corp.example\"\n\
         [compliance]\nuem_url = \"https://uem.corp.example\"\nuem_tenant_code = \"code\"\n\
         uem_user = \"api\"\nuem_password = \"secret-password\"\n",
    );
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(
            "# compliance: devices from https://uem.corp.example, unknown devices: Block, \
             ActiveSync discovery: Allow"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("not configured"), "{stdout}");
    assert!(!stdout.contains("secret-password"), "{stdout}");
}

#[test]
fn check_config_refuses_empty_auth_modes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "no-auth.toml",
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[exchange]\nurl = \"https://mail.corp.example\"\n\
         [auth]\nmodes = []\n",
    );
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("auth.modes"), "{stderr}");
    assert!(stderr.contains("no-auth.toml"), "{stderr}");
}

#[test]
fn check_config_warns_of_secret_files_open_to_others_naming_key_and_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let pki = seg_testbed::pki::TestPki::generate(dir.path()).unwrap();
    let files = pki.files().unwrap();
    let config = write(
        dir.path(),
        "seg.toml",
        &format!(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [exchange]\nurl = \"https://mail.corp.example\"\n\
             [admin]\ntoken = \"admin-token-0123456789-S3CR3T\"\n",
            files.server_cert.display(),
            files.server_key.display()
        ),
    );
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(&config, 0o644);
    chmod(&files.server_key, 0o640);
    let check = || {
        let output = Command::new(BINARY)
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(!stdout.contains("S3CR3T"), "{stdout}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let stderr = check();
    let config_warning = format!("warning: --config = {} holds a secret", config.display());
    let key_warning = format!(
        "warning: tls.key = {} holds a secret",
        files.server_key.display()
    );
    assert!(stderr.contains(&config_warning), "{stderr}");
    assert!(stderr.contains("(mode 644)"), "{stderr}");
    assert!(stderr.contains(&key_warning), "{stderr}");
    assert!(stderr.contains("(mode 640)"), "{stderr}");
    assert!(
        !stderr.contains("S3CR3T") && !stderr.contains("PRIVATE KEY"),
        "{stderr}"
    );

    chmod(&config, 0o600);
    chmod(&files.server_key, 0o600);
    let stderr = check();
    assert!(!stderr.contains("holds a secret"), "{stderr}");
}
