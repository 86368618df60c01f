//! `zlogs` streams for real: a machine's console (a file the test writes, as QEMU writes the
//! serial port) goes to a WebSocket receiver and to a `redis-server` (Debian's) running in the
//! namespace of the user's network, connected from that namespace. Lines arrive in order; a
//! receiver away loses nothing within the bound and more than the bound is dropped with a note;
//! a new manager (zosd restarted) goes on where the last stopped; an output outside the user's
//! networks is refused.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use zos_net::{Networker, RecordingNetworker, VmLink};
use zos_provision::managers::{Manager, ManagerError, Target};
use zos_provision::zlogs::{BUFFER_LINES, Consoles, ZlogsManager};
use zos_testkit::netns::Netns;
use zos_testkit::process::ProcessGuard;
use zos_testkit::require_root;
use zos_types::deployment::WorkloadId;
use zos_types::workload::{Network, WorkloadData, Zlogs};

const TWIN: u32 = 7;
const RECEIVER: &str = "10.20.2.7";

struct Files(Mutex<HashMap<String, PathBuf>>);

impl Consoles for Files {
    fn console_log<'a>(
        &'a self,
        vm: &'a WorkloadId,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, ManagerError>> {
        let p = self.0.lock().unwrap().get(&vm.to_string()).cloned();
        Box::pin(async move { Ok(p) })
    }
}

fn id(name: &str) -> WorkloadId {
    WorkloadId {
        twin: TWIN,
        contract: 3,
        name: name.into(),
    }
}

fn zlogs(output: &str) -> WorkloadData {
    WorkloadData::Zlogs(Zlogs {
        zmachine: "vm".into(),
        output: output.into(),
    })
}

/// A TCP listener bound inside namespace `ns` (the socket stays there; it is served from here).
fn listen_in(ns: &str, addr: SocketAddr) -> std::net::TcpListener {
    let l = zos_testkit::net::in_netns(ns, || std::net::TcpListener::bind(addr).unwrap());
    l.set_nonblocking(true).unwrap();
    l
}

/// A WebSocket receiver: every text message on `tx`; ends when `stop` fires.
fn ws_receiver(
    ns: &str,
    addr: SocketAddr,
    tx: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::from_std(listen_in(ns, addr)).unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                        let _ = tx.send(t.to_string());
                    }
                }
            });
        }
    })
}

async fn expect(rx: &mut mpsc::UnboundedReceiver<String>, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for w in want {
        let got = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no line {w:?} within 30 s"))
            .unwrap();
        assert_eq!(&got, w);
    }
}

fn lines(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("console line {i}")).collect()
}

