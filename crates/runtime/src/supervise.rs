//! Processes a zos process starts and keeps: WireGuard userspace daemons, flist mount
//! processes, QEMU and virtiofsd, and the test kit's grids and nodes.
//!
//! - **Detached spawn** ([`Detach`]): the child gets its own session (signals to zosd's group
//!   do not reach it, and it outlives zosd), stdin from `/dev/null`, stdout and stderr to a log
//!   file, and optionally joins cgroups before it executes.
//! - **Liveness** ([`alive`]): a PID alone proves nothing once the process is gone, because PIDs
//!   are reused. A process is ours only while its `/proc/PID/cmdline` matches a [`Marker`]
//!   (program name, arguments, a socket path) and it is not a zombie. Dead children of ours are
//!   reaped on the way.
//! - **Stop** ([`stop`], [`stop_blocking`]): SIGTERM, then SIGKILL once the grace period has
//!   passed; a process that is not (or no longer) the marked one is never signalled.
//! - **Adopt** ([`adopt`], [`find`]): after a restart of zosd the recorded PID is kept if it
//!   still carries the marker, else `/proc` is searched for the marked process.
//! - **Restart with backoff** ([`Backoff`]): doubling delays between restarts, reset once a
//!   process has stayed up longer than the longest delay.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// How long a process may take to go after SIGKILL before [`stop`] gives up on it.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// What a process's command line must show for it to be the process we started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marker {
    program: Option<OsString>,
    args: Vec<OsString>,
    last: Option<OsString>,
    containing: Option<OsString>,
    exact: Option<Vec<OsString>>,
}

impl Marker {
    /// A process whose program (the file name of its first argument) contains `name`.
    pub fn program(name: impl AsRef<OsStr>) -> Self {
        Self {
            program: Some(name.as_ref().to_owned()),
            ..Self::default()
        }
    }

    /// A process one of whose arguments contains `text` (a socket or file path, say).
    pub fn containing(text: impl AsRef<OsStr>) -> Self {
        Self {
            containing: Some(text.as_ref().to_owned()),
            ..Self::default()
        }
    }

    /// The process whose command line is exactly `argv`, as read from `/proc` by [`argv`]
    /// (to stop a process found by other means without signalling a successor at its PID).
    pub fn exact(argv: Vec<OsString>) -> Self {
        Self {
            exact: Some(argv),
            ..Self::default()
        }
    }

    /// Also requires an argument equal to `arg`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Also requires the last argument to be `arg`.
    pub fn last_arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.last = Some(arg.as_ref().to_owned());
        self
    }

    /// Whether `argv` (a command line, program first) carries this marker. A marker that
    /// requires nothing matches nothing: a bare PID is never enough.
    pub fn matches(&self, argv: &[OsString]) -> bool {
        if *self == Self::default() {
            return false;
        }
        let program_ok = self.program.as_ref().is_none_or(|want| {
            argv.first()
                .and_then(|a| Path::new(a).file_name())
                .is_some_and(|n| contains(n, want))
        });
        let args_ok = self.args.iter().all(|a| argv.contains(a));
        let last_ok = self.last.as_ref().is_none_or(|l| argv.last() == Some(l));
        let containing_ok = self
            .containing
            .as_ref()
            .is_none_or(|t| argv.iter().any(|a| contains(a, t)));
        let exact_ok = self.exact.as_ref().is_none_or(|e| e.as_slice() == argv);
        program_ok && args_ok && last_ok && containing_ok && exact_ok
    }
}

fn contains(hay: &OsStr, needle: &OsStr) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    !n.is_empty() && h.windows(n.len()).any(|w| w == n)
}

/// The command line of live process `pid`; `None` when it is gone or a zombie. An exited
/// child of ours at `pid` is reaped first.
pub fn argv(pid: i32) -> Option<Vec<OsString>> {
    if pid <= 0 {
        return None;
    }
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    read_argv(pid)
}

/// [`argv`] without reaping: for scans of `/proc`, which must not take the exit status of a
/// child another part of the process waits for.
fn read_argv(pid: i32) -> Option<Vec<OsString>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X")) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsStr::from_bytes(a).to_owned())
            .collect(),
    )
}

/// Whether `pid` is a live process carrying `marker`.
pub fn alive(pid: i32, marker: &Marker) -> bool {
    argv(pid).is_some_and(|a| marker.matches(&a))
}

/// Live processes carrying `marker`, with their command lines (this process excluded). A
/// process whose parent carries the marker too is its fork that has not run its own program yet
/// (a shell about to exec a command), not another copy: it is left out.
pub fn find(marker: &Marker) -> Vec<(i32, Vec<OsString>)> {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = rd
        .flatten()
        .filter_map(|d| d.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != me)
        .collect();
    pids.sort_unstable();
    let found: Vec<(i32, Vec<OsString>)> = pids
        .into_iter()
        .filter_map(|p| read_argv(p).filter(|a| marker.matches(a)).map(|a| (p, a)))
        .collect();
    let ours: Vec<i32> = found.iter().map(|(p, _)| *p).collect();
    found
        .into_iter()
        .filter(|(p, _)| parent(*p).is_none_or(|pp| !ours.contains(&pp)))
        .collect()
}

/// The parent of `pid`, from `/proc/PID/stat` (after the command name, which may hold spaces).
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The process to keep after a restart: `recorded` if it still carries `marker`, else the
/// first live process that does.
pub fn adopt(recorded: Option<i32>, marker: &Marker) -> Option<i32> {
    if let Some(pid) = recorded.filter(|p| alive(*p, marker)) {
        return Some(pid);
    }
    find(marker).first().map(|(p, _)| *p)
}

