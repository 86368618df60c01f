//! The kernel command line: what the grid's iPXE script tells zos-init (see `docs/boot.md`).
//!
//! `farmer_id=N runmode=dev|qa|test|prod grid=URL [admission=TOKEN] [console=…] [zos-debug]
//! [zos-upgrade-gate=SECS] [zos-upgrade-check=SECS]` (the last two: the live upgrade's health
//! gate and periodic check, shorter on devnets; see docs/upgrade.md).
//! Keys zos-init does not know (the kernel's own, like `quiet` or `root=`) are ignored. A known
//! key with a bad value, a required key missing, or one key given twice with different values is
//! an error naming the key: the node cannot guess which farm or grid was meant. `zos-debug` is
//! honoured only on runmode `dev`; elsewhere it is dropped with a [`BootParams::notices`] line.

use std::fmt;

use zos_types::release::RunMode;

/// Where the kernel shows its command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// The longest command line read (the kernel's own limit on x86 is 2048 bytes).
pub const MAX_CMDLINE: usize = 64 * 1024;
/// The keys that take a value.
const VALUED: [&str; 7] = [
    "farmer_id",
    "runmode",
    "grid",
    "admission",
    "console",
    "zos-upgrade-gate",
    "zos-upgrade-check",
];
/// The bounds of `zos-upgrade-gate=` and `zos-upgrade-check=`, in seconds (the grid's boot
/// service takes no others: [`zos_types::boot::NodeArg`]).
pub const UPGRADE_SECS: std::ops::RangeInclusive<u64> = zos_types::boot::UPGRADE_SECS;
/// The longest admission token accepted.
pub const MAX_TOKEN: usize = 4096;

/// What zos-init needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub farmer_id: u32,
    pub runmode: RunMode,
    /// The grid's base URL as nodes reach it, without a trailing `/`.
    pub grid: String,
    /// The farm's admission token, when the farm admits only signed nodes.
    pub admission: Option<String>,
    /// The `console=` values, in order (the kernel's; zos-init only reports them).
    pub consoles: Vec<String>,
    /// Whether the debug shell is on (only ever on runmode `dev`).
    pub debug: bool,
    /// Things to tell the console (an ignored `zos-debug`).
    pub notices: Vec<String>,
    /// The live upgrade's health gate, in seconds, when set.
    pub upgrade_gate: Option<u64>,
    /// The live upgrade's periodic check, in seconds, when set.
    pub upgrade_check: Option<u64>,
}

/// A command line zos-init cannot boot with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("the kernel command line has no {0}=; the boot script from the grid sets it")]
    Missing(&'static str),
    #[error("kernel command line {key}={value:?}: {reason}")]
    Bad {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("kernel command line gives {key} twice ({first:?} and {second:?})")]
    Conflict {
        key: &'static str,
        first: String,
        second: String,
    },
    #[error("the kernel command line has an unterminated quote")]
    Quote,
    #[error("the kernel command line is {0} bytes, more than {MAX_CMDLINE}")]
    TooLong(usize),
}

fn bad(key: &'static str, value: &str, reason: impl fmt::Display) -> CmdlineError {
    CmdlineError::Bad {
        key,
        value: value.chars().take(120).collect(),
        reason: reason.to_string(),
    }
}

