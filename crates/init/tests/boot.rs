//! The whole boot sequence of zos-init, as PID 1 of its own PID, mount and network namespaces
//! (`zos-init --boot-test`): a lease from dnsmasq across a veth pair, the clock and a release
//! from a grid stand-in on the other side, a release signed by an unknown key refused and
//! retried, a runtime flist with other bytes than the release names refused, a tampered block
//! of the service's program found before it runs, then the runtime flists fetched by hash,
//! mounted by real `zos-flist-mount` processes from the grid's blocks and stacked read-only,
//! the service from the runtime started, and a clean stop on SIGTERM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use sha2::Digest;
use zos_flist::DirStore;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_init::boot::Boot;
use zos_init::supervise::Event;
use zos_testkit::netns::Netns;
use zos_testkit::process::ProcessGuard;
use zos_types::identity::Identity;
use zos_types::release::{Artifact, Release, ReleaseKeys, RunMode, RuntimeFlist};

type Routes = Arc<Mutex<HashMap<String, Vec<u8>>>>;

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The grid stand-in, listening on `addr` inside namespace `ns` until `stop` is dropped.
fn grid(ns: &str, addr: &str, routes: Routes) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (ns, addr) = (format!("/run/netns/{ns}"), addr.to_string());
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().fallback(move |uri: Uri| {
                let r = routes.clone();
                async move {
                    match r.lock().unwrap().get(uri.path()) {
                        Some(body) => (StatusCode::OK, body.clone()).into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            });
            let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
            ready_tx.send(()).unwrap();
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            tokio::task::spawn_blocking(move || {
                let _ = stopped.recv();
            })
            .await
            .unwrap();
            server.abort();
        });
    });
    ready.recv().unwrap();
    stop
}

