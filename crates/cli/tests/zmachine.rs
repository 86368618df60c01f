//! Virtual machines end to end on a devnet: the guest image built from Debian's kernel and
//! published to the hub as a flist, a busybox root packed and pushed as the user's flist, a
//! private network across two nodes, and zmachines deployed with `zos deploy` running under
//! real QEMU (TCG here) with virtiofs roots, a zmount disk and a volume. Checked from inside the
//! network: the service answers, the disk has its size, the volume survives restarts, two
//! machines on two nodes reach each other over WireGuard; QEMU killed comes back, zosd killed
//! leaves the machine running and adopts it; bad machines fail alone; cancel leaves nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zos_testkit::devnet;
use zos_testkit::guest::{
    VmBed, build_guest, http_get, pids_with, vm_bed, vm_leftovers, wait_http,
};
use zos_testkit::netns;
use zos_testkit::process::wait_until;
use zos_testkit::require_root;
use zos_testkit::user::nr_netns;
use zos_types::node_api::{Console, ConsoleBody, ContractBody, Get};

fn machine_yaml(flist: &str, ip: &str, role: &str, peer: Option<&str>, disks: bool) -> String {
    let mut y = String::from("workloads:\n");
    if disks {
        y.push_str(
            "  - name: data\n    type: zmount\n    data: {size: 1G}\n  - name: vol\n    type: volume\n    data: {size: 256M}\n",
        );
    }
    y.push_str(&format!(
        "  - name: {role}\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{interfaces: [{{network: lan, ip: {ip}}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n      entrypoint: /start.sh\n"
    ));
    if disks {
        y.push_str(
            "      mounts: [{name: data, mountpoint: /data}, {name: vol, mountpoint: /vol}]\n",
        );
    }
    y.push_str(&format!("      env: {{ROLE: {role}"));
    if let Some(p) = peer {
        y.push_str(&format!(", PEER: \"{p}\""));
    }
    y.push_str("}\n");
    y
}

