//! A small QMP client: JSON lines over the VM's unix socket.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// A QMP session past capability negotiation.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Qmp, String> {
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|_| format!("connecting to {} timed out", path.display()))?
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        let (r, w) = stream.into_split();
        let mut q = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = q.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected greeting {greeting}"));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line))
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("bad json {line:?}: {e}"))
    }

    /// Runs `command` and answers its `return` value (events on the way are skipped).
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            let v = self.read().await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!(
                    "{command}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                ));
            }
            // An event: keep reading.
        }
    }

    /// The `status` of `query-status` (`running`, `paused`, …).
    pub async fn status(&mut self) -> Result<String, String> {
        let r = self.execute("query-status", None).await?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}
