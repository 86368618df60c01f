//! zosd's side of the local channel with zos-init (`zos_types::release::channel`,
//! docs/upgrade.md): `node.json` once the node is registered, `health.json` whenever one of
//! its facts changes (registered with this version, uplink up, reconcile finished, the `ok`
//! workloads), and `check-release` when the uplink connects or the grid tells of a release of
//! this node's runmode (at most every [`CHECK_GAP`]). Each file is written atomically
//! (a temporary file renamed over it), so zos-init never reads half of one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use zos_runtime::error_chain;
use zos_types::release::channel::{CHECK_FILE, HEALTH_FILE, Health, NODE_FILE, NodeFile, RUN_DIR};

use crate::registrar::RegistrarStatus;

/// How often the facts are looked at, besides on a change of registration or uplink.
pub const EVERY: Duration = Duration::from_secs(2);
/// The least time between two `check-release` writes: a flood of release notices (which
/// anyone on the path to the grid could send) makes at most one check this often.
pub const CHECK_GAP: Duration = Duration::from_secs(10);

/// Where the channel is written: zos-init's runtime directory on a real node (no name
/// prefix); a node with a prefix (a namespace node beside others on one host, which no zos-init
/// upgrades) writes it in its state directory, so it goes when the node's state goes.
pub fn run_dir(prefix: &str, state_dir: &Path) -> PathBuf {
    if prefix.is_empty() {
        PathBuf::from(RUN_DIR)
    } else {
        state_dir.join("run")
    }
}

/// What the deployment engine tells of itself.
pub trait Workloads: Send + Sync {
    /// Whether jobs are still queued.
    fn jobs_pending(&self) -> Result<bool, String>;
    /// The workload ids whose result is `ok`.
    fn ok_workloads(&self) -> Result<BTreeSet<String>, String>;
}

impl Workloads for zos_provision::Engine {
    fn jobs_pending(&self) -> Result<bool, String> {
        zos_provision::Engine::jobs_pending(self).map_err(|e| e.message())
    }
    fn ok_workloads(&self) -> Result<BTreeSet<String>, String> {
        zos_provision::Engine::ok_workloads(self).map_err(|e| e.message())
    }
}

/// Why a file of the channel was not written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct WriteError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Writes `bytes` as `name` in `dir` atomically.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| WriteError {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The channel's writer: what was last written, so only changes are written again.
#[derive(Debug)]
pub struct Channel {
    dir: PathBuf,
    version: String,
    key: PathBuf,
    node_written: bool,
    uplink_was: bool,
    reconciled: bool,
    last: Option<Health>,
    /// A check is wanted (the uplink connected, a release notice came).
    check_wanted: bool,
    /// When `check-release` was last written.
    last_check: Option<std::time::Instant>,
    check_gap: Duration,
}

impl Channel {
    /// A writer into `dir` for zosd `version`, whose node key is `key`.
    pub fn new(dir: PathBuf, version: &str, key: PathBuf) -> Self {
        Self {
            dir,
            version: version.to_string(),
            key,
            node_written: false,
            uplink_was: false,
            reconciled: false,
            last: None,
            check_wanted: false,
            last_check: None,
            check_gap: CHECK_GAP,
        }
    }

    /// Asks zos-init for a release check (the grid told of a release): written at the next
    /// [`Channel::update`], or once [`CHECK_GAP`] passed since the last one.
    pub fn ask_check(&mut self) {
        self.check_wanted = true;
    }

    /// Writes what changed, given the registration, the uplink and the engine.
    pub fn update(
        &mut self,
        status: &RegistrarStatus,
        uplink: bool,
        engine: &dyn Workloads,
    ) -> Result<(), WriteError> {
        if let (false, Some(node_id), Some(twin_id)) =
            (self.node_written, status.node_id, status.twin_id)
        {
            let node = NodeFile {
                node_id,
                twin_id,
                key: self.key.clone(),
                version: self.version.clone(),
            };
            let bytes = serde_json::to_vec(&node).expect("the node file serializes");
            write_atomic(&self.dir, NODE_FILE, &bytes)?;
            self.node_written = true;
        }
        if uplink && !self.uplink_was {
            // An uplink (re)connected: a release may have come meanwhile.
            self.check_wanted = true;
        }
        self.uplink_was = uplink;
        let due = self
            .last_check
            .is_none_or(|t| t.elapsed() >= self.check_gap);
        if self.check_wanted && due {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            write_atomic(&self.dir, CHECK_FILE, now.to_string().as_bytes())?;
            self.check_wanted = false;
            self.last_check = Some(std::time::Instant::now());
        }
        if !self.reconciled {
            match engine.jobs_pending() {
                Ok(pending) => self.reconciled = !pending,
                Err(e) => warn!("cannot tell whether reconcile finished: {e}"),
            }
        }
        let ok = match engine.ok_workloads() {
            Ok(ok) => ok,
            Err(e) => {
                warn!("cannot list the ok workloads: {e}");
                return Ok(());
            }
        };
        let health = Health {
            version: self.version.clone(),
            registered: status.node_id.is_some(),
            uplink,
            reconciled: self.reconciled,
            ok,
        };
        if self.last.as_ref() != Some(&health) {
            let bytes = serde_json::to_vec(&health).expect("health serializes");
            write_atomic(&self.dir, HEALTH_FILE, &bytes)?;
            self.last = Some(health);
        }
        Ok(())
    }
}

