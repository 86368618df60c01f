//! `zos network …`: private networks across nodes, made of one `network` deployment per node.
//!
//! The workflows (planning subnets, ports and keys, deploying on every node, the configuration
//! of this machine) are `zos_client::workflow::network`'s; this module parses the flags, draws
//! the progress and prints. What was made (keys included) is kept in
//! `$XDG_STATE_HOME/zos/networks/<grid>/<twin>/<name>.json` (mode 0600) for `show`,
//! `add-access`, `free-ip`, `wg-config`, `join` and `delete`: names are a twin's own on a grid. Machines join a network by naming it, with an address of their
//! node's /24 (`free-ip` picks one).

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use zos_client::GridClient;
use zos_client::workflow::network::{
    self as workflow, CreateRequest, NetworkError, NetworkRecord, NetworkStore, PartState, dot_one,
};
use zos_types::NodeId;

use crate::global::{Global, signed_client, state_dir};
use crate::output::{self, Table, fields};
use crate::output::{out, outln};
use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a private network across nodes: subnets, ports, keys and a deployment per node.
    Create {
        name: String,
        /// Nodes of the network, e.g. `1,2,3`.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<NodeId>,
        /// The whole network, a private /16.
        #[arg(long, default_value = "10.20.0.0/16")]
        ip_range: Ipv4Net,
        /// Also let this machine join (see `zos network wg-config`).
        #[arg(long)]
        access: bool,
        /// The address other members dial for a node, `NODE=HOST` (a node behind NAT, say);
        /// repeat for more. By default, the node's own address.
        #[arg(long = "endpoint", value_parser = parse_endpoint)]
        endpoints: Vec<(NodeId, String)>,
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Let this machine join an existing network.
    AddAccess {
        name: String,
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// The network's nodes with their subnet, port, endpoint and the addresses in use.
    Show { name: String },
    /// Networks made from this machine.
    List,
    /// An address of `node`'s subnet that no machine uses, for a new machine.
    FreeIp {
        name: String,
        #[arg(long)]
        node: NodeId,
    },
    /// The WireGuard configuration that joins this machine to the network (`wg-quick up FILE`).
    WgConfig { name: String },
    /// Bring this machine into the network as its access peer (as root): a WireGuard interface
    /// (the kernel's, or boringtun where the kernel has none) with its address and route.
    Join { name: String },
    /// Take this machine out of the network: interface, route and boringtun process go.
    Leave { name: String },
    /// Cancel the network's contracts on every node and forget it.
    Delete {
        name: String,
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

/// The networks made from this machine by this key's twin on this grid, with a client that
/// signs as that twin.
pub(crate) async fn store(g: &Global) -> anyhow::Result<(NetworkStore, GridClient)> {
    let c = signed_client(g).await?;
    let twin = c.twin_id().context("a signed client has a twin")?;
    let store = NetworkStore::for_twin(state_dir().join("networks"), c.base_url().as_str(), twin);
    Ok((store, c))
}

pub async fn run(cmd: NetworkCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Create {
            name,
            nodes,
            ip_range,
            access,
            endpoints,
            wait,
        } => {
            let req = CreateRequest {
                name,
                nodes,
                ip_range,
                access,
                endpoints,
            };
            create(&req, Duration::from_secs(wait), g).await
        }
        NetworkCmd::AddAccess { name, wait } => {
            let (store, c) = store(g).await?;
            let rec = store.load(&name)?;
            if rec.access.is_some() {
                return print_file(&rec, g);
            }
            let mut progress = Progress::new(g.structured());
            let wait = Duration::from_secs(wait);
            let rec =
                workflow::add_access(&c, &store, &name, wait, &mut |e| progress.network(e)).await;
            print_file(&rec.inspect_err(|_| progress.abandon())?, g)
        }
        NetworkCmd::Show { name } => show(&name, g).await,
        NetworkCmd::List => list(g).await,
        NetworkCmd::FreeIp { name, node } => {
            let (store, c) = store(g).await?;
            let rec = store.load(&name)?;
            rec.part(node)?;
            let (ip, subnet) = workflow::free_ip(&c, &rec, node).await?;
            if g.structured() {
                output::json(&json!({"ip": ip, "subnet": subnet, "node_id": node}))
            } else {
                outln!("{ip}")?;
                Ok(())
            }
        }
        NetworkCmd::WgConfig { name } => {
            out!("{}", store(g).await?.0.load(&name)?.wg_config()?)?;
            Ok(())
        }
        NetworkCmd::Join { name } => join(&name, g).await,
        NetworkCmd::Leave { name } => leave(&name, g).await,
        NetworkCmd::Delete { name, wait } => delete(&name, Duration::from_secs(wait), g).await,
    }
}

fn need_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(crate::exit::Failure::new(
            crate::exit::Kind::Refused,
            format!("{what} makes a network interface: run it as root (or with sudo)"),
        ));
    }
    Ok(())
}

