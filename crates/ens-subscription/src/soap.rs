//! EWS SOAP as a client writes and reads it: the request documents of `Subscribe`,
//! `GetEvents`, `GetStreamingEvents`, `Unsubscribe` and `GetItem`, and the parsers of their
//! responses, of streaming chunks, of `SendNotification` and of SOAP faults.
//!
//! Requests follow Microsoft's EWS reference (element order of the schema, `m:` messages and
//! `t:` types, a `RequestServerVersion` header). Responses are read by namespace URI and local
//! name, never by prefix, and every parser returns an error rather than panicking on hostile
//! input.
//!
//! ```
//! use ens_subscription::soap::{self, EventType, FolderId, Subscribe};
//!
//! let request = Subscribe::pull(10).event_types([EventType::NewMail]);
//! let document = soap::envelope(soap::DEFAULT_SERVER_VERSION, &request.to_xml());
//! assert!(document.contains(r#"<t:DistinguishedFolderId Id="inbox"/>"#));
//! assert!(document.contains("<t:Timeout>10</t:Timeout>"));
//!
//! let response = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
//!   <m:SubscribeResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages>
//!   <m:SubscribeResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
//!   <m:SubscriptionId>sub-1</m:SubscriptionId><m:Watermark>wm-1</m:Watermark>
//!   </m:SubscribeResponseMessage></m:ResponseMessages></m:SubscribeResponse></s:Body></s:Envelope>"#;
//! let subscription = Subscribe::parse_response(response)?;
//! assert_eq!(subscription.subscription_id, "sub-1");
//! assert_eq!(subscription.watermark.as_deref(), Some("wm-1"));
//! # let _ = FolderId::inbox();
//! # Ok::<(), ens_subscription::EwsError>(())
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use quick_xml::escape::escape;
use serde::{Deserialize, Serialize};

use crate::error::EwsError;
use crate::xml::{self, Element};

/// The SOAP 1.1 envelope namespace.
pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The EWS messages namespace (`m:`).
pub const MESSAGES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
/// The EWS types namespace (`t:`).
pub const TYPES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
/// The EWS errors namespace, used in SOAP fault details.
pub const ERRORS_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";
/// The `RequestServerVersion` sent by default: streaming needs Exchange 2010 SP1 or later, and
/// Exchange 2013 is what ENS2 asks for.
pub const DEFAULT_SERVER_VERSION: &str = "Exchange2013";

/// A complete request document: the SOAP envelope with a `RequestServerVersion` header around
/// `operation`, an element written with the `m:` and `t:` prefixes.
pub fn envelope(server_version: &str, operation: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_NS}" xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><soap:Header><t:RequestServerVersion Version="{}"/></soap:Header><soap:Body>{operation}</soap:Body></soap:Envelope>"#,
        escape(server_version)
    )
}

// ---------------------------------------------------------------------------------------------
// Request types

/// A folder to watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FolderId {
    /// `t:DistinguishedFolderId`: a well-known folder (`inbox`, `msgfolderroot`, …),
    /// optionally of another mailbox.
    Distinguished {
        /// The well-known name.
        id: String,
        /// The mailbox's SMTP address, when not the caller's own.
        mailbox: Option<String>,
    },
    /// `t:FolderId`: a folder by its id.
    Id {
        /// The `Id`.
        id: String,
        /// The `ChangeKey`, if known.
        change_key: Option<String>,
    },
}

impl FolderId {
    /// The caller's Inbox, the default of every subscription.
    pub fn inbox() -> Self {
        Self::distinguished("inbox")
    }

    /// A well-known folder of the caller's mailbox.
    pub fn distinguished(name: &str) -> Self {
        FolderId::Distinguished {
            id: name.to_string(),
            mailbox: None,
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            FolderId::Distinguished { id, mailbox: None } => {
                let _ = write!(out, r#"<t:DistinguishedFolderId Id="{}"/>"#, escape(id));
            }
            FolderId::Distinguished {
                id,
                mailbox: Some(mailbox),
            } => {
                let _ = write!(
                    out,
                    r#"<t:DistinguishedFolderId Id="{}"><t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#,
                    escape(id),
                    escape(mailbox)
                );
            }
            FolderId::Id { id, change_key } => {
                let _ = write!(out, r#"<t:FolderId Id="{}""#, escape(id));
                if let Some(key) = change_key {
                    let _ = write!(out, r#" ChangeKey="{}""#, escape(key));
                }
                out.push_str("/>");
            }
        }
    }
}

/// An event type a subscription asks for (`t:EventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// `CopiedEvent`.
    Copied,
    /// `CreatedEvent`.
    Created,
    /// `DeletedEvent`.
    Deleted,
    /// `ModifiedEvent`.
    Modified,
    /// `MovedEvent`.
    Moved,
    /// `NewMailEvent`: what a push preview is made from.
    NewMail,
    /// `FreeBusyChangedEvent`.
    FreeBusyChanged,
}

impl EventType {
    /// The schema's name of the type, e.g. `NewMailEvent`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Copied => "CopiedEvent",
            EventType::Created => "CreatedEvent",
            EventType::Deleted => "DeletedEvent",
            EventType::Modified => "ModifiedEvent",
            EventType::Moved => "MovedEvent",
            EventType::NewMail => "NewMailEvent",
            EventType::FreeBusyChanged => "FreeBusyChangedEvent",
        }
    }
}

