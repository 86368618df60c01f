//! The boot service: the iPXE script of each farm, the kernels and initramfs images nodes boot
//! (by SHA-256), and the signed releases of the node OS, per runmode.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /boot/{runmode}/farms/{farm}.ipxe` | none | the farm's iPXE script for the current release; 404 for an unknown farm or no release; `?admission=TOKEN` and `?args=A,B` (only `zos-debug`, `zos-upgrade-gate=SECS`, `zos-upgrade-check=SECS`; anything else is a 400) go on the kernel command line |
//! | `GET /boot/files/{sha256}` (and `HEAD`) | none | a boot file by its SHA-256 |
//! | `PUT /boot/files/{sha256}` | a release key | store a boot file; the body must hash to the path, at most `max_file_bytes` |
//! | `GET /releases/{runmode}` | none | the current [`SignedRelease`]: the newest whose rollout is not halted |
//! | `GET /releases/{runmode}/{version}` | none | that version |
//! | `GET /releases?runmode=R` | none | every release of `R`, newest first ([`ReleaseSummary`]) |
//! | `PUT /releases/{runmode}` | a release key of `runmode` | publish a [`SignedRelease`] |
//! | `GET`/`PUT /releases/{runmode}/root` | none / a key of the current root | the root of trust and its rotations ([`roots`]) |
//! | `GET /releases/{runmode}/status`, `/for-node/{id}`, `PUT /{version}/rollout`, `POST /api/v1/nodes/{id}/upgrade` | see [`rollout`] | staged rollouts and what nodes report |
//!
//! Who may publish: the grid's operator configures, per runmode, the release keys and threshold
//! the grid checks releases against ([`BootConfig::release_keys`], `zos-grid serve
//! --release-keys RUNMODE=FILE`): that is root 1; a signed rotation replaces it ([`roots`]). A publishing request is signed (the registry's scheme) with
//! `key=` one of those keys: no twin is involved, and a runmode without keys takes nothing. A
//! release is then taken only when it verifies against that runmode's keys and threshold, is
//! newer than the current one, and names a kernel and initramfs already uploaded here and runtime
//! flists already on this grid's hub, each with the size the manifest says. Nothing is ever
//! overwritten: files are kept by hash, releases by version.
//!
//! Storage: `boot/files/<sha256>` and `boot/releases/<runmode>/<version>.json` in the grid's data
//! directory. Old files and releases are kept (no garbage collection yet).

mod for_node;
mod reports;
mod rollout;
mod roots;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use zos_types::auth::Signer;
use zos_types::boot::{GridUrl, NodeArg, Published, ReleaseSummary, StoredFile};
use zos_types::policy::{AdmissionError, AdmissionToken};
use zos_types::release::{
    MAX_MANIFEST_BYTES, MAX_SIGNATURES, Release, ReleaseError, ReleaseKeys, RunMode, SignedRelease,
    Version, is_sha256_hex, terms::Terms,
};
use zos_types::{FarmId, PublicKey};

use crate::auth::{ApiPath, ApiQuery, Claim};
use crate::error::ApiFailure;
use crate::hub::Hub;
use crate::replay::Refusal;
use crate::state::AppState;

/// Largest boot file taken by default (a kernel is about 10 MiB, a node initramfs some tens).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Largest `PUT /releases/{runmode}` body: a manifest at its limit, JSON-escaped, and signatures.
pub const MAX_RELEASE_BODY: usize = 2 * MAX_MANIFEST_BYTES + MAX_SIGNATURES * 256 + 1024;

/// How the boot service runs.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The keys (and threshold) releases of each runmode must be signed with; a runmode absent
    /// here serves nothing and takes nothing.
    pub release_keys: BTreeMap<RunMode, ReleaseKeys>,
    /// The grid's URL as nodes reach it, written into boot scripts. `None`: the URL the node
    /// asked (its `Host` header, over plain HTTP).
    pub grid_url: Option<String>,
    /// Largest boot file taken.
    pub max_file_bytes: u64,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            release_keys: BTreeMap::new(),
            grid_url: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Failures to open the boot service.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot prepare boot directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored release {path} is unreadable: {message}")]
    Stored { path: PathBuf, message: String },
    #[error("release keys of runmode {runmode}: {source}")]
    Keys {
        runmode: RunMode,
        #[source]
        source: ReleaseError,
    },
    #[error("boot service: {0}")]
    Url(#[from] zos_types::boot::BadGridUrl),
    #[error("release root of runmode {runmode}: {message}")]
    Root { runmode: RunMode, message: String },
}

