//! The node's console screen (zui): a full-screen, read-only status view of a node, drawn with
//! ratatui on the node's first console by the node OS, or in a terminal by `zosd --console`.
//!
//! - [`Screen`] holds what is shown: identity, uplink, addresses, capacity, workloads and the
//!   last errors of each subsystem. zosd fills it; this crate only draws it.
//! - [`draw`] renders one [`View`] of it into a ratatui frame (the snapshot tests use ratatui's
//!   `TestBackend`).
//! - [`ErrorLog`] is a `tracing` layer that keeps the last warnings and errors of each subsystem
//!   for the errors view.
//! - [`run`] owns a terminal: it draws, and its keys only switch views.

mod draw;
mod errors;
mod screen;
mod term;

pub use draw::{View, draw};
pub use errors::{ErrorLog, LoggedError, subsystem_of};
pub use screen::{Screen, Uplink, WorkloadCounts};
pub use term::run;