#[tokio::test(flavor = "multi_thread")]
async fn zmachines_on_two_nodes_talk_over_their_network() {
    if !require_root("zmachines_on_two_nodes_talk_over_their_network") {
        return;
    }
    let VmBed {
        mut net,
        user: alice,
        flist,
        work,
    } = vm_bed(2, Path::new(env!("CARGO_BIN_EXE_zos"))).await;
    let (n1, n2) = (net.state.nodes[0].clone(), net.state.nodes[1].clone());
    let (a1, a2) = (
        nr_netns(&n1, alice.twin(), "lan"),
        nr_netns(&n2, alice.twin(), "lan"),
    );

    // A machine with a disk and a volume on node 1.
    let res = alice.deploy(
        work.path(),
        "web.yaml",
        &machine_yaml(&flist, "10.20.2.5", "web", None, true),
        n1.node_id.unwrap(),
    );
    let contract = res["contract_id"].as_u64().unwrap();
    let web = workload(&res, "web");
    assert_eq!(web["state"], "ok", "{web}");
    assert_eq!(web["data"]["ip"], "10.20.2.5");
    assert!(web["data"]["console_url"].as_str().is_some(), "{web}");
    let vm = format!("{}-{contract}-web", alice.twin());

    // The service answers inside the network; the disk has its size; the volume counts boots.
    let page = wait_http(&a1, "10.20.2.5:8080", "/", "hello from web", 120).await;
    assert!(page.contains("role=web"), "{page}");
    eprintln!("web answers: {page:?}");
    let df = http_get(&a1, "10.20.2.5:8080", "/df").unwrap();
    eprintln!("df in the guest: {df:?}");
    let blocks: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        (900 * 1024..=1024 * 1024).contains(&blocks),
        "a 1 GiB zmount, {blocks} KiB in the guest: {df}"
    );
    assert_eq!(
        http_get(&a1, "10.20.2.5:8080", "/boots").unwrap().trim(),
        "1"
    );
    let console = alice
        .client
        .node(n1.twin_id.unwrap())
        .call::<Console>(&ConsoleBody {
            contract_id: contract,
            name: "web".into(),
            bytes: None,
        })
        .await
        .unwrap();
    assert!(console.console.contains("entrypoint ready"), "{console:?}");

    // The batch target: a machine on node 2 reaches the one on node 1, guest to guest.
    let res2 = alice.deploy(
        work.path(),
        "peer.yaml",
        &machine_yaml(&flist, "10.20.3.5", "peer", Some("10.20.2.5"), false),
        n2.node_id.unwrap(),
    );
    let contract2 = res2["contract_id"].as_u64().unwrap();
    assert_eq!(res2["workloads"][0]["state"], "ok", "{res2}");
    let copied = wait_http(&a2, "10.20.3.5:8080", "/peer", "hello from web", 120).await;
    assert!(copied.contains("role=web"), "{copied}");
    eprintln!("peer on node 2 copied from web on node 1: {copied:?}");

    // kill -9 QEMU: the machine comes back, with its volume.
    let qemu = pids_with("qemu-system", &vm);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    eprintln!("killing qemu {qemu:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0]),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    wait_http(&a1, "10.20.2.5:8080", "/boots", "2", 120).await;
    let qemu = pids_with("qemu-system", &vm);
    assert_eq!(qemu.len(), 1, "restarted once: {qemu:?}");

    // kill -9 zosd: the machine keeps serving, and the new zosd adopts it.
    devnet::stop_node(&mut net.state, 1, true).unwrap();
    assert!(
        http_get(&a1, "10.20.2.5:8080", "/").is_some(),
        "serving while zosd is down"
    );
    devnet::start_node(&mut net.state, 1).unwrap();
    let back = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let c = alice.client.clone();
        let twin = n1.twin_id.unwrap();
        async move {
            let get = ContractBody {
                contract_id: contract,
            };
            c.node(twin).call::<Get>(&get).await.ok()
        }
    })
    .await;
    assert!(back.is_some(), "node 1 answers again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pids_with("qemu-system", &vm),
        qemu,
        "adopted, not restarted"
    );
    assert_eq!(
        http_get(&a1, "10.20.2.5:8080", "/boots").unwrap().trim(),
        "2"
    );

    // A grace period pauses the machine (it stops answering, its process stays) and its end
    // resumes it.
    let admin = net.state.farmer_client().unwrap();
    admin.set_grace(contract, true).await.unwrap();
    let paused = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        let a1 = a1.clone();
        async move {
            tokio::task::spawn_blocking(move || http_get(&a1, "10.20.2.5:8080", "/boots"))
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert!(
        paused.is_some(),
        "the machine still answers during its grace period"
    );
    assert_eq!(pids_with("qemu-system", &vm), qemu, "paused, not stopped");
    admin.set_grace(contract, false).await.unwrap();
    wait_http(&a1, "10.20.2.5:8080", "/boots", "2", 60).await;

    // Bad machines fail alone and say why; the volume next to them is made.
    let bad = format!(
        "workloads:\n  - name: v\n    type: volume\n    data: {{size: 256M}}\n  - name: noflist\n    type: zmachine\n    data:\n      flist: {}/api/v1/hub/flists/{}/missing.fl\n      network: {{interfaces: [{{network: lan, ip: 10.20.2.6}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n  - name: nonet\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{interfaces: [{{network: nope, ip: 10.20.2.7}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n",
        net.state.grid_node_url,
        alice.twin()
    );
    let file = work.path().join("bad.yaml");
    std::fs::write(&file, bad).unwrap();
    let (ok, out, _) = alice.zos_raw(&[
        "deploy",
        file.to_str().unwrap(),
        "--node",
        &n1.node_id.unwrap().to_string(),
        "--json",
    ]);
    assert!(!ok, "workloads in error fail the command");
    let _ = out;
    let list = alice.zos(&["deployment", "list", "--json"]);
    let bad_contract = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_u64().unwrap())
        .max()
        .unwrap();
    let got = alice.zos(&["deployment", "get", &bad_contract.to_string(), "--json"]);
    let state = |n: &str| workload(&got, n);
    assert_eq!(state("v")["state"], "ok", "{got}");
    assert_eq!(state("noflist")["state"], "error");
    assert!(
        state("noflist")["message"]
            .as_str()
            .unwrap()
            .contains("missing.fl"),
        "{got}"
    );
    assert_eq!(state("nonet")["state"], "error");
    assert!(
        state("nonet")["message"].as_str().unwrap().contains("nope"),
        "{got}"
    );
    for (cpu, mem, why) in [(0, "384M", "cpu"), (1, "64M", "memory")] {
        let y = format!(
            "workloads:\n  - name: m\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{interfaces: [{{network: lan, ip: 10.20.2.8}}]}}\n      compute_capacity: {{cpu: {cpu}, memory: {mem}}}\n"
        );
        let f = work.path().join("m.yaml");
        std::fs::write(&f, y).unwrap();
        let (ok, _, err) = alice.zos_raw(&[
            "deploy",
            f.to_str().unwrap(),
            "--node",
            &n1.node_id.unwrap().to_string(),
        ]);
        assert!(!ok && err.contains(why), "{why}: {err}");
    }
    alice.zos(&["deployment", "cancel", &bad_contract.to_string(), "--json"]);

    // Cancel: nothing of the machines stays.
    alice.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    alice.zos(&["deployment", "cancel", &contract2.to_string(), "--json"]);
    let vm2 = format!("{}-{contract2}-peer", alice.twin());
    for (n, v) in [(&n1, &vm), (&n2, &vm2)] {
        let left = vm_leftovers(n, v);
        assert!(left.is_empty(), "{v}: {left:?}");
        let logs = n.state_dir.clone();
        let console_left = walk(&logs)
            .into_iter()
            .any(|p| p.to_string_lossy().contains(v.as_str()));
        assert!(
            !console_left,
            "files of {v} remain under {}",
            logs.display()
        );
    }
    alice.zos(&["network", "delete", "lan", "--json"]);
    let left = net.down_leftovers();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_gets_its_public_ip_and_cannot_spoof_another() {
    if !require_root("a_machine_gets_its_public_ip_and_cannot_spoof_another") {
        return;
    }
    let VmBed {
        net,
        user: u,
        flist,
        work,
    } = vm_bed(1, Path::new(env!("CARGO_BIN_EXE_zos"))).await;
    let n1 = net.state.nodes[0].clone();

    // A stand-in for the internet on the public bridge.
    let pubnet = net
        .state
        .public_subnet
        .split('/')
        .next()
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string();
    let probe_addr = format!("{pubnet}.250");
    let probe = netns::Netns::create(&format!("{}-pr", net.state.name)).unwrap();
    netns::attach(
        &net.state.public_bridge,
        &probe,
        &format!("{}prb", net.state.name),
        &format!("{probe_addr}/24"),
        &format!("{pubnet}.1"),
    )
    .unwrap();

    let yaml = format!(
        "workloads:\n  - name: pub\n    type: ip\n    data: {{v4: true}}\n  - name: web\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{public_ip: pub, interfaces: [{{network: lan, ip: 10.20.2.5}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n      entrypoint: /start.sh\n      env: {{ROLE: web, PROBE: \"{probe_addr}\", PUBNET: \"{pubnet}.\"}}\n"
    );
    let res = u.deploy(work.path(), "pub.yaml", &yaml, n1.node_id.unwrap());
    let contract = res["contract_id"].as_u64().unwrap();
    let web = workload(&res, "web");
    assert_eq!(web["state"], "ok", "{res}");
    let public = web["data"]["public_ip"].as_str().unwrap().to_string();
    assert!(public.starts_with(&format!("{pubnet}.10")), "{web}");
    let public_addr = public.split('/').next().unwrap().to_string();

    // Reachable from the internet on its public address; only its own address and MAC get out.
    let page = wait_http(
        probe.name(),
        &format!("{public_addr}:8080"),
        "/",
        "hello from web",
        120,
    )
    .await;
    eprintln!("public page: {page:?}");
    let spoof = http_get(probe.name(), &format!("{public_addr}:8080"), "/spoof").unwrap();
    eprintln!("spoof checks: {spoof:?}");
    assert!(spoof.contains("own=ok"), "{spoof}");
    assert!(
        spoof.contains("ip=fail"),
        "another source address got out: {spoof}"
    );
    assert!(spoof.contains("mac=fail"), "another MAC got out: {spoof}");

    // Cancel: the farm's pool has the address free again.
    u.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    let farm = u.client.list_farm_ips(net.state.farm_id).await.unwrap();
    let freed = farm.iter().find(|f| f.ip.to_string() == public).unwrap();
    assert_eq!(freed.contract_id, None);
    let vm = format!("{}-{contract}-web", u.twin());
    let left = vm_leftovers(&n1, &vm);
    assert!(left.is_empty(), "{left:?}");
    u.zos(&["network", "delete", "lan", "--json"]);
    drop(probe);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_vm_boots_its_image_from_a_zmount_and_reads_its_nocloud_seed() {
    if !require_root("a_full_vm_boots_its_image_from_a_zmount_and_reads_its_nocloud_seed") {
        return;
    }
    let guest = build_guest(&[], &[]);
    let VmBed {
        net, user: u, work, ..
    } = vm_bed(1, Path::new(env!("CARGO_BIN_EXE_zos"))).await;
    let n1 = net.state.nodes[0].clone();

    // A flist holding a bootable image.raw.
    let dir = work.path().join("vmimage");
    std::fs::create_dir_all(&dir).unwrap();
    let built = work.path().join("build");
    std::fs::create_dir_all(&built).unwrap();
    let img = zos_testkit::vmimage::bootable_image(&built, &guest).unwrap();
    std::fs::rename(&img, dir.join("image.raw")).unwrap();
    let fl = work.path().join("vm.fl");
    u.zos(&[
        "flist",
        "pack",
        dir.to_str().unwrap(),
        "-o",
        fl.to_str().unwrap(),
        "--hub",
        "--json",
    ]);
    u.zos(&["flist", "push", fl.to_str().unwrap(), "--json"]);
    let flist = format!(
        "{}/api/v1/hub/flists/{}/vm.fl",
        net.state.grid_node_url,
        u.twin()
    );
    let yaml = format!(
        "workloads:\n  - name: boot\n    type: zmount\n    data: {{size: 256M}}\n  - name: Full_VM\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{interfaces: [{{network: lan, ip: 10.20.2.9}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n      mounts: [{{name: boot, mountpoint: /boot}}]\n"
    );
    let res = u.deploy(work.path(), "vm.yaml", &yaml, n1.node_id.unwrap());
    let contract = res["contract_id"].as_u64().unwrap();
    let vm = workload(&res, "Full_VM");
    assert_eq!(vm["state"], "ok", "{res}");
    assert_eq!(vm["data"]["mode"], "vm", "{vm}");
    // Its console followed as it boots (`zos deployment logs --follow`).
    let mut follow = KillOnDrop(
        u.zos_command(&[
            "deployment",
            "logs",
            &contract.to_string(),
            "Full_VM",
            "--follow",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap(),
    );
    let followed = {
        let out = follow.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    };

    // Its own init found the NoCloud seed and took the hostname the node gave it.
    let console = wait_until(Duration::from_secs(120), Duration::from_secs(1), || {
        let c = u.client.clone();
        let twin = n1.twin_id.unwrap();
        async move {
            let body = ConsoleBody {
                contract_id: contract,
                name: "Full_VM".into(),
                bytes: Some(1 << 20),
            };
            let v = c.node(twin).call::<Console>(&body).await.ok()?;
            let text = v.console;
            text.contains("NOCLOUD hostname=").then_some(text)
        }
    })
    .await
    .expect("the image boots and prints its NoCloud hostname");
    assert!(console.contains("NOCLOUD hostname=full-vm"), "{console}");
    let (ok, out, err) = u.zos_raw(&["deployment", "console", &contract.to_string(), "Full_VM"]);
    assert!(ok && out.contains("NOCLOUD hostname=full-vm"), "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match followed.recv_timeout(left) {
            Ok(l) if l.contains("NOCLOUD hostname=full-vm") => {
                seen = Some(l);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(follow);
    assert!(
        seen.is_some(),
        "zos deployment logs --follow shows the boot"
    );

    u.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    let name = format!("{}-{contract}-Full_VM", u.twin());
    let left = vm_leftovers(&n1, &name);
    assert!(left.is_empty(), "{left:?}");
}

/// The workload `name` of a deployment as `zos --json` prints it.
fn workload(d: &serde_json::Value, name: &str) -> serde_json::Value {
    d["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workload {name} in {d}"))
        .clone()
}

/// Every path below `dir` (not following links).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A child process killed and reaped when the test is done with it, or panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