/// A stored release: what was published and its parsed manifest.
#[derive(Debug, Clone)]
struct Stored {
    signed: SignedRelease,
    release: Release,
    terms: Terms,
}

/// The boot service's state.
#[derive(Debug)]
pub struct Boot {
    dir: PathBuf,
    config: BootConfig,
    grid_url: Option<GridUrl>,
    roots: Mutex<BTreeMap<RunMode, roots::Chain>>,
    rollouts: Mutex<BTreeMap<(RunMode, Version), rollout::Record>>,
    rollout_io: tokio::sync::Mutex<()>,
    releases: Mutex<BTreeMap<RunMode, BTreeMap<Version, Stored>>>,
    publishing: tokio::sync::Mutex<()>,
    fetches: Mutex<HashMap<String, u64>>,
}

impl Boot {
    /// Opens (creating) `boot/` in the grid's data directory and loads the stored releases.
    pub fn open(data_dir: &Path, config: BootConfig) -> Result<Self, BootError> {
        let dir = data_dir.join("boot");
        let mk = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|source| BootError::Dir {
                path: p.to_owned(),
                source,
            })
        };
        mk(&dir.join("files"))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|source| BootError::Dir {
                path: tmp.clone(),
                source,
            })?;
        }
        mk(&tmp)?;
        for (runmode, keys) in &config.release_keys {
            keys.validate().map_err(|source| BootError::Keys {
                runmode: *runmode,
                source,
            })?;
        }
        let roots = roots::load(&dir, &config.release_keys)?;
        let mut releases = BTreeMap::new();
        for runmode in RunMode::ALL {
            let rdir = dir.join("releases").join(runmode.as_str());
            mk(&rdir)?;
            let mut versions = BTreeMap::new();
            let entries = std::fs::read_dir(&rdir).map_err(|source| BootError::Dir {
                path: rdir.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(v) = name.strip_suffix(".json") else {
                    continue;
                };
                let stored = load_release(&path, v)?;
                versions.insert(stored.release.version()?, stored);
            }
            releases.insert(runmode, versions);
        }
        let rollouts = rollout::load(&dir, &releases)?;
        let grid_url = config.grid_url.as_deref().map(GridUrl::parse).transpose()?;
        tracing::info!(
            dir = %dir.display(),
            runmodes = ?config.release_keys.keys().collect::<Vec<_>>(),
            "boot service opened"
        );
        Ok(Self {
            dir,
            config,
            grid_url,
            roots: Mutex::new(roots),
            rollouts: Mutex::new(rollouts),
            rollout_io: tokio::sync::Mutex::new(()),
            releases: Mutex::new(releases),
            publishing: tokio::sync::Mutex::new(()),
            fetches: Mutex::new(HashMap::new()),
        })
    }

    /// How many times the boot file with this SHA-256 was fetched since the grid started.
    pub fn fetches(&self, sha256: &str) -> u64 {
        let f = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        f.get(sha256).copied().unwrap_or(0)
    }

    fn file_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("files").join(sha256)
    }

    fn releases(&self) -> std::sync::MutexGuard<'_, BTreeMap<RunMode, BTreeMap<Version, Stored>>> {
        self.releases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self, runmode: RunMode) -> Option<Stored> {
        let r = self.releases();
        r.get(&runmode)
            .and_then(|v| v.last_key_value())
            .map(|(_, s)| s.clone())
    }
}

impl From<ReleaseError> for BootError {
    fn from(e: ReleaseError) -> Self {
        BootError::Stored {
            path: PathBuf::new(),
            message: e.to_string(),
        }
    }
}

