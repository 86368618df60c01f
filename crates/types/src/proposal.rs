//! Proposals: a deployment, an update or a cancel that a group of twins approves together.
//!
//! A deployment's signature requirement names twins with weights and the weight it needs. A
//! **proposal** carries such a change to the grid, which keeps it until the twins it names have
//! signed enough weight (the grid then makes, updates or cancels the node contract in the same
//! transaction), reject enough of it, or it expires. Proposals never change once made: a
//! different deployment is a new proposal, so no signature is ever counted for something its
//! twin did not see.
//!
//! | method and path | signer | body → answer |
//! |---|---|---|
//! | `POST /proposals` | the deployment's (or contract's) twin | [`CreateProposal`] → 201 [`Proposal`] |
//! | `GET /proposals?state=&contract_id=` | any twin | [`Proposal`]s it proposed or is named in |
//! | `GET /proposals/{id}` | a twin named in it | [`Proposal`] |
//! | `POST /proposals/{id}/sign` | a twin named in it | [`SignProposal`] → [`Proposal`] |
//! | `POST /proposals/{id}/reject` | a twin named in it | [`RejectProposal`] → [`Proposal`] |
//!
//! What the twins sign is [`Proposal::message`]: for a deploy or an update, the very message a
//! node checks ([`signed_message`] of the deployment's hash and node), so the signatures the
//! grid gathered go to the node as they are; for a cancel, [`cancel_message`], a message with a
//! domain tag of its own.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::deployment::{
    ContractId, Deployment, DeploymentHash, DeploymentSignature, SignatureRequest, cancel_message,
    signed_message,
};
use crate::{NodeId, Signature, TwinId};

/// Id of a proposal on the grid.
pub type ProposalId = u64;

/// How long a proposal stays open unless its proposer says otherwise: 7 days.
pub const DEFAULT_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// The longest a proposal may stay open: 30 days.
pub const MAX_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// The shortest: a minute.
pub const MIN_LIFETIME_SECS: u64 = 60;
/// Most open proposals one twin may have made.
pub const MAX_OPEN_PER_TWIN: u32 = 100;
/// Longest reason a rejection carries, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// What a proposal does when it is approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalKind {
    /// Make a node contract for the deployment (the proposer's), which then goes to the node.
    Deploy,
    /// Set the contract's hash to the new version of its deployment.
    Update,
    /// Cancel the contract.
    Cancel,
}

impl ProposalKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Update => "update",
            Self::Cancel => "cancel",
        }
    }
}

impl std::fmt::Display for ProposalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalState {
    /// Gathering signatures.
    Open,
    /// Enough weight signed: the grid acted on it.
    Approved,
    /// So much weight rejected it (or a twin whose signature is required did) that it can no
    /// longer be approved.
    Rejected,
    /// Its time ran out before it was approved.
    Expired,
}

impl ProposalState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }
}

impl std::fmt::Display for ProposalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A twin's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub twin_id: TwinId,
    /// Over [`Proposal::message`], by the twin's key.
    pub signature: Signature,
    /// Grid time (unix seconds).
    pub at: i64,
}

/// A twin's refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub twin_id: TwinId,
    #[serde(default)]
    pub reason: String,
    pub at: i64,
}

/// A change waiting for the weight of its twins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: ProposalId,
    pub kind: ProposalKind,
    pub node_id: NodeId,
    /// The contract an update or cancel is about; for a deploy, the contract made when it was
    /// approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<ContractId>,
    /// The deployment of a deploy or an update, without signatures (they are in `signatures`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    /// Its hash, for a deploy or an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<DeploymentHash>,
    /// Public IPv4 addresses a deploy's contract reserves.
    #[serde(default)]
    pub public_ips: u32,
    /// The twins whose signatures count, with their weights (the deployment's requirement; for
    /// a cancel, the contract's).
    pub requests: Vec<SignatureRequest>,
    pub weight_required: u32,
    /// The twin that made the proposal: the deployment's, or the contract's.
    pub proposer: TwinId,
    pub created_at: i64,
    pub expires_at: i64,
    pub state: ProposalState,
    #[serde(default)]
    pub signatures: Vec<Vote>,
    #[serde(default)]
    pub rejections: Vec<Rejection>,
}

/// How far a proposal got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub signed: u64,
    pub rejected: u64,
    /// All requested weight.
    pub total: u64,
    pub required: u32,
    /// The signatures are enough: weight reached, every required twin signed.
    pub met: bool,
    /// It can no longer be met.
    pub dead: bool,
}

impl Proposal {
    /// What a twin signs to approve this proposal.
    pub fn message(&self) -> Vec<u8> {
        message(self.kind, self.node_id, self.hash, self.contract_id)
    }

    /// Whether `twin` is one of the twins whose signature counts.
    pub fn names(&self, twin: TwinId) -> bool {
        self.requests.iter().any(|r| r.twin_id == twin)
    }

    /// The signed and rejected weight, and whether that approves or kills the proposal. A
    /// twin's signature is required when its request says so, and always the proposer's (a
    /// node refuses a deployment its own twin did not sign): the proposer rejecting, or a
    /// required twin, kills it.
    pub fn tally(&self) -> Tally {
        let weight = |t: TwinId| {
            self.requests
                .iter()
                .find(|r| r.twin_id == t)
                .map_or(0, |r| r.weight as u64)
        };
        let signed_by: HashSet<TwinId> = self.signatures.iter().map(|v| v.twin_id).collect();
        let rejected_by: HashSet<TwinId> = self.rejections.iter().map(|r| r.twin_id).collect();
        let signed = signed_by.iter().map(|t| weight(*t)).sum();
        let rejected = rejected_by.iter().map(|t| weight(*t)).sum();
        let total: u64 = self.requests.iter().map(|r| r.weight as u64).sum();
        let must = |r: &&SignatureRequest| r.required || r.twin_id == self.proposer;
        let required_signed = self
            .requests
            .iter()
            .filter(must)
            .all(|r| signed_by.contains(&r.twin_id));
        let required_rejected = self
            .requests
            .iter()
            .filter(must)
            .any(|r| rejected_by.contains(&r.twin_id));
        Tally {
            signed,
            rejected,
            total,
            required: self.weight_required,
            met: required_signed && signed >= self.weight_required as u64,
            dead: required_rejected || total - rejected < self.weight_required as u64,
        }
    }

