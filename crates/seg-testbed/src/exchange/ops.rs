//! The EWS operations: each reads the parsed request, consults or changes the store, and
//! writes the response Exchange would.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use rand::RngCore as _;

use super::auth::Principal;
use super::responses::{self, Events};
use super::soap::{
    self, FolderRef, Operation, RequestError, Shape, SubscribeRequest, SubscriptionKind,
};
use super::subscriptions::{Store, Subscription, Waker, mailbox_key};
use super::xml::Element;
use super::{AFFINITY_COOKIE, Body, Shared, mailbox, push, respond, streaming};

/// The most events one `GetEvents` response carries; `MoreEvents` tells the client to ask again.
const MAX_EVENTS_PER_RESPONSE: usize = 50;

/// Serves one authenticated EWS request.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    principal: &Principal,
    headers: &HeaderMap,
    envelope: Result<Element, String>,
) -> Response<Body> {
    let request = match envelope
        .map_err(RequestError::SchemaValidation)
        .and_then(|envelope| soap::parse_request(&envelope))
    {
        Ok(request) => request,
        Err(error) => return fault(shared, &error),
    };
    match request.operation {
        Operation::GetFolder { folders, shape } => {
            let messages = get_folder(&shared.store(), principal, &folders, &shape);
            document(shared, "GetFolder", &messages)
        }
        Operation::GetItem { items, shape } => {
            let messages = get_item(&shared.store(), principal, &items, &shape);
            document(shared, "GetItem", &messages)
        }
        Operation::Subscribe(subscribe_request) => {
            subscribe(shared, principal, headers, subscribe_request)
        }
        Operation::GetEvents {
            subscription_id,
            watermark,
        } => {
            let message = get_events(shared, principal, headers, &subscription_id, &watermark);
            document(shared, "GetEvents", &[message])
        }
        Operation::GetStreamingEvents {
            subscription_ids,
            connection_timeout,
        } => get_streaming_events(
            shared,
            principal,
            headers,
            subscription_ids,
            connection_timeout,
        ),
        Operation::Unsubscribe { subscription_id } => {
            let message = unsubscribe(shared, principal, headers, &subscription_id);
            document(shared, "Unsubscribe", &[message])
        }
    }
}

/// A SOAP fault with HTTP 500, as Exchange answers requests it cannot read.
fn fault(shared: &Shared, error: &RequestError) -> Response<Body> {
    respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        "text/xml; charset=utf-8",
        responses::fault(
            &shared.config.server_version,
            error.code(),
            &error.message(),
        ),
    )
}

/// A 200 response holding `<m:{op}Response>` with these messages.
fn document(shared: &Shared, op: &str, messages: &[String]) -> Response<Body> {
    respond(
        StatusCode::OK,
        "text/xml; charset=utf-8",
        responses::envelope(
            &shared.config.server_version,
            &responses::response(op, messages),
        ),
    )
}

/// Resolves a folder reference within the principal's own mailbox, or says which error
/// Exchange returns: (mailbox key, folder index) or (code, text).
fn resolve_folder(
    store: &Store,
    principal: &Principal,
    folder: &FolderRef,
) -> Result<(String, usize), (&'static str, String)> {
    let own = mailbox_key(&principal.mailbox);
    match folder {
        FolderRef::Distinguished { id, mailbox } => {
            let key = mailbox.as_deref().map(mailbox_key).unwrap_or(own.clone());
            let Some(target) = store.mailboxes.get(&key) else {
                return Err((
                    "ErrorNonExistentMailbox",
                    format!("No mailbox with SMTP address {key} was found."),
                ));
            };
            if key != own {
                return Err((
                    "ErrorAccessDenied",
                    "Access is denied. Check credentials and try again.".into(),
                ));
            }
            target
                .distinguished(id)
                .map(|index| (key, index))
                .ok_or_else(|| {
                    (
                        "ErrorFolderNotFound",
                        "The specified folder could not be found in the store.".into(),
                    )
                })
        }
        FolderRef::Id(id) => {
            if !mailbox::is_well_formed_id(id) {
                return Err(("ErrorInvalidIdMalformed", "Id is malformed.".into()));
            }
            store
                .mailboxes
                .get(&own)
                .and_then(|m| m.folder_by_id(id))
                .map(|index| (own, index))
                .ok_or_else(|| {
                    (
                        "ErrorFolderNotFound",
                        "The specified folder could not be found in the store.".into(),
                    )
                })
        }
    }
}

