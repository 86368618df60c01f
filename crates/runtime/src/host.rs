//! What the node's subsystems share about the host they run on: where a program is, and what a
//! node prefix (the mark every global name of a node carries) may look like.

use std::path::PathBuf;

/// Longest node prefix: it leaves at least six characters of every interface name for the id.
pub const PREFIX_MAX: usize = 8;

/// Checks a node prefix: at most 8 of a-z, 0-9 and '-' (empty on real hardware).
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= PREFIX_MAX
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `name` from `PATH`, the sbin directories or `~/.cargo/bin`; the bare name when not found.
pub fn find_program(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix(""));
        assert!(valid_prefix("dev-n1"));
        assert!(!valid_prefix("toolong12"));
        assert!(!valid_prefix("Upper"));
        assert!(!valid_prefix("a/b"));
    }
}