fn load_release(path: &Path, version: &str) -> Result<Stored, BootError> {
    let bad = |message: String| BootError::Stored {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let signed: SignedRelease = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let (release, terms) =
        zos_types::release::terms::decode(&signed.manifest).map_err(|e| bad(e.to_string()))?;
    if release.version != version {
        return Err(bad(format!("it holds version {}", release.version)));
    }
    Ok(Stored {
        signed,
        release,
        terms,
    })
}

/// The boot service's routes, ready to merge into the grid's router.
pub fn router(state: AppState, boot: Arc<Boot>, hub: Arc<Hub>) -> Router {
    let max_file = usize::try_from(boot.config.max_file_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/boot/{runmode}/farms/{file}", get(farm_script))
        .route(
            "/boot/files/{sha256}",
            limited(get(get_file).put(put_file), max_file),
        )
        .route("/releases", get(list_releases))
        .route(
            "/releases/{runmode}",
            limited(get(current_release).put(put_release), MAX_RELEASE_BODY),
        )
        .route(
            "/releases/{runmode}/root",
            limited(
                get(roots::get_root).put(roots::put_root),
                roots::MAX_ROOT_BODY,
            ),
        )
        .route("/releases/{runmode}/{version}", get(release_version))
        .route("/releases/{runmode}/status", get(rollout::status))
        .route("/releases/{runmode}/for-node/{id}", get(for_node::for_node))
        .route(
            "/releases/{runmode}/{version}/rollout",
            limited(axum::routing::put(rollout::change), 8 * 1024),
        )
        .route(
            &format!("{}/nodes/{{id}}/upgrade", zos_types::registry::API_PREFIX),
            limited(axum::routing::post(reports::report), 8 * 1024),
        )
        .method_not_allowed_fallback(wrong_method)
        .layer(Extension(boot))
        .layer(Extension(hub))
        .with_state(state)
}

/// Bodies over `max` bytes are refused with 413 before anything else happens.
fn limited(route: MethodRouter<AppState>, max: usize) -> MethodRouter<AppState> {
    route
        .layer(DefaultBodyLimit::max(max))
        .layer(middleware::from_fn_with_state(max, refuse_large))
}

async fn refuse_large(State(max): State<usize>, mut req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return ApiFailure::TooLarge(max).into_response();
    }
    req.extensions_mut().insert(BodyLimitHint(max));
    next.run(req).await
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

fn runmode(raw: &str) -> Result<RunMode, ApiFailure> {
    raw.parse::<RunMode>()
        .map_err(|e| ApiFailure::BadRequest(e.to_string()))
}

/// The runmode of a path, and the keys this grid checks its releases with.
fn served(boot: &Boot, raw: &str) -> Result<(RunMode, ReleaseKeys), ApiFailure> {
    let mode = runmode(raw)?;
    let keys = boot.root(mode).map(|r| r.release_keys()).ok_or_else(|| {
        ApiFailure::NotFound(format!(
            "this grid serves no releases of runmode {mode} (its operator configured no release keys for it)"
        ))
    })?;
    Ok((mode, keys))
}

fn sha_path(raw: &str) -> Result<String, ApiFailure> {
    if is_sha256_hex(raw) {
        Ok(raw.to_string())
    } else {
        Err(ApiFailure::BadRequest(format!(
            "{:?} is not a SHA-256 (64 lowercase hex digits)",
            raw.chars().take(80).collect::<String>()
        )))
    }
}

// ---- scripts ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptQuery {
    /// The farm's admission token, checked and then put on the command line.
    admission: Option<String>,
    /// Extra node arguments ([`NodeArg`]), comma-separated, checked and then put on the
    /// command line.
    args: Option<String>,
}

async fn farm_script(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    headers: HeaderMap,
    ApiPath((mode, file)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<ScriptQuery>,
) -> Result<Response, ApiFailure> {
    let (mode, _) = served(&boot, &mode)?;
    let farm: FarmId = file
        .strip_suffix(".ipxe")
        .filter(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            ApiFailure::BadRequest(format!(
                "{:?} is not a farm's script: ask for FARM_ID.ipxe",
                file.chars().take(80).collect::<String>()
            ))
        })?;
    let Some(found) = app.run(move |s| s.farm(farm)).await? else {
        return Err(ApiFailure::NotFound(format!("farm {farm} does not exist")));
    };
    let args = NodeArg::parse_list(query.args.as_deref().unwrap_or_default())
        .map_err(|e| ApiFailure::BadRequest(e.to_string()))?;
    let admission = match query.admission {
        None => None,
        Some(raw) => {
            let token: AdmissionToken = raw
                .parse()
                .map_err(|e: AdmissionError| ApiFailure::BadRequest(e.to_string()))?;
            let farmer = found.twin_id;
            let key = app
                .run(move |s| s.twin_key(farmer))
                .await?
                .ok_or_else(|| ApiFailure::NotFound(format!("twin {farmer} does not exist")))?;
            token
                .check(farm, &key, app.now())
                .map_err(|e| ApiFailure::Forbidden(format!("admission: {e}")))?;
            Some(token)
        }
    };
    let current = boot.serving(mode).ok_or_else(|| {
        ApiFailure::NotFound(format!(
            "no release of runmode {mode} is published yet: publish one (zos release publish)"
        ))
    })?;
    let grid = match &boot.grid_url {
        Some(u) => u.clone(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .ok_or_else(|| ApiFailure::BadRequest("the request has no Host header".into()))?;
            GridUrl::from_host(host).map_err(|e| ApiFailure::BadRequest(e.to_string()))?
        }
    };
    let script = zos_types::boot::render(
        farm,
        mode,
        &grid,
        &current.release,
        admission.as_ref(),
        &args,
    )
    .map_err(|e| ApiFailure::internal("rendering a boot script", std::io::Error::other(e)))?;
    tracing::info!(
        farm,
        runmode = %mode,
        release = %current.release.version,
        args = %NodeArg::join(&args),
        "boot script served"
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        script,
    )
        .into_response())
}

