//! The bodies of the gateway's fuzz targets: one function per parser that reads what an outsider
//! controls, each taking the fuzzer's raw bytes.
//!
//! The libFuzzer harness in `fuzz/` (its own package, outside the workspace, built with
//! `cargo +nightly fuzz`) calls these functions, and so does the replay test of this crate
//! (`tests/replay.rs`), which runs every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through its target in the normal test suite: an input that once
//! crashed a parser is checked on every run, no fuzzer needed.
//!
//! A target panics when a parser panics, and when a property that must hold for every input
//! fails (a prefix of an EWS request that contradicts the whole, a stripped `WWW-Authenticate`
//! that still offers NTLM, a keytab that does not read back as it was written).
//!
//! ```
//! // Any bytes at all: a target returns normally unless it found a bug.
//! for (name, target) in fuzz_targets::TARGETS {
//!     target(b"<soap:Envelope");
//!     assert!(!name.is_empty());
//! }
//! ```

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue};

/// The body of a fuzz target: any bytes in, a panic when a bug is found.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary in `fuzz/fuzz_targets/` and of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("ews_operation", fuzz_ews_operation),
    ("www_authenticate", fuzz_www_authenticate),
    ("authorization", fuzz_authorization),
    ("spnego", fuzz_spnego),
    ("kdc_reply", fuzz_kdc_reply),
    ("keytab", fuzz_keytab),
    ("client_cert_upn", fuzz_client_cert_upn),
    ("uem_json", fuzz_uem_json),
    #[cfg(feature = "seg-proxy")]
    ("seg_properties", fuzz_seg_properties),
    ("ens_notification", fuzz_ens_notification),
    ("ens_stream", fuzz_ens_stream),
    ("admin_api", fuzz_admin_api),
    ("activesync_query", fuzz_activesync_query),
];

/// The EWS operation sniffer ([`ews_proxy_core::operation::sniff_operation`]).
///
/// Besides not panicking: a leading part of the body never contradicts the whole; it answers
/// [`Sniff::NeedMore`](ews_proxy_core::operation::Sniff::NeedMore) or what the whole answers.
pub fn fuzz_ews_operation(data: &[u8]) {
    use ews_proxy_core::operation::{Sniff, sniff_operation};
    let whole = sniff_operation(data);
    // At most 16 cuts, evenly spread, so a long input stays linear.
    let step = (data.len() / 16).max(1);
    for cut in (0..data.len()).step_by(step) {
        let part = sniff_operation(&data[..cut]);
        assert!(
            part == Sniff::NeedMore || part == whole,
            "the first {cut} bytes say {part:?}, the whole body says {whole:?}"
        );
    }
}

/// An authentication scheme of a generated challenge.
#[derive(Arbitrary, Debug)]
enum Scheme {
    Basic,
    Bearer,
    Ntlm,
    Negotiate,
    Digest,
    Other(u8),
}

/// One generated challenge: a scheme, then a token68 or auth-params.
#[derive(Arbitrary, Debug)]
struct Challenge {
    scheme: Scheme,
    /// Which letters of the scheme are upper case (schemes are case-insensitive).
    case: u16,
    token68: Option<Vec<u8>>,
    params: Vec<(u8, Vec<u8>, bool)>,
}

/// `WWW-Authenticate` values made of well-formed challenges, and the stripper's setting.
#[derive(Arbitrary, Debug)]
struct Challenges {
    keep_negotiate: bool,
    values: Vec<Vec<Challenge>>,
}

const TCHAR: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const TOKEN68: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/";

fn pick(set: &[u8], byte: u8) -> u8 {
    set[usize::from(byte) % set.len()]
}

