//! `zos-client`'s connection pool against the grid's idle close. The grid closes a kept-alive
//! connection that stays idle for its header timeout (10 s by default); a client that keeps it
//! longer in its pool may write its next request just as the grid closes it, and that request
//! fails. The client therefore drops idle connections after [`zos_client::POOL_IDLE_TIMEOUT`].
//!
//! The race itself cannot be shown reliably (the client usually sees the close first and opens a
//! new connection), so the test checks the cause: the grid on loopback behind a forwarder that
//! counts connections, and a client that must open a new one after being idle for longer than
//! its pool timeout, while requests close together still share one.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::TestGrid;
use tokio::net::{TcpListener, TcpStream};
use zos_client::{GridClient, POOL_IDLE_TIMEOUT};
use zos_grid::server::ServerLimits;

/// Forwards every connection made to the returned address to `to`, counting them.
async fn counting_forwarder(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut outbound = TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, count)
}

#[test]
fn client_pool_idle_timeout_is_below_the_grid_header_timeout() {
    assert!(POOL_IDLE_TIMEOUT < ServerLimits::default().header_timeout);
}

#[tokio::test]
async fn idle_pooled_connection_is_dropped_before_the_grid_closes_it() {
    // The grid keeps idle connections for a minute here, so only the client's pool decides.
    let g = TestGrid::start_with(|c| {
        c.server = ServerLimits {
            header_timeout: Duration::from_secs(60),
            ..ServerLimits::default()
        }
    })
    .await;
    let grid: SocketAddr = g.url().trim_start_matches("http://").parse().unwrap();
    let (proxy, connections) = counting_forwarder(grid).await;
    let client = GridClient::new(&format!("http://{proxy}")).unwrap();

    client.health().await.unwrap();
    client.health().await.unwrap();
    assert_eq!(connections.load(Ordering::SeqCst), 1, "keep-alive reuses");

    tokio::time::sleep(POOL_IDLE_TIMEOUT + Duration::from_secs(1)).await;
    client.health().await.unwrap();
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "a connection idle for longer than the pool timeout must not be reused"
    );
}
