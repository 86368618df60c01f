//! `zos flist`: pack, convert, inspect, mount, push and list flists.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{ArgGroup, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use zos_flist::hub::{FlistInfo, HubClient, check_name, fetch_flist, sha256_hex};
use zos_flist::inspect::{EntryInfo, Inspection};
use zos_flist::pack::{PackOptions, Phase, Progress, Source, pack};
use zos_flist::{BlockStore, Kind};
use zos_types::capacity::{human_bytes, parse_bytes};

use crate::global::{Global, grid_url, signed_client};
use crate::output::outln;
use crate::output::{self, Table, fields};

#[derive(Debug, Subcommand)]
pub enum FlistCmd {
    /// Pack a directory or a tarball (plain or gzip) into a flist, uploading only the blocks the
    /// store lacks.
    #[command(group(ArgGroup::new("to").required(true).args(["store", "hub"])))]
    Pack {
        /// The directory or tarball.
        source: PathBuf,
        /// The flist file to write. (Here `-o/--output` names this file, not the output format:
        /// use --json for a summary scripts read.)
        #[arg(short, long, id = "output", value_hint = clap::ValueHint::FilePath)]
        output: String,
        /// Block store URL: dir:///path, http(s)://… (an rfs or hub block URL), s3://….
        #[arg(long)]
        store: Option<String>,
        /// Upload the blocks to the grid's hub, signed as your twin.
        #[arg(long)]
        hub: bool,
        /// A tag to write, KEY=VALUE (repeatable), e.g. --tag version=1.2.
        #[arg(long = "tag", value_parser = tag)]
        tags: Vec<(String, String)>,
    },
    /// Convert a legacy 0-fs flist (`.flist`) and its blocks into an FL flist: every block is
    /// read from the legacy store, checked against its hash, and written as FL blocks to the
    /// store, uploading only the ones it lacks.
    #[command(group(ArgGroup::new("to").required(true).args(["store", "hub"])))]
    Convert {
        /// The legacy flist (a tar.gz holding flistdb.sqlite3).
        flist: PathBuf,
        /// The FL flist file to write. (Here `-o/--output` names this file, not the output
        /// format: use --json for a summary scripts read.)
        #[arg(short, long, id = "output", value_hint = clap::ValueHint::FilePath)]
        output: String,
        /// Block store to write the FL blocks to, as for pack: dir:///path, http(s)://…, s3://….
        #[arg(long)]
        store: Option<String>,
        /// Upload the FL blocks to the grid's hub, signed as your twin.
        #[arg(long)]
        hub: bool,
        /// Read the legacy blocks from this store instead of the one the flist names:
        /// redis://[:password@]host:port[/namespace] or zdb://….
        #[arg(long)]
        from: Option<String>,
        /// A tag to add, KEY=VALUE (repeatable); the flist's own tags are kept.
        #[arg(long = "tag", value_parser = tag)]
        tags: Vec<(String, String)>,
    },
    /// Show what a flist holds: tags, routes, the tree with sizes, totals. Reads FL flists
    /// (`.fl`) and legacy 0-fs flists (`.flist`).
    Inspect {
        /// The flist file (`.fl` or `.flist`; told apart by content).
        flist: PathBuf,
    },
    /// Mount a flist read-only (or writable with --rw-dir) until Ctrl-C, or in the background.
    Mount {
        /// The flist file, or an http(s) URL of one (a hub's flists/… URL).
        flist: String,
        /// Where to mount it.
        dir: PathBuf,
        /// Read blocks from this store instead of the flist's routes: dir://, http(s)://, s3://,
        /// or for a legacy .flist its 0-db, redis://host:port[/namespace].
        #[arg(long, conflicts_with = "hub")]
        store: Option<String>,
        /// Read blocks from the grid's hub instead of the flist's routes.
        #[arg(long)]
        hub: bool,
        /// Block cache directory (default: ~/.cache/zos/flist/cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Cache size limit, e.g. 2G.
        #[arg(long, default_value = "10G", value_parser = size)]
        cache_size: u64,
        /// Keep changes in this directory (an overlay over the flist).
        #[arg(long)]
        rw_dir: Option<PathBuf>,
        /// Run the mount as its own process (zos-flist-mount) and return; stop it with
        /// `kill PID` or `umount DIR`.
        #[arg(long)]
        background: bool,
    },
    /// Publish a flist on the grid's hub as your twin (its blocks must be there: pack --hub).
    Push {
        /// The flist file.
        flist: PathBuf,
        /// The name on the hub (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Replace the content of an existing name (the old content stays reachable by hash).
        #[arg(long)]
        replace: bool,
    },
    /// List a twin's flists on the hub (default: yours).
    List {
        #[arg(long)]
        twin: Option<u32>,
    },
}

