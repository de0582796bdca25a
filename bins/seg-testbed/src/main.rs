//! The `seg-testbed` command: runs the test stand-ins and makes their certificates and tokens.
//!
//! ```text
//! seg-testbed demo
//! seg-testbed exchange --listen 127.0.0.1:8443 --tls-cert server.pem --tls-key server.key \
//!     --users users.json [--token-public-key token.pub.pem] [--minute-ms 60000] \
//!     [--keytab exchange.keytab [--require-channel-binding]]
//! seg-testbed uem --listen 127.0.0.1:8444 --devices devices.json [--tls-cert server.pem --tls-key server.key] \
//!     [--webhook URL --webhook-secret S] [--tenant-code T --user U --password P] [--organization-group-id N]
//! seg-testbed pki --dir ./pki [--name proxy.test.local]
//! seg-testbed token --key token.key.pem --upn alice@test.local [--public-key-out token.pub.pem]
//! seg-testbed kdc --dir ./kdc [--port 8888]
//! seg-testbed samba --dir ./samba [--port 8888]
//! seg-testbed fault-proxy --listen 127.0.0.1:9443 --target 127.0.0.1:8443 \
//!     [--client-to-server FAULT] [--server-to-client FAULT] [--refuse]
//! ```
//!
//! A `FAULT` is `pass`, `delay=MILLISECONDS`, `stall=N`, `reset=N`, `truncate=N` or `garbage=N`
//! (N: bytes let through first); see `seg_testbed::fault_proxy`.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use seg_testbed::exchange::{ExchangeConfig, ExchangeServer, NegotiateConfig, User};
use seg_testbed::pki::{self, ClientCertSpec, TestPki};
use seg_testbed::token::{DEFAULT_AUDIENCE, TokenIssuer, TokenVerifier};

/// Test stand-ins for the SEG gateway.
#[derive(Debug, Parser)]
#[command(name = "seg-testbed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the end-to-end demo on loopback: test Exchange, seg-proxy, a subscription, a mail,
    /// the notification arriving through the gateway.
    Demo,
    /// Run the Exchange EWS stand-in until Ctrl-C.
    Exchange(ExchangeArgs),
    /// Run the Workspace ONE UEM (MEM device API) stand-in until Ctrl-C.
    Uem(UemArgs),
    /// Generate a test CA and a server certificate (ca.pem, server.pem, server.key).
    Pki {
        /// The directory to write the PEM files into.
        #[arg(long)]
        dir: PathBuf,
        /// An extra DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Also issue a client certificate naming this UPN (as a UPN `otherName` and common
        /// name), written to `UPN.pem` and `UPN.key` (repeatable): what a device presents for
        /// certificate-based authentication with Kerberos constrained delegation.
        #[arg(long = "client")]
        clients: Vec<String>,
    },
    /// Print a bearer token for a user; generates the signing key if the file does not exist.
    Token {
        /// The P-256 private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The user principal name the token names.
        #[arg(long)]
        upn: String,
        /// The token's audience.
        #[arg(long, default_value = DEFAULT_AUDIENCE)]
        audience: String,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Where to write the public key PEM, for `exchange --token-public-key`.
        #[arg(long)]
        public_key_out: Option<PathBuf>,
    },
    /// Run a real MIT Kerberos KDC on 127.0.0.1 (slapd + krb5kdc, constrained delegation from
    /// HTTP/seg.test.local to HTTP/exchange.test.local) until Ctrl-C or SIGTERM.
    Kdc(KdcArgs),
    /// Run Samba's Active Directory domain controller on 127.0.0.1 as an AD-like KDC (realm
    /// AD.TEST.LOCAL, alice's UPN alice@corp.example, svc-seg allowed to delegate from
    /// HTTP/seg.test.local to HTTP/exchange.test.local) until Ctrl-C or SIGTERM. Needs root.
    Samba(KdcArgs),
    /// Run a minimal static SOAP responder (HTTP/1.1): the fast upstream of `bench/compare.sh`.
    /// Answers a `GetItem` with a 1 MiB `GetItemResponse` and anything else with a small
    /// `GetFolderResponse`, until Ctrl-C.
    StaticSoap(StaticSoapArgs),
    /// Run a fault-injecting TCP proxy in front of a target until Ctrl-C: every connection is
    /// relayed, with the faults given applied to each direction.
    FaultProxy(FaultProxyArgs),
}

