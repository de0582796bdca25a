//! Writing EWS responses: envelopes with `ServerVersionInfo`, response messages, SOAP faults,
//! folders, messages, notifications, and the `SendNotification` request of push subscriptions.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use quick_xml::escape::escape;

use super::ServerVersion;
use super::mailbox::{Folder, Item};
use super::soap::{MESSAGES, SOAP, Shape, TYPES};
use super::subscriptions::QueuedEvent;

const ERRORS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
const XSD: &str = "http://www.w3.org/2001/XMLSchema";

fn server_version_info(version: &ServerVersion, prefixed: bool) -> String {
    let (name, decl) = if prefixed {
        ("h:ServerVersionInfo", format!(r#" xmlns:h="{TYPES}""#))
    } else {
        ("ServerVersionInfo", String::new())
    };
    format!(
        r#"<{name} MajorVersion="{}" MinorVersion="{}" MajorBuildNumber="{}" MinorBuildNumber="{}" Version="{}"{decl} xmlns="{TYPES}" xmlns:xsd="{XSD}" xmlns:xsi="{XSI}"/>"#,
        version.major,
        version.minor,
        version.major_build,
        version.minor_build,
        escape(version.version.as_str()),
    )
}

/// A complete SOAP response document around `body` (the operation's response element).
pub(crate) fn envelope(version: &ServerVersion, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Header>{}</s:Header><s:Body xmlns:xsi="{XSI}" xmlns:xsd="{XSD}">{body}</s:Body></s:Envelope>"#,
        server_version_info(version, true)
    )
}

/// One `<Envelope>` of a `GetStreamingEvents` response: no XML declaration, since the chunks
/// of one response are read as a sequence of documents.
pub(crate) fn stream_envelope(version: &ServerVersion, body: &str) -> String {
    format!(
        r#"<Envelope xmlns="{SOAP}"><soap11:Header xmlns:soap11="{SOAP}">{}</soap11:Header><soap11:Body xmlns:soap11="{SOAP}">{body}</soap11:Body></Envelope>"#,
        server_version_info(version, false)
    )
}

/// `<m:{op}Response>` holding the given response messages.
pub(crate) fn response(op: &str, messages: &[String]) -> String {
    format!(
        r#"<m:{op}Response xmlns:m="{MESSAGES}" xmlns:t="{TYPES}"><m:ResponseMessages>{}</m:ResponseMessages></m:{op}Response>"#,
        messages.concat()
    )
}

/// A successful `<m:{op}ResponseMessage>` with `inner` after its `ResponseCode`.
pub(crate) fn success(op: &str, inner: &str) -> String {
    format!(
        r#"<m:{op}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{op}ResponseMessage>"#
    )
}

/// A failed `<m:{op}ResponseMessage>` with the EWS error `code`.
pub(crate) fn error(op: &str, code: &str, text: &str) -> String {
    format!(
        r#"<m:{op}ResponseMessage ResponseClass="Error"><m:MessageText>{}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:{op}ResponseMessage>"#,
        escape(text)
    )
}

/// A SOAP fault document as Exchange returns it with HTTP 500: `faultcode` `a:{code}` in the
/// types namespace and the code again in the detail.
pub(crate) fn fault(version: &ServerVersion, code: &str, message: &str) -> String {
    let message = escape(message);
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Header>{}</s:Header><s:Body><s:Fault><faultcode xmlns:a="{TYPES}">a:{code}</faultcode><faultstring xml:lang="en-US">{message}</faultstring><detail><e:ResponseCode xmlns:e="{ERRORS}">{code}</e:ResponseCode><e:Message xmlns:e="{ERRORS}">{message}</e:Message></detail></s:Fault></s:Body></s:Envelope>"#,
        server_version_info(version, true)
    )
}

fn id_element(name: &str, id: &str, change_key: &str) -> String {
    format!(
        r#"<t:{name} Id="{}" ChangeKey="{}"/>"#,
        escape(id),
        escape(change_key)
    )
}

