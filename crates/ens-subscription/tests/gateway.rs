//! The client's reading of the gateway's answers and of hostile peers: compliance blocks,
//! faults, garbage, and streams cut or split at every byte.

mod support;

use std::time::Duration;

use bytes::Bytes;
use ens_subscription::soap::{GetItem, GetStreamingEvents, ItemId, Subscribe};
use ens_subscription::streaming::NotificationStream;
use ens_subscription::{EwsClient, EwsError};
use futures_util::StreamExt as _;
use http_body_util::StreamBody;
use hyper::body::Frame;
use seg_testbed::harness::within;
use seg_testbed::upstream::ScriptedUpstream;
use support::{DEADLINE, fixed_answer};

const BLOCKED: &[(&str, &str)] = &[
    ("x-compliance-status", "blocked; reason=device-wiped"),
    ("x-seg-fault", "compliance"),
    ("content-type", "text/xml; charset=utf-8"),
];

const ACCESS_DENIED_FAULT: &str = r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorAccessDenied</faultcode><faultstring>access denied by the gateway's compliance policy: device-wiped</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorAccessDenied</e:ResponseCode></detail></s:Fault></s:Body></s:Envelope>"#;

fn envelope(inner: &str) -> String {
    format!(
        r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><soap11:Body xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/"><m:GetStreamingEventsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:GetStreamingEventsResponseMessage></m:ResponseMessages></m:GetStreamingEventsResponse></soap11:Body></Envelope>"#
    )
}

fn new_mail(id: &str) -> String {
    envelope(&format!(
        r#"<m:Notifications><m:Notification><t:SubscriptionId>s1</t:SubscriptionId><t:NewMailEvent><t:Watermark>w-{id}</t:Watermark><t:TimeStamp>2024-01-01T00:00:00Z</t:TimeStamp><t:ItemId Id="{id}" ChangeKey="c"/><t:ParentFolderId Id="f"/></t:NewMailEvent></m:Notification></m:Notifications>"#
    ))
}

#[tokio::test]
async fn a_compliance_block_is_blocked_on_every_operation() {
    let url = fixed_answer(403, BLOCKED, ACCESS_DENIED_FAULT).await;
    let client = support::client(&url, "alice@test.local", "EASDEV1");
    let subscribe = client.subscribe(Subscribe::streaming()).await.unwrap_err();
    assert!(
        matches!(&subscribe, EwsError::Blocked { reason } if reason == "device-wiped"),
        "{subscribe:?}"
    );
    let preview = client
        .get_item(GetItem::new(ItemId::new("i1")))
        .await
        .unwrap_err();
    assert!(preview.is_blocked());
    let stream = client
        .get_streaming_events(GetStreamingEvents::new("s1", 1))
        .await
        .unwrap_err();
    assert!(stream.is_blocked());
}

#[tokio::test]
async fn a_403_without_the_compliance_header_is_not_a_block() {
    let url = fixed_answer(403, &[("x-seg-fault", "forbidden")], ACCESS_DENIED_FAULT).await;
    let client = support::client(&url, "alice@test.local", "EASDEV1");
    let error = client.subscribe(Subscribe::streaming()).await.unwrap_err();
    assert!(
        matches!(&error, EwsError::Fault { code, gateway: Some(g), .. } if code == "ErrorAccessDenied" && g == "forbidden"),
        "{error:?}"
    );
}

