//! Provisioning: deployments accepted, stored, applied and reconciled.

pub mod engine;
pub mod error;
pub mod gateway;
pub mod images;
pub mod managers;
pub mod network;
pub mod store;
pub mod zdb;
pub mod zlogs;
pub mod zmachine;

pub use engine::{Engine, EngineConfig, EngineError, GridView, Usage};
pub use error::GridViewError;
pub use gateway::{GatewayHost, GatewayManager, Resolver, SystemResolver};
pub use images::{DiskImages, DiskPrep, HostImages, ImageError, OpenedFile};
pub use managers::{
    Manager, ManagerError, SizedManager, Target, Unsupported, volume_manager, zmount_manager,
};
pub use network::{IpManager, NetworkManager};
pub use store::{Job, LogEntry, Store, StoreError};
pub use zdb::{ZdbManager, ZdbProcesses, ZdbServers};
pub use zlogs::{VmmConsoles, ZlogsManager};
pub use zmachine::{ZmachineConfig, ZmachineManager};

#[cfg(test)]
mod tests;
