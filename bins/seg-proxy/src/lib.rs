//! The `seg-proxy` gateway: reads the configuration and composes the workspace's layers.
//!
//! This is the one place where stacks are assembled (as linkerd2-proxy's app crate does): the
//! order of the layers reads top to bottom in [`Gateway::build_service`]. Everything else lives
//! in the library crates. Tests and embedders start a whole gateway in-process with
//! [`Gateway::start`].
//!
//! ```no_run
//! use seg_proxy::{Gateway, config::Config};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = Config::load(Some("seg.toml".as_ref()), None)?;
//! let gateway = Gateway::start(loaded.config).await?;
//! println!("EWS on {:?}", gateway.http_addr());
//! gateway.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod config;
pub mod process_metrics;
pub mod properties;
pub mod secret_files;

use audit_trail::AuditTrail;
use audit_trail::metrics::AuditMetrics;
use auth_negotiation::bearer::VerifyBearerLayer;
use auth_negotiation::challenges::StripChallengesLayer;
use auth_negotiation::client_cert::{ClientCertLayer, UpnRule};
use auth_negotiation::identity::IdentifyLayer;
use auth_negotiation::kcd::{KcdAuthLayer, PresentedCertificateBinding};
use auth_negotiation::ntlm::RefuseNtlmLayer;
use auth_negotiation::schemes::RefuseSchemesLayer;
use compliance_policy::device_limit::{DeviceLimitLayer, HoldsSlot};
use compliance_policy::enforce::{ComplianceLayer, CutOnBlock};
use compliance_policy::metrics::ComplianceMetrics;
use compliance_policy::notify::EnsNotifier;
use compliance_policy::state::Compliance;
use compliance_policy::sync::{SyncHandle, SyncSettings, Syncer};
use compliance_policy::uem::{UemClient, UemSettings};
use config::Config;
use ews_proxy_core::body::ResponseBody;
use ews_proxy_core::body_limit::RequestBodyLimitLayer;
use ews_proxy_core::forwarded::ForwardedHeadersLayer;
use ews_proxy_core::hop_by_hop::StripHopByHopLayer;
use ews_proxy_core::metrics::{ProxyMetrics, ResponseMetricsLayer};
use ews_proxy_core::operation::EwsOperationLayer;
use ews_proxy_core::proxy::{ReverseProxy, Upstream};
use ews_proxy_core::routing::PathRouter;
use ews_proxy_core::server::Server;
use ews_proxy_core::span::{RequestSpanLayer, SpanBody};
use ews_proxy_core::tls::{self, ClientAuth, ClientCertMode, TlsError, UpstreamTrust};
use ews_proxy_core::upstream::UpstreamClient;
use http::HeaderName;
use http::{Request, Response};
use hyper::body::Incoming;
use kcd_client::krb5_conf::Krb5Conf;
use kcd_client::{Credentials, KcdClient, KcdConfig, KcdError};
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceBuilder;
use tower::timeout::Timeout;
use tower::util::BoxCloneSyncService;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate, key or trust store could not be used.
    #[error("tls setup failed")]
    Tls(#[from] TlsError),
    /// `auth.client_cert` asks for client certificates but `auth.client_ca` is not set.
    #[error("auth.client_cert is {0:?} but auth.client_ca is not set")]
    NoClientCa(ClientCertMode),
    /// An upstream URL could not be used.
    #[error("exchange url refused")]
    Upstream(#[from] ews_proxy_core::proxy::UpstreamError),
    /// A URL that passed validation did not parse (a bug; reported, not panicked on).
    #[error("url {0} does not parse")]
    Url(String),
    /// The UEM settings cannot be used.
    #[error("uem settings refused")]
    Uem(#[source] compliance_policy::uem::UemSettingsError),
    /// `auth.modes` contains `cba-kcd` but the Kerberos client cannot be made from
    /// `[auth.kcd]`.
    #[error("auth.kcd cannot be used")]
    Kcd(#[source] KcdError),
    /// A key file of `[auth.oauth]` cannot be used.
    #[error("auth.oauth cannot be used")]
    OAuth(#[source] config::OAuthKeyError),
    /// `auth.modes` contains `cba-kcd` without `[auth.kcd]`, or without a target SPN.
    #[error("{0} is required when auth.modes contains cba-kcd")]
    KcdMissing(&'static str),
    /// `auth.kcd.channel_binding` is on but Exchange's URL is not `https://`.
    #[error("auth.kcd.channel_binding: cannot bind to the certificate of exchange at {url}")]
    ChannelBinding {
        /// The EWS URL.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `compliance.redis_url` (with `compliance.backend = "redis"`) cannot be used.
    #[error("compliance.redis_url cannot be used")]
    SharedView(#[source] compliance_redis::RedisError),
    /// The audit trail's store (`audit.path`) cannot be opened.
    #[error("audit.path cannot be used")]
    Audit(#[source] audit_trail::AuditError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The gateway's whole service: what each listener serves.
pub type GatewayService = BoxCloneSyncService<Request<Incoming>, Response<GatewayBody>, Infallible>;

/// The gateway's response body.
pub type GatewayBody = SpanBody<CutOnBlock<HoldsSlot<ResponseBody>>>;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    https_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    compliance: Option<(Compliance, SyncHandle)>,
    audit: Option<AuditTrail>,
    shutdown: watch::Sender<bool>,
    listeners: JoinSet<std::io::Result<()>>,
    background: JoinSet<()>,
}

impl Gateway {
    /// Builds the service that every listener serves.
    ///
    /// The stack, outermost first:
    /// 1. a `tracing` span per request (method, path; EWS operation, device and user filled in
    ///    by the layers that learn them);
    /// 2. responses counted in `metrics` by route and status class;
    /// 3. routing: `/EWS` when `ews.enable_proxy`, ActiveSync when `activesync.enable_proxy`,
    ///    `404` otherwise;
    /// 4. hop-by-hop header removal, both ways;
    /// 5. `X-Forwarded-*`;
    /// 6. request body limit (`413`);
    /// 7. (EWS only) the operation sniffer (`408` when the start of the body takes longer than
    ///    `server.header_timeout`);
    /// 8. NTLM refused with `401`, never forwarded; so are Basic or Bearer credentials when
    ///    `basic` or `oauth` is not in `auth.modes`, and (with `[auth.oauth]`) bearer tokens
    ///    whose signature or claims do not verify;
    /// 9. the user learnt from the connection's valid client certificate (its UPN) when the
    ///    request has no `Authorization` header (only with `auth.client_cert` not `off`);
    /// 10. (with `ews.remove_unsupported_auth` for EWS, `activesync.remove_unsupported_auth`
    ///     for ActiveSync) Exchange's `NTLM` challenges removed from responses, and its
    ///     `Negotiate` challenge when the client has no valid certificate;
    /// 11. the user learnt from Basic or Bearer credentials, for the compliance layer (only
    ///     with `[compliance]`);
    /// 12. compliance: the device's decision (counted in the state's metrics), `403` when
    ///     blocked, streams cut on a block (a pass-through without `[compliance]`);
    /// 13. (with `cba-kcd` in `auth.modes`) a request with a valid certificate and no
    ///     `Authorization` gets `Negotiate` from Kerberos constrained delegation (`kcd`) for the
    ///     SPN of its host (EWS's or ActiveSync's), bound with `auth.kcd.channel_binding` to the
    ///     certificate that host presented on the pool's latest connection; a KDC failure is a
    ///     `503`;
    /// 14. the reverse proxy to Exchange (EWS to `exchange.ews_url` when set).
    pub fn build_service(
        config: &Config,
        compliance: Option<&Compliance>,
        kcd: Option<&KcdSetup>,
        metrics: &ProxyMetrics,
    ) -> Result<GatewayService, StartError> {
        let trust = UpstreamTrust {
            trust_store: config.exchange.trust_store.clone(),
            ignore_ssl_errors: config.exchange.ignore_ssl_errors,
        };
        // One pool for both hosts: the EWS host inherits the ActiveSync server's settings.
        let client = UpstreamClient::new(&trust, &config.exchange.pool)?;
        let parse = |url: &str| url.parse().map_err(|_| StartError::Url(url.to_owned()));
        let exchange = Upstream::new(parse(&config.exchange.url)?, config.exchange.timeout)?
            .with_hanging_timeout(config.exchange.hanging_timeout);
        let ews_upstream = match &config.exchange.ews_url {
            Some(url) => Upstream::new(parse(url)?, config.exchange.timeout)?
                .with_hanging_timeout(config.exchange.hanging_timeout),
            None => exchange.clone(),
        };

        // Only compliance reads the user; without it, decoding credentials on every request
        // (about 1.4 µs for Basic, measured) buys nothing.
        let identify = compliance.map(|_| IdentifyLayer::new());
        // The KCD layer needs the certificate's user as much as compliance does, so this one
        // does not depend on `[compliance]`.
        let client_cert = (config.auth.client_cert != ClientCertMode::Off)
            .then(|| ClientCertLayer::new().with_fallback(config.auth.upn_fallback));
        let strip_challenges = config
            .ews
            .remove_unsupported_auth
            .then(StripChallengesLayer::new);
        let activesync_strip_challenges = config
            .activesync
            .remove_unsupported_auth
            .then(StripChallengesLayer::new);
        // Credentials of a mode left out of `auth.modes` are refused, never passed on.
        let mut refuse_schemes = RefuseSchemesLayer::new();
        if !config.auth.modes.contains(&config::AuthMode::Basic) {
            refuse_schemes = refuse_schemes.refusing_basic();
        }
        if !config.auth.modes.contains(&config::AuthMode::Oauth) {
            refuse_schemes = refuse_schemes.refusing_bearer();
        }
        let refuse_schemes = refuse_schemes.refuses_any().then_some(refuse_schemes);
        let verify_bearer = match &config.auth.oauth {
            Some(oauth) => Some(VerifyBearerLayer::new(
                oauth.keys().map_err(StartError::OAuth)?,
            )),
            None => None,
        };
        let kcd_auth = kcd.map(|kcd| kcd.layer(&kcd.target_spn, &client, &ews_upstream));
        let activesync_kcd_auth = kcd.and_then(|kcd| {
            let spn = kcd.activesync_target_spn.as_ref()?;
            Some(kcd.layer(spn, &client, &exchange))
        });
        let device_header = config
            .compliance
            .as_ref()
            .map_or("x-device-id", |c| c.device_id_header.as_str());
        let device_header = HeaderName::from_bytes(device_header.as_bytes())
            .map_err(|_| StartError::Url(device_header.to_owned()))?;
        let enforce = match compliance {
            Some(compliance) => {
                ComplianceLayer::new(compliance.clone()).with_device_header(device_header.clone())
            }
            None => ComplianceLayer::disabled(),
        };
        // After the compliance decision: a blocked device's refusals take no slot.
        let device_limit = match config.limits.max_requests_per_device {
            0 => DeviceLimitLayer::unlimited(),
            max => DeviceLimitLayer::new(max).with_device_header(device_header),
        };
        let ews = config.ews.enable_proxy.then(|| {
            let sniffer = if config.ews.require_soap {
                EwsOperationLayer::requiring_soap()
            } else {
                EwsOperationLayer::new()
            };
            // A body that trickles its start in gets as long as headers do (`408` after).
            let sniffer = sniffer
                .with_prefix_limit(config.ews.sniff_limit)
                .with_read_timeout(config.server.header_timeout);
            ServiceBuilder::new()
                .layer(StripHopByHopLayer::new())
                .layer(ForwardedHeadersLayer::new())
                .layer(RequestBodyLimitLayer::new(config.ews.max_body_size))
                .layer(sniffer)
                .layer(RefuseNtlmLayer::new())
                .option_layer(refuse_schemes)
                .option_layer(verify_bearer.clone())
                .option_layer(client_cert)
                .option_layer(strip_challenges)
                .option_layer(identify)
                .layer(enforce.clone())
                .layer(device_limit.clone())
                .option_layer(kcd_auth)
                .service(ReverseProxy::new(client.clone(), ews_upstream))
        });
        let activesync = config.activesync.enable_proxy.then(|| {
            ServiceBuilder::new()
                .layer(StripHopByHopLayer::new())
                .layer(ForwardedHeadersLayer::new())
                .layer(RequestBodyLimitLayer::new(config.ews.max_body_size))
                .layer(RefuseNtlmLayer::new())
                .option_layer(refuse_schemes)
                .option_layer(verify_bearer.clone())
                .option_layer(client_cert)
                .option_layer(activesync_strip_challenges)
                .option_layer(identify)
                .layer(enforce.clone())
                .layer(device_limit.clone())
                .option_layer(activesync_kcd_auth)
                .service(ReverseProxy::new(client.clone(), exchange))
        });
        let service = ServiceBuilder::new()
            .layer(RequestSpanLayer::new(request_span))
            .layer(ResponseMetricsLayer::new(metrics.clone()))
            .service(PathRouter::new(ews, activesync));
        Ok(BoxCloneSyncService::new(service))
    }

    /// Binds the configured listeners and starts serving.
    ///
    /// Returns once the listeners are bound: the addresses are known (port 0 is allowed) and
    /// connections are accepted.
    ///
    /// The gateway's one metrics [`Registry`] is made here (no process-global state): the
    /// response counters, the process's own gauges ([`process_metrics`]), and the compliance
    /// metrics when `[compliance]` is configured, are registered in it and served on the admin
    /// listener's `/metrics`.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let (shutdown, _) = watch::channel(false);
        let mut background = JoinSet::new();
        let mut registry = Registry::default();
        let proxy_metrics = ProxyMetrics::new();
        proxy_metrics.register(&mut registry);
        registry.register_collector(Box::new(process_metrics::ProcessCollector::new()));
        // Opened first, so that it follows the compliance state before any sync can change it.
        let mut audit = start_audit(&config, &mut registry)?;
        let compliance = match &config.compliance {
            Some(settings) => {
                let metrics = ComplianceMetrics::new();
                metrics.register(&mut registry);
                Some(start_compliance(
                    &config,
                    settings,
                    metrics,
                    &mut registry,
                    audit.as_mut(),
                    &shutdown,
                    &mut background,
                )?)
            }
            None => None,
        };
        let registry = Arc::new(registry);
        let kcd = KcdSetup::prepare(&config).await?;
        let service = Self::build_service(
            &config,
            compliance.as_ref().map(|(c, _)| c),
            kcd.as_ref(),
            &proxy_metrics,
        )?;
        let mut listeners = JoinSet::new();
        let mut https_addr = None;
        let mut http_addr = None;
        if let (Some(addr), Some(files)) = (config.listen.https, &config.tls) {
            let mut server = Server::new(bind(addr).await?, config.server.clone());
            match client_auth(&config)? {
                Some(client_auth) => {
                    let tls_config =
                        tls::server_config_with_client_auth(&files.cert, &files.key, &client_auth)?;
                    server = server.with_tls(tls_config).with_client_auth(client_auth);
                }
                None => server = server.with_tls(tls::server_config(&files.cert, &files.key)?),
            }
            https_addr = Some(
                server
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?,
            );
            listeners.spawn(server.serve(service.clone(), stopped(shutdown.subscribe())));
        }
        if let Some(addr) = config.listen.http {
            let server = Server::new(bind(addr).await?, config.server.clone());
            http_addr = Some(
                server
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?,
            );
            listeners.spawn(server.serve(service.clone(), stopped(shutdown.subscribe())));
        }
        let mut admin_addr = None;
        if let Some(addr) = config.admin.listen {
            let router = admin::router(
                &config,
                compliance.as_ref(),
                audit.as_ref(),
                registry.clone(),
            );
            let server = Server::new(bind(addr).await?, config.server.clone());
            admin_addr = Some(
                server
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?,
            );
            listeners.spawn(server.serve(router, stopped(shutdown.subscribe())));
        }
        tracing::info!(
            https = ?https_addr,
            http = ?http_addr,
            admin = ?admin_addr,
            ews = config.ews.enable_proxy,
            activesync = config.activesync.enable_proxy,
            compliance = compliance.is_some(),
            exchange = %config.exchange.url,
            ews_host = config.exchange.ews_url.as_deref().unwrap_or(&config.exchange.url),
            "seg-proxy started"
        );
        if let Some(audit) = &audit {
            audit.sink().record(audit_trail::entry::Record::now(
                audit_trail::entry::Event::GatewayStarted {
                    version: env!("CARGO_PKG_VERSION").into(),
                },
            ));
        }
        Ok(Gateway {
            https_addr,
            http_addr,
            admin_addr,
            compliance,
            audit,
            shutdown,
            listeners,
            background,
        })
    }

    /// The bound admin listener address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The compliance state and its sync handle, when `[compliance]` is configured.
    pub fn compliance(&self) -> Option<&(Compliance, SyncHandle)> {
        self.compliance.as_ref()
    }

    /// The audit trail, when `[audit]` is configured.
    pub fn audit(&self) -> Option<&AuditTrail> {
        self.audit.as_ref()
    }

    /// The bound TLS listener address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The bound plain HTTP listener address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops accepting, drains in-flight requests (up to `server.shutdown_grace`), and returns
    /// when every listener has finished.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.wait().await;
    }

    /// Waits for the listeners to finish (after [`Gateway::shutdown`] from another handle, or a
    /// listener failure).
    async fn wait(&mut self) {
        while let Some(result) = self.listeners.join_next().await {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "listener failed"),
                Err(error) => tracing::error!(%error, "listener task failed"),
            }
        }
        // Sync and callbacks stop with the listeners; a callback still retrying is abandoned
        // (ENS learns the state at its next request).
        self.background.shutdown().await;
        // Last: the stop is recorded, and whatever the trail still has queued is written.
        if let Some(audit) = self.audit.take() {
            audit.sink().record(audit_trail::entry::Record::now(
                audit_trail::entry::Event::GatewayStopped,
            ));
            audit.close().await;
        }
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutdown requested: draining");
        self.shutdown().await;
        tracing::info!("seg-proxy stopped");
    }
}

/// What `cba-kcd` makes once at start: the Kerberos client (its ticket cache shared by every
/// request), Exchange's SPNs (EWS's, and ActiveSync's when it is proxied), and whether tokens
/// are bound to Exchange's certificate (`auth.kcd.channel_binding`), with the certificates a
/// probe at start read.
#[derive(Clone, Debug)]
pub struct KcdSetup {
    client: KcdClient,
    target_spn: String,
    activesync_target_spn: Option<String>,
    realm: String,
    timeout: Duration,
    mutual_auth: bool,
    channel_binding: bool,
    /// The certificates Exchange's hosts presented at start, by URL.
    probed: Vec<(
        String,
        tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    )>,
}

impl KcdSetup {
    /// The set-up `config` asks for: `None` unless `auth.modes` contains `cba-kcd`.
    ///
    /// With `auth.kcd.channel_binding` this connects once to the EWS host (and the ActiveSync
    /// host when it is proxied), trusting what the upstream client trusts, to read the
    /// certificate it presents, so that the first tokens are bound right. A host that cannot
    /// be reached is logged, not fatal: the binding follows whatever certificate the gateway's
    /// connections to Exchange meet from then on (a renewed certificate needs no restart).
    pub async fn prepare(config: &Config) -> Result<Option<KcdSetup>, StartError> {
        if !config.auth.cba_kcd() {
            return Ok(None);
        }
        let kcd = config
            .auth
            .kcd
            .as_ref()
            .ok_or(StartError::KcdMissing("auth.kcd"))?;
        let target_spn = config
            .kcd_target_spn()
            .ok_or(StartError::KcdMissing("auth.kcd.target_spn"))?;
        let client = kcd_client(kcd).map_err(StartError::Kcd)?;
        // The client qualified the principal with its realm (krb5.conf's default one).
        let realm = client
            .service_principal()
            .rsplit_once('@')
            .map(|(_, realm)| realm.to_owned())
            .unwrap_or_default();
        let activesync_target_spn = if config.activesync.enable_proxy {
            Some(
                config
                    .kcd_activesync_target_spn()
                    .ok_or(StartError::KcdMissing("auth.kcd.activesync_target_spn"))?,
            )
        } else {
            None
        };
        let mut probed = Vec::new();
        if kcd.channel_binding {
            let mut urls = vec![config.ews_url()];
            if config.activesync.enable_proxy && config.exchange.url != config.ews_url() {
                urls.push(&config.exchange.url);
            }
            for url in urls {
                if let Some(certificate) = exchange_certificate(config, url, kcd.timeout).await? {
                    probed.push((url.to_owned(), certificate));
                }
            }
        }
        Ok(Some(KcdSetup {
            client,
            target_spn,
            activesync_target_spn,
            realm,
            timeout: kcd.timeout,
            mutual_auth: kcd.mutual_auth,
            channel_binding: kcd.channel_binding,
            probed,
        }))
    }

    /// The client, e.g. for its counters.
    pub fn client(&self) -> &KcdClient {
        &self.client
    }

    /// The layer for the host of `upstream` (reached through `client`'s pools) and its SPN
    /// `target_spn`: the Kerberos client behind a timeout, UPNs read in the service
    /// principal's realm, tokens bound (with `auth.kcd.channel_binding`) to the certificate the
    /// host presented last, as `client`'s pools and the probe at start recorded it.
    fn layer(
        &self,
        target_spn: &str,
        client: &UpstreamClient,
        upstream: &Upstream,
    ) -> KcdAuthLayer<Timeout<KcdClient>> {
        let tokens = Timeout::new(self.client.clone(), self.timeout);
        let layer = KcdAuthLayer::new(tokens, self.client.clone(), target_spn.to_owned())
            .with_default_realm(self.realm.clone());
        let layer = if self.mutual_auth {
            layer.verifying_mutual_authentication()
        } else {
            layer
        };
        if !self.channel_binding {
            return layer;
        }
        let presented = client.presented_certificates();
        for (url, certificate) in &self.probed {
            let probed_host = url
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| Upstream::new(uri, self.timeout).ok());
            if probed_host.is_some_and(|probed| probed.authority() == upstream.authority()) {
                presented.record(upstream.authority(), certificate.clone());
            }
        }
        layer.with_channel_binding(PresentedCertificateBinding::new(
            presented.clone(),
            upstream.authority().clone(),
        ))
    }
}

/// The Kerberos client of `[auth.kcd]`, logged in with nothing yet (the first request does).
pub fn kcd_client(kcd: &config::Kcd) -> Result<KcdClient, KcdError> {
    kcd_client_with(
        &kcd.krb5_conf,
        &kcd.keytab,
        &kcd.service_principal,
        |config| {
            config.max_in_flight_per_kdc = kcd.max_in_flight_per_kdc;
            config.udp_timeout = kcd.udp_timeout;
        },
    )
}

/// A Kerberos client for `service` with the realms of `krb5_conf` (its default realm first:
/// a principal without `@REALM` belongs to it) and the keys of `keytab`.
pub fn kcd_client_from(
    krb5_conf: &Path,
    keytab: &Path,
    service: &str,
) -> Result<KcdClient, KcdError> {
    kcd_client_with(krb5_conf, keytab, service, |_| {})
}

/// [`kcd_client_from`] with `adjust` applied to the client's configuration before it is made.
fn kcd_client_with(
    krb5_conf: &Path,
    keytab: &Path,
    service: &str,
    adjust: impl FnOnce(&mut KcdConfig),
) -> Result<KcdClient, KcdError> {
    // Realms (the default one first), their KDCs (`tcp/` ones over TCP only) and
    // `udp_preference_limit`, as krb5.conf says.
    let mut config = Krb5Conf::read(krb5_conf)?.kcd_config(
        service.to_owned(),
        Credentials::KeytabFile(keytab.to_owned()),
    );
    adjust(&mut config);
    KcdClient::new(config)
}

/// The certificate the Exchange host of `url` presents, read over one TLS connection made with
/// the upstream client's trust; `None` (logged) when it cannot be read now. Errs only when
/// `url` is not `https://`.
async fn exchange_certificate(
    config: &Config,
    url: &str,
    timeout: Duration,
) -> Result<Option<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, StartError> {
    let url = url.to_owned();
    let uri: http::Uri = url.parse().map_err(|_| StartError::Url(url.clone()))?;
    if uri.scheme_str() != Some("https") {
        return Err(StartError::ChannelBinding {
            url,
            source: std::io::Error::other("channel bindings need an https:// URL"),
        });
    }
    match read_certificate(config, &uri, timeout).await {
        Ok(certificate) => Ok(Some(certificate)),
        Err(error) => {
            tracing::warn!(%url, %error, "auth.kcd.channel_binding: cannot read exchange's certificate now; the first connection to it will");
            Ok(None)
        }
    }
}

/// The end-entity certificate the host of `uri` presents (see [`exchange_certificate`]).
async fn read_certificate(
    config: &Config,
    uri: &http::Uri,
    timeout: Duration,
) -> Result<tokio_rustls::rustls::pki_types::CertificateDer<'static>, std::io::Error> {
    let other = |message: String| std::io::Error::other(message);
    let host = uri
        .host()
        .ok_or_else(|| other(format!("{uri} names no host")))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let trust = UpstreamTrust {
        trust_store: config.exchange.trust_store.clone(),
        ignore_ssl_errors: config.exchange.ignore_ssl_errors,
    };
    let tls_config = tls::upstream_client_config(&trust).map_err(std::io::Error::other)?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| other(format!("{host} is not a server name: {e}")))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tokio_rustls::TlsConnector::from(Arc::new(tls_config))
            .connect(name, tcp)
            .await
    };
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| other(format!("no TLS handshake within {timeout:?}")))??;
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| der.clone().into_owned())
        .ok_or_else(|| other("exchange presented no certificate".into()))
}

