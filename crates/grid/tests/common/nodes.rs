//! Fake nodes for relay tests: registered node twins whose uplinks are made with the
//! connector of `zos-client`, and that open requests and seal replies as zosd does.
//!
//! They echo any command, and refuse `zos.fail`: names outside the node protocol
//! (`zos_types::node_api`) on purpose, since the relay carries any command and these tests
//! check that it does. Tests call them through the untyped `GridClient::call`.

use std::sync::Arc;

use serde_json::json;
use zos_client::GridClient;
use zos_client::uplink::{self, Uplink};
use zos_grid::clock::SystemClock;
use zos_grid::relay::RelayConfig;
use zos_types::auth::unix_now;
use zos_types::envelope::{Envelope, Reply, Seal};
use zos_types::node_api::{ErrorKind, NodeCommand, NodeError, Version};
use zos_types::relay::UplinkFrame;
use zos_types::{Identity, PublicKey, TwinId};

use super::TestGrid;

/// A grid on the system clock (envelope expiry is real time), with these relay limits.
pub async fn grid(relay: RelayConfig) -> TestGrid {
    TestGrid::start_with(move |c| {
        c.clock = Arc::new(SystemClock);
        c.relay = relay.clone();
    })
    .await
}

/// A registered node: its client (identity and twin) and ids.
pub struct NodeTwin {
    pub client: GridClient,
    pub twin: TwinId,
    pub node: u32,
}

impl NodeTwin {
    pub fn identity(&self) -> &Identity {
        self.client.identity().unwrap()
    }

    pub async fn connect(&self, url: &str) -> Uplink {
        uplink::connect(url, self.identity(), self.twin)
            .await
            .unwrap()
    }
}

pub async fn node_twin(g: &TestGrid) -> NodeTwin {
    let (_, farm) = g.farm(&format!("farm-{}", unix_now_nanos())).await;
    let (client, node) = g.node(farm.id).await;
    NodeTwin {
        client,
        twin: node.twin_id,
        node: node.id,
    }
}

fn unix_now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The reply a node seals for `request`.
pub fn answer(
    me: &Identity,
    twin: TwinId,
    request: &Envelope,
    key: &PublicKey,
    reply: &Reply,
) -> Envelope {
    let seal = Seal {
        source: twin,
        destination: request.source,
        destination_key: key,
        command: &request.command,
        reply_to: Some(&request.id),
        expiration: unix_now() + 30,
    };
    Envelope::seal(me, &seal, &serde_json::to_vec(reply).unwrap()).unwrap()
}

/// A node that answers every request with `{"echo": <command>, "body": <body>}` (or an error
/// for command `zos.fail`), after checking and opening it.
pub async fn echo_node(url: &str, n: &NodeTwin) -> tokio::task::JoinHandle<()> {
    let mut link = n.connect(url).await;
    let (id, twin) = (n.identity().clone(), n.twin);
    let client = GridClient::new(url).unwrap();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = link.next().await {
            let UplinkFrame::Envelope { envelope } = frame else {
                continue;
            };
            let key = client.twin_key(envelope.source).await.unwrap();
            envelope.verify(&key, unix_now()).unwrap();
            let plain = envelope.open(&id, &key).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&plain).unwrap();
            let reply = if envelope.command == "zos.fail" {
                Reply::Error(NodeError::new(
                    ErrorKind::Forbidden,
                    "refused: just because",
                ))
            } else {
                Reply::Ok(json!({"echo": envelope.command, "body": body}))
            };
            let out = answer(&id, twin, &envelope, &key, &reply);
            if link
                .send(UplinkFrame::Envelope { envelope: out })
                .await
                .is_err()
            {
                break;
            }
        }
    })
}

/// A request sealed by `from` to `to`, living `ttl` seconds.
pub fn sealed(
    from: &GridClient,
    to: TwinId,
    to_key: &PublicKey,
    ttl: i64,
    body: &[u8],
) -> Envelope {
    let seal = Seal {
        source: from.twin_id().unwrap(),
        destination: to,
        destination_key: to_key,
        command: Version::NAME,
        reply_to: None,
        expiration: unix_now() + ttl,
    };
    Envelope::seal(from.identity().unwrap(), &seal, body).unwrap()
}