/// The kind of a subscription and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionKind {
    /// `PullSubscriptionRequest`: the client polls with `GetEvents`.
    Pull {
        /// `Timeout`: minutes without `GetEvents` after which the server drops the
        /// subscription (1 to 1440).
        timeout_minutes: u32,
    },
    /// `PushSubscriptionRequest`: the server posts `SendNotification` to `url`.
    Push {
        /// `URL`: the callback the server posts to.
        url: String,
        /// `StatusFrequency`: minutes between heartbeats when nothing happens (1 to 1440).
        status_frequency_minutes: u32,
    },
    /// `StreamingSubscriptionRequest`: the client opens `GetStreamingEvents`.
    Streaming,
}

/// A `Subscribe` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Pull, push or streaming.
    pub kind: SubscriptionKind,
    /// The folders watched; empty means `SubscribeToAllFolders`.
    pub folders: Vec<FolderId>,
    /// The event types watched.
    pub event_types: Vec<EventType>,
    /// For pull and push: the watermark to resume from (events after it are replayed). The
    /// schema has no watermark for streaming subscriptions, so it is not sent for them.
    pub watermark: Option<String>,
}

impl Subscribe {
    fn new(kind: SubscriptionKind) -> Self {
        Self {
            kind,
            folders: vec![FolderId::inbox()],
            event_types: vec![EventType::NewMail],
            watermark: None,
        }
    }

    /// A streaming subscription to `NewMailEvent` in the Inbox.
    pub fn streaming() -> Self {
        Self::new(SubscriptionKind::Streaming)
    }

    /// A pull subscription to `NewMailEvent` in the Inbox that expires after
    /// `timeout_minutes` without `GetEvents`.
    pub fn pull(timeout_minutes: u32) -> Self {
        Self::new(SubscriptionKind::Pull { timeout_minutes })
    }

    /// A push subscription to `NewMailEvent` in the Inbox, posting to `url`, with a heartbeat
    /// every `status_frequency_minutes` when idle.
    pub fn push(url: impl Into<String>, status_frequency_minutes: u32) -> Self {
        Self::new(SubscriptionKind::Push {
            url: url.into(),
            status_frequency_minutes,
        })
    }

    /// Watches these folders instead of the Inbox (none: all folders).
    pub fn folders(mut self, folders: impl IntoIterator<Item = FolderId>) -> Self {
        self.folders = folders.into_iter().collect();
        self
    }

    /// Watches these event types instead of `NewMailEvent`.
    pub fn event_types(mut self, types: impl IntoIterator<Item = EventType>) -> Self {
        self.event_types = types.into_iter().collect();
        self
    }

    /// Resumes from this watermark (pull and push only).
    pub fn watermark(mut self, watermark: Option<String>) -> Self {
        self.watermark = watermark;
        self
    }

    /// The `m:Subscribe` element.
    pub fn to_xml(&self) -> String {
        let name = match self.kind {
            SubscriptionKind::Pull { .. } => "PullSubscriptionRequest",
            SubscriptionKind::Push { .. } => "PushSubscriptionRequest",
            SubscriptionKind::Streaming => "StreamingSubscriptionRequest",
        };
        let all = self.folders.is_empty();
        let mut out = String::with_capacity(512);
        let _ = write!(out, "<m:Subscribe><m:{name}");
        if all {
            out.push_str(r#" SubscribeToAllFolders="true""#);
        }
        out.push('>');
        if !all {
            out.push_str("<t:FolderIds>");
            for folder in &self.folders {
                folder.write(&mut out);
            }
            out.push_str("</t:FolderIds>");
        }
        out.push_str("<t:EventTypes>");
        for event_type in &self.event_types {
            let _ = write!(out, "<t:EventType>{}</t:EventType>", event_type.as_str());
        }
        out.push_str("</t:EventTypes>");
        let watermark = |out: &mut String| {
            if let Some(watermark) = &self.watermark {
                let _ = write!(out, "<t:Watermark>{}</t:Watermark>", escape(watermark));
            }
        };
        match &self.kind {
            SubscriptionKind::Pull { timeout_minutes } => {
                watermark(&mut out);
                let _ = write!(out, "<t:Timeout>{timeout_minutes}</t:Timeout>");
            }
            SubscriptionKind::Push {
                url,
                status_frequency_minutes,
            } => {
                watermark(&mut out);
                let _ = write!(
                    out,
                    "<t:StatusFrequency>{status_frequency_minutes}</t:StatusFrequency><t:URL>{}</t:URL>",
                    escape(url)
                );
            }
            SubscriptionKind::Streaming => {}
        }
        let _ = write!(out, "</m:{name}></m:Subscribe>");
        out
    }

    /// Reads a `SubscribeResponse` document.
    ///
    /// # Errors
    ///
    /// The mapped EWS error of an error response, [`EwsError::Fault`] for a SOAP fault,
    /// [`EwsError::Malformed`] if the document is not a `SubscribeResponse` with a
    /// `SubscriptionId`.
    pub fn parse_response(document: &[u8]) -> Result<SubscribeResponse, EwsError> {
        let root = parse_document(document)?;
        let message = single_message(&root, "Subscribe")?;
        let subscription_id = message
            .child_text(MESSAGES_NS, "SubscriptionId")
            .ok_or_else(|| malformed("SubscribeResponseMessage has no SubscriptionId"))?;
        Ok(SubscribeResponse {
            subscription_id,
            watermark: message.child_text(MESSAGES_NS, "Watermark"),
            affinity_cookie: None,
        })
    }
}

/// A successful `Subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResponse {
    /// The new subscription's id.
    pub subscription_id: String,
    /// Its first watermark (pull and push; streaming subscriptions have none).
    pub watermark: Option<String>,
    /// The `X-BackEndOverrideCookie` value the server set, when the request asked for affinity
    /// (`X-AnchorMailbox` with `X-PreferServerAffinity: true`): later requests for the
    /// subscription must send it back as a cookie. Filled by the client, not by the parser.
    pub affinity_cookie: Option<String>,
}

