//! A fault-injecting TCP proxy: put it between a client and a server on loopback and break the
//! connection the way a failing peer or network would, changing the fault while it runs.
//!
//! Every accepted connection is relayed to the target; what each direction of it suffers is read
//! from the current [`Plan`] before every chunk, so a test changes the plan through a
//! [`FaultHandle`] without restarting anything, and connections already open feel it at once:
//!
//! - [`Fault::Pass`]: bytes go through unchanged;
//! - [`Fault::Delay`]: each chunk waits this long first;
//! - [`Fault::StallAfter`]: after N bytes nothing more goes through (the connection stays open)
//!   until the plan changes;
//! - [`Fault::ResetAfter`]: after N bytes both sides get a TCP reset (`SO_LINGER` 0);
//! - [`Fault::TruncateAfter`]: after N bytes both sides are closed cleanly (FIN);
//! - [`Fault::GarbageAfter`]: after N bytes every byte is replaced by a random one.
//!
//! New connections follow the plan's [`Admission`]: served, refused (accepted, then closed at
//! once), or the proxy is down (its listener closed, so connecting fails, and every open
//! connection is reset); [`FaultHandle::restore`] brings it back on the same address.
//!
//! Byte counts are per connection and per direction, from the connection's first byte. A
//! connection to the target that fails is answered with a reset.
//!
//! ```
//! use seg_testbed::fault_proxy::{Direction, Fault, FaultProxy};
//! use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> seg_testbed::Result<()> {
//! // A server that says hello.
//! let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let target = server.local_addr().unwrap();
//! tokio::spawn(async move {
//!     while let Ok((mut stream, _)) = server.accept().await {
//!         let _ = stream.write_all(b"hello, world").await;
//!     }
//! });
//!
//! let proxy = FaultProxy::start(target).await?;
//! proxy
//!     .handle()
//!     .set(Direction::ServerToClient, Fault::TruncateAfter(5));
//!
//! let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
//! let mut answer = Vec::new();
//! client.read_to_end(&mut answer).await.unwrap();
//! assert_eq!(answer, b"hello");
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::{Error, Result};

/// How much is read from one side before it is handed on (a "chunk").
const CHUNK: usize = 16 * 1024;

/// How often a listener that could not be bound again after [`FaultHandle::restore`] retries.
const REBIND_RETRY: Duration = Duration::from_millis(10);

/// One direction of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// What the client sends (the request).
    ClientToServer,
    /// What the server sends back (the response).
    ServerToClient,
}

/// What one direction of every connection suffers; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Bytes go through unchanged.
    #[default]
    Pass,
    /// Each chunk is held this long before it is sent on.
    Delay(Duration),
    /// After this many bytes nothing more is sent on until the plan changes; the connection
    /// stays open.
    StallAfter(u64),
    /// After this many bytes both sides of the connection are reset (TCP RST).
    ResetAfter(u64),
    /// After this many bytes both sides of the connection are closed cleanly (FIN).
    TruncateAfter(u64),
    /// After this many bytes every byte sent on is a random one.
    GarbageAfter(u64),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Pass => f.write_str("pass"),
            Fault::Delay(delay) => write!(f, "delay={}", delay.as_millis()),
            Fault::StallAfter(n) => write!(f, "stall={n}"),
            Fault::ResetAfter(n) => write!(f, "reset={n}"),
            Fault::TruncateAfter(n) => write!(f, "truncate={n}"),
            Fault::GarbageAfter(n) => write!(f, "garbage={n}"),
        }
    }
}

/// A [`Fault`] that could not be read from text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a fault: {0:?} (expected pass, delay=MILLISECONDS, stall=N, reset=N, truncate=N or garbage=N)"
)]
pub struct ParseFaultError(String);

impl FromStr for Fault {
    type Err = ParseFaultError;

