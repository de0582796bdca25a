//! A minimal static SOAP responder: the fast upstream of the proxy comparison benchmark.
//!
//! `bench/compare.sh` puts nginx, HAProxy and seg-proxy in turn in front of the same upstream and
//! compares them. The test Exchange server of [`exchange`](crate::exchange) spends tens of
//! microseconds of CPU on each request (it parses the SOAP, checks credentials, looks up the
//! mailbox), which would hide the contenders' differences; this responder does as little as an
//! HTTP/1.1 server can: it reads the request body, and answers every `POST` with one of two
//! canned EWS responses held in memory (no copy per response):
//!
//! - a request whose body names `GetItem` gets a `GetItemResponse` of [`StaticSoap::LARGE`]
//!   bytes (a message with its MIME content, the size of a mail with an attachment);
//! - any other request gets a small `GetFolderResponse` for the inbox.
//!
//! Both are `200` with `ResponseClass="Success"`, which is what the benchmark's load scripts
//! check. HTTP/1.1 (the protocol nginx speaks to an upstream), over TLS when a certificate is
//! given; HTTP/2 as well when the TLS configuration offers `h2` by ALPN and the client picks it,
//! as IIS 10 does for Exchange on Windows Server 2016 and later.
//!
//! ```
//! use seg_testbed::static_soap::StaticSoap;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let responder = StaticSoap::new();
//! assert!(responder.small().len() < 2_000);
//! assert_eq!(responder.large().len(), StaticSoap::LARGE);
//! let server = tokio::spawn(responder.serve(listener, None));
//! server.abort();
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const SMALL_RESPONSE: &str = concat!(
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
    r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">"#,
    r#"<s:Header><h:ServerVersionInfo MajorVersion="15" MinorVersion="2" MajorBuildNumber="1544" MinorBuildNumber="4" Version="V2017_07_11" "#,
    r#"xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types"/></s:Header>"#,
    r#"<s:Body><m:GetFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" "#,
    r#"xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">"#,
    r#"<m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Success">"#,
    r#"<m:ResponseCode>NoError</m:ResponseCode><m:Folders><t:Folder>"#,
    r#"<t:FolderId Id="AAMkADk0MTQ1YjBkLWM4ZjEtNGQ4Mi1hMjU0LTg5ZTgzNzdmYTg5YgAuAAAAAAD" ChangeKey="AQAAABYAAAA"/>"#,
    r#"<t:DisplayName>Inbox</t:DisplayName><t:TotalCount>12</t:TotalCount>"#,
    r#"<t:ChildFolderCount>0</t:ChildFolderCount><t:UnreadCount>3</t:UnreadCount>"#,
    r#"</t:Folder></m:Folders></m:GetFolderResponseMessage></m:ResponseMessages>"#,
    r#"</m:GetFolderResponse></s:Body></s:Envelope>"#
);

/// The canned responses, shared by every connection.
#[derive(Clone, Debug)]
pub struct StaticSoap {
    small: Bytes,
    large: Bytes,
}

impl Default for StaticSoap {
    fn default() -> Self {
        Self::new()
    }
}

impl StaticSoap {
    /// The size in bytes of the `GetItemResponse` answered to a `GetItem` request.
    pub const LARGE: usize = 1 << 20;

    /// The two canned responses, built once.
    pub fn new() -> Self {
        StaticSoap {
            small: Bytes::from_static(SMALL_RESPONSE.as_bytes()),
            large: Bytes::from(large_get_item_response(Self::LARGE)),
        }
    }

    /// The `GetFolderResponse` answered to every request but `GetItem`.
    pub fn small(&self) -> &Bytes {
        &self.small
    }

    /// The [`LARGE`](Self::LARGE)-byte `GetItemResponse`.
    pub fn large(&self) -> &Bytes {
        &self.large
    }

