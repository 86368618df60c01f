//! The VMM with real QEMU (TCG here) guests built by `scripts/build-guest.sh`, real virtiofsd,
//! taps, disks and cgroups: container-mode boot from a busybox root shared by virtiofs serving
//! TCP through a tap, a disk found by serial and a volume, pause and resume, kill -9 and the
//! supervisor, adoption by a new VMM instance, VM mode from a bootable raw image with a NoCloud
//! seed, and cleanup that leaves nothing.
//!
//! All traffic stays between a guest and a namespace the test makes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use zos_guest_init::seed::{Interface, MountSpec, SEED_VERSION, Seed};
use zos_testkit::net::in_netns;
use zos_testkit::netns::{Netns, attach_bare, delete_link, free_subnet};
use zos_vmm::{Accel, Boot, Disk, Nic, QemuVmm, Share, VmInfo, VmSpec, VmStatus, Vmm, VmmConfig};

const BOOT: Duration = Duration::from_secs(90);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The target directory this test binary was built in (…/debug/deps/vmm-… → …).
/// Why this test cannot run here, if it cannot.
fn missing(test: &str) -> bool {
    let why = if nix::unistd::geteuid().as_raw() != 0 {
        Some("not root".to_string())
    } else {
        [
            "qemu-system-x86_64",
            "virtiofsd",
            "busybox",
            "genisoimage",
            "extlinux",
            "sfdisk",
            "cpio",
        ]
        .iter()
        .find(|p| !zos_runtime::find_program(p).is_file())
        .map(|p| format!("{p} is not installed (scripts/install-deps.sh)"))
    };
    match why {
        Some(w) => {
            eprintln!("SKIPPED {test}: {w}");
            true
        }
        None => false,
    }
}

/// Builds (or finds cached) the guest kernel and initramfs.
fn guest() -> PathBuf {
    zos_testkit::guest::build_guest(&[], &[])
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox root file system with an entrypoint.
fn busybox_root(dir: &Path) {
    zos_testkit::guest::busybox_root(dir, &["www"]);
    // Counts its boots in the volume, tells what it sees through HTTP.
    let entry = r#"#!/bin/sh
n=$(ls /data/vol | grep -c '^boot-')
n=$((n + 1))
touch /data/vol/boot-$n
echo "hello from $(hostname) greeting=$GREETING boot=$n" > /www/index.html
cat /proc/mounts > /www/mounts
df -k /data/disk | tail -n 1 > /www/df
cat /root/.ssh/authorized_keys > /www/keys
ip -4 addr show > /www/ip
# Orphans: reparented to guest-init, which must reap them.
for i in 1 2 3; do (sleep 0.2 &); done
sleep 1
cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' > /www/zombies
echo "entrypoint ready boot=$n"
exec httpd -f -p 8080 -h /www
"#;
    std::fs::write(dir.join("entry.sh"), entry).unwrap();
    sh(&format!("chmod 755 {}", dir.join("entry.sh").display()));
}

/// A host bridge with a tap for the VM and a veth into a test namespace (10.213.x.1/24).
struct Net {
    bridge: String,
    tap: String,
    veth: String,
    ns: Netns,
    guest_ip: String,
}

impl Net {
    fn new(prefix: &str) -> Net {
        let x = free_subnet().unwrap();
        let (bridge, tap, veth) = (
            format!("{prefix}br"),
            format!("{prefix}tap"),
            format!("{prefix}veth"),
        );
        for l in [&bridge, &tap, &veth] {
            delete_link(l).unwrap();
        }
        let ns = Netns::create(&format!("{prefix}ns")).unwrap();
        sh(&format!(
            "ip link add {bridge} type bridge && ip link set {bridge} up && \
             ip tuntap add dev {tap} mode tap && ip link set {tap} master {bridge} && \
             ip link set {tap} up"
        ));
        attach_bare(&bridge, ns.name(), &veth, "eth0").unwrap();
        ns.ip(&["addr", "add", &format!("10.213.{x}.1/24"), "dev", "eth0"])
            .unwrap();
        Net {
            bridge,
            tap,
            veth,
            ns,
            guest_ip: format!("10.213.{x}.2"),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for l in [&self.veth, &self.tap, &self.bridge] {
            let _ = delete_link(l);
        }
    }
}

/// One HTTP GET from the test namespace.
fn http_get(ns: &str, ip: &str, path: &str, timeout: Duration) -> std::io::Result<String> {
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let path = path.to_string();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
}

/// Polls `f` until it answers `Some` or `limit` passes.
fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn proc_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

/// A test's VMM: its own prefix and directories; deletes its VMs when dropped.
struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
    cfg: VmmConfig,
    names: Vec<String>,
}

impl Lab {
    fn new(prefix: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmmConfig::new(prefix, dir.path().join("state"), dir.path().join("run"));
        cfg.accel = Accel::Auto;
        cfg.backoff_min = Duration::from_millis(500);
        cfg.stop_timeout = Duration::from_secs(5);
        Lab {
            prefix: prefix.into(),
            dir,
            cfg,
            names: vec![],
        }
    }

    fn open(&self) -> QemuVmm {
        QemuVmm::open(self.cfg.clone()).unwrap()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for f in $(find {} -name '*.log'); do echo \"== $f\"; tail -c 6000 $f; done",
                    self.dir.path().display()
                ))
                .status();
        }
        // Whatever a failed test left: delete through a fresh VMM (kills by PID, removes cgroups).
        let rt = rt();
        rt.block_on(async {
            if let Ok(v) = QemuVmm::open(self.cfg.clone()) {
                let _ = v.reconcile().await;
                for n in &self.names {
                    let _ = v.delete(n).await;
                }
            }
        });
        let _ = &self.prefix;
    }
}