/// Starts the compliance side: the state (from the saved snapshot, if any), the UEM sync loop,
/// and the ENS callback, all counted in `metrics`. With `compliance.backend = "redis"` the view
/// is shared with the other nodes (its metrics registered in `registry`), and the UEM syncs run
/// only while this node leads.
fn start_compliance(
    config: &Config,
    settings: &config::ComplianceConfig,
    metrics: ComplianceMetrics,
    registry: &mut Registry,
    audit: Option<&mut AuditTrail>,
    shutdown: &watch::Sender<bool>,
    background: &mut JoinSet<()>,
) -> Result<(Compliance, SyncHandle), StartError> {
    let mut policy = settings.policy.clone();
    policy.unknown_device = settings.unknown_device;
    policy.activesync_discovery = settings.activesync_discovery;
    if policy.unknown_device == compliance_policy::policy::UnknownDevice::Allow {
        tracing::warn!(
            "compliance.unknown_device = allow: devices UEM does not know are let through (fail open)"
        );
    }
    let compliance = Compliance::with_metrics(policy, metrics);
    let uem_trust = UpstreamTrust {
        trust_store: settings.uem_trust_store.clone(),
        ignore_ssl_errors: false,
    };
    let uem_client = UpstreamClient::new(&uem_trust, &config.exchange.pool)?;
    let uem = UemClient::new(
        uem_client,
        UemSettings {
            url: settings.uem_url.clone(),
            tenant_code: settings.uem_tenant_code.clone(),
            user: settings.uem_user.clone(),
            password: settings.uem_password.clone(),
            organization_group_id: settings.uem_organization_group_id,
            page_size: settings.uem_page_size,
            timeout: settings.uem_timeout,
        },
    )
    .map_err(StartError::Uem)?;
    let sync_settings = SyncSettings {
        full_sync_interval: settings.full_sync_interval,
        delta_sync_interval: settings.delta_sync_interval,
        ..SyncSettings::default()
    };
    let mut syncer = Syncer::new(compliance.clone(), uem, sync_settings);
    if let Some(path) = &settings.snapshot {
        syncer = syncer.with_snapshot(compliance_policy::snapshot::Snapshot::new(path));
    }
    if settings.backend == config::ComplianceBackend::Redis {
        let shared = shared_view(config, settings, &compliance, registry)?;
        syncer = syncer.with_leadership(shared.leadership());
        background.spawn(shared.run(stopped(shutdown.subscribe())));
    }
    // Before serving: a device blocked before the restart stays blocked while UEM is down (and,
    // with Redis, while Redis is too: the view read from it replaces this one once read).
    syncer.load_snapshot();
    let handle = syncer.handle();
    // Subscribed before the syncer runs: its first sync's transitions are recorded too.
    if let Some(trail) = audit {
        trail.follow_transitions(&compliance);
        trail.follow_sync(handle.clone(), compliance.clone(), AUDIT_SYNC_LOOK);
    }
    background.spawn(syncer.run(stopped(shutdown.subscribe())));
    if let Some(url) = &config.ens.callback_url {
        let url = url.parse().map_err(|_| StartError::Url(url.clone()))?;
        let callback_client =
            UpstreamClient::new(&UpstreamTrust::default(), &config.exchange.pool)?;
        let notifier = EnsNotifier::new(callback_client, url);
        background.spawn(notifier.run(compliance.clone(), stopped(shutdown.subscribe())));
    }
    Ok((compliance, handle))
}

