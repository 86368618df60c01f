//! The hub's flist API, seen from a client: wire types, name rules, and [`HubClient`].
//!
//! The hub (served by `zos-grid`, see `docs/hub.md`) keeps blocks and flists under
//! [`HUB_PATH`]:
//!
//! ```text
//! GET  /api/v1/hub/blocks/{hex id}             a block's cipher text (404 if absent)
//! HEAD /api/v1/hub/blocks/{hex id}             200 or 404
//! PUT  /api/v1/hub/blocks/{hex id}             store a block (signed by a twin)
//! POST /api/v1/hub/blocks/missing              JSON hex ids -> the ones the hub lacks
//! POST /api/v1/hub/flists/{name}[?replace=true] upload a .fl (signed by its owner twin)
//! GET  /api/v1/hub/flists?twin_id=N            a twin's flists ([`FlistInfo`] list)
//! GET  /api/v1/hub/flists/{twin_id}/{name}     the .fl bytes of a twin's flist
//! GET  /api/v1/hub/flists/by-hash/{sha256}     the .fl bytes with that SHA-256
//! ```
//!
//! The block part is what [`HttpStore`] speaks with `base` = `<grid>/api/v1/hub`.
//! [`fetch_flist`] downloads a flist from any of the URLs above, checks it against the hash its
//! URL names (for `by-hash` URLs), validates it and keeps it under its SHA-256.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zos_types::auth::{RequestAuth, Signer};
use zos_types::identity::Identity;

use crate::meta::{Flist, FormatError};
use crate::store::{HttpStore, StoreError};

/// Where the hub's API lives under the grid's base URL.
pub const HUB_PATH: &str = "/api/v1/hub";
/// Longest flist name, in bytes.
pub const MAX_NAME_LEN: usize = zos_types::flistref::MAX_FLIST_NAME_LEN;
/// Largest .fl file the hub takes by default (and clients download): 64 MiB.
pub const DEFAULT_MAX_FLIST_BYTES: u64 = 64 * 1024 * 1024;
/// Most ids one `POST …/blocks/missing` may carry.
pub const MAX_MISSING_IDS: usize = crate::store::MISSING_BATCH;
/// The response header that carries a flist's SHA-256 (hex) on downloads.
pub const SHA256_HEADER: &str = "x-zos-flist-sha256";

/// A flist on the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlistInfo {
    /// The owner twin.
    pub twin_id: u32,
    /// Its name, unique per twin.
    pub name: String,
    /// SHA-256 of the .fl file, lower-case hex.
    pub sha256: String,
    /// Size of the .fl file in bytes.
    pub size: u64,
    /// Bytes of file content it describes.
    pub content_bytes: u64,
    /// Distinct blocks it references.
    pub blocks: u64,
    /// When the name was first published (unix seconds).
    pub created: i64,
    /// When the name last got new content (unix seconds).
    pub updated: i64,
}

impl FlistInfo {
    /// Path (under the grid URL) of the flist by owner and name.
    pub fn path(&self) -> String {
        format!("{HUB_PATH}/flists/{}/{}", self.twin_id, self.name)
    }

    /// Path (under the grid URL) of this exact content.
    pub fn hash_path(&self) -> String {
        format!("{HUB_PATH}/flists/by-hash/{}", self.sha256)
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushOutcome {
    /// The name is new.
    Created,
    /// The name pointed at other content and was replaced (`replace` was asked).
    Replaced,
    /// The name already pointed at exactly this content.
    Unchanged,
}

/// The hub's answer to a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pushed {
    pub outcome: PushOutcome,
    /// The content the name held before, when it was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_sha256: Option<String>,
    pub flist: FlistInfo,
}

/// Checks a flist name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit. The reason is returned when it breaks a rule. The rule is
/// `zos_types::flistref`'s, which deployments naming a hub flist follow too.
pub fn check_name(name: &str) -> Result<(), String> {
    zos_types::flistref::check_flist_name(name)
}

/// Checks a hex SHA-256 (64 lower- or upper-case hex characters) and returns it lower-case.
pub fn parse_sha256(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// The SHA-256 a flist URL names: the last path segment of a `…/flists/by-hash/{sha256}` URL.
pub fn hash_in_url(url: &Url) -> Option<String> {
    let segs: Vec<&str> = url.path_segments()?.collect();
    match segs.as_slice() {
        [.., "flists", "by-hash", h] => parse_sha256(h),
        _ => None,
    }
}

/// Failures of hub requests and downloads.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("request {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered something unexpected: {detail}")]
    Protocol { url: String, detail: String },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url} sent content with SHA-256 {got}, not the {expected} its URL names")]
    HashMismatch {
        url: String,
        expected: String,
        got: String,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} is not a valid flist")]
    Invalid {
        url: String,
        #[source]
        source: FormatError,
    },
    #[error("pushing needs a twin key (HubClient::with_auth)")]
    NoAuth,
    #[error("{0}")]
    Name(String),
}

impl HubError {
    /// The HTTP status the hub answered, if it answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .redirect(crate::store::same_origin_redirects())
        .build()
}

