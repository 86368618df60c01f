//! One manager per workload type: what applying, changing and removing a workload means.
//!
//! Managers are idempotent: provisioning a workload that already exists answers its result
//! without making it twice, and removing one that is gone succeeds. The engine relies on it to
//! finish work after a crash and to reconcile after a restart.

use std::sync::Arc;

use futures::future::BoxFuture;
use zos_types::deployment::WorkloadId;
use zos_types::node_api::results::{VolumeResult, ZmountResult};
use zos_types::workload::{WorkloadData, WorkloadType};

use zos_storage::{Storage, StorageError};

pub use crate::error::ManagerError;

/// A workload's typed result (`zos_types::node_api::results`) as the result's JSON data.
pub(crate) fn to_data<T: serde::Serialize>(result: &T) -> serde_json::Value {
    // Structs of strings and numbers: serializing cannot fail.
    serde_json::to_value(result).unwrap_or_default()
}

/// A workload to act on.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub id: &'a WorkloadId,
    pub data: &'a WorkloadData,
}

/// Whether a provisioned workload is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Made, and still coming up (a guest booting), with the end of what it printed so far.
    Starting {
        console: String,
    },
}

/// What each workload type does.
pub trait Manager: Send + Sync {
    /// Makes the workload exist (or finds it existing) and answers its result data.
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>>;
    /// Changes an existing workload to `t.data`.
    fn update<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        let kind = t.data.kind();
        Box::pin(async move {
            Err(ManagerError::Invalid(format!("{kind} workloads cannot be updated")).unchanged())
        })
    }
    /// Whether the provisioned workload is up. Most are once provisioned; a machine is once its
    /// guest says so. An error means it will never be up (its reason says why).
    fn readiness<'a>(
        &'a self,
        _id: &'a WorkloadId,
    ) -> BoxFuture<'a, Result<Readiness, ManagerError>> {
        Box::pin(async { Ok(Readiness::Ready) })
    }
    /// Removes the workload; succeeds when it is already gone.
    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>>;
    /// Stops the workload from running, keeping everything (grace period).
    fn pause<'a>(&'a self, _id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async { Ok(()) })
    }
    fn resume<'a>(&'a self, _id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Answers every request with "not supported on this node yet".
#[derive(Debug, Clone, Copy)]
pub struct Unsupported(pub WorkloadType);

impl Manager for Unsupported {
    fn provision<'a>(
        &'a self,
        _t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        let kind = self.0;
        Box::pin(async move { Err(ManagerError::Unsupported(kind)) })
    }
    fn deprovision<'a>(&'a self, _id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A refused shrink leaves the item as it was.
fn storage_err(e: StorageError) -> ManagerError {
    match e {
        e @ StorageError::Shrink { .. } => ManagerError::from(e).unchanged(),
        e => e.into(),
    }
}

fn size_of(data: &WorkloadData) -> u64 {
    match data {
        WorkloadData::Zmount(z) => z.size,
        WorkloadData::Volume(v) => v.size,
        _ => 0,
    }
}

/// Which storage item a manager keeps: the two differ only in the storage calls they make and
/// the key of their result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// `zmount`: a sparse virtual disk.
    Disk,
    /// `volume`: a subvolume with a quota.
    Volume,
}

/// `zmount` and `volume`: a storage item named after the workload id, made once, grown on
/// update (never shrunk), removed on cancel.
#[derive(Debug)]
pub struct SizedManager<S> {
    storage: Arc<S>,
    item: Item,
}

/// The `zmount` manager.
pub fn zmount_manager<S>(storage: Arc<S>) -> SizedManager<S> {
    SizedManager {
        storage,
        item: Item::Disk,
    }
}

/// The `volume` manager.
pub fn volume_manager<S>(storage: Arc<S>) -> SizedManager<S> {
    SizedManager {
        storage,
        item: Item::Volume,
    }
}

impl<S: Storage + 'static> SizedManager<S> {
    /// The current size, `None` when the item does not exist.
    async fn size(&self, name: &str) -> Result<Option<u64>, StorageError> {
        Ok(match self.item {
            Item::Disk => self.storage.disk_get(name).await?.map(|d| d.size),
            Item::Volume => self.storage.volume_get(name).await?.map(|v| v.size),
        })
    }

    async fn create(&self, name: &str, size: u64) -> Result<(), StorageError> {
        match self.item {
            Item::Disk => self.storage.disk_create(name, size).await.map(drop),
            Item::Volume => self.storage.volume_create(name, size).await.map(drop),
        }
    }

    async fn grow(&self, name: &str, size: u64) -> Result<(), StorageError> {
        match self.item {
            Item::Disk => self.storage.disk_grow(name, size).await.map(drop),
            Item::Volume => self.storage.volume_grow(name, size).await.map(drop),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        match self.item {
            Item::Disk => self.storage.disk_delete(name).await,
            Item::Volume => self.storage.volume_delete(name).await,
        }
    }

    fn result(&self, name: String) -> serde_json::Value {
        match self.item {
            Item::Disk => to_data(&ZmountResult { volume_id: name }),
            Item::Volume => to_data(&VolumeResult { id: name }),
        }
    }
}

impl<S: Storage + 'static> Manager for SizedManager<S> {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let name = t.id.to_string();
            if self.size(&name).await.map_err(storage_err)?.is_none() {
                self.create(&name, size_of(t.data))
                    .await
                    .map_err(storage_err)?;
            }
            Ok(self.result(name))
        })
    }

    fn update<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let name = t.id.to_string();
            let want = size_of(t.data);
            let Some(size) = self.size(&name).await.map_err(storage_err)? else {
                return Err(ManagerError::Failed(format!(
                    "{} {name} is missing",
                    t.data.kind()
                )));
            };
            if size != want {
                self.grow(&name, want).await.map_err(storage_err)?;
            }
            Ok(self.result(name))
        })
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move {
            match self.delete(&id.to_string()).await {
                Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
                Err(e) => Err(storage_err(e)),
            }
        })
    }
}
