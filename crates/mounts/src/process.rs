//! The real flist manager: one `zos-flist-mount` process per mount, recorded in a state file.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use zos_flist::hub::{DEFAULT_MAX_FLIST_BYTES, fetch_flist};
use zos_flist::mount::is_mount_point;
use zos_runtime::supervise::{self, Detach, Marker};
use zos_types::capacity::GIB;

use super::state::{Entry, STATE_FILE, State};
use super::{FlistError, FlistManager, MountInfo, Reconciled, check_name};

/// Name of the mount process binary.
pub const MOUNT_BINARY: &str = "zos-flist-mount";

/// Settings of [`ProcessFlists`].
#[derive(Debug, Clone)]
pub struct FlistConfig {
    /// The flist state directory: `mounts.json`, `flists/<sha256>.fl`, `cache/`, `logs/`.
    pub state_dir: PathBuf,
    /// Where mount points are made: `<mount_root>/<prefix>-<name>` ([`super::global_name`]).
    pub mount_root: PathBuf,
    /// The node's prefix (empty on real hardware).
    pub prefix: String,
    /// Block stores every mount reads first (the node's hub), before the flist's own routes.
    /// Empty: the flist's routes only.
    pub stores: Vec<String>,
    /// Size limit of the shared block cache, in bytes.
    pub cache_bytes: u64,
    /// The `zos-flist-mount` binary.
    pub mount_binary: PathBuf,
    /// Largest flist file downloaded (FL or legacy; kept as `<sha256>.fl` either way).
    pub max_flist_bytes: u64,
    /// How long a mount process may take to say it is ready.
    pub ready_timeout: Duration,
    /// How long a mount process may take to stop after SIGTERM before it is killed.
    pub stop_timeout: Duration,
}

