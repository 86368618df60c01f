//! The boot sequence of PID 1, step by step (see the crate documentation for the order).
//!
//! Every step that depends on the outside (the network, the grid, the release) is retried with
//! backoff, saying on the console why it failed; nothing is started from a release that was
//! refused. From the first line on, SIGCHLD and the stop signals are blocked and taken with
//! `sigtimedwait` (see [`supervise`]): a power-off asked during boot stops what runs, syncs and
//! powers off.
//!
//! `zos-init --supervise SERVICES.json [--events FILE] [--backoff-ms MIN,MAX] [--grace-ms N]`
//! runs only the supervisor, as PID 1 of a PID namespace, and returns instead of powering off;
//! `zos-init --boot-test CONFIG.json` runs the whole sequence with the paths of a [`Boot`] and
//! without the steps that would change the host. Those are the modes tests run it in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::Signal;
use zos_runtime::error_chain;
use zos_runtime::supervise::Backoff;
use zos_types::release::root::Root;
use zos_types::release::{Release, RunMode};

use crate::{clock, cmdline, console, dhcp, http, modules, mounts, release, supervise, upgrade};

pub use crate::config::{
    Boot, FLIST_MOUNTERS, GRACE, RUNTIME_CACHE_BYTES, RUNTIME_DIR, SERVICES, default_services,
};

static POWER_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// A clock that is read but never set (tests).
struct ReadOnlyClock;

impl clock::Clock for ReadOnlyClock {
    fn now(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }
    fn set(&mut self, _: std::time::SystemTime) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the node (or the supervisor alone, or a test boot, see the module doc): never returns.
pub fn main() -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--supervise") => std::process::exit(supervise_only(&args[1..])),
        Some("--boot-test") => {
            let cfg = args
                .get(1)
                .ok_or_else(|| "usage: zos-init --boot-test CONFIG.json".to_string())
                .and_then(|p| std::fs::read(p).map_err(|e| format!("{p}: {e}")))
                .and_then(|j| serde_json::from_slice::<Boot>(&j).map_err(|e| e.to_string()));
            match cfg {
                Ok(cfg) if std::process::id() == 1 => run(&cfg),
                Ok(_) => {
                    eprintln!("zos-init --boot-test runs as PID 1 of a PID namespace");
                    std::process::exit(2)
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2)
                }
            }
        }
        Some("--node-test") => std::process::exit(node_test(&args[1..])),
        _ => {}
    }
    if std::process::id() != 1 {
        eprintln!("zos-init is the node's PID 1 and runs only from the node image's initramfs");
        std::process::exit(2);
    }
    run(&Boot::node())
}

/// The boot sequence with `cfg`.
pub fn run(cfg: &Boot) -> ! {
    POWER_OFF.store(cfg.power_off, std::sync::atomic::Ordering::SeqCst);
    supervise::block_signals();
    let early = if cfg.system {
        mounts::apply(Path::new("/"), &mounts::early())
    } else {
        Vec::new()
    };
    if cfg.system {
        console::attach();
    }
    console::init_logging();
    tracing::info!("zos-init {} starting", env!("CARGO_PKG_VERSION"));
    for (target, e) in early {
        tracing::warn!(%target, error = %e, "early mount failed");
    }
    if cfg.system {
        for (link, e) in mounts::dev_links(Path::new("/")) {
            tracing::warn!(%link, error = %e, "cannot make a /dev link");
        }
    }
    if cfg.system {
        let _ = set_cad_enabled(false);
        cgroups();
    }
    let params = retry("kernel command line", Duration::from_secs(60), || {
        cmdline::read(&cfg.cmdline).map_err(|e| error_chain(&e))
    });
    for n in &params.notices {
        tracing::warn!("{n}");
    }
    tracing::info!(
        farm = params.farmer_id,
        runmode = %params.runmode,
        grid = %params.grid,
        debug = params.debug,
        upgrade_gate = ?params.upgrade_gate,
        upgrade_check = ?params.upgrade_check,
        "boot parameters"
    );
    if let Some(root) = &cfg.modules_root {
        load_modules(root);
    }

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(&format!("cannot start the async runtime: {e}")),
    };
    let (lease, mac) = retry("network", Duration::from_secs(5), || {
        rt.block_on(network(cfg))
    });
    dhcp::keep(lease.clone(), mac);
    tracing::info!(
        interface = %lease.interface,
        address = %format!("{}/{}", lease.address, lease.prefix_len),
        router = ?lease.router,
        "network up"
    );
    let client = match http::client() {
        Ok(c) => c,
        Err(e) => fatal(&format!("cannot make an HTTP client: {e}")),
    };
    let synced = retry("clock", Duration::from_secs(2), || {
        let clock: &mut dyn clock::Clock = if cfg.set_clock {
            &mut clock::SystemClock
        } else {
            &mut ReadOnlyClock
        };
        rt.block_on(clock::sync(&client, &params.grid, clock))
            .map_err(|e| error_chain(&e))
    });
    tracing::info!(?synced, "clock");
    let mut cfg = cfg.clone();
    if let Some(g) = params.upgrade_gate {
        cfg.upgrade.gate_secs = g;
    }
    if let Some(c) = params.upgrade_check {
        cfg.upgrade.check_secs = c;
    }
    node(
        &cfg,
        &rt,
        &client,
        &params.grid,
        params.runmode,
        params.debug,
    );
    drop(rt);
    finish()
}

