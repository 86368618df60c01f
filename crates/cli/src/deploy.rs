//! `zos deploy` and `zos deployment …`: contracts on the grid, deployments on nodes. The
//! workflows are `zos_client::workflow::deploy`'s; this module reads the files, draws the
//! progress and prints the results.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use zos_client::workflow::deploy::{self as workflow, changes, fetch, node_of};
use zos_client::workflow::proposal::governed;
use zos_types::NodeId;
use zos_types::contract::{ContractFilter, ContractKind, ContractState};
use zos_types::deployment::{ContractId, Deployment, ResultState};
use zos_types::node_api::{self, ConsoleBody};

use crate::deployfile;
use crate::global::{Global, signed_client};
use crate::output::{self, Table, fields};
use crate::output::{out, outln};
use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub enum DeploymentCmd {
    /// Show a deployment with the state of each workload.
    Get {
        contract: ContractId,
        #[command(flatten)]
        watch: output::Watch,
    },
    /// List your deployments (node contracts that are not cancelled).
    List,
    /// The full result log of a deployment.
    Changes { contract: ContractId },
    /// Apply a changed deployment file to an existing deployment. A deployment made by a
    /// proposal (`zos deploy --require`) is updated by a proposal of the same twins.
    Update {
        contract: ContractId,
        file: PathBuf,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// The console log of a machine (zmachine) of the deployment.
    Console {
        contract: ContractId,
        /// The zmachine's name in the deployment.
        name: String,
        /// How much of the end of the log, in bytes (at most 1 MiB).
        #[arg(long, default_value_t = 64 * 1024)]
        bytes: usize,
    },
    /// Cancel the contract: the node removes every workload. A deployment made by a proposal is
    /// cancelled by a proposal of the same twins.
    Cancel {
        contract: ContractId,
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn print_deployment(d: &Deployment) -> std::io::Result<()> {
    fields(&[
        ("contract", d.contract_id.to_string()),
        ("version", d.version.to_string()),
        ("description", d.description.clone()),
    ])?;
    outln!()?;
    let mut t = Table::new(&["NAME", "TYPE", "STATE", "MESSAGE"]);
    for w in &d.workloads {
        let (state, msg) = w
            .result
            .as_ref()
            .map_or(("-".to_string(), String::new()), |r| {
                (r.state.to_string(), r.message.clone())
            });
        t.row(vec![w.name.clone(), w.kind.to_string(), state, msg]);
    }
    t.print()
}

fn summary(node: NodeId, d: &Deployment) -> Value {
    let workloads: Vec<Value> = d
        .workloads
        .iter()
        .map(|w| {
            let r = w.result.clone();
            json!({
                "name": w.name, "type": w.kind, "version": w.version,
                "state": r.as_ref().map(|r| r.state), "message": r.as_ref().map(|r| r.message.clone()),
                "data": r.map(|r| r.data),
            })
        })
        .collect();
    json!({ "contract_id": d.contract_id, "node_id": node, "version": d.version, "workloads": workloads })
}

fn finish(node: NodeId, d: &Deployment, g: &Global) -> anyhow::Result<()> {
    if g.structured() {
        output::json(&summary(node, d))?;
    } else {
        print_deployment(d)?;
    }
    let failed: Vec<&str> = d
        .workloads
        .iter()
        .filter(|w| {
            w.result
                .as_ref()
                .is_some_and(|r| r.state == ResultState::Error)
        })
        .map(|w| w.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "workloads in error: {}; fix the file and `zos deployment update {} FILE`, or \
             `zos deployment cancel {}`",
            failed.join(", "),
            d.contract_id,
            d.contract_id
        );
    }
    Ok(())
}

/// `zos deploy FILE --node ID [--require REQUIREMENT]`: with a requirement, a proposal the
/// other twins sign (`crate::proposal`).
pub async fn deploy(
    file: &Path,
    node: NodeId,
    wait: Duration,
    require: Option<&str>,
    g: &Global,
) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    let me = c.twin_id().context("no twin")?;
    let mut d = deployfile::parse(&read_file(file)?, me)
        .map_err(|e| crate::exit::tag(crate::exit::Kind::Refused, e))?;
    let mut progress = Progress::new(g.structured());
    let (networks, _) = crate::network::store(g).await?;
    let record = |name: &str| networks.load(name);
    zos_client::workflow::network::pick_ips(&c, node, &mut d, record, &mut |e| progress.deploy(e))
        .await?;
    if let Some(require) = require {
        d.signature_requirement = crate::proposal::parse_require(require, me)
            .map_err(|e| crate::exit::tag(crate::exit::Kind::Usage, e))?;
        return crate::proposal::propose_deploy(d, node, wait, g).await;
    }
    let done = workflow::deploy(&c, node, d, wait, &mut |e| progress.deploy(e)).await;
    let done = done.inspect_err(|_| progress.abandon())?;
    finish(node, &done.deployment, g)
}

pub async fn deployment(cmd: DeploymentCmd, g: &Global) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    let me = c.twin_id().context("no twin")?;
    match cmd {
        DeploymentCmd::Get { contract, watch } => {
            let (node, twin) = node_of(&c, contract).await?;
            let c = &c;
            let what = format!("zos deployment get {contract}");
            output::watch(watch, &what, || async move {
                let d = fetch(c, twin, contract).await?;
                if g.structured() {
                    output::json(&summary(node, &d))
                } else {
                    Ok(print_deployment(&d)?)
                }
            })
            .await
        }
        DeploymentCmd::List => {
            let contracts = c
                .list_contracts(&ContractFilter {
                    twin_id: Some(me),
                    ..ContractFilter::default()
                })
                .await?;
            let live: Vec<_> = contracts
                .into_iter()
                .filter(|k| {
                    k.state != ContractState::Deleted && matches!(k.kind, ContractKind::Node { .. })
                })
                .collect();
            if g.structured() {
                return output::json(&live);
            }
            let mut t = Table::new(&["CONTRACT", "NODE", "STATE", "PUBLIC IPS", "CREATED"]);
            for k in &live {
                if let ContractKind::Node {
                    node_id,
                    public_ips,
                    ..
                } = &k.kind
                {
                    t.row(vec![
                        k.id.to_string(),
                        node_id.to_string(),
                        format!("{:?}", k.state).to_lowercase(),
                        public_ips.to_string(),
                        output::when(k.created_at),
                    ]);
                }
            }
            t.print()?;
            Ok(())
        }
        DeploymentCmd::Changes { contract } => {
            let (_, twin) = node_of(&c, contract).await?;
            let log = changes(&c, twin, contract).await?;
            if g.structured() {
                return output::json(&log);
            }
            let mut t = Table::new(&["SEQ", "NAME", "TYPE", "VERSION", "STATE", "MESSAGE"]);
            for e in &log {
                t.row(vec![
                    e.seq.to_string(),
                    e.name.clone(),
                    e.kind.to_string(),
                    e.version.to_string(),
                    e.result.state.to_string(),
                    e.result.message.clone(),
                ]);
            }
            t.print()?;
            Ok(())
        }
        DeploymentCmd::Update {
            contract,
            file,
            wait,
        } => {
            let desired = deployfile::parse(&read_file(&file)?, me)
                .map_err(|e| crate::exit::tag(crate::exit::Kind::Refused, e))?;
            deployfile::require_ips(&desired)?;
            let wait = Duration::from_secs(wait);
            if governed(&c, contract).await? {
                return crate::proposal::propose_update(contract, &desired, wait, g).await;
            }
            let mut progress = Progress::new(g.structured());
            let done =
                workflow::update(&c, contract, &desired, wait, &mut |e| progress.deploy(e)).await;
            let done = done.inspect_err(|_| progress.abandon())?;
            finish(done.node, &done.deployment, g)
        }
        DeploymentCmd::Console {
            contract,
            name,
            bytes,
        } => {
            let (_, twin) = node_of(&c, contract).await?;
            let v = c
                .node(twin)
                .call::<node_api::Console>(&ConsoleBody {
                    contract_id: contract,
                    name,
                    bytes: Some(bytes),
                })
                .await?;
            if g.structured() {
                return output::json(&v);
            }
            out!("{}", v.console)?;
            Ok(())
        }
        DeploymentCmd::Cancel { contract, wait } => {
            let wait = Duration::from_secs(wait);
            if governed(&c, contract).await? {
                return crate::proposal::propose_cancel(contract, wait, g).await;
            }
            let mut progress = Progress::new(g.structured());
            let node = workflow::cancel(&c, contract, wait, &mut |e| progress.deploy(e)).await;
            let node = node.inspect_err(|_| progress.abandon())?;
            if g.structured() {
                output::json(&json!({"contract_id": contract, "cancelled": true}))
            } else {
                outln!("contract {contract} cancelled and its workloads removed from node {node}")?;
                Ok(())
            }
        }
    }
}
