//! Tests of the trail: the store, the sink, the writer, retention and the feeds.

use super::*;
use crate::entry::{DecisionRecord, Target};
use crate::store::Query;
use compliance_policy::policy::{Override, PolicySettings};
use compliance_policy::state::ChangeSource;
use seg_testbed::harness::wait_until;
use std::time::Instant;

const STEP: Duration = Duration::from_secs(10);

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("audit.redb")).unwrap()
}

fn transition(device: &str, user: &str, at: SystemTime) -> Record {
    let mut record = Record::now(Event::Transition {
        before: DecisionRecord::new("allowed", "compliant"),
        after: DecisionRecord::new("blocked", "enterprise-wiped"),
        source: "change-event".into(),
    })
    .device(device)
    .user(user);
    record.at = at;
    record
}

fn ids(page: &store::Page) -> Vec<u64> {
    page.entries.iter().map(|e| e.id).collect()
}

fn minutes_ago(minutes: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(60 * minutes)
}

#[test]
fn appended_entries_get_growing_ids_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let written = store
        .append(
            "seg-1",
            vec![
                transition("easdev1", "Alice@Test.Local", minutes_ago(2)),
                Record::now(Event::GatewayStopped),
            ],
        )
        .unwrap();
    assert_eq!(written.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(written[0].device.as_deref(), Some("EASDEV1"));
    assert_eq!(written[0].user.as_deref(), Some("alice@test.local"));
    drop(store);

    let store = open(&dir);
    let page = store.query(&Query::default()).unwrap();
    assert_eq!(ids(&page), [2, 1], "newest first");
    assert_eq!(page.entries[1], written[0]);
    let more = store
        .append("seg-1", vec![Record::now(Event::GatewayStopped)])
        .unwrap();
    assert_eq!(more[0].id, 3, "ids continue after a reopen");
}

#[test]
fn an_entry_is_never_older_than_the_one_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let written = store
        .append(
            "seg-1",
            vec![
                transition("A", "a@x", minutes_ago(1)),
                transition("A", "a@x", minutes_ago(5)),
            ],
        )
        .unwrap();
    assert_eq!(written[1].at, written[0].at);
}

#[test]
fn queries_by_device_user_and_time_page_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // Ten entries, a minute apart: devices A and B alternate; ids 1..=10, oldest first.
    let records = (0..10u64)
        .map(|i| {
            let (device, user) = if i % 2 == 0 {
                ("A", "alice@test.local")
            } else {
                ("B", "bob@test.local")
            };
            transition(device, user, minutes_ago(100 - i))
        })
        .collect();
    let written = store.append("seg-1", records).unwrap();

    let query = |query: Query| store.query(&query).unwrap();
    let by_device = query(Query {
        device: Some("a".into()),
        limit: 3,
        ..Query::default()
    });
    assert_eq!(ids(&by_device), [9, 7, 5]);
    assert_eq!(by_device.next_cursor, Some(5));
    let next = query(Query {
        device: Some("A".into()),
        limit: 3,
        cursor: by_device.next_cursor,
        ..Query::default()
    });
    assert_eq!(ids(&next), [3, 1]);
    assert_eq!(next.next_cursor, None);

    let by_user = query(Query {
        user: Some("BOB@test.local".into()),
        ..Query::default()
    });
    assert_eq!(ids(&by_user), [10, 8, 6, 4, 2]);

    // Entries 4..=7 by time, inclusive at both ends.
    let window = Query {
        since: Some(written[3].at),
        until: Some(written[6].at),
        ..Query::default()
    };
    assert_eq!(ids(&query(window.clone())), [7, 6, 5, 4]);
    let paged = query(Query {
        limit: 2,
        ..window.clone()
    });
    assert_eq!((ids(&paged), paged.next_cursor), (vec![7, 6], Some(6)));
    assert_eq!(
        ids(&query(Query {
            device: Some("B".into()),
            ..window
        })),
        [6, 4]
    );
    assert_eq!(
        ids(&query(Query {
            device: Some("A".into()),
            user: Some("bob@test.local".into()),
            ..Query::default()
        })),
        Vec::<u64>::new(),
        "device and user together"
    );
    assert!(
        query(Query {
            since: Some(SystemTime::now()),
            ..Query::default()
        })
        .entries
        .is_empty()
    );
}