fn pack_dir(src: &Path, out: &Path, store: &DirStore) -> Vec<u8> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(pack(
            &Source::Dir(src.to_owned()),
            out,
            Arc::new(store.clone()),
            &PackOptions::default(),
            &|_: &Progress| {},
        ))
        .unwrap();
    std::fs::read(out).unwrap()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn wait_for(what: &str, log: &Path, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; zos-init said:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_boots_from_the_grid_through_every_step() {
    if !zos_testkit::require_root("a_node_boots_from_the_grid_through_every_step") {
        return;
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (modprobe fuse)"
    );
    let mounter = zos_testkit::workspace_binary("zos-flist-mount")
        .expect("zos-flist-mount is not built: cargo build --workspace --bins");
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| t.path().join(s);
    let usr = p("usr");
    std::fs::create_dir_all(usr.join("lib/modules")).unwrap();
    std::fs::write(usr.join("lib/modules/initramfs-marker"), "initramfs").unwrap();
    let marker = p("booted");

    // The runtime: zos-base holds a data file, zos the "zosd" that reads it and the list.
    std::fs::create_dir_all(p("base/usr/share")).unwrap();
    std::fs::write(p("base/usr/share/base-file"), "from zos-base").unwrap();
    std::fs::create_dir_all(p("zos/usr/bin")).unwrap();
    std::fs::create_dir_all(p("zos/usr/share/zos")).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"booted $(cat {}/share/base-file)\" > \"$MARKER\"\nexec /bin/sleep 1000\n",
        usr.display()
    );
    std::fs::write(p("zos/usr/bin/fake-zosd"), script).unwrap();
    std::fs::set_permissions(
        p("zos/usr/bin/fake-zosd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        p("zos/usr/share/zos/services.json"),
        serde_json::json!([{
            "name": "zosd",
            "exec": [usr.join("bin/fake-zosd")],
            "env": {"MARKER": marker},
        }])
        .to_string(),
    )
    .unwrap();
    let store = DirStore::new(p("store"));
    let base_fl = pack_dir(&p("base"), &p("zos-base.fl"), &store);
    let zos_fl = pack_dir(&p("zos"), &p("zos.fl"), &store);

    let key = Identity::generate().unwrap();
    let stranger = Identity::generate().unwrap();
    let release = Release {
        version: "1.0.0".into(),
        runmode: RunMode::Dev,
        created: 1_800_000_000,
        kernel: Artifact {
            sha256: "a".repeat(64),
            size: 1,
        },
        initramfs: Artifact {
            sha256: "b".repeat(64),
            size: 1,
        },
        flists: vec![
            RuntimeFlist {
                name: "zos-base".into(),
                sha256: sha(&base_fl),
                size: base_fl.len() as u64,
            },
            RuntimeFlist {
                name: "zos".into(),
                sha256: sha(&zos_fl),
                size: zos_fl.len() as u64,
            },
        ],
        debug: None,
    };
    let good = serde_json::to_vec(&release.sign(&[&key]).unwrap()).unwrap();
    let bad = serde_json::to_vec(&release.sign(&[&stranger]).unwrap()).unwrap();
    let routes: Routes = Arc::default();
    {
        let mut r = routes.lock().unwrap();
        r.insert(
            "/api/v1/health".into(),
            format!("{{\"version\":\"t\",\"time\":{}}}", 1_800_000_000).into_bytes(),
        );
        // First a release the node must refuse.
        r.insert("/releases/dev".into(), bad);
        r.insert(
            format!("/api/v1/hub/flists/by-hash/{}", sha(&base_fl)),
            base_fl.clone(),
        );
        r.insert(
            format!("/api/v1/hub/flists/by-hash/{}", sha(&zos_fl)),
            zos_fl.clone(),
        );
        let mut blocks = Vec::new();
        files(&p("store"), &mut blocks);
        assert!(!blocks.is_empty());
        for b in blocks {
            let id = b.file_name().unwrap().to_str().unwrap().to_string();
            r.insert(
                format!("/api/v1/hub/blocks/{id}"),
                std::fs::read(&b).unwrap(),
            );
        }
    }
    let keys = ReleaseKeys {
        keys: vec![key.public_key()],
        threshold: 1,
    };
    std::fs::write(p("release-keys.json"), serde_json::to_vec(&keys).unwrap()).unwrap();
    std::fs::write(
        p("cmdline"),
        "BOOT_IMAGE=vmlinuz console=ttyS0 farmer_id=7 runmode=dev grid=http://10.78.0.1:8080 zos-debug\n",
    )
    .unwrap();

    // The network: the grid's side with dnsmasq, the node's side empty.
    let id = std::process::id();
    let server = Netns::create(&format!("zb-srv-{id}")).unwrap();
    let client = Netns::create(&format!("zb-node-{id}")).unwrap();
    server
        .ip(&[
            "link",
            "add",
            "zb-s",
            "type",
            "veth",
            "peer",
            "name",
            "zb-n",
            "netns",
            client.name(),
        ])
        .unwrap();
    server
        .ip(&["addr", "add", "10.78.0.1/24", "dev", "zb-s"])
        .unwrap();
    server.ip(&["link", "set", "zb-s", "up"]).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        server.name(),
        "dnsmasq",
        "--keep-in-foreground",
    ])
    .args([
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port=0",
        "--user=root",
    ])
    .args([
        "--interface=zb-s",
        "--bind-interfaces",
        "--log-facility=-",
        "--pid-file=",
    ])
    .arg("--dhcp-range=10.78.0.50,10.78.0.60,255.255.255.0,1h")
    .arg("--dhcp-option=option:router,10.78.0.1")
    .arg("--dhcp-option=option:dns-server,10.78.0.1")
    .arg(format!("--dhcp-leasefile={}", p("leases").display()));
    let _dnsmasq = ProcessGuard::spawn("dnsmasq", cmd, &p("dnsmasq.log")).unwrap();
    let stop_grid = grid(server.name(), "10.78.0.1:8080", routes.clone());

    let cfg = Boot {
        cmdline: p("cmdline"),
        keys: p("release-keys.json"),
        modules_root: None,
        system: false,
        set_clock: false,
        runtime_dir: p("run"),
        usr: usr.clone(),
        mounters: vec![mounter],
        resolv_conf: p("resolv.conf"),
        sys_class_net: PathBuf::from("/sys/class/net"),
        interfaces: vec!["zb-n".into()],
        power_off: false,
        power_button: false,
        grace_ms: 2000,
        upgrade: Default::default(),
        service_args: Default::default(),
        service_env: Default::default(),
    };
    std::fs::write(p("boot.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let log = p("console.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            client.name(),
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
        ])
        .arg(env!("CARGO_BIN_EXE_zos-init"))
        .arg("--boot-test")
        .arg(p("boot.json"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut node = Guard(child);
    let console = || std::fs::read_to_string(&log).unwrap_or_default();

    // The release signed by a stranger is refused, with the reason, and retried.
    wait_for("the refusal", &log, Duration::from_secs(120), || {
        console().contains("not trusted")
    });
    assert!(
        console().contains(&stranger.public_key().to_string()),
        "{}",
        console()
    );
    assert!(!marker.exists(), "nothing runs from a refused release");
    // Then the good release, but the hub serves other bytes for zos-base than it names.
    let base_path = format!("/api/v1/hub/flists/by-hash/{}", sha(&base_fl));
    let mut other = base_fl.clone();
    let last = other.len() - 1;
    other[last] ^= 0x55;
    {
        let mut r = routes.lock().unwrap();
        r.insert("/releases/dev".into(), good);
        r.insert(base_path.clone(), other);
    }
    wait_for("the flist refusal", &log, Duration::from_secs(120), || {
        console().contains("runtime flist zos-base refused: its SHA-256 is")
    });
    assert!(!marker.exists(), "nothing runs from a refused runtime");
    // Then the right flist, but a block of the service's program tampered with on the hub.
    let fl = zos_flist::Flist::open(&p("zos.fl")).unwrap();
    let mut ino = 1;
    for name in ["usr", "bin", "fake-zosd"] {
        ino = fl.lookup(ino, name.as_bytes()).unwrap().ino;
    }
    let block_path = format!(
        "/api/v1/hub/blocks/{}",
        fl.get(ino).unwrap().blocks[0].id.to_hex()
    );
    let block = routes.lock().unwrap()[&block_path].clone();
    let mut tampered = block.clone();
    tampered[10] ^= 0x55;
    {
        let mut r = routes.lock().unwrap();
        r.insert(base_path, base_fl.clone());
        r.insert(block_path.clone(), tampered);
    }
    wait_for("the block refusal", &log, Duration::from_secs(120), || {
        console().contains("runtime check failed for service zosd")
    });
    assert!(!marker.exists(), "nothing runs from a tampered runtime");
    routes.lock().unwrap().insert(block_path, block);

    wait_for(
        "the service from the runtime",
        &log,
        Duration::from_secs(120),
        || std::fs::read_to_string(&marker).is_ok_and(|m| m.contains("booted from zos-base")),
    );
    let text = console();
    for want in [
        "zos-debug: the release carries no debug flist; no shell to open",
        "network up",
        "release verified",
        "runtime flist mounted flist=zos-base",
        "runtime flist mounted flist=zos ",
        "service started service=\"zosd\"",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert_eq!(
        std::fs::read_to_string(p("resolv.conf"))
            .unwrap()
            .lines()
            .last(),
        Some("nameserver 10.78.0.1")
    );
    // The flists were kept under the hashes the release names.
    for fl in [&base_fl, &zos_fl] {
        assert!(p("run/flists").join(format!("{}.fl", sha(fl))).is_file());
    }

    // Power-off: SIGTERM to the namespace's PID 1 stops zosd and everything else.
    let ip_pid = node.0.id();
    let init: i32 = std::fs::read_to_string(format!("/proc/{ip_pid}/task/{ip_pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = node.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "zos-init did not stop:\n{}",
            console()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}:\n{}", console());
    let events: Vec<Event> = std::fs::read_to_string(p("run/services.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events.contains(&Event::Stopped {
            service: "zosd".into(),
            how: "terminated".into()
        }),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&Event::Done));
    drop(stop_grid);
}
