//! The relay: how envelopes reach nodes that accept no connections.
//!
//! - A node keeps one outbound WebSocket, `GET /api/v1/relay/uplink`, opened with the signed
//!   `Authorization` header of [`crate::auth`] (its own twin). Frames are JSON [`UplinkFrame`]s.
//!   On connect the node sends [`UplinkFrame::EventsAfter`] with the sequence number of the last
//!   event it handled; the relay answers with every later event of that node and then pushes
//!   new ones as they happen, so nothing is lost while the node is away.
//! - A user sends `POST /api/v1/relay/send` with an [`crate::envelope::Envelope`] as the body
//!   (signed by its source twin, body encrypted to the destination). The relay checks the
//!   signature, expiry and size, refuses an id it has seen, forwards it over the destination's
//!   uplink, and answers 200 with the reply envelope (`reply_to` = the request's id), or:
//!   404 when the destination is not connected, 504 when no reply came before the envelope
//!   expired or [`MAX_WAIT_SECS`] passed, 413 when it is too large, 400 malformed or expired,
//!   401 bad signature, 409 replayed.
//! - When a release is published or its rollout moves, the relay tells every connected node
//!   ([`UplinkFrame::Release`]); nodes of that runmode check for a release at once.

use serde::{Deserialize, Serialize};

use crate::contract::NodeEventRecord;
use crate::envelope::Envelope;

/// Path of the node uplink.
pub const UPLINK_PATH: &str = "/api/v1/relay/uplink";
/// Path where users send envelopes.
pub const SEND_PATH: &str = "/api/v1/relay/send";
/// Longest the relay holds a send request open waiting for the reply.
pub const MAX_WAIT_SECS: u64 = 60;

/// A frame on the uplink WebSocket (JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum UplinkFrame {
    /// An envelope: requests from the relay to the node, replies from the node to the relay.
    Envelope { envelope: Envelope },
    /// Node → relay: send me every event with a sequence number above `seq`, then new ones.
    EventsAfter { seq: u64 },
    /// Relay → node: events of this node, oldest first.
    Events { events: Vec<NodeEventRecord> },
    /// Relay → node: a release of `runmode` was published, or its rollout moved (a wave
    /// opened, marked safe, resumed): a node of that runmode asks the grid which release it
    /// should run now instead of waiting for its periodic check. A hint only: the node
    /// verifies whatever the grid then names (docs/upgrade.md, docs/security.md).
    Release {
        runmode: crate::release::RunMode,
        version: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_json() {
        let f = UplinkFrame::EventsAfter { seq: 4 };
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(text, r#"{"type":"events_after","seq":4}"#);
        assert_eq!(serde_json::from_str::<UplinkFrame>(&text).unwrap(), f);
        assert!(
            serde_json::from_str::<UplinkFrame>(r#"{"type":"events_after","seq":4,"x":1}"#)
                .is_err()
        );
        let f = UplinkFrame::Release {
            runmode: crate::release::RunMode::Dev,
            version: "1.2.3".into(),
        };
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(
            text,
            r#"{"type":"release","runmode":"dev","version":"1.2.3"}"#
        );
        assert_eq!(serde_json::from_str::<UplinkFrame>(&text).unwrap(), f);
    }
}
