//! `zos devnet`: a whole grid with nodes on this machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;
use zos_client::GridClient;
use zos_devnet::{self as devnet, DevnetOptions, DevnetState, DiskPlan};
use zos_types::registry::NodeFilter;

use crate::global::{Global, devnet_dir};
use crate::output::outln;
use crate::output::{self, Table, fields};

#[derive(Debug, Subcommand)]
pub enum DevnetCmd {
    /// Start a grid on loopback, a farmer with a farm, and N nodes each in its own network namespace.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Short name (1 to 5 of a-z, 0-9) that prefixes its namespaces and links.
        #[arg(long, default_value = "zdn")]
        name: String,
        /// Period of the nodes' uptime reports, in seconds.
        #[arg(long, default_value_t = 10)]
        report_interval: u64,
        /// The zosd binary (default: beside this one).
        #[arg(long)]
        zosd: Option<PathBuf>,
        /// The zos-grid binary (default: beside this one).
        #[arg(long)]
        grid_bin: Option<PathBuf>,
        /// Disks of each node (sparse files on loop devices), e.g. ssd:16G,ssd:16G,hdd:64G.
        #[arg(long, value_delimiter = ',', default_value = "ssd:16G,ssd:16G,hdd:64G")]
        disks: Vec<DiskPlan>,
        /// Node VMs besides: real zos nodes booting the node image by network through the
        /// grid's boot service (QEMU, KVM when the CPU has it, else TCG).
        #[arg(long, default_value_t = 0)]
        vm_nodes: usize,
        /// The node image the VMs boot (`scripts/build-node.sh --release-keys KEYS DIR`, KEYS
        /// naming --release-key); scripts/devnet.sh with ZOS_VM_NODES=N builds both.
        #[arg(long, env = "ZOS_NODE_IMAGE", value_name = "DIR")]
        node_image: Option<PathBuf>,
        /// The devnet's release key (`zos release keygen`): it signs the release the VMs boot,
        /// and the node image must trust it.
        #[arg(long, env = "ZOS_DEVNET_RELEASE_KEY", value_name = "FILE")]
        release_key: Option<PathBuf>,
        /// How the VMs boot: `pxe`, QEMU's iPXE ROM by network, or `iso`, the farm's
        /// bootloader ISO (`zos farm bootloader --format iso`) as their CD-ROM.
        #[arg(long, value_enum, default_value = "pxe", env = "ZOS_VM_BOOT")]
        boot: BootArg,
        /// Run each namespace node's zosd under zos-init from a release signed with
        /// --release-key and published on the devnet's grid, so the nodes upgrade live
        /// (`zos release publish`) and roll back like node VMs; zos-init and zos-flist-mount
        /// are taken from beside this binary. Not with --vm-nodes.
        #[arg(long, conflicts_with = "vm_nodes")]
        supervised: bool,
        /// The grid bills contracts every SECS seconds (default: no billing). Each period is
        /// billed as soon as it ends; twins fund themselves with `zos account deposit`.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        billing_period: Option<u64>,
        /// With --billing-period: seconds a contract that cannot pay stays in grace (its
        /// workloads paused) before it is cancelled.
        #[arg(
            long,
            value_name = "SECS",
            default_value_t = 600,
            requires = "billing_period"
        )]
        grace: u64,
    },
    /// Stop every process and remove every namespace and link of the devnet.
    Down {
        #[arg(long, default_value = "zdn")]
        name: String,
    },
    /// Show the devnet: grid, farm, nodes and whether they are online.
    Status {
        #[arg(long, default_value = "zdn")]
        name: String,
    },
}

fn beside_me(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .context("no directory for this executable")?
        .join(name);
    if !p.is_file() {
        bail!(
            "{} not found beside {}: build the workspace (cargo build --release) or pass its path",
            name,
            exe.display()
        );
    }
    Ok(p)
}

pub async fn run(cmd: DevnetCmd, g: &Global) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!(crate::exit::Failure::new(
            crate::exit::Kind::Refused,
            "a devnet makes network namespaces and links: run it as root (or with sudo)",
        ));
    }
    match cmd {
        DevnetCmd::Up {
            nodes,
            name,
            report_interval,
            zosd,
            grid_bin,
            disks,
            vm_nodes,
            node_image,
            release_key,
            boot,
            supervised,
            billing_period,
            grace,
        } => {
            let supervised = if supervised {
                let Some(key) = release_key.clone() else {
                    bail!(crate::exit::Failure::new(
                        crate::exit::Kind::Usage,
                        "--supervised needs --release-key FILE (`zos release keygen -o FILE`): \
                         it signs the release the nodes run",
                    ));
                };
                Some(devnet::SupervisedOptions::new(
                    beside_me("zos-init")?,
                    beside_me("zos-flist-mount")?,
                    key,
                ))
            } else {
                None
            };
            let vms = if vm_nodes == 0 {
                None
            } else {
                let (Some(image), Some(key)) = (node_image, release_key) else {
                    bail!(crate::exit::Failure::new(
                        crate::exit::Kind::Usage,
                        "--vm-nodes needs --node-image DIR and --release-key FILE: \
                         `ZOS_VM_NODES=N scripts/devnet.sh` builds and passes both",
                    ));
                };
                let mut opts = devnet::VmOptions::new(vm_nodes, image, key);
                opts.boot = match boot {
                    BootArg::Pxe => devnet::VmBoot::Pxe,
                    BootArg::Iso => devnet::VmBoot::Iso,
                };
                Some(opts)
            };
            let opts = DevnetOptions {
                dir: devnet_dir(&name),
                name,
                nodes,
                report_interval: Duration::from_secs(report_interval.max(1)),
                grid_bin: match grid_bin {
                    Some(p) => p,
                    None => beside_me("zos-grid")?,
                },
                zosd_bin: match zosd {
                    Some(p) => p,
                    None => beside_me("zosd")?,
                },
                wait: Duration::from_secs(120),
                disks,
                vms,
                supervised,
                billing: billing_period.map(|p| devnet::DevnetBilling::new(p, grace)),
            };
            if !g.structured() {
                eprintln!(
                    "starting devnet {:?}: grid, farm, {} node(s) and {} node VM(s); waiting for every node to come online…",
                    opts.name,
                    opts.nodes,
                    opts.vms.as_ref().map_or(0, |v| v.count)
                );
            }
            let state = devnet::up(&opts).await?;
            if g.structured() {
                return output::json(&state);
            }
            status_print(&state).await?;
            outln!("\nexport ZOS_GRID={}", state.grid_url)?;
            outln!(
                "farmer key: {}    stop it with: zos devnet down --name {}",
                state.farmer_key.display(),
                state.name
            )?;
            Ok(())
        }
        DevnetCmd::Down { name } => down(&name, g).await,
        DevnetCmd::Status { name } => {
            let state = DevnetState::load(&devnet_dir(&name))?;
            if g.structured() {
                return output::json(&state);
            }
            status_print(&state).await
        }
    }
}

