//! Supervision by PID 1: the node's services started in order, restarted with backoff when they
//! end, orphans reaped, and everything stopped in reverse order on power-off.
//!
//! The loop runs on one thread with SIGCHLD and the stop signals blocked and taken with
//! `sigtimedwait`, so no signal is lost between a check and a wait. Each service runs in its
//! own session (its process group is signalled as a whole) with an empty signal mask and the
//! default signal dispositions.
//!
//! Power-off is asked by SIGPWR, SIGTERM or SIGINT (ctrl-alt-del: the kernel sends SIGINT to
//! PID 1 once zos-init disabled the immediate reboot), or by the ACPI power button: a thread
//! reads the `Power Button` input devices (`/dev/input/event*`, modules `button` and `evdev`)
//! and sends PID 1 SIGPWR on a press. Stopping: each service, last started first, gets SIGTERM
//! to its process group and [`Options::grace`] to end, then SIGKILL; then every process left
//! gets SIGTERM and, after the grace, SIGKILL. [`run`] returns there; the caller syncs,
//! unmounts and powers off.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use zos_runtime::supervise::Backoff;

/// One service of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// A short name for logs, unique in the list.
    pub name: String,
    /// The program (an absolute path) and its arguments.
    pub exec: Vec<String>,
    /// Environment on top of a PATH of the runtime.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where its output goes (appended); the console when absent.
    #[serde(default)]
    pub log: Option<PathBuf>,
    /// Runs on the console as its controlling terminal, input included (the debug shell).
    #[serde(default)]
    pub console: bool,
}

/// The most services a list may hold.
pub const MAX_SERVICES: usize = 64;
/// The PATH services get unless their list sets one.
pub const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A service list zos-init refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the service list is not a list of services: {0}")]
    Format(String),
    #[error("the service list holds {0} services, at most {MAX_SERVICES} are allowed")]
    TooMany(usize),
    #[error("service name {0:?} must be 1 to 32 of a-z, 0-9 and '-'")]
    Name(String),
    #[error("service {0} is listed twice")]
    Duplicate(String),
    #[error("service {0} must run an absolute path")]
    Exec(String),
}

/// Parses and checks a service list (JSON, a list of [`Service`]).
pub fn parse_list(json: &[u8]) -> Result<Vec<Service>, ListError> {
    let list: Vec<Service> =
        serde_json::from_slice(json).map_err(|e| ListError::Format(e.to_string()))?;
    if list.len() > MAX_SERVICES {
        return Err(ListError::TooMany(list.len()));
    }
    let mut names = std::collections::BTreeSet::new();
    for s in &list {
        let ok = !s.name.is_empty()
            && s.name.len() <= 32
            && s.name
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
        if !ok {
            return Err(ListError::Name(s.name.chars().take(40).collect()));
        }
        if !names.insert(s.name.clone()) {
            return Err(ListError::Duplicate(s.name.clone()));
        }
        if !s.exec.first().is_some_and(|p| p.starts_with('/')) {
            return Err(ListError::Exec(s.name.clone()));
        }
    }
    Ok(list)
}

/// How the supervisor behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The first restart delay; it doubles on each failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a service has after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// Watch the ACPI power button (off in tests).
    pub power_button: bool,
    /// Where each event is appended as a JSON line (for tests and the boot benchmark).
    pub events: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            grace: Duration::from_secs(10),
            power_button: true,
            events: None,
        }
    }
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        service: String,
        pid: i32,
    },
    /// Could not be started; retried after `restart_ms`.
    SpawnFailed {
        service: String,
        error: String,
        restart_ms: u64,
    },
    /// Ended by itself; restarted after `restart_ms`.
    Exited {
        service: String,
        pid: i32,
        status: String,
        restart_ms: u64,
    },
    /// An orphan (not a service) was reaped.
    Reaped {
        pid: i32,
        status: String,
    },
    StopRequested {
        signal: String,
    },
    /// A service stopped on power-off: `terminated` after SIGTERM or `killed`.
    Stopped {
        service: String,
        how: String,
    },
    /// Processes left after the services stopped were signalled.
    Swept {
        killed: bool,
    },
    Done,
}

