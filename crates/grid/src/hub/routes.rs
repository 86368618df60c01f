//! The hub's HTTP handlers (see the table in the module above).
//!
//! An upload is refused before one byte of its body is read when its declared length is over the
//! route's limit (413), its path names no valid block id or flist name (400), or its signer,
//! timestamp or twin is wrong (401, the [`Signed`] extractor); the body is then read only up to
//! the route's limit (one encoded block, or `HubConfig::max_flist_bytes`).

use std::collections::HashSet;
use std::sync::Arc;
use zos_runtime::error_chain;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use zos_flist::block::{MAX_ENCODED_SIZE, hash};
use zos_flist::hub::{
    FlistInfo, HUB_PATH, MAX_MISSING_IDS, PushOutcome, Pushed, SHA256_HEADER, check_name,
    parse_sha256,
};
use zos_flist::{BlockId, Flist, Kind};
use zos_types::registry::ApiError;

use super::db::{DbError, HubDb, NewContent};
use super::{Hub, MAX_MISSING_BODY};
use crate::auth::{ApiPath, ApiQuery, Signed, parse_json};
use crate::error::ApiFailure;
use crate::state::AppState;

/// The hub's routes, ready to merge into the grid's router.
pub fn router(state: AppState, hub: Arc<Hub>) -> Router {
    let p = |route: &str| format!("{HUB_PATH}{route}");
    let max_flist = usize::try_from(hub.config.max_flist_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route(
            &p("/blocks/missing"),
            limited(post(missing), MAX_MISSING_BODY),
        )
        .route(
            &p("/blocks/{id}"),
            limited(
                get(get_block).head(head_block).put(put_block),
                MAX_ENCODED_SIZE,
            ),
        )
        .route(&p("/flists"), get(list))
        .route(&p("/flists/{name}"), limited(post(push), max_flist))
        .route(&p("/flists/by-hash/{sha256}"), get(by_hash))
        .route(&p("/flists/{twin_id}/{name}"), get(by_name))
        .method_not_allowed_fallback(wrong_method)
        .layer(Extension(hub))
        .with_state(state)
}

/// Bodies over `max` bytes are refused with 413 before anything else happens.
fn limited(route: MethodRouter<AppState>, max: usize) -> MethodRouter<AppState> {
    route
        .layer(DefaultBodyLimit::max(max))
        .layer(middleware::from_fn_with_state(max, refuse_large))
}

fn too_large(max: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(ApiError {
            error: format!("request body is larger than {max} bytes"),
        }),
    )
        .into_response()
}

async fn refuse_large(State(max): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max);
    }
    next.run(req).await
}

async fn wrong_method(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

type Answer<T> = Result<Json<T>, ApiFailure>;

/// Runs a database operation on a blocking thread.
async fn db<T, F>(hub: &Arc<Hub>, f: F) -> Result<T, ApiFailure>
where
    T: Send + 'static,
    F: FnOnce(&HubDb) -> Result<T, DbError> + Send + 'static,
{
    let hub = hub.clone();
    tokio::task::spawn_blocking(move || f(&hub.db))
        .await
        .map_err(|e| ApiFailure::internal("hub database task", e))?
        .map_err(|e| match e {
            e @ DbError::NameTaken { .. } => ApiFailure::Conflict(e.to_string()),
            e => ApiFailure::internal("hub database", e),
        })
}

fn block_id(raw: &str) -> Result<BlockId, ApiFailure> {
    raw.parse().map_err(|_| {
        ApiFailure::BadRequest(format!(
            "block id {raw:?} is not 64 hex characters (a BLAKE2b-256)"
        ))
    })
}

/// The block id of an upload's path, checked before its body is read.
struct BlockPath(BlockId);

impl<S: Send + Sync> FromRequestParts<S> for BlockPath {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        let ApiPath(raw) = ApiPath::<String>::from_request_parts(parts, state).await?;
        Ok(BlockPath(block_id(&raw)?))
    }
}

/// The flist name of an upload's path, checked before its body is read.
struct FlistName(String);

impl<S: Send + Sync> FromRequestParts<S> for FlistName {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        let ApiPath(name) = ApiPath::<String>::from_request_parts(parts, state).await?;
        check_name(&name).map_err(ApiFailure::BadRequest)?;
        Ok(FlistName(name))
    }
}

// ---- blocks ----

