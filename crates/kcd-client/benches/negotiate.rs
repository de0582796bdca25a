//! Negotiate tokens from `KcdClient` (issue 4): the cached path (target: median under 10 µs)
//! and the cold S4U2Self + S4U2Proxy against the loopback MIT KDC (target: under 10 ms).
//!
//! Setup, once per KDC: `seg_testbed::kdc::Kdc::start` brings up the real KDC (slapd +
//! krb5kdc) on loopback, a `KcdClient` logs in with the gateway's keytab and fills its cache
//! with one ticket for alice to Exchange. Then:
//!
//! - `negotiate_token_cached/*`: `KcdClient::negotiate_token` for that cached ticket, each
//!   call a fresh authenticator (new time, sequence number and confounder, as acceptors keep
//!   replay caches), without and with a `tls-server-end-point` channel binding, and with the
//!   header value (`Negotiate <base64>`) as the gateway sends it. `aes256-sha1` is the
//!   session key of the default KDC (aes256-cts-hmac-sha1-96 keys, as Active Directory
//!   issues); `aes256-sha384` is a second KDC whose keys are aes256-cts-hmac-sha384-192
//!   (RFC 8009), so that the session key is too.
//! - `negotiate_pieces/*`: what one token is made of, to explain the number: the cache
//!   lookup alone (`service_ticket`), the authenticator's encryption per etype (plaintext the
//!   size of the real authenticator), the 0x8003 checksum with channel bindings, the SPNEGO
//!   framing of the Kerberos token, base64.
//! - `cold/*`: one S4U2Self + S4U2Proxy exchange, the gateway's TGT cached
//!   (`s4u_with_cached_tgt`: `invalidate` drops alice's ticket and evidence ticket), and fully
//!   cold (`with_as_login`: `clear_cache` drops the TGT too, so the AS exchange is timed as
//!   well). Each request goes to krb5kdc over UDP on loopback.
//!
//! `cargo bench -p kcd-client --bench negotiate` (needs the KDC's Debian packages, see
//! `scripts/install-deps.sh`). The KDCs start lazily, on the first benchmark that needs them:
//! listing the benchmarks (`--list`) starts nothing.

// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kcd_client::crypto::{EncType, Key};
use kcd_client::spnego::{self, NegotiationToken};
use kcd_client::{
    CONTEXT_FLAGS, ChannelBindings, Credentials, KcdClient, KcdConfig, RealmConfig, UserName,
    gss_checksum,
};
use rasn_kerberos::ApReq;
use seg_testbed::kdc::{
    DEFAULT_REALM, EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig, RunningKdc,
};
use tokio::runtime::Runtime;

/// A SHA-256 certificate hash, as `tls_server_end_point_hash` returns for Exchange's certificate.
const CERT_HASH: [u8; 32] = [0xab; 32];

/// Key usage of the AP-REQ authenticator (RFC 4120 7.5.1).
const AP_REQ_AUTHENTICATOR: u32 = 11;

/// A KDC, a client logged in against it, and alice's ticket to Exchange in its cache.
struct Warm {
    // Dropped after the client, which holds no reference to it.
    _kdc: RunningKdc,
    rt: Runtime,
    client: KcdClient,
    alice: UserName,
    /// The encryption type of the ticket's session key, read from a token.
    session_etype: EncType,
    /// Length of the authenticator's plaintext (DER) in a token without channel binding.
    authenticator_len: usize,
    /// The Kerberos (non-SPNEGO) part of a token.
    krb5_token: Vec<u8>,
}

