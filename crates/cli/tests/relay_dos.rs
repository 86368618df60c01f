//! One user must not knock a node off the relay: end to end on a devnet (real grid, relay and
//! zosd). A flood of deployments that each list a thousand twins nobody knows, sent all at
//! once, is answered (refused, or "busy") while another twin's calls go through and the node's
//! uplink stays up; a console log of 50 MiB is answered as a bounded tail, and the log is cut
//! back while the machine runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zos_client::ClientError;
use zos_testkit::devnet::{DevnetGuard, DevnetNode};
use zos_testkit::guest::{VmBed, vm_bed};
use zos_testkit::require_root;
use zos_testkit::user::User;
use zos_types::capacity::GIB;
use zos_types::contract::CreateNodeContract;
use zos_types::deployment::{
    Deployment, DeploymentSignature, SignatureRequest, SignatureRequirement, Workload,
};
use zos_types::node_api::{Console, ConsoleBody, Deploy, ErrorKind, NodeError, Version};
use zos_types::workload::WorkloadType;

/// Twin ids no grid of a test has (a devnet counts twins from 1).
const NOBODY: u32 = 3_000_000;

/// A deployment of `user` for node `node`, signed by them and by `unknown` twins nobody knows: `requested`
/// says whether those twins are also in the signature requests (at most the bound allows).
fn flood_deployment(
    user: &User,
    node: u32,
    first: u32,
    unknown: u32,
    requested: bool,
) -> Deployment {
    let me = user.twin();
    let mut requests = vec![SignatureRequest {
        twin_id: me,
        required: true,
        weight: 1,
    }];
    if requested {
        requests.extend((0..unknown).map(|i| SignatureRequest {
            twin_id: first + i,
            required: false,
            weight: 1,
        }));
    }
    let mut d = Deployment {
        version: 0,
        twin_id: me,
        contract_id: 0,
        metadata: String::new(),
        description: "flood".into(),
        signature_requirement: SignatureRequirement {
            requests,
            weight_required: 1,
            signatures: vec![],
        },
        workloads: vec![Workload {
            version: 0,
            name: "disk".into(),
            kind: WorkloadType::Zmount,
            data: json!({ "size": GIB }),
            metadata: String::new(),
            description: String::new(),
            result: None,
        }],
    };
    d.sign(node, me, user.client.identity().unwrap()).unwrap();
    let mine = d.signature_requirement.signatures[0].signature;
    for i in 0..unknown {
        d.signature_requirement
            .signatures
            .push(DeploymentSignature {
                twin_id: first + i,
                signature: mine,
                signature_type: "ed25519".into(),
            });
    }
    d
}

/// Lines of the node's log that tell its uplink went down after `from` (a byte offset).
fn uplink_drops(node: &DevnetNode, from: usize) -> Vec<String> {
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("uplink down") || l.contains("uplink closed by the relay"))
        .map(str::to_string)
        .collect()
}

fn log_len(node: &DevnetNode) -> usize {
    std::fs::metadata(&node.log).map_or(0, |m| m.len() as usize)
}