fn container_spec(lab: &Lab, g: &Path, net: &Net, name: &str) -> VmSpec {
    let root = lab.path("root");
    let vol = lab.path("vol");
    let disk = lab.path("disk.img");
    if !root.exists() {
        busybox_root(&root);
        std::fs::create_dir_all(&vol).unwrap();
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(64 << 20).unwrap();
        // The node's images module formats zmounts (zos-provision); here the host's mkfs.
        sh(&format!("mkfs.ext4 -q -F -L zd0 {}", disk.display()));
    }
    let mac = "02:7a:00:00:00:02";
    let seed = Seed {
        version: SEED_VERSION,
        instance_id: name.into(),
        hostname: "box1".into(),
        root_tag: "vroot".into(),
        mounts: vec![
            MountSpec::Disk {
                serial: "zd0".into(),
                fstype: "ext4".into(),
                target: "/data/disk".into(),
            },
            MountSpec::Virtiofs {
                tag: "vol".into(),
                target: "/data/vol".into(),
            },
        ],
        interfaces: vec![Interface {
            mac: mac.into(),
            addresses: vec![format!("{}/24", net.guest_ip).parse().unwrap()],
            gateway4: None,
            gateway6: None,
            routes: vec![],
        }],
        nameservers: vec!["10.213.0.53".parse().unwrap()],
        ssh_keys: vec!["ssh-ed25519 AAAAC3Nz test@vmm".into()],
        entrypoint: "/entry.sh".into(),
        env: [("GREETING".to_string(), "hi there".to_string())].into(),
    };
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory: 256 << 20,
        boot: Boot::Kernel {
            kernel: g.join("vmlinux"),
            initramfs: g.join("initramfs.cpio"),
            cmdline: String::new(),
            seed: Some(Box::new(seed)),
        },
        shares: vec![
            Share {
                tag: "vroot".into(),
                path: root,
            },
            Share {
                tag: "vol".into(),
                path: vol,
            },
        ],
        disks: vec![Disk {
            path: disk,
            serial: "zd0".into(),
            read_only: false,
        }],
        nics: vec![Nic {
            tap: net.tap.clone(),
            mac: mac.into(),
        }],
    }
}

fn wait_http(net: &Net, path: &str, want: &str) -> String {
    wait_until(BOOT, &format!("http {path} with {want:?}"), || {
        http_get(net.ns.name(), &net.guest_ip, path, Duration::from_secs(2))
            .ok()
            .filter(|b| b.contains(want))
    })
}

