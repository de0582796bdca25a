//! Reading EWS requests: the SOAP envelope, `RequestServerVersion`, and the operations the
//! stand-in serves, matched by namespace URI and local name.

use super::mailbox;
use super::xml::Element;

/// The SOAP 1.1 envelope namespace.
pub(crate) const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The EWS messages namespace.
pub(crate) const MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
/// The EWS types namespace.
pub(crate) const TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

/// The `RequestServerVersion` values the EWS schema defines.
const SERVER_VERSIONS: [&str; 21] = [
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2009",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2016",
    "Exchange2019",
    "V2015_10_05",
    "V2016_01_06",
    "V2016_04_13",
    "V2016_07_13",
    "V2016_10_10",
    "V2017_01_07",
    "V2017_04_14",
    "V2017_07_11",
    "V2017_10_09",
    "V2018_01_08",
];

/// Why a request could not be read; each maps to the SOAP fault Exchange returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// Not well-formed, not a SOAP envelope, or not valid against the schema:
    /// `ErrorSchemaValidation`.
    SchemaValidation(String),
    /// A well-formed request for an operation this server does not serve: `ErrorInvalidRequest`.
    InvalidRequest(String),
    /// A `RequestServerVersion` the schema does not know, or too old for the operation:
    /// `ErrorInvalidServerVersion`.
    InvalidServerVersion(String),
}

impl RequestError {
    /// The EWS error code, used as fault code (`a:<code>`) and `ResponseCode` detail.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::SchemaValidation(_) => "ErrorSchemaValidation",
            RequestError::InvalidRequest(_) => "ErrorInvalidRequest",
            RequestError::InvalidServerVersion(_) => "ErrorInvalidServerVersion",
        }
    }

    /// The human-readable fault string.
    pub fn message(&self) -> String {
        match self {
            RequestError::SchemaValidation(why) => {
                format!("The request failed schema validation: {why}")
            }
            RequestError::InvalidRequest(why) => format!("The request is invalid: {why}"),
            RequestError::InvalidServerVersion(why) => {
                format!("The specified server version is invalid: {why}")
            }
        }
    }
}

fn schema(why: impl Into<String>) -> RequestError {
    RequestError::SchemaValidation(why.into())
}

/// A parsed EWS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EwsRequest {
    /// The `RequestServerVersion` header's `Version`, if present.
    pub server_version: Option<String>,
    /// The operation.
    pub operation: Operation,
}

/// The operations the stand-in serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `GetFolder`.
    GetFolder {
        /// The folders asked for.
        folders: Vec<FolderRef>,
        /// The `FolderShape`.
        shape: Shape,
    },
    /// `GetItem`.
    GetItem {
        /// The item ids asked for.
        items: Vec<String>,
        /// The `ItemShape`.
        shape: Shape,
    },
    /// `Subscribe`.
    Subscribe(SubscribeRequest),
    /// `GetEvents`.
    GetEvents {
        /// The pull subscription.
        subscription_id: String,
        /// The last watermark the client received.
        watermark: String,
    },
    /// `GetStreamingEvents`.
    GetStreamingEvents {
        /// The streaming subscriptions.
        subscription_ids: Vec<String>,
        /// `ConnectionTimeout`, in minutes (1 to 30).
        connection_timeout: u32,
    },
    /// `Unsubscribe`.
    Unsubscribe {
        /// The subscription to end.
        subscription_id: String,
    },
}

/// A `FolderShape` or `ItemShape`: which properties a response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The `BaseShape`: `IdOnly`, `Default` or `AllProperties`.
    pub base: String,
    /// The `FieldURI` values of `AdditionalProperties` (e.g. `item:Subject`). Extended and
    /// indexed property paths are accepted and ignored: the stand-in holds no such properties.
    pub additional: Vec<String>,
}

impl Shape {
    /// A shape of this base and no additional properties.
    #[cfg(test)]
    pub fn base(base: &str) -> Self {
        Self {
            base: base.to_string(),
            additional: Vec::new(),
        }
    }

    /// Whether a response carries the property `field_uri` (when the stand-in holds it): the
    /// id always; under `Default` and `AllProperties` every property it holds; under `IdOnly`
    /// those named in `AdditionalProperties`, as the `BaseShape` reference says.
    pub fn includes(&self, field_uri: &str) -> bool {
        self.base != "IdOnly" || self.additional.iter().any(|f| f == field_uri)
    }
}

