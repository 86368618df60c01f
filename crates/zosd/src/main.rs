//! `zosd`: the node agent binary. Parses flags, sets up logging, runs [`zosd::agent`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use zos_storage::DiskSpec;
use zosd::config::{KernelParams, NodeConfig, Overrides, RunMode};
use zosd::system::HostSystem;

/// The zos node agent. Settings come from the kernel command line (farmer_id=, runmode=, grid=);
/// flags and environment variables override them for development.
#[derive(Debug, Parser)]
#[command(name = "zosd", version)]
struct Args {
    /// File holding the kernel command line.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Farm this node belongs to (overrides farmer_id=).
    #[arg(long, env = "ZOS_FARM_ID")]
    farm_id: Option<u32>,
    /// The farmer's admission token, FARM.EXPIRES.SIGNATURE (overrides admission=).
    #[arg(long, env = "ZOS_ADMISSION")]
    admission: Option<String>,
    /// dev, qa, test or prod (overrides runmode=).
    #[arg(long, env = "ZOS_RUNMODE")]
    runmode: Option<RunMode>,
    /// Base URL of the grid (overrides grid=).
    #[arg(long, env = "ZOS_GRID")]
    grid: Option<String>,
    /// Keep the node's state here instead of on the cache that storage prepares.
    #[arg(long, env = "ZOS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A disk this node may own, PATH or PATH:ssd / PATH:hdd; repeat for more. Without any, the
    /// node owns every empty disk of the machine.
    #[arg(long = "disk", env = "ZOS_DISKS", value_delimiter = ',')]
    disks: Vec<DiskSpec>,
    /// Where storage pools are mounted.
    #[arg(long, env = "ZOS_MOUNT_ROOT", default_value = "/mnt")]
    mount_root: PathBuf,
    /// Period of uptime reports, for example 40m, 30s.
    #[arg(long, env = "ZOS_REPORT_INTERVAL", default_value = "40m", value_parser = parse_duration)]
    report_interval: Duration,
    /// Prefix of the names this node makes in global spaces (devnets: several nodes share a kernel).
    #[arg(long, env = "ZOS_PREFIX", default_value = "")]
    prefix: String,
    /// The interface public traffic leaves through, when the farmer sets a public config
    /// (overrides public_iface=).
    #[arg(long, env = "ZOS_PUBLIC_IFACE")]
    public_iface: Option<String>,
    /// URL of the flist holding the guest kernel and initramfs of container-mode VMs
    /// (overrides guest_flist=).
    #[arg(long, env = "ZOS_GUEST_FLIST")]
    guest_flist: Option<String>,
    /// A directory holding the guest kernel and initramfs instead (`scripts/build-guest.sh`).
    #[arg(long, env = "ZOS_GUEST_DIR", conflicts_with = "guest_flist")]
    guest_dir: Option<PathBuf>,
    /// The ACME directory the web gateway orders certificates from (overrides acme=; `none`
    /// for none).
    #[arg(long, env = "ZOS_ACME_DIRECTORY")]
    acme_directory: Option<String>,
    /// A root certificate (PEM) to trust for the ACME CA's HTTPS (a test CA such as pebble).
    #[arg(long, env = "ZOS_ACME_CA")]
    acme_ca: Option<PathBuf>,
    /// DNS server that says where FQDNs point, IP or IP:PORT; repeat for more (overrides dns=).
    #[arg(long = "dns", env = "ZOS_DNS", value_delimiter = ',', value_parser = zosd::config::parse_dns_server)]
    dns: Vec<std::net::SocketAddr>,
    /// How often gateway name contracts are checked again.
    #[arg(long, env = "ZOS_NAME_RECHECK", value_parser = parse_duration)]
    name_recheck: Option<Duration>,
    /// Where the local channel with zos-init (`node.json`, `health.json`, `check-release`) is
    /// written, instead of `/run/zos` (or the state directory's `run` with a prefix): a
    /// devnet's namespace node supervised by `zos-init --node-test` names its runtime directory.
    #[arg(long, env = "ZOS_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Draw the node's console screen on this terminal (read-only; Tab, arrows and 1-3 switch
    /// views, Ctrl-C stops zosd). Logs go to `--log-file` then.
    #[arg(long)]
    console: bool,
    /// Write logs to this file instead of stderr (with `--console`, `zosd.log` in the current
    /// directory unless set).
    #[arg(long, env = "ZOS_LOG_FILE")]
    log_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the period must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let errors = zos_zui::ErrorLog::new();
    init_logs(&args, errors.clone())?;

    let cmdline = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    let mut cfg = NodeConfig::resolve(
        &KernelParams::parse(&cmdline),
        &Overrides {
            farm_id: args.farm_id,
            runmode: args.runmode,
            grid: args.grid,
            admission: args.admission,
        },
        args.state_dir,
        args.report_interval,
        args.prefix,
    )
    .context("node configuration")?;
    cfg.disks = args.disks;
    cfg.mount_root = args.mount_root;
    if args.public_iface.is_some() {
        cfg.public_iface = args.public_iface;
    }
    if args.guest_flist.is_some() {
        cfg.guest_flist = args.guest_flist;
    }
    cfg.guest_dir = args.guest_dir;
    match args.acme_directory.as_deref() {
        Some("none") => cfg.acme.directory = None,
        Some(url) => cfg.acme.directory = Some(url.to_string()),
        None => {}
    }
    cfg.acme.ca = args.acme_ca;
    if !args.dns.is_empty() {
        cfg.dns = args.dns;
    }
    if let Some(every) = args.name_recheck {
        cfg.name_recheck = every;
    }
    cfg.channel_dir = args.run_dir;
    let console = args.console.then(|| zosd::console::Feed::new(&cfg, errors));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stop = CancellationToken::new();
    // The screen is drawn on a thread of its own, which restores the terminal when zosd stops.
    let screen = match &console {
        Some((_, rx)) => {
            let (rx, done) = (rx.clone(), stop.clone());
            let on_fail = stop.clone();
            Some(std::thread::spawn(move || {
                if let Err(e) = zos_zui::run(|| rx.borrow().clone(), || done.is_cancelled()) {
                    eprintln!("zosd: cannot draw the console screen: {e}");
                    on_fail.cancel();
                }
            }))
        }
        None => None,
    };
    let feed = console.map(|(feed, _)| feed);
    let run_stop = stop.clone();
    let result = rt.block_on(async move {
        let stop = run_stop;
        let on_signal = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("signal handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            on_signal.cancel();
        });
        zosd::agent::run(cfg, Arc::new(HostSystem::default()), feed, stop).await
    });
    stop.cancel();
    if let Some(t) = screen {
        let _ = t.join();
    }
    result
}

/// Logs to stderr or `--log-file` (as text or JSON lines), and into `errors` for the console
/// screen.
fn init_logs(args: &Args, errors: zos_zui::ErrorLog) -> anyhow::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let file = match (&args.log_file, args.console) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(PathBuf::from("zosd.log")),
        (None, false) => None,
    };
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let fmt: Boxed = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f));
            if args.log_json {
                layer.json().boxed()
            } else {
                layer.boxed()
            }
        }
        None => {
            let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            if args.log_json {
                layer.json().boxed()
            } else {
                layer.boxed()
            }
        }
    };
    tracing_subscriber::registry()
        .with(fmt.and_then(errors).with_filter(filter))
        .init();
    Ok(())
}
