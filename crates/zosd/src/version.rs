//! The version of this build, reported to the grid and answered to `version` requests. A module
//! of its own so that the agent and the API both use it without depending on each other.

/// The version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
