//! The relay never holds a plaintext: neither its database nor its log (at the most verbose
//! level) contain what a user said to a node. Its own binary, because it installs a process-wide
//! log subscriber.
//!
//! The fake nodes echo any command: the names sent here (`zos.test.echo`…) are outside the
//! node protocol on purpose (see `common/nodes.rs`).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::nodes::{echo_node, grid, node_twin};
use serde_json::json;
use zos_grid::relay::RelayConfig;

/// A log writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn neither_the_log_nor_the_database_of_the_relay_contain_a_plaintext() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let _node = echo_node(&g.url(), &n).await;
    let (user, _) = g.twin().await;
    let secret = "correct-horse-battery-staple";
    for _ in 0..3 {
        let v = user
            .call(n.twin, "zos.test.echo", &json!({ "secret": secret }))
            .await
            .unwrap();
        assert_eq!(v["body"]["secret"], secret, "the node read it");
    }

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    // The log did record the relay's work (so the check below looks at something).
    assert!(text.contains("envelope forwarded"), "{text}");
    assert!(text.contains("uplink connected"), "{text}");
    assert!(!text.contains(secret), "the log holds the plaintext");
    assert!(
        !g.dump().contains(secret),
        "the database holds the plaintext"
    );
}