async fn get_block(
    Extension(hub): Extension<Arc<Hub>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiFailure> {
    let id = block_id(&id)?;
    match hub.blocks.get(&id).await {
        Ok(data) => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            data,
        )
            .into_response()),
        Err(e) if e.is_not_found() => Err(ApiFailure::NotFound(format!(
            "block {id} is not on this hub"
        ))),
        Err(e) => Err(ApiFailure::internal("hub block store", e)),
    }
}

async fn head_block(
    Extension(hub): Extension<Arc<Hub>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiFailure> {
    let id = block_id(&id)?;
    if db(&hub, move |d| d.has_block(&id)).await? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiFailure::NotFound(format!(
            "block {id} is not on this hub"
        )))
    }
}

async fn put_block(
    State(app): State<AppState>,
    Extension(hub): Extension<Arc<Hub>>,
    BlockPath(id): BlockPath,
    signed: Signed,
) -> Result<Response, ApiFailure> {
    let twin = signed.twin()?;
    let data = signed.body;
    if data.is_empty() {
        return Err(ApiFailure::BadRequest(format!(
            "block {id}: the body is empty"
        )));
    }
    let got = hash(&data);
    if got != id.0 {
        return Err(ApiFailure::BadRequest(format!(
            "block {id}: the body does not hash to the id (its BLAKE2b-256 is {}); refused",
            hex::encode(got)
        )));
    }
    if db(&hub, move |d| d.has_block(&id)).await? {
        tracing::debug!(twin, block = %id, "block already on the hub");
        return Ok((StatusCode::OK, Json(json!({ "id": id, "stored": false }))).into_response());
    }
    hub.blocks
        .put(&id, &data)
        .await
        .map_err(|e| ApiFailure::internal("hub block store", e))?;
    let (size, now) = (data.len() as u64, app.now());
    db(&hub, move |d| d.add_block(&id, size, twin, now)).await?;
    tracing::debug!(twin, block = %id, size, "block stored");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "stored": true })),
    )
        .into_response())
}

