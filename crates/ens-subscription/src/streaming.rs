//! [`NotificationStream`]: the notifications of a `GetStreamingEvents` response, one at a time,
//! as the chunked body arrives.
//!
//! The response is one long body of concatenated `<Envelope>` documents (notifications,
//! `ConnectionStatus` keep-alives, a final `Closed`). The stream finds the end of each document
//! with a small byte scanner (so a document split across chunks, even byte by byte, is read
//! once complete), parses it, and yields its notifications. The bytes of an incomplete
//! document are bounded: one larger than the limit ends the stream with
//! [`EwsError::Malformed`].
//!
//! How the stream ends tells the caller what to do:
//! - `None` after `ConnectionStatus` `Closed`: the server closed it in good order (its
//!   `ConnectionTimeout` elapsed); open a new one.
//! - `Some(Err(EwsError::Transport(_)))`: the connection was cut (the gateway cuts the streams
//!   of a device it blocks; the next request then answers [`EwsError::Blocked`]).
//! - `Some(Err(EwsError::StreamEnded))`: the body ended without `Closed`.
//! - `Some(Err(e))` for an EWS error such as [`EwsError::SubscriptionNotFound`]: resubscribe.
//!
//! ```
//! use bytes::Bytes;
//! use ens_subscription::streaming::NotificationStream;
//! use futures_util::StreamExt as _;
//! use http_body_util::Full;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let envelope = |inner: &str| format!(
//!     r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><m:GetStreamingEventsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:GetStreamingEventsResponseMessage></m:ResponseMessages></m:GetStreamingEventsResponse></Body></Envelope>"#);
//! let body = envelope("<m:Notifications><m:Notification><t:SubscriptionId>s1</t:SubscriptionId><t:NewMailEvent><t:Watermark>w1</t:Watermark><t:ItemId Id=\"i1\"/></t:NewMailEvent></m:Notification></m:Notifications>")
//!     + &envelope("<m:ConnectionStatus>Closed</m:ConnectionStatus>");
//! let mut stream = NotificationStream::new(Full::new(Bytes::from(body)), 64 * 1024);
//! let notification = stream.next().await.unwrap().unwrap();
//! assert_eq!(notification.new_mail().next().unwrap().id, "i1");
//! assert!(stream.next().await.is_none());
//! assert!(stream.is_closed());
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::Stream;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::error::{BoxError, EwsError};
use crate::soap::{self, ConnectionStatus, Notification};

pin_project! {
    /// The notifications of a `GetStreamingEvents` response body; see the [module](self).
    pub struct NotificationStream<B> {
        #[pin]
        body: B,
        splitter: Splitter,
        pending: VecDeque<Notification>,
        done: bool,
        closed: bool,
        keepalives: u64,
    }
}

impl<B> fmt::Debug for NotificationStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationStream")
            .field("body", &std::any::type_name::<B>())
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .field("closed", &self.closed)
            .finish()
    }
}

impl<B> NotificationStream<B> {
    /// Reads `body`, refusing any single envelope larger than `max_envelope_bytes`.
    pub fn new(body: B, max_envelope_bytes: usize) -> Self {
        Self {
            body,
            splitter: Splitter::new(max_envelope_bytes),
            pending: VecDeque::new(),
            done: false,
            closed: false,
            keepalives: 0,
        }
    }

    /// Whether the server closed the stream with `ConnectionStatus` `Closed`.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// How many `ConnectionStatus` `OK` keep-alives arrived so far.
    pub fn keepalives(&self) -> u64 {
        self.keepalives
    }
}

