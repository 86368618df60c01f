//! Deployments a group approves: [`propose_deploy`], [`propose_update`] and [`propose_cancel`]
//! make a proposal on the grid signed by this twin; the other twins [`sign`] (or reject) it.
//! The signature that completes the weight approves it on the grid — which makes, updates or
//! cancels the contract in the same step — and that signer's call then [`deliver`]s it: sends
//! the signed deployment (or update) to the node over the relay, as [`super::deploy::deploy`]
//! does, and follows it until its workloads settle; for a cancel, waits until the node removed
//! the deployment.
//!
//! What a twin signs is the proposal's message ([`Proposal::message`]): for a deployment, the
//! very message the node checks, so the grid's gathered signatures are the deployment's.

use std::time::Duration;

use zos_types::deployment::{ContractId, Deployment, cancel_message, signed_message};
use zos_types::node_api;
use zos_types::proposal::{
    CreateProposal, Proposal, ProposalFilter, ProposalId, ProposalKind, ProposalState,
};
use zos_types::{NodeId, TwinId};

use super::deploy::{
    DeployError, DeployEvent, Settled, changes, fetch, follow, next_version, node_of, removed,
};
use crate::{ClientError, GridClient};

/// What became of a proposal after a vote or a delivery.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Still gathering signatures.
    Open(Proposal),
    /// Can no longer be approved (or expired).
    Closed(Proposal),
    /// Approved and delivered: the node runs the deployment (or its update), every followed
    /// workload settled.
    Delivered(Proposal, Settled),
    /// An approved cancel: the node removed the deployment.
    Cancelled(Proposal, NodeId),
}

impl Outcome {
    pub fn proposal(&self) -> &Proposal {
        match self {
            Self::Open(p) | Self::Closed(p) | Self::Delivered(p, _) | Self::Cancelled(p, _) => p,
        }
    }
}