struct Running {
    service: Service,
    pid: Option<Pid>,
    backoff: Backoff,
    /// When the next start is due (while it is down).
    due: Option<Instant>,
}

struct Supervisor {
    services: Vec<Running>,
    options: Options,
    events: Option<File>,
    log: Vec<Event>,
    /// How much of `log` was counted in the exits.
    counted: usize,
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// The signals that ask PID 1 to power off: SIGPWR (what the power button watcher sends),
/// SIGTERM, and SIGINT (ctrl-alt-del, which the kernel sends to PID 1 once
/// `set_cad_enabled(false)` told it not to reboot at once).
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGPWR, Signal::SIGTERM, Signal::SIGINT];

/// The signals the loop takes with `sigtimedwait`.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in STOP_SIGNALS {
        set.add(s);
    }
    set
}

/// Waits up to `timeout` for one of `set` (blocked); answers it.
pub fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the set and the timespec are valid for the call; no siginfo is asked.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if r > 0 {
        Signal::try_from(r).ok()
    } else {
        None
    }
}

impl Supervisor {
    fn record(&mut self, e: Event) {
        match &e {
            Event::Started { service, pid } => tracing::info!(service, pid, "service started"),
            Event::SpawnFailed {
                service,
                error,
                restart_ms,
            } => {
                tracing::error!(service, restart_ms, "cannot start service: {error}")
            }
            Event::Exited {
                service,
                pid,
                status,
                restart_ms,
            } => {
                tracing::warn!(
                    service,
                    pid,
                    restart_ms,
                    "service ended ({status}): restarting"
                )
            }
            Event::Reaped { pid, status } => tracing::debug!(pid, status, "orphan reaped"),
            Event::StopRequested { signal } => tracing::info!(signal, "power-off requested"),
            Event::Stopped { service, how } => tracing::info!(service, how, "service stopped"),
            Event::Swept { killed } => tracing::info!(killed, "remaining processes stopped"),
            Event::Done => {}
        }
        if let Some(f) = &mut self.events
            && let Ok(mut line) = serde_json::to_vec(&e)
        {
            line.push(b'\n');
            let _ = f.write_all(&line);
        }
        self.log.push(e);
    }

