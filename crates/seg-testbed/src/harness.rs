//! Shared test helpers: waiting for a condition, binding loopback listeners, reading bodies
//! frame by frame, and a ready TLS Exchange stand-in with a client that trusts it.
//!
//! ```
//! use std::time::Duration;
//! use seg_testbed::harness::wait_until;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> seg_testbed::Result<()> {
//! let mut polls = 0;
//! wait_until(Duration::from_secs(1), "the third poll", || {
//!     polls += 1;
//!     let done = polls >= 3;
//!     async move { done }
//! })
//! .await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt as _, Full};
use tokio::net::TcpListener;

use crate::client::HttpClient;
use crate::error::{Error, Result};
use crate::exchange::{ExchangeConfig, ExchangeHandle, ExchangeServer, User};
use crate::pki::TestPki;
use crate::token::{DEFAULT_AUDIENCE, TokenIssuer};

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `condition` every [`POLL_INTERVAL`] until it holds.
///
/// # Errors
///
/// [`Error::Timeout`] naming `what` if it still does not hold after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: deadline,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits `future` for at most `deadline`.
///
/// # Errors
///
/// [`Error::Timeout`] naming `what` if it does not complete in time.
pub async fn within<T>(
    deadline: Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> Result<T> {
    tokio::time::timeout(deadline, future)
        .await
        .map_err(|_| Error::Timeout {
            what: what.to_string(),
            after: deadline,
        })
}

/// Binds a listener on `127.0.0.1` with a free port.
///
/// # Errors
///
/// [`Error::Connect`] if binding fails.
pub async fn local_listener() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| Error::Connect {
            addr: "127.0.0.1:0".into(),
            source,
        })
}

/// The next data frame of a body (trailers skipped), or `None` at its end, waiting at most
/// `deadline`.
///
/// # Errors
///
/// [`Error::Timeout`] naming `what` if no frame arrives in time; [`Error::Http`] if the body
/// fails.
pub async fn next_chunk<B>(body: &mut B, deadline: Duration, what: &str) -> Result<Option<Bytes>>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    within(deadline, what, async {
        loop {
            match body.frame().await {
                None => return Ok(None),
                Some(Err(error)) => return Err(Error::Http(error)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    })
    .await?
}

/// Reads a whole body as text.
///
/// # Errors
///
/// [`Error::Http`] if the body fails.
pub async fn body_text<B>(body: B) -> Result<String>
where
    B: Body<Data = Bytes, Error = hyper::Error>,
{
    let bytes = body.collect().await.map_err(Error::Http)?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The SOAP envelope namespace, as clients write it.
pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The EWS messages namespace.
pub const MESSAGES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
/// The EWS types namespace.
pub const TYPES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

/// A SOAP request envelope as exchangelib writes it (`s:`, `m:`, `t:` prefixes, a
/// `RequestServerVersion` of `Exchange2013`) around `operation`, an element using `m:` and `t:`.
pub fn soap_envelope(operation: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}" xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><s:Header><t:RequestServerVersion Version="Exchange2013"/></s:Header><s:Body>{operation}</s:Body></s:Envelope>"#
    )
}

/// The `Authorization` value for Basic credentials.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A `POST` of `body` to `url` with `Content-Type: text/xml; charset=utf-8`, the given
/// `Authorization` (if any) and extra headers.
///
/// # Errors
///
/// [`Error::InvalidUrl`] if the URL or a header is invalid.
pub fn ews_request(
    url: &str,
    authorization: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<http::Request<Full<Bytes>>> {
    let mut builder =
        http::Request::post(url).header(http::header::CONTENT_TYPE, "text/xml; charset=utf-8");
    if let Some(authorization) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, authorization);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body.into()))
        .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))
}

