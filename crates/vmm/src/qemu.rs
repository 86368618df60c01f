//! [`QemuVmm`]: each VM a detached QEMU process (and one `virtiofsd` per share), supervised.
//!
//! Console logs are bounded while the VM runs: QEMU appends the serial console to
//! `<log_dir>/<name>.log` (its chardev file opened with `O_APPEND`), and the supervisor checks
//! the size every pass (200 ms). Past half of [`VmmConfig::console_max`] the log is rotated:
//! its last half-cap bytes are copied to `<name>.log.1` (a new file renamed over the old one)
//! and the log is truncated to zero. With `O_APPEND`, QEMU's next write lands at the new end
//! (offset 0), so no hole and no restart is needed. The pair holds at most about the cap
//! (plus what the guest prints in one pass), the last output is always in it, and reads
//! ([`console_tail`]) seek from the end and read only the bytes asked for. The rotation runs in
//! zosd, which the VM outlives: while zosd is down the log grows, and the first pass of the
//! next zosd cuts it back (copying only its tail). What the guest prints between the copy
//! and the truncation (microseconds) is lost.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use zos_runtime::supervise::{self, Backoff, Detach, Marker};

use super::cgroup::Cgroups;
use super::qmp::Qmp;
use super::state::{self, Desired, STATE_DIR, STATE_VERSION, VmRecord};
use super::{Boot, Result, VmInfo, VmSpec, VmStatus, VmmError, VmmReconcile};
use zos_guest_init::control;
use zos_guest_init::seed::Seed;
use zos_runtime::find_program;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when the CPU has hardware virtualization (`vmx` or `svm`) and `/dev/kvm` exists,
    /// TCG otherwise (a paravirtual `/dev/kvm` hangs stock guests).
    Auto,
    Kvm,
    Tcg,
}

/// Where [`QemuVmm`] keeps things and which programs it runs.
#[derive(Debug, Clone)]
pub struct VmmConfig {
    /// Prefix of every global name (cgroups); empty on real hardware.
    pub prefix: String,
    /// State files go to `<state_dir>/vmm/`.
    pub state_dir: PathBuf,
    /// Per-VM sockets, boot files and daemon logs: `<run_dir>/<id>/` (a short hash of the name).
    pub run_dir: PathBuf,
    /// Console logs: `<log_dir>/<name>.log`.
    pub log_dir: PathBuf,
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub accel: Accel,
    /// Added to the VM's memory for its cgroup limit (QEMU's own memory; about 250 MiB under TCG).
    pub memory_overhead: u64,
    /// First wait before a dead VM is started again; doubled each time up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a clean shutdown may take before the VM is killed (delete).
    pub stop_timeout: Duration,
    /// Bytes a VM's console log (the log and its previous part together) keeps at most.
    pub console_max: u64,
}

impl VmmConfig {
    /// Defaults: programs from `PATH` (virtiofsd also from `~/.cargo/bin` and
    /// `/usr/libexec`), console logs in `<state_dir>/vmm/logs`.
    pub fn new(prefix: &str, state_dir: PathBuf, run_dir: PathBuf) -> Self {
        let mut virtiofsd = find_program("virtiofsd");
        if !virtiofsd.is_file() && Path::new("/usr/libexec/virtiofsd").is_file() {
            virtiofsd = "/usr/libexec/virtiofsd".into();
        }
        Self {
            prefix: prefix.to_string(),
            log_dir: state_dir.join(STATE_DIR).join("logs"),
            state_dir,
            run_dir,
            qemu: find_program("qemu-system-x86_64"),
            virtiofsd,
            accel: Accel::Auto,
            memory_overhead: 512 << 20,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            console_max: CONSOLE_MAX,
        }
    }
}

/// True when the CPU has hardware virtualization and `/dev/kvm` exists.
pub fn hardware_kvm() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let hw = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    hw && Path::new("/dev/kvm").exists()
}

/// The host's TSC frequency in kHz (`cpu MHz` of `/proc/cpuinfo`).
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then_some((mhz * 1000.0) as u64)
}

/// Default of [`VmmConfig::console_max`].
pub const CONSOLE_MAX: u64 = 16 << 20;

/// How long the guest has to answer a `status` request on its control channel.
const STATUS_WAIT: Duration = Duration::from_secs(1);
/// The most bytes read from the guest's side of the control channel for one `status`.
const STATUS_MAX: u64 = 4096;