/// From the release on: the verified release's runtime on `/usr`, then its services
/// supervised with the upgrade agent beside them, until a stop signal.
fn node(
    cfg: &Boot,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    grid: &str,
    runmode: RunMode,
    debug: bool,
) {
    let keys = retry("release keys", Duration::from_secs(60), || {
        release::load_keys(&cfg.keys).map_err(|e| error_chain(&e))
    });
    let (current, debug_flist) = retry("runtime", Duration::from_secs(5), || {
        let r = rt
            .block_on(release::current(client, grid, &keys, runmode))
            .map_err(|e| error_chain(&e))?;
        tracing::info!(version = %r.version, flists = r.flists.len(), "release verified");
        Ok((runtime(cfg, rt, client, grid, &r)?, r.debug))
    });
    let mut services = current.services.clone();
    if debug {
        debug_shell(cfg, rt, client, grid, debug_flist.as_ref(), &mut services);
    }
    let control = match Root::initial(runmode, &keys) {
        Ok(root) => {
            match upgrade::Agent::spawn(
                cfg.clone(),
                grid.to_string(),
                root,
                current,
                cfg.upgrade.clone(),
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("{e}: this node will not upgrade live");
                    None
                }
            }
        }
        Err(e) => {
            tracing::error!(
                "the pinned release keys make no root of trust ({e}): this node will not upgrade live"
            );
            None
        }
    };
    supervise::run_with(
        services,
        supervise::Options {
            grace: Duration::from_millis(cfg.grace_ms),
            events: Some(cfg.runtime_dir.join("services.jsonl")),
            power_button: cfg.power_button,
            ..supervise::Options::default()
        },
        control,
    );
}

/// Mounts the cgroups the kernel has.
fn cgroups() {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let cg = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    match mounts::cgroup_plan(&fs, &cg) {
        Some(plan) => match mounts::apply_cgroups(Path::new("/"), &plan) {
            Ok(()) => tracing::info!(?plan, "cgroups"),
            Err(e) => tracing::error!("{e}"),
        },
        None => tracing::error!("the kernel has no cgroups: workloads will run without limits"),
    }
}

/// Calls `f` until it succeeds, saying why it failed and waiting with backoff (from
/// `min` up to 60 s) in between; a power-off request during the wait is honoured.
fn retry<T>(what: &str, min: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let mut backoff = Backoff::new(min, Duration::from_secs(60).max(min));
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                let delay = backoff.failed(Instant::now());
                tracing::error!("{what}: {e}; trying again in {}s", delay.as_secs());
                pause(delay);
            }
        }
    }
}

/// Waits `d`, reaping children; a stop signal powers off.
fn pause(d: Duration) {
    let set = supervise::handled_signals();
    let deadline = Instant::now() + d;
    loop {
        supervise::reap_orphans();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match supervise::wait_signal(&set, left) {
            Some(Signal::SIGCHLD) | None => {}
            Some(s) => {
                tracing::info!(signal = %s, "power-off requested");
                supervise::stop_everything(GRACE);
                finish();
            }
        }
    }
}

