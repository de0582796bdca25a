//! Decision latency with 1,000,000 devices in the view (issue 3; target: median under 200 ns).
//!
//! Builds a [`Compliance`] with `replace_all` of 1,000,000 generated records (ids `EASDEV000001`
//! …, mixed platforms, models, OS versions, enrollment and compliance states), then times
//! `Compliance::decide(Some(id), None)`, the call the enforcement layer makes on every request:
//!
//! - `hit`: a known device, id as stored (upper case);
//! - `hit_lowercase`: the same ids in lower case (the lookup upper-cases a copy);
//! - `miss`: an id the console does not know;
//! - `hit_with_overrides`: a known device while a few device and user overrides exist (the
//!   override maps are then consulted on every decision);
//! - `hit_allowed`: only devices every policy lets through, the worst case of the policy
//!   checks (none returns early).
//!
//! each under the default policy and under one using every policy family (lists, minimum OS
//! versions, inactivity, encryption, ActiveSync profile). Ids are drawn from a pre-generated,
//! shuffled list of 1,000,000 (so that successive lookups touch unrelated parts of the map, as
//! requests from many devices do), and passed through `black_box`.
//!
//! `cargo bench -p compliance-policy --bench decision`
//! (`DECISION_BENCH_DEVICES=N` for another view size).
//!
//! The view is built lazily, on the first benchmark that runs: listing the benchmarks
//! (`--list`, as test runners do) builds nothing. Run as a test (`cargo test --benches`, without
//! cargo bench's `--bench` argument) it uses 10,000 devices, to stay quick in debug builds.

// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use compliance_policy::policy::{Override, PolicySettings};
use compliance_policy::state::{ChangeSource, Compliance};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const DEFAULT_DEVICES: usize = 1_000_000;

fn devices() -> usize {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    std::env::var("DECISION_BENCH_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if benchmarking {
            DEFAULT_DEVICES
        } else {
            10_000
        })
}

fn id(i: usize) -> String {
    format!("EASDEV{i:06}")
}

/// Device `i` of the generated set: deterministic, varied.
fn record(i: usize, now: u64) -> DeviceRecord {
    const PLATFORMS: [(&str, &str, &str, &str); 4] = [
        ("iOS", "iPhone15,2", "17.1", "iPhone"),
        ("Android", "Pixel 8", "14", "Android"),
        ("iOS", "iPad13,4", "16.7.2", "iPad"),
        ("WinRT", "Surface", "10.0.19045", "WindowsMail"),
    ];
    const CLIENTS: [&str; 3] = ["Boxer", "Outlook", "NativeMail"];
    let (platform, model, os, eas_type) = PLATFORMS[i % PLATFORMS.len()];
    let enrollment = match i % 101 {
        0 => Enrollment::EnterpriseWiped,
        1 => Enrollment::DeviceWiped,
        2 => Enrollment::Unenrolled,
        _ => Enrollment::Enrolled,
    };
    let compliance = match i % 10 {
        0 => ComplianceStatus::NonCompliant,
        1 if i % 20 == 1 => ComplianceStatus::Pending,
        _ => ComplianceStatus::Compliant,
    };
    DeviceRecord {
        device_id: DeviceId::new(&id(i)),
        uem_id: Some(i as u64),
        user: Some(format!("user{i:06}@test.local").into()),
        email: Some(format!("user{i:06}@test.local").into()),
        platform: Some(platform.into()),
        model: Some(model.into()),
        os_version: Some(os.into()),
        eas_device_type: Some(eas_type.into()),
        mail_client: Some(CLIENTS[i % CLIENTS.len()].into()),
        enrollment,
        compromised: i.is_multiple_of(97),
        compliance,
        managed: enrollment == Enrollment::Enrolled,
        managed_email_client: true,
        encrypted: Some(true),
        activesync_profile: Some(true),
        // Seen within the last 10 days.
        last_seen: Some(now - (i as u64 % 10) * 86_400),
    }
}

/// A policy using every family, set so that the generated compliant devices pass them all.
fn every_family() -> PolicySettings {
    PolicySettings {
        managed_devices_only: true,
        require_compliant: true,
        block_compromised: true,
        require_encryption: true,
        require_activesync_profile: true,
        inactivity_days: 30,
        allowed_mail_clients: vec!["Boxer".into(), "Outlook".into(), "NativeMail".into()],
        blocked_mail_clients: vec!["Gmail".into(), "Spark".into(), "BlueMail".into()],
        allowed_users: Vec::new(),
        blocked_users: vec![
            "mallory@test.local".into(),
            "eve@test.local".into(),
            "trudy@test.local".into(),
        ],
        allowed_device_types: vec![
            "iPhone".into(),
            "iPad".into(),
            "Android".into(),
            "WindowsMail".into(),
        ],
        blocked_device_types: vec!["SAMSUNGSGHI337".into(), "BlackBerry".into()],
        allowed_platforms: vec!["iOS".into(), "Android".into(), "WinRT".into()],
        blocked_models: vec!["iPhone8,1".into(), "Nexus 5".into()],
        min_os_version: [
            ("iOS".into(), "16.0".into()),
            ("Android".into(), "12".into()),
            ("WinRT".into(), "10.0.10586".into()),
        ]
        .into(),
        ..PolicySettings::default()
    }
}

