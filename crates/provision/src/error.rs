//! Why a manager could not do what it was asked: [`ManagerError`], with the subsystem error
//! that caused it kept as a typed `source`, and the wire [`ErrorKind`] of each cause.
//!
//! Causes are never flattened to strings here: the message a user sees is the whole chain
//! ([`zos_runtime::error_chain`]), printed once where the error leaves the node (a workload's
//! result message, or zosd's API edge for [`crate::EngineError`]).

use zos_mounts::FlistError;
use zos_net::NetworkError;
use zos_storage::StorageError;
use zos_types::node_api::ErrorKind;
use zos_types::workload::WorkloadType;
use zos_vmm::VmmError;

use crate::images::ImageError;

/// Why a manager could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// This node cannot run this type (yet).
    #[error("{0} workloads are not supported on this node yet")]
    Unsupported(WorkloadType),
    /// The workload asks for something this node refuses; nothing was made.
    #[error("{0}")]
    Invalid(String),
    /// Something the node needs is not ready yet: try again shortly.
    #[error("{0}")]
    Unavailable(String),
    /// The manager failed, with no error of a subsystem behind it.
    #[error("{0}")]
    Failed(String),
    /// The change was refused and the workload is as it was.
    #[error(transparent)]
    Unchanged(Box<ManagerError>),
    /// What the manager was doing (`mounts[0]`, `the root volume`…) when `source` failed.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<ManagerError>,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Flist(#[from] FlistError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    State(#[from] zos_runtime::StateError),
    #[error(transparent)]
    Grid(#[from] GridViewError),
}

impl ManagerError {
    /// `self` as the cause of a failure of `what`.
    pub fn context(self, what: impl Into<String>) -> Self {
        Self::Context {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// `self` as a refused change that left the workload as it was.
    pub fn unchanged(self) -> Self {
        Self::Unchanged(Box::new(self))
    }

    /// Whether the workload is as it was before the request.
    pub fn is_unchanged(&self) -> bool {
        match self {
            Self::Unchanged(_) => true,
            Self::Context { source, .. } => source.is_unchanged(),
            _ => false,
        }
    }

    /// The whole message: this error and every cause (`what: cause: cause`).
    pub fn message(&self) -> String {
        zos_runtime::error_chain(self)
    }

    /// The protocol's kind of this error: what the sender can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unsupported(_) | Self::Invalid(_) => ErrorKind::Invalid,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Failed(_) | Self::Io(_) | Self::State(_) => ErrorKind::Internal,
            Self::Unchanged(e) | Self::Context { source: e, .. } => e.kind(),
            Self::Storage(e) => storage_kind(e),
            Self::Network(e) => network_kind(e),
            Self::Vmm(e) => vmm_kind(e),
            Self::Flist(e) => flist_kind(e),
            Self::Image(e) => e.kind(),
            Self::Grid(e) => e.kind(),
        }
    }
}

/// Extension to name what failed on any result whose error becomes a [`ManagerError`].
pub(crate) trait Context<T> {
    /// The error as the cause of a failure of `what`.
    fn context(self, what: impl Into<String>) -> Result<T, ManagerError>;
}

impl<T, E: Into<ManagerError>> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T, ManagerError> {
        self.map_err(|e| e.into().context(what))
    }
}

fn storage_kind(e: &StorageError) -> ErrorKind {
    match e {
        StorageError::InvalidName(_)
        | StorageError::InvalidSize { .. }
        | StorageError::Shrink { .. } => ErrorKind::Invalid,
        StorageError::Exists { .. } | StorageError::NoSpace { .. } => ErrorKind::Conflict,
        StorageError::NotFound { .. } => ErrorKind::NotFound,
        StorageError::Limited(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

fn network_kind(e: &NetworkError) -> ErrorKind {
    match e {
        NetworkError::Invalid(_) | NetworkError::NoPublicConfig | NetworkError::NoPublicIpv6 => {
            ErrorKind::Invalid
        }
        NetworkError::Owned { .. }
        | NetworkError::PortTaken(_)
        | NetworkError::AddressTaken { .. }
        | NetworkError::NameClash(_)
        | NetworkError::PublicIpTaken(_) => ErrorKind::Conflict,
        NetworkError::NoNetwork { .. } | NetworkError::NoPublicIp(_) => ErrorKind::NotFound,
        NetworkError::NotReady => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

fn vmm_kind(e: &VmmError) -> ErrorKind {
    match e {
        VmmError::Invalid { .. } => ErrorKind::Invalid,
        VmmError::NotFound(_) => ErrorKind::NotFound,
        VmmError::Exists(_) | VmmError::State { .. } => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    }
}

fn flist_kind(e: &FlistError) -> ErrorKind {
    match e {
        // A name the node made, a file of the tenant's flist that is not a regular file, or a
        // legacy flist whose block stores this farm does not allow.
        FlistError::Name { .. } | FlistError::Open { .. } | FlistError::NoBlockStore { .. } => {
            ErrorKind::Invalid
        }
        FlistError::Fetch { .. } => ErrorKind::Unavailable,
        FlistError::Conflict { .. } | FlistError::Changed { .. } => ErrorKind::Conflict,
        FlistError::NotMounted { .. } => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_the_whole_chain_and_the_kind_is_the_cause_s() {
        let e = ManagerError::from(NetworkError::NoNetwork {
            twin: 7,
            name: "net1".into(),
        })
        .context("network.interfaces[0]");
        assert_eq!(
            e.message(),
            "network.interfaces[0]: no network \"net1\" of twin 7 on this node"
        );
        assert_eq!(e.to_string(), "network.interfaces[0]");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_unchanged());

        let shrink = ManagerError::from(StorageError::Shrink {
            what: "volume",
            name: "7-1-v".into(),
            current: 2,
            requested: 1,
        })
        .unchanged();
        assert!(shrink.is_unchanged());
        assert_eq!(shrink.kind(), ErrorKind::Invalid);
        assert_eq!(
            shrink.message(),
            "volume \"7-1-v\" cannot shrink from 2 to 1 bytes"
        );

        let io = std::io::Error::other("disk on fire");
        let e = ManagerError::from(StorageError::Io {
            op: "create",
            path: "/p".into(),
            source: io,
        })
        .context("the root volume");
        assert_eq!(e.message(), "the root volume: create /p: disk on fire");
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(
            ManagerError::Unavailable("later".into()).kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            ManagerError::Unsupported(WorkloadType::Zdb).kind(),
            ErrorKind::Invalid
        );
    }
}

/// Why the grid view has no answer.
#[derive(Debug, thiserror::Error)]
pub enum GridViewError {
    /// The grid says `what` (`twin 7`, `contract 12`) does not exist.
    #[error("the grid has no {what}")]
    NotFound { what: String },
    /// The grid could not be asked about `what`, or failed to answer.
    #[error("cannot reach the grid to check {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl GridViewError {
    /// The protocol's kind of this error: what the sender can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
        }
    }
}