fn fatal(msg: &str) -> ! {
    tracing::error!("{msg}: cannot go on; power the node off and report this");
    loop {
        pause(Duration::from_secs(3600));
    }
}

/// Loads the modules of the initramfs (see [`modules`]).
fn load_modules(root: &Path) {
    let dir = modules::kernel_dir(root);
    let db = match modules::ModuleDb::read(&dir) {
        Ok(db) => db,
        Err(e) => {
            tracing::warn!("{}: no modules loaded", error_chain(&e));
            return;
        }
    };
    let order = modules::wanted(Path::new(modules::WANTED_LIST), &db)
        .map_err(|e| error_chain(&e))
        .and_then(|w| db.load_order(&w).map_err(|e| e.to_string()));
    match order {
        Ok(order) => {
            let r = modules::load(&dir, &order, &mut modules::Kernel);
            tracing::info!(
                loaded = r.loaded.len(),
                present = r.present.len(),
                failed = r.failed.len(),
                "kernel modules"
            );
        }
        Err(e) => tracing::error!("{e}: no modules loaded"),
    }
}

/// Brings up the wired interfaces and takes a lease on the first that gets one.
async fn network(cfg: &Boot) -> Result<(dhcp::Lease, [u8; 6]), String> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    let task = tokio::spawn(conn);
    let r = async {
        let _ = dhcp::link_up(&h, "lo").await;
        let nics = if cfg.interfaces.is_empty() {
            dhcp::candidates(&cfg.sys_class_net)
        } else {
            cfg.interfaces.clone()
        };
        if nics.is_empty() {
            return Err("no network interface (is its driver in the initramfs?)".to_string());
        }
        for nic in &nics {
            if let Err(e) = dhcp::link_up(&h, nic).await {
                tracing::warn!(interface = nic, "{e}");
            }
        }
        let mut errors = Vec::new();
        for nic in &nics {
            let mac = match dhcp::link_mac(&h, nic).await {
                Ok(m) => m,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let name = nic.clone();
            let got = tokio::task::spawn_blocking(move || {
                dhcp::obtain(&name, mac, &dhcp::Config::default())
            })
            .await
            .map_err(|e| e.to_string())?;
            match got {
                Ok(lease) => {
                    dhcp::apply(&h, &lease).await.map_err(|e| e.to_string())?;
                    if !lease.dns.is_empty()
                        && let Err(e) = dhcp::write_resolv_conf(&cfg.resolv_conf, &lease)
                    {
                        tracing::warn!("cannot write {}: {e}", cfg.resolv_conf.display());
                    }
                    return Ok((lease, mac));
                }
                Err(e) => errors.push(error_chain(&e)),
            }
        }
        Err(errors.join("; "))
    }
    .await;
    task.abort();
    r
}

/// Fetches, mounts and stacks the runtime flists of `r` and reads its service list. Anything
/// refused or broken leaves nothing mounted.
fn runtime(
    cfg: &Boot,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    grid: &str,
    r: &Release,
) -> Result<crate::runtime::Runtime, String> {
    let prepared = crate::runtime::prepare(cfg, rt, client, grid, r, &cfg.runtime_dir.join("mnt"))
        .map_err(|e| e.to_string())?;
    if let Err(e) = crate::runtime::overlay(&prepared, &cfg.usr) {
        crate::runtime::unmount(&prepared);
        return Err(e);
    }
    Ok(prepared)
}

