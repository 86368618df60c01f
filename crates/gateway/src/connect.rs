//! Connections to backends, in the gateway's own network namespace or in a tenant's (a
//! network resource's namespace, `/run/netns/NAME`): the backend's address only means
//! something inside its tenant's network.
//!
//! The pooled HTTP client knows backends by URI authority, so each backend gets one of its own
//! that carries its target (`t<hex of "ADDR" or "ADDR@NETNS">.invalid`): two tenants' backends
//! with the same address never share a pooled connection, and the connector needs no table.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::http::uri::Authority;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::route::{Target, valid_netns};

/// The time to connect to a backend.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The authority the HTTP client connects to `target` by.
pub fn authority(target: &Target) -> Authority {
    let text = match &target.netns {
        Some(ns) => format!("{}@{ns}", target.addr),
        None => target.addr.to_string(),
    };
    format!("t{}.invalid:80", hex::encode(text))
        .parse()
        .expect("hex digits make an authority")
}

/// The target an authority made by [`authority`] stands for.
pub fn target_of(host: &str) -> io::Result<Target> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "not a backend authority");
    let hexed = host
        .strip_prefix('t')
        .and_then(|h| h.strip_suffix(".invalid"))
        .ok_or_else(bad)?;
    let text = String::from_utf8(hex::decode(hexed).map_err(|_| bad())?).map_err(|_| bad())?;
    let (addr, netns) = match text.split_once('@') {
        Some((a, ns)) if valid_netns(ns) => (a, Some(ns.to_string())),
        Some(_) => return Err(bad()),
        None => (text.as_str(), None),
    };
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    Ok(Target { addr, netns })
}

/// A TCP connection to `target`, made in its namespace.
pub async fn connect(target: &Target) -> io::Result<TcpStream> {
    let tcp = match &target.netns {
        None => tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??,
        Some(ns) => {
            // setns changes the calling thread: a thread of its own, which ends right after,
            // so no other work ever runs in the tenant's namespace.
            let (ns, addr) = (ns.clone(), target.addr);
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("gateway-connect".into())
                .spawn(move || {
                    let _ = tx.send(connect_in(&ns, addr));
                })?;
            let std = rx
                .await
                .map_err(|_| io::Error::other("the connecting thread ended"))??;
            std.set_nonblocking(true)?;
            TcpStream::from_std(std)?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

fn connect_in(ns: &str, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let file = std::fs::File::open(Path::new("/run/netns").join(ns))
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {ns}: {e}")))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("entering network namespace {ns}: {e}")))?;
    std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
}

/// The HTTP client's connector: the backend an authority names, in its namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connector;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let target = target_of(uri.host().unwrap_or(""))?;
            Ok(TokioIo::new(connect(&target).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_carry_their_target() {
        for t in [
            Target::here("10.1.2.3:8080".parse().unwrap()),
            Target {
                addr: "[fd00::5]:80".parse().unwrap(),
                netns: Some("n-abc.1".into()),
            },
        ] {
            let a = authority(&t);
            assert_eq!(target_of(a.host()).unwrap(), t);
        }
        let same = "10.1.2.3:80".parse().unwrap();
        let a = authority(&Target {
            addr: same,
            netns: Some("n-a".into()),
        });
        let b = authority(&Target {
            addr: same,
            netns: Some("n-b".into()),
        });
        assert_ne!(a, b, "one pool key per namespace");
        for bad in [
            "example.org",
            "tzz.invalid",
            &format!("t{}.invalid", hex::encode("1.2.3.4:5@../x")),
        ] {
            assert!(target_of(bad).is_err(), "{bad}");
        }
    }
}
