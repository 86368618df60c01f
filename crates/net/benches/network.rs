//! Network figures on real namespaces: node setup, network resource creation, update, adoption
//! on restart and deletion times, and TCP throughput through a userspace WireGuard tunnel
//! between two nodes (with the same transfer without a tunnel for comparison).
//!
//! `cargo bench -p zos-net --bench network` (root, boringtun-cli, wg, nft). Options through
//! the environment: `ZOS_BENCH_NETWORKS` (resources to create, default 8),
//! `ZOS_BENCH_MIB` (MiB per transfer, default 256), `ZOS_BENCH_RUNS` (transfers, default 3).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use zos_net::{LinuxNetworker, NetworkConfig, Networker, WireguardMode, names, wireguard};
use zos_testkit::net::{Internet, TcpSink, tcp_send};
use zos_testkit::netns::Netns;
use zos_types::deployment::WorkloadId;
use zos_types::workload::{Network, Peer};

fn key(label: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(label.as_bytes()))
}

fn wl(twin: u32, name: &str) -> WorkloadId {
    WorkloadId {
        twin,
        contract: 1000 + twin as u64,
        name: name.into(),
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Network of `twin` on node `me` (0 or 1) of two, listening on `base + me`.
fn network(twin: u32, me: usize, base: u16) -> Network {
    let subnets = ["10.20.1.0/24", "10.20.2.0/24"];
    let other = 1 - me;
    let o: ipnet::Ipv4Net = subnets[other].parse().unwrap();
    Network {
        ip_range: "10.20.0.0/16".parse().unwrap(),
        subnet: subnets[me].parse().unwrap(),
        wireguard_private_key: key(&format!("b{twin}-{me}")),
        wireguard_listen_port: base + me as u16,
        peers: vec![Peer {
            subnet: o,
            wireguard_public_key: wireguard::public_key(&key(&format!("b{twin}-{other}"))).unwrap(),
            allowed_ips: vec![
                o.into(),
                format!("{}/32", names::wg_address(o).addr())
                    .parse()
                    .unwrap(),
            ],
            endpoint: format!("10.99.0.{}:{}", 11 + other, base + other as u16),
        }],
    }
}

/// Removes every node's setup when the bench ends, also when it panics.
struct Teardown<'a>(&'a [(LinuxNetworker, NetworkConfig)]);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for (n, _) in self.0 {
                    if let Err(e) = rt.block_on(n.teardown_node()) {
                        eprintln!("teardown: {e}");
                    }
                }
            });
        });
    }
}

struct Stats(Vec<Duration>);

impl Stats {
    fn line(&self, what: &str) {
        let mut v = self.0.clone();
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
        println!(
            "{what:<44} n={:<3} mean {:>7.1} ms  median {:>7.1} ms  min {:>7.1} ms  max {:>7.1} ms",
            v.len(),
            mean,
            ms(v[v.len() / 2]),
            ms(v[0]),
            ms(v[v.len() - 1])
        );
    }
}

