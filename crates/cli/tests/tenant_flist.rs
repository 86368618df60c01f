//! A tenant's flist must never make zosd read outside it. zosd (root) copies a VM-mode flist's
//! `image.raw` onto the tenant's first disk; the FUSE mount serves symbolic links as they are,
//! so an `image.raw` that links to a host file would copy that file onto the tenant's disk.
//! Here a real devnet node gets such flists from the real hub: the machine fails with a reason
//! that says why, and no disk of the tenant holds the host file's marker. No guest boots: the
//! refusal comes before anything is written. The files in which the node keeps a tenant's
//! secrets (deployments, WireGuard keys, VM specs and seeds with SSH keys) are root-only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zos_testkit::devnet::{DevnetGuard, DevnetNode};
use zos_testkit::require_root;
use zos_testkit::user::User;

/// A marker no disk holds by chance.
fn marker() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("HOST-SECRET-{hex}")
}

/// Every regular file below `dir` whose path names `needle` (not following links).
fn files_naming(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let (p, t) = (e.path(), e.file_type().unwrap());
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() && p.to_string_lossy().contains(needle) {
                out.push(p);
            }
        }
    }
    out
}

/// Whether the file at `p` holds `needle` anywhere.
fn holds(p: &Path, needle: &[u8]) -> bool {
    let data = std::fs::read(p).unwrap();
    data.windows(needle.len()).any(|w| w == needle)
}

/// Packs `dir` as `name` and pushes it to the hub; answers its URL as nodes reach it.
fn publish(u: &User, net: &DevnetGuard, work: &Path, dir: &Path, name: &str) -> String {
    let fl = work.join(name);
    let (d, f) = (dir.to_str().unwrap(), fl.to_str().unwrap());
    u.zos(&["flist", "pack", d, "-o", f, "--hub", "--json"]);
    u.zos(&["flist", "push", f, "--json"]);
    format!(
        "{}/api/v1/hub/flists/{}/{name}",
        net.state.grid_node_url,
        u.twin()
    )
}

/// Deploys a zmount and a VM-mode machine from `flist` on `node`; answers the contract and the
/// machine's workload as `zos deployment get` shows it.
fn deploy_vm(u: &User, node: &DevnetNode, work: &Path, flist: &str) -> (u64, serde_json::Value) {
    let yaml = format!(
        "workloads:\n  - name: boot\n    type: zmount\n    data: {{size: 64M}}\n  - name: vm\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{interfaces: [{{network: lan, ip: 10.20.2.9}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n      mounts: [{{name: boot, mountpoint: /boot}}]\n"
    );
    let f = work.join("vm.yaml");
    std::fs::write(&f, yaml).unwrap();
    let id = node.node_id.unwrap().to_string();
    let (ok, _, err) = u.zos_raw(&["deploy", f.to_str().unwrap(), "--node", &id, "--json"]);
    assert!(!ok, "a machine in error fails the command: {err}");
    let list = u.zos(&["deployment", "list", "--json"]);
    let contract = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_u64().unwrap())
        .max()
        .unwrap();
    let got = u.zos(&["deployment", "get", &contract.to_string(), "--json"]);
    let vm = got["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "vm")
        .unwrap_or_else(|| panic!("no machine in {got}"))
        .clone();
    (contract, vm)
}

