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

/// `e` with the exit code of `kind`, its message unchanged (for errors of other types, e.g. a
/// deployment file that does not parse: refused).
pub fn tag(kind: Kind, e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Tagged { kind, inner: e })
}

#[derive(Debug)]
struct Tagged {
    kind: Kind,
    inner: anyhow::Error,
}

impl std::fmt::Display for Tagged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.inner)
    }
}

impl std::error::Error for Tagged {}

/// What `zos` prints for `e` on stderr: `error: ` and what failed on the first line, then, when
/// the message does not already say it, a `hint: ` line with what to do next.
pub fn render(e: &anyhow::Error) -> String {
    let transport = e
        .chain()
        .find_map(|c| match c.downcast_ref::<ClientError>() {
            Some(ClientError::Transport { url, .. }) => Some(url.clone()),
            _ => None,
        });
    if let Some(url) = transport {
        // reqwest's chain says the same thing four times; its root cause says it best.
        let origin = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        return format!(
            "error: cannot reach the grid at {origin}: {}\n\
             hint: check that the grid is up, and that --grid, ZOS_GRID or the context \
             (`zos context show`) point at it",
            e.root_cause()
        );
    }
    let text = format!("{e:#}");
    let says_what_next = ["`zos ", "pass --", "--force", "retry", "run `"]
        .iter()
        .any(|h| text.contains(h));
    let hint = match (says_what_next, e.chain().find_map(kind)) {
        (true, _) => None,
        (false, Some(Kind::NotFound)) => Some(
            "check the name or id: `zos node list`, `zos farm list`, `zos deployment list` and \
             `zos network list` show what exists",
        ),
        (false, Some(Kind::Unavailable)) => {
            Some("retry later; `zos node list --online` shows the nodes that are up")
        }
        (false, Some(Kind::Refused)) => {
            Some("change the request as the message says and run it again")
        }
        _ => None,
    };
    match hint {
        Some(h) => format!("error: {text}\nhint: {h}"),
        None => format!("error: {text}"),
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
    if let Some(t) = e.downcast_ref::<Tagged>() {
        return Some(t.kind);
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
