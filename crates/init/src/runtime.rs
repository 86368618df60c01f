//! A release's runtime: its flists fetched by hash, mounted by `zos-flist-mount` (which checks
//! every block against its hash), its service list read and every program to start read whole
//! through the mounts, all before anything of it runs or anything running is stopped; then
//! stacked read-only on `/usr` ([`overlay`]), or put in place of the runtime on `/usr`
//! ([`repoint`], the switch of a live upgrade).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::Signal;
use zos_runtime::error_chain;
use zos_types::release::channel::VERSION_ENV;
use zos_types::release::{Release, RuntimeFlist};

use crate::config::{Boot, RUNTIME_CACHE_BYTES};
use crate::{mounts, release, supervise};

/// Why a runtime was not prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// The release's content is refused (a flist's hash or size, a block's hash, a bad service
    /// list): trying again does not help.
    #[error("{0}")]
    Refused(String),
    /// Something failed on the way (the network, the mounter): worth trying again.
    #[error("{0}")]
    Failed(String),
}

/// A release's runtime, mounted.
#[derive(Debug)]
pub struct Runtime {
    pub version: String,
    pub mounts: Vec<mounts::FlistMount>,
    /// The layers of `/usr`, top first: the flists' `usr` (later flists above earlier ones),
    /// then the initramfs's own `/usr` (its modules).
    pub layers: Vec<PathBuf>,
    /// The services it runs.
    pub services: Vec<supervise::Service>,
}

/// Fetches and mounts the runtime flists of `r` under `mnt` and checks what will run (see the
/// module doc). Anything refused or broken leaves nothing mounted.
pub fn prepare(
    cfg: &Boot,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    grid: &str,
    r: &Release,
    mnt: &Path,
) -> Result<Runtime, PrepareError> {
    use PrepareError::Refused;
    let base = cfg.runtime_dir.as_path();
    let mounter = mounter(cfg, grid)?;
    let mut runtime = Runtime {
        version: r.version.clone(),
        mounts: Vec::new(),
        layers: Vec::new(),
        services: Vec::new(),
    };
    let result = (|| {
        for f in &r.flists {
            let m = fetch_and_mount(rt, client, grid, &mounter, base, f, &mnt.join(&f.name))?;
            tracing::info!(flist = %f.name, sha256 = %f.sha256, version = %r.version, "runtime flist mounted");
            runtime.mounts.push(m);
        }
        runtime.layers = runtime
            .mounts
            .iter()
            .rev()
            .map(|m| m.mountpoint.join("usr"))
            .collect();
        let list = resolve(&runtime.layers, &cfg.usr, &cfg.services());
        runtime.services = match std::fs::read(&list) {
            Ok(json) => supervise::parse_list(&json)
                .map_err(|e| Refused(format!("{}: {e}", list.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::config::default_services(&cfg.usr)
            }
            Err(e) => {
                return Err(Refused(format!(
                    "cannot read the service list {}: {e}",
                    list.display()
                )));
            }
        };
        // Each service is told which release it belongs to (zosd reports it as its version),
        // and gets what this node adds to every release (a namespace node's settings).
        for s in &mut runtime.services {
            if let Some(args) = cfg.service_args.get(&s.name) {
                s.exec.extend(args.iter().cloned());
            }
            for (k, v) in &cfg.service_env {
                s.env.entry(k.clone()).or_insert_with(|| v.clone());
            }
            s.env.insert(VERSION_ENV.to_string(), r.version.clone());
        }
        // Every program to start is read whole through the mount first: a block that fails
        // its hash is found here, before anything of the release runs.
        for s in &runtime.services {
            let program = resolve(&runtime.layers, &cfg.usr, Path::new(&s.exec[0]));
            mounts::read_through(&program).map_err(|e| {
                Refused(format!("runtime check failed for service {}: {e}", s.name))
            })?;
        }
        runtime.layers.push(cfg.usr.clone());
        Ok(())
    })();
    match result {
        Ok(()) => Ok(runtime),
        Err(e) => {
            unmount(&runtime);
            Err(e)
        }
    }
}

/// Fetches the flist `f` by hash (refused when its hash or size is not the manifest's) and
/// mounts it at `at`, every block checked against its hash as it is read.
fn fetch_and_mount(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    grid: &str,
    mounter: &mounts::FlistMounter,
    base: &Path,
    f: &RuntimeFlist,
    at: &Path,
) -> Result<mounts::FlistMount, PrepareError> {
    use PrepareError::{Failed, Refused};
    let file = rt
        .block_on(release::fetch_flist(client, grid, f, &base.join("flists")))
        .map_err(|e| match e {
            release::Error::FlistHash { .. } | release::Error::FlistSize { .. } => {
                Refused(error_chain(&e))
            }
            e => Failed(error_chain(&e)),
        })?;
    mounts::mount_flist(mounter, &f.name, &file, at).map_err(Failed)
}

/// Mounts a release's debug flist at `<runtime dir>/debug` (outside `/usr`: nothing of it is
/// on the runtime's paths), fetched and checked like the runtime flists; answers its `bin/sh`,
/// read whole through the mount (every block checked) before it runs.
pub fn mount_debug(
    cfg: &Boot,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    grid: &str,
    f: &RuntimeFlist,
) -> Result<(mounts::FlistMount, PathBuf), PrepareError> {
    let mounter = mounter(cfg, grid)?;
    let at = cfg.runtime_dir.join("debug");
    let m = fetch_and_mount(rt, client, grid, &mounter, &cfg.runtime_dir, f, &at)?;
    let sh = at.join("bin/sh");
    if let Err(e) = mounts::read_through(&sh) {
        let _ = umount2(&at, MntFlags::MNT_DETACH);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid), Signal::SIGTERM);
        return Err(PrepareError::Refused(format!(
            "the debug flist {} has no usable bin/sh: {e}",
            f.sha256
        )));
    }
    Ok((m, sh))
}

