//! Live upgrade tests and benchmarks on a devnet: what the grid says of a release's rollout and
//! of the nodes' versions, and the processes a supervised node runs.

use std::time::{Duration, Instant};

use zos_client::release::ReleaseClient;
use zos_types::NodeId;
use zos_types::release::RunMode;
use zos_types::release::fleet::{NodeReport, UpgradeState};

use crate::user::User;

/// Each node's last report for `version` (nodes that reported nothing are left out), and
/// whether the grid halted that rollout by itself.
pub async fn reports(grid: &str, version: &str) -> (Vec<(NodeId, NodeReport)>, bool) {
    let s = ReleaseClient::new(grid)
        .unwrap()
        .status(RunMode::Dev, Some(version.parse().unwrap()))
        .await
        .unwrap();
    let halted = s.halted.is_some_and(|h| h.by == "grid");
    (
        s.nodes
            .into_iter()
            .filter_map(|n| Some((n.node, n.report?)))
            .collect(),
        halted,
    )
}

/// Waits up to `limit` until every node of `nodes` reported `want` for `version`; panics with
/// the last reports and `why()` (a node log's end) otherwise.
pub async fn wait_reports(
    grid: &str,
    nodes: &[NodeId],
    version: &str,
    want: UpgradeState,
    limit: Duration,
    why: impl Fn() -> String,
) -> Vec<(NodeId, NodeReport)> {
    let deadline = Instant::now() + limit;
    loop {
        let (got, _) = reports(grid, version).await;
        let done = nodes
            .iter()
            .all(|id| got.iter().any(|(n, r)| n == id && r.state == want));
        if done {
            return got;
        }
        if Instant::now() > deadline {
            panic!(
                "not every node of {nodes:?} reported {want} for {version} within {limit:?} \
                 (last: {got:?})\n{}",
                why()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The version `zos node list` shows for `node`.
pub fn listed_version(user: &User, node: NodeId) -> String {
    let list = user.zos(&["node", "list", "--json"]);
    list.as_array()
        .and_then(|a| a.iter().find(|n| n["id"] == node))
        .and_then(|n| n["zos_version"].as_str())
        .unwrap_or_else(|| panic!("node {node} in zos node list: {list}"))
        .to_string()
}

/// The processes whose program (the file name of the first argument) is `program`, in the PID
/// namespace of process `of` (a supervised devnet node's zos-init), by the PIDs this process
/// sees, sorted.
pub fn pids_in_namespace_of(of: i32, program: &str) -> Vec<i32> {
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(want) = ns(of) else {
        return Vec::new();
    };
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = argv0.split(|b| *b == 0).next().unwrap_or_default();
            let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
            name == program.as_bytes() && ns(*pid).as_ref() == Some(&want)
        })
        .collect();
    out.sort_unstable();
    out
}
