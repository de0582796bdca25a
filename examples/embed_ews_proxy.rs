//! Embedding `ews-proxy-core` in your own gateway: compose its layers with one of your own.
//!
//! ```sh
//! cargo run --example embed_ews_proxy -- http://127.0.0.1:9000 127.0.0.1:8080
//! ```
//!
//! Serves `/EWS/*` on the second address and proxies it to the Exchange at the first URL, with
//! hop-by-hop hygiene, `X-Forwarded-*`, a 1 MiB body cap, the operation sniffer, and a custom
//! layer that logs each request's EWS operation. Stop it with Ctrl-C: in-flight requests drain.

use ews_proxy_core::body_limit::RequestBodyLimitLayer;
use ews_proxy_core::forwarded::ForwardedHeadersLayer;
use ews_proxy_core::hop_by_hop::StripHopByHopLayer;
use ews_proxy_core::operation::{EwsOperation, EwsOperationLayer};
use ews_proxy_core::proxy::{ReverseProxy, Upstream};
use ews_proxy_core::routing::PathRouter;
use ews_proxy_core::server::{Server, ServerSettings};
use ews_proxy_core::tls::UpstreamTrust;
use ews_proxy_core::upstream::{PoolSettings, UpstreamClient};
use std::time::Duration;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let exchange = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9000".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());

    let client = UpstreamClient::new(&UpstreamTrust::default(), &PoolSettings::default())?;
    let upstream = Upstream::new(exchange.parse()?, Duration::from_secs(60))?;
    let ews = ServiceBuilder::new()
        .layer(StripHopByHopLayer::new())
        .layer(ForwardedHeadersLayer::new())
        .layer(RequestBodyLimitLayer::new(1 << 20))
        .layer(EwsOperationLayer::new())
        // Your own layer sits wherever you need it; here, after the sniffer, so it sees the
        // operation in the request's extensions.
        .map_request(|request: http::Request<_>| {
            if let Some(operation) = request.extensions().get::<EwsOperation>() {
                println!(
                    "{} {} ({operation})",
                    request.method(),
                    request.uri().path()
                );
            }
            request
        })
        .service(ReverseProxy::new(client, upstream));
    let router = PathRouter::new(Some(ews), None::<ReverseProxy>);

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "proxying http://{}/EWS to {exchange}",
        listener.local_addr()?
    );
    Server::new(listener, ServerSettings::default())
        .serve(router, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
