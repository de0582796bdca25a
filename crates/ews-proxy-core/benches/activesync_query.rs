//! How long reading an ActiveSync request's query takes (`ActiveSyncQuery::parse`): the
//! device limit, the enforcement layer and the host pool each read it once per ActiveSync
//! request, so this figure times three is what ActiveSync requests pay for it.

// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use ews_proxy_core::activesync::ActiveSyncQuery;
use std::hint::black_box;

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("activesync_query");
    // As iOS Mail sends a Ping.
    let plain = "Cmd=Ping&User=alice%40corp.example&DeviceId=ApplF17XK2PJHG7F&DeviceType=iPhone";
    // Protocol 14.1, Ping, a 16-byte GUID device id, WindowsMail, User alice@test.local.
    let base64 = "jRIJBBA/KgD/ECAwQFBgcICQoLDAAAtXaW5kb3dzTWFpbAgQYWxpY2VAdGVzdC5sb2NhbA==";
    assert!(ActiveSyncQuery::parse(plain).is_long_lived());
    assert!(ActiveSyncQuery::parse(base64).is_long_lived());
    group.bench_function("plain", |b| {
        b.iter(|| ActiveSyncQuery::parse(black_box(plain)).is_long_lived())
    });
    group.bench_function("base64", |b| {
        b.iter(|| ActiveSyncQuery::parse(black_box(base64)).is_long_lived())
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
