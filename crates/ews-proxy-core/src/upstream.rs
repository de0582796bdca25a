//! The HTTPS client settings the gateway reaches Exchange (and the UEM console) with.
//!
//! An [`UpstreamClient`] holds the TLS configuration (trust store, ignore-SSL) and the pool
//! settings, made once per process. The proxy sends through a [`crate::host_pool::HostPool`]
//! per upstream host built from it; [`UpstreamClient::inner`] is a general pooled hyper-util
//! client for everything else (UEM API calls, callbacks). Exchange's affinity (its
//! `X-BackEndOverrideCookie`) keeps working because the gateway forwards the cookie and headers
//! untouched; it never pins connections itself.
//!
//! Every TLS connection a [`crate::host_pool::HostPool`] opens records the certificate the host
//! presented in the client's [`PresentedCertificates`]: Extended Protection binds Kerberos
//! tokens to it, and follows a renewed certificate without a restart.
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
use http::uri::Authority;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    /// Offer HTTP/2 to Exchange (ALPN; an Exchange that does not take it gets HTTP/1.1) for
    /// long-lived requests: EWS `GetStreamingEvents` and ActiveSync `Ping`, which then share a
    /// few multiplexed connections instead of holding one each for up to 30 minutes. On by
    /// default. Requests carrying Windows authentication (`Negotiate`, `NTLM`) go over
    /// HTTP/1.1 whatever this says: IIS does not support it over HTTP/2.
    pub http2: bool,
    /// Short requests over HTTP/2 too (with [`http2`](Self::http2)), instead of pooled
    /// HTTP/1.1 keep-alive connections. Off by default: the gateway spends ≈ 15–35% more CPU
    /// per short request on HTTP/2 to Exchange (HPACK, stream bookkeeping, a task per request
    /// body), and HTTP/1.1 gave 1.4× its requests/s with 1 MiB responses (docs/benchmarks.md).
    pub http2_short_requests: bool,
    /// Requests (streams) at once on one HTTP/2 connection to Exchange before another
    /// connection is opened; lowered to what Exchange announces. IIS allows 100 by default.
    pub http2_max_streams: usize,
    /// TCP keep-alive on connections to Exchange: the first probe after this long without a
    /// byte, then one every this long; zero turns it off. An ActiveSync `Ping` leaves its
    /// connection silent for the device's heartbeat (up to 59 minutes), longer than many load
    /// balancers and firewalls keep a silent flow (Azure's load balancer 4 minutes by default);
    /// the probes keep the flow open and find a dead Exchange. 60 seconds by default.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 256,
            connect_timeout: Duration::from_secs(10),
            http2: true,
            http2_short_requests: false,
            http2_max_streams: 100,
            tcp_keepalive: Duration::from_secs(60),
        }
    }
}

/// The TLS and pool settings for upstream hosts, and a general pooled HTTP/1.1 and HTTP/2
/// client over rustls. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    /// The TLS configuration with ALPN set, for [`crate::host_pool::HostPool`].
    tls: Arc<rustls::ClientConfig>,
    settings: PoolSettings,
    presented: PresentedCertificates,
}

/// The end-entity certificate each upstream host presented on the latest TLS connection the
/// gateway opened to it, by the host's authority (`host:port` as in its URL). Cheap to clone:
/// clones share the record.
///
/// The pools of an [`UpstreamClient`] record every handshake here; what reads it (the channel
/// bindings of Extended Protection) sees a renewed certificate as soon as a connection to the
/// host has been opened since the renewal.
///
/// ```
/// use ews_proxy_core::upstream::PresentedCertificates;
/// use rustls_pki_types::CertificateDer;
///
/// let presented = PresentedCertificates::default();
/// let exchange = "mail.corp.example:443".parse().unwrap();
/// assert!(presented.get(&exchange).is_none());
/// presented.record(&exchange, CertificateDer::from(vec![0x30, 0x00]));
/// assert_eq!(presented.get(&exchange).unwrap().as_ref(), &[0x30, 0x00]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct PresentedCertificates {
    by_host: Arc<Mutex<HashMap<Authority, CertificateDer<'static>>>>,
}

impl PresentedCertificates {
    /// The certificate `authority` presented last, if a connection to it was recorded.
    pub fn get(&self, authority: &Authority) -> Option<CertificateDer<'static>> {
        self.lock().get(authority).cloned()
    }

    /// Records that `authority` presented `certificate` (its end-entity certificate); the pools
    /// call this on every TLS connection they open, and a probe at start may too.
    pub fn record(&self, authority: &Authority, certificate: CertificateDer<'static>) {
        let mut by_host = self.lock();
        if by_host.get(authority) != Some(&certificate) {
            if by_host.contains_key(authority) {
                tracing::info!(%authority, "the upstream presents a new certificate");
            }
            by_host.insert(authority.clone(), certificate);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Authority, CertificateDer<'static>>> {
        // A panic while holding the lock leaves a whole map behind: keep using it.
        self.by_host
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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
        let mut with_alpn = tls;
        with_alpn.alpn_protocols = if pool.http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(UpstreamClient {
            client,
            tls: Arc::new(with_alpn),
            settings: pool.clone(),
            presented: PresentedCertificates::default(),
        })
    }

    fn pool(
        tls: rustls::ClientConfig,
        pool: &PoolSettings,
        http2: bool,
    ) -> Client<HttpsConnector<HttpConnector>, UpstreamBody> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        if !pool.tcp_keepalive.is_zero() {
            http.set_keepalive(Some(pool.tcp_keepalive));
            http.set_keepalive_interval(Some(pool.tcp_keepalive));
        }
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

    /// A general pooled hyper-util client with these settings, for any host.
    pub fn inner(&self) -> &Client<HttpsConnector<HttpConnector>, UpstreamBody> {
        &self.client
    }

    /// The TLS client configuration, ALPN included (HTTP/2 offered when the settings say so).
    pub fn tls_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    /// The pool settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// The certificates the hosts of this client's pools presented, shared by every clone.
    pub fn presented_certificates(&self) -> &PresentedCertificates {
        &self.presented
    }
}
