//! The root of trust of each runmode (`zos_types::release::root`): root 1 is the release keys
//! the operator configured (`--release-keys`), later roots are signed rotations, kept in
//! `boot/roots/<runmode>/<version>.json` and walked again from root 1 when the grid starts.
//! The current root's keys are the ones releases are checked with and the ones that may publish.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /releases/{runmode}/root` | none | the current root and the signed rotations ([`RootChain`]) |
//! | `PUT /releases/{runmode}/root` | a key of the current root | install the next root ([`SignedRoot`]) |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::http::StatusCode;
use zos_types::PublicKey;
use zos_types::release::root::{Root, RootChain, Rotated, SignedRoot};
use zos_types::release::{ReleaseKeys, RunMode};

use super::{Boot, BootError, Publisher};
use crate::auth::ApiPath;
use crate::error::ApiFailure;

/// Largest `PUT /releases/{runmode}/root` body.
pub const MAX_ROOT_BODY: usize = 2 * zos_types::release::root::MAX_ROOT_BYTES + 16 * 256 + 1024;

/// A runmode's roots: the current one and the rotations that led to it.
#[derive(Debug, Clone)]
pub(super) struct Chain {
    pub(super) current: Root,
    pub(super) links: Vec<SignedRoot>,
}

fn dir_of(boot_dir: &Path, mode: RunMode) -> PathBuf {
    boot_dir.join("roots").join(mode.as_str())
}

/// Root 1 of every configured runmode, walked through the stored rotations.
pub(super) fn load(
    boot_dir: &Path,
    configured: &BTreeMap<RunMode, ReleaseKeys>,
) -> Result<BTreeMap<RunMode, Chain>, BootError> {
    let mut out = BTreeMap::new();
    for (mode, keys) in configured {
        let bad = |message: String| BootError::Root {
            runmode: *mode,
            message,
        };
        let mut chain = Chain {
            current: Root::initial(*mode, keys).map_err(|e| bad(e.to_string()))?,
            links: Vec::new(),
        };
        let dir = dir_of(boot_dir, *mode);
        std::fs::create_dir_all(&dir).map_err(|source| BootError::Dir {
            path: dir.clone(),
            source,
        })?;
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(&dir)
            .map_err(|source| BootError::Dir {
                path: dir.clone(),
                source,
            })?
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            let link: SignedRoot = serde_json::from_slice(&text)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            let version = link
                .parse()
                .map_err(|e| bad(format!("{}: {e}", path.display())))?
                .version;
            stored.push((version, path, link));
        }
        stored.sort_by_key(|(v, _, _)| *v);
        for (_, path, link) in stored {
            chain.current = chain.current.rotate(&link).map_err(|e| {
                bad(format!(
                    "{}: {e}; the stored roots do not follow from the configured release keys (root 1)",
                    path.display()
                ))
            })?;
            chain.links.push(link);
        }
        tracing::info!(runmode = %mode, root = chain.current.version, "release root loaded");
        out.insert(*mode, chain);
    }
    Ok(out)
}

impl Boot {
    /// The current root of `mode`, when the grid serves it.
    pub(super) fn root(&self, mode: RunMode) -> Option<Root> {
        let r = self.roots.lock().unwrap_or_else(|e| e.into_inner());
        r.get(&mode).map(|c| c.current.clone())
    }

    /// Whether `key` is a key of the current root of any runmode.
    pub(super) fn is_publisher(&self, key: &PublicKey) -> bool {
        let r = self.roots.lock().unwrap_or_else(|e| e.into_inner());
        r.values().any(|c| c.current.keys.contains(key))
    }
}

/// The runmode of a path, which this grid must serve.
fn served_root(boot: &Boot, raw: &str) -> Result<(RunMode, Root), ApiFailure> {
    let (mode, _) = super::served(boot, raw)?;
    let root = boot
        .root(mode)
        .ok_or_else(|| ApiFailure::NotFound(format!("this grid has no root for {mode}")))?;
    Ok((mode, root))
}

pub(super) async fn get_root(
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath(mode): ApiPath<String>,
) -> Result<Json<RootChain>, ApiFailure> {
    let (mode, _) = served_root(&boot, &mode)?;
    let r = boot.roots.lock().unwrap_or_else(|e| e.into_inner());
    let c = r
        .get(&mode)
        .ok_or_else(|| ApiFailure::NotFound(format!("this grid has no root for {mode}")))?;
    Ok(Json(RootChain {
        current: c.current.clone(),
        chain: c.links.clone(),
    }))
}

pub(super) async fn put_root(
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath(mode): ApiPath<String>,
    publisher: Publisher,
) -> Result<(StatusCode, Json<Rotated>), ApiFailure> {
    let (mode, current) = served_root(&boot, &mode)?;
    if !current.keys.contains(&publisher.key) {
        return Err(ApiFailure::Forbidden(format!(
            "key {} is not a key of root {} of runmode {mode}: a rotation is sent by a key of the current root",
            publisher.key, current.version
        )));
    }
    let link: SignedRoot = crate::auth::parse_json(&publisher.body)?;
    let _one_at_a_time = boot.publishing.lock().await;
    let current = boot.root(mode).unwrap_or(current);
    if let Some(last) = boot
        .roots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&mode)
        .and_then(|c| c.links.last().cloned())
        && last == link
    {
        return Ok((
            StatusCode::OK,
            Json(Rotated {
                runmode: mode,
                version: current.version,
                rotated: false,
            }),
        ));
    }
    let next = current.rotate(&link).map_err(|e| match e {
        e @ (zos_types::release::root::RootError::Rollback { .. }
        | zos_types::release::root::RootError::Gap { .. }) => ApiFailure::Conflict(e.to_string()),
        e @ (zos_types::release::root::RootError::NotSignedByOld { .. }
        | zos_types::release::root::RootError::NotSignedByNew { .. }) => {
            ApiFailure::Forbidden(e.to_string())
        }
        e => ApiFailure::BadRequest(e.to_string()),
    })?;
    let path = dir_of(&boot.dir, mode).join(format!("{}.json", next.version));
    let json =
        serde_json::to_vec_pretty(&link).map_err(|e| ApiFailure::internal("encoding a root", e))?;
    tokio::task::spawn_blocking(move || crate::write_file_atomically(&path, &json))
        .await
        .map_err(|e| ApiFailure::internal("root store task", e))?
        .map_err(|e| ApiFailure::internal("storing a root", e))?;
    {
        let mut r = boot.roots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = r.get_mut(&mode) {
            c.current = next.clone();
            c.links.push(link);
        }
    }
    tracing::info!(runmode = %mode, root = next.version, keys = next.keys.len(), threshold = next.threshold, "release root rotated");
    Ok((
        StatusCode::CREATED,
        Json(Rotated {
            runmode: mode,
            version: next.version,
            rotated: true,
        }),
    ))
}
