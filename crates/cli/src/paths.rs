//! Where `zos` keeps its state and configuration on this machine.

use std::path::PathBuf;

use anyhow::Context;

/// Where `zos` keeps its local state: `$XDG_STATE_HOME/zos`, or `~/.local/state/zos`.
pub fn state_dir() -> PathBuf {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".local/state"),
    };
    base.join("zos")
}

/// Where `zos` keeps its configuration: `$XDG_CONFIG_HOME/zos`, or `~/.config/zos`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set: pass --key FILE")?)
            .join(".config"),
    };
    Ok(base.join("zos"))
}