/// A `GetEvents` request: the events of a pull subscription after `watermark`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEvents {
    /// The pull subscription.
    pub subscription_id: String,
    /// The last watermark received (from `Subscribe` or the previous `GetEvents`).
    pub watermark: String,
}

impl GetEvents {
    /// Asks for the events of `subscription_id` after `watermark`.
    pub fn new(subscription_id: impl Into<String>, watermark: impl Into<String>) -> Self {
        Self {
            subscription_id: subscription_id.into(),
            watermark: watermark.into(),
        }
    }

    /// The `m:GetEvents` element.
    pub fn to_xml(&self) -> String {
        format!(
            "<m:GetEvents><m:SubscriptionId>{}</m:SubscriptionId><m:Watermark>{}</m:Watermark></m:GetEvents>",
            escape(&self.subscription_id),
            escape(&self.watermark)
        )
    }

    /// Reads a `GetEventsResponse` document: its one notification.
    ///
    /// # Errors
    ///
    /// As [`Subscribe::parse_response`], for a `GetEventsResponse` with a `Notification`.
    pub fn parse_response(document: &[u8]) -> Result<Notification, EwsError> {
        let root = parse_document(document)?;
        let message = single_message(&root, "GetEvents")?;
        let notification = message
            .child(MESSAGES_NS, "Notification")
            .ok_or_else(|| malformed("GetEventsResponseMessage has no Notification"))?;
        Notification::from_element(notification)
    }
}

/// A `GetStreamingEvents` request: opens a stream of the notifications of streaming
/// subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetStreamingEvents {
    /// The streaming subscriptions (one or more).
    pub subscription_ids: Vec<String>,
    /// `ConnectionTimeout`: minutes after which the server closes the stream (1 to 30).
    pub connection_timeout_minutes: u32,
}

impl GetStreamingEvents {
    /// Streams one subscription for `connection_timeout_minutes`.
    pub fn new(subscription_id: impl Into<String>, connection_timeout_minutes: u32) -> Self {
        Self {
            subscription_ids: vec![subscription_id.into()],
            connection_timeout_minutes,
        }
    }

    /// The `m:GetStreamingEvents` element.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<m:GetStreamingEvents><m:SubscriptionIds>");
        for id in &self.subscription_ids {
            let _ = write!(out, "<t:SubscriptionId>{}</t:SubscriptionId>", escape(id));
        }
        let _ = write!(
            out,
            "</m:SubscriptionIds><m:ConnectionTimeout>{}</m:ConnectionTimeout></m:GetStreamingEvents>",
            self.connection_timeout_minutes
        );
        out
    }
}

/// An `Unsubscribe` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// The subscription to end.
    pub subscription_id: String,
}

impl Unsubscribe {
    /// Ends `subscription_id`.
    pub fn new(subscription_id: impl Into<String>) -> Self {
        Self {
            subscription_id: subscription_id.into(),
        }
    }

    /// The `m:Unsubscribe` element.
    pub fn to_xml(&self) -> String {
        format!(
            "<m:Unsubscribe><m:SubscriptionId>{}</m:SubscriptionId></m:Unsubscribe>",
            escape(&self.subscription_id)
        )
    }

    /// Reads an `UnsubscribeResponse` document.
    ///
    /// # Errors
    ///
    /// As [`Subscribe::parse_response`].
    pub fn parse_response(document: &[u8]) -> Result<(), EwsError> {
        let root = parse_document(document)?;
        single_message(&root, "Unsubscribe").map(|_| ())
    }
}