    /// Reads `pass`, `delay=MILLISECONDS`, `stall=N`, `reset=N`, `truncate=N`, `garbage=N` (the
    /// form [`Display`](fmt::Display) writes).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseFaultError(text.to_owned());
        if text == "pass" {
            return Ok(Fault::Pass);
        }
        let (kind, number) = text.split_once('=').ok_or_else(invalid)?;
        let number: u64 = number.parse().map_err(|_| invalid())?;
        match kind {
            "delay" => Ok(Fault::Delay(Duration::from_millis(number))),
            "stall" => Ok(Fault::StallAfter(number)),
            "reset" => Ok(Fault::ResetAfter(number)),
            "truncate" => Ok(Fault::TruncateAfter(number)),
            "garbage" => Ok(Fault::GarbageAfter(number)),
            _ => Err(invalid()),
        }
    }
}

/// What happens to new connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Admission {
    /// They are relayed to the target.
    #[default]
    Open,
    /// They are accepted and closed at once, before any byte is read or written.
    Refuse,
    /// The listener is closed (connecting fails) and open connections are reset.
    Down,
}

/// The faults in force: how new connections are admitted and what each direction suffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// How new connections are treated.
    pub admission: Admission,
    /// What the client's bytes suffer on their way to the server.
    pub client_to_server: Fault,
    /// What the server's bytes suffer on their way to the client.
    pub server_to_client: Fault,
}

impl Plan {
    /// The fault for `direction`.
    pub fn fault(&self, direction: Direction) -> Fault {
        match direction {
            Direction::ClientToServer => self.client_to_server,
            Direction::ServerToClient => self.server_to_client,
        }
    }
}

/// Counts of what a proxy did, shared with its handles.
#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    client_to_server: AtomicU64,
    server_to_client: AtomicU64,
}

impl Stats {
    fn bytes(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ClientToServer => &self.client_to_server,
            Direction::ServerToClient => &self.server_to_client,
        }
    }
}

/// Changes the plan of a running [`FaultProxy`] and reads its counts. Cheap to clone; every
/// change applies at once, to open connections too.
#[derive(Clone, Debug)]
pub struct FaultHandle {
    plan: Arc<watch::Sender<Plan>>,
    /// Bumped to reset every open connection.
    cuts: Arc<watch::Sender<u64>>,
    stats: Arc<Stats>,
}

impl FaultHandle {
    /// The plan in force.
    pub fn plan(&self) -> Plan {
        *self.plan.borrow()
    }

    /// Replaces the whole plan.
    pub fn set_plan(&self, plan: Plan) {
        self.plan.send_replace(plan);
        if plan.admission == Admission::Down {
            self.cut_connections();
        }
    }

    /// Sets the fault of one direction, keeping the rest of the plan.
    pub fn set(&self, direction: Direction, fault: Fault) {
        self.plan.send_modify(|plan| match direction {
            Direction::ClientToServer => plan.client_to_server = fault,
            Direction::ServerToClient => plan.server_to_client = fault,
        });
    }

    /// Sets how new connections are admitted, keeping the faults.
    pub fn set_admission(&self, admission: Admission) {
        self.plan.send_modify(|plan| plan.admission = admission);
        if admission == Admission::Down {
            self.cut_connections();
        }
    }

    /// Resets every connection open now (TCP RST to both sides), whatever the plan; new ones
    /// follow the plan. For a client that keeps connections in a pool: its next request then
    /// opens a new connection, whose bytes are counted from zero.
    pub fn cut_connections(&self) {
        self.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// New connections are accepted and closed at once ([`Admission::Refuse`]).
    pub fn refuse(&self) {
        self.set_admission(Admission::Refuse);
    }

    /// The proxy goes down ([`Admission::Down`]): its listener closes and open connections are
    /// reset.
    pub fn down(&self) {
        self.set_admission(Admission::Down);
    }

    /// Back to the default plan: listening on the same address, every byte passed unchanged.
    pub fn restore(&self) {
        self.set_plan(Plan::default());
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Bytes sent on in `direction` so far, over every connection (garbage included).
    pub fn forwarded(&self, direction: Direction) -> u64 {
        self.stats.bytes(direction).load(Ordering::SeqCst)
    }
}

/// A running fault-injecting proxy; stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    handle: FaultHandle,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1` with a free port, relaying to `target`, passing every
    /// byte until told otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        Self::bind("127.0.0.1:0".parse().expect("a socket address"), target).await
    }

