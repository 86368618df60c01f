//! The iPXE scripts of the grid's boot service (a farm's script) and of a farm's bootloader
//! (the script that fetches it), and the few values they may carry.
//!
//! iPXE scripts expand `${…}`, split on blanks and treat `||`, `&&`, `#` and newlines as syntax,
//! so nothing reaches a script unchecked: the farm id is a number, the runmode one of four words,
//! hashes are lowercase hex, the version is digits and dots, and the grid's URL is a
//! [`GridUrl`], whose characters exclude everything iPXE reads as syntax.

use std::fmt;

use crate::FarmId;
use crate::policy::AdmissionToken;
use crate::release::{Release, RunMode, Version, is_sha256_hex};

/// The longest grid URL a script carries.
pub const MAX_URL_LEN: usize = 200;

/// The grid's base URL as nodes reach it: `http://` or `https://`, then a host (name, IPv4, or
/// IPv6 in brackets), an optional port and an optional path, all of `A-Z a-z 0-9 . - _ : / [ ]`.
/// No trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridUrl(String);

/// Why a grid URL cannot go into a boot script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "grid URL {0:?} cannot go into a boot script: it must be http:// or https:// followed by \
     at most {MAX_URL_LEN} of A-Z a-z 0-9 . - _ : / [ ] (no query, spaces, $, # or &)"
)]
pub struct BadGridUrl(pub String);

impl GridUrl {
    pub fn parse(raw: &str) -> Result<Self, BadGridUrl> {
        let bad = || BadGridUrl(raw.chars().take(MAX_URL_LEN + 20).collect());
        let trimmed = raw.trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("http://")
            .or_else(|| trimmed.strip_prefix("https://"))
            .ok_or_else(bad)?;
        let host = rest.split('/').next().unwrap_or("");
        let ok_chars = rest.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/' | b'[' | b']')
        });
        if !ok_chars || host.is_empty() || trimmed.len() > MAX_URL_LEN || rest.contains("//") {
            return Err(bad());
        }
        Ok(Self(trimmed.to_string()))
    }

    /// The URL from a request's `Host` header (`name[:port]`), over plain HTTP.
    pub fn from_host(host: &str) -> Result<Self, BadGridUrl> {
        if host.contains('/') {
            return Err(BadGridUrl(host.chars().take(MAX_URL_LEN).collect()));
        }
        Self::parse(&format!("http://{host}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GridUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The bounds of `zos-upgrade-gate=` and `zos-upgrade-check=`, in seconds (zos-init refuses
/// anything else).
pub const UPGRADE_SECS: std::ops::RangeInclusive<u64> = 10..=86_400;
/// The longest list of extra node arguments taken (each key may come once, so a real list is
/// far shorter).
pub const MAX_NODE_ARGS_LEN: usize = 256;

/// An extra argument for a farm's nodes, beyond the farm, runmode, grid and admission token:
/// the few a bootloader or a devnet may add to the kernel command line. Nothing else is taken,
/// so a boot URL cannot slip arbitrary kernel parameters to nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeArg {
    /// `zos-debug`: a console shell, honoured by zos-init on runmode `dev` only.
    Debug,
    /// `zos-upgrade-gate=SECS`: the live upgrade's health gate.
    UpgradeGate(u64),
    /// `zos-upgrade-check=SECS`: how often the node looks for a new release.
    UpgradeCheck(u64),
}

/// Why an extra node argument is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadNodeArg {
    #[error(
        "node argument {0:?} is not one a boot script carries: only zos-debug, \
         zos-upgrade-gate=SECS and zos-upgrade-check=SECS"
    )]
    Unknown(String),
    #[error(
        "node argument {0:?}: expected whole seconds from {start} to {end}",
        start = UPGRADE_SECS.start(),
        end = UPGRADE_SECS.end()
    )]
    Seconds(String),
    #[error("the node arguments are longer than {MAX_NODE_ARGS_LEN} characters")]
    TooLong,
    #[error("node argument {0:?} is given twice")]
    Twice(String),
}

