//! What the integration tests of kcd-client share: the real MIT KDC of `seg-testbed` (one per
//! test binary while any of its tests runs) and a gateway client logged in against it.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kcd_client::crypto::EncType;
use kcd_client::keytab::{Keytab, Principal};
use kcd_client::spnego::{self, NegotiationToken};
use kcd_client::{Credentials, KcdClient, KcdConfig, NegotiateToken, RealmConfig};
use rasn_kerberos::{ApReq, EncTicketPart, Ticket};
use seg_testbed::kdc::{
    DEFAULT_REALM, EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig, KdcService, KdcUser,
    RunningKdc,
};

/// A service that logs in with a password, as an administrator enters a service account.
pub const PASSWORD_SERVICE: &str = "HTTP/pwseg.test.local";
/// The password of [`PASSWORD_SERVICE`].
pub const PASSWORD: &str = "Seg-service-pw-1";

/// The default realm plus [`PASSWORD_SERVICE`].
pub fn kdc_config() -> KdcConfig {
    let mut config = KdcConfig::temporary();
    config.services.push(
        KdcService::new(PASSWORD_SERVICE, "pwseg.keytab")
            .with_password(PASSWORD)
            .delegating_to([EXCHANGE_SERVICE]),
    );
    config
}

/// The KDC the tests of this binary share while any of them runs; it stops when the last one
/// using it finishes (a static would never be dropped and leave the daemons running).
pub async fn shared_kdc() -> Arc<RunningKdc> {
    Kdc::shared(kdc_config).await.expect("the test KDC starts")
}

/// A KDC of its own, for a test that stops and restarts it.
pub async fn own_kdc() -> RunningKdc {
    tokio::task::spawn_blocking(|| Kdc::start(kdc_config()).expect("the test KDC starts"))
        .await
        .unwrap()
}

/// A client configuration for `service` against `kdc`, giving up on a KDC after 2 s.
pub fn config(kdc: &RunningKdc, service: &str, credentials: Credentials) -> KcdConfig {
    let mut config = KcdConfig::new(
        vec![RealmConfig::new("test.local", [kdc.addr().to_string()])],
        service,
        credentials,
    );
    config.attempt_timeout = Duration::from_secs(2);
    config
}

/// The gateway (`HTTP/seg.test.local`, allowed to delegate to Exchange) with its keytab.
pub fn gateway(kdc: &RunningKdc) -> KcdClient {
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().to_path_buf();
    KcdClient::new(config(
        kdc,
        GATEWAY_SERVICE,
        Credentials::KeytabFile(keytab),
    ))
    .unwrap()
}

/// The name of the `i`-th of many users (`user001`, …), as [`kdc_with_users`] creates them.
pub fn numbered_user(i: usize) -> String {
    format!("user{:03}", i + 1)
}

/// A KDC of its own with `count` users besides alice and bob ([`numbered_user`]), and
/// whatever else `adjust` changes: for bursts over many distinct users and for odd policies.
pub async fn kdc_with_users(count: usize, adjust: impl FnOnce(&mut KdcConfig)) -> RunningKdc {
    let mut config = kdc_config();
    config.users.extend(
        (0..count).map(|i| KdcUser::new(numbered_user(i), format!("pw-{}", numbered_user(i)))),
    );
    adjust(&mut config);
    tokio::task::spawn_blocking(|| Kdc::start(config).expect("the test KDC starts"))
        .await
        .unwrap()
}

/// Requests in the KDC's log, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoggedRequests {
    /// `AS_REQ` lines: logins.
    pub as_req: usize,
    /// `TGS_REQ` lines: S4U2Self and S4U2Proxy (and any other TGS request).
    pub tgs_req: usize,
}

impl LoggedRequests {
    /// The counts in `kdc`'s log now.
    pub fn now(kdc: &RunningKdc) -> Self {
        let log = kdc.log();
        let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
        Self {
            as_req: count("AS_REQ"),
            tgs_req: count("TGS_REQ"),
        }
    }

    /// The counts once the KDC has logged at least `tgs_req` TGS requests, or after 10 s
    /// (krb5kdc writes a request's line after answering it).
    pub async fn once_tgs_reaches(kdc: &RunningKdc, tgs_req: usize) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let counts = Self::now(kdc);
            if counts.tgs_req >= tgs_req || std::time::Instant::now() > deadline {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Decrypts `ticket` with the key of `service` from its keytab (written by MIT's kadmin), as
/// the service would.
pub fn open_ticket(kdc: &RunningKdc, service: &str, ticket: &Ticket) -> EncTicketPart {
    let keytab = Keytab::read(kdc.keytab(service).unwrap()).unwrap();
    let principal = Principal::parse(service, Some(DEFAULT_REALM)).unwrap();
    let etype = EncType::from_i32(ticket.enc_part.etype).unwrap();
    let entry = keytab.key_for(&principal, etype).unwrap();
    let plain = entry
        .key
        .decrypt(2, &ticket.enc_part.cipher)
        .expect("the ticket decrypts with the service's key");
    rasn::der::decode_with_remainder::<EncTicketPart>(&plain)
        .unwrap()
        .0
}

/// The components of a principal name.
pub fn names(parts: &rasn_kerberos::PrincipalName) -> Vec<String> {
    parts
        .string
        .iter()
        .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
        .collect()
}

/// The AP-REQ inside a Negotiate token (SPNEGO NegTokenInit, Kerberos mechToken).
pub fn ap_req_of(token: &NegotiateToken) -> ApReq {
    let NegotiationToken::Init(init) = spnego::parse_negotiation_token(token.as_bytes()).unwrap()
    else {
        panic!("not a NegTokenInit");
    };
    let (oid, inner) = spnego::parse_initial_token(init.mech_token.as_deref().unwrap()).unwrap();
    assert_eq!(&*oid, spnego::KRB5_OID);
    assert_eq!(&inner[..2], &[1, 0], "TOK_ID of an AP-REQ");
    rasn::der::decode(&inner[2..]).unwrap()
}

/// Waits until the clock reads `time` or later: for a ticket's end time to pass.
pub async fn wait_until(time: SystemTime) {
    loop {
        match time.duration_since(SystemTime::now()) {
            Ok(left) if !left.is_zero() => {
                tokio::time::sleep(left.min(Duration::from_millis(100))).await
            }
            _ => return,
        }
    }
}