/// A folder named in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FolderRef {
    /// `t:DistinguishedFolderId`, optionally in another mailbox.
    Distinguished {
        /// `inbox`, `msgfolderroot`, …
        id: String,
        /// `t:Mailbox/t:EmailAddress`, if given.
        mailbox: Option<String>,
    },
    /// `t:FolderId`.
    Id(String),
}

/// The event types a subscription may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EventType {
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
}

impl EventType {
    /// The element name of events of this type (`NewMailEvent`, …).
    pub fn element(self) -> &'static str {
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

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "CopiedEvent" => EventType::Copied,
            "CreatedEvent" => EventType::Created,
            "DeletedEvent" => EventType::Deleted,
            "ModifiedEvent" => EventType::Modified,
            "MovedEvent" => EventType::Moved,
            "NewMailEvent" => EventType::NewMail,
            "FreeBusyChangedEvent" => EventType::FreeBusyChanged,
            _ => return None,
        })
    }
}

/// The three kinds of subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubscriptionKind {
    /// `PullSubscriptionRequest` with `Timeout` in minutes.
    Pull {
        /// Minutes without `GetEvents` after which the subscription expires.
        timeout: u32,
    },
    /// `PushSubscriptionRequest` with `StatusFrequency` in minutes and the callback `URL`.
    Push {
        /// Minutes between heartbeats when idle.
        status_frequency: u32,
        /// The callback URL.
        url: String,
    },
    /// `StreamingSubscriptionRequest`.
    Streaming,
}

/// A `Subscribe` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubscribeRequest {
    /// The kind and its settings.
    pub kind: SubscriptionKind,
    /// `SubscribeToAllFolders="true"`.
    pub all_folders: bool,
    /// `t:FolderIds`.
    pub folders: Vec<FolderRef>,
    /// `t:EventTypes`.
    pub event_types: Vec<EventType>,
    /// `t:Watermark`, to resume (pull and push only).
    pub watermark: Option<String>,
}

/// The local name of the first element in the SOAP body, whatever its namespace: the operation
/// name recorded for every request.
pub(crate) fn operation_name(envelope: &Element) -> Option<String> {
    envelope
        .child(SOAP, "Body")?
        .children
        .first()
        .map(|op| op.local.clone())
}

/// Reads an EWS request from its parsed envelope.
pub(crate) fn parse_request(envelope: &Element) -> Result<EwsRequest, RequestError> {
    if !envelope.is(SOAP, "Envelope") {
        return Err(schema("the root element is not a SOAP 1.1 Envelope"));
    }
    let server_version = match envelope
        .child(SOAP, "Header")
        .and_then(|h| h.child(TYPES, "RequestServerVersion"))
    {
        Some(version) => {
            let value = version
                .attr("Version")
                .ok_or_else(|| schema("RequestServerVersion requires the Version attribute"))?;
            if !SERVER_VERSIONS.contains(&value) {
                return Err(RequestError::InvalidServerVersion(value.to_string()));
            }
            Some(value.to_string())
        }
        None => None,
    };
    let body = envelope
        .child(SOAP, "Body")
        .ok_or_else(|| schema("the envelope has no Body"))?;
    let op = match body.children.as_slice() {
        [op] => op,
        [] => return Err(schema("the Body is empty")),
        _ => return Err(schema("the Body holds more than one element")),
    };
    if op.ns.as_deref() != Some(MESSAGES) {
        return Err(RequestError::InvalidRequest(format!(
            "{} is not an element of the EWS messages namespace",
            op.local
        )));
    }
    let operation = match op.local.as_str() {
        "GetFolder" => get_folder(op)?,
        "GetItem" => get_item(op)?,
        "Subscribe" => Operation::Subscribe(subscribe(op)?),
        "GetEvents" => Operation::GetEvents {
            subscription_id: required_text(op, MESSAGES, "SubscriptionId")?,
            watermark: required_text(op, MESSAGES, "Watermark")?,
        },
        "GetStreamingEvents" => get_streaming_events(op)?,
        "Unsubscribe" => Operation::Unsubscribe {
            subscription_id: required_text(op, MESSAGES, "SubscriptionId")?,
        },
        other => {
            return Err(RequestError::InvalidRequest(format!(
                "the operation {other} is not supported by this server"
            )));
        }
    };
    if is_streaming(&operation) && is_before_2010_sp1(server_version.as_deref()) {
        return Err(RequestError::InvalidServerVersion(
            "streaming notifications require Exchange2010_SP1 or later".into(),
        ));
    }
    Ok(EwsRequest {
        server_version,
        operation,
    })
}

