//! zosd's side of the gateway process: started detached (its own session, so it outlives zosd
//! and keeps its connections open across zosd's restarts and upgrades), adopted after a
//! restart by its command line (the control socket path in it), and reached over its control
//! socket. The caller gives the command (the program, set up to run in the node's public
//! namespace); this module adds the gateway's arguments.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use zos_runtime::supervise::{self, Detach, Marker, Stopped};

use crate::control::{Answer, ControlClient, ControlError, PROTOCOL, Request};

/// How long a new gateway has to answer on its control socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how a node's gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayProcess {
    /// Its control socket, PID file, log and seal key (0700).
    pub run_dir: PathBuf,
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// More arguments (ACME: `--acme-directory`, `--store`, `--seal-key`, …).
    pub extra_args: Vec<OsString>,
}

/// How [`GatewayProcess::ensure`] found the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// One was running (a previous zosd started it): kept, with its connections.
    Adopted(i32),
    /// None was: this one was started.
    Started(i32),
}

impl Ensured {
    pub fn pid(self) -> i32 {
        match self {
            Self::Adopted(p) | Self::Started(p) => p,
        }
    }
}

/// Why the gateway could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gateway did not answer on {socket} within {secs}s; the end of its log: {log}")]
    NoAnswer {
        socket: PathBuf,
        secs: u64,
        log: String,
    },
    #[error("the gateway speaks control protocol {got}, this zosd {want}: restart it")]
    Protocol { got: u32, want: u32 },
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl GatewayProcess {
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join("gateway.pid")
    }

    fn log(&self) -> PathBuf {
        self.run_dir.join("gateway.log")
    }

    /// What the gateway's command line shows: its program and this node's control socket.
    pub fn marker(&self) -> Marker {
        Marker::program("zos-gateway").arg(self.control_socket())
    }

    /// The PID of this node's running gateway, if one runs.
    pub fn running(&self) -> Option<i32> {
        let recorded = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        supervise::adopt(recorded, &self.marker())
    }

    /// Keeps the running gateway, or starts `cmd` (the `zos-gateway` program, set up for its
    /// namespace) with this configuration and waits until it answers `hello`. A gateway of
    /// another control protocol is an error the caller answers by [`Self::stop`] and a new
    /// start.
    pub async fn ensure(&self, mut cmd: Command) -> Result<Ensured, SupervisorError> {
        zos_runtime::private::create_dir(&self.run_dir).map_err(|source| SupervisorError::Io {
            what: "making",
            path: self.run_dir.clone(),
            source,
        })?;
        let ensured = match self.running() {
            Some(pid) => Ensured::Adopted(pid),
            None => {
                cmd.arg("--http")
                    .arg(self.http.to_string())
                    .arg("--https")
                    .arg(self.https.to_string())
                    .arg("--control")
                    .arg(self.control_socket())
                    .args(&self.extra_args);
                let pid =
                    Detach::new(self.log())
                        .spawn(cmd)
                        .map_err(|source| SupervisorError::Io {
                            what: "starting the gateway, log",
                            path: self.log(),
                            source,
                        })?;
                Ensured::Started(pid)
            }
        };
        zos_runtime::private::write_atomic(&self.pid_file(), ensured.pid().to_string().as_bytes())
            .map_err(|source| SupervisorError::Io {
                what: "writing",
                path: self.pid_file(),
                source,
            })?;
        let protocol = self.hello(ensured).await?;
        if protocol != PROTOCOL {
            return Err(SupervisorError::Protocol {
                got: protocol,
                want: PROTOCOL,
            });
        }
        Ok(ensured)
    }

    /// Waits for the gateway's `hello`; answers its protocol.
    async fn hello(&self, ensured: Ensured) -> Result<u32, SupervisorError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let answer = match ControlClient::connect(&self.control_socket()).await {
                Ok(mut c) => c.call(&Request::Hello {}).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(Answer::Hello { protocol, .. }) => return Ok(protocol),
                Ok(other) => {
                    return Err(ControlError::Answer(format!("{other:?} to hello")).into());
                }
                Err(_)
                    if Instant::now() < deadline
                        && supervise::alive(ensured.pid(), &self.marker()) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    return Err(SupervisorError::NoAnswer {
                        socket: self.control_socket(),
                        secs: START_TIMEOUT.as_secs(),
                        log: tail(&self.log()),
                    });
                }
            }
        }
    }

    /// A connection to the gateway's control socket.
    pub async fn client(&self) -> Result<ControlClient, ControlError> {
        ControlClient::connect(&self.control_socket()).await
    }

    /// Stops this node's gateway (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&self, grace: Duration) -> Stopped {
        match self.running() {
            Some(pid) => supervise::stop_blocking(pid, &self.marker(), grace),
            None => Stopped::NotRunning,
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The key the gateway seals its certificates and ACME account with, from the node's secret
/// seed (HKDF-SHA256 with a label of its own): the node's own reopens them after a reboot,
/// another node's disk opens nothing.
pub fn seal_key(node_seed: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"zos-gateway-seal-v1"), node_seed)
        .expand(b"certificates and ACME account", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_keys_differ_per_node_and_stay_per_node() {
        assert_eq!(seal_key(&[1; 32]), seal_key(&[1; 32]));
        assert_ne!(seal_key(&[1; 32]), seal_key(&[2; 32]));
        assert_ne!(seal_key(&[1; 32]), [1; 32]);
    }
}
