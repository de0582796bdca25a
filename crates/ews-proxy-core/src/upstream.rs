//! The pooled HTTPS client that carries requests to Exchange.
//!
//! One client per process serves every request: connections are pooled and kept alive, and
//! Exchange's affinity (its `X-BackEndOverrideCookie`) keeps working because the gateway forwards
//! the cookie and headers untouched; it never pins connections itself.
//!
//! ```
//! use ews_proxy_core::tls::UpstreamTrust;
//! use ews_proxy_core::upstream::{PoolSettings, UpstreamClient};
//!
//! # fn main() -> Result<(), ews_proxy_core::tls::TlsError> {
//! let client = UpstreamClient::new(&UpstreamTrust::default(), &PoolSettings::default())?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

use crate::body::UpstreamBody;
use crate::tls::{self, TlsError, UpstreamTrust};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How connections to Exchange are pooled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// How long an idle connection is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How many idle connections are kept per upstream host.
    pub max_idle_per_host: usize,
    /// How long connecting (TCP and TLS) may take before the request fails with 502.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Offer HTTP/2 to Exchange (ALPN; an Exchange that does not take it gets HTTP/1.1). On by
    /// default: against the test Exchange, multiplexing onto one HTTP/2 connection cost both
    /// sides less CPU per request than a pooled HTTP/1.1 connection per client (see
    /// docs/benchmarks.md).
    pub http2: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 256,
            connect_timeout: Duration::from_secs(10),
            http2: true,
        }
    }
}

/// A cheap-to-clone, pooled HTTP/1.1 and HTTP/2 client over rustls.
///
/// With HTTP/2 on, long-lived responses (`GetStreamingEvents`, ActiveSync `Ping`) still go over
/// a separate HTTP/1.1 pool, one connection each: an HTTP/2 connection carries a bounded number
/// of concurrent streams (hyper's server allows 200, IIS 100 by default), the client opens no
/// second connection when they are all taken, and streams that stay open for 30 minutes would
/// hold every slot and stall all other requests behind them.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    long_lived: Option<Client<HttpsConnector<HttpConnector>, UpstreamBody>>,
}

impl UpstreamClient {
    /// A client trusting Exchange as `trust` says; errs when the trust store cannot be read.
    ///
    /// With `trust.ignore_ssl_errors` a warning is logged here, once per client.
    pub fn new(trust: &UpstreamTrust, pool: &PoolSettings) -> Result<Self, TlsError> {
        if trust.ignore_ssl_errors {
            tracing::warn!(
                "ignore_ssl_errors is on: Exchange's certificate is NOT verified; \
                 anyone on the path to Exchange can read and change EWS traffic"
            );
        }
        let tls = tls::upstream_client_config(trust)?;
        let client = Self::pool(tls.clone(), pool, pool.http2);
        let long_lived = pool.http2.then(|| Self::pool(tls, pool, false));
        Ok(UpstreamClient { client, long_lived })
    }

    fn pool(
        tls: rustls::ClientConfig,
        pool: &PoolSettings,
        http2: bool,
    ) -> Client<HttpsConnector<HttpConnector>, UpstreamBody> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(pool.connect_timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        let connector = if http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.wrap_connector(http)
        };
        Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_host)
            .build(connector)
    }

    /// The underlying hyper-util client for ordinary requests.
    pub fn inner(&self) -> &Client<HttpsConnector<HttpConnector>, UpstreamBody> {
        &self.client
    }

    /// The client for a request: the HTTP/1.1-only pool when the response will stay open (see
    /// the type's docs), the shared one otherwise.
    pub fn for_request(
        &self,
        long_lived: bool,
    ) -> &Client<HttpsConnector<HttpConnector>, UpstreamBody> {
        match (&self.long_lived, long_lived) {
            (Some(client), true) => client,
            _ => &self.client,
        }
    }
}
