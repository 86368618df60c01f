//! Deployments: what a twin asks a node to run, signed by the twins it names.
//!
//! The field names follow Zero-OS v3. The **hash** is SHA-256 over the canonical JSON of
//! everything except `contract_id`, the signatures and the results: keys sorted, no spaces,
//! each workload's `data` re-encoded from its typed form (so the formatting a user chose does
//! not change the hash). The node contract on the registry stores that hash.
//!
//! Every listed twin signs the hash **bound to the node** the deployment is for:
//! [`signed_message`] = `"zos-deployment-v2:" || node id (4 bytes, big endian) || hash`. A
//! co-signature made for node 1 therefore proves nothing on node 2, even for a deployment with
//! the same hash (decision 0004). Signatures over the bare hash (the first form) are refused
//! with a message saying to re-sign; deployments a node stored before keep running, since a
//! node checks signatures only when a deployment arrives, never on reconcile.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::capacity::Capacity;
use crate::identity::{Identity, PublicKey, Signature};
use crate::workload::{WorkloadData, WorkloadError, WorkloadType, validate_name, werr};
use crate::{NodeId, TwinId};

/// Largest deployment (JSON bytes) a node accepts.
pub const MAX_DEPLOYMENT_BYTES: usize = 256 * 1024;
/// Most workloads in one deployment.
pub const MAX_WORKLOADS: usize = 256;
/// Most twins one deployment's signature requirement lists (and so most signatures it
/// carries): a node looks up each signer's key on the grid before it accepts a deployment.
pub const MAX_SIGNERS: usize = 64;

/// Id of a contract on the registry.
pub type ContractId = u64;

/// The domain tag of the message a deployment's signers sign (see [`signed_message`]).
pub const SIGNATURE_DOMAIN: &[u8] = b"zos-deployment-v2:";

/// What a twin signs to approve deployment `hash` on `node`: the domain tag, the node id (4
/// bytes, big endian) and the 32 bytes of the hash.
pub fn signed_message(node: NodeId, hash: &DeploymentHash) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 4 + 32);
    m.extend_from_slice(SIGNATURE_DOMAIN);
    m.extend_from_slice(&node.to_be_bytes());
    m.extend_from_slice(&hash.0);
    m
}

/// The domain tag of the message the twins of a deployment's signature requirement sign to
/// approve cancelling its contract (see [`cancel_message`]).
pub const CANCEL_DOMAIN: &[u8] = b"zos-cancel-v1:";

/// What a twin signs to approve cancelling contract `contract` on `node`: the domain tag, the
/// node id (4 bytes, big endian) and the contract id (8 bytes, big endian). Its own domain tag
/// keeps it apart from every deployment approval ([`signed_message`]): a signature made for one
/// never counts as the other.
pub fn cancel_message(node: NodeId, contract: ContractId) -> Vec<u8> {
    let mut m = Vec::with_capacity(CANCEL_DOMAIN.len() + 4 + 8);
    m.extend_from_slice(CANCEL_DOMAIN);
    m.extend_from_slice(&node.to_be_bytes());
    m.extend_from_slice(&contract.to_be_bytes());
    m
}

/// A deployment that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    /// The workload's own error is in the message (nodes send messages, not error chains),
    /// so it is not also a `source`.
    #[error("workload {name:?}: {error}")]
    Workload { name: String, error: WorkloadError },
    #[error("{0}")]
    Invalid(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("update: {0}")]
    Update(String),
}

fn invalid(s: impl Into<String>) -> DeploymentError {
    DeploymentError::Invalid(s.into())
}

/// The sha256 of a deployment, as 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeploymentHash(pub [u8; 32]);

impl fmt::Display for DeploymentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for DeploymentHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = hex::decode(s).map_err(|_| format!("{s:?} is not hex"))?;
        Ok(Self(raw.try_into().map_err(|_| {
            "a deployment hash is 32 bytes".to_string()
        })?))
    }
}