/// Everything the VM made is gone: processes, cgroups, sockets, console log, state file.
fn assert_gone(vmm: &QemuVmm, lab: &Lab, info: &VmInfo) {
    let name = &info.spec.name;
    if let Some(pid) = info.pid {
        assert!(!proc_alive(pid), "qemu {pid} left");
    }
    for pid in &info.virtiofsd {
        assert!(!proc_alive(*pid), "virtiofsd {pid} left");
    }
    for d in vmm.cgroup_dirs(name) {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    assert!(!vmm.run_dir_of(name).exists(), "run dir left");
    assert!(!info.console_log.exists(), "console log left");
    assert!(!vmm.state_file_of(name).exists(), "state file left");
    let _ = lab;
}

#[test]
fn container_vm_serves_mounts_pauses_and_leaves_nothing() {
    let test = "container_vm_serves_mounts_pauses_and_leaves_nothing";
    if missing(test) {
        return;
    }
    let g = guest();
    let mut lab = Lab::new("vta");
    let net = Net::new("vta");
    let name = "1-1-box";
    lab.names.push(name.into());
    let spec = container_spec(&lab, &g, &net, name);
    let rt = rt();
    let vmm = rt.block_on(async { lab.open() });
    let t0 = Instant::now();
    let info = rt.block_on(vmm.create(spec.clone())).unwrap();
    assert_eq!(info.status, VmStatus::Running);
    let pid = info.pid.unwrap();
    assert_eq!(info.virtiofsd.len(), 2);

    // Up means guest-init answered `ready` on the control channel: its entrypoint started.
    let ready = |rt: &tokio::runtime::Runtime| rt.block_on(vmm.guest_ready(name)).unwrap();
    wait_until(Duration::from_secs(180), "the guest is ready", || {
        ready(&rt).then_some(())
    });
    eprintln!("create to guest ready: {:?}", t0.elapsed());
    let console = rt.block_on(vmm.console(name, 1 << 20)).unwrap();
    assert!(
        console.contains("started as pid"),
        "ready before the entrypoint: {console}"
    );

    // The service answers through the tap, with the seed's hostname and environment.
    let body = wait_http(&net, "/", "hello from box1");
    eprintln!("create to service answering: {:?}", t0.elapsed());
    assert!(body.contains("greeting=hi there boot=1"), "{body}");

    // The disk found by serial is ext4 at its mountpoint with the disk's size.
    let mounts = wait_http(&net, "/mounts", "/data/disk");
    assert!(mounts.contains("/data/disk ext4"), "{mounts}");
    assert!(mounts.contains("vol /data/vol virtiofs"), "{mounts}");
    assert!(mounts.contains("vroot / virtiofs"), "{mounts}");
    let df = wait_http(&net, "/df", "/data/disk");
    let kib: u64 = df
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!((50_000..=65_536).contains(&kib), "disk of {kib} KiB: {df}");
    let zombies = wait_http(&net, "/zombies", "\n");
    assert!(zombies.ends_with("\n0\n"), "orphans not reaped: {zombies}");
    let keys = wait_http(&net, "/keys", "ssh-ed25519");
    assert!(keys.contains("ssh-ed25519 AAAAC3Nz test@vmm"));
    // Written by the guest, seen on the host through virtiofs.
    assert_eq!(
        std::fs::read_to_string(lab.path("root/etc/hostname")).unwrap(),
        "box1\n"
    );
    assert!(lab.path("vol/boot-1").exists());

    // Limits on the cgroup, QEMU and virtiofsd in it.
    assert_eq!(
        vmm.cgroup_memory_limit(name),
        Some((256 << 20) + lab.cfg.memory_overhead)
    );
    for d in vmm.cgroup_dirs(name) {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    }
    let console = rt.block_on(vmm.console(name, 1 << 20)).unwrap();
    assert!(console.contains("entrypoint ready boot=1"), "{console}");
    assert!(console.contains("guest-init"), "{console}");

    // Pause: QEMU says paused, the service does not answer; resume: it answers again.
    rt.block_on(vmm.pause(name)).unwrap();
    assert_eq!(rt.block_on(vmm.qmp_status(name)).unwrap(), "paused");
    assert_eq!(
        rt.block_on(vmm.info(name)).unwrap().unwrap().status,
        VmStatus::Paused
    );
    assert!(http_get(net.ns.name(), &net.guest_ip, "/", Duration::from_secs(2)).is_err());
    assert!(!ready(&rt), "a paused guest is not up");
    rt.block_on(vmm.resume(name)).unwrap();
    assert_eq!(rt.block_on(vmm.qmp_status(name)).unwrap(), "running");
    wait_http(&net, "/", "hello from box1");
    assert!(ready(&rt));

    // Creating it again with the same spec answers it; with another spec is refused.
    let again = rt.block_on(vmm.create(spec.clone())).unwrap();
    assert_eq!(again.pid, Some(pid));
    let mut other = spec.clone();
    other.cpus = 2;
    assert!(rt.block_on(vmm.create(other)).is_err());

    // Shutdown: guest-init stops the entrypoint and powers off; the VM stays down (no restart)
    // until started, and its console log is kept.
    rt.block_on(vmm.shutdown(name, Duration::from_secs(20)))
        .unwrap();
    assert!(!proc_alive(pid));
    std::thread::sleep(Duration::from_secs(1));
    let stopped = rt.block_on(vmm.info(name)).unwrap().unwrap();
    assert_eq!(stopped.status, VmStatus::Stopped);
    assert_eq!(stopped.restarts, 0);
    assert!(!ready(&rt), "a stopped guest is not up");
    let console = rt.block_on(vmm.console(name, 1 << 20)).unwrap();
    assert!(
        console.contains("poweroff asked by the node") && console.contains("powering off"),
        "{console}"
    );
    let started = rt.block_on(vmm.start(name)).unwrap();
    assert_eq!(started.status, VmStatus::Running);
    wait_http(&net, "/", "boot=2");
    // The new QEMU's guest answers for itself.
    wait_until(
        Duration::from_secs(60),
        "the restarted guest is ready",
        || ready(&rt).then_some(()),
    );
    let info = started;

    // Delete: a clean poweroff through guest-init, then nothing is left.
    let t = Instant::now();
    rt.block_on(vmm.delete(name)).unwrap();
    eprintln!("delete took {:?}", t.elapsed());
    assert_gone(&vmm, &lab, &info);
    assert!(rt.block_on(vmm.info(name)).unwrap().is_none());
    rt.block_on(vmm.delete(name)).unwrap();
    lab.names.clear();
    drop(vmm);
}

#[test]
fn killed_vm_comes_back_and_a_new_vmm_adopts_it() {
    let test = "killed_vm_comes_back_and_a_new_vmm_adopts_it";
    if missing(test) {
        return;
    }
    let g = guest();
    let mut lab = Lab::new("vtb");
    let net = Net::new("vtb");
    let name = "1-2-box";
    lab.names.push(name.into());
    let spec = container_spec(&lab, &g, &net, name);
    let rt = rt();
    let vmm = rt.block_on(async { lab.open() });
    let info = rt.block_on(vmm.create(spec)).unwrap();
    wait_http(&net, "/", "boot=1");
    let first = info.pid.unwrap();

    // kill -9 QEMU: the supervisor starts it again (virtiofsd too); the volume kept its file.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let back = wait_until(Duration::from_secs(30), "a restarted vm", || {
        rt.block_on(vmm.info(name))
            .unwrap()
            .filter(|i| i.restarts == 1 && i.status == VmStatus::Running)
    });
    let second = back.pid.unwrap();
    assert_ne!(second, first);
    for p in &info.virtiofsd {
        assert!(!proc_alive(*p), "old virtiofsd {p} left");
    }
    let body = wait_http(&net, "/", "boot=2");
    assert!(body.contains("hello from box1"), "{body}");
    assert!(lab.path("vol/boot-1").exists() && lab.path("vol/boot-2").exists());

    // zosd restarts: the old VMM goes away, a new one adopts the same process.
    drop(vmm);
    let vmm = rt.block_on(async { lab.open() });
    let t = Instant::now();
    let report = rt.block_on(vmm.reconcile()).unwrap();
    eprintln!("adopting took {:?}", t.elapsed());
    assert_eq!(report.adopted, vec![name.to_string()]);
    assert!(report.restarted.is_empty() && report.failed.is_empty());
    let adopted = rt.block_on(vmm.info(name)).unwrap().unwrap();
    assert_eq!(adopted.pid, Some(second));
    assert_eq!(adopted.status, VmStatus::Running);
    wait_http(&net, "/", "boot=2");

    // The adopted VM is supervised too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(30), "a restarted adopted vm", || {
        rt.block_on(vmm.info(name))
            .unwrap()
            .filter(|i| i.restarts == 2 && i.status == VmStatus::Running)
    });
    wait_http(&net, "/", "boot=3");

    // A virtiofsd that dies takes the share away from the guest: the VM is started again.
    let before = rt.block_on(vmm.info(name)).unwrap().unwrap();
    let root_fs = before.virtiofsd[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(root_fs),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let after = wait_until(
        Duration::from_secs(30),
        "a vm restarted for its virtiofsd",
        || {
            rt.block_on(vmm.info(name))
                .unwrap()
                .filter(|i| i.restarts == 3 && i.status == VmStatus::Running)
        },
    );
    assert_ne!(after.pid, before.pid);
    assert!(!proc_alive(before.pid.unwrap()));
    wait_http(&net, "/", "boot=4");

    let last = rt.block_on(vmm.info(name)).unwrap().unwrap();
    rt.block_on(vmm.delete(name)).unwrap();
    assert_gone(&vmm, &lab, &last);
    lab.names.clear();
}

