//! The live upgrade, on a thread beside the supervisor: learning of a release, fetching and
//! checking it before anything stops, the switch, the health gate, and the commit or the
//! rollback (docs/upgrade.md, "On the node").
//!
//! 1. **When**: every [`Settings::check_secs`] with ±25 % jitter, and soon after zosd writes
//!    [`local::CHECK_FILE`] (an uplink event). The node id and the key that signs the reports
//!    come from [`local::NODE_FILE`]; until zosd wrote it, nothing is checked.
//! 2. **Which**: the grid's chain of roots is walked from the root the node trusts (root 1
//!    from the pinned keys), the release the grid names for this node is verified against it
//!    and the version running (signatures and threshold, runmode, expiry, downgrade or replay,
//!    `min_from`). An older release named is never taken; a version this node refused or
//!    rolled back is never tried again.
//! 3. **Fetch and check**: its runtime flists are fetched by hash and mounted beside the
//!    running ones, and every program of its service list is read whole through the mounts
//!    (a block that fails its hash is found here). A refusal is reported `rolled_back` with
//!    the reason ("refused: ..."), logged, and changes nothing; a failure on the way (the
//!    network) is reported `pending` with the reason and tried again at the next check.
//! 4. **Switch**: the supervisor stops the services (zosd gets SIGTERM and its grace), `/usr`
//!    is re-pointed to the new runtime (the old flist mounts stay: what zosd started from them
//!    keeps running), and the new services start; the new zosd adopts the workloads.
//! 5. **Gate** ([`gate`]): then `committed` (the old runtime is released once nothing uses
//!    it), or, on a crash loop or a missed gate, the same switch back to the previous runtime
//!    and `rolled_back` with the reason.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use zos_client::GridClient;
use zos_client::release::ReleaseClient;
use zos_runtime::error_chain;
use zos_types::release::fleet::{UpgradeReport, UpgradeState};
use zos_types::release::root::Root;
use zos_types::release::{Release, RunMode, Version};

use crate::config::Boot;
use crate::gate::{self, Gate, Verdict};
use crate::local::{self, NodeFile};
use crate::runtime::{self, PrepareError, Runtime};
use crate::supervise::{Control, Exits, Request};

pub use crate::config::UpgradeSettings as Settings;

/// The longest reason sent to the grid (it takes 512 bytes of printable text).
pub const MAX_REASON: usize = 500;

/// A reason the grid takes: printable, one line, at most [`MAX_REASON`] bytes.
pub fn reason_text(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_REASON {
            break;
        }
        out.push(c);
    }
    let out = out.trim().to_string();
    if out.is_empty() {
        "no reason given".into()
    } else {
        out
    }
}

