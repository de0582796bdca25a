//! `remove.unsupported.auth.for.ews`: takes from Exchange's answers the authentication challenges
//! a client of the gateway cannot use.
//!
//! - every `NTLM` challenge: the gateway refuses NTLM (see [`crate::ntlm`]), so offering it only
//!   sends a client into a dead end;
//! - the `Negotiate` challenge when the request came without a verified client certificate (no
//!   [`ClientIdentity`](ews_proxy_core::identity::ClientIdentity) from
//!   [`IdentitySource::Certificate`](ews_proxy_core::identity::IdentitySource::Certificate), the
//!   same test as [`crate::kcd::certificate_user`]): a mail app cannot do Kerberos
//!   itself, and with a certificate it is the gateway that answers Negotiate (see
//!   [`crate::kcd`]). With Basic and Kerberos both offered, such a client is left with Basic.
//!
//! Both shapes of `WWW-Authenticate` are handled: one header per challenge, and several challenges
//! joined by commas in one header (RFC 9110 §11.6.1), where a comma inside a quoted string or
//! between the auth-params of one challenge (`Bearer realm="a", error="invalid_token"`) does not
//! start a new challenge. The challenges that stay keep their order and their exact text; a header
//! left with none is removed. A `401` whose challenges are all removed stays a `401` without
//! `WWW-Authenticate`: the gateway invents no challenge Exchange did not offer, and the status
//! still tells the client that its credentials (or their absence) were refused.
//!
//! Scheme names are compared without regard to case. A challenge whose scheme cannot be read
//! (bytes that are not a token) is kept as it is: only what is recognised is removed.
//!
//! ```
//! use auth_negotiation::challenges::StripChallengesLayer;
//! use http::{Request, Response, StatusCode, header::WWW_AUTHENTICATE};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Exchange offering Kerberos, NTLM and Basic.
//! let service = ServiceBuilder::new().layer(StripChallengesLayer::new()).service_fn(
//!     |_request: Request<Full<Bytes>>| async {
//!         let response = Response::builder()
//!             .status(StatusCode::UNAUTHORIZED)
//!             .header(WWW_AUTHENTICATE, r#"Negotiate, NTLM, Basic realm="mail, corp""#)
//!             .body(Full::<Bytes>::default())?;
//!         Ok::<_, http::Error>(response)
//!     },
//! );
//! // A client without a certificate is left with Basic only.
//! let request = Request::post("/EWS/Exchange.asmx").body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(response.headers()[WWW_AUTHENTICATE], r#"Basic realm="mail, corp""#);
//! # Ok(())
//! # }
//! ```

use crate::kcd::certificate_user;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Layer that applies [`StripChallenges`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StripChallengesLayer {
    _priv: (),
}

impl StripChallengesLayer {
    /// Removes NTLM challenges always, and Negotiate challenges for clients without a verified
    /// certificate.
    pub fn new() -> Self {
        StripChallengesLayer { _priv: () }
    }
}

impl<S> Layer<S> for StripChallengesLayer {
    type Service = StripChallenges<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StripChallenges { inner }
    }
}

/// Middleware that removes unsupported challenges from responses; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct StripChallenges<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for StripChallenges<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Decided from the request, before it moves on: the response does not carry it.
        let keep_negotiate = certificate_user(request.extensions()).is_some();
        ResponseFuture {
            inner: self.inner.call(request),
            keep_negotiate,
        }
    }
}

pin_project! {
    /// Response future of [`StripChallenges`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        keep_negotiate: bool,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        strip_challenges(response.headers_mut(), *this.keep_negotiate);
        Poll::Ready(Ok(response))
    }
}

