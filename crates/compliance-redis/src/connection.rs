//! Connecting to Redis whatever its topology: one server, a master found through Sentinel, or a
//! Cluster. The rest of the crate sees one [`Connector`] and one [`Connection`].

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, IntoConnectionInfo, RedisFuture, RedisResult,
    TlsCertificates, TlsMode, Value,
};
use std::time::Duration;

/// How long opening one connection to one server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long finding the master through the sentinels (and connecting to it), or connecting to
/// a Cluster and reading its slots, may take: each asks several servers in turn.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// The port of a sentinel named without one.
const SENTINEL_PORT: u16 = 26379;
/// The port of a Redis server named without one.
const REDIS_PORT: u16 = 6379;

/// Opens connections to the Redis a URL names.
pub(crate) enum Connector {
    /// One server (`redis://`, `rediss://`, `redis+unix://`).
    Single(Client),
    /// The master of a Sentinel-monitored group (`redis+sentinel://`, `rediss+sentinel://`).
    /// Behind a lock: the client keeps its connections to the sentinels between lookups.
    Sentinel {
        /// The master's name.
        master: String,
        /// Asks the sentinels.
        client: tokio::sync::Mutex<SentinelClient>,
    },
    /// A Cluster (`redis+cluster://`, `rediss+cluster://`): its seed nodes and credentials.
    Cluster(ClusterClient),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the topology: the clients hold the credentials.
        match self {
            Connector::Single(_) => f.write_str("Connector::Single"),
            Connector::Sentinel { master, .. } => f
                .debug_struct("Connector::Sentinel")
                .field("master", master)
                .finish(),
            Connector::Cluster(_) => f.write_str("Connector::Cluster"),
        }
    }
}

/// Whether `url` asks for TLS (and so may take a trust store).
pub(crate) fn is_tls(url: &str) -> bool {
    ["rediss://", "rediss+sentinel://", "rediss+cluster://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

fn refused(what: &'static str, detail: impl Into<String>) -> redis::RedisError {
    redis::RedisError::from((ErrorKind::InvalidClientConfig, what, detail.into()))
}

/// A URL naming several servers: `scheme://[userinfo@]host[:port][,host[:port]…][/path]`.
struct Servers<'a> {
    tls: bool,
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
}

impl<'a> Servers<'a> {
    fn parse(rest: &'a str, tls: bool) -> RedisResult<Self> {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let hosts: Vec<&str> = hosts.split(',').collect();
        if hosts.iter().any(|host| host.is_empty()) {
            return Err(refused("an empty server address in the redis url", ""));
        }
        Ok(Servers {
            tls,
            userinfo,
            hosts,
            path,
        })
    }

    /// Each server as a one-server URL (with the credentials when `with_credentials`), parsed
    /// by the client, so that hosts, ports and percent-encoded credentials read as in
    /// `redis://` URLs.
    fn each(
        &self,
        default_port: u16,
        with_credentials: bool,
    ) -> RedisResult<Vec<redis::ConnectionInfo>> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let userinfo = match self.userinfo {
            Some(userinfo) if with_credentials => format!("{userinfo}@"),
            _ => String::new(),
        };
        self.hosts
            .iter()
            .map(|host| {
                // A port is what follows the last colon, outside an IPv6 address's brackets.
                let has_port = host
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| !port.contains(']'));
                let host = if has_port {
                    (*host).to_owned()
                } else {
                    format!("{host}:{default_port}")
                };
                format!("{scheme}://{userinfo}{host}/").into_connection_info()
            })
            .collect()
    }
}