/// The wait before the next periodic check: `every` ±25 %, from `seed`.
pub fn jittered(every: Duration, seed: u64) -> Duration {
    let quarter = every.as_millis() as u64 / 4;
    if quarter == 0 {
        return every;
    }
    let offset = seed % (2 * quarter + 1);
    Duration::from_millis(every.as_millis() as u64 - quarter + offset)
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The upgrade agent (see the module doc).
#[allow(missing_debug_implementations)]
pub struct Agent {
    cfg: Boot,
    grid: String,
    runmode: RunMode,
    root: Root,
    current: Runtime,
    /// Versions refused or rolled back: never tried again.
    refused: BTreeSet<String>,
    settings: Settings,
    requests: mpsc::Sender<Request>,
    exits: Exits,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// Whether the version booted was reported `committed`.
    announced: bool,
}

/// What the grid names for this node, checked.
enum Next {
    Stay,
    Take(Box<Release>),
}

impl Agent {
    /// Starts the agent for the node running `current` (booted from `cfg`), trusting `root`;
    /// answers the control the supervisor takes its requests from.
    pub fn spawn(
        cfg: Boot,
        grid: String,
        root: Root,
        current: Runtime,
        settings: Settings,
    ) -> Result<Control, String> {
        let (requests, rx) = mpsc::channel();
        let exits = Exits::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the upgrade agent's async runtime: {e}"))?;
        let http = crate::http::client().map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let agent = Agent {
            runmode: root.runmode,
            cfg,
            grid,
            root,
            current,
            refused: BTreeSet::new(),
            settings,
            requests,
            exits: exits.clone(),
            rt,
            http,
            announced: false,
        };
        std::thread::Builder::new()
            .name("upgrade".into())
            .spawn(move || agent.run())
            .map_err(|e| format!("cannot start the upgrade agent: {e}"))?;
        Ok(Control {
            requests: rx,
            exits,
        })
    }

    fn dir(&self) -> PathBuf {
        self.cfg.runtime_dir.clone()
    }

    fn run(mut self) {
        tracing::info!(
            version = %self.current.version,
            check_secs = self.settings.check_secs,
            gate_secs = self.settings.gate_secs,
            "upgrade agent started"
        );
        let every = Duration::from_secs(self.settings.check_secs.max(1));
        let mut due = Instant::now();
        let mut stamp = local::check_stamp(&self.dir());
        let mut node_error = String::new();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now_stamp = local::check_stamp(&self.dir());
            let asked = now_stamp != stamp;
            if !asked && Instant::now() < due {
                continue;
            }
            let node = match local::read_node(&self.dir()) {
                Ok(n) => n,
                Err(e) => {
                    // zosd writes it once registered; say each new reason once.
                    let e = error_chain(&e);
                    if e != node_error {
                        tracing::info!("no upgrade check yet: {e}");
                        node_error = e;
                    }
                    continue;
                }
            };
            stamp = now_stamp;
            if asked {
                tracing::info!("zosd asked for a release check");
            }
            if !self.announced {
                self.announced = true;
                let v = self.current.version.clone();
                self.report(&node, &v, UpgradeState::Committed, None);
            }
            self.check(&node);
            due = Instant::now() + jittered(every, random_seed());
        }
    }

    /// Sends a report; a failure is logged (the next state is reported anyway).
    fn report(&self, node: &NodeFile, version: &str, state: UpgradeState, reason: Option<&str>) {
        let report = UpgradeReport {
            runmode: self.runmode,
            version: version.to_string(),
            state,
            reason: reason.map(reason_text),
        };
        let r = (|| {
            let id = zos_client::keyfile::load_identity(&node.key).map_err(|e| error_chain(&e))?;
            let client = GridClient::new(&self.grid)
                .map_err(|e| error_chain(&e))?
                .with_identity(id)
                .with_twin(node.twin_id);
            self.rt
                .block_on(client.report_upgrade(node.node_id, &report))
                .map_err(|e| error_chain(&e))
        })();
        match r {
            Ok(_) => tracing::info!(version, %state, reason = ?report.reason, "upgrade reported"),
            Err(e) => tracing::warn!(version, %state, "cannot report the upgrade state: {e}"),
        }
    }

    /// Refuses `version` for good: logged and reported, never tried again.
    fn refuse(&mut self, node: &NodeFile, version: &str, why: &str) {
        tracing::error!(
            version,
            "release refused: {why}; the node stays where it is"
        );
        self.refused.insert(version.to_string());
        self.report(
            node,
            version,
            UpgradeState::RolledBack,
            Some(&format!("refused: {why}")),
        );
    }

    /// Asks the grid and verifies what it names.
    fn ask(&mut self, node: &NodeFile) -> Next {
        let current: Option<Version> = self.current.version.parse().ok();
        let rc = match ReleaseClient::new(&self.grid) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("upgrade check: {}", error_chain(&e));
                return Next::Stay;
            }
        };
        let answer = self.rt.block_on(async {
            let chain = rc.root(self.runmode).await.map_err(|e| error_chain(&e))?;
            let root = self
                .root
                .walk(&chain.chain)
                .map_err(|e| format!("the grid's roots of trust are refused: {e}"))?;
            let f = rc
                .for_node(self.runmode, node.node_id)
                .await
                .map_err(|e| error_chain(&e))?;
            Ok::<_, String>((root, f))
        });
        let (root, f) = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("upgrade check failed: {e}; trying again at the next check");
                return Next::Stay;
            }
        };
        if root.version != self.root.version {
            tracing::info!(
                from = self.root.version,
                to = root.version,
                "release root rotated"
            );
        }
        self.root = root;
        let Ok(named) = f.version.parse::<Version>() else {
            tracing::warn!(
                "the grid names a release with the malformed version {:?}",
                f.version.chars().take(40).collect::<String>()
            );
            return Next::Stay;
        };
        if current.is_some_and(|c| named <= c) {
            if current != Some(named) {
                tracing::info!(named = %named, running = %self.current.version, why = %f.why, "the grid names an older release: staying");
            }
            return Next::Stay;
        }
        if self.refused.contains(&f.version) {
            return Next::Stay;
        }
        match f.release.verify_upgrade(&self.root, current, unix_now()) {
            Ok((release, _terms)) if release.version == f.version => {
                tracing::info!(version = %release.version, why = %f.why, "new release");
                Next::Take(Box::new(release))
            }
            Ok((release, _)) => {
                let why = format!(
                    "the grid names version {} but the signed release is {}",
                    f.version, release.version
                );
                self.refuse(node, &f.version, &why);
                Next::Stay
            }
            Err(e) => {
                self.refuse(node, &f.version, &error_chain(&e));
                Next::Stay
            }
        }
    }

    fn check(&mut self, node: &NodeFile) {
        let Next::Take(release) = self.ask(node) else {
            return;
        };
        let v = release.version.clone();
        self.report(node, &v, UpgradeState::Downloading, None);
        let mnt = self.dir().join("mnt").join(&v);
        let next = match runtime::prepare(
            &self.cfg, &self.rt, &self.http, &self.grid, &release, &mnt,
        ) {
            Ok(r) => r,
            Err(PrepareError::Refused(e)) => {
                self.refuse(node, &v, &e);
                return;
            }
            Err(PrepareError::Failed(e)) => {
                tracing::warn!(version = %v, "cannot fetch the release: {e}; trying again at the next check");
                self.report(node, &v, UpgradeState::Pending, Some(&e));
                return;
            }
        };
        tracing::info!(version = %v, "release fetched and checked: switching");
        let ok_before = match local::read_health(&self.dir()) {
            Ok(h) => h.ok,
            Err(e) => {
                tracing::warn!(
                    "no health of the running zosd ({}): no workload to keep ok",
                    error_chain(&e)
                );
                BTreeSet::new()
            }
        };
        self.report(node, &v, UpgradeState::Switching, None);
        let switched = self.replace(&self.current, &next);
        if let Err(e) = switched {
            // The old runtime is back on /usr: start its services again.
            let _ = self.replace_services(&self.current, |_| Ok(()));
            runtime::unmount(&next);
            self.refused.insert(v.clone());
            tracing::error!(version = %v, "switch failed: {e}; back on {}", self.current.version);
            self.report(
                node,
                &v,
                UpgradeState::RolledBack,
                Some(&format!("switch failed: {e}")),
            );
            return;
        }
        self.report(node, &v, UpgradeState::Probation, None);
        let gate = Gate {
            version: v.clone(),
            ok_before,
            started: Instant::now(),
            time: Duration::from_secs(self.settings.gate_secs),
            max_exits: gate::MAX_EXITS,
        };
        let verdict = loop {
            let health = local::read_health(&self.dir()).ok();
            let exits = self.exits_of(&next);
            match gate.judge(health.as_ref(), exits, Instant::now()) {
                Verdict::Wait(_) => std::thread::sleep(Duration::from_millis(500)),
                v => break v,
            }
        };
        match verdict {
            Verdict::Pass => {
                tracing::info!(version = %v, "health gate passed: committed");
                let old = std::mem::replace(&mut self.current, next);
                runtime::release_lazily(&old);
                self.report(node, &v, UpgradeState::Committed, None);
            }
            Verdict::Fail(reason) | Verdict::Wait(reason) => {
                tracing::error!(version = %v, "{reason}: rolling back to {}", self.current.version);
                if let Err(e) = self.replace(&next, &self.current) {
                    tracing::error!("rollback: {e}");
                }
                runtime::release_lazily(&next);
                self.refused.insert(v.clone());
                self.report(node, &v, UpgradeState::RolledBack, Some(&reason));
            }
        }
    }

    /// The most times a service of `r` ended since it was started.
    fn exits_of(&self, r: &Runtime) -> u32 {
        let counts = self.exits.lock().unwrap_or_else(|p| p.into_inner());
        r.services
            .iter()
            .filter_map(|s| counts.get(&s.name))
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Has the supervisor stop the services, re-point `/usr` from `from` to `to`, and start
    /// `to`'s services; zosd's health file is removed in between, so the gate reads only the
    /// new zosd's.
    fn replace(&self, from: &Runtime, to: &Runtime) -> Result<(), String> {
        let usr = self.cfg.usr.clone();
        let health = self.dir().join(local::HEALTH_FILE);
        let (from_layers, to_layers) = (runtime::Layers::of(from), runtime::Layers::of(to));
        self.replace_services(to, move |_| {
            let _ = std::fs::remove_file(&health);
            runtime::repoint(&usr, &from_layers, &to_layers)
        })
    }

    fn replace_services(
        &self,
        to: &Runtime,
        between: impl FnOnce(()) -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        let services = to.services.clone();
        self.requests
            .send(Request::Replace {
                services,
                between: Box::new(move || between(())),
                reply,
            })
            .map_err(|_| "the supervisor is gone".to_string())?;
        answer
            .recv()
            .map_err(|_| "the supervisor did not answer".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_made_fit_for_the_grid() {
        assert_eq!(reason_text("gate\nmissed\t"), "gate missed");
        assert_eq!(reason_text("\n"), "no reason given");
        let long = "é".repeat(400);
        let r = reason_text(&long);
        assert!(
            r.len() <= MAX_REASON && r.len() > MAX_REASON - 2,
            "{}",
            r.len()
        );
    }

    #[test]
    fn checks_are_spread_by_a_quarter_either_way() {
        let every = Duration::from_secs(100);
        let all: Vec<Duration> = (0..2000u64)
            .map(|s| jittered(every, s.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        assert!(
            all.iter()
                .all(|d| *d >= Duration::from_secs(75) && *d <= Duration::from_secs(125))
        );
        assert!(all.iter().any(|d| *d < Duration::from_secs(80)));
        assert!(all.iter().any(|d| *d > Duration::from_secs(120)));
        assert_eq!(
            jittered(Duration::from_millis(3), 7),
            Duration::from_millis(3)
        );
    }
}
