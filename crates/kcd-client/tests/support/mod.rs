//! What the integration tests of kcd-client share: the real MIT KDC of `seg-testbed` (one per
//! test binary while any of its tests runs) and a gateway client logged in against it.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use kcd_client::{Credentials, KcdClient, KcdConfig, RealmConfig};
use seg_testbed::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig, KdcService, RunningKdc};

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
