//! The console on its own, over a made-up view of three devices (one wiped): serves it on a free
//! loopback port and prints where to sign in. Embedders compose the same router with their own
//! `Compliance` state (and an audit trail, a sync handle) beside their admin API.
//!
//! `cargo run -p admin-console --example console`, then open the printed address; stop with
//! Ctrl-C.

use admin_console::{Console, ConsoleSettings};
use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use compliance_policy::policy::PolicySettings;
use compliance_policy::state::{ChangeSource, Compliance};

const TOKEN: &str = "example-admin-token-0001";

fn device(id: &str, user: &str, model: &str, enrollment: Enrollment) -> DeviceRecord {
    DeviceRecord {
        device_id: DeviceId::new(id),
        user: Some(user.into()),
        model: Some(model.into()),
        platform: Some("iOS".into()),
        enrollment,
        compliance: ComplianceStatus::Compliant,
        managed: true,
        ..DeviceRecord::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let compliance = Compliance::new(PolicySettings::default());
    compliance.replace_all(
        vec![
            device(
                "EASDEV1",
                "alice@corp.example",
                "iPhone15,2",
                Enrollment::Enrolled,
            ),
            device(
                "EASDEV2",
                "bob@corp.example",
                "iPad13,4",
                Enrollment::EnterpriseWiped,
            ),
            device(
                "EASDEV3",
                "carol@corp.example",
                "iPhone14,7",
                Enrollment::Enrolled,
            ),
        ],
        ChangeSource::FullSync,
    );
    let settings = ConsoleSettings::new(env!("CARGO_PKG_VERSION")).with_admin_token(TOKEN);
    let app = Console::new(compliance, settings).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "console: http://{}/ui/ (sign in with the token {TOKEN})",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