/// The previous part of a console log: `<name>.log.1`.
fn console_old(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Rotates the console log `log` once it is longer than `keep`: its last `keep` bytes become
/// the previous part, and the log is truncated (QEMU appends, so it goes on at offset 0).
/// Answers whether it rotated.
fn rotate_console(log: &Path, keep: u64) -> std::io::Result<bool> {
    let mut f = match fs::OpenOptions::new().read(true).write(true).open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= keep {
        return Ok(false);
    }
    let old = console_old(log);
    let mut tmp = old.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    f.seek(SeekFrom::Start(len - keep))?;
    let mut out = zos_runtime::private::create_file(&tmp)?;
    // Up to `keep` more bytes: what the guest printed while this copied goes along.
    std::io::copy(&mut (&mut f).take(2 * keep), &mut out)?;
    drop(out);
    fs::rename(&tmp, &old)?;
    f.set_len(0)?;
    Ok(true)
}

/// Makes the console log QEMU appends to, readable by root only (the guest's output is the
/// tenant's); a log an older zosd left wider is narrowed. QEMU opens it with `O_APPEND` and
/// keeps the mode.
fn open_console(log: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(zos_runtime::private::FILE_MODE)
        .open(log)?;
    if f.metadata()?.permissions().mode() & 0o777 != zos_runtime::private::FILE_MODE {
        f.set_permissions(fs::Permissions::from_mode(zos_runtime::private::FILE_MODE))?;
    }
    Ok(())
}

/// The last `max` bytes of a file, read from the end; `None` when it does not exist.
fn file_tail(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut b = Vec::with_capacity(len.min(max) as usize);
    f.take(max).read_to_end(&mut b)?;
    Ok(Some(b))
}

/// The last `max` bytes of a console log and its previous part, oldest first, reading only
/// those bytes.
pub fn console_tail(log: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let new = file_tail(log, max)?.unwrap_or_default();
    let rest = max - new.len() as u64;
    if rest == 0 {
        return Ok(new);
    }
    let mut out = file_tail(&console_old(log), rest)?.unwrap_or_default();
    out.extend_from_slice(&new);
    Ok(out)
}

/// Removes a console log and its previous part.
fn remove_console(log: &Path) -> std::io::Result<()> {
    for p in [log.to_path_buf(), console_old(log)] {
        if let Err(e) = fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e);
        }
    }
    Ok(())
}

/// One VM in memory.
#[derive(Debug)]
struct Machine {
    rec: VmRecord,
    /// Watched by the supervisor (made here, or found by reconcile).
    supervised: bool,
    /// When a dead VM is due to start again.
    restart: Backoff,
    /// The QEMU process whose guest answered `ready` (a restarted guest must answer again).
    ready: Option<i32>,
}

#[derive(Debug)]
struct Inner {
    cfg: VmmConfig,
    cgroups: Cgroups,
    kvm: bool,
    vms: Mutex<BTreeMap<String, Machine>>,
    /// Held while console logs are rotated or removed, so a rotation never recreates the
    /// previous part of a deleted VM's log.
    consoles: std::sync::Mutex<()>,
}

/// The QEMU VMM. Dropping it stops supervising but leaves the VMs running (zosd restarts,
/// upgrades); a new instance adopts them with [`super::Vmm::reconcile`].
#[derive(Debug)]
pub struct QemuVmm {
    inner: Arc<Inner>,
    supervisor: JoinHandle<()>,
}

impl Drop for QemuVmm {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmmError + use<> {
    let path = path.to_path_buf();
    move |source| VmmError::Io { op, path, source }
}

/// Is `pid` a live process whose command line holds `marker` (a socket path of the VM)?
fn alive(pid: i32, marker: &Path) -> bool {
    supervise::alive(pid, &Marker::containing(marker))
}

/// Kills `pid` (only if it is still the process holding `marker`) and waits up to 5 s for it.
fn kill_wait(pid: i32, marker: &Path) {
    supervise::stop_blocking(pid, &Marker::containing(marker), Duration::ZERO);
}

fn tail(path: &Path, max: usize) -> String {
    let b = file_tail(path, max as u64)
        .ok()
        .flatten()
        .unwrap_or_default();
    String::from_utf8_lossy(&b).trim().to_string()
}

impl Inner {
    fn state_dir(&self) -> PathBuf {
        self.cfg.state_dir.join(STATE_DIR)
    }

    /// `<run_dir>/<12 hex of sha256(name)>`: short enough for unix socket paths.
    fn run_dir(&self, name: &str) -> PathBuf {
        let d = Sha256::digest(name.as_bytes());
        self.cfg.run_dir.join(hex::encode(&d[..6]))
    }

    fn qmp_path(&self, name: &str) -> PathBuf {
        self.run_dir(name).join("qmp.sock")
    }

    fn control_path(&self, name: &str) -> PathBuf {
        self.run_dir(name).join("ctl.sock")
    }

    fn share_sock(&self, name: &str, i: usize) -> PathBuf {
        self.run_dir(name).join(format!("fs{i}.sock"))
    }

    fn console_log(&self, name: &str) -> PathBuf {
        self.cfg.log_dir.join(format!("{name}.log"))
    }

    fn cgroup(&self, name: &str) -> String {
        format!("{}zos-vm-{name}", self.cfg.prefix)
    }