fn is_streaming(operation: &Operation) -> bool {
    matches!(
        operation,
        Operation::GetStreamingEvents { .. }
            | Operation::Subscribe(SubscribeRequest {
                kind: SubscriptionKind::Streaming,
                ..
            })
    )
}

fn is_before_2010_sp1(version: Option<&str>) -> bool {
    matches!(
        version,
        Some("Exchange2007" | "Exchange2007_SP1" | "Exchange2009" | "Exchange2010")
    )
}

fn required_text(parent: &Element, ns: &str, local: &str) -> Result<String, RequestError> {
    parent
        .child(ns, local)
        .map(|e| e.text().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| schema(format!("{} requires a non-empty {local}", parent.local)))
}

/// Reads a `FolderShape` or `ItemShape` element.
fn shape(op: &Element, local: &str) -> Result<Shape, RequestError> {
    let element = op
        .child(MESSAGES, local)
        .ok_or_else(|| schema(format!("{} requires {local}", op.local)))?;
    let base = required_text(element, TYPES, "BaseShape")?;
    if !["IdOnly", "Default", "AllProperties"].contains(&base.as_str()) {
        return Err(schema(format!("'{base}' is not a valid BaseShape")));
    }
    let additional = match element.child(TYPES, "AdditionalProperties") {
        Some(properties) => properties
            .children_named(TYPES, "FieldURI")
            .map(|field| {
                field
                    .attr("FieldURI")
                    .map(str::to_string)
                    .ok_or_else(|| schema("FieldURI requires the FieldURI attribute"))
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Shape { base, additional })
}

fn get_folder(op: &Element) -> Result<Operation, RequestError> {
    let shape = shape(op, "FolderShape")?;
    let ids = op
        .child(MESSAGES, "FolderIds")
        .ok_or_else(|| schema("GetFolder requires FolderIds"))?;
    let folders = folder_refs(ids)?;
    if folders.is_empty() {
        return Err(schema("FolderIds is empty"));
    }
    Ok(Operation::GetFolder { folders, shape })
}

fn folder_refs(ids: &Element) -> Result<Vec<FolderRef>, RequestError> {
    ids.children
        .iter()
        .map(|id| {
            if id.is(TYPES, "DistinguishedFolderId") {
                let name = id
                    .attr("Id")
                    .ok_or_else(|| schema("DistinguishedFolderId requires Id"))?;
                if !mailbox::is_distinguished_name(name) {
                    return Err(schema(format!(
                        "'{name}' is not a valid DistinguishedFolderIdNameType value"
                    )));
                }
                let mailbox = id
                    .child(TYPES, "Mailbox")
                    .and_then(|m| m.child(TYPES, "EmailAddress"))
                    .map(|e| e.text().to_string())
                    .filter(|e| !e.is_empty());
                Ok(FolderRef::Distinguished {
                    id: name.to_string(),
                    mailbox,
                })
            } else if id.is(TYPES, "FolderId") {
                let value = id
                    .attr("Id")
                    .ok_or_else(|| schema("FolderId requires Id"))?;
                Ok(FolderRef::Id(value.to_string()))
            } else {
                Err(schema(format!(
                    "unexpected element {} in FolderIds",
                    id.local
                )))
            }
        })
        .collect()
}

fn get_item(op: &Element) -> Result<Operation, RequestError> {
    let shape = shape(op, "ItemShape")?;
    let ids = op
        .child(MESSAGES, "ItemIds")
        .ok_or_else(|| schema("GetItem requires ItemIds"))?;
    let items = ids
        .children
        .iter()
        .map(|id| {
            if id.is(TYPES, "ItemId") {
                id.attr("Id")
                    .map(str::to_string)
                    .ok_or_else(|| schema("ItemId requires Id"))
            } else {
                Err(schema(format!(
                    "unsupported element {} in ItemIds",
                    id.local
                )))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if items.is_empty() {
        return Err(schema("ItemIds is empty"));
    }
    Ok(Operation::GetItem { items, shape })
}

fn minutes(parent: &Element, local: &str, max: u32) -> Result<u32, RequestError> {
    let text = required_text(parent, TYPES, local)?;
    text.parse::<u32>()
        .ok()
        .filter(|m| (1..=max).contains(m))
        .ok_or_else(|| schema(format!("{local} must be an integer from 1 to {max}")))
}

fn subscribe(op: &Element) -> Result<SubscribeRequest, RequestError> {
    let request = match op.children.as_slice() {
        [request] if request.ns.as_deref() == Some(MESSAGES) => request,
        _ => {
            return Err(schema(
                "Subscribe requires exactly one Pull, Push or Streaming SubscriptionRequest",
            ));
        }
    };
    let kind = match request.local.as_str() {
        "PullSubscriptionRequest" => SubscriptionKind::Pull {
            timeout: minutes(request, "Timeout", 1440)?,
        },
        "PushSubscriptionRequest" => SubscriptionKind::Push {
            status_frequency: minutes(request, "StatusFrequency", 1440)?,
            url: required_text(request, TYPES, "URL")?,
        },
        "StreamingSubscriptionRequest" => SubscriptionKind::Streaming,
        other => return Err(schema(format!("unexpected element {other} in Subscribe"))),
    };
    let all_folders = matches!(request.attr("SubscribeToAllFolders"), Some("true" | "1"));
    let folders = match request.child(TYPES, "FolderIds") {
        Some(ids) => folder_refs(ids)?,
        None => Vec::new(),
    };
    if folders.is_empty() && !all_folders {
        return Err(schema(
            "FolderIds is required unless SubscribeToAllFolders is true",
        ));
    }
    let types = request
        .child(TYPES, "EventTypes")
        .ok_or_else(|| schema("EventTypes is required"))?;
    let event_types = types
        .children_named(TYPES, "EventType")
        .map(|t| {
            EventType::parse(t.text())
                .ok_or_else(|| schema(format!("'{}' is not a valid EventType", t.text())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if event_types.is_empty() {
        return Err(schema("EventTypes is empty"));
    }
    let watermark = match kind {
        SubscriptionKind::Streaming => None,
        _ => request
            .child(TYPES, "Watermark")
            .map(|w| w.text().to_string())
            .filter(|w| !w.is_empty()),
    };
    Ok(SubscribeRequest {
        kind,
        all_folders,
        folders,
        event_types,
        watermark,
    })
}

fn get_streaming_events(op: &Element) -> Result<Operation, RequestError> {
    let ids = op
        .child(MESSAGES, "SubscriptionIds")
        .ok_or_else(|| schema("GetStreamingEvents requires SubscriptionIds"))?;
    let subscription_ids: Vec<String> = ids
        .children_named(TYPES, "SubscriptionId")
        .map(|id| id.text().to_string())
        .filter(|id| !id.is_empty())
        .collect();
    if subscription_ids.is_empty() {
        return Err(schema("SubscriptionIds is empty"));
    }
    let text = required_text(op, MESSAGES, "ConnectionTimeout")?;
    let connection_timeout = text
        .parse::<u32>()
        .ok()
        .filter(|m| (1..=30).contains(m))
        .ok_or_else(|| schema("ConnectionTimeout must be an integer from 1 to 30"))?;
    Ok(Operation::GetStreamingEvents {
        subscription_ids,
        connection_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::xml;

    fn envelope(header: &str, body: &str) -> Element {
        let doc = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="{SOAP}" xmlns:m="{MESSAGES}" xmlns:t="{TYPES}">
  <soap:Header>{header}</soap:Header>
  <soap:Body>{body}</soap:Body>
</soap:Envelope>"#
        );
        xml::parse(doc.as_bytes()).unwrap()
    }

    fn parse(body: &str) -> Result<EwsRequest, RequestError> {
        parse_request(&envelope("", body))
    }

    #[test]
    fn pull_subscribe_is_read_with_any_prefixes() {
        let doc = format!(
            r#"<s:Envelope xmlns:s="{SOAP}"><s:Body><x:Subscribe xmlns:x="{MESSAGES}">
  <x:PullSubscriptionRequest xmlns:y="{TYPES}">
    <y:FolderIds><y:DistinguishedFolderId Id="inbox"/></y:FolderIds>
    <y:EventTypes><y:EventType>NewMailEvent</y:EventType><y:EventType>CreatedEvent</y:EventType></y:EventTypes>
    <y:Timeout>10</y:Timeout>
  </x:PullSubscriptionRequest></x:Subscribe></s:Body></s:Envelope>"#
        );
        let request = parse_request(&xml::parse(doc.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            request.operation,
            Operation::Subscribe(SubscribeRequest {
                kind: SubscriptionKind::Pull { timeout: 10 },
                all_folders: false,
                folders: vec![FolderRef::Distinguished {
                    id: "inbox".into(),
                    mailbox: None
                }],
                event_types: vec![EventType::NewMail, EventType::Created],
                watermark: None,
            })
        );
    }

    #[test]
    fn push_subscribe_carries_status_frequency_and_url() {
        let request = parse(
            r#"<m:Subscribe><m:PushSubscriptionRequest SubscribeToAllFolders="true">
  <t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes>
  <t:StatusFrequency>15</t:StatusFrequency><t:URL>https://ens.test.local/cb</t:URL>
</m:PushSubscriptionRequest></m:Subscribe>"#,
        )
        .unwrap();
        let Operation::Subscribe(subscribe) = request.operation else {
            panic!("not a Subscribe");
        };
        assert!(subscribe.all_folders);
        assert_eq!(
            subscribe.kind,
            SubscriptionKind::Push {
                status_frequency: 15,
                url: "https://ens.test.local/cb".into()
            }
        );
    }

    #[test]
    fn out_of_range_minutes_fail_schema_validation() {
        for body in [
            r#"<m:Subscribe><m:PullSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes><t:Timeout>0</t:Timeout></m:PullSubscriptionRequest></m:Subscribe>"#,
            r#"<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>x</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>31</m:ConnectionTimeout></m:GetStreamingEvents>"#,
        ] {
            assert!(matches!(
                parse(body),
                Err(RequestError::SchemaValidation(_))
            ));
        }
    }

    #[test]
    fn get_streaming_events_reads_ids_and_timeout() {
        let request = parse(
            r#"<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>a</t:SubscriptionId><t:SubscriptionId>b</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents>"#,
        )
        .unwrap();
        assert_eq!(
            request.operation,
            Operation::GetStreamingEvents {
                subscription_ids: vec!["a".into(), "b".into()],
                connection_timeout: 30
            }
        );
    }

    #[test]
    fn unknown_operations_are_invalid_requests() {
        assert!(matches!(
            parse("<m:ResolveNames/>"),
            Err(RequestError::InvalidRequest(_))
        ));
        assert!(matches!(
            parse("<Foo/>"),
            Err(RequestError::InvalidRequest(_))
        ));
    }

    #[test]
    fn request_server_version_is_checked() {
        let ok = parse_request(&envelope(
            r#"<t:RequestServerVersion Version="Exchange2013_SP1"/>"#,
            r#"<m:Unsubscribe><m:SubscriptionId>x</m:SubscriptionId></m:Unsubscribe>"#,
        ))
        .unwrap();
        assert_eq!(ok.server_version.as_deref(), Some("Exchange2013_SP1"));
        let bad = parse_request(&envelope(
            r#"<t:RequestServerVersion Version="Exchange1999"/>"#,
            r#"<m:Unsubscribe><m:SubscriptionId>x</m:SubscriptionId></m:Unsubscribe>"#,
        ));
        assert!(matches!(bad, Err(RequestError::InvalidServerVersion(_))));
        let old = parse_request(&envelope(
            r#"<t:RequestServerVersion Version="Exchange2007_SP1"/>"#,
            r#"<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>a</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>"#,
        ));
        assert!(matches!(old, Err(RequestError::InvalidServerVersion(_))));
    }

    #[test]
    fn get_item_reads_the_additional_properties_of_its_shape() {
        let request = parse(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/><t:ExtendedFieldURI PropertyTag="0x1000" PropertyType="String"/><t:FieldURI FieldURI="message:IsRead"/></t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id="AAMk"/></m:ItemIds></m:GetItem>"#,
        )
        .unwrap();
        let Operation::GetItem { shape, .. } = request.operation else {
            panic!("not a GetItem");
        };
        assert_eq!(shape.additional, ["item:Subject", "message:IsRead"]);
        assert!(shape.includes("item:Subject"));
        assert!(!shape.includes("item:Body"));
        assert!(Shape::base("Default").includes("item:Body"));
    }

    #[test]
    fn get_folder_reads_distinguished_ids_with_mailboxes() {
        let request = parse(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>bob@test.local</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId><t:FolderId Id="AAMk"/></m:FolderIds></m:GetFolder>"#,
        )
        .unwrap();
        assert_eq!(
            request.operation,
            Operation::GetFolder {
                folders: vec![
                    FolderRef::Distinguished {
                        id: "inbox".into(),
                        mailbox: Some("bob@test.local".into())
                    },
                    FolderRef::Id("AAMk".into())
                ],
                shape: Shape::base("Default"),
            }
        );
        assert!(matches!(
            parse(
                r#"<m:GetFolder><m:FolderShape/><m:FolderIds><t:DistinguishedFolderId Id="nope"/></m:FolderIds></m:GetFolder>"#
            ),
            Err(RequestError::SchemaValidation(_))
        ));
    }
}
