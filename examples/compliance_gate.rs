//! Embedding `compliance-policy`: a device gate in front of your own EWS service.
//!
//! ```sh
//! cargo run --example compliance_gate
//! ```
//!
//! Loads a view of two devices (one compliant, one wiped) as a full sync would, puts the
//! compliance layer in front of a stand-in EWS handler, and shows what each device gets; then
//! an administrator blocks the compliant one and the next request shows it.

use bytes::Bytes;
use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use compliance_policy::enforce::ComplianceLayer;
use compliance_policy::policy::{Override, PolicySettings};
use compliance_policy::state::{ChangeSource, Compliance};
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};

fn device(id: &str, enrollment: Enrollment) -> DeviceRecord {
    DeviceRecord {
        device_id: DeviceId::new(id),
        user: Some("alice@corp.example".into()),
        enrollment,
        compliance: ComplianceStatus::Compliant,
        managed: true,
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let compliance = Compliance::new(PolicySettings::default());
    compliance.replace_all(
        vec![
            device("PHONE1", Enrollment::Enrolled),
            device("PHONE2", Enrollment::EnterpriseWiped),
        ],
        ChangeSource::FullSync,
    );
    let gate = ServiceBuilder::new()
        .layer(ComplianceLayer::new(compliance.clone()))
        .service_fn(|_request: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from(
                "exchange answered",
            )))
        });

    let ask = |device: &'static str| {
        let gate = gate.clone();
        async move {
            let request = Request::post("/EWS/Exchange.asmx")
                .header("x-device-id", device)
                .body(Full::default())?;
            let response = gate.oneshot(request).await?;
            let status = response
                .headers()
                .get("x-compliance-status")
                .map(|v| v.to_str().unwrap_or("?").to_owned());
            println!(
                "{device}: {} {}",
                response.status(),
                status.unwrap_or_default()
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }
    };
    ask("PHONE1").await?;
    ask("PHONE2").await?;
    ask("UNKNOWN").await?;

    let transitions = compliance.set_device_override("PHONE1", Some(Override::Block));
    println!(
        "an administrator blocks PHONE1: {} transition(s)",
        transitions.len()
    );
    ask("PHONE1").await?;
    Ok(())
}