/// Splits a command line into words as the kernel does: spaces separate, double quotes group
/// (and are removed).
pub fn words(line: &str) -> Result<Vec<String>, CmdlineError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(CmdlineError::Quote);
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Checks a grid URL: http or https, a host, no credentials, query or fragment. Answers it
/// without a trailing `/`.
pub fn check_grid_url(value: &str) -> Result<String, CmdlineError> {
    let url = reqwest::Url::parse(value).map_err(|e| bad("grid", value, e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("grid", value, "expected an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("grid", value, "the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("grid", value, "credentials do not belong in the URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("grid", value, "the URL has a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn set(slot: &mut Option<String>, key: &'static str, value: &str) -> Result<(), CmdlineError> {
    match slot {
        Some(old) if old != value => Err(CmdlineError::Conflict {
            key,
            first: old.clone(),
            second: value.to_string(),
        }),
        _ => {
            *slot = Some(value.to_string());
            Ok(())
        }
    }
}

/// Parses a kernel command line.
pub fn parse(line: &str) -> Result<BootParams, CmdlineError> {
    if line.len() > MAX_CMDLINE {
        return Err(CmdlineError::TooLong(line.len()));
    }
    let (mut farmer, mut runmode, mut grid, mut admission) = (None, None, None, None);
    let (mut gate, mut check) = (None, None);
    let mut consoles = Vec::new();
    let mut debug_asked = false;
    for w in words(line)? {
        let (key, value) = match w.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (w.as_str(), None),
        };
        match (key, value) {
            ("farmer_id", Some(v)) => set(&mut farmer, "farmer_id", v)?,
            ("runmode", Some(v)) => set(&mut runmode, "runmode", v)?,
            ("grid", Some(v)) => set(&mut grid, "grid", v)?,
            ("admission", Some(v)) => set(&mut admission, "admission", v)?,
            ("console", Some(v)) => consoles.push(v.to_string()),
            ("zos-upgrade-gate", Some(v)) => set(&mut gate, "zos-upgrade-gate", v)?,
            ("zos-upgrade-check", Some(v)) => set(&mut check, "zos-upgrade-check", v)?,
            ("zos-debug", None | Some("1" | "yes" | "true")) => debug_asked = true,
            ("zos-debug", Some("0" | "no" | "false")) => debug_asked = false,
            ("zos-debug", Some(v)) => return Err(bad("zos-debug", v, "expected no value, 1 or 0")),
            (k, None) if let Some(key) = VALUED.iter().find(|v| **v == k) => {
                return Err(bad(key, "", "the key needs a value"));
            }
            _ => {}
        }
    }
    let farmer = farmer.ok_or(CmdlineError::Missing("farmer_id"))?;
    let farmer_id = match farmer.parse::<u32>() {
        Ok(n) if n > 0 && !farmer.starts_with('+') => n,
        _ => return Err(bad("farmer_id", &farmer, "expected a farm number from 1")),
    };
    let runmode_text = runmode.ok_or(CmdlineError::Missing("runmode"))?;
    let runmode: RunMode = runmode_text
        .parse()
        .map_err(|e| bad("runmode", &runmode_text, e))?;
    let grid = check_grid_url(&grid.ok_or(CmdlineError::Missing("grid"))?)?;
    if let Some(t) = &admission {
        let ok = !t.is_empty() && t.len() <= MAX_TOKEN && t.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(bad(
                "admission",
                t,
                format!("expected 1 to {MAX_TOKEN} printable characters"),
            ));
        }
    }
    let secs = |key: &'static str, v: Option<String>| -> Result<Option<u64>, CmdlineError> {
        let Some(v) = v else { return Ok(None) };
        match v.parse::<u64>() {
            Ok(n) if UPGRADE_SECS.contains(&n) && !v.starts_with('+') => Ok(Some(n)),
            _ => Err(bad(
                key,
                &v,
                format!(
                    "expected seconds from {} to {}",
                    UPGRADE_SECS.start(),
                    UPGRADE_SECS.end()
                ),
            )),
        }
    };
    let upgrade_gate = secs("zos-upgrade-gate", gate)?;
    let upgrade_check = secs("zos-upgrade-check", check)?;
    let mut notices = Vec::new();
    let debug = debug_asked && runmode == RunMode::Dev;
    if debug_asked && !debug {
        notices.push(format!(
            "zos-debug ignored: debug mode exists only on runmode dev, this node runs {runmode}"
        ));
    }
    Ok(BootParams {
        farmer_id,
        runmode,
        grid,
        admission,
        consoles,
        debug,
        notices,
        upgrade_gate,
        upgrade_check,
    })
}

/// Reads and parses `/proc/cmdline` (or another file, for tests).
pub fn read(path: &std::path::Path) -> Result<BootParams, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse(text.trim_end_matches('\n'))?)
}