/// A bootable raw image: MBR, one ext2 partition with extlinux, the packaged kernel and an
/// initramfs whose init reads the NoCloud seed and prints its hostname.
fn bootable_image(lab: &Lab, g: &Path) -> PathBuf {
    let dir = lab.path("image");
    std::fs::create_dir_all(&dir).unwrap();
    zos_testkit::vmimage::bootable_image(&dir, g).unwrap()
}

#[test]
fn vm_mode_boots_its_disk_and_reads_nocloud() {
    let test = "vm_mode_boots_its_disk_and_reads_nocloud";
    if missing(test) {
        return;
    }
    let g = guest();
    let mut lab = Lab::new("vtc");
    lab.cfg.stop_timeout = Duration::from_secs(2);
    let img = bootable_image(&lab, &g);
    let cidata = lab.path("cidata.iso");
    // A NoCloud seed as the node's images module writes one (zos-provision), made by hand.
    let seed = lab.path("seed");
    std::fs::create_dir_all(&seed).unwrap();
    let files = [
        (
            "meta-data",
            "instance-id: \"1-3-full\"\nlocal-hostname: \"fullvm7\"\n",
        ),
        (
            "network-config",
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"02:7a:00:00:00:03\"\n    set-name: eth0\n    addresses: [\"10.213.0.2/24\"]\n",
        ),
        ("user-data", "#cloud-config\n"),
    ];
    for (name, text) in files {
        std::fs::write(seed.join(name), text).unwrap();
    }
    sh(&format!(
        "genisoimage -quiet -volid cidata -joliet -rock -output {} {}",
        cidata.display(),
        seed.display()
    ));
    let name = "1-3-full";
    lab.names.push(name.into());
    let spec = VmSpec {
        name: name.into(),
        cpus: 1,
        memory: 256 << 20,
        boot: Boot::Disk,
        shares: vec![],
        disks: vec![
            Disk {
                path: img,
                serial: "root".into(),
                read_only: false,
            },
            Disk {
                path: cidata,
                serial: "cidata".into(),
                read_only: true,
            },
        ],
        nics: vec![],
    };
    let rt = rt();
    let vmm = rt.block_on(async { lab.open() });
    let info = rt.block_on(vmm.create(spec)).unwrap();
    let console = wait_until(Duration::from_secs(120), "the NoCloud hostname", || {
        rt.block_on(vmm.console(name, 1 << 20))
            .ok()
            .filter(|c| c.contains("NOCLOUD hostname="))
    });
    assert!(console.contains("NOCLOUD hostname=fullvm7"), "{console}");
    rt.block_on(vmm.delete(name)).unwrap();
    assert_gone(&vmm, &lab, &info);
    lab.names.clear();
}

