//! The per-device lifecycle against the Exchange stand-in behind a compliance gate: new mail
//! flows, a block stops the device and an unblock resumes it.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ens_subscription::EwsClient;
use ens_subscription::lifecycle::{
    self, DeviceEvent, DeviceState, LifecycleConfig, Mode, SubscriptionHandle,
};
use ens_subscription::push::{PushAnswer, PushReceiver};
use ens_subscription::soap::{GetItem, Notification};
use seg_testbed::harness::{TEST_PASSWORD, basic_auth, local_listener, wait_until, within};
use support::{DEADLINE, exchange, gated};
use tokio::sync::mpsc;

fn config(mode: Mode) -> LifecycleConfig {
    let mut config = LifecycleConfig::new(mode);
    config.minute = Duration::from_millis(200);
    config.min_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    config.probe_min = Duration::from_millis(50);
    config.probe_max = Duration::from_millis(400);
    config
}

/// Waits for the first event satisfying `wanted`, skipping others.
async fn next_event(
    events: &mut mpsc::UnboundedReceiver<DeviceEvent>,
    what: &str,
    wanted: impl Fn(&DeviceEvent) -> bool,
) -> DeviceEvent {
    within(DEADLINE, what, async {
        loop {
            let event = events.recv().await.expect("the lifecycle ended");
            if wanted(&event) {
                return event;
            }
        }
    })
    .await
    .unwrap()
}

fn is_state(state: DeviceState) -> impl Fn(&DeviceEvent) -> bool {
    move |e| *e == DeviceEvent::State(state.clone())
}

fn is_new_mail(id: String) -> impl Fn(&DeviceEvent) -> bool {
    move |e| matches!(e, DeviceEvent::Notification(n) if n.new_mail().any(|i| i.id == id))
}

fn blocked() -> DeviceState {
    DeviceState::Blocked {
        reason: "device-wiped".into(),
    }
}

#[tokio::test]
async fn streaming_device_is_blocked_by_a_refused_stream_and_resumes_when_the_gate_opens() {
    let server = exchange(Duration::from_millis(300)).await;
    let gate = Arc::new(AtomicBool::new(false));
    let client = EwsClient::new(gated(gate.clone()), server.url().parse().unwrap())
        .header("x-device-id", "EASDEV1")
        .unwrap()
        .header(
            "authorization",
            &basic_auth("alice@test.local", TEST_PASSWORD),
        )
        .unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let handle = lifecycle::spawn(
        client.clone(),
        config(Mode::Streaming {
            connection_timeout_minutes: 1,
        }),
        tx,
    );
    next_event(&mut events, "active", is_state(DeviceState::Active)).await;
    wait_until(DEADLINE, "the stream to open", || {
        let open = server
            .requests()
            .iter()
            .any(|r| r.operation.as_deref() == Some("GetStreamingEvents"));
        async move { open }
    })
    .await
    .unwrap();
    let first = server
        .deliver("alice@test.local", "Before the wipe")
        .unwrap();
    let DeviceEvent::Notification(notification) =
        next_event(&mut events, "the first mail", is_new_mail(first.id.clone())).await
    else {
        unreachable!()
    };
    let item_id = notification.new_mail().next().unwrap().clone();
    let items = client.get_item(GetItem::new(item_id)).await.unwrap();
    assert_eq!(items[0].subject.as_deref(), Some("Before the wipe"));

    // The stand-in closes each stream after 300 ms; the reopening request meets the gate.
    gate.store(true, Ordering::SeqCst);
    next_event(&mut events, "blocked", is_state(blocked())).await;
    assert_eq!(handle.state(), blocked());

    gate.store(false, Ordering::SeqCst);
    next_event(&mut events, "active again", is_state(DeviceState::Active)).await;
    let second = loop {
        // A delivery may land before the new stream opens; streaming replays nothing, so
        // deliver until one arrives.
        let delivered = server
            .deliver("alice@test.local", "After the unblock")
            .unwrap();
        let got = within(Duration::from_millis(500), "mail after unblock", async {
            loop {
                match events.recv().await {
                    Some(event) if is_new_mail(delivered.id.clone())(&event) => return,
                    Some(_) => {}
                    None => panic!("the lifecycle ended"),
                }
            }
        })
        .await;
        if got.is_ok() {
            break delivered;
        }
    };
    assert!(!second.id.is_empty());
    handle.stop().await;
}