impl Challenge {
    /// The scheme as sent, and the challenge as one list element.
    fn render(&self) -> (String, String) {
        let base = match &self.scheme {
            Scheme::Basic => "Basic".to_owned(),
            Scheme::Bearer => "Bearer".to_owned(),
            Scheme::Ntlm => "NTLM".to_owned(),
            Scheme::Negotiate => "Negotiate".to_owned(),
            Scheme::Digest => "Digest".to_owned(),
            Scheme::Other(b) => format!("X{}", char::from(pick(TCHAR, *b))),
        };
        let scheme: String = base
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if self.case & (1 << (i % 16)) != 0 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        let mut out = scheme.clone();
        if let Some(token) = &self.token68 {
            if !token.is_empty() {
                out.push(' ');
                out.extend(token.iter().map(|b| char::from(pick(TOKEN68, *b))));
                out.push_str(&"=".repeat(usize::from(token[0] % 3)));
            }
        } else {
            for (i, (name, value, quoted)) in self.params.iter().take(4).enumerate() {
                out.push_str(if i == 0 { " " } else { ", " });
                out.push('p');
                out.push(char::from(pick(TCHAR, *name)));
                out.push('=');
                if *quoted {
                    out.push('"');
                    for b in value.iter().take(16) {
                        match b % 8 {
                            0 => out.push_str("\\\""),
                            1 => out.push(','),
                            2 => out.push(' '),
                            3 => out.push('='),
                            _ => out.push(char::from(pick(TCHAR, *b))),
                        }
                    }
                    out.push('"');
                } else {
                    out.push(char::from(pick(TCHAR, value.first().copied().unwrap_or(0))));
                    out.extend(
                        value
                            .iter()
                            .skip(1)
                            .take(8)
                            .map(|b| char::from(pick(TCHAR, *b))),
                    );
                }
            }
        }
        (scheme, out)
    }
}

fn www_authenticate_values(headers: &HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

/// The `WWW-Authenticate` stripper ([`auth_negotiation::challenges::strip_challenges`]).
///
/// The first byte chooses the input. Even: well-formed challenges generated with `arbitrary`, and
/// the exact answer is known: every `NTLM` challenge removed, every `Negotiate` one unless kept,
/// everything else (Basic above all) kept, in order, a value left alone when nothing in it goes.
/// Odd: the remaining bytes as raw values, one per line; then stripping must not panic, must not
/// add a value, and must be idempotent.
pub fn fuzz_www_authenticate(data: &[u8]) {
    use auth_negotiation::challenges::strip_challenges;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        let keep_negotiate = mode & 2 != 0;
        let mut headers = HeaderMap::new();
        for line in rest.split(|b| *b == b'\n') {
            if let Ok(value) = HeaderValue::from_bytes(line) {
                headers.append(WWW_AUTHENTICATE, value);
            }
        }
        let before = headers.get_all(WWW_AUTHENTICATE).iter().count();
        strip_challenges(&mut headers, keep_negotiate);
        let once = www_authenticate_values(&headers);
        assert!(once.len() <= before, "stripping added a value");
        strip_challenges(&mut headers, keep_negotiate);
        assert_eq!(once, www_authenticate_values(&headers), "not idempotent");
        return;
    }
    let Ok(input) = Challenges::arbitrary(&mut Unstructured::new(rest)) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for value in input.values.iter().take(4) {
        let rendered: Vec<(String, String)> = value.iter().take(6).map(Challenge::render).collect();
        if rendered.is_empty() {
            continue;
        }
        let all = rendered
            .iter()
            .map(|(_, c)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_str(&all).expect("generated challenges are a valid header value"),
        );
        let kept: Vec<&str> = rendered
            .iter()
            .filter(|(scheme, _)| {
                !(scheme.eq_ignore_ascii_case("NTLM")
                    || (!input.keep_negotiate && scheme.eq_ignore_ascii_case("Negotiate")))
            })
            .map(|(_, c)| c.as_str())
            .collect();
        if !kept.is_empty() {
            expected.push(kept.join(", ").into_bytes());
        }
    }
    strip_challenges(&mut headers, input.keep_negotiate);
    let got = www_authenticate_values(&headers);
    assert_eq!(
        got.iter()
            .map(|v| String::from_utf8_lossy(v))
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|v| String::from_utf8_lossy(v))
            .collect::<Vec<_>>(),
        "keep_negotiate = {}",
        input.keep_negotiate
    );
}

