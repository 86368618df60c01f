//! One manager per workload type: what applying, changing and removing a workload means.
//!
//! Managers are idempotent: provisioning a workload that already exists answers its result
//! without making it twice, and removing one that is gone succeeds. The engine relies on it to
//! finish work after a crash and to reconcile after a restart.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;
use zos_types::deployment::WorkloadId;
use zos_types::workload::{WorkloadData, WorkloadType};

use crate::storage::{Storage, StorageError};

/// Why a manager could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// This node cannot run this type (yet).
    #[error("{0} workloads are not supported on this node yet")]
    Unsupported(WorkloadType),
    /// The change was refused and the workload is as it was.
    #[error("{0}")]
    Unchanged(String),
    #[error("{0}")]
    Failed(String),
}

/// A workload to act on.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub id: &'a WorkloadId,
    pub data: &'a WorkloadData,
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
            Err(ManagerError::Unchanged(format!(
                "{kind} workloads cannot be updated"
            )))
        })
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

fn storage_err(e: StorageError) -> ManagerError {
    match e {
        StorageError::Shrink { .. } => ManagerError::Unchanged(crate::registrar::error_chain(&e)),
        e => ManagerError::Failed(crate::registrar::error_chain(&e)),
    }
}

fn size_of(data: &WorkloadData) -> u64 {
    match data {
        WorkloadData::Zmount(z) => z.size,
        WorkloadData::Volume(v) => v.size,
        _ => 0,
    }
}

/// `zmount`: a sparse virtual disk named after the workload id.
#[derive(Debug)]
pub struct ZmountManager<S>(pub Arc<S>);

impl<S: Storage + 'static> Manager for ZmountManager<S> {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let name = t.id.to_string();
            if self.0.disk_get(&name).await.map_err(storage_err)?.is_none() {
                self.0
                    .disk_create(&name, size_of(t.data))
                    .await
                    .map_err(storage_err)?;
            }
            Ok(json!({ "volume_id": name }))
        })
    }

    fn update<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let name = t.id.to_string();
            let want = size_of(t.data);
            let Some(disk) = self.0.disk_get(&name).await.map_err(storage_err)? else {
                return Err(ManagerError::Failed(format!(
                    "virtual disk {name} is missing"
                )));
            };
            if disk.size != want {
                self.0.disk_grow(&name, want).await.map_err(storage_err)?;
            }
            Ok(json!({ "volume_id": name }))
        })
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move {
            match self.0.disk_delete(&id.to_string()).await {
                Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
                Err(e) => Err(storage_err(e)),
            }
        })
    }
}

/// `volume`: a subvolume with a quota, named after the workload id.
#[derive(Debug)]
pub struct VolumeManager<S>(pub Arc<S>);

impl<S: Storage + 'static> Manager for VolumeManager<S> {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let name = t.id.to_string();
            if self
                .0
                .volume_get(&name)
                .await
                .map_err(storage_err)?
                .is_none()
            {
                self.0
                    .volume_create(&name, size_of(t.data))
                    .await
                    .map_err(storage_err)?;
            }
            Ok(json!({ "id": name }))
        })
    }

    fn update<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let name = t.id.to_string();
            let want = size_of(t.data);
            let Some(vol) = self.0.volume_get(&name).await.map_err(storage_err)? else {
                return Err(ManagerError::Failed(format!("volume {name} is missing")));
            };
            if vol.size != want {
                self.0.volume_grow(&name, want).await.map_err(storage_err)?;
            }
            Ok(json!({ "id": name }))
        })
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move {
            match self.0.volume_delete(&id.to_string()).await {
                Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
                Err(e) => Err(storage_err(e)),
            }
        })
    }
}