fn start(enctypes: &[&str]) -> Warm {
    let mut config = KdcConfig::temporary();
    config.enctypes = enctypes.iter().map(|e| (*e).to_string()).collect();
    let kdc = Kdc::start(config).expect("the KDC starts (scripts/install-deps.sh installs it)");
    let keytab = kdc
        .keytab(GATEWAY_SERVICE)
        .expect("gateway keytab")
        .to_path_buf();
    let client = KcdClient::new(KcdConfig::new(
        vec![RealmConfig::new("test.local", [kdc.addr().to_string()])],
        GATEWAY_SERVICE,
        Credentials::KeytabFile(keytab),
    ))
    .expect("the client reads its keytab");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let alice = UserName::principal("alice", DEFAULT_REALM).expect("a user name");
    let token = rt
        .block_on(client.negotiate_token(&alice, EXCHANGE_SERVICE, None))
        .expect("a first token fills the cache");
    let NegotiationToken::Init(init) =
        spnego::parse_negotiation_token(token.as_bytes()).expect("an SPNEGO token")
    else {
        panic!("not a NegTokenInit");
    };
    let krb5_token = init.mech_token.expect("a mechToken").to_vec();
    let (_, inner) = spnego::parse_initial_token(&krb5_token).expect("a GSS token");
    let ap_req: ApReq = rasn::der::decode(&inner[2..]).expect("an AP-REQ");
    let session_etype = EncType::from_i32(ap_req.authenticator.etype).expect("a known etype");
    let overhead = session_etype.confounder_len()
        + match session_etype {
            EncType::Aes128CtsHmacSha196 | EncType::Aes256CtsHmacSha196 => 12,
            EncType::Aes128CtsHmacSha256128 => 16,
            EncType::Aes256CtsHmacSha384192 => 24,
            EncType::Rc4Hmac => 16,
        };
    let authenticator_len = ap_req.authenticator.cipher.len() - overhead;
    eprintln!(
        "KDC ({}) on {}: session key {session_etype}, authenticator {authenticator_len} bytes, \
         token {} bytes, {:?}",
        enctypes.join(", "),
        kdc.addr(),
        token.as_bytes().len(),
        client.exchanges()
    );
    Warm {
        _kdc: kdc,
        rt,
        client,
        alice,
        session_etype,
        authenticator_len,
        krb5_token,
    }
}

/// The default test KDC: aes256-cts-hmac-sha1-96 and aes128-cts-hmac-sha1-96 keys.
fn sha1_kdc() -> &'static Warm {
    static WARM: OnceLock<Warm> = OnceLock::new();
    WARM.get_or_init(|| start(&["aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96"]))
}

/// A KDC whose keys (and so session keys) are aes256-cts-hmac-sha384-192.
fn sha384_kdc() -> &'static Warm {
    static WARM: OnceLock<Warm> = OnceLock::new();
    WARM.get_or_init(|| start(&["aes256-cts-hmac-sha384-192", "aes256-cts-hmac-sha1-96"]))
}

fn short_name(etype: EncType) -> &'static str {
    match etype {
        EncType::Aes128CtsHmacSha196 => "aes128-sha1",
        EncType::Aes256CtsHmacSha196 => "aes256-sha1",
        EncType::Aes128CtsHmacSha256128 => "aes128-sha256",
        EncType::Aes256CtsHmacSha384192 => "aes256-sha384",
        EncType::Rc4Hmac => "rc4-hmac",
    }
}

/// Times `iters` awaited calls of `f` inside one `block_on`, so that the runtime's entry is
/// not part of each call.
fn time_async<F, Fut, T>(warm: &Warm, iters: u64, f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    warm.rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            black_box(f().await);
        }
        started.elapsed()
    })
}