    /// The deployment as its node takes it: the gathered signatures in, and the contract id of
    /// an approved deploy. `None` for a cancel.
    pub fn signed_deployment(&self) -> Option<Deployment> {
        let mut d = self.deployment.clone()?;
        if let Some(c) = self.contract_id {
            d.contract_id = c;
        }
        d.signature_requirement.signatures = self
            .signatures
            .iter()
            .map(|v| DeploymentSignature {
                twin_id: v.twin_id,
                signature: v.signature,
                signature_type: "ed25519".into(),
            })
            .collect();
        Some(d)
    }
}

/// What a twin signs to approve a proposal of `kind` on `node`: [`signed_message`] of `hash`
/// for a deploy or an update, [`cancel_message`] of `contract` for a cancel (a missing value
/// signs as zeros, which no real proposal has).
pub fn message(
    kind: ProposalKind,
    node: NodeId,
    hash: Option<DeploymentHash>,
    contract: Option<ContractId>,
) -> Vec<u8> {
    match kind {
        ProposalKind::Deploy | ProposalKind::Update => {
            signed_message(node, &hash.unwrap_or(DeploymentHash([0; 32])))
        }
        ProposalKind::Cancel => cancel_message(node, contract.unwrap_or(0)),
    }
}

/// The body of `POST /proposals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProposal {
    pub kind: ProposalKind,
    /// The node of a deploy (an update's or cancel's is its contract's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// The contract of an update or a cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<ContractId>,
    /// The deployment of a deploy or update, with its signature requirement; its signatures are
    /// ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    /// The proposer's own signature over what the others sign.
    pub signature: Signature,
    /// How long it stays open; [`DEFAULT_LIFETIME_SECS`] when left out, at most
    /// [`MAX_LIFETIME_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<u64>,
}

/// The body of `POST /proposals/{id}/sign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignProposal {
    /// Over [`Proposal::message`].
    pub signature: Signature,
}

/// The body of `POST /proposals/{id}/reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectProposal {
    #[serde(default)]
    pub reason: String,
}

/// Query filters of `GET /proposals`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ProposalState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<ContractId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{CANCEL_DOMAIN, SIGNATURE_DOMAIN};

    fn proposal(requests: &[(TwinId, u32, bool)], required: u32) -> Proposal {
        Proposal {
            id: 1,
            kind: ProposalKind::Cancel,
            node_id: 3,
            contract_id: Some(9),
            deployment: None,
            hash: None,
            public_ips: 0,
            requests: requests
                .iter()
                .map(|&(twin_id, weight, required)| SignatureRequest {
                    twin_id,
                    required,
                    weight,
                })
                .collect(),
            weight_required: required,
            proposer: requests[0].0,
            created_at: 0,
            expires_at: 100,
            state: ProposalState::Open,
            signatures: vec![],
            rejections: vec![],
        }
    }

    fn vote(p: &mut Proposal, twin: TwinId) {
        p.signatures.push(Vote {
            twin_id: twin,
            signature: Signature([0; 64]),
            at: 1,
        });
    }

    fn reject(p: &mut Proposal, twin: TwinId) {
        p.rejections.push(Rejection {
            twin_id: twin,
            reason: String::new(),
            at: 1,
        });
    }

    #[test]
    fn weight_approves_and_rejections_kill() {
        let mut p = proposal(&[(1, 1, false), (2, 1, false), (3, 1, false)], 2);
        vote(&mut p, 1);
        assert!(!p.tally().met && !p.tally().dead);
        vote(&mut p, 2);
        assert!(p.tally().met);

        let mut p = proposal(&[(1, 1, false), (2, 1, false), (3, 1, false)], 2);
        vote(&mut p, 1);
        reject(&mut p, 2);
        assert!(!p.tally().dead, "twin 3 can still make it");
        reject(&mut p, 3);
        let t = p.tally();
        assert!(t.dead && !t.met, "{t:?}");
        assert_eq!((t.signed, t.rejected, t.total), (1, 2, 3));
    }

    #[test]
    fn the_proposer_and_required_twins_must_sign() {
        let mut p = proposal(&[(1, 1, false), (2, 5, false), (3, 1, true)], 2);
        vote(&mut p, 2);
        assert!(!p.tally().met, "the proposer did not sign");
        vote(&mut p, 1);
        assert!(!p.tally().met, "required twin 3 did not sign");
        reject(&mut p, 3);
        assert!(p.tally().dead);
    }

    #[test]
    fn cancel_and_deployment_messages_differ() {
        let c = cancel_message(3, 9);
        assert!(c.starts_with(CANCEL_DOMAIN));
        assert_eq!(c.len(), CANCEL_DOMAIN.len() + 12);
        assert!(!c.starts_with(SIGNATURE_DOMAIN));
        let p = proposal(&[(1, 1, false)], 1);
        assert_eq!(p.message(), c);
        assert_ne!(cancel_message(3, 10), c);
        assert_ne!(cancel_message(4, 9), c);
    }
}
