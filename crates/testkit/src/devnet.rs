//! The devnet harness of tests: [`zos_devnet`] (re-exported here, so `zos_testkit::devnet::up`
//! and the rest keep working) plus [`DevnetGuard`], a devnet named after the test process that
//! is removed, with its directory, when dropped.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

pub use zos_devnet::*;

/// A devnet for a test: removed, with its directory, when dropped.
#[derive(Debug)]
pub struct DevnetGuard {
    pub state: DevnetState,
    _dir: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A directory removed on drop.
    #[derive(Debug)]
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl DevnetGuard {
    /// Brings up a devnet named after the test process with `nodes` nodes, using the binaries
    /// built beside the test executable.
    pub async fn up(nodes: usize, report_interval: Duration) -> anyhow::Result<Self> {
        Self::up_with(nodes, report_interval, None).await
    }

    /// As [`Self::up`], with node VMs besides.
    pub async fn up_with(
        nodes: usize,
        report_interval: Duration,
        vms: Option<VmOptions>,
    ) -> anyhow::Result<Self> {
        Self::make(nodes, report_interval, vms, None, None).await
    }

    /// As [`Self::up`], with a grid that bills ([`DevnetBilling`]).
    pub async fn up_billing(
        nodes: usize,
        report_interval: Duration,
        billing: DevnetBilling,
    ) -> anyhow::Result<Self> {
        Self::make(nodes, report_interval, None, None, Some(billing)).await
    }

    /// As [`Self::up`], with each node's zosd under zos-init from a release signed with the
    /// devnet release key ([`supervised_options`]), so the nodes upgrade live.
    pub async fn up_supervised(
        nodes: usize,
        report_interval: Duration,
        supervised: SupervisedOptions,
    ) -> anyhow::Result<Self> {
        Self::make(nodes, report_interval, None, Some(supervised), None).await
    }

    async fn make(
        nodes: usize,
        report_interval: Duration,
        vms: Option<VmOptions>,
        supervised: Option<SupervisedOptions>,
        billing: Option<DevnetBilling>,
    ) -> anyhow::Result<Self> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let bin = |b: &str| {
            crate::workspace_binary(b)
                .with_context(|| format!("{b} is not built: run `cargo build --workspace` first"))
        };
        let (grid_bin, zosd_bin) = (bin("zos-grid")?, bin("zosd")?);
        // Names are `t` and 4 base-36 digits from the process and a counter; parallel test
        // processes can still meet on one, so a name in use is skipped for the next.
        let mut last = None;
        for _ in 0..8 {
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let name = format!(
                "t{}",
                base36(std::process::id().wrapping_mul(31).wrapping_add(n * 7919))
            );
            let dir =
                std::env::temp_dir().join(format!("zos-devnet-{name}-{}", std::process::id()));
            if netns::link_exists(&format!("{name}br")) || dir.exists() {
                continue;
            }
            let opts = DevnetOptions {
                name,
                dir: dir.clone(),
                nodes,
                report_interval,
                grid_bin: grid_bin.clone(),
                zosd_bin: zosd_bin.clone(),
                wait: Duration::from_secs(60),
                disks: DiskPlan::defaults(),
                vms: vms.clone(),
                supervised: supervised.clone(),
                billing: billing.clone(),
            };
            let guard_dir = tempfile_dir::TempDir(dir);
            match up(&opts).await {
                Ok(state) => {
                    return Ok(Self {
                        state,
                        _dir: Some(guard_dir),
                    });
                }
                Err(e @ DevnetError::AlreadyUp { .. }) => last = Some(anyhow::Error::new(e)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free devnet name")))
    }
}

/// Supervised namespace nodes with the zos-init and flist mounter built beside the test
/// executable and the devnet release key ([`devnet_release_key`]).
pub fn supervised_options() -> anyhow::Result<SupervisedOptions> {
    let bin = |b: &str| {
        crate::workspace_binary(b)
            .with_context(|| format!("{b} is not built: run `cargo build --workspace` first"))
    };
    let (key, _) = devnet_release_key();
    Ok(SupervisedOptions::new(
        bin("zos-init")?,
        bin("zos-flist-mount")?,
        key,
    ))
}

/// The last 4 base-36 digits of `n`.
fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 4];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl DevnetGuard {
    /// Takes the devnet down and answers the namespaces of its nodes that are left (none when
    /// `down` removed everything the nodes made).
    pub fn down_leftovers(self) -> Vec<String> {
        let prefixes: Vec<String> = self.state.nodes.iter().map(|n| n.prefix.clone()).collect();
        drop(self);
        netns::list_netns()
            .into_iter()
            .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
            .collect()
    }
}

impl Drop for DevnetGuard {
    fn drop(&mut self) {
        if let Err(e) = down(&self.state) {
            eprintln!("devnet cleanup: {e:#}");
        }
    }
}

/// The release key devnets sign their node releases with, made once per machine in
/// `${ZOS_CACHE:-~/.cache/zos}/devnet/` (it signs runmode dev on loopback devnets only, so the
/// node image trusting it can be cached), and the release keys JSON naming it.
pub fn devnet_release_key() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("ZOS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/zos")
        })
        .join("devnet");
    std::fs::create_dir_all(&cache).expect("creating the devnet key directory");
    let (key, keys) = (cache.join("release.key"), cache.join("release-keys.json"));
    let lock = std::fs::File::create(cache.join(".lock")).expect("opening the key lock");
    lock.lock().expect("locking the devnet key");
    if !key.exists() {
        let id = zos_types::Identity::generate().expect("randomness");
        zos_client::keyfile::save_identity(&key, &id, 0o600).expect("saving the devnet key");
    }
    let id = zos_client::keyfile::load_identity(&key).expect("reading the devnet key");
    let json = serde_json::to_vec_pretty(&zos_types::release::ReleaseKeys {
        keys: vec![id.public_key()],
        threshold: 1,
    })
    .expect("release keys serialize");
    if std::fs::read(&keys).ok().as_deref() != Some(&json[..]) {
        std::fs::write(&keys, json).expect("writing the devnet release keys");
    }
    (key, keys)
}
