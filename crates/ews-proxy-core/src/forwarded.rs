//! Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` on requests to Exchange.
//!
//! Exchange logs and throttles by client address, and builds absolute URLs (autodiscover answers,
//! push callback checks) from the host and scheme the client used. The gateway appends the
//! client's address to `X-Forwarded-For` (keeping a chain set by a load balancer in front) and
//! replaces `-Proto` and `-Host`, which a client must not be able to choose.
//!
//! The client's address and scheme come from the [`ConnectionInfo`] the listener puts in each
//! request's extensions (see [`crate::server`]). A request without it gets no `X-Forwarded-For`.
//!
//! ```
//! use ews_proxy_core::forwarded::ForwardedHeadersLayer;
//! use ews_proxy_core::server::ConnectionInfo;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let service = ServiceBuilder::new().layer(ForwardedHeadersLayer::new()).service_fn(
//!     |request: Request<Full<Bytes>>| async move {
//!         assert_eq!(request.headers()["x-forwarded-for"], "10.1.1.1, 192.0.2.7");
//!         assert_eq!(request.headers()["x-forwarded-proto"], "https");
//!         assert_eq!(request.headers()["x-forwarded-host"], "seg.example.com");
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
//!     },
//! );
//! let mut request = Request::post("/EWS/Exchange.asmx")
//!     .header("host", "seg.example.com")
//!     .header("x-forwarded-for", "10.1.1.1")
//!     .header("x-forwarded-proto", "http")
//!     .body(Full::new(Bytes::new()))?;
//! request.extensions_mut().insert(ConnectionInfo::new("192.0.2.7:50000".parse()?, true));
//! service.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```

use crate::server::ConnectionInfo;
use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use std::net::IpAddr;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Layer that applies [`ForwardedHeaders`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardedHeadersLayer {
    _priv: (),
}

impl ForwardedHeadersLayer {
    /// Appends the client to `X-Forwarded-For`; replaces `X-Forwarded-Proto` and `-Host`.
    pub fn new() -> Self {
        ForwardedHeadersLayer { _priv: () }
    }
}

impl<S> Layer<S> for ForwardedHeadersLayer {
    type Service = ForwardedHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardedHeaders { inner }
    }
}

/// Middleware that sets the `X-Forwarded-*` headers.
#[derive(Clone, Debug)]
pub struct ForwardedHeaders<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ForwardedHeaders<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let info = request.extensions().get::<ConnectionInfo>().copied();
        // HTTP/2 carries the host in the URI, HTTP/1.1 in the Host header.
        let host = request.headers().get(header::HOST).cloned().or_else(|| {
            request
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        set_forwarded(request.headers_mut(), info, host);
        self.inner.call(request)
    }
}

fn set_forwarded(headers: &mut HeaderMap, info: Option<ConnectionInfo>, host: Option<HeaderValue>) {
    if let Some(info) = info {
        let mut client = ClientAddress::default();
        client.write(info.remote_addr().ip());
        // Several X-Forwarded-For lines are one list (RFC 9110 §5.3); fold them with ours.
        let mut earlier = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        let value = if earlier.peek().is_none() {
            HeaderValue::from_bytes(client.as_bytes())
        } else {
            let mut chain = Vec::with_capacity(64);
            for hop in earlier.filter(|v| v.to_str().is_ok()) {
                chain.extend_from_slice(hop.as_bytes());
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&chain)
        };
        if let Ok(value) = value {
            headers.insert(X_FORWARDED_FOR, value);
        }
        let proto = if info.is_tls() { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    } else {
        headers.remove(X_FORWARDED_PROTO);
    }
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// A client's IP address as text, written without `fmt`: `Ipv4Addr`'s `Display` (padding and
/// width support, a formatter per octet) was ≈ 1.6 k instructions of every proxied request.
struct ClientAddress {
    text: [u8; 45],
    len: usize,
}

impl Default for ClientAddress {
    fn default() -> Self {
        ClientAddress {
            text: [0; 45],
            len: 0,
        }
    }
}

impl ClientAddress {
    fn write(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            // Rarer, and its canonical text (RFC 5952 zero compression) is not worth
            // rewriting: `Display` gives it. 45 bytes hold the longest form.
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut self.text[..]);
                let _ = write!(cursor, "{v6}");
                self.len = usize::try_from(cursor.position()).unwrap_or(0);
            }
        }
    }

    fn push(&mut self, byte: u8) {
        self.text[self.len] = byte;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_hop_sets_all_three() {
        let mut headers = HeaderMap::new();
        let info = ConnectionInfo::new("[2001:db8::1]:443".parse().unwrap(), false);
        set_forwarded(
            &mut headers,
            Some(info),
            Some(HeaderValue::from_static("seg:8080")),
        );
        assert_eq!(headers[X_FORWARDED_FOR], "2001:db8::1");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "seg:8080");
    }

    #[test]
    fn client_cannot_choose_proto_or_host() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        let info = ConnectionInfo::new("192.0.2.1:1".parse().unwrap(), false);
        set_forwarded(&mut headers, Some(info), None);
        assert!(headers.get(X_FORWARDED_HOST).is_none());
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 192.0.2.1");
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        let addresses = [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "192.0.2.7",
            "::",
            "::1",
            "2001:db8::8:800:200c:417a",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ];
        for text in addresses {
            let ip: IpAddr = text.parse().unwrap();
            let mut client = ClientAddress::default();
            client.write(ip);
            assert_eq!(client.as_bytes(), ip.to_string().as_bytes(), "{text}");
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, 0, 255 - octet, 1]);
            let mut client = ClientAddress::default();
            client.write(ip);
            assert_eq!(client.as_bytes(), ip.to_string().as_bytes());
        }
    }
}
