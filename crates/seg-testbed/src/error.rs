//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the testbed: generating certificates or tokens, reading the
/// files the command line points at, reaching a callback, or waiting for a condition in a test.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate or key could not be generated or parsed.
    #[error("could not generate or parse a test certificate")]
    Certificate(#[source] rcgen::Error),
    /// A certificate or key was rejected by rustls when building a TLS configuration.
    #[error("could not build the TLS configuration")]
    Tls(#[source] rustls::Error),
    /// A PEM file held no usable certificate or private key.
    #[error("{0}")]
    InvalidPem(String),
    /// A file could not be read or written.
    #[error("could not read or write {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The users file is not the expected JSON array of users.
    #[error("the users file is not a JSON array of {{upn, password, mailbox}}")]
    UsersFile(#[source] serde_json::Error),
    /// The devices file is not the expected JSON array of devices.
    #[error("the devices file is not a JSON array of devices")]
    DevicesFile(#[source] serde_json::Error),
    /// A device is inconsistent: a bad field value, or an id already taken.
    #[error("invalid device: {0}")]
    InvalidDevice(String),
    /// A change named a device the UEM stand-in does not hold.
    #[error("no device {0} on this server")]
    UnknownDevice(String),
    /// A token could not be signed.
    #[error("could not sign the token")]
    TokenSigning(#[source] jsonwebtoken::errors::Error),
    /// A token was refused: bad signature, wrong audience, expired, or no user claim.
    #[error("the token was refused: {0}")]
    TokenRejected(String),
    /// A delivery named a mailbox the server does not hold.
    #[error("no mailbox {0} on this server")]
    UnknownMailbox(String),
    /// A socket could not be bound or connected.
    #[error("could not open a connection to {addr}")]
    Connect {
        /// What was being bound or connected to.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP exchange failed (handshake, request or body).
    #[error("the HTTP exchange failed")]
    Http(#[source] hyper::Error),
    /// A URL was not an absolute `http` or `https` URL.
    #[error("not an absolute http or https URL: {0}")]
    InvalidUrl(String),
    /// A condition awaited by a test did not hold before its deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the wait lasted.
        after: std::time::Duration,
    },
    /// A program or file the test KDC needs is not installed.
    #[error(
        "{program} is missing: install the Debian package {package} (scripts/install-deps.sh does)"
    )]
    KdcToolMissing {
        /// The program or file.
        program: String,
        /// The Debian package that installs it.
        package: &'static str,
    },
    /// A program of the test KDC could not be started at all.
    #[error("could not run {program}")]
    KdcSpawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A step of bringing up the test KDC failed.
    #[error("could not bring up the test KDC: {step} failed: {detail}")]
    KdcSetup {
        /// The step, e.g. `starting slapd` or the `kadmin.local` query.
        step: String,
        /// The tool's own error output, or the end of the daemon's log.
        detail: String,
    },
    /// The test KDC's configuration holds a name or password that cannot be used.
    #[error("invalid test KDC configuration: {0}")]
    KdcConfig(String),
    /// `redis-server` is not installed.
    #[error(
        "redis-server is missing: install the Debian package redis-server (scripts/install-deps.sh does)"
    )]
    RedisMissing,
    /// The test Redis server did not come up.
    #[error("could not bring up the test redis server: {0}")]
    RedisStart(String),
    /// Another process serves on the port asked for the test KDC.
    #[error("port {port} on 127.0.0.1 is already in use by another process")]
    KdcPortInUse {
        /// The port.
        port: u16,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
