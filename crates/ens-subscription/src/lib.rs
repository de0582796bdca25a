//! An EWS notification client for an ENS2-like service: the subscriptions that watch a
//! mailbox on behalf of a device, and the reaction to the compliance gateway in front of
//! Exchange.
//!
//! ENS sends its EWS traffic through the gateway (seg-proxy), which blocks the requests of
//! non-compliant devices with `403` and `X-Compliance-Status: blocked; reason=…`. This crate is
//! the ENS side of that contract:
//!
//! - [`soap`]: the request documents and response parsers (quick-xml, namespace-aware,
//!   faithful to Microsoft's EWS reference).
//! - [`client`]: [`EwsClient`], the operations `Subscribe`, `GetEvents`, `GetStreamingEvents`,
//!   `Unsubscribe` and `GetItem` as tower services over any HTTP service, with the device's
//!   headers on every request.
//! - [`streaming`]: [`NotificationStream`], notifications parsed as the chunked
//!   `GetStreamingEvents` response arrives.
//! - [`push`]: [`PushReceiver`], the tower service answering Exchange's `SendNotification`
//!   with `OK` or `Unsubscribe`.
//! - [`lifecycle`]: the per-device subscription task: subscribe, keep alive, resubscribe with
//!   backoff, stop on a block and resume on an unblock.
//! - [`error`]: [`EwsError`], with [`EwsError::Blocked`] kept apart from every other failure.
//!
//! ```no_run
//! use ens_subscription::client::EwsClient;
//! use ens_subscription::soap::{GetItem, GetStreamingEvents, Subscribe};
//! use futures_util::StreamExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ens_subscription::EwsError> {
//! let client = EwsClient::http("http://gateway:8080/EWS/Exchange.asmx".parse().unwrap())
//!     .header("x-device-id", "EASDEV1")?
//!     .header("authorization", "Basic YWxpY2U6c2VjcmV0")?;
//! let subscription = client.subscribe(Subscribe::streaming()).await?;
//! let mut stream = client
//!     .get_streaming_events(GetStreamingEvents::new(subscription.subscription_id, 30))
//!     .await?;
//! while let Some(notification) = stream.next().await {
//!     for item_id in notification?.new_mail() {
//!         let items = client.get_item(GetItem::new(item_id.clone())).await?;
//!         println!("new mail: {:?}", items[0].subject);
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod lifecycle;
pub mod push;
pub mod soap;
pub mod streaming;
mod xml;

pub use client::EwsClient;
pub use error::EwsError;
pub use push::{PushAnswer, PushHandler, PushReceiver};
pub use streaming::NotificationStream;
