//! Clock skew against the real MIT KDC of `seg-testbed` (issue 10): a client whose clock is an
//! hour off (`KcdConfig::clock_offset_secs`, per client) is beyond the KDC's tolerance (MIT's
//! default `clockskew`, 5 minutes). Correcting (the default), it adopts the KDC's time from the
//! first `KRB_AP_ERR_SKEW` and gets its tickets after one retry; not correcting
//! (`KcdConfig::correct_clock_skew = false`), the error is `KcdError::ClockSkew` naming the skew.

mod support;

use std::time::Duration;

use kcd_client::{Credentials, KcdClient, KcdConfig, KcdError, UserName};
use seg_testbed::kdc::{DEFAULT_REALM, EXCHANGE_SERVICE, GATEWAY_SERVICE, RunningKdc};
use support::{config, shared_kdc};

/// How far the client's clock is off: far beyond MIT's default tolerance of 5 minutes.
const OFFSET: Duration = Duration::from_secs(3600);

fn alice() -> UserName {
    UserName::principal("alice", DEFAULT_REALM).unwrap()
}

/// The gateway's client (its keytab) with its clock [`OFFSET`] ahead of the KDC's.
fn skewed(kdc: &RunningKdc, correct: bool) -> KcdConfig {
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_path_buf();
    let mut config = config(kdc, GATEWAY_SERVICE, Credentials::KeytabFile(keytab));
    config.clock_offset_secs = i64::try_from(OFFSET.as_secs()).unwrap();
    config.correct_clock_skew = correct;
    config
}

/// Requests the KDC refused for skew: its one result line per request (`AS_REQ …` or
/// `TGS_REQ …`) ending `Clock skew too great` (a refused pre-authentication adds a line of its
/// own, not counted).
fn skew_lines(kdc: &RunningKdc) -> usize {
    kdc.log()
        .lines()
        .filter(|line| {
            (line.contains("AS_REQ") || line.contains("TGS_REQ"))
                && line.to_ascii_lowercase().contains("skew")
        })
        .count()
}

/// Waits up to 5 s until the KDC has logged `count` skewed requests (krb5kdc writes a line
/// after answering); the number logged then.
async fn skew_lines_reaching(kdc: &RunningKdc, count: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = skew_lines(kdc);
        if seen >= count || std::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_skew_beyond_the_kdcs_tolerance_is_an_error_naming_it_when_not_corrected() {
    let kdc = shared_kdc().await;
    let before = skew_lines(&kdc);
    let client = KcdClient::new(skewed(&kdc, false)).unwrap();

    let error = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap_err();

    let KcdError::ClockSkew { skew } = error else {
        panic!("not a clock-skew error: {error:?}");
    };
    // The KDC's time is whole seconds; the request took a moment.
    assert!(
        skew.abs_diff(OFFSET) <= Duration::from_secs(5),
        "skew {skew:?}, the clock is {OFFSET:?} off"
    );
    let message = KcdError::ClockSkew { skew }.to_string();
    assert!(
        message.starts_with("the clock differs from the KDC's by about 36"),
        "{message}"
    );
    assert!(
        skew_lines_reaching(&kdc, before + 1).await > before,
        "the KDC logged no skew:\n{}",
        kdc.log()
    );
    let exchanges = client.exchanges();
    assert_eq!(
        (exchanges.logins, exchanges.s4u2self),
        (1, 0),
        "one login tried, no S4U"
    );
}

#[tokio::test]
async fn a_skew_beyond_the_kdcs_tolerance_is_corrected_after_one_retry() {
    let kdc = shared_kdc().await;
    let before = skew_lines(&kdc);
    let client = KcdClient::new(skewed(&kdc, true)).unwrap();

    let ticket = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    assert_eq!(ticket.client(), "alice@TEST.LOCAL");
    // One request refused for skew (the login's first timestamp), then none: the S4U requests
    // already carry the KDC's time.
    assert_eq!(
        skew_lines_reaching(&kdc, before + 1).await,
        before + 1,
        "{}",
        kdc.log()
    );
    let exchanges = client.exchanges();
    assert_eq!((exchanges.logins, exchanges.s4u2self), (1, 1));
}