fn tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn size(s: &str) -> Result<u64, String> {
    parse_bytes(s).ok_or_else(|| format!("{s:?} is not a size like 512M or 10G"))
}

pub async fn run(cmd: FlistCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        FlistCmd::Pack {
            source,
            output,
            store,
            hub,
            tags,
        } => pack_cmd(&source, Path::new(&output), store, hub, tags, g).await,
        FlistCmd::Convert {
            flist,
            output,
            store,
            hub,
            from,
            tags,
        } => {
            let c = ConvertArgs {
                flist,
                output: PathBuf::from(output),
                store,
                hub,
                from,
                tags,
            };
            convert_cmd(c, g).await
        }
        FlistCmd::Inspect { flist } => inspect_cmd(&flist, g),
        FlistCmd::Mount {
            flist,
            dir,
            store,
            hub,
            cache,
            cache_size,
            rw_dir,
            background,
        } => {
            let m = MountArgs {
                flist,
                dir,
                store,
                hub,
                cache,
                cache_size,
                rw_dir,
                background,
            };
            mount_cmd(m, g).await
        }
        FlistCmd::Push {
            flist,
            name,
            replace,
        } => push_cmd(&flist, name, replace, g).await,
        FlistCmd::List { twin } => list_cmd(twin, g).await,
    }
}

/// A hub client signing as the user's twin.
async fn signed_hub(g: &Global) -> anyhow::Result<HubClient> {
    let c = signed_client(g).await?;
    let identity = c.identity().context("no key loaded")?.clone();
    let twin = c.twin_id().context("no twin")?;
    Ok(HubClient::new(&grid_url(g)?)?.with_auth(identity, twin))
}

