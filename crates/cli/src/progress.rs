//! Drawing the progress the workflows of `zos-client` report: a bar of settled workloads while
//! a deployment is followed, a spinner while a cancelled one is removed, a line per step. With
//! `--json` nothing is drawn.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use zos_client::workflow::deploy::DeployEvent;
use zos_client::workflow::network::NetworkEvent;

const TICK: Duration = Duration::from_millis(120);

/// The progress of deployment workflows on stderr.
#[derive(Debug)]
pub struct Progress {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Draws nothing when `quiet` (`--json`).
    pub fn new(quiet: bool) -> Self {
        Self { quiet, bar: None }
    }

    /// Draws one event of a deployment workflow.
    pub fn deploy(&mut self, event: DeployEvent) {
        match event {
            DeployEvent::IpPicked {
                workload,
                network,
                ip,
            } if !self.quiet => {
                eprintln!("{workload}: address {ip} picked in network {network}");
            }
            DeployEvent::Sent { node, contract } if !self.quiet => {
                eprintln!("contract {contract} on node {node}: deployment sent");
            }
            DeployEvent::Following { total, .. } if !self.quiet => {
                let bar = ProgressBar::new(total as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed}] {pos}/{len} workloads settled {msg}",
                    )
                    .expect("valid template"),
                );
                self.show(bar);
            }
            DeployEvent::Progress {
                settled, errors, ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(settled as u64);
                    // Otherwise the message stays what a starting workload shows last.
                    if errors > 0 {
                        bar.set_message(format!("({errors} in error)"));
                    }
                }
            }
            DeployEvent::Starting { name, message } => {
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("({name} starting: {message})"));
                }
            }
            DeployEvent::Cancelled { node, contract } if !self.quiet => {
                let bar = ProgressBar::new_spinner();
                bar.set_message(format!(
                    "contract {contract} cancelled; node {node} removes the workloads"
                ));
                self.show(bar);
            }
            DeployEvent::Settled { .. } | DeployEvent::Removed { .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }

    /// Draws one event of a network workflow.
    pub fn network(&mut self, event: NetworkEvent) {
        match event {
            NetworkEvent::Planned {
                node,
                subnet,
                listen_port,
            } if !self.quiet => {
                eprintln!("node {node}: subnet {subnet}, port {listen_port}");
            }
            NetworkEvent::Node { event, .. } => self.deploy(event),
            NetworkEvent::RolledBack { .. } => self.abandon(),
            NetworkEvent::RollbackFailed { contract, error } => {
                self.abandon();
                eprintln!(
                    "warning: contract {contract} could not be cancelled: {}",
                    zos_runtime::error_chain(&error)
                );
            }
            _ => {}
        }
    }

    /// Leaves the bar as it is (after a failure), and stops drawing it.
    pub fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }

    fn show(&mut self, bar: ProgressBar) {
        bar.enable_steady_tick(TICK);
        if let Some(old) = self.bar.replace(bar) {
            old.abandon();
        }
    }
}
