//! A 0-db (or Redis) store over the Redis protocol (RESP), as the 0-fs tools and rfs read one.
//!
//! URLs: `redis://[:password@]host:port[/namespace]` (0-fs, g8ufs and the `backend` of a legacy
//! flist) and `zdb://[user[:password]@]host[:port][/namespace]` (rfs 2; port 9900 by default).
//! A namespace other than `default` is entered with `SELECT namespace [password]` on every new
//! connection (0-db's command); with a password and no namespace, `AUTH password`.
//!
//! Keys are raw bytes: a legacy block ([`crate::legacy::is_legacy`]) is stored under its 16-byte
//! hash, an FL block under its 32-byte id (as rfs's `zdb://` store does). Values are the stored
//! bytes, at most one encoded block long: a longer reply is refused before it is read. Nothing
//! read here is trusted: callers decode and verify every block.
//!
//! The client is a few lines of tokio rather than the `redis` crate: four commands (`SELECT`,
//! `AUTH`, `GET`, `SET`, `EXISTS`) and one reply parser with a length bound are all a block store
//! needs, and a bounded parser is what untrusted stores need.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{BlockStore, StoreError};
use crate::block::BlockId;
use crate::meta::Route;

/// Port of a `zdb://` URL without one (0-db's default).
pub const ZDB_PORT: u16 = 9900;

/// Longest value accepted: the larger encoded block of the two formats.
const MAX_VALUE: usize = if crate::block::MAX_ENCODED_SIZE > crate::legacy::MAX_ENCODED_SIZE {
    crate::block::MAX_ENCODED_SIZE
} else {
    crate::legacy::MAX_ENCODED_SIZE
};

/// Longest status or error line accepted.
const MAX_LINE: usize = 4096;

/// Idle connections kept for reuse.
const MAX_IDLE: usize = 8;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A RESP reply, as far as a block store cares.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    /// An array (its elements are read and dropped).
    Array,
}

type Conn = BufReader<TcpStream>;

/// A block store on a 0-db or Redis server.
pub struct RedisStore {
    url: String,
    host: String,
    port: u16,
    namespace: Option<String>,
    password: Option<String>,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &super::strip_password(&self.url))
            .finish()
    }
}

