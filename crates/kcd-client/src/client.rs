//! [`KcdClient`]: logs the gateway in, runs S4U2Self and S4U2Proxy with caches and single
//! flight, and turns the ticket into an SPNEGO token; also a `tower::Service`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use base64::Engine as _;

use crate::cache::TicketCache;
use crate::clock::Clock;
use crate::config::{Credentials, KcdConfig};
use crate::gss::{self, ChannelBindings};
use crate::kdc::Credential;
use crate::keytab::Keytab;
use crate::login::{self, Secret};
use crate::mutual::TokenContext;
use crate::name::{ServiceName, UserName};
use crate::transport::{KdcEndpoint, KdcLink, Transport};
use crate::{KcdError, asn1, s4u, spnego};

/// A Kerberos constrained-delegation client for one gateway principal. Cheap to clone: clones
/// share caches and counters.
#[derive(Clone)]
pub struct KcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    service: ServiceName,
    secret: Secret,
    link: KdcLink,
    clock: Clock,
    tgt: TicketCache<()>,
    evidence: TicketCache<UserName>,
    tickets: TicketCache<(UserName, String)>,
    logins: AtomicU64,
    s4u2self: AtomicU64,
    s4u2proxy: AtomicU64,
}

impl std::fmt::Debug for KcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KcdClient")
            .field("service", &self.inner.service.to_string())
            .field("exchanges", &self.exchanges())
            .finish_non_exhaustive()
    }
}

/// How many KDC exchanges a client made, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KdcExchanges {
    /// Logins of the gateway (AS exchanges; each may take two requests, the first learning
    /// the pre-authentication salt).
    pub logins: u64,
    /// S4U2Self exchanges.
    pub s4u2self: u64,
    /// S4U2Proxy exchanges.
    pub s4u2proxy: u64,
    /// Requests sent to KDCs, of any kind, retries included.
    pub requests: u64,
    /// UDP sends that went unanswered within the UDP timeout (a datagram lost, or a KDC too
    /// slow) and were sent again over TCP.
    pub udp_unanswered: u64,
}

/// A service ticket obtained for a user, as the gateway holds it.
#[derive(Clone)]
pub struct ServiceTicket {
    credential: Arc<Credential>,
}

impl std::fmt::Debug for ServiceTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.credential.fmt(f)
    }
}

impl ServiceTicket {
    /// The user the ticket names (`alice@TEST.LOCAL`).
    pub fn client(&self) -> String {
        format!(
            "{}@{}",
            asn1::name_text(&self.credential.cname),
            asn1::text(&self.credential.crealm)
        )
    }

    /// The service the ticket is for (`HTTP/exchange.test.local@TEST.LOCAL`).
    pub fn service(&self) -> String {
        format!(
            "{}@{}",
            asn1::name_text(&self.credential.sname),
            asn1::text(&self.credential.srealm)
        )
    }

    /// When the ticket expires.
    pub fn end_time(&self) -> SystemTime {
        self.credential.end_time
    }

    /// Whether the ticket is forwardable.
    pub fn is_forwardable(&self) -> bool {
        asn1::has_flag(&self.credential.flags.0, asn1::ticket_flag::FORWARDABLE)
    }

    /// The ticket as DER (RFC 4120 `Ticket`), opaque to the gateway: only the service can
    /// decrypt it.
    pub fn ticket_der(&self) -> Vec<u8> {
        self.credential.ticket_der.clone()
    }
}

/// A token for `Authorization: Negotiate`: SPNEGO NegTokenInit carrying a Kerberos AP-REQ,
/// and, for a token the client made, what checks the server's mutual-authentication answer.
/// Tokens compare by their bytes.
#[derive(Debug, Clone)]
pub struct NegotiateToken {
    bytes: Vec<u8>,
    context: Option<TokenContext>,
}

