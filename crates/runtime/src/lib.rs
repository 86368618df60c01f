//! The runtime every zos process shares: the node's subsystems, the CLI and the test kit.
//!
//! - [`supervise`]: processes started detached, recognised by PID plus a command-line marker,
//!   stopped with SIGTERM then SIGKILL, adopted after a restart, restarted with backoff.
//! - [`state`]: [`StateFile`], versioned JSON files written atomically, readable by their owner
//!   only.
//! - [`private`]: files and directories made owner-only from creation.
//! - [`host`]: [`find_program`] and the node prefix check [`valid_prefix`].
//! - [`error_chain`]: an error and its sources on one line, for logs and wire messages.
//!
//! It has no dependency on any other zos crate, so every crate can use it.

pub mod host;
pub mod mounts;
pub mod private;
pub mod state;
pub mod supervise;

pub use host::{PREFIX_MAX, find_program, valid_prefix};
pub use state::{StateError, StateFile, Versioned};

/// `e` and its sources, joined by `": "` (the one place a chain is flattened to text).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chain_names_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read state")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(super::error_chain(&e), "cannot read state: disk on fire");
    }
}