#[tokio::test]
async fn garbage_answers_are_errors() {
    for (status, body) in [
        (200, "<html>hello</html>"),
        (200, ""),
        (200, "\u{0}\u{1}<<<"),
        (502, "bad gateway"),
    ] {
        let url = fixed_answer(status, &[], body).await;
        let client = support::client(&url, "alice@test.local", "EASDEV1");
        let error = client.subscribe(Subscribe::pull(1)).await.unwrap_err();
        match status {
            200 => assert!(matches!(error, EwsError::Malformed(_)), "{error:?}"),
            _ => assert!(
                matches!(error, EwsError::Http { status } if status == 502),
                "{error:?}"
            ),
        }
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error() {
    let addr = seg_testbed::harness::reserve_port().unwrap();
    let client = EwsClient::http(format!("http://{addr}/EWS/Exchange.asmx").parse().unwrap());
    let error = client.subscribe(Subscribe::streaming()).await.unwrap_err();
    assert!(matches!(error, EwsError::Transport(_)), "{error:?}");
}

#[tokio::test]
async fn envelopes_split_at_every_byte_are_read_whole() {
    let body = format!(
        "{}\r\n{}{}",
        new_mail("i1"),
        new_mail("i2"),
        envelope("<m:ConnectionStatus>Closed</m:ConnectionStatus>")
    );
    let frames = body
        .into_bytes()
        .into_iter()
        .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b]))));
    let stream = NotificationStream::new(StreamBody::new(futures_util::stream::iter(frames)), 4096);
    let notifications: Vec<_> = stream.collect().await;
    let ids: Vec<_> = notifications
        .into_iter()
        .map(|n| n.unwrap().new_mail().next().unwrap().id.clone())
        .collect();
    assert_eq!(ids, ["i1", "i2"]);
}

/// Answers one request with a chunked 200 whose chunks are `chunks`, then closes the connection
/// without the final chunk, as a gateway cutting a blocked device's stream does.
async fn cutting_server(chunks: Vec<Vec<u8>>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = seg_testbed::harness::local_listener().await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // Read the whole request first, so that closing does not reset the connection.
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = socket.read(&mut buffer).await.unwrap();
            request.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if request.len() >= head_end + 4 + length {
                    break;
                }
            }
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/xml; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for chunk in chunks {
            let framed = [
                format!("{:x}\r\n", chunk.len()).into_bytes(),
                chunk,
                b"\r\n".to_vec(),
            ]
            .concat();
            socket.write_all(&framed).await.unwrap();
            socket.flush().await.unwrap();
        }
        let _ = socket.shutdown().await;
    });
    format!("http://{addr}/EWS/Exchange.asmx")
}

#[tokio::test]
async fn a_stream_over_the_network_byte_by_byte_then_cut_is_a_transport_error() {
    let mut chunks: Vec<Vec<u8>> = new_mail("i1")
        .into_bytes()
        .into_iter()
        .map(|b| vec![b])
        .collect();
    let half = new_mail("i2");
    chunks.push(half.as_bytes()[..half.len() / 2].to_vec());
    let url = cutting_server(chunks).await;
    let client = EwsClient::http(url.parse().unwrap());
    let mut stream = client
        .get_streaming_events(GetStreamingEvents::new("s1", 1))
        .await
        .unwrap();
    let first = within(DEADLINE, "the first notification", stream.next())
        .await
        .unwrap();
    assert_eq!(first.unwrap().unwrap().new_mail().next().unwrap().id, "i1");
    let end = within(DEADLINE, "the end of the cut stream", stream.next())
        .await
        .unwrap();
    assert!(matches!(end, Some(Err(EwsError::Transport(_)))), "{end:?}");
    assert!(!stream.is_closed());
}

#[tokio::test]
async fn a_stream_ending_without_closed_is_told_apart() {
    let mut upstream = ScriptedUpstream::streaming().await.unwrap();
    let client = EwsClient::http(
        format!("{}/EWS/Exchange.asmx", upstream.url())
            .parse()
            .unwrap(),
    );
    let mut stream = client
        .get_streaming_events(GetStreamingEvents::new("s1", 1))
        .await
        .unwrap();
    assert!(
        upstream
            .send_chunk(envelope("<m:ConnectionStatus>OK</m:ConnectionStatus>"))
            .await
    );
    upstream.end_stream();
    let end = within(DEADLINE, "the end", stream.next()).await.unwrap();
    assert!(matches!(end, Some(Err(EwsError::StreamEnded))), "{end:?}");
    assert_eq!(stream.keepalives(), 1);
}

#[tokio::test]
async fn an_oversized_envelope_ends_the_stream_with_an_error() {
    let huge = new_mail(&"x".repeat(10_000));
    let body = http_body_util::Full::new(Bytes::from(huge));
    let mut stream = NotificationStream::new(body, 1024);
    let end = within(Duration::from_secs(1), "the error", stream.next())
        .await
        .unwrap();
    assert!(matches!(end, Some(Err(EwsError::Malformed(_)))), "{end:?}");
    assert!(stream.next().await.is_none());
}