impl PartialEq for NegotiateToken {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for NegotiateToken {}

impl NegotiateToken {
    /// A token from its bytes, as received or made elsewhere: for stand-ins of [`KcdClient`]
    /// in tests of the layers that use it. The bytes are not checked.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            context: None,
        }
    }

    /// What checks the server's answer to this token (see [`crate::verify_mutual`]); `None`
    /// for a token made by [`Self::from_bytes`].
    pub fn context(&self) -> Option<&TokenContext> {
        self.context.as_ref()
    }

    /// Checks the server's answer to this token: `reply` is the decoded token of its
    /// `WWW-Authenticate: Negotiate <base64>`. See [`crate::verify_mutual`].
    ///
    /// # Errors
    ///
    /// [`KcdError::MutualAuthentication`] if the answer proves nothing, or if this token has
    /// no context (made by [`Self::from_bytes`]).
    pub fn verify_mutual(&self, reply: &[u8]) -> Result<(), KcdError> {
        let context = self
            .context
            .as_ref()
            .ok_or_else(|| KcdError::MutualAuthentication {
                reason: "the token was not made by this client, so there is nothing to check the answer against".into(),
            })?;
        crate::verify_mutual(context, reply)
    }

    /// The token's bytes (DER).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The token in standard base64.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// The `Authorization` header value: `Negotiate <base64>`, written in one buffer (one is
    /// made for every request the gateway authenticates, ≈ 1.3 KB).
    pub fn to_header_value(&self) -> String {
        const SCHEME: &str = "Negotiate ";
        let mut value = String::with_capacity(SCHEME.len() + self.bytes.len().div_ceil(3) * 4);
        value.push_str(SCHEME);
        base64_simd::STANDARD.encode_append(&self.bytes, &mut value);
        value
    }
}

/// A request for a [`NegotiateToken`], for the [`tower::Service`] impl of [`KcdClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcdRequest {
    /// The user to act for.
    pub user: UserName,
    /// The target's SPN (`HTTP/exchange.corp.example`).
    pub target_spn: Arc<str>,
    /// The `tls-server-end-point` certificate hash of the connection to the target (see
    /// [`crate::tls_server_end_point_hash`]), if the token must be bound to it.
    pub channel_binding: Option<Vec<u8>>,
}

impl KcdRequest {
    /// A request without channel binding.
    pub fn new(user: UserName, target_spn: impl Into<Arc<str>>) -> Self {
        Self {
            user,
            target_spn: target_spn.into(),
            channel_binding: None,
        }
    }

    /// The request bound to the TLS connection whose server certificate hashes to
    /// `certificate_hash`.
    pub fn with_channel_binding(mut self, certificate_hash: impl Into<Vec<u8>>) -> Self {
        self.channel_binding = Some(certificate_hash.into());
        self
    }
}

impl KcdClient {
    /// A client for `config`. Reads the keytab, if any; talks to no KDC yet.
    ///
    /// # Errors
    ///
    /// [`KcdError::Config`] if no realm is configured or the service principal's realm has no
    /// KDC; [`KcdError::InvalidName`] for an unusable service principal; [`KcdError::Keytab`]
    /// if the keytab cannot be read.
    pub fn new(config: KcdConfig) -> Result<Self, KcdError> {
        let default_realm = config
            .realms
            .first()
            .map(|r| r.realm.clone())
            .ok_or_else(|| KcdError::Config("no realm is configured".into()))?;
        let service = ServiceName::parse(&config.service_principal, &default_realm)?;
        if !config
            .realms
            .iter()
            .any(|r| r.realm.eq_ignore_ascii_case(&service.realm) && !r.kdcs.is_empty())
        {
            return Err(KcdError::Config(format!(
                "no KDC is configured for the service's realm {}",
                service.realm
            )));
        }
        let secret = match config.credentials {
            Credentials::KeytabFile(path) => Secret::Keytab(Keytab::read(&path)?),
            Credentials::KeytabBytes(bytes) => Secret::Keytab(Keytab::parse(&bytes)?),
            Credentials::Password(password) => Secret::Password(password),
        };
        let link = KdcLink {
            transport: Transport {
                mode: config.transport,
                attempt_timeout: config.attempt_timeout,
                udp_timeout: config.udp_timeout,
                max_reply: config.max_reply_size,
                udp_preference_limit: config.udp_preference_limit,
                udp_unanswered: Default::default(),
            },
            realms: config
                .realms
                .into_iter()
                .map(|r| {
                    let kdcs = r
                        .kdcs
                        .into_iter()
                        .map(|kdc| KdcEndpoint::new(kdc, config.max_in_flight_per_kdc))
                        .collect();
                    (r.realm, kdcs)
                })
                .collect(),
            requests: AtomicU64::new(0),
        };
        let refresh = config.refresh_before_expiry;
        Ok(Self {
            inner: Arc::new(Inner {
                service,
                secret,
                link,
                clock: Clock::with_offset(config.clock_offset_secs)
                    .correcting(config.correct_clock_skew),
                tgt: TicketCache::new(refresh, 1),
                evidence: TicketCache::new(refresh, config.max_cached_tickets),
                tickets: TicketCache::new(refresh, config.max_cached_tickets),
                logins: AtomicU64::new(0),
                s4u2self: AtomicU64::new(0),
                s4u2proxy: AtomicU64::new(0),
            }),
        })
    }

