//! Namespace nodes supervised by zos-init (`zos devnet up --supervised`): each node's zosd runs
//! from the devnet's signed dev release, under `zos-init --node-test` as PID 1 of the node's
//! own PID and mount namespaces, in the node's network namespace. zos-init checks the release,
//! mounts its runtime flist, starts zosd with the node's flags and upgrades it live (and rolls
//! it back) as on a node VM, so a devnet of namespace nodes can take releases.
//!
//! The release's runtime flist holds `usr/bin/zosd`; the programs zosd starts (the flist
//! mounter, boringtun, QEMU, virtiofsd) come from the build directory and the host's `PATH`,
//! as for unsupervised namespace nodes. The release's kernel and initramfs are placeholders:
//! a namespace node boots none.
//!
//! The mount namespace keeps the host's propagation: `/run/netns` is shared (as `ip netns`
//! makes it), so the namespaces zosd makes are seen, and removed, from the host, as for an
//! unsupervised node. Only `/proc` is made private first and mounted again for the node's PID
//! namespace (a remount on a shared `/proc` would reach the host's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zos_client::release::{Publish, ReleaseClient};
use zos_flist::BlockStore;
use zos_flist::hub::HubClient;
use zos_init::boot::{Boot, NodeTest};
use zos_init::config::UpgradeSettings;
use zos_runtime::supervise;
use zos_types::release::RunMode;

use crate::error::{DevnetError, Result};
use crate::process::spawn_detached;
use crate::state::{DevnetNode, DevnetState, SupervisedOptions};

/// The name of the runtime flist holding zosd in a supervised devnet's releases.
pub const RUNTIME_FLIST: &str = "zos";

/// Publishes zosd (the devnet's `zosd_bin`) as dev release `version` (by default the next
/// patch), with `extra` (a directory packed as one more runtime flist, stacked over zosd's:
/// its `usr` shadows it) when given. A live upgrade test publishes the same zosd under a new
/// version for a good release, and a broken `usr/bin/zosd` on top for a bad one. Answers the
/// version published.
pub async fn publish_runtime(
    state: &DevnetState,
    opts: &SupervisedOptions,
    version: Option<&str>,
    extra: Option<&Path>,
) -> Result<String> {
    let hub = HubClient::new(&state.grid_url)
        .map_err(DevnetError::hub("connecting to the hub of"))?
        .with_auth(state.farmer()?, state.farmer_twin);
    let remote: Arc<dyn BlockStore> = Arc::new(
        hub.block_store()
            .map_err(DevnetError::hub("opening the block store of"))?,
    );
    let work = crate::vms::release_dir(state);
    let src = work.join("runtime");
    let bin = src.join("usr/bin");
    std::fs::create_dir_all(&bin).map_err(DevnetError::io("creating", &bin))?;
    let zosd = bin.join("zosd");
    let _ = std::fs::remove_file(&zosd);
    // A hard link when the build directory is on the same file system (zosd is large).
    std::fs::hard_link(&state.zosd_bin, &zosd)
        .or_else(|_| std::fs::copy(&state.zosd_bin, &zosd).map(drop))
        .map_err(DevnetError::io("copying zosd to", &zosd))?;
    let mut specs = vec![crate::vms::push_dir(state, &hub, &remote, &src, RUNTIME_FLIST).await?];
    if let Some(dir) = extra {
        specs.push(crate::vms::push_dir(state, &hub, &remote, dir, crate::vms::EXTRA_FLIST).await?);
    }
    // Placeholders: a release names a kernel and an initramfs, a namespace node boots neither.
    let (kernel, initramfs) = (work.join("kernel"), work.join("initramfs"));
    for f in [&kernel, &initramfs] {
        std::fs::write(f, b"namespace nodes boot no kernel\n")
            .map_err(DevnetError::io("writing", f))?;
    }
    let key = zos_client::keyfile::load_identity(&opts.release_key)?;
    let published = ReleaseClient::new(&state.grid_url)?
        .publish(
            &Publish {
                runmode: RunMode::Dev,
                kernel: &kernel,
                initramfs: &initramfs,
                flists: &specs,
                debug: None,
                keys: std::slice::from_ref(&key),
                version: version.map(str::to_string),
            },
            &|u| tracing::debug!(?u, "boot file"),
        )
        .await
        .map_err(|e| DevnetError::Publish(e.to_string()))?;
    Ok(published.version)
}

