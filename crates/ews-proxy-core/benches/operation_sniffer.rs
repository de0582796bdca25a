//! How long `sniff_operation` takes on a typical request and on the worst case the gateway
//! accepts: a 64 KiB SOAP header before the `Body`.

// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ews_proxy_core::operation::{DEFAULT_PREFIX_LIMIT, EwsOperation, Sniff, sniff_operation};
use std::hint::black_box;

/// A `GetItem` request as EWS clients send it, with a `RequestServerVersion` header.
fn get_item(header: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
               xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
               xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
               xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Header>
    <t:RequestServerVersion Version="Exchange2013_SP1" />{header}
  </soap:Header>
  <soap:Body>
    <m:GetItem>
      <m:ItemShape>
        <t:BaseShape>AllProperties</t:BaseShape>
      </m:ItemShape>
      <m:ItemIds>
        <t:ItemId Id="AAMkADk0ZjZhNDg3LWNhMDMtNDEyMy1hYmYwLTYyNmIyMmMzYTEwMwBGAAAAAAC" ChangeKey="CQAAABYAAAB" />
      </m:ItemIds>
    </m:GetItem>
  </soap:Body>
</soap:Envelope>"#
    )
}

fn sniffer(c: &mut Criterion) {
    let mut group = c.benchmark_group("sniff_operation");

    let typical = get_item("");
    assert_eq!(
        sniff_operation(typical.as_bytes()),
        Sniff::Found(EwsOperation::GetItem)
    );
    group.throughput(Throughput::Bytes(typical.len() as u64));
    group.bench_function("get_item", |b| {
        b.iter(|| sniff_operation(black_box(typical.as_bytes())))
    });

    // Impersonation headers repeated until the `Body` starts just inside the 64 KiB limit.
    let impersonation = "\n    <t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>alice@example.com</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>";
    let room = DEFAULT_PREFIX_LIMIT - get_item("").len();
    let worst = get_item(&impersonation.repeat(room / impersonation.len()));
    let body_at = worst.find("<m:GetItem>").unwrap();
    assert!(body_at > DEFAULT_PREFIX_LIMIT - 1024 && body_at < DEFAULT_PREFIX_LIMIT);
    let prefix = &worst.as_bytes()[..DEFAULT_PREFIX_LIMIT.min(worst.len())];
    assert_eq!(sniff_operation(prefix), Sniff::Found(EwsOperation::GetItem));
    group.throughput(Throughput::Bytes(prefix.len() as u64));
    group.bench_function("get_item_after_64k_header", |b| {
        b.iter(|| sniff_operation(black_box(prefix)))
    });

    group.finish();
}

criterion_group!(benches, sniffer);
criterion_main!(benches);