/// Removes the `NTLM` challenges from the `WWW-Authenticate` headers of `headers`, and the
/// `Negotiate` challenges unless `keep_negotiate`; see the [module docs](self).
///
/// Headers whose challenges all stay are left byte for byte as they were.
pub fn strip_challenges(headers: &mut HeaderMap, keep_negotiate: bool) {
    let removed = |scheme: &[u8]| {
        scheme.eq_ignore_ascii_case(b"NTLM")
            || (!keep_negotiate && scheme.eq_ignore_ascii_case(b"Negotiate"))
    };
    // The common answer has no challenge, or none to remove: look before allocating.
    let any_removed = headers.get_all(WWW_AUTHENTICATE).iter().any(|value| {
        let bytes = value.as_bytes();
        challenges(bytes)
            .iter()
            .any(|span| removed(scheme(&bytes[span.clone()])))
    });
    if !any_removed {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(WWW_AUTHENTICATE).iter().cloned().collect();
    headers.remove(WWW_AUTHENTICATE);
    for value in values {
        let bytes = value.as_bytes();
        let spans = challenges(bytes);
        let kept: Vec<&[u8]> = spans
            .iter()
            .map(|span| &bytes[span.clone()])
            .filter(|challenge| !removed(scheme(challenge)))
            .collect();
        if kept.len() == spans.len() {
            headers.append(WWW_AUTHENTICATE, value);
            continue;
        }
        if kept.is_empty() {
            continue;
        }
        let joined = kept.join(&b", "[..]);
        // The parts come from a valid header value and ", " is valid: this cannot fail, but if
        // it did the original is the better answer than a panic.
        let value = HeaderValue::from_bytes(&joined).unwrap_or(value);
        headers.append(WWW_AUTHENTICATE, value);
    }
}

/// The byte ranges of the challenges in one `WWW-Authenticate` value (RFC 9110 §11.6.1):
///
/// ```text
/// WWW-Authenticate = #challenge
/// challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
/// auth-param       = token BWS "=" BWS ( token / quoted-string )
/// ```
///
/// The value is cut at commas outside quoted strings into list elements; an element that starts
/// with `token BWS "="` is an auth-param of the challenge before it, any other element starts a
/// challenge. (A token68 such as `Negotiate YII=` starts with the scheme and a space, so it is
/// not mistaken for a parameter.) Empty elements are skipped, as the list rule allows.
fn challenges(value: &[u8]) -> Vec<Range<usize>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for element in elements(value) {
        let text = &value[element.clone()];
        match spans.last_mut() {
            Some(current) if is_auth_param(text) || !is_tchar(text[0]) => {
                current.end = element.end;
            }
            _ => spans.push(element),
        }
    }
    spans
}

/// The comma-separated elements of a list value, trimmed of whitespace, empty ones skipped.
/// Commas inside quoted strings (with `\` escapes) do not separate; an unterminated quoted
/// string runs to the end of the value.
fn elements(value: &[u8]) -> Vec<Range<usize>> {
    let mut elements = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (index, &byte) in value.iter().enumerate() {
        if quoted {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => quoted = true,
            b',' => {
                elements.extend(trimmed(value, start..index));
                start = index + 1;
            }
            _ => {}
        }
    }
    elements.extend(trimmed(value, start..value.len()));
    elements
}

/// `range` of `value` without leading and trailing whitespace, or `None` if nothing is left.
fn trimmed(value: &[u8], range: Range<usize>) -> Option<Range<usize>> {
    let part = &value[range.clone()];
    let start = part.iter().position(|b| !is_ows(*b))?;
    let end = part.iter().rposition(|b| !is_ows(*b))? + 1;
    Some(range.start + start..range.start + end)
}

/// Whether a list element is `token BWS "=" …`, an auth-param.
fn is_auth_param(element: &[u8]) -> bool {
    let name = element.iter().take_while(|b| is_tchar(**b)).count();
    if name == 0 {
        return false;
    }
    let rest = &element[name..];
    let gap = rest.iter().take_while(|b| is_ows(**b)).count();
    rest.get(gap) == Some(&b'=')
}

/// The auth-scheme of a challenge: its leading token (empty if it starts with something else).
fn scheme(challenge: &[u8]) -> &[u8] {
    let length = challenge.iter().take_while(|b| is_tchar(**b)).count();
    &challenge[..length]
}

