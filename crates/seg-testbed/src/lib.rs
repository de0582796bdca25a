//! Faithful stand-ins for what cannot run here, and the shared test harness.
//!
//! The gateway's integration tests and the demo run against these instead of a real Exchange
//! server: [`exchange`] serves EWS as Microsoft's reference describes it (SOAP, subscriptions,
//! streaming, push, affinity, IIS-style authentication). It is written independently of the
//! gateway's crates and shares no protocol code with them, so that a misreading of EWS in one
//! cannot hide itself in the other. [`pki`] makes the test CA and certificates, [`token`] the
//! OAuth tokens, [`client`] is a small HTTP client, [`upstream`] holds scripted upstreams for
//! behaviour no faithful server provokes on demand, and [`harness`] holds the helpers every test
//! uses.
//! [`kdc`] brings up a real MIT Kerberos KDC on loopback in which constrained delegation works;
//! [`samba`] brings up Samba's Active Directory domain controller as a second, AD-like KDC
//! (enterprise names, PAC, RC4 service tickets).
//! [`redis`] runs a real Redis server on loopback for the gateways that share a view.
//! [`fault_proxy`] sits between the gateway and any dependency and breaks the connection on
//! demand (delay, stall, reset, truncate, garbage, refuse, down).
//! [`uem`] stands in for the Workspace ONE UEM REST API: the MEM device search with delta sync,
//! devices whose compliance tests change, and change events pushed to a signed webhook.
//!
//! ```
//! use seg_testbed::harness::{TestExchange, TEST_PASSWORD};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> seg_testbed::Result<()> {
//! let testbed = TestExchange::start(|_config| {}).await?;
//! testbed.server.deliver("alice@test.local", "Hello")?;
//! assert!(testbed.server.url().starts_with("https://127.0.0.1:"));
//! # let _ = TEST_PASSWORD;
//! # Ok(()) }
//! ```

pub mod client;
mod error;
pub mod exchange;
pub mod fault_proxy;
pub mod harness;
pub mod kdc;
pub mod pki;
mod recording;
pub mod redis;
pub mod samba;
mod serve;
pub mod static_soap;
pub mod token;
pub mod uem;
pub mod upstream;

pub use error::{Error, Result};
pub use recording::DEFAULT_RECORDED_REQUESTS;