fn get_folder(
    store: &Store,
    principal: &Principal,
    folders: &[FolderRef],
    shape: &Shape,
) -> Vec<String> {
    folders
        .iter()
        .map(|folder| match resolve_folder(store, principal, folder) {
            Ok((key, index)) => {
                let mailbox = &store.mailboxes[&key];
                let folder =
                    responses::folder(&mailbox.folders[index], mailbox.counts(index), shape);
                responses::success("GetFolder", &format!("<m:Folders>{folder}</m:Folders>"))
            }
            Err((code, text)) => responses::error("GetFolder", code, &text),
        })
        .collect()
}

fn get_item(store: &Store, principal: &Principal, items: &[String], shape: &Shape) -> Vec<String> {
    let mailbox = store.mailboxes.get(&mailbox_key(&principal.mailbox));
    items
        .iter()
        .map(|id| {
            if !mailbox::is_well_formed_id(id) {
                return responses::error("GetItem", "ErrorInvalidIdMalformed", "Id is malformed.");
            }
            match mailbox.and_then(|m| m.item(id).map(|item| (m, item))) {
                Some((mailbox, item)) => {
                    let message = responses::message(
                        item,
                        &mailbox.folders[item.folder],
                        &mailbox.address,
                        shape,
                    );
                    responses::success("GetItem", &format!("<m:Items>{message}</m:Items>"))
                }
                None => responses::error(
                    "GetItem",
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                ),
            }
        })
        .collect()
}

/// Whether the request asks for back-end affinity: `X-AnchorMailbox` and
/// `X-PreferServerAffinity: true`. Returns the anchor mailbox.
fn affinity_anchor(headers: &HeaderMap) -> Option<&str> {
    let prefer = headers
        .get("x-preferserveraffinity")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let anchor = headers
        .get("x-anchormailbox")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())?;
    prefer.then_some(anchor)
}

/// Whether the request carries the affinity cookie a subscription was created with.
fn carries_affinity(headers: &HeaderMap, subscription: &Subscription) -> bool {
    let Some(expected) = &subscription.affinity else {
        return true;
    };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == AFFINITY_COOKIE && value == expected)
}

fn new_subscription_id() -> String {
    let mut bytes = [0u8; 36];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = 0x1d;
    STANDARD.encode(bytes)
}