impl FlistConfig {
    /// Defaults for a node keeping its state in `node_state_dir` (the flist part goes to its
    /// `flist/` directory) and reading blocks from the hub of the grid at `grid`.
    pub fn new(node_state_dir: &Path, grid: &str, prefix: &str) -> Self {
        Self {
            state_dir: node_state_dir.join("flist"),
            mount_root: PathBuf::from("/run/zos-flist"),
            prefix: prefix.into(),
            stores: vec![format!(
                "{}{}/blocks",
                grid.trim_end_matches('/'),
                zos_flist::hub::HUB_PATH
            )],
            cache_bytes: 10 * GIB,
            mount_binary: default_mount_binary(),
            max_flist_bytes: DEFAULT_MAX_FLIST_BYTES,
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// `$ZOS_FLIST_MOUNT`, else `zos-flist-mount` beside the running executable, else the one on
/// `PATH`.
pub fn default_mount_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ZOS_FLIST_MOUNT").filter(|p| !p.is_empty()) {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(MOUNT_BINARY)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(MOUNT_BINARY))
}

/// The real [`FlistManager`].
#[derive(Debug)]
pub struct ProcessFlists {
    config: FlistConfig,
    lock: tokio::sync::Mutex<()>,
    /// Which of a flist's own routes a mount may read from (none: every supported one).
    url_policy: Option<super::FlistUrlPolicy>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FlistError {
    let path = path.to_owned();
    move |source| FlistError::Io { what, path, source }
}

impl ProcessFlists {
    /// Prepares the state directory and reads the record (refusing one from a newer zosd).
    /// Nothing is started: call [`FlistManager::reconcile`] for that.
    pub fn new(config: FlistConfig) -> Result<Self, FlistError> {
        for d in [
            config.state_dir.clone(),
            config.state_dir.join("flists"),
            config.state_dir.join("cache"),
            config.state_dir.join("logs"),
            config.mount_root.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(io("cannot create", &d))?;
        }
        let me = Self {
            config,
            lock: tokio::sync::Mutex::new(()),
            url_policy: None,
        };
        State::load(&me.state_path())?;
        Ok(me)
    }

    /// The same manager, reading a flist's own block routes only from hosts `policy` allows
    /// (a tenant's flist names its routes: without this a mount would fetch from any host, or
    /// read a host directory through a `dir://` route).
    pub fn with_url_policy(mut self, policy: super::FlistUrlPolicy) -> Self {
        self.url_policy = Some(policy);
        self
    }

    /// The settings.
    pub fn config(&self) -> &FlistConfig {
        &self.config
    }

    /// Where the mount `name` is (or would be) mounted.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.config
            .mount_root
            .join(super::global_name(&self.config.prefix, name))
    }

    /// The shared block cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.config.state_dir.join("cache")
    }

    fn state_path(&self) -> PathBuf {
        self.config.state_dir.join(STATE_FILE)
    }

    fn flists_dir(&self) -> PathBuf {
        self.config.state_dir.join("flists")
    }

    fn flist_file(&self, sha256: &str) -> PathBuf {
        self.flists_dir().join(format!("{sha256}.fl"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.config
            .state_dir
            .join("logs")
            .join(format!("{name}.log"))
    }

    fn load(&self) -> Result<State, FlistError> {
        State::load(&self.state_path())
    }

    fn save(&self, st: &State) -> Result<(), FlistError> {
        st.save(&self.state_path())
    }

    async fn mount_inner(
        &self,
        name: &str,
        url: &str,
        rw_dir: Option<&Path>,
    ) -> Result<MountInfo, FlistError> {
        check_name(name)?;
        if let Some(rw) = rw_dir {
            check_rw_dir(name, rw)?;
        }
        let _g = self.lock.lock().await;
        let mut st = self.load()?;
        if let Some(e) = st.mounts.get(name).cloned() {
            if e.url != url || e.rw_dir.as_deref() != rw_dir {
                let existing = match &e.rw_dir {
                    Some(rw) => format!("flist {} writable in {}", e.url, rw.display()),
                    None => format!("flist {} read-only", e.url),
                };
                return Err(FlistError::Conflict {
                    name: name.into(),
                    existing,
                });
            }
            if let Some(pid) = self.serving(&e) {
                return Ok(Entry {
                    pid: Some(pid),
                    ..e
                }
                .info(name));
            }
            let (pid, _) = self.start(name, &e).await?;
            let e = Entry {
                pid: Some(pid),
                ..e
            };
            st.mounts.insert(name.into(), e.clone());
            self.save(&st)?;
            return Ok(e.info(name));
        }

        let fetched = fetch_flist(url, &self.flists_dir(), self.config.max_flist_bytes)
            .await
            .map_err(|source| FlistError::Fetch {
                url: url.into(),
                source: Box::new(source),
            })?;
        let mut entry = Entry {
            url: url.into(),
            sha256: fetched.sha256,
            mountpoint: self.mountpoint(name),
            rw_dir: rw_dir.map(Path::to_path_buf),
            pid: None,
        };
        // Record the intent first: a crash from here on leaves a record that reconcile finishes.
        st.mounts.insert(name.into(), entry.clone());
        self.save(&st)?;
        match self.start(name, &entry).await {
            Ok((pid, _)) => {
                entry.pid = Some(pid);
                st.mounts.insert(name.into(), entry.clone());
                self.save(&st)?;
                tracing::info!(
                    flist_mount = name,
                    url,
                    sha256 = %entry.sha256,
                    pid,
                    mountpoint = %entry.mountpoint.display(),
                    writable = rw_dir.is_some(),
                    "flist mounted"
                );
                Ok(entry.info(name))
            }
            Err(e) => {
                st.mounts.remove(name);
                self.save(&st)?;
                self.forget(name, &entry, &st);
                Err(e)
            }
        }
    }

    /// The pid serving `e`, if its recorded process still serves its mount point.
    fn serving(&self, e: &Entry) -> Option<i32> {
        let pid = e.pid?;
        (self.is_mount_process(pid, &e.mountpoint) && is_mount_point(&e.mountpoint)).then_some(pid)
    }

    /// What the command line of the mount process serving `mountpoint` shows.
    fn marker(&self, mountpoint: &Path) -> Marker {
        let binary = self
            .config
            .mount_binary
            .file_name()
            .unwrap_or(OsStr::new(MOUNT_BINARY));
        Marker::program(binary).arg("--flist").last_arg(mountpoint)
    }

    /// Whether `pid` is a live (not zombie) mount process serving `mountpoint`.
    fn is_mount_process(&self, pid: i32, mountpoint: &Path) -> bool {
        supervise::alive(pid, &self.marker(mountpoint))
    }

    /// A mount process serving `mountpoint` that the record may have lost (found in /proc).
    fn find_mount_process(&self, mountpoint: &Path) -> Option<i32> {
        supervise::find(&self.marker(mountpoint))
            .first()
            .map(|(pid, _)| *pid)
    }

    /// Starts the mount process of `e`, or adopts one that already serves its mount point.
    /// Returns its pid and whether it was adopted.
    async fn start(&self, name: &str, e: &Entry) -> Result<(i32, bool), FlistError> {
        let mp = &e.mountpoint;
        if let Some(pid) = self.find_mount_process(mp) {
            if is_mount_point(mp) {
                tracing::info!(flist_mount = name, pid, "adopting a running mount process");
                return Ok((pid, true));
            }
            supervise::stop(pid, &self.marker(mp), self.config.stop_timeout).await;
        }
        detach_leftovers(e);
        std::fs::create_dir_all(mp).map_err(io("cannot create mount point", mp))?;
        let flist = self.fetch_recorded_flist(name, e).await?;
        let mut cmd = self.mount_command(name, e, &flist).await?;
        let log_path = self.log_path(name);
        Detach::new(&log_path)
            .keep_stdout()
            .apply(cmd.as_std_mut())
            .map_err(io("cannot open log", &log_path))?;
        cmd.stdout(Stdio::piped()).kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| FlistError::Process {
            name: name.into(),
            detail: format!("cannot start {}: {e}", self.config.mount_binary.display()),
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        self.await_ready(name, e, &mut child, &log_path).await?;
        // The child runs on alone; tokio reaps it if it ends while we run.
        drop(child);
        Ok((pid, false))
    }

    /// The flist file of `e`, fetched again when it is not kept; content that no longer
    /// matches the recorded hash is refused.
    async fn fetch_recorded_flist(&self, name: &str, e: &Entry) -> Result<PathBuf, FlistError> {
        let flist = self.flist_file(&e.sha256);
        if !flist.is_file() {
            let f = fetch_flist(&e.url, &self.flists_dir(), self.config.max_flist_bytes)
                .await
                .map_err(|source| FlistError::Fetch {
                    url: e.url.clone(),
                    source: Box::new(source),
                })?;
            if f.sha256 != e.sha256 {
                return Err(FlistError::Changed {
                    name: name.into(),
                    url: e.url.clone(),
                    recorded: e.sha256.clone(),
                    got: f.sha256,
                });
            }
        }
        Ok(flist)
    }

    /// The mount process's command line for `e`: the flist, the cache, the stores, the
    /// writable layer and the name /proc/mounts shows.
    async fn mount_command(
        &self,
        name: &str,
        e: &Entry,
        flist: &Path,
    ) -> Result<tokio::process::Command, FlistError> {
        let mut cmd = tokio::process::Command::new(&self.config.mount_binary);
        cmd.arg("--flist")
            .arg(flist)
            .arg("--cache")
            .arg(self.cache_dir())
            .arg("--cache-size")
            .arg(self.config.cache_bytes.to_string());
        // With a policy the stores are always explicit, so the mount process never opens a
        // route the policy did not pass.
        if !self.config.stores.is_empty() || self.url_policy.is_some() {
            for s in self.stores_for(name, flist).await? {
                cmd.arg("--store").arg(s);
            }
        }
        if let Some(rw) = &e.rw_dir {
            cmd.arg("--rw-dir").arg(rw);
        }
        // The source column of /proc/mounts names the node and the mount.
        cmd.arg("--fsname").arg(format!(
            "flist:{}",
            super::global_name(&self.config.prefix, name)
        ));
        cmd.arg(&e.mountpoint);
        Ok(cmd)
    }

    /// Waits for the mount process to say it serves the mount point; one that ends first or
    /// is not ready in time is killed, its leftovers detached, and the error names its log.
    async fn await_ready(
        &self,
        name: &str,
        e: &Entry,
        child: &mut tokio::process::Child,
        log_path: &Path,
    ) -> Result<(), FlistError> {
        let stdout = child.stdout.take().expect("stdout is piped");
        let want = format!("ready {}", e.mountpoint.display());
        let ready = tokio::time::timeout(self.config.ready_timeout, async {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim_end() == want {
                    return true;
                }
            }
            false
        })
        .await;
        if let Ok(true) = ready {
            return Ok(());
        }
        let _ = child.start_kill();
        let status = child.wait().await.ok();
        detach_leftovers(e);
        let why = match ready {
            Err(_) => format!("not ready after {} s", self.config.ready_timeout.as_secs()),
            _ => match status {
                Some(s) => format!("exited ({s}) before mounting"),
                None => "exited before mounting".into(),
            },
        };
        Err(FlistError::Process {
            name: name.into(),
            detail: format!("{why}; log {}: {}", log_path.display(), log_tail(log_path)),
        })
    }

    /// The node's stores, then the flist's own route URLs that a mount process can open and
    /// the policy allows. A legacy `.flist` reads its blocks only from the store it names (no
    /// hub holds them): when the policy refuses every one of its routes, the mount is refused
    /// with the reason rather than made to fail on every read.
    async fn stores_for(&self, name: &str, flist: &Path) -> Result<Vec<String>, FlistError> {
        let mut out = self.config.stores.clone();
        let path = flist.to_owned();
        let opened = tokio::task::spawn_blocking(move || {
            zos_flist::Flist::open_any(&path).map(|f| (f.format(), f.routes().to_vec()))
        })
        .await
        .ok()
        .and_then(Result::ok);
        let (format, routes) = opened.unwrap_or((zos_flist::Format::Fl, Vec::new()));
        let mut refused = Vec::new();
        let mut usable = 0;
        for r in routes {
            let supported = [
                "dir://", "http://", "https://", "s3://", "s3s://", "redis://", "zdb://",
            ]
            .iter()
            .any(|s| r.url.starts_with(s));
            if !supported {
                continue;
            }
            match self.route_refusal(&r.url).await {
                None => {
                    usable += 1;
                    if !out.contains(&r.url) {
                        out.push(r.url);
                    }
                }
                Some(why) => refused.push(why),
            }
        }
        // A legacy flist's blocks are only on its own store; and with a policy, no store at all
        // would let the mount process fall back to the flist's routes unchecked.
        let legacy_unreadable = format == zos_flist::Format::Legacy && usable == 0;
        if legacy_unreadable || (out.is_empty() && self.url_policy.is_some()) {
            return Err(FlistError::NoBlockStore {
                name: name.into(),
                detail: if refused.is_empty() {
                    "it names no block store a node can read (a legacy flist names its own \
                     0-db store in its metadata)"
                        .into()
                } else {
                    refused.join("; ")
                },
            });
        }
        Ok(out)
    }

    /// Whether a mount may read from a flist's own route `url`: always without a policy, else
    /// only an http(s) or Redis-protocol route on a host the policy allows.
    #[cfg(test)]
    async fn route_allowed(&self, url: &str) -> bool {
        self.route_refusal(url).await.is_none()
    }

    /// Why a mount may not read from a flist's own route `url` (logged), or `None` when it may.
    async fn route_refusal(&self, url: &str) -> Option<String> {
        let policy = self.url_policy.as_ref()?;
        match policy.check_route(url).await {
            Ok(()) => None,
            Err(e) => {
                let shown = zos_flist::store::strip_password(url);
                tracing::warn!(route = %shown, reason = %e, "flist route skipped");
                Some(e.to_string())
            }
        }
    }

    /// Removes what a mount leaves besides its record: its mount point directory, its log, and
    /// its .fl file when no other mount uses it.
    fn forget(&self, name: &str, e: &Entry, st: &State) {
        if let Err(err) = std::fs::remove_dir(&e.mountpoint)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(flist_mount = name, mountpoint = %e.mountpoint.display(), error = %err, "cannot remove mount point");
        }
        let _ = std::fs::remove_file(self.log_path(name));
        if !st.mounts.values().any(|o| o.sha256 == e.sha256) {
            let _ = std::fs::remove_file(self.flist_file(&e.sha256));
        }
    }
}

pub(crate) fn check_rw_dir(name: &str, rw: &Path) -> Result<(), FlistError> {
    let bad = |reason: &str| FlistError::RwDir {
        name: name.into(),
        path: rw.to_owned(),
        reason: reason.into(),
    };
    if !rw.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    if rw
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| b",:\\\n".contains(b))
    {
        return Err(bad(
            "cannot hold ',', ':', '\\' or newlines (overlay options)",
        ));
    }
    Ok(())
}

/// Detaches whatever is still mounted at the mount point (an overlay, a dead FUSE mount) and at
/// a writable mount's lower directory.
fn detach_leftovers(e: &Entry) {
    let mut paths = vec![e.mountpoint.clone()];
    if let Some(rw) = &e.rw_dir {
        paths.push(rw.join("lower"));
    }
    for p in paths {
        for _ in 0..8 {
            if !is_mount_point(&p) {
                break;
            }
            tracing::debug!(path = %p.display(), "detaching a leftover mount");
            if let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %err, "cannot detach a leftover mount");
                break;
            }
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

impl FlistManager for ProcessFlists {
    async fn mount(&self, name: &str, url: &str) -> Result<MountInfo, FlistError> {
        self.mount_inner(name, url, None).await
    }

    async fn mount_writable(
        &self,
        name: &str,
        url: &str,
        rw_dir: &Path,
    ) -> Result<MountInfo, FlistError> {
        self.mount_inner(name, url, Some(rw_dir)).await
    }

    async fn unmount(&self, name: &str) -> Result<(), FlistError> {
        check_name(name)?;
        let _g = self.lock.lock().await;
        let mut st = self.load()?;
        let entry = st.mounts.get(name).cloned().unwrap_or_else(|| Entry {
            url: String::new(),
            sha256: String::new(),
            mountpoint: self.mountpoint(name),
            rw_dir: None,
            pid: None,
        });
        let pid = entry
            .pid
            .filter(|p| self.is_mount_process(*p, &entry.mountpoint))
            .or_else(|| self.find_mount_process(&entry.mountpoint));
        if let Some(pid) = pid {
            let marker = self.marker(&entry.mountpoint);
            supervise::stop(pid, &marker, self.config.stop_timeout).await;
        }
        detach_leftovers(&entry);
        if is_mount_point(&entry.mountpoint) {
            return Err(FlistError::Process {
                name: name.into(),
                detail: format!("{} is still mounted", entry.mountpoint.display()),
            });
        }
        if st.mounts.remove(name).is_some() {
            self.save(&st)?;
            tracing::info!(flist_mount = name, sha256 = %entry.sha256, "flist unmounted");
        }
        self.forget(name, &entry, &st);
        Ok(())
    }

    async fn open_file(&self, name: &str, path: &str) -> Result<Option<File>, FlistError> {
        check_name(name)?;
        let entry = self
            .load()?
            .mounts
            .get(name)
            .cloned()
            .ok_or_else(|| FlistError::NotMounted { name: name.into() })?;
        let fl_path = self.flist_file(&entry.sha256);
        let rel = path.to_string();
        let opened = tokio::task::spawn_blocking(move || {
            let fl = zos_flist::Flist::open_any(&fl_path)
                .map_err(|e| super::OpenError::Metadata(Box::new(e)))?;
            super::open::open_checked(&fl, &entry.mountpoint, &rel)
        })
        .await
        .map_err(|e| FlistError::Process {
            name: name.into(),
            detail: format!("opening {path} panicked: {e}"),
        })?;
        opened.map_err(|source| FlistError::Open {
            name: name.into(),
            path: path.into(),
            source,
        })
    }

    async fn get(&self, name: &str) -> Result<Option<MountInfo>, FlistError> {
        Ok(self.load()?.mounts.get(name).map(|e| e.info(name)))
    }

    async fn list(&self) -> Result<Vec<MountInfo>, FlistError> {
        Ok(self.load()?.mounts.iter().map(|(n, e)| e.info(n)).collect())
    }

    async fn reconcile(&self) -> Result<Reconciled, FlistError> {
        let _g = self.lock.lock().await;
        let mut st = self.load()?;
        let mut out = Reconciled::default();
        let names: Vec<String> = st.mounts.keys().cloned().collect();
        for name in names {
            let e = st.mounts[&name].clone();
            if let Some(pid) = self.serving(&e) {
                tracing::debug!(flist_mount = %name, pid, "flist mount still served");
                out.adopted.push(name);
                continue;
            }
            match self.start(&name, &e).await {
                Ok((pid, adopted)) => {
                    if adopted {
                        out.adopted.push(name.clone());
                    } else {
                        tracing::info!(flist_mount = %name, pid, "flist mount remade");
                        out.remade.push(name.clone());
                    }
                    st.mounts.insert(
                        name,
                        Entry {
                            pid: Some(pid),
                            ..e
                        },
                    );
                }
                Err(err) => {
                    let why = zos_runtime::error_chain(&err);
                    tracing::warn!(flist_mount = %name, error = %why, "cannot remake flist mount");
                    st.mounts.insert(name.clone(), Entry { pid: None, ..e });
                    out.failed.push((name, why));
                }
            }
        }
        self.save(&st)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::BoxFuture;

    use super::*;
    use crate::{FarmFlistHosts, FlistUrlPolicy};

    struct Hosts;
    impl FarmFlistHosts for Hosts {
        fn hosts(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
            Box::pin(async { Ok(vec!["mirror.example".to_string()]) })
        }
    }

    /// A tenant's flist names its own block routes: one on an internal host, one a directory of
    /// the node. With the node's policy, a mount reads neither; the hub and the farm's hosts stay.
    #[tokio::test]
    async fn a_flists_routes_to_other_hosts_or_node_directories_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = FlistConfig::new(dir.path(), "http://127.0.0.1:1", "t");
        cfg.mount_root = dir.path().join("mnt");
        let policy = FlistUrlPolicy::new("http://127.0.0.1:1", Arc::new(Hosts)).unwrap();
        let open = ProcessFlists::new(cfg.clone()).unwrap();
        let guarded = ProcessFlists::new(cfg).unwrap().with_url_policy(policy);
        for (route, allowed) in [
            ("http://127.0.0.1:1/api/v1/hub/blocks", true),
            ("https://mirror.example/blocks", true),
            ("http://10.0.0.5:8080/blocks", false),
            ("dir:///var/lib/zos", false),
            ("s3://10.0.0.5:9000/bucket", false),
        ] {
            assert_eq!(guarded.route_allowed(route).await, allowed, "{route}");
            assert!(open.route_allowed(route).await, "{route} without a policy");
        }
    }

    /// With a policy, a mount process is never left to open a flist's routes itself: a node
    /// without stores of its own and a flist whose every route is refused is an error, not a
    /// mount process told nothing (which would read the flist's routes unchecked).
    #[tokio::test]
    async fn with_a_policy_and_no_store_left_the_mount_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = FlistConfig::new(dir.path(), "http://127.0.0.1:1", "t");
        cfg.mount_root = dir.path().join("mnt");
        cfg.stores.clear();
        let fl = dir.path().join("x.fl");
        let mut w = zos_flist::Writer::create(&fl).unwrap();
        w.root(&zos_flist::Attrs {
            mode: 0o040_755, // a directory, rwxr-xr-x
            uid: 0,
            gid: 0,
            size: 0,
            rdev: 0,
            ctime: 0,
            mtime: 0,
            target: None,
        })
        .unwrap();
        w.route(&zos_flist::Route::all("http://10.0.0.5:8080/blocks"))
            .unwrap();
        w.finish().unwrap();
        let policy = FlistUrlPolicy::new("http://127.0.0.1:1", Arc::new(Hosts)).unwrap();
        let guarded = ProcessFlists::new(cfg.clone())
            .unwrap()
            .with_url_policy(policy);
        let e = guarded.stores_for("vm", &fl).await.unwrap_err();
        assert!(
            matches!(e, FlistError::NoBlockStore { .. }) && e.to_string().contains("10.0.0.5"),
            "{e}"
        );
        // Without a policy nothing is checked: the process reads the flist's routes.
        let open = ProcessFlists::new(cfg).unwrap();
        assert_eq!(
            open.stores_for("vm", &fl).await.unwrap(),
            vec!["http://10.0.0.5:8080/blocks".to_string()]
        );
    }
}