/// Files (not sockets) and directories under `roots` that others than root may read.
fn wider_than_owner(roots: &[PathBuf]) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut open = vec![];
    let mut todo = roots.to_vec();
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mode = m.permissions().mode() & 0o777;
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        if !m.file_type().is_socket() && mode & 0o077 != 0 {
            open.push(format!("{} {mode:o}", p.display()));
        }
    }
    open
}

/// A guest whose entrypoint prints to the console without end: `tick N` lines of 100 bytes.
fn chatty_spec(lab: &Lab, g: &Path, name: &str) -> VmSpec {
    let root = lab.path("chatty");
    zos_testkit::guest::busybox_root(&root, &[]);
    let entry = "#!/bin/sh\npad=$(printf '%080d' 0)\ni=0\nwhile :; do i=$((i + 1)); printf 'tick %08d %s\\n' $i $pad; done\n";
    std::fs::write(root.join("entry.sh"), entry).unwrap();
    sh(&format!("chmod 755 {}", root.join("entry.sh").display()));
    let seed = Seed {
        version: SEED_VERSION,
        instance_id: name.into(),
        hostname: "chatty".into(),
        root_tag: "vroot".into(),
        mounts: vec![],
        interfaces: vec![],
        nameservers: vec![],
        ssh_keys: vec![],
        entrypoint: "/entry.sh".into(),
        env: Default::default(),
    };
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory: 256 << 20,
        boot: Boot::Kernel {
            kernel: g.join("vmlinux"),
            initramfs: g.join("initramfs.cpio"),
            cmdline: String::new(),
            seed: Some(Box::new(seed)),
        },
        shares: vec![Share {
            tag: "vroot".into(),
            path: root,
        }],
        disks: vec![],
        nics: vec![],
    }
}