/// A `GetItem` request for what a push preview shows: `IdOnly` plus `item:Subject`,
/// `item:DateTimeReceived` and `message:From`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetItem {
    /// The items (usually the one of a `NewMailEvent`).
    pub item_ids: Vec<ItemId>,
}

impl GetItem {
    /// The preview properties of one item.
    pub fn new(item_id: ItemId) -> Self {
        Self {
            item_ids: vec![item_id],
        }
    }

    /// The `m:GetItem` element.
    pub fn to_xml(&self) -> String {
        let mut out = String::from(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURI FieldURI="message:From"/></t:AdditionalProperties></m:ItemShape><m:ItemIds>"#,
        );
        for id in &self.item_ids {
            let _ = write!(out, r#"<t:ItemId Id="{}""#, escape(&id.id));
            if let Some(key) = &id.change_key {
                let _ = write!(out, r#" ChangeKey="{}""#, escape(key));
            }
            out.push_str("/>");
        }
        out.push_str("</m:ItemIds></m:GetItem>");
        out
    }

    /// Reads a `GetItemResponse` document: one item per response message.
    ///
    /// # Errors
    ///
    /// As [`Subscribe::parse_response`]; the first error response message (e.g.
    /// `ErrorItemNotFound`) fails the whole call.
    pub fn parse_response(document: &[u8]) -> Result<Vec<Item>, EwsError> {
        let root = parse_document(document)?;
        response_messages(&root, "GetItem")?
            .into_iter()
            .map(|message| {
                let message = message?;
                let item = message
                    .child(MESSAGES_NS, "Items")
                    .and_then(|items| items.children.first())
                    .ok_or_else(|| malformed("GetItemResponseMessage has no item"))?;
                Item::from_element(item)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Response types

/// An item or folder id with its change key (`t:ItemId`, `t:FolderId`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ItemId {
    /// The `Id` attribute.
    pub id: String,
    /// The `ChangeKey` attribute, if present.
    pub change_key: Option<String>,
}

impl ItemId {
    /// An id without a change key.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            change_key: None,
        }
    }

    fn from_element(element: &Element) -> Option<Self> {
        Some(Self {
            id: element.attr("Id").filter(|id| !id.is_empty())?.to_string(),
            change_key: element.attr("ChangeKey").map(str::to_string),
        })
    }
}

/// The type of a notification event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// `CopiedEvent`.
    Copied,
    /// `CreatedEvent`.
    Created,
    /// `DeletedEvent`.
    Deleted,
    /// `ModifiedEvent`.
    Modified,
    /// `MovedEvent`.
    Moved,
    /// `NewMailEvent`.
    NewMail,
    /// `FreeBusyChangedEvent`.
    FreeBusyChanged,
    /// `StatusEvent`: a heartbeat, nothing happened.
    Status,
}

impl EventKind {
    fn from_local(local: &str) -> Option<Self> {
        Some(match local {
            "CopiedEvent" => EventKind::Copied,
            "CreatedEvent" => EventKind::Created,
            "DeletedEvent" => EventKind::Deleted,
            "ModifiedEvent" => EventKind::Modified,
            "MovedEvent" => EventKind::Moved,
            "NewMailEvent" => EventKind::NewMail,
            "FreeBusyChangedEvent" => EventKind::FreeBusyChanged,
            "StatusEvent" => EventKind::Status,
            _ => return None,
        })
    }
}

/// One event of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The event's watermark: resubscribing from it replays what came after.
    pub watermark: Option<String>,
    /// `TimeStamp`, as the server wrote it (`xs:dateTime`); status events have none.
    pub timestamp: Option<String>,
    /// `ItemId`, when the event concerns an item.
    pub item_id: Option<ItemId>,
    /// `FolderId`, when the event concerns a folder.
    pub folder_id: Option<ItemId>,
    /// `ParentFolderId`: the folder holding the item or folder.
    pub parent_folder_id: Option<ItemId>,
    /// `OldItemId` of a moved or copied item.
    pub old_item_id: Option<ItemId>,
    /// `OldFolderId` of a moved or copied folder.
    pub old_folder_id: Option<ItemId>,
    /// `OldParentFolderId` of a moved or copied item or folder.
    pub old_parent_folder_id: Option<ItemId>,
}

impl Event {
    fn from_element(element: &Element, kind: EventKind) -> Self {
        let id = |local: &str| {
            element
                .child(TYPES_NS, local)
                .and_then(ItemId::from_element)
        };
        Self {
            kind,
            watermark: element.child_text(TYPES_NS, "Watermark"),
            timestamp: element.child_text(TYPES_NS, "TimeStamp"),
            item_id: id("ItemId"),
            folder_id: id("FolderId"),
            parent_folder_id: id("ParentFolderId"),
            old_item_id: id("OldItemId"),
            old_folder_id: id("OldFolderId"),
            old_parent_folder_id: id("OldParentFolderId"),
        }
    }
}

/// One `Notification`: the events of one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The subscription the events belong to.
    pub subscription_id: String,
    /// `PreviousWatermark` (pull and push).
    pub previous_watermark: Option<String>,
    /// `MoreEvents`: more events are waiting (pull: call `GetEvents` again at once).
    pub more_events: bool,
    /// The events, oldest first; a heartbeat holds one [`EventKind::Status`].
    pub events: Vec<Event>,
}

