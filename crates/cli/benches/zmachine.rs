//! Deploy to running for a zmachine on a devnet, beside a bare QEMU boot of the same guest
//! kernel and initramfs in the same run (needs root; build the binaries first:
//! `cargo build --release --workspace --bins && cargo bench -p zos-cli --bench zmachine`).
//!
//! *deploy to running*: `zos deploy` of a container-mode machine (its flist already on the hub,
//! the network already made) until its entrypoint's HTTP service answers inside the network:
//! contract, signature, relay, checks, flist download and mount, root volume, tap, virtiofsd,
//! QEMU, guest boot. *deploy to ok*: the same until `zos deploy` returned (the node reported ok).

use std::path::Path;
use std::time::{Duration, Instant};

use zos_testkit::guest::{bare_boot, build_guest, vm_bed, wait_http};
use zos_testkit::user::nr_netns;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED zmachine bench: needs root");
        return;
    }
    let runs: usize = std::env::var("ZMACHINE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let guest = build_guest(&[], &[]);
        let bed = vm_bed(1, Path::new(env!("CARGO_BIN_EXE_zos"))).await;
        let node = bed.net.state.nodes[0].clone();
        let ns = nr_netns(&node, bed.user.twin(), "lan");
        let (mut bare, mut ok, mut running) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            bare.push(bare_boot(&guest).as_secs_f64());
            let ip = format!("10.20.2.{}", 10 + i);
            let yaml = format!(
                "workloads:\n  - name: m{i}\n    type: zmachine\n    data:\n      flist: {}\n      network: {{interfaces: [{{network: lan, ip: {ip}}}]}}\n      compute_capacity: {{cpu: 1, memory: 256M}}\n      entrypoint: /start.sh\n      env: {{ROLE: bench}}\n",
                bed.flist
            );
            let t = Instant::now();
            let res = bed
                .user
                .deploy(bed.work.path(), "m.yaml", &yaml, node.node_id.unwrap());
            ok.push(t.elapsed().as_secs_f64());
            wait_http(&ns, &format!("{ip}:8080"), "/", "hello from", 120).await;
            running.push(t.elapsed().as_secs_f64());
            let contract = res["contract_id"].as_u64().expect("a contract").to_string();
            bed.user
                .zos(&["deployment", "cancel", &contract, "--json"]);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (b, o, r) = (median(bare), median(ok), median(running));
        println!("zmachine, TCG, 1 vCPU, 256 MiB, medians of {runs} runs:");
        println!("bare qemu boot to init:       {b:.2} s");
        println!("zos deploy to ok:             {o:.2} s");
        println!("zos deploy to service answer: {r:.2} s");
        println!("ratio deploy-to-running/bare: {:.2}", r / b);
    });
}
