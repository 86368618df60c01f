//! `zos proposal …` and the consensus parts of `zos deploy --require` and `zos deployment
//! update|cancel`: deployments a group of twins approves together (docs/consensus.md). The
//! workflows are `zos_client::workflow::proposal`'s; this module parses the requirement, draws
//! the progress and prints what a signer is about to approve.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use zos_client::workflow::proposal::{self as workflow, Outcome};
use zos_types::TwinId;
use zos_types::billing::{Amount, Usage, cost_per_hour, format_amount};
use zos_types::capacity::human_bytes;
use zos_types::deployment::{Deployment, SignatureRequest, SignatureRequirement};
use zos_types::proposal::{Proposal, ProposalFilter, ProposalId, ProposalKind, ProposalState};
use zos_types::workload::WorkloadData;

use crate::exit::{Kind, tag};
use crate::global::{Global, signed_client};
use crate::output::{self, Table, fields, outln};
use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub enum ProposalCmd {
    /// The proposals you made or are named in, newest first.
    List {
        /// Only those in this state: open, approved, rejected, expired.
        #[arg(long)]
        state: Option<String>,
    },
    /// What a proposal would do: every workload, its twins and votes, the hash you sign.
    Show { id: ProposalId },
    /// Approve a proposal. The signature that completes the weight delivers it to the node and
    /// follows it until its workloads settle.
    Sign {
        id: ProposalId,
        /// Give up waiting for the node after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Refuse a proposal. Once too little weight is left to approve it, it is rejected.
    Reject {
        id: ProposalId,
        /// Why, for the other twins.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Send an approved proposal to its node again (when its node was away when it was
    /// approved) and follow it.
    Deliver {
        id: ProposalId,
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
}

/// Parses `W: twinA=w, twinB=w!, …` (a `!` marks a twin whose signature is required) into a
/// signature requirement that must name `me`.
pub fn parse_require(text: &str, me: TwinId) -> anyhow::Result<SignatureRequirement> {
    let usage = "write --require 'WEIGHT: TWIN=W, TWIN=W, …' (e.g. '2: 5=1, 6=1, 7=1'; TWIN=W! makes that twin's signature required)";
    let (weight, twins) = text
        .split_once(':')
        .with_context(|| format!("--require {text:?} has no weight before ':': {usage}"))?;
    let weight_required: u32 = weight
        .trim()
        .parse()
        .with_context(|| format!("--require: {:?} is not a weight: {usage}", weight.trim()))?;
    let mut requests: Vec<SignatureRequest> = Vec::new();
    for part in twins.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (twin, w) = part
            .split_once('=')
            .with_context(|| format!("--require: {part:?} is not TWIN=WEIGHT: {usage}"))?;
        let (w, required) = match w.trim().strip_suffix('!') {
            Some(w) => (w, true),
            None => (w.trim(), false),
        };
        let twin_id: TwinId = twin
            .trim()
            .parse()
            .with_context(|| format!("--require: {:?} is not a twin id: {usage}", twin.trim()))?;
        let weight: u32 = w
            .trim()
            .parse()
            .with_context(|| format!("--require: {:?} is not a weight: {usage}", w.trim()))?;
        if requests.iter().any(|r| r.twin_id == twin_id) {
            bail!("--require names twin {twin_id} twice");
        }
        requests.push(SignatureRequest {
            twin_id,
            required,
            weight,
        });
    }
    if !requests.iter().any(|r| r.twin_id == me) {
        bail!("--require must name your own twin {me} (you sign the proposal first): add {me}=1");
    }
    let total: u64 = requests.iter().map(|r| r.weight as u64).sum();
    if weight_required == 0 || weight_required as u64 > total {
        bail!(
            "--require asks for weight {weight_required}, the twins listed weigh {total} together: ask for 1 to {total}"
        );
    }
    Ok(SignatureRequirement {
        requests,
        weight_required,
        signatures: vec![],
    })
}

/// The signed and required weight, as `1/2`.
fn weight(p: &Proposal) -> String {
    let t = p.tally();
    format!("{}/{}", t.signed, t.required)
}

/// One line per workload: what it is, with its main fields.
fn workload_line(w: &zos_types::deployment::Workload) -> String {
    let main = match w.parse() {
        Err(e) => format!("(invalid: {e})"),
        Ok(WorkloadData::Zmount(z)) => format!("size {}", human_bytes(z.size)),
        Ok(WorkloadData::Volume(v)) => format!("size {}", human_bytes(v.size)),
        Ok(WorkloadData::Zdb(z)) => format!(
            "size {}, mode {}, {}",
            human_bytes(z.size),
            serde_json::to_value(z.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            if z.public { "public" } else { "private" }
        ),
        Ok(WorkloadData::Network(n)) => format!(
            "ip range {}, subnet {}, {} peer(s)",
            n.ip_range,
            n.subnet,
            n.peers.len()
        ),
        Ok(WorkloadData::Ip(ip)) => format!(
            "public {}",
            match (ip.v4, ip.v6) {
                (true, true) => "IPv4 and IPv6",
                (true, false) => "IPv4",
                (false, true) => "IPv6",
                (false, false) => "nothing",
            }
        ),
        Ok(WorkloadData::Zmachine(m)) => {
            let mut parts = vec![
                format!("flist {}", m.flist),
                format!(
                    "{} cpu, memory {}, disk {}",
                    m.compute_capacity.cpu,
                    human_bytes(m.compute_capacity.memory),
                    human_bytes(m.size)
                ),
            ];
            for i in &m.network.interfaces {
                parts.push(format!("network {} ({})", i.network, i.ip));
            }
            if !m.network.public_ip.is_empty() {
                parts.push(format!("public ip {}", m.network.public_ip));
            }
            if m.network.planetary {
                parts.push("planetary".into());
            }
            for mount in &m.mounts {
                parts.push(format!("mount {} at {}", mount.name, mount.mountpoint));
            }
            parts.join(", ")
        }
        Ok(WorkloadData::GatewayNameProxy(g)) => {
            format!("name {}, backends {}", g.name, g.backends.join(" "))
        }
        Ok(WorkloadData::GatewayFqdnProxy(g)) => {
            format!("fqdn {}, backends {}", g.fqdn, g.backends.join(" "))
        }
        Ok(WorkloadData::Zlogs(z)) => format!("logs of {} to {}", z.zmachine, z.output),
    };
    format!("{} {}: {main}", w.kind, w.name)
}

/// What a proposal's deployment costs per hour at the grid's prices: the whole, then each
/// workload on its own (each rounded up, so they may add up to a unit or so more).
struct ProposalCost {
    total: Amount,
    workloads: Vec<(String, Amount)>,
}

impl ProposalCost {
    fn json(&self) -> Value {
        json!({
            "per_hour": format_amount(self.total),
            "per_hour_units": self.total,
            "workloads": self.workloads.iter().map(|(n, a)| (n.clone(), json!(format_amount(*a)))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// The cost of `p`'s deployment (none for a cancel): `Err` says why it could not be priced.
async fn proposal_cost(
    c: &zos_client::GridClient,
    p: &Proposal,
) -> Result<Option<ProposalCost>, String> {
    let Some(d) = &p.deployment else {
        return Ok(None);
    };
    let (total, usage, policy) = crate::account::deployment_cost(c, p.node_id, d)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let on_rented_node = matches!(
        usage,
        Usage::Node {
            on_rented_node: true,
            ..
        }
    );
    let mut workloads = Vec::new();
    for w in &d.workloads {
        let data = w.parse().map_err(|e| e.to_string())?;
        let usage = Usage::Node {
            capacity: data.capacity(),
            public_ips: data.public_ipv4(),
            public_bytes: 0,
            on_rented_node,
        };
        workloads.push((w.name.clone(), cost_per_hour(&policy, &usage)));
    }
    Ok(Some(ProposalCost { total, workloads }))
}

/// What `show` prints, for a person about to sign.
fn print_proposal(p: &Proposal, cost: &Result<Option<ProposalCost>, String>) -> anyhow::Result<()> {
    let mut f = vec![
        ("proposal", p.id.to_string()),
        ("kind", p.kind.to_string()),
        ("state", p.state.to_string()),
        ("node", p.node_id.to_string()),
    ];
    if let Some(c) = p.contract_id {
        f.push(("contract", c.to_string()));
    }
    f.push(("proposer", format!("twin {}", p.proposer)));
    f.push((
        "signed",
        format!(
            "weight {} of the {} needed ({} rejected)",
            p.tally().signed,
            p.weight_required,
            p.tally().rejected
        ),
    ));
    f.push(("created", output::when(p.created_at)));
    f.push(("expires", output::when(p.expires_at)));
    if let Some(d) = &p.deployment {
        f.push(("description", d.description.clone()));
        f.push(("version", d.version.to_string()));
    }
    if p.kind == ProposalKind::Deploy {
        f.push(("public ips", p.public_ips.to_string()));
    }
    let per_workload = match cost {
        Ok(Some(c)) => {
            f.push((
                "cost",
                format!("{} per hour (traffic extra)", format_amount(c.total)),
            ));
            c.workloads.iter().cloned().collect()
        }
        Ok(None) => std::collections::HashMap::new(),
        Err(why) => {
            f.push(("cost", format!("unknown: {why}")));
            std::collections::HashMap::new()
        }
    };
    fields(&f)?;
    if let Some(d) = &p.deployment {
        outln!()?;
        outln!("workloads:")?;
        for w in &d.workloads {
            let changed = p.kind == ProposalKind::Update && w.version == d.version;
            let cost = per_workload
                .get(&w.name)
                .map(|a: &Amount| format!("  [{} /h]", format_amount(*a)))
                .unwrap_or_default();
            outln!(
                "  {}{}{}",
                workload_line(w),
                cost,
                if changed { "  (changed)" } else { "" }
            )?;
        }
    }
    outln!()?;
    let mut t = Table::new(&["TWIN", "WEIGHT", "REQUIRED", "VOTE", "REASON"]);
    for r in &p.requests {
        let vote = if p.signatures.iter().any(|v| v.twin_id == r.twin_id) {
            ("signed", String::new())
        } else if let Some(x) = p.rejections.iter().find(|x| x.twin_id == r.twin_id) {
            ("rejected", x.reason.clone())
        } else {
            ("-", String::new())
        };
        t.row(vec![
            r.twin_id.to_string(),
            r.weight.to_string(),
            if r.required || r.twin_id == p.proposer {
                "yes"
            } else {
                "no"
            }
            .into(),
            vote.0.into(),
            vote.1,
        ]);
    }
    t.print()?;
    outln!()?;
    match (p.kind, p.hash) {
        (ProposalKind::Cancel, _) => outln!(
            "you sign: the cancel of contract {} on node {}",
            p.contract_id.unwrap_or_default(),
            p.node_id
        )?,
        (_, Some(h)) => outln!("hash: {h} (you sign it for node {})", p.node_id)?,
        (_, None) => {}
    }
    Ok(())
}

/// Prints where a proposal stands after an action, or the delivered deployment.
fn finish(o: &Outcome, g: &Global) -> anyhow::Result<()> {
    let p = o.proposal();
    if g.structured() {
        let mut v = serde_json::to_value(p)?;
        match o {
            Outcome::Delivered(_, s) => v["deployment_result"] = deployment_json(&s.deployment),
            Outcome::Cancelled(_, node) => {
                v["removed_from_node"] = json!(node);
            }
            _ => {}
        }
        return output::json(&v);
    }
    match o {
        Outcome::Open(p) => {
            outln!(
                "proposal {} ({} on node {}) is open: signed weight {}",
                p.id,
                p.kind,
                p.node_id,
                weight(p)
            )?;
            let waiting: Vec<String> = p
                .requests
                .iter()
                .filter(|r| {
                    !p.signatures.iter().any(|v| v.twin_id == r.twin_id)
                        && !p.rejections.iter().any(|x| x.twin_id == r.twin_id)
                })
                .map(|r| r.twin_id.to_string())
                .collect();
            outln!(
                "waiting for twins {}: each runs `zos proposal show {}`, then `zos proposal sign {}` (or `zos proposal reject {}`); it expires {}",
                waiting.join(", "),
                p.id,
                p.id,
                p.id,
                output::when(p.expires_at)
            )?;
        }
        Outcome::Closed(p) => {
            outln!("proposal {} is {}: nothing changes", p.id, p.state)?;
        }
        Outcome::Delivered(p, s) => {
            outln!(
                "proposal {} approved: contract {} on node {}, delivered",
                p.id,
                s.deployment.contract_id,
                s.node
            )?;
            let d = &s.deployment;
            let mut t = Table::new(&["NAME", "TYPE", "STATE", "MESSAGE"]);
            for w in &d.workloads {
                let (state, msg) = w.result.as_ref().map_or(("-".into(), String::new()), |r| {
                    (r.state.to_string(), r.message.clone())
                });
                t.row(vec![w.name.clone(), w.kind.to_string(), state, msg]);
            }
            t.print()?;
        }
        Outcome::Cancelled(p, node) => {
            outln!(
                "proposal {} approved: contract {} cancelled and its workloads removed from node {node}",
                p.id,
                p.contract_id.unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

fn deployment_json(d: &Deployment) -> Value {
    let workloads: Vec<Value> = d
        .workloads
        .iter()
        .map(|w| {
            json!({
                "name": w.name, "type": w.kind, "version": w.version,
                "state": w.result.as_ref().map(|r| r.state),
                "message": w.result.as_ref().map(|r| r.message.clone()),
            })
        })
        .collect();
    json!({ "contract_id": d.contract_id, "version": d.version, "workloads": workloads })
}

/// Proposes `d` (whose requirement is set) on `node`: `zos deploy FILE --require …`.
pub async fn propose_deploy(
    d: Deployment,
    node: u32,
    wait: Duration,
    g: &Global,
) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    d.validate()
        .map_err(|e| tag(Kind::Refused, anyhow::Error::new(e)))?;
    let mut progress = Progress::new(g.structured());
    let o = workflow::propose_deploy(&c, node, d, None, wait, &mut |e| progress.deploy(e)).await;
    let o = o.inspect_err(|_| progress.abandon())?;
    finish(&o, g)
}

/// `zos deployment update` of a contract a proposal made.
pub async fn propose_update(
    contract: u64,
    desired: &Deployment,
    wait: Duration,
    g: &Global,
) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    let mut progress = Progress::new(g.structured());
    let o = workflow::propose_update(&c, contract, desired, None, wait, &mut |e| {
        progress.deploy(e)
    })
    .await;
    let o = o.inspect_err(|_| progress.abandon())?;
    finish(&o, g)
}

/// `zos deployment cancel` of a contract a proposal made.
pub async fn propose_cancel(contract: u64, wait: Duration, g: &Global) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    let mut progress = Progress::new(g.structured());
    let o = workflow::propose_cancel(&c, contract, None, wait, &mut |e| progress.deploy(e)).await;
    let o = o.inspect_err(|_| progress.abandon())?;
    finish(&o, g)
}

pub async fn run(cmd: ProposalCmd, g: &Global) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    match cmd {
        ProposalCmd::List { state } => {
            let state = match state.as_deref() {
                None => None,
                Some("open") => Some(ProposalState::Open),
                Some("approved") => Some(ProposalState::Approved),
                Some("rejected") => Some(ProposalState::Rejected),
                Some("expired") => Some(ProposalState::Expired),
                Some(other) => {
                    return Err(tag(
                        Kind::Usage,
                        anyhow::anyhow!(
                            "--state {other:?}: one of open, approved, rejected, expired"
                        ),
                    ));
                }
            };
            let list = c
                .list_proposals(&ProposalFilter {
                    state,
                    contract_id: None,
                })
                .await?;
            if g.structured() {
                return output::json(&list);
            }
            let mut t = Table::new(&[
                "ID", "KIND", "NODE", "CONTRACT", "STATE", "SIGNED", "PROPOSER", "EXPIRES",
            ]);
            for p in &list {
                t.row(vec![
                    p.id.to_string(),
                    p.kind.to_string(),
                    p.node_id.to_string(),
                    p.contract_id.map_or("-".into(), |c| c.to_string()),
                    p.state.to_string(),
                    weight(p),
                    p.proposer.to_string(),
                    output::when(p.expires_at),
                ]);
            }
            t.print()?;
            Ok(())
        }
        ProposalCmd::Show { id } => {
            let p = c.get_proposal(id).await?;
            let cost = proposal_cost(&c, &p).await;
            if g.structured() {
                let mut v = serde_json::to_value(&p)?;
                v["tally"] = serde_json::to_value(p.tally())?;
                v["cost"] = match &cost {
                    Ok(Some(c)) => c.json(),
                    Ok(None) => json!(null),
                    Err(why) => json!({ "error": why }),
                };
                return output::json(&v);
            }
            print_proposal(&p, &cost)
        }
        ProposalCmd::Sign { id, wait } => {
            let mut progress = Progress::new(g.structured());
            let o = workflow::sign(&c, id, Duration::from_secs(wait), &mut |e| {
                progress.deploy(e)
            })
            .await;
            let o = o.inspect_err(|_| progress.abandon())?;
            finish(&o, g)
        }
        ProposalCmd::Reject { id, reason } => {
            let o = workflow::reject(&c, id, &reason).await?;
            finish(&o, g)
        }
        ProposalCmd::Deliver { id, wait } => {
            let p = c.get_proposal(id).await?;
            if p.state != ProposalState::Approved {
                return Err(tag(
                    Kind::Refused,
                    anyhow::anyhow!(
                        "proposal {id} is {}: only an approved proposal is delivered",
                        p.state
                    ),
                ));
            }
            let mut progress = Progress::new(g.structured());
            let o = workflow::deliver(&c, p, Duration::from_secs(wait), &mut |e| {
                progress.deploy(e)
            })
            .await;
            let o = o.inspect_err(|_| progress.abandon())?;
            finish(&o, g)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_parse_and_name_their_proposer() {
        let r = parse_require("2: 5=1, 6=1, 7=2!", 5).unwrap();
        assert_eq!(r.weight_required, 2);
        let got: Vec<_> = r
            .requests
            .iter()
            .map(|q| (q.twin_id, q.weight, q.required))
            .collect();
        assert_eq!(got, [(5, 1, false), (6, 1, false), (7, 2, true)]);
        for (bad, why) in [
            ("5=1, 6=1", "no weight before"),
            ("2: 6=1, 7=1", "your own twin 5"),
            ("5: 5=1, 6=1", "ask for 1 to 2"),
            ("0: 5=1", "ask for 1 to 1"),
            ("1: 5=1, 5=2", "twice"),
            ("1: 5=x", "not a weight"),
            ("1: me=1", "not a twin id"),
        ] {
            let e = parse_require(bad, 5).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