    fn spawn(&mut self, i: usize) {
        let s = self.services[i].service.clone();
        let mut cmd = Command::new(&s.exec[0]);
        cmd.args(&s.exec[1..])
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&s.env)
            .current_dir("/")
            .stdin(Stdio::null());
        if let Some(log) = &s.log {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                Ok(f) => {
                    if let Ok(f2) = f.try_clone() {
                        cmd.stdout(f2);
                    }
                    cmd.stderr(f);
                }
                Err(e) => {
                    tracing::warn!(service = s.name, log = %log.display(), error = %e, "cannot open the log: output to the console")
                }
            }
        }
        own_session_default_signals(&mut cmd);
        if s.console {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/console")
            {
                Ok(c) => {
                    if let (Ok(a), Ok(b)) = (c.try_clone(), c.try_clone()) {
                        cmd.stdin(a).stdout(b).stderr(c);
                    }
                    // SAFETY: ioctl is async-signal-safe; fd 0 is the console, the child leads
                    // its own session (set up just before).
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::ioctl(0, libc::TIOCSCTTY, 1);
                            Ok(())
                        });
                    }
                }
                Err(e) => tracing::warn!(service = s.name, error = %e, "cannot open /dev/console"),
            }
        }
        let now = Instant::now();
        match cmd.spawn() {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                // The child is reaped by the loop, not through `child`.
                drop(child);
                let r = &mut self.services[i];
                r.pid = Some(pid);
                r.due = None;
                r.backoff.started();
                self.record(Event::Started {
                    service: s.name,
                    pid: pid.as_raw(),
                });
            }
            Err(e) => {
                let delay = self.services[i].backoff.failed(now);
                self.services[i].due = Some(now + delay);
                self.record(Event::SpawnFailed {
                    service: s.name,
                    error: e.to_string(),
                    restart_ms: delay.as_millis() as u64,
                });
            }
        }
    }

    /// Reaps every child that ended; services that ended get a restart scheduled unless
    /// `stopping`.
    fn reap(&mut self, stopping: bool) -> bool {
        let mut any = false;
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return any,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid");
                    return any;
                }
                Ok(s) => s,
            };
            let Some(pid) = status.pid() else { continue };
            if !matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                continue;
            }
            any = true;
            let now = Instant::now();
            match self.services.iter().position(|r| r.pid == Some(pid)) {
                Some(i) => {
                    self.services[i].pid = None;
                    let restart_ms = if stopping {
                        0
                    } else {
                        let r = &mut self.services[i];
                        r.backoff.running(now);
                        let delay = r.backoff.failed(now);
                        r.due = Some(now + delay);
                        delay.as_millis() as u64
                    };
                    let service = self.services[i].service.name.clone();
                    if !stopping {
                        self.record(Event::Exited {
                            service,
                            pid: pid.as_raw(),
                            status: describe(&status),
                            restart_ms,
                        });
                    }
                }
                None => self.record(Event::Reaped {
                    pid: pid.as_raw(),
                    status: describe(&status),
                }),
            }
        }
    }

    /// Adds the exits recorded since the last call to `exits`.
    fn count_exits(&mut self, exits: &Exits) {
        let mut counts = exits.lock().unwrap_or_else(|p| p.into_inner());
        for e in &self.log[self.counted..] {
            if let Event::Exited { service, .. } = e {
                *counts.entry(service.clone()).or_default() += 1;
            }
        }
        self.counted = self.log.len();
    }

    fn serve(&mut self, r: Request, exits: &Exits) {
        match r {
            Request::Replace {
                services,
                between,
                reply,
            } => {
                self.count_exits(exits);
                for i in (0..self.services.len()).rev() {
                    if !self.services[i].service.console {
                        self.stop_service(i);
                    }
                }
                self.services.retain(|r| r.service.console);
                let answer = between();
                let first = self.services.len();
                {
                    let mut counts = exits.lock().unwrap_or_else(|p| p.into_inner());
                    for s in &services {
                        counts.insert(s.name.clone(), 0);
                    }
                }
                for service in services {
                    self.services.push(Running {
                        service,
                        pid: None,
                        backoff: Backoff::new(self.options.backoff_min, self.options.backoff_max),
                        due: None,
                    });
                }
                for i in first..self.services.len() {
                    self.spawn(i);
                }
                self.counted = self.log.len();
                let _ = reply.send(answer);
            }
        }
    }

    fn stop_service(&mut self, i: usize) {
        let Some(pid) = self.services[i].pid else {
            return;
        };
        let name = self.services[i].service.name.clone();
        let group = Pid::from_raw(-pid.as_raw());
        let _ = kill(group, Signal::SIGTERM);
        let how = if self.wait_gone(i, self.options.grace) {
            "terminated"
        } else {
            let _ = kill(group, Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
            self.wait_gone(i, Duration::from_secs(5));
            "killed"
        };
        self.record(Event::Stopped {
            service: name,
            how: how.into(),
        });
    }

    fn wait_gone(&mut self, i: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.reap(true);
            if self.services[i].pid.is_none() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after the grace, to every process left but PID 1; reaps them.
    fn sweep(&mut self) {
        let me = nix::unistd::getpid();
        let others = || -> bool {
            std::fs::read_dir("/proc")
                .map(|d| {
                    d.flatten().any(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.parse::<i32>().ok())
                            .is_some_and(|p| p != me.as_raw() && is_our_process(p))
                    })
                })
                .unwrap_or(false)
        };
        if !others() {
            self.record(Event::Swept { killed: false });
            return;
        }
        let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
        let deadline = Instant::now() + self.options.grace;
        let mut killed = false;
        loop {
            self.reap(true);
            if !others() {
                break;
            }
            if Instant::now() >= deadline {
                if killed {
                    break;
                }
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reap(true);
        self.record(Event::Swept { killed });
    }
}

/// Whether `pid` is a user process (kernel threads have an empty command line).
fn is_our_process(pid: i32) -> bool {
    let mut s = String::new();
    File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_ok_and(|n| n > 0)
}

/// Makes `cmd` start in its own session with no signal blocked and every signal at its default
/// disposition: the mask and ignored signals survive exec, and PID 1 blocks the ones it takes
/// with `sigtimedwait` (and may have inherited ignored ones).
pub fn own_session_default_signals(cmd: &mut Command) {
    // SAFETY: setsid, sigemptyset, sigprocmask and signal are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            for sig in 1..libc::SIGRTMIN() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
}

/// Stops every process but this one (SIGTERM, SIGKILL after `grace`) and reaps them: the
/// power-off path when no service was started yet.
pub fn stop_everything(grace: Duration) {
    let mut sup = Supervisor {
        services: Vec::new(),
        options: Options {
            grace,
            ..Options::default()
        },
        events: None,
        log: Vec::new(),
        counted: 0,
    };
    sup.sweep();
}

/// Reaps every child that has ended (outside the supervisor loop); answers how many.
pub fn reap_orphans() -> usize {
    let mut n = 0;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return n,
            Err(Errno::EINTR) => continue,
            Err(_) => return n,
            Ok(_) => n += 1,
        }
    }
}

