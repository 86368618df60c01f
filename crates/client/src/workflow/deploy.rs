//! Deployments on nodes: [`deploy`] (contract, signature, send, follow), [`update`] and
//! [`cancel`], each reporting its progress as [`DeployEvent`]s.
//!
//! A deployment the node refuses leaves no contract behind: [`deploy`] cancels the contract it
//! made (and the public addresses it reserved) before it fails. An update changes only the
//! workloads whose data changed ([`next_version`]) and follows only those.
//!
//! A machine's interface may leave its `ip` out before the deployment is signed:
//! [`pick_ips`](super::network::pick_ips) fills it in first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use zos_types::contract::{ContractKind, CreateNodeContract, UpdateNodeContract};
use zos_types::deployment::{ContractId, Deployment, DeploymentError, ResultState, Workload};
use zos_types::node_api::{self, ChangesBody, ContractBody, ErrorKind, LogEntry};
use zos_types::{NodeId, TwinId};

use super::POLL;
use crate::{ClientError, GridClient};

/// What a deployment workflow reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployEvent {
    /// Workload `workload`'s interface on `network` left its address out; `ip` was picked.
    IpPicked {
        workload: String,
        network: String,
        ip: Ipv4Addr,
    },
    /// The node contract of a new deployment exists on the grid.
    ContractCreated { node: NodeId, contract: ContractId },
    /// The node accepted the new deployment and applies it in the background.
    Sent { node: NodeId, contract: ContractId },
    /// The node refused the deployment, and its contract was cancelled again.
    RolledBack { node: NodeId, contract: ContractId },
    /// The node accepted version `version` of the deployment.
    Updated {
        node: NodeId,
        contract: ContractId,
        version: u32,
    },
    /// Following starts: `total` workloads must settle.
    Following { contract: ContractId, total: usize },
    /// A followed workload is applied and coming up (a machine's guest booting); `message` is
    /// what it shows last. Reported again each time the message changes.
    Starting { name: String, message: String },
    /// One followed workload settled (a result other than `init` or `starting`), reported once
    /// per workload.
    Workload {
        name: String,
        state: ResultState,
        message: String,
    },
    /// How far the followed workloads got, after each look at the node's result log.
    Progress {
        settled: usize,
        total: usize,
        errors: usize,
    },
    /// Every followed workload settled.
    Settled { contract: ContractId },
    /// The contract is cancelled; the node removes the workloads.
    Cancelled { node: NodeId, contract: ContractId },
    /// The node no longer has the deployment.
    Removed { node: NodeId, contract: ContractId },
}

