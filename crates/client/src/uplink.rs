//! The node side of the relay uplink: one outbound WebSocket carrying [`UplinkFrame`]s.
//!
//! ```no_run
//! # async fn demo(identity: zos_types::Identity) -> Result<(), zos_client::ClientError> {
//! use zos_types::relay::UplinkFrame;
//!
//! let mut link = zos_client::uplink::connect("http://127.0.0.1:8080", &identity, 7).await?;
//! link.send(UplinkFrame::EventsAfter { seq: 0 }).await?;
//! while let Some(frame) = link.next().await {
//!     match frame? {
//!         UplinkFrame::Envelope { envelope } => { /* open, run, seal a reply, link.send it */ }
//!         UplinkFrame::Events { events } => { /* handle, remember the last seq */ }
//!         UplinkFrame::Release { .. } => { /* ask the grid which release to run now */ }
//!         UplinkFrame::EventsAfter { .. } => {}
//!     }
//! }
//! // None: the relay closed the uplink (replaced by a newer one, too slow…): reconnect.
//! # Ok(()) }
//! ```
//!
//! The relay pings the uplink; pings are answered while [`Uplink::next`] is being awaited, so a
//! node must keep reading (the relay drops an uplink it hears nothing from for 45 s).

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use zos_types::auth::{self, RequestAuth, Signer};
use zos_types::envelope::MAX_ENVELOPE_BYTES;
use zos_types::registry::ApiError;
use zos_types::relay::{UPLINK_PATH, UplinkFrame};
use zos_types::{Identity, TwinId};

use crate::ClientError;

/// An open uplink.
#[derive(Debug)]
pub struct Uplink {
    url: String,
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

fn ws_url(base: &str) -> Result<String, ClientError> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else {
        return Err(ClientError::Url(base.into()));
    };
    Ok(rest)
}

/// Opens the uplink of twin `twin` to the grid at `base` (`http://…` or `https://…`), signed
/// with `identity`. A refusal by the grid (unknown twin, bad signature) is
/// [`ClientError::Api`] with its status and message.
pub async fn connect(base: &str, identity: &Identity, twin: TwinId) -> Result<Uplink, ClientError> {
    // A fresh nonce in the query makes every connection's signature unique, so reconnecting
    // within the same second is not mistaken for a replay.
    let nonce = zos_types::envelope::new_id().map_err(ClientError::Envelope)?;
    let target = format!("{UPLINK_PATH}?nonce={nonce}");
    let url = format!("{}{target}", ws_url(base)?);
    let wrap = |source| ClientError::Uplink {
        url: url.clone(),
        source: Box::new(source),
    };
    let mut request = url.as_str().into_client_request().map_err(wrap)?;
    let signed = RequestAuth::sign(
        identity,
        Signer::Twin(twin),
        "GET",
        &target,
        auth::unix_now(),
        b"",
    );
    request.headers_mut().insert(
        auth::HEADER,
        HeaderValue::from_str(&signed.to_string()).expect("the header is ASCII"),
    );
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_ENVELOPE_BYTES + 4096))
        .max_frame_size(Some(MAX_ENVELOPE_BYTES + 4096));
    // `true`: no Nagle delay, replies go out at once.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(response) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                let message = match serde_json::from_slice::<ApiError>(body) {
                    Ok(e) => e.error,
                    Err(_) => String::from_utf8_lossy(body).chars().take(512).collect(),
                };
                ClientError::Api { status, message }
            }
            e => wrap(e),
        })?;
    Ok(Uplink { url, ws })
}

impl Uplink {
    /// The WebSocket URL of the uplink.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one frame (and flushes it).
    pub async fn send(&mut self, frame: UplinkFrame) -> Result<(), ClientError> {
        let text = serde_json::to_string(&frame).expect("frames serialize");
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|source| ClientError::Uplink {
                url: self.url.clone(),
                source: Box::new(source),
            })
    }

    /// The next frame; `None` when the relay closed the uplink. Pings are answered here.
    pub async fn next(&mut self) -> Option<Result<UplinkFrame, ClientError>> {
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(source) => {
                    return Some(Err(ClientError::Uplink {
                        url: self.url.clone(),
                        source: Box::new(source),
                    }));
                }
            };
            match msg {
                Message::Text(t) => {
                    return Some(serde_json::from_str(t.as_str()).map_err(|e| {
                        ClientError::Envelope(zos_types::envelope::EnvelopeError::Malformed(
                            format!("uplink frame: {e}"),
                        ))
                    }));
                }
                Message::Close(frame) => {
                    if let Some(f) = frame {
                        tracing::debug!(url = %self.url, code = u16::from(f.code), reason = %f.reason, "relay closed the uplink");
                    }
                    return None;
                }
                // Pings are answered by tungstenite as the stream is read.
                _ => continue,
            }
        }
    }

    /// Closes the uplink cleanly.
    pub async fn close(mut self) -> Result<(), ClientError> {
        match self.ws.close(None).await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Ok(()),
            Err(source) => Err(ClientError::Uplink {
                url: self.url,
                source: Box::new(source),
            }),
        }
    }
}