fn is_ows(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ews_proxy_core::identity::{CertificateFingerprint, ClientIdentity, IdentitySource};
    use http::StatusCode;
    use http_body_util::Full;
    use std::convert::Infallible;
    use tower::ServiceExt;

    const NEGOTIATE: &str = "Negotiate";
    const NTLM: &str = "NTLM";
    const BASIC: &str = r#"Basic realm="exchange.corp.example""#;
    /// Two auth-params joined by a comma, one of them quoted with a comma inside.
    const BEARER: &str =
        r#"Bearer authorization_uri="https://login.example/a,b", error="invalid_token""#;

    fn offered(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn challenges_of(headers: &HeaderMap) -> Vec<String> {
        headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    fn stripped(values: &[&str], keep_negotiate: bool) -> Vec<String> {
        let mut headers = offered(values);
        strip_challenges(&mut headers, keep_negotiate);
        challenges_of(&headers)
    }

    /// Every subset of {Negotiate, NTLM, Basic, Bearer}, as separate headers and joined in one,
    /// with and without a certificate: NTLM always goes, Negotiate goes without a certificate,
    /// the rest stays in order with its text.
    #[test]
    fn truth_table_of_challenges_offered_and_certificate() {
        let all = [NEGOTIATE, NTLM, BASIC, BEARER];
        for subset in 0..16u32 {
            let offered: Vec<&str> = (0..4)
                .filter(|bit| subset & (1 << bit) != 0)
                .map(|bit| all[bit as usize])
                .collect();
            for certificate in [false, true] {
                let expected: Vec<&str> = offered
                    .iter()
                    .copied()
                    .filter(|c| *c != NTLM && (certificate || *c != NEGOTIATE))
                    .collect();
                assert_eq!(
                    stripped(&offered, certificate),
                    expected,
                    "separate headers {offered:?}, certificate {certificate}"
                );
                let joined = if offered.is_empty() {
                    vec![]
                } else {
                    vec![offered.join(", ")]
                };
                let joined_expected: Vec<String> = if expected.is_empty() {
                    vec![]
                } else {
                    vec![expected.join(", ")]
                };
                let joined: Vec<&str> = joined.iter().map(String::as_str).collect();
                assert_eq!(
                    stripped(&joined, certificate),
                    joined_expected,
                    "one header {joined:?}, certificate {certificate}"
                );
            }
        }
    }

    #[test]
    fn basic_and_kerberos_without_certificate_leave_only_basic() {
        assert_eq!(stripped(&[NEGOTIATE, BASIC], false), [BASIC]);
        assert_eq!(
            stripped(&["Negotiate, NTLM, Basic realm=\"x\""], false),
            ["Basic realm=\"x\""]
        );
    }

    #[test]
    fn commas_in_quoted_strings_and_between_auth_params_do_not_split_a_challenge() {
        assert_eq!(
            stripped(
                &[r#"Basic realm="x, NTLM, y", charset="UTF-8", NTLM"#],
                false
            ),
            [r#"Basic realm="x, NTLM, y", charset="UTF-8""#]
        );
        // An escaped quote does not end the quoted string.
        assert_eq!(
            stripped(&[r#"Basic realm="a\", NTLM", Negotiate"#], false),
            [r#"Basic realm="a\", NTLM""#]
        );
        // Bad whitespace around "=" still makes an auth-param.
        assert_eq!(
            stripped(&[r#"NTLM, Bearer realm = "r", scope ="s""#], false),
            [r#"Bearer realm = "r", scope ="s""#]
        );
    }

    #[test]
    fn token68_with_padding_is_not_taken_for_an_auth_param() {
        // Negotiate's mutual-authentication token on a 200, then NTLM.
        assert_eq!(
            stripped(&["Negotiate oRQwEqADCgEAoQsGCSqGSIb3EgECAg==, NTLM"], true),
            ["Negotiate oRQwEqADCgEAoQsGCSqGSIb3EgECAg=="]
        );
        assert_eq!(
            stripped(&["NTLM TlRMTVNTUAACAAAA==, Basic"], false),
            ["Basic"]
        );
    }

    #[test]
    fn scheme_names_are_compared_without_case() {
        assert_eq!(
            stripped(
                &["ntlm", "NEGOTIATE", "nTlM abc=", "basic realm=\"x\""],
                false
            ),
            ["basic realm=\"x\""]
        );
        assert_eq!(stripped(&["negotiate, ntlm"], true), ["negotiate"]);
    }

    #[test]
    fn untouched_headers_keep_their_exact_bytes() {
        let odd = "Basic   realm=\"x\" ,,  Bearer";
        assert_eq!(stripped(&[odd], false), [odd]);
    }

    #[test]
    fn hostile_values_are_kept_or_dropped_without_panic() {
        let mut headers = HeaderMap::new();
        for raw in [
            &b"\xff\xfe NTLM"[..], // obs-text before the scheme: not a token, kept
            b"NTLM \xff\xfe",      // NTLM with garbage after it: removed
            b"Basic realm=\"unterminated, NTLM", // the quote runs to the end: one challenge
            b",, ,\t,",            // only separators: no challenge, kept
            b"=",
            b"\"",
            b"\\",
            b"Basic realm=\"x\\",
            b"",
        ] {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_bytes(raw).unwrap());
        }
        let long = format!("{}NTLM", "a=b, ".repeat(10_000));
        headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(&long).unwrap());
        strip_challenges(&mut headers, false);
        let left: Vec<&[u8]> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let expected_long = "a=b, ".repeat(10_000);
        let expected_long = expected_long.trim_end_matches(", ");
        assert_eq!(
            left,
            [
                &b"\xff\xfe NTLM"[..],
                b"Basic realm=\"unterminated, NTLM",
                b",, ,\t,",
                b"=",
                b"\"",
                b"\\",
                b"Basic realm=\"x\\",
                b"",
                expected_long.as_bytes(),
            ]
        );
    }

    fn exchange_answering(
        status: StatusCode,
        challenges: &'static [&'static str],
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_request: Request<Full<Bytes>>| async move {
            let mut response = Response::new(Full::default());
            *response.status_mut() = status;
            *response.headers_mut() = offered(challenges);
            Ok::<_, Infallible>(response)
        })
    }

    fn request(identity: Option<IdentitySource>) -> Request<Full<Bytes>> {
        let mut request = Request::post("/EWS/Exchange.asmx")
            .body(Full::default())
            .unwrap();
        if let Some(source) = identity {
            request.extensions_mut().insert(ClientIdentity {
                user: "alice@corp.example".into(),
                source,
            });
        }
        request
    }

    #[tokio::test]
    async fn a_certificate_identity_keeps_negotiate() {
        let service = StripChallengesLayer::new().layer(exchange_answering(
            StatusCode::UNAUTHORIZED,
            &["Negotiate", "NTLM"],
        ));
        let response = service
            .oneshot(request(Some(IdentitySource::Certificate {
                fingerprint: CertificateFingerprint([7; 32]),
            })))
            .await
            .unwrap();
        assert_eq!(challenges_of(response.headers()), ["Negotiate"]);
    }

    #[tokio::test]
    async fn an_identity_from_basic_credentials_is_not_a_certificate() {
        let service = StripChallengesLayer::new().layer(exchange_answering(
            StatusCode::UNAUTHORIZED,
            &["Negotiate", BASIC],
        ));
        let response = service
            .oneshot(request(Some(IdentitySource::Basic)))
            .await
            .unwrap();
        assert_eq!(challenges_of(response.headers()), [BASIC]);
    }

    #[tokio::test]
    async fn a_401_left_without_challenges_stays_a_401_without_the_header() {
        let service = StripChallengesLayer::new().layer(exchange_answering(
            StatusCode::UNAUTHORIZED,
            &["Negotiate, NTLM"],
        ));
        let response = service.oneshot(request(None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
    }
}
