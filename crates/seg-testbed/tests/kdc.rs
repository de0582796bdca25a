//! The test KDC as MIT's own client tools see it: keytab and password logins, protocol
//! transition and constrained delegation to Exchange, delegation refused elsewhere, and the
//! processes gone when the KDC is dropped.

use std::io::Write as _;
use std::net::TcpStream;
use std::process::{Output, Stdio};

use seg_testbed::Error;
use seg_testbed::kdc::{
    EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig, KdcUser, OTHER_SERVICE, RunningKdc,
};

/// Starts the default realm in a temporary directory.
fn start() -> RunningKdc {
    let kdc = Kdc::start(KdcConfig::temporary()).unwrap();
    eprintln!(
        "test KDC on {} started in {:?}",
        kdc.addr(),
        kdc.startup_time()
    );
    kdc
}

/// Runs one of MIT's tools against `kdc` with the private credential cache `DIR/cc`, feeding it
/// `stdin`.
fn mit(kdc: &RunningKdc, program: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = kdc
        .command(program)
        .env(
            "KRB5CCNAME",
            format!("FILE:{}", kdc.dir().join("cc").display()),
        )
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Logs the gateway in with its keytab.
fn gateway_login(kdc: &RunningKdc) {
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_str().unwrap();
    let kinit = mit(kdc, "kinit", &["-k", "-t", keytab, GATEWAY_SERVICE], "");
    assert!(kinit.status.success(), "kinit: {}", text(&kinit));
}

#[test]
fn the_gateway_gets_a_ticket_to_exchange_for_alice_by_s4u2self_and_s4u2proxy() {
    let kdc = start();
    gateway_login(&kdc);

    let kvno = mit(&kdc, "kvno", &["-U", "alice", "-P", EXCHANGE_SERVICE], "");
    assert!(kvno.status.success(), "kvno: {}", text(&kvno));

    let klist = text(&mit(&kdc, "klist", &[], ""));
    let lines: Vec<&str> = klist.lines().collect();
    let ticket = lines
        .iter()
        .position(|line| line.ends_with("HTTP/exchange.test.local@TEST.LOCAL"))
        .unwrap_or_else(|| panic!("no ticket for Exchange in:\n{klist}"));
    assert!(
        lines[ticket + 1].contains("for client alice@TEST.LOCAL"),
        "the Exchange ticket is not alice's:\n{klist}"
    );
    let log = kdc.log();
    assert!(
        log.contains("PROTOCOL-TRANSITION s4u-client=alice@TEST.LOCAL"),
        "{log}"
    );
    assert!(
        log.contains("CONSTRAINED-DELEGATION s4u-client=alice@TEST.LOCAL"),
        "{log}"
    );
}

#[test]
fn every_service_logs_in_with_its_keytab() {
    let kdc = start();

    for service in [GATEWAY_SERVICE, EXCHANGE_SERVICE, OTHER_SERVICE] {
        let keytab = kdc.keytab(service).unwrap().to_str().unwrap();
        let kinit = mit(&kdc, "kinit", &["-k", "-t", keytab, service], "");
        assert!(kinit.status.success(), "kinit {service}: {}", text(&kinit));
    }
}

#[test]
fn the_gateway_may_not_delegate_to_a_service_outside_its_list() {
    let kdc = start();
    gateway_login(&kdc);

    let kvno = mit(&kdc, "kvno", &["-U", "alice", "-P", OTHER_SERVICE], "");

    assert!(!kvno.status.success());
    // KDC_ERR_BADOPTION, as Active Directory answers too.
    assert!(
        text(&kvno).contains("KDC can't fulfill requested option"),
        "kvno: {}",
        text(&kvno)
    );
}

#[test]
fn alice_logs_in_with_her_password_and_a_wrong_one_is_refused() {
    let kdc = start();

    let right = mit(&kdc, "kinit", &["alice"], "alicepw\n");
    let wrong = mit(&kdc, "kinit", &["bob"], "alicepw\n");

    assert!(right.status.success(), "kinit alice: {}", text(&right));
    assert!(text(&mit(&kdc, "klist", &[], "")).contains("Default principal: alice@TEST.LOCAL"));
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("Password incorrect"),
        "kinit bob: {}",
        text(&wrong)
    );
}

#[test]
fn dropping_the_kdc_closes_its_port_and_removes_its_temporary_directory() {
    let kdc = start();
    let addr = kdc.addr();
    let dir = kdc.dir().to_path_buf();
    assert!(TcpStream::connect(addr).is_ok());

    drop(kdc);

    assert!(TcpStream::connect(addr).is_err());
    assert!(!dir.exists());
}

#[test]
fn a_stopped_kdc_is_unreachable_until_restarted_on_the_same_port() {
    let mut kdc = start();
    let port = kdc.port();

    kdc.stop_kdc();
    let while_down = mit(&kdc, "kinit", &["alice"], "alicepw\n");
    kdc.restart_kdc().unwrap();
    let after = mit(&kdc, "kinit", &["alice"], "alicepw\n");

    assert!(!while_down.status.success());
    assert!(
        text(&while_down).contains("Cannot contact any KDC"),
        "kinit while down: {}",
        text(&while_down)
    );
    assert!(
        after.status.success(),
        "kinit after restart: {}",
        text(&after)
    );
    assert_eq!(kdc.port(), port);
}

#[test]
fn two_kdcs_run_side_by_side_on_their_own_ports() {
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(start);
        let second = scope.spawn(start);
        (first.join().unwrap(), second.join().unwrap())
    });

    assert_ne!(first.port(), second.port());
    for kdc in [&first, &second] {
        let kinit = mit(kdc, "kinit", &["bob"], "bobpw\n");
        assert!(kinit.status.success(), "kinit bob: {}", text(&kinit));
    }
}

#[test]
fn a_port_another_kdc_serves_on_is_refused() {
    let first = start();
    let config = KdcConfig {
        port: Some(first.port()),
        ..KdcConfig::temporary()
    };
    let dir = config.dir.clone();

    let second = Kdc::start(config);

    assert!(
        matches!(second, Err(Error::KdcPortInUse { port }) if port == first.port()),
        "{second:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_password_kadmin_cannot_take_is_refused_before_anything_starts() {
    let mut config = KdcConfig::temporary();
    config.users.push(KdcUser::new("carol", "with space"));
    let dir = config.dir.clone();

    let result = Kdc::start(config);

    assert!(matches!(result, Err(Error::KdcConfig(_))), "{result:?}");
    assert!(!dir.exists());
}

#[test]
fn a_failing_step_is_named_with_the_tools_own_error() {
    let mut config = KdcConfig::temporary();
    config.users.push(KdcUser::new("alice", "again"));
    let dir = config.dir.clone();

    let result = Kdc::start(config);

    let Err(Error::KdcSetup { step, detail }) = &result else {
        panic!("{result:?}");
    };
    assert!(
        step.contains("addprinc") && step.contains("alice@TEST.LOCAL"),
        "{step}"
    );
    assert!(detail.contains("already exists"), "{detail}");
    let _ = std::fs::remove_dir_all(dir);
}