/// Arguments of `seg-testbed fault-proxy`.
#[derive(Debug, clap::Args)]
struct FaultProxyArgs {
    /// The address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The address to relay connections to.
    #[arg(long)]
    target: SocketAddr,
    /// What the client's bytes suffer: pass, delay=MS, stall=N, reset=N, truncate=N, garbage=N.
    #[arg(long, default_value = "pass")]
    client_to_server: seg_testbed::fault_proxy::Fault,
    /// What the target's bytes suffer, in the same form.
    #[arg(long, default_value = "pass")]
    server_to_client: seg_testbed::fault_proxy::Fault,
    /// Accept every connection and close it at once.
    #[arg(long)]
    refuse: bool,
}

/// Arguments of `seg-testbed static-soap`.
#[derive(Debug, clap::Args)]
struct StaticSoapArgs {
    /// The address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The server certificate chain (PEM); serves plain HTTP without it.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Offer HTTP/2 by ALPN as well as HTTP/1.1 (what IIS 10 offers for Exchange), instead of
    /// HTTP/1.1 only (what nginx can speak to an upstream).
    #[arg(long, requires = "tls_cert")]
    http2: bool,
}

/// Arguments of `seg-testbed kdc` and `seg-testbed samba`.
#[derive(Debug, clap::Args)]
struct KdcArgs {
    /// The directory for every file of the KDC (krb5.conf, keytabs, database, logs).
    #[arg(long)]
    dir: PathBuf,
    /// The port on 127.0.0.1 the KDC serves on over UDP and TCP; a free one if not given.
    #[arg(long)]
    port: Option<u16>,
}

