//! Building the compliance view from a full sync (issue 3; target: 1,000,000 devices in under
//! 5 s, peak RSS under 500 MB). Used by `bench/compliance-full-sync.sh`.
//!
//! Does what the gateway's full sync does (`Syncer::full_sync`): `UemClient::full_reusing(current view)` against a
//! running UEM (`seg-testbed uem`, in its own process), page by page, then
//! `Compliance::replace_all` of the records. Prints one `RESULT key=value …` line: the wall
//! time of fetch + parse (`fetch_ms`) and of building and swapping in the view (`build_ms`),
//! the device count, and the process's resident memory (from `/proc/self/status`): `VmRSS`
//! before, after the fetch, after the build, and the peak (`VmHWM`).
//!
//! ```text
//! full_sync_bench --url http://127.0.0.1:8444 [--page-size 500] [--expect 1000000]
//!                 [--syncs 1] [--trust-store ca.pem] [--tenant-code …] [--user …] [--password …]
//! ```
//!
//! `--syncs 2` runs a second full sync over the loaded view, as the hourly full sync does: the
//! old view stays alive while the new one is built, so its peak is the steady-state peak.

use compliance_policy::policy::PolicySettings;
use compliance_policy::state::{ChangeSource, Compliance};
use compliance_policy::sync::DeviceSource;
use compliance_policy::uem::{UemClient, UemSettings};
use ews_proxy_core::tls::UpstreamTrust;
use ews_proxy_core::upstream::{PoolSettings, UpstreamClient};
use std::time::{Duration, Instant};

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

struct Args {
    url: String,
    page_size: u32,
    expect: Option<usize>,
    syncs: u32,
    trust_store: Option<std::path::PathBuf>,
    tenant_code: String,
    user: String,
    password: String,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        page_size: 500,
        expect: None,
        syncs: 1,
        trust_store: None,
        tenant_code: "testbed-tenant-code".into(),
        user: "uemapi".into(),
        password: "P@ssw0rd!".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--page-size" => args.page_size = value()?.parse().map_err(|e| format!("{e}"))?,
            "--expect" => args.expect = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--syncs" => args.syncs = value()?.parse().map_err(|e| format!("{e}"))?,
            "--trust-store" => args.trust_store = Some(value()?.into()),
            "--tenant-code" => args.tenant_code = value()?,
            "--user" => args.user = value()?,
            "--password" => args.password = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.url.is_empty() {
        return Err("--url is required".into());
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    // The gateway's runtime: multi-threaded tokio.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // As the gateway: `uem_trust_store`, and the pool settings of `[exchange.pool]`.
    let trust = UpstreamTrust {
        trust_store: args.trust_store.clone(),
        ignore_ssl_errors: false,
    };
    let client = UpstreamClient::new(&trust, &PoolSettings::default())?;
    let uem = UemClient::new(
        client,
        UemSettings {
            url: args.url.clone(),
            tenant_code: args.tenant_code.clone(),
            user: args.user.clone(),
            password: args.password.clone(),
            organization_group_id: None,
            page_size: args.page_size,
            timeout: Duration::from_secs(60),
        },
    )?;
    let compliance = Compliance::new(PolicySettings::default());
    for sync in 1..=args.syncs {
        let rss_before = status_kib("VmRSS");
        let started = Instant::now();
        let records = uem.full_reusing(compliance.view()).await?;
        let fetched = started.elapsed();
        let rss_fetched = status_kib("VmRSS");
        let count = records.len();
        if let Some(expect) = args.expect
            && count != expect
        {
            return Err(format!("expected {expect} devices, got {count}").into());
        }
        // As `Syncer::full_sync`: swap in the new view; the transitions are returned (and
        // broadcast) as the gateway gets them.
        let transitions = compliance.replace_all_shared(records, ChangeSource::FullSync);
        let total = started.elapsed();
        let transition_count = transitions.len();
        drop(transitions);
        let rss_built = status_kib("VmRSS");
        let peak = status_kib("VmHWM");
        let view = compliance.view();
        assert_eq!(view.len(), count);
        println!(
            "RESULT sync={sync} page_size={} devices={count} transitions={transition_count} \
             fetch_ms={:.0} build_ms={:.0} total_ms={:.0} rss_before_mib={} \
             rss_fetched_mib={} rss_built_mib={} peak_rss_mib={}",
            args.page_size,
            fetched.as_secs_f64() * 1e3,
            (total - fetched).as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            mib(rss_before),
            mib(rss_fetched),
            mib(rss_built),
            mib(peak),
        );
    }
    Ok(())
}