    /// The gateway's principal, with its realm.
    pub fn service_principal(&self) -> String {
        self.inner.service.to_string()
    }

    /// Reads a user name with the service's realm as default (see [`UserName::parse`]).
    ///
    /// # Errors
    ///
    /// As [`UserName::parse`].
    pub fn user_name(&self, text: &str) -> Result<UserName, KcdError> {
        UserName::parse(text, &self.inner.service.realm)
    }

    /// A `Negotiate` token for `user` to `target_spn` (`HTTP/exchange.corp.example`, realm
    /// optional), bound to the TLS connection whose `tls-server-end-point` certificate hash
    /// is `channel_binding` (RFC 5929; see [`crate::tls_server_end_point_hash`]) if given.
    /// Each call makes a fresh authenticator; the ticket behind it comes from the cache
    /// when it is fresh.
    ///
    /// # Errors
    ///
    /// See [`KcdError`]: unknown user, delegation not allowed, unreachable KDC, clock skew,
    /// bad gateway credentials, malformed replies.
    pub async fn negotiate_token(
        &self,
        user: &UserName,
        target_spn: &str,
        channel_binding: Option<&[u8]>,
    ) -> Result<NegotiateToken, KcdError> {
        let ticket = self.service_ticket(user, target_spn).await?;
        let credential = &ticket.credential;
        let bindings = channel_binding.map(ChannelBindings::tls_server_end_point);
        // GSS sequence numbers stay below 2^30 as MIT's do, leaving room to count up.
        let seq_number = rand::random::<u32>() & 0x3fff_ffff;
        let (krb5_token, context) = gss::krb5_initial_token(
            credential,
            bindings.as_ref(),
            seq_number,
            self.inner.clock.now(),
        )?;
        Ok(NegotiateToken {
            bytes: spnego::neg_token_init(&krb5_token),
            context: Some(context),
        })
    }

    /// The service ticket for `user` to `target_spn`, from the cache or by S4U2Self and
    /// S4U2Proxy.
    ///
    /// # Errors
    ///
    /// As [`Self::negotiate_token`].
    pub async fn service_ticket(
        &self,
        user: &UserName,
        target_spn: &str,
    ) -> Result<ServiceTicket, KcdError> {
        let inner = &self.inner;
        let now = || inner.clock.now();
        // The target is read (and refused if need be) only when a ticket is fetched for it, so
        // that a cached ticket costs no parsing.
        let key = (
            user.clone(),
            ServiceName::canonical(target_spn, &inner.service.realm),
        );
        // The fetch is boxed: its state (the KDC exchanges, ≈ 3.5 KB) would otherwise be part of
        // every token's future, allocated and copied for each request that the cache answers.
        let credential = inner
            .tickets
            .get_or_fetch(&key, now, || {
                Box::pin(async {
                    let target = self.target(target_spn)?;
                    match self.delegate(user, &target).await {
                        // The TGT expired earlier than it said (the KDC's clock or policy): log
                        // in again once.
                        Err(KcdError::KdcError { code, .. })
                            if code == asn1::error_code::TKT_EXPIRED =>
                        {
                            inner.tgt.clear();
                            inner.evidence.invalidate(user);
                            self.delegate(user, &target).await
                        }
                        other => other,
                    }
                })
            })
            .await?;
        Ok(ServiceTicket { credential })
    }

    /// Forgets the cached ticket for `user` to `target_spn` (and the user's S4U2Self
    /// ticket), so that the next request asks the KDC again: what to do when the target
    /// answers 401 to a token.
    pub fn invalidate(&self, user: &UserName, target_spn: &str) {
        let target = ServiceName::canonical(target_spn, &self.inner.service.realm);
        self.inner.tickets.invalidate(&(user.clone(), target));
        self.inner.evidence.invalidate(user);
    }

    /// Forgets every cached ticket, the gateway's TGT included.
    pub fn clear_cache(&self) {
        self.inner.tickets.clear();
        self.inner.evidence.clear();
        self.inner.tgt.clear();
    }