fn negotiate_token_cached(c: &mut Criterion) {
    let mut group = c.benchmark_group("negotiate_token_cached");
    for (label, kdc) in [
        ("aes256-sha1", sha1_kdc as fn() -> &'static Warm),
        ("aes256-sha384", sha384_kdc),
    ] {
        group.bench_function(BenchmarkId::new("no_binding", label), |b| {
            let w = kdc();
            b.iter_custom(|iters| {
                time_async(w, iters, || async {
                    w.client
                        .negotiate_token(&w.alice, EXCHANGE_SERVICE, None)
                        .await
                        .expect("a token")
                })
            });
        });
        group.bench_function(BenchmarkId::new("channel_binding", label), |b| {
            let w = kdc();
            b.iter_custom(|iters| {
                time_async(w, iters, || async {
                    w.client
                        .negotiate_token(&w.alice, EXCHANGE_SERVICE, Some(&CERT_HASH))
                        .await
                        .expect("a token")
                })
            });
        });
        group.bench_function(BenchmarkId::new("channel_binding_header", label), |b| {
            let w = kdc();
            b.iter_custom(|iters| {
                time_async(w, iters, || async {
                    w.client
                        .negotiate_token(&w.alice, EXCHANGE_SERVICE, Some(&CERT_HASH))
                        .await
                        .expect("a token")
                        .to_header_value()
                })
            });
        });
    }
    group.finish();
}

fn negotiate_pieces(c: &mut Criterion) {
    let mut group = c.benchmark_group("negotiate_pieces");
    group.bench_function("service_ticket_cached", |b| {
        let w = sha1_kdc();
        b.iter_custom(|iters| {
            time_async(w, iters, || async {
                w.client
                    .service_ticket(&w.alice, EXCHANGE_SERVICE)
                    .await
                    .expect("a ticket")
            })
        });
    });
    for etype in [
        EncType::Aes256CtsHmacSha196,
        EncType::Aes256CtsHmacSha384192,
        EncType::Aes128CtsHmacSha196,
        EncType::Rc4Hmac,
    ] {
        group.bench_function(
            BenchmarkId::new("authenticator_encrypt", short_name(etype)),
            |b| {
                let w = sha1_kdc();
                let key = Key::random(etype);
                let plaintext = vec![0x30u8; w.authenticator_len];
                b.iter(|| key.encrypt(AP_REQ_AUTHENTICATOR, black_box(&plaintext)));
            },
        );
    }
    group.bench_function("gss_checksum_channel_binding", |b| {
        b.iter(|| {
            let bindings = ChannelBindings::tls_server_end_point(black_box(&CERT_HASH));
            gss_checksum(Some(&bindings), CONTEXT_FLAGS)
        });
    });
    group.bench_function("spnego_neg_token_init", |b| {
        let w = sha1_kdc();
        b.iter(|| spnego::neg_token_init(black_box(&w.krb5_token)));
    });
    group.bench_function("base64_header", |b| {
        let w = sha1_kdc();
        let token =
            w.rt.block_on(w.client.negotiate_token(&w.alice, EXCHANGE_SERVICE, None))
                .expect("a token");
        b.iter(|| black_box(&token).to_header_value());
    });
    group.finish();
    let w = sha1_kdc();
    eprintln!(
        "session key of the default KDC: {}; of the sha384 KDC: {}",
        w.session_etype,
        sha384_kdc().session_etype
    );
}

fn cold(c: &mut Criterion) {
    let mut group = c.benchmark_group("cold");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("s4u_with_cached_tgt", |b| {
        let w = sha1_kdc();
        b.iter_custom(|iters| {
            time_async(w, iters, || async {
                w.client.invalidate(&w.alice, EXCHANGE_SERVICE);
                w.client
                    .negotiate_token(&w.alice, EXCHANGE_SERVICE, None)
                    .await
                    .expect("a token")
            })
        });
    });
    group.bench_function("with_as_login", |b| {
        let w = sha1_kdc();
        b.iter_custom(|iters| {
            time_async(w, iters, || async {
                w.client.clear_cache();
                w.client
                    .negotiate_token(&w.alice, EXCHANGE_SERVICE, None)
                    .await
                    .expect("a token")
            })
        });
    });
    group.finish();
    let w = sha1_kdc();
    eprintln!(
        "exchanges of the default KDC's client: {:?}",
        w.client.exchanges()
    );
}

criterion_group!(benches, negotiate_token_cached, negotiate_pieces, cold);
criterion_main!(benches);