impl Serialize for DeploymentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeploymentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The state a workload is in, as its latest result says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultState {
    /// Accepted and stored, not applied yet.
    Init,
    /// Applied, and coming up (a machine's guest booting); the message is what it shows last.
    Starting,
    Ok,
    Error,
    Deleted,
    Paused,
    /// An update failed and left the workload as it was.
    Unchanged,
}

impl ResultState {
    /// Ok or paused: the workload holds its capacity.
    pub fn is_okay(&self) -> bool {
        matches!(self, Self::Ok | Self::Paused)
    }
}

impl fmt::Display for ResultState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Init => "init",
            Self::Starting => "starting",
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Deleted => "deleted",
            Self::Paused => "paused",
            Self::Unchanged => "unchanged",
        })
    }
}

/// What happened to a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadResult {
    /// Unix seconds.
    pub created: i64,
    pub state: ResultState,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// One workload of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub version: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: WorkloadType,
    pub data: serde_json::Value,
    #[serde(default)]
    pub metadata: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<WorkloadResult>,
}

impl Workload {
    /// The typed data (unknown fields refused).
    pub fn parse(&self) -> Result<WorkloadData, DeploymentError> {
        WorkloadData::parse(self.kind, &self.data).map_err(|error| DeploymentError::Workload {
            name: self.name.clone(),
            error,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRequest {
    pub twin_id: TwinId,
    pub required: bool,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSignature {
    pub twin_id: TwinId,
    pub signature: Signature,
    /// Only `ed25519`.
    pub signature_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRequirement {
    pub requests: Vec<SignatureRequest>,
    pub weight_required: u32,
    #[serde(default)]
    pub signatures: Vec<DeploymentSignature>,
}

/// What a twin asks a node to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub version: u32,
    pub twin_id: TwinId,
    pub contract_id: ContractId,
    #[serde(default)]
    pub metadata: String,
    #[serde(default)]
    pub description: String,
    pub signature_requirement: SignatureRequirement,
    pub workloads: Vec<Workload>,
}

/// `<twin>-<contract>-<name>`: a workload's id on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    pub twin: TwinId,
    pub contract: ContractId,
    pub name: String,
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.twin, self.contract, self.name)
    }
}

impl WorkloadId {
    /// A short name derived from the id and `scope`, for kernel names (taps, namespaces) that
    /// must be unique and short: 12 lowercase hex digits of sha256(`"<id>:<scope>"`).
    pub fn short(&self, scope: &str) -> String {
        let d = Sha256::digest(format!("{self}:{scope}").as_bytes());
        hex::encode(&d[..6])
    }
}

/// Why `s` does not verify for `node`: signed the old way (the bare hash), or for another
/// deployment or node.
fn mismatch(
    s: &DeploymentSignature,
    pk: &PublicKey,
    node: NodeId,
    hash: &DeploymentHash,
) -> String {
    if pk.verify(&hash.0, &s.signature).is_ok() {
        format!(
            "twin {} signed the bare deployment hash (the old form): signatures now name the node; re-sign for node {node} (`zos` signs this way since decision 0004)",
            s.twin_id
        )
    } else {
        format!(
            "twin {}'s signature does not match this deployment on node {node}: it was made for another deployment or another node; re-sign for node {node}",
            s.twin_id
        )
    }
}

impl Deployment {
    /// The canonical JSON the hash covers.
    pub fn challenge(&self) -> Result<Vec<u8>, DeploymentError> {
        let mut workloads = Vec::with_capacity(self.workloads.len());
        for w in &self.workloads {
            workloads.push(json!({
                "version": w.version,
                "name": w.name,
                "type": w.kind,
                "data": w.parse()?.to_value(),
                "metadata": w.metadata,
                "description": w.description,
            }));
        }
        let requests: Vec<_> = self
            .signature_requirement
            .requests
            .iter()
            .map(|r| json!(r))
            .collect();
        let v = json!({
            "version": self.version,
            "twin_id": self.twin_id,
            "metadata": self.metadata,
            "description": self.description,
            "workloads": workloads,
            "signature_requirement": {
                "requests": requests,
                "weight_required": self.signature_requirement.weight_required,
            },
        });
        // serde_json's map keeps keys sorted: this is the canonical form.
        Ok(serde_json::to_vec(&v).expect("json serializes"))
    }

    pub fn hash(&self) -> Result<DeploymentHash, DeploymentError> {
        Ok(DeploymentHash(Sha256::digest(self.challenge()?).into()))
    }

    /// Adds (or replaces) `twin`'s signature approving this deployment on `node`.
    pub fn sign(
        &mut self,
        node: NodeId,
        twin: TwinId,
        identity: &Identity,
    ) -> Result<(), DeploymentError> {
        let hash = self.hash()?;
        let sig = DeploymentSignature {
            twin_id: twin,
            signature: identity.sign(&signed_message(node, &hash)),
            signature_type: "ed25519".into(),
        };
        let sigs = &mut self.signature_requirement.signatures;
        sigs.retain(|s| s.twin_id != twin);
        sigs.push(sig);
        Ok(())
    }

    /// Structure rules: names, versions, references between workloads, each workload's data.
    pub fn validate(&self) -> Result<(), DeploymentError> {
        if self.workloads.is_empty() {
            return Err(invalid("a deployment has at least one workload"));
        }
        if self.workloads.len() > MAX_WORKLOADS {
            return Err(invalid(format!("more than {MAX_WORKLOADS} workloads")));
        }
        if self.metadata.len() > 4096 || self.description.len() > 4096 {
            return Err(invalid("metadata and description are at most 4096 bytes"));
        }
        let mut names = HashSet::new();
        let mut parsed = BTreeMap::new();
        for w in &self.workloads {
            validate_name("name", &w.name).map_err(|error| DeploymentError::Workload {
                name: w.name.clone(),
                error,
            })?;
            if !names.insert(w.name.as_str()) {
                return Err(invalid(format!("workload name {:?} is used twice", w.name)));
            }
            if w.version > self.version {
                return Err(invalid(format!(
                    "workload {:?} has version {} above the deployment's {}",
                    w.name, w.version, self.version
                )));
            }
            if w.metadata.len() > 4096 || w.description.len() > 4096 {
                return Err(invalid(format!(
                    "workload {:?}: metadata and description are at most 4096 bytes",
                    w.name
                )));
            }
            let data = w.parse()?;
            data.validate().map_err(|error| DeploymentError::Workload {
                name: w.name.clone(),
                error,
            })?;
            parsed.insert(w.name.as_str(), data);
        }
        let kind_of = |n: &str| parsed.get(n).map(WorkloadData::kind);
        let mut public_ip_users = HashSet::new();
        for (name, data) in &parsed {
            let wrong = |field: &str, reason: String| DeploymentError::Workload {
                name: name.to_string(),
                error: werr(field, reason),
            };
            match data {
                WorkloadData::Zmachine(m) => {
                    if !m.network.public_ip.is_empty() {
                        if kind_of(&m.network.public_ip) != Some(WorkloadType::Ip) {
                            return Err(wrong(
                                "network.public_ip",
                                format!(
                                    "{:?} is not an ip workload of this deployment",
                                    m.network.public_ip
                                ),
                            ));
                        }
                        if !public_ip_users.insert(m.network.public_ip.clone()) {
                            return Err(wrong(
                                "network.public_ip",
                                format!("{:?} is used by another machine", m.network.public_ip),
                            ));
                        }
                    }
                    for (i, mount) in m.mounts.iter().enumerate() {
                        if !matches!(
                            kind_of(&mount.name),
                            Some(WorkloadType::Zmount | WorkloadType::Volume)
                        ) {
                            return Err(wrong(
                                &format!("mounts[{i}].name"),
                                format!(
                                    "{:?} is not a zmount or volume of this deployment",
                                    mount.name
                                ),
                            ));
                        }
                    }
                }
                WorkloadData::Zlogs(z) if kind_of(&z.zmachine) != Some(WorkloadType::Zmachine) => {
                    return Err(wrong(
                        "zmachine",
                        format!("{:?} is not a zmachine of this deployment", z.zmachine),
                    ));
                }
                _ => {}
            }
        }
        self.validate_signers()
    }

    /// The signature requirement's shape: 1 to [`MAX_SIGNERS`] requested twins, each once,
    /// the deployment's own among them, a reachable weight, and at most one signature per
    /// requested twin. Checked before any signer's key is looked up.
    fn validate_signers(&self) -> Result<(), DeploymentError> {
        let req = &self.signature_requirement;
        if req.requests.is_empty() || req.requests.len() > MAX_SIGNERS {
            return Err(DeploymentError::Signature(format!(
                "{} signature requests: list 1 to {MAX_SIGNERS}",
                req.requests.len()
            )));
        }
        let mut twins = HashSet::new();
        for r in &req.requests {
            if !twins.insert(r.twin_id) {
                return Err(DeploymentError::Signature(format!(
                    "twin {} is requested twice",
                    r.twin_id
                )));
            }
        }
        if req.signatures.len() > req.requests.len() {
            return Err(DeploymentError::Signature(format!(
                "{} signatures for {} signature requests: send at most one signature per requested twin",
                req.signatures.len(),
                req.requests.len()
            )));
        }
        let mut signed = HashSet::new();
        for s in &req.signatures {
            if !twins.contains(&s.twin_id) {
                return Err(DeploymentError::Signature(format!(
                    "twin {} signed but was not requested to: remove its signature or add it to the requests",
                    s.twin_id
                )));
            }
            if !signed.insert(s.twin_id) {
                return Err(DeploymentError::Signature(format!(
                    "twin {} signed twice: keep one signature per twin",
                    s.twin_id
                )));
            }
        }
        if !twins.contains(&self.twin_id) {
            return Err(DeploymentError::Signature(format!(
                "the deployment's twin {} must be among the requests",
                self.twin_id
            )));
        }
        let total: u64 = req.requests.iter().map(|r| r.weight as u64).sum();
        if (req.weight_required as u64) > total {
            return Err(DeploymentError::Signature(format!(
                "weight_required {} is more than all requests together ({total})",
                req.weight_required
            )));
        }
        Ok(())
    }

    /// Checks the signatures for `node`: each one valid for this deployment on this node and
    /// from a requested twin, at most one per twin, every `required` twin (and the
    /// deployment's own twin) signed, and the signed weight reaching `weight_required`. `key`
    /// finds a twin's public key.
    pub fn verify_signatures(
        &self,
        node: NodeId,
        key: impl Fn(TwinId) -> Option<PublicKey>,
    ) -> Result<(), DeploymentError> {
        let bad = |s: String| DeploymentError::Signature(s);
        let hash = self.hash()?;
        let message = signed_message(node, &hash);
        let req = &self.signature_requirement;
        let mut signed = HashSet::new();
        let mut weight: u64 = 0;
        for s in &req.signatures {
            if s.signature_type != "ed25519" {
                return Err(bad(format!(
                    "twin {}: signature type {:?} is not supported (use ed25519)",
                    s.twin_id, s.signature_type
                )));
            }
            let Some(request) = req.requests.iter().find(|r| r.twin_id == s.twin_id) else {
                return Err(bad(format!(
                    "twin {} signed but was not requested to",
                    s.twin_id
                )));
            };
            if !signed.insert(s.twin_id) {
                return Err(bad(format!("twin {} signed twice", s.twin_id)));
            }
            let pk = key(s.twin_id).ok_or_else(|| bad(format!("twin {} is unknown", s.twin_id)))?;
            pk.verify(&message, &s.signature)
                .map_err(|_| bad(mismatch(s, &pk, node, &hash)))?;
            weight += request.weight as u64;
        }
        for r in &req.requests {
            if (r.required || r.twin_id == self.twin_id) && !signed.contains(&r.twin_id) {
                return Err(bad(format!(
                    "required signature of twin {} is missing",
                    r.twin_id
                )));
            }
        }
        if weight < req.weight_required as u64 {
            return Err(bad(format!(
                "signed weight {weight} is below the required {}",
                req.weight_required
            )));
        }
        Ok(())
    }

    /// How many public IPv4 addresses the deployment uses (its `ip` workloads with `v4`): what
    /// its node contract must reserve.
    pub fn public_ipv4_count(&self) -> Result<u32, DeploymentError> {
        let mut n = 0;
        for w in &self.workloads {
            n += w.parse()?.public_ipv4();
        }
        Ok(n)
    }

    /// Total capacity of the workloads.
    pub fn capacity(&self) -> Result<Capacity, DeploymentError> {
        let mut c = Capacity::ZERO;
        for w in &self.workloads {
            c = c.saturating_add(w.parse()?.capacity());
        }
        Ok(c)
    }

    pub fn workload_id(&self, name: &str) -> WorkloadId {
        WorkloadId {
            twin: self.twin_id,
            contract: self.contract_id,
            name: name.to_string(),
        }
    }

    /// What an update from `self` to `new` does, or why it is refused: the twin and contract
    /// stay, the version goes up by one, a workload keeps its type, and a workload is changed
    /// only when its version becomes the new deployment version.
    pub fn plan_update(&self, new: &Deployment) -> Result<UpdatePlan, DeploymentError> {
        let bad = |s: String| DeploymentError::Update(s);
        if new.twin_id != self.twin_id || new.contract_id != self.contract_id {
            return Err(bad("twin_id and contract_id cannot change".into()));
        }
        if new.version != self.version + 1 {
            return Err(bad(format!(
                "version must be {} (the current {} plus one), not {}",
                self.version + 1,
                self.version,
                new.version
            )));
        }
        let mut plan = UpdatePlan::default();
        for w in &new.workloads {
            match self.workloads.iter().find(|o| o.name == w.name) {
                None if w.version == new.version => plan.add.push(w.name.clone()),
                None => {
                    return Err(bad(format!(
                        "new workload {:?} must have version {}",
                        w.name, new.version
                    )));
                }
                Some(o) if o.kind != w.kind => {
                    return Err(bad(format!(
                        "workload {:?} is a {} and cannot become a {}",
                        w.name, o.kind, w.kind
                    )));
                }
                Some(_) if w.version == new.version => plan.update.push(w.name.clone()),
                Some(o) if w.version == o.version => {
                    if o.parse()?.to_value() != w.parse()?.to_value()
                        || o.metadata != w.metadata
                        || o.description != w.description
                    {
                        return Err(bad(format!(
                            "workload {:?} changed without moving its version to {}",
                            w.name, new.version
                        )));
                    }
                    plan.keep.push(w.name.clone());
                }
                Some(o) => {
                    return Err(bad(format!(
                        "workload {:?} has version {}, expected {} (unchanged) or {}",
                        w.name, w.version, o.version, new.version
                    )));
                }
            }
        }
        for o in &self.workloads {
            if !new.workloads.iter().any(|w| w.name == o.name) {
                plan.remove.push(o.name.clone());
            }
        }
        Ok(plan)
    }
}

/// The workloads an update touches, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdatePlan {
    pub add: Vec<String>,
    pub update: Vec<String>,
    pub remove: Vec<String>,
    pub keep: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::GIB;

    fn deployment(twin: TwinId) -> Deployment {
        Deployment {
            version: 0,
            twin_id: twin,
            contract_id: 0,
            metadata: String::new(),
            description: "test".into(),
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: twin,
                    required: false,
                    weight: 1,
                }],
                weight_required: 1,
                signatures: vec![],
            },
            workloads: vec![
                Workload {
                    version: 0,
                    name: "disk".into(),
                    kind: WorkloadType::Zmount,
                    data: json!({"size": GIB}),
                    metadata: String::new(),
                    description: String::new(),
                    result: None,
                },
                Workload {
                    version: 0,
                    name: "vol".into(),
                    kind: WorkloadType::Volume,
                    data: json!({"size": 2 * GIB}),
                    metadata: String::new(),
                    description: String::new(),
                    result: None,
                },
            ],
        }
    }

    #[test]
    fn hash_ignores_contract_signatures_results_and_formatting() {
        let mut d = deployment(5);
        let h = d.hash().unwrap();
        d.contract_id = 99;
        d.workloads[0].result = Some(WorkloadResult {
            created: 1,
            state: ResultState::Ok,
            message: String::new(),
            data: json!(null),
        });
        d.sign(1, 5, &Identity::from_seed([1; 32])).unwrap();
        assert_eq!(d.hash().unwrap(), h);
        // The same data written differently hashes the same.
        d.workloads[1].data =
            serde_json::from_str(&format!("{{ \"size\" : {} }}", 2 * GIB)).unwrap();
        assert_eq!(d.hash().unwrap(), h);
        d.workloads[1].data = json!({"size": 3 * GIB});
        assert_ne!(d.hash().unwrap(), h);
        assert_eq!(h.to_string().parse::<DeploymentHash>().unwrap(), h);
    }

    #[test]
    fn signatures_follow_the_requirement() {
        const NODE: NodeId = 4;
        let alice = Identity::from_seed([1; 32]);
        let bob = Identity::from_seed([2; 32]);
        let keys = |t: TwinId| match t {
            1 => Some(alice.public_key()),
            2 => Some(bob.public_key()),
            _ => None,
        };
        let mut d = deployment(1);
        d.signature_requirement.requests.push(SignatureRequest {
            twin_id: 2,
            required: true,
            weight: 2,
        });
        d.signature_requirement.weight_required = 3;
        d.validate().unwrap();
        d.sign(NODE, 1, &alice).unwrap();
        let e = d.verify_signatures(NODE, keys).unwrap_err();
        assert!(
            e.to_string().contains("required signature of twin 2"),
            "{e}"
        );
        d.sign(NODE, 2, &bob).unwrap();
        d.verify_signatures(NODE, keys).unwrap();

        // Tampering after signing breaks every signature.
        let mut t = d.clone();
        t.workloads[0].data = json!({"size": 5 * GIB});
        assert!(t.verify_signatures(NODE, keys).is_err());
        // A signature by someone not requested, or a wrong key, is refused.
        let mut t = d.clone();
        t.signature_requirement.signatures[1].twin_id = 3;
        assert!(
            t.verify_signatures(NODE, keys)
                .unwrap_err()
                .to_string()
                .contains("not requested")
        );
        let mut t = d.clone();
        t.signature_requirement.signatures[1].signature = alice.sign(&d.hash().unwrap().0);
        assert!(t.verify_signatures(NODE, keys).is_err());
        // Too little weight.
        let mut t = d.clone();
        t.signature_requirement.requests[1].required = false;
        t.signature_requirement
            .signatures
            .retain(|s| s.twin_id == 1);
        t.sign(NODE, 1, &alice).unwrap();
        assert!(
            t.verify_signatures(NODE, keys)
                .unwrap_err()
                .to_string()
                .contains("weight")
        );
    }

    #[test]
    fn a_signature_is_bound_to_its_node_and_the_old_form_is_refused_with_a_hint() {
        let alice = Identity::from_seed([1; 32]);
        let keys = |t: TwinId| (t == 1).then(|| alice.public_key());
        let mut d = deployment(1);
        d.sign(1, 1, &alice).unwrap();
        d.verify_signatures(1, keys).unwrap();
        let e = d.verify_signatures(2, keys).unwrap_err().to_string();
        assert!(
            e.contains("another node") && e.contains("re-sign for node 2"),
            "{e}"
        );
        // The first form: the bare hash.
        d.signature_requirement.signatures[0].signature = alice.sign(&d.hash().unwrap().0);
        let e = d.verify_signatures(1, keys).unwrap_err().to_string();
        assert!(
            e.contains("old form") && e.contains("re-sign for node 1"),
            "{e}"
        );
        let m = signed_message(0x0102_0304, &DeploymentHash([9; 32]));
        assert_eq!(&m[..SIGNATURE_DOMAIN.len()], b"zos-deployment-v2:");
        assert_eq!(&m[SIGNATURE_DOMAIN.len()..][..4], &[1, 2, 3, 4]);
        assert_eq!(&m[SIGNATURE_DOMAIN.len() + 4..], &[9; 32]);
    }

    #[test]
    fn deployment_with_thousands_of_unknown_signers_is_refused_by_its_shape() {
        let alice = Identity::from_seed([1; 32]);
        let mut d = deployment(1);
        d.sign(1, 1, &alice).unwrap();
        d.validate().unwrap();
        // 1,000 signatures by twins nobody requested: refused before any key is looked up.
        let sig = d.signature_requirement.signatures[0].clone();
        let mut t = d.clone();
        for twin in 1000..2000 {
            t.signature_requirement
                .signatures
                .push(DeploymentSignature {
                    twin_id: twin,
                    ..sig.clone()
                });
        }
        let e = t.validate().unwrap_err().to_string();
        assert!(
            e.contains("1001 signatures for 1 signature requests"),
            "{e}"
        );
        // One unrequested signer, or one twin signing twice, is refused too.
        let mut t = d.clone();
        t.signature_requirement.requests.push(SignatureRequest {
            twin_id: 2,
            required: false,
            weight: 1,
        });
        t.signature_requirement
            .signatures
            .push(DeploymentSignature {
                twin_id: 3,
                ..sig.clone()
            });
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("twin 3 signed but was not requested"), "{e}");
        t.signature_requirement.signatures[1].twin_id = 1;
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("twin 1 signed twice"), "{e}");
        // More requested twins than the bound.
        let mut t = d.clone();
        for twin in 2..=(MAX_SIGNERS as TwinId + 1) {
            t.signature_requirement.requests.push(SignatureRequest {
                twin_id: twin,
                required: false,
                weight: 1,
            });
        }
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("65 signature requests: list 1 to 64"), "{e}");
    }

    #[test]
    fn structure_rules() {
        let mut d = deployment(1);
        d.workloads[1].name = "disk".into();
        assert!(d.validate().unwrap_err().to_string().contains("twice"));
        let mut d = deployment(1);
        d.workloads[0].version = 1;
        assert!(d.validate().is_err());
        let mut d = deployment(1);
        d.signature_requirement.requests[0].twin_id = 2;
        assert!(d.validate().is_err());
        let mut d = deployment(1);
        d.workloads[0].data = json!({"size": 0});
        assert!(matches!(
            d.validate(),
            Err(DeploymentError::Workload { .. })
        ));
        let mut d = deployment(1);
        d.workloads.push(Workload {
            version: 0,
            name: "logs".into(),
            kind: WorkloadType::Zlogs,
            data: json!({"zmachine": "nope", "output": "ws://10.0.0.1:1"}),
            metadata: String::new(),
            description: String::new(),
            result: None,
        });
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("not a zmachine")
        );
    }

    #[test]
    fn update_rules() {
        let old = deployment(1);
        let mut new = old.clone();
        new.version = 1;
        new.workloads[1].version = 1;
        new.workloads[1].data = json!({"size": 4 * GIB});
        new.workloads.remove(0);
        new.workloads.push(Workload {
            version: 1,
            name: "more".into(),
            ..old.workloads[0].clone()
        });
        let plan = old.plan_update(&new).unwrap();
        assert_eq!(plan.update, ["vol"]);
        assert_eq!(plan.add, ["more"]);
        assert_eq!(plan.remove, ["disk"]);

        let mut skip = new.clone();
        skip.version = 2;
        assert!(old.plan_update(&skip).is_err());
        let mut retype = new.clone();
        retype.workloads[0].kind = WorkloadType::Zmount;
        assert!(
            old.plan_update(&retype)
                .unwrap_err()
                .to_string()
                .contains("cannot become")
        );
        let mut sneaky = old.clone();
        sneaky.version = 1;
        sneaky.workloads[0].data = json!({"size": 9 * GIB});
        assert!(
            old.plan_update(&sneaky)
                .unwrap_err()
                .to_string()
                .contains("without moving its version")
        );
    }

    #[test]
    fn workload_ids() {
        let id = WorkloadId {
            twin: 1,
            contract: 2,
            name: "vm".into(),
        };
        assert_eq!(id.to_string(), "1-2-vm");
        assert_eq!(id.short("tap").len(), 12);
        assert_ne!(id.short("tap"), id.short("pub"));
    }
}
