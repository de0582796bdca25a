//! A real Redis server (Debian's `redis-server`) on a free loopback port, with its files in a
//! directory of its own, for the tests of gateways sharing one compliance view.
//!
//! It runs in the foreground as our child (`--daemonize no`), listens on 127.0.0.1 only,
//! keeps its data in an append-only file synced on every write (so that a test can stop it and
//! start it again on the same port with its data), and is killed, its directory removed, when
//! the [`RedisServer`] is dropped.
//!
//! [`RedisServer::start_tls`] serves TLS only (`--tls-port`, no plain port) with a given
//! certificate, for clients of `rediss://` URLs.
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
        let mut server = RedisServer {
            program,
            port,
            dir,
            child: None,
            tls: tls.is_some(),
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
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--dir"])
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--protected-mode", "yes"])
            .args(["--logfile"])
            .arg(&log)
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
