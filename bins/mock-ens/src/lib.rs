//! mock-ens: a stand-in for ENS2, the service that watches mailboxes on behalf of mobile devices
//! and tells them of new mail. It is the gateway's other client: every EWS request it makes goes
//! through seg-proxy with the device id header, and it must stop a device's notifications when
//! the gateway blocks the device and resume them when it is allowed again.
//!
//! What it does, composed from the `ens-subscription` crate:
//! - a registration API ([`api`]) as ENS2 has it (`ApiToken` header), with devices persisted in
//!   an embedded [`store`] and their credentials [sealed](seal) at rest (a certificate device's
//!   private key with them);
//! - TLS to the gateway ([`tls`]) when `gateway_url` is `https://`; a certificate device
//!   presents its client certificate on its own connections, with no `Authorization` header;
//! - one subscription per device ([`runtime`]): streaming, push (Exchange calls
//!   `{public_url}/push/{token}` directly, not through the gateway) or pull; each new mail's
//!   subject is fetched with `GetItem` through the gateway and recorded as the notification ENS
//!   would have sent;
//! - the gateway's block/unblock callback (`POST /gateway/compliance`): a block stops the
//!   device's subscription and answers its next push `Unsubscribe`; an allow resubscribes.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = mock_ens::config::Config::load(std::path::Path::new("ens.toml"))?;
//! let ens = mock_ens::MockEns::start(config).await?;
//! println!("mock-ens on {}", ens.addr());
//! ens.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod runtime;
pub mod seal;
pub mod store;
pub mod tls;
pub mod watcher;

use config::Config;
use runtime::Runtime;
use std::net::SocketAddr;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// mock-ens could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The sealing key could not be read or created.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The EWS client for the gateway could not be built.
    #[error("gateway client: {0}")]
    Client(String),
}

/// A running mock-ens.
#[derive(Debug)]
pub struct MockEns {
    addr: SocketAddr,
    runtime: Runtime,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl MockEns {
    /// Validates `config`, opens the store, resumes every registered device's subscription and
    /// serves. With port 0 in `listen`, the bound port is [`MockEns::addr`]'s (and the push
    /// callback URLs use it when `public_url` is not set).
    pub async fn start(mut config: Config) -> Result<MockEns, StartError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        config.listen = addr;
        let store = store::Store::open(&config.store)?;
        let sealer = seal::Sealer::from_key_file(&config.key_path())?;
        let api_token = config.api_token.clone();
        let runtime = Runtime::new(config, store, sealer).map_err(StartError::Client)?;
        runtime.resume_all().await?;
        let router = api::router(runtime.clone(), api_token);
        let (shutdown, mut stopped) = watch::channel(false);
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(%error, "mock-ens listener failed");
            }
        });
        tracing::info!(%addr, "mock-ens listening");
        Ok(MockEns {
            addr,
            runtime,
            shutdown,
            server,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The device runtime, for embedders and tests.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Stops every subscription task and the listener. Registrations and states stay in the
    /// store for the next start.
    pub async fn shutdown(self) {
        self.runtime.stop_all().await;
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
    }
}