/// Keeps the channel written until `stop`.
pub async fn follow(
    mut channel: Channel,
    mut status: watch::Receiver<RegistrarStatus>,
    mut uplink: watch::Receiver<bool>,
    release_notice: std::sync::Arc<tokio::sync::Notify>,
    engine: std::sync::Arc<dyn Workloads>,
    stop: CancellationToken,
) {
    let mut said = String::new();
    // A sender gone (its task ended) is not waited on again: the period alone wakes the loop.
    let (mut status_open, mut uplink_open) = (true, true);
    loop {
        let s = status.borrow_and_update().clone();
        let up = *uplink.borrow_and_update();
        if let Err(e) = channel.update(&s, up, engine.as_ref()) {
            let e = error_chain(&e);
            if e != said {
                warn!("the health channel with zos-init: {e}");
                said = e;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = status.changed(), if status_open => status_open = r.is_ok(),
            r = uplink.changed(), if uplink_open => uplink_open = r.is_ok(),
            _ = release_notice.notified() => channel.ask_check(),
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        pending: Mutex<bool>,
        ok: Mutex<BTreeSet<String>>,
    }

    impl Workloads for Fake {
        fn jobs_pending(&self) -> Result<bool, String> {
            Ok(*self.pending.lock().unwrap())
        }
        fn ok_workloads(&self) -> Result<BTreeSet<String>, String> {
            Ok(self.ok.lock().unwrap().clone())
        }
    }

    fn health(dir: &Path) -> Health {
        serde_json::from_slice(&std::fs::read(dir.join(HEALTH_FILE)).unwrap()).unwrap()
    }

    #[test]
    fn a_real_node_writes_where_zos_init_reads() {
        assert_eq!(run_dir("", Path::new("/var/x")), PathBuf::from("/run/zos"));
        assert_eq!(
            run_dir("zd1", Path::new("/var/x")),
            PathBuf::from("/var/x/run")
        );
    }

    #[test]
    fn the_channel_says_who_the_node_is_and_how_it_is() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run");
        let mut c = Channel::new(dir.clone(), "1.2.3", "/state/identity/node.key".into());
        let engine = Fake::default();
        *engine.pending.lock().unwrap() = true;
        let mut s = RegistrarStatus::default();

        // Not registered, reconcile running: said so; no node file yet.
        c.update(&s, false, &engine).unwrap();
        let h = health(&dir);
        assert_eq!(h.version, "1.2.3");
        assert!(!h.registered && !h.uplink && !h.reconciled);
        assert!(!dir.join(NODE_FILE).exists());
        assert!(!dir.join(CHECK_FILE).exists());

        // Registered, the uplink up, the queue drained, a workload ok.
        s.node_id = Some(7);
        s.twin_id = Some(12);
        *engine.pending.lock().unwrap() = false;
        engine.ok.lock().unwrap().insert("12-3-vm".into());
        c.update(&s, true, &engine).unwrap();
        let node: NodeFile =
            serde_json::from_slice(&std::fs::read(dir.join(NODE_FILE)).unwrap()).unwrap();
        assert_eq!(
            node,
            NodeFile {
                node_id: 7,
                twin_id: 12,
                key: "/state/identity/node.key".into(),
                version: "1.2.3".into(),
            }
        );
        let h = health(&dir);
        assert!(h.registered && h.uplink && h.reconciled);
        assert_eq!(h.ok, BTreeSet::from(["12-3-vm".to_string()]));
        assert!(
            dir.join(CHECK_FILE).exists(),
            "the uplink connecting asks for a check"
        );

        // Reconcile stays finished when later jobs queue; the uplink going down is said.
        *engine.pending.lock().unwrap() = true;
        std::fs::remove_file(dir.join(CHECK_FILE)).unwrap();
        c.update(&s, false, &engine).unwrap();
        let h = health(&dir);
        assert!(h.reconciled && !h.uplink);
        // Up again: a new check asked, once the gap since the last passed.
        c.update(&s, true, &engine).unwrap();
        assert!(!dir.join(CHECK_FILE).exists(), "not sooner than the gap");
        c.last_check = None;
        c.update(&s, true, &engine).unwrap();
        assert!(dir.join(CHECK_FILE).exists());

        // A release notice asks for a check; a flood of them makes one check per gap.
        let stamp = || std::fs::read_to_string(dir.join(CHECK_FILE)).unwrap();
        let first = stamp();
        c.ask_check();
        c.update(&s, true, &engine).unwrap();
        assert_eq!(stamp(), first, "not sooner than the gap");
        c.check_gap = Duration::ZERO;
        c.update(&s, true, &engine).unwrap();
        let second = stamp();
        assert_ne!(
            second, first,
            "the wanted check is written once the gap passed"
        );
        c.update(&s, true, &engine).unwrap();
        assert_eq!(stamp(), second, "one notice, one check");
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }
}