/// [`read`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] CmdlineError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "farmer_id=7 runmode=prod grid=http://10.0.0.1:8080/";

    #[test]
    fn the_upgrade_times_are_read_within_bounds() {
        let p = parse(BASE).unwrap();
        assert_eq!((p.upgrade_gate, p.upgrade_check), (None, None));
        let p = parse(&format!("{BASE} zos-upgrade-gate=60 zos-upgrade-check=30")).unwrap();
        assert_eq!((p.upgrade_gate, p.upgrade_check), (Some(60), Some(30)));
        for bad in [
            "zos-upgrade-gate=5",
            "zos-upgrade-gate=99999999",
            "zos-upgrade-gate=-1",
            "zos-upgrade-gate=+60",
            "zos-upgrade-check=soon",
            "zos-upgrade-check",
        ] {
            let e = parse(&format!("{BASE} {bad}")).unwrap_err().to_string();
            assert!(e.contains("zos-upgrade-"), "{bad}: {e}");
        }
        let e = parse(&format!("{BASE} zos-upgrade-gate=60 zos-upgrade-gate=70"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn a_grid_boot_line_parses_and_kernel_keys_are_ignored() {
        let p = parse(&format!(
            "BOOT_IMAGE=/vmlinuz quiet console=tty0 {BASE} console=ttyS0,115200 admission=abc.def root=/dev/ram0"
        ))
        .unwrap();
        assert_eq!(p.farmer_id, 7);
        assert_eq!(p.runmode, RunMode::Prod);
        assert_eq!(p.grid, "http://10.0.0.1:8080");
        assert_eq!(p.admission.as_deref(), Some("abc.def"));
        assert_eq!(p.consoles, ["tty0", "ttyS0,115200"]);
        assert!(!p.debug);
        assert!(p.notices.is_empty());
    }

    #[test]
    fn debug_is_honoured_on_dev_only() {
        let dev = parse("farmer_id=1 runmode=dev grid=https://grid.example zos-debug").unwrap();
        assert!(dev.debug);
        assert!(dev.notices.is_empty());
        for mode in ["qa", "test", "prod"] {
            let p = parse(&format!(
                "farmer_id=1 runmode={mode} grid=http://g zos-debug"
            ))
            .unwrap();
            assert!(!p.debug, "{mode}");
            assert_eq!(p.notices.len(), 1, "{mode}");
            assert!(
                p.notices[0].contains("zos-debug ignored"),
                "{}",
                p.notices[0]
            );
            assert!(p.notices[0].contains(mode), "{}", p.notices[0]);
        }
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(
            words(r#"a="b c" d  "e f"g"#).unwrap(),
            ["a=b c", "d", "e fg"]
        );
        assert_eq!(words("a \"b").unwrap_err(), CmdlineError::Quote);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let cases = [
            ("runmode=prod grid=http://g", "no farmer_id="),
            ("farmer_id=1 grid=http://g", "no runmode="),
            ("farmer_id=1 runmode=prod", "no grid="),
            ("farmer_id=x runmode=prod grid=http://g", "farmer_id=\"x\""),
            ("farmer_id=0 runmode=prod grid=http://g", "farm number"),
            ("farmer_id=-3 runmode=prod grid=http://g", "farm number"),
            (
                "farmer_id=99999999999 runmode=prod grid=http://g",
                "farm number",
            ),
            (
                "farmer_id=1 runmode=staging grid=http://g",
                "not one of dev",
            ),
            ("farmer_id=1 runmode=prod grid=ftp://g", "http or https"),
            ("farmer_id=1 runmode=prod grid=not-a-url", "grid="),
            ("farmer_id=1 runmode=prod grid=http://u:p@g", "credentials"),
            ("farmer_id=1 runmode=prod grid=http://g?x=1", "query"),
            (
                "farmer_id=1 farmer_id=2 runmode=prod grid=http://g",
                "twice",
            ),
            (
                "farmer_id=1 runmode=prod grid=http://g admission=",
                "admission",
            ),
            ("farmer_id=1 runmode=prod grid", "needs a value"),
            (
                "farmer_id=1 runmode=prod grid=http://g zos-debug=maybe",
                "zos-debug",
            ),
        ];
        for (line, want) in cases {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
        // The same value twice is not a conflict.
        assert!(parse("farmer_id=1 farmer_id=1 runmode=qa grid=http://g").is_ok());
        let long = "x".repeat(MAX_CMDLINE + 1);
        assert_eq!(parse(&long).unwrap_err(), CmdlineError::TooLong(long.len()));
    }

    #[test]
    fn read_trims_the_newline() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), format!("{BASE} admission=t\n")).unwrap();
        assert_eq!(read(f.path()).unwrap().admission.as_deref(), Some("t"));
        let e = read(std::path::Path::new("/nonexistent/cmdline")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cmdline"));
    }
}
