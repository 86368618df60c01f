//! The grid's HTTP server: one accept loop per listening address, which bounds connections per
//! client IP address and in all, and HTTP/1 connections (with upgrades, for the relay's WebSocket
//! uplinks) whose time is bounded at every step.
//!
//! | limit | default | what it stops |
//! |---|---|---|
//! | `max_connections_per_ip` | 256 | one address holding every connection (429 beyond) |
//! | `max_connections` | 8192 | file descriptors running out (503 beyond) |
//! | `header_timeout` | 10 s | a client dribbling its request head (slow loris): closed |
//! | `body_timeout` | 30 s | a body that stops arriving: the request fails (400) |
//! | `request_timeout` | 120 s | a request held open: 408 (it covers the relay's longest wait) |
//!
//! A connection holds its slot for as long as its socket lives, WebSocket uplinks included: the
//! slot travels with the socket into the upgrade. Uplinks are long-lived by design, so they are
//! exempt from the request timeout (the upgrade answers at once; the relay pings them and drops
//! silent ones), and bounded instead by the per-address cap and one uplink per twin. An address
//! over its cap gets a short JSON 429 (the whole server over its cap, a 503) and the connection is
//! closed; at most [`MAX_REFUSING`] such answers are written at once, later ones are just closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::response::IntoResponse;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::timeout::{RequestBodyTimeout, RequestBodyTimeoutLayer};
use zos_types::registry::ApiError;

use crate::error::ApiFailure;

/// Refusals (429/503 answers to connections over a cap) written at once at most.
pub const MAX_REFUSING: usize = 64;

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once from one IP address (WebSocket uplinks included).
    pub max_connections_per_ip: usize,
    /// Connections open at once in all, per listening address.
    pub max_connections: usize,
    /// Longest time a client may take to send a request's head (request line and headers).
    pub header_timeout: Duration,
    /// Longest time a request body may stay without sending anything.
    pub body_timeout: Duration,
    /// Longest time a request may take, from its head to the answer (not an uplink's life).
    pub request_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections_per_ip: 256,
            max_connections: 8192,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// Connections open, per address and in all.
#[derive(Debug, Default)]
struct Slots {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// One connection's place in [`Slots`], given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
}

/// Why a connection was refused: the status and the message.
type Refused = (u16, String);

fn take_slot(
    slots: &Arc<Mutex<Slots>>,
    ip: IpAddr,
    limits: &ServerLimits,
) -> Result<Slot, Refused> {
    let mut s = slots.lock().unwrap_or_else(|e| e.into_inner());
    let mine = s.per_ip.get(&ip).copied().unwrap_or(0);
    if mine >= limits.max_connections_per_ip {
        return Err((
            429,
            format!(
                "{ip} already has {mine} connections open to the grid, its limit: close idle ones or reuse them"
            ),
        ));
    }
    if s.total >= limits.max_connections {
        return Err((
            503,
            "the grid has as many connections open as it takes: try again later".into(),
        ));
    }
    s.total += 1;
    *s.per_ip.entry(ip).or_default() += 1;
    Ok(Slot {
        slots: slots.clone(),
        ip,
    })
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.total -= 1;
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A socket that holds its connection's slot for as long as it lives (also once upgraded).
struct Counted {
    tcp: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The router with the request timeout, answered as the registry's JSON error.
fn with_request_timeout(app: Router, limit: Duration) -> Router {
    let secs = limit.as_secs();
    app.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(
                move |_: tower::BoxError| async move {
                    let failure = ApiFailure::RequestTimeout(format!(
                        "the request took longer than {secs} s: send it again, faster or smaller"
                    ));
                    Ok::<_, Infallible>(failure.into_response())
                },
            ))
            .timeout(limit),
    )
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `app` on `listener` within `limits` until `stop` turns true, then lets the requests
/// in flight finish (the caller bounds how long it waits).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let app = with_request_timeout(app, limits.request_timeout);
    let service = ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .service(app);
    let slots = Arc::new(Mutex::new(Slots::default()));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: the next accept may succeed.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true); // Relay frames and replies are small and latency-bound.
        match take_slot(&slots, peer.ip(), &limits) {
            Ok(slot) => {
                let io = Counted { tcp, _slot: slot };
                let svc = TowerToHyperService::new(service.clone());
                tracker.spawn(connection(io, svc, peer, limits, stop.clone()));
            }
            Err(refused) => refuse(tcp, peer, refused, &refusing, &tracker),
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// One HTTP/1 connection, upgrades included, until it ends or the server stops.
async fn connection(
    io: Counted,
    svc: TowerToHyperService<RequestBodyTimeout<Router>>,
    peer: SocketAddr,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection over a cap with a short JSON error and closes it.
fn refuse(
    mut tcp: TcpStream,
    peer: SocketAddr,
    (status, message): Refused,
    refusing: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    tracing::debug!(%peer, status, error = %message, "connection refused");
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return; // Too many refusals being written: just close it.
    };
    let reason = if status == 429 {
        "Too Many Requests"
    } else {
        "Service Unavailable"
    };
    let body = serde_json::to_string(&ApiError { error: message }).expect("errors serialize");
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 5\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tracker.spawn(async move {
        let write = async {
            tcp.write_all(answer.as_bytes()).await?;
            tcp.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_address_and_in_all_and_given_back() {
        let limits = ServerLimits {
            max_connections_per_ip: 2,
            max_connections: 3,
            ..ServerLimits::default()
        };
        let slots = Arc::new(Mutex::new(Slots::default()));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = take_slot(&slots, a, &limits).unwrap();
        let _a2 = take_slot(&slots, a, &limits).unwrap();
        assert_eq!(take_slot(&slots, a, &limits).unwrap_err().0, 429);
        let _b1 = take_slot(&slots, b, &limits).unwrap();
        assert_eq!(take_slot(&slots, b, &limits).unwrap_err().0, 503);
        drop(a1);
        let _b2 = take_slot(&slots, b, &limits).unwrap();
        drop(_b1);
        drop(_b2);
        assert_eq!(slots.lock().unwrap().per_ip.len(), 1);
        assert_eq!(slots.lock().unwrap().total, 1);
    }
}
