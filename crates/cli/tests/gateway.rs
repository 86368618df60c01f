//! Web gateways end to end on a devnet whose node has a domain: a machine in a private network
//! serves HTTP, and the node's `zos-gateway` (in its public namespace, on its public address)
//! takes the web traffic for it under a name (`NAME.<node domain>`, with a name contract) and
//! under an FQDN, with certificates from a real ACME CA (Debian's pebble, dnsmasq answering the
//! test names), and passes TLS through to a backend that ends it itself. Reached from a
//! namespace on the public bridge, the devnet's stand-in for the internet. Refusals are each a
//! clear error; a cancelled name contract takes its route down; a zosd killed with -9 leaves
//! the gateway serving, and the next zosd adopts it.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zos_testkit::acme::{TestCa, issue};
use zos_testkit::devnet;
use zos_testkit::guest::{VmBed, pids_with, vm_bed};
use zos_testkit::netns;
use zos_testkit::process::{ProcessGuard, wait_until};
use zos_testkit::require_root;
use zos_testkit::user::User;
use zos_types::node_api::{ContractBody, Get};

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn workload<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == name))
        .unwrap_or_else(|| panic!("no workload {name} in {d}"))
}

/// `curl` from namespace `ns`, `host:port` resolved to `ip`: (HTTP status, body, stderr).
fn curl(
    ns: &str,
    url: &str,
    host: &str,
    port: u16,
    ip: &str,
    args: &[&str],
) -> (u16, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "15"])
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:{ip}"))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Deploys `yaml` on `node` expecting workloads to fail: the deployment summary.
fn deploy_failing(u: &User, dir: &Path, name: &str, yaml: &str, node: u32) -> Value {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    let (ok, out, err) = u.zos_raw(&[
        "deploy",
        file.to_str().unwrap(),
        "--node",
        &node.to_string(),
        "--json",
    ]);
    assert!(!ok, "the deployment should have failed workloads: {out}");
    assert!(err.contains("workloads in error"), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn gateway_yaml(name: &str, kind: &str, key: &str, value: &str, extra: &str) -> String {
    format!("  - name: {name}\n    type: {kind}\n    data:\n      {key}: {value}\n{extra}")
}

#[tokio::test(flavor = "multi_thread")]
async fn web_gateways_serve_machines_of_private_networks_under_names_and_fqdns() {
    if !require_root("web_gateways_serve_machines_of_private_networks_under_names_and_fqdns") {
        return;
    }
    let VmBed {
        mut net,
        user: alice,
        flist,
        work,
    } = vm_bed(1, Path::new(env!("CARGO_BIN_EXE_zos"))).await;
    let n1 = net.state.nodes[0].clone();
    let node = n1.node_id.unwrap();
    let domain = n1.domain(&net.state.name);
    let public = n1.public_address.clone();
    let public_ip: IpAddr = public.parse().unwrap();
    let pubnet = public.rsplit_once('.').unwrap().0.to_string();
    let host_ip: IpAddr = format!("{pubnet}.1").parse().unwrap();

    // The internet's side: a CA whose DNS points the test names at the node, and a client
    // namespace on the public bridge.
    let ca_dir = work.path().join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let elsewhere: IpAddr = format!("{pubnet}.77").parse().unwrap();
    let ca = TestCa::start(
        &ca_dir,
        host_ip,
        80,
        &[
            (&domain, public_ip),
            ("shop.example.test", public_ip),
            ("pass.example.test", public_ip),
            ("other.example.test", public_ip),
            ("elsewhere.example.test", elsewhere),
        ],
    )
    .await;
    let probe = netns::Netns::create(&format!("{}-pr", net.state.name)).unwrap();
    netns::attach(
        &net.state.public_bridge,
        &probe,
        &format!("{}prb", net.state.name),
        &format!("{pubnet}.250/24"),
        &format!("{pubnet}.1"),
    )
    .unwrap();

    // The node's zosd again, told about the CA and the DNS server, re-checking names often.
    net.state.nodes[0].zosd_args = vec![
        "--acme-directory".into(),
        ca.directory.clone(),
        "--acme-ca".into(),
        ca.https_ca.display().to_string(),
        "--dns".into(),
        ca.dns.to_string(),
        "--name-recheck".into(),
        "2s".into(),
    ];
    devnet::stop_node(&mut net.state, 1, false).unwrap();
    devnet::start_node(&mut net.state, 1).unwrap();
    let answers = |contract: u64| {
        let c = alice.client.clone();
        let twin = n1.twin_id.unwrap();
        async move {
            c.node(twin)
                .call::<Get>(&ContractBody {
                    contract_id: contract,
                })
                .await
                .ok()
        }
    };
    let node_arg = node.to_string();
    assert!(
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(500),
            || async {
                alice
                    .zos_raw(&["node", "stats", &node_arg, "--json"])
                    .0
                    .then_some(())
            }
        )
        .await
        .is_some(),
        "node 1 answers again"
    );

    // A machine in the private network, and a name for it.
    alice.client.create_name_contract("shop").await.unwrap();
    let yaml = format!(
        "workloads:\n  - name: web\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{interfaces: [{{network: lan, ip: 10.20.2.5}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n      entrypoint: /start.sh\n      env: {{ROLE: web}}\n{}{}",
        gateway_yaml(
            "gw",
            "gateway-name-proxy",
            "name",
            "shop",
            "      backends: [\"http://10.20.2.5:8080\"]\n      network: lan\n"
        ),
        gateway_yaml(
            "fq",
            "gateway-fqdn-proxy",
            "fqdn",
            "shop.example.test",
            "      backends: [\"http://10.20.2.5:8080\"]\n      network: lan\n"
        ),
    );
    let res = alice.deploy(work.path(), "web.yaml", &yaml, node);
    let contract = res["contract_id"].as_u64().unwrap();
    let gw = workload(&res, "gw");
    assert_eq!(gw["state"], "ok", "{res}");
    let name_host = format!("shop.{domain}");
    assert_eq!(gw["data"]["fqdn"], name_host.as_str(), "{gw}");
    assert_eq!(gw["data"]["address"], public.as_str(), "{gw}");
    assert_eq!(workload(&res, "fq")["state"], "ok", "{res}");

    // Over TLS with certificates that chain to pebble's root, once the CA has issued them.
    let root = ca.root();
    let root = root.to_str().unwrap();
    for host in [name_host.as_str(), "shop.example.test"] {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (code, body, err) = curl(
                probe.name(),
                &format!("https://{host}/"),
                host,
                443,
                &public,
                &["--cacert", root],
            );
            if code == 200 {
                assert!(body.contains("hello from"), "{host}: {body}");
                assert!(body.contains("role=web"), "{host}: {body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{host} not served over TLS: {code} {err}\npebble: {}",
                ca.log()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Plain HTTP too, with the forwarded headers' client address.
    let (code, body, err) = curl(
        probe.name(),
        &format!("http://{name_host}/"),
        &name_host,
        80,
        &public,
        &[],
    );
    assert_eq!(code, 200, "{body} {err}");

    // Passthrough: the client sees the backend's own certificate (from a CA pebble never saw).
    let (backend_ca, chain, key) = issue(&["pass.example.test"]);
    let p = |n: &str| work.path().join(n);
    std::fs::write(p("backend-ca.pem"), &backend_ca).unwrap();
    std::fs::write(p("backend-cert.pem"), &chain).unwrap();
    std::fs::write(p("backend-key.pem"), &key).unwrap();
    let mut s_server = Command::new("ip");
    s_server
        .args([
            "netns",
            "exec",
            probe.name(),
            "openssl",
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            "8443",
            "-cert",
        ])
        .arg(p("backend-cert.pem"))
        .arg("-key")
        .arg(p("backend-key.pem"))
        .stdin(Stdio::null());
    let _tls_backend = ProcessGuard::spawn("openssl", s_server, &p("s_server.log")).unwrap();
    let pass = format!(
        "workloads:\n{}",
        gateway_yaml(
            "pass",
            "gateway-fqdn-proxy",
            "fqdn",
            "pass.example.test",
            &format!("      tls_passthrough: true\n      backends: [\"{pubnet}.250:8443\"]\n")
        )
    );
    let res = alice.deploy(work.path(), "pass.yaml", &pass, node);
    let pass_contract = res["contract_id"].as_u64().unwrap();
    assert_eq!(workload(&res, "pass")["state"], "ok", "{res}");
    let backend_ca = p("backend-ca.pem");
    let got = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let (code, body, _) = curl(
                probe.name(),
                "https://pass.example.test/",
                "pass.example.test",
                443,
                &public,
                &["--cacert", backend_ca.to_str().unwrap()],
            );
            (code == 200).then_some(body)
        },
    )
    .await;
    assert!(
        got.is_some_and(|b| b.contains("s_server")),
        "the backend's own TLS reached the client"
    );
    let (code, _, _) = curl(
        probe.name(),
        "https://pass.example.test/",
        "pass.example.test",
        443,
        &public,
        &["--cacert", root],
    );
    assert_eq!(
        code, 0,
        "pebble's root must not verify the backend's certificate"
    );

    // Refusals: an unknown host, oversize headers, and workloads the node will not serve.
    let (code, _, _) = curl(
        probe.name(),
        &format!("http://nobody.{domain}/"),
        &format!("nobody.{domain}"),
        80,
        &public,
        &[],
    );
    assert_eq!(code, 404);
    let big = format!("X-Big: {}", "a".repeat(40 * 1024));
    let (code, _, _) = curl(
        probe.name(),
        &format!("http://{name_host}/"),
        &name_host,
        80,
        &public,
        &["-H", &big],
    );
    assert_eq!(code, 431, "oversize headers");
    let bob = User::new(&net.state.grid_url, Path::new(env!("CARGO_BIN_EXE_zos")))
        .await
        .unwrap();
    bob.client.create_name_contract("bobs").await.unwrap();
    let bad = format!(
        "workloads:\n{}{}{}{}",
        gateway_yaml(
            "theirs",
            "gateway-name-proxy",
            "name",
            "bobs",
            "      backends: [\"http://10.20.2.5:8080\"]\n      network: lan\n"
        ),
        gateway_yaml(
            "twice",
            "gateway-fqdn-proxy",
            "fqdn",
            "shop.example.test",
            "      backends: [\"http://10.20.2.5:8080\"]\n      network: lan\n"
        ),
        gateway_yaml(
            "under",
            "gateway-fqdn-proxy",
            "fqdn",
            &format!("x.{domain}"),
            "      backends: [\"http://10.20.2.5:8080\"]\n      network: lan\n"
        ),
        gateway_yaml(
            "outside",
            "gateway-fqdn-proxy",
            "fqdn",
            "other.example.test",
            "      backends: [\"http://192.168.7.7:80\"]\n"
        ),
    );
    let res = deploy_failing(&alice, work.path(), "bad.yaml", &bad, node);
    for (name, why) in [
        ("theirs", "has no name contract for \"bobs\""),
        ("twice", "already served on this node"),
        ("under", "under this node's domain"),
        ("outside", "nor a public address"),
    ] {
        let w = workload(&res, name);
        assert_eq!(w["state"], "error", "{w}");
        assert!(w["message"].as_str().unwrap().contains(why), "{name}: {w}");
    }
    let bad_contract = res["contract_id"].as_u64().unwrap();
    alice.zos(&["deployment", "cancel", &bad_contract.to_string(), "--json"]);

    // kill -9 zosd: the gateway keeps serving; the next zosd adopts it (same process).
    let mount_root = n1.mount_root.display().to_string();
    let gateways = pids_with("zos-gateway", &mount_root);
    assert_eq!(gateways.len(), 1, "one gateway for the node: {gateways:?}");
    devnet::stop_node(&mut net.state, 1, true).unwrap();
    let (code, _, err) = curl(
        probe.name(),
        "https://shop.example.test/",
        "shop.example.test",
        443,
        &public,
        &["--cacert", root],
    );
    assert_eq!(code, 200, "serving while zosd is down: {err}");
    devnet::start_node(&mut net.state, 1).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
            answers(contract)
        })
        .await
        .is_some(),
        "node 1 answers again"
    );
    assert_eq!(
        pids_with("zos-gateway", &mount_root),
        gateways,
        "adopted, not restarted"
    );
    let (code, _, err) = curl(
        probe.name(),
        &format!("https://{name_host}/"),
        &name_host,
        443,
        &public,
        &["--cacert", root],
    );
    assert_eq!(code, 200, "served after the adoption: {err}");

    // The name contract cancelled: the route goes down within the re-check period, and the
    // workload says why.
    let names = alice
        .client
        .list_contracts(&zos_types::contract::ContractFilter {
            twin_id: Some(alice.twin()),
            ..Default::default()
        })
        .await
        .unwrap();
    let shop = names
        .iter()
        .find(|c| matches!(&c.kind, zos_types::contract::ContractKind::Name { name } if name == "shop"))
        .unwrap();
    alice.client.cancel_contract(shop.id).await.unwrap();
    let down = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let (code, _, _) = curl(
                probe.name(),
                &format!("http://{name_host}/"),
                &name_host,
                80,
                &public,
                &[],
            );
            (code == 404).then_some(())
        },
    )
    .await;
    assert!(
        down.is_some(),
        "the route of the cancelled name is down; the node's log ends with:\n{}",
        log_tail(&n1.log)
    );
    let d = answers(contract).await.unwrap();
    let gw = d.workloads.iter().find(|w| w.name == "gw").unwrap();
    let r = gw.result.as_ref().unwrap();
    assert_eq!(r.state, zos_types::deployment::ResultState::Error, "{r:?}");
    assert!(r.message.contains("no name contract"), "{}", r.message);
    // The FQDN of the same deployment still serves.
    let (code, _, err) = curl(
        probe.name(),
        "https://shop.example.test/",
        "shop.example.test",
        443,
        &public,
        &["--cacert", root],
    );
    assert_eq!(code, 200, "{err}");

    alice.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    alice.zos(&["deployment", "cancel", &pass_contract.to_string(), "--json"]);
    let gone = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let (code, _, _) = curl(
                probe.name(),
                "http://shop.example.test/",
                "shop.example.test",
                80,
                &public,
                &[],
            );
            (code == 404).then_some(())
        },
    )
    .await;
    assert!(gone.is_some(), "cancelled deployments' routes are gone");
    alice.zos(&["network", "delete", "lan", "--json"]);
    drop(probe);
    let left = net.down_leftovers();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        pids_with("zos-gateway", &mount_root).is_empty(),
        "the gateway went with the devnet"
    );
}