    /// Serves HTTP/1.1 keep-alive connections on `listener` (TLS with `tls`; HTTP/2 on those
    /// whose ALPN chose `h2`) until the task is dropped or aborted.
    pub async fn serve(self, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
        let tls = tls.map(TlsAcceptor::from);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(self.clone().connection(stream, tls.clone()));
                }
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    // EMFILE and the like: back off instead of spinning on the error.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn connection(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let _ = stream.set_nodelay(true);
        let service = service_fn(move |request: Request<Incoming>| {
            let responses = self.clone();
            async move { Ok::<_, Infallible>(responses.answer(request).await) }
        });
        let http = hyper::server::conn::http1::Builder::new();
        let result = match tls {
            Some(acceptor) => match acceptor.accept(stream).await {
                // HTTP/2 only when the server's TLS configuration offered it (ALPN) and the
                // client chose it: what IIS 10 does for Exchange.
                Ok(stream) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                Err(error) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
            },
            None => http.serve_connection(TokioIo::new(stream), service).await,
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != http::Method::POST {
            return Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default();
        }
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default();
            }
        };
        let payload = if contains(&body, b"GetItem") {
            self.large.clone()
        } else {
            self.small.clone()
        };
        Response::builder()
            .header(header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(Full::new(payload))
            .unwrap_or_default()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A `GetItemResponse` of exactly `size` bytes: a message whose base64 MIME content pads it.
fn large_get_item_response(size: usize) -> Vec<u8> {
    let head = concat!(
        r#"<?xml version="1.0" encoding="utf-8"?>"#,
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>"#,
        r#"<m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" "#,
        r#"xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">"#,
        r#"<m:ResponseMessages><m:GetItemResponseMessage ResponseClass="Success">"#,
        r#"<m:ResponseCode>NoError</m:ResponseCode><m:Items><t:Message>"#,
        r#"<t:ItemId Id="AAMkADk0MTQ1YjBkLWM4ZjEtNGQ4Mi1hMjU0LTg5ZTgzNzdmYTg5YgBGAAAAAAD" ChangeKey="CQAAABYAAAA"/>"#,
        r#"<t:Subject>Quarterly report</t:Subject><t:MimeContent CharacterSet="UTF-8">"#
    );
    let tail = concat!(
        r#"</t:MimeContent></t:Message></m:Items></m:GetItemResponseMessage>"#,
        r#"</m:ResponseMessages></m:GetItemResponse></s:Body></s:Envelope>"#
    );
    let padding = size.saturating_sub(head.len() + tail.len());
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(head.as_bytes());
    out.extend((0..padding).map(|i| alphabet[i % alphabet.len()]));
    out.extend_from_slice(tail.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_large_response_has_the_advertised_size_and_is_a_success() {
        let responder = StaticSoap::new();
        assert_eq!(responder.large().len(), StaticSoap::LARGE);
        let large = std::str::from_utf8(responder.large()).expect("ASCII");
        assert!(large.contains(r#"ResponseClass="Success""#));
        assert!(large.ends_with("</s:Envelope>"));
        let small = std::str::from_utf8(responder.small()).expect("ASCII");
        assert!(small.contains(r#"ResponseClass="Success""#));
    }

    /// A `200`'s HTTP version and body.
    async fn version_and_body(response: Response<Incoming>) -> (http::Version, String) {
        assert_eq!(response.status(), StatusCode::OK);
        let version = response.version();
        let body = response.into_body().collect().await.expect("the body");
        (
            version,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        )
    }

    fn get_folder_request(url: &str) -> Request<Full<Bytes>> {
        Request::post(url)
            .header(header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(Full::new(Bytes::from_static(b"<m:GetFolder/>")))
            .expect("a valid request")
    }

    #[tokio::test]
    async fn http2_is_spoken_when_alpn_picks_it_and_http1_otherwise() {
        let pki = crate::pki::TestPki::in_memory(&[]).expect("a test PKI");
        let offers_both = pki.server_config().expect("a server configuration");
        assert_eq!(offers_both.alpn_protocols, [&b"h2"[..], b"http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let server = tokio::spawn(StaticSoap::new().serve(listener, Some(offers_both)));
        let client = crate::client::HttpClient::trusting(pki.root_store());
        let url = format!("https://localhost:{}/EWS/Exchange.asmx", addr.port());

        let mut h2 = client
            .connect_h2(addr, "localhost")
            .await
            .expect("h2 agreed");
        let response = h2.send_request(get_folder_request(&url)).await;
        let (version, body) = version_and_body(response.expect("an answer over h2")).await;
        assert_eq!(version, http::Version::HTTP_2);
        assert!(body.contains(r#"ResponseClass="Success""#), "{body}");

        let response = client.send(get_folder_request(&url)).await;
        let (version, body) = version_and_body(response.expect("an answer over HTTP/1.1")).await;
        assert_eq!(version, http::Version::HTTP_11);
        assert!(body.contains(r#"ResponseClass="Success""#), "{body}");
        server.abort();

        // A configuration that offers HTTP/1.1 only (the comparison's default) is not talked
        // into HTTP/2.
        let mut http1_only = (*pki.server_config().expect("a server configuration")).clone();
        http1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let server = tokio::spawn(StaticSoap::new().serve(listener, Some(Arc::new(http1_only))));
        assert!(client.connect_h2(addr, "localhost").await.is_err());
        server.abort();
    }

    #[test]
    fn get_item_is_told_from_other_operations() {
        assert!(contains(b"<m:GetItem>", b"GetItem"));
        assert!(!contains(b"<m:GetFolder>", b"GetItem"));
        assert!(!contains(b"", b"GetItem"));
    }
}
