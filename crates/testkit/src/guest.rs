//! Virtual machines in tests and benchmarks: the guest image of `scripts/build-guest.sh`
//! (cached in `<target>/guest`), a bare QEMU boot of it, an application root, and a devnet
//! whose nodes have the guest image with a user, their flist and a network ([`vm_bed`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::devnet::devnet_release_key;
use crate::devnet::{self, DevnetGuard, DevnetNode};
use crate::net::connect;
use crate::process::wait_until;
use crate::user::User;

/// Where cargo builds (the guest image is cached in `<target>/guest`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `scripts/NAME ARGS` with `env` (the script caches its output by the hash of its
/// inputs); answers the output directory, the last line it prints.
pub fn build_with(name: &str, args: &[&str], env: &[(&str, &str)]) -> PathBuf {
    let out = Command::new(repo().join("scripts").join(name))
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir())
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

/// Runs `scripts/build-guest.sh ARGS` (cached); answers the output directory.
pub fn build_guest(args: &[&str], env: &[(&str, &str)]) -> PathBuf {
    build_with("build-guest.sh", args, env)
}

/// The node image trusting the devnet release key ([`devnet_release_key`]), built by
/// `scripts/build-node.sh` from the binaries of the profile the tests run in (cached in
/// `<target>/node-<profile>`); answers the output directory.
pub fn build_node() -> PathBuf {
    let (_, keys) = devnet_release_key();
    let exe = std::env::current_exe().unwrap();
    let profile = exe
        .ancestors()
        .nth(2)
        .and_then(|p| p.file_name())
        .map_or("debug".into(), |p| p.to_string_lossy().into_owned());
    let out = target_dir().join(format!("node-{profile}"));
    // The tests' own binaries, as the workspace build before them made them: a cargo build from
    // inside a test run is not reused by the next plain build (it would cost that one a rebuild).
    let mut args = vec!["--profile", &profile];
    if profile == "debug" {
        args.push("--no-build");
    }
    args.extend([
        "--release-keys",
        keys.to_str().expect("utf-8 path"),
        out.to_str().expect("utf-8 path"),
    ]);
    build_with("build-node.sh", &args, &[])
}

/// A devnet whose nodes have the guest image, and a user with an application flist on the
/// hub and a network `lan` across every node.
#[derive(Debug)]
pub struct VmBed {
    pub net: DevnetGuard,
    pub user: User,
    /// URL of the user's application flist, as nodes reach it.
    pub flist: String,
    pub work: tempfile::TempDir,
}

/// `zos` is the CLI binary the user runs.
pub async fn vm_bed(nodes: usize, zos: &Path) -> VmBed {
    build_guest(&[], &[]);
    let net = DevnetGuard::up(nodes, Duration::from_secs(2))
        .await
        .unwrap();
    vm_bed_on(net, zos).await
}

/// As [`vm_bed`], with the nodes' zosd under zos-init from a release
/// ([`crate::devnet::supervised_options`]): the bed of a live upgrade.
pub async fn vm_bed_supervised(nodes: usize, zos: &Path) -> VmBed {
    build_guest(&[], &[]);
    let opts = devnet::supervised_options().unwrap();
    let net = DevnetGuard::up_supervised(nodes, Duration::from_secs(2), opts)
        .await
        .unwrap();
    vm_bed_on(net, zos).await
}

async fn vm_bed_on(net: DevnetGuard, zos: &Path) -> VmBed {
    let grid = net.state.grid_url.clone();
    let work = tempfile::tempdir().unwrap();

    // The farmer publishes the guest image where the devnet's nodes look for it.
    let fl = work.path().join("guest.fl");
    build_guest(
        &[
            "--flist",
            fl.to_str().unwrap(),
            "--hub",
            "--push",
            devnet::GUEST_FLIST,
        ],
        &[
            ("ZOS_GRID", &grid),
            ("ZOS_KEY", net.state.farmer_key.to_str().unwrap()),
            ("ZOS_BIN", zos.to_str().expect("utf-8 path")),
        ],
    );
    wait_guest(&net.state.nodes).await;

    // The user's application flist and network.
    let user = User::new(&grid, zos).await.unwrap();
    let root = work.path().join("root");
    app_root(&root);
    let app = work.path().join("app.fl");
    user.zos(&[
        "flist",
        "pack",
        root.to_str().unwrap(),
        "-o",
        app.to_str().unwrap(),
        "--hub",
        "--json",
    ]);
    user.zos(&["flist", "push", app.to_str().unwrap(), "--json"]);
    let flist = format!(
        "{}/api/v1/hub/flists/{}/app.fl",
        net.state.grid_node_url,
        user.twin()
    );
    let ids: Vec<String> = net
        .state
        .nodes
        .iter()
        .map(|n| n.node_id.unwrap().to_string())
        .collect();
    user.zos(&[
        "network",
        "create",
        "lan",
        "--nodes",
        &ids.join(","),
        "--json",
    ]);
    VmBed {
        net,
        user,
        flist,
        work,
    }
}