async fn join(name: &str, g: &Global) -> anyhow::Result<()> {
    need_root("zos network join")?;
    let (store, _) = store(g).await?;
    let rec = store.load(name)?;
    let (j, made) = crate::join::join(&store, &rec).await?;
    if g.structured() {
        return output::json(&json!({"name": name, "joined": true, "new": made,
            "interface": j.ifname, "backend": j.backend, "address": j.address,
            "route": j.route, "pid": j.pid}));
    }
    let how = match j.pid {
        Some(pid) => format!("userspace WireGuard, boringtun pid {pid}"),
        None => "kernel WireGuard".to_string(),
    };
    let verb = if made { "joined" } else { "already joined" };
    outln!(
        "{verb} network {name}: {} on {} ({how}), {} routed through it; `zos network leave {name}` undoes it",
        j.address,
        j.ifname,
        j.route
    )?;
    Ok(())
}

async fn leave(name: &str, g: &Global) -> anyhow::Result<()> {
    need_root("zos network leave")?;
    let (store, _) = store(g).await?;
    zos_client::workflow::network::valid_name(name)?;
    let left = crate::join::leave(&store, name).await?;
    if g.structured() {
        return output::json(&json!({"name": name, "left": left.is_some(),
            "interface": left.as_ref().map(|j| j.ifname.clone())}));
    }
    match left {
        Some(j) => outln!("left network {name}: {} and its route removed", j.ifname)?,
        None => outln!("this machine had not joined network {name}: nothing to remove")?,
    }
    Ok(())
}

/// `NODE=HOST` of `--endpoint`.
fn parse_endpoint(s: &str) -> Result<(NodeId, String), String> {
    let (node, host) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NODE=HOST, like 3=203.0.113.7"))?;
    let node: NodeId = node
        .parse()
        .map_err(|_| format!("{node:?} is not a node id"))?;
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok((node, host.to_string()))
}

async fn create(req: &CreateRequest, wait: Duration, g: &Global) -> anyhow::Result<()> {
    // Mistakes in the flags are named by their flags, before any grid is asked.
    if let Err(e) = req.check_fields() {
        return Err(flag_error(e));
    }
    let (store, c) = store(g).await?;
    req.check(&store)?;
    let mut progress = Progress::new(g.structured());
    let rec = workflow::create(&c, &store, req, wait, &mut |e| progress.network(e)).await;
    print_file(&rec.inspect_err(|_| progress.abandon())?, g)
}

/// A refused create request, worded with the flags that made it.
fn flag_error(e: NetworkError) -> anyhow::Error {
    use crate::exit::{Kind, tag};
    match e {
        NetworkError::EndpointNotMember { node } => tag(
            Kind::Usage,
            anyhow::anyhow!("--endpoint names node {node}, which is not in --nodes"),
        ),
        NetworkError::Range { range } => tag(
            Kind::Usage,
            anyhow::anyhow!("--ip-range must be a private /16, like 10.20.0.0/16; {range} is not"),
        ),
        NetworkError::Nodes => tag(
            Kind::Usage,
            anyhow::anyhow!("--nodes must list each node once"),
        ),
        e => e.into(),
    }
}

async fn delete(name: &str, wait: Duration, g: &Global) -> anyhow::Result<()> {
    let (store, c) = store(g).await?;
    store.load(name)?;
    let mut progress = Progress::new(g.structured());
    let rec = workflow::delete(&c, &store, name, wait, &mut |e| progress.network(e)).await;
    let rec = rec.inspect_err(|_| progress.abandon())?;
    if g.structured() {
        output::json(&json!({"name": name, "deleted": true}))
    } else {
        outln!("network {name} removed from {} node(s)", rec.nodes.len())?;
        Ok(())
    }
}