    /// Starts a proxy listening on `listen`, relaying to `target`.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if `listen` cannot be bound.
    pub async fn bind(listen: SocketAddr, target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Connect {
                addr: listen.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Connect {
            addr: listen.to_string(),
            source,
        })?;
        let (plan, plan_rx) = watch::channel(Plan::default());
        let (cuts, _) = watch::channel(0);
        let handle = FaultHandle {
            plan: Arc::new(plan),
            cuts: Arc::new(cuts),
            stats: Arc::new(Stats::default()),
        };
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            target,
            plan_rx,
            handle.cuts.clone(),
            handle.stats.clone(),
        ));
        Ok(FaultProxy {
            addr,
            target,
            handle,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are relayed to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// A handle to change the plan and read the counts.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut plan: watch::Receiver<Plan>,
    cuts: Arc<watch::Sender<u64>>,
    stats: Arc<Stats>,
) {
    // Aborting this task drops the set, which aborts every connection.
    let mut connections = JoinSet::new();
    let mut listener = Some(listener);
    loop {
        while connections.try_join_next().is_some() {}
        if plan.borrow_and_update().admission == Admission::Down {
            listener = None;
            if plan
                .wait_for(|plan| plan.admission != Admission::Down)
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let Some(bound) = &listener else {
            match TcpListener::bind(addr).await {
                Ok(bound) => listener = Some(bound),
                Err(error) => {
                    tracing::warn!(%addr, %error, "fault proxy: cannot listen again yet");
                    tokio::time::sleep(REBIND_RETRY).await;
                }
            }
            continue;
        };
        let accepted = tokio::select! {
            accepted = bound.accept() => accepted,
            changed = plan.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::SeqCst);
        match plan.borrow().admission {
            Admission::Open => {
                connections.spawn(relay(
                    client,
                    target,
                    plan.clone(),
                    cuts.subscribe(),
                    stats.clone(),
                ));
            }
            Admission::Refuse | Admission::Down => drop(client),
        }
    }
}

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The source closed its side cleanly; the FIN was passed on.
    Eof,
    /// Both sides get a reset.
    Reset,
    /// Both sides are closed cleanly.
    Close,
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    plan: watch::Receiver<Plan>,
    cuts: watch::Receiver<u64>,
    stats: Arc<Stats>,
) {
    let server = match TcpStream::connect(target).await {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%target, %error, "fault proxy: target unreachable; resetting the client");
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (kill, killed) = watch::channel(None);
    let pumps = |read, write, direction| {
        Pump {
            direction,
            plan: plan.clone(),
            down: plan.clone(),
            cuts: cuts.clone(),
            killed: killed.clone(),
            stats: stats.clone(),
            sent: 0,
        }
        .run(read, write, kill.clone())
    };
    let ((up, client_read, server_write), (down, server_read, client_write)) = tokio::join!(
        pumps(client_read, server_write, Direction::ClientToServer),
        pumps(server_read, client_write, Direction::ServerToClient),
    );
    let ending = [up, down]
        .into_iter()
        .find(|ending| *ending != Ending::Eof)
        .unwrap_or(Ending::Eof);
    let (Ok(mut client), Ok(mut server)) = (
        client_read.reunite(client_write),
        server_read.reunite(server_write),
    ) else {
        return;
    };
    match ending {
        Ending::Eof => {}
        Ending::Reset => {
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
        Ending::Close => {
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
        }
    }
}

/// One direction of a connection.
struct Pump {
    direction: Direction,
    /// Read before each chunk, and awaited while stalled.
    plan: watch::Receiver<Plan>,
    /// Awaited for the proxy going down.
    down: watch::Receiver<Plan>,
    /// Awaited for [`FaultHandle::cut_connections`].
    cuts: watch::Receiver<u64>,
    /// Set by the other direction when it ends the connection.
    killed: watch::Receiver<Option<Ending>>,
    stats: Arc<Stats>,
    /// Bytes sent on so far in this direction.
    sent: u64,
}

impl Pump {
    /// Relays until the source closes, a fault ends the connection, or the other direction does;
    /// hands the halves back so that the connection can be ended as a whole.
    async fn run(
        mut self,
        mut read: OwnedReadHalf,
        mut write: OwnedWriteHalf,
        kill: watch::Sender<Option<Ending>>,
    ) -> (Ending, OwnedReadHalf, OwnedWriteHalf) {
        let mut killed = self.killed.clone();
        let mut down = self.down.clone();
        let mut cuts = self.cuts.clone();
        let ending = tokio::select! {
            ending = self.relay(&mut read, &mut write) => ending,
            ending = interrupted(&mut killed, &mut down, &mut cuts) => ending,
        };
        if ending != Ending::Eof {
            kill.send_replace(Some(ending));
        }
        (ending, read, write)
    }

    async fn relay(&mut self, read: &mut OwnedReadHalf, write: &mut OwnedWriteHalf) -> Ending {
        let mut buffer = vec![0; CHUNK];
        loop {
            let read = match read.read(&mut buffer).await {
                Ok(0) => {
                    let _ = write.shutdown().await;
                    return Ending::Eof;
                }
                Ok(read) => read,
                Err(_) => return Ending::Reset,
            };
            let mut pending = buffer[..read].to_vec();
            while !pending.is_empty() {
                let fault = self.plan.borrow_and_update().fault(self.direction);
                let after = match fault {
                    Fault::Pass => {
                        if self.send(write, &pending).await.is_err() {
                            return Ending::Reset;
                        }
                        break;
                    }
                    Fault::Delay(delay) => {
                        tokio::time::sleep(delay).await;
                        if self.send(write, &pending).await.is_err() {
                            return Ending::Reset;
                        }
                        break;
                    }
                    Fault::StallAfter(n)
                    | Fault::ResetAfter(n)
                    | Fault::TruncateAfter(n)
                    | Fault::GarbageAfter(n) => n,
                };
                let room = usize::try_from(after.saturating_sub(self.sent))
                    .unwrap_or(usize::MAX)
                    .min(pending.len());
                if room > 0 {
                    if self.send(write, &pending[..room]).await.is_err() {
                        return Ending::Reset;
                    }
                    pending.drain(..room);
                    if pending.is_empty() {
                        break;
                    }
                }
                match fault {
                    Fault::StallAfter(_) => {
                        // Held until the plan changes; then the rest follows the new plan.
                        if self.plan.changed().await.is_err() {
                            return Ending::Reset;
                        }
                    }
                    Fault::ResetAfter(_) => return Ending::Reset,
                    Fault::TruncateAfter(_) => return Ending::Close,
                    Fault::GarbageAfter(_) => {
                        rand::Rng::fill(&mut rand::rng(), pending.as_mut_slice());
                        if self.send(write, &pending).await.is_err() {
                            return Ending::Reset;
                        }
                        break;
                    }
                    Fault::Pass | Fault::Delay(_) => unreachable!("handled above"),
                }
            }
        }
    }

    async fn send(&mut self, write: &mut OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
        write.write_all(bytes).await?;
        self.sent += bytes.len() as u64;
        self.stats
            .bytes(self.direction)
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        Ok(())
    }
}

/// Completes when the other direction ended the connection, the connections are cut, or the
/// proxy goes down (or away).
async fn interrupted(
    killed: &mut watch::Receiver<Option<Ending>>,
    down: &mut watch::Receiver<Plan>,
    cuts: &mut watch::Receiver<u64>,
) -> Ending {
    tokio::select! {
        _ = cuts.changed() => Ending::Reset,
        ending = killed.wait_for(Option::is_some) => match ending {
            Ok(ending) => ending.unwrap_or(Ending::Reset),
            Err(_) => Ending::Reset,
        },
        _ = down.wait_for(|plan| plan.admission == Admission::Down) => Ending::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::wait_until;
    use std::io::ErrorKind;

    /// How long any single step of a test may take.
    const STEP_FOR_UNIT_TESTS: Duration = Duration::from_secs(10);

    /// An echo server: writes back whatever each connection sends, until it closes.
    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        (addr, task)
    }

    async fn proxy_to_echo() -> (FaultProxy, tokio::task::JoinHandle<()>) {
        let (target, server) = echo_server().await;
        (FaultProxy::start(target).await.unwrap(), server)
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        TcpStream::connect(proxy.addr()).await.unwrap()
    }

    /// Reads exactly `n` bytes within the step deadline.
    async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buffer = vec![0; n];
        tokio::time::timeout(STEP_FOR_UNIT_TESTS, stream.read_exact(&mut buffer))
            .await
            .expect("the bytes within the step deadline")
            .expect("the bytes");
        buffer
    }

    /// What reading until the end gives: the bytes, and the error that ended it (if any).
    async fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
        let mut bytes = Vec::new();
        let outcome = tokio::time::timeout(STEP_FOR_UNIT_TESTS, async {
            let mut buffer = [0u8; 1024];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => return None,
                    Ok(n) => bytes.extend_from_slice(&buffer[..n]),
                    Err(error) => return Some(error.kind()),
                }
            }
        })
        .await
        .expect("the connection ends within the step deadline");
        (bytes, outcome)
    }

    #[tokio::test]
    async fn pass_relays_both_ways_unchanged() {
        let (proxy, _server) = proxy_to_echo().await;
        let mut client = connect(&proxy).await;
        client.write_all(b"ping pong").await.unwrap();
        assert_eq!(read_exactly(&mut client, 9).await, b"ping pong");
        let handle = proxy.handle();
        assert_eq!(handle.accepted(), 1);
        assert_eq!(handle.forwarded(Direction::ClientToServer), 9);
        assert_eq!(handle.forwarded(Direction::ServerToClient), 9);
    }

    #[tokio::test]
    async fn truncate_closes_cleanly_after_n_bytes() {
        let (proxy, _server) = proxy_to_echo().await;
        proxy
            .handle()
            .set(Direction::ServerToClient, Fault::TruncateAfter(4));
        let mut client = connect(&proxy).await;
        client.write_all(b"0123456789").await.unwrap();
        assert_eq!(read_to_end(&mut client).await, (b"0123".to_vec(), None));
    }

    #[tokio::test]
    async fn reset_after_n_bytes_resets_the_client() {
        let (proxy, _server) = proxy_to_echo().await;
        proxy
            .handle()
            .set(Direction::ServerToClient, Fault::ResetAfter(3));
        let mut client = connect(&proxy).await;
        client.write_all(b"abcdef").await.unwrap();
        let (bytes, error) = read_to_end(&mut client).await;
        assert!(b"abc".starts_with(&bytes), "{bytes:?}");
        assert_eq!(error, Some(ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn garbage_keeps_the_length_and_the_first_n_bytes() {
        let (proxy, _server) = proxy_to_echo().await;
        proxy
            .handle()
            .set(Direction::ClientToServer, Fault::GarbageAfter(2));
        let mut client = connect(&proxy).await;
        let sent = [b'a'; 64];
        client.write_all(&sent).await.unwrap();
        let echoed = read_exactly(&mut client, 64).await;
        assert_eq!(&echoed[..2], b"aa");
        // 62 random bytes all equal to 'a' would be a 1 in 256^62 chance.
        assert_ne!(&echoed[2..], &sent[2..]);
    }

    #[tokio::test]
    async fn stall_holds_bytes_until_the_plan_changes() {
        let (proxy, _server) = proxy_to_echo().await;
        let handle = proxy.handle();
        handle.set(Direction::ServerToClient, Fault::StallAfter(2));
        let mut client = connect(&proxy).await;
        client.write_all(b"hello").await.unwrap();
        assert_eq!(read_exactly(&mut client, 2).await, b"he");
        wait_until(STEP_FOR_UNIT_TESTS, "the echo to reach the proxy", || {
            let seen = handle.forwarded(Direction::ClientToServer) == 5;
            async move { seen }
        })
        .await
        .unwrap();
        // Nothing more arrives while stalled: a negative, so the window is the assertion.
        let mut more = [0u8; 8];
        let quiet = tokio::time::timeout(Duration::from_millis(200), client.read(&mut more)).await;
        assert!(quiet.is_err(), "bytes got through a stall: {quiet:?}");

        handle.restore();
        assert_eq!(read_exactly(&mut client, 3).await, b"llo");
    }

    #[tokio::test]
    async fn delay_holds_each_chunk() {
        let (proxy, _server) = proxy_to_echo().await;
        proxy.handle().set(
            Direction::ClientToServer,
            Fault::Delay(Duration::from_millis(150)),
        );
        let mut client = connect(&proxy).await;
        let started = tokio::time::Instant::now();
        client.write_all(b"slow").await.unwrap();
        assert_eq!(read_exactly(&mut client, 4).await, b"slow");
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn refuse_accepts_and_closes_at_once() {
        let (proxy, _server) = proxy_to_echo().await;
        proxy.handle().refuse();
        let mut client = connect(&proxy).await;
        let _ = client.write_all(b"anyone?").await;
        let (bytes, _) = read_to_end(&mut client).await;
        assert!(bytes.is_empty());
        assert_eq!(proxy.handle().forwarded(Direction::ClientToServer), 0);
    }

    #[tokio::test]
    async fn down_refuses_connections_resets_open_ones_and_restore_listens_again() {
        let (proxy, _server) = proxy_to_echo().await;
        let handle = proxy.handle();
        let mut open = connect(&proxy).await;
        open.write_all(b"x").await.unwrap();
        assert_eq!(read_exactly(&mut open, 1).await, b"x");

        handle.down();
        let (_, error) = read_to_end(&mut open).await;
        assert_eq!(error, Some(ErrorKind::ConnectionReset));
        wait_until(STEP_FOR_UNIT_TESTS, "the listener to close", || async {
            TcpStream::connect(proxy.addr()).await.is_err()
        })
        .await
        .unwrap();

        handle.restore();
        wait_until(
            STEP_FOR_UNIT_TESTS,
            "the listener to open again",
            || async { TcpStream::connect(proxy.addr()).await.is_ok() },
        )
        .await
        .unwrap();
        let mut again = connect(&proxy).await;
        again.write_all(b"back").await.unwrap();
        assert_eq!(read_exactly(&mut again, 4).await, b"back");
    }

    #[tokio::test]
    async fn cut_connections_resets_open_ones_and_serves_new_ones() {
        let (proxy, _server) = proxy_to_echo().await;
        let mut open = connect(&proxy).await;
        open.write_all(b"x").await.unwrap();
        assert_eq!(read_exactly(&mut open, 1).await, b"x");

        proxy.handle().cut_connections();

        let (_, error) = read_to_end(&mut open).await;
        assert_eq!(error, Some(ErrorKind::ConnectionReset));
        let mut new = connect(&proxy).await;
        new.write_all(b"y").await.unwrap();
        assert_eq!(read_exactly(&mut new, 1).await, b"y");
    }

    #[tokio::test]
    async fn unreachable_target_resets_the_client() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let proxy = FaultProxy::start(closed).await.unwrap();
        let mut client = connect(&proxy).await;
        let (bytes, error) = read_to_end(&mut client).await;
        assert!(bytes.is_empty());
        assert_eq!(error, Some(ErrorKind::ConnectionReset));
    }

    #[test]
    fn faults_read_back_what_they_write() {
        for fault in [
            Fault::Pass,
            Fault::Delay(Duration::from_millis(250)),
            Fault::StallAfter(0),
            Fault::ResetAfter(17),
            Fault::TruncateAfter(1024),
            Fault::GarbageAfter(4),
        ] {
            assert_eq!(fault.to_string().parse::<Fault>(), Ok(fault));
        }
        assert_eq!(
            "stall".parse::<Fault>().unwrap_err().to_string(),
            "not a fault: \"stall\" (expected pass, delay=MILLISECONDS, stall=N, reset=N, truncate=N or garbage=N)"
        );
    }
}