/// The highest `tick N` in a console text.
fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.get(..8)?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn guest_printing_forever_keeps_its_console_log_under_the_cap() {
    let test = "guest_printing_forever_keeps_its_console_log_under_the_cap";
    if missing(test) {
        return;
    }
    let g = guest();
    let mut lab = Lab::new("vtr");
    let cap: u64 = 256 << 10;
    lab.cfg.console_max = cap;
    let name = "1-4-chatty";
    lab.names.push(name.into());
    let spec = chatty_spec(&lab, &g, name);
    let rt = rt();
    let vmm = rt.block_on(async { lab.open() });
    let info = rt.block_on(vmm.create(spec)).unwrap();
    let log = info.console_log.clone();
    let old = PathBuf::from(format!("{}.1", log.display()));
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());

    // Until the guest printed 8 times the cap, the log and its previous part stay under it
    // (with what one 200 ms pass lets the guest add), and the newest line is readable.
    let t = Instant::now();
    let (mut most, mut tick) = (0, 0);
    while tick * 100 < 8 * cap {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the guest printed {tick} lines in {:?}",
            t.elapsed()
        );
        most = most.max(size(&log) + size(&old));
        let console = rt.block_on(vmm.console(name, 4096)).unwrap();
        let now = last_tick(&console);
        assert!(
            now >= tick,
            "the console went back from tick {tick} to {now}"
        );
        tick = now;
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = tick * 100 / t.elapsed().as_secs().max(1);
    eprintln!(
        "{tick} lines printed in {:?} (about {rate} bytes/s); the log held at most {most} bytes (cap {cap})",
        t.elapsed()
    );
    assert!(most > 0, "nothing was printed");
    assert!(
        most <= cap + (64 << 10).max(rate / 2),
        "the console log grew to {most} bytes (cap {cap})"
    );
    assert!(old.exists(), "the log was never rotated");
    // What the guest printed, and what QEMU and virtiofsd logged, is the tenant's: root only.
    let open = wider_than_owner(&[lab.cfg.log_dir.clone(), lab.cfg.run_dir.clone()]);
    assert!(open.is_empty(), "readable by others: {open:?}");

    rt.block_on(vmm.delete(name)).unwrap();
    assert!(!log.exists() && !old.exists(), "console logs left");
    lab.names.clear();
    drop(vmm);
}