/// Adds a console shell on runmode `dev` with `zos-debug` (the caller checked both): the
/// release's debug flist, fetched and checked like the runtime flists, mounted outside `/usr`,
/// its `sh` supervised as the console's service. Without a debug flist, or when it cannot be
/// mounted, the node runs on without a shell and says why.
fn debug_shell(
    cfg: &Boot,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    grid: &str,
    flist: Option<&zos_types::release::RuntimeFlist>,
    services: &mut Vec<supervise::Service>,
) {
    let Some(flist) = flist else {
        tracing::warn!("zos-debug: the release carries no debug flist; no shell to open");
        return;
    };
    let (mount, sh) = match crate::runtime::mount_debug(cfg, rt, client, grid, flist) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("zos-debug: {e}; no shell opened");
            return;
        }
    };
    let bin = mount.mountpoint.join("bin");
    tracing::warn!(
        sha256 = %flist.sha256,
        shell = %sh.display(),
        "zos-debug: opening a shell on the console (runmode dev)"
    );
    services.push(supervise::Service {
        name: "debug-shell".into(),
        exec: vec![sh.display().to_string()],
        env: [
            ("TERM".to_string(), "linux".to_string()),
            ("HOME".to_string(), "/".to_string()),
            (
                "PATH".to_string(),
                format!("/usr/sbin:/usr/bin:{}", bin.display()),
            ),
        ]
        .into(),
        log: None,
        console: true,
    });
}

/// After everything stopped: sync, unmount, power off.
pub fn finish() -> ! {
    nix::unistd::sync();
    if !POWER_OFF.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::info!("stopped (test boot: no power-off)");
        std::process::exit(0);
    }
    let table = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for point in table
        .lines()
        .rev()
        .filter_map(|l| l.split_whitespace().nth(1))
    {
        if !matches!(point, "/" | "/proc" | "/sys" | "/dev") {
            let _ = umount2(point, MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::sync();
    tracing::info!("powering off");
    let _ = reboot(RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The supervisor alone (see the module doc); answers the exit code.
fn supervise_only(args: &[String]) -> i32 {
    console::init_logging();
    let usage = "usage: zos-init --supervise SERVICES.json [--events FILE] [--backoff-ms MIN,MAX] [--grace-ms N]";
    let Some(list) = args.first() else {
        eprintln!("{usage}");
        return 2;
    };
    let mut options = supervise::Options {
        power_button: false,
        ..supervise::Options::default()
    };
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        let v = rest.next();
        let ms = |s: &str| s.parse::<u64>().ok().map(Duration::from_millis);
        match (a.as_str(), v) {
            ("--events", Some(v)) => options.events = Some(PathBuf::from(v)),
            ("--grace-ms", Some(v)) if ms(v).is_some() => options.grace = ms(v).unwrap_or(GRACE),
            ("--backoff-ms", Some(v)) => match v.split_once(',').map(|(a, b)| (ms(a), ms(b))) {
                Some((Some(a), Some(b))) => (options.backoff_min, options.backoff_max) = (a, b),
                _ => {
                    eprintln!("{usage}");
                    return 2;
                }
            },
            _ => {
                eprintln!("{usage}");
                return 2;
            }
        }
    }
    let services = match std::fs::read(list)
        .map_err(|e| e.to_string())
        .and_then(|j| supervise::parse_list(&j).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{list}: {e}");
            return 2;
        }
    };
    supervise::run(services, options);
    0
}

/// What `zos-init --node-test CONFIG.json` runs: a namespace node from its release on, with
/// zos-init as its supervisor (not a machine's PID 1: PID 1 of a PID and mount namespace, in
/// the host's network), the grid and runmode given instead of found by DHCP and the kernel
/// command line.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTest {
    pub boot: Boot,
    pub grid: String,
    pub runmode: RunMode,
}

/// The node from its release on, off PID 1 (see [`NodeTest`]); answers the exit code.
fn node_test(args: &[String]) -> i32 {
    let cfg = args
        .first()
        .ok_or_else(|| "usage: zos-init --node-test CONFIG.json".to_string())
        .and_then(|p| std::fs::read(p).map_err(|e| format!("{p}: {e}")))
        .and_then(|j| serde_json::from_slice::<NodeTest>(&j).map_err(|e| e.to_string()));
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    if std::process::id() != 1 {
        // Its stop sweeps every process it can see: only inside a PID namespace of its own.
        eprintln!("zos-init --node-test runs as PID 1 of a PID namespace");
        return 2;
    }
    POWER_OFF.store(false, std::sync::atomic::Ordering::SeqCst);
    supervise::block_signals();
    console::init_logging();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 2;
        }
    };
    let client = match http::client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot make an HTTP client: {e}");
            return 2;
        }
    };
    node(&cfg.boot, &rt, &client, &cfg.grid, cfg.runmode, false);
    0
}
