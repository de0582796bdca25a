//! Running the MIT Kerberos and OpenLDAP programs (and Samba's, for [`crate::samba`]): finding
//! them, one-shot setup steps with their output, the daemons as children killed on drop, and
//! which sockets hold a port.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often conditions are polled while waiting for a daemon or a step.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The directories searched for programs besides `PATH` (the daemons and admin tools live in
/// `/usr/sbin`, which a non-root `PATH` often lacks).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The Debian package that installs `program`, for the error message when it is missing.
fn package_of(program: &str) -> &'static str {
    match program {
        "slapd" | "slaptest" => "slapd",
        "ldapmodify" | "ldapsearch" => "ldap-utils",
        "kdb5_ldap_util" => "krb5-kdc-ldap",
        "kadmin.local" => "krb5-admin-server",
        "krb5kdc" => "krb5-kdc",
        "kinit" | "kvno" | "klist" | "kdestroy" => "krb5-user",
        "gzip" => "gzip",
        "gdb" => "gdb",
        "samba" | "samba-tool" => "samba",
        _ => "unknown",
    }
}

/// The absolute path of `program`, from `PATH` or the system's `sbin` directories.
///
/// # Errors
///
/// [`Error::KdcToolMissing`] naming its Debian package if it is nowhere.
/// The daemon set held in `slot` while anyone holds it, else a new one from `start` (run on
/// tokio's blocking pool): what `Kdc::shared` and `SambaDc::shared` share. The slot holds a
/// weak reference, so the daemons stop when the last holder drops them (a plain static would
/// never be dropped and would leave them running after the tests).
pub(crate) async fn shared<T: Send + Sync + 'static>(
    slot: &'static std::sync::Mutex<std::sync::Weak<T>>,
    start: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::sync::Arc<T>> {
    tokio::task::spawn_blocking(move || {
        let mut held = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = held.upgrade() {
            return Ok(running);
        }
        let running = std::sync::Arc::new(start()?);
        *held = std::sync::Arc::downgrade(&running);
        Ok(running)
    })
    .await
    .map_err(|error| Error::KdcSetup {
        step: "the start-up task".into(),
        detail: error.to_string(),
    })?
}

pub(crate) fn find_program(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::KdcToolMissing {
            program: program.to_string(),
            package: package_of(program),
        })
}

/// A file that must exist, or [`Error::KdcToolMissing`] naming the package that installs it.
pub(crate) fn require_file(path: &str, package: &'static str) -> Result<()> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(Error::KdcToolMissing {
            program: path.to_string(),
            package,
        })
    }
}

/// The environment every program of the KDC runs with: its own configuration files, and
/// `LDAPNOINIT` so that libldap ignores `/etc/ldap/ldap.conf` and `~/.ldaprc`.
#[derive(Debug, Clone)]
pub(crate) struct Environment {
    pub(crate) vars: Vec<(&'static str, PathBuf)>,
}

impl Environment {
    /// A command for `program` with this environment.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        for (key, value) in &self.vars {
            command.env(key, value);
        }
        command.env("LDAPNOINIT", "1");
        command
    }
}

/// What a finished step printed.
#[derive(Debug)]
pub(crate) struct StepOutput {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `command` as the setup step `step`, feeding it `stdin`, and waits at most `deadline`.
///
/// # Errors
///
/// [`Error::KdcSpawn`] if it cannot be started; [`Error::KdcSetup`] naming `step`, with the
/// program's output, if it exits unsuccessfully or outlives `deadline` (it is killed then).
pub(crate) fn run_step(
    step: &str,
    mut command: Command,
    stdin: Option<&str>,
    deadline: Duration,
) -> Result<StepOutput> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::KdcSpawn {
            program: program.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits without reading its input is reported by its status below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let stdout = child.stdout.take().map(read_in_background);
    let stderr = child.stderr.take().map(read_in_background);
    let status = wait_for_exit(&mut child, deadline);
    // Looked at before the kill below, so that a hang says where it hung.
    let waited = status.is_none().then(|| where_it_waits(child.id()));
    if status.is_none() {
        kill(&mut child);
    }
    let stdout = stdout.map(join_reader).unwrap_or_default();
    let stderr = stderr.map(join_reader).unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(StepOutput { stdout, stderr }),
        Some(status) => Err(Error::KdcSetup {
            step: step.to_string(),
            detail: format!("{program} exited with {status}: {}", both(&stdout, &stderr)),
        }),
        None => Err(Error::KdcSetup {
            step: step.to_string(),
            detail: format!(
                "{program} did not finish within {deadline:?}: {}\nwhere it waited:\n{}",
                both(&stdout, &stderr),
                waited.unwrap_or_default()
            ),
        }),
    }
}

