//! Property tests of the compliance decision (issue 10): for any device, policy, overrides and
//! sequence of changes, overrides win, an unknown device gets the configured default, and a
//! console that fails never empties the view.

use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use compliance_policy::policy::{
    AllowReason, BlockReason, Decision, Override, Overrides, PolicySettings, UnknownDevice,
};
use compliance_policy::state::{ChangeSource, Compliance};
use compliance_policy::sync::{DeviceSource, SourceError, SyncSettings, Syncer};
use compliance_policy::view::Change;
use proptest::prelude::*;
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A few device ids, so that changes, overrides and requests meet.
const IDS: [&str; 4] = ["EASDEV1", "EASDEV2", "ANDROIDC3", "IPHONE4"];
const USERS: [&str; 3] = ["alice@test.local", "bob@test.local", "Carol@Test.Local"];

fn enrollment() -> impl Strategy<Value = Enrollment> {
    prop_oneof![
        Just(Enrollment::Enrolled),
        Just(Enrollment::Unenrolled),
        Just(Enrollment::EnterpriseWiped),
        Just(Enrollment::DeviceWiped),
        Just(Enrollment::Unknown),
    ]
}

fn compliance_status() -> impl Strategy<Value = ComplianceStatus> {
    prop_oneof![
        Just(ComplianceStatus::Compliant),
        Just(ComplianceStatus::NonCompliant),
        Just(ComplianceStatus::Pending),
        Just(ComplianceStatus::Unknown),
    ]
}

fn record() -> impl Strategy<Value = DeviceRecord> {
    (
        prop::sample::select(&IDS[..]),
        prop::option::of(prop::sample::select(&USERS[..])),
        enrollment(),
        compliance_status(),
        any::<(bool, bool, Option<bool>, Option<bool>)>(),
        prop::option::of(prop::sample::select(&["Apple", "Android", "WinRT"][..])),
        prop::option::of(prop::sample::select(&["16.0", "17.1", "9"][..])),
    )
        .prop_map(
            |(id, user, enrollment, compliance, flags, platform, os)| DeviceRecord {
                device_id: DeviceId::new(id),
                user: user.map(Into::into),
                enrollment,
                compliance,
                managed: flags.0,
                compromised: flags.1,
                encrypted: flags.2,
                activesync_profile: flags.3,
                platform: platform.map(Into::into),
                os_version: os.map(Into::into),
                ..DeviceRecord::default()
            },
        )
}

fn policy() -> impl Strategy<Value = PolicySettings> {
    (any::<[bool; 6]>(), 0u32..3).prop_map(|(flags, inactivity_days)| PolicySettings {
        managed_devices_only: flags[0],
        require_compliant: flags[1],
        block_compromised: flags[2],
        require_encryption: flags[3],
        require_activesync_profile: flags[4],
        inactivity_days,
        min_os_version: [("apple".to_owned(), "17".to_owned())].into(),
        unknown_device: if flags[5] {
            UnknownDevice::Allow
        } else {
            UnknownDevice::Block
        },
        ..PolicySettings::default()
    })
}

fn action() -> impl Strategy<Value = Override> {
    prop_oneof![Just(Override::Allow), Just(Override::Block)]
}

fn overrides() -> impl Strategy<Value = Overrides> {
    (
        prop::collection::hash_map(prop::sample::select(&IDS[..]), action(), 0..3),
        prop::collection::hash_map(prop::sample::select(&USERS[..]), action(), 0..3),
    )
        .prop_map(|(devices, users)| Overrides {
            devices: devices
                .into_iter()
                .map(|(id, a)| (DeviceId::new(id), a))
                .collect(),
            users: users
                .into_iter()
                .map(|(u, a)| (u.to_ascii_lowercase(), a))
                .collect(),
        })
}

