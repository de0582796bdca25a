//! A minimal HTTP/1.1 client over plain TCP or TLS, one connection per request.
//!
//! The Exchange stand-in uses it to push `SendNotification` to callback URLs; tests use it to
//! talk to the stand-in (or to a proxy in front of it) with a chosen trust store.
//!
//! ```no_run
//! # async fn example(pki: &seg_testbed::pki::TestPki) -> seg_testbed::Result<()> {
//! use http_body_util::Full;
//! let client = seg_testbed::client::HttpClient::trusting(pki.root_store());
//! let request = http::Request::get("https://localhost:8443/EWS/Services.wsdl")
//!     .body(Full::new(bytes::Bytes::new()))
//!     .expect("a valid request");
//! let response = client.send(request).await?;
//! # let _ = response;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// An HTTP/1.1 client that opens one connection per request, to `http` or `https` URLs.
#[derive(Clone)]
pub struct HttpClient {
    tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client that trusts the given roots for `https` URLs.
    pub fn trusting(roots: RootCertStore) -> Self {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::with_config(Arc::new(config))
    }

    /// A client that accepts any server certificate (still checking handshake signatures).
    pub fn accepting_any_certificate() -> Self {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
            .with_no_client_auth();
        Self::with_config(Arc::new(config))
    }

    /// A client with a complete rustls configuration, e.g. one presenting a client certificate.
    /// Its ALPN protocols are replaced by `http/1.1`.
    pub fn with_config(config: Arc<ClientConfig>) -> Self {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: Arc::new(config),
        }
    }

    /// Sends a request to the absolute URL in its URI and returns the response head; the body
    /// streams as it arrives.
    ///
    /// The request URI is rewritten to origin form and `Host` is set when absent.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a URI that is not absolute `http`/`https`, [`Error::Connect`]
    /// when the TCP or TLS connection fails, [`Error::Http`] when the exchange fails.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        let (mut parts, body) = request.into_parts();
        let target = Target::of(&parts.uri)?;
        parts.uri = target.origin_form.clone();
        if !parts.headers.contains_key(header::HOST) {
            let host = header::HeaderValue::from_str(&target.authority)
                .map_err(|_| Error::InvalidUrl(target.authority.clone()))?;
            parts.headers.insert(header::HOST, host);
        }
        let request = Request::from_parts(parts, body);
        let addr = format!("{}:{}", target.host, target.port);
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let name = ServerName::try_from(target.host.trim_matches(['[', ']']).to_string())
                .map_err(|_| Error::InvalidUrl(target.host.clone()))?;
            let stream = TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| Error::Connect { addr, source })?;
            exchange(stream, request).await
        } else {
            exchange(tcp, request).await
        }
    }
}

impl HttpClient {
    /// Opens one HTTP/2 connection over TLS to `addr`, offering only `h2` by ALPN and naming the
    /// server `server_name`; requests sent on it are multiplexed.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the TCP or TLS connection fails or the server does not agree to
    /// `h2`; [`Error::Http`] when the HTTP/2 handshake fails.
    pub async fn connect_h2(
        &self,
        addr: std::net::SocketAddr,
        server_name: &str,
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let mut config = (*self.tls).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| Error::InvalidUrl(server_name.to_string()))?;
        let tcp = TcpStream::connect(addr).await.map_err(connect_error)?;
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(connect_error)?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(connect_error(std::io::Error::other(
                "the server did not agree to h2",
            )));
        }
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .map_err(Error::Http)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "h2 client connection ended with an error");
            }
        });
        Ok(sender)
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Response<Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Http)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "client connection ended with an error");
        }
    });
    sender.send_request(request).await.map_err(Error::Http)
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    origin_form: Uri,
}

impl Target {
    fn of(uri: &Uri) -> Result<Self> {
        let invalid = || Error::InvalidUrl(uri.to_string());
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid()),
        };
        let authority = uri.authority().ok_or_else(invalid)?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let origin_form = uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse::<Uri>()
            .map_err(|_| invalid())?;
        Ok(Self {
            tls,
            host: authority.host().to_string(),
            port,
            authority: authority.as_str().to_string(),
            origin_form,
        })
    }
}

/// The crypto provider used everywhere in the testbed, chosen explicitly so that no
/// process-wide default needs installing.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct AcceptAnyCertificate;

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_default_their_port_by_scheme() {
        let t = Target::of(
            &"https://exchange.test.local/EWS/Exchange.asmx?x=1"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("exchange.test.local", 443));
        assert_eq!(t.origin_form, "/EWS/Exchange.asmx?x=1");
        let t = Target::of(&"http://127.0.0.1:8080".parse().unwrap()).unwrap();
        assert_eq!((t.tls, t.port, t.origin_form.path()), (false, 8080, "/"));
    }

    #[test]
    fn relative_or_foreign_urls_are_refused() {
        for bad in ["/EWS/Exchange.asmx", "ftp://host/x"] {
            assert!(Target::of(&bad.parse().unwrap()).is_err());
        }
    }
}