// ---- files ----

async fn get_file(
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath(sha): ApiPath<String>,
) -> Result<Response, ApiFailure> {
    let sha = sha_path(&sha)?;
    let path = boot.file_path(&sha);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiFailure::NotFound(format!(
                "no boot file with SHA-256 {sha} on this grid"
            )));
        }
        Err(e) => return Err(ApiFailure::internal(format!("opening boot file {sha}"), e)),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiFailure::internal(format!("boot file {sha}"), e))?
        .len();
    {
        let mut f = boot.fetches.lock().unwrap_or_else(|e| e.into_inner());
        *f.entry(sha.clone()).or_default() += 1;
    }
    tracing::info!(sha256 = %sha, size = len, "boot file served");
    let stream = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn put_file(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath(sha): ApiPath<String>,
    req: Request,
) -> Result<(StatusCode, Json<StoredFile>), ApiFailure> {
    use futures::StreamExt;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;

    let sha = sha_path(&sha)?;
    // The signature covers the body's SHA-256, which the path names: it is checked before one
    // byte of the body is read, and the body is then hashed as it streams to disk.
    let key = publisher_key(&boot, &req, app.now())?;
    let claim = Claim::of(&req, app.now())?;
    let a = &claim.auth;
    a.verify_digest(&key, &claim.method, &claim.target, &sha, app.now())?;
    admit(&app, a)?;

    let max = boot.config.max_file_bytes;
    let internal = |e: std::io::Error| ApiFailure::internal("storing a boot file", e);
    let (file, tmp) = tempfile::NamedTempFile::new_in(boot.dir.join("tmp"))
        .map_err(internal)?
        .into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut body = req.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            ApiFailure::BadRequest(format!("boot file {sha}: cannot read the body: {e}"))
        })?;
        size += chunk.len() as u64;
        if size > max {
            return Err(ApiFailure::TooLarge(
                usize::try_from(max).unwrap_or(usize::MAX),
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(internal)?;
    }
    if size == 0 {
        return Err(ApiFailure::BadRequest(format!(
            "boot file {sha}: the body is empty"
        )));
    }
    let got = hex::encode(hasher.finalize());
    if got != sha {
        return Err(ApiFailure::BadRequest(format!(
            "boot file {sha}: the body's SHA-256 is {got}; refused"
        )));
    }
    let dest = boot.file_path(&sha);
    let stored = if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
        false
    } else {
        file.sync_all().await.map_err(internal)?;
        drop(file);
        let d = dest.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
            tmp.persist(&d).map_err(|e| e.error)?;
            if let Some(dir) = d.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ApiFailure::internal("boot file task", e))?
        .map_err(internal)?;
        true
    };
    tracing::info!(sha256 = %sha, size, stored, %key, "boot file uploaded");
    let status = if stored {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(StoredFile {
            sha256: sha,
            size,
            stored,
        }),
    ))
}

// ---- releases ----

async fn current_release(
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath(mode): ApiPath<String>,
) -> Result<Json<SignedRelease>, ApiFailure> {
    let (mode, _) = served(&boot, &mode)?;
    boot.serving(mode).map(|s| Json(s.signed)).ok_or_else(|| {
        ApiFailure::NotFound(format!("no release of runmode {mode} is published yet"))
    })
}