/// The flist mounter of the initramfs, reading blocks from the grid's hub.
fn mounter(cfg: &Boot, grid: &str) -> Result<mounts::FlistMounter, PrepareError> {
    use PrepareError::Failed;
    let base = cfg.runtime_dir.as_path();
    let binary = cfg
        .mounters
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "the initramfs has no flist mounter ({}): the node image must carry it",
                cfg.mounters
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        })
        .map_err(Failed)?;
    Ok(mounts::FlistMounter {
        binary,
        cache: base.join("cache"),
        cache_bytes: RUNTIME_CACHE_BYTES,
        stores: vec![release::hub_blocks_url(grid)],
        ready_timeout: Duration::from_secs(60),
    })
}

/// Where `path` (a path under `usr`) is in the topmost flist layer that has it; `path` itself
/// when it is not under `usr` or no flist layer has it.
fn resolve(layers: &[PathBuf], usr: &Path, path: &Path) -> PathBuf {
    let Ok(rel) = path.strip_prefix(usr) else {
        return path.to_owned();
    };
    layers
        .iter()
        .map(|l| l.join(rel))
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or_else(|| path.to_owned())
}

/// The layers of a runtime's `/usr`, by version.
#[derive(Debug, Clone)]
pub struct Layers {
    pub version: String,
    pub layers: Vec<PathBuf>,
}

impl Layers {
    pub fn of(r: &Runtime) -> Self {
        Self {
            version: r.version.clone(),
            layers: r.layers.clone(),
        }
    }
}

/// Stacks `runtime` read-only on `usr`.
pub fn overlay(runtime: &Runtime, usr: &Path) -> Result<(), String> {
    mounts::overlay_ro(&runtime.layers, usr)
}

/// Puts `to` on `usr` in place of `from`: the overlay of `from` is detached (programs started
/// from it keep their files: its flist mounts stay) and `to`'s is mounted. When `to` cannot
/// be mounted, `from` is put back and the error answered.
pub fn repoint(usr: &Path, from: &Layers, to: &Layers) -> Result<(), String> {
    umount2(usr, MntFlags::MNT_DETACH).map_err(|e| {
        format!(
            "cannot detach the runtime {} from {}: {e}",
            from.version,
            usr.display()
        )
    })?;
    match mounts::overlay_ro(&to.layers, usr) {
        Ok(()) => Ok(()),
        Err(e) => {
            let back = mounts::overlay_ro(&from.layers, usr)
                .err()
                .map(|b| format!("; putting {} back failed too: {b}", from.version))
                .unwrap_or_default();
            Err(format!(
                "cannot mount the runtime {}: {e}{back}",
                to.version
            ))
        }
    }
}

/// Unmounts the flists of `runtime` and stops their mount processes: for a runtime nothing
/// was started from.
pub fn unmount(runtime: &Runtime) {
    release_lazily(runtime);
    for m in runtime.mounts.iter().rev() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid), Signal::SIGTERM);
    }
}

/// Detaches the flists of `runtime`: programs started from it keep their files, and each flist
/// is released (its mount process ends) once nothing uses it any more.
pub fn release_lazily(runtime: &Runtime) {
    for m in runtime.mounts.iter().rev() {
        let _ = umount2(&m.mountpoint, MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_the_topmost_layer_that_has_them() {
        let d = tempfile::tempdir().unwrap();
        let (top, low, usr) = (
            d.path().join("top"),
            d.path().join("low"),
            d.path().join("usr"),
        );
        for l in [&top, &low] {
            std::fs::create_dir_all(l.join("bin")).unwrap();
        }
        std::fs::write(top.join("bin/zosd"), "new").unwrap();
        std::fs::write(low.join("bin/zosd"), "old").unwrap();
        std::fs::write(low.join("bin/tool"), "t").unwrap();
        let layers = [top.clone(), low.clone()];
        assert_eq!(
            resolve(&layers, &usr, &usr.join("bin/zosd")),
            top.join("bin/zosd")
        );
        assert_eq!(
            resolve(&layers, &usr, &usr.join("bin/tool")),
            low.join("bin/tool")
        );
        assert_eq!(
            resolve(&layers, &usr, &usr.join("bin/none")),
            usr.join("bin/none")
        );
        assert_eq!(
            resolve(&layers, &usr, Path::new("/sbin/x")),
            PathBuf::from("/sbin/x")
        );
    }
}
