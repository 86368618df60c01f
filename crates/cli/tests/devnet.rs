//! A devnet on this machine: real zos-grid and zosd processes, each node in its own namespace.

use std::time::Duration;

use zos_client::GridClient;
use zos_testkit::devnet::{self, DevnetGuard};
use zos_testkit::process::wait_until;
use zos_testkit::{netns, require_root};
use zos_types::registry::{Node, NodeFilter};

fn cpuinfo_cores() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u64
}

fn memtotal_bytes() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = m.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

async fn nodes(url: &str, farm: u32) -> Vec<Node> {
    GridClient::new(url)
        .unwrap()
        .list_nodes(&NodeFilter {
            farm_id: Some(farm),
            ..NodeFilter::default()
        })
        .await
        .unwrap()
}

/// Socket inodes of `pid` in LISTEN state (TCP) or bound (UDP), from its own namespace's tables.
fn listening_sockets(pid: i32) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let (state, inode) = (cols[3], cols[9]);
            let listening = if table.starts_with("tcp") {
                state == "0A"
            } else {
                true
            };
            if listening && inodes.contains(inode) {
                found.push(format!("{table} {}", cols[1]));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn devnet_nodes_register_with_real_capacity_and_listen_nowhere() {
    if !require_root("devnet_nodes_register_with_real_capacity_and_listen_nowhere") {
        return;
    }
    let net = DevnetGuard::up(2, Duration::from_secs(2)).await.unwrap();
    let s = &net.state;

    // What a user sees: `zos node list --json` against the devnet's grid.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["node", "list", "--json", "--grid", &s.grid_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // zos prints times as RFC 3339 (docs/cli.md); the rest is the registry's Node.
    let mut listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for n in &mut listed {
        for t in ["created_at", "updated_at", "last_seen"] {
            let text = n[t].as_str().unwrap_or_else(|| panic!("{t} of {n}"));
            assert!(text.ends_with('Z'), "{t} {text} is not RFC 3339 UTC");
            n[t] = 0.into();
        }
    }
    let listed: Vec<Node> = serde_json::from_value(listed.into()).unwrap();
    let ours: Vec<&Node> = listed.iter().filter(|n| n.farm_id == s.farm_id).collect();
    assert_eq!(ours.len(), 2);
    for n in ours {
        assert!(n.online, "node {} is not online", n.id);
        assert_eq!(n.capacity.cru, cpuinfo_cores());
        assert_eq!(n.capacity.mru, memtotal_bytes());
        // Two 16 GiB SSDs and one 64 GiB HDD per devnet node.
        assert_eq!(n.capacity.sru, 32 * zos_types::capacity::GIB);
        assert_eq!(n.capacity.hru, 64 * zos_types::capacity::GIB);
        assert!(n.limited.is_none(), "{:?}", n.limited);
        assert!(n.reserved.sru > 0, "the cache is reserved");
        // eth0 on the devnet bridge, eth1 its public exit; none of the links zos makes.
        let names: Vec<&str> = n.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"], "{:?}", n.interfaces);
    }
    // Each node has its own twin and its own address on the devnet bridge.
    let twins: std::collections::HashSet<_> = s.nodes.iter().map(|n| n.twin_id.unwrap()).collect();
    assert_eq!(twins.len(), 2);

    // zosd opens no listening socket.
    for n in &s.nodes {
        assert!(
            listening_sockets(n.pid).is_empty(),
            "zosd of node {} listens: {:?}",
            n.index,
            listening_sockets(n.pid)
        );
    }

    // Down removes every process, namespace and link.
    let state = s.clone();
    drop(net);
    assert!(!zos_testkit::process::alive(state.grid_pid));
    for n in &state.nodes {
        assert!(!zos_testkit::process::alive(n.pid));
        assert!(!netns::netns_exists(&n.netns), "{} left", n.netns);
        assert!(!netns::link_exists(&n.host_if), "{} left", n.host_if);
        assert!(
            zos_testkit::disk::mounts_under(&n.mount_root)
                .unwrap_or_default()
                .is_empty()
        );
        for d in &n.disks {
            assert!(!d.file.exists(), "{} left", d.file.display());
            let dev = d.device.clone().unwrap();
            assert!(
                !zos_testkit::disk::loop_devices()
                    .unwrap()
                    .iter()
                    .any(|(l, _)| *l == dev),
                "{} still attached",
                dev.display()
            );
        }
    }
    assert!(!netns::link_exists(&state.bridge));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_keeps_its_identity_and_a_silent_node_goes_offline() {
    if !require_root("a_restarted_node_keeps_its_identity_and_a_silent_node_goes_offline") {
        return;
    }
    let mut net = DevnetGuard::up(1, Duration::from_secs(1)).await.unwrap();
    let before = nodes(&net.state.grid_url, net.state.farm_id).await;
    assert_eq!(before.len(), 1);
    let id = before[0].id;

    // Crash it: with no reports for three periods the grid shows it offline.
    devnet::stop_node(&mut net.state, 1, true).unwrap();
    let url = net.state.grid_url.clone();
    let farm = net.state.farm_id;
    let offline = wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        let url = url.clone();
        async move {
            nodes(&url, farm)
                .await
                .iter()
                .any(|n| n.id == id && !n.online)
                .then_some(())
        }
    })
    .await;
    assert!(offline.is_some(), "the node never went offline");

    // Start it again: same key, same twin, same node id, no second node.
    devnet::start_node(&mut net.state, 1).unwrap();
    let back = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        let url = url.clone();
        async move { Some(nodes(&url, farm).await).filter(|n| n.iter().any(|n| n.online)) }
    })
    .await
    .expect("the node never came back online");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, id);
    assert_eq!(back[0].twin_id, before[0].twin_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_reattaches_when_the_grid_comes_back() {
    if !require_root("a_node_reattaches_when_the_grid_comes_back") {
        return;
    }
    let mut net = DevnetGuard::up(1, Duration::from_secs(1)).await.unwrap();
    let url = net.state.grid_url.clone();
    let farm = net.state.farm_id;
    let first = nodes(&url, farm).await[0].clone();

    devnet::stop_grid(&mut net.state);
    tokio::time::sleep(Duration::from_secs(4)).await;
    devnet::start_grid(&mut net.state).await.unwrap();

    // The node keeps retrying and reports again on its own, with no new registration.
    let seen_later = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        let url = url.clone();
        let last = first.last_seen;
        async move {
            nodes(&url, farm)
                .await
                .into_iter()
                .find(|n| n.online && n.last_seen > last)
        }
    })
    .await
    .expect("the node did not report to the restarted grid");
    assert_eq!(seen_later.id, first.id);
    assert_eq!(nodes(&url, farm).await.len(), 1);
}

