//! Which release a node runs (`GET /releases/{runmode}/for-node/{id}`): the newest release of
//! the runmode that the node runs already (it reported `committed`), or that is not halted, not
//! expired, not rolled back by the node, whose stage admits the node and whose `min_from` the
//! node's running version meets (the newest it committed, else the version it registered
//! with); otherwise the oldest release. The node verifies the answer
//! itself (`zos_client::rollout::ReleaseClient::check_upgrade`).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use zos_types::NodeId;
use zos_types::release::fleet::{ForNode, UpgradeState};
use zos_types::release::rollout::admission;

use super::rollout::{running, version_of};
use super::{Boot, Stored, served};
use crate::auth::ApiPath;
use crate::error::ApiFailure;
use crate::state::AppState;

pub(super) async fn for_node(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath((mode, id)): ApiPath<(String, NodeId)>,
) -> Result<Json<ForNode>, ApiFailure> {
    let (mode, _) = served(&boot, &mode)?;
    let now = app.now();
    let node = app
        .run(move |s| s.node(id, now))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("node {id} does not exist")))?;
    let versions = boot.versions(mode);
    let oldest = versions.first().cloned().ok_or_else(|| {
        ApiFailure::NotFound(format!("no release of runmode {mode} is published yet"))
    })?;
    let current = running(&boot, mode, id);
    // The version the node runs for `min_from`: the newest it committed, else the one it
    // registered with (zosd registers its release's version; a value that is no version, or
    // none, leaves `min_from` to the node's own check).
    let registered = node.zos_version.parse::<zos_types::release::Version>().ok();
    let at_least = current.or(registered);
    let mut skipped = Vec::new();
    for s in versions.iter().rev() {
        let v = version_of(s)?;
        let Some(record) = boot.rollouts().get(&(mode, v)).cloned() else {
            continue;
        };
        if current == Some(v) {
            let why = match skipped.is_empty() {
                true => format!("release {v} is the newest and the node runs it"),
                false => format!("the node runs {v}; newer: {}", skipped.join("; ")),
            };
            return Ok(Json(answer(s, why)));
        }
        if let Some(h) = &record.halted {
            skipped.push(format!("{v} is halted ({})", h.reason));
            continue;
        }
        if let Some(expires) = s.terms.expires
            && expires <= now
        {
            skipped.push(format!("{v} expired at {expires}"));
            continue;
        }
        if let Some(r) = record.nodes.get(&id)
            && r.state == UpgradeState::RolledBack
        {
            skipped.push(format!("{v} was rolled back by this node"));
            continue;
        }
        let a = admission(&s.terms.policy(), record.stage, id, node.farm_id);
        if !a.admitted() {
            skipped.push(format!("{v}: {a}"));
            continue;
        }
        if let (Some(cur), Some(min)) = (at_least, s.terms.min_from().ok().flatten())
            && cur < min
        {
            skipped.push(format!("{v} upgrades only from {min}"));
            continue;
        }
        let mut why = format!("release {v}: {a}");
        if !skipped.is_empty() {
            why.push_str(&format!("; newer: {}", skipped.join("; ")));
        }
        return Ok(Json(answer(s, why)));
    }
    let why = format!(
        "no release admits this node ({}); the oldest release",
        skipped.join("; ")
    );
    Ok(Json(answer(&oldest, why)))
}

fn answer(s: &Stored, why: String) -> ForNode {
    ForNode {
        version: s.release.version.clone(),
        why,
        release: s.signed.clone(),
    }
}