/// Arguments of `seg-testbed exchange`.
#[derive(Debug, clap::Args)]
struct ExchangeArgs {
    /// The address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The server certificate chain (PEM); serves plain HTTP without it.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The users file: a JSON array of {"upn", "password", "mailbox"}.
    #[arg(long)]
    users: PathBuf,
    /// The public key (PEM) that verifies bearer tokens; bearer tokens are refused without it.
    #[arg(long)]
    token_public_key: Option<PathBuf>,
    /// The audience bearer tokens must carry.
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    token_audience: String,
    /// The length of one EWS minute, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    minute_ms: u64,
    /// The interval of streaming keep-alives, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    keepalive_ms: u64,
    /// The back-end server name used in the affinity cookie.
    #[arg(long, default_value = "EXCH01")]
    server_name: String,
    /// Accept `Authorization: Negotiate` (Kerberos in SPNEGO) with the system GSSAPI and the
    /// service keys in this keytab (e.g. the test KDC's exchange.keytab), for any principal in
    /// it; the KDC's krb5.conf can be given in KRB5_CONFIG. Negotiate is refused without it.
    #[arg(long)]
    keytab: Option<PathBuf>,
    /// Extended Protection set to Require: accept only Negotiate tokens bound to the server's
    /// TLS certificate (RFC 5929 tls-server-end-point channel bindings).
    #[arg(long, requires = "keytab", requires = "tls_cert")]
    require_channel_binding: bool,
    /// How long each EWS call waits before it is served, in milliseconds (a real Exchange's
    /// service time; GetStreamingEvents is not delayed).
    #[arg(long, default_value_t = 0)]
    service_time_ms: u64,
    /// How many of the latest requests are kept for `GET /testbed/requests` (0: none).
    #[arg(long, default_value_t = seg_testbed::DEFAULT_RECORDED_REQUESTS)]
    record_requests: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; its components' own logs would drown the story, so only
    // their warnings show unless RUST_LOG asks for more.
    let default_filter = if matches!(cli.command, Command::Demo) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    let result = match cli.command {
        Command::Demo => run_async(async {
            let outcome = demo::run(|line| println!("{line}")).await?;
            println!(
                "\nOK: {:?} reached the subscriber through seg-proxy ({} EWS operations proxied); \
                 after the wipe the stream was cut in {:.0?}, the next request got {:?}, and after \
                 UEM's unblock the device got {}. mock-ens showed the push device {} ({}) {:.0?} \
                 after its wipe, notified it {:?} and the streaming device {:?}, and kept it {} across a \
                 restart. The certificate device reached Exchange by Kerberos (KCD) as {}.",
                outcome.subject,
                outcome.forwarded_operations.len(),
                outcome.cut_after,
                outcome.refusal,
                outcome.readmitted,
                outcome.push_blocked.0,
                outcome.push_blocked.1.as_deref().unwrap_or("no reason"),
                outcome.push_blocked_after,
                outcome.push_notifications,
                outcome.streaming_notifications,
                outcome.state_after_restart,
                outcome.kerberos_user.as_deref().unwrap_or("nobody"),
            );
            Ok(())
        }),
        Command::Exchange(args) => run_async(exchange(args)),
        Command::Uem(args) => run_async(uem(args)),
        Command::Pki {
            dir,
            names,
            clients,
        } => make_pki(&dir, &names, &clients),
        Command::Token {
            key,
            upn,
            audience,
            ttl_secs,
            public_key_out,
        } => token(&key, &upn, &audience, ttl_secs, public_key_out.as_deref()),
        Command::Kdc(args) => kdc(args),
        Command::Samba(args) => samba(args),
        Command::StaticSoap(args) => run_async(static_soap(args)),
        Command::FaultProxy(args) => run_async(fault_proxy(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("seg-testbed: {}", chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn run_async(
    future: impl std::future::Future<Output = Result<(), BoxError>>,
) -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

async fn exchange(args: ExchangeArgs) -> Result<(), BoxError> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(pki::server_config_from_files(cert, key)?),
        _ => None,
    };
    let mut config = ExchangeConfig::new(User::load_list(&args.users)?);
    config.token_verifier = args
        .token_public_key
        .as_deref()
        .map(|path| TokenVerifier::from_public_key_file(path, &args.token_audience))
        .transpose()?;
    config.minute = Duration::from_millis(args.minute_ms.max(1));
    config.keepalive_interval = Duration::from_millis(args.keepalive_ms.max(1));
    config.server_name = args.server_name;
    config.service_time = Duration::from_millis(args.service_time_ms);
    config.record_requests = args.record_requests;
    config.negotiate = args.keytab.map(|keytab| NegotiateConfig {
        keytab,
        require_channel_binding: args.require_channel_binding,
    });
    let users = config.users.len();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let server = ExchangeServer::spawn(listener, tls, config)?;
    tracing::info!(url = %server.url(), users, "Exchange stand-in listening");
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn static_soap(args: StaticSoapArgs) -> Result<(), BoxError> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            // HTTP/1.1 only by default: the protocol nginx can speak to an upstream, so that
            // every contender of the comparison talks to this server the same way. With
            // --http2, HTTP/2 as well, as Exchange on IIS 10 offers it: each contender then
            // speaks the best it can.
            let mut config = (*pki::server_config_from_files(cert, key)?).clone();
            config.alpn_protocols = if args.http2 {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            Some(std::sync::Arc::new(config))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "static SOAP responder listening");
    let server = tokio::spawn(seg_testbed::static_soap::StaticSoap::new().serve(listener, tls));
    tokio::signal::ctrl_c().await?;
    server.abort();
    Ok(())
}

async fn fault_proxy(args: FaultProxyArgs) -> Result<(), BoxError> {
    use seg_testbed::fault_proxy::{Admission, FaultProxy, Plan};
    let proxy = FaultProxy::bind(args.listen, args.target).await?;
    let plan = Plan {
        admission: if args.refuse {
            Admission::Refuse
        } else {
            Admission::Open
        },
        client_to_server: args.client_to_server,
        server_to_client: args.server_to_client,
    };
    proxy.handle().set_plan(plan);
    tracing::info!(
        listen = %proxy.addr(),
        target = %proxy.target(),
        client_to_server = %plan.client_to_server,
        server_to_client = %plan.server_to_client,
        refuse = args.refuse,
        "fault proxy listening"
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn make_pki(dir: &std::path::Path, names: &[String], clients: &[String]) -> Result<(), BoxError> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = TestPki::generate_with_names(dir, &names)?;
    if let Some(files) = pki.files() {
        println!("{}", files.ca.display());
        println!("{}", files.server_cert.display());
        println!("{}", files.server_key.display());
    }
    for upn in clients {
        // The UPN names the files: refuse what would put them elsewhere.
        if upn.is_empty() || upn.contains(['/', '\\']) || upn.starts_with('.') {
            return Err(format!("--client {upn:?}: not usable as a file name").into());
        }
        let cert = pki.issue_client_cert(&ClientCertSpec::upn(upn))?;
        for (extension, pem) in [("pem", &cert.cert_pem), ("key", &cert.key_pem)] {
            let path = dir.join(format!("{upn}.{extension}"));
            std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn token(
    key: &std::path::Path,
    upn: &str,
    audience: &str,
    ttl_secs: u64,
    public_key_out: Option<&std::path::Path>,
) -> Result<(), BoxError> {
    let issuer = if key.exists() {
        TokenIssuer::from_private_key_pem(&std::fs::read_to_string(key)?, audience)?
    } else {
        let issuer = TokenIssuer::generate(audience)?;
        issuer.write_private_key(key)?;
        issuer
    };
    if let Some(path) = public_key_out {
        issuer.write_public_key(path)?;
    }
    println!("{}", issuer.issue(upn, Duration::from_secs(ttl_secs))?);
    Ok(())
}

fn kdc(args: KdcArgs) -> Result<(), BoxError> {
    let mut config = seg_testbed::kdc::KdcConfig::new(args.dir);
    config.port = args.port;
    let users: Vec<String> = config
        .users
        .iter()
        .map(|user| format!("{} (password {})", user.name, user.password))
        .collect();
    let services: Vec<String> = config
        .services
        .iter()
        .map(|service| service.principal.clone())
        .collect();
    let mut kdc = seg_testbed::kdc::Kdc::start(config)?;
    println!(
        "KDC for {} on {} (udp and tcp), started in {:.2} s",
        kdc.realm(),
        kdc.addr(),
        kdc.startup_time().as_secs_f64()
    );
    println!("  export KRB5_CONFIG={}", kdc.krb5_conf().display());
    println!("  users: {}", users.join(", "));
    for service in &services {
        if let Some(keytab) = kdc.keytab(service) {
            println!("  {service}: {}", keytab.display());
        }
    }
    println!("  KDC log: {}", kdc.log_path().display());
    println!("Ctrl-C stops it.");
    run_async(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut health = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                result = tokio::signal::ctrl_c() => break result?,
                _ = terminate.recv() => break,
                _ = health.tick() => kdc.check_alive()?,
            }
        }
        tracing::info!("stopping the KDC");
        kdc.stop();
        Ok(())
    })
}

fn samba(args: KdcArgs) -> Result<(), BoxError> {
    let mut config = seg_testbed::samba::SambaConfig::new(args.dir);
    config.port = args.port;
    let users: Vec<String> = config
        .users
        .iter()
        .map(|user| {
            let upn = user.upn.as_deref().map(|upn| format!(", UPN {upn}"));
            format!(
                "{} (password {}{})",
                user.name,
                user.password,
                upn.unwrap_or_default()
            )
        })
        .collect();
    let services = config.services.clone();
    let mut dc = seg_testbed::samba::SambaDc::start(config)?;
    println!(
        "Samba AD DC for {} with its KDC on {} (udp and tcp), started in {:.2} s ({:.2} s provisioning)",
        dc.realm(),
        dc.addr(),
        dc.startup_time().as_secs_f64(),
        dc.provisioning_time().as_secs_f64()
    );
    println!("  export KRB5_CONFIG={}", dc.krb5_conf().display());
    println!("  samba-tool … -s {}", dc.smb_conf().display());
    println!("  users: {}", users.join(", "));
    for service in &services {
        if let Some(keytab) = dc.keytab(&service.account) {
            let delegation = if service.allowed_to_delegate_to.is_empty() {
                String::new()
            } else {
                format!(
                    ", may delegate to {}",
                    service.allowed_to_delegate_to.join(", ")
                )
            };
            println!(
                "  {} ({}{delegation}): keys of {} in {}",
                service.account,
                service.spns.join(", "),
                service.keytab_principal,
                keytab.display()
            );
        }
    }
    println!("  samba log: {}", dc.log_path().display());
    println!("Ctrl-C stops it.");
    run_async(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut health = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                result = tokio::signal::ctrl_c() => break result?,
                _ = terminate.recv() => break,
                _ = health.tick() => dc.check_alive()?,
            }
        }
        tracing::info!("stopping the Samba DC");
        dc.stop();
        Ok(())
    })
}

/// Arguments of `seg-testbed uem`.
#[derive(Debug, clap::Args)]
struct UemArgs {
    /// The address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The devices file: a JSON array of {"device_id", "user", "uem_id", "platform", "model",
    /// "os_version", "enrollment", "compliance", "compromised", "managed_email_client", …}.
    #[arg(long)]
    devices: PathBuf,
    /// The server certificate chain (PEM); serves plain HTTP without it.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The URL change events are POSTed to; none are sent without it.
    #[arg(long, requires = "webhook_secret")]
    webhook: Option<String>,
    /// The shared secret of the webhook (sent, and keying the HMAC-SHA256 signature).
    #[arg(long, requires = "webhook")]
    webhook_secret: Option<String>,
    /// The aw-tenant-code every API request must carry.
    #[arg(long, default_value = seg_testbed::uem::DEFAULT_TENANT_CODE)]
    tenant_code: String,
    /// The API user's Basic user name.
    #[arg(long, default_value = seg_testbed::uem::DEFAULT_API_USER)]
    user: String,
    /// The API user's Basic password.
    #[arg(long, default_value = seg_testbed::uem::DEFAULT_API_PASSWORD)]
    password: String,
    /// The API user's organization group, which holds every device.
    #[arg(long, default_value_t = seg_testbed::uem::DEFAULT_ORGANIZATION_GROUP_ID)]
    organization_group_id: u64,
    /// How many of the latest requests are kept for `GET /testbed/requests` (0: none).
    #[arg(long, default_value_t = seg_testbed::DEFAULT_RECORDED_REQUESTS)]
    record_requests: usize,
}

async fn uem(args: UemArgs) -> Result<(), BoxError> {
    use seg_testbed::uem::{Credentials, Device, UemConfig, UemServer, Webhook};
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(pki::server_config_from_files(cert, key)?),
        _ => None,
    };
    let mut config = UemConfig::new(Device::load_list(&args.devices)?);
    config.credentials = Credentials {
        user: args.user,
        password: args.password,
    };
    config.tenant_code = args.tenant_code;
    config.organization_group_id = args.organization_group_id;
    config.record_requests = args.record_requests;
    config.webhook = match (&args.webhook, &args.webhook_secret) {
        (Some(url), Some(secret)) => Some(Webhook::new(url, secret)),
        _ => None,
    };
    let devices = config.devices.len();
    let webhook = args.webhook.as_deref().unwrap_or("none");
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let server = UemServer::spawn(listener, tls, config)?;
    tracing::info!(url = %server.search_url(), devices, webhook, "UEM stand-in listening");
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
