//! What nodes report of their upgrades (`POST /api/v1/nodes/{id}/upgrade`, signed by the
//! node's twin), and fleet safety: after each `rolled_back` report, when more than the policy's
//! `halt_percent` of the nodes the open stage admits reported `rolled_back`, the grid halts the
//! rollout itself (`by: grid`). The nodes counted are the grid's registered nodes (the registry
//! does not record a node's runmode: a grid serving several runmodes counts every node in each).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use zos_types::registry::Node;
use zos_types::release::fleet::{Halt, NodeReport, UpgradeReport, UpgradeState, should_halt};
use zos_types::release::rollout::admission;
use zos_types::{NodeId, TwinId};

use super::rollout::{all_nodes, stored_version};
use super::{Boot, served};
use crate::auth::{ApiPath, Signed};
use crate::error::ApiFailure;
use crate::state::AppState;

pub(super) async fn report(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath(id): ApiPath<NodeId>,
    signed: Signed,
) -> Result<Json<NodeReport>, ApiFailure> {
    let twin: TwinId = signed.twin()?;
    let now = app.now();
    let node = app
        .run(move |s| s.node(id, now))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("node {id} does not exist")))?;
    if node.twin_id != twin {
        return Err(ApiFailure::Forbidden(format!(
            "twin {twin} is not node {id} (its twin is {})",
            node.twin_id
        )));
    }
    let body: UpgradeReport = signed.json()?;
    let v = body
        .validate()
        .map_err(|e| ApiFailure::BadRequest(e.to_string()))?;
    let (mode, _) = served(&boot, body.runmode.as_str())?;
    let stored = stored_version(&boot, mode, Some(v))?;
    let policy = stored.terms.policy();
    // The wave's nodes are read before the record is locked.
    let nodes = if body.state == UpgradeState::RolledBack {
        all_nodes(&app).await?
    } else {
        Vec::new()
    };
    let report = NodeReport {
        state: body.state,
        reason: body.reason.clone(),
        at: now,
    };
    let stored_report = report.clone();
    let halted = boot
        .update_rollout((mode, v), move |r| {
            if let Some(old) = r.nodes.get(&id)
                && old.state == UpgradeState::RolledBack
                && body.state != UpgradeState::RolledBack
            {
                return Err(ApiFailure::Conflict(format!(
                    "node {id} rolled back release {v} and does not retry it: it reports only rolled_back for it"
                )));
            }
            r.nodes.insert(id, stored_report);
            if body.state != UpgradeState::RolledBack || r.halted.is_some() {
                return Ok(None);
            }
            let admitted: Vec<&Node> = nodes
                .iter()
                .filter(|n| admission(&policy, r.stage, n.id, n.farm_id).admitted())
                .collect();
            let back = admitted
                .iter()
                .filter(|n| {
                    r.nodes
                        .get(&n.id)
                        .is_some_and(|x| x.state == UpgradeState::RolledBack)
                })
                .count();
            if !should_halt(&policy, admitted.len(), back) {
                return Ok(None);
            }
            let halt = Halt {
                reason: format!(
                    "{back} of the {} nodes of the open wave rolled back, more than {}%; the last, node {id}: {}",
                    admitted.len(),
                    policy.halt_percent,
                    body.reason.as_deref().unwrap_or("")
                ),
                by: "grid".into(),
                at: now,
            };
            r.halted = Some(halt.clone());
            Ok(Some(halt))
        })
        .await?;
    tracing::info!(node = id, runmode = %mode, version = %v, state = %report.state, reason = ?report.reason, "upgrade reported");
    if let Some(h) = halted {
        tracing::warn!(runmode = %mode, version = %v, reason = %h.reason, "rollout halted by the grid");
    }
    Ok(Json(report))
}
