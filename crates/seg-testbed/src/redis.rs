//! A real Redis server (Debian's `redis-server`) on a free loopback port, with its files in a
//! directory of its own, for the tests of gateways sharing one compliance view.
//!
//! It runs in the foreground as our child (`--daemonize no`), listens on 127.0.0.1 only,
//! keeps its data in an append-only file synced on every write (so that a test can stop it and
//! start it again on the same port with its data), and is killed, its directory removed, when
//! the [`RedisServer`] is dropped.
//!
//! [`RedisServer::start_tls`] serves TLS only (`--tls-port`, no plain port) with a given
//! certificate, for clients of `rediss://` URLs. [`RedisSentinel`] is a master, its replica
//! and three sentinels (`redis+sentinel://`), [`RedisCluster`] a Cluster of three masters
//! (`redis+cluster://`); their processes too end with them.
//!
//! ```no_run
//! use seg_testbed::redis::RedisServer;
//!
//! # fn main() -> seg_testbed::Result<()> {
//! let mut redis = RedisServer::start()?;
//! assert!(redis.url().starts_with("redis://127.0.0.1:"));
//! redis.stop(); // clients see it down…
//! redis.restart()?; // …and back, on the same port, with its data
//! # Ok(()) }
//! ```

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long `redis-server` may take to answer `PING` after it is started.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A running `redis-server`; see the [module docs](self).
#[derive(Debug)]
pub struct RedisServer {
    program: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Serving TLS only, with the certificate and key in `dir`.
    tls: bool,
    /// A sentinel (`redis-server sentinel.conf --sentinel`, its configuration in `dir`), not a
    /// data server.
    sentinel: bool,
    /// Further options, as `--name value` pairs (replication, cluster mode).
    options: Vec<String>,
}