impl Notification {
    /// The watermark of the last event, from which to resume.
    pub fn last_watermark(&self) -> Option<&str> {
        self.events
            .iter()
            .rev()
            .find_map(|e| e.watermark.as_deref())
    }

    /// The ids of the items of its `NewMailEvent`s.
    pub fn new_mail(&self) -> impl Iterator<Item = &ItemId> {
        self.events
            .iter()
            .filter(|e| e.kind == EventKind::NewMail)
            .filter_map(|e| e.item_id.as_ref())
    }

    /// Whether it carries nothing but heartbeats.
    pub fn is_heartbeat(&self) -> bool {
        self.events.iter().all(|e| e.kind == EventKind::Status)
    }

    fn from_element(element: &Element) -> Result<Self, EwsError> {
        let subscription_id = element
            .child_text(TYPES_NS, "SubscriptionId")
            .ok_or_else(|| malformed("Notification has no SubscriptionId"))?;
        let events = element
            .children
            .iter()
            .filter(|c| c.ns.as_deref() == Some(TYPES_NS))
            .filter_map(|c| {
                EventKind::from_local(&c.local).map(|kind| Event::from_element(c, kind))
            })
            .collect();
        Ok(Self {
            subscription_id,
            previous_watermark: element.child_text(TYPES_NS, "PreviousWatermark"),
            more_events: element
                .child_text(TYPES_NS, "MoreEvents")
                .is_some_and(|t| t == "true" || t == "1"),
            events,
        })
    }
}

/// A mailbox (`t:Mailbox`) as a sender appears in an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// `Name`: the display name.
    pub name: Option<String>,
    /// `EmailAddress`.
    pub address: Option<String>,
}

/// An item as `GetItem` returns it with the preview shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Its id.
    pub id: ItemId,
    /// `Subject`.
    pub subject: Option<String>,
    /// `From`.
    pub from: Option<Mailbox>,
    /// `DateTimeReceived`, as the server wrote it.
    pub received: Option<String>,
}

impl Item {
    fn from_element(element: &Element) -> Result<Self, EwsError> {
        let id = element
            .child(TYPES_NS, "ItemId")
            .and_then(ItemId::from_element)
            .ok_or_else(|| malformed("the item has no ItemId"))?;
        let from = element
            .child(TYPES_NS, "From")
            .and_then(|f| f.child(TYPES_NS, "Mailbox"))
            .map(|m| Mailbox {
                name: m.child_text(TYPES_NS, "Name"),
                address: m.child_text(TYPES_NS, "EmailAddress"),
            });
        Ok(Self {
            id,
            // Not trimmed: a subject is shown as written.
            subject: element
                .child(TYPES_NS, "Subject")
                .map(|s| s.raw_text().to_string()),
            from,
            received: element.child_text(TYPES_NS, "DateTimeReceived"),
        })
    }
}

/// `ConnectionStatus` of a streaming response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectionStatus {
    /// `OK`: a keep-alive, the stream stays open.
    Ok,
    /// `Closed`: the server ends the stream (its `ConnectionTimeout` elapsed, or the
    /// subscriptions ended or moved to another stream).
    Closed,
}

/// What one `Envelope` of a `GetStreamingEvents` response carried.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamingChunk {
    /// The notifications, in order.
    pub notifications: Vec<Notification>,
    /// The connection status, if the chunk carried one.
    pub status: Option<ConnectionStatus>,
}

/// Reads one `Envelope` of a `GetStreamingEvents` response.
///
/// # Errors
///
/// The mapped EWS error of an error response message (e.g. [`EwsError::SubscriptionNotFound`]
/// when the subscription is gone), [`EwsError::Fault`], or [`EwsError::Malformed`].
pub fn parse_streaming_envelope(document: &[u8]) -> Result<StreamingChunk, EwsError> {
    let root = parse_document(document)?;
    let mut chunk = StreamingChunk::default();
    for message in response_messages(&root, "GetStreamingEvents")? {
        let message = message?;
        if let Some(notifications) = message.child(MESSAGES_NS, "Notifications") {
            for notification in notifications.children_named(MESSAGES_NS, "Notification") {
                chunk
                    .notifications
                    .push(Notification::from_element(notification)?);
            }
        }
        if let Some(status) = message.child_text(MESSAGES_NS, "ConnectionStatus") {
            chunk.status = Some(match status.as_str() {
                "OK" => ConnectionStatus::Ok,
                "Closed" => ConnectionStatus::Closed,
                other => return Err(malformed(&format!("unknown ConnectionStatus {other}"))),
            });
        }
    }
    Ok(chunk)
}