/// A client of one grid's hub.
#[derive(Clone)]
pub struct HubClient {
    client: reqwest::Client,
    grid: Url,
    auth: Option<(Identity, u32)>,
    /// Last timestamp used per distinct signed request, so that sending the same request twice
    /// within a second is not refused as a replay.
    stamps: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], i64>>>,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("grid", &self.grid.as_str())
            .field("twin", &self.auth.as_ref().map(|a| a.1))
            .finish()
    }
}

impl HubClient {
    /// A client of the hub of the grid at `grid_url` (for example `http://127.0.0.1:8080`).
    pub fn new(grid_url: &str) -> Result<Self, HubError> {
        let bad = |reason: &str| HubError::BadUrl {
            url: grid_url.to_string(),
            reason: reason.to_string(),
        };
        let grid = Url::parse(grid_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(grid.scheme(), "http" | "https") || grid.cannot_be_a_base() {
            return Err(bad("expected an http or https URL"));
        }
        let client = http_client().map_err(|source| HubError::Http {
            url: grid_url.to_string(),
            source,
        })?;
        Ok(Self {
            client,
            grid,
            auth: None,
            stamps: Default::default(),
        })
    }

    /// Signs uploads as `twin` with `identity` (its key).
    pub fn with_auth(mut self, identity: Identity, twin: u32) -> Self {
        self.auth = Some((identity, twin));
        self
    }

    /// The hub's base URL: `<grid>/api/v1/hub`.
    pub fn base_url(&self) -> String {
        format!("{}{HUB_PATH}", self.grid.as_str().trim_end_matches('/'))
    }

    /// Full URL of a path under the grid.
    pub fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.grid.as_str().trim_end_matches('/'))
    }

    /// The hub's block store, signed as this client's twin when it has one.
    pub fn block_store(&self) -> Result<HttpStore, StoreError> {
        let store = HttpStore::new(&self.base_url())?;
        Ok(match &self.auth {
            Some((id, twin)) => store.with_auth(id.clone(), Signer::Twin(*twin)),
            None => store,
        })
    }

    fn parse(&self, s: &str) -> Result<Url, HubError> {
        Url::parse(s).map_err(|e| HubError::BadUrl {
            url: s.to_string(),
            reason: e.to_string(),
        })
    }

    /// Uploads the .fl `bytes` as `name` of this client's twin. An existing name with other
    /// content is replaced only when `replace` is set (otherwise the hub answers 409).
    pub async fn push(
        &self,
        name: &str,
        bytes: Vec<u8>,
        replace: bool,
    ) -> Result<Pushed, HubError> {
        check_name(name).map_err(HubError::Name)?;
        let (identity, twin) = self.auth.as_ref().ok_or(HubError::NoAuth)?;
        let mut url = self.parse(&format!("{}/flists/{name}", self.base_url()))?;
        if replace {
            url.set_query(Some("replace=true"));
        }
        let pq = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let ts = self.stamp(&pq, &bytes);
        let signed = RequestAuth::sign(
            identity,
            Signer::Twin(*twin),
            Method::POST.as_str(),
            &pq,
            ts,
            &bytes,
        );
        let resp = self
            .client
            .post(url.clone())
            .header(zos_types::auth::HEADER, signed.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .map_err(|source| HubError::Http {
                url: url.to_string(),
                source,
            })?;
        json_answer(&url, resp).await
    }

    /// The timestamp for a signed request: now, or one second after the last identical one.
    fn stamp(&self, path_and_query: &str, body: &[u8]) -> i64 {
        let mut h = Sha256::new();
        h.update(path_and_query.as_bytes());
        h.update([0]);
        h.update(body);
        let key: [u8; 32] = h.finalize().into();
        let now = zos_types::auth::unix_now();
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        stamps.retain(|_, t| *t + zos_types::auth::MAX_SKEW_SECS >= now);
        let ts = match stamps.get(&key) {
            Some(last) if *last >= now => last + 1,
            _ => now,
        };
        stamps.insert(key, ts);
        ts
    }

    /// The flists of `twin`, by name.
    pub async fn list(&self, twin: u32) -> Result<Vec<FlistInfo>, HubError> {
        let url = self.parse(&format!("{}/flists?twin_id={twin}", self.base_url()))?;
        let resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|source| HubError::Http {
                url: url.to_string(),
                source,
            })?;
        json_answer(&url, resp).await
    }

    /// URL of the flist `name` of `twin`.
    pub fn flist_url(&self, twin: u32, name: &str) -> String {
        format!("{}/flists/{twin}/{name}", self.base_url())
    }

    /// URL of the flist with SHA-256 `sha256`.
    pub fn hash_url(&self, sha256: &str) -> String {
        format!("{}/flists/by-hash/{sha256}", self.base_url())
    }
}

async fn error_of(url: &Url, resp: reqwest::Response) -> HubError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.chars().take(300).collect());
    HubError::Status {
        url: url.to_string(),
        status,
        message,
    }
}

