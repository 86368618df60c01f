//! The rollout of each release: its stage (open wave, safe), a halt, and what every node
//! reported, kept in `boot/rollout/<runmode>/<version>.json`; and the answer to a node asking
//! which release to run.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /api/v1/nodes/{id}/upgrade` | the node's twin | report its [`UpgradeReport`](zos_types::release::fleet::UpgradeReport); may halt the rollout ([`super::reports`]) |
//! | `GET /releases/{runmode}/status[?version=V]` | none | [`RolloutStatus`] of V (default: the current release) |
//! | `PUT /releases/{runmode}/{version}/rollout` | a key of the runmode's current root | [`RolloutChange`]: open a wave, mark safe, halt, resume |
//! | `GET /releases/{runmode}/for-node/{id}` | none | the release the node should run ([`super::for_node`]) |
//!
//! Fleet safety: after each `rolled_back` report, when more than the policy's `halt_percent`
//! of the nodes the open stage admits reported `rolled_back`, the grid halts the rollout itself
//! (`by: grid`). The nodes counted are the grid's registered nodes (the registry does not record
//! a node's runmode: a grid serving several runmodes counts every node in each).
//!
//! Which release a node runs: the newest release of the runmode that the node runs already
//! (it reported `committed`), or that is not halted, not expired, not rolled back by the node,
//! whose stage admits the node and whose `min_from` the node's running version meets;
//! otherwise the oldest release. A booting node, not known yet, is given the newest release
//! whose rollout is not halted (boot scripts, `GET /releases/{runmode}`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use zos_types::NodeId;
use zos_types::registry::{Node, NodeFilter};
use zos_types::release::fleet::{
    Halt, NodeReport, NodeUpgrade, Progress, RolloutChange, RolloutStatus, UpgradeState,
};
use zos_types::release::rollout::{Stage, admission};
use zos_types::release::{ReleaseError, RunMode, Version};

use super::{Boot, BootError, Publisher, Stored, served};
use crate::auth::{ApiPath, ApiQuery};
use crate::error::ApiFailure;
use crate::state::AppState;

/// The most registered nodes a rollout looks at.
const MAX_NODES: u32 = 100_000;

/// A release's rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Record {
    pub(super) stage: Stage,
    #[serde(default)]
    pub(super) halted: Option<Halt>,
    #[serde(default)]
    pub(super) nodes: BTreeMap<NodeId, NodeReport>,
}

impl Record {
    pub(super) fn new(stored: &Stored) -> Self {
        Self {
            stage: stored.terms.policy().first_stage(),
            halted: None,
            nodes: BTreeMap::new(),
        }
    }
}

type Key = (RunMode, Version);

fn path_of(boot_dir: &Path, (mode, version): &Key) -> PathBuf {
    boot_dir
        .join("rollout")
        .join(mode.as_str())
        .join(format!("{version}.json"))
}

