//! Starting detached processes, stopping them and waiting for conditions, with the supervision
//! of [`zos_runtime::supervise`] (SIGTERM, then SIGKILL; never a PID alone).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{DevnetError, Result};

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

/// Starts `cmd` in its own process group with output to `log`, not waiting for it.
pub(crate) fn spawn_detached(mut cmd: Command, log: &Path) -> Result<i32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(DevnetError::io("opening log", log))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(
            out.try_clone()
                .map_err(DevnetError::io("opening log", log))?,
        )
        .stderr(out)
        .process_group(0)
        .spawn()
        .map_err(|source| DevnetError::Spawn {
            program: format!("{:?}", cmd.get_program()),
            source,
        })?;
    Ok(child.id() as i32)
}
