//! Talking to a realm's KDCs (RFC 4120 7.2): UDP first with TCP fallback, or TCP only; the
//! KDCs tried in order until one answers; a timeout per attempt; replies of bounded size; and a
//! bound on the requests in flight to each KDC.
//!
//! Why the bound: a KDC such as MIT's `krb5kdc` reads its UDP socket one request at a time, and
//! a burst of a hundred requests at once overflows the socket's receive buffer (208 KiB by
//! default on Linux, about 70 S4U2Self datagrams): the kernel drops the rest silently and each
//! dropped request waits out the UDP timeout before it goes again over TCP. With at most
//! [`DEFAULT_MAX_IN_FLIGHT`] requests outstanding per KDC, the others wait for a slot in the
//! client, where the wait costs nothing but the queueing the KDC would have imposed anyway.
//! The UDP wait itself is short ([`DEFAULT_UDP_TIMEOUT`], as MIT's library waits 1 s before it
//! tries the next transport) and TCP, which loses nothing, follows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rasn_kerberos::KrbError;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

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

/// How many requests a client has outstanding to one KDC by default (see the module
/// documentation).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// How long a client waits for a reply over UDP by default before it sends the request over
/// TCP.
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of the transport.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    pub(crate) mode: TransportMode,
    /// How long one send may take, connect and reply included; also how long a request waits
    /// for a free slot to a KDC before it tries the next.
    pub(crate) attempt_timeout: Duration,
    /// How long a UDP send waits for its reply before TCP is tried (capped by
    /// `attempt_timeout`).
    pub(crate) udp_timeout: Duration,
    /// The largest reply accepted over TCP.
    pub(crate) max_reply: usize,
    /// Requests longer than this go by TCP even in [`TransportMode::UdpThenTcp`].
    pub(crate) udp_preference_limit: usize,
    /// UDP sends without a reply in time (lost, or a slow KDC), counted for tests and metrics.
    pub(crate) udp_unanswered: std::sync::Arc<AtomicU64>,
}

/// One KDC as configured, and the slots of the requests that may be in flight to it.
#[derive(Debug)]
pub(crate) struct KdcEndpoint {
    /// `host` or `host:port`.
    pub(crate) address: String,
    /// Configured as `tcp/host[:port]`: never reached over UDP.
    tcp_only: bool,
    slots: Semaphore,
    max_in_flight: usize,
}

impl KdcEndpoint {
    /// `address` (`host[:port]`, optionally prefixed `tcp/` or `udp/` as in krb5.conf) with at
    /// most `max_in_flight` requests outstanding (at least one).
    pub(crate) fn new(address: impl Into<String>, max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let address = address.into();
        let (tcp_only, host) = crate::krb5_conf::transport_prefix(&address);
        Self {
            tcp_only,
            address: host.to_owned(),
            slots: Semaphore::new(max_in_flight),
            max_in_flight,
        }
    }
}

/// The transport and the KDCs of each realm: what every exchange sends through.
#[derive(Debug)]
pub(crate) struct KdcLink {
    pub(crate) transport: Transport,
    /// Realm, then its KDCs in the order they are tried.
    pub(crate) realms: Vec<(String, Vec<KdcEndpoint>)>,
    /// Requests sent (each counted once, however many KDCs it took).
    pub(crate) requests: AtomicU64,
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
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.transport.send(realm, kdcs, request).await
    }

    /// UDP sends that went unanswered within the UDP timeout and were sent again over TCP.
    pub(crate) fn udp_unanswered(&self) -> u64 {
        self.transport.udp_unanswered.load(Ordering::Relaxed)
    }
}

