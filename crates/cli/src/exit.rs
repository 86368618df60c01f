//! Exit codes: what kind of failure ended a command, for scripts (docs/cli.md lists them).
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | failure (anything not below) |
//! | 2 | usage: the command line is wrong (clap's own errors are 2 too) |
//! | 3 | not found: the twin, farm, node, contract, network, key or file named does not exist |
//! | 4 | refused: the grid, a node or zos refused the request as given (invalid, forbidden, in conflict) |
//! | 5 | unavailable: the grid or a node cannot be reached or cannot do it now; retry later |

use zos_client::ClientError;
use zos_client::workflow::deploy::DeployError;
use zos_client::workflow::network::NetworkError;
use zos_types::node_api::ErrorKind;

/// A kind of failure, and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    Refused = 4,
    Unavailable = 5,
}

/// An error of the command line itself, with its kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The exit code for `e`: the kind of the outermost error in its chain that has one.
pub fn code(e: &anyhow::Error) -> i32 {
    e.chain().find_map(kind).unwrap_or(Kind::Failure) as i32
}

fn kind(e: &(dyn std::error::Error + 'static)) -> Option<Kind> {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return Some(f.kind);
    }
    if let Some(c) = e.downcast_ref::<ClientError>() {
        return client_kind(c);
    }
    if let Some(d) = e.downcast_ref::<DeployError>() {
        return match d {
            DeployError::Offline { .. } => Some(Kind::Unavailable),
            DeployError::NotNodeContract { .. } | DeployError::UpdateNotAllowed(_) => {
                Some(Kind::Refused)
            }
            DeployError::Deployment(_) => Some(Kind::Refused),
            _ => None,
        };
    }
    if let Some(n) = e.downcast_ref::<NetworkError>() {
        return match n {
            NetworkError::Missing { .. } => Some(Kind::NotFound),
            NetworkError::Exists { .. }
            | NetworkError::Name { .. }
            | NetworkError::Range { .. }
            | NetworkError::Nodes
            | NetworkError::EndpointNotMember { .. } => Some(Kind::Refused),
            _ => None,
        };
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::NotFound => Some(Kind::NotFound),
            std::io::ErrorKind::PermissionDenied => Some(Kind::Refused),
            _ => None,
        };
    }
    None
}

fn client_kind(c: &ClientError) -> Option<Kind> {
    match c {
        ClientError::Api { status: 404, .. } => Some(Kind::NotFound),
        ClientError::Api { status, .. } | ClientError::Relay { status, .. }
            if *status >= 500 || *status == 429 =>
        {
            Some(Kind::Unavailable)
        }
        // The node is not connected to the relay: offline.
        ClientError::Relay { status: 404, .. } => Some(Kind::Unavailable),
        ClientError::Api { .. } | ClientError::Relay { .. } => Some(Kind::Refused),
        ClientError::Transport { .. } | ClientError::Uplink { .. } => Some(Kind::Unavailable),
        ClientError::Url(_) => Some(Kind::Usage),
        ClientError::Remote(n) => Some(match n.kind {
            ErrorKind::NotFound => Kind::NotFound,
            ErrorKind::Forbidden | ErrorKind::Invalid | ErrorKind::Conflict => Kind::Refused,
            ErrorKind::Unavailable | ErrorKind::Busy => Kind::Unavailable,
            ErrorKind::Internal => Kind::Failure,
        }),
        _ => None,
    }
}