/// Shares `compliance` through Redis as `[compliance]` says, its metrics in `registry`. The
/// node's name in the leader lock is `node` (or the host name) and a random suffix: unique
/// even for nodes started with one configuration, as tests do.
fn shared_view(
    config: &Config,
    settings: &config::ComplianceConfig,
    compliance: &Compliance,
    registry: &mut Registry,
) -> Result<compliance_redis::SharedView, StartError> {
    let url = settings.redis_url.clone().ok_or(StartError::SharedView(
        compliance_redis::RedisError::MissingUrl,
    ))?;
    let mut redis = compliance_redis::RedisSettings::new(url);
    redis.node_name = format!("{}/{}", config.node_name(), redis.node_name);
    redis.lock_ttl = settings.redis_lock_ttl;
    redis.key_prefix = settings.redis_key_prefix.clone();
    redis.full_sync_batch = settings.redis_full_sync_batch;
    redis.trust_store = settings.redis_trust_store.clone();
    let metrics = compliance_redis::RedisMetrics::new();
    metrics.register(registry);
    tracing::info!(url = %redis.redacted_url(), node = %redis.node_name, "sharing the compliance view through redis");
    compliance_redis::SharedView::new(compliance.clone(), redis, metrics)
        .map_err(StartError::SharedView)
}

