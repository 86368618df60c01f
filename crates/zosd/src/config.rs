//! The node's configuration: the kernel command line first, flags and environment over it.
//!
//! A booted node has nothing but its kernel command line (`farmer_id=`, `runmode=`, `grid=`,
//! and `admission=` when its farm admits only nodes its farmer signed).
//! Development and test hosts pass the same settings as flags or `ZOS_*` environment variables,
//! which take precedence.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use zos_types::FarmId;
use zos_types::registry::AdmissionToken;

/// Errors in the node's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("farmer_id {0:?} is not a farm id (a positive number)")]
    FarmId(String),
    #[error(transparent)]
    RunMode(#[from] zos_types::release::UnknownRunMode),
    #[error(
        "no grid URL: boot with grid=URL on the kernel command line, or pass --grid / ZOS_GRID"
    )]
    NoGrid,
    #[error("grid URL {0:?} must start with http:// or https://")]
    GridUrl(String),
    #[error(
        "no farm: boot with farmer_id=N on the kernel command line, or pass --farm-id / ZOS_FARM_ID"
    )]
    NoFarm,
    #[error("node prefix {0:?} may only hold a-z, 0-9 and '-', at most 8 characters")]
    Prefix(String),
    #[error("dns=: {0}")]
    Dns(String),
    #[error("admission: {0} (the farmer makes one with `zos farm admission FARM`)")]
    Admission(#[source] zos_types::policy::AdmissionError),
}

pub use zos_types::release::RunMode;

/// Settings from the kernel command line, parsed as the kernel does (`key=value` or bare flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelParams(HashMap<String, String>);

