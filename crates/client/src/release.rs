//! Client of the grid's boot service (docs/boot.md): boot files by content hash, and the signed
//! node OS releases of each runmode. Publishing is signed with release keys (`key=` requests),
//! not as a twin.
//!
//! These routes live beside the registry API, not under `/api/v1`.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use zos_types::Identity;
use zos_types::auth::{self, RequestAuth, Signer};
use zos_types::boot::{Published, ReleaseSummary, StoredFile};
use zos_types::registry::ApiError;
use zos_types::release::root::{RootChain, Rotated, SignedRoot};
use zos_types::release::terms::Terms;
use zos_types::release::{
    Artifact, Release, RunMode, RuntimeFlist, SignedRelease, Version, is_sha256_hex, sha256_hex,
};

use crate::{CONNECT_TIMEOUT, ClientError, DecodeError};

/// Errors of publishing a release, beyond the grid's own.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot read the {what} {path}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} is empty")]
    Empty { what: &'static str, path: String },
    #[error("flist {name}: {url} has SHA-256 {got}, not {want}: refusing to name it in a release")]
    FlistHash {
        name: String,
        url: String,
        got: String,
        want: String,
    },
    #[error("{0:?} is not a SHA-256 (64 hex digits)")]
    NotSha256(String),
    #[error("a release is signed by at least one release key: none given")]
    NoKeys,
    #[error(transparent)]
    Release(#[from] zos_types::release::ReleaseError),
}

/// Where a runtime flist of a release comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlistSource {
    /// The grid's own hub, by hash.
    Hub,
    /// An http(s) URL.
    Url(String),
    /// A local file.
    File(std::path::PathBuf),
}

/// A runtime flist to name in a release: its name, where to read it, the SHA-256 it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlistSpec {
    pub name: String,
    pub source: FlistSource,
    pub sha256: String,
}

impl std::str::FromStr for FlistSpec {
    type Err = String;
    /// `NAME=URL@SHA256`, `NAME=PATH@SHA256`, or `NAME=@SHA256` for the grid's hub.
    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = || format!("{spec:?}: write NAME=URL@SHA256 (or NAME=@SHA256 for the hub's)");
        let (name, rest) = spec.split_once('=').ok_or_else(bad)?;
        let (src, sha256) = rest.rsplit_once('@').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        let sha256 = sha256.to_ascii_lowercase();
        if !is_sha256_hex(&sha256) {
            return Err(format!("{spec:?}: {sha256:?} is not a SHA-256"));
        }
        let source = if src.is_empty() {
            FlistSource::Hub
        } else if src.starts_with("http://") || src.starts_with("https://") {
            FlistSource::Url(src.to_string())
        } else {
            FlistSource::File(src.into())
        };
        Ok(Self {
            name: name.to_string(),
            source,
            sha256,
        })
    }
}

/// What to publish: the kernel, the initramfs and the runtime flists, signed by `keys` (the
/// first one also signs the uploads).
#[derive(Debug)]
pub struct Publish<'a> {
    pub runmode: RunMode,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub flists: &'a [FlistSpec],
    /// The debug flist (runmode dev only; the grid refuses it elsewhere).
    pub debug: Option<&'a FlistSpec>,
    pub keys: &'a [Identity],
    /// The version; by default the newest release's next patch (halted ones too), or 0.1.0.
    pub version: Option<String>,
}

/// The field of a manifest the client reads, whatever else it carries.
#[derive(Debug, serde::Deserialize)]
struct ManifestHead {
    runmode: RunMode,
}

/// What happened to one boot file while publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload {
    /// The grid had it already.
    Present {
        what: &'static str,
        sha256: String,
        size: u64,
    },
    Uploaded {
        what: &'static str,
        sha256: String,
        size: u64,
    },
}

/// A client of one grid's boot service.
#[derive(Debug, Clone)]
pub struct ReleaseClient {
    base: String,
    http: reqwest::Client,
}