impl NodeArg {
    /// The argument's key, as on the command line.
    pub fn key(self) -> &'static str {
        match self {
            NodeArg::Debug => "zos-debug",
            NodeArg::UpgradeGate(_) => "zos-upgrade-gate",
            NodeArg::UpgradeCheck(_) => "zos-upgrade-check",
        }
    }

    /// Parses a list: words separated by commas or blanks, each key at most once.
    pub fn parse_list(raw: &str) -> Result<Vec<NodeArg>, BadNodeArg> {
        if raw.len() > MAX_NODE_ARGS_LEN {
            return Err(BadNodeArg::TooLong);
        }
        let mut out: Vec<NodeArg> = Vec::new();
        for word in raw.split([',', ' ']).filter(|w| !w.is_empty()) {
            let arg: NodeArg = word.parse()?;
            if out.iter().any(|a| a.key() == arg.key()) {
                return Err(BadNodeArg::Twice(arg.key().to_string()));
            }
            out.push(arg);
        }
        Ok(out)
    }

    /// `args` as one query value (`zos-debug,zos-upgrade-gate=120`).
    pub fn join(args: &[NodeArg]) -> String {
        args.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::str::FromStr for NodeArg {
    type Err = BadNodeArg;

    fn from_str(raw: &str) -> Result<Self, BadNodeArg> {
        let shown = || raw.chars().take(60).collect::<String>();
        let secs = |v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|n| UPGRADE_SECS.contains(n) && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| BadNodeArg::Seconds(shown()))
        };
        match raw.split_once('=') {
            None if raw == "zos-debug" => Ok(NodeArg::Debug),
            Some(("zos-upgrade-gate", v)) => Ok(NodeArg::UpgradeGate(secs(v)?)),
            Some(("zos-upgrade-check", v)) => Ok(NodeArg::UpgradeCheck(secs(v)?)),
            _ => Err(BadNodeArg::Unknown(shown())),
        }
    }
}

impl fmt::Display for NodeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeArg::Debug => f.write_str("zos-debug"),
            NodeArg::UpgradeGate(n) => write!(f, "zos-upgrade-gate={n}"),
            NodeArg::UpgradeCheck(n) => write!(f, "zos-upgrade-check={n}"),
        }
    }
}

/// The kernel command line of a farm's nodes (the contract of docs/boot.md). The last
/// `console=` is `/dev/console`, where zos-init writes: the serial port. An admission token
/// (`FARM.EXPIRES.HEX`, digits, `-`, `.` and hex only) is added for farms that admit only signed
/// nodes, then the extra node arguments, if any.
pub fn kernel_cmdline(
    farm: FarmId,
    runmode: RunMode,
    grid: &GridUrl,
    admission: Option<&AdmissionToken>,
    args: &[NodeArg],
) -> String {
    let mut line = format!("farmer_id={farm} runmode={runmode} grid={grid}");
    if let Some(token) = admission {
        line.push_str(&format!(" admission={token}"));
    }
    for a in args {
        line.push_str(&format!(" {a}"));
    }
    line.push_str(" console=tty0 console=ttyS0");
    line
}

/// Renders the script of `farm` for `release`. The release must have passed
/// [`Release::validate`] (its hashes are hex); anything else is refused here too.
pub fn render(
    farm: FarmId,
    runmode: RunMode,
    grid: &GridUrl,
    release: &Release,
    admission: Option<&AdmissionToken>,
    args: &[NodeArg],
) -> Result<String, String> {
    let version: Version = release.version().map_err(|e| e.to_string())?;
    for (what, hash) in [
        ("kernel", &release.kernel.sha256),
        ("initramfs", &release.initramfs.sha256),
    ] {
        if !is_sha256_hex(hash) {
            return Err(format!("the release's {what} hash is not hex"));
        }
    }
    let file = |sha: &str| format!("{grid}/boot/files/{sha}");
    let script = format!(
        "#!ipxe\n\
         # zos boot script of farm {farm}, runmode {runmode}, release {version}\n\
         :start\n\
         echo zos: farm {farm}, runmode {runmode}, release {version}, grid {grid}\n\
         kernel {kernel} initrd=initramfs {cmdline} || goto retry\n\
         initrd --name initramfs {initramfs} || goto retry\n\
         boot || goto retry\n\
         :retry\n\
         echo zos: booting failed, trying again in 10 seconds\n\
         sleep 10\n\
         imgfree\n\
         goto start\n",
        kernel = file(&release.kernel.sha256),
        initramfs = file(&release.initramfs.sha256),
        cmdline = kernel_cmdline(farm, runmode, grid, admission, args),
    );
    Ok(script)
}