impl KernelParams {
    pub fn parse(cmdline: &str) -> Self {
        let mut map = HashMap::new();
        for word in split_cmdline(cmdline) {
            let (k, v) = word.split_once('=').unwrap_or((&word, ""));
            map.insert(k.to_string(), v.trim_matches('"').to_string());
        }
        Self(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

/// Splits on whitespace outside double quotes, as the kernel does.
fn split_cmdline(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Values given as flags or environment variables; each one overrides the kernel's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub farm_id: Option<FarmId>,
    pub runmode: Option<RunMode>,
    pub grid: Option<String>,
    pub admission: Option<String>,
}

/// Everything zosd needs to know to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub farm_id: FarmId,
    /// The farmer's permission to join the farm, if the node was given one (`admission=`).
    pub admission: Option<AdmissionToken>,
    pub runmode: RunMode,
    /// Base URL of the grid's registry, for example `http://10.0.0.1:8080`.
    pub grid: String,
    /// Where the node keeps its state; by default the cache that storage prepares.
    pub state_dir: Option<PathBuf>,
    /// The disks this node may own; empty means every disk of the machine (real hardware).
    pub disks: Vec<zos_storage::DiskSpec>,
    /// Where pools are mounted (`/mnt` on real hardware).
    pub mount_root: PathBuf,
    /// How often uptime is reported.
    pub report_interval: Duration,
    /// Prefix of every name this node makes in a global space (empty on real hardware).
    pub prefix: String,
    /// The interface public traffic leaves through (a second NIC), when the farmer gives the
    /// node a public config: `public_iface=` on the kernel command line.
    pub public_iface: Option<String>,
    /// Where the container-mode guest kernel and initramfs come from: a flist URL
    /// (`guest_flist=` on the kernel command line), mounted on first use.
    pub guest_flist: Option<String>,
    /// A local directory holding `vmlinux` and `initramfs.cpio` instead (development).
    pub guest_dir: Option<PathBuf>,
    /// Where the web gateway gets certificates (`acme=` on the kernel command line, `none`
    /// for none); Let's Encrypt by default, except in dev mode.
    pub acme: crate::gateway::AcmeSettings,
    /// DNS servers the node asks whether an FQDN points at it (`dns=IP[:PORT],…`); the
    /// system's resolver when empty.
    pub dns: Vec<std::net::SocketAddr>,
    /// How often gateway name contracts are checked again.
    pub name_recheck: Duration,
    /// Where the local channel with zos-init is written, when not where
    /// [`crate::health::run_dir`] puts it (a devnet's namespace node supervised by zos-init).
    pub channel_dir: Option<PathBuf>,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `IP` or `IP:PORT` (port 53 by default).
pub fn parse_dns_server(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("{s:?} is not a DNS server address (IP or IP:PORT)"))
}

impl NodeConfig {
    /// Resolves the configuration from the kernel parameters and the overrides.
    pub fn resolve(
        kernel: &KernelParams,
        overrides: &Overrides,
        state_dir: Option<PathBuf>,
        report_interval: Duration,
        prefix: String,
    ) -> Result<Self, ConfigError> {
        let farm_id = match overrides.farm_id {
            Some(id) => id,
            None => match kernel.get("farmer_id") {
                Some(v) => v.parse().map_err(|_| ConfigError::FarmId(v.to_string()))?,
                None => return Err(ConfigError::NoFarm),
            },
        };
        if farm_id == 0 {
            return Err(ConfigError::FarmId("0".into()));
        }
        let runmode = match overrides.runmode {
            Some(m) => m,
            None => kernel
                .get("runmode")
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
        };
        let grid = overrides
            .grid
            .clone()
            .or_else(|| kernel.get("grid").map(str::to_string))
            .ok_or(ConfigError::NoGrid)?;
        if !(grid.starts_with("http://") || grid.starts_with("https://")) {
            return Err(ConfigError::GridUrl(grid));
        }
        let prefix_ok = prefix.len() <= 8
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !prefix_ok {
            return Err(ConfigError::Prefix(prefix));
        }
        let admission = overrides
            .admission
            .as_deref()
            .or_else(|| kernel.get("admission"))
            .filter(|v| !v.is_empty())
            .map(str::parse)
            .transpose()
            .map_err(ConfigError::Admission)?;
        Ok(Self {
            farm_id,
            admission,
            runmode,
            grid: grid.trim_end_matches('/').to_string(),
            state_dir,
            disks: Vec::new(),
            mount_root: "/mnt".into(),
            report_interval,
            prefix,
            public_iface: kernel
                .get("public_iface")
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            guest_flist: kernel
                .get("guest_flist")
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            guest_dir: None,
            acme: crate::gateway::AcmeSettings {
                directory: match kernel.get("acme") {
                    Some("none") => None,
                    Some(url) if !url.is_empty() => Some(url.to_string()),
                    _ if runmode == RunMode::Dev => None,
                    _ => Some(LETS_ENCRYPT.to_string()),
                },
                ca: None,
            },
            dns: kernel
                .get("dns")
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(parse_dns_server)
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
                .map_err(ConfigError::Dns)?
                .unwrap_or_default(),
            name_recheck: zos_provision::gateway::NAME_RECHECK,
            channel_dir: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(cmdline: &str, o: Overrides) -> Result<NodeConfig, ConfigError> {
        NodeConfig::resolve(
            &KernelParams::parse(cmdline),
            &o,
            Some("/tmp/s".into()),
            Duration::from_secs(60),
            String::new(),
        )
    }

    #[test]
    fn kernel_command_line_is_read() {
        let c = resolve(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 farmer_id=7 runmode=test grid=\"http://g:8080/\" quiet",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.farm_id, 7);
        assert_eq!(c.runmode, RunMode::Test);
        assert_eq!(c.grid, "http://g:8080");
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            farm_id: Some(9),
            runmode: Some(RunMode::Dev),
            grid: Some("https://x".into()),
            admission: None,
        };
        let c = resolve("farmer_id=7 runmode=test grid=http://g", o).unwrap();
        assert_eq!(
            (c.farm_id, c.runmode, c.grid.as_str()),
            (9, RunMode::Dev, "https://x")
        );
    }

    #[test]
    fn admission_comes_from_the_kernel_or_the_flag() {
        let farmer = zos_types::Identity::from_seed([5; 32]);
        let t = AdmissionToken::sign(&farmer, 7, 99);
        let c = resolve(
            &format!("farmer_id=7 grid=http://g admission={t}"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.admission, Some(t));
        let o = Overrides {
            admission: Some("garbage".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            resolve(&format!("farmer_id=7 grid=http://g admission={t}"), o),
            Err(ConfigError::Admission(_))
        ));
    }

    #[test]
    fn bad_settings_are_explained() {
        assert!(matches!(
            resolve("grid=http://g", Overrides::default()),
            Err(ConfigError::NoFarm)
        ));
        assert!(matches!(
            resolve("farmer_id=x grid=http://g", Overrides::default()),
            Err(ConfigError::FarmId(_))
        ));
        assert!(matches!(
            resolve("farmer_id=0 grid=http://g", Overrides::default()),
            Err(ConfigError::FarmId(_))
        ));
        assert!(matches!(
            resolve("farmer_id=1", Overrides::default()),
            Err(ConfigError::NoGrid)
        ));
        assert!(matches!(
            resolve("farmer_id=1 grid=ftp://g", Overrides::default()),
            Err(ConfigError::GridUrl(_))
        ));
        assert!(matches!(
            resolve(
                "farmer_id=1 grid=http://g runmode=weird",
                Overrides::default()
            ),
            Err(ConfigError::RunMode(_))
        ));
        let bad_prefix = NodeConfig::resolve(
            &KernelParams::parse("farmer_id=1 grid=http://g"),
            &Overrides::default(),
            Some("/s".into()),
            Duration::from_secs(1),
            "Bad/Prefix".into(),
        );
        assert!(matches!(bad_prefix, Err(ConfigError::Prefix(_))));
    }
}
