//! The contexts file: named grids, each with the key to use on it, kept in
//! `$XDG_CONFIG_HOME/zos/contexts.yaml` (or `~/.config/zos/contexts.yaml`), mode 0600; and the
//! context a command line selects. The `zos context` command is in `context.rs`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::exit::{Failure, Kind};
use crate::paths::config_dir;

/// One context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ctx {
    pub grid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// The contexts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Ctx>,
}

/// Where the contexts are kept.
pub fn file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("contexts.yaml"))
}

impl Contexts {
    /// The contexts file, or none when there is no file.
    pub fn load() -> anyhow::Result<Self> {
        let path = file()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_saphyr::from_str(&text).with_context(|| {
            format!(
                "{} is not a contexts file: fix it, or remove it and add the contexts again",
                path.display()
            )
        })
    }

    /// Writes the file (mode 0600, in a directory of mode 0700), replacing it atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = file()?;
        let dir = path
            .parent()
            .context("the contexts file has no directory")?;
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let tmp = dir.join(".contexts.yaml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(serde_saphyr::to_string(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> anyhow::Result<&Ctx> {
        self.contexts.get(name).ok_or_else(|| missing(name))
    }
}

fn missing(name: &str) -> anyhow::Error {
    Failure::new(
        Kind::NotFound,
        format!(
            "no context named {name:?}: `zos context list` shows them, `zos context add` makes one"
        ),
    )
    .into()
}

/// The context in effect: `chosen` (`--context`/`ZOS_CONTEXT`), or the current one; none when
/// neither is set. A name given that is not a context is an error.
pub fn selected(chosen: Option<&str>) -> anyhow::Result<Option<(String, Ctx)>> {
    // Without HOME nor XDG_CONFIG_HOME there is no contexts file: none is current.
    if chosen.is_none() && config_dir().is_err() {
        return Ok(None);
    }
    let all = Contexts::load()?;
    let name = match (chosen, &all.current) {
        (Some(n), _) => n.to_string(),
        (None, Some(n)) => n.clone(),
        (None, None) => return Ok(None),
    };
    let ctx = all.get(&name).with_context(|| {
        if chosen.is_some() {
            "given by --context or ZOS_CONTEXT".to_string()
        } else {
            format!(
                "the current context, in {}",
                file().map(|p| p.display().to_string()).unwrap_or_default()
            )
        }
    })?;
    Ok(Some((name, ctx.clone())))
}
