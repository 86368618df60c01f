//! The version this zosd runs, reported to the grid (its registration), to zos-init (the
//! health channel) and answered to `version` requests. A module of its own so that the agent
//! and the API both use it without depending on each other.
//!
//! On a node zos-init starts zosd with the version of the release it belongs to
//! ([`VERSION_ENV`]): the same zosd binary may ship in several releases, and the health gate
//! of an upgrade waits for the new release's version. A zosd started otherwise (a namespace
//! node of a devnet) reports the version of its build.

use std::sync::OnceLock;

use zos_types::release::Version;
pub use zos_types::release::channel::VERSION_ENV;

/// The version of this build.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// The version to report, given the value of [`VERSION_ENV`]: that release version when it is
/// one, else [`BUILD`] (with the reason when a value was given but is not a version).
pub fn choose(given: Option<&str>) -> (String, Option<String>) {
    match given {
        None => (BUILD.to_string(), None),
        Some(v) => match v.parse::<Version>() {
            Ok(_) => (v.to_string(), None),
            Err(_) => (
                BUILD.to_string(),
                Some(format!(
                    "{VERSION_ENV}={:?} is not a release version (like 1.2.3): reporting the \
                     build's version {BUILD}",
                    v.chars().take(40).collect::<String>()
                )),
            ),
        },
    }
}

static RUNNING: OnceLock<String> = OnceLock::new();

/// The version this zosd reports (see the module doc), read from the environment once.
pub fn running() -> &'static str {
    RUNNING.get_or_init(|| {
        let given = std::env::var(VERSION_ENV).ok();
        let (v, why) = choose(given.as_deref());
        if let Some(why) = why {
            tracing::warn!("{why}");
        }
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_version_wins_and_the_build_is_the_fallback() {
        assert_eq!(choose(Some("0.1.1")), ("0.1.1".to_string(), None));
        assert_eq!(choose(None), (BUILD.to_string(), None));
        for bad in ["", "1.2", "1.2.3-rc1", "x", "1.2.3\n"] {
            let (v, why) = choose(Some(bad));
            assert_eq!(v, BUILD, "{bad:?}");
            assert!(why.unwrap().contains("is not a release version"), "{bad:?}");
        }
    }
}