/// `zos devnet …` as a user runs it, with its state in `state` (XDG_STATE_HOME).
fn zos_devnet(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    let bin = |b: &str| {
        zos_testkit::workspace_binary(b)
            .unwrap_or_else(|| panic!("{b} is not built: cargo build --workspace"))
    };
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zos"));
    cmd.arg("devnet").args(args).env("XDG_STATE_HOME", state);
    if args[0] == "up" {
        cmd.arg("--zosd")
            .arg(bin("zosd"))
            .arg("--grid-bin")
            .arg(bin("zos-grid"))
            .args(["--nodes", "1", "--report-interval", "1"]);
    }
    cmd.output().unwrap()
}

fn ok(out: &std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    format!("{}{stderr}", String::from_utf8_lossy(&out.stdout))
}

#[test]
fn devnet_down_is_idempotent_and_up_after_down_starts_fresh() {
    if !require_root("devnet_down_is_idempotent_and_up_after_down_starts_fresh") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("u{:04}", std::process::id() % 10_000);
    let dir = tmp.path().join("zos/devnet").join(&name);
    ok(&zos_devnet(tmp.path(), &["up", "--name", &name]), "up");
    let state = zos_devnet::DevnetState::load(&dir).unwrap();
    let node = state.nodes[0].clone();

    // A user removes parts by hand: the node's namespace (its veth ends go with it) and the
    // public bridge. `down` removes the rest, says what was gone, and exits 0.
    zos_testkit::cmd::ip(&["netns", "del", &node.netns]).unwrap();
    zos_testkit::cmd::ip(&["link", "del", &state.public_bridge]).unwrap();
    let said = ok(&zos_devnet(tmp.path(), &["down", "--name", &name]), "down");
    assert!(said.contains("already gone"), "{said}");
    assert!(
        said.contains(&format!("namespace {}", node.netns)),
        "{said}"
    );
    assert!(
        said.contains(&format!("bridge {}", state.public_bridge)),
        "{said}"
    );
    let nothing_left = || {
        assert!(!zos_testkit::process::alive(state.grid_pid));
        assert!(!zos_testkit::process::alive(node.pid));
        for link in [
            &state.bridge,
            &state.public_bridge,
            &node.host_if,
            &node.public_if,
        ] {
            assert!(!netns::link_exists(link), "{link} left");
        }
        assert!(!netns::netns_exists(&node.netns));
        assert!(!zos_devnet::DevnetState::state_file(&dir).exists());
        assert!(
            !dir.join("grid").exists(),
            "the grid's database outlived down"
        );
        assert!(
            zos_testkit::disk::mounts_under(&dir)
                .unwrap_or_default()
                .is_empty()
        );
    };
    nothing_left();

    // Down again: nothing to do, and that is a success.
    let said = ok(
        &zos_devnet(tmp.path(), &["down", "--name", &name]),
        "second down",
    );
    assert!(said.contains("nothing to remove"), "{said}");

    // Up after down: a fresh devnet (its farm name is free again), then down once more.
    ok(
        &zos_devnet(tmp.path(), &["up", "--name", &name]),
        "up after down",
    );
    let again = zos_devnet::DevnetState::load(&dir).unwrap();
    assert_eq!(
        again.farmer_twin, 1,
        "a fresh grid: the farmer is its first twin"
    );

    // This machine joins one of its networks and does not leave it: `down` takes it out.
    let user = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zos"))
            .args(args)
            .args(["--grid", &again.grid_url, "--key"])
            .arg(tmp.path().join("user.key"))
            .env("XDG_STATE_HOME", tmp.path())
            .output()
            .unwrap();
        ok(&out, &format!("zos {args:?}"))
    };
    user(&["key", "new"]);
    user(&["twin", "create"]);
    let node = again.nodes[0].node_id.unwrap().to_string();
    user(&[
        "network",
        "create",
        "lan",
        "--nodes",
        &node,
        "--ip-range",
        "10.98.0.0/16",
        "--access",
    ]);
    let joined = user(&["network", "join", "lan", "--json"]);
    let joined: serde_json::Value = serde_json::from_str(&joined).unwrap();
    let ifname = joined["interface"].as_str().unwrap().to_string();
    let pid = joined["pid"].as_i64();
    assert!(netns::link_exists(&ifname));

    let said = ok(
        &zos_devnet(tmp.path(), &["down", "--name", &name]),
        "last down",
    );
    assert!(!said.contains("already gone"), "{said}");
    assert!(said.contains("left network lan"), "{said}");
    assert!(!netns::link_exists(&ifname), "{ifname} outlived down");
    if let Some(pid) = pid {
        assert!(
            !zos_testkit::process::alive(pid as i32),
            "boringtun outlived down"
        );
    }
    nothing_left();
}