    /// How many KDC exchanges this client (and its clones) made.
    pub fn exchanges(&self) -> KdcExchanges {
        let inner = &self.inner;
        KdcExchanges {
            logins: inner.logins.load(Ordering::Relaxed),
            s4u2self: inner.s4u2self.load(Ordering::Relaxed),
            s4u2proxy: inner.s4u2proxy.load(Ordering::Relaxed),
            requests: inner.link.requests.load(Ordering::Relaxed),
            udp_unanswered: inner.link.udp_unanswered(),
        }
    }

    /// S4U2Self (from its cache) then S4U2Proxy.
    async fn delegate(
        &self,
        user: &UserName,
        target: &ServiceName,
    ) -> Result<Credential, KcdError> {
        let inner = &self.inner;
        let now = || inner.clock.now();
        let tgt = self.tgt().await?;
        let evidence = inner
            .evidence
            .get_or_fetch(user, now, || async {
                inner.s4u2self.fetch_add(1, Ordering::Relaxed);
                s4u::s4u2self(&inner.link, &inner.clock, &tgt, user).await
            })
            .await?;
        inner.s4u2proxy.fetch_add(1, Ordering::Relaxed);
        s4u::s4u2proxy(&inner.link, &inner.clock, &tgt, &evidence, target).await
    }

    fn target(&self, target_spn: &str) -> Result<ServiceName, KcdError> {
        let target = ServiceName::parse(target_spn, &self.inner.service.realm)?;
        if target.realm != self.inner.service.realm {
            return Err(KcdError::InvalidName {
                name: target_spn.to_string(),
                reason: format!(
                    "the target is in another realm than the gateway ({}); cross-realm delegation is not supported",
                    self.inner.service.realm
                ),
            });
        }
        Ok(target)
    }

    async fn tgt(&self) -> Result<Arc<Credential>, KcdError> {
        let inner = &self.inner;
        inner
            .tgt
            .get_or_fetch(
                &(),
                || inner.clock.now(),
                || async {
                    inner.logins.fetch_add(1, Ordering::Relaxed);
                    login::login(&inner.link, &inner.clock, &inner.service, &inner.secret).await
                },
            )
            .await
    }
}

impl tower::Service<KcdRequest> for KcdClient {
    type Response = NegotiateToken;
    type Error = KcdError;
    type Future = Pin<Box<dyn Future<Output = Result<NegotiateToken, KcdError>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), KcdError>> {
        // Always ready: concurrency limits are for the caller's layers to add.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: KcdRequest) -> Self::Future {
        let client = self.clone();
        // Boxed: the future is an async fn's. It is made for every request, so a ticket fetch's
        // state is boxed apart (in `service_ticket`), and a cached ticket's future stays small.
        Box::pin(async move {
            client
                .negotiate_token(
                    &request.user,
                    &request.target_spn,
                    request.channel_binding.as_deref(),
                )
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_value_is_the_scheme_and_the_tokens_base64() {
        // Around the SIMD encoder's block sizes, and base64's engine as the reference.
        for len in [
            0, 1, 2, 3, 4, 11, 12, 13, 23, 24, 25, 47, 48, 49, 95, 96, 97, 922, 1300,
        ] {
            let token = NegotiateToken {
                bytes: (0..len).map(|i| (i * 7) as u8).collect(),
                context: None,
            };
            let value = token.to_header_value();
            assert_eq!(value, format!("Negotiate {}", token.to_base64()));
            // Written into the buffer made for it, never grown.
            assert_eq!(value.capacity(), value.len());
        }
    }

    /// Every request allocates and moves its token's future, so it stays small: the KDC
    /// exchanges of a fetch (≈ 3.5 KB of state) live in a box of their own, made on a miss.
    #[test]
    fn a_tokens_future_does_not_carry_the_kdc_exchanges() {
        fn size_of_future<F: Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let config = KcdConfig::new(
            vec![crate::RealmConfig::new("TEST.LOCAL", ["127.0.0.1:1"])],
            "HTTP/gw.test.local",
            Credentials::Password("x".into()),
        );
        let client = KcdClient::new(config).unwrap();
        let user = UserName::enterprise("alice@corp.example").unwrap();
        let token = client.negotiate_token(&user, "HTTP/exchange.test.local", None);
        assert!(
            size_of_future(&token) < 1024,
            "{} bytes",
            size_of_future(&token)
        );
    }
}
