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
    /// A machine's console: its end, and with `--follow` what it prints next, as it comes
    /// (polled through the relay every second; Ctrl-C stops).
    Logs {
        contract: ContractId,
        /// The zmachine's name in the deployment.
        name: String,
        /// Keep printing what the machine prints.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How much of the end of the log to start with, in bytes (at most 256 KiB).
        #[arg(long, default_value_t = 16 * 1024)]
        tail: usize,
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

/// `zos deploy FILE --node ID [--require REQUIREMENT] [--max-cost TOKENS]`: prints the cost per
/// hour first and refuses above the maximum; with a requirement, a proposal the other twins
/// sign (`crate::proposal`).
pub async fn deploy(
    file: &Path,
    node: NodeId,
    wait: Duration,
    require: Option<&str>,
    max_cost: Option<&str>,
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
    // Priced once complete (the machines' addresses picked), before anything is signed.
    crate::account::check_cost(&c, node, &d, max_cost).await?;
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
        DeploymentCmd::Logs {
            contract,
            name,
            follow,
            tail,
        } => logs(&c, contract, name, follow, tail, g).await,
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

/// What of `cur` (the console's end now) comes after `last` (its end before): found by the last
/// kilobyte of `last` inside `cur`. `None` when `cur` no longer holds it (more was printed than
/// one poll reads, or the log was made anew): then `cur` is all new, with a gap before it.
fn new_output<'a>(last: &str, cur: &'a str) -> Option<&'a str> {
    if last.is_empty() {
        return Some(cur);
    }
    let mut from = last.len().saturating_sub(1024);
    while !last.is_char_boundary(from) {
        from += 1;
    }
    let anchor = &last[from..];
    cur.rfind(anchor).map(|p| &cur[p + anchor.len()..])
}

/// `zos deployment logs`: the console's end, then (with `follow`) what comes, polled.
async fn logs(
    c: &zos_client::GridClient,
    contract: ContractId,
    name: String,
    follow: bool,
    tail: usize,
    g: &Global,
) -> anyhow::Result<()> {
    const POLL_BYTES: usize = 256 * 1024;
    let (_, twin) = node_of(c, contract).await?;
    let node = c.node(twin);
    let fetch = |bytes: usize| {
        let body = ConsoleBody {
            contract_id: contract,
            name: name.clone(),
            bytes: Some(bytes),
        };
        async move { node.call::<node_api::Console>(&body).await }
    };
    let emit = |text: &str| -> anyhow::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if g.structured() {
            let line = serde_json::json!({ "name": name, "text": text });
            outln!("{line}")?;
        } else {
            out!("{text}")?;
        }
        Ok(())
    };
    let first = fetch(tail.min(POLL_BYTES)).await?;
    emit(&first.console)?;
    if !follow {
        return Ok(());
    }
    let mut last = first.console;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let cur = match fetch(POLL_BYTES).await {
            Ok(v) => {
                failures = 0;
                v.console
            }
            // A minute of failures in a row: the node or the machine is gone.
            Err(e) if failures >= 60 => {
                return Err(e).context("the node stopped answering for a minute; run `zos deployment show` to see the machine's state");
            }
            Err(e) => {
                failures += 1;
                eprintln!("zos: the node did not answer ({e:#}); trying again");
                continue;
            }
        };
        match new_output(&last, &cur) {
            Some(new) => emit(new)?,
            None => {
                eprintln!(
                    "zos: more was printed than one read holds (or the log was made anew): some output is skipped"
                );
                emit(&cur)?;
            }
        }
        last = cur;
    }
}

#[cfg(test)]
mod logs_tests {
    use super::new_output;

    #[test]
    fn only_what_follows_the_last_read_is_new() {
        assert_eq!(new_output("", "boot\n"), Some("boot\n"));
        assert_eq!(new_output("a\nb\n", "a\nb\nc\n"), Some("c\n"));
        // The window moved: the start fell out, the anchor (the last KiB) is still there.
        assert_eq!(new_output("a\nb\n", "b\nc\nd\n"), None);
        let long: String = (0..400).map(|i| format!("line {i}\n")).collect();
        let more = format!("{}line 400\n", &long[2000..]);
        assert_eq!(new_output(&long, &more), Some("line 400\n"));
        assert_eq!(new_output(&long, &long), Some(""));
        // Nothing of the last read is left: all of it is new.
        assert_eq!(new_output(&long, "fresh\n"), None);
    }
}