/// Blocks the signals the loop takes, in the calling thread (and threads it starts later).
pub fn block_signals() {
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None);
}

/// Supervises `services` until a stop signal, then stops everything. Answers the events.
/// Call [`block_signals`] first, before any thread is started.
pub fn run(services: Vec<Service>, options: Options) -> Vec<Event> {
    run_with(services, options, None)
}

/// A change asked of the running supervisor by another thread (the upgrade agent).
pub enum Request {
    /// Stops every service but the console ones (last started first: SIGTERM to its process
    /// group, SIGKILL after the grace), runs `between`, then starts `services` in their place
    /// (the console ones keep running). The services are started whatever `between` answers;
    /// its answer is sent on `reply`.
    Replace {
        services: Vec<Service>,
        between: Box<dyn FnOnce() -> Result<(), String> + Send>,
        reply: std::sync::mpsc::Sender<Result<(), String>>,
    },
}

/// How many times each service ended by itself since it was (re)placed.
pub type Exits = std::sync::Arc<std::sync::Mutex<BTreeMap<String, u32>>>;

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Replace { services, .. } => f
                .debug_struct("Replace")
                .field("services", services)
                .finish_non_exhaustive(),
        }
    }
}

/// What another thread may ask of and learn from the supervisor.
#[derive(Debug)]
pub struct Control {
    pub requests: std::sync::mpsc::Receiver<Request>,
    pub exits: Exits,
}