/// `zos.system.version` by `user` on `node` answered within `limit`: the time it took.
async fn answers_within(user: &User, node: &DevnetNode, limit: Duration) -> Duration {
    let t = Instant::now();
    let v = tokio::time::timeout(
        limit,
        user.client.node(node.twin_id.unwrap()).call::<Version>(&()),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer to another twin's call within {limit:?}"))
    .unwrap_or_else(|e| panic!("another twin's call failed: {e}"));
    assert!(!v.zos.is_empty(), "{v:?}");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn flood_of_deployments_with_thousands_of_unknown_signers_leaves_the_uplink_up() {
    if !require_root("flood_of_deployments_with_thousands_of_unknown_signers_leaves_the_uplink_up")
    {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let node = net.state.nodes[0].clone();
    let grid = net.state.grid_url.clone();
    let zos = Path::new(env!("CARGO_BIN_EXE_zos"));
    let mallory = User::new(&grid, zos).await.unwrap();
    let alice = User::new(&grid, zos).await.unwrap();
    answers_within(&alice, &node, Duration::from_secs(10)).await;
    let from = log_len(&node);

    // 100 deployments sent at once: 50 carry 1,000 signatures of unknown twins, 50 request
    // and carry 63 unknown signers each (within the bound). The node checks a contract before
    // it looks any signer up, so mallory pays for a real contract for each of the latter, and
    // the node looks each of their signers up once. They are sealed and sent from a runtime of
    // their own, so the other twin's calls below do not wait behind this test's own work.
    let node_id = node.node_id.unwrap();
    let mut deployments = Vec::new();
    for i in 0..100u32 {
        let (unknown, requested) = if i % 2 == 0 {
            (1000, false)
        } else {
            (63, true)
        };
        let mut d = flood_deployment(&mallory, node_id, NOBODY + i * 1000, unknown, requested);
        if requested {
            let c = mallory
                .client
                .create_node_contract(&CreateNodeContract {
                    node_id,
                    deployment_hash: d.hash().unwrap(),
                    public_ips: 0,
                })
                .await
                .unwrap();
            d.contract_id = c.id;
        }
        deployments.push(d);
    }
    let (c, twin) = (mallory.client.clone(), node.twin_id.unwrap());
    let t0 = Instant::now();
    let flood = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for (i, d) in deployments.into_iter().enumerate() {
                let c = c.clone();
                set.spawn(async move { (i, c.node(twin).call::<Deploy>(&d).await) });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
            out
        })
    });

    // Meanwhile another twin's calls are answered promptly, again and again.
    let (mut slowest, mut calls) = (Duration::ZERO, 0);
    while !flood.is_finished() || calls < 3 {
        slowest = slowest.max(answers_within(&alice, &node, Duration::from_secs(5)).await);
        calls += 1;
        // A user's pace, not a flood of alice's own (her share of the relay is bounded too).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("another twin's {calls} calls during the flood: the slowest took {slowest:?}");

    // Every flood request is answered (refused or busy), none left to time out.
    let answers = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    let (mut refused, mut busy) = (0, 0);
    for (i, r) in answers {
        match r {
            Err(ClientError::Remote(e)) if e.kind == ErrorKind::Busy => busy += 1,
            Err(ClientError::Remote(NodeError { message: m, .. })) => {
                let why = if i % 2 == 0 {
                    "1001 signatures for 1 signature requests"
                } else {
                    "is unknown"
                };
                assert!(m.contains(why), "deployment {i}: {m}");
                refused += 1;
            }
            other => panic!("deployment {i} got {other:?}"),
        }
    }
    eprintln!(
        "flood answered in {:?}: {refused} refused, {busy} busy",
        t0.elapsed()
    );
    assert_eq!(refused + busy, 100);
    assert!(refused > 0, "no flood request was run at all");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the flood took {:?}",
        t0.elapsed()
    );

    // The node stayed connected all along and still answers.
    answers_within(&alice, &node, Duration::from_secs(5)).await;
    let drops = uplink_drops(&node, from);
    assert!(drops.is_empty(), "the uplink went down: {drops:?}");
    let left = net.down_leftovers();
    assert!(left.is_empty(), "{left:?}");
}