/// Reads a `SendNotification` request (what Exchange posts to a push callback): its
/// notifications. Error response messages carry no notification and are skipped.
///
/// # Errors
///
/// [`EwsError::Malformed`] if the document is not a `SendNotification` envelope or a
/// notification lacks its subscription id.
pub fn parse_send_notification(document: &[u8]) -> Result<Vec<Notification>, EwsError> {
    let root = parse_document(document)?;
    let operation = body(&root)?
        .child(MESSAGES_NS, "SendNotification")
        .ok_or_else(|| malformed("the body is not a SendNotification"))?;
    let messages = operation
        .child(MESSAGES_NS, "ResponseMessages")
        .ok_or_else(|| malformed("SendNotification has no ResponseMessages"))?;
    let mut notifications = Vec::new();
    for message in messages.children_named(MESSAGES_NS, "SendNotificationResponseMessage") {
        if let Some(notification) = message.child(MESSAGES_NS, "Notification") {
            notifications.push(Notification::from_element(notification)?);
        }
    }
    if notifications.is_empty() {
        return Err(malformed("SendNotification carries no Notification"));
    }
    Ok(notifications)
}

/// The answer to a `SendNotification`: `SendNotificationResult` with `SubscriptionStatus`
/// `OK` (keep sending) or `Unsubscribe` (end the subscription).
pub fn send_notification_result(unsubscribe: bool) -> String {
    let status = if unsubscribe { "Unsubscribe" } else { "OK" };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body><m:SendNotificationResult xmlns:m="{MESSAGES_NS}"><m:SubscriptionStatus>{status}</m:SubscriptionStatus></m:SendNotificationResult></soap:Body></soap:Envelope>"#
    )
}

/// Reads a SOAP fault document, if `document` is one: the error it stands for.
/// `gateway` is the `X-Seg-Fault` header of the response, if any.
pub fn parse_fault(document: &[u8], gateway: Option<String>) -> Option<EwsError> {
    let root = xml::parse(document).ok()?;
    let fault = body(&root).ok()?.child(SOAP_NS, "Fault")?;
    Some(fault_error(fault, gateway))
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn malformed(why: &str) -> EwsError {
    EwsError::Malformed(why.to_string())
}

fn parse_document(document: &[u8]) -> Result<Element, EwsError> {
    let root = xml::parse(document).map_err(EwsError::Malformed)?;
    if !root.is(SOAP_NS, "Envelope") {
        return Err(malformed("the root element is not a SOAP Envelope"));
    }
    if let Some(fault) = body(&root)?.child(SOAP_NS, "Fault") {
        return Err(fault_error(fault, None));
    }
    Ok(root)
}

fn body(root: &Element) -> Result<&Element, EwsError> {
    root.child(SOAP_NS, "Body")
        .ok_or_else(|| malformed("the envelope has no Body"))
}

/// The response messages of `{op}Response`, each the message or the error it reports.
fn response_messages<'a>(
    root: &'a Element,
    op: &str,
) -> Result<Vec<Result<&'a Element, EwsError>>, EwsError> {
    let response_name = format!("{op}Response");
    let message_name = format!("{op}ResponseMessage");
    let messages = body(root)?
        .child(MESSAGES_NS, &response_name)
        .and_then(|r| r.child(MESSAGES_NS, "ResponseMessages"))
        .ok_or_else(|| malformed(&format!("the body holds no {response_name}")))?;
    Ok(messages
        .children
        .iter()
        .filter(|c| c.is(MESSAGES_NS, &message_name))
        .map(|message| match message_error(message) {
            Some(error) => Err(error),
            None => Ok(message),
        })
        .collect())
}

/// The first response message of `{op}Response`, or the error it reports.
fn single_message<'a>(root: &'a Element, op: &str) -> Result<&'a Element, EwsError> {
    response_messages(root, op)?
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            Err(malformed(&format!(
                "{op}Response holds no response message"
            )))
        })
}

/// The error a response message reports: any `ResponseCode` but `NoError` (a `Warning` class
/// with an error code is an error for us: the operation did not do what we asked).
fn message_error(message: &Element) -> Option<EwsError> {
    let code = message.child_text(MESSAGES_NS, "ResponseCode");
    let class = message.attr("ResponseClass").unwrap_or("Success");
    match code.as_deref() {
        Some("NoError") => None,
        None if class == "Success" => None,
        code => {
            let code = code.unwrap_or("ErrorInternalServerError");
            let text = message
                .child_text(MESSAGES_NS, "MessageText")
                .unwrap_or_default();
            let back_off = message
                .child(MESSAGES_NS, "MessageXml")
                .and_then(back_off_milliseconds);
            Some(EwsError::from_response_code(code, &text, back_off))
        }
    }
}