/// [`run`], taking [`Request`]s from `control` between two turns of the loop.
pub fn run_with(services: Vec<Service>, options: Options, control: Option<Control>) -> Vec<Event> {
    block_signals();
    let events = options.events.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    if options.power_button {
        power_button::watch(Path::new("/dev/input"), Path::new("/sys/class/input"));
    }
    let mut sup = Supervisor {
        services: services
            .into_iter()
            .map(|service| Running {
                service,
                pid: None,
                backoff: Backoff::new(options.backoff_min, options.backoff_max),
                due: None,
            })
            .collect(),
        options,
        events,
        log: Vec::new(),
        counted: 0,
    };
    for i in 0..sup.services.len() {
        sup.spawn(i);
    }
    let set = handled_signals();
    let stop = loop {
        sup.reap(false);
        let now = Instant::now();
        for i in 0..sup.services.len() {
            let r = &mut sup.services[i];
            if r.pid.is_some() {
                r.backoff.running(now);
            } else if r.due.is_some_and(|d| now >= d) {
                sup.spawn(i);
            }
        }
        // Sleep until a signal or the next restart (at most a second).
        let now = Instant::now();
        let wake = sup
            .services
            .iter()
            .filter_map(|r| r.due)
            .map(|d| d.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(if control.is_some() {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(1)
            });
        if let Some(c) = &control {
            sup.count_exits(&c.exits);
            while let Ok(r) = c.requests.try_recv() {
                sup.serve(r, &c.exits);
            }
        }
        match wait_signal(&set, wake) {
            Some(Signal::SIGCHLD) | None => {}
            Some(s) => break s,
        }
    };
    sup.record(Event::StopRequested {
        signal: stop.to_string(),
    });
    for i in (0..sup.services.len()).rev() {
        sup.stop_service(i);
    }
    sup.sweep();
    sup.record(Event::Done);
    sup.log
}

/// The ACPI power button, read from the input devices.
pub mod power_button {
    use super::*;

    /// `struct input_event` on 64-bit: time (16 bytes), type, code (u16 each), value (i32).
    const EVENT_SIZE: usize = 24;
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;

    /// Whether one `input_event` record is a press of the power key.
    pub fn is_power_press(ev: &[u8]) -> bool {
        if ev.len() != EVENT_SIZE {
            return false;
        }
        let ty = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        ty == EV_KEY && code == KEY_POWER && value == 1
    }

    /// The event devices whose name says power button.
    pub fn devices(dev_input: &Path, sys_input: &Path) -> Vec<PathBuf> {
        let Ok(dir) = std::fs::read_dir(sys_input) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if !name.starts_with("event") {
                    return None;
                }
                let dev_name = std::fs::read_to_string(e.path().join("device/name")).ok()?;
                dev_name
                    .to_ascii_lowercase()
                    .contains("power button")
                    .then(|| dev_input.join(name))
            })
            .collect()
    }

    /// Starts one thread per power button that sends SIGPWR to this process on a press.
    pub fn watch(dev_input: &Path, sys_input: &Path) {
        for dev in devices(dev_input, sys_input) {
            let Ok(mut f) = File::open(&dev) else {
                continue;
            };
            tracing::info!(device = %dev.display(), "watching the power button");
            let _ = std::thread::Builder::new()
                .name("power-button".into())
                .spawn(move || {
                    let mut ev = [0u8; EVENT_SIZE];
                    while f.read_exact(&mut ev).is_ok() {
                        if is_power_press(&ev) {
                            tracing::info!("power button pressed");
                            let _ = kill(nix::unistd::getpid(), Signal::SIGPWR);
                        }
                    }
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_lists_are_checked() {
        let ok = br#"[{"name":"zosd","exec":["/usr/bin/zosd","--config","/etc/zos/zosd.yaml"],"env":{"RUST_LOG":"info"}},{"name":"flist-cache","exec":["/usr/bin/x"],"log":"/var/log/x.log"}]"#;
        let l = parse_list(ok).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].env["RUST_LOG"], "info");
        for (json, want) in [
            (&b"{}"[..], "not a list"),
            (
                br#"[{"name":"a","exec":["/x"],"user":"root"}]"#,
                "not a list",
            ),
            (br#"[{"name":"A","exec":["/x"]}]"#, "service name"),
            (br#"[{"name":"","exec":["/x"]}]"#, "service name"),
            (
                br#"[{"name":"a","exec":["/x"]},{"name":"a","exec":["/y"]}]"#,
                "twice",
            ),
            (br#"[{"name":"a","exec":["sh"]}]"#, "absolute path"),
            (br#"[{"name":"a","exec":[]}]"#, "absolute path"),
        ] {
            let e = parse_list(json).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn a_power_key_press_is_recognised() {
        let mut ev = [0u8; 24];
        ev[16..18].copy_from_slice(&1u16.to_ne_bytes());
        ev[18..20].copy_from_slice(&116u16.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(power_button::is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes()); // release
        assert!(!power_button::is_power_press(&ev));
        assert!(!power_button::is_power_press(&ev[..20]));
    }

    #[test]
    fn power_buttons_are_found_by_name() {
        let d = tempfile::tempdir().unwrap();
        for (ev, name) in [("event0", "Power Button\n"), ("event1", "AT Keyboard\n")] {
            std::fs::create_dir_all(d.path().join(ev).join("device")).unwrap();
            std::fs::write(d.path().join(ev).join("device/name"), name).unwrap();
        }
        assert_eq!(
            power_button::devices(Path::new("/dev/input"), d.path()),
            [PathBuf::from("/dev/input/event0")]
        );
    }
}