/// A program's standard output and error, trimmed, as one text.
pub(crate) fn both(stdout: &str, stderr: &str) -> String {
    match (stdout.trim(), stderr.trim()) {
        ("", "") => "(no output)".to_string(),
        (out, "") => out.to_string(),
        ("", err) => err.to_string(),
        (out, err) => format!("{err}\n{out}"),
    }
}

fn read_in_background(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join_reader(handle: std::thread::JoinHandle<String>) -> String {
    handle.join().unwrap_or_default()
}

/// Waits for `child` to exit, at most `deadline`; `None` if it is still running then (the
/// caller kills it).
fn wait_for_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let give_up = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < give_up => std::thread::sleep(POLL_INTERVAL),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Kills `child` and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How long gdb may take to print a hung program's stacks.
const BACKTRACE_DEADLINE: Duration = Duration::from_secs(15);

/// Where a running process waits, for the error of a step that outlived its deadline: its
/// state, the system call it is in, its kernel stack, its open files and sockets, and (where gdb
/// is installed and may attach) its threads' stacks. Each part that cannot be read is left out;
/// this only ever adds to an error.
pub(crate) fn where_it_waits(pid: u32) -> String {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let read = |name: &str| std::fs::read_to_string(proc.join(name)).unwrap_or_default();
    let mut report = String::new();
    let status = read("status");
    for line in status
        .lines()
        .filter(|line| line.starts_with("State:") || line.starts_with("Threads:"))
    {
        report.push_str(line);
        report.push('\n');
    }
    for (label, name) in [
        ("wchan", "wchan"),
        ("syscall", "syscall"),
        ("kernel stack", "stack"),
    ] {
        let text = read(name);
        if !text.trim().is_empty() {
            report.push_str(&format!("{label}: {}\n", text.trim()));
        }
    }
    if let Ok(entries) = std::fs::read_dir(proc.join("fd")) {
        let mut files: Vec<String> = entries
            .flatten()
            .filter_map(|entry| {
                let target = std::fs::read_link(entry.path()).ok()?;
                Some(format!(
                    "{} -> {}",
                    entry.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect();
        files.sort();
        report.push_str(&format!("open files: {}\n", files.join(", ")));
    }
    report.push_str(&backtrace(pid));
    report
}

/// The stacks of `pid`'s threads as gdb prints them, or nothing if gdb is not installed or
/// cannot attach.
fn backtrace(pid: u32) -> String {
    let Ok(gdb) = find_program("gdb") else {
        return String::new();
    };
    let Ok(mut child) = Command::new(gdb)
        .args(["-nx", "-batch", "-p", &pid.to_string()])
        .args(["-ex", "thread apply all bt 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return String::new();
    };
    let stdout = child.stdout.take().map(read_in_background);
    if wait_for_exit(&mut child, BACKTRACE_DEADLINE).is_none() {
        kill(&mut child);
    }
    let text = stdout.map(join_reader).unwrap_or_default();
    // gdb's own chatter (symbol loading) is left out; the frames start with '#'.
    let frames: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with('#') || line.starts_with("Thread "))
        .collect();
    if frames.is_empty() {
        String::new()
    } else {
        format!("stacks (gdb):\n{}\n", frames.join("\n"))
    }
}

/// Polls `condition` until it yields a value or `deadline` passes.
pub(crate) fn poll<T>(deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> Option<T> {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        if Instant::now() >= give_up {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A long-running program (slapd, krb5kdc) run in the foreground as our child, its output
/// going to a log file. It is killed when dropped.
#[derive(Debug)]
pub(crate) struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command` with its standard output and error appended to `log`.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the log cannot be created; [`Error::KdcSpawn`] if the program cannot
    /// be started.
    pub(crate) fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Result<Self> {
        let open = || {
            File::options()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| Error::File {
                    path: log.clone(),
                    source,
                })
        };
        let stdout = open()?;
        let stderr = open()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::KdcSpawn {
                program: name.to_string(),
                source,
            })?;
        Ok(Self { name, child, log })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited, and how.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error for the setup step `step` that failed because of this daemon, with the end of
    /// its log.
    pub(crate) fn failure(&mut self, step: &str, what: &str) -> Error {
        let status = match self.exit_status() {
            Some(status) => format!("{} exited with {status}", self.name),
            None => format!("{} is running", self.name),
        };
        Error::KdcSetup {
            step: step.to_string(),
            detail: format!(
                "{what} ({status}); the end of {}:\n{}",
                self.log.display(),
                log_tail(&self.log, 20)
            ),
        }
    }

    /// Kills the process and reaps it.
    pub(crate) fn stop(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Who holds a loopback port, as the kernel lists its sockets.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PortHolders {
    /// Our process listens on the port over TCP.
    pub(crate) tcp: bool,
    /// Our process has a UDP socket bound to the port.
    pub(crate) udp: bool,
    /// Some other process listens on it too (krb5kdc sets `SO_REUSEPORT`, so a second KDC on
    /// the same port starts without complaint and shares the traffic).
    pub(crate) foreign: bool,
}

/// Which sockets on `port` (TCP listening, UDP bound) belong to process `pid` and which to
/// others, from `/proc/net/{tcp,tcp6,udp,udp6}` and `/proc/PID/fd`.
pub(crate) fn port_holders(pid: u32, port: u16) -> PortHolders {
    // The tables first, then the process's sockets: a socket it opens in between is then
    // missing from the tables rather than mistaken for a foreign one.
    let on_port: Vec<(u64, bool)> = [
        ("/proc/net/tcp", true),
        ("/proc/net/tcp6", true),
        ("/proc/net/udp", false),
        ("/proc/net/udp6", false),
    ]
    .into_iter()
    .flat_map(|(table, is_tcp)| {
        sockets_on_port(table, port, is_tcp)
            .into_iter()
            .map(move |inode| (inode, is_tcp))
    })
    .collect();
    let ours = socket_inodes(pid);
    let mut holders = PortHolders::default();
    for (inode, is_tcp) in on_port {
        if !ours.contains(&inode) {
            holders.foreign = true;
        } else if is_tcp {
            holders.tcp = true;
        } else {
            holders.udp = true;
        }
    }
    holders
}

/// The inodes of the sockets process `pid` has open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The inodes of the sockets in a `/proc/net` table whose local port is `port` (only those in
/// state LISTEN if `listening_only`).
fn sockets_on_port(table: &str, port: u16, listening_only: bool) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let wanted = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse().ok()?;
            let on_port = local.ends_with(&wanted);
            let counted = !listening_only || *state == LISTEN;
            (on_port && counted && inode != 0).then_some(inode)
        })
        .collect()
}

/// A port on 127.0.0.1 that is free for both TCP and UDP right now.
///
/// # Errors
///
/// [`Error::Connect`] if no socket can be bound at all.
pub(crate) fn free_port() -> Result<u16> {
    let bind_error = |source| Error::Connect {
        addr: "127.0.0.1:0".into(),
        source,
    };
    let mut last_error = None;
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(bind_error)?;
        let port = tcp.local_addr().map_err(bind_error)?.port();
        match std::net::UdpSocket::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(error) => last_error = Some(error),
        }
    }
    Err(bind_error(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no port free for both TCP and UDP",
        )
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_of_this_process_is_ours() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = listener.local_addr().expect("address").port();
        let holders = port_holders(std::process::id(), port);
        assert_eq!(
            holders,
            PortHolders {
                tcp: true,
                udp: false,
                foreign: false
            }
        );
    }

    #[test]
    fn a_step_that_outlives_its_deadline_says_where_it_waited() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let started = Instant::now();

        let result = run_step("sleeping", command, None, Duration::from_millis(200));

        let Err(Error::KdcSetup { step, detail }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(step, "sleeping");
        assert!(detail.contains("did not finish within 200ms"), "{detail}");
        // The process was looked at while it still ran: its state is in the report.
        assert!(detail.contains("State:"), "{detail}");
        assert!(detail.contains("open files: "), "{detail}");
        // And it was killed rather than waited for.
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_socket_of_another_process_is_foreign() {
        let socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).expect("bind");
        let port = socket.local_addr().expect("address").port();
        // Process 1 holds no socket of ours.
        let holders = port_holders(1, port);
        assert!(holders.foreign && !holders.udp && !holders.tcp);
    }
}