/// Writes `node`'s `zos-init --node-test` configuration: the devnet's grid and release keys,
/// its runtime directory and `/usr` in its state directory, and its zosd's flags (`zosd_args`,
/// with the channel written where zos-init reads it).
pub(crate) fn write_config(
    state: &DevnetState,
    opts: &SupervisedOptions,
    node: &DevnetNode,
    mut zosd_args: Vec<String>,
) -> Result<()> {
    let keys = state
        .release_keys
        .clone()
        .ok_or(DevnetError::NoReleaseKeys)?;
    let (run, usr) = (node.run_dir(), node.state_dir.join("usr"));
    for d in [&run, &usr] {
        std::fs::create_dir_all(d).map_err(DevnetError::io("creating", d))?;
    }
    zosd_args.push("--run-dir".into());
    zosd_args.push(run.display().to_string());
    // zosd finds its helper programs beside itself, else on PATH: the build directory first,
    // then what this process has (boringtun, virtiofsd may live in ~/.cargo/bin).
    let build = state
        .zosd_bin
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let path = match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{build}:{p}"),
        _ => format!("{build}:{}", zos_init::supervise::DEFAULT_PATH),
    };
    let cfg = NodeTest {
        boot: Boot {
            cmdline: PathBuf::from("/dev/null"),
            keys,
            modules_root: None,
            system: false,
            set_clock: false,
            runtime_dir: run,
            usr,
            mounters: vec![opts.mounter.clone()],
            resolv_conf: node.state_dir.join("resolv.conf"),
            sys_class_net: PathBuf::from("/sys/class/net"),
            interfaces: Vec::new(),
            power_off: false,
            power_button: false,
            grace_ms: 10_000,
            upgrade: UpgradeSettings {
                check_secs: opts.check_secs,
                gate_secs: opts.gate_secs,
            },
            service_args: BTreeMap::from([("zosd".to_string(), zosd_args)]),
            service_env: BTreeMap::from([("PATH".to_string(), path)]),
        },
        grid: state.grid_node_url.clone(),
        runmode: RunMode::Dev,
    };
    let json = serde_json::to_vec_pretty(&cfg).expect("a node test configuration serializes");
    let file = node.init_config();
    std::fs::write(&file, json).map_err(DevnetError::io("writing", &file))
}

/// Starts `node`'s zos-init in its network namespace, as PID 1 of new PID and mount
/// namespaces; answers zos-init's PID (as the host sees it).
pub(crate) fn start(
    state: &DevnetState,
    opts: &SupervisedOptions,
    node: &DevnetNode,
) -> Result<i32> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", node.netns))
        .args(["--", "unshare", "--pid", "--fork", "--mount"])
        .args(["--propagation", "unchanged", "--", "sh", "-c"])
        .arg(r#"mount --make-private /proc && mount -t proc proc /proc && exec "$0" "$@""#)
        .arg(&opts.init_bin)
        .arg("--node-test")
        .arg(node.init_config());
    let outer = spawn_detached(cmd, &node.log)?;
    // nsenter becomes unshare, whose one child becomes zos-init once the shell has mounted
    // /proc.
    let marker = state.node_marker(node);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
            .unwrap_or_default();
        let init = children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| supervise::alive(*p, &marker));
        if let Some(pid) = init {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(DevnetError::InitDidNotStart {
        index: node.index,
        log: node.log.clone(),
    })
}

/// The node key of a supervised node: on a pool mounted in its zos-init's mount namespace
/// (seen through `/proc/PID/root`, whether or not the mount reached the host's).
pub(crate) fn key_file(node: &DevnetNode) -> Option<PathBuf> {
    let root = PathBuf::from(format!("/proc/{}/root", node.pid));
    let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", node.pid)).ok()?;
    zos_runtime::mounts::parse(&info)
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&node.mount_root))
        .map(|m| {
            let inner = m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point);
            root.join(inner).join("zos-cache/identity/node.key")
        })
        .find(|p| p.exists())
}
