//! PID 1 of a container-mode VM.
//!
//! Boot order: early mounts (`/proc`, `/sys`, `/dev`, `/run`) and the console; kernel modules
//! from `/lib/modules/modules.load`, in that (dependency) order; the seed; network (busybox `ip`
//! from the initramfs); hostname; the virtiofs root at `/newroot`; the early mounts moved into it
//! and the initramfs emptied (like `switch_root`); inside the new root: `/dev/pts`, `/dev/shm`,
//! the seed's disks and shares, `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`, root's
//! `authorized_keys`; then the entrypoint runs in its own session with the seed's environment.
//! PID 1 reaps every orphan; when the entrypoint ends, everything else gets SIGTERM, then SIGKILL,
//! file systems are synced and unmounted, and the machine powers off. A fatal error on the way
//! is logged and powers the machine off as well (the node restarts it with backoff).
//!
//! Every line goes to the console, prefixed `guest-init [seconds since boot]`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::termios;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::seed::{Interface, MountSpec, SEED_PATH, Seed};

/// Where the modules and their load order are in the initramfs.
pub const MODULES_DIR: &str = "/lib/modules";
/// The busybox binary of the initramfs (for `ip`).
pub const BUSYBOX: &str = "/bin/busybox";
const NEWROOT: &str = "/newroot";
/// The virtio console port the node sends `poweroff` on.
pub const CONTROL_PORT: &str = "/dev/hvc0";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Something that stops the boot.
#[derive(Debug)]
struct Fatal(String);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fatal(what: impl fmt::Display, e: impl fmt::Display) -> Fatal {
    Fatal(format!("{what}: {e}"))
}

/// Seconds since boot.
fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

macro_rules! log {
    ($($arg:tt)*) => {{
        let line = format!("guest-init [{:8.3}] {}\n", uptime(), format!($($arg)*));
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }};
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// Runs the guest: never returns (the machine powers off).
pub fn main() -> ! {
    if std::process::id() != 1 {
        eprintln!("guest-init must run as PID 1 inside a zos VM");
        std::process::exit(2);
    }
    early_mounts();
    log!("zos guest-init {} starting", env!("CARGO_PKG_VERSION"));
    match boot() {
        Ok(()) => {}
        Err(e) => log!("fatal: {e}"),
    }
    shutdown()
}

fn early_mounts() {
    for (src, dir, fstype, data) in [
        ("proc", "/proc", "proc", None),
        ("sysfs", "/sys", "sysfs", None),
        ("devtmpfs", "/dev", "devtmpfs", Some("mode=0755")),
        ("tmpfs", "/run", "tmpfs", Some("mode=0755")),
    ] {
        let _ = fs::create_dir_all(dir);
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        match mount(Some(src), dir, Some(fstype), flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => log!("cannot mount {fstype} on {dir}: {e}"),
        }
    }
    // The kernel opened the initramfs's /dev/console, if the archive had one; open the
    // devtmpfs one in any case.
    if let Ok(c) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = nix::unistd::dup2_stdin(&c);
        let _ = nix::unistd::dup2_stdout(&c);
        let _ = nix::unistd::dup2_stderr(&c);
    }
}

fn boot() -> Result<(), Fatal> {
    let _ = set_cad_enabled(false);
    let term = SigAction::new(
        SigHandler::Handler(on_terminate),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(s, &term) };
    }

    load_modules(Path::new(MODULES_DIR));
    let bytes =
        fs::read(SEED_PATH).map_err(|e| fatal(format!("cannot read seed {SEED_PATH}"), e))?;
    let seed = Seed::from_json(&bytes).map_err(|e| Fatal(e.to_string()))?;
    let argv = seed.argv().map_err(|e| Fatal(e.to_string()))?;
    log!(
        "seed: instance {} hostname {}",
        seed.instance_id,
        seed.hostname
    );

    configure_network(&seed)?;
    nix::unistd::sethostname(&seed.hostname).map_err(|e| fatal("cannot set hostname", e))?;

    fs::create_dir_all(NEWROOT).map_err(|e| fatal(format!("cannot create {NEWROOT}"), e))?;
    mount(
        Some(seed.root_tag.as_str()),
        NEWROOT,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        fatal(
            format!("cannot mount the root (virtiofs tag {})", seed.root_tag),
            e,
        )
    })?;
    switch_root()?;
    log!("root is virtiofs {}", seed.root_tag);

    system_mounts();
    for m in &seed.mounts {
        mount_one(m)?;
    }
    write_files(&seed);

    let env = environment(&seed);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(&env).current_dir("/");
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| fatal(format!("cannot start entrypoint {:?}", argv[0]), e))?;
    let main = Pid::from_raw(child.id() as i32);
    log!("entrypoint {:?} started as pid {main}", argv.join(" "));
    // The child is reaped by the loop below, not through `child`.
    drop(child);
    control_channel(main);
    supervise(main);
    Ok(())
}