/// The `Authorization` header readers: the user of Basic and Bearer
/// ([`auth_negotiation::identity::identity_of`]), NTLM detection
/// ([`auth_negotiation::ntlm::is_ntlm`]), and the SPNEGO decoder on a `Negotiate` token.
///
/// Besides not panicking: a `Negotiate` token that decodes to a raw NTLM message is recognised
/// as NTLM.
pub fn fuzz_authorization(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    let _ = auth_negotiation::identity::identity_of(&headers);
    let ntlm = auth_negotiation::ntlm::is_ntlm(&headers);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or("");
    let token = parts.next().unwrap_or("").trim();
    if scheme.eq_ignore_ascii_case("Negotiate")
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(token)
    {
        if bytes.starts_with(b"NTLMSSP\0") {
            assert!(ntlm, "a raw NTLM token inside Negotiate was not recognised");
        }
        fuzz_spnego(&bytes);
    }
}

/// The SPNEGO and GSS-API token decoders ([`kcd_client::spnego`]).
///
/// Besides not panicking: the mechanism token of a `NegTokenInit`, framed again by
/// [`kcd_client::spnego::neg_token_init`], reads back unchanged.
pub fn fuzz_spnego(data: &[u8]) {
    use kcd_client::spnego::{
        NegotiationToken, neg_token_init, parse_initial_token, parse_negotiation_token,
    };
    let _ = parse_initial_token(data);
    if let Ok(NegotiationToken::Init(init)) = parse_negotiation_token(data)
        && let Some(mech_token) = init.mech_token
    {
        let framed = neg_token_init(&mech_token);
        match parse_negotiation_token(&framed) {
            Ok(NegotiationToken::Init(again)) => {
                assert_eq!(again.mech_token.as_deref(), Some(&mech_token[..]));
            }
            other => panic!("a framed NegTokenInit reads back as {other:?}"),
        }
    }
}

/// The KDC reply decoders: AS-REP, TGS-REP and KRB-ERROR ([`kcd_client::decode_kdc_reply`]),
/// each input read both as the answer to an AS-REQ and to a TGS-REQ; and the check of the
/// KDC's PA-S4U-X509-USER in a TGS-REP's padata
/// ([`PaS4uX509User::verify_reply`](kcd_client::sfu::PaS4uX509User::verify_reply)), each input
/// read as that answer to an S4U2Self made with an AES and with an RC4 session key, without and
/// with the encrypted copy of the checksums (the input's second half).
pub fn fuzz_kdc_reply(data: &[u8]) {
    use kcd_client::UserName;
    use kcd_client::crypto::{EncType, Key};
    use kcd_client::sfu::PaS4uX509User;
    let _ = kcd_client::decode_kdc_reply(data, true);
    let _ = kcd_client::decode_kdc_reply(data, false);
    let alice = UserName::principal("alice", "TEST.LOCAL").expect("a valid name");
    for key in [
        Key::new(EncType::Aes256CtsHmacSha196, &[0x5a; 32]).expect("32 bytes"),
        Key::new(EncType::Rc4Hmac, &[0x5a; 16]).expect("16 bytes"),
    ] {
        let request = PaS4uX509User::for_user(&alice, "TEST.LOCAL", None, 0x1234_5678, &key)
            .expect("a valid name");
        let _ = request.verify_reply(&key, Some(data), None);
        let _ = request.verify_reply(&key, Some(data), Some(&data[data.len() / 2..]));
    }
}

/// The keytab reader ([`kcd_client::keytab::Keytab::parse`]).
///
/// Besides not panicking: a keytab that reads is written back by
/// [`Keytab::to_bytes`](kcd_client::keytab::Keytab::to_bytes) into bytes that read as the same
/// keytab (writing again gives the same bytes).
pub fn fuzz_keytab(data: &[u8]) {
    use kcd_client::keytab::Keytab;
    let Ok(keytab) = Keytab::parse(data) else {
        return;
    };
    let written = keytab.to_bytes();
    let again = Keytab::parse(&written).expect("a written keytab reads back");
    assert_eq!(again.entries().len(), keytab.entries().len());
    assert_eq!(again.to_bytes(), written, "writing is not stable");
}

/// The UPN of a client certificate
/// ([`auth_negotiation::client_cert::user_principal_name`]), with every fallback.
///
/// Besides not panicking: a UPN found is never empty, never longer than
/// [`MAX_UPN_LEN`](auth_negotiation::client_cert::MAX_UPN_LEN), and has no control character.
pub fn fuzz_client_cert_upn(data: &[u8]) {
    use auth_negotiation::client_cert::{MAX_UPN_LEN, UpnFallback, user_principal_name};
    for fallback in [UpnFallback::None, UpnFallback::Rfc822, UpnFallback::Cn] {
        if let Ok(upn) = user_principal_name(data, fallback) {
            assert!(!upn.is_empty(), "empty UPN");
            assert!(upn.len() <= MAX_UPN_LEN, "UPN of {} bytes", upn.len());
            assert!(
                !upn.chars().any(char::is_control),
                "control character in {upn:?}"
            );
        }
    }
}