#[tokio::test]
async fn pull_device_blocked_by_the_gateway_callback_unsubscribes_and_resumes_on_unblock() {
    let server = exchange(Duration::from_secs(60)).await;
    let client = support::client(&server.url(), "alice@test.local", "EASDEV1");
    let (tx, mut events) = mpsc::unbounded_channel();
    let handle = lifecycle::spawn(
        client,
        LifecycleConfig {
            probe_min: Duration::from_secs(60),
            probe_max: Duration::from_secs(60),
            ..config(Mode::Pull {
                timeout_minutes: 10,
                poll_interval: Duration::from_millis(30),
            })
        },
        tx,
    );
    next_event(&mut events, "active", is_state(DeviceState::Active)).await;
    let first = server.deliver("alice@test.local", "Pulled").unwrap();
    next_event(&mut events, "the pulled mail", is_new_mail(first.id)).await;

    handle.block("device-wiped");
    next_event(&mut events, "blocked", is_state(blocked())).await;
    assert_eq!(server.subscription_count(), 0);
    assert_eq!(handle.subscription_id(), None);

    // Probes are a minute apart here: only the unblock call can bring it back in time.
    handle.unblock();
    next_event(&mut events, "active again", is_state(DeviceState::Active)).await;
    let second = server.deliver("alice@test.local", "Pulled again").unwrap();
    next_event(&mut events, "mail after unblock", is_new_mail(second.id)).await;
    handle.stop().await;
    assert_eq!(server.subscription_count(), 0);
}

#[tokio::test]
async fn pull_device_refused_by_the_gate_probes_until_it_opens() {
    let server = exchange(Duration::from_secs(60)).await;
    let gate = Arc::new(AtomicBool::new(true));
    let client = EwsClient::new(gated(gate.clone()), server.url().parse().unwrap())
        .header(
            "authorization",
            &basic_auth("alice@test.local", TEST_PASSWORD),
        )
        .unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let handle = lifecycle::spawn(
        client,
        config(Mode::Pull {
            timeout_minutes: 10,
            poll_interval: Duration::from_millis(30),
        }),
        tx,
    );
    next_event(&mut events, "blocked", is_state(blocked())).await;
    assert_eq!(server.subscription_count(), 0);
    gate.store(false, Ordering::SeqCst);
    next_event(
        &mut events,
        "active after a probe",
        is_state(DeviceState::Active),
    )
    .await;
    assert_eq!(server.subscription_count(), 1);
    drop(handle);
}

#[tokio::test]
async fn push_device_answers_unsubscribe_once_blocked() {
    let server = exchange(Duration::from_secs(60)).await;
    let slot: Arc<OnceLock<SubscriptionHandle>> = Arc::default();
    let for_receiver = slot.clone();
    let receiver = PushReceiver::new(move |_: &http::Uri, notification: Notification| {
        match for_receiver.get() {
            Some(handle) => handle.on_push(notification),
            None => PushAnswer::Unsubscribe,
        }
    });
    let addr = support::serve(local_listener().await.unwrap(), receiver);
    let client = support::client(&server.url(), "alice@test.local", "EASDEV1");
    let (tx, mut events) = mpsc::unbounded_channel();
    let handle = lifecycle::spawn(
        client,
        config(Mode::Push {
            url: format!("http://{addr}/push/token-1"),
            status_frequency_minutes: 30,
        }),
        tx,
    );
    let handle = slot.get_or_init(|| handle);
    next_event(&mut events, "active", is_state(DeviceState::Active)).await;
    let first = server.deliver("alice@test.local", "Pushed").unwrap();
    next_event(&mut events, "the pushed mail", is_new_mail(first.id)).await;
    assert_eq!(server.subscription_count(), 1);

    handle.block("device-wiped");
    next_event(&mut events, "blocked", is_state(blocked())).await;
    // Exchange calls ENS directly: the next post is answered Unsubscribe, which ends it.
    server
        .deliver("alice@test.local", "After the wipe")
        .unwrap();
    wait_until(DEADLINE, "the push subscription to end", || {
        let count = server.subscription_count();
        async move { count == 0 }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_silent_push_subscription_is_recreated() {
    let server = exchange(Duration::from_secs(60)).await;
    // A callback nobody listens on: Exchange's posts fail, so no heartbeat reaches ENS.
    let addr = seg_testbed::harness::reserve_port().unwrap();
    let client = support::client(&server.url(), "alice@test.local", "EASDEV1");
    let (tx, mut events) = mpsc::unbounded_channel();
    let handle = lifecycle::spawn(
        client,
        config(Mode::Push {
            url: format!("http://{addr}/push/token-2"),
            status_frequency_minutes: 1,
        }),
        tx,
    );
    next_event(&mut events, "active", is_state(DeviceState::Active)).await;
    let first = handle.subscription_id().unwrap();
    wait_until(DEADLINE, "a new subscription", || {
        let current = handle.subscription_id();
        let first = first.clone();
        async move { current.is_some_and(|c| c != first) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_device_started_blocked_subscribes_only_when_unblocked() {
    let server = exchange(Duration::from_secs(60)).await;
    let client = support::client(&server.url(), "alice@test.local", "EASDEV1");
    let (tx, mut events) = mpsc::unbounded_channel();
    let handle = lifecycle::spawn(
        client,
        LifecycleConfig {
            initially_blocked: Some("device-wiped".into()),
            probe_min: Duration::from_secs(60),
            ..config(Mode::streaming())
        },
        tx,
    );
    next_event(&mut events, "blocked", is_state(blocked())).await;
    assert!(server.requests().is_empty());
    handle.unblock();
    next_event(&mut events, "active", is_state(DeviceState::Active)).await;
    assert_eq!(server.subscription_count(), 1);
    handle.stop().await;
}