/// How a [`stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (or not the marked process): nothing was signalled.
    NotRunning,
    /// It ended after SIGTERM.
    Terminated,
    /// It ignored SIGTERM for the grace period and was killed.
    Killed,
    /// It was still there [`KILL_WAIT`] after SIGKILL (stuck in the kernel).
    Stuck,
}

/// Stops marked process `pid`: SIGTERM, SIGKILL after `grace` (at once when `grace` is zero).
/// The waiting runs on a blocking thread.
pub async fn stop(pid: i32, marker: &Marker, grace: Duration) -> Stopped {
    let marker = marker.clone();
    tokio::task::spawn_blocking(move || stop_blocking(pid, &marker, grace))
        .await
        .unwrap_or(Stopped::Stuck)
}

/// [`stop`] for code outside an async runtime (drops, test guards).
pub fn stop_blocking(pid: i32, marker: &Marker, grace: Duration) -> Stopped {
    if !alive(pid, marker) {
        return Stopped::NotRunning;
    }
    let p = Pid::from_raw(pid);
    if !grace.is_zero() {
        let _ = kill(p, Signal::SIGTERM);
        if gone_within(pid, marker, grace) {
            reap(pid);
            return Stopped::Terminated;
        }
        tracing::warn!(pid, "process ignored SIGTERM: killing it");
    }
    let _ = kill(p, Signal::SIGKILL);
    if gone_within(pid, marker, KILL_WAIT) {
        reap(pid);
        return Stopped::Killed;
    }
    tracing::warn!(pid, "process still there after SIGKILL");
    Stopped::Stuck
}

/// Reaps `pid` when it is an exited child of this process. A process seen dead (a zombie in
/// `/proc`) may not be waitable yet for a moment; without this a child stopped here would stay a
/// zombie of ours. Anything else (not our child, already reaped) returns at once.
fn reap(pid: i32) {
    let deadline = Instant::now() + KILL_WAIT;
    while let Ok(nix::sys::wait::WaitStatus::StillAlive) =
        waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
    {
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(POLL);
    }
}

fn gone_within(pid: i32, marker: &Marker, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid, marker) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

/// How a detached child is started: its log, and the cgroups it joins.
#[derive(Debug, Clone)]
pub struct Detach {
    log: PathBuf,
    truncate: bool,
    stdout: bool,
    cgroup_procs: Vec<PathBuf>,
}

impl Detach {
    /// Output appended to `log` (created mode 0600 if missing).
    pub fn new(log: impl Into<PathBuf>) -> Self {
        Self {
            log: log.into(),
            truncate: false,
            stdout: true,
            cgroup_procs: Vec::new(),
        }
    }

    /// Starts the log afresh (a new 0600 file replacing any there) instead of appending.
    pub fn truncate(mut self) -> Self {
        self.truncate = true;
        self
    }

    /// Leaves stdout to the caller (a pipe it reads a ready line from); stderr still logs.
    pub fn keep_stdout(mut self) -> Self {
        self.stdout = false;
        self
    }

    /// `cgroup.procs` files the child writes itself into before it executes.
    pub fn cgroups(mut self, procs_files: Vec<PathBuf>) -> Self {
        self.cgroup_procs = procs_files;
        self
    }

    /// Sets up `cmd` to start detached: own session, stdin `/dev/null`, output to the log,
    /// cgroups joined. Works for `tokio::process::Command` through `as_std_mut`.
    pub fn apply(&self, cmd: &mut Command) -> io::Result<()> {
        // A fresh log is made 0600 whatever file was there; an appended one is created 0600.
        let log = if self.truncate {
            crate::private::create_file(&self.log)?
        } else {
            std::fs::OpenOptions::new()
                .mode(crate::private::FILE_MODE)
                .create(true)
                .append(true)
                .open(&self.log)?
        };
        if self.stdout {
            cmd.stdout(log.try_clone()?);
        }
        cmd.stdin(Stdio::null()).stderr(log);
        let procs: Vec<CString> = self
            .cgroup_procs
            .iter()
            .map(|p| CString::new(p.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(io::Error::other)?;
        // SAFETY: only async-signal-safe calls (setsid, open, write, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || pre_exec(&procs));
        }
        Ok(())
    }

    /// Starts `cmd` detached and answers its PID. The child is not waited for: [`alive`]
    /// reaps it if it exits while we run, init once we are gone.
    pub fn spawn(&self, mut cmd: Command) -> io::Result<i32> {
        self.apply(&mut cmd)?;
        let child = cmd.spawn()?;
        tracing::debug!(pid = child.id(), program = ?cmd.get_program(), "started detached");
        Ok(child.id() as i32)
    }
}

fn pre_exec(procs: &[CString]) -> io::Result<()> {
    // SAFETY: setsid, open, write and close are async-signal-safe; the strings were built
    // before the fork.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        for p in procs {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Delays between restarts of a supervised process: `min`, doubling up to `max`, back to `min`
/// once the process stayed up longer than `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
    next: Option<Instant>,
    started: Instant,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            delay: min,
            next: None,
            started: Instant::now(),
        }
    }

    /// The process (re)started now: no restart pending.
    pub fn started(&mut self) {
        self.started = Instant::now();
        self.next = None;
    }

    /// The process is up: after a long enough run the delay starts from `min` again.
    pub fn running(&mut self, now: Instant) {
        if now.duration_since(self.started) > self.max {
            self.delay = self.min;
        }
    }

    /// The process died (or a restart failed): the next attempt waits the current delay,
    /// which then doubles. Answers that delay.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let d = self.delay;
        self.next = Some(now + d);
        self.delay = (self.delay * 2).min(self.max);
        d
    }

    /// Whether a restart is scheduled at all.
    pub fn pending(&self) -> bool {
        self.next.is_some()
    }

    /// Whether a scheduled restart is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| now >= t)
    }

    /// The delay the next failure will wait.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests;