fn subscribe(
    shared: &Arc<Shared>,
    principal: &Principal,
    headers: &HeaderMap,
    request: SubscribeRequest,
) -> Response<Body> {
    let affinity = affinity_anchor(headers).map(|anchor| shared.affinity_cookie(anchor));
    let result = {
        let mut store = shared.store();
        create_subscription(shared, &mut store, principal, request, affinity.clone())
    };
    let message = match result {
        Ok((id, watermark)) => {
            let watermark = watermark
                .map(|w| format!("<m:Watermark>{}</m:Watermark>", responses::watermark(w)))
                .unwrap_or_default();
            responses::success(
                "Subscribe",
                &format!("<m:SubscriptionId>{id}</m:SubscriptionId>{watermark}"),
            )
        }
        Err((code, text)) => responses::error("Subscribe", code, &text),
    };
    let mut response = document(shared, "Subscribe", &[message]);
    if let Some(cookie) = affinity
        && let Ok(value) = HeaderValue::from_str(&format!("{AFFINITY_COOKIE}={cookie}; path=/"))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Creates the subscription; returns its id and, for pull and push, its first watermark.
fn create_subscription(
    shared: &Arc<Shared>,
    store: &mut Store,
    principal: &Principal,
    request: SubscribeRequest,
    affinity: Option<String>,
) -> Result<(String, Option<u64>), (&'static str, String)> {
    let mut folders = Vec::new();
    for folder in &request.folders {
        let (key, index) = resolve_folder(store, principal, folder)?;
        folders.push(store.mailboxes[&key].folders[index].id.clone());
    }
    let key = mailbox_key(&principal.mailbox);
    let current = store
        .mailboxes
        .get(&key)
        .map(|m| m.event_seq)
        .ok_or_else(|| {
            (
                "ErrorNonExistentMailbox",
                format!("No mailbox with SMTP address {key} was found."),
            )
        })?;
    let start = match request.watermark.as_deref() {
        Some(text) => responses::parse_watermark(text)
            .filter(|seq| *seq <= current)
            .ok_or_else(|| {
                (
                    "ErrorInvalidWatermark",
                    "The watermark is invalid.".to_string(),
                )
            })?,
        None => current,
    };
    let push = match &request.kind {
        SubscriptionKind::Push {
            status_frequency,
            url,
        } => {
            let uri = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
                })
                .ok_or_else(|| {
                    (
                        "ErrorInvalidPushSubscriptionUrl",
                        "The push subscription URL is invalid.".to_string(),
                    )
                })?;
            Some((uri, shared.config.minute * *status_frequency))
        }
        _ => None,
    };
    let id = new_subscription_id();
    let waker = push.as_ref().map(|_| Waker {
        token: shared.next_token(),
        notify: Arc::new(tokio::sync::Notify::new()),
    });
    let watermark = match request.kind {
        SubscriptionKind::Streaming => None,
        _ => Some(start),
    };
    store.subscriptions.insert(
        id.clone(),
        Subscription {
            mailbox: key,
            kind: request.kind,
            last_poll: Instant::now(),
            all_folders: request.all_folders,
            folders,
            event_types: request.event_types,
            queue: Default::default(),
            acked: start,
            affinity,
            waker: waker.clone(),
        },
    );
    if let (Some((uri, frequency)), Some(waker)) = (push, waker) {
        push::spawn(shared.clone(), id.clone(), uri, frequency, waker.notify);
    }
    Ok((id, watermark))
}

/// Finds a subscription the request may use, or the error Exchange returns.
fn usable<'a>(
    store: &'a mut Store,
    principal: &Principal,
    headers: &HeaderMap,
    id: &str,
) -> Result<&'a mut Subscription, (&'static str, String)> {
    let not_found = || {
        (
            "ErrorSubscriptionNotFound",
            "The specified subscription was not found.".to_string(),
        )
    };
    let subscription = store.subscriptions.get_mut(id).ok_or_else(not_found)?;
    // Without the affinity cookie the request would reach another back-end server, which
    // does not know the subscription.
    if !carries_affinity(headers, subscription) {
        return Err(not_found());
    }
    if subscription.mailbox != mailbox_key(&principal.mailbox) {
        return Err((
            "ErrorSubscriptionAccessDenied",
            "The subscription can only be accessed by the account that created it.".into(),
        ));
    }
    Ok(subscription)
}

