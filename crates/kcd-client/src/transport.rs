//! Talking to a realm's KDCs (RFC 4120 7.2): UDP first with TCP fallback, or TCP only; the
//! KDCs tried in order until one answers; a timeout per attempt; replies of bounded size.

use std::net::SocketAddr;
use std::time::Duration;

use rasn_kerberos::KrbError;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use crate::KcdError;
use crate::asn1::{self, error_code};

/// How requests reach a KDC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TransportMode {
    /// UDP, then TCP to the same KDC when UDP fails or the KDC answers
    /// `KRB_ERR_RESPONSE_TOO_BIG`; requests larger than the UDP preference limit go by TCP
    /// directly (as MIT's `udp_preference_limit`).
    #[default]
    UdpThenTcp,
    /// TCP only (what firewalls that block UDP 88 need).
    TcpOnly,
}

/// Settings of the transport.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    pub(crate) mode: TransportMode,
    /// How long one send may take, connect and reply included.
    pub(crate) attempt_timeout: Duration,
    /// The largest reply accepted over TCP.
    pub(crate) max_reply: usize,
    /// Requests longer than this go by TCP even in [`TransportMode::UdpThenTcp`].
    pub(crate) udp_preference_limit: usize,
}

/// The transport and the KDCs of each realm: what every exchange sends through.
#[derive(Debug)]
pub(crate) struct KdcLink {
    pub(crate) transport: Transport,
    /// Realm, then its KDCs (`host[:port]`) in the order they are tried.
    pub(crate) realms: Vec<(String, Vec<String>)>,
    /// Requests sent (each counted once, however many KDCs it took).
    pub(crate) requests: std::sync::atomic::AtomicU64,
}

impl KdcLink {
    /// Sends `request` to a KDC of `realm` (matched exactly, else ignoring case).
    pub(crate) async fn send(&self, realm: &str, request: &[u8]) -> Result<Vec<u8>, KcdError> {
        let kdcs = self
            .realms
            .iter()
            .find(|(name, _)| name == realm)
            .or_else(|| {
                self.realms
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(realm))
            })
            .map(|(_, kdcs)| kdcs)
            .ok_or_else(|| KcdError::Config(format!("no KDC is configured for realm {realm}")))?;
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.transport.send(realm, kdcs, request).await
    }
}

/// The largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;
/// The KDC port when an address names none.
const KDC_PORT: u16 = 88;

impl Transport {
    /// Sends `request` to the KDCs of `realm` (`host[:port]` each) in order and returns the
    /// first reply.
    ///
    /// # Errors
    ///
    /// [`KcdError::KdcUnreachable`] when no KDC answered, counting every UDP and TCP try.
    pub(crate) async fn send(
        &self,
        realm: &str,
        kdcs: &[String],
        request: &[u8],
    ) -> Result<Vec<u8>, KcdError> {
        let mut attempts = 0;
        let mut last_error = None;
        for kdc in kdcs {
            let addrs = match self.resolve(kdc).await {
                Ok(addrs) => addrs,
                Err(error) => {
                    attempts += 1;
                    tracing::debug!(%kdc, %error, "KDC address did not resolve");
                    last_error = Some(error);
                    continue;
                }
            };
            for addr in addrs {
                let use_udp = self.mode == TransportMode::UdpThenTcp
                    && request.len() <= self.udp_preference_limit;
                if use_udp {
                    attempts += 1;
                    match self.udp(addr, request).await {
                        Ok(reply) if !is_response_too_big(&reply) => return Ok(reply),
                        Ok(_) => tracing::debug!(%addr, "KDC reply too big for UDP, trying TCP"),
                        // TCP follows, whose failure is the one reported.
                        Err(error) => tracing::debug!(%addr, %error, "KDC did not answer over UDP"),
                    }
                }
                attempts += 1;
                match self.tcp(addr, request).await {
                    Ok(reply) => return Ok(reply),
                    Err(error) => {
                        tracing::debug!(%addr, %error, "KDC did not answer over TCP");
                        last_error = Some(error);
                    }
                }
            }
        }
        Err(KcdError::KdcUnreachable {
            realm: realm.to_string(),
            attempts,
            source: last_error,
        })
    }

