//! KDC exchanges under load (issue 4; target: 200 for 10,000 requests over 100 users, two per
//! user, plus the gateway's one login).
//!
//! Starts the real MIT KDC of `seg-testbed` on loopback with `--users` users (`user001`, …),
//! then sends `--users × --per-user` requests for a Negotiate token to Exchange through one
//! `KcdClient`, interleaved (request `i` is for user `i mod users`, so every user's first
//! requests arrive while others are in flight), at most `--concurrency` at a time on a
//! two-thread tokio runtime. Prints the client's own count of KDC exchanges
//! (`KcdClient::exchanges`), the KDC's count from its log (`AS_REQ`/`TGS_REQ` lines, and its
//! S4U lines), the wall time and the latency percentiles.
//!
//! Then, with `--cold N` (default 200), times N cold token requests with the TGT cached
//! (`invalidate` then `negotiate_token`: one S4U2Self and one S4U2Proxy) and N fully cold
//! (`clear_cache`: the AS login too), one at a time, and prints their percentiles.
//!
//! ```text
//! cargo run -p kcd-client --release --example kcd_load -- [--users 100] [--per-user 100] \
//!     [--concurrency 64] [--cold 200]
//! ```
//!
//! Exits non-zero if any request failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kcd_client::{Credentials, KcdClient, KcdConfig, RealmConfig, UserName};
use seg_testbed::kdc::{DEFAULT_REALM, EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig, KdcUser};

struct Options {
    users: usize,
    per_user: usize,
    concurrency: usize,
    cold: usize,
}

fn options() -> Options {
    let mut options = Options {
        users: 100,
        per_user: 100,
        concurrency: 64,
        cold: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<usize>().ok());
        let (slot, minimum) = match flag.as_str() {
            "--users" => (&mut options.users, 1),
            "--per-user" => (&mut options.per_user, 1),
            "--concurrency" => (&mut options.concurrency, 1),
            "--cold" => (&mut options.cold, 0),
            _ => usage(&flag),
        };
        *slot = value
            .filter(|v| *v >= minimum)
            .unwrap_or_else(|| usage(&flag));
    }
    options
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "kcd_load: bad argument {flag:?}\n\
         usage: kcd_load [--users N] [--per-user N] [--concurrency N] [--cold N]"
    );
    std::process::exit(2)
}

fn user_name(i: usize) -> String {
    format!("user{:03}", i + 1)
}

/// The `q`-quantile of sorted durations (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort_unstable();
    format!(
        "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n = {})",
        quantile(&latencies, 0.50).as_secs_f64() * 1e3,
        quantile(&latencies, 0.90).as_secs_f64() * 1e3,
        quantile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        latencies.len(),
    )
}

/// Requests in the KDC's log: (AS_REQ, TGS_REQ, protocol transitions, constrained delegations).
fn kdc_counts(log: &str) -> (usize, usize, usize, usize) {
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    (
        count("AS_REQ"),
        count("TGS_REQ"),
        count("PROTOCOL-TRANSITION"),
        count("CONSTRAINED-DELEGATION"),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let options = options();
    let mut config = KdcConfig::temporary();
    config.users = (0..options.users)
        .map(|i| KdcUser::new(user_name(i), format!("pw-{}", user_name(i))))
        .collect();
    let started = Instant::now();
    let kdc = Kdc::start(config)?;
    eprintln!(
        "KDC on {} with {} users, started in {:.1} s",
        kdc.addr(),
        options.users,
        started.elapsed().as_secs_f64()
    );
    let keytab = kdc
        .keytab(GATEWAY_SERVICE)
        .ok_or("no gateway keytab")?
        .to_path_buf();
    let client = KcdClient::new(KcdConfig::new(
        vec![RealmConfig::new("test.local", [kdc.addr().to_string()])],
        GATEWAY_SERVICE,
        Credentials::KeytabFile(keytab),
    ))?;
    let users: Arc<Vec<UserName>> = Arc::new(
        (0..options.users)
            .map(|i| UserName::principal(&user_name(i), DEFAULT_REALM))
            .collect::<Result<_, _>>()?,
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let before = kdc_counts(&kdc.log());

    // The load: `concurrency` workers take the next request number until all are sent.
    let total = options.users * options.per_user;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let results = rt.block_on(async {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..options.concurrency.min(total) {
            let (client, users, next) = (client.clone(), Arc::clone(&users), Arc::clone(&next));
            workers.spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return (latencies, errors);
                    }
                    let user = &users[i % users.len()];
                    let sent = Instant::now();
                    match client.negotiate_token(user, EXCHANGE_SERVICE, None).await {
                        Ok(token) => {
                            std::hint::black_box(token);
                            latencies.push(sent.elapsed());
                        }
                        Err(e) => errors.push(format!("{user}: {e}")),
                    }
                }
            });
        }
        let mut latencies = Vec::with_capacity(total);
        let mut errors = Vec::new();
        while let Some(done) = workers.join_next().await {
            let (l, e) = done.expect("a worker panicked");
            latencies.extend(l);
            errors.extend(e);
        }
        (latencies, errors)
    });
    let wall = started.elapsed();
    let (latencies, errors) = results;
    let exchanges = client.exchanges();
    // krb5kdc writes its log line after answering: give it a moment to catch up.
    std::thread::sleep(Duration::from_millis(300));
    let after = kdc_counts(&kdc.log());

    println!(
        "load: {total} requests ({} users × {}, interleaved), concurrency {}, 2 runtime threads",
        options.users, options.per_user, options.concurrency
    );
    println!(
        "  wall {:.3} s ({:.0} requests/s); latency {}",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64(),
        summary(latencies)
    );
    println!(
        "  client: logins {}, S4U2Self {}, S4U2Proxy {}, KDC requests sent {}",
        exchanges.logins, exchanges.s4u2self, exchanges.s4u2proxy, exchanges.requests
    );
    println!(
        "  KDC log: AS_REQ {}, TGS_REQ {} (PROTOCOL-TRANSITION {}, CONSTRAINED-DELEGATION {})",
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        after.3 - before.3
    );
    let exchanges_total = exchanges.s4u2self + exchanges.s4u2proxy;
    let target = 2 * options.users as u64;
    println!(
        "  target: {target} S4U exchanges (two per user) + 1 login: {} ({exchanges_total} S4U + {} login)",
        if exchanges_total <= target && exchanges.logins <= 1 {
            "met"
        } else {
            "NOT met"
        },
        exchanges.logins
    );

    // Cold requests, one at a time.
    if options.cold > 0 {
        let cold_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let alice = &users[0];
        let run = |clear: &dyn Fn()| -> Result<Vec<Duration>, kcd_client::KcdError> {
            let mut latencies = Vec::with_capacity(options.cold);
            for _ in 0..options.cold {
                clear();
                let sent = Instant::now();
                cold_rt.block_on(client.negotiate_token(alice, EXCHANGE_SERVICE, None))?;
                latencies.push(sent.elapsed());
            }
            Ok(latencies)
        };
        let s4u = run(&|| client.invalidate(alice, EXCHANGE_SERVICE))?;
        let full = run(&|| client.clear_cache())?;
        println!("cold, TGT cached (S4U2Self + S4U2Proxy): {}", summary(s4u));
        println!("cold, with AS login: {}", summary(full));
    }

    if !errors.is_empty() {
        eprintln!("{} requests failed, e.g. {}", errors.len(), errors[0]);
        std::process::exit(1);
    }
    Ok(())
}