/// Why a deployment workflow failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Deployment(#[from] DeploymentError),
    #[error("node {node}")]
    Node {
        node: NodeId,
        #[source]
        source: ClientError,
    },
    #[error("node {node} is offline: pick an online node (`zos node list --online`)")]
    Offline { node: NodeId },
    #[error("creating the node contract")]
    CreateContract(#[source] ClientError),
    #[error("node {node} refused the deployment; contract {contract} cancelled")]
    Refused {
        node: NodeId,
        contract: ContractId,
        #[source]
        source: ClientError,
    },
    #[error("contract {contract}")]
    Contract {
        contract: ContractId,
        #[source]
        source: ClientError,
    },
    #[error("contract {contract} is not a node contract")]
    NotNodeContract { contract: ContractId },
    #[error("this update is not allowed")]
    UpdateNotAllowed(#[source] DeploymentError),
    #[error("updating the contract's hash")]
    UpdateHash(#[source] ClientError),
    #[error("the node refused the update")]
    UpdateRefused(#[source] ClientError),
    #[error("the node kept these workloads as they were: {}", kept_text(.kept))]
    Kept {
        /// Each workload the node kept as it was, with the node's reason.
        kept: Vec<(String, String)>,
    },
    #[error(
        "the node did not finish within {wait:?}; follow it with `zos deployment get {contract}`"
    )]
    Timeout {
        contract: ContractId,
        wait: Duration,
    },
    #[error("node {node} still has deployment {contract} after {} s", .wait.as_secs())]
    StillThere {
        node: NodeId,
        contract: ContractId,
        wait: Duration,
    },
}

fn kept_text(kept: &[(String, String)]) -> String {
    kept.iter()
        .map(|(name, why)| format!("{name}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A deployment whose followed workloads all settled, and the node it is on.
#[derive(Debug, Clone)]
pub struct Settled {
    pub node: NodeId,
    pub deployment: Deployment,
}

/// The node (id, twin) a node contract is on.
pub async fn node_of(
    c: &GridClient,
    contract: ContractId,
) -> Result<(NodeId, TwinId), DeployError> {
    let k = c
        .get_contract(contract)
        .await
        .map_err(|source| DeployError::Contract { contract, source })?;
    let ContractKind::Node { node_id, .. } = k.kind else {
        return Err(DeployError::NotNodeContract { contract });
    };
    let node = c.get_node(node_id).await?;
    Ok((node_id, node.twin_id))
}

/// Deployment `contract` as the node with twin `twin` has it.
pub async fn fetch(
    c: &GridClient,
    twin: TwinId,
    contract: ContractId,
) -> Result<Deployment, ClientError> {
    c.node(twin)
        .call::<node_api::Get>(&ContractBody {
            contract_id: contract,
        })
        .await
}

/// The whole result log of deployment `contract` on the node with twin `twin`.
pub async fn changes(
    c: &GridClient,
    twin: TwinId,
    contract: ContractId,
) -> Result<Vec<LogEntry>, ClientError> {
    let body = ChangesBody {
        contract_id: contract,
        limit: None,
        cursor: None,
    };
    c.node(twin).all::<node_api::Changes>(body).await
}

/// Makes the contract of `d` on `node`, signs and sends `d`, and follows it until every
/// workload settles (or `wait` passes). A deployment the node refuses leaves no contract behind.
pub async fn deploy(
    c: &GridClient,
    node: NodeId,
    mut d: Deployment,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Settled, DeployError> {
    let me = c.twin_id().ok_or(ClientError::NoTwin)?;
    let target = c
        .get_node(node)
        .await
        .map_err(|source| DeployError::Node { node, source })?;
    if !target.online {
        return Err(DeployError::Offline { node });
    }
    let contract = c
        .create_node_contract(&CreateNodeContract {
            node_id: node,
            deployment_hash: d.hash()?,
            public_ips: d.public_ipv4_count()?,
        })
        .await
        .map_err(DeployError::CreateContract)?
        .id;
    tracing::debug!(node, contract, "node contract created");
    on(DeployEvent::ContractCreated { node, contract });
    d.contract_id = contract;
    d.sign(node, me, c.identity().ok_or(ClientError::NoIdentity)?)?;
    if let Err(source) = c.node(target.twin_id).call::<node_api::Deploy>(&d).await {
        // The node refused: do not leave a contract (and its reserved addresses) behind.
        match c.cancel_contract(contract).await {
            Ok(_) => on(DeployEvent::RolledBack { node, contract }),
            Err(e) => tracing::debug!(
                node, contract, error = %zos_runtime::error_chain(&e),
                "the refused deployment's contract could not be cancelled"
            ),
        }
        return Err(DeployError::Refused {
            node,
            contract,
            source,
        });
    }
    tracing::debug!(node, contract, "deployment sent");
    on(DeployEvent::Sent { node, contract });
    let names: Vec<String> = d.workloads.iter().map(|w| w.name.clone()).collect();
    let deployment = follow(c, target.twin_id, contract, 0, &names, wait, on).await?;
    Ok(Settled { node, deployment })
}

/// Changes deployment `contract` to `desired` (workloads whose data changed get a new
/// version, see [`next_version`]), and follows the changed workloads until they settle.
pub async fn update(
    c: &GridClient,
    contract: ContractId,
    desired: &Deployment,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Settled, DeployError> {
    let me = c.twin_id().ok_or(ClientError::NoTwin)?;
    let (node, twin) = node_of(c, contract).await?;
    let current = fetch(c, twin, contract).await?;
    let mut next = next_version(&current, desired)?;
    c.update_node_contract(
        contract,
        &UpdateNodeContract {
            deployment_hash: next.hash()?,
        },
    )
    .await
    .map_err(DeployError::UpdateHash)?;
    next.sign(node, me, c.identity().ok_or(ClientError::NoIdentity)?)?;
    // This update's results are the log entries after the last one now.
    let log = changes(c, twin, contract).await?;
    let since = log.iter().map(|e| e.seq).max().unwrap_or(0);
    c.node(twin)
        .call::<node_api::Update>(&next)
        .await
        .map_err(DeployError::UpdateRefused)?;
    on(DeployEvent::Updated {
        node,
        contract,
        version: next.version,
    });
    // Only the workloads this update touches get new results.
    let changed: Vec<String> = next
        .workloads
        .iter()
        .filter(|w| w.version == next.version)
        .map(|w| w.name.clone())
        .collect();
    let deployment = follow(c, twin, contract, since, &changed, wait, on).await?;
    Ok(Settled { node, deployment })
}

/// Cancels `contract` and waits until its node removed the deployment; answers the node.
pub async fn cancel(
    c: &GridClient,
    contract: ContractId,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<NodeId, DeployError> {
    let (node, twin) = node_of(c, contract).await?;
    c.cancel_contract(contract).await?;
    tracing::debug!(node, contract, "contract cancelled");
    on(DeployEvent::Cancelled { node, contract });
    removed(c, node, twin, contract, wait, on).await?;
    Ok(node)
}

/// Waits until the node (`node`, with twin `twin`) no longer has deployment `contract`, whose
/// contract is cancelled.
pub(crate) async fn removed(
    c: &GridClient,
    node: NodeId,
    twin: TwinId,
    contract: ContractId,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<(), DeployError> {
    let start = Instant::now();
    loop {
        match fetch(c, twin, contract).await {
            Err(e) if e.node_error() == Some(ErrorKind::NotFound) => break,
            Err(e) => return Err(e.into()),
            Ok(_) if start.elapsed() > wait => {
                return Err(DeployError::StillThere {
                    node,
                    contract,
                    wait,
                });
            }
            Ok(_) => tokio::time::sleep(POLL).await,
        }
    }
    on(DeployEvent::Removed { node, contract });
    Ok(())
}

/// Waits until each of `names` has a settled result (not `init` or `starting`) in the log after sequence
/// number `since` (0 for a new deployment, the log's last entry before an update), reporting
/// the progress. A change the node refused (`unchanged`) fails with its reasons.
pub(crate) async fn follow(
    c: &GridClient,
    twin: TwinId,
    contract: ContractId,
    since: i64,
    names: &[String],
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Deployment, DeployError> {
    let start = Instant::now();
    let total = names.len();
    on(DeployEvent::Following { contract, total });
    let mut reported = BTreeSet::new();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let log = changes(c, twin, contract).await?;
        let new: Vec<&LogEntry> = log.iter().filter(|e| e.seq > since).collect();
        for e in &new {
            if !names.contains(&e.name) || reported.contains(&e.name) {
                continue;
            }
            if e.result.state == ResultState::Starting {
                if shown.get(&e.name) != Some(&e.result.message) {
                    shown.insert(e.name.clone(), e.result.message.clone());
                    on(DeployEvent::Starting {
                        name: e.name.clone(),
                        message: e.result.message.clone(),
                    });
                }
                continue;
            }
            if e.result.state != ResultState::Init && reported.insert(e.name.clone()) {
                on(DeployEvent::Workload {
                    name: e.name.clone(),
                    state: e.result.state,
                    message: e.result.message.clone(),
                });
            }
        }
        let settled = reported.len();
        let errors = new
            .iter()
            .filter(|e| e.result.state == ResultState::Error)
            .count();
        on(DeployEvent::Progress {
            settled,
            total,
            errors,
        });
        if settled == total {
            on(DeployEvent::Settled { contract });
            // A change the node refused leaves the workload as it was, with the reason.
            let kept: Vec<(String, String)> = new
                .iter()
                .filter(|e| e.result.state == ResultState::Unchanged)
                .map(|e| (e.name.clone(), e.result.message.clone()))
                .collect();
            if !kept.is_empty() {
                return Err(DeployError::Kept { kept });
            }
            return Ok(fetch(c, twin, contract).await?);
        }
        if start.elapsed() > wait {
            return Err(DeployError::Timeout { contract, wait });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The next version of `current` holding what `desired` asks: workloads that did not change
/// keep their version, the others (and new ones) take the new version.
pub fn next_version(current: &Deployment, desired: &Deployment) -> Result<Deployment, DeployError> {
    let version = current.version + 1;
    let mut next = desired.clone();
    next.version = version;
    next.twin_id = current.twin_id;
    next.contract_id = current.contract_id;
    next.signature_requirement = zos_types::deployment::SignatureRequirement {
        signatures: vec![],
        ..current.signature_requirement.clone()
    };
    for w in &mut next.workloads {
        w.version = match current.workloads.iter().find(|o| o.name == w.name) {
            Some(o) if o.kind == w.kind && same(o, w)? => o.version,
            _ => version,
        };
        w.result = None;
    }
    current
        .plan_update(&next)
        .map_err(DeployError::UpdateNotAllowed)?;
    Ok(next)
}

fn same(a: &Workload, b: &Workload) -> Result<bool, DeploymentError> {
    Ok(a.parse()?.to_value() == b.parse()?.to_value()
        && a.metadata == b.metadata
        && a.description == b.description)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::deployment::{SignatureRequest, SignatureRequirement};
    use zos_types::workload::WorkloadType;

    fn deployment(shared_kind: WorkloadType, shared_size: u64) -> Deployment {
        let w = |name: &str, kind, size: u64| Workload {
            version: 0,
            name: name.into(),
            kind,
            data: serde_json::json!({ "size": size }),
            metadata: String::new(),
            description: String::new(),
            result: None,
        };
        Deployment {
            version: 0,
            twin_id: 4,
            contract_id: 0,
            metadata: String::new(),
            description: "two disks".into(),
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: 4,
                    required: true,
                    weight: 1,
                }],
                weight_required: 1,
                signatures: vec![],
            },
            workloads: vec![
                w("data", WorkloadType::Zmount, 2 << 30),
                w("shared", shared_kind, shared_size),
            ],
        }
    }

    #[test]
    fn updates_bump_only_what_changed() {
        let current = deployment(WorkloadType::Volume, 1 << 30);
        current.validate().unwrap();
        let desired = deployment(WorkloadType::Volume, 2 << 30);
        let next = next_version(&current, &desired).unwrap();
        assert_eq!(next.version, 1);
        assert_eq!(next.workloads[0].version, 0);
        assert_eq!(next.workloads[1].version, 1);
        let retyped = deployment(WorkloadType::Zmount, 1 << 30);
        let e = next_version(&current, &retyped).unwrap_err();
        assert!(matches!(e, DeployError::UpdateNotAllowed(_)), "{e}");
    }

    #[test]
    fn a_kept_workload_names_its_reason() {
        let e = DeployError::Kept {
            kept: vec![
                ("a".into(), "too small".into()),
                ("b".into(), "busy".into()),
            ],
        };
        assert_eq!(
            e.to_string(),
            "the node kept these workloads as they were: a: too small; b: busy"
        );
    }
}