#[test]
fn retention_deletes_old_entries_in_batches_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut records: Vec<Record> = (0..5)
        .map(|i| transition("OLD", "old@test.local", minutes_ago(60 * 24 * 100 + 10 - i)))
        .collect();
    records.push(transition("NEW", "new@test.local", minutes_ago(1)));
    store.append("seg-1", records).unwrap();

    let cutoff = SystemTime::now() - Duration::from_secs(90 * 24 * 3600);
    assert_eq!(store.purge_before(cutoff, 3).unwrap(), 3);
    assert_eq!(store.purge_before(cutoff, 3).unwrap(), 2);
    assert_eq!(store.purge_before(cutoff, 3).unwrap(), 0);
    assert_eq!(store.len().unwrap(), 1);
    let old = Query {
        device: Some("OLD".into()),
        ..Query::default()
    };
    assert!(store.query(&old).unwrap().entries.is_empty());
    let by_user = Query {
        user: Some("old@test.local".into()),
        ..Query::default()
    };
    assert!(store.query(&by_user).unwrap().entries.is_empty());
    assert_eq!(ids(&store.query(&Query::default()).unwrap()), [6]);
}

#[tokio::test]
async fn the_retention_task_purges_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = AuditSettings::new(dir.path().join("audit.redb"));
    settings.retention = Duration::from_secs(3600);
    settings.purge_interval = Duration::from_millis(20);
    let metrics = AuditMetrics::new();
    let trail = AuditTrail::open(&settings, "seg-1", metrics.clone()).unwrap();
    let sink = trail.sink();
    sink.record(transition("OLD", "old@test.local", minutes_ago(120)));
    sink.record(transition("NEW", "new@test.local", minutes_ago(1)));
    let store = trail.store().clone();
    wait_until(STEP, "the old entry to be purged", || {
        let done = metrics.written() == 2 && store.len().unwrap() == 1;
        async move { done }
    })
    .await
    .unwrap();
    assert_eq!(metrics.purged(), 1);
    trail.close().await;
}

#[tokio::test]
async fn a_full_queue_counts_the_loss_and_never_waits() {
    let metrics = AuditMetrics::new();
    // Nobody drains this queue: it stays full.
    let (sink, _queue) = AuditSink::channel(2, metrics.clone());
    let started = Instant::now();
    let queued: usize = (0..10_000)
        .filter(|_| sink.record(Record::now(Event::GatewayStopped)))
        .count();
    let took = started.elapsed();
    assert_eq!(queued, 2);
    assert_eq!(metrics.lost(Loss::QueueFull), 9_998);
    assert!(
        took < Duration::from_millis(500),
        "10,000 records took {took:?}"
    );
}

#[tokio::test]
async fn records_after_close_are_counted_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = AuditMetrics::new();
    let trail = AuditTrail::open(
        &AuditSettings::new(dir.path().join("audit.redb")),
        "seg-1",
        metrics.clone(),
    )
    .unwrap();
    let sink = trail.sink();
    assert!(sink.record(Record::now(Event::GatewayStopped)));
    trail.close().await;
    assert_eq!(metrics.written(), 1, "close writes what was queued");
    assert!(!sink.record(Record::now(Event::GatewayStopped)));
    assert_eq!(metrics.lost(Loss::Closed), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn transitions_the_trail_falls_behind_on_are_counted_as_lagged() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = AuditSettings::new(dir.path().join("audit.redb"));
    settings.queue = 20_000;
    let metrics = AuditMetrics::new();
    let mut trail = AuditTrail::open(&settings, "seg-1", metrics.clone()).unwrap();
    let compliance = Compliance::new(PolicySettings::default());
    compliance.replace_all(Vec::new(), ChangeSource::FullSync);
    trail.follow_transitions(&compliance);
    // On this one thread the feed cannot run until the test yields: 5,000 transitions overrun
    // the state's broadcast buffer of 4,096.
    for i in 0..5_000 {
        compliance.set_device_override(&format!("LAB{i}"), Some(Override::Allow));
    }
    let store = trail.store().clone();
    trail.close().await;
    assert_eq!(metrics.lost(Loss::Lagged), 5_000 - 4_096);
    assert_eq!(store.len().unwrap(), 4_096);
    assert_eq!(metrics.lost_total(), 5_000 - 4_096);
}

