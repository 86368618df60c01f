//! The control socket: zosd's only way in. A Unix socket (mode 0600, and only peers of the
//! gateway's own user are answered) carrying one JSON request per line and one JSON answer per
//! line. zosd pushes the whole routing table and the certificates; it reads the traffic
//! counters and the backends' health. The gateway keeps serving when zosd goes away, and a
//! new zosd picks it up where the old one left it.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::acme::CertStatus;
use crate::route::Route;
use crate::server::Gateway;
use crate::table::{Meter, RouteStatus};

/// The largest request line (a full table of routes fits).
pub const MAX_LINE: usize = 4 * 1024 * 1024;
/// The protocol this gateway speaks; zosd replaces a gateway that speaks another.
pub const PROTOCOL: u32 = 1;

/// One request; the request variants without data are empty structs, so that unknown fields
/// are refused for them too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Who are you: the protocol and version.
    Hello {},
    /// Replace the whole routing table (refused whole, or taken whole).
    SetRoutes { routes: Vec<Route> },
    /// Add or replace the certificate of a host or a wildcard (`*.example.org`), PEM.
    SetCertificate {
        host: String,
        chain_pem: String,
        key_pem: String,
    },
    /// Forget the certificate of a host.
    RemoveCertificate { host: String },
    /// Each route's traffic since the gateway started.
    Metrics {},
    /// Each route with its backends' health.
    Status {},
    /// The certificates ordered from the CA: when each expires, why an order failed.
    Certificates {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    Hello { protocol: u32, version: String },
    Routes { count: usize },
    Certificate { host: String, present: bool },
    Metrics { routes: BTreeMap<String, Meter> },
    Status { routes: Vec<RouteStatus> },
    Certificates { hosts: Vec<CertStatus> },
    Error { message: String },
}

impl Gateway {
    /// Carries out one control request.
    pub fn control(&self, req: Request) -> Answer {
        match req {
            Request::Hello {} => Answer::Hello {
                protocol: PROTOCOL,
                version: env!("CARGO_PKG_VERSION").into(),
            },
            Request::SetRoutes { routes } => match self.shared.set(routes) {
                Ok(count) => Answer::Routes { count },
                Err(e) => Answer::Error {
                    message: e.to_string(),
                },
            },
            Request::SetCertificate {
                host,
                chain_pem,
                key_pem,
            } => match self
                .certs
                .insert_pem(&host, chain_pem.as_bytes(), key_pem.as_bytes())
            {
                Ok(()) => {
                    tracing::info!(host, "certificate set");
                    Answer::Certificate {
                        host,
                        present: true,
                    }
                }
                Err(e) => Answer::Error {
                    message: format!("certificate for {host}: {e}"),
                },
            },
            Request::RemoveCertificate { host } => {
                self.certs.remove(&host);
                Answer::Certificate {
                    host,
                    present: false,
                }
            }
            Request::Metrics {} => Answer::Metrics {
                routes: self.shared.metrics(),
            },
            Request::Status {} => Answer::Status {
                routes: self.shared.status(),
            },
            Request::Certificates {} => Answer::Certificates {
                hosts: self.acme.get().map(|a| a.status()).unwrap_or_default(),
            },
        }
    }

    /// Answers control connections on `listener` until the task is dropped.
    pub async fn serve_control(self: Arc<Self>, listener: UnixListener) -> io::Result<()> {
        let me = nix::unistd::getuid().as_raw();
        loop {
            let (stream, _) = listener.accept().await?;
            match stream.peer_cred() {
                Ok(c) if c.uid() == me => {}
                Ok(c) => {
                    tracing::warn!(
                        uid = c.uid(),
                        "control connection from another user refused"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control connection without credentials refused");
                    continue;
                }
            }
            let g = self.clone();
            tokio::spawn(async move {
                if let Err(e) = g.control_conn(stream).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
    }

    async fn control_conn(&self, stream: UnixStream) -> io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let mut line = Vec::new();
            let n = (&mut read)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Ok(());
            }
            let (answer, close) = if line.len() > MAX_LINE {
                let message = format!("a request is at most {MAX_LINE} bytes");
                (Answer::Error { message }, true)
            } else {
                match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => (self.control(req), false),
                    Err(e) => (
                        Answer::Error {
                            message: format!("not a control request: {e}"),
                        },
                        false,
                    ),
                }
            };
            let mut out = serde_json::to_vec(&answer).map_err(io::Error::other)?;
            out.push(b'\n');
            write.write_all(&out).await?;
            if close {
                return Ok(());
            }
        }
    }
}

/// Binds the control socket at `path`, mode 0600. A socket left by a gateway that is gone is
/// replaced; one that a live gateway answers on is not.
pub async fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a gateway already answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// zosd's side: one connection to a gateway's control socket.
#[derive(Debug)]
pub struct ControlClient {
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
}

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("gateway control socket: {0}")]
    Io(#[from] io::Error),
    #[error("the gateway's answer is not one: {0}")]
    Answer(String),
    #[error("the gateway refused: {0}")]
    Refused(String),
}

impl ControlClient {
    pub async fn connect(path: &Path) -> Result<Self, ControlError> {
        let (read, write) = UnixStream::connect(path).await?.into_split();
        Ok(Self {
            read: BufReader::new(read),
            write,
        })
    }

    /// Sends `req` and reads its answer; an `error` answer is [`ControlError::Refused`].
    pub async fn call(&mut self, req: &Request) -> Result<Answer, ControlError> {
        let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
        line.push(b'\n');
        self.write.write_all(&line).await?;
        let mut answer = Vec::new();
        let n = (&mut self.read)
            .take(MAX_LINE as u64 * 2)
            .read_until(b'\n', &mut answer)
            .await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        match serde_json::from_slice(&answer).map_err(|e| ControlError::Answer(e.to_string()))? {
            Answer::Error { message } => Err(ControlError::Refused(message)),
            a => Ok(a),
        }
    }
}