async fn missing(
    Extension(hub): Extension<Arc<Hub>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Vec<BlockId>> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiFailure::BadRequest(format!(
                "request body is larger than {MAX_MISSING_BODY} bytes"
            ))
        } else {
            ApiFailure::BadRequest(format!("cannot read the body: {}", r.body_text()))
        }
    })?;
    let raw: Vec<String> = parse_json(&body)?;
    if raw.len() > MAX_MISSING_IDS {
        return Err(ApiFailure::BadRequest(format!(
            "at most {MAX_MISSING_IDS} block ids per request, got {}",
            raw.len()
        )));
    }
    let ids = raw
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<BlockId>()
                .map_err(|_| ApiFailure::BadRequest(format!("[{i}]: {s:?} is not a hex block id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(db(&hub, move |d| d.missing(&ids)).await?))
}

// ---- flists ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    #[serde(default)]
    replace: bool,
}

/// What the hub learned from a validated upload.
struct Checked {
    blocks: Vec<BlockId>,
    content_bytes: u64,
}

fn check_flist(path: &std::path::Path) -> Result<Checked, zos_flist::FormatError> {
    let fl = Flist::open(path)?;
    let mut seen = HashSet::new();
    let mut blocks = Vec::new();
    let mut content_bytes = 0u64;
    for (_, node) in fl.walk() {
        if node.attrs.kind() == Kind::File && node.link_to.is_none() {
            content_bytes = content_bytes.saturating_add(node.attrs.size);
        }
        for b in &node.blocks {
            if seen.insert(b.id) {
                blocks.push(b.id);
            }
        }
    }
    Ok(Checked {
        blocks,
        content_bytes,
    })
}

async fn push(
    State(app): State<AppState>,
    Extension(hub): Extension<Arc<Hub>>,
    FlistName(name): FlistName,
    ApiQuery(query): ApiQuery<PushQuery>,
    signed: Signed,
) -> Result<(StatusCode, Json<Pushed>), ApiFailure> {
    let twin = signed.twin()?;
    let bytes = signed.body;
    if bytes.is_empty() {
        return Err(ApiFailure::BadRequest(format!(
            "flist {name}: the body is empty (send the .fl file)"
        )));
    }
    let sha256 = zos_flist::hub::sha256_hex(&bytes);

    // Validate in a private temporary directory, under the flist's name so that messages name it.
    let (tmp, checked) = {
        let (hub, name) = (hub.clone(), name.clone());
        tokio::task::spawn_blocking(move || -> Result<_, ApiFailure> {
            let tmp = tempfile::Builder::new()
                .prefix("upload-")
                .tempdir_in(hub.tmp_dir())
                .map_err(|e| ApiFailure::internal("hub temporary directory", e))?;
            let file = tmp.path().join(&name);
            std::fs::write(&file, &bytes)
                .and_then(|_| std::fs::File::open(&file)?.sync_all())
                .map_err(|e| ApiFailure::internal("writing an upload", e))?;
            let checked = check_flist(&file).map_err(|e| {
                let chain = error_chain(&e).replace(&file.display().to_string(), &name);
                ApiFailure::BadRequest(format!("flist upload is not valid: {chain}"))
            })?;
            Ok((tmp, checked))
        })
        .await
        .map_err(|e| ApiFailure::internal("hub validation task", e))??
    };

    let ids = checked.blocks.clone();
    let lacking = db(&hub, move |d| d.missing(&ids)).await?;
    if let Some(first) = lacking.first() {
        return Err(ApiFailure::BadRequest(format!(
            "flist {name} references {} block(s) this hub does not have (first: {first}): \
             upload its blocks first (zos flist pack --hub)",
            lacking.len()
        )));
    }
    if !query.replace {
        let (n, s) = (name.clone(), sha256.clone());
        if let Some(cur) = db(&hub, move |d| d.current(twin, &n)).await?
            && cur.sha256 != s
        {
            return Err(ApiFailure::Conflict(format!(
                "flist {name} of twin {twin} already holds other content ({}): push with replace=true to replace it",
                cur.sha256
            )));
        }
    }

    // Keep the content under its hash (never overwriting: equal hash, equal bytes).
    let dest = hub.flist_path(&sha256);
    let size = {
        let (src, dest) = (tmp.path().join(&name), dest.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let size = std::fs::metadata(&src)?.len();
            if !dest.exists() {
                std::fs::rename(&src, &dest)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
                if let Some(dir) = dest.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            drop(tmp);
            Ok(size)
        })
        .await
        .map_err(|e| ApiFailure::internal("hub store task", e))?
        .map_err(|e| ApiFailure::internal("keeping a flist", e))?
    };
    let content = NewContent {
        sha256: sha256.clone(),
        size,
        content_bytes: checked.content_bytes,
        blocks: checked.blocks.len() as u64,
    };
    let now = app.now();
    let replace = query.replace;
    let n = name.clone();
    let (outcome, previous_sha256, flist) =
        db(&hub, move |d| d.publish(twin, &n, &content, replace, now)).await?;
    tracing::info!(twin, name = %name, sha256 = %sha256, ?outcome, "flist published");
    let status = match outcome {
        PushOutcome::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((
        status,
        Json(Pushed {
            outcome,
            previous_sha256,
            flist,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    twin_id: Option<u32>,
}

async fn list(
    Extension(hub): Extension<Arc<Hub>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Answer<Vec<FlistInfo>> {
    let twin = q
        .twin_id
        .ok_or_else(|| ApiFailure::BadRequest("twin_id: the query parameter is required".into()))?;
    Ok(Json(db(&hub, move |d| d.list(twin)).await?))
}

async fn send_flist(hub: &Hub, sha256: &str) -> Result<Response, ApiFailure> {
    let data = tokio::fs::read(hub.flist_path(sha256))
        .await
        .map_err(|e| ApiFailure::internal(format!("reading flist {sha256}"), e))?;
    let mut resp = (StatusCode::OK, data).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(sha256) {
        h.insert(SHA256_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha256}\"")) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn by_name(
    Extension(hub): Extension<Arc<Hub>>,
    ApiPath((twin, name)): ApiPath<(u32, String)>,
) -> Result<Response, ApiFailure> {
    check_name(&name).map_err(ApiFailure::BadRequest)?;
    let n = name.clone();
    let info = db(&hub, move |d| d.current(twin, &n))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("twin {twin} has no flist {name}")))?;
    send_flist(&hub, &info.sha256).await
}

async fn by_hash(
    Extension(hub): Extension<Arc<Hub>>,
    ApiPath(sha256): ApiPath<String>,
) -> Result<Response, ApiFailure> {
    let sha = parse_sha256(&sha256).ok_or_else(|| {
        ApiFailure::BadRequest(format!("sha256 {sha256:?} is not 64 hex characters"))
    })?;
    let s = sha.clone();
    if !db(&hub, move |d| d.has_content(&s)).await? {
        return Err(ApiFailure::NotFound(format!(
            "no flist with SHA-256 {sha} on this hub"
        )));
    }
    send_flist(&hub, &sha).await
}
