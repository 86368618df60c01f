//! Booting from the grid, end to end: release keys made with `zos release keygen`, a release
//! published with `zos release publish` to a real grid on loopback, the farm's bootloader made
//! with `zos farm bootloader`, and real VMs (QEMU under TCG) that boot from the bootloader ISO
//! and from QEMU's own iPXE ROM, fetch the kernel and initramfs from the grid by hash, and run
//! the initramfs's `/init`, which prints the kernel command line the grid wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zos_client::GridClient;
use zos_flist::BlockStore;
use zos_flist::hub::HubClient;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_grid::{GridConfig, RunningGrid};
use zos_types::Identity;
use zos_types::auth::unix_now;
use zos_types::boot::{GridUrl, ReleaseSummary, chain_script};
use zos_types::policy::AdmissionToken;
use zos_types::release::{ReleaseKeys, RunMode};

const MARKER: &str = "ZOS-BOOT-TEST-MARKER";

fn zos(grid: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env("ZOS_GRID", grid)
        .env_remove("ZOS_KEY")
        .output()
        .expect("running zos")
}

fn ok(grid: &str, args: &[&str]) -> String {
    let out = zos(grid, args);
    assert!(
        out.status.success(),
        "zos {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(grid: &str, args: &[&str]) -> String {
    let out = zos(grid, args);
    assert!(!out.status.success(), "zos {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Two release keys made by `zos release keygen`, and a grid taking dev releases signed by both.
struct Bed {
    work: tempfile::TempDir,
    grid: RunningGrid,
    keys: [PathBuf; 2],
    farm: u32,
    /// The farmer's key file (the farm admits only signed nodes: its bootloader carries a token).
    farmer_key: PathBuf,
    farmer: Identity,
}

impl Bed {
    async fn start() -> Self {
        let work = tempfile::tempdir().unwrap();
        let keys = [work.path().join("k1"), work.path().join("k2")];
        for k in &keys {
            let out = ok(
                "http://unused",
                &["release", "keygen", "-o", k.to_str().unwrap()],
            );
            assert!(out.contains("written to"), "{out}");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(k).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let json = ok(
            "http://unused",
            &[
                "release",
                "keys",
                keys[0].to_str().unwrap(),
                keys[1].to_str().unwrap(),
                "--threshold",
                "2",
            ],
        );
        let release_keys: ReleaseKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(release_keys.threshold, 2);
        let mut config = GridConfig::new("127.0.0.1:0".parse().unwrap(), work.path().join("grid"));
        config.boot.release_keys.insert(RunMode::Dev, release_keys);
        let grid = zos_grid::start(config).await.unwrap();
        let farmer_id = Identity::generate().unwrap();
        let farmer_key = work.path().join("farmer.key");
        zos_client::keyfile::save_identity(&farmer_key, &farmer_id, 0o600).unwrap();
        let farmer = GridClient::new(&grid.url())
            .unwrap()
            .with_identity(farmer_id.clone());
        let twin = farmer.create_twin(None).await.unwrap();
        let farm = farmer
            .with_twin(twin.id)
            .create_farm("boot-test-farm")
            .await
            .unwrap();
        Self {
            work,
            grid,
            keys,
            farm: farm.id,
            farmer_key,
            farmer: farmer_id,
        }
    }

    fn url(&self) -> String {
        self.grid.url()
    }

    /// A runtime flist pushed to the grid's hub: `NAME=URL@SHA256` for `zos release publish`.
    async fn flist(&self) -> String {
        let id = Identity::generate().unwrap();
        let c = GridClient::new(&self.url())
            .unwrap()
            .with_identity(id.clone());
        let twin = c.create_twin(None).await.unwrap();
        let hub = HubClient::new(&self.url()).unwrap().with_auth(id, twin.id);
        let store: Arc<dyn BlockStore> = Arc::new(hub.block_store().unwrap());
        let src = self.work.path().join("runtime");
        std::fs::create_dir_all(src.join("usr/bin")).unwrap();
        std::fs::write(src.join("usr/bin/zosd"), "not really zosd").unwrap();
        let out = self.work.path().join("runtime.fl");
        pack(
            &Source::Dir(src),
            &out,
            store,
            &PackOptions::default(),
            &|_: &Progress| {},
        )
        .await
        .unwrap();
        let pushed = hub
            .push("zos-runtime.fl", std::fs::read(&out).unwrap(), false)
            .await
            .unwrap();
        let sha = pushed.flist.sha256;
        format!("zos={}/api/v1/hub/flists/by-hash/{sha}@{sha}", self.url())
    }

    /// `zos release publish` of `kernel` and `initramfs` for dev, signed by both keys.
    fn publish(&self, kernel: &Path, initramfs: &Path, flist: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "release",
            "publish",
            "--runmode",
            "dev",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initramfs",
            initramfs.to_str().unwrap(),
            "--flist",
            flist,
            "--release-key",
            self.keys[0].to_str().unwrap(),
            "--release-key",
            self.keys[1].to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        zos(&self.url(), &args)
    }

    fn releases(&self) -> Vec<ReleaseSummary> {
        serde_json::from_str(&ok(
            &self.url(),
            &["--json", "release", "list", "--runmode", "dev"],
        ))
        .unwrap()
    }
}

fn sha_of(path: &Path) -> String {
    zos_flist::hub::sha256_hex(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn releases_are_published_listed_and_bootloaders_made() {
    let bed = Bed::start().await;
    let kernel = bed.work.path().join("kernel");
    let initramfs = bed.work.path().join("initramfs");
    std::fs::write(&kernel, "a kernel").unwrap();
    std::fs::write(&initramfs, "an initramfs").unwrap();
    let flist = bed.flist().await;

    // A key file is never overwritten.
    let err = fails(
        &bed.url(),
        &["release", "keygen", "-o", bed.keys[0].to_str().unwrap()],
    );
    assert!(err.contains("never overwritten"), "{err}");

    let out = bed.publish(&kernel, &initramfs, &flist, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("release 0.1.0 of runmode dev published")
    );
    // The next one takes the next patch version; the files are on the grid already.
    std::fs::write(&initramfs, "a newer initramfs").unwrap();
    let out = bed.publish(&kernel, &initramfs, &flist, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is on the grid already"));
    let list = bed.releases();
    let versions: Vec<_> = list.iter().map(|r| r.release.version.as_str()).collect();
    assert_eq!(versions, ["0.1.1", "0.1.0"]);
    assert_eq!(list[0].release.initramfs.sha256, sha_of(&initramfs));
    assert_eq!(list[0].release.kernel.sha256, sha_of(&kernel));
    assert_eq!(list[0].signers.len(), 2);
    let table = ok(&bed.url(), &["release", "list", "--runmode", "dev"]);
    assert!(table.contains("0.1.1") && table.contains("zos"), "{table}");

    // Refusals: one key short of the threshold, an older version, a flist whose hash lies.
    let out = zos(
        &bed.url(),
        &[
            "release",
            "publish",
            "--runmode",
            "dev",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initramfs",
            initramfs.to_str().unwrap(),
            "--flist",
            &flist,
            "--release-key",
            bed.keys[0].to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("2 needed"), "{err}");
    let out = bed.publish(&kernel, &initramfs, &flist, &["--release-version", "0.0.9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not newer"));
    let lying = format!("{}@{}", flist.rsplit_once('@').unwrap().0, "0".repeat(64));
    let out = bed.publish(&kernel, &initramfs, &lying, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to name it"));
    assert_eq!(bed.releases().len(), 2);

    // A dev release with a debug flist (here the same flist under another name).
    let debug = format!("debug={}", flist.split_once('=').unwrap().1);
    let out = bed.publish(&kernel, &initramfs, &flist, &["--debug-flist", &debug]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = bed.releases();
    assert_eq!(list[0].release.version, "0.1.2");
    let named = list[0].release.debug.as_ref().expect("a debug flist");
    assert_eq!(
        (named.name.as_str(), named.sha256.as_str()),
        ("debug", list[0].release.flists[0].sha256.as_str())
    );
    assert_eq!(list[1].release.debug, None);

    // The farm's iPXE script, and hybrid images holding iPXE and that script.
    let ipxe = bed.work.path().join("farm.ipxe");
    let farm = bed.farm.to_string();
    let key = bed.farmer_key.to_str().unwrap();
    ok(
        &bed.url(),
        &[
            "farm",
            "bootloader",
            "--farm",
            &farm,
            "--runmode",
            "dev",
            "--format",
            "ipxe",
            "-o",
            ipxe.to_str().unwrap(),
            "--key",
            key,
        ],
    );
    // The farm admits only signed nodes (the default): the script carries the farmer's token.
    let written = std::fs::read_to_string(&ipxe).unwrap();
    let token: AdmissionToken = written
        .split("?admission=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an admission token in the script")
        .parse()
        .unwrap();
    token
        .check(bed.farm, &bed.farmer.public_key(), unix_now())
        .unwrap();
    let want = chain_script(
        bed.farm,
        RunMode::Dev,
        &GridUrl::parse(&bed.url()).unwrap(),
        Some(&token),
        &[],
    );
    assert_eq!(written, want);
    // Only the farmer makes it.
    let stranger = bed.work.path().join("stranger.key");
    ok(
        &bed.url(),
        &["key", "new", "--key", stranger.to_str().unwrap()],
    );
    ok(
        &bed.url(),
        &["twin", "create", "--key", stranger.to_str().unwrap()],
    );
    let err = fails(
        &bed.url(),
        &[
            "farm",
            "bootloader",
            "--farm",
            &farm,
            "--format",
            "ipxe",
            "-o",
            "/dev/null",
            "--key",
            stranger.to_str().unwrap(),
        ],
    );
    assert!(err.contains("only its farmer's key"), "{err}");
    for format in ["iso", "usb"] {
        let img = bed.work.path().join(format!("farm.{format}"));
        ok(
            &bed.url(),
            &[
                "farm",
                "bootloader",
                "--farm",
                &farm,
                "--runmode",
                "dev",
                "--format",
                format,
                "-o",
                img.to_str().unwrap(),
                "--key",
                key,
            ],
        );
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(&bytes[510..512], &[0x55, 0xaa], "{format}: no MBR");
        assert_eq!(&bytes[0x8001..0x8006], b"CD001", "{format}: not ISO 9660");
        let head = want.split("?admission=").next().unwrap();
        let script = bytes.windows(head.len()).any(|w| w == head.as_bytes());
        assert!(script, "{format}: the farm's script is not in the image");
    }
    let err = fails(
        &bed.url(),
        &[
            "farm",
            "bootloader",
            "--farm",
            "999999",
            "--format",
            "iso",
            "-o",
            "/dev/null",
        ],
    );
    assert!(err.contains("999999"), "{err}");
    let err = fails(
        &bed.url(),
        &[
            "farm",
            "bootloader",
            "--farm",
            &farm,
            "--format",
            "ipxe",
            "-o",
            "/dev/null",
            "--boot-url",
            "http://grid$x",
            "--key",
            key,
        ],
    );
    assert!(err.contains("cannot go into a boot script"), "{err}");

    // Extra kernel arguments: the known ones go into the chain URL, anything else is refused.
    let with_args = bed.work.path().join("args.ipxe");
    let bootloader = |extra: &[&str], out: &str| {
        let mut args = vec![
            "farm",
            "bootloader",
            "--farm",
            &farm,
            "--runmode",
            "dev",
            "--format",
            "ipxe",
            "-o",
            out,
            "--key",
            key,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let argv = bootloader(
        &[
            "--kernel-arg",
            "zos-debug",
            "--kernel-arg",
            "zos-upgrade-gate=120",
        ],
        with_args.to_str().unwrap(),
    );
    ok(
        &bed.url(),
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let written = std::fs::read_to_string(&with_args).unwrap();
    assert!(
        written.contains("&args=zos-debug,zos-upgrade-gate=120 || goto retry\n"),
        "{written}"
    );
    for (bad, needle) in [
        ("init=/bin/sh", "init=/bin/sh"),
        ("zos-upgrade-check=5", "zos-upgrade-check=5"),
        ("zos-debug,rd.break", "zos-debug,rd.break"),
    ] {
        let argv = bootloader(&["--kernel-arg", bad], "/dev/null");
        let err = fails(
            &bed.url(),
            &argv.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(err.contains(needle), "{bad}: {err}");
    }
}

/// A QEMU process, killed by PID when dropped.
struct Qemu {
    child: std::process::Child,
    log: PathBuf,
}

impl Qemu {
    fn start(log: &Path, args: &[&str]) -> Self {
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "pc", "-accel", "tcg", "-m", "512", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting qemu-system-x86_64 (scripts/install-deps.sh installs it)");
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// Waits (generously: TCG is slow) for the marker line on the serial console, then for QEMU
    /// to end (the guest powers off). Answers the marker line.
    async fn marker(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(MARKER)) {
                let line = line.to_string();
                while Instant::now() < deadline {
                    if self.child.try_wait().unwrap().is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                return line;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("QEMU ended ({status}) before the marker; console:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no marker on the console after 600 s; console:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// An initramfs of busybox-static whose `/init` prints the marker and the kernel command line,
/// then powers off.
fn marker_initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("initramfs-root");
    for d in ["bin", "proc", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static (scripts/install-deps.sh installs it)");
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         echo \"{MARKER} $(/bin/busybox cat /proc/cmdline)\"\n\
         /bin/busybox poweroff -f\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio failed");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_boots_from_the_bootloader_iso_and_from_the_pxe_rom() {
    let bed = Bed::start().await;
    let guest = zos_testkit::guest::build_guest(&[], &[]);
    let kernel = guest.join("vmlinuz");
    let initramfs = marker_initramfs(bed.work.path());
    let flist = bed.flist().await;
    let out = bed.publish(&kernel, &initramfs, &flist, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (kernel_sha, initramfs_sha) = (sha_of(&kernel), sha_of(&initramfs));

    // QEMU's user network reaches the host's loopback at 10.0.2.2.
    let port = bed.grid.addr().port();
    let seen_grid = format!("http://10.0.2.2:{port}");
    let farm = bed.farm.to_string();
    let iso = bed.work.path().join("farm.iso");
    ok(
        &bed.url(),
        &[
            "farm",
            "bootloader",
            "--farm",
            &farm,
            "--runmode",
            "dev",
            "--format",
            "iso",
            "-o",
            iso.to_str().unwrap(),
            "--boot-url",
            &seen_grid,
            "--key",
            bed.farmer_key.to_str().unwrap(),
        ],
    );
    let check = |line: &str, admitted: bool| {
        for want in [
            format!("farmer_id={farm}"),
            "runmode=dev".into(),
            format!("grid={seen_grid}"),
        ] {
            assert!(
                line.split_whitespace().any(|w| w == want),
                "{want} missing in {line}"
            );
        }
        let token = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admission="));
        match token {
            Some(t) if admitted => {
                let t: AdmissionToken = t.parse().unwrap();
                t.check(bed.farm, &bed.farmer.public_key(), unix_now())
                    .unwrap();
            }
            None if !admitted => {}
            other => panic!("admission {other:?} in {line}"),
        }
    };

    // 1. From the bootloader ISO.
    let t = Instant::now();
    let mut vm = Qemu::start(
        &bed.work.path().join("iso.log"),
        &[
            "-cdrom",
            iso.to_str().unwrap(),
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    );
    let line = vm.marker().await;
    eprintln!(
        "booted from the ISO in {:.1} s: {line}",
        t.elapsed().as_secs_f64()
    );
    check(&line, true);
    drop(vm);
    assert_eq!(bed.grid.boot().fetches(&kernel_sha), 1);
    assert_eq!(bed.grid.boot().fetches(&initramfs_sha), 1);

    // 2. From QEMU's own iPXE ROM, the DHCP boot file naming the farm's script.
    let t = Instant::now();
    let mut vm = Qemu::start(
        &bed.work.path().join("pxe.log"),
        &[
            "-boot",
            "n",
            "-netdev",
            &format!("user,id=n0,bootfile={seen_grid}/boot/dev/farms/{farm}.ipxe"),
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    );
    let line = vm.marker().await;
    eprintln!(
        "booted by PXE in {:.1} s: {line}",
        t.elapsed().as_secs_f64()
    );
    check(&line, false);
    drop(vm);
    assert_eq!(bed.grid.boot().fetches(&kernel_sha), 2);
    assert_eq!(bed.grid.boot().fetches(&initramfs_sha), 2);
}