/// A folder: `FolderId`, then those of `DisplayName`, `TotalCount`, `ChildFolderCount` and
/// (mail folders) `UnreadCount` the shape asks for.
pub(crate) fn folder(folder: &Folder, counts: (usize, usize, usize), shape: &Shape) -> String {
    let (total, unread, children) = counts;
    let element = folder.class.element();
    let mut out = format!(
        "<t:{element}>{}",
        id_element("FolderId", &folder.id, &folder.change_key)
    );
    if shape.includes("folder:DisplayName") {
        let _ = write!(
            out,
            "<t:DisplayName>{}</t:DisplayName>",
            escape(folder.display_name)
        );
    }
    if shape.includes("folder:TotalCount") {
        let _ = write!(out, "<t:TotalCount>{total}</t:TotalCount>");
    }
    if shape.includes("folder:ChildFolderCount") {
        let _ = write!(out, "<t:ChildFolderCount>{children}</t:ChildFolderCount>");
    }
    if element == "Folder" && shape.includes("folder:UnreadCount") {
        let _ = write!(out, "<t:UnreadCount>{unread}</t:UnreadCount>");
    }
    let _ = write!(out, "</t:{element}>");
    out
}

/// A `t:Message`: its `ItemId`, then the properties the shape asks for among those a mail
/// client shows (`Default` and `AllProperties` give them all, the body included), in schema
/// order.
pub(crate) fn message(item: &Item, parent: &Folder, recipient: &str, shape: &Shape) -> String {
    let received = format_time(item.received);
    let properties = [
        (
            "item:ParentFolderId",
            id_element("ParentFolderId", &parent.id, &parent.change_key),
        ),
        (
            "item:ItemClass",
            "<t:ItemClass>IPM.Note</t:ItemClass>".into(),
        ),
        (
            "item:Subject",
            format!("<t:Subject>{}</t:Subject>", escape(item.subject.as_str())),
        ),
        (
            "item:Body",
            format!(
                r#"<t:Body BodyType="Text">{}</t:Body>"#,
                escape(item.body.as_str())
            ),
        ),
        (
            "item:DateTimeReceived",
            format!("<t:DateTimeReceived>{received}</t:DateTimeReceived>"),
        ),
        (
            "item:Size",
            format!(
                "<t:Size>{}</t:Size>",
                item.subject.len() + item.body.len() + 512
            ),
        ),
        (
            "item:DateTimeSent",
            format!("<t:DateTimeSent>{received}</t:DateTimeSent>"),
        ),
        (
            "item:HasAttachments",
            "<t:HasAttachments>false</t:HasAttachments>".into(),
        ),
        (
            "message:ToRecipients",
            format!(
                "<t:ToRecipients>{}</t:ToRecipients>",
                mailbox_element("", recipient)
            ),
        ),
        (
            "message:From",
            format!(
                "<t:From>{}</t:From>",
                mailbox_element(&item.from_name, &item.from_address)
            ),
        ),
        (
            "message:IsRead",
            format!("<t:IsRead>{}</t:IsRead>", item.is_read),
        ),
    ];
    let mut out = format!(
        "<t:Message>{}",
        id_element("ItemId", &item.id, &item.change_key)
    );
    for (field_uri, xml) in properties {
        if shape.includes(field_uri) {
            out.push_str(&xml);
        }
    }
    out.push_str("</t:Message>");
    out
}

fn mailbox_element(name: &str, address: &str) -> String {
    let name = if name.is_empty() { address } else { name };
    format!(
        "<t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>OneOff</t:MailboxType></t:Mailbox>",
        escape(name),
        escape(address)
    )
}

/// The content of a notification: the events, or a `StatusEvent` carrying `status_watermark`.
pub(crate) enum Events<'a> {
    /// Events to report.
    Some(&'a [QueuedEvent]),
    /// Nothing happened: a `StatusEvent` with this watermark.
    Status(u64),
}

