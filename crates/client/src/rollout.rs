//! Staged rollouts (docs/upgrade.md): a node reports its upgrade state and asks which release
//! to run; release publishers read a rollout's status and steer it (open a wave, mark safe,
//! halt, resume).

use reqwest::Method;
use zos_types::release::fleet::{ForNode, NodeReport, RolloutChange, RolloutStatus, UpgradeReport};
use zos_types::release::{RunMode, Version};
use zos_types::{Identity, NodeId};

use crate::release::ReleaseClient;
use crate::{ClientError, GridClient};

impl GridClient {
    /// Reports `node`'s upgrade state (the client must be the node's twin).
    pub async fn report_upgrade(
        &self,
        node: NodeId,
        report: &UpgradeReport,
    ) -> Result<NodeReport, ClientError> {
        self.signed(Method::POST, &format!("/nodes/{node}/upgrade"), report)
            .await
    }
}

impl ReleaseClient {
    /// The rollout of `version` (default: the current release) of `runmode`.
    pub async fn status(
        &self,
        runmode: RunMode,
        version: Option<Version>,
    ) -> Result<RolloutStatus, ClientError> {
        let route = match version {
            Some(v) => format!("/releases/{runmode}/status?version={v}"),
            None => format!("/releases/{runmode}/status"),
        };
        self.request(Method::GET, &route, None).await
    }

    /// Changes the rollout of `version` of `runmode`, signed with release key `key`.
    pub async fn change_rollout(
        &self,
        runmode: RunMode,
        version: Version,
        change: &RolloutChange,
        key: &Identity,
    ) -> Result<RolloutStatus, ClientError> {
        let body = serde_json::to_vec(change).expect("rollout changes serialize");
        self.request(
            Method::PUT,
            &format!("/releases/{runmode}/{version}/rollout"),
            Some((body, key)),
        )
        .await
    }

    /// The release node `node` should run, and why.
    pub async fn for_node(&self, runmode: RunMode, node: NodeId) -> Result<ForNode, ClientError> {
        self.request(
            Method::GET,
            &format!("/releases/{runmode}/for-node/{node}"),
            None,
        )
        .await
    }
}