    fn info(&self, m: &Machine) -> VmInfo {
        let name = &m.rec.spec.name;
        let running = m.rec.pid.is_some_and(|p| alive(p, &self.qmp_path(name)));
        let status = match (m.rec.desired, running) {
            (Desired::Stopped, _) => VmStatus::Stopped,
            (_, false) => VmStatus::Restarting,
            (Desired::Paused, true) => VmStatus::Paused,
            (Desired::Running, true) => VmStatus::Running,
        };
        VmInfo {
            spec: m.rec.spec.clone(),
            status,
            pid: m.rec.pid.filter(|_| running),
            virtiofsd: if running {
                m.rec.virtiofsd.clone()
            } else {
                vec![]
            },
            restarts: m.rec.restarts,
            console_log: self.console_log(name),
            cgroup: self.cgroup(name),
        }
    }

    fn save(&self, m: &Machine) -> Result<()> {
        state::save(&self.state_dir(), &m.rec)
    }

    /// Kills what is left of the VM's processes (QEMU, virtiofsd) and removes its sockets.
    fn kill_all(&self, rec: &mut VmRecord) {
        let name = rec.spec.name.clone();
        if let Some(pid) = rec.pid.take() {
            kill_wait(pid, &self.qmp_path(&name));
        }
        for (i, pid) in std::mem::take(&mut rec.virtiofsd).into_iter().enumerate() {
            kill_wait(pid, &self.share_sock(&name, i));
        }
        // Anything else left in the cgroup (a virtiofsd of an older boot, say).
        for pid in self.cgroups.procs(&self.cgroup(&name)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }

    /// The cgroup.procs files of the VM's cgroup, for the child to join before it executes.
    fn cgroup_procs(&self, name: &str) -> Vec<PathBuf> {
        self.cgroups
            .dirs(&self.cgroup(name))
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Starts a process detached (own session, stdin from /dev/null, output to `log`) inside
    /// the VM's cgroup.
    fn spawn(&self, program: &Path, args: &[String], log: &Path, name: &str) -> Result<i32> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Detach::new(log)
            .truncate()
            .cgroups(self.cgroup_procs(name))
            .spawn(cmd)
            .map_err(|source| VmmError::Spawn {
                program: program.to_path_buf(),
                source,
            })
    }

    /// Waits up to `limit` for `path` to appear while `pid` lives.
    async fn wait_for(&self, path: &Path, pid: i32, marker: &Path, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if path.exists() {
                return true;
            }
            if !alive(pid, marker) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        path.exists()
    }

    /// Starts the VM: virtiofsd per share, then QEMU. `m.rec` gets the new processes.
    async fn boot(&self, m: &mut Machine) -> Result<()> {
        let spec = m.rec.spec.clone();
        let name = spec.name.as_str();
        self.kill_all(&mut m.rec);
        let run = self.run_dir(name);
        let _ = fs::remove_dir_all(&run);
        zos_runtime::private::create_dir(&run).map_err(io_err("create", &run))?;
        zos_runtime::private::create_dir(&self.cfg.log_dir)
            .map_err(io_err("create", &self.cfg.log_dir))?;
        let console = self.console_log(name);
        open_console(&console).map_err(io_err("create", &console))?;
        self.bound_console(name);
        let cg = self.cgroup(name);
        self.cgroups
            .create(&cg, spec.cpus, spec.memory + self.cfg.memory_overhead)?;

        for (i, share) in spec.shares.iter().enumerate() {
            let sock = self.share_sock(name, i);
            let args = vec![
                format!("--socket-path={}", sock.display()),
                format!("--shared-dir={}", share.path.display()),
                "--cache=auto".to_string(),
                "--sandbox=namespace".to_string(),
                "--announce-submounts".to_string(),
                "--log-level=warn".to_string(),
            ];
            let log = run.join(format!("fs{i}.log"));
            let pid = self.spawn(&self.cfg.virtiofsd, &args, &log, name)?;
            m.rec.virtiofsd.push(pid);
            if !self
                .wait_for(&sock, pid, &sock, Duration::from_secs(10))
                .await
            {
                let log = tail(&log, 2000);
                self.kill_all(&mut m.rec);
                return Err(VmmError::Start {
                    name: name.to_string(),
                    what: "virtiofsd",
                    log,
                });
            }
        }

        let args = self.qemu_args(&spec, m.rec.desired == Desired::Paused)?;
        let log = run.join("qemu.log");
        let qmp = self.qmp_path(name);
        let pid = self.spawn(&self.cfg.qemu, &args, &log, name)?;
        m.rec.pid = Some(pid);
        if !self
            .wait_for(&qmp, pid, &qmp, Duration::from_secs(15))
            .await
        {
            let log = tail(&log, 2000);
            self.kill_all(&mut m.rec);
            return Err(VmmError::Start {
                name: name.to_string(),
                what: "qemu",
                log,
            });
        }
        m.restart.started();
        self.save(m)?;
        tracing::debug!(vm = name, pid, "vm started");
        Ok(())
    }

    /// QEMU's command line for `spec`: the machine, the kernel it boots (if any), then its
    /// shares, disks and NICs; `paused` starts it stopped.
    fn qemu_args(&self, spec: &VmSpec, paused: bool) -> Result<Vec<String>> {
        let kernel_mode = matches!(spec.boot, Boot::Kernel { .. });
        // microvm has no firmware that boots disks; VM mode uses q35 and PCI devices.
        let (machine, bus) = if kernel_mode {
            ("microvm", "device")
        } else {
            ("q35", "pci")
        };
        let mut a = self.machine_args(spec, machine, paused);
        if let Boot::Kernel {
            kernel,
            initramfs,
            cmdline,
            seed,
        } = &spec.boot
        {
            a.extend(self.kernel_args(&spec.name, kernel, initramfs, cmdline, seed.as_deref())?);
        }
        a.extend(self.share_args(spec, bus));
        a.extend(disk_args(spec, bus, kernel_mode));
        a.extend(nic_args(spec, bus, kernel_mode));
        Ok(a)
    }

    /// The machine itself: its name, memory, accelerator, CPUs, the serial console into the
    /// console log and the QMP socket.
    fn machine_args(&self, spec: &VmSpec, machine: &str, paused: bool) -> Vec<String> {
        let name = spec.name.as_str();
        let mib = spec.memory_mib();
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|x| x.to_string()));
        push(&["-name", &format!("{}zos-vm-{name}", self.cfg.prefix)]);
        push(&["-M", &format!("{machine},memory-backend=mem")]);
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
        ]);
        if self.kvm {
            push(&["-accel", "kvm", "-cpu", "host"]);
        } else {
            push(&["-accel", "tcg"]);
        }
        push(&["-smp", &spec.cpus.to_string(), "-m", &format!("{mib}M")]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ]);
        push(&[
            "-chardev",
            &format!(
                "file,id=con,path={},append=on",
                self.console_log(name).display()
            ),
            "-serial",
            "chardev:con",
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", self.qmp_path(name).display()),
        ]);
        if paused {
            push(&["-S"]);
        }
        a
    }

    /// A direct kernel boot: the kernel, its initramfs (with the seed appended, written into
    /// the machine's run directory), the command line, and the control console.
    fn kernel_args(
        &self,
        name: &str,
        kernel: &Path,
        initramfs: &Path,
        cmdline: &str,
        seed: Option<&Seed>,
    ) -> Result<Vec<String>> {
        let initrd = match seed {
            Some(seed) => {
                let p = self.run_dir(name).join("initrd");
                super::cpio::append_seed(initramfs, &p, seed)
                    .map_err(io_err("write the initramfs with the seed", &p))?;
                p
            }
            None => initramfs.to_path_buf(),
        };
        let mut append = "console=ttyS0 panic=-1 quiet".to_string();
        // Under TCG, calibrating the TSC against microvm's PIT fails when the host is
        // busy, and the guest hangs without a clock; the guest's TSC is the host's.
        if !self.kvm
            && let Some(khz) = host_tsc_khz()
        {
            append.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
        }
        append.push(' ');
        append.push_str(cmdline);
        Ok(vec![
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            append.trim().to_string(),
            "-device".into(),
            "virtio-serial-device,id=vs".into(),
            "-chardev".into(),
            format!(
                "socket,id=ctl,path={},server=on,wait=off",
                self.control_path(name).display()
            ),
            "-device".into(),
            "virtconsole,bus=vs.0,chardev=ctl".into(),
        ])
    }

    /// One virtio-fs device per share, served by its virtiofsd socket.
    fn share_args(&self, spec: &VmSpec, bus: &str) -> Vec<String> {
        let mut a = Vec::new();
        for (i, s) in spec.shares.iter().enumerate() {
            a.extend([
                "-chardev".into(),
                format!(
                    "socket,id=fs{i},path={}",
                    self.share_sock(&spec.name, i).display()
                ),
                "-device".into(),
                format!("vhost-user-fs-{bus},chardev=fs{i},tag={}", s.tag),
            ]);
        }
        a
    }

    /// Asks the guest to power off and waits up to `timeout` for QEMU to end; kills it after.
    async fn stop(&self, m: &mut Machine, timeout: Duration) {
        let name = m.rec.spec.name.clone();
        let qmp = self.qmp_path(&name);
        if let Some(pid) = m.rec.pid.filter(|p| alive(*p, &qmp)) {
            let asked = match m.rec.spec.boot {
                Boot::Kernel { .. } => self.control_poweroff(&name).await,
                Boot::Disk => match Qmp::connect(&qmp).await {
                    Ok(mut q) => q.execute("system_powerdown", None).await.map(drop),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = asked {
                tracing::debug!(vm = %name, "clean shutdown not asked: {e}");
            } else {
                // A paused guest cannot act on it.
                if m.rec.desired == Desired::Paused
                    && let Ok(mut q) = Qmp::connect(&qmp).await
                {
                    let _ = q.execute("cont", None).await;
                }
                let deadline = Instant::now() + timeout;
                while alive(pid, &qmp) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if alive(pid, &qmp) {
                tracing::debug!(vm = %name, pid, "vm did not power off: killing it");
            }
        }
        self.kill_all(&mut m.rec);
    }

    async fn control_poweroff(&self, name: &str) -> std::result::Result<(), String> {
        let p = self.control_path(name);
        let mut s = tokio::net::UnixStream::connect(&p)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", p.display()))?;
        s.write_all(format!("{}\n", control::POWEROFF).as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        s.flush().await.map_err(|e| format!("write: {e}"))
    }

    /// Asks `guest-init` whether the entrypoint runs: `status` on the control channel, and
    /// `ready` back within [`STATUS_WAIT`]. No answer (the guest is still booting, or QEMU has
    /// not opened its end yet) is not ready.
    async fn control_ready(&self, name: &str) -> bool {
        let p = self.control_path(name);
        let ask = async {
            let mut s = tokio::net::UnixStream::connect(&p).await.ok()?;
            s.write_all(format!("{}\n", control::STATUS).as_bytes())
                .await
                .ok()?;
            // What the guest writes is the tenant's: read a bounded amount, not a line of any
            // length.
            let mut lines = tokio::io::BufReader::new(s.take(STATUS_MAX)).lines();
            while let Some(line) = lines.next_line().await.ok()? {
                if line.trim() == control::READY {
                    return Some(());
                }
            }
            None
        };
        matches!(tokio::time::timeout(STATUS_WAIT, ask).await, Ok(Some(())))
    }

    async fn qmp(&self, name: &str, command: &str) -> Result<()> {
        let mut q = Qmp::connect(&self.qmp_path(name))
            .await
            .map_err(|reason| VmmError::Qmp {
                name: name.to_string(),
                reason,
            })?;
        q.execute(command, None)
            .await
            .map(drop)
            .map_err(|reason| VmmError::Qmp {
                name: name.to_string(),
                reason,
            })
    }

    /// Rotates the console log of `name` when it outgrew half the cap.
    fn bound_console(&self, name: &str) {
        let _held = self.consoles.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.console_log(name);
        match rotate_console(&log, self.cfg.console_max / 2) {
            Ok(true) => tracing::debug!(vm = name, "console log rotated"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(vm = name, log = %log.display(), error = %e, "cannot rotate a console log")
            }
        }
    }

    /// Keeps every VM's console log under the cap (off the async threads: it copies).
    async fn bound_consoles(self: &Arc<Self>) {
        let names: Vec<String> = self.vms.lock().await.keys().cloned().collect();
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for n in names {
                me.bound_console(&n);
            }
        })
        .await;
    }

    /// One pass of the supervisor: starts dead VMs whose backoff has passed.
    async fn supervise(&self) {
        let mut vms = self.vms.lock().await;
        let now = Instant::now();
        for m in vms.values_mut() {
            if !m.supervised || m.rec.desired == Desired::Stopped {
                continue;
            }
            let name = m.rec.spec.name.clone();
            let qmp = self.qmp_path(&name);
            if let Some(pid) = m.rec.pid.filter(|p| alive(*p, &qmp)) {
                // A share whose virtiofsd died is gone for the guest: start the VM again.
                let dead_share = m
                    .rec
                    .virtiofsd
                    .iter()
                    .enumerate()
                    .find(|(i, p)| !alive(**p, &self.share_sock(&name, *i)));
                if let Some((i, p)) = dead_share {
                    tracing::warn!(vm = %name, share = i, virtiofsd = p, "virtiofsd died: restarting the vm");
                    kill_wait(pid, &qmp);
                } else {
                    m.restart.running(now);
                    continue;
                }
            }
            if !m.restart.pending() {
                let log = tail(&self.run_dir(&name).join("qemu.log"), 500);
                self.kill_all(&mut m.rec);
                let backoff = m.restart.failed(now);
                tracing::warn!(vm = %name, ?backoff, qemu_log = %log, "vm died: restarting it");
            } else if m.restart.due(now) {
                match self.boot(m).await {
                    Ok(()) => {
                        m.rec.restarts += 1;
                        let _ = self.save(m);
                        tracing::info!(vm = %name, restarts = m.rec.restarts, "vm restarted");
                    }
                    Err(e) => {
                        tracing::warn!(vm = %name, "vm restart failed: {}", zos_runtime::error_chain(&e));
                        m.restart.failed(Instant::now());
                    }
                }
            }
        }
    }
}

impl QemuVmm {
    /// Pauses (QMP `stop`) or resumes (QMP `cont`) a VM that is not stopped, and records it.
    async fn set_desired(&self, name: &str, want: Desired) -> Result<()> {
        let inner = &self.inner;
        let mut vms = inner.vms.lock().await;
        let m = vms
            .get_mut(name)
            .ok_or_else(|| VmmError::NotFound(name.to_string()))?;
        let (command, from) = if want == Desired::Paused {
            ("stop", "running")
        } else {
            ("cont", "paused")
        };
        if m.rec.desired == Desired::Stopped {
            return Err(VmmError::State {
                name: name.to_string(),
                status: VmStatus::Stopped,
                want: from,
            });
        }
        if m.rec.pid.is_some_and(|p| alive(p, &inner.qmp_path(name))) {
            inner.qmp(name, command).await?;
        }
        m.rec.desired = want;
        inner.save(m)
    }

    /// Opens the VMM: loads the recorded VMs (not yet supervised: see
    /// [`super::Vmm::reconcile`]) and starts the supervisor. Needs a tokio runtime.
    pub fn open(cfg: VmmConfig) -> Result<QemuVmm> {
        if !zos_runtime::valid_prefix(&cfg.prefix) {
            return Err(super::invalid(
                "prefix",
                format!("{:?} is not a node prefix", cfg.prefix),
            ));
        }
        let cgroups = Cgroups::detect()?;
        let kvm = match cfg.accel {
            Accel::Auto => hardware_kvm(),
            Accel::Kvm => true,
            Accel::Tcg => false,
        };
        let dir = cfg.state_dir.join(STATE_DIR);
        let (recs, bad) = state::load_all(&dir);
        for b in bad {
            tracing::warn!("vm state not loaded: {b}");
        }
        let vms = recs
            .into_iter()
            .map(|rec| {
                let m = Machine {
                    rec,
                    supervised: false,
                    restart: Backoff::new(cfg.backoff_min, cfg.backoff_max),
                    ready: None,
                };
                (m.rec.spec.name.clone(), m)
            })
            .collect();
        let inner = Arc::new(Inner {
            cfg,
            cgroups,
            kvm,
            vms: Mutex::new(vms),
            consoles: std::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&inner);
        let supervisor = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.supervise().await;
                inner.bound_consoles().await;
            }
        });
        tracing::debug!(kvm, "vmm open");
        Ok(QemuVmm { inner, supervisor })
    }

    /// Whether VMs run with KVM (otherwise TCG).
    pub fn uses_kvm(&self) -> bool {
        self.inner.kvm
    }

    /// The QEMU arguments a spec gives (for tests and docs).
    pub fn command_line(&self, spec: &VmSpec) -> Result<Vec<String>> {
        self.inner.qemu_args(spec, false)
    }

    /// The memory limit of the VM's cgroup, bytes.
    pub fn cgroup_memory_limit(&self, name: &str) -> Option<u64> {
        self.inner.cgroups.memory_limit(&self.inner.cgroup(name))
    }

    /// The directories of the VM's cgroup.
    pub fn cgroup_dirs(&self, name: &str) -> Vec<PathBuf> {
        self.inner.cgroups.dirs(&self.inner.cgroup(name))
    }

    /// What QEMU itself says of the VM (`query-status`: `running`, `paused`, …).
    pub async fn qmp_status(&self, name: &str) -> Result<String> {
        let mut q = Qmp::connect(&self.inner.qmp_path(name))
            .await
            .map_err(|reason| VmmError::Qmp {
                name: name.to_string(),
                reason,
            })?;
        q.status().await.map_err(|reason| VmmError::Qmp {
            name: name.to_string(),
            reason,
        })
    }

    /// The VM's directory of sockets and boot files.
    pub fn run_dir_of(&self, name: &str) -> PathBuf {
        self.inner.run_dir(name)
    }

    /// The VM's state file.
    pub fn state_file_of(&self, name: &str) -> PathBuf {
        state::path(&self.inner.state_dir(), name)
    }
}