/// A loopback address with a port free right now, for a component that binds its own listener
/// from configuration but whose address another component must know first (a webhook URL).
///
/// The port is released before returning, so something else could take it before the
/// component binds it. To make that unlikely it is drawn at random from below the kernel's
/// ephemeral range (`net.ipv4.ip_local_port_range`), where neither listeners bound to port 0
/// nor outgoing connections get their ports: a port that `bind("127.0.0.1:0")` handed out was
/// taken by another test's listener between release and use (CI, 2026-12-05). Falls back to
/// port 0 when the range leaves no room below it.
///
/// # Errors
///
/// [`Error::Connect`] if no loopback port can be bound.
pub fn reserve_port() -> Result<std::net::SocketAddr> {
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start > LOWEST + 100 {
        for _ in 0..64 {
            let port = rand::random_range(LOWEST..ephemeral_start);
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port))
                && let Ok(addr) = listener.local_addr()
            {
                return Ok(addr);
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Connect {
        addr: "127.0.0.1:0".into(),
        source,
    })?;
    listener.local_addr().map_err(|source| Error::Connect {
        addr: "127.0.0.1:0".into(),
        source,
    })
}

/// The text of the first element with this local name, whatever its prefix (`""` for an empty
/// element); `None` when there is none or the document is not well-formed up to it.
pub fn xml_text(document: &str, local_name: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(document);
    let mut inside = false;
    let mut text = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(start)
                if !inside && start.local_name().as_ref() == local_name.as_bytes() =>
            {
                inside = true;
            }
            Event::Empty(empty)
                if !inside && empty.local_name().as_ref() == local_name.as_bytes() =>
            {
                return Some(String::new());
            }
            Event::Text(chunk) if inside => {
                let raw = chunk.decode().ok()?;
                text.push_str(&quick_xml::escape::unescape(&raw).ok()?);
            }
            Event::GeneralRef(reference) if inside => {
                let name = reference.decode().ok()?;
                text.push_str(&quick_xml::escape::unescape(&format!("&{name};")).ok()?);
            }
            Event::End(_) if inside => return Some(text),
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The value of `attribute` on the first element with this local name, whatever its prefix.
pub fn xml_attribute(document: &str, local_name: &str, attribute: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(document);
    loop {
        match reader.read_event().ok()? {
            Event::Start(element) | Event::Empty(element)
                if element.local_name().as_ref() == local_name.as_bytes() =>
            {
                let value = element.try_get_attribute(attribute).ok()??;
                return value.unescape_value().ok().map(|v| v.into_owned());
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The password every [`TestExchange`] user has.
pub const TEST_PASSWORD: &str = "P@ssw0rd!";

/// A TLS Exchange stand-in with its PKI, token issuer and a client trusting its CA: the usual
/// starting point of an integration test.
#[derive(Debug)]
pub struct TestExchange {
    /// The running server.
    pub server: ExchangeHandle,
    /// The CA and server certificate it presents.
    pub pki: TestPki,
    /// Issues tokens the server accepts.
    pub tokens: TokenIssuer,
    /// A client trusting the CA.
    pub client: HttpClient,
}

impl TestExchange {
    /// Starts a TLS server for `alice@test.local` and `bob@test.local` (password
    /// [`TEST_PASSWORD`]), letting `configure` adjust the configuration (e.g. shrink `minute`).
    ///
    /// # Errors
    ///
    /// Any error generating the PKI or tokens or binding the listener.
    pub async fn start(configure: impl FnOnce(&mut ExchangeConfig)) -> Result<Self> {
        let pki = TestPki::in_memory(&[])?;
        let tokens = TokenIssuer::generate(DEFAULT_AUDIENCE)?;
        let mut config = ExchangeConfig::new(vec![
            User::new("alice@test.local", TEST_PASSWORD),
            User::new("bob@test.local", TEST_PASSWORD),
        ]);
        config.token_verifier = Some(tokens.verifier());
        configure(&mut config);
        let server =
            ExchangeServer::spawn(local_listener().await?, Some(pki.server_config()?), config)?;
        let client = HttpClient::trusting(pki.root_store());
        Ok(Self {
            server,
            pki,
            tokens,
            client,
        })
    }

    /// Stops the server and starts it again on the same address with a new server certificate
    /// from the same CA (a renewed certificate, as Exchange gets one), letting `configure` set
    /// up the configuration as [`TestExchange::start`] did: mailboxes and subscriptions start
    /// empty, the token issuer and the trusting client stay.
    ///
    /// # Errors
    ///
    /// Any error issuing the certificate or binding the address again.
    pub async fn restart_with_new_certificate(
        self,
        configure: impl FnOnce(&mut ExchangeConfig),
    ) -> Result<Self> {
        let names: Vec<&str> = crate::pki::DEFAULT_SERVER_NAMES.to_vec();
        let (cert, key) = self.pki.issue_server_cert(&names)?;
        let tls = crate::pki::server_config_from_pem(&cert, &key)?;
        self.restart_with_certificate(tls, configure).await
    }

    /// [`restart_with_new_certificate`](Self::restart_with_new_certificate) with the TLS
    /// configuration given: e.g. a certificate from another CA, which a gateway trusting this
    /// PKI must refuse.
    ///
    /// # Errors
    ///
    /// Any error binding the address again.
    pub async fn restart_with_certificate(
        self,
        tls: std::sync::Arc<rustls::ServerConfig>,
        configure: impl FnOnce(&mut ExchangeConfig),
    ) -> Result<Self> {
        let addr = self.server.addr();
        self.server.shutdown().await;
        let mut config = ExchangeConfig::new(vec![
            User::new("alice@test.local", TEST_PASSWORD),
            User::new("bob@test.local", TEST_PASSWORD),
        ]);
        config.token_verifier = Some(self.tokens.verifier());
        configure(&mut config);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let server = ExchangeServer::spawn(listener, Some(tls), config)?;
        Ok(Self { server, ..self })
    }

    /// Posts an EWS operation (wrapped by [`soap_envelope`]) to the server with the given
    /// `Authorization` and extra headers.
    ///
    /// # Errors
    ///
    /// Any error of [`HttpClient::send`].
    pub async fn ews(
        &self,
        authorization: &str,
        headers: &[(&str, &str)],
        operation: &str,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let request = ews_request(
            &self.server.url(),
            Some(authorization),
            headers,
            soap_envelope(operation),
        )?;
        self.client.send(request).await
    }

    /// Basic credentials of a test user.
    pub fn basic(&self, upn: &str) -> String {
        basic_auth(upn, TEST_PASSWORD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserved ports stay out of the range the kernel hands to port-0 listeners and outgoing
    /// connections, and can be bound by whoever they were reserved for.
    #[test]
    fn reserved_ports_are_below_the_ephemeral_range_and_bindable() {
        let ephemeral_start: u16 =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .expect("linux port range")
                .split_whitespace()
                .next()
                .and_then(|start| start.parse().ok())
                .expect("a start port");
        for _ in 0..20 {
            let addr = reserve_port().expect("a port");
            assert!(addr.ip().is_loopback());
            if ephemeral_start > 10_100 {
                assert!(
                    addr.port() < ephemeral_start,
                    "{addr} in the ephemeral range"
                );
            }
            std::net::TcpListener::bind(addr).expect("the reserved port binds");
        }
    }

    #[test]
    fn xml_lookups_ignore_prefixes_and_unescape() {
        let document = r#"<s:Envelope xmlns:s="urn:s" xmlns:t="urn:t"><t:Subject>A &amp; B</t:Subject><t:ItemId Id="AAMk&lt;1" ChangeKey="C"/><t:Empty/></s:Envelope>"#;
        assert_eq!(xml_text(document, "Subject").as_deref(), Some("A & B"));
        assert_eq!(
            xml_attribute(document, "ItemId", "Id").as_deref(),
            Some("AAMk<1")
        );
        assert_eq!(xml_text(document, "Empty").as_deref(), Some(""));
        assert_eq!(xml_text(document, "Missing"), None);
    }

    #[tokio::test]
    async fn wait_until_names_what_it_waited_for() {
        let error = wait_until(Duration::from_millis(30), "the impossible", || async {
            false
        })
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "timed out after 30ms waiting for the impossible"
        );
    }

    #[tokio::test]
    async fn local_listeners_get_distinct_loopback_ports() {
        let (a, b) = (
            local_listener().await.unwrap(),
            local_listener().await.unwrap(),
        );
        assert!(a.local_addr().unwrap().ip().is_loopback());
        assert_ne!(a.local_addr().unwrap(), b.local_addr().unwrap());
    }
}