/// A tiny xorshift generator: reproducible shuffles without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Everything the benchmarks read: the two states and the id lists.
struct Fixture {
    n: usize,
    /// By policy name: the state without overrides, and the same with a few overrides.
    states: Vec<(&'static str, Compliance, Compliance)>,
    hits: Vec<String>,
    lower: Vec<String>,
    misses: Vec<String>,
    allowed: Vec<String>,
}

fn build_fixture(n: usize) -> Fixture {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let records: Vec<DeviceRecord> = (1..=n).map(|i| record(i, now)).collect();
    let default_policy = PolicySettings::default();
    let allowed: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            default_policy
                .decide(Some(r), None, &Default::default(), now)
                .is_allowed()
        })
        .map(|(i, _)| i + 1)
        .collect();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut hits: Vec<String> = (1..=n).map(id).collect();
    rng.shuffle(&mut hits);
    let lower: Vec<String> = hits.iter().map(|id| id.to_ascii_lowercase()).collect();
    let misses: Vec<String> = (1..=n)
        .map(|i| format!("UNKNOWN{:06}", rng.next() % 1_000_000 + i as u64))
        .collect();
    let mut allowed: Vec<String> = allowed.iter().map(|&i| id(i)).collect();
    rng.shuffle(&mut allowed);
    // Copied in their shuffled order, so that the id strings lie in memory in the order they
    // are read: a request's device id is in the cache (it was just parsed); only the view's
    // memory should be cold.
    let packed =
        |ids: Vec<String>| -> Vec<String> { ids.iter().map(|id| id.as_str().to_owned()).collect() };
    let (hits, lower, misses, allowed) =
        (packed(hits), packed(lower), packed(misses), packed(allowed));

    let mut states = Vec::new();
    for (policy_name, policy) in [
        ("default-policy", PolicySettings::default()),
        ("every-family", every_family()),
    ] {
        let plain = Compliance::new(policy.clone());
        plain.replace_all(records.clone(), ChangeSource::FullSync);
        assert_eq!(plain.view().len(), n);
        // Every id of `allowed` passes this policy too, so that `hit_allowed` runs every check.
        for id in allowed.iter().take(1000) {
            let decision = plain.decide(Some(id), None);
            assert!(
                decision.is_allowed(),
                "{id} under {policy_name}: {decision:?}"
            );
        }
        assert!(!plain.decide(Some(&misses[0]), None).is_allowed());
        // A few overrides, as an administrator sets them: 8 devices, 8 users.
        let overridden = Compliance::new(policy);
        overridden.replace_all(records.clone(), ChangeSource::FullSync);
        for i in 0..8 {
            let action = if i % 2 == 0 {
                Override::Allow
            } else {
                Override::Block
            };
            overridden.set_device_override(&id(1 + i * 12_345 % n), Some(action));
            overridden.set_user_override(
                &format!("user{:06}@test.local", 7 + i * 54_321 % n),
                Some(action),
            );
        }
        assert_eq!(overridden.view().overrides().devices.len(), 8);
        states.push((policy_name, plain, overridden));
    }
    Fixture {
        n,
        states,
        hits,
        lower,
        misses,
        allowed,
    }
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| build_fixture(devices()))
}

/// Which state and which ids a benchmark uses.
#[derive(Clone, Copy)]
enum Ids {
    Hits,
    Lower,
    Misses,
    Allowed,
}

/// Times `decide` for the state `policy` (with overrides or not) over the ids `ids`,
/// cycling through them.
fn time_decisions(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    policy: usize,
    overrides: bool,
    ids: Ids,
) {
    let policy_name = ["default-policy", "every-family"][policy];
    group.bench_function(BenchmarkId::new(name, policy_name), |b| {
        let fixture = fixture();
        let (_, plain, overridden) = &fixture.states[policy];
        let compliance = if overrides { overridden } else { plain };
        let ids = match ids {
            Ids::Hits => &fixture.hits,
            Ids::Lower => &fixture.lower,
            Ids::Misses => &fixture.misses,
            Ids::Allowed => &fixture.allowed,
        };
        let mut next = 0usize;
        b.iter(|| {
            let id = &ids[next];
            next += 1;
            if next == ids.len() {
                next = 0;
            }
            black_box(compliance.decide(Some(black_box(id.as_str())), None))
        })
    });
}

fn decision(c: &mut Criterion) {
    // The group is named after the configured size; the fixture is built on first use.
    let n = devices();
    let mut group = c.benchmark_group(format!("decide_{n}_devices"));
    for policy in 0..2 {
        time_decisions(&mut group, "hit", policy, false, Ids::Hits);
        time_decisions(&mut group, "hit_lowercase", policy, false, Ids::Lower);
        time_decisions(&mut group, "miss", policy, false, Ids::Misses);
        time_decisions(&mut group, "hit_allowed", policy, false, Ids::Allowed);
        time_decisions(&mut group, "hit_with_overrides", policy, true, Ids::Hits);
        time_decisions(
            &mut group,
            "hit_allowed_with_overrides",
            policy,
            true,
            Ids::Allowed,
        );
    }
    group.finish();
    if let Some(fixture) = FIXTURE.get() {
        assert_eq!(fixture.n, n);
    }
}

criterion_group!(benches, decision);
criterion_main!(benches);
