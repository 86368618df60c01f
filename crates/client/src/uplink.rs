//! The node side of the relay uplink: one outbound WebSocket carrying [`UplinkFrame`]s.

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use zos_types::auth::{self, RequestAuth, Signer};
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
/// with `identity`.
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
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(wrap)?;
    Ok(Uplink { url, ws })
}

impl Uplink {
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
                Message::Close(_) => return None,
                // Pings are answered by tungstenite as the stream is read.
                _ => continue,
            }
        }
    }
}