/// Where `redis-server` is: `PATH`, then Debian's `/usr/bin`.
fn find_redis() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .ok_or(Error::RedisMissing)
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1 with a new temporary directory and
    /// waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::RedisMissing`] if `redis-server` is not installed; [`Error::RedisStart`] if it
    /// does not come up, with the end of its log.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Starts `redis-server` serving TLS only on a free port of 127.0.0.1, with the server
    /// certificate `cert_pem` (for `localhost` and `127.0.0.1`) and its key `key_pem`, not
    /// asking clients for certificates, and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::start`]; [`Error::RedisStart`] also when this `redis-server` was built
    /// without TLS.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Result<Self> {
        Self::start_as(tls, None, Vec::new())
    }

    /// Starts a server with further `options`; a sentinel when `sentinel_conf` is given (its
    /// configuration file's text).
    fn start_as(
        tls: Option<(&str, &str)>,
        sentinel_conf: Option<&str>,
        options: Vec<String>,
    ) -> Result<Self> {
        retry_if_port_taken(|| Self::start_once(tls, sentinel_conf, options.clone()))
    }

    fn start_once(
        tls: Option<(&str, &str)>,
        sentinel_conf: Option<&str>,
        options: Vec<String>,
    ) -> Result<Self> {
        let program = find_redis()?;
        let port = crate::harness::reserve_port()?.port();
        let dir = std::env::temp_dir().join(format!(
            "seg-redis-{}-{port}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|source| Error::File {
            path: dir.clone(),
            source,
        })?;
        if let Some((cert, key)) = tls {
            for (name, pem) in [("server.pem", cert), ("server.key", key)] {
                let path = dir.join(name);
                std::fs::write(&path, pem).map_err(|source| Error::File { path, source })?;
            }
        }
        if let Some(conf) = sentinel_conf {
            // A sentinel rewrites its configuration as it learns: a file of its own.
            let path = dir.join("sentinel.conf");
            std::fs::write(&path, conf).map_err(|source| Error::File { path, source })?;
        }
        let mut server = RedisServer {
            program,
            port,
            dir,
            child: None,
            tls: tls.is_some(),
            sentinel: sentinel_conf.is_some(),
            options,
        };
        server.restart()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT/`, or `rediss://localhost:PORT/` when serving TLS.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}/", self.port)
        } else {
            format!("redis://127.0.0.1:{}/", self.port)
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The directory of its data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Whether the process is running (it is not between [`Self::stop`] and
    /// [`Self::restart`]).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills it (clients see their connections drop and new ones refused) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data (a no-op if it is running) and
    /// waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::RedisStart`] if it does not come up in time (another process may have taken
    /// the port meanwhile), with the end of its log.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = self.dir.join("redis.log");
        let mut command = Command::new(&self.program);
        if self.sentinel {
            command
                .arg(self.dir.join("sentinel.conf"))
                .arg("--sentinel");
        }
        if self.tls {
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        if !self.sentinel {
            command
                .args(["--save", ""])
                .args(["--appendonly", "yes"])
                .args(["--appendfsync", "always"]);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--dir"])
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .args(["--logfile"])
            .arg(&log)
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::RedisStart(format!("cannot run redis-server: {source}")))?;
        self.child = Some(child);
        let give_up = Instant::now() + START_DEADLINE;
        loop {
            // Over TLS, accepting a connection is enough: it listens once it is ready.
            let up = if self.tls {
                TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            } else {
                ping(self.addr())
            };
            if up {
                return Ok(());
            }
            if !self.is_running() || Instant::now() >= give_up {
                self.stop();
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(Error::RedisStart(format!(
                    "redis-server on port {} did not answer PING; the end of its log:\n{}",
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether a Redis server at `addr` answers `PING` with `PONG` (at once).
pub fn ping(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    attempt().unwrap_or(false)
}

/// How long a Sentinel group or a Cluster may take to form, and a failover to complete.
const FORM_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `redis-cli` (beside `redis-server`) against the server at `port` of 127.0.0.1: its
/// output (raw, one value a line), or `None` when it failed (the server is down).
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let program = find_redis().ok()?.with_file_name("redis-cli");
    let output = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success() && !text.starts_with("ERR") && !text.starts_with("Could not"))
        .then_some(text)
}

/// Polls `condition` every 50 ms until it holds, or fails after [`FORM_DEADLINE`] saying
/// `what` did not happen.
fn poll(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let give_up = Instant::now() + FORM_DEADLINE;
    while !condition() {
        if Instant::now() >= give_up {
            return Err(Error::RedisStart(format!(
                "{what}: not after {FORM_DEADLINE:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A field of `INFO`'s or `CLUSTER INFO`'s `name:value` lines.
fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
        .map(str::to_owned)
}

/// A master and its replica watched by three sentinels (quorum two), all on loopback: the
/// set-up behind a `redis+sentinel://` URL. Sentinel declares a master down after 500 ms
/// without an answer, so that a test can kill it and see the replica promoted within seconds.
///
/// ```no_run
/// use seg_testbed::redis::RedisSentinel;
///
/// # fn main() -> seg_testbed::Result<()> {
/// let mut group = RedisSentinel::start()?;
/// assert!(group.url().starts_with("redis+sentinel://127.0.0.1:"));
/// let before = group.master_addr();
/// let promoted = group.kill_master()?; // the replica takes over
/// assert_ne!(Some(promoted), before);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    /// The first master, then the replica.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinel {
    /// The name the sentinels know the master by.
    pub const MASTER_NAME: &'static str = "seg";

    /// Starts a master, its replica and three sentinels on free ports of 127.0.0.1, and waits
    /// until the replica is in sync and every sentinel knows the replica and the two other
    /// sentinels (so that a failover can happen at once).
    ///
    /// # Errors
    ///
    /// As [`RedisServer::start`]; [`Error::RedisStart`] if the group does not form in time.
    pub fn start() -> Result<Self> {
        let master = RedisServer::start()?;
        let replica = RedisServer::start_as(
            None,
            None,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        )?;
        poll("the replica to sync with its master", || {
            cli(replica.port, &["INFO", "replication"])
                .and_then(|info| info_field(&info, "master_link_status"))
                .is_some_and(|status| status == "up")
        })?;
        let name = Self::MASTER_NAME;
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {name} 500\n\
             sentinel failover-timeout {name} 3000\n\
             sentinel parallel-syncs {name} 1\n",
            port = master.port
        );
        let sentinels = (0..3)
            .map(|_| RedisServer::start_as(None, Some(&conf), Vec::new()))
            .collect::<Result<Vec<_>>>()?;
        for sentinel in &sentinels {
            poll("every sentinel to know the replica and the others", || {
                let replicas = cli(sentinel.port, &["SENTINEL", "REPLICAS", name]);
                let master = cli(sentinel.port, &["SENTINEL", "MASTER", name]);
                let others = master.as_deref().and_then(|master| {
                    let mut lines = master.lines();
                    lines.find(|line| *line == "num-other-sentinels")?;
                    lines.next()?.parse::<usize>().ok()
                });
                replicas.is_some_and(|replicas| replicas.contains(&replica.port.to_string()))
                    && others == Some(2)
            })?;
        }
        Ok(RedisSentinel {
            servers: vec![master, replica],
            sentinels,
        })
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/seg`.
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| sentinel.addr().to_string())
            .collect();
        format!(
            "redis+sentinel://{}/{}",
            sentinels.join(","),
            Self::MASTER_NAME
        )
    }

    /// The master's address as the first sentinel that answers tells it.
    pub fn master_addr(&self) -> Option<SocketAddr> {
        self.sentinels.iter().find_map(|sentinel| {
            let reply = cli(
                sentinel.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER_NAME],
            )?;
            let mut lines = reply.lines();
            let ip = lines.next()?.parse().ok()?;
            let port = lines.next()?.trim().parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
    }

    /// The data servers: the first master, then the replica (whatever their roles now).
    pub fn servers(&mut self) -> &mut [RedisServer] {
        &mut self.servers
    }

    /// Kills the master once its replica holds every write it acknowledged (`WAIT`), and waits
    /// until the sentinels have promoted the replica and it serves as master: its address.
    ///
    /// # Errors
    ///
    /// [`Error::RedisStart`] if the replica does not catch up or is not promoted in time.
    pub fn kill_master(&mut self) -> Result<SocketAddr> {
        let master = self
            .master_addr()
            .ok_or_else(|| Error::RedisStart("no sentinel names a master".into()))?;
        let (dead, survivor): (Vec<_>, Vec<_>) = self
            .servers
            .iter_mut()
            .partition(|server| server.addr() == master);
        let (Some(dead), Some(survivor)) = (dead.into_iter().next(), survivor.into_iter().next())
        else {
            return Err(Error::RedisStart(format!(
                "the master {master} is none of the group's servers"
            )));
        };
        let acknowledged = cli(dead.port, &["WAIT", "1", "5000"])
            .and_then(|reply| reply.trim().parse::<u32>().ok());
        if acknowledged != Some(1) {
            return Err(Error::RedisStart(
                "the replica did not acknowledge the master's writes".into(),
            ));
        }
        dead.stop();
        let promoted = survivor.addr();
        let port = survivor.port;
        poll("the sentinels to promote the replica", || {
            self.master_addr() == Some(promoted)
                && cli(port, &["ROLE"]).is_some_and(|role| role.starts_with("master"))
        })?;
        Ok(promoted)
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback, every slot assigned: the
/// set-up behind a `redis+cluster://` URL.
///
/// ```no_run
/// use seg_testbed::redis::RedisCluster;
///
/// # fn main() -> seg_testbed::Result<()> {
/// let cluster = RedisCluster::start()?;
/// assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// Runs `start` again (at most three times in all) when the server could not bind its port: a
/// port found free is only reserved until the server binds it, and another process (a test
/// running beside, an outgoing connection's ephemeral port) may take it in between.
fn retry_if_port_taken<T>(mut start: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempts = 1;
    loop {
        match start() {
            Err(Error::RedisStart(log))
                if attempts < 3 && log.contains("Address already in use") =>
            {
                attempts += 1;
            }
            result => return result,
        }
    }
}

impl RedisCluster {
    /// Starts three cluster-enabled servers on free ports of 127.0.0.1 (each with its bus on
    /// another free port), joins them with `redis-cli --cluster create`, and waits until each
    /// says `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::start`]; [`Error::RedisStart`] if the cluster does not form in time.
    pub fn start() -> Result<Self> {
        let nodes = (0..3)
            .map(|_| {
                // The bus's port is named: the default (the port + 10,000) may be taken, or
                // past 65,535. A new one for each attempt: it may be taken by the time the
                // server binds it.
                retry_if_port_taken(|| {
                    let bus = crate::harness::reserve_port()?.port();
                    RedisServer::start_once(
                        None,
                        None,
                        [
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--cluster-node-timeout",
                            "2000",
                        ]
                        .into_iter()
                        .map(str::to_owned)
                        .chain(["--cluster-port".to_owned(), bus.to_string()])
                        .collect(),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let addrs: Vec<String> = nodes.iter().map(|node| node.addr().to_string()).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        if cli(nodes[0].port, &create).is_none() {
            return Err(Error::RedisStart(format!(
                "redis-cli --cluster create {} failed",
                addrs.join(" ")
            )));
        }
        for node in &nodes {
            poll("the cluster to be ok on every node", || {
                cli(node.port, &["CLUSTER", "INFO"])
                    .and_then(|info| info_field(&info, "cluster_state"))
                    .is_some_and(|state| state == "ok")
            })?;
        }
        Ok(RedisCluster { nodes })
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| node.addr().to_string())
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Its nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_answers_then_stops_then_answers_again_on_the_same_port() {
        let Ok(mut redis) = RedisServer::start() else {
            eprintln!("redis-server is not installed: skipped");
            return;
        };
        assert!(ping(redis.addr()));
        redis.stop();
        assert!(!ping(redis.addr()), "stopped");
        redis.restart().unwrap();
        assert!(ping(redis.addr()), "back on the same port");
        let dir = redis.dir().to_owned();
        drop(redis);
        assert!(!dir.exists(), "its directory is removed");
    }
}
