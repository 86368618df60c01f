//! A whole grid on one machine: the grid on loopback, a farmer with a farm, and N nodes, each in
//! its own network namespace with its own loop-device disks, joined to the grid by veth pairs on
//! a bridge. `zos devnet` and the integration tests (through `zos-testkit`) both use it.
//!
//! Processes are started detached so a devnet outlives the command that made it
//! (`zos devnet up`); [`down`] removes every process, namespace and link it made, using the
//! state file written by [`up`] (a [`zos_runtime::StateFile`], `<dir>/devnet.json`). The grid
//! and the nodes are recognised by their command lines ([`DevnetState::grid_marker`],
//! [`DevnetState::node_marker`]), never by a recorded PID alone.
//!
//! - [`state`]: what a devnet is asked for and what it made;
//! - [`supervised`]: namespace nodes whose zosd runs under zos-init from a release, so they
//!   upgrade live;
//! - [`up`], [`start_grid`], [`start_node`], [`wait_online`] and their stop counterparts;
//! - [`down`]: removes everything;
//! - [`DevnetError`]: what failed, with its cause as the source;
//! - [`netns`], [`disk`], [`process`], [`cmd`]: the namespaces, links, loop devices, mounts and
//!   processes they are made of (the test kit builds its test hosts from the same parts).

pub mod cmd;
pub mod disk;
mod down;
mod error;
pub mod netns;
pub mod process;
mod run;
pub mod state;
pub mod supervised;
pub mod vmnode;
pub mod vms;

pub use down::{DownReport, down, down_leftovers};
pub use error::DevnetError;
pub use run::{
    GUEST_FLIST, PUBLIC_IPS, PUBLIC_NIC, SAMPLE_FLIST, guest_flist_url, start_grid, start_node,
    stop_grid, stop_node, up, wait_online, zosd_command,
};
pub use state::{
    DEVNET_NODE_ARGS, DevnetBilling, DevnetDisk, DevnetNode, DevnetOptions, DevnetState, DevnetVm,
    DiskPlan, FAUCET_TOKENS, STATE_VERSION, SupervisedOptions, VmBoot, VmOptions,
};
pub use zos_types::boot::NodeArg;
