//! The base of the gateway: an EWS reverse proxy built from tower services.
//!
//! ENS sends its EWS traffic (`/EWS/Exchange.asmx`) to the gateway; this crate carries it to
//! Exchange and back, streaming both ways, with the hygiene a reverse proxy owes both sides. The
//! other crates of the workspace (compliance, authentication) are layers that sit in front of the
//! [`proxy::ReverseProxy`] and read what this crate learnt of each request from its extensions:
//! the [`server::ConnectionInfo`] and the [`operation::EwsOperation`].
//!
//! One module per concern, each a tower `Layer` + `Service` (or a plain service):
//!
//! | module | does |
//! |---|---|
//! | [`server`] | accepts TCP/TLS connections, limits, timeouts (an idle timer a service may pause), graceful shutdown |
//! | [`routing`] | `/EWS` (any case) and ActiveSync routes, `404` for the rest or when disabled, `400` for a path IIS would read otherwise (`..`, `%2e`, `\`) |
//! | [`activesync`] | an ActiveSync request's command, device and user, from its plain or base64 query |
//! | [`hop_by_hop`] | removes hop-by-hop headers both ways |
//! | [`forwarded`] | sets `X-Forwarded-For`, `-Proto`, `-Host` |
//! | [`body_limit`] | `413` beyond a body size |
//! | [`operation`] | learns the EWS operation from the start of the SOAP body |
//! | [`proxy`] | sends the request to Exchange, turns failures into SOAP faults; ActiveSync `Ping` and `Sync` may wait for the heartbeat |
//! | [`host_pool`] | the connections to one upstream host: HTTP/1.1 reuse for short requests and Windows authentication, HTTP/2 for long-lived ones up to the stream limit |
//! | [`upstream`], [`tls`] | the upstream TLS and pool settings (and a general pooled client), both sides' TLS settings |
//! | [`fault`], [`body`], [`future`] | SOAP faults, body types, the short-circuit response future |
//! | [`identity`] | the user of a request, as authentication tells compliance |
//! | [`metrics`] | responses counted by route and status class; the Prometheus exposition |
//! | [`span`] | each request, its future and its response body inside a `tracing` span |
//!
//! A complete EWS proxy, as the `seg-proxy` binary composes it:
//!
//! ```no_run
//! use ews_proxy_core::{
//!     body_limit::RequestBodyLimitLayer, forwarded::ForwardedHeadersLayer,
//!     hop_by_hop::StripHopByHopLayer, operation::EwsOperationLayer,
//!     proxy::{ReverseProxy, Upstream}, routing::PathRouter,
//!     server::{Server, ServerSettings}, tls::UpstreamTrust,
//!     upstream::{PoolSettings, UpstreamClient},
//! };
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = UpstreamClient::new(&UpstreamTrust::default(), &PoolSettings::default())?;
//! let exchange = Upstream::new("https://exchange.corp.example".parse()?, Duration::from_secs(120))?;
//! let ews = ServiceBuilder::new()
//!     .layer(StripHopByHopLayer::new())
//!     .layer(ForwardedHeadersLayer::new())
//!     .layer(RequestBodyLimitLayer::new(16 << 20))
//!     .layer(EwsOperationLayer::new())
//!     .service(ReverseProxy::new(client, exchange));
//! let router = PathRouter::new(Some(ews), None::<ReverseProxy>);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new(listener, ServerSettings::default())
//!     .serve(router, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # Ok(())
//! # }
//! ```

pub mod activesync;
pub mod body;
pub mod body_limit;
pub mod fault;
pub mod forwarded;
pub mod future;
pub mod hop_by_hop;
pub mod host_pool;
pub mod identity;
pub mod metrics;
pub mod operation;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod span;
pub mod tls;
pub mod upstream;
