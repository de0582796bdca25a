//! `seg-proxy`: the compliance-aware secure email gateway.
//!
//! `seg-proxy run --config seg.toml` serves; `seg-proxy check-config --config seg.toml` prints
//! the effective configuration (secrets redacted) and exits non-zero naming the key and source of
//! any error.

use clap::{Args, Parser, Subcommand};
use seg_config::error_chain;
use seg_proxy::Gateway;
use seg_proxy::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc (feature `jemalloc`, on by default): see `seg_proxy::process_metrics`.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "seg-proxy",
    version,
    about = "Compliance-aware secure email gateway for EWS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM or SIGINT, then drain in-flight requests.
    Run(Sources),
    /// Print the effective configuration and exit; non-zero on any error.
    CheckConfig(Sources),
    /// Check a Kerberos constrained delegation set-up: print the base64 SPNEGO token the
    /// gateway would send to Exchange for the user (exit 0), or the error and its cause.
    KcdToken(KcdToken),
}

#[derive(Args)]
struct KcdToken {
    /// The krb5.conf naming the realms and their KDCs (`[realms] REALM = { kdc = host:port }`).
    #[arg(long)]
    krb5_conf: PathBuf,
    /// The keytab holding the gateway's keys.
    #[arg(long)]
    keytab: PathBuf,
    /// The principal the keytab holds: an SPN (`HTTP/seg.corp.example`) or a service account
    /// (`svc-seg@CORP.EXAMPLE`); without `@REALM`, krb5.conf's default realm.
    #[arg(long)]
    service: String,
    /// The user, as the UPN from the client certificate (`alice@corp.example`, sent as an
    /// enterprise name) or `alice@REALM`.
    #[arg(long)]
    user: String,
    /// Exchange's SPN, e.g. `HTTP/mail.corp.example`.
    #[arg(long)]
    target: String,
}

#[derive(Args)]
struct Sources {
    /// The TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// An existing SEG V2 application-override.properties to import.
    #[arg(long)]
    properties: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = match &cli.command {
        Command::Run(sources) | Command::CheckConfig(sources) => sources,
        Command::KcdToken(args) => return kcd_token(args),
    };
    let loaded = match Config::load(sources.config.as_deref(), sources.properties.as_deref()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("seg-proxy: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    // Looked at once the configuration is known good: which files hold secrets depends on it.
    let exposed =
        seg_proxy::secret_files::exposed_secret_files(&loaded.config, sources.config.as_deref());
    match cli.command {
        Command::CheckConfig(_) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            for file in &exposed {
                eprintln!("warning: {file}");
            }
            println!("# effective configuration (defaults, file, properties, environment)");
            match &loaded.config.compliance {
                Some(compliance) => println!(
                    "# compliance: devices from {}, unknown devices: {:?}, ActiveSync discovery: {:?}",
                    compliance.uem_url, compliance.unknown_device, compliance.activesync_discovery
                ),
                None => {
                    println!("# compliance: not configured: plain EWS proxy, no device is blocked")
                }
            }
            if loaded.config.auth.cba_kcd() {
                println!(
                    "# auth: cba-kcd: certificate users get Kerberos for {}",
                    loaded.config.kcd_target_spn().unwrap_or_default()
                );
            }
            print!("{}", loaded.config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::KcdToken(_) => unreachable!("handled before the configuration is loaded"),
        Command::Run(_) => {
            init_logging(&loaded.config);
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            for file in &exposed {
                tracing::warn!(
                    key = file.key,
                    file = %file.path.display(),
                    mode = %format_args!("{:o}", file.mode),
                    "a file holding a secret is open to other users; chmod 600 it"
                );
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("seg-proxy: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let signalled = termination();
                match Gateway::start(loaded.config).await {
                    Ok(gateway) => {
                        gateway.run_until(signalled).await;
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        tracing::error!(error = %error_chain(&error), "seg-proxy cannot start");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// `seg-proxy kcd-token`: one S4U2Self + S4U2Proxy exchange, as the gateway would make it.
fn kcd_token(args: &KcdToken) -> ExitCode {
    let result = (|| -> Result<String, kcd_client::KcdError> {
        let client = seg_proxy::kcd_client_from(&args.krb5_conf, &args.keytab, &args.service)?;
        let user = client.user_name(&args.user)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| kcd_client::KcdError::Config(format!("cannot start the runtime: {e}")))?;
        let token = runtime.block_on(client.negotiate_token(&user, &args.target, None))?;
        Ok(token.to_base64())
    })();
    match result {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("seg-proxy kcd-token: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    // Colours only for a person at a terminal: a log file or journald gets plain text that
    // can be searched.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives while the gateway is still starting is not
/// lost to the default action (which would kill the process without draining).
fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