async fn release_version(
    Extension(boot): Extension<Arc<Boot>>,
    ApiPath((mode, version)): ApiPath<(String, String)>,
) -> Result<Json<SignedRelease>, ApiFailure> {
    let (mode, _) = served(&boot, &mode)?;
    let v: Version = version
        .parse()
        .map_err(|e: ReleaseError| ApiFailure::BadRequest(e.to_string()))?;
    let r = boot.releases();
    r.get(&mode)
        .and_then(|m| m.get(&v))
        .map(|s| Json(s.signed.clone()))
        .ok_or_else(|| ApiFailure::NotFound(format!("runmode {mode} has no release {v}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    runmode: Option<String>,
}

async fn list_releases(
    Extension(boot): Extension<Arc<Boot>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<ReleaseSummary>>, ApiFailure> {
    let raw = q
        .runmode
        .ok_or_else(|| ApiFailure::BadRequest("runmode: the query parameter is required".into()))?;
    let (mode, _) = served(&boot, &raw)?;
    Ok(Json(boot.summaries(mode)))
}

impl Boot {
    /// The runmodes this grid serves releases of (those with release keys).
    pub fn runmodes(&self) -> Vec<RunMode> {
        RunMode::ALL
            .into_iter()
            .filter(|m| self.root(*m).is_some())
            .collect()
    }

    /// Every release of `mode`, newest first, as `GET /releases?runmode=` answers them.
    pub fn summaries(&self, mode: RunMode) -> Vec<ReleaseSummary> {
        let r = self.releases();
        r.get(&mode)
            .map(|m| {
                m.values()
                    .rev()
                    .map(|s| ReleaseSummary {
                        release: s.release.clone(),
                        signers: s.signed.signatures.iter().map(|g| g.key).collect(),
                        terms: s.terms.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn refused(e: ReleaseError) -> ApiFailure {
    match e {
        e @ ReleaseError::NotTrusted { .. } => ApiFailure::Forbidden(format!(
            "{e}: sign the release with this grid's release keys of its runmode"
        )),
        e => ApiFailure::BadRequest(e.to_string()),
    }
}

async fn put_release(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    Extension(hub): Extension<Arc<Hub>>,
    ApiPath(mode): ApiPath<String>,
    publisher: Publisher,
) -> Result<(StatusCode, Json<Published>), ApiFailure> {
    let (mode, keys) = served(&boot, &mode)?;
    if !keys.keys.contains(&publisher.key) {
        return Err(ApiFailure::Forbidden(format!(
            "key {} is not a release key of runmode {mode} on this grid",
            publisher.key
        )));
    }
    let signed: SignedRelease = crate::auth::parse_json(&publisher.body)?;
    let (release, terms) = signed.verify_at(&keys, mode, app.now()).map_err(refused)?;
    let version = release.version().map_err(refused)?;

    // The files it names must be here, with the sizes it says.
    for (what, a) in [
        ("kernel", &release.kernel),
        ("initramfs", &release.initramfs),
    ] {
        match tokio::fs::metadata(boot.file_path(&a.sha256)).await {
            Ok(m) if m.len() == a.size => {}
            Ok(m) => {
                return Err(ApiFailure::BadRequest(format!(
                    "the release's {what} {} is {} bytes here, the manifest says {}",
                    a.sha256,
                    m.len(),
                    a.size
                )));
            }
            Err(_) => {
                return Err(ApiFailure::BadRequest(format!(
                    "the release's {what} {} is not on this grid: upload it first (PUT /boot/files/{})",
                    a.sha256, a.sha256
                )));
            }
        }
    }
    for f in release.flists.iter().chain(release.debug.as_ref()) {
        let sha = f.sha256.clone();
        let h = hub.clone();
        let present = tokio::task::spawn_blocking(move || h.db().has_content(&sha))
            .await
            .map_err(|e| ApiFailure::internal("hub database task", e))?
            .map_err(|e| ApiFailure::internal("hub database", e))?;
        let size = match present {
            true => tokio::fs::metadata(hub.flist_path(&f.sha256))
                .await
                .map(|m| m.len())
                .ok(),
            false => None,
        };
        match size {
            Some(s) if s == f.size => {}
            Some(s) => {
                return Err(ApiFailure::BadRequest(format!(
                    "runtime flist {} ({}) is {s} bytes on the hub, the manifest says {}",
                    f.name, f.sha256, f.size
                )));
            }
            None => {
                return Err(ApiFailure::BadRequest(format!(
                    "runtime flist {} ({}) is not on this grid's hub: push it first (zos flist push)",
                    f.name, f.sha256
                )));
            }
        }
    }

    let _one_at_a_time = boot.publishing.lock().await;
    if let Some(cur) = boot.current(mode) {
        let cur_v = cur.release.version().map_err(refused)?;
        if cur_v == version && cur.signed.manifest == signed.manifest {
            return Ok((
                StatusCode::OK,
                Json(Published {
                    runmode: mode,
                    version: release.version,
                    published: false,
                }),
            ));
        }
        if version <= cur_v {
            return Err(ApiFailure::Conflict(format!(
                "release {version} of runmode {mode} is not newer than the current {cur_v}: publish a higher version"
            )));
        }
    }
    let path = boot
        .dir
        .join("releases")
        .join(mode.as_str())
        .join(format!("{version}.json"));
    let json = serde_json::to_vec_pretty(&signed)
        .map_err(|e| ApiFailure::internal("encoding a release", e))?;
    tokio::task::spawn_blocking(move || crate::write_file_atomically(&path, &json))
        .await
        .map_err(|e| ApiFailure::internal("release store task", e))?
        .map_err(|e| ApiFailure::internal("storing a release", e))?;
    let stored = Stored {
        signed,
        release: release.clone(),
        terms,
    };
    boot.start_rollout((mode, version), &stored).await?;
    boot.releases()
        .entry(mode)
        .or_default()
        .insert(version, stored);
    tracing::info!(runmode = %mode, %version, key = %publisher.key, "release published");
    app.relay().release_changed(mode, &version.to_string());
    Ok((
        StatusCode::CREATED,
        Json(Published {
            runmode: mode,
            version: release.version,
            published: true,
        }),
    ))
}

// ---- who may publish ----

/// A request signed (`key=`) by one of the grid's release keys, of any runmode; the key is
/// checked before the body is read, the signature after, then the replay cache.
#[derive(Debug)]
struct Publisher {
    key: PublicKey,
    body: Bytes,
}

/// The release key that signed `req` (`key=`), which must be one of the grid's; checked before
/// the body is read.
fn publisher_key(boot: &Boot, req: &Request, now: i64) -> Result<PublicKey, ApiFailure> {
    let claim = Claim::of(req, now)?;
    let Signer::Key(key) = claim.auth.signer else {
        return Err(ApiFailure::Unauthorized(
            "publishing boot files and releases is signed with a release key (key=<release public key>), not a twin: use zos release publish --release-key FILE".into(),
        ));
    };
    if !boot.is_publisher(&key) {
        return Err(ApiFailure::Forbidden(format!(
            "key {key} is not one of this grid's release keys: only its release publishers may upload, publish or steer rollouts"
        )));
    }
    Ok(key)
}

/// Records a checked signature in the replay cache (refusing one seen before).
fn admit(app: &AppState, a: &zos_types::auth::RequestAuth) -> Result<(), ApiFailure> {
    app.replay()
        .admit_bare_key(&a.signature, a.timestamp, app.now())
        .map_err(|e| match e {
            Refusal::Seen => ApiFailure::from(zos_types::auth::AuthError::Replay),
            _ => ApiFailure::Unavailable(
                "the registry is receiving more key-signed requests than it can remember: try again in a minute".into(),
            ),
        })
}

impl FromRequest<AppState> for Publisher {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiFailure> {
        let boot = req
            .extensions()
            .get::<Arc<Boot>>()
            .cloned()
            .ok_or_else(|| {
                ApiFailure::internal("boot routes", std::io::Error::other("no boot state"))
            })?;
        let key = publisher_key(&boot, &req, state.now())?;
        let claim = Claim::of(&req, state.now())?;
        let limit = req
            .extensions()
            .get::<BodyLimitHint>()
            .map(|h| h.0)
            .unwrap_or(0);
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiFailure::TooLarge(limit)
            } else {
                ApiFailure::BadRequest(format!("cannot read the body: {}", rejection.body_text()))
            }
        })?;
        let a = &claim.auth;
        a.verify(&key, &claim.method, &claim.target, &body, state.now())?;
        admit(state, a)?;
        Ok(Publisher { key, body })
    }
}

/// The body limit of a route, for messages.
#[derive(Debug, Clone, Copy)]
struct BodyLimitHint(usize);