impl RedisStore {
    /// The store a `redis://` or `zdb://` URL names.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: super::strip_password(url),
            reason: reason.to_string(),
        };
        let u = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let default_port = match u.scheme() {
            "redis" => None,
            "zdb" => Some(ZDB_PORT),
            _ => return Err(bad("not a redis:// or zdb:// URL")),
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host (a unix socket is not supported)"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u
            .port()
            .or(default_port)
            .ok_or_else(|| bad("no port (0-fs stores listen on 9900)"))?;
        let namespace = u
            .path_segments()
            .and_then(|mut s| s.next().map(str::to_owned))
            .filter(|n| !n.is_empty());
        let password = u.password().map(percent_decode);
        Ok(Self {
            url: url.to_string(),
            host,
            port,
            namespace,
            password,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn err(&self, what: impl Into<String>) -> StoreError {
        StoreError::Protocol {
            store: super::strip_password(&self.url),
            detail: what.into(),
        }
    }

    fn io(&self, what: &str, source: std::io::Error) -> StoreError {
        StoreError::Io {
            store: super::strip_password(&self.url),
            what: what.to_string(),
            source,
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let addr = (self.host.as_str(), self.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                self.io(
                    "connect",
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                )
            })?
            .map_err(|e| self.io("connect", e))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = BufReader::new(tcp);
        let select: Option<Vec<&[u8]>> = match (&self.namespace, &self.password) {
            (Some(ns), pw) if ns != "default" => {
                let mut c = vec![&b"SELECT"[..], ns.as_bytes()];
                if let Some(pw) = pw {
                    c.push(pw.as_bytes());
                }
                Some(c)
            }
            (_, Some(pw)) => Some(vec![&b"AUTH"[..], pw.as_bytes()]),
            _ => None,
        };
        if let Some(cmd) = select
            && let Reply::Error(e) = self.roundtrip(&mut conn, &cmd).await?
        {
            return Err(self.err(format!(
                "cannot enter namespace {:?}: {e}",
                self.namespace.as_deref().unwrap_or("default")
            )));
        }
        Ok(conn)
    }

    async fn roundtrip(&self, conn: &mut Conn, args: &[&[u8]]) -> Result<Reply, StoreError> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        let work = async {
            conn.get_mut()
                .write_all(&req)
                .await
                .map_err(|e| self.io("send", e))?;
            self.reply(conn, 0).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .map_err(|_| {
                self.io(
                    "request",
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                )
            })?
    }

    async fn line(&self, conn: &mut Conn) -> Result<String, StoreError> {
        let mut buf = Vec::new();
        let n = (&mut *conn)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| self.io("receive", e))?;
        if n == 0 {
            return Err(self.io(
                "receive",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
            ));
        }
        if !buf.ends_with(b"\r\n") {
            return Err(self.err("a reply line is too long or not terminated"));
        }
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).map_err(|_| self.err("a reply line is not text"))
    }

    fn reply<'a>(
        &'a self,
        conn: &'a mut Conn,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Reply, StoreError>> + Send + 'a>> {
        Box::pin(async move {
            let line = self.line(conn).await?;
            let (kind, rest) = line.split_at(line.len().min(1));
            let int = |s: &str| {
                s.parse::<i64>()
                    .map_err(|_| self.err(format!("bad length or number {s:?}")))
            };
            Ok(match kind {
                "+" => Reply::Status(rest.to_string()),
                "-" => Reply::Error(rest.to_string()),
                ":" => Reply::Int(int(rest)?),
                "$" => {
                    let n = int(rest)?;
                    if n < 0 {
                        return Ok(Reply::Bulk(None));
                    }
                    let n = n as usize;
                    if n > MAX_VALUE {
                        return Err(self.err(format!(
                            "a value of {n} bytes is larger than any block ({MAX_VALUE})"
                        )));
                    }
                    let mut data = vec![0u8; n + 2];
                    conn.read_exact(&mut data)
                        .await
                        .map_err(|e| self.io("receive", e))?;
                    if !data.ends_with(b"\r\n") {
                        return Err(self.err("a value is not terminated"));
                    }
                    data.truncate(n);
                    Reply::Bulk(Some(data))
                }
                "*" => {
                    let n = int(rest)?;
                    if depth > 2 || n > 16 {
                        return Err(self.err("an unexpected array reply"));
                    }
                    for _ in 0..n.max(0) {
                        self.reply(conn, depth + 1).await?;
                    }
                    Reply::Array
                }
                _ => return Err(self.err(format!("not a Redis protocol reply: {line:?}"))),
            })
        })
    }

    /// Runs one command on a pooled connection (a new one when none is idle); a connection that
    /// failed is dropped, one that answered goes back to the pool.
    async fn call(&self, args: &[&[u8]]) -> Result<Reply, StoreError> {
        let pooled = self.idle.lock().unwrap().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        let reply = self.roundtrip(&mut conn, args).await?;
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(reply)
    }
}

/// The key a block is stored under (see the module documentation).
fn key(id: &BlockId) -> &[u8] {
    if crate::legacy::is_legacy_id(id) {
        &id.0[..crate::legacy::HASH_LEN]
    } else {
        &id.0
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait::async_trait]
impl BlockStore for RedisStore {
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        match self.call(&[b"GET", key(id)]).await? {
            Reply::Bulk(Some(v)) if !v.is_empty() => Ok(v),
            Reply::Bulk(_) => Err(StoreError::NotFound {
                id: *id,
                store: super::strip_password(&self.url),
            }),
            Reply::Error(e) => Err(self.err(format!("GET {id}: {e}"))),
            other => Err(self.err(format!("GET {id}: unexpected reply {other:?}"))),
        }
    }

    async fn put(&self, id: &BlockId, data: &[u8]) -> Result<(), StoreError> {
        match self.call(&[b"SET", key(id), data]).await? {
            Reply::Error(e) => Err(self.err(format!("SET {id}: {e}"))),
            _ => Ok(()),
        }
    }

    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        match self.call(&[b"EXISTS", key(id)]).await? {
            Reply::Int(n) => Ok(n > 0),
            Reply::Error(e) => Err(self.err(format!("EXISTS {id}: {e}"))),
            other => Err(self.err(format!("EXISTS {id}: unexpected reply {other:?}"))),
        }
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route::all(self.url.clone())]
    }
}