fn progress_bar(g: &Global) -> ProgressBar {
    if g.structured() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix:<9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn pack_cmd(
    source: &Path,
    output: &Path,
    store_url: Option<String>,
    hub: bool,
    tags: Vec<(String, String)>,
    g: &Global,
) -> anyhow::Result<()> {
    if !source.exists() {
        bail!(crate::exit::Failure::new(
            crate::exit::Kind::NotFound,
            format!(
                "{} does not exist: give the directory or tarball to pack",
                source.display()
            ),
        ));
    }
    let store: Arc<dyn BlockStore> = match (store_url, hub) {
        (_, true) => Arc::new(signed_hub(g).await?.block_store()?),
        (Some(u), false) => zos_flist::store::open_url(&u)?,
        (None, false) => bail!("give --store URL or --hub"),
    };
    let bar = progress_bar(g);
    let on_progress = show_progress(&bar, "scanning", "packing");
    let started = Instant::now();
    let options = PackOptions {
        tags,
        ..PackOptions::default()
    };
    let result = pack(
        &Source::detect(source),
        output,
        store,
        &options,
        &on_progress,
    )
    .await;
    bar.finish_and_clear();
    let summary = result.with_context(|| format!("packing {}", source.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let sha256 = sha256_hex(&std::fs::read(output).context("reading the packed flist")?);
    if g.structured() {
        return output::json(&json!({
            "flist": output,
            "sha256": sha256,
            "seconds": secs,
            "progress": summary,
        }));
    }
    let mut f = vec![("flist", output.display().to_string()), ("sha256", sha256)];
    f.extend(summary_fields(&summary, secs));
    fields(&f)?;
    Ok(())
}

/// What `zos flist convert` was given.
struct ConvertArgs {
    flist: PathBuf,
    output: PathBuf,
    store: Option<String>,
    hub: bool,
    from: Option<String>,
    tags: Vec<(String, String)>,
}

async fn convert_cmd(c: ConvertArgs, g: &Global) -> anyhow::Result<()> {
    if !c.flist.exists() {
        bail!(crate::exit::Failure::new(
            crate::exit::Kind::NotFound,
            format!(
                "{} does not exist: give the legacy .flist to convert",
                c.flist.display()
            ),
        ));
    }
    let dest: Arc<dyn BlockStore> = match (c.store, c.hub) {
        (_, true) => Arc::new(signed_hub(g).await?.block_store()?),
        (Some(u), false) => zos_flist::store::open_url(&u)?,
        (None, false) => bail!("give --store URL or --hub"),
    };
    let source: Arc<dyn BlockStore> = match &c.from {
        Some(u) => zos_flist::store::open_url(u)?,
        None => {
            let path = c.flist.clone();
            let fl = tokio::task::spawn_blocking(move || zos_flist::Flist::open_any(&path))
                .await
                .context("reading the flist")?
                .with_context(|| format!("reading {}", c.flist.display()))?;
            if fl.routes().is_empty() {
                bail!(
                    "{} names no block store (no backend in its metadata): give the 0-db \
                     holding its blocks with --from redis://host:port[/namespace]",
                    c.flist.display()
                );
            }
            Arc::new(zos_flist::Router::from_routes(fl.routes())?)
        }
    };
    let bar = progress_bar(g);
    let on_progress = show_progress(&bar, "reading", "converting");
    let started = Instant::now();
    let options = PackOptions {
        tags: c.tags,
        ..PackOptions::default()
    };
    let result =
        zos_flist::convert(&c.flist, &c.output, source, dest, &options, &on_progress).await;
    bar.finish_and_clear();
    let summary = result.with_context(|| format!("converting {}", c.flist.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let sha256 = sha256_hex(&std::fs::read(&c.output).context("reading the converted flist")?);
    if g.structured() {
        return output::json(&json!({
            "flist": c.output,
            "from": c.flist,
            "sha256": sha256,
            "seconds": secs,
            "progress": summary,
        }));
    }
    let mut f = vec![
        ("flist", c.output.display().to_string()),
        ("from", c.flist.display().to_string()),
        ("sha256", sha256),
    ];
    f.extend(summary_fields(&summary, secs));
    fields(&f)?;
    Ok(())
}

/// A progress callback for `pack` and `convert` drawing on `bar`, naming the scanning and
/// uploading phases as the command calls them.
fn show_progress(
    bar: &indicatif::ProgressBar,
    scanning: &'static str,
    uploading: &'static str,
) -> impl Fn(&Progress) + Send + Sync + 'static {
    let bar = bar.clone();
    move |p: &Progress| {
        if p.bytes_total > 0 {
            bar.set_length(p.bytes_total);
        }
        bar.set_position(p.bytes_done);
        bar.set_prefix(match p.phase {
            Phase::Scanning => scanning,
            Phase::Uploading => uploading,
            Phase::Writing => "writing",
            Phase::Done => "done",
        });
        bar.set_message(format!(
            "{} blocks: {} uploaded, {} present",
            p.blocks, p.blocks_uploaded, p.blocks_present
        ));
    }
}

/// The content, blocks and time lines `pack` and `convert` end with.
fn summary_fields(summary: &Progress, secs: f64) -> [(&'static str, String); 3] {
    let rate = summary.bytes_done as f64 / secs.max(1e-6);
    [
        (
            "content",
            format!(
                "{} in {} files ({} entries)",
                human_bytes(summary.bytes_done),
                summary.files_total,
                summary.entries
            ),
        ),
        (
            "blocks",
            format!(
                "{}: {} uploaded ({}), {} already present",
                summary.blocks,
                summary.blocks_uploaded,
                human_bytes(summary.bytes_uploaded),
                summary.blocks_present
            ),
        ),
        (
            "time",
            format!("{secs:.2} s ({}/s)", human_bytes(rate as u64)),
        ),
    ]
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "dir",
        Kind::File => "file",
        Kind::Symlink => "link",
        Kind::Char => "chr",
        Kind::Block => "blk",
        Kind::Fifo => "fifo",
        Kind::Socket => "sock",
    }
}

/// Lines of the tree: `├── name`, with sizes, modes and owners.
pub(crate) fn tree_lines(entries: &[EntryInfo]) -> Vec<String> {
    // last[i]: entry i is the last child of its parent (no later sibling before the parent's
    // subtree ends). Computed backwards.
    let mut last = vec![true; entries.len()];
    let mut open: Vec<bool> = Vec::new();
    for (i, e) in entries.iter().enumerate().rev() {
        if open.len() <= e.depth {
            open.resize(e.depth + 1, false);
        }
        last[i] = !open[e.depth];
        open[e.depth] = true;
        open.truncate(e.depth + 1);
    }
    let mut out = Vec::new();
    let mut ancestors_last: Vec<bool> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let name = e
            .path
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("/");
        let mut prefix = String::new();
        if e.depth > 0 {
            for d in 1..e.depth {
                prefix.push_str(if ancestors_last.get(d).copied().unwrap_or(true) {
                    "    "
                } else {
                    "│   "
                });
            }
            prefix.push_str(if last[i] { "└── " } else { "├── " });
        }
        if ancestors_last.len() <= e.depth {
            ancestors_last.resize(e.depth + 1, true);
        }
        ancestors_last[e.depth] = last[i];
        let mut label = format!("{prefix}{name}");
        match e.kind {
            Kind::Dir if e.depth > 0 => label.push('/'),
            Kind::Symlink => {
                label.push_str(" -> ");
                label.push_str(e.target.as_deref().unwrap_or("?"));
            }
            _ => {}
        }
        if let Some(t) = &e.hardlink_to {
            label.push_str(&format!(" (hard link to {t})"));
        }
        let size = match e.kind {
            Kind::File => human_bytes(e.size),
            Kind::Char | Kind::Block => e
                .device
                .map(|(a, b)| format!("{a},{b}"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        out.push(format!(
            "{:<4} {:04o} {:>11} {:>9}  {label}",
            kind_name(e.kind),
            e.perm,
            format!("{}:{}", e.uid, e.gid),
            size
        ));
    }
    out
}

fn inspect_cmd(path: &Path, g: &Global) -> anyhow::Result<()> {
    if !path.exists() {
        // Let the open fail as it does: not found.
        zos_flist::inspect(path)?;
    }
    let i: Inspection = zos_flist::inspect(path).map_err(|e| {
        crate::exit::Failure::new(
            crate::exit::Kind::Refused,
            format!(
                "{e:#}: give a flist file: an FL flist (`.fl`, made by `zos flist pack` or rfs) \
                 or a legacy 0-fs flist (`.flist`)"
            ),
        )
    })?;
    if !i.damaged.is_empty() {
        eprintln!(
            "warning: {} file(s) of this flist cannot be read (their blocks do not cover their \
             size; reading them fails with EIO, the rest mounts): {}",
            i.damaged.len(),
            i.damaged
                .iter()
                .take(10)
                .map(|d| format!("{} ({})", d.path, d.reason))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if g.structured() {
        return output::json(&i);
    }
    let t = &i.totals;
    fields(&[
        ("flist", path.display().to_string()),
        (
            "format",
            match (i.format, i.format_version) {
                (zos_flist::Format::Legacy, _) => "legacy 0-fs (.flist)".into(),
                (_, Some(v)) => format!("zos {v}"),
                (_, None) => "rfs".into(),
            },
        ),
        (
            "content",
            format!(
                "{} in {} files, {} dirs, {} links, {} hard links, {} devices, {} other",
                human_bytes(t.bytes),
                t.files,
                t.dirs,
                t.symlinks,
                t.hardlinks,
                t.devices,
                t.other
            ),
        ),
        (
            "blocks",
            format!("{} ({} distinct)", t.blocks, t.unique_blocks),
        ),
    ])?;
    for (k, v) in &i.tags {
        outln!("tag       {k} = {v}")?;
    }
    for r in &i.routes {
        outln!("route     {:02x}-{:02x} {}", r.start, r.end, r.url)?;
    }
    outln!()?;
    for line in tree_lines(&i.entries) {
        outln!("{line}")?;
    }
    Ok(())
}

#[derive(Debug)]
struct MountArgs {
    flist: String,
    dir: PathBuf,
    store: Option<String>,
    hub: bool,
    cache: Option<PathBuf>,
    cache_size: u64,
    rw_dir: Option<PathBuf>,
    background: bool,
}

/// `$XDG_CACHE_HOME/zos/flist`, or `~/.cache/zos/flist`.
fn cache_home() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set: pass --cache DIR")?)
            .join(".cache"),
    };
    Ok(base.join("zos").join("flist"))
}

fn mount_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ZOS_FLIST_MOUNT").filter(|p| !p.is_empty()) {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let beside = exe
        .parent()
        .context("no directory for this executable")?
        .join("zos-flist-mount");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("zos-flist-mount"))
        .find(|p| p.is_file())
        .context("zos-flist-mount is neither beside zos nor on PATH (set ZOS_FLIST_MOUNT)")
}

async fn mount_cmd(m: MountArgs, g: &Global) -> anyhow::Result<()> {
    let home = cache_home();
    let cache = match m.cache {
        Some(c) => c,
        None => home
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?
            .join("cache"),
    };
    let flist = if m.flist.starts_with("http://") || m.flist.starts_with("https://") {
        let dir = match &home {
            Ok(h) => h.join("flists"),
            Err(_) => cache.join("..").join("flists"),
        };
        let f = fetch_flist(&m.flist, &dir, zos_flist::hub::DEFAULT_MAX_FLIST_BYTES)
            .await
            .with_context(|| format!("downloading {}", m.flist))?;
        f.path
    } else {
        PathBuf::from(&m.flist)
    };
    // Validate here, for a clear error before anything is mounted (either format).
    zos_flist::Flist::open_any(&flist)?;
    let stores = match (m.store, m.hub) {
        (Some(s), _) => vec![s],
        (None, true) => vec![format!(
            "{}{}/blocks",
            grid_url(g)?.trim_end_matches('/'),
            zos_flist::hub::HUB_PATH
        )],
        (None, false) => Vec::new(),
    };
    if m.background {
        return mount_background(&flist, &m.dir, &cache, m.cache_size, &stores, m.rw_dir, g).await;
    }
    let config = zos_flist::serve::ServeConfig {
        flist,
        mountpoint: m.dir.clone(),
        cache_dir: cache,
        cache_bytes: m.cache_size,
        stores,
        rw_dir: m.rw_dir,
        options: zos_flist::mount::MountOptions::default(),
    };
    eprintln!(
        "mounting at {} until Ctrl-C (or SIGTERM, or umount)",
        m.dir.display()
    );
    // The mount runs its own runtime: give it a plain thread.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(zos_flist::serve::serve(config));
    });
    rx.await.context("the mount thread ended abnormally")??;
    Ok(())
}

async fn mount_background(
    flist: &Path,
    dir: &Path,
    cache: &Path,
    cache_size: u64,
    stores: &[String],
    rw_dir: Option<PathBuf>,
    g: &Global,
) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let binary = mount_binary()?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let (flist, dir, cache) = (abs(flist), abs(dir), abs(cache));
    let logs = cache_home()
        .unwrap_or_else(|_| cache.join(".."))
        .join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log = logs.join(format!(
        "mount-{}.log",
        dir.display()
            .to_string()
            .trim_matches('/')
            .replace('/', "_")
    ));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.arg("--flist")
        .arg(&flist)
        .arg("--cache")
        .arg(&cache)
        .arg("--cache-size")
        .arg(cache_size.to_string());
    for s in stores {
        cmd.arg("--store").arg(s);
    }
    if let Some(rw) = &rw_dir {
        cmd.arg("--rw-dir").arg(abs(rw));
    }
    cmd.arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().unwrap_or(0);
    let stdout = child
        .stdout
        .take()
        .context("no stdout from the mount process")?;
    let want = format!("ready {}", dir.display());
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim_end() == want {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        let _ = child.start_kill();
        let _ = child.wait().await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        bail!(
            "the mount process did not mount {} (log {}): {}",
            dir.display(),
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    if g.structured() {
        return output::json(&json!({ "pid": pid, "mountpoint": dir, "log": log }));
    }
    fields(&[
        ("mounted", dir.display().to_string()),
        ("pid", pid.to_string()),
        ("log", log.display().to_string()),
        (
            "stop with",
            format!("kill {pid}   (or umount {})", dir.display()),
        ),
    ])?;
    Ok(())
}

async fn push_cmd(
    path: &Path,
    name: Option<String>,
    replace: bool,
    g: &Global,
) -> anyhow::Result<()> {
    let name = match name {
        Some(n) => n,
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name: pass --name", path.display()))?
            .to_string(),
    };
    check_name(&name).map_err(|e| anyhow::anyhow!("{e} (pass --name)"))?;
    zos_flist::Flist::open(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let hub = signed_hub(g).await?;
    let pushed = hub.push(&name, bytes, replace).await?;
    if g.structured() {
        return output::json(&json!({
            "outcome": pushed.outcome,
            "previous_sha256": pushed.previous_sha256,
            "flist": pushed.flist,
            "url": hub.url_of(&pushed.flist.path()),
            "hash_url": hub.url_of(&pushed.flist.hash_path()),
        }));
    }
    let f = &pushed.flist;
    fields(&[
        (
            "flist",
            format!("{} of twin {} ({:?})", f.name, f.twin_id, pushed.outcome).to_lowercase(),
        ),
        ("sha256", f.sha256.clone()),
        ("url", hub.url_of(&f.path())),
        ("this content", hub.url_of(&f.hash_path())),
    ])?;
    if let Some(prev) = &pushed.previous_sha256 {
        outln!("replaced content {prev} (still reachable by hash)")?;
    }
    Ok(())
}

async fn list_cmd(twin: Option<u32>, g: &Global) -> anyhow::Result<()> {
    let twin = match twin {
        Some(t) => t,
        None => signed_client(g).await?.twin_id().context("no twin")?,
    };
    let hub = HubClient::new(&grid_url(g)?)?;
    let flists: Vec<FlistInfo> = hub.list(twin).await?;
    if g.structured() {
        return output::json(&flists);
    }
    let mut t = Table::new(&["NAME", "CONTENT", "BLOCKS", "FILE", "SHA256", "UPDATED"]);
    for f in &flists {
        t.row(vec![
            f.name.clone(),
            human_bytes(f.content_bytes),
            f.blocks.to_string(),
            human_bytes(f.size),
            f.sha256[..16].to_string(),
            output::when(f.updated),
        ]);
    }
    t.print()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, depth: usize, kind: Kind) -> EntryInfo {
        EntryInfo {
            path: path.into(),
            depth,
            kind,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            target: None,
            hardlink_to: None,
            device: None,
            blocks: 0,
            damaged: None,
        }
    }

    #[test]
    fn trees_draw_their_branches() {
        let entries = vec![
            e("/", 0, Kind::Dir),
            e("/bin", 1, Kind::Dir),
            e("/bin/sh", 2, Kind::File),
            e("/bin/ls", 2, Kind::File),
            e("/etc", 1, Kind::Dir),
            e("/etc/x", 2, Kind::File),
        ];
        let lines: Vec<String> = tree_lines(&entries)
            .into_iter()
            .map(|l| l.chars().skip(33).collect::<String>())
            .collect();
        assert_eq!(
            lines,
            vec![
                "/",
                "├── bin/",
                "│   ├── sh",
                "│   └── ls",
                "└── etc/",
                "    └── x"
            ]
        );
    }

    #[test]
    fn tags_parse() {
        assert_eq!(tag("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(tag("=x").is_err());
        assert!(tag("novalue").is_err());
    }
}