fn write(console: &PathBuf, ls: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(console)
        .unwrap();
    for l in ls {
        writeln!(f, "{l}").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machines_console_reaches_receivers_in_the_users_network_in_order() {
    if !require_root("a_machines_console_reaches_receivers_in_the_users_network_in_order") {
        return;
    }
    let prefix = format!("zl{}", std::process::id() % 100_000);
    let net = Arc::new(RecordingNetworker::new(&prefix));
    net.setup_node(None).await.unwrap();
    net.apply_network(
        &id("lan"),
        &Network {
            ip_range: "10.20.0.0/16".parse().unwrap(),
            subnet: "10.20.2.0/24".parse().unwrap(),
            wireguard_private_key: {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode([1u8; 32])
            },
            wireguard_listen_port: 3000,
            peers: vec![],
        },
    )
    .await
    .unwrap();
    net.attach_private(&id("vm"), "lan", "10.20.2.5".parse().unwrap(), VmLink::Tap)
        .await
        .unwrap();
    // The user's network, for real: its namespace, with the receivers' address.
    let info = net.network_info(TWIN, "lan").await.unwrap().unwrap();
    let ns = Netns::create(&info.namespace).unwrap();
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &format!("{RECEIVER}/32"), "dev", "lo"],
    ] {
        let ok = Command::new("ip")
            .args(["-n", ns.name()])
            .args(&args)
            .status()
            .unwrap();
        assert!(ok.success(), "ip {args:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("vm.log");
    let files = Arc::new(Files(Mutex::new(HashMap::from([(
        id("vm").to_string(),
        console.clone(),
    )]))));
    let state = dir.path().join("zlogs");
    let m = ZlogsManager::new(net.clone(), files.clone(), state.clone());

    // Refusals: outside the machine's networks, or no such machine.
    let e = m
        .provision(Target {
            id: &id("out"),
            data: &zlogs("ws://10.30.0.1:9000/"),
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("outside the machine's networks"),
        "{e}"
    );
    let e = m
        .provision(Target {
            id: &id("ghost"),
            data: &WorkloadData::Zlogs(Zlogs {
                zmachine: "nope".into(),
                output: format!("ws://{RECEIVER}:9000/"),
            }),
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no machine \"nope\""), "{e}");

    // A WebSocket receiver gets the console from its start, in order.
    write(&console, &lines(0, 50));
    let ws_addr: SocketAddr = format!("{RECEIVER}:9000").parse().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let receiver = ws_receiver(ns.name(), ws_addr, tx.clone());
    let ws = id("ws");
    m.provision(Target {
        id: &ws,
        data: &zlogs(&format!("ws://{RECEIVER}:9000/logs")),
    })
    .await
    .unwrap();
    expect(&mut rx, &lines(0, 50)).await;

    // And redis subscribers of a channel, through PUBLISH.
    let _redis = ProcessGuard::spawn(
        "redis-server",
        {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name(), "redis-server", "--port", "6390"])
                .args(["--bind", RECEIVER, "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "no"]);
            c
        },
        &dir.path().join("redis.log"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis_up(ns.name()) {
        assert!(
            Instant::now() < deadline,
            "redis-server did not start: {}",
            std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sub = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "redis-cli",
            "-h",
            RECEIVER,
            "-p",
            "6390",
        ])
        .args(["--raw", "subscribe", "vmlogs"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (rtx, mut rrx) = mpsc::unbounded_channel();
    let out = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        // --raw: "message", the channel, the payload, for each message.
        let mut it = BufReader::new(out).lines().map_while(Result::ok);
        while let Some(l) = it.next() {
            if l == "message" {
                let _channel = it.next();
                if let Some(p) = it.next() {
                    let _ = rtx.send(p);
                }
            }
        }
    });
    wait_subscribed(ns.name());
    let rd = id("rd");
    m.provision(Target {
        id: &rd,
        data: &zlogs(&format!("redis://{RECEIVER}:6390/vmlogs")),
    })
    .await
    .unwrap();
    expect(&mut rrx, &lines(0, 50)).await;
    write(&console, &lines(50, 60));
    expect(&mut rx, &lines(50, 60)).await;
    expect(&mut rrx, &lines(50, 60)).await;
    m.deprovision(&rd).await.unwrap();
    let _ = sub.kill();
    let _ = sub.wait();

    // The receiver goes away: what comes meanwhile waits in the buffer and arrives in order.
    receiver.abort();
    let _ = receiver.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&console, &lines(60, 80));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let receiver = ws_receiver(ns.name(), ws_addr, tx.clone());
    expect(&mut rx, &lines(60, 80)).await;

    // Away for more than the bound: the oldest go, counted, and the newest arrive.
    receiver.abort();
    let _ = receiver.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flood = BUFFER_LINES + 500;
    write(&console, &lines(80, 80 + flood));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _receiver = ws_receiver(ns.name(), ws_addr, tx.clone());
    let note = tokio::time::timeout(Duration::from_secs(40), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        note.starts_with("[zlogs: ") && note.contains("lines dropped"),
        "{note}"
    );
    let dropped: usize = note["[zlogs: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(dropped >= 500, "{note}");
    let kept = flood - dropped;
    assert!(kept <= BUFFER_LINES);
    expect(&mut rx, &lines(80 + dropped, 80 + flood)).await;

    // zosd restarted: a new manager goes on where the last one stopped.
    drop(m);
    let m = ZlogsManager::new(net.clone(), files, state.clone());
    m.provision(Target {
        id: &ws,
        data: &zlogs(&format!("ws://{RECEIVER}:9000/logs")),
    })
    .await
    .unwrap();
    write(&console, &lines(80 + flood, 90 + flood));
    expect(&mut rx, &lines(80 + flood, 90 + flood)).await;

    // Removed: nothing more is sent, and its offset is gone.
    m.deprovision(&ws).await.unwrap();
    write(&console, &lines(90 + flood, 95 + flood));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx.try_recv().is_err(), "nothing after deprovision");
    assert!(!state.join(format!("{ws}.offset")).exists());
}

fn redis_up(ns: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "redis-cli",
            "-h",
            RECEIVER,
            "-p",
            "6390",
            "ping",
        ])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
}

/// Waits until the channel has a subscriber.
fn wait_subscribed(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "redis-cli",
                "-h",
                RECEIVER,
                "-p",
                "6390",
            ])
            .args(["pubsub", "numsub", "vmlogs"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).lines().nth(1) == Some("1") {
            return;
        }
        assert!(Instant::now() < deadline, "the subscriber never subscribed");
        std::thread::sleep(Duration::from_millis(100));
    }
}