/// Whether contract `contract` was made by a proposal: its twins then approve every update
/// and cancel together, and the grid refuses them from its owner alone.
/// A grid without proposals (older than migration 4) governs nothing.
pub async fn governed(c: &GridClient, contract: ContractId) -> Result<bool, ClientError> {
    let approved = match c
        .list_proposals(&ProposalFilter {
            state: Some(ProposalState::Approved),
            contract_id: Some(contract),
        })
        .await
    {
        Ok(list) => list,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(approved.iter().any(|p| p.kind == ProposalKind::Deploy))
}

fn me(c: &GridClient) -> Result<(TwinId, &zos_types::Identity), ClientError> {
    Ok((
        c.twin_id().ok_or(ClientError::NoTwin)?,
        c.identity().ok_or(ClientError::NoIdentity)?,
    ))
}

/// Proposes deploying `d` (this twin's, with its signature requirement) on `node`, signed by
/// this twin; open for `lifetime` (the grid's default when `None`). A requirement this twin
/// meets alone is approved at once and delivered.
pub async fn propose_deploy(
    c: &GridClient,
    node: NodeId,
    d: Deployment,
    lifetime: Option<Duration>,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Outcome, DeployError> {
    let (_, identity) = me(c)?;
    let signature = identity.sign(&signed_message(node, &d.hash()?));
    let p = c
        .create_proposal(&CreateProposal {
            kind: ProposalKind::Deploy,
            node_id: Some(node),
            contract_id: None,
            deployment: Some(d),
            signature,
            lifetime_secs: lifetime.map(|l| l.as_secs()),
        })
        .await?;
    settle(c, p, wait, on).await
}

/// Proposes changing deployment `contract` to `desired` (as [`super::deploy::update`] computes
/// the next version), keeping its twins and weights.
pub async fn propose_update(
    c: &GridClient,
    contract: ContractId,
    desired: &Deployment,
    lifetime: Option<Duration>,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Outcome, DeployError> {
    let (_, identity) = me(c)?;
    let (node, twin) = node_of(c, contract).await?;
    let current = fetch(c, twin, contract).await?;
    let next = next_version(&current, desired)?;
    let signature = identity.sign(&signed_message(node, &next.hash()?));
    let p = c
        .create_proposal(&CreateProposal {
            kind: ProposalKind::Update,
            node_id: None,
            contract_id: Some(contract),
            deployment: Some(next),
            signature,
            lifetime_secs: lifetime.map(|l| l.as_secs()),
        })
        .await?;
    settle(c, p, wait, on).await
}

/// Proposes cancelling contract `contract`, which a proposal made.
pub async fn propose_cancel(
    c: &GridClient,
    contract: ContractId,
    lifetime: Option<Duration>,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Outcome, DeployError> {
    let (_, identity) = me(c)?;
    let (node, _) = node_of(c, contract).await?;
    let signature = identity.sign(&cancel_message(node, contract));
    let p = c
        .create_proposal(&CreateProposal {
            kind: ProposalKind::Cancel,
            node_id: None,
            contract_id: Some(contract),
            deployment: None,
            signature,
            lifetime_secs: lifetime.map(|l| l.as_secs()),
        })
        .await?;
    settle(c, p, wait, on).await
}

/// Signs proposal `id` as the grid has it; when this signature completes the weight, delivers
/// it.
pub async fn sign(
    c: &GridClient,
    id: ProposalId,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Outcome, DeployError> {
    let p = c.get_proposal(id).await?;
    let p = c.sign_proposal(&p).await?;
    settle(c, p, wait, on).await
}

/// Rejects proposal `id`.
pub async fn reject(c: &GridClient, id: ProposalId, reason: &str) -> Result<Outcome, DeployError> {
    let p = c.reject_proposal(id, reason).await?;
    Ok(match p.state {
        ProposalState::Open => Outcome::Open(p),
        _ => Outcome::Closed(p),
    })
}

/// Delivers `p` when it is approved; answers where it stands otherwise.
async fn settle(
    c: &GridClient,
    p: Proposal,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Outcome, DeployError> {
    match p.state {
        ProposalState::Open => Ok(Outcome::Open(p)),
        ProposalState::Approved => deliver(c, p, wait, on).await,
        ProposalState::Rejected | ProposalState::Expired => Ok(Outcome::Closed(p)),
    }
}

/// Sends approved proposal `p` to its node and follows it: the deployment of a deploy (with
/// the gathered signatures and the contract the grid made), the next version of an update;
/// for a cancel, waits until the node removed the deployment. Any twin of the proposal may
/// deliver it again (a node offline when it was approved); the node takes it once.
pub async fn deliver(
    c: &GridClient,
    p: Proposal,
    wait: Duration,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<Outcome, DeployError> {
    let node = p.node_id;
    let contract = p
        .contract_id
        .ok_or(DeployError::NotNodeContract { contract: 0 })?;
    let target = c
        .get_node(node)
        .await
        .map_err(|source| DeployError::Node { node, source })?;
    if p.kind == ProposalKind::Cancel {
        on(DeployEvent::Cancelled { node, contract });
        removed(c, node, target.twin_id, contract, wait, on).await?;
        return Ok(Outcome::Cancelled(p, node));
    }
    let d = p
        .signed_deployment()
        .ok_or(DeployError::NotNodeContract { contract })?;
    let deployment = if p.kind == ProposalKind::Deploy {
        on(DeployEvent::ContractCreated { node, contract });
        if let Err(source) = c.node(target.twin_id).call::<node_api::Deploy>(&d).await {
            return Err(DeployError::Node { node, source });
        }
        on(DeployEvent::Sent { node, contract });
        let names: Vec<String> = d.workloads.iter().map(|w| w.name.clone()).collect();
        follow(c, target.twin_id, contract, 0, &names, wait, on).await?
    } else {
        let log = changes(c, target.twin_id, contract).await?;
        let since = log.iter().map(|e| e.seq).max().unwrap_or(0);
        c.node(target.twin_id)
            .call::<node_api::Update>(&d)
            .await
            .map_err(DeployError::UpdateRefused)?;
        on(DeployEvent::Updated {
            node,
            contract,
            version: d.version,
        });
        let changed: Vec<String> = d
            .workloads
            .iter()
            .filter(|w| w.version == d.version)
            .map(|w| w.name.clone())
            .collect();
        follow(c, target.twin_id, contract, since, &changed, wait, on).await?
    };
    Ok(Outcome::Delivered(p, Settled { node, deployment }))
}
