//! Property tests of the header rules (issue 10): for any `WWW-Authenticate` headers Exchange
//! may send, in either shape (one challenge per header, several joined by commas), stripping
//! never adds a challenge, Basic always survives, NTLM never does, and Negotiate survives exactly
//! when it is kept.

use auth_negotiation::challenges::strip_challenges;
use auth_negotiation::ntlm::is_ntlm;
use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

/// The scheme of a generated challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer,
    Ntlm,
    Negotiate,
    Digest,
    Other,
}

/// A challenge as Exchange and proxies in front of it write them. Each carries a marker `_n_`
/// (n unique in the input) so that it can be found again after stripping.
fn render(scheme: Scheme, variant: u8, upper: bool, n: usize) -> String {
    let name = match scheme {
        Scheme::Basic => "Basic",
        Scheme::Bearer => "Bearer",
        Scheme::Ntlm => "NTLM",
        Scheme::Negotiate => "Negotiate",
        Scheme::Digest => "Digest",
        Scheme::Other => "X-Custom",
    };
    let name = if upper {
        name.to_ascii_uppercase()
    } else {
        name.to_ascii_lowercase()
    };
    match (scheme, variant % 3) {
        (Scheme::Basic, 0) => format!(r#"{name} realm="_{n}_""#),
        (Scheme::Basic, 1) => format!(r#"{name} realm="mail _{n}_, corp", charset="UTF-8""#),
        (Scheme::Basic, _) => format!(r#"{name} realm = "_{n}_ \"q\", x""#),
        (Scheme::Bearer, 0) => format!(r#"{name} authorization_uri="https://login/_{n}_""#),
        (Scheme::Bearer, _) => format!(r#"{name} error="invalid_token", realm="_{n}_""#),
        (Scheme::Ntlm | Scheme::Negotiate, 0) => format!("{name} TlRM_{n}_AAA="),
        (Scheme::Ntlm | Scheme::Negotiate, _) => format!(r#"{name} realm="_{n}_""#),
        (Scheme::Digest, _) => format!(r#"{name} realm="_{n}_", qop="auth,auth-int", nonce="a=b""#),
        (Scheme::Other, _) => format!("{name} p=_{n}_"),
    }
}

fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![
        Just(Scheme::Basic),
        Just(Scheme::Bearer),
        Just(Scheme::Ntlm),
        Just(Scheme::Negotiate),
        Just(Scheme::Digest),
        Just(Scheme::Other),
    ]
}

/// One `WWW-Authenticate` value: its challenges (scheme, variant, upper case) and the list
/// separator between them.
type Value = (Vec<(Scheme, u8, bool)>, &'static str);

/// Headers: up to four values, each of one to four challenges joined by a list separator.
fn headers() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(
        (
            prop::collection::vec((scheme(), any::<u8>(), any::<bool>()), 1..5),
            prop::sample::select(&[", ", ",", " , ", ",  ,"][..]),
        ),
        1..5,
    )
}

/// The header map, and the markers of the challenges of each scheme.
fn build(spec: &[Value]) -> (HeaderMap, Vec<(Scheme, usize)>) {
    let mut headers = HeaderMap::new();
    let mut markers = Vec::new();
    for (challenges, separator) in spec {
        let rendered: Vec<String> = challenges
            .iter()
            .map(|(scheme, variant, upper)| {
                let n = markers.len();
                markers.push((*scheme, n));
                render(*scheme, *variant, *upper, n)
            })
            .collect();
        let value = HeaderValue::from_str(&rendered.join(separator)).expect("valid header value");
        headers.append(WWW_AUTHENTICATE, value);
    }
    (headers, markers)
}

/// The markers found in the `WWW-Authenticate` headers, in order.
fn found(headers: &HeaderMap) -> Vec<usize> {
    let mut out = Vec::new();
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let text = value.to_str().expect("ASCII");
        for part in text.split('_').collect::<Vec<_>>().windows(2) {
            if let Ok(n) = part[1].parse::<usize>()
                && part[0].ends_with(['"', ' ', '=', 'M', '/'])
            {
                out.push(n);
            }
        }
    }
    out
}

fn stripped(spec: &[Value], keep_negotiate: bool) -> (Vec<usize>, Vec<(Scheme, usize)>, HeaderMap) {
    let (mut headers, markers) = build(spec);
    strip_challenges(&mut headers, keep_negotiate);
    (found(&headers), markers, headers)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every challenge after stripping was there before, once, in the same order.
    #[test]
    fn stripping_never_adds_a_challenge(spec in headers(), keep_negotiate in any::<bool>()) {
        let (before, _) = build(&spec);
        let (after, markers, headers) = stripped(&spec, keep_negotiate);
        let mut sorted = after.clone();
        sorted.sort_unstable();
        prop_assert_eq!(&sorted, &after, "order changed");
        sorted.dedup();
        prop_assert_eq!(sorted.len(), after.len(), "a challenge appears twice");
        prop_assert!(after.iter().all(|n| *n < markers.len()));
        prop_assert!(
            headers.get_all(WWW_AUTHENTICATE).iter().count()
                <= before.get_all(WWW_AUTHENTICATE).iter().count()
        );
    }

    /// Basic (and every scheme other than NTLM and Negotiate) survives stripping.
    #[test]
    fn basic_always_survives(spec in headers(), keep_negotiate in any::<bool>()) {
        let (after, markers, _) = stripped(&spec, keep_negotiate);
        for (scheme, n) in markers {
            if !matches!(scheme, Scheme::Ntlm | Scheme::Negotiate) {
                prop_assert!(after.contains(&n), "{:?} challenge {} was removed", scheme, n);
            }
        }
    }

    /// NTLM never survives stripping.
    #[test]
    fn ntlm_never_survives(spec in headers(), keep_negotiate in any::<bool>()) {
        let (after, markers, headers) = stripped(&spec, keep_negotiate);
        for (scheme, n) in markers {
            if scheme == Scheme::Ntlm {
                prop_assert!(!after.contains(&n), "NTLM challenge {} survived", n);
            }
        }
        for value in headers.get_all(WWW_AUTHENTICATE) {
            prop_assert!(!value.to_str().expect("ASCII").to_ascii_lowercase().contains("ntlm "));
        }
    }

    /// Negotiate survives exactly when it is kept (the client showed a certificate).
    #[test]
    fn negotiate_survives_only_when_kept(spec in headers(), keep_negotiate in any::<bool>()) {
        let (after, markers, _) = stripped(&spec, keep_negotiate);
        for (scheme, n) in markers {
            if scheme == Scheme::Negotiate {
                prop_assert_eq!(after.contains(&n), keep_negotiate);
            }
        }
    }

    /// Headers left with a challenge to remove keep their exact text: stripping twice is
    /// stripping once.
    #[test]
    fn stripping_is_idempotent(spec in headers(), keep_negotiate in any::<bool>()) {
        let (_, _, mut headers) = stripped(&spec, keep_negotiate);
        let once: Vec<HeaderValue> = headers.get_all(WWW_AUTHENTICATE).iter().cloned().collect();
        strip_challenges(&mut headers, keep_negotiate);
        let twice: Vec<HeaderValue> = headers.get_all(WWW_AUTHENTICATE).iter().cloned().collect();
        prop_assert_eq!(once, twice);
    }

    /// An `Authorization` carrying an NTLM message, directly or as a raw token in Negotiate,
    /// in any case of the scheme and with any NTLM message after the signature, is NTLM.
    #[test]
    fn ntlm_authorization_is_always_recognised(
        negotiate in any::<bool>(),
        upper in any::<bool>(),
        message in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut token = b"NTLMSSP\0".to_vec();
        token.extend(message);
        let scheme = if negotiate { "Negotiate" } else { "NTLM" };
        let scheme = if upper { scheme.to_ascii_uppercase() } else { scheme.to_ascii_lowercase() };
        let value = format!("{scheme} {}", base64::engine::general_purpose::STANDARD.encode(token));
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).expect("valid"));
        prop_assert!(is_ntlm(&headers), "{}", value);
    }
}