/// The console log file of the machine `name` of a deployment result (its `console_url`).
fn console_log(res: &Value, name: &str) -> PathBuf {
    let w = res["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workload {name} in {res}"));
    assert_eq!(w["state"], "ok", "{w}");
    let url = w["data"]["console_url"].as_str().unwrap();
    let p = PathBuf::from(url.strip_prefix("file://").unwrap());
    assert!(p.exists(), "no console log at {}", p.display());
    p
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// A console tail ends with the test's last line, or with what the booting guest printed after
/// it (the machine runs while the test writes): never with the 50 MiB before it.
fn assert_newest(text: &str) {
    const LAST: &str = "the last line of 50 MiB\n";
    let at = text.rfind(LAST).unwrap_or_else(|| {
        panic!(
            "the last line is not in the tail: {}",
            &text[text.len() - 64..]
        )
    });
    let after = &text[at + LAST.len()..];
    assert!(
        after.len() < 32 << 10 && !after.contains(&"x".repeat(1023)),
        "the tail goes on for {} bytes after the last line",
        after.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn console_of_a_machine_that_printed_50_mib_is_a_bounded_tail() {
    if !require_root("console_of_a_machine_that_printed_50_mib_is_a_bounded_tail") {
        return;
    }
    let VmBed {
        net,
        user: alice,
        flist,
        work,
    } = vm_bed(1, Path::new(env!("CARGO_BIN_EXE_zos"))).await;
    let node = net.state.nodes[0].clone();
    let yaml = format!(
        "workloads:\n  - name: web\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{interfaces: [{{network: lan, ip: 10.20.2.5}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n      entrypoint: /start.sh\n      env: {{ROLE: web}}\n"
    );
    let res = alice.deploy(work.path(), "web.yaml", &yaml, node.node_id.unwrap());
    let contract = res["contract_id"].as_u64().unwrap();
    let log = console_log(&res, "web");
    let from = log_len(&node);

    // The machine's console printed 50 MiB (appended the way QEMU appends), then a last line.
    let t = Instant::now();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let line = format!("{}\n", "x".repeat(1023));
    let chunk = line.repeat(1024);
    for _ in 0..50 {
        f.write_all(chunk.as_bytes()).unwrap();
    }
    f.write_all(b"the last line of 50 MiB\n").unwrap();
    drop(f);
    eprintln!("50 MiB printed in {:?}", t.elapsed());

    // The largest tail a caller may ask for is answered, bounded, with the last line.
    let twin = node.twin_id.unwrap();
    let ask = |bytes: Option<usize>| {
        let c = alice.client.clone();
        async move {
            let t = Instant::now();
            let body = ConsoleBody {
                contract_id: contract,
                name: "web".into(),
                bytes,
            };
            let v = c
                .node(twin)
                .call::<Console>(&body)
                .await
                .unwrap_or_else(|e| panic!("console of {bytes:?} bytes: {e}"));
            (v, t.elapsed())
        }
    };
    let (big, took) = ask(Some(1 << 20)).await;
    let text = big.console.as_str();
    eprintln!("console of at most 1 MiB: {} bytes in {took:?}", text.len());
    assert!(text.len() <= 256 << 10, "{} bytes answered", text.len());
    assert!(text.len() >= 200 << 10, "{} bytes answered", text.len());
    assert_newest(text);
    assert!(big.truncated);
    let (small, _) = ask(None).await;
    let text = small.console.as_str();
    assert!(text.len() <= 64 << 10, "{} bytes answered", text.len());
    assert_newest(text);

    // The log is cut back under the cap (16 MiB, the log and its previous part together)
    // while the machine runs, and the last output stays readable.
    let old = PathBuf::from(format!("{}.1", log.display()));
    let t = Instant::now();
    while size(&log) + size(&old) > 16 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the console log holds {} + {} bytes after {:?}",
            size(&log),
            size(&old),
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "console log cut to {} + {} bytes in {:?}",
        size(&log),
        size(&old),
        t.elapsed()
    );
    let (after, _) = ask(None).await;
    assert!(
        after.console.contains("the last line of 50 MiB"),
        "{after:?}"
    );

    // The node never left the relay.
    let drops = uplink_drops(&node, from);
    assert!(drops.is_empty(), "the uplink went down: {drops:?}");
    alice.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    assert!(!log.exists() && !old.exists(), "console logs left");
    alice.zos(&["network", "delete", "lan", "--json"]);
    let left = net.down_leftovers();
    assert!(left.is_empty(), "{left:?}");
}