fn mbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e6
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("network bench: needs root (namespaces, links); skipped");
        return;
    }
    let boringtun = zos_runtime::find_program("boringtun-cli");
    if !boringtun.is_file() {
        eprintln!("network bench: boringtun-cli is not installed; skipped");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inet = Internet::create("zbn-inet", "10.99.0.1/24").unwrap();
    let mut hosts = Vec::new();
    let mut nets = Vec::new();
    for i in 1..=2usize {
        let host = Netns::create(&format!("zbn-h{i}")).unwrap();
        inet.join(
            &host,
            &format!("zbnu{i}"),
            "eth0",
            Some(&format!("10.99.0.{}", 10 + i)),
            true,
        )
        .unwrap();
        let prefix = format!("zbn{i}");
        let mut cfg = NetworkConfig::new(
            &prefix,
            dir.path().join(&prefix).join("state"),
            dir.path().join(&prefix).join("run"),
            &prefix,
        );
        cfg.host_netns = Some(PathBuf::from(format!("/run/netns/{}", host.name())));
        cfg.wireguard = WireguardMode::Userspace;
        hosts.push(host);
        nets.push((LinuxNetworker::open(cfg.clone()).unwrap(), cfg));
    }
    let count = env("ZOS_BENCH_NETWORKS", 8) as u32;
    let mib = env("ZOS_BENCH_MIB", 256);
    let runs = env("ZOS_BENCH_RUNS", 3);

    let guard = Teardown(&nets);
    let result = rt.block_on(async {
        println!("network bench: userspace WireGuard (boringtun-cli), 2 nodes on a test internet");
        let mut setup = Vec::new();
        for (n, _) in &nets {
            let t = Instant::now();
            n.setup_node(None).await.unwrap();
            setup.push(t.elapsed());
        }
        Stats(setup).line("node setup (ndmz, rules)");

        // Creation of network resources on node A (each with its own boringtun).
        let a = &nets[0].0;
        let mut create = Vec::new();
        for t in 0..count {
            let start = Instant::now();
            a.apply_network(
                &wl(100 + t, "net"),
                &network(100 + t, 0, 52000 + 2 * t as u16),
            )
            .await
            .unwrap();
            create.push(start.elapsed());
        }
        Stats(create).line("network resource creation");

        let mut noop = Vec::new();
        for t in 0..count {
            let start = Instant::now();
            a.apply_network(
                &wl(100 + t, "net"),
                &network(100 + t, 0, 52000 + 2 * t as u16),
            )
            .await
            .unwrap();
            noop.push(start.elapsed());
        }
        Stats(noop).line("apply unchanged (idempotent check)");

        let mut update = Vec::new();
        for t in 0..count {
            let mut n = network(100 + t, 0, 52000 + 2 * t as u16);
            n.peers.push(Peer {
                subnet: "10.20.9.0/24".parse().unwrap(),
                wireguard_public_key: wireguard::public_key(&key("laptop")).unwrap(),
                allowed_ips: vec!["10.20.9.0/24".parse().unwrap()],
                endpoint: String::new(),
            });
            let start = Instant::now();
            a.apply_network(&wl(100 + t, "net"), &n).await.unwrap();
            update.push(start.elapsed());
        }
        Stats(update).line("update (add an access peer)");

        // A restarted zosd: a new module on the same state adopts every process.
        let again = LinuxNetworker::open(nets[0].1.clone()).unwrap();
        let start = Instant::now();
        let report = again.reconcile().await.unwrap();
        let took = start.elapsed();
        assert_eq!(report.adopted as u32, count, "{report:?}");
        println!(
            "{:<44} {count} networks adopted in {:.1} ms",
            "reconcile after restart",
            took.as_secs_f64() * 1000.0
        );

        let mut delete = Vec::new();
        for t in 0..count {
            let start = Instant::now();
            a.delete_network(&wl(100 + t, "net")).await.unwrap();
            delete.push(start.elapsed());
        }
        Stats(delete).line("network resource deletion");

        // Throughput through a tunnel between the two nodes.
        let mut infos = Vec::new();
        for (i, (n, _)) in nets.iter().enumerate() {
            infos.push(
                n.apply_network(&wl(7, "net"), &network(7, i, 51820))
                    .await
                    .unwrap(),
            );
        }
        let bytes = mib * 1024 * 1024;
        let sink = TcpSink::start(&infos[1].namespace, "10.20.2.1:9000").unwrap();
        let ns_a = infos[0].namespace.clone();
        let to = sink.addr();
        // Warm up (handshake).
        tcp_send(&ns_a, to, 1024 * 1024).unwrap();
        let mut tunnel = Vec::new();
        for _ in 0..runs {
            tunnel.push(tcp_send(&ns_a, to, bytes).unwrap());
        }
        let base = TcpSink::start(inet.name(), "10.99.0.1:9001").unwrap();
        let host_a = hosts[0].name().to_string();
        let mut plain = Vec::new();
        for _ in 0..runs {
            plain.push(tcp_send(&host_a, base.addr(), bytes).unwrap());
        }
        let report = |what: &str, v: &[Duration]| {
            let mut r: Vec<f64> = v.iter().map(|d| mbit(bytes, *d)).collect();
            r.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "{what:<44} {} x {mib} MiB: median {:>7.0} Mbit/s  best {:>7.0} Mbit/s",
                r.len(),
                r[r.len() / 2],
                r[r.len() - 1]
            );
        };
        report("TCP through the tunnel (resource A -> B)", &tunnel);
        report("TCP without tunnel (host A -> internet)", &plain);
        let st = nets[0].0.wireguard_status(7, "net").await.unwrap();
        let (rx, tx) = st.totals();
        println!("{:<44} rx {rx} B, tx {tx} B", "tunnel counters on A");
        drop((sink, base));
        Ok::<(), String>(())
    });
    if let Err(e) = result {
        eprintln!("network bench failed: {e}");
    }
    drop(guard);
    drop(hosts);
    drop(inet);
}
