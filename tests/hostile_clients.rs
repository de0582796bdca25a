//! Hostile clients, over raw sockets: requests built byte by byte to be ambiguous (request
//! smuggling), too big, or too many. Each must get a defined answer from the gateway, and
//! Exchange (a recording upstream behind the testbed's fault proxy, which counts every byte
//! that reaches it) must never see a request in a smuggled or ambiguous form.
//!
//! The table of what is tried and what was observed is in `docs/reliability.md`.

mod support;

use seg_proxy::Gateway;
use seg_testbed::fault_proxy::{Direction, Fault, FaultHandle, FaultProxy};
use seg_testbed::pki::TestPki;
use seg_testbed::upstream::{ScriptedUpstream, SeenRequest};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// A SOAP body of `GetFolder`, as a client sends it.
fn get_folder() -> String {
    soap(
        r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#,
    )
}

/// A recording Exchange behind a fault proxy (passing everything, counting the bytes), and a
/// gateway in front of the proxy listening on plain HTTP and on TLS.
struct Stand {
    exchange: ScriptedUpstream,
    _proxy: FaultProxy,
    faults: FaultHandle,
    gateway: Gateway,
    pki: TestPki,
    _dir: tempfile::TempDir,
}

impl Stand {
    async fn start(configure: impl FnOnce(&mut seg_proxy::config::Config)) -> Stand {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(dir.path()).unwrap();
        let exchange = ScriptedUpstream::echo(None).await.unwrap();
        let proxy = FaultProxy::start(exchange.addr()).await.unwrap();
        let mut config = over_tls(config_for(&format!("http://{}", proxy.addr())), &pki);
        config.listen.http = Some("127.0.0.1:0".parse().unwrap());
        configure(&mut config);
        let gateway = start(config).await;
        Stand {
            exchange,
            faults: proxy.handle(),
            _proxy: proxy,
            gateway,
            pki,
            _dir: dir,
        }
    }

    /// Writes `bytes` on a new plain connection and reads until the gateway closes it; the
    /// responses it sent.
    async fn plain(&self, bytes: &[u8]) -> Vec<RawResponse> {
        let stream = tokio::net::TcpStream::connect(self.gateway.http_addr().unwrap())
            .await
            .unwrap();
        exchange_bytes(stream, bytes).await
    }

    /// The same over TLS.
    async fn tls(&self, bytes: &[u8]) -> Vec<RawResponse> {
        exchange_bytes(raw_tls(&self.gateway, &self.pki).await, bytes).await
    }

    /// The bytes that reached Exchange so far.
    fn bytes_to_exchange(&self) -> u64 {
        self.faults.forwarded(Direction::ClientToServer)
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.exchange.requests()
    }
}

/// One response as read off the wire.
#[derive(Debug, Clone)]
struct RawResponse {
    status: u16,
    /// The head, lower case.
    head: String,
    body: Vec<u8>,
}

/// Writes `bytes`, then reads until the peer closes (or resets) the connection, within
/// [`STEP`]; the complete responses read.
async fn exchange_bytes<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    bytes: &[u8],
) -> Vec<RawResponse> {
    // The gateway may answer and close before reading all of it: a failed write is expected.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let mut received = Vec::new();
    let read = seg_testbed::harness::within(STEP, "the gateway to close the connection", async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the gateway kept the connection open; it sent: {}",
        String::from_utf8_lossy(&received)
    );
    parse_responses(&received)
}

/// The complete HTTP/1.1 responses in `bytes` (by `Content-Length` or chunked).
fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut responses = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let mut rest = &bytes[end + 4..];
        let mut body = Vec::new();
        if let Some(length) = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
        {
            let length: usize = length.trim().parse().unwrap();
            if rest.len() < length {
                break;
            }
            body.extend_from_slice(&rest[..length]);
            rest = &rest[length..];
        } else if head.contains("transfer-encoding: chunked") {
            loop {
                let Some(line_end) = find(rest, b"\r\n") else {
                    return responses;
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
                        .unwrap();
                rest = &rest[line_end + 2..];
                if rest.len() < size + 2 {
                    return responses;
                }
                body.extend_from_slice(&rest[..size]);
                rest = &rest[size + 2..];
                if size == 0 {
                    break;
                }
            }
        }
        responses.push(RawResponse { status, head, body });
        bytes = rest;
    }
    responses
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A request head for `/EWS/Exchange.asmx` with these extra header lines (each ending in CRLF).
fn head(extra: &str) -> String {
    format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: seg.test.local\r\nContent-Type: text/xml; charset=utf-8\r\n{extra}\r\n"
    )
}