/// A change as the console's events and syncs make them.
#[derive(Clone, Debug)]
enum Step {
    Upsert(DeviceRecord),
    Remove(&'static str),
    FullSync(Vec<DeviceRecord>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => record().prop_map(Step::Upsert),
        1 => prop::sample::select(&IDS[..]).prop_map(Step::Remove),
        1 => prop::collection::vec(record(), 0..4).prop_map(Step::FullSync),
    ]
}

fn apply(compliance: &Compliance, step: &Step) {
    match step {
        Step::Upsert(record) => {
            compliance.apply(
                vec![Change::Upsert(record.clone())],
                ChangeSource::ChangeEvent,
            );
        }
        Step::Remove(id) => {
            compliance.apply(
                vec![Change::Remove(DeviceId::new(id))],
                ChangeSource::ChangeEvent,
            );
        }
        Step::FullSync(records) => {
            compliance.replace_all(records.clone(), ChangeSource::FullSync);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A device override decides, whatever the record, the user and the policy say.
    #[test]
    fn device_override_always_wins(
        policy in policy(),
        device in prop::option::of(record()),
        user in prop::option::of(prop::sample::select(&USERS[..])),
        mut overrides in overrides(),
        action in action(),
    ) {
        let id = device.as_ref().map_or("EASDEV1", |d| d.device_id.as_str()).to_owned();
        overrides.devices.insert(DeviceId::new(&id), action);
        let decision = policy.decide_for(Some(&id), device.as_ref(), user, &overrides, 1_000_000);
        prop_assert_eq!(decision, match action {
            Override::Allow => Decision::Allow(AllowReason::DeviceOverride),
            Override::Block => Decision::Block(BlockReason::DeviceOverride),
        });
    }

    /// Without a device override, a user override decides, whatever the record and the policy.
    #[test]
    fn user_override_wins_over_every_policy(
        policy in policy(),
        device in prop::option::of(record()),
        user in prop::sample::select(&USERS[..]),
        mut overrides in overrides(),
        action in action(),
    ) {
        overrides.devices.clear();
        overrides.users.insert(user.to_ascii_lowercase(), action);
        let decision = policy.decide(device.as_ref(), Some(user), &overrides, 1_000_000);
        prop_assert_eq!(decision, match action {
            Override::Allow => Decision::Allow(AllowReason::UserOverride),
            Override::Block => Decision::Block(BlockReason::UserOverride),
        });
    }

    /// A device the console does not know gets the configured default, when no override names
    /// it or its user.
    #[test]
    fn unknown_device_follows_the_default(
        policy in policy(),
        user in prop::option::of(prop::sample::select(&USERS[..])),
        id in prop::sample::select(&IDS[..]),
    ) {
        let decision = policy.decide_for(Some(id), None, user, &Overrides::default(), 0);
        prop_assert_eq!(decision, match policy.unknown_device {
            UnknownDevice::Allow => Decision::Allow(AllowReason::UnknownDeviceAllowed),
            UnknownDevice::Block => Decision::Block(BlockReason::UnknownDevice),
        });
    }

    /// A wiped or unenrolled device is blocked by every policy unless an override allows it.
    #[test]
    fn wiped_device_is_blocked_without_an_override(
        policy in policy(),
        mut device in record(),
        wipe in prop_oneof![
            Just(Enrollment::EnterpriseWiped),
            Just(Enrollment::DeviceWiped),
            Just(Enrollment::Unenrolled),
        ],
    ) {
        device.enrollment = wipe;
        let decision = policy.decide(Some(&device), None, &Overrides::default(), 0);
        prop_assert!(!decision.is_allowed(), "{decision:?}");
    }

    /// Through the shared state: after any sequence of events and full syncs, an override set
    /// before them still decides for its device (overrides outlive the changes).
    #[test]
    fn overrides_survive_any_sequence_of_changes(
        policy in policy(),
        steps in prop::collection::vec(step(), 0..12),
        id in prop::sample::select(&IDS[..]),
        action in action(),
    ) {
        let compliance = Compliance::new(policy);
        compliance.set_device_override(id, Some(action));
        for step in &steps {
            apply(&compliance, step);
        }
        let decision = compliance.decide(Some(&id.to_ascii_lowercase()), None);
        prop_assert_eq!(decision.is_allowed(), action == Override::Allow, "{:?}", decision);
        prop_assert_eq!(decision.reason(), "device-override");
    }

    /// Through the shared state: a device no change ever named follows the default.
    #[test]
    fn device_never_synced_follows_the_default(
        policy in policy(),
        steps in prop::collection::vec(step(), 0..12),
    ) {
        let default_allows = policy.unknown_device == UnknownDevice::Allow;
        let compliance = Compliance::new(policy);
        for step in &steps {
            apply(&compliance, step);
        }
        let decision = compliance.decide(Some("NEVERSEEN"), None);
        prop_assert_eq!(decision.is_allowed(), default_allows, "{:?}", decision);
    }
}

/// Ids for the served-decision property: short ones kept inline in the device table, and one
/// longer than a table slot holds.
const TABLE_IDS: [&str; 4] = [
    "EASDEV1",
    "androidc3",
    "ApplDNPXQ1234567890ABCDEFGHIJKLM",
    "A-DEVICE-ID-LONGER-THAN-THIRTY-TWO-BYTES",
];

/// A record with every field a policy reads, `last_seen` far past, far future or missing.
fn full_record() -> impl Strategy<Value = DeviceRecord> {
    let name = |names: &'static [&'static str]| prop::option::of(prop::sample::select(names));
    (
        (record(), prop::sample::select(&TABLE_IDS[..])),
        name(&["Boxer", "outlook", "Gmail"]),
        name(&["iPhone", "Android", "BlackBerry"]),
        name(&["iPhone15,2", "Nexus 5"]),
        prop::option::of(prop_oneof![Just(0u64), Just(4_000_000_000u64)]),
        any::<bool>(),
    )
        .prop_map(|((record, id), client, device_type, model, seen, clean)| {
            let record = DeviceRecord {
                device_id: DeviceId::new(id),
                mail_client: client.map(Into::into),
                eas_device_type: device_type.map(Into::into),
                model: model.map(Into::into),
                last_seen: seen,
                ..record
            };
            // Half the records pass every flag check, so that the later checks (lists,
            // types, versions) decide often.
            if clean {
                DeviceRecord {
                    enrollment: Enrollment::Enrolled,
                    compliance: ComplianceStatus::Compliant,
                    managed: true,
                    compromised: false,
                    encrypted: Some(true),
                    activesync_profile: Some(true),
                    last_seen: Some(4_000_000_000),
                    ..record
                }
            } else {
                record
            }
        })
}

/// A policy with every family, lists included.
fn full_policy() -> impl Strategy<Value = PolicySettings> {
    let list = |names: &'static [&'static str]| {
        prop::collection::vec(prop::sample::select(names).prop_map(str::to_owned), 0..2)
    };
    (
        policy(),
        (list(&["BOXER", "Outlook"]), list(&["gmail"])),
        (
            list(&["alice@test.local", "carol@test.local"]),
            list(&["BOB@test.local"]),
        ),
        (list(&["iphone", "Android"]), list(&["BlackBerry"])),
        (list(&["Apple", "winrt"]), list(&["nexus 5"])),
    )
        .prop_map(
            |(policy, clients, users, types, platform_model)| PolicySettings {
                allowed_mail_clients: clients.0,
                blocked_mail_clients: clients.1,
                allowed_users: users.0,
                blocked_users: users.1,
                allowed_device_types: types.0,
                blocked_device_types: types.1,
                allowed_platforms: platform_model.0,
                blocked_models: platform_model.1,
                ..policy
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The decision served (from the device table's precomputed verdicts, or the overlay of
    /// recent changes) is the policy's own decision on the current record, for any policy,
    /// history, overrides, request user and case of the id.
    #[test]
    fn served_decision_is_the_policys_decision_on_the_record(
        policy in full_policy(),
        base in prop::collection::vec(full_record(), 0..5),
        changes in prop::collection::vec(prop_oneof![
            3 => full_record().prop_map(Step::Upsert),
            1 => prop::sample::select(&TABLE_IDS[..]).prop_map(Step::Remove),
        ], 0..4),
        overrides in overrides(),
        long_id_override in prop::option::of(action()),
        user in prop::option::of(prop::sample::select(&["ALICE@test.local", "bob@test.local", "dave@test.local"][..])),
        device_type in prop::option::of(prop::sample::select(&["iPhone", "blackberry", "Outlook"][..])),
    ) {
        let compliance = Compliance::new(policy.clone());
        compliance.replace_all(base, ChangeSource::FullSync);
        for step in &changes {
            apply(&compliance, step);
        }
        for (id, action) in &overrides.devices {
            compliance.set_device_override(id.as_str(), Some(*action));
        }
        compliance.set_device_override(TABLE_IDS[3], long_id_override);
        for (user, action) in &overrides.users {
            compliance.set_user_override(user, Some(*action));
        }
        let view = compliance.view();
        for id in TABLE_IDS.iter().copied().chain(["UNKNOWN1"]) {
            for asked in [id.to_owned(), id.to_ascii_lowercase()] {
                let record = view.device(&asked).map(|r| &**r);
                let upper = asked.to_ascii_uppercase();
                let expected = policy.decide_request(Some(&upper), record, user, device_type, view.overrides(), 1_800_000_000);
                prop_assert_eq!(compliance.decide_request(Some(&asked), user, device_type), expected, "{} {:?} {:?}", asked, user, device_type);
                let without_type = policy.decide_for(Some(&upper), record, user, view.overrides(), 1_800_000_000);
                prop_assert_eq!(compliance.decide(Some(&asked), user), without_type, "{} {:?}", asked, user);
            }
        }
    }
}

/// What the fake console answers, one answer per sync, in order; then it is down for good.
#[derive(Clone, Debug)]
enum Answer {
    Devices(Vec<DeviceRecord>),
    Empty,
    Down,
    Garbage,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        2 => prop::collection::vec(record(), 1..4).prop_map(Answer::Devices),
        1 => Just(Answer::Empty),
        2 => Just(Answer::Down),
        1 => Just(Answer::Garbage),
    ]
}

#[derive(Clone)]
struct ScriptedConsole(Arc<Mutex<VecDeque<Answer>>>);

impl ScriptedConsole {
    fn next(&self) -> Result<Vec<DeviceRecord>, SourceError> {
        match self.0.lock().expect("script").pop_front() {
            Some(Answer::Devices(records)) => Ok(records),
            Some(Answer::Empty) => Ok(Vec::new()),
            Some(Answer::Garbage) => Err(SourceError::Garbage("truncated page".into())),
            Some(Answer::Down) | None => Err(SourceError::Status { status: 503 }),
        }
    }
}

impl DeviceSource for ScriptedConsole {
    async fn full(&self) -> Result<Vec<Arc<DeviceRecord>>, SourceError> {
        Ok(self.next()?.into_iter().map(Arc::new).collect())
    }

    async fn changed_since(&self, _since: SystemTime) -> Result<Vec<DeviceRecord>, SourceError> {
        self.next()
    }
}

fn ids(compliance: &Compliance) -> BTreeSet<String> {
    IDS.iter()
        .filter(|id| compliance.view().device(id).is_some())
        .map(|id| (*id).to_owned())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The real sync loop against a console that answers as scripted, with device events in
    /// between (upserts only: a deletion event may empty the view legitimately): once the view
    /// holds a device it never becomes empty, and once the console is down for good the view
    /// changes only by the events.
    #[test]
    fn failing_console_never_empties_the_view(
        script in prop::collection::vec(answer(), 0..8),
        events in prop::collection::vec(prop::option::of(record()), 0..8),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let result: Result<(), TestCaseError> = runtime.block_on(async {
            let compliance = Compliance::new(PolicySettings::default());
            let console = ScriptedConsole(Arc::new(Mutex::new(script.into_iter().collect())));
            let settings = SyncSettings {
                full_sync_interval: Duration::from_secs(10),
                delta_sync_interval: Duration::from_secs(1),
                min_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(2),
            };
            let syncer = Syncer::new(compliance.clone(), console.clone(), settings);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let check = async {
                let mut ever_loaded = false;
                let mut settled: Option<BTreeSet<String>> = None;
                for event in events.iter().chain(std::iter::repeat_n(&None, 24)) {
                    if let Some(record) = event {
                        compliance.apply(vec![Change::Upsert(record.clone())], ChangeSource::ChangeEvent);
                        if let Some(settled) = settled.as_mut() {
                            settled.insert(record.device_id.as_str().to_owned());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let now = ids(&compliance);
                    ever_loaded |= !now.is_empty();
                    prop_assert!(!(ever_loaded && now.is_empty()), "the view was emptied");
                    if console.0.lock().expect("script").is_empty() {
                        // Down for good from here: only events may change the view.
                        match &settled {
                            Some(expected) => prop_assert_eq!(&now, expected),
                            None => settled = Some(now),
                        }
                    }
                }
                Ok(())
            };
            let run = syncer.run(async {
                let _ = stopped.await;
            });
            let (checked, ()) = tokio::join!(
                async {
                    let checked = check.await;
                    let _ = stop.send(());
                    checked
                },
                run
            );
            checked
        });
        result?;
    }
}