/// `GET path` from namespace `ns`; the body, or `None` when nothing answers.
pub fn http_get(ns: &str, to: &str, path: &str) -> Option<String> {
    let to: SocketAddr = to.parse().unwrap();
    let mut s = connect(ns, None, to, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

pub async fn wait_http(ns: &str, to: &str, path: &str, want: &str, secs: u64) -> String {
    let got = wait_until(
        Duration::from_secs(secs),
        Duration::from_millis(500),
        || {
            let (ns, to, path, want) = (
                ns.to_string(),
                to.to_string(),
                path.to_string(),
                want.to_string(),
            );
            async move {
                tokio::task::spawn_blocking(move || http_get(&ns, &to, &path))
                    .await
                    .unwrap()
                    .filter(|b| b.contains(&want))
            }
        },
    )
    .await;
    got.unwrap_or_else(|| panic!("http://{to}{path} never answered with {want:?} from {ns}"))
}

/// Waits until every node of the devnet mounted the guest image it was just given.
pub async fn wait_guest(nodes: &[DevnetNode]) {
    for n in nodes {
        // Seen through the node process's root: a supervised node mounts in its own namespace.
        let kernel = PathBuf::from(format!(
            "/proc/{}/root/run/zos-flist/{}-zos-guest/vmlinux",
            n.pid, n.prefix
        ));
        let ok = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
            let k = kernel.clone();
            async move { k.is_file().then_some(()) }
        })
        .await;
        assert!(
            ok.is_some(),
            "node {} never mounted the guest image",
            n.index
        );
    }
}

