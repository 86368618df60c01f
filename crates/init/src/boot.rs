//! The boot sequence of PID 1, step by step (see the crate documentation for the order).
//!
//! Every step that depends on the outside (the network, the grid, the release) is retried with
//! backoff, saying on the console why it failed; nothing is started from a release that was
//! refused. From the first line on, SIGCHLD and the stop signals are blocked and taken with
//! `sigtimedwait` (see [`supervise`]): a power-off asked during boot stops what runs, syncs and
//! powers off.
//!
//! `zos-init --supervise SERVICES.json [--events FILE] [--backoff-ms MIN,MAX] [--grace-ms N]`
//! runs only the supervisor, as PID 1 of a PID namespace, and returns instead of powering off:
//! the mode tests run it in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::Signal;
use zos_runtime::error_chain;
use zos_runtime::supervise::Backoff;
use zos_types::release::Release;

use crate::{clock, cmdline, console, dhcp, http, modules, mounts, release, supervise};

/// The signals that ask PID 1 to power off: SIGPWR (what the power button watcher sends),
/// SIGTERM, and SIGINT (ctrl-alt-del, which the kernel sends to PID 1 once
/// [`set_cad_enabled`]`(false)` told it not to reboot at once).
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGPWR, Signal::SIGTERM, Signal::SIGINT];

/// Where the runtime lives in the root tmpfs.
pub const RUNTIME_DIR: &str = "/run/zos";
/// Where the flist mounter (`zos-flist-mount`, static or with its libraries) may be in the
/// initramfs; the first that exists is used.
pub const FLIST_MOUNTERS: [&str; 2] = ["/usr/bin/zos-flist-mount", "/usr/sbin/zos-flist-mount"];
/// The service list, in the runtime (`zos` flist); without it, [`default_services`].
pub const SERVICES: &str = "/usr/share/zos/services.json";
/// The size limit of the block cache of the runtime flists, in RAM.
pub const RUNTIME_CACHE_BYTES: u64 = 1 << 30;
/// Grace of a service after SIGTERM on power-off.
pub const GRACE: Duration = Duration::from_secs(10);

