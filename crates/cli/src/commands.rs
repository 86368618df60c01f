//! Commands that talk to the grid: keys, twins, farms, farm IPs and nodes.

use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use clap::Subcommand;
use ipnet::Ipv4Net;
use serde_json::json;
use zos_client::GridClient;
use zos_types::Identity;
use zos_types::capacity::{human_bytes, parse_bytes};
use zos_types::registry::{AddFarmIp, AdmissionToken, Farm, Node, NodeAdmission, NodeFilter};

use crate::exit::{Failure, Kind};
use crate::global::{Global, client, key_path, load_key, signed_client};
use crate::output::outln;
use crate::output::{self, Table, fields};

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Make a new key and store it (mode 0600). Prints the 24 words that restore it: keep them safe.
    New {
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Restore a key from its 24 words, read from standard input.
    Restore {
        #[arg(long)]
        force: bool,
    },
    /// Show the public key (and, with --mnemonic, the words that restore it).
    Show {
        #[arg(long)]
        mnemonic: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TwinCmd {
    /// Register your key as a twin on the grid.
    Create {
        /// Relay through which this twin is reachable.
        #[arg(long)]
        relay: Option<String>,
    },
    /// Show a twin (default: yours).
    Show { id: Option<u32> },
}

#[derive(Debug, Subcommand)]
pub enum FarmCmd {
    /// Create a farm; your twin becomes its farmer.
    Create { name: String },
    /// Show a farm by id or name.
    Show { farm: String },
    /// List farms.
    List,
    /// The farm's pool of public IPv4 addresses.
    #[command(subcommand)]
    Ip(FarmIpCmd),
    /// Change the farm's policy (farmers); options not given keep their value.
    Policy {
        farm: String,
        /// Who may register nodes: `signed` (nodes booted with your admission token) or `open`.
        #[arg(long, value_parser = parse_admission)]
        admission: Option<NodeAdmission>,
        /// Whether twins may rent whole nodes of the farm.
        #[arg(long)]
        rentable: Option<bool>,
        /// A host (name or name:port) the farm's nodes may fetch flists from besides the
        /// grid's hub; repeat for more. Replaces the list.
        #[arg(long = "flist-host")]
        flist_hosts: Option<Vec<String>>,
        /// Allow flists from the grid's hub only.
        #[arg(long, conflicts_with = "flist_hosts")]
        no_flist_hosts: bool,
    },
    /// Print an admission token (farmers): boot nodes with admission=TOKEN on the kernel
    /// command line (or zosd --admission TOKEN) so they may join the farm.
    Admission {
        farm: String,
        /// How many days the token admits nodes.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// What the farm earned from its nodes' paid bills (its farmer or the grid's admin).
    Earnings { farm: String },
    /// Make the farm's bootloader (farmers): an ISO or USB image holding only iPXE and the
    /// farm's parameters, or the iPXE script itself; nodes fetch the rest from the grid.
    Bootloader(crate::bootloader::BootloaderArgs),
}

fn parse_admission(s: &str) -> Result<NodeAdmission, String> {
    match s {
        "open" => Ok(NodeAdmission::Open),
        "signed" => Ok(NodeAdmission::Signed),
        _ => Err(format!("{s:?}: use open or signed")),
    }
}

#[derive(Debug, Subcommand)]
pub enum FarmIpCmd {
    /// Add an address to the pool, e.g. `zos farm ip add myfarm 185.69.166.20/24 --gateway 185.69.166.1`.
    Add {
        farm: String,
        ip: Ipv4Net,
        #[arg(long)]
        gateway: Ipv4Addr,
    },
    /// Remove an address from the pool (refused while a contract holds it).
    Remove { farm: String, ip: Ipv4Addr },
    /// List the pool.
    List { farm: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    List {
        #[arg(long)]
        farm: Option<String>,
        /// Only online nodes.
        #[arg(long, conflicts_with = "offline")]
        online: bool,
        /// Only offline nodes.
        #[arg(long)]
        offline: bool,
        /// Minimum free cores.
        #[arg(long)]
        free_cru: Option<u64>,
        /// Minimum free memory, e.g. 4G.
        #[arg(long, value_parser = size)]
        free_mru: Option<u64>,
        /// Minimum free SSD, e.g. 100G.
        #[arg(long, value_parser = size)]
        free_sru: Option<u64>,
        /// Minimum free HDD, e.g. 1T.
        #[arg(long, value_parser = size)]
        free_hru: Option<u64>,
        /// Only nodes that can serve web gateways (a domain in their public config), with
        /// their domain.
        #[arg(long)]
        gateway: bool,
        #[command(flatten)]
        watch: output::Watch,
    },
    /// Show one node.
    Show { id: u32 },
    /// Ask a node for its capacity and usage (over the relay).
    Stats { id: u32 },
    /// Set a node's public network config (farmers): the address its public traffic uses and
    /// the gateway, e.g. `zos node public-config 3 --ipv4 185.69.166.7/24 --gw4 185.69.166.1`.
    PublicConfig {
        id: u32,
        #[arg(long)]
        ipv4: ipnet::Ipv4Net,
        #[arg(long)]
        gw4: std::net::Ipv4Addr,
        #[arg(long, requires = "gw6")]
        ipv6: Option<ipnet::Ipv6Net>,
        #[arg(long, requires = "ipv6")]
        gw6: Option<std::net::Ipv6Addr>,
        /// A domain whose subdomains point at this node, for web gateways.
        #[arg(long)]
        domain: Option<String>,
    },
}

fn size(s: &str) -> Result<u64, String> {
    parse_bytes(s).ok_or_else(|| format!("{s:?} is not a size like 512M, 4G or 1T"))
}

async fn find_farm(c: &GridClient, farm: &str) -> anyhow::Result<Farm> {
    if let Ok(id) = farm.parse::<u32>() {
        return Ok(c.get_farm(id).await?);
    }
    c.farm_by_name(farm).await?.ok_or_else(|| {
        Failure::new(
            Kind::NotFound,
            format!("no farm named {farm:?}: `zos farm list` shows the farms"),
        )
        .into()
    })
}

pub async fn key(cmd: KeyCmd, g: &Global) -> anyhow::Result<()> {
    let path = key_path(g)?;
    match cmd {
        KeyCmd::New { force } | KeyCmd::Restore { force } if path.exists() && !force => {
            bail!(
                "{} already holds a key: pass --force to replace it (its twin is lost unless you kept its words)",
                path.display()
            )
        }
        KeyCmd::New { .. } => {
            let id = Identity::generate()?;
            zos_client::keyfile::save_identity(&path, &id, 0o600)?;
            if g.structured() {
                output::json(
                    &json!({"public_key": id.public_key(), "path": path, "mnemonic": id.mnemonic().as_str()}),
                )
            } else {
                fields(&[
                    ("public key", id.public_key().to_string()),
                    ("stored in", path.display().to_string()),
                ])?;
                outln!(
                    "\nThese 24 words restore the key (`zos key restore`). Write them down and keep them secret:\n"
                )?;
                outln!("  {}\n", id.mnemonic().as_str())?;
                Ok(())
            }
        }
        KeyCmd::Restore { .. } => {
            let mut words = String::new();
            std::io::stdin()
                .read_line(&mut words)
                .context("reading the words from standard input")?;
            let id =
                Identity::from_mnemonic(&words).context("these are not 24 valid BIP-39 words")?;
            zos_client::keyfile::save_identity(&path, &id, 0o600)?;
            if g.structured() {
                output::json(&json!({"public_key": id.public_key(), "path": path}))
            } else {
                fields(&[
                    ("public key", id.public_key().to_string()),
                    ("stored in", path.display().to_string()),
                ])?;
                Ok(())
            }
        }
        KeyCmd::Show { mnemonic } => {
            let id = load_key(g)?;
            let words = mnemonic.then(|| id.mnemonic().to_string());
            if g.structured() {
                output::json(
                    &json!({"public_key": id.public_key(), "path": path, "mnemonic": words}),
                )
            } else {
                fields(&[
                    ("public key", id.public_key().to_string()),
                    ("stored in", path.display().to_string()),
                ])?;
                if let Some(w) = words {
                    outln!("\n  {w}")?;
                }
                Ok(())
            }
        }
    }
}

pub async fn twin(cmd: TwinCmd, g: &Global) -> anyhow::Result<()> {
    let twin = match cmd {
        TwinCmd::Create { relay } => {
            let id = load_key(g)?;
            let c = client(g)?.with_identity(id.clone());
            if let Some(t) = c.twin_by_key(&id.public_key()).await? {
                bail!(Failure::new(
                    Kind::Refused,
                    format!(
                        "key {} already has twin {}: `zos twin show` shows it",
                        id.public_key(),
                        t.id
                    )
                ));
            }
            c.create_twin(relay).await?
        }
        TwinCmd::Show { id: Some(id) } => client(g)?.get_twin(id).await?,
        TwinCmd::Show { id: None } => {
            let id = load_key(g)?;
            client(g)?
                .twin_by_key(&id.public_key())
                .await?
                .ok_or_else(|| {
                    Failure::new(
                        Kind::NotFound,
                        format!("key {} has no twin: run `zos twin create`", id.public_key()),
                    )
                })?
        }
    };
    if g.structured() {
        return output::json(&twin);
    }
    fields(&[
        ("twin", twin.id.to_string()),
        ("public key", twin.public_key.to_string()),
        ("relay", twin.relay.clone().unwrap_or_else(|| "-".into())),
        ("created", output::when(twin.created_at)),
    ])?;
    Ok(())
}

fn print_farms(farms: &[Farm]) -> std::io::Result<()> {
    let mut t = Table::new(&["ID", "NAME", "FARMER", "PUBLIC IPS", "FREE IPS"]);
    for f in farms {
        let free = f
            .public_ips
            .iter()
            .filter(|ip| ip.contract_id.is_none())
            .count();
        t.row(vec![
            f.id.to_string(),
            f.name.clone(),
            f.twin_id.to_string(),
            f.public_ips.len().to_string(),
            free.to_string(),
        ]);
    }
    t.print()
}

pub async fn farm(cmd: FarmCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        FarmCmd::Bootloader(a) => crate::bootloader::bootloader(a, g).await,
        FarmCmd::Create { name } => {
            let farm = signed_client(g).await?.create_farm(&name).await?;
            if g.structured() {
                output::json(&farm)
            } else {
                outln!("farm {} created with id {}", farm.name, farm.id)?;
                Ok(())
            }
        }
        FarmCmd::Show { farm } => {
            let f = find_farm(&client(g)?, &farm).await?;
            if g.structured() {
                return output::json(&f);
            }
            fields(&[
                ("farm", f.id.to_string()),
                ("name", f.name.clone()),
                ("farmer twin", f.twin_id.to_string()),
                ("created", output::when(f.created_at)),
            ])?;
            print_policy(&f)?;
            outln!()?;
            print_ips(&f)?;
            Ok(())
        }
        FarmCmd::List => {
            let farms = client(g)?.list_farms().await?;
            if g.structured() {
                output::json(&farms)
            } else {
                print_farms(&farms)?;
                Ok(())
            }
        }
        FarmCmd::Ip(ip) => farm_ip(ip, g).await,
        FarmCmd::Policy {
            farm,
            admission,
            rentable,
            flist_hosts,
            no_flist_hosts,
        } => {
            let c = signed_client(g).await?;
            let f = find_farm(&c, &farm).await?;
            let mut p = f.policy.clone();
            p.node_admission = admission.unwrap_or(p.node_admission);
            p.rentable = rentable.unwrap_or(p.rentable);
            if let Some(hosts) = flist_hosts {
                p.flist_hosts = hosts;
            } else if no_flist_hosts {
                p.flist_hosts.clear();
            }
            let f = c.set_farm_policy(f.id, &p).await?;
            if g.structured() {
                return output::json(&f.policy);
            }
            print_policy(&f)?;
            Ok(())
        }
        FarmCmd::Earnings { farm } => {
            let c = signed_client(g).await?;
            let f = find_farm(&c, &farm).await?;
            crate::account::farm_earnings(&c, f.id, g).await
        }
        FarmCmd::Admission { farm, days } => {
            let c = signed_client(g).await?;
            let f = find_farm(&c, &farm).await?;
            if c.twin_id() != Some(f.twin_id) {
                bail!(
                    "farm {} belongs to twin {}: only its farmer's key makes admission tokens",
                    f.id,
                    f.twin_id
                );
            }
            let now = c.health().await?.time;
            let expires = now.saturating_add(i64::from(days) * 86_400);
            let token = AdmissionToken::sign(&load_key(g)?, f.id, expires);
            outln!("{token}")?;
            Ok(())
        }
    }
}

fn print_policy(f: &Farm) -> std::io::Result<()> {
    let hosts = if f.policy.flist_hosts.is_empty() {
        "(the grid's hub only)".to_string()
    } else {
        f.policy.flist_hosts.join(", ")
    };
    fields(&[
        (
            "node admission",
            f.policy.node_admission.as_str().to_string(),
        ),
        ("rentable", f.policy.rentable.to_string()),
        ("flist hosts", hosts),
    ])
}

fn print_ips(f: &Farm) -> std::io::Result<()> {
    let mut t = Table::new(&["IP", "GATEWAY", "CONTRACT"]);
    for ip in &f.public_ips {
        t.row(vec![
            ip.ip.to_string(),
            ip.gateway.to_string(),
            ip.contract_id.map_or("-".into(), |c| c.to_string()),
        ]);
    }
    t.print()
}

async fn farm_ip(cmd: FarmIpCmd, g: &Global) -> anyhow::Result<()> {
    let farm = match cmd {
        FarmIpCmd::Add { farm, ip, gateway } => {
            let c = signed_client(g).await?;
            let f = find_farm(&c, &farm).await?;
            c.add_farm_ip(f.id, &AddFarmIp { ip, gateway }).await?
        }
        FarmIpCmd::Remove { farm, ip } => {
            let c = signed_client(g).await?;
            let f = find_farm(&c, &farm).await?;
            c.remove_farm_ip(f.id, ip).await?
        }
        FarmIpCmd::List { farm } => find_farm(&client(g)?, &farm).await?,
    };
    if g.structured() {
        return output::json(&farm.public_ips);
    }
    print_ips(&farm)?;
    Ok(())
}

/// The domain under which `n` serves gateway names (`NAME.<domain>`): the one in its public
/// config, if any.
fn gateway_domain(n: &Node) -> Option<&str> {
    n.public_config.as_ref()?.domain.as_deref()
}

/// Every node that passes `filter`, page after page (the grid answers at most
/// [`NodeFilter::MAX_LIMIT`] at a time), keeping those `keep` accepts.
async fn nodes_where(
    c: &GridClient,
    filter: &NodeFilter,
    keep: impl Fn(&Node) -> bool,
) -> anyhow::Result<Vec<Node>> {
    let mut kept = Vec::new();
    let mut page = NodeFilter {
        limit: Some(NodeFilter::MAX_LIMIT),
        offset: Some(0),
        ..filter.clone()
    };
    loop {
        let nodes = c.list_nodes(&page).await?;
        let full = nodes.len() >= NodeFilter::MAX_LIMIT as usize;
        kept.extend(nodes.into_iter().filter(|n| keep(n)));
        if !full {
            return Ok(kept);
        }
        page.offset = Some(page.offset.unwrap_or(0) + NodeFilter::MAX_LIMIT);
    }
}

/// The node table; with `domains`, a DOMAIN column (the gateway domain) at the end.
fn print_nodes(nodes: &[Node], domains: bool) -> std::io::Result<()> {
    let mut header = vec![
        "ID", "FARM", "TWIN", "STATE", "CRU", "MRU", "SRU", "HRU", "FREE MRU", "VERSION",
    ];
    if domains {
        header.push("DOMAIN");
    }
    let mut t = Table::new(&header);
    for n in nodes {
        let state = match (n.online, &n.limited) {
            (false, _) => "offline",
            (true, Some(_)) => "limited",
            (true, None) => "online",
        };
        let mut row = vec![
            n.id.to_string(),
            n.farm_id.to_string(),
            n.twin_id.to_string(),
            state.into(),
            n.capacity.cru.to_string(),
            human_bytes(n.capacity.mru),
            human_bytes(n.capacity.sru),
            human_bytes(n.capacity.hru),
            human_bytes(n.free().mru),
            n.zos_version.clone(),
        ];
        if domains {
            row.push(gateway_domain(n).unwrap_or("-").to_string());
        }
        t.row(row);
    }
    t.print()
}

pub async fn node(cmd: NodeCmd, g: &Global) -> anyhow::Result<()> {
    let c = client(g)?;
    match cmd {
        NodeCmd::List {
            farm,
            online,
            offline,
            free_cru,
            free_mru,
            free_sru,
            free_hru,
            gateway,
            watch,
        } => {
            let farm_id = match farm {
                Some(f) => Some(find_farm(&c, &f).await?.id),
                None => None,
            };
            let filter = NodeFilter {
                farm_id,
                online: (online || offline).then_some(online),
                free_cru,
                free_mru,
                free_sru,
                free_hru,
                limit: Some(NodeFilter::MAX_LIMIT),
                ..NodeFilter::default()
            };
            let (c, filter) = (&c, &filter);
            output::watch(watch, "zos node list", || async move {
                let nodes = if gateway {
                    // The grid has no filter for it: every page, kept here.
                    nodes_where(c, filter, |n| gateway_domain(n).is_some()).await?
                } else {
                    c.list_nodes(filter).await?
                };
                if g.structured() {
                    output::json(&nodes)
                } else {
                    Ok(print_nodes(&nodes, gateway)?)
                }
            })
            .await
        }
        NodeCmd::PublicConfig {
            id,
            ipv4,
            gw4,
            ipv6,
            gw6,
            domain,
        } => {
            let config = zos_types::registry::PublicConfig {
                ipv4,
                gw4,
                ipv6,
                gw6,
                domain,
            };
            let n = signed_client(g)
                .await?
                .set_public_config(id, &config)
                .await
                .with_context(|| format!("setting the public config of node {id}"))?;
            if g.structured() {
                return output::json(&n);
            }
            outln!(
                "node {id}: public config {} via {} set; the node applies it within seconds",
                config.ipv4,
                config.gw4
            )?;
            Ok(())
        }
        NodeCmd::Stats { id } => {
            let n = c.get_node(id).await?;
            let s = signed_client(g)
                .await?
                .node(n.twin_id)
                .call::<zos_types::node_api::GetStatistics>(&())
                .await?;
            if g.structured() {
                return output::json(&s);
            }
            fields(&[
                ("node", id.to_string()),
                ("total", s.total.to_string()),
                ("used", s.used.to_string()),
                ("system", s.system.to_string()),
                ("deployments", s.users.deployments.to_string()),
                ("workloads", s.users.workloads.to_string()),
            ])?;
            Ok(())
        }
        NodeCmd::Show { id } => {
            let n = c.get_node(id).await?;
            if g.structured() {
                return output::json(&n);
            }
            let free = n.free();
            fields(&[
                ("node", n.id.to_string()),
                ("twin", n.twin_id.to_string()),
                ("farm", n.farm_id.to_string()),
                ("online", n.online.to_string()),
                ("limited", n.limited.clone().unwrap_or_else(|| "no".into())),
                ("version", n.zos_version.clone()),
                ("capacity", n.capacity.to_string()),
                ("reserved", n.reserved.to_string()),
                ("used", n.used.to_string()),
                ("free", free.to_string()),
                ("cpu", n.hardware.cpu_model.clone()),
                ("serial", n.hardware.serial.clone()),
                ("virtualized", n.hardware.virtualized.to_string()),
                (
                    "public config",
                    n.public_config
                        .as_ref()
                        .map_or("-".into(), |p| format!("{} via {}", p.ipv4, p.gw4)),
                ),
                (
                    "gateway domain",
                    gateway_domain(&n).unwrap_or("-").to_string(),
                ),
                ("uptime", format!("{} s", n.uptime_secs)),
                ("report period", format!("{} s", n.report_interval_secs)),
                ("last seen", output::when_opt(n.last_seen)),
                ("registered", output::when(n.created_at)),
                ("updated", output::when(n.updated_at)),
            ])?;
            for nic in &n.interfaces {
                let ips: Vec<String> = nic.ips.iter().map(|i| i.to_string()).collect();
                outln!("interface {:<10} {}  {}", nic.name, nic.mac, ips.join(" "))?;
            }
            Ok(())
        }
    }
}
