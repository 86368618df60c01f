//! `zos deploy` and `zos deployment …`: contracts on the grid, deployments on nodes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use zos_client::GridClient;
use zos_types::contract::{
    ContractFilter, ContractKind, ContractState, CreateNodeContract, UpdateNodeContract,
};
use zos_types::deployment::{ContractId, Deployment, ResultState};
use zos_types::node_api::{self, ChangesBody, ConsoleBody, ContractBody, ErrorKind, LogEntry};
use zos_types::{NodeId, TwinId};

use crate::commands::signed_client;
use crate::output::{self, Table, fields};
use crate::{Global, deployfile};

#[derive(Debug, Subcommand)]
pub enum DeploymentCmd {
    /// Show a deployment with the state of each workload.
    Get { contract: ContractId },
    /// List your deployments (node contracts that are not cancelled).
    List,
    /// The full result log of a deployment.
    Changes { contract: ContractId },
    /// Apply a changed deployment file to an existing deployment.
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
    /// Cancel the contract: the node removes every workload.
    Cancel {
        contract: ContractId,
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

/// The node (id, twin) a node contract is on.
async fn node_of(c: &GridClient, contract: ContractId) -> anyhow::Result<(NodeId, TwinId)> {
    let k = c
        .get_contract(contract)
        .await
        .with_context(|| format!("contract {contract}"))?;
    let ContractKind::Node { node_id, .. } = k.kind else {
        bail!("contract {contract} is not a node contract");
    };
    let node = c.get_node(node_id).await?;
    Ok((node_id, node.twin_id))
}

async fn fetch(
    c: &GridClient,
    node_twin: TwinId,
    contract: ContractId,
) -> anyhow::Result<Deployment> {
    Ok(c.node(node_twin)
        .call::<node_api::Get>(&ContractBody {
            contract_id: contract,
        })
        .await?)
}

/// The result log of deployment `contract` on the node with twin `twin`.
async fn changes(
    c: &GridClient,
    twin: TwinId,
    contract: ContractId,
) -> anyhow::Result<Vec<LogEntry>> {
    let body = ChangesBody {
        contract_id: contract,
        limit: None,
        cursor: None,
    };
    Ok(c.node(twin).all::<node_api::Changes>(body).await?)
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn print_deployment(d: &Deployment) {
    fields(&[
        ("contract", d.contract_id.to_string()),
        ("version", d.version.to_string()),
        ("description", d.description.clone()),
    ]);
    println!();
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
    t.print();
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
    if g.json {
        output::json(&summary(node, d))?;
    } else {
        print_deployment(d);
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
        bail!("workloads in error: {}", failed.join(", "));
    }
    Ok(())
}

/// `zos deploy FILE --node ID`.
pub async fn deploy(file: &Path, node: NodeId, wait: Duration, g: &Global) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    let me = c.twin_id().context("no twin")?;
    let d = deployfile::parse(&read_file(file)?, me)?;
    let done = submit(&c, node, d, wait, g.json).await?;
    finish(node, &done, g)
}

/// Makes the contract of `d` on `node`, signs and sends `d`, and follows it until every
/// workload settles. A deployment the node refuses leaves no contract behind.
pub async fn submit(
    c: &GridClient,
    node: NodeId,
    mut d: Deployment,
    wait: Duration,
    quiet: bool,
) -> anyhow::Result<Deployment> {
    let me = c.twin_id().context("no twin")?;
    let target = c
        .get_node(node)
        .await
        .with_context(|| format!("node {node}"))?;
    if !target.online {
        bail!("node {node} is offline: pick an online node (`zos node list --online`)");
    }
    let contract = c
        .create_node_contract(&CreateNodeContract {
            node_id: node,
            deployment_hash: d.hash()?,
            public_ips: d.public_ipv4_count()?,
        })
        .await
        .context("creating the node contract")?;
    d.contract_id = contract.id;
    d.sign(node, me, c.identity().context("no key")?)?;
    if let Err(e) = c.node(target.twin_id).call::<node_api::Deploy>(&d).await {
        // The node refused: do not leave a contract (and its reserved addresses) behind.
        let _ = c.cancel_contract(contract.id).await;
        return Err(anyhow::Error::new(e).context(format!(
            "node {node} refused the deployment; contract {} cancelled",
            contract.id
        )));
    }
    if !quiet {
        eprintln!("contract {} on node {node}: deployment sent", contract.id);
    }
    let names: Vec<String> = d.workloads.iter().map(|w| w.name.clone()).collect();
    follow(c, target.twin_id, contract.id, 0, &names, wait, quiet).await
}

/// Changes deployment `contract` to `desired` (workloads whose data changed get a new
/// version), and follows the changed workloads until they settle.
pub async fn update_to(
    c: &GridClient,
    contract: ContractId,
    desired: &Deployment,
    wait: Duration,
    quiet: bool,
) -> anyhow::Result<(NodeId, Deployment)> {
    let me = c.twin_id().context("no twin")?;
    let (node, twin) = node_of(c, contract).await?;
    let current = fetch(c, twin, contract).await?;
    let mut next = deployfile::next_version(&current, desired)?;
    c.update_node_contract(
        contract,
        &UpdateNodeContract {
            deployment_hash: next.hash()?,
        },
    )
    .await
    .context("updating the contract's hash")?;
    next.sign(node, me, c.identity().context("no key")?)?;
    // This update's results are the log entries after the last one now.
    let log = changes(c, twin, contract).await?;
    let since = log.iter().map(|e| e.seq).max().unwrap_or(0);
    c.node(twin)
        .call::<node_api::Update>(&next)
        .await
        .context("the node refused the update")?;
    let changed: Vec<String> = next
        .workloads
        .iter()
        .filter(|w| w.version == next.version)
        .map(|w| w.name.clone())
        .collect();
    // Only the workloads this update touches get new results.
    let done = follow(c, twin, contract, since, &changed, wait, quiet).await?;
    Ok((node, done))
}

/// Cancels `contract` and waits until its node removed the deployment.
pub async fn cancel(
    c: &GridClient,
    contract: ContractId,
    wait: Duration,
    quiet: bool,
) -> anyhow::Result<NodeId> {
    let (node, twin) = node_of(c, contract).await?;
    c.cancel_contract(contract).await?;
    let start = Instant::now();
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_message(format!(
        "contract {contract} cancelled; node {node} removes the workloads"
    ));
    bar.enable_steady_tick(Duration::from_millis(120));
    loop {
        let get = ContractBody {
            contract_id: contract,
        };
        match c.node(twin).call::<node_api::Get>(&get).await {
            Err(e) if e.node_error() == Some(ErrorKind::NotFound) => break,
            Err(e) => return Err(e.into()),
            Ok(_) if start.elapsed() > wait => {
                bar.abandon();
                bail!(
                    "node {node} still has deployment {contract} after {} s",
                    wait.as_secs()
                );
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    bar.finish_and_clear();
    Ok(node)
}

pub async fn deployment(cmd: DeploymentCmd, g: &Global) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    let me = c.twin_id().context("no twin")?;
    match cmd {
        DeploymentCmd::Get { contract } => {
            let (node, twin) = node_of(&c, contract).await?;
            let d = fetch(&c, twin, contract).await?;
            if g.json {
                output::json(&summary(node, &d))
            } else {
                print_deployment(&d);
                Ok(())
            }
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
            if g.json {
                return output::json(&live);
            }
            let mut t = Table::new(&["CONTRACT", "NODE", "STATE", "PUBLIC IPS"]);
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
                    ]);
                }
            }
            t.print();
            Ok(())
        }
        DeploymentCmd::Changes { contract } => {
            let (_, twin) = node_of(&c, contract).await?;
            let log = changes(&c, twin, contract).await?;
            if g.json {
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
            t.print();
            Ok(())
        }
        DeploymentCmd::Update {
            contract,
            file,
            wait,
        } => {
            let desired = deployfile::parse(&read_file(&file)?, me)?;
            let (node, done) =
                update_to(&c, contract, &desired, Duration::from_secs(wait), g.json).await?;
            finish(node, &done, g)
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
            if g.json {
                return output::json(&v);
            }
            print!("{}", v.console);
            Ok(())
        }
        DeploymentCmd::Cancel { contract, wait } => {
            let node = cancel(&c, contract, Duration::from_secs(wait), g.json).await?;
            if g.json {
                output::json(&json!({"contract_id": contract, "cancelled": true}))
            } else {
                println!(
                    "contract {contract} cancelled and its workloads removed from node {node}"
                );
                Ok(())
            }
        }
    }
}

/// Waits until each of `names` has a settled result (not `init`) in the log after sequence
/// number `since` (0 for a new deployment, the log's last entry before an update), drawing the
/// progress. A change the node refused (`unchanged`) fails with its reasons.
async fn follow(
    c: &GridClient,
    twin: TwinId,
    contract: ContractId,
    since: i64,
    names: &[String],
    wait: Duration,
    quiet: bool,
) -> anyhow::Result<Deployment> {
    let start = Instant::now();
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(names.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {pos}/{len} workloads settled {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    loop {
        let log = changes(c, twin, contract).await?;
        let new = || log.iter().filter(|e| e.seq > since);
        let done = names
            .iter()
            .filter(|n| new().any(|e| &e.name == *n && e.result.state != ResultState::Init))
            .count();
        bar.set_position(done as u64);
        let errors = new()
            .filter(|e| e.result.state == ResultState::Error)
            .count();
        bar.set_message(if errors > 0 {
            format!("({errors} in error)")
        } else {
            String::new()
        });
        if done == names.len() {
            bar.finish_and_clear();
            // A change the node refused leaves the workload as it was, with the reason.
            let refused: Vec<String> = new()
                .filter(|e| e.result.state == ResultState::Unchanged)
                .map(|e| format!("{}: {}", e.name, e.result.message))
                .collect();
            if !refused.is_empty() {
                bail!(
                    "the node kept these workloads as they were: {}",
                    refused.join("; ")
                );
            }
            return fetch(c, twin, contract).await;
        }
        if start.elapsed() > wait {
            bar.abandon();
            bail!(
                "the node did not finish within {wait:?}; follow it with `zos deployment get {contract}`"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
