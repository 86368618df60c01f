//! Provisioning: deployments accepted, stored, applied and reconciled.

pub mod engine;
pub mod managers;
pub mod store;

pub use engine::{Engine, EngineConfig, EngineError, GridView, Usage};
pub use managers::{Manager, ManagerError, Target, Unsupported, VolumeManager, ZmountManager};
pub use store::{Job, LogEntry, Store, StoreError};

#[cfg(test)]
mod tests;