fn print_file(f: &NetworkRecord, g: &Global) -> anyhow::Result<()> {
    if g.structured() {
        return output::json(&json!({
            "name": f.name,
            "ip_range": f.ip_range,
            "nodes": f.nodes.iter().map(|n| json!({
                "node_id": n.node_id, "contract_id": n.contract_id, "subnet": n.subnet,
                "gateway": dot_one(n.subnet), "listen_port": n.listen_port,
                "endpoint": n.endpoint, "public_key": n.public_key,
            })).collect::<Vec<_>>(),
            "access": f.access.as_ref().map(|a| json!({
                "subnet": a.subnet, "address": dot_one(a.subnet), "node_id": a.node_id,
                "public_key": a.public_key,
            })),
        }));
    }
    fields(&[
        ("network", f.name.clone()),
        ("ip range", f.ip_range.to_string()),
        (
            "access",
            f.access.as_ref().map_or("none".to_string(), |a| {
                format!(
                    "{} through node {} (`zos network wg-config {}`)",
                    dot_one(a.subnet),
                    a.node_id,
                    f.name
                )
            }),
        ),
    ])?;
    outln!()?;
    let mut t = Table::new(&["NODE", "CONTRACT", "SUBNET", "GATEWAY", "ENDPOINT"]);
    for n in &f.nodes {
        t.row(vec![
            n.node_id.to_string(),
            n.contract_id.to_string(),
            n.subnet.to_string(),
            dot_one(n.subnet).to_string(),
            n.endpoint.clone(),
        ]);
    }
    t.print()?;
    Ok(())
}

async fn show(name: &str, g: &Global) -> anyhow::Result<()> {
    let (store, c) = store(g).await?;
    let f = store.load(name)?;
    let rows: Vec<(String, _)> = workflow::status(&c, &f)
        .await
        .into_iter()
        .map(|s| {
            let state = match &s.state {
                PartState::Result(r) => r.to_string(),
                PartState::NoResult => "-".to_string(),
                PartState::Unreachable(e) => format!("unreachable: {e}"),
                PartState::UnknownNode(e) => format!("unknown node: {e}"),
            };
            (state, s)
        })
        .collect();
    if g.structured() {
        return output::json(&json!({
            "name": f.name, "ip_range": f.ip_range,
            "nodes": rows.iter().map(|(state, s)| {
                let n = &s.part;
                json!({
                    "node_id": n.node_id, "contract_id": n.contract_id, "subnet": n.subnet,
                    "listen_port": n.listen_port, "endpoint": n.endpoint, "state": state,
                    "used_ips": s.used_ips,
                })
            }).collect::<Vec<_>>(),
            "access": f.access.as_ref().map(|a| json!({"subnet": a.subnet, "node_id": a.node_id})),
        }));
    }
    let mut t = Table::new(&[
        "NODE", "CONTRACT", "SUBNET", "ENDPOINT", "STATE", "MACHINES",
    ]);
    for (state, s) in &rows {
        let n = &s.part;
        t.row(vec![
            n.node_id.to_string(),
            n.contract_id.to_string(),
            n.subnet.to_string(),
            n.endpoint.clone(),
            state.clone(),
            s.used_ips
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    t.print()?;
    Ok(())
}

async fn list(g: &Global) -> anyhow::Result<()> {
    let files = store(g).await?.0.list();
    if g.structured() {
        let v: Vec<Value> = files
            .iter()
            .map(|f| {
                json!({"name": f.name, "ip_range": f.ip_range,
                "nodes": f.nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
                "access": f.access.is_some()})
            })
            .collect();
        return output::json(&v);
    }
    let mut t = Table::new(&["NAME", "RANGE", "NODES", "ACCESS"]);
    for f in &files {
        t.row(vec![
            f.name.clone(),
            f.ip_range.to_string(),
            f.nodes
                .iter()
                .map(|n| n.node_id.to_string())
                .collect::<Vec<_>>()
                .join(","),
            if f.access.is_some() { "yes" } else { "no" }.into(),
        ]);
    }
    t.print()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("3=203.0.113.7").unwrap(),
            (3, "203.0.113.7".to_string())
        );
        assert!(parse_endpoint("3").is_err());
        assert!(parse_endpoint("x=1.2.3.4").is_err());
        assert!(parse_endpoint("3=a b").is_err());
    }

    #[test]
    fn request_mistakes_name_their_flags() {
        let e = flag_error(NetworkError::Nodes);
        assert_eq!(e.to_string(), "--nodes must list each node once");
        let e = flag_error(NetworkError::EndpointNotMember { node: 3 });
        assert!(e.to_string().starts_with("--endpoint names node 3"), "{e}");
    }
}