/// `BackOffMilliseconds` among the `t:Value` elements of a `MessageXml`.
fn back_off_milliseconds(message_xml: &Element) -> Option<Duration> {
    message_xml
        .children_named(TYPES_NS, "Value")
        .find(|v| v.attr("Name") == Some("BackOffMilliseconds"))
        .and_then(|v| v.text().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// The error of a `soap:Fault`: its code from the detail's `ResponseCode` (errors namespace),
/// else the local part of `faultcode`; `ErrorServerBusy` faults become
/// [`EwsError::ServerBusy`], since throttling is answered with a fault.
fn fault_error(fault: &Element, gateway: Option<String>) -> EwsError {
    // faultcode, faultstring and detail are unqualified in SOAP 1.1.
    let unqualified = |local: &str| {
        fault
            .children
            .iter()
            .find(|c| c.ns.is_none() && c.local == local)
    };
    let detail = unqualified("detail");
    let code = detail
        .and_then(|d| d.child_text(ERRORS_NS, "ResponseCode"))
        .or_else(|| {
            unqualified("faultcode").map(|c| {
                let text = c.text();
                text.rsplit_once(':')
                    .map_or(text, |(_, local)| local)
                    .to_string()
            })
        })
        .unwrap_or_default();
    let message = unqualified("faultstring")
        .map(|s| s.text().to_string())
        .unwrap_or_default();
    if code == "ErrorServerBusy" {
        let back_off = detail
            .and_then(|d| {
                d.children
                    .iter()
                    .find(|c| c.local == "MessageXml")
                    .and_then(back_off_milliseconds)
            })
            .unwrap_or_default();
        return EwsError::ServerBusy { back_off };
    }
    EwsError::Fault {
        code,
        message,
        gateway,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = MESSAGES_NS;
    const T: &str = TYPES_NS;
    const S: &str = SOAP_NS;

    fn response(op: &str, inner: &str) -> String {
        format!(
            r#"<?xml version="1.0"?><s:Envelope xmlns:s="{S}"><s:Header/><s:Body><m:{op}Response xmlns:m="{M}" xmlns:t="{T}"><m:ResponseMessages>{inner}</m:ResponseMessages></m:{op}Response></s:Body></s:Envelope>"#
        )
    }

    #[test]
    fn push_subscribe_follows_the_schema_order() {
        let xml = Subscribe::push("http://ens/cb?t=1&x=2", 15)
            .event_types([EventType::NewMail, EventType::Created])
            .watermark(Some("AAA=".into()))
            .to_xml();
        assert_eq!(
            xml,
            r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType></t:EventTypes><t:Watermark>AAA=</t:Watermark><t:StatusFrequency>15</t:StatusFrequency><t:URL>http://ens/cb?t=1&amp;x=2</t:URL></m:PushSubscriptionRequest></m:Subscribe>"#
        );
    }

    #[test]
    fn streaming_subscribe_carries_no_watermark_and_all_folders_when_none_given() {
        let xml = Subscribe::streaming()
            .folders([])
            .watermark(Some("x".into()))
            .to_xml();
        assert_eq!(
            xml,
            r#"<m:Subscribe><m:StreamingSubscriptionRequest SubscribeToAllFolders="true"><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#
        );
    }

    #[test]
    fn every_request_is_a_well_formed_envelope() {
        let ops = [
            Subscribe::pull(5).to_xml(),
            GetEvents::new("s<1>", "w&").to_xml(),
            GetStreamingEvents::new("s", 30).to_xml(),
            Unsubscribe::new("s").to_xml(),
            GetItem::new(ItemId::new("AAMk\"")).to_xml(),
        ];
        for op in ops {
            let doc = envelope(DEFAULT_SERVER_VERSION, &op);
            let root = xml::parse(doc.as_bytes()).unwrap();
            assert!(root.is(S, "Envelope"));
            let body = root.child(S, "Body").unwrap();
            assert_eq!(body.children[0].ns.as_deref(), Some(M));
        }
    }

    #[test]
    fn error_messages_map_to_errors_with_back_off() {
        let doc = response(
            "GetEvents",
            r#"<m:GetEventsResponseMessage ResponseClass="Error"><m:MessageText>busy</m:MessageText><m:ResponseCode>ErrorServerBusy</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:MessageXml><t:Value Name="BackOffMilliseconds">1500</t:Value></m:MessageXml></m:GetEventsResponseMessage>"#,
        );
        let error = GetEvents::parse_response(doc.as_bytes()).unwrap_err();
        assert!(
            matches!(error, EwsError::ServerBusy { back_off } if back_off == Duration::from_millis(1500))
        );
        let doc = response(
            "Unsubscribe",
            r#"<m:UnsubscribeResponseMessage ResponseClass="Error"><m:MessageText>gone</m:MessageText><m:ResponseCode>ErrorSubscriptionNotFound</m:ResponseCode></m:UnsubscribeResponseMessage>"#,
        );
        assert!(matches!(
            Unsubscribe::parse_response(doc.as_bytes()),
            Err(EwsError::SubscriptionNotFound)
        ));
    }

    #[test]
    fn get_events_reads_events_with_their_ids() {
        let doc = response(
            "GetEvents",
            r#"<m:GetEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Notification><t:SubscriptionId>sub</t:SubscriptionId><t:PreviousWatermark>w0</t:PreviousWatermark><t:MoreEvents>true</t:MoreEvents><t:NewMailEvent><t:Watermark>w1</t:Watermark><t:TimeStamp>2024-01-01T00:00:00Z</t:TimeStamp><t:ItemId Id="i1" ChangeKey="c1"/><t:ParentFolderId Id="f1" ChangeKey="fc"/></t:NewMailEvent><t:MovedEvent><t:Watermark>w2</t:Watermark><t:TimeStamp>2024-01-01T00:00:01Z</t:TimeStamp><t:ItemId Id="i2"/><t:ParentFolderId Id="f2"/><t:OldItemId Id="i1"/><t:OldParentFolderId Id="f1"/></t:MovedEvent><t:Unknown/></m:Notification></m:GetEventsResponseMessage>"#,
        );
        let n = GetEvents::parse_response(doc.as_bytes()).unwrap();
        assert_eq!(n.subscription_id, "sub");
        assert!(n.more_events);
        assert_eq!(n.previous_watermark.as_deref(), Some("w0"));
        assert_eq!(n.events.len(), 2);
        assert_eq!(n.events[0].kind, EventKind::NewMail);
        assert_eq!(
            n.events[0].item_id,
            Some(ItemId {
                id: "i1".into(),
                change_key: Some("c1".into())
            })
        );
        assert_eq!(n.events[1].old_item_id, Some(ItemId::new("i1")));
        assert_eq!(n.last_watermark(), Some("w2"));
        assert_eq!(n.new_mail().count(), 1);
    }

    #[test]
    fn get_item_reads_subject_sender_and_time() {
        let doc = response(
            "GetItem",
            r#"<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items><t:Message><t:ItemId Id="i1" ChangeKey="c"/><t:Subject> Q3 &amp; more</t:Subject><t:DateTimeReceived>2024-01-01T00:00:00Z</t:DateTimeReceived><t:From><t:Mailbox><t:Name>Bob</t:Name><t:EmailAddress>bob@x</t:EmailAddress></t:Mailbox></t:From></t:Message></m:Items></m:GetItemResponseMessage>"#,
        );
        let items = GetItem::parse_response(doc.as_bytes()).unwrap();
        assert_eq!(items[0].subject.as_deref(), Some(" Q3 & more"));
        assert_eq!(
            items[0].from,
            Some(Mailbox {
                name: Some("Bob".into()),
                address: Some("bob@x".into())
            })
        );
        assert_eq!(items[0].received.as_deref(), Some("2024-01-01T00:00:00Z"));
    }

    #[test]
    fn faults_are_read_from_detail_or_faultcode() {
        let doc = format!(
            r#"<s:Envelope xmlns:s="{S}"><s:Body><s:Fault><faultcode xmlns:a="{T}">a:ErrorSchemaValidation</faultcode><faultstring xml:lang="en-US">bad</faultstring><detail><e:ResponseCode xmlns:e="{ERRORS_NS}">ErrorSchemaValidation</e:ResponseCode></detail></s:Fault></s:Body></s:Envelope>"#
        );
        let error = parse_fault(doc.as_bytes(), Some("not-soap".into())).unwrap();
        assert!(matches!(
            &error,
            EwsError::Fault { code, message, gateway: Some(g) } if code == "ErrorSchemaValidation" && message == "bad" && g == "not-soap"
        ));
        let busy = format!(
            r#"<s:Envelope xmlns:s="{S}"><s:Body><s:Fault><faultcode>s:Server</faultcode><faultstring>busy</faultstring><detail><e:ResponseCode xmlns:e="{ERRORS_NS}">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t="{T}"><t:Value Name="BackOffMilliseconds">250</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#
        );
        assert!(matches!(
            Subscribe::parse_response(busy.as_bytes()),
            Err(EwsError::ServerBusy { back_off }) if back_off == Duration::from_millis(250)
        ));
    }

    #[test]
    fn send_notification_is_read_and_answered() {
        let doc = format!(
            r#"<soap11:Envelope xmlns:soap11="{S}"><soap11:Body><m:SendNotification xmlns:m="{M}" xmlns:t="{T}"><m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Notification><t:SubscriptionId>s1</t:SubscriptionId><t:StatusEvent><t:Watermark>w</t:Watermark></t:StatusEvent></m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>"#
        );
        let notifications = parse_send_notification(doc.as_bytes()).unwrap();
        assert!(notifications[0].is_heartbeat());
        let answer = send_notification_result(true);
        let root = xml::parse(answer.as_bytes()).unwrap();
        let status = root.find(M, "SubscriptionStatus").unwrap();
        assert_eq!(status.text(), "Unsubscribe");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for doc in [
            &b""[..],
            b"<html>nope</html>",
            b"\xff\xfe<x/>",
            b"<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'/>",
            b"<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'><s:Body/></s:Envelope>",
        ] {
            assert!(Subscribe::parse_response(doc).is_err());
            assert!(GetEvents::parse_response(doc).is_err());
            assert!(GetItem::parse_response(doc).is_err());
            assert!(parse_send_notification(doc).is_err());
            assert!(parse_streaming_envelope(doc).is_err());
        }
    }
}