/// `zos devnet down`: takes this machine out of the devnet's networks it joined, removes what
/// exists, says what was already gone, and succeeds once nothing of the devnet is left (so a
/// second `down` succeeds too).
async fn down(name: &str, g: &Global) -> anyhow::Result<()> {
    let dir = devnet_dir(name);
    let (nodes, missing) = if DevnetState::state_file(&dir).exists() {
        let state = DevnetState::load(&dir)?;
        // This machine's joins of the devnet's networks go first, while the nodes still run.
        let root = crate::global::state_dir().join("networks");
        for net in crate::join::leave_grid(&root, &state.grid_url).await? {
            eprintln!("left network {net}");
        }
        let nodes = state.nodes.len() + state.vms.len();
        (nodes, devnet::down(&state)?.missing)
    } else {
        // No state: nothing to stop by record, but a devnet whose state was lost may have left
        // namespaces and bridges under its name.
        let removed = devnet::down_leftovers(name)?;
        if g.structured() {
            return output::json(&json!({"name": name, "removed": true, "was_up": false,
                "leftovers": removed}));
        }
        if removed.is_empty() {
            outln!("devnet {name} is not up: nothing to remove")?;
        } else {
            outln!("devnet {name} had no state; removed {}", removed.join(", "))?;
        }
        return Ok(());
    };
    if g.structured() {
        return output::json(&json!({"name": name, "removed": true, "was_up": true,
            "already_gone": missing}));
    }
    if !missing.is_empty() {
        eprintln!("already gone: {}", missing.join(", "));
    }
    outln!("devnet {name} removed: {nodes} node(s), grid, namespaces, links and its data")?;
    Ok(())
}

async fn status_print(state: &DevnetState) -> anyhow::Result<()> {
    fields(&[
        ("devnet", state.name.clone()),
        (
            "grid",
            format!(
                "{} (nodes reach it at {})",
                state.grid_url, state.grid_node_url
            ),
        ),
        (
            "farm",
            format!("{} (farmer twin {})", state.farm_id, state.farmer_twin),
        ),
        ("state", state.dir.display().to_string()),
    ])?;
    let client = GridClient::new(&state.grid_url)?;
    let listed = client
        .list_nodes(&NodeFilter {
            farm_id: Some(state.farm_id),
            ..NodeFilter::default()
        })
        .await
        .unwrap_or_default();
    let mut t = Table::new(&["#", "NODE", "NAMESPACE", "ADDRESS", "PID", "STATE"]);
    for n in &state.nodes {
        let online = n
            .node_id
            .and_then(|id| listed.iter().find(|x| x.id == id))
            .map(|x| x.online);
        t.row(vec![
            n.index.to_string(),
            n.node_id.map_or("-".into(), |i| i.to_string()),
            n.netns.clone(),
            n.address.clone(),
            n.pid.to_string(),
            match online {
                Some(true) => "online".into(),
                Some(false) => "offline".into(),
                None => "unknown".into(),
            },
        ]);
    }
    outln!()?;
    t.print()?;
    if !state.vms.is_empty() {
        let mut t = Table::new(&["VM", "NODE", "ADDRESS", "PID", "STATE", "CONSOLE"]);
        for vm in &state.vms {
            let node = vm
                .node_id
                .and_then(|id| listed.iter().find(|x| x.id == id))
                .or_else(|| {
                    listed
                        .iter()
                        .find(|n| devnet::vms::vm_of(state, n).is_some_and(|v| v.index == vm.index))
                });
            let address = node
                .and_then(|n| {
                    n.interfaces
                        .iter()
                        .find(|i| i.mac.eq_ignore_ascii_case(&vm.mac))
                })
                .and_then(|i| i.ips.first())
                .map_or("-".into(), |ip| ip.addr().to_string());
            t.row(vec![
                vm.name.clone(),
                node.map_or("-".into(), |n| n.id.to_string()),
                address,
                vm.pid.to_string(),
                match (state.vm_running(vm), node.map(|n| n.online)) {
                    (false, _) => "off".into(),
                    (true, Some(true)) => "online".into(),
                    (true, Some(false)) => "offline".into(),
                    (true, None) => "booting".into(),
                },
                vm.serial.display().to_string(),
            ]);
        }
        outln!()?;
        t.print()?;
    }
    Ok(())
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `zos devnet up --boot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootArg {
    Pxe,
    Iso,
}