/// A devnet of one node, a user with a network `lan` on it, and a work directory.
async fn one_node_with_a_network() -> (DevnetGuard, DevnetNode, User, tempfile::TempDir) {
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let node = net.state.nodes[0].clone();
    let u = User::new(&net.state.grid_url, Path::new(env!("CARGO_BIN_EXE_zos")))
        .await
        .unwrap();
    let id = node.node_id.unwrap().to_string();
    u.zos(&["network", "create", "lan", "--nodes", &id, "--json"]);
    (net, node, u, tempfile::tempdir().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn image_symlink_to_host_file_is_refused_and_copies_nothing() {
    if !require_root("image_symlink_to_host_file_is_refused_and_copies_nothing") {
        return;
    }
    let (net, node, u, work) = one_node_with_a_network().await;

    // A host file only root can read, holding a marker.
    let mark = marker();
    let secret = work.path().join("host-secret");
    std::fs::write(&secret, mark.repeat(4096)).unwrap();
    let climb = format!(
        "{}{}",
        "../".repeat(32),
        secret.to_str().unwrap().trim_start_matches('/')
    );
    for (case, target) in [
        ("absolute", secret.to_str().unwrap().to_string()),
        ("climbing", climb),
    ] {
        let dir = work.path().join(case);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("image.raw")).unwrap();
        let flist = publish(&u, &net, work.path(), &dir, &format!("{case}.fl"));
        let (contract, vm) = deploy_vm(&u, &node, work.path(), &flist);
        assert_eq!(vm["state"], "error", "{case}: {vm}");
        let why = vm["message"].as_str().unwrap();
        assert!(
            why.contains("image.raw") && why.contains("symbolic link"),
            "{case}: the reason says why: {why}"
        );
        // No file of this deployment on the node (its zmount disk, a seed) holds the marker.
        let tenant = format!("{}-{contract}-", u.twin());
        let files: Vec<PathBuf> = files_naming(&node.mount_root, &tenant)
            .into_iter()
            .chain(files_naming(&node.state_dir, &tenant))
            .collect();
        assert!(
            files.iter().any(|p| p.to_string_lossy().contains("boot")),
            "{case}: the zmount disk exists: {files:?}"
        );
        for f in &files {
            assert!(
                !holds(f, mark.as_bytes()),
                "{case}: {} holds the host file",
                f.display()
            );
        }
        u.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    }
    u.zos(&["network", "delete", "lan", "--json"]);
    let left = net.down_leftovers();
    assert!(left.is_empty(), "{left:?}");
}

/// Mode bits of `p` (not following links).
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_secrets_on_the_node_are_readable_by_root_only() {
    if !require_root("tenant_secrets_on_the_node_are_readable_by_root_only") {
        return;
    }
    let (net, node, u, work) = one_node_with_a_network().await;
    // A VM-mode machine with an SSH key: its image (blank, it boots nothing) is written, its
    // NoCloud seed made and QEMU started, all for real.
    let dir = work.path().join("img");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("image.raw"), vec![0u8; 1 << 20]).unwrap();
    let flist = publish(&u, &net, work.path(), &dir, "blank.fl");
    let yaml = format!(
        "workloads:\n  - name: boot\n    type: zmount\n    data: {{size: 64M}}\n  - name: vm\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{interfaces: [{{network: lan, ip: 10.20.2.9}}]}}\n      compute_capacity: {{cpu: 1, memory: 256M}}\n      mounts: [{{name: boot, mountpoint: /boot}}]\n      env: {{SSH_KEY: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGKey me@host\"}}\n"
    );
    let res = u.deploy(work.path(), "vm.yaml", &yaml, node.node_id.unwrap());
    let contract = res["contract_id"].as_u64().unwrap();
    let vm = format!("{}-{contract}-vm", u.twin());

    // zosd keeps its state on its first storage pool, below the mount root.
    let db = files_naming(&node.mount_root, "provision.sqlite")
        .into_iter()
        .find(|p| p.ends_with("provision.sqlite"))
        .expect("the node's provision.sqlite");
    let s = db.parent().unwrap();
    let files = [
        s.join("provision.sqlite"),
        s.join("provision.sqlite-wal"),
        s.join("provision.sqlite-shm"),
        s.join("network.json"),
        s.join("vmm").join(format!("{vm}.json")),
        s.join("zmachine").join(format!("{vm}.json")),
        s.join("zmachine").join(format!("{vm}-cidata.iso")),
    ];
    let mut wrong = Vec::new();
    for f in &files {
        if mode(f) != 0o600 {
            wrong.push(format!("{} is {:o}", f.display(), mode(f)));
        }
    }
    // The CLI's own copy of the network (private keys of every node and the access peer), in
    // its grid's and twin's directory.
    let root = u.state_dir().join("zos/networks");
    let grid = root.join(zos_client::workflow::network::grid_id(&u.grid));
    let cli = grid.join(u.twin().to_string());
    if mode(&cli.join("lan.json")) != 0o600 {
        wrong.push(format!(
            "{} is {:o}",
            cli.join("lan.json").display(),
            mode(&cli.join("lan.json"))
        ));
    }
    for d in [s.join("vmm"), s.join("zmachine"), root, grid, cli] {
        if mode(&d) != 0o700 {
            wrong.push(format!("{} is {:o}", d.display(), mode(&d)));
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
    u.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    u.zos(&["network", "delete", "lan", "--json"]);
    let left = net.down_leftovers();
    assert!(left.is_empty(), "{left:?}");
}
