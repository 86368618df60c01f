//! The control channel between the node and `guest-init`: a virtio console port carrying one
//! line per request. The node connects to QEMU's end of it (a unix socket), writes a request and,
//! for [`STATUS`], reads one answer line.

/// The node asks the guest to stop cleanly (the entrypoint's session gets SIGTERM, then SIGKILL).
pub const POWEROFF: &str = "poweroff";
/// The node asks whether the guest is up. `guest-init` answers [`READY`] once the entrypoint
/// started; before that nothing reads the port and the node sees no answer.
pub const STATUS: &str = "status";
/// The answer to [`STATUS`] once the entrypoint runs.
pub const READY: &str = "ready";