async fn json_answer<T: serde::de::DeserializeOwned>(
    url: &Url,
    resp: reqwest::Response,
) -> Result<T, HubError> {
    if !resp.status().is_success() {
        return Err(error_of(url, resp).await);
    }
    let bytes = resp.bytes().await.map_err(|source| HubError::Http {
        url: url.to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| HubError::Protocol {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

/// A flist downloaded by [`fetch_flist`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Where it is kept: `<dir>/<sha256>.fl`.
    pub path: PathBuf,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
}

/// The fixed text of a refused flist download, by status (never the server's own words).
fn refusal_text(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "no flist at this URL",
        401 | 403 => "the server refuses access to this flist",
        300..=399 => "the server redirects elsewhere (redirects are not followed)",
        500..=599 => "the server failed; try again later",
        _ => "the server refused the download",
    }
}

/// Downloads the flist at `url` into `dir` as `<sha256>.fl` and returns where.
///
/// When the URL names a hash (`…/flists/by-hash/{sha256}`) the content must have it, and a file
/// already kept under that hash is used without downloading. Responses over `max_bytes` are
/// refused; the file is validated with [`Flist::open_any`] (an FL flist or a legacy 0-fs
/// `.flist`, told apart by content, each with its own bounds) and appears (atomically) only if
/// valid. It is kept as `<sha256>.fl` whatever its format.
pub async fn fetch_flist(url: &str, dir: &Path, max_bytes: u64) -> Result<Fetched, HubError> {
    let parsed = Url::parse(url).map_err(|e| HubError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HubError::BadUrl {
            url: url.to_string(),
            reason: "expected an http or https URL".into(),
        });
    }
    let expected = hash_in_url(&parsed);
    std::fs::create_dir_all(dir).map_err(|source| HubError::Io {
        what: "cannot create",
        path: dir.to_owned(),
        source,
    })?;
    if let Some(h) = &expected {
        let kept = dir.join(format!("{h}.fl"));
        if kept.is_file() {
            return Ok(Fetched {
                path: kept,
                sha256: h.clone(),
            });
        }
    }
    let client = http_client().map_err(|source| HubError::Http {
        url: url.to_string(),
        source,
    })?;
    let mut resp = client
        .get(parsed.clone())
        .send()
        .await
        .map_err(|source| HubError::Http {
            url: url.to_string(),
            source,
        })?;
    if !resp.status().is_success() {
        // The server is whatever a deployment named: its body is not passed on to the user.
        return Err(HubError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
            message: refusal_text(resp.status()).into(),
        });
    }
    if resp.status() != StatusCode::OK {
        return Err(HubError::Protocol {
            url: url.to_string(),
            detail: format!("status {} instead of 200", resp.status()),
        });
    }
    let too_large = || HubError::TooLarge {
        url: url.to_string(),
        limit: max_bytes,
    };
    if resp.content_length().unwrap_or(0) > max_bytes {
        return Err(too_large());
    }
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| HubError::Io { what, path, source }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".download-")
        .suffix(".fl")
        .tempfile_in(dir)
        .map_err(io("cannot create a temporary file in", dir))?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|source| HubError::Http {
        url: url.to_string(),
        source,
    })? {
        len += chunk.len() as u64;
        if len > max_bytes {
            return Err(too_large());
        }
        hasher.update(&chunk);
        tmp.write_all(&chunk)
            .map_err(io("cannot write", tmp.path()))?;
    }
    let got = hex::encode(hasher.finalize());
    if let Some(h) = expected
        && h != got
    {
        return Err(HubError::HashMismatch {
            url: url.to_string(),
            expected: h,
            got,
        });
    }
    tmp.as_file()
        .sync_all()
        .map_err(io("cannot flush", tmp.path()))?;
    let checked = tmp.path().to_owned();
    let url_owned = url.to_string();
    tokio::task::spawn_blocking(move || Flist::open_any(&checked).map(drop))
        .await
        .map_err(|e| HubError::Io {
            what: "validation task failed for",
            path: dir.to_owned(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| HubError::Invalid {
            url: url_owned,
            source,
        })?;
    let dest = dir.join(format!("{got}.fl"));
    tmp.persist(&dest).map_err(|e| HubError::Io {
        what: "cannot keep the flist as",
        path: dest.clone(),
        source: e.error,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644));
    }
    Ok(Fetched {
        path: dest,
        sha256: got,
    })
}

pub use zos_types::release::sha256_hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "ubuntu-22.04.fl", "A_b.c-d", &"x".repeat(MAX_NAME_LEN)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "..",
            "a b",
            "é",
            "a\0b",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hashes_in_urls() {
        let h = "ab".repeat(32);
        let u = Url::parse(&format!("http://g/api/v1/hub/flists/by-hash/{h}")).unwrap();
        assert_eq!(hash_in_url(&u), Some(h.clone()));
        let upper = Url::parse(&format!(
            "http://g/api/v1/hub/flists/by-hash/{}",
            h.to_uppercase()
        ))
        .unwrap();
        assert_eq!(hash_in_url(&upper), Some(h));
        for other in [
            "http://g/api/v1/hub/flists/7/name.fl",
            "http://g/api/v1/hub/flists/by-hash/abc",
            "http://g/",
        ] {
            assert_eq!(hash_in_url(&Url::parse(other).unwrap()), None, "{other}");
        }
    }
}