impl<B> Stream for NotificationStream<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Item = Result<Notification, EwsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(notification) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(notification)));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match this.splitter.next_document() {
                Ok(Some(document)) => match soap::parse_streaming_envelope(&document) {
                    Ok(chunk) => {
                        this.pending.extend(chunk.notifications);
                        match chunk.status {
                            Some(ConnectionStatus::Closed) => {
                                *this.closed = true;
                                *this.done = true;
                            }
                            Some(ConnectionStatus::Ok) => *this.keepalives += 1,
                            None => {}
                        }
                        continue;
                    }
                    Err(error) => {
                        *this.done = true;
                        return Poll::Ready(Some(Err(error)));
                    }
                },
                Ok(None) => {}
                Err(error) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            match this.body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let len = chunk.len();
                            this.splitter.push(chunk);
                            data.advance(len);
                        }
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(EwsError::Transport(error.into()))));
                }
                Poll::Ready(None) => {
                    *this.done = true;
                    let error = if this.splitter.holds_content() {
                        EwsError::Malformed("the stream ends inside an envelope".into())
                    } else {
                        EwsError::StreamEnded
                    };
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

/// Where the scanner is within the markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Character data (or white space between documents).
    Text,
    /// Just after `<`.
    Open,
    /// Inside a start tag; `quote` is the open attribute quote, `last` the previous byte.
    StartTag { quote: Option<u8>, last: u8 },
    /// Inside an end tag.
    EndTag,
    /// Inside `<?…?>`.
    Instruction { last: u8 },
    /// After `<!`, having matched `seen` bytes of `--` or `[CDATA[`.
    Bang { seen: u8, cdata: bool },
    /// Inside a comment; `dashes` counts the `-` just seen.
    Comment { dashes: u8 },
    /// Inside a CDATA section; `brackets` counts the `]` just seen.
    CData { brackets: u8 },
}

const CDATA_OPEN: &[u8] = b"[CDATA[";

/// Cuts a byte stream into whole XML documents by tracking element depth, without parsing
/// them: the parser then sees each document whole.
#[derive(Debug)]
struct Splitter {
    buffer: BytesMut,
    /// How far `buffer` has been scanned.
    scanned: usize,
    depth: usize,
    scan: Scan,
    /// Whether anything but white space was seen in the current document.
    content: bool,
    max: usize,
}

