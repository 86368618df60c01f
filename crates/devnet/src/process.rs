//! Stopping processes and waiting for conditions, with the supervision of
//! [`zos_runtime::supervise`] (SIGTERM, then SIGKILL; never a PID alone).

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