impl ReleaseClient {
    /// A client of the grid at `base_url`. Boot files are large: a request may take up to ten
    /// minutes.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(base_url).map_err(|_| ClientError::Url(base_url.into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Url(base_url.into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .map_err(|source| ClientError::Transport {
                url: base_url.into(),
                source,
            })?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The grid's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The runmode's current release, None when it has none.
    pub async fn current(&self, runmode: RunMode) -> Result<Option<SignedRelease>, ClientError> {
        match self
            .request::<SignedRelease>(Method::GET, &format!("/releases/{runmode}"), None)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The runmode's releases, newest first.
    pub async fn list(&self, runmode: RunMode) -> Result<Vec<ReleaseSummary>, ClientError> {
        self.request(Method::GET, &format!("/releases?runmode={runmode}"), None)
            .await
    }

    /// The runmode's root of trust and the signed rotations that led to it.
    pub async fn root(&self, runmode: RunMode) -> Result<RootChain, ClientError> {
        self.request(Method::GET, &format!("/releases/{runmode}/root"), None)
            .await
    }

    /// Sends the next root of `runmode`, signed with `key` (a key of the current root).
    pub async fn put_root(
        &self,
        runmode: RunMode,
        next: &SignedRoot,
        key: &Identity,
    ) -> Result<Rotated, ClientError> {
        let body = serde_json::to_vec(next).expect("roots serialize");
        self.request(
            Method::PUT,
            &format!("/releases/{runmode}/root"),
            Some((body, key)),
        )
        .await
    }

    /// Whether the grid has the boot file `sha256`.
    pub async fn has_file(&self, sha256: &str) -> Result<bool, ClientError> {
        let url = format!("{}/boot/files/{sha256}", self.base);
        let resp = self
            .http
            .head(&url)
            .send()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        Ok(resp.status().is_success())
    }

    /// Stores `data` as a boot file, signed with release key `key`.
    pub async fn put_file(&self, data: Vec<u8>, key: &Identity) -> Result<StoredFile, ClientError> {
        let route = format!("/boot/files/{}", sha256_hex(&data));
        self.request(Method::PUT, &route, Some((data, key))).await
    }

    /// Makes `signed` the runmode's current release.
    pub async fn put_release(
        &self,
        signed: &SignedRelease,
        key: &Identity,
    ) -> Result<Published, ClientError> {
        let release: ManifestHead =
            serde_json::from_str(&signed.manifest).map_err(|source| ClientError::Decode {
                url: "release manifest".into(),
                source: DecodeError::Json(source),
            })?;
        let body = serde_json::to_vec(signed).expect("releases serialize");
        self.request(
            Method::PUT,
            &format!("/releases/{}", release.runmode),
            Some((body, key)),
        )
        .await
    }

    /// Uploads what the grid lacks, signs the release and publishes it. `progress` hears of each
    /// boot file.
    pub async fn publish(
        &self,
        p: &Publish<'_>,
        progress: &dyn Fn(&Upload),
    ) -> Result<Published, PublishError> {
        self.publish_with(p, &Terms::default(), progress).await
    }

    /// [`Self::publish`] with upgrade terms (minimum version, expiry, rollout policy).
    pub async fn publish_with(
        &self,
        p: &Publish<'_>,
        terms: &Terms,
        progress: &dyn Fn(&Upload),
    ) -> Result<Published, PublishError> {
        let uploader = p.keys.first().ok_or(PublishError::NoKeys)?;
        let version = match &p.version {
            Some(v) => {
                v.parse::<Version>()?;
                v.clone()
            }
            // The newest release's next patch: halted ones count (the current one the grid
            // serves may be older than a halted one, and the grid takes only newer versions).
            None => match self
                .list(p.runmode)
                .await?
                .iter()
                .filter_map(|r| r.release.version.parse::<Version>().ok())
                .max()
            {
                Some(v) => Version(v.0, v.1, v.2 + 1).to_string(),
                None => "0.1.0".into(),
            },
        };
        let mut flists = Vec::new();
        for f in p.flists {
            flists.push(self.runtime_flist(f).await?);
        }
        let debug = match p.debug {
            Some(f) => Some(self.runtime_flist(f).await?),
            None => None,
        };
        let kernel = self.upload("kernel", p.kernel, uploader, progress).await?;
        let initramfs = self
            .upload("initramfs", p.initramfs, uploader, progress)
            .await?;
        let release = Release {
            version,
            runmode: p.runmode,
            created: auth::unix_now(),
            kernel,
            initramfs,
            flists,
            debug,
        };
        let signed = release.sign_with(terms, &p.keys.iter().collect::<Vec<_>>())?;
        Ok(self.put_release(&signed, uploader).await?)
    }

    /// Reads a file and uploads it as a boot file unless the grid has it.
    async fn upload(
        &self,
        what: &'static str,
        file: &Path,
        key: &Identity,
        progress: &dyn Fn(&Upload),
    ) -> Result<Artifact, PublishError> {
        let path = file.display().to_string();
        let data = std::fs::read(file).map_err(|source| PublishError::Read {
            what,
            path: path.clone(),
            source,
        })?;
        if data.is_empty() {
            return Err(PublishError::Empty { what, path });
        }
        let sha256 = sha256_hex(&data);
        let size = data.len() as u64;
        if self.has_file(&sha256).await? {
            progress(&Upload::Present {
                what,
                sha256: sha256.clone(),
                size,
            });
        } else {
            let stored = self.put_file(data, key).await?;
            progress(&Upload::Uploaded {
                what,
                sha256: stored.sha256,
                size: stored.size,
            });
        }
        Ok(Artifact { sha256, size })
    }

    /// Reads the flist of `spec` and checks it has the SHA-256 `spec` names.
    pub async fn runtime_flist(&self, spec: &FlistSpec) -> Result<RuntimeFlist, PublishError> {
        let (url, data) = match &spec.source {
            FlistSource::File(path) => (
                path.display().to_string(),
                std::fs::read(path).map_err(|source| PublishError::Read {
                    what: "flist",
                    path: path.display().to_string(),
                    source,
                })?,
            ),
            FlistSource::Hub | FlistSource::Url(_) => {
                let url = match &spec.source {
                    FlistSource::Url(u) => u.clone(),
                    _ => format!("{}/api/v1/hub/flists/by-hash/{}", self.base, spec.sha256),
                };
                let data = self.fetch(&url).await?;
                (url, data)
            }
        };
        let got = sha256_hex(&data);
        if got != spec.sha256 {
            return Err(PublishError::FlistHash {
                name: spec.name.clone(),
                url,
                got,
                want: spec.sha256.clone(),
            });
        }
        Ok(RuntimeFlist {
            name: spec.name.clone(),
            sha256: got,
            size: data.len() as u64,
        })
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, ClientError> {
        let transport = |source| ClientError::Transport {
            url: url.to_string(),
            source,
        };
        let resp = self.http.get(url).send().await.map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok(body.to_vec())
    }

    /// Sends a request to `route` (signed with `body.1` when there is a body) and decodes the
    /// JSON answer.
    pub(crate) async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<(Vec<u8>, &Identity)>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{route}", self.base);
        let parsed = reqwest::Url::parse(&url).map_err(|_| ClientError::Url(url.clone()))?;
        let mut req = self.http.request(method.clone(), parsed.clone());
        if let Some((bytes, key)) = body {
            let path = match parsed.query() {
                Some(q) => format!("{}?{q}", parsed.path()),
                None => parsed.path().to_string(),
            };
            let auth = RequestAuth::sign(
                key,
                Signer::Key(key.public_key()),
                method.as_str(),
                &path,
                auth::unix_now(),
                &bytes,
            );
            req = req.header(auth::HEADER, auth.to_string()).body(bytes);
        }
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            url,
            source: DecodeError::Json(source),
        })
    }
}

/// The grid's error answer as a [`ClientError::Api`].
pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let raw = String::from_utf8_lossy(body);
            let raw = raw.trim();
            if raw.is_empty() {
                status.canonical_reason().unwrap_or("no message").into()
            } else {
                raw.chars().take(512).collect()
            }
        }
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flist_specs() {
        let sha = "a".repeat(64);
        let hub: FlistSpec = format!("zos=@{sha}").parse().unwrap();
        assert_eq!(hub.source, FlistSource::Hub);
        let url: FlistSpec = format!("zos=http://h/x.fl@{}", "A".repeat(64))
            .parse()
            .unwrap();
        assert_eq!(url.source, FlistSource::Url("http://h/x.fl".into()));
        assert_eq!(url.sha256, sha, "hashes are lower-cased");
        let file: FlistSpec = format!("zos=/tmp/x.fl@{sha}").parse().unwrap();
        assert_eq!(file.source, FlistSource::File("/tmp/x.fl".into()));
        for bad in ["zos", "zos=x", &format!("=@{sha}"), "zos=@abc"] {
            assert!(bad.parse::<FlistSpec>().is_err(), "{bad}");
        }
    }
}
