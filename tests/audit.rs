//! The audit trail end to end, over real sockets: the test UEM console and Exchange, and a
//! gateway with `[compliance]` and `[audit]`. A wipe and an override are recorded with their
//! source and actor, queried and exported through the admin listener behind the admin token, and
//! kept across a restart.

mod support;

use http::{Method, StatusCode};
use seg_testbed::harness::wait_until;
use seg_testbed::uem::{Change, Device};
use serde_json::Value;
use support::*;

const DEVICE: &str = "EASDEV1";
const OTHER: &str = "EASDEV2";
const NODE: &str = "seg-audit-test";

/// The compliance stand (tests/support) with the audit trail in its directory.
type Stand = ComplianceStand;

impl Stand {
    async fn with_audit() -> Stand {
        let devices = vec![
            Device::new(DEVICE, 1, "alice@test.local"),
            Device::new(OTHER, 2, "bob@test.local"),
        ];
        ComplianceStand::start(devices, |config, dir| {
            with_audit(config, dir.join("audit.redb"), NODE);
        })
        .await
    }

    /// `GET path` on the admin listener with the admin token, as JSON.
    async fn get(&self, path: &str) -> Value {
        let (status, body) =
            admin_request(&self.gateway, Method::GET, path, Some(ADMIN_TOKEN), "").await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `GET path` lists an entry for which `wanted` holds; returns it.
    async fn entry(&self, path: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let find = || async {
            self.get(path).await["entries"]
                .as_array()
                .and_then(|entries| entries.iter().find(|e| wanted(e)).cloned())
        };
        wait_until(STEP, path, || async { find().await.is_some() })
            .await
            .unwrap();
        find().await.unwrap()
    }
}

#[tokio::test]
async fn a_wipe_and_an_override_are_recorded_with_source_and_actor_and_kept_across_a_restart() {
    let stand = Stand::with_audit().await;

    // UEM wipes the device: its change event makes a transition recorded as such.
    stand.uem.update(DEVICE, Change::EnterpriseWipe).unwrap();
    let wiped = stand
        .entry(&format!("/audit?device={DEVICE}"), |e| {
            e["kind"] == "transition"
        })
        .await;
    assert_eq!(wiped["source"], "change-event");
    assert_eq!(wiped["before"]["state"], "allowed");
    assert_eq!(
        wiped["after"],
        serde_json::json!({"state": "blocked", "reason": "enterprise-wiped"})
    );
    assert_eq!(wiped["user"], "alice@test.local");
    assert_eq!(wiped["node"], NODE);
    let at = wiped["at"].as_str().unwrap();
    assert!(
        at.contains('T') && at.ends_with('Z'),
        "RFC 3339 in UTC: {at}"
    );

    // An administrator blocks the other device, with a reason: recorded with the actor.
    let (status, body) = admin_request(
        &stand.gateway,
        Method::PUT,
        &format!("/overrides/device/{OTHER}"),
        Some(ADMIN_TOKEN),
        r#"{"action":"block","reason":"reported stolen"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let set = stand
        .entry(&format!("/audit?device={OTHER}"), |e| {
            e["kind"] == "override-set"
        })
        .await;
    assert_eq!(set["actor"], "admin-token");
    assert_eq!(set["action"], "block");
    assert_eq!(set["reason"], "reported stolen");
    assert_eq!(set["target"], serde_json::json!({"device": OTHER}));
    let moved = stand
        .entry(&format!("/audit?device={OTHER}"), |e| {
            e["kind"] == "transition"
        })
        .await;
    assert_eq!(moved["source"], "override");

    // The export is JSON lines of the same entries.
    let (status, export) = admin_request(
        &stand.gateway,
        Method::GET,
        &format!("/audit/export?device={DEVICE}"),
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<Value> = export
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(lines.contains(&wiped), "{export}");
    assert!(lines.iter().all(|e| e["device"] == DEVICE), "{export}");

    // After a restart on the same file, everything is still there, with the stop and both starts.
    let stand = stand.restart(|_| {}).await;
    wait_ready(&stand.gateway).await;
    let page = stand.get(&format!("/audit?device={DEVICE}")).await;
    assert!(
        page["entries"].as_array().unwrap().contains(&wiped),
        "{page}"
    );
    let kinds = || async {
        let all = stand.get("/audit?limit=1000").await;
        all["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["kind"].as_str().map(str::to_owned))
            .collect::<Vec<String>>()
    };
    wait_until(STEP, "the second start to be recorded", || async {
        kinds()
            .await
            .iter()
            .filter(|k| *k == "gateway-started")
            .count()
            == 2
    })
    .await
    .unwrap();
    let kinds = kinds().await;
    assert!(kinds.contains(&"sync-succeeded".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"gateway-stopped".to_owned()), "{kinds:?}");
    // Newest first, paged by cursor.
    let first = stand.get("/audit?limit=1").await;
    let cursor = first["next_cursor"].as_u64().unwrap();
    let second = stand.get(&format!("/audit?limit=1&cursor={cursor}")).await;
    assert!(second["entries"][0]["id"].as_u64().unwrap() < cursor);
}

#[tokio::test]
async fn the_trail_needs_the_admin_token() {
    let stand = Stand::with_audit().await;
    for path in ["/audit", "/audit/export"] {
        for token in [None, Some("not-the-admin-token-0123456789")] {
            let (status, body) = admin_request(&stand.gateway, Method::GET, path, token, "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {token:?}: {body}");
            assert!(!body.contains("gateway-started"), "{body}");
        }
    }
    let (status, body) = admin_request(
        &stand.gateway,
        Method::GET,
        "/audit?order=asc",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