impl Splitter {
    fn new(max: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            scanned: 0,
            depth: 0,
            scan: Scan::Text,
            content: false,
            max,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    fn holds_content(&self) -> bool {
        self.content
            || self.buffer[self.scanned..]
                .iter()
                .any(|b| !b.is_ascii_whitespace())
    }

    /// The next complete document, if the buffer holds one.
    ///
    /// # Errors
    ///
    /// [`EwsError::Malformed`] for text outside a document, a DTD, unbalanced tags, or a
    /// document larger than the limit.
    fn next_document(&mut self) -> Result<Option<Bytes>, EwsError> {
        while self.scanned < self.buffer.len() {
            let byte = self.buffer[self.scanned];
            self.scanned += 1;
            if self.scanned > self.max {
                return Err(EwsError::Malformed(format!(
                    "a streamed envelope exceeds {} bytes",
                    self.max
                )));
            }
            if self.step(byte)? {
                let document = self.buffer.split_to(self.scanned).freeze();
                self.scanned = 0;
                self.content = false;
                return Ok(Some(document));
            }
        }
        Ok(None)
    }

    /// Advances the scanner by one byte; `true` when it completes a document.
    fn step(&mut self, byte: u8) -> Result<bool, EwsError> {
        let malformed = |why: &str| Err(EwsError::Malformed(why.to_string()));
        self.scan = match self.scan {
            Scan::Text => {
                if byte == b'<' {
                    self.content = true;
                    Scan::Open
                } else if self.depth == 0 && !byte.is_ascii_whitespace() && !is_bom(byte) {
                    return malformed("text outside an envelope");
                } else {
                    Scan::Text
                }
            }
            Scan::Open => match byte {
                b'/' => Scan::EndTag,
                b'?' => Scan::Instruction { last: 0 },
                b'!' => Scan::Bang {
                    seen: 0,
                    cdata: false,
                },
                _ => Scan::StartTag {
                    quote: None,
                    last: byte,
                },
            },
            Scan::StartTag { quote, last } => match (quote, byte) {
                (None, b'"' | b'\'') => Scan::StartTag {
                    quote: Some(byte),
                    last: byte,
                },
                (Some(q), b) if b == q => Scan::StartTag {
                    quote: None,
                    last: byte,
                },
                (None, b'>') => {
                    self.scan = Scan::Text;
                    if last == b'/' {
                        return Ok(self.depth == 0);
                    }
                    self.depth += 1;
                    return Ok(false);
                }
                (quote, _) => Scan::StartTag { quote, last: byte },
            },
            Scan::EndTag => {
                if byte == b'>' {
                    self.scan = Scan::Text;
                    let Some(depth) = self.depth.checked_sub(1) else {
                        return malformed("an end tag without a start tag");
                    };
                    self.depth = depth;
                    return Ok(depth == 0);
                }
                Scan::EndTag
            }
            Scan::Instruction { last } => {
                if byte == b'>' && last == b'?' {
                    Scan::Text
                } else {
                    Scan::Instruction { last: byte }
                }
            }
            Scan::Bang { seen, cdata } => {
                let seen_next = seen + 1;
                match (seen, cdata, byte) {
                    (0, _, b'-') => Scan::Bang {
                        seen: 1,
                        cdata: false,
                    },
                    (1, false, b'-') => Scan::Comment { dashes: 0 },
                    (0, _, b'[') => Scan::Bang {
                        seen: 1,
                        cdata: true,
                    },
                    (s, true, b) if CDATA_OPEN.get(s as usize) == Some(&b) => {
                        if seen_next as usize == CDATA_OPEN.len() {
                            if self.depth == 0 {
                                return malformed("CDATA outside an envelope");
                            }
                            Scan::CData { brackets: 0 }
                        } else {
                            Scan::Bang {
                                seen: seen_next,
                                cdata: true,
                            }
                        }
                    }
                    _ => return malformed("document type declarations are not accepted"),
                }
            }
            Scan::Comment { dashes } => match byte {
                b'-' => Scan::Comment {
                    dashes: dashes.saturating_add(1),
                },
                b'>' if dashes >= 2 => Scan::Text,
                _ => Scan::Comment { dashes: 0 },
            },
            Scan::CData { brackets } => match byte {
                b']' => Scan::CData {
                    brackets: brackets.saturating_add(1),
                },
                b'>' if brackets >= 2 => Scan::Text,
                _ => Scan::CData { brackets: 0 },
            },
        };
        Ok(false)
    }
}

/// The bytes of a UTF-8 byte order mark, tolerated before a document.
fn is_bom(byte: u8) -> bool {
    matches!(byte, 0xEF | 0xBB | 0xBF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(input: &[u8], max: usize, step: usize) -> Result<Vec<String>, EwsError> {
        let mut splitter = Splitter::new(max);
        let mut out = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            splitter.push(chunk);
            while let Some(doc) = splitter.next_document()? {
                out.push(String::from_utf8_lossy(&doc).trim().to_string());
            }
        }
        Ok(out)
    }

    #[test]
    fn documents_are_cut_at_the_root_end_whatever_the_chunking() {
        let input =
            br#"<?xml version="1.0"?><a x="1>2" y='/>'><!-- </a> --><b/><![CDATA[</a>]]></a>
<c/><d><e></e></d>"#;
        for step in [1, 2, 3, 7, input.len()] {
            let docs = split_all(input, 1024, step).unwrap();
            assert_eq!(docs.len(), 3, "step {step}");
            assert!(docs[0].ends_with("]]></a>"));
            assert_eq!(docs[1], "<c/>");
            assert_eq!(docs[2], "<d><e></e></d>");
        }
    }

    #[test]
    fn oversized_and_hostile_input_is_refused() {
        assert!(split_all(&[b'<'; 100], 10, 1).is_err());
        assert!(split_all(b"hello", 100, 1).is_err());
        assert!(split_all(b"<!DOCTYPE x><x/>", 100, 1).is_err());
        assert!(split_all(b"</x>", 100, 1).is_err());
        let huge = format!("<a>{}</a>", "x".repeat(200));
        assert!(split_all(huge.as_bytes(), 100, 16).is_err());
        // Many small documents in one chunk are fine even beyond the limit in total.
        let many = "<a/>".repeat(100);
        assert_eq!(
            split_all(many.as_bytes(), 10, many.len()).unwrap().len(),
            100
        );
    }
}