/// Loads each module named in `<dir>/modules.load`, in order; a module that fails is logged
/// and skipped (what needs it fails later with a clearer error).
fn load_modules(dir: &Path) {
    let list = match fs::read_to_string(dir.join("modules.load")) {
        Ok(l) => l,
        Err(e) => {
            log!("no module list in {}: {e}", dir.display());
            return;
        }
    };
    let mut loaded = 0;
    for name in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let path = dir.join(name);
        let res = fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                finit_module(&f, c"", ModuleInitFlags::empty()).map_err(|e| e.to_string())
            });
        match res {
            Ok(()) => loaded += 1,
            Err(e) if e == Errno::EEXIST.to_string() => {}
            Err(e) => log!("cannot load module {name}: {e}"),
        }
    }
    log!("loaded {loaded} modules");
}

fn busybox_ip(args: &[&str]) -> Result<(), Fatal> {
    let out = Command::new(BUSYBOX)
        .arg("ip")
        .args(args)
        .output()
        .map_err(|e| fatal(format!("cannot run {BUSYBOX} ip"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Fatal(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The interface whose MAC is `mac`, waiting up to 3 s for it to appear.
fn interface_by_mac(mac: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok(dir) = fs::read_dir("/sys/class/net") {
            for e in dir.flatten() {
                let addr = fs::read_to_string(e.path().join("address")).unwrap_or_default();
                if addr.trim().eq_ignore_ascii_case(mac) {
                    return Some(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn configure_network(seed: &Seed) -> Result<(), Fatal> {
    busybox_ip(&["link", "set", "lo", "up"])?;
    for nic in &seed.interfaces {
        configure_interface(nic)?;
    }
    Ok(())
}

fn configure_interface(nic: &Interface) -> Result<(), Fatal> {
    let name = interface_by_mac(&nic.mac)
        .ok_or_else(|| Fatal(format!("no network interface has MAC {}", nic.mac)))?;
    busybox_ip(&["link", "set", "dev", &name, "up"])?;
    for a in &nic.addresses {
        let a = a.to_string();
        busybox_ip(&["addr", "replace", &a, "dev", &name])?;
    }
    for r in &nic.routes {
        let (to, via) = (r.to.to_string(), r.via.to_string());
        busybox_ip(&["route", "replace", &to, "via", &via, "dev", &name])?;
    }
    if let Some(g) = nic.gateway4 {
        busybox_ip(&[
            "route",
            "replace",
            "default",
            "via",
            &g.to_string(),
            "dev",
            &name,
        ])?;
    }
    if let Some(g) = nic.gateway6 {
        busybox_ip(&[
            "-6",
            "route",
            "replace",
            "default",
            "via",
            &g.to_string(),
            "dev",
            &name,
        ])?;
    }
    let addrs: Vec<String> = nic.addresses.iter().map(ToString::to_string).collect();
    log!("{name} ({}) up with {}", nic.mac, addrs.join(", "));
    Ok(())
}

/// Moves the early mounts into the new root, empties the initramfs and makes the new root `/`.
fn switch_root() -> Result<(), Fatal> {
    for dir in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("{NEWROOT}{dir}");
        let _ = fs::create_dir_all(&target);
        if let Err(e) = mount(
            Some(dir),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        ) {
            log!("cannot move {dir} into the root: {e}");
            let _ = umount2(dir, MntFlags::MNT_DETACH);
        }
    }
    let root_dev = fs::symlink_metadata("/").map(|m| m.dev()).unwrap_or(0);
    if let Ok(dir) = fs::read_dir("/") {
        for e in dir.flatten() {
            if e.path() != Path::new(NEWROOT) {
                remove_on_device(&e.path(), root_dev);
            }
        }
    }
    std::env::set_current_dir(NEWROOT).map_err(|e| fatal(format!("cannot enter {NEWROOT}"), e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| fatal("cannot move the root to /", e))?;
    nix::unistd::chroot(".").map_err(|e| fatal("cannot chroot into the root", e))?;
    std::env::set_current_dir("/").map_err(|e| fatal("cannot enter /", e))?;
    Ok(())
}

/// Removes `path` and what is below it, staying on device `dev` (the initramfs).
fn remove_on_device(path: &Path, dev: u64) {
    let Ok(md) = fs::symlink_metadata(path) else {
        return;
    };
    if md.dev() != dev {
        return;
    }
    if md.is_dir() {
        if let Ok(dir) = fs::read_dir(path) {
            for e in dir.flatten() {
                remove_on_device(&e.path(), dev);
            }
        }
        let _ = fs::remove_dir(path);
    } else {
        let _ = fs::remove_file(path);
    }
}

fn system_mounts() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    for (src, dir, fstype, flags, data) in [
        (
            "devpts",
            "/dev/pts",
            "devpts",
            nosuid,
            "mode=0620,ptmxmode=0666,gid=5",
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=1777",
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid | MsFlags::MS_NODEV,
            "",
        ),
    ] {
        let _ = fs::create_dir_all(dir);
        if let Err(e) = mount(Some(src), dir, Some(fstype), flags, Some(data)) {
            log!("cannot mount {fstype} on {dir}: {e}");
        }
    }
}

/// The block device whose virtio serial is `serial`, waiting up to 3 s for it.
fn disk_by_serial(serial: &str) -> Option<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok(dir) = fs::read_dir("/sys/block") {
            for e in dir.flatten() {
                let s = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if s.trim() == serial {
                    return Some(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mount_one(m: &MountSpec) -> Result<(), Fatal> {
    let target = m.target();
    fs::create_dir_all(target)
        .map_err(|e| fatal(format!("cannot create mount point {target}"), e))?;
    match m {
        MountSpec::Virtiofs { tag, .. } => {
            mount(
                Some(tag.as_str()),
                target,
                Some("virtiofs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| fatal(format!("cannot mount share {tag} on {target}"), e))?;
            log!("share {tag} mounted on {target}");
        }
        MountSpec::Disk { serial, fstype, .. } => {
            let dev = disk_by_serial(serial)
                .ok_or_else(|| Fatal(format!("no disk with serial {serial}")))?;
            mount(
                Some(&dev),
                target,
                Some(fstype.as_str()),
                MsFlags::MS_NOATIME,
                None::<&str>,
            )
            .map_err(|e| {
                fatal(
                    format!("cannot mount disk {serial} ({}) on {target}", dev.display()),
                    e,
                )
            })?;
            log!("disk {serial} ({}) mounted on {target}", dev.display());
        }
    }
    Ok(())
}

/// Replaces `path` (a file or a dangling symlink) with `text`.
fn write_file(path: &str, text: &str, mode: u32) {
    let p = Path::new(path);
    if let Some(d) = p.parent() {
        let _ = fs::create_dir_all(d);
    }
    if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = fs::remove_file(p);
    }
    let res =
        fs::write(p, text).and_then(|_| fs::set_permissions(p, fs::Permissions::from_mode(mode)));
    if let Err(e) = res {
        log!("cannot write {path}: {e}");
    }
}

fn write_files(seed: &Seed) {
    write_file("/etc/hostname", &format!("{}\n", seed.hostname), 0o644);
    let hosts = fs::read_to_string("/etc/hosts")
        .unwrap_or_else(|_| "127.0.0.1\tlocalhost\n::1\tlocalhost\n".into());
    let line = format!("127.0.1.1\t{}", seed.hostname);
    if !hosts.lines().any(|l| l.trim() == line) {
        write_file(
            "/etc/hosts",
            &format!("{}{line}\n", ensure_newline(&hosts)),
            0o644,
        );
    }
    if !seed.nameservers.is_empty() {
        let text: String = seed
            .nameservers
            .iter()
            .map(|n| format!("nameserver {n}\n"))
            .collect();
        write_file("/etc/resolv.conf", &text, 0o644);
    }
    if !seed.ssh_keys.is_empty() {
        let _ = fs::create_dir_all("/root/.ssh");
        let _ = fs::set_permissions("/root/.ssh", fs::Permissions::from_mode(0o700));
        let old = fs::read_to_string("/root/.ssh/authorized_keys").unwrap_or_default();
        let mut text = ensure_newline(&old).to_string();
        for k in &seed.ssh_keys {
            if !old.lines().any(|l| l.trim() == k.trim()) {
                text.push_str(k.trim());
                text.push('\n');
            }
        }
        write_file("/root/.ssh/authorized_keys", &text, 0o600);
    }
}

fn ensure_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// The entrypoint's environment: defaults, then the seed's variables over them.
pub fn environment(seed: &Seed) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("PATH", DEFAULT_PATH),
        ("HOME", "/root"),
        ("TERM", "linux"),
        ("HOSTNAME", seed.hostname.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(seed.env.clone());
    env
}

/// The node's control channel: a virtio console port (`/dev/hvc0`), made raw (no echo, no line
/// editing). Started once the entrypoint runs, it answers `status` with `ready`. The line
/// `poweroff` asks for a clean stop: SIGTERM to the entrypoint's session, SIGKILL 10 s later if
/// it is still there; when the entrypoint has ended, the machine powers off as usual.
fn control_channel(main: Pid) {
    use crate::control::{POWEROFF, READY, STATUS};
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(3);
        let port = loop {
            match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(CONTROL_PORT)
            {
                Ok(f) => break f,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    log!("no control channel {CONTROL_PORT}: {e}");
                    return;
                }
            }
        };
        match termios::tcgetattr(&port) {
            Ok(mut t) => {
                termios::cfmakeraw(&mut t);
                if let Err(e) = termios::tcsetattr(&port, termios::SetArg::TCSANOW, &t) {
                    log!("cannot make {CONTROL_PORT} raw: {e}");
                }
            }
            Err(e) => log!("cannot read {CONTROL_PORT}'s settings: {e}"),
        }
        let mut answers = match port.try_clone() {
            Ok(f) => f,
            Err(e) => {
                log!("control channel {CONTROL_PORT}: {e}");
                return;
            }
        };
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(port));
        while let Some(Ok(line)) = lines.next() {
            match line.trim() {
                STATUS => {
                    // The node may have gone already: the answer is then dropped, as it should.
                    let _ =
                        std::io::Write::write_all(&mut answers, format!("{READY}\n").as_bytes());
                }
                POWEROFF => {
                    log!("poweroff asked by the node: SIGTERM to the entrypoint");
                    TERMINATE.store(true, Ordering::SeqCst);
                    let _ = kill(Pid::from_raw(-main.as_raw()), Signal::SIGTERM);
                    std::thread::sleep(Duration::from_secs(10));
                    let _ = kill(Pid::from_raw(-main.as_raw()), Signal::SIGKILL);
                    return;
                }
                _ => {}
            }
        }
    });
}

/// Reaps every child until the entrypoint `main` ends; SIGTERM to PID 1 is passed on to the
/// entrypoint's session.
fn supervise(main: Pid) {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => {
                log!("entrypoint exited with status {code}");
                return;
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => {
                log!("entrypoint killed by {sig}");
                return;
            }
            Ok(_) => {}
            Err(Errno::EINTR) => {
                if TERMINATE.swap(false, Ordering::SeqCst) {
                    log!("asked to stop: SIGTERM to the entrypoint");
                    let _ = kill(Pid::from_raw(-main.as_raw()), Signal::SIGTERM);
                }
            }
            Err(e) => {
                log!("waitpid: {e}");
                return;
            }
        }
    }
}

/// Reaps children until none is left or `limit` has passed; true when none is left.
fn reap_all(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) => {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {}
        }
    }
}

fn shutdown() -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !reap_all(Duration::from_secs(3)) {
        log!("processes left after SIGTERM: killing them");
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_all(Duration::from_secs(2));
    }
    nix::unistd::sync();
    // Unmount what was mounted, deepest first; what stays busy is synced anyway.
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| !matches!(*p, "/" | "/proc" | "/sys" | "/dev"))
        .collect();
    for p in points.iter().rev() {
        let _ = umount2(*p, MntFlags::empty());
    }
    nix::unistd::sync();
    log!("powering off");
    let _ = reboot(RebootMode::RB_POWER_OFF);
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_defaults_yield_to_the_seed() {
        let seed = Seed {
            version: crate::seed::SEED_VERSION,
            instance_id: "i".into(),
            hostname: "h".into(),
            root_tag: "vroot".into(),
            mounts: vec![],
            interfaces: vec![],
            nameservers: vec![],
            ssh_keys: vec![],
            entrypoint: String::new(),
            env: [
                ("PATH".to_string(), "/x".to_string()),
                ("A".into(), "1".into()),
            ]
            .into(),
        };
        let env = environment(&seed);
        assert_eq!(env["PATH"], "/x");
        assert_eq!(env["A"], "1");
        assert_eq!(env["HOSTNAME"], "h");
        assert_eq!(env["HOME"], "/root");
    }

    #[test]
    fn removing_stays_on_the_device() {
        let d = tempfile_dir();
        let dev = fs::metadata(&d).unwrap().dev();
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::write(d.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("a/l")).unwrap();
        remove_on_device(&d.join("a"), dev);
        assert!(!d.join("a").exists());
        assert!(Path::new("/etc").exists());
        // A different device is left alone.
        fs::create_dir_all(d.join("c")).unwrap();
        remove_on_device(&d.join("c"), dev + 1);
        assert!(d.join("c").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("guest-init-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }
}