impl Connector {
    /// The connector for `url`, verifying TLS servers against `root_cert` (PEM) when given.
    pub(crate) fn new(url: &str, root_cert: Option<Vec<u8>>) -> RedisResult<Self> {
        if let Some((rest, tls)) = strip_either(url, "redis+sentinel://", "rediss+sentinel://") {
            return Self::sentinel(Servers::parse(rest, tls)?, root_cert);
        }
        if let Some((rest, tls)) = strip_either(url, "redis+cluster://", "rediss+cluster://") {
            return Self::cluster(Servers::parse(rest, tls)?, root_cert);
        }
        let client = match root_cert {
            None => Client::open(url)?,
            Some(root_cert) => Client::build_with_tls(
                url,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?,
        };
        Ok(Connector::Single(client))
    }

    fn sentinel(servers: Servers<'_>, root_cert: Option<Vec<u8>>) -> RedisResult<Self> {
        let mut path = servers.path.trim_start_matches('/').split('/');
        let master = path.next().unwrap_or_default();
        if master.is_empty() {
            return Err(refused(
                "a redis+sentinel url names the master after the sentinels",
                "as in redis+sentinel://host:26379/mymaster",
            ));
        }
        let db = match path.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse::<i64>()
                .map_err(|_| refused("the database of a redis+sentinel url is a number", db))?,
        };
        if path.next().is_some_and(|rest| !rest.is_empty()) {
            return Err(refused(
                "a redis+sentinel url ends with the master and the database",
                servers.path,
            ));
        }
        // The credentials are the master's (and its replicas'): the sentinels are asked
        // without any, as they usually run.
        let credentials = servers.each(REDIS_PORT, true)?;
        let redis = credentials[0].redis_settings();
        let sentinels = servers.each(SENTINEL_PORT, false)?;
        let mut builder = SentinelClientBuilder::new(
            sentinels.iter().map(|info| info.addr().clone()),
            master,
            SentinelServerType::Master,
        )?
        .set_client_to_redis_db(db);
        if let Some(username) = redis.username() {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = redis.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if servers.tls {
            // The sentinels name the master by its IP address: its certificate must hold it.
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(root_cert) = root_cert {
                let certificates = TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        Ok(Connector::Sentinel {
            master: master.to_owned(),
            client: tokio::sync::Mutex::new(builder.build()?),
        })
    }

    fn cluster(servers: Servers<'_>, root_cert: Option<Vec<u8>>) -> RedisResult<Self> {
        if !servers.path.trim_start_matches('/').is_empty() {
            // A Cluster has only database 0.
            return Err(refused(
                "a redis+cluster url names only its nodes",
                servers.path,
            ));
        }
        let mut builder = ClusterClient::builder(servers.each(REDIS_PORT, true)?);
        if let Some(root_cert) = root_cert {
            builder = builder.certs(TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            });
        }
        Ok(Connector::Cluster(builder.build()?))
    }

    /// A connection whose commands fail after `response_timeout` (so a Redis that stops
    /// answering is noticed). Through Sentinel, the sentinels are asked for the master each
    /// time: after a failover, the next connection goes to the promoted replica.
    pub(crate) async fn connect(&self, response_timeout: Duration) -> RedisResult<Connection> {
        match self {
            Connector::Single(client) => {
                let config = single_config(response_timeout);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Single)
            }
            Connector::Sentinel { client, .. } => {
                let config = single_config(response_timeout);
                let lookup = async {
                    client
                        .lock()
                        .await
                        .get_async_connection_with_config(&config)
                        .await
                };
                // The client bounds no step of the lookup itself.
                tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
                    .await
                    .map_err(|_| timed_out())?
                    .map(Connection::Single)
            }
            Connector::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout);
                tokio::time::timeout(
                    LOOKUP_TIMEOUT,
                    client.get_async_connection_with_config(config),
                )
                .await
                .map_err(|_| timed_out())?
                .map(|conn| Connection::Cluster(Box::new(conn)))
            }
        }
    }
}

fn strip_either<'a>(url: &'a str, plain: &str, tls: &str) -> Option<(&'a str, bool)> {
    url.strip_prefix(plain)
        .map(|rest| (rest, false))
        .or_else(|| url.strip_prefix(tls).map(|rest| (rest, true)))
}

fn single_config(response_timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
}

fn timed_out() -> redis::RedisError {
    std::io::Error::from(std::io::ErrorKind::TimedOut).into()
}

/// A connection to one server, or to a Cluster (routing each command to the node of its
/// key's slot: all the view's keys share one hash tag, so one node).
#[derive(Clone)]
pub(crate) enum Connection {
    /// To one server (also the master found through Sentinel).
    Single(MultiplexedConnection),
    /// To a Cluster; boxed, being much larger.
    Cluster(Box<ClusterConnection>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_the_database() {
        for url in [
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3/mymaster",
            "redis+sentinel://seg:s3cret@10.0.0.1:26379/mymaster/2",
            "redis+sentinel://:s3cret@[::1]:26379,sentinel.corp.example/mymaster/",
            "rediss+sentinel://seg:s3cret@sentinel.corp.example:26380/mymaster",
        ] {
            match Connector::new(url, None) {
                Ok(Connector::Sentinel { master, .. }) => assert_eq!(master, "mymaster", "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        for url in [
            "redis+sentinel://10.0.0.1:26379",
            "redis+sentinel://10.0.0.1:26379/",
            "redis+sentinel://10.0.0.1:26379/mymaster/zero",
            "redis+sentinel://10.0.0.1:26379/mymaster/0/more",
            "redis+sentinel://10.0.0.1:26379,,10.0.0.2/mymaster",
            "redis+sentinel://10.0.0.1:port/mymaster",
        ] {
            assert!(Connector::new(url, None).is_err(), "{url}");
        }
    }

    #[test]
    fn cluster_urls_name_only_the_nodes() {
        for url in [
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000",
            "redis+cluster://seg:s3cret@10.0.0.1:7000/",
            "rediss+cluster://seg:s3cret@redis.corp.example",
        ] {
            assert!(
                matches!(Connector::new(url, None), Ok(Connector::Cluster(_))),
                "{url}"
            );
        }
        for url in [
            "redis+cluster://10.0.0.1:7000/2",
            "redis+cluster://",
            "redis+cluster://10.0.0.1:7000,",
        ] {
            assert!(Connector::new(url, None).is_err(), "{url}");
        }
    }

    #[test]
    fn only_tls_urls_take_a_trust_store() {
        assert!(is_tls("rediss://h/"));
        assert!(is_tls("rediss+sentinel://h/m"));
        assert!(is_tls("rediss+cluster://h"));
        assert!(!is_tls("redis+sentinel://h/m"));
        assert!(!is_tls("redis+cluster://h"));
        assert!(!is_tls("redis+unix:///run/redis.sock"));
    }
}