    async fn resolve(&self, kdc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let target = if kdc.parse::<SocketAddr>().is_ok() || has_port(kdc) {
            kdc.to_string()
        } else {
            format!("{kdc}:{KDC_PORT}")
        };
        let addrs = tokio::time::timeout(self.attempt_timeout, tokio::net::lookup_host(target))
            .await
            .map_err(|_| timed_out("resolving the KDC"))??;
        Ok(addrs.collect())
    }

    async fn udp(&self, addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let exchange = async {
            let socket = UdpSocket::bind(local).await?;
            // Connected, so that datagrams from any other peer are dropped by the kernel.
            socket.connect(addr).await?;
            socket.send(request).await?;
            let mut buffer = vec![0u8; MAX_DATAGRAM];
            let len = socket.recv(&mut buffer).await?;
            buffer.truncate(len);
            Ok(buffer)
        };
        tokio::time::timeout(self.attempt_timeout, exchange)
            .await
            .map_err(|_| timed_out("waiting for the KDC over UDP"))?
    }

    async fn tcp(&self, addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await?;
            let len = u32::try_from(request.len())
                .map_err(|_| std::io::Error::other("request too long"))?;
            // RFC 4120 7.2.2: a four-byte big-endian length, then the message.
            let mut framed = Vec::with_capacity(request.len() + 4);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(request);
            stream.write_all(&framed).await?;
            let reply_len = stream.read_u32().await?;
            // The high bit is reserved for extensions no KDC we talk to uses.
            let reply_len = usize::try_from(reply_len).unwrap_or(usize::MAX);
            if reply_len > self.max_reply {
                return Err(std::io::Error::other(format!(
                    "KDC reply of {reply_len} bytes exceeds the limit of {}",
                    self.max_reply
                )));
            }
            let mut reply = vec![0u8; reply_len];
            stream.read_exact(&mut reply).await?;
            Ok(reply)
        };
        tokio::time::timeout(self.attempt_timeout, exchange)
            .await
            .map_err(|_| timed_out("waiting for the KDC over TCP"))?
    }
}

fn has_port(kdc: &str) -> bool {
    // `host:port` or `[v6]:port`; a bare IPv6 address has several colons and no brackets.
    match kdc.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out {what}"))
}

/// Whether `reply` is a KRB-ERROR with `KRB_ERR_RESPONSE_TOO_BIG`.
fn is_response_too_big(reply: &[u8]) -> bool {
    reply.first() == Some(&0x7e)
        && asn1::decode::<KrbError>(reply, "KRB-ERROR")
            .is_ok_and(|e| e.error_code == error_code::RESPONSE_TOO_BIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdc_addresses_get_port_88_unless_they_name_one() {
        assert!(has_port("dc1.corp.example:88"));
        assert!(has_port("127.0.0.1:7088"));
        assert!(has_port("[::1]:88"));
        assert!(!has_port("dc1.corp.example"));
        assert!(!has_port("::1"));
    }

    fn transport(mode: TransportMode) -> Transport {
        Transport {
            mode,
            attempt_timeout: Duration::from_millis(300),
            max_reply: 1024,
            udp_preference_limit: 1465,
        }
    }

    #[tokio::test]
    async fn nobody_listening_is_unreachable_with_attempts_counted() {
        // Bind and drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let kdcs = vec![format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")];
        let error = transport(TransportMode::UdpThenTcp)
            .send("TEST.LOCAL", &kdcs, b"x")
            .await
            .unwrap_err();
        match error {
            KcdError::KdcUnreachable {
                realm, attempts, ..
            } => {
                assert_eq!(realm, "TEST.LOCAL");
                assert_eq!(attempts, 4);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn tcp_framing_and_reply_size_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for reply_len in [5u32, 1_000_000] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let len = stream.read_u32().await.unwrap();
                let mut request = vec![0; len as usize];
                stream.read_exact(&mut request).await.unwrap();
                assert_eq!(request, b"hello");
                stream.write_all(&reply_len.to_be_bytes()).await.unwrap();
                stream.write_all(&request).await.unwrap();
            }
        });
        let t = transport(TransportMode::TcpOnly);
        let kdcs = vec![addr.to_string()];
        assert_eq!(t.send("R", &kdcs, b"hello").await.unwrap(), b"hello");
        assert!(matches!(
            t.send("R", &kdcs, b"hello").await,
            Err(KcdError::KdcUnreachable { attempts: 1, .. })
        ));
        server.await.unwrap();
    }
}