/// The UEM console's JSON: a page of the device search
/// ([`compliance_policy::uem::parse_search_page`]) and a webhook change event
/// ([`compliance_policy::uem::parse_change_event`]).
pub fn fuzz_uem_json(data: &[u8]) {
    let _ = compliance_policy::uem::parse_search_page(data);
    let _ = compliance_policy::uem::parse_change_event(data);
}

/// The SEG V2 `application-override.properties` import
/// ([`seg_proxy::properties::PropertiesFile::parse`]).
#[cfg(feature = "seg-proxy")]
pub fn fuzz_seg_properties(data: &[u8]) {
    let path = std::path::Path::new("application-override.properties");
    if let Ok(file) = seg_proxy::properties::PropertiesFile::parse(path, data) {
        let _ = file.warnings();
    }
}

/// mock-ens's readers of EWS documents ([`ens_subscription::soap`]): a push `SendNotification`,
/// one envelope of a streaming response, the responses to `Subscribe`, `GetEvents`, `GetItem`
/// and `Unsubscribe`, and a SOAP fault.
pub fn fuzz_ens_notification(data: &[u8]) {
    use ens_subscription::soap;
    if let Ok(notifications) = soap::parse_send_notification(data) {
        assert!(
            !notifications.is_empty(),
            "a SendNotification without notification"
        );
        for notification in &notifications {
            let _ = (notification.last_watermark(), notification.is_heartbeat());
            let _ = notification.new_mail().count();
        }
    }
    let _ = soap::parse_streaming_envelope(data);
    let _ = soap::Subscribe::parse_response(data);
    let _ = soap::GetEvents::parse_response(data);
    let _ = soap::GetItem::parse_response(data);
    let _ = soap::Unsubscribe::parse_response(data);
    let _ = soap::parse_fault(data, Some("compliance".to_owned()));
}

/// The streaming-notification reader ([`ens_subscription::NotificationStream`]): the input cut
/// into chunks (the first byte chooses the chunk size), read to its end.
///
/// Besides not panicking: the stream ends (no endless loop on any input), and the same bytes cut
/// differently give the same notifications.
pub fn fuzz_ens_stream(data: &[u8]) {
    let Some((&size, body)) = data.split_first() else {
        return;
    };
    let chunked = read_stream(body, usize::from(size % 64) + 1);
    let whole = read_stream(body, body.len().max(1));
    assert_eq!(
        chunked, whole,
        "the notifications depend on how the body was cut"
    );
}

/// What a [`NotificationStream`](ens_subscription::NotificationStream) reads from `body` sent
/// in chunks of `size` bytes, one line per item.
fn read_stream(body: &[u8], size: usize) -> Vec<String> {
    use futures_util::StreamExt as _;
    use std::task::{Context, Poll, Waker};
    let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = body
        .chunks(size)
        .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let mut stream = std::pin::pin!(ens_subscription::NotificationStream::new(body, 64 * 1024));
    let mut cx = Context::from_waker(Waker::noop());
    let mut items = Vec::new();
    // Every chunk is ready at once, so the stream never waits; a bound catches a loop.
    for _ in 0..100_000 {
        match stream.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(notification))) => items.push(format!("{notification:?}")),
            Poll::Ready(Some(Err(error))) => items.push(format!("error: {error}")),
            Poll::Ready(None) => return items,
            Poll::Pending => panic!("a body that is all there made the stream wait"),
        }
    }
    panic!("the stream did not end after 100000 items");
}

