//! `zos`: the command line of zos users and farmers.

mod account;
mod bootloader;
mod commands;
mod context;
mod contexts;
mod deploy;
mod deployfile;
mod devnet;
mod exit;
mod flist;
mod global;
mod join;
mod name;
mod network;
mod output;
mod paths;
mod progress;
mod proposal;
mod release;
mod shell;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::global::Global;

/// What `zos --help` and `man zos` say about exit codes and the environment (docs/cli.md).
const EXIT_CODES: &str = "\
Exit codes: 0 success, 1 failure, 2 usage (the command line is wrong), 3 not found, \
4 refused (invalid, forbidden or in conflict), 5 unavailable (retry later).

Environment: ZOS_GRID, ZOS_KEY and ZOS_CONTEXT stand for --grid, --key and --context; \
NO_COLOR turns colours off; contexts are kept in ~/.config/zos/contexts.yaml (see `zos context`).";

/// Command line of zos: keys, twins, farms, nodes and local devnets.
#[derive(Debug, Parser)]
#[command(name = "zos", version, propagate_version = true, after_long_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Your ed25519 key: make one, show it, restore it from its words.
    #[command(subcommand)]
    Key(commands::KeyCmd),
    /// Twins: identities registered on the grid.
    #[command(subcommand)]
    Twin(commands::TwinCmd),
    /// Farms and their public IP pools.
    #[command(subcommand)]
    Farm(commands::FarmCmd),
    /// Nodes registered on the grid.
    #[command(subcommand)]
    Node(commands::NodeCmd),
    /// Deploy a deployment file on a node: contract, signature, progress until every workload settles.
    Deploy {
        file: PathBuf,
        /// The node to deploy on.
        #[arg(long)]
        node: u32,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait: u64,
        /// Deploy with the consensus of several twins: 'WEIGHT: TWIN=W, TWIN=W, …' (yours
        /// among them). Makes a proposal the others sign (`zos proposal`); the signature that
        /// completes the weight deploys it.
        #[arg(long, value_name = "REQUIREMENT")]
        require: Option<String>,
        /// Refuse to deploy (before signing anything) when the deployment costs more than
        /// this many tokens per hour; the cost is printed either way.
        #[arg(long, value_name = "TOKENS")]
        max_cost: Option<String>,
    },
    /// Your account on the grid: balance, deposit, history (docs/billing.md).
    #[command(subcommand)]
    Account(account::AccountCmd),
    /// Contracts' bills.
    #[command(subcommand)]
    Contract(account::ContractCmd),
    /// Deployments, updates and cancels a group of twins approves: list, show, sign, reject.
    #[command(subcommand)]
    Proposal(proposal::ProposalCmd),
    /// Your deployments: get, list, changes, update, cancel.
    #[command(subcommand)]
    Deployment(deploy::DeploymentCmd),
    /// Gateway names (NAME.<node's domain>): create, list, cancel.
    #[command(subcommand)]
    Name(name::NameCmd),
    /// A whole grid with nodes on this machine, for development and tests (needs root).
    #[command(subcommand)]
    Devnet(devnet::DevnetCmd),
    /// Flists: pack, inspect, mount, push to the hub, list.
    #[command(subcommand)]
    Flist(flist::FlistCmd),
    /// Private networks across nodes: create, join from this machine, show, delete.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Named grids, each with its key: add, use, list, show, remove.
    #[command(subcommand)]
    Context(context::ContextCmd),
    #[command(flatten)]
    Shell(shell::ShellCmd),
    /// Node OS releases (publishers): release keys, publish, list, rollouts (status, halt, advance), root rotation.
    #[command(subcommand)]
    Release(release::ReleaseCmd),
}

fn main() {
    let cli = Cli::parse();
    output::set_format(cli.global.format());
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Key(c) => commands::key(c, &cli.global).await,
            Command::Twin(c) => commands::twin(c, &cli.global).await,
            Command::Farm(c) => commands::farm(c, &cli.global).await,
            Command::Node(c) => commands::node(c, &cli.global).await,
            Command::Devnet(c) => devnet::run(c, &cli.global).await,
            Command::Flist(c) => flist::run(c, &cli.global).await,
            Command::Network(c) => network::run(c, &cli.global).await,
            Command::Release(c) => release::release(c, &cli.global).await,
            Command::Deploy {
                file,
                node,
                wait,
                require,
                max_cost,
            } => {
                deploy::deploy(
                    &file,
                    node,
                    std::time::Duration::from_secs(wait),
                    require.as_deref(),
                    max_cost.as_deref(),
                    &cli.global,
                )
                .await
            }
            Command::Account(c) => account::account(c, &cli.global).await,
            Command::Contract(c) => account::contract(c, &cli.global).await,
            Command::Proposal(c) => proposal::run(c, &cli.global).await,
            Command::Deployment(c) => deploy::deployment(c, &cli.global).await,
            Command::Name(c) => name::run(c, &cli.global).await,
            Command::Shell(c) => shell::run(c, Cli::command()),
            Command::Context(c) => context::run(c, &cli.global).await,
        }
    });
    if let Err(e) = result {
        if output::is_broken_pipe(&e) {
            // Whoever read our output has seen enough (`zos node list | head -1`).
            std::process::exit(0);
        }
        eprintln!("{}", exit::render(&e));
        std::process::exit(exit::code(&e));
    }
}
