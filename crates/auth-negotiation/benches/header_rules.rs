//! The header rules on every request and response (issue 7's micro-benchmarks), with criterion:
//!
//! - `strip_challenges/exchange_401`: Exchange's usual 401 (`Negotiate`, `NTLM` and
//!   `Basic realm=…` as three headers) with NTLM and Negotiate removed: the rewrite path;
//! - `strip_challenges/one_header_list`: the same challenges in one comma-separated value;
//! - `strip_challenges/nothing_to_strip`: a 200 without `WWW-Authenticate`, the common case,
//!   which must cost next to nothing;
//! - `strip_hop_by_hop/typical_request`: the hop-by-hop cleanup of a mail client's request
//!   (`Connection: keep-alive`, no others);
//! - `strip_hop_by_hop/hostile_request`: a request naming extra headers in `Connection` and
//!   carrying `Proxy-*`, `TE`, `Upgrade` and `Keep-Alive`;
//! - `identity_of/basic` and `identity_of/bearer`: the user named by the typical request's
//!   `Authorization` header (Basic), and by an OAuth token's claims (Bearer), as the identity
//!   layer reads it on every request with the auth layers on.
//!
//! Each iteration clones a prepared `HeaderMap` and applies the rule to the clone; the clone
//! alone is measured as `clone_only/*`, to subtract.
//!
//! `cargo bench -p auth-negotiation --bench header_rules`

// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use auth_negotiation::challenges::strip_challenges;
use auth_negotiation::identity::identity_of;
use criterion::{Criterion, criterion_group, criterion_main};
use ews_proxy_core::hop_by_hop::strip_hop_by_hop;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use std::hint::black_box;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

fn exchange_401() -> HeaderMap {
    let mut map = headers(&[
        ("content-type", "text/html"),
        ("server", "Microsoft-IIS/10.0"),
        ("request-id", "5f0b3c4e-3a8f-4d8e-9d0e-1c2b3a4d5e6f"),
        ("x-powered-by", "ASP.NET"),
    ]);
    map.append(WWW_AUTHENTICATE, HeaderValue::from_static("Negotiate"));
    map.append(WWW_AUTHENTICATE, HeaderValue::from_static("NTLM"));
    map.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"mail.example.com\""),
    );
    map
}

fn one_header_list() -> HeaderMap {
    let mut map = headers(&[
        ("content-type", "text/html"),
        ("server", "Microsoft-IIS/10.0"),
    ]);
    map.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Negotiate, NTLM, Basic realm=\"mail.example.com\", charset=\"UTF-8\"",
        ),
    );
    map
}

fn ews_200() -> HeaderMap {
    headers(&[
        ("content-type", "text/xml; charset=utf-8"),
        ("server", "Microsoft-IIS/10.0"),
        ("request-id", "5f0b3c4e-3a8f-4d8e-9d0e-1c2b3a4d5e6f"),
        ("x-calculatedbetarget", "exch01.example.com"),
        ("x-diaginfo", "EXCH01"),
        ("x-beserver", "EXCH01"),
        ("x-aspnet-version", "4.0.30319"),
        ("set-cookie", "exchangecookie=0123456789abcdef; path=/"),
        ("x-powered-by", "ASP.NET"),
    ])
}

fn typical_request() -> HeaderMap {
    headers(&[
        ("host", "mail.example.com"),
        ("content-type", "text/xml; charset=utf-8"),
        ("authorization", "Basic YWxpY2VAZXhhbXBsZS5jb206c2VjcmV0"),
        ("user-agent", "Boxer/8.30 (iPhone; iOS 17.1)"),
        ("x-device-id", "EASDEV000001"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("content-length", "512"),
    ])
}

fn hostile_request() -> HeaderMap {
    let mut map = typical_request();
    map.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-secret, x-other, upgrade"),
    );
    for (name, value) in [
        ("x-secret", "1"),
        ("x-other", "2"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("keep-alive", "timeout=5"),
    ] {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

fn header_rules(c: &mut Criterion) {
    let cases = [
        ("exchange_401", exchange_401()),
        ("one_header_list", one_header_list()),
        ("nothing_to_strip", ews_200()),
    ];
    let mut group = c.benchmark_group("strip_challenges");
    for (name, map) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut headers = map.clone();
                strip_challenges(&mut headers, false);
                black_box(headers)
            })
        });
    }
    group.finish();

    let requests = [
        ("typical_request", typical_request()),
        ("hostile_request", hostile_request()),
    ];
    let mut group = c.benchmark_group("strip_hop_by_hop");
    for (name, map) in &requests {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut headers = map.clone();
                strip_hop_by_hop(&mut headers);
                black_box(headers)
            })
        });
    }
    group.finish();

    // A token with a header, Azure AD-like claims and a signature (not verified here).
    let bearer = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = r#"{"aud":"https://outlook.office365.com","iss":"https://sts.windows.net/0c0e4d9f/","iat":1764950400,"exp":1764954000,"name":"Alice Example","oid":"5f0b3c4e-3a8f-4d8e-9d0e-1c2b3a4d5e6f","scp":"EWS.AccessAsUser.All","upn":"alice@example.com"}"#;
        let token = format!(
            "Bearer {}.{}.{}",
            engine.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            engine.encode(claims),
            engine.encode([7u8; 256])
        );
        let mut map = typical_request();
        map.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&token).expect("token"),
        );
        map
    };
    let mut group = c.benchmark_group("identity_of");
    for (name, map) in [("basic", &requests[0].1), ("bearer", &bearer)] {
        group.bench_function(name, |b| b.iter(|| black_box(identity_of(black_box(map)))));
    }
    group.finish();

    let mut group = c.benchmark_group("clone_only");
    for (name, map) in cases.iter().chain(&requests) {
        group.bench_function(*name, |b| b.iter(|| black_box(map.clone())));
    }
    group.finish();
}

criterion_group!(benches, header_rules);
criterion_main!(benches);