#[tokio::test]
async fn override_changes_record_the_actor_target_and_reason() {
    use compliance_policy::admin::{OverrideChange, OverrideTarget};
    let dir = tempfile::tempdir().unwrap();
    let compliance = Compliance::new(PolicySettings::default());
    let trail = AuditTrail::open(
        &AuditSettings::new(dir.path().join("audit.redb")),
        "seg-1",
        AuditMetrics::new(),
    )
    .unwrap();
    let sink = trail.sink();
    let admin = compliance_policy::admin::AdminState::new(compliance, |_: &[u8]| {
        Err("no events".to_string())
    })
    .with_admin_token("an-admin-token-of-16+")
    .with_audit(move |change: &OverrideChange| {
        sink.record(Record::override_change(change));
    });
    let app = compliance_policy::admin::router(admin);
    let request = http::Request::put("/overrides/user/Alice@Test.Local")
        .header("authorization", "Bearer an-admin-token-of-16+")
        .body(axum::body::Body::from(
            r#"{"action":"block","reason":"lost phone, ticket 42"}"#,
        ))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let store = trail.store().clone();
    trail.close().await;
    let page = store
        .query(&Query {
            user: Some("alice@test.local".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(
        page.entries[0].event,
        Event::OverrideSet {
            actor: "admin-token".into(),
            target: Target::User("alice@test.local".into()),
            action: "block".into(),
            reason: Some("lost phone, ticket 42".into()),
        }
    );
    let _ = OverrideTarget::User(String::new());
}

#[test]
fn sync_outcomes_become_entries_with_counts() {
    let before = SyncStatus::default();
    let now = SyncStatus {
        last_full_sync: Some(SystemTime::now()),
        last_delta_sync: Some(SystemTime::now()),
        successes: 3,
        failures: 2,
        last_error: Some("device source answered 500".into()),
    };
    let records = sync_records(&before, &now, 7);
    let events: Vec<Event> = records.into_iter().map(|r| r.event).collect();
    assert_eq!(
        events,
        [
            Event::SyncSucceeded {
                sync: "full".into(),
                count: 1,
                devices: 7
            },
            Event::SyncSucceeded {
                sync: "delta".into(),
                count: 2,
                devices: 7
            },
            Event::SyncFailed {
                cause: "device source answered 500".into(),
                count: 2
            },
        ]
    );
    assert!(sync_records(&now, &now, 7).is_empty());
}

#[tokio::test]
async fn export_streams_json_lines_of_every_match() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let records = (0..1_200)
        .map(|i| transition(if i % 3 == 0 { "A" } else { "B" }, "u@x", minutes_ago(1)))
        .collect();
    store.append("seg-1", records).unwrap();
    let admin = compliance_policy::admin::AdminState::new(
        Compliance::new(PolicySettings::default()),
        |_: &[u8]| Err("no events".to_string()),
    )
    .with_admin_token("an-admin-token-of-16+");
    let app = api::router(store, &admin);
    let request = http::Request::get("/audit/export?device=A")
        .header("authorization", "Bearer an-admin-token-of-16+")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let lines: Vec<entry::Entry> = body
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 400);
    assert!(lines.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert!(lines.iter().all(|e| e.device.as_deref() == Some("A")));
}
