//! Figures for docs/benchmarks.md ("Node OS: a fleet's live upgrade"): on a devnet of ten
//! namespace nodes supervised by zos-init, with a zmachine (QEMU under TCG) on node 1 serving
//! HTTP on its public IP, the time from publishing the next release to every node `committed`
//! (the publish itself, packing zosd and pushing it to the hub, included; the first node's, the
//! median's and the last's), and the machine's interruption meanwhile as an HTTP loop from the
//! public side sees it (requests sent every 100 ms, one at a time: answered, lost, the longest
//! time between two answers; the same loop first runs 10 s with no upgrade). Run as root with
//! `cargo bench -p zos-devnet --bench fleet_upgrade` after `cargo build --workspace`; it builds
//! the guest image (cached), brings the devnet up and takes it down. Several rounds (the
//! `ROUNDS` environment variable, default 3), each publishing the next version.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zos_testkit::devnet::supervised;
use zos_testkit::guest::{VmBed, http_loop, public_probe, vm_bed_supervised, wait_http};
use zos_testkit::upgrade::reports;
use zos_types::release::fleet::UpgradeState;

const NODES: usize = 10;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED fleet_upgrade: needs root (namespaces, links, loop devices)");
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let zos = zos_testkit::workspace_binary("zos").expect("zos is built (cargo build --workspace)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let VmBed {
            net,
            user,
            flist,
            work,
        } = vm_bed_supervised(NODES, &zos).await;
        let state = &net.state;
        println!(
            "{NODES} supervised namespace nodes with the guest image and a network: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let ids: Vec<u32> = state.nodes.iter().map(|n| n.node_id.unwrap()).collect();
        let opts = state.supervised.clone().expect("a supervised devnet");
        let (probe, _) = public_probe(state);
        let yaml = format!(
            "workloads:\n  - name: pub\n    type: ip\n    data: {{v4: true}}\n  - name: web\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{public_ip: pub, interfaces: [{{network: lan, ip: 10.20.2.5}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n      entrypoint: /start.sh\n      env: {{ROLE: web}}\n"
        );
        let res = user.deploy(work.path(), "web.yaml", &yaml, ids[0]);
        let public = res["workloads"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == "web"))
            .and_then(|w| w["data"]["public_ip"].as_str())
            .unwrap_or_else(|| panic!("no public IP in {res}"))
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let public = format!("{public}:8080");
        wait_http(probe.name(), &public, "/", "hello from web", 240).await;

        // The same loop with no upgrade: the machine's own answer times under TCG.
        let stop = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis(100);
        let l = http_loop(probe.name(), &public, "/", "hello from web", every, stop.clone());
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.store(true, Ordering::SeqCst);
        let quiet = l.join().unwrap();
        println!(
            "no upgrade, 10 s: {} answered, {} lost, longest gap {:.2} s",
            quiet.ok,
            quiet.failed,
            quiet.longest_gap.as_secs_f64()
        );
        println!(
            "\n{:<6} {:>12} {:>11} {:>11} {:>10} {:>9} {:>6} {:>12}",
            "round",
            "publish (s)",
            "first (s)",
            "median (s)",
            "fleet (s)",
            "answered",
            "lost",
            "longest gap"
        );
        for round in 1..=rounds {
            let stop = Arc::new(AtomicBool::new(false));
            let l = http_loop(probe.name(), &public, "/", "hello from web", every, stop.clone());
            let published = Instant::now();
            let next = supervised::publish_runtime(state, &opts, None, None)
                .await
                .expect("publishing the next version");
            let publish = published.elapsed();
            // When each node's `committed` was first seen (polled every 100 ms).
            let mut seen: Vec<Option<Duration>> = vec![None; ids.len()];
            while seen.iter().any(Option::is_none) {
                assert!(
                    published.elapsed() < Duration::from_secs(600),
                    "not every node committed {next}: {seen:?}"
                );
                let (got, _) = reports(&state.grid_url, &next).await;
                for (i, id) in ids.iter().enumerate() {
                    let committed = got
                        .iter()
                        .any(|(n, r)| n == id && r.state == UpgradeState::Committed);
                    if committed && seen[i].is_none() {
                        seen[i] = Some(published.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.store(true, Ordering::SeqCst);
            let stats = l.join().unwrap();
            let mut times: Vec<f64> = seen.iter().flatten().map(Duration::as_secs_f64).collect();
            times.sort_by(f64::total_cmp);
            println!(
                "{:<6} {:>12.1} {:>11.1} {:>11.1} {:>10.1} {:>9} {:>6} {:>10.2} s",
                round,
                publish.as_secs_f64(),
                times[0],
                times[times.len() / 2],
                times[times.len() - 1],
                stats.ok,
                stats.failed,
                stats.longest_gap.as_secs_f64()
            );
        }
        drop(probe);
    });
}