/// `<m:Notification>` with `SubscriptionId`, optional `PreviousWatermark` and `MoreEvents`, and
/// the events.
pub(crate) fn notification(
    subscription_id: &str,
    previous: Option<u64>,
    more_events: Option<bool>,
    events: Events<'_>,
) -> String {
    let mut out = format!(
        "<m:Notification><t:SubscriptionId>{}</t:SubscriptionId>",
        escape(subscription_id)
    );
    if let Some(previous) = previous {
        let _ = write!(
            out,
            "<t:PreviousWatermark>{}</t:PreviousWatermark>",
            watermark(previous)
        );
    }
    if let Some(more) = more_events {
        let _ = write!(out, "<t:MoreEvents>{more}</t:MoreEvents>");
    }
    match events {
        Events::Some(events) => {
            for event in events {
                let name = event.kind.element();
                let _ = write!(
                    out,
                    "<t:{name}><t:Watermark>{}</t:Watermark><t:TimeStamp>{}</t:TimeStamp>{}{}</t:{name}>",
                    watermark(event.seq),
                    format_time(event.timestamp),
                    id_element("ItemId", &event.item.id, &event.item.change_key),
                    id_element("ParentFolderId", &event.parent.id, &event.parent.change_key),
                );
            }
        }
        Events::Status(seq) => {
            let _ = write!(
                out,
                "<t:StatusEvent><t:Watermark>{}</t:Watermark></t:StatusEvent>",
                watermark(seq)
            );
        }
    }
    out.push_str("</m:Notification>");
    out
}

/// The `SendNotification` request Exchange posts to a push subscription's callback URL.
pub(crate) fn send_notification(notification: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><soap11:Envelope xmlns:soap11="{SOAP}"><soap11:Header><t:RequestServerVersion xmlns:t="{TYPES}" Version="Exchange2013"/></soap11:Header><soap11:Body><m:SendNotification xmlns:m="{MESSAGES}" xmlns:t="{TYPES}"><m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>{notification}</m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>"#
    )
}

const WATERMARK_TAG: &[u8; 4] = b"SEGW";

/// The opaque watermark string for an event counter value.
pub(crate) fn watermark(seq: u64) -> String {
    let mut bytes = WATERMARK_TAG.to_vec();
    bytes.extend_from_slice(&seq.to_be_bytes());
    STANDARD.encode(bytes)
}

/// The event counter value of a watermark string, if it is one of ours.
pub(crate) fn parse_watermark(text: &str) -> Option<u64> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    let seq = bytes.strip_prefix(WATERMARK_TAG)?;
    Some(u64::from_be_bytes(seq.try_into().ok()?))
}

/// An `xs:dateTime` in UTC with a `Z` suffix, as EWS writes them.
pub(crate) fn format_time(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Converts days since 1970-01-01 to a (year, month, day) civil date (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exchange::xml;

    #[test]
    fn times_are_utc_xs_datetimes() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29T12:34:56Z
        assert_eq!(format_time(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn watermarks_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_watermark(&watermark(42)), Some(42));
        assert_eq!(parse_watermark("AQAAAA=="), None);
        assert_eq!(parse_watermark("not base64"), None);
    }

    #[test]
    fn every_document_is_well_formed_with_the_version_header() {
        let version = ServerVersion::default();
        let docs = [
            envelope(
                &version,
                &response("Unsubscribe", &[success("Unsubscribe", "")]),
            ),
            envelope(
                &version,
                &response(
                    "GetEvents",
                    &[error("GetEvents", "ErrorSubscriptionNotFound", "<x> & y")],
                ),
            ),
            fault(&version, "ErrorSchemaValidation", "bad <xml>"),
            stream_envelope(&version, &response("GetStreamingEvents", &[])),
            send_notification(&notification("s", Some(1), Some(false), Events::Status(1))),
        ];
        for doc in docs {
            let root = xml::parse(doc.as_bytes()).unwrap_or_else(|e| panic!("{e}: {doc}"));
            assert!(root.is(SOAP, "Envelope"));
        }
        let root = xml::parse(envelope(&version, "").as_bytes()).unwrap();
        let info = root
            .child(SOAP, "Header")
            .and_then(|h| h.child(TYPES, "ServerVersionInfo"))
            .unwrap();
        assert_eq!(info.attr("MajorVersion"), Some("15"));
    }

    #[test]
    fn faults_carry_the_code_in_the_types_namespace() {
        let doc = fault(&ServerVersion::default(), "ErrorInvalidRequest", "nope");
        assert!(doc.contains(&format!(
            r#"<faultcode xmlns:a="{TYPES}">a:ErrorInvalidRequest</faultcode>"#
        )));
    }
}
