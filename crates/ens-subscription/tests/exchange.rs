//! The client against the Exchange stand-in: subscriptions of every kind, events, items,
//! unsubscribing, and the mapping of Exchange's errors.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ens_subscription::EwsError;
use ens_subscription::push::{PushAnswer, PushReceiver};
use ens_subscription::soap::{
    EventKind, GetEvents, GetItem, GetStreamingEvents, Notification, Subscribe, Unsubscribe,
};
use futures_util::StreamExt as _;
use seg_testbed::harness::{local_listener, wait_until, within};
use support::{DEADLINE, client, exchange};

#[tokio::test]
async fn streaming_new_mail_arrives_and_get_item_gives_its_subject_and_sender() {
    let server = exchange(Duration::from_secs(60)).await;
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    let subscription = alice.subscribe(Subscribe::streaming()).await.unwrap();
    assert_eq!(subscription.watermark, None);
    let mut stream = alice
        .get_streaming_events(GetStreamingEvents::new(&subscription.subscription_id, 1))
        .await
        .unwrap();
    let delivered = server
        .deliver("alice@test.local", "Quarterly <numbers> & more")
        .unwrap();

    let notification = within(DEADLINE, "the NewMail notification", stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(notification.subscription_id, subscription.subscription_id);
    let item_id = notification.new_mail().next().unwrap().clone();
    assert_eq!(item_id.id, delivered.id);

    let items = alice.get_item(GetItem::new(item_id)).await.unwrap();
    assert_eq!(
        items[0].subject.as_deref(),
        Some("Quarterly <numbers> & more")
    );
    let from = items[0].from.clone().unwrap();
    assert_eq!(from.name.as_deref(), Some("Testbed Sender"));
    assert_eq!(from.address.as_deref(), Some("sender@test.local"));
    assert!(items[0].received.is_some());

    let requests = server.requests();
    let get_item = requests
        .iter()
        .find(|r| r.operation.as_deref() == Some("GetItem"))
        .unwrap();
    assert_eq!(get_item.headers["x-device-id"], "EASDEV1");
}

#[tokio::test]
async fn a_stream_ends_cleanly_with_connection_status_closed() {
    let server = exchange(Duration::from_millis(300)).await;
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    let subscription = alice.subscribe(Subscribe::streaming()).await.unwrap();
    let mut stream = alice
        .get_streaming_events(GetStreamingEvents::new(subscription.subscription_id, 1))
        .await
        .unwrap();
    let end = within(DEADLINE, "the end of the stream", stream.next())
        .await
        .unwrap();
    assert!(end.is_none(), "{end:?}");
    assert!(stream.is_closed());
    assert!(stream.keepalives() >= 1);
}

#[tokio::test]
async fn pull_subscription_returns_new_mail_from_get_events() {
    let server = exchange(Duration::from_secs(60)).await;
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    let subscription = alice.subscribe(Subscribe::pull(10)).await.unwrap();
    let watermark = subscription.watermark.clone().unwrap();

    let idle = alice
        .get_events(GetEvents::new(&subscription.subscription_id, &watermark))
        .await
        .unwrap();
    assert!(idle.is_heartbeat());

    let delivered = server.deliver("alice@test.local", "Pulled").unwrap();
    let events = alice
        .get_events(GetEvents::new(
            &subscription.subscription_id,
            idle.last_watermark().unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(events.events.len(), 1);
    assert_eq!(events.events[0].kind, EventKind::NewMail);
    assert_eq!(events.new_mail().next().unwrap().id, delivered.id);
    assert!(!events.more_events);
}

#[tokio::test]
async fn push_notifications_reach_the_receiver_and_unsubscribe_ends_the_subscription() {
    let server = exchange(Duration::from_secs(60)).await;
    let received: Arc<Mutex<Vec<(String, Notification)>>> = Arc::default();
    let record = received.clone();
    let receiver = PushReceiver::new(move |uri: &http::Uri, notification: Notification| {
        let heartbeat = notification.is_heartbeat();
        record
            .lock()
            .unwrap()
            .push((uri.path().to_string(), notification));
        // Keep the subscription for new mail; end it at the first heartbeat after it.
        if heartbeat {
            PushAnswer::Unsubscribe
        } else {
            PushAnswer::Ok
        }
    });
    let addr = support::serve(
        local_listener().await.unwrap(),
        tower::util::MapRequest::new(receiver, |r| r),
    );
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    let callback = format!("http://{addr}/push/opaque-token-1");
    alice.subscribe(Subscribe::push(callback, 1)).await.unwrap();
    assert_eq!(server.subscription_count(), 1);

    let delivered = server.deliver("alice@test.local", "Pushed").unwrap();
    wait_until(DEADLINE, "the pushed NewMail", || {
        let found = received
            .lock()
            .unwrap()
            .iter()
            .any(|(_, n)| n.new_mail().any(|id| id.id == delivered.id));
        async move { found }
    })
    .await
    .unwrap();
    assert_eq!(received.lock().unwrap()[0].0, "/push/opaque-token-1");
    assert_eq!(server.subscription_count(), 1);
}

#[tokio::test]
async fn answering_unsubscribe_to_a_push_ends_the_subscription_on_the_server() {
    let server = exchange(Duration::from_secs(60)).await;
    let receiver = PushReceiver::new(|_: &http::Uri, _: Notification| PushAnswer::Unsubscribe);
    let addr = support::serve(local_listener().await.unwrap(), receiver);
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    alice
        .subscribe(Subscribe::push(format!("http://{addr}/push/t"), 1))
        .await
        .unwrap();
    assert_eq!(server.subscription_count(), 1);
    server.deliver("alice@test.local", "Unwanted").unwrap();
    wait_until(DEADLINE, "the subscription to end", || {
        let count = server.subscription_count();
        async move { count == 0 }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn unsubscribe_ends_a_subscription_and_later_calls_say_not_found() {
    let server = exchange(Duration::from_secs(60)).await;
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    let subscription = alice.subscribe(Subscribe::pull(10)).await.unwrap();
    alice
        .unsubscribe(Unsubscribe::new(&subscription.subscription_id))
        .await
        .unwrap();
    assert_eq!(server.subscription_count(), 0);
    let error = alice
        .get_events(GetEvents::new(
            &subscription.subscription_id,
            subscription.watermark.unwrap(),
        ))
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::SubscriptionNotFound), "{error:?}");
}

#[tokio::test]
async fn unknown_subscriptions_are_not_found_everywhere() {
    let server = exchange(Duration::from_secs(60)).await;
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    let error = alice
        .unsubscribe(Unsubscribe::new("AAAAAAAAAAAAAAAA"))
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::SubscriptionNotFound), "{error:?}");
    let mut stream = alice
        .get_streaming_events(GetStreamingEvents::new("AAAAAAAAAAAAAAAA", 1))
        .await
        .unwrap();
    let first = within(DEADLINE, "the stream's answer", stream.next())
        .await
        .unwrap();
    assert!(
        matches!(first, Some(Err(EwsError::SubscriptionNotFound))),
        "{first:?}"
    );
}

#[tokio::test]
async fn another_users_subscription_is_access_denied() {
    let server = exchange(Duration::from_secs(60)).await;
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    let bob = client(&server.url(), "bob@test.local", "EASDEV2");
    let subscription = alice.subscribe(Subscribe::pull(10)).await.unwrap();
    let error = bob
        .unsubscribe(Unsubscribe::new(subscription.subscription_id))
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::AccessDenied { .. }), "{error:?}");
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized() {
    let server = exchange(Duration::from_secs(60)).await;
    let mallory = ens_subscription::EwsClient::http(server.url().parse().unwrap())
        .header(
            "authorization",
            &seg_testbed::harness::basic_auth("alice@test.local", "nope"),
        )
        .unwrap();
    let error = mallory.subscribe(Subscribe::streaming()).await.unwrap_err();
    assert!(matches!(error, EwsError::Unauthorized), "{error:?}");
}

#[tokio::test]
async fn a_bad_watermark_is_an_ews_error_with_its_code() {
    let server = exchange(Duration::from_secs(60)).await;
    let alice = client(&server.url(), "alice@test.local", "EASDEV1");
    let error = alice
        .subscribe(Subscribe::pull(10).watermark(Some("bm90IG91cnM=".into())))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("ErrorInvalidWatermark"), "{error:?}");
}
