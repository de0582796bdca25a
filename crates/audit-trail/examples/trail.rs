//! Records a few events into a trail in a temporary directory, then pages through it newest
//! first, as the admin API's `GET /audit` does.
//!
//! `cargo run -p audit-trail --example trail`

use audit_trail::entry::{Event, Record};
use audit_trail::metrics::AuditMetrics;
use audit_trail::store::Query;
use audit_trail::{AuditSettings, AuditTrail};
use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use compliance_policy::policy::PolicySettings;
use compliance_policy::state::{ChangeSource, Compliance};
use compliance_policy::view::Change;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("audit-trail-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let settings = AuditSettings::new(dir.join("audit.redb"));
    let mut trail = AuditTrail::open(&settings, "example-node", AuditMetrics::new())?;

    let compliance = Compliance::new(PolicySettings::default());
    let phone = |id: &str, enrollment| DeviceRecord {
        device_id: DeviceId::new(id),
        user: Some("alice@test.local".into()),
        enrollment,
        compliance: ComplianceStatus::Compliant,
        managed: true,
        ..Default::default()
    };
    compliance.replace_all(
        (1..=5)
            .map(|i| phone(&format!("PHONE{i}"), Enrollment::Enrolled))
            .collect(),
        ChangeSource::FullSync,
    );
    trail.follow_transitions(&compliance);
    let sink = trail.sink();
    sink.record(Record::now(Event::GatewayStarted {
        version: env!("CARGO_PKG_VERSION").into(),
    }));
    for i in 1..=5 {
        let wiped = phone(&format!("PHONE{i}"), Enrollment::EnterpriseWiped);
        compliance.apply(vec![Change::Upsert(wiped)], ChangeSource::ChangeEvent);
    }
    let store = trail.store().clone();
    trail.close().await;

    let mut query = Query {
        user: Some("alice@test.local".into()),
        limit: 2,
        ..Query::default()
    };
    loop {
        let page = store.query(&query)?;
        for entry in &page.entries {
            println!("{}", serde_json::to_string(entry)?);
        }
        match page.next_cursor {
            Some(cursor) => {
                println!("-- next page before id {cursor}");
                query.cursor = Some(cursor);
            }
            None => break,
        }
    }
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