/// Opens the audit trail of `[audit]`, counted in `registry`; `None` without `[audit]`.
/// [`start_compliance`] has it follow the compliance state's transitions and syncs.
fn start_audit(config: &Config, registry: &mut Registry) -> Result<Option<AuditTrail>, StartError> {
    let Some(settings) = &config.audit else {
        return Ok(None);
    };
    let metrics = AuditMetrics::new();
    metrics.register(registry);
    AuditTrail::open(settings, config.node_name(), metrics)
        .map(Some)
        .map_err(StartError::Audit)
}

/// How often the audit trail looks at the sync status for new outcomes.
const AUDIT_SYNC_LOOK: Duration = Duration::from_secs(1);

/// The TLS listener's client certificate settings (`[auth]`): the CA bundle, the CRLs, and the
/// rule that a valid certificate names a user; `None` when `auth.client_cert` is `off`.
fn client_auth(config: &Config) -> Result<Option<ClientAuth>, StartError> {
    let auth = &config.auth;
    if auth.client_cert == ClientCertMode::Off {
        return Ok(None);
    }
    // Validation refuses this too; a configuration built in code may not have been validated.
    let ca = auth
        .client_ca
        .as_ref()
        .ok_or(StartError::NoClientCa(auth.client_cert))?;
    let client_auth = ClientAuth::load(auth.client_cert, ca, &auth.crl)?;
    Ok(client_auth
        .map(|client_auth| client_auth.with_rule(Arc::new(UpnRule::new(auth.upn_fallback)))))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

async fn stopped(mut receiver: watch::Receiver<bool>) {
    // An error means the sender is gone: the gateway handle was dropped, which also stops it.
    let _ = receiver.wait_for(|stop| *stop).await;
}

/// The span of one request. Fields the later layers fill in are declared empty here, since a
/// `tracing` span cannot gain fields after it is created.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        ews.operation = tracing::field::Empty,
        device = tracing::field::Empty,
        user = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcd_client::crypto::{EncType, Key};
    use kcd_client::keytab::{Keytab, KeytabEntry, Principal};

    /// `[auth.kcd]` with a krb5.conf and a keytab written to `dir` (no KDC is contacted).
    fn kcd_settings(dir: &Path, mutual_auth: bool) -> config::Kcd {
        let krb5_conf = dir.join("krb5.conf");
        std::fs::write(
            &krb5_conf,
            "[libdefaults]\n default_realm = TEST.LOCAL\n[realms]\n TEST.LOCAL = {\n  kdc = 127.0.0.1:88\n }\n",
        )
        .unwrap();
        let mut keytab = Keytab::new();
        keytab.push(KeytabEntry {
            principal: Principal::parse("HTTP/seg.test.local@TEST.LOCAL", None).unwrap(),
            timestamp: 1_767_225_600,
            kvno: 1,
            key: Key::new(EncType::Aes256CtsHmacSha196, &[0x11; 32]).unwrap(),
        });
        let keytab_path = dir.join("seg.keytab");
        keytab.write(&keytab_path).unwrap();
        config::Kcd {
            krb5_conf,
            keytab: keytab_path,
            service_principal: "HTTP/seg.test.local".into(),
            target_spn: Some("HTTP/mail.test.local".into()),
            activesync_target_spn: None,
            channel_binding: false,
            timeout: Duration::from_secs(10),
            max_in_flight_per_kdc: 4,
            udp_timeout: Duration::from_millis(250),
            mutual_auth,
        }
    }

    fn setup(kcd: &config::Kcd) -> KcdSetup {
        KcdSetup {
            client: kcd_client(kcd).unwrap(),
            target_spn: kcd.target_spn.clone().unwrap(),
            activesync_target_spn: None,
            realm: "TEST.LOCAL".into(),
            timeout: kcd.timeout,
            mutual_auth: kcd.mutual_auth,
            channel_binding: false,
            probed: Vec::new(),
        }
    }

    #[test]
    fn kcd_layer_verifies_mutual_authentication_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let client = UpstreamClient::new(&UpstreamTrust::default(), &Default::default()).unwrap();
        let exchange = Upstream::new(
            "https://mail.test.local".parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        for mutual_auth in [false, true] {
            let setup = setup(&kcd_settings(dir.path(), mutual_auth));
            let layer = format!(
                "{:?}",
                setup.layer("HTTP/mail.test.local", &client, &exchange)
            );
            assert!(
                layer.contains(&format!("verify_mutual: {mutual_auth}")),
                "{layer}"
            );
        }
    }
}