/// Runs the node (or the supervisor alone, see the module doc): never returns.
pub fn main() -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--supervise") {
        std::process::exit(supervise_only(&args[1..]));
    }
    if std::process::id() != 1 {
        eprintln!("zos-init is the node's PID 1 and runs only from the node image's initramfs");
        std::process::exit(2);
    }
    supervise::block_signals();
    let early = mounts::apply(Path::new("/"), &mounts::early());
    console::attach();
    console::init_logging();
    tracing::info!("zos-init {} starting", env!("CARGO_PKG_VERSION"));
    for (target, e) in early {
        tracing::warn!(%target, error = %e, "early mount failed");
    }
    let _ = set_cad_enabled(false);
    cgroups();
    let params = retry("kernel command line", Duration::from_secs(60), || {
        cmdline::read(Path::new(cmdline::PROC_CMDLINE)).map_err(|e| error_chain(&e))
    });
    for n in &params.notices {
        tracing::warn!("{n}");
    }
    tracing::info!(
        farm = params.farmer_id,
        runmode = %params.runmode,
        grid = %params.grid,
        debug = params.debug,
        "boot parameters"
    );
    load_modules();

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(&format!("cannot start the async runtime: {e}")),
    };
    let lease = retry("network", Duration::from_secs(5), || rt.block_on(network()));
    match rt.block_on(async {
        let (conn, h, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
        let task = tokio::spawn(conn);
        let mac = dhcp::link_mac(&h, &lease.interface)
            .await
            .map_err(|e| e.to_string());
        task.abort();
        mac
    }) {
        Ok(mac) => dhcp::keep(lease.clone(), mac),
        Err(e) => tracing::error!("the lease will not be renewed: {e}"),
    }
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
        rt.block_on(clock::sync(&client, &params.grid, &mut clock::SystemClock))
            .map_err(|e| error_chain(&e))
    });
    tracing::info!(?synced, "clock");
    let keys = retry("release keys", Duration::from_secs(60), || {
        release::load_keys(Path::new(release::KEYS_PATH)).map_err(|e| error_chain(&e))
    });
    let services = retry("runtime", Duration::from_secs(5), || {
        let r = rt
            .block_on(release::current(
                &client,
                &params.grid,
                &keys,
                params.runmode,
            ))
            .map_err(|e| error_chain(&e))?;
        tracing::info!(version = %r.version, flists = r.flists.len(), "release verified");
        runtime(&rt, &client, &params.grid, &r)
    });
    drop(rt);
    let mut services = services;
    if params.debug {
        debug_shell(&mut services);
    }
    supervise::run(
        services,
        supervise::Options {
            grace: GRACE,
            events: Some(Path::new(RUNTIME_DIR).join("services.jsonl")),
            ..supervise::Options::default()
        },
    );
    finish()
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
fn load_modules() {
    let dir = modules::kernel_dir(Path::new(modules::MODULES_ROOT));
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
async fn network() -> Result<dhcp::Lease, String> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    let task = tokio::spawn(conn);
    let r = async {
        let _ = dhcp::link_up(&h, "lo").await;
        let nics = dhcp::candidates(Path::new("/sys/class/net"));
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
                        && let Err(e) =
                            dhcp::write_resolv_conf(Path::new("/etc/resolv.conf"), &lease)
                    {
                        tracing::warn!("cannot write /etc/resolv.conf: {e}");
                    }
                    return Ok(lease);
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
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    grid: &str,
    r: &Release,
) -> Result<Vec<supervise::Service>, String> {
    let base = Path::new(RUNTIME_DIR);
    let binary = FLIST_MOUNTERS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "the initramfs has no flist mounter ({}): the node image must carry it",
                FLIST_MOUNTERS.join(" or ")
            )
        })?;
    let mounter = mounts::FlistMounter {
        binary,
        cache: base.join("cache"),
        cache_bytes: RUNTIME_CACHE_BYTES,
        stores: vec![release::hub_blocks_url(grid)],
        ready_timeout: Duration::from_secs(60),
    };
    let mut mounted: Vec<mounts::FlistMount> = Vec::new();
    let result = (|| {
        for f in &r.flists {
            let file = rt
                .block_on(release::fetch_flist(client, grid, f, &base.join("flists")))
                .map_err(|e| error_chain(&e))?;
            let m = mounts::mount_flist(&mounter, &f.name, &file, &base.join("mnt").join(&f.name))?;
            tracing::info!(flist = %f.name, sha256 = %f.sha256, "runtime flist mounted");
            mounted.push(m);
        }
        // Later flists lie above earlier ones; the initramfs's own /usr (its modules) is last.
        let mut layers: Vec<PathBuf> = mounted
            .iter()
            .rev()
            .map(|m| m.mountpoint.join("usr"))
            .collect();
        layers.push(PathBuf::from("/usr"));
        mounts::overlay_ro(&layers, Path::new("/usr"))?;
        let services = match std::fs::read(SERVICES) {
            Ok(json) => supervise::parse_list(&json).map_err(|e| format!("{SERVICES}: {e}"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => default_services(),
            Err(e) => return Err(format!("cannot read the service list {SERVICES}: {e}")),
        };
        // Every program to start is read whole through the mount first: a block that fails
        // its hash is found here, before anything of the release runs.
        for s in &services {
            mounts::read_through(Path::new(&s.exec[0]))
                .map_err(|e| format!("runtime check failed for service {}: {e}", s.name))?;
        }
        Ok(services)
    })();
    if result.is_err() {
        let _ = umount2("/usr", MntFlags::MNT_DETACH);
        for m in mounted.iter().rev() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid), Signal::SIGTERM);
            let _ = umount2(&m.mountpoint, MntFlags::MNT_DETACH);
        }
    }
    result
}

/// The services when the runtime has no list: zosd alone (it reads the kernel command line).
pub fn default_services() -> Vec<supervise::Service> {
    vec![supervise::Service {
        name: "zosd".into(),
        exec: vec!["/usr/bin/zosd".into()],
        env: Default::default(),
        log: None,
        console: false,
    }]
}

/// Adds a console shell on runmode `dev` with `zos-debug`, when the image has one.
fn debug_shell(services: &mut Vec<supervise::Service>) {
    let Some(sh) = ["/usr/bin/sh", "/bin/sh"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        tracing::warn!("zos-debug: this image has no shell; nothing to open");
        return;
    };
    tracing::warn!("zos-debug: opening a shell on the console (runmode dev)");
    services.push(supervise::Service {
        name: "debug-shell".into(),
        exec: vec![sh.into()],
        env: [("TERM".to_string(), "linux".to_string())].into(),
        log: None,
        console: true,
    });
}

/// After everything stopped: sync, unmount, power off.
pub fn finish() -> ! {
    nix::unistd::sync();
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