/// A well-formed request for a second, smuggled path: never to be seen by Exchange.
const SMUGGLED: &str =
    "POST /EWS/smuggled HTTP/1.1\r\nHost: seg.test.local\r\nContent-Length: 0\r\n\r\n";

/// Asserts that Exchange saw exactly one request per body in `expected`, each for the EWS path
/// with exactly that body (the whole body the gateway read), and never the smuggled request.
fn assert_nothing_smuggled(stand: &Stand, expected: &[&[u8]]) {
    let seen = stand.requests();
    for request in &seen {
        assert_eq!(request.path, "/EWS/Exchange.asmx", "{request:?}");
    }
    let bodies: Vec<&[u8]> = seen.iter().map(|request| &request.body[..]).collect();
    assert_eq!(bodies, expected, "what reached Exchange");
}

/// Runs one attack over plain HTTP and over TLS (on a fresh gateway each, so that what
/// reached Exchange is known per transport); asserts both got the same statuses, `statuses`.
async fn over_both_transports(
    attack: &[u8],
    statuses: &[u16],
    check: impl Fn(&Stand, &[RawResponse]),
) {
    for transport in ["plain", "tls"] {
        let stand = Stand::start(|_| {}).await;
        let responses = match transport {
            "plain" => stand.plain(attack).await,
            _ => stand.tls(attack).await,
        };
        let got: Vec<u16> = responses.iter().map(|r| r.status).collect();
        assert_eq!(got, statuses, "{transport}: {responses:?}");
        check(&stand, &responses);
    }
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_read_as_chunked_and_the_connection_closed() {
    // CL.TE: a front end reading Content-Length would pass the chunked terminator and the next
    // request as this one's body; one reading chunked sees the next request as a new one.
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let attack = format!(
        "{}{body}",
        head(&format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        ))
    );
    over_both_transports(attack.as_bytes(), &[200], |stand, responses| {
        // Read as chunked (an empty body), answered, then the connection is closed without
        // reading the rest as a request (RFC 9112, section 6.3).
        assert!(
            responses[0].head.contains("connection: close"),
            "{responses:?}"
        );
        assert_nothing_smuggled(stand, &[b""]);
        // Exchange gets no Transfer-Encoding and a length that matches the body.
        let seen = &stand.requests()[0];
        assert!(seen.headers.get("transfer-encoding").is_none(), "{seen:?}");
        assert!(
            seen.headers
                .get("content-length")
                .is_none_or(|length| length == "0"),
            "{seen:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn transfer_encoding_before_content_length_is_read_as_chunked() {
    // TE.CL: a back end trusting Content-Length would stop inside the chunk and read the rest
    // as a request.
    let chunk = format!("<x>{SMUGGLED}</x>");
    let attack = format!(
        "{}{:x}\r\n{chunk}\r\n0\r\n\r\n",
        head("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"),
        chunk.len()
    );
    over_both_transports(attack.as_bytes(), &[200], |stand, responses| {
        assert!(
            responses[0].head.contains("connection: close"),
            "{responses:?}"
        );
        // The whole chunk is one body: it reaches Exchange whole, as a body, in the gateway's
        // own chunked framing, and the client's Content-Length is not passed on beside it.
        assert_nothing_smuggled(stand, &[chunk.as_bytes()]);
        let seen = &stand.requests()[0];
        assert_eq!(seen.path, "/EWS/Exchange.asmx");
        assert_eq!(seen.headers["transfer-encoding"], "chunked");
        assert!(seen.headers.get("content-length").is_none(), "{seen:?}");
    })
    .await;
}

#[tokio::test]
async fn conflicting_content_lengths_get_400_and_nothing_reaches_exchange() {
    let body = get_folder();
    let attack = format!(
        "{}{body}{SMUGGLED}",
        head(&format!(
            "Content-Length: {}\r\nContent-Length: {}\r\n",
            body.len(),
            body.len() + SMUGGLED.len()
        ))
    );
    over_both_transports(attack.as_bytes(), &[400], |stand, _| {
        assert_eq!(stand.bytes_to_exchange(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_comma_separated_content_length_list_that_disagrees_gets_400() {
    let body = get_folder();
    let attack = format!(
        "{}{body}",
        head(&format!("Content-Length: {}, 0\r\n", body.len()))
    );
    over_both_transports(attack.as_bytes(), &[400], |stand, _| {
        assert_eq!(stand.bytes_to_exchange(), 0);
    })
    .await;
}

#[tokio::test]
async fn identical_duplicate_content_lengths_are_one_length() {
    let body = get_folder();
    let attack = format!(
        "{}{body}",
        head(&format!(
            "Content-Length: {0}\r\nContent-Length: {0}\r\nConnection: close\r\n",
            body.len()
        ))
    );
    over_both_transports(attack.as_bytes(), &[200], |stand, _| {
        assert_nothing_smuggled(stand, &[body.as_bytes()]);
    })
    .await;
}

#[tokio::test]
async fn obs_fold_header_lines_get_400_and_nothing_reaches_exchange() {
    let body = get_folder();
    for folded in [
        // A folded ordinary header.
        format!(
            "X-Device-Id: EASDEV1\r\n EASDEV2\r\nContent-Length: {}\r\n",
            body.len()
        ),
        // A folded Content-Length: one reader sees the length, another a different one.
        format!("Content-Length: {}\r\n 0\r\n", body.len()),
        // A folded Transfer-Encoding.
        "Transfer-Encoding:\r\n chunked\r\n".to_owned(),
    ] {
        let attack = format!("{}{body}", head(&folded));
        over_both_transports(attack.as_bytes(), &[400], |stand, _| {
            assert_eq!(stand.bytes_to_exchange(), 0, "{folded:?}");
        })
        .await;
    }
}

#[tokio::test]
async fn transfer_encodings_other_than_chunked_get_400() {
    for encoding in ["gzip", "chunked, gzip", "xchunked"] {
        let attack = format!(
            "{}5\r\nhello\r\n0\r\n\r\n",
            head(&format!("Transfer-Encoding: {encoding}\r\n"))
        );
        over_both_transports(attack.as_bytes(), &[400], |stand, _| {
            assert_eq!(stand.bytes_to_exchange(), 0, "{encoding}");
        })
        .await;
    }
}

#[tokio::test]
async fn bad_chunk_sizes_get_a_400_soap_fault_and_nothing_reaches_exchange() {
    for size in [
        // Not hexadecimal.
        "zz",
        // Sizes that overflow 64 bits.
        "10000000000000000",
        "ffffffffffffffffff",
        // A negative size.
        "-5",
    ] {
        let attack = format!(
            "{}{size}\r\nhello\r\n0\r\n\r\n",
            head("Transfer-Encoding: chunked\r\n")
        );
        over_both_transports(attack.as_bytes(), &[400], |stand, responses| {
            assert!(
                responses[0]
                    .head
                    .contains("x-seg-fault: request-body-unreadable"),
                "{size}: {responses:?}"
            );
            assert!(String::from_utf8_lossy(&responses[0].body).contains("<faultcode"));
            assert_eq!(stand.bytes_to_exchange(), 0, "{size}");
        })
        .await;
    }
}

/// A first chunk longer than its size says, hiding a request after its announced end.
fn overlong_chunk() -> String {
    format!(
        "{}5\r\nhello{SMUGGLED}\r\n0\r\n\r\n",
        head("Transfer-Encoding: chunked\r\n")
    )
}

#[tokio::test]
async fn a_chunk_longer_than_its_size_never_reaches_exchange() {
    let stand = Stand::start(|_| {}).await;
    let responses = stand.plain(overlong_chunk().as_bytes()).await;
    // A defined answer (which one: see the ignored test below), then the connection closes.
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert!([400, 502].contains(&responses[0].status), "{responses:?}");
    // Exchange never gets a complete request built from it, nor the hidden one.
    let seen = stand.requests();
    assert!(
        seen.iter().all(|request| request.body.is_empty()),
        "{seen:?}"
    );
    assert_nothing_smuggled(&stand, &vec![&b""[..]; seen.len()]);
}

#[tokio::test]
async fn a_chunk_longer_than_its_size_gets_a_400_not_a_502_blaming_exchange() {
    let stand = Stand::start(|_| {}).await;
    let responses = stand.plain(overlong_chunk().as_bytes()).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400], "{responses:?}");
    assert!(
        responses[0]
            .head
            .contains("x-seg-fault: request-body-unreadable")
    );
    assert_eq!(stand.bytes_to_exchange(), 0);
}

#[tokio::test]
async fn more_headers_than_allowed_get_431_and_nothing_reaches_exchange() {
    let many: String = (0..200).map(|n| format!("X-Filler-{n}: {n}\r\n")).collect();
    let attack = head(&format!("{many}Content-Length: 0\r\n"));
    over_both_transports(attack.as_bytes(), &[431], |stand, _| {
        assert_eq!(stand.bytes_to_exchange(), 0);
    })
    .await;
}

#[tokio::test]
async fn an_oversized_header_block_gets_431_or_a_close_and_nothing_reaches_exchange() {
    // 1 MiB of one header value: beyond hyper's read buffer limit.
    let huge = format!("X-Huge: {}\r\nContent-Length: 0\r\n", "a".repeat(1 << 20));
    let attack = head(&huge);
    for transport in ["plain", "tls"] {
        let stand = Stand::start(|_| {}).await;
        let responses = match transport {
            "plain" => stand.plain(attack.as_bytes()).await,
            _ => stand.tls(attack.as_bytes()).await,
        };
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        assert!(
            statuses == [431] || statuses.is_empty(),
            "{transport}: {statuses:?}"
        );
        assert_eq!(stand.bytes_to_exchange(), 0, "{transport}");
    }
}

#[tokio::test]
async fn an_oversized_body_gets_a_413_soap_fault_and_nothing_reaches_exchange() {
    let big = soap(&format!(
        "<m:CreateItem>{}</m:CreateItem>",
        "x".repeat(64 * 1024)
    ));
    let announced = format!(
        "{}{big}",
        head(&format!("Content-Length: {}\r\n", big.len()))
    );
    let chunked = format!(
        "{}{:x}\r\n{big}\r\n0\r\n\r\n",
        head("Transfer-Encoding: chunked\r\n"),
        big.len()
    );
    for attack in [announced, chunked] {
        let stand = Stand::start(|config| config.ews.max_body_size = 16 * 1024).await;
        let responses = stand.plain(attack.as_bytes()).await;
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [413], "{responses:?}");
        assert!(responses[0].head.contains("x-seg-fault: body-too-large"));
        assert!(String::from_utf8_lossy(&responses[0].body).contains("<faultcode"));
        assert!(
            stand
                .requests()
                .iter()
                .all(|request| request.body.len() <= 16 * 1024),
            "an oversized body reached Exchange whole"
        );
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_from_one_address_wait_and_idle_ones_are_cut() {
    let stand = Stand::start(|config| {
        config.server.max_connections = 3;
        config.server.idle_timeout = Duration::from_millis(300);
        config.server.header_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = stand.gateway.http_addr().unwrap();
    // Three idle connections from 127.0.0.1 take every slot and send nothing.
    let mut hogs = Vec::new();
    for _ in 0..3 {
        hogs.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Ten more from the same address, each with a whole request; the kernel queues them.
    let body = get_folder();
    let request = format!(
        "{}{body}",
        head(&format!(
            "Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        ))
    );
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let request = request.clone();
        waiting.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            exchange_bytes(stream, request.as_bytes()).await
        });
    }

    // The hogs are cut by the header/idle timeout, freeing the slots; every queued client is
    // then served, each with its own answer.
    for mut hog in hogs {
        let mut byte = [0u8; 1];
        let closed = seg_testbed::harness::within(STEP, "a hog to be cut", hog.read(&mut byte))
            .await
            .expect("the idle connection is closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
    let mut served = 0;
    while let Some(responses) = waiting.join_next().await {
        let responses = responses.unwrap();
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].status, 200);
        assert_eq!(responses[0].body, body.as_bytes());
        served += 1;
    }
    assert_eq!(served, 10);
    assert_eq!(stand.requests().len(), 10);
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_closed_at_once_and_the_slot_comes_back() {
    let stand = Stand::start(|config| config.server.max_connections_per_address = 2).await;
    let addr = stand.gateway.http_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The third from 127.0.0.1 is accepted and closed before anything is read from it.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = seg_testbed::harness::within(
        STEP,
        "the third connection to be closed",
        third.read(&mut byte),
    )
    .await
    .expect("the connection beyond the cap is closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert_eq!(stand.requests().len(), 0);

    // One of the two goes: its place is given back, and a new connection is served.
    drop(held.pop());
    let body = get_folder();
    let request = format!(
        "{}{body}",
        head(&format!(
            "Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        ))
    );
    seg_testbed::harness::wait_until(STEP, "a connection to be served again", || async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let responses = exchange_bytes(stream, request.as_bytes()).await;
        responses.first().is_some_and(|r| r.status == 200)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_device_beyond_its_requests_in_flight_gets_503_server_busy_and_others_are_served() {
    let stand = Stand::start(|config| config.limits.max_requests_per_device = 2).await;
    let addr = stand.gateway.http_addr().unwrap();
    let body = get_folder();
    let request = |device: &str| {
        format!(
            "{}{body}",
            head(&format!(
                "X-Device-Id: {device}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            ))
        )
    };
    // Exchange's answers are held back: the device's first two requests stay in flight.
    stand
        .faults
        .set(Direction::ServerToClient, Fault::StallAfter(0));
    let mut in_flight = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let request = request("EASDEV1");
        in_flight.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            exchange_bytes(stream, request.as_bytes()).await
        });
    }
    seg_testbed::harness::wait_until(STEP, "two requests at Exchange", || async {
        stand.requests().len() == 2
    })
    .await
    .unwrap();

    // The third of the same device (in another case) is refused by the gateway itself.
    let refused = stand.plain(request("easdev1").as_bytes()).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].status, 503);
    assert!(
        refused[0].head.contains("retry-after: 1"),
        "{}",
        refused[0].head
    );
    assert!(
        refused[0].head.contains("x-seg-fault: device-limit"),
        "{}",
        refused[0].head
    );
    assert!(
        String::from_utf8_lossy(&refused[0].body).contains("ErrorServerBusy"),
        "{:?}",
        String::from_utf8_lossy(&refused[0].body)
    );
    // Another device still reaches Exchange.
    let other = request("EASDEV2");
    in_flight.spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        exchange_bytes(stream, other.as_bytes()).await
    });
    seg_testbed::harness::wait_until(STEP, "the other device's request at Exchange", || async {
        stand.requests().len() == 3
    })
    .await
    .unwrap();

    // Exchange answers: every held request completes, and the device has its slots back.
    stand.faults.set(Direction::ServerToClient, Fault::Pass);
    while let Some(responses) = in_flight.join_next().await {
        assert_eq!(responses.unwrap()[0].status, 200);
    }
    let again = stand.plain(request("EASDEV1").as_bytes()).await;
    assert_eq!(again[0].status, 200);
    assert_eq!(
        stand.requests().len(),
        4,
        "the refused request never reached Exchange"
    );
}

// ---------------------------------------------------------------------------------------------
// Slow bodies

/// How often a trickling client sends its next byte: well within the idle timeout below, so
/// the connection is never idle.
const TRICKLE: Duration = Duration::from_millis(50);

/// A gateway whose header timeout (`SLOW_HEADER_TIMEOUT`) and idle timeout (`SLOW_IDLE`) are
/// short, and whose Exchange timeout is `SLOW_EXCHANGE_TIMEOUT`.
async fn slow_body_stand() -> Stand {
    slow_body_stand_with(|_| {}).await
}

async fn slow_body_stand_with(configure: impl FnOnce(&mut seg_proxy::config::Config)) -> Stand {
    Stand::start(|config| {
        config.server.header_timeout = SLOW_HEADER_TIMEOUT;
        config.server.idle_timeout = SLOW_IDLE;
        config.exchange.timeout = SLOW_EXCHANGE_TIMEOUT;
        configure(config);
    })
    .await
}
const SLOW_HEADER_TIMEOUT: Duration = Duration::from_millis(600);
const SLOW_IDLE: Duration = Duration::from_millis(400);
const SLOW_EXCHANGE_TIMEOUT: Duration = Duration::from_millis(800);
/// What a busy machine may add to a bound.
const SLACK: Duration = Duration::from_millis(1500);

/// Opens a plain connection, writes `sent` at once, then the rest of `request` one byte every
/// [`TRICKLE`] (until the gateway stops reading); reads until the gateway closes the
/// connection. The responses, and how long after the first write the connection closed.
async fn trickle(stand: &Stand, request: &[u8], sent: usize) -> (Vec<RawResponse>, Duration) {
    let stream = tokio::net::TcpStream::connect(stand.gateway.http_addr().unwrap())
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = tokio::time::Instant::now();
    writer.write_all(&request[..sent]).await.unwrap();
    let rest = request[sent..].to_vec();
    let writing = tokio::spawn(async move {
        for byte in rest {
            tokio::time::sleep(TRICKLE).await; // the client's pace, not synchronisation
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let mut received = Vec::new();
    let read = seg_testbed::harness::within(STEP, "the gateway to close the connection", async {
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let closed = started.elapsed();
    writing.abort();
    assert!(
        read.is_ok(),
        "the gateway kept a trickling client's connection open; it sent: {}",
        String::from_utf8_lossy(&received)
    );
    (parse_responses(&received), closed)
}

/// Asserts that the gateway answered one `408 request-body-timeout` SOAP fault and closed the
/// connection `bound` (give or take [`SLACK`]) after the first write.
fn assert_body_timeout(responses: &[RawResponse], closed: Duration, bound: Duration) {
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(responses[0].status, 408);
    assert!(
        responses[0]
            .head
            .contains("x-seg-fault: request-body-timeout"),
        "{}",
        responses[0].head
    );
    assert!(
        String::from_utf8_lossy(&responses[0].body).contains("ErrorTimeoutExpired"),
        "{responses:?}"
    );
    assert!(
        closed >= bound && closed < bound + SLACK,
        "closed after {closed:?}"
    );
}

/// A `GetFolder` request whose body starts with `padding` bytes of XML comment, so that its
/// operation comes late.
fn padded_request(padding: usize) -> String {
    let body = format!(
        "<?xml version=\"1.0\"?><!--{}-->{}",
        "x".repeat(padding),
        get_folder()
    );
    format!(
        "{}{body}",
        head(&format!("Content-Length: {}\r\n", body.len()))
    )
}

#[tokio::test]
async fn a_body_trickled_before_its_operation_gets_a_408_within_the_header_timeout() {
    let stand = slow_body_stand().await;
    let request = padded_request(4096);
    let head_len = request.find("\r\n\r\n").unwrap() + 4;

    // The headers at once, then the body a byte at a time: at 20 bytes a second its operation
    // would arrive after more than three minutes.
    let trickler = trickle(&stand, request.as_bytes(), head_len + 10);
    // Another client, meanwhile, is served as usual.
    let other = async {
        let body = get_folder();
        stand
            .plain(
                format!(
                    "{}{body}",
                    head(&format!(
                        "Content-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    ))
                )
                .as_bytes(),
            )
            .await
    };
    let ((responses, closed), other) = tokio::join!(trickler, other);

    assert_eq!(other.len(), 1);
    assert_eq!(other[0].status, 200);
    assert_body_timeout(&responses, closed, SLOW_HEADER_TIMEOUT);
    // Only the other client's request reached Exchange.
    assert_eq!(stand.requests().len(), 1);
}

/// A `Ping` may wait at Exchange for as long as its heartbeat (`exchange.hanging_timeout`), but
/// only once its body is there: one whose body trickles gets the 408 of any request, within
/// `exchange.timeout`, and does not hold its connection for an hour.
#[tokio::test]
async fn a_ping_whose_body_trickles_gets_a_408_within_the_exchange_timeout() {
    let stand = slow_body_stand_with(|config| config.activesync.enable_proxy = true).await;
    // A Ping's WBXML body (Ping, HeartbeatInterval 900, one folder), as an iPhone sends it.
    let body = b"\x03\x01\x6a\x00\x00\x0d\x45\x48\x03900\x00\x01\x49\x4a\x4b\x035\x00\x01\x4c\x03Email\x00\x01\x01\x01\x01";
    let mut request = format!(
        "POST /Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=EAS1&DeviceType=iPhone HTTP/1.1\r\n\
         Host: seg.test.local\r\nContent-Type: application/vnd.ms-sync.wbxml\r\n\
         MS-ASProtocolVersion: 14.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    let head_len = request.len();
    request.extend_from_slice(body);

    let (responses, closed) = trickle(&stand, &request, head_len + 4).await;

    assert_body_timeout(&responses, closed, SLOW_EXCHANGE_TIMEOUT);
    assert!(stand.requests().is_empty(), "{:?}", stand.requests());
}

#[tokio::test]
async fn a_body_trickled_after_its_operation_gets_a_408_within_the_exchange_timeout() {
    let stand = slow_body_stand().await;
    let body = format!("{}{}", get_folder(), " ".repeat(4096));
    let request = format!(
        "{}{body}",
        head(&format!("Content-Length: {}\r\n", body.len()))
    );
    let head_len = request.find("\r\n\r\n").unwrap() + 4;

    // The operation arrives at once; the rest of the body (whitespace after the envelope)
    // trickles on. The gateway forwards the request as it comes, and Exchange waits for the
    // whole body before it answers: the Exchange timeout ends it, blaming the client.
    let (responses, closed) =
        trickle(&stand, request.as_bytes(), head_len + get_folder().len()).await;

    assert_body_timeout(&responses, closed, SLOW_EXCHANGE_TIMEOUT);
    // Exchange never got a whole request, and the gateway serves the next client.
    assert!(stand.requests().is_empty(), "{:?}", stand.requests());
    let responses = stand
        .plain(
            format!(
                "{}{}",
                head(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n",
                    get_folder().len()
                )),
                get_folder()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(responses[0].status, 200);
}

#[tokio::test]
async fn a_client_that_stops_mid_body_is_cut_by_the_idle_timeout() {
    let stand = slow_body_stand().await;
    let request = padded_request(0);
    let stream = tokio::net::TcpStream::connect(stand.gateway.http_addr().unwrap())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();

    // The headers and half of the body, then silence.
    let responses = exchange_bytes(stream, &request.as_bytes()[..request.len() - 40]).await;
    let closed = started.elapsed();

    // Whatever comes first, the idle timeout or the body's read timeout, ends it.
    assert!(
        responses.is_empty() || responses[0].status == 408,
        "{responses:?}"
    );
    assert!(
        closed >= SLOW_IDLE && closed < SLOW_HEADER_TIMEOUT + SLACK,
        "closed after {closed:?}"
    );
    assert!(stand.requests().is_empty(), "{:?}", stand.requests());
}

/// IIS resolves `..` (also `%2e%2e`) and takes `\` for `/` before it picks the application: a
/// path routed on as written would reach the admin center (`/ecp`), OWA or PowerShell through
/// the EWS route, or EWS through ActiveSync's. Each gets 400; Exchange sees none of them.
#[tokio::test]
async fn paths_with_dot_segments_or_encoded_separators_get_400_and_never_reach_exchange() {
    let stand = Stand::start(|config| config.activesync.enable_proxy = true).await;
    let paths = [
        "/EWS/../ecp/default.aspx",
        "/ews/%2e%2e/owa/",
        "/EWS/.%2E/powershell",
        "/Microsoft-Server-ActiveSync/%2e%2e/EWS/Exchange.asmx",
        "/EWS/..%2fecp",
        "/EWS/..%5cecp",
        "/EWS/./Exchange.asmx",
    ];
    let mut requests = String::new();
    for (n, path) in paths.iter().enumerate() {
        let close = if n + 1 == paths.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        requests.push_str(&format!(
            "GET {path} HTTP/1.1\r\nHost: seg.test.local\r\n{close}Content-Length: 0\r\n\r\n"
        ));
    }
    let responses = stand.plain(requests.as_bytes()).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400; 7], "{responses:?}");
    for response in &responses {
        assert!(
            response.head.contains("x-seg-fault: path-not-canonical"),
            "{response:?}"
        );
    }
    assert_eq!(stand.bytes_to_exchange(), 0);
    assert!(stand.requests().is_empty());
}
