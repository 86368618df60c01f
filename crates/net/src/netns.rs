//! Network namespaces: named ones under `/run/netns` (as `ip netns` makes them), work done
//! inside one from a dedicated thread that has joined it, and commands started inside one.
//!
//! A thread that calls `setns` changes only its own namespace, so every piece of work in another
//! namespace runs on a fresh OS thread with its own single-threaded runtime and netlink socket;
//! zosd's runtime threads never change namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::NetworkError;

/// Where named namespaces are bound.
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace: the process's own (`Host(None)`) or one bound at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ns {
    /// The namespace zosd started in, or the one given as the node's host namespace.
    Host(Option<PathBuf>),
    /// A namespace under `/run/netns`.
    Named(String),
    /// A namespace bound elsewhere (a VM's or container's).
    Path(PathBuf),
}

impl Ns {
    /// The file to `setns` to, or `None` for the process's own namespace.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Ns::Host(p) => p.clone(),
            Ns::Named(n) => Some(Path::new(NETNS_DIR).join(n)),
            Ns::Path(p) => Some(p.clone()),
        }
    }

    /// Opens the namespace file (for moving links into it).
    pub fn open(&self) -> Result<File, NetworkError> {
        let p = self
            .path()
            .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
        File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetworkError::NoNamespace(self.label())
            } else {
                io("opening", p.display().to_string())(e)
            }
        })
    }

    /// A name for messages.
    pub fn label(&self) -> String {
        match self {
            Ns::Host(None) => "host".into(),
            Ns::Host(Some(p)) => format!("host ({})", p.display()),
            Ns::Named(n) => n.clone(),
            Ns::Path(p) => p.display().to_string(),
        }
    }
}

/// True when a namespace of that name is bound under `/run/netns`.
pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Every namespace name under `/run/netns` that starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn sys(op: &'static str, target: impl Into<String>) -> impl FnOnce(nix::Error) -> NetworkError {
    let target = target.into();
    move |e| NetworkError::System {
        op,
        target,
        source: std::io::Error::from(e),
    }
}

fn io(op: &'static str, target: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let target = target.into();
    move |source| NetworkError::System { op, target, source }
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so namespaces bound there
/// are seen by every mount namespace that shares it.
fn prepare_dir() -> Result<(), NetworkError> {
    std::fs::create_dir_all(NETNS_DIR).map_err(io("creating", NETNS_DIR))?;
    let shared = |p: &str| {
        nix::mount::mount(
            None::<&str>,
            p,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared(NETNS_DIR) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys("bind-mounting", NETNS_DIR))?;
            shared(NETNS_DIR).map_err(sys("sharing", NETNS_DIR))
        }
        Err(e) => Err(sys("sharing", NETNS_DIR)(e)),
    }
}

/// Makes the named namespace (with `lo` up) unless it exists. Answers whether it was made.
pub async fn create(name: &str) -> Result<bool, NetworkError> {
    if exists(name) {
        return Ok(false);
    }
    let ns = Ns::Named(name.to_string());
    let name = name.to_string();
    let made = run_thread(move || -> Result<(), NetworkError> {
        prepare_dir()?;
        let path = Path::new(NETNS_DIR).join(&name);
        File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("creating", path.display().to_string()))?;
        let bind = || -> Result<(), NetworkError> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unsharing", &name))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("binding", path.display().to_string()))
        };
        bind().inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })
    })
    .await;
    made?;
    in_netns(&ns, |h| async move { super::link::set_up(&h, "lo").await }).await?;
    Ok(true)
}

fn name_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Removes the named namespace; its interfaces go with it once no process is left inside.
/// Missing namespaces are fine.
pub async fn delete(name: &str) -> Result<(), NetworkError> {
    let path = name_path(name);
    if !path.exists() {
        return Ok(());
    }
    run_thread(move || {
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(sys("unmounting", path.display().to_string())(e)),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", path.display().to_string())(e)),
        }
    })
    .await
}

/// Runs blocking `f` on its own OS thread and answers its result.
async fn run_thread<T, F>(f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("zos-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(io("starting a thread for", "netns"))?;
    rx.await
        .map_err(|_| NetworkError::Internal("a namespace thread panicked".into()))?
}

/// Moves the calling thread into the namespace bound at `p`. A namespace being made is a plain
/// file for a moment (between its file's creation and its bind mount), which `setns` refuses
/// with EINVAL: that is tried again, the file opened anew, for up to a second.
fn join(p: &Path, label: &str) -> Result<(), NetworkError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let fd = File::open(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetworkError::NoNamespace(label.to_string())
            } else {
                io("opening", p.display().to_string())(e)
            }
        })?;
        match nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET) {
            Ok(()) => return Ok(()),
            Err(nix::Error::EINVAL) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(sys("joining", label.to_string())(e)),
        }
    }
}

/// Runs `f` with a netlink handle inside `ns`, on a dedicated thread that joined it.
///
/// `f` may also touch anything else that follows the calling thread's namespace: sockets it
/// opens, `/proc/sys/net`, tun devices.
pub async fn in_netns<T, F, Fut>(ns: &Ns, f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let path = ns.path();
    let label = ns.label();
    run_thread(move || {
        if let Some(p) = &path {
            join(p, &label)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting a runtime for", label.clone()))?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(io("opening netlink in", label.clone()))?;
            let task = tokio::spawn(conn);
            let r = f(handle).await;
            task.abort();
            r
        })
    })
    .await
}

/// Writes a sysctl under `/proc/sys/net` of `ns` (for example `ipv4/ip_forward`).
pub async fn sysctl(ns: &Ns, key: &str, value: &str) -> Result<(), NetworkError> {
    let key = key.to_string();
    let value = value.to_string();
    in_netns(ns, move |_| async move {
        let p = Path::new("/proc/sys/net").join(&key);
        std::fs::write(&p, value.as_bytes()).map_err(io("writing", p.display().to_string()))
    })
    .await
}

/// A command that starts `program` inside `ns` (its other namespaces are zosd's).
pub fn command(
    ns: &Ns,
    program: impl AsRef<std::ffi::OsStr>,
) -> Result<std::process::Command, NetworkError> {
    let mut cmd = std::process::Command::new(program);
    if let Some(p) = ns.path() {
        let fd = File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetworkError::NoNamespace(ns.label())
            } else {
                io("opening", p.display().to_string())(e)
            }
        })?;
        // SAFETY: setns is a plain system call, safe between fork and exec; `fd` lives in the
        // closure, which the command keeps until it is spawned.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
    }
    Ok(cmd)
}

/// Runs `program args…` inside `ns` with `input` on its stdin; answers its stdout.
pub async fn run(
    ns: &Ns,
    program: &Path,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, NetworkError> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;

    let mut std_cmd = command(ns, program)?;
    std_cmd.args(args);
    let describe = format!(
        "{} {}",
        program.display(),
        args.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    tracing::trace!(cmd = %describe, ns = %ns.label(), "run");
    let mut child = cmd.spawn().map_err(|source| NetworkError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(io("writing to", describe.clone()))?;
        drop(stdin);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(io("waiting for", describe.clone()))?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            cmd: describe,
            ns: ns.label(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
