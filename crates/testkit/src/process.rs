//! Processes started by tests, stopped when their guard goes, with the supervision of
//! [`zos_runtime::supervise`] (SIGTERM, then SIGKILL; never a PID alone).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use zos_runtime::supervise::{self, Marker};

/// True while a process (not a zombie) holds `pid`; an exited child of ours is reaped. For
/// assertions that a process is gone; to act on a process use a [`Marker`].
pub fn alive(pid: i32) -> bool {
    supervise::argv(pid).is_some()
}

/// SIGTERM, then SIGKILL once `grace` has passed; returns when the process is gone. The process
/// is the one holding `pid` now (its command line is the marker), so a process that takes the
/// PID over meanwhile is never signalled.
pub fn kill_and_wait(pid: i32, grace: Duration) {
    if let Some(argv) = supervise::argv(pid) {
        supervise::stop_blocking(
            pid,
            &Marker::exact(argv),
            grace.max(Duration::from_millis(1)),
        );
    }
}

/// A child process that is stopped when dropped.
#[derive(Debug)]
pub struct ProcessGuard {
    name: String,
    child: Option<Child>,
}

impl ProcessGuard {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &std::path::Path) -> std::io::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(child.id() as i32, grace);
            let _ = child.wait();
        }
    }

    /// Kills the process at once with SIGKILL (a crash, for tests).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Waits until `f` answers `Some`, polling every `every`, for at most `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