/// The largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;

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
        kdcs: &[KdcEndpoint],
        request: &[u8],
    ) -> Result<Vec<u8>, KcdError> {
        let mut attempts = 0;
        let mut last_error = None;
        for endpoint in kdcs {
            let kdc = &endpoint.address;
            // A slot to this KDC, waited for at most one attempt's time: a KDC whose slots all
            // stay taken that long is as good as unreachable, and the next one is tried.
            let _slot =
                match tokio::time::timeout(self.attempt_timeout, endpoint.slots.acquire()).await {
                    Ok(Ok(slot)) => slot,
                    // The semaphore is never closed.
                    Ok(Err(_)) | Err(_) => {
                        attempts += 1;
                        let error = timed_out(&format!(
                            "waiting for one of the {} request slots to the KDC",
                            endpoint.max_in_flight
                        ));
                        tracing::debug!(%kdc, %error, "KDC busy");
                        last_error = Some(error);
                        continue;
                    }
                };
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
                    && !endpoint.tcp_only
                    && request.len() <= self.udp_preference_limit;
                if use_udp {
                    attempts += 1;
                    match self.udp(addr, request).await {
                        Ok(reply) if !is_response_too_big(&reply) => return Ok(reply),
                        Ok(_) => tracing::debug!(%addr, "KDC reply too big for UDP, trying TCP"),
                        // TCP follows, whose failure is the one reported.
                        Err(error) => {
                            if error.kind() == std::io::ErrorKind::TimedOut {
                                self.udp_unanswered.fetch_add(1, Ordering::Relaxed);
                            }
                            tracing::debug!(%addr, %error, "KDC did not answer over UDP")
                        }
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
        let target = crate::krb5_conf::kdc_socket_address(kdc);
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
        tokio::time::timeout(self.udp_timeout.min(self.attempt_timeout), exchange)
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
        use crate::krb5_conf::kdc_socket_address as address;
        assert_eq!(address("dc1.corp.example:88"), "dc1.corp.example:88");
        assert_eq!(address("127.0.0.1:7088"), "127.0.0.1:7088");
        assert_eq!(address("[::1]:750"), "[::1]:750");
        assert_eq!(address("dc1.corp.example"), "dc1.corp.example:88");
        assert_eq!(
            address("::1"),
            "[::1]:88",
            "a bare IPv6 address gets brackets"
        );
        assert_eq!(address("[::1]"), "[::1]:88");
        assert_eq!(address("TCP/dc1.corp.example"), "dc1.corp.example:88");
    }

    fn transport(mode: TransportMode) -> Transport {
        Transport {
            mode,
            attempt_timeout: Duration::from_millis(300),
            udp_timeout: Duration::from_millis(300),
            max_reply: 1024,
            udp_preference_limit: 1465,
            udp_unanswered: Default::default(),
        }
    }

    /// A UDP socket and a TCP listener on the same loopback port, as a KDC has. The UDP port
    /// comes from the kernel; its TCP twin may be taken already (by any listener or outgoing
    /// connection of the tests running alongside), so another port is tried then.
    fn udp_and_tcp_on_one_port() -> (std::net::UdpSocket, tokio::net::TcpListener) {
        for _ in 0..64 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let Ok(tcp) = std::net::TcpListener::bind(udp.local_addr().unwrap()) else {
                continue;
            };
            tcp.set_nonblocking(true).unwrap();
            return (udp, tokio::net::TcpListener::from_std(tcp).unwrap());
        }
        panic!("no loopback port free for both UDP and TCP in 64 tries");
    }

    fn endpoints(addresses: &[String]) -> Vec<KdcEndpoint> {
        addresses
            .iter()
            .map(|a| KdcEndpoint::new(a.clone(), DEFAULT_MAX_IN_FLIGHT))
            .collect()
    }

    #[tokio::test]
    async fn nobody_listening_is_unreachable_with_attempts_counted() {
        // Bind and drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let kdcs = endpoints(&[format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")]);
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

    #[tokio::test(flavor = "current_thread")]
    async fn no_more_requests_than_its_slots_are_in_flight_to_a_kdc() {
        // A KDC that answers only what the test tells it to: it echoes the datagrams it read.
        let kdc = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        kdc.set_nonblocking(true).unwrap();
        let kdcs = std::sync::Arc::new(vec![KdcEndpoint::new(
            kdc.local_addr().unwrap().to_string(),
            2,
        )]);
        let mut settings = transport(TransportMode::UdpThenTcp);
        settings.attempt_timeout = Duration::from_secs(20);
        settings.udp_timeout = Duration::from_secs(20);
        let settings = std::sync::Arc::new(settings);
        let sends: Vec<_> = (0..6u8)
            .map(|i| {
                let (settings, kdcs) = (settings.clone(), kdcs.clone());
                tokio::spawn(async move { settings.send("R", &kdcs, &[i]).await })
            })
            .collect();

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut rounds = Vec::new();
        let mut answered = 0;
        while answered < 6 {
            assert!(
                std::time::Instant::now() < deadline,
                "rounds so far {rounds:?}"
            );
            // On this one thread, yielding lets every send run until it waits: for its
            // reply, or for a slot. What the KDC has read then is all that is in flight.
            let mut waiting = Vec::new();
            for _ in 0..50 {
                tokio::task::yield_now().await;
                let mut buffer = [0u8; 16];
                while let Ok((len, from)) = kdc.recv_from(&mut buffer) {
                    waiting.push((buffer[..len].to_vec(), from));
                }
            }
            if waiting.is_empty() {
                continue;
            }
            rounds.push(waiting.len());
            for (request, from) in waiting {
                kdc.send_to(&request, from).unwrap();
                answered += 1;
            }
        }

        assert_eq!(rounds, [2, 2, 2]);
        for (i, send) in sends.into_iter().enumerate() {
            assert_eq!(send.await.unwrap().unwrap(), [i as u8]);
        }
        assert_eq!(settings.udp_unanswered.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unanswered_datagram_goes_again_over_tcp_after_the_udp_timeout() {
        // UDP bound but silent (a lost datagram); TCP on the same port answers.
        let (udp, listener) = udp_and_tcp_on_one_port();
        let addr = udp.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let len = stream.read_u32().await.unwrap();
            let mut request = vec![0; len as usize];
            stream.read_exact(&mut request).await.unwrap();
            stream.write_all(&len.to_be_bytes()).await.unwrap();
            stream.write_all(&request).await.unwrap();
        });
        let mut settings = transport(TransportMode::UdpThenTcp);
        settings.attempt_timeout = Duration::from_secs(20);
        settings.udp_timeout = Duration::from_millis(50);
        let kdcs = endpoints(&[addr.to_string()]);

        let reply = settings.send("R", &kdcs, b"hello").await.unwrap();

        assert_eq!(reply, b"hello");
        let mut buffer = [0u8; 16];
        assert_eq!(
            udp.recv(&mut buffer).unwrap(),
            5,
            "it was sent over UDP first"
        );
        assert_eq!(settings.udp_unanswered.load(Ordering::Relaxed), 1);
        server.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn krb_err_response_too_big_over_udp_sends_the_request_again_over_tcp() {
        let (udp, listener) = udp_and_tcp_on_one_port();
        udp.set_nonblocking(true).unwrap();
        let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
        let addr = udp.local_addr().unwrap();
        let too_big = rasn::der::encode(&KrbError {
            pvno: 5.into(),
            msg_type: 30.into(),
            ctime: None,
            cusec: None,
            stime: asn1::kerberos_time(std::time::SystemTime::now()),
            susec: 0.into(),
            error_code: error_code::RESPONSE_TOO_BIG,
            crealm: None,
            cname: None,
            realm: asn1::kstring("R").unwrap(),
            sname: asn1::principal_name(2, &["krbtgt", "R"]).unwrap(),
            e_text: None,
            e_data: None,
        })
        .unwrap();
        let server = tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            let (len, from) = udp.recv_from(&mut buffer).await.unwrap();
            assert_eq!(&buffer[..len], b"hello");
            udp.send_to(&too_big, from).await.unwrap();
            let (mut stream, _) = listener.accept().await.unwrap();
            let len = stream.read_u32().await.unwrap();
            let mut request = vec![0; len as usize];
            stream.read_exact(&mut request).await.unwrap();
            stream.write_all(&6u32.to_be_bytes()).await.unwrap();
            stream.write_all(b"by tcp").await.unwrap();
        });
        let settings = transport(TransportMode::UdpThenTcp);

        let reply = settings
            .send("R", &endpoints(&[addr.to_string()]), b"hello")
            .await
            .unwrap();

        assert_eq!(reply, b"by tcp");
        assert_eq!(settings.udp_unanswered.load(Ordering::Relaxed), 0);
        server.await.unwrap();
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
        let kdcs = endpoints(&[addr.to_string()]);
        assert_eq!(t.send("R", &kdcs, b"hello").await.unwrap(), b"hello");
        assert!(matches!(
            t.send("R", &kdcs, b"hello").await,
            Err(KcdError::KdcUnreachable { attempts: 1, .. })
        ));
        server.await.unwrap();
    }
}