#[test]
fn a_supervised_devnet_runs_zosd_from_a_release_and_goes_with_nothing_left() {
    if !require_root("a_supervised_devnet_runs_zosd_from_a_release_and_goes_with_nothing_left") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("s{:04}", std::process::id() % 10_000);
    let dir = tmp.path().join("zos/devnet").join(&name);

    // The release needs a key: refused, saying which, with nothing made.
    let out = zos_devnet(tmp.path(), &["up", "--name", &name, "--supervised"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--supervised needs --release-key"), "{err}");
    assert!(!zos_devnet::DevnetState::state_file(&dir).exists());
    assert!(!netns::link_exists(&format!("{name}br")));

    let key = tmp.path().join("release.key");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["release", "keygen", "-o"])
        .arg(&key)
        .output()
        .unwrap();
    ok(&made, "release keygen");
    let up = zos_devnet(
        tmp.path(),
        &[
            "up",
            "--name",
            &name,
            "--supervised",
            "--release-key",
            key.to_str().unwrap(),
        ],
    );
    ok(&up, "up --supervised");
    let state = zos_devnet::DevnetState::load(&dir).unwrap();
    let node = state.nodes[0].clone();
    // The node's process is its zos-init, whose zosd registered the devnet's first release.
    let argv = zos_runtime::supervise::argv(node.pid).unwrap_or_default();
    assert!(argv.iter().any(|a| a == "--node-test"), "{argv:?}");
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["node", "list", "--json", "--grid", &state.grid_url])
        .output()
        .unwrap();
    ok(&list, "node list");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["zos_version"], "0.1.0", "{list}");

    ok(&zos_devnet(tmp.path(), &["down", "--name", &name]), "down");
    assert!(!zos_testkit::process::alive(node.pid));
    assert!(!netns::netns_exists(&node.netns));
    for data in ["grid", "release", "node1", "release-keys.json"] {
        assert!(!dir.join(data).exists(), "{data} outlived down");
    }
}