fn get_events(
    shared: &Shared,
    principal: &Principal,
    headers: &HeaderMap,
    id: &str,
    watermark: &str,
) -> String {
    let mut store = shared.store();
    let result = (|| {
        let current = store
            .mailboxes
            .get(&mailbox_key(&principal.mailbox))
            .map(|m| m.event_seq)
            .unwrap_or(0);
        let subscription = usable(&mut store, principal, headers, id)?;
        let SubscriptionKind::Pull { timeout } = subscription.kind else {
            return Err((
                "ErrorInvalidPullSubscriptionId",
                "The subscription is not a pull subscription.".into(),
            ));
        };
        if subscription.last_poll.elapsed() > shared.config.minute * timeout {
            return Err((
                "ErrorExpiredSubscription",
                "The subscription has expired.".into(),
            ));
        }
        let seq = responses::parse_watermark(watermark)
            .filter(|seq| *seq <= current)
            .ok_or_else(|| {
                (
                    "ErrorInvalidWatermark",
                    "The watermark is invalid.".to_string(),
                )
            })?;
        subscription.acknowledge(seq);
        subscription.last_poll = Instant::now();
        let events: Vec<_> = subscription
            .queue
            .iter()
            .take(MAX_EVENTS_PER_RESPONSE)
            .cloned()
            .collect();
        let more = subscription.queue.len() > events.len();
        let content = if events.is_empty() {
            Events::Status(subscription.acked)
        } else {
            Events::Some(&events)
        };
        Ok(responses::notification(id, Some(seq), Some(more), content))
    })();
    match result {
        Ok(notification) => responses::success("GetEvents", &notification),
        Err((code, text)) => {
            if code == "ErrorExpiredSubscription" {
                store.remove(id);
            }
            responses::error("GetEvents", code, &text)
        }
    }
}

fn get_streaming_events(
    shared: &Arc<Shared>,
    principal: &Principal,
    headers: &HeaderMap,
    ids: Vec<String>,
    connection_timeout: u32,
) -> Response<Body> {
    let check = {
        let mut store = shared.store();
        ids.iter().try_for_each(|id| {
            let subscription = usable(&mut store, principal, headers, id)?;
            match subscription.kind {
                SubscriptionKind::Streaming => Ok(()),
                _ => Err((
                    "ErrorInvalidSubscription",
                    "The subscription is not a streaming subscription.".to_string(),
                )),
            }
        })
    };
    if let Err((code, text)) = check {
        return document(
            shared,
            "GetStreamingEvents",
            &[responses::error("GetStreamingEvents", code, &text)],
        );
    }
    let timeout = shared.config.minute * connection_timeout;
    let mut response = Response::new(streaming::start(shared.clone(), ids, timeout));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    response
}

fn unsubscribe(shared: &Shared, principal: &Principal, headers: &HeaderMap, id: &str) -> String {
    let mut store = shared.store();
    match usable(&mut store, principal, headers, id) {
        Ok(_) => {
            store.remove(id);
            responses::success("Unsubscribe", "")
        }
        Err((code, text)) => responses::error("Unsubscribe", code, &text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn affinity_needs_both_the_anchor_and_the_preference() {
        assert_eq!(
            affinity_anchor(&headers(&[
                ("x-anchormailbox", "alice@test.local"),
                ("x-preferserveraffinity", "True")
            ])),
            Some("alice@test.local")
        );
        assert_eq!(
            affinity_anchor(&headers(&[("x-anchormailbox", "a@b")])),
            None
        );
        assert_eq!(
            affinity_anchor(&headers(&[("x-preferserveraffinity", "true")])),
            None
        );
    }

    #[test]
    fn the_affinity_cookie_is_found_among_other_cookies() {
        let subscription = Subscription {
            mailbox: "a@b".into(),
            kind: SubscriptionKind::Streaming,
            last_poll: Instant::now(),
            all_folders: true,
            folders: vec![],
            event_types: vec![],
            queue: Default::default(),
            acked: 0,
            affinity: Some("EXCH01~42".into()),
            waker: None,
        };
        assert!(carries_affinity(
            &headers(&[("cookie", "a=1; X-BackEndOverrideCookie=EXCH01~42; b=2")]),
            &subscription
        ));
        assert!(carries_affinity(
            &headers(&[
                ("cookie", "a=1"),
                ("cookie", "X-BackEndOverrideCookie=EXCH01~42")
            ]),
            &subscription
        ));
        assert!(!carries_affinity(
            &headers(&[("cookie", "X-BackEndOverrideCookie=EXCH02~42")]),
            &subscription
        ));
        assert!(!carries_affinity(&HeaderMap::new(), &subscription));
    }
}