impl super::Vmm for QemuVmm {
    async fn create(&self, spec: VmSpec) -> Result<VmInfo> {
        spec.validate()?;
        spec.check_boot_files()?;
        let inner = &self.inner;
        let mut vms = inner.vms.lock().await;
        if let Some(m) = vms.get(&spec.name) {
            if m.rec.spec != spec {
                return Err(VmmError::Exists(spec.name));
            }
            return Ok(inner.info(m));
        }
        for p in [&inner.cfg.qemu] {
            if !p.is_file() {
                return Err(VmmError::Spawn {
                    program: p.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
        }
        if !spec.shares.is_empty() && !inner.cfg.virtiofsd.is_file() {
            return Err(VmmError::Spawn {
                program: inner.cfg.virtiofsd.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut m = Machine {
            rec: VmRecord {
                version: STATE_VERSION,
                spec: spec.clone(),
                desired: Desired::Running,
                pid: None,
                virtiofsd: vec![],
                restarts: 0,
            },
            supervised: true,
            restart: Backoff::new(inner.cfg.backoff_min, inner.cfg.backoff_max),
            ready: None,
        };
        // A console log of an earlier VM of the same name is not this one's.
        {
            let _held = inner.consoles.lock().unwrap_or_else(|e| e.into_inner());
            let _ = remove_console(&inner.console_log(&spec.name));
        }
        inner.save(&m)?;
        if let Err(e) = inner.boot(&mut m).await {
            inner.kill_all(&mut m.rec);
            let _ = inner.cgroups.remove(&inner.cgroup(&spec.name));
            let _ = fs::remove_dir_all(inner.run_dir(&spec.name));
            let _ = state::remove(&inner.state_dir(), &spec.name);
            return Err(e);
        }
        tracing::info!(vm = %spec.name, pid = ?m.rec.pid, kvm = inner.kvm, "vm created");
        let info = inner.info(&m);
        vms.insert(spec.name.clone(), m);
        Ok(info)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let mut vms = inner.vms.lock().await;
        let Some(mut m) = vms.remove(name) else {
            return Ok(());
        };
        inner.stop(&mut m, inner.cfg.stop_timeout).await;
        inner.cgroups.remove(&inner.cgroup(name))?;
        let run = inner.run_dir(name);
        if let Err(e) = fs::remove_dir_all(&run)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io_err("remove", &run)(e));
        }
        let log = inner.console_log(name);
        {
            let _held = inner.consoles.lock().unwrap_or_else(|e| e.into_inner());
            remove_console(&log).map_err(io_err("remove", &log))?;
        }
        state::remove(&inner.state_dir(), name)?;
        tracing::info!(vm = name, "vm deleted");
        Ok(())
    }

    async fn info(&self, name: &str) -> Result<Option<VmInfo>> {
        let vms = self.inner.vms.lock().await;
        Ok(vms.get(name).map(|m| self.inner.info(m)))
    }

    async fn list(&self) -> Result<Vec<VmInfo>> {
        let vms = self.inner.vms.lock().await;
        Ok(vms.values().map(|m| self.inner.info(m)).collect())
    }

    async fn pause(&self, name: &str) -> Result<()> {
        self.set_desired(name, Desired::Paused).await
    }

    async fn resume(&self, name: &str) -> Result<()> {
        self.set_desired(name, Desired::Running).await
    }

    async fn shutdown(&self, name: &str, timeout: Duration) -> Result<()> {
        let inner = &self.inner;
        let mut vms = inner.vms.lock().await;
        let m = vms
            .get_mut(name)
            .ok_or_else(|| VmmError::NotFound(name.to_string()))?;
        inner.stop(m, timeout).await;
        m.rec.desired = Desired::Stopped;
        inner.save(m)
    }

    async fn start(&self, name: &str) -> Result<VmInfo> {
        let inner = &self.inner;
        let mut vms = inner.vms.lock().await;
        let m = vms
            .get_mut(name)
            .ok_or_else(|| VmmError::NotFound(name.to_string()))?;
        let running = m.rec.pid.is_some_and(|p| alive(p, &inner.qmp_path(name)));
        if !running {
            m.rec.desired = Desired::Running;
            inner.boot(m).await?;
        }
        m.supervised = true;
        Ok(inner.info(m))
    }

    async fn guest_ready(&self, name: &str) -> Result<bool> {
        let inner = &self.inner;
        let (info, known) = {
            let vms = inner.vms.lock().await;
            let m = vms
                .get(name)
                .ok_or_else(|| VmmError::NotFound(name.to_string()))?;
            (inner.info(m), m.ready)
        };
        if info.status != VmStatus::Running {
            return Ok(false);
        }
        if matches!(info.spec.boot, Boot::Disk) || (known.is_some() && known == info.pid) {
            return Ok(true);
        }
        if !inner.control_ready(name).await {
            return Ok(false);
        }
        if let Some(m) = inner.vms.lock().await.get_mut(name) {
            m.ready = info.pid;
        }
        Ok(true)
    }

    async fn console(&self, name: &str, max: usize) -> Result<String> {
        let inner = &self.inner;
        if !inner.vms.lock().await.contains_key(name) {
            return Err(VmmError::NotFound(name.to_string()));
        }
        let p = inner.console_log(name);
        let b = console_tail(&p, max as u64).map_err(io_err("read", &p))?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    async fn reconcile(&self) -> Result<VmmReconcile> {
        let inner = &self.inner;
        let mut vms = inner.vms.lock().await;
        let mut report = VmmReconcile::default();
        for m in vms.values_mut() {
            let name = m.rec.spec.name.clone();
            if m.supervised {
                continue;
            }
            m.supervised = true;
            if m.rec.desired == Desired::Stopped {
                continue;
            }
            let qmp = inner.qmp_path(&name);
            if let Some(pid) = supervise::adopt(m.rec.pid, &Marker::containing(&qmp)) {
                m.restart.started();
                if m.rec.pid != Some(pid) {
                    m.rec.pid = Some(pid);
                    let _ = inner.save(m);
                }
                tracing::debug!(vm = %name, pid, "vm adopted");
                report.adopted.push(name);
                continue;
            }
            match inner.boot(m).await {
                Ok(()) => {
                    m.rec.restarts += 1;
                    let _ = inner.save(m);
                    report.restarted.push(name);
                }
                Err(e) => {
                    let e = zos_runtime::error_chain(&e);
                    tracing::warn!(vm = %name, "vm not brought back: {e}");
                    m.restart.failed(Instant::now());
                    report.failed.push(format!("{name}: {e}"));
                }
            }
        }
        if !report.adopted.is_empty() || !report.restarted.is_empty() {
            tracing::info!(
                adopted = report.adopted.len(),
                restarted = report.restarted.len(),
                "vms reconciled"
            );
        }
        Ok(report)
    }
}

/// One virtio block device per disk; without a kernel, the first disk boots.
fn disk_args(spec: &VmSpec, bus: &str, kernel_mode: bool) -> Vec<String> {
    let mut a = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        let boot = if !kernel_mode && i == 0 {
            ",bootindex=0"
        } else {
            ""
        };
        a.extend([
            "-drive".into(),
            format!("file={},if=none,id=d{i},format=raw{ro}", d.path.display()),
            "-device".into(),
            format!("virtio-blk-{bus},drive=d{i},serial={}{boot}", d.serial),
        ]);
    }
    a
}

/// One virtio NIC per tap; without a kernel, with no option ROM (the firmware does not boot
/// from the network).
fn nic_args(spec: &VmSpec, bus: &str, kernel_mode: bool) -> Vec<String> {
    let mut a = Vec::new();
    for (i, n) in spec.nics.iter().enumerate() {
        let rom = if kernel_mode { "" } else { ",romfile=" };
        a.extend([
            "-netdev".into(),
            format!("tap,id=n{i},ifname={},script=no,downscript=no", n.tap),
            "-device".into(),
            format!("virtio-net-{bus},netdev=n{i},mac={}{rom}", n.mac),
        ]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disk, Nic, Share};

    #[test]
    fn console_log_rotates_under_an_appending_writer_and_its_tail_spans_both_parts() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vm.log");
        // The writer holds the file open with O_APPEND, as QEMU's chardev does.
        let mut qemu = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let first: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        qemu.write_all(&first).unwrap();
        assert!(!rotate_console(&log, 2000).unwrap(), "under the limit");
        assert!(rotate_console(&log, 600).unwrap());
        assert_eq!(fs::read(console_old(&log)).unwrap(), &first[400..]);
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        // The writer goes on at the start of the truncated file: no hole.
        qemu.write_all(b"after").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"after");
        let tail = console_tail(&log, 8).unwrap();
        assert_eq!(tail, [&first[997..], b"after"].concat());
        assert_eq!(console_tail(&log, 3).unwrap(), b"ter");
        assert_eq!(console_tail(&log, 10_000).unwrap().len(), 605);
        // A log that grew far past the limit keeps only its tail.
        qemu.write_all(&vec![b'z'; 100_000]).unwrap();
        assert!(rotate_console(&log, 600).unwrap());
        assert_eq!(fs::metadata(console_old(&log)).unwrap().len(), 600);
        remove_console(&log).unwrap();
        assert!(!log.exists() && !console_old(&log).exists());
        assert!(!rotate_console(&log, 600).unwrap(), "no log, nothing to do");
        assert!(console_tail(&log, 10).unwrap().is_empty());
    }

    #[test]
    fn a_reused_pid_is_not_the_vm() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        // Under load the new process may not show its command line at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !alive(pid, Path::new("30")) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(alive(pid, Path::new("30")));
        assert!(!alive(pid, Path::new("/run/zos/vm/qmp.sock")));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(pid, Path::new("30")));
    }

    #[tokio::test]
    async fn command_lines() {
        if Cgroups::detect().is_err() {
            eprintln!("SKIPPED command_lines: no cgroup controllers mounted");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let mut cfg = VmmConfig::new("p1", d.path().join("s"), d.path().join("r"));
        cfg.accel = Accel::Tcg;
        let vmm = QemuVmm::open(cfg).unwrap();
        let mut spec = crate::tests::spec();
        let a = vmm.command_line(&spec).unwrap().join(" ");
        for want in [
            "-M microvm,memory-backend=mem",
            "-accel tcg",
            "-nodefaults",
            "-no-reboot",
            "-name p1zos-vm-7-1-vm",
            "tap,id=n0,ifname=t0,script=no,downscript=no",
            "virtio-net-device,netdev=n0,mac=02:00:00:00:00:01",
            "virtio-blk-device,drive=d0,serial=zd0",
            "vhost-user-fs-device,chardev=fs0,tag=vroot",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "virtconsole",
        ] {
            assert!(a.contains(want), "{want} not in {a}");
        }
        assert!(!a.contains("vhost=on"), "{a}");
        spec.boot = Boot::Disk;
        spec.disks.push(Disk {
            path: "/d/cidata.iso".into(),
            serial: "cidata".into(),
            read_only: true,
        });
        spec.shares = vec![Share {
            tag: "v0".into(),
            path: "/v".into(),
        }];
        spec.nics = vec![Nic {
            tap: "t0".into(),
            mac: "02:00:00:00:00:01".into(),
        }];
        let a = vmm.command_line(&spec).unwrap().join(" ");
        for want in [
            "-M q35,memory-backend=mem",
            "virtio-blk-pci,drive=d0,serial=zd0,bootindex=0",
            "format=raw,readonly=on",
            "virtio-blk-pci,drive=d1,serial=cidata",
            "vhost-user-fs-pci,chardev=fs0,tag=v0",
            "virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01,romfile=",
        ] {
            assert!(a.contains(want), "{want} not in {a}");
        }
        assert!(!a.contains("-kernel"), "{a}");
    }
}