/// The stored rollout of every release (a new one for a release that has none yet).
pub(super) fn load(
    boot_dir: &Path,
    releases: &BTreeMap<RunMode, BTreeMap<Version, Stored>>,
) -> Result<BTreeMap<Key, Record>, BootError> {
    let mut out = BTreeMap::new();
    for (mode, versions) in releases {
        let dir = boot_dir.join("rollout").join(mode.as_str());
        std::fs::create_dir_all(&dir).map_err(|source| BootError::Dir {
            path: dir.clone(),
            source,
        })?;
        for (version, stored) in versions {
            let key = (*mode, *version);
            let path = path_of(boot_dir, &key);
            let record = match std::fs::read(&path) {
                Ok(text) => serde_json::from_slice(&text).map_err(|e| BootError::Stored {
                    path: path.clone(),
                    message: e.to_string(),
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::new(stored),
                Err(e) => {
                    return Err(BootError::Stored {
                        path,
                        message: e.to_string(),
                    });
                }
            };
            out.insert(key, record);
        }
    }
    Ok(out)
}

impl Boot {
    pub(super) fn rollouts(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Record>> {
        self.rollouts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the record of `key` with `f` and stores it; `f` refusing changes nothing.
    pub(super) async fn update_rollout<T>(
        &self,
        key: Key,
        f: impl FnOnce(&mut Record) -> Result<T, ApiFailure>,
    ) -> Result<T, ApiFailure> {
        let _one_at_a_time = self.rollout_io.lock().await;
        let (out, record) = {
            let all = self.rollouts();
            let mut record = all.get(&key).cloned().ok_or_else(|| {
                ApiFailure::NotFound(format!("runmode {} has no release {}", key.0, key.1))
            })?;
            let out = f(&mut record)?;
            (out, record)
        };
        let path = path_of(&self.dir, &key);
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| ApiFailure::internal("encoding a rollout", e))?;
        tokio::task::spawn_blocking(move || crate::write_file_atomically(&path, &json))
            .await
            .map_err(|e| ApiFailure::internal("rollout store task", e))?
            .map_err(|e| ApiFailure::internal("storing a rollout", e))?;
        self.rollouts().insert(key, record);
        Ok(out)
    }

    /// Stores the first stage of a release being published.
    pub(super) async fn start_rollout(&self, key: Key, stored: &Stored) -> Result<(), ApiFailure> {
        let _one_at_a_time = self.rollout_io.lock().await;
        let record = Record::new(stored);
        let path = path_of(&self.dir, &key);
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| ApiFailure::internal("encoding a rollout", e))?;
        tokio::task::spawn_blocking(move || crate::write_file_atomically(&path, &json))
            .await
            .map_err(|e| ApiFailure::internal("rollout store task", e))?
            .map_err(|e| ApiFailure::internal("storing a rollout", e))?;
        self.rollouts().insert(key, record);
        Ok(())
    }

    /// The release a booting node is given (boot scripts, `GET /releases/{runmode}`): the newest
    /// whose rollout is not halted, else the newest. A booting node is not known yet, so waves
    /// and test farms do not apply here; a halt does.
    pub(super) fn serving(&self, mode: RunMode) -> Option<Stored> {
        let versions = self.versions(mode);
        let rollouts = self.rollouts();
        versions
            .iter()
            .rev()
            .find(|s| {
                s.release
                    .version()
                    .ok()
                    .and_then(|v| rollouts.get(&(mode, v)))
                    .is_none_or(|r| r.halted.is_none())
            })
            .or(versions.last())
            .cloned()
    }

    /// The stored releases of `mode`, oldest first.
    pub(super) fn versions(&self, mode: RunMode) -> Vec<Stored> {
        let r = self.releases();
        r.get(&mode)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Every registered node (up to [`MAX_NODES`]).
pub(super) async fn all_nodes(app: &AppState) -> Result<Vec<Node>, ApiFailure> {
    let now = app.now();
    app.run(move |s| {
        let mut out = Vec::new();
        let limit = NodeFilter::MAX_LIMIT;
        let mut offset = 0;
        while offset < MAX_NODES {
            let filter = NodeFilter {
                limit: Some(limit),
                offset: Some(offset),
                ..NodeFilter::default()
            };
            let page = s.nodes(&filter, now)?;
            let n = page.len() as u32;
            out.extend(page);
            if n < limit {
                break;
            }
            offset += limit;
        }
        Ok(out)
    })
    .await
}

/// The newest release of `mode` node `id` reported committed.
pub(super) fn running(boot: &Boot, mode: RunMode, id: NodeId) -> Option<Version> {
    let r = boot.rollouts();
    r.iter()
        .rev()
        .filter(|((m, _), _)| *m == mode)
        .find(|(_, rec)| {
            rec.nodes
                .get(&id)
                .is_some_and(|n| n.state == UpgradeState::Committed)
        })
        .map(|((_, v), _)| *v)
}

pub(super) fn version_of(s: &Stored) -> Result<Version, ApiFailure> {
    s.release
        .version()
        .map_err(|e| ApiFailure::internal("stored release", std::io::Error::other(e)))
}

fn status_of(
    boot: &Boot,
    mode: RunMode,
    stored: &Stored,
    record: &Record,
    nodes: &[Node],
) -> Result<RolloutStatus, ApiFailure> {
    let policy = stored.terms.policy();
    let mut progress = Progress::default();
    let mut list = Vec::new();
    for n in nodes {
        let a = admission(&policy, record.stage, n.id, n.farm_id);
        let report = record.nodes.get(&n.id).cloned();
        if a.admitted() {
            progress.admitted += 1;
            match report.as_ref().map(|r| r.state) {
                None | Some(UpgradeState::Pending) => progress.waiting += 1,
                Some(UpgradeState::Committed) => progress.committed += 1,
                Some(UpgradeState::RolledBack) => progress.rolled_back += 1,
                Some(_) => progress.in_progress += 1,
            }
        }
        list.push(NodeUpgrade {
            node: n.id,
            farm: n.farm_id,
            running: running(boot, mode, n.id).map(|v| v.to_string()),
            zos_version: n.zos_version.clone(),
            report,
            admitted: a.admitted(),
            why: a.to_string(),
        });
    }
    Ok(RolloutStatus {
        runmode: mode,
        version: version_of(stored)?.to_string(),
        percent: policy.percent(record.stage),
        policy,
        stage: record.stage,
        halted: record.halted.clone(),
        progress,
        nodes: list,
    })
}

pub(super) fn stored_version(
    boot: &Boot,
    mode: RunMode,
    v: Option<Version>,
) -> Result<Stored, ApiFailure> {
    let found = match v {
        Some(v) => boot.releases().get(&mode).and_then(|m| m.get(&v).cloned()),
        None => boot.current(mode),
    };
    found.ok_or_else(|| match v {
        Some(v) => ApiFailure::NotFound(format!("runmode {mode} has no release {v}")),
        None => ApiFailure::NotFound(format!("no release of runmode {mode} is published yet")),
    })
}

async fn status_now(
    app: &AppState,
    boot: &Boot,
    mode: RunMode,
    stored: &Stored,
) -> Result<RolloutStatus, ApiFailure> {
    let nodes = all_nodes(app).await?;
    let key = (mode, version_of(stored)?);
    let record = boot
        .rollouts()
        .get(&key)
        .cloned()
        .unwrap_or_else(|| Record::new(stored));
    status_of(boot, mode, stored, &record, &nodes)
}

impl Boot {
    /// The rollout of `version` of `mode` (default: the current release), as `GET
    /// /releases/{runmode}/status` answers it.
    pub async fn rollout_status(
        &self,
        app: &AppState,
        mode: RunMode,
        version: Option<Version>,
    ) -> Result<RolloutStatus, ApiFailure> {
        let stored = stored_version(self, mode, version)?;
        status_now(app, self, mode, &stored).await
    }

    /// Node `node`'s entry in the rollout of the current release of `mode`: the entry `GET
    /// /releases/{runmode}/status` lists for it (`None` when no release is published).
    pub fn node_upgrade(&self, mode: RunMode, node: &Node) -> Option<(String, NodeUpgrade)> {
        let stored = self.current(mode)?;
        let v = version_of(&stored).ok()?;
        let record = self
            .rollouts()
            .get(&(mode, v))
            .cloned()
            .unwrap_or_else(|| Record::new(&stored));
        let status = status_of(self, mode, &stored, &record, std::slice::from_ref(node)).ok()?;
        status.nodes.into_iter().next().map(|n| (status.version, n))
    }
}

fn parse_version(raw: &str) -> Result<Version, ApiFailure> {
    raw.parse()
        .map_err(|e: ReleaseError| ApiFailure::BadRequest(e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusQuery {
    version: Option<String>,
}

pub(super) async fn status(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath(mode): ApiPath<String>,
    ApiQuery(q): ApiQuery<StatusQuery>,
) -> Result<Json<RolloutStatus>, ApiFailure> {
    let (mode, _) = served(&boot, &mode)?;
    let v = q.version.as_deref().map(parse_version).transpose()?;
    let stored = stored_version(&boot, mode, v)?;
    Ok(Json(status_now(&app, &boot, mode, &stored).await?))
}

pub(super) async fn change(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath((mode, version)): ApiPath<(String, String)>,
    publisher: Publisher,
) -> Result<Json<RolloutStatus>, ApiFailure> {
    let (mode, keys) = served(&boot, &mode)?;
    if !keys.keys.contains(&publisher.key) {
        return Err(ApiFailure::Forbidden(format!(
            "key {} is not a release key of runmode {mode} on this grid: only they steer its rollouts",
            publisher.key
        )));
    }
    let v = parse_version(&version)?;
    let stored = stored_version(&boot, mode, Some(v))?;
    let c: RolloutChange = crate::auth::parse_json(&publisher.body)?;
    c.validate()
        .map_err(|e| ApiFailure::BadRequest(e.to_string()))?;
    let policy = stored.terms.policy();
    let (now, by) = (app.now(), publisher.key.to_string());
    boot.update_rollout((mode, v), |r| {
        let mut stage = r.stage;
        if let Some(w) = c.wave {
            stage.wave = w;
        }
        if c.safe == Some(true) {
            stage.safe = true;
        }
        r.stage = policy
            .check_stage(stage)
            .map_err(|e| ApiFailure::BadRequest(e.to_string()))?;
        if let Some(reason) = &c.halt {
            r.halted = Some(Halt {
                reason: reason.clone(),
                by: by.clone(),
                at: now,
            });
        }
        if c.resume {
            r.halted = None;
        }
        Ok(())
    })
    .await?;
    tracing::info!(runmode = %mode, version = %v, key = %publisher.key, change = ?c, "rollout changed");
    if c.halt.is_none() {
        // More nodes may take it now (a wave opened, marked safe, resumed): tell them. A halt
        // moves no node (none goes down), so it is not told.
        app.relay().release_changed(mode, &v.to_string());
    }
    Ok(Json(status_now(&app, &boot, mode, &stored).await?))
}
