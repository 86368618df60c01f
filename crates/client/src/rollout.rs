//! Staged rollouts (docs/upgrade.md): a node reports its upgrade state and asks which release
//! to run ([`ReleaseClient::check_upgrade`] does the whole check); release publishers read a
//! rollout's status and steer it (open a wave, mark safe, halt, resume).

use reqwest::Method;
use zos_types::release::fleet::{ForNode, NodeReport, RolloutChange, RolloutStatus, UpgradeReport};
use zos_types::release::root::{Root, RootError};
use zos_types::release::terms::Terms;
use zos_types::release::{Release, ReleaseError, RunMode, Version};
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

/// What a node should do after asking the grid (see [`ReleaseClient::check_upgrade`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The grid points at the release the node runs.
    Stay { version: Version, why: String },
    /// A newer release, verified against the node's root: the node may upgrade to it.
    Upgrade {
        release: Box<Release>,
        terms: Box<Terms>,
        why: String,
    },
}

/// Why a node cannot decide.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the grid's roots of trust are refused: {0}")]
    Root(#[from] RootError),
    #[error("the grid's release for this node is refused: {0}")]
    Release(#[from] ReleaseError),
}

impl ReleaseClient {
    /// What a node of `root.runmode`, running `current`, does now: it walks the grid's chain
    /// of roots from the root it trusts (`root`: the pinned one, or the last one it reached;
    /// keep the root answered for the next time), asks which release to run, and verifies that
    /// release with [`SignedRelease::verify_upgrade`](zos_types::release::SignedRelease::verify_upgrade).
    /// A release the node must refuse (too few signatures, another runmode, expired, a
    /// downgrade or replay, too old to upgrade from) is an error: the node stays where it is.
    pub async fn check_upgrade(
        &self,
        root: &Root,
        node: NodeId,
        current: Option<Version>,
        now: i64,
    ) -> Result<(Root, Decision), UpgradeError> {
        let chain = self.root(root.runmode).await?;
        let root = root.walk(&chain.chain)?;
        let answer = self.for_node(root.runmode, node).await?;
        if let (Some(cur), Ok(v)) = (current, answer.version.parse::<Version>())
            && v == cur
        {
            let d = Decision::Stay {
                version: v,
                why: answer.why,
            };
            return Ok((root, d));
        }
        let (release, terms) = answer.release.verify_upgrade(&root, current, now)?;
        let d = Decision::Upgrade {
            release: Box::new(release),
            terms: Box::new(terms),
            why: answer.why,
        };
        Ok((root, d))
    }
}