/// The query of a farm's script URL: the admission token and the extra node arguments, each
/// only when there is one (`?admission=T&args=zos-debug,zos-upgrade-gate=120`).
pub fn script_query(admission: Option<&AdmissionToken>, args: &[NodeArg]) -> String {
    let mut parts = Vec::new();
    if let Some(t) = admission {
        parts.push(format!("admission={t}"));
    }
    if !args.is_empty() {
        parts.push(format!("args={}", NodeArg::join(args)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The script a bootloader embeds: it fetches the farm's script from the grid, and retries
/// until it gets one. With an admission token, the grid checks it and puts it on the nodes'
/// command line; so it does with the extra node arguments, after checking them.
pub fn chain_script(
    farm: FarmId,
    runmode: RunMode,
    grid: &GridUrl,
    admission: Option<&AdmissionToken>,
    args: &[NodeArg],
) -> String {
    let query = script_query(admission, args);
    format!(
        "#!ipxe\n\
         # zos bootloader of farm {farm}, runmode {runmode}\n\
         :start\n\
         echo zos: farm {farm}, runmode {runmode}: bringing up the network\n\
         dhcp || goto retry\n\
         echo zos: fetching {grid}/boot/{runmode}/farms/{farm}.ipxe\n\
         chain {grid}/boot/{runmode}/farms/{farm}.ipxe{query} || goto retry\n\
         :retry\n\
         echo zos: no boot script from the grid yet, trying again in 10 seconds\n\
         sleep 10\n\
         goto start\n"
    )
}

/// One published release as `GET /releases?runmode=R` lists it: the manifest's fields and
/// who signed it (signatures are not checked by the listing; nodes check them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSummary {
    pub release: Release,
    pub signers: Vec<crate::identity::PublicKey>,
    /// Its upgrade terms (none for a release that names none).
    #[serde(default)]
    pub terms: crate::release::terms::Terms,
}

/// The answer to `PUT /boot/files/{sha256}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredFile {
    pub sha256: String,
    pub size: u64,
    /// False when the grid had it already.
    pub stored: bool,
}

/// The answer to `PUT /releases/{runmode}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub runmode: RunMode,
    pub version: String,
    /// False when this exact release was the current one already.
    pub published: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{Artifact, RuntimeFlist};

    fn release() -> Release {
        Release {
            version: "1.2.3".into(),
            runmode: RunMode::Dev,
            created: 1,
            kernel: Artifact {
                sha256: "a".repeat(64),
                size: 10,
            },
            initramfs: Artifact {
                sha256: "b".repeat(64),
                size: 20,
            },
            flists: vec![RuntimeFlist {
                name: "zos".into(),
                sha256: "c".repeat(64),
                size: 30,
            }],
            debug: None,
        }
    }

    #[test]
    fn the_script_chains_kernel_and_initramfs_by_hash_with_the_farms_command_line() {
        let grid = GridUrl::parse("http://10.0.2.2:8080/").unwrap();
        let script = render(7, RunMode::Dev, &grid, &release(), None, &[]).unwrap();
        assert!(script.starts_with("#!ipxe\n"), "{script}");
        let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert_eq!(
            kernel,
            format!(
                "kernel http://10.0.2.2:8080/boot/files/{} initrd=initramfs farmer_id=7 \
                 runmode=dev grid=http://10.0.2.2:8080 console=tty0 console=ttyS0 || goto retry",
                "a".repeat(64)
            )
        );
        let initrd = script.lines().find(|l| l.starts_with("initrd ")).unwrap();
        assert_eq!(
            initrd,
            format!(
                "initrd --name initramfs http://10.0.2.2:8080/boot/files/{} || goto retry",
                "b".repeat(64)
            )
        );
        assert!(script.contains("\nboot || goto retry\n"));
        // Nothing expands: the only `$` would come from an interpolated value.
        assert!(!script.contains('$'));
        let prod = render(4294967295, RunMode::Prod, &grid, &release(), None, &[]).unwrap();
        assert!(prod.contains("farmer_id=4294967295 runmode=prod "));
    }

    #[test]
    fn urls_with_script_syntax_are_refused() {
        for bad in [
            "ftp://grid",
            "http://",
            "http:///x",
            "http://grid x",
            "http://grid\nshell",
            "http://${net0/ip}",
            "http://grid#x",
            "http://grid?a=1&&shell",
            "http://grid||shell",
            "http://gr\u{e9}d",
            "http://grid//x",
            "grid:8080",
        ] {
            assert!(GridUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(GridUrl::parse(&format!("http://{}", "a".repeat(MAX_URL_LEN))).is_err());
        for good in [
            "http://grid.example.com",
            "https://grid.example.com/zos",
            "http://[fd00::1]:8080",
            "http://10.0.2.2:34567",
        ] {
            assert_eq!(GridUrl::parse(good).unwrap().as_str(), good);
        }
        assert!(GridUrl::from_host("evil/x").is_err());
        assert!(GridUrl::from_host("evil$x").is_err());
        assert_eq!(
            GridUrl::from_host("127.0.0.1:80").unwrap().as_str(),
            "http://127.0.0.1:80"
        );
    }

    #[test]
    fn a_release_with_a_non_hex_hash_is_not_rendered() {
        let grid = GridUrl::parse("http://grid").unwrap();
        let mut r = release();
        r.kernel.sha256 = format!("{}${{x}}", "a".repeat(60));
        assert!(render(1, RunMode::Dev, &grid, &r, None, &[]).is_err());
        let mut r = release();
        r.version = "1.2.3 || shell".into();
        assert!(render(1, RunMode::Dev, &grid, &r, None, &[]).is_err());
    }

    #[test]
    fn the_bootloader_script_chains_the_farms_script() {
        let grid = GridUrl::parse("http://10.0.2.2:8080").unwrap();
        let s = chain_script(12, RunMode::Test, &grid, None, &[]);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("\ndhcp || goto retry\n"));
        assert!(s.contains("\nchain http://10.0.2.2:8080/boot/test/farms/12.ipxe || goto retry\n"));
        let farmer = crate::Identity::from_seed([1; 32]);
        let token = AdmissionToken::sign(&farmer, 12, 1_900_000_000);
        let s = chain_script(12, RunMode::Test, &grid, Some(&token), &[]);
        assert!(s.contains(&format!(
            "\nchain http://10.0.2.2:8080/boot/test/farms/12.ipxe?admission={token} || goto retry\n"
        )));
    }

    #[test]
    fn an_admission_token_goes_on_the_command_line_as_is() {
        let grid = GridUrl::parse("http://grid").unwrap();
        let farmer = crate::Identity::from_seed([2; 32]);
        let token = AdmissionToken::sign(&farmer, 7, 1_900_000_000);
        let script = render(7, RunMode::Prod, &grid, &release(), Some(&token), &[]).unwrap();
        let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.contains(&format!(" grid=http://grid admission={token} console=")),
            "{kernel}"
        );
        let text = token.to_string();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'-'),
            "{text}"
        );
    }

    #[test]
    fn only_the_known_node_arguments_with_bounded_seconds_are_taken() {
        let args =
            NodeArg::parse_list("zos-debug,zos-upgrade-gate=120 zos-upgrade-check=20").unwrap();
        assert_eq!(
            args,
            [
                NodeArg::Debug,
                NodeArg::UpgradeGate(120),
                NodeArg::UpgradeCheck(20)
            ]
        );
        assert_eq!(
            NodeArg::join(&args),
            "zos-debug,zos-upgrade-gate=120,zos-upgrade-check=20"
        );
        assert_eq!(NodeArg::parse_list("").unwrap(), []);
        for (bad, named) in [
            ("init=/bin/sh", "init=/bin/sh"),
            ("zos-debug,rd.break", "rd.break"),
            ("zos-debug=1", "zos-debug=1"),
            ("zos-upgrade-gate=9", "zos-upgrade-gate=9"),
            ("zos-upgrade-gate=86401", "zos-upgrade-gate=86401"),
            ("zos-upgrade-check=+20", "zos-upgrade-check=+20"),
            ("zos-upgrade-check=", "zos-upgrade-check="),
            ("zos-upgrade-check=20s", "zos-upgrade-check=20s"),
            ("${x}", "${x}"),
            ("zos-debug,zos-debug", "zos-debug"),
            (
                "zos-upgrade-gate=60,zos-upgrade-gate=70",
                "zos-upgrade-gate",
            ),
        ] {
            let e = NodeArg::parse_list(bad).unwrap_err().to_string();
            assert!(e.contains(named), "{bad}: {e}");
        }
        let long = ",".repeat(MAX_NODE_ARGS_LEN + 1);
        assert_eq!(NodeArg::parse_list(&long), Err(BadNodeArg::TooLong));
        // Bounds are inclusive.
        assert!(NodeArg::parse_list("zos-upgrade-gate=10,zos-upgrade-check=86400").is_ok());
    }

    #[test]
    fn node_arguments_go_on_the_command_line_and_in_the_chain_url() {
        let grid = GridUrl::parse("http://grid").unwrap();
        let args = [NodeArg::Debug, NodeArg::UpgradeGate(120)];
        let script = render(7, RunMode::Dev, &grid, &release(), None, &args).unwrap();
        let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.contains(" grid=http://grid zos-debug zos-upgrade-gate=120 console=tty0 "),
            "{kernel}"
        );
        let chain = chain_script(7, RunMode::Dev, &grid, None, &args);
        assert!(
            chain.contains(
                "\nchain http://grid/boot/dev/farms/7.ipxe?args=zos-debug,zos-upgrade-gate=120 || goto retry\n"
            ),
            "{chain}"
        );
        let farmer = crate::Identity::from_seed([3; 32]);
        let token = AdmissionToken::sign(&farmer, 7, 1_900_000_000);
        assert_eq!(
            script_query(Some(&token), &args),
            format!("?admission={token}&args=zos-debug,zos-upgrade-gate=120")
        );
        assert_eq!(script_query(None, &[]), "");
    }
}