/// The admin API's request bodies and paths ([`compliance_policy::admin::router`]): override
/// `PUT`s and `DELETE`s for a device or a user, and UEM change events on the webhook, each
/// with the right token or secret so that the body is read.
///
/// The first byte picks the endpoint; the input up to the first NUL byte is the device or user
/// in the path (percent-encoded), the rest is the body. Besides not panicking: every answer is
/// a `2xx` or a `4xx`, never a `5xx`; an override request answered `200` set exactly the
/// override asked for, and one refused left the overrides as they were.
pub fn fuzz_admin_api(data: &[u8]) {
    use compliance_policy::admin::{AdminState, WEBHOOK_SECRET_HEADER, router};
    use compliance_policy::policy::{Override, PolicySettings};
    use compliance_policy::state::Compliance;
    use tower::ServiceExt as _;

    const TOKEN: &str = "fuzz-admin-token-0001";
    const SECRET: &str = "fuzz-webhook-secret";
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (name, body) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (rest, &[][..]),
    };
    let name: String = form_urlencoded::byte_serialize(name).collect();
    let (method, path) = match selector % 5 {
        0 => (http::Method::PUT, format!("/overrides/device/{name}")),
        1 => (http::Method::DELETE, format!("/overrides/device/{name}")),
        2 => (http::Method::PUT, format!("/overrides/user/{name}")),
        3 => (http::Method::DELETE, format!("/overrides/user/{name}")),
        _ => (http::Method::POST, "/events/compliance".to_owned()),
    };
    let compliance = Compliance::new(PolicySettings::default());
    let state = AdminState::new(
        compliance.clone(),
        compliance_policy::uem::parse_change_event,
    )
    .with_admin_token(TOKEN)
    .with_webhook_secret(SECRET);
    let Ok(request) = http::Request::builder()
        .method(method.clone())
        .uri(&path)
        .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(WEBHOOK_SECRET_HEADER, SECRET)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return;
    };
    let before = compliance.view().overrides().clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let response = runtime
        .block_on(router(state).oneshot(request))
        .expect("the router is infallible");
    let status = response.status();
    assert!(
        !status.is_server_error(),
        "{method} {path} answered {status} for a body of {} bytes",
        body.len()
    );
    if selector % 5 == 4 {
        return;
    }
    let after = compliance.view().overrides().clone();
    if !status.is_success() {
        assert_eq!(
            before, after,
            "a refused {method} {path} changed the overrides"
        );
        return;
    }
    if method == http::Method::DELETE {
        assert!(
            after.devices.is_empty() && after.users.is_empty(),
            "a DELETE left an override: {after:?}"
        );
        return;
    }
    let text = String::from_utf8_lossy(body);
    let asked = if text.contains("\"allow\"") && !text.contains("\"block\"") {
        Some(Override::Allow)
    } else if text.contains("\"block\"") && !text.contains("\"allow\"") {
        Some(Override::Block)
    } else {
        None // both words appear (e.g. in the reason): which one is the action is the parser's call
    };
    let set: Vec<Override> = after
        .devices
        .values()
        .chain(after.users.values())
        .copied()
        .collect();
    assert_eq!(set.len(), 1, "a PUT set {} overrides", set.len());
    if let Some(asked) = asked {
        assert_eq!(
            set[0], asked,
            "{path}: set {:?} for a body asking {asked:?}",
            set[0]
        );
    }
}

/// ActiveSync's query ([`ews_proxy_core::activesync::ActiveSyncQuery::parse`]), in both forms:
/// the input as the query itself, and as the byte sequence of the base64-encoded form.
///
/// Besides not panicking: the base64 form reads the same padded, unpadded and with `+`, `/`
/// and `=` percent-encoded; what it reads says it came base64-encoded; and no form yields an
/// empty device id (which compliance would take for a device).
pub fn fuzz_activesync_query(data: &[u8]) {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use ews_proxy_core::activesync::ActiveSyncQuery;
    let text = String::from_utf8_lossy(data);
    let plain = ActiveSyncQuery::parse(&text);
    assert_ne!(plain.device_id.as_deref(), Some(""), "{text:?}");
    let padded = STANDARD.encode(data);
    let parsed = ActiveSyncQuery::parse(&padded);
    assert_eq!(
        ActiveSyncQuery::parse(&STANDARD_NO_PAD.encode(data)),
        parsed
    );
    let escaped = padded
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    assert_eq!(ActiveSyncQuery::parse(&escaped), parsed);
    if parsed != ActiveSyncQuery::default() {
        assert!(parsed.base64, "{padded} read as the plain form: {parsed:?}");
    }
    assert_ne!(parsed.device_id.as_deref(), Some(""));
}