/// PIDs of processes whose command line holds `needle` and `program`.
pub fn pids_with(program: &str, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(program) && cmd.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Everything of VM `vm` of `node` in global places: processes, mounts, cgroups, taps.
pub fn vm_leftovers(node: &DevnetNode, vm: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in pids_with("qemu", vm)
        .into_iter()
        .chain(pids_with("virtiofsd", vm))
        .chain(pids_with("zos-flist-mount", vm))
    {
        out.push(format!("process {p}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for l in mounts.lines().filter(|l| l.contains(vm)) {
        out.push(format!("mount {l}"));
    }
    for root in [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup",
    ] {
        let d = Path::new(root).join(format!("{}zos-vm-{vm}", node.prefix));
        if d.exists() {
            out.push(format!("cgroup {}", d.display()));
        }
    }
    let links = Command::new("ip")
        .args(["-n", &node.netns, "-o", "link"])
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        let name = l.split(':').nth(1).unwrap_or("").trim();
        if name.starts_with(&format!("{}t", node.prefix))
            || name.starts_with(&format!("{}p", node.prefix))
                && !name.starts_with(&format!("{}pub", node.prefix))
        {
            out.push(format!("link {name}"));
        }
    }
    out
}

/// A busybox root whose entrypoint serves what it sees over HTTP on port 8080, counts its boots
/// on the volume at /vol, and with `PEER` set copies the peer's page every second.
pub fn app_root(dir: &Path) {
    busybox_root(dir, &["www", "data", "vol"]);
    let entry = r#"#!/bin/sh
if [ -d /vol ]; then echo boot >> /vol/boots; cat /vol/boots | wc -l > /www/boots; fi
echo "hello from $(hostname) role=$ROLE" > /www/index.html
df -k /data 2>/dev/null | tail -n 1 > /www/df
if [ -n "$PROBE" ]; then
  ifc=$(ip -o -4 addr show | awk -v p="$PUBNET" 'index($4, p) == 1 {print $2; exit}')
  if ping -c 2 -W 2 "$PROBE" >/dev/null 2>&1; then echo own=ok; else echo own=fail; fi > /www/spoof
  ip addr add "${PUBNET}200/24" dev "$ifc"
  if ping -I "${PUBNET}200" -c 2 -W 2 "$PROBE" >/dev/null 2>&1; then echo ip=ok; else echo ip=fail; fi >> /www/spoof
  ip addr del "${PUBNET}200/24" dev "$ifc"
  mac=$(cat /sys/class/net/$ifc/address)
  ip link set dev "$ifc" address 02:00:00:00:00:99
  if ping -c 2 -W 2 "$PROBE" >/dev/null 2>&1; then echo mac=ok; else echo mac=fail; fi >> /www/spoof
  ip link set dev "$ifc" address "$mac"
  echo "public interface $ifc" >> /www/spoof
fi
if [ -n "$PEER" ]; then
  (while true; do wget -q -O /www/peer.tmp "http://$PEER:8080/" && mv /www/peer.tmp /www/peer; sleep 1; done) &
fi
echo "entrypoint ready"
exec httpd -f -p 8080 -h /www
"#;
    std::fs::write(dir.join("start.sh"), entry).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("start.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A root file system of busybox-static with every applet in `/bin`, the usual top-level
/// directories and `extra` ones.
pub fn busybox_root(dir: &Path, extra: &[&str]) {
    let base = [
        "bin", "sbin", "etc", "root", "tmp", "proc", "sys", "dev", "run",
    ];
    for d in base.iter().chain(extra) {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let bb = find_program("busybox");
    std::fs::copy(&bb, dir.join("bin/busybox")).unwrap();
    let list = Command::new(&bb).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
    }
}

fn find_program(name: &str) -> String {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    panic!("{name} is not installed: run scripts/install-deps.sh");
}

/// Starts QEMU by hand with the guest kernel and initramfs in `guest` (no seed, no devices)
/// and answers how long until guest-init's first console line: the floor a VM's start is
/// compared with.
pub fn bare_boot(guest: &Path) -> Duration {
    let mhz = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .unwrap_or(2000.0);
    let t = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm", "-accel", "tcg", "-m", "256M", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(guest.join("vmlinux"))
        .arg("-initrd")
        .arg(guest.join("initramfs.cpio"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet tsc_early_khz={} tsc=reliable",
            (mhz * 1000.0) as u64
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut took = None;
    while let Some(Ok(l)) = lines.next() {
        if l.contains("zos guest-init") {
            took = Some(t.elapsed());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    took.expect("guest-init never started")
}

/// A stand-in for the internet on the devnet's public bridge: a namespace at `<public>.250`
/// (removed when dropped); answers it with the public subnet's first three octets.
pub fn public_probe(state: &devnet::DevnetState) -> (devnet::netns::Netns, String) {
    let pubnet = state
        .public_subnet
        .split('/')
        .next()
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string();
    let probe = devnet::netns::Netns::create(&format!("{}-pr", state.name)).unwrap();
    devnet::netns::attach(
        &state.public_bridge,
        &probe,
        &format!("{}prb", state.name),
        &format!("{pubnet}.250/24"),
        &format!("{pubnet}.1"),
    )
    .unwrap();
    (probe, pubnet)
}

/// What an HTTP loop saw ([`http_loop`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopStats {
    pub ok: u64,
    pub failed: u64,
    /// The longest time from one answered request to the next.
    pub longest_gap: Duration,
}

/// A thread that sends `GET path` to `to` from namespace `ns` every `every` (one request at a
/// time, each with [`http_get`]'s timeouts) until `stop` is set, counting the answers that
/// contain `want` as ok and everything else as failed; join it for its [`LoopStats`].
pub fn http_loop(
    ns: &str,
    to: &str,
    path: &str,
    want: &str,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<LoopStats> {
    let (ns, to, path, want) = (
        ns.to_string(),
        to.to_string(),
        path.to_string(),
        want.to_string(),
    );
    std::thread::spawn(move || {
        let mut stats = LoopStats::default();
        let mut last_ok = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let asked = Instant::now();
            if http_get(&ns, &to, &path).is_some_and(|b| b.contains(&want)) {
                stats.ok += 1;
                stats.longest_gap = stats.longest_gap.max(last_ok.elapsed());
                last_ok = Instant::now();
            } else {
                stats.failed += 1;
            }
            std::thread::sleep(every.saturating_sub(asked.elapsed()));
        }
        stats
    })
}
