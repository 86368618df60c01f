//! The registry's HTTP API: routes and handlers of twins, farms and nodes, and [`router`], which
//! joins them with the contracts' and the relay's routes over one [`AppState`].
//!
//! Every handler follows the same order: the signature (the [`Signed`] extractor), then the
//! objects the path names (404), then ownership (403), then the body (400), then the store
//! (404/409). A request refused at any step has changed nothing.

use std::net::Ipv4Addr;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use zos_types::registry::{
    API_PREFIX, AddFarmIp, CreateFarm, CreateTwin, Farm, FarmIp, FarmPolicy, GridStats, Health,
    MAX_BODY_BYTES, Node, NodeFilter, NodeRegistration, PublicConfig, Twin, UptimePoint,
    UptimeReport,
};
use zos_types::{FarmId, NodeId, PublicKey, TwinId};

use crate::auth::{ApiPath, ApiQuery, KeySigned, Signed};
use crate::error::ApiFailure;
use crate::state::AppState;

/// The router of the registry API.
pub fn router(state: AppState) -> Router {
    let p = |route: &str| format!("{API_PREFIX}{route}");
    Router::new()
        .route(&p("/health"), get(health))
        .route(&p("/twins"), post(create_twin).get(find_twin))
        .route(&p("/twins/{id}"), get(get_twin))
        .route(&p("/farms"), post(create_farm).get(list_farms))
        .route(&p("/farms/{id}"), get(get_farm))
        .route(&p("/farms/{id}/ips"), post(add_farm_ip).get(list_farm_ips))
        .route(&p("/farms/{id}/ips/{ip}"), delete(remove_farm_ip))
        .route(&p("/farms/{id}/policy"), put(set_farm_policy))
        .route(&p("/nodes"), post(register_node).get(list_nodes))
        .route(&p("/nodes/{id}"), get(get_node))
        .route(&p("/nodes/{id}/public-config"), put(set_public_config))
        .route(
            &p("/nodes/{id}/uptime"),
            post(report_uptime).get(node_uptime),
        )
        .route(&p("/stats"), get(stats))
        .route(&p("/stats/history"), get(stats_history))
        .merge(crate::contracts::routes())
        .merge(crate::proposals::routes())
        .merge(crate::billing::routes())
        .merge(crate::relay::http::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

type Answer<T> = Result<Json<T>, ApiFailure>;
type Created<T> = Result<(StatusCode, Json<T>), ApiFailure>;

async fn no_route(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::NotFound(format!("no route {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

async fn health(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").into(),
        time: app.now(),
    })
}

// ---- twins ----

async fn create_twin(State(app): State<AppState>, signed: KeySigned) -> Created<Twin> {
    let signer = signed.key;
    let body: CreateTwin = signed.json()?;
    if body.public_key != signer {
        return Err(ApiFailure::Forbidden(format!(
            "public_key: {} is not the key that signed the request ({signer})",
            body.public_key
        )));
    }
    body.validate()?;
    let now = app.now();
    let twin = app
        .run(move |s| s.create_twin(body.public_key, body.relay, now))
        .await?;
    tracing::info!(twin = twin.id, key = %twin.public_key, "twin created");
    Ok((StatusCode::CREATED, Json(twin)))
}

async fn get_twin(State(app): State<AppState>, ApiPath(id): ApiPath<TwinId>) -> Answer<Twin> {
    app.run(move |s| s.twin(id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiFailure::NotFound(format!("twin {id} does not exist")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TwinQuery {
    public_key: Option<String>,
}

async fn find_twin(State(app): State<AppState>, ApiQuery(q): ApiQuery<TwinQuery>) -> Answer<Twin> {
    let raw = q.public_key.ok_or_else(|| {
        ApiFailure::BadRequest("public_key: the query parameter is required".into())
    })?;
    let key: PublicKey = raw.parse().map_err(|_| {
        ApiFailure::BadRequest(format!(
            "public_key: {raw:?} is not a hex ed25519 public key"
        ))
    })?;
    app.run(move |s| s.twin_by_key(&key))
        .await?
        .map(Json)
        .ok_or_else(|| ApiFailure::NotFound(format!("no twin has public key {key}")))
}

// ---- farms ----

async fn create_farm(State(app): State<AppState>, signed: Signed) -> Created<Farm> {
    let twin = signed.twin()?;
    let body: CreateFarm = signed.json()?;
    body.validate()?;
    let now = app.now();
    let farm = app
        .run(move |s| s.create_farm(&body.name, twin, now))
        .await?;
    tracing::info!(farm = farm.id, twin, name = %farm.name, "farm created");
    Ok((StatusCode::CREATED, Json(farm)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FarmQuery {
    name: Option<String>,
}

async fn list_farms(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<FarmQuery>,
) -> Answer<Vec<Farm>> {
    let farms = match q.name {
        Some(name) => app
            .run(move |s| s.farm_by_name(&name))
            .await?
            .into_iter()
            .collect(),
        None => app.run(|s| s.farms()).await?,
    };
    Ok(Json(farms))
}

async fn get_farm(State(app): State<AppState>, ApiPath(id): ApiPath<FarmId>) -> Answer<Farm> {
    Ok(Json(load_farm(&app, id).await?))
}

/// Farm `id`, as `GET /farms/{id}` answers it (404 when it does not exist).
pub async fn load_farm(app: &AppState, id: FarmId) -> Result<Farm, ApiFailure> {
    app.run(move |s| s.farm(id))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("farm {id} does not exist")))
}

fn ensure_farmer(farm: &Farm, twin: TwinId) -> Result<(), ApiFailure> {
    if farm.twin_id == twin {
        Ok(())
    } else {
        Err(ApiFailure::Forbidden(format!(
            "twin {twin} is not the farmer of farm {} (twin {} is)",
            farm.id, farm.twin_id
        )))
    }
}

async fn add_farm_ip(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<FarmId>,
    signed: Signed,
) -> Created<Farm> {
    let twin = signed.twin()?;
    ensure_farmer(&load_farm(&app, id).await?, twin)?;
    let body: AddFarmIp = signed.json()?;
    body.validate()?;
    let now = app.now();
    let ip = body.ip;
    let farm = app.run(move |s| s.add_farm_ip(id, &body, now)).await?;
    tracing::info!(farm = id, twin, %ip, "farm IP added");
    Ok((StatusCode::CREATED, Json(farm)))
}

async fn remove_farm_ip(
    State(app): State<AppState>,
    ApiPath((id, ip)): ApiPath<(FarmId, String)>,
    signed: Signed,
) -> Answer<Farm> {
    let twin = signed.twin()?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| {
        ApiFailure::BadRequest(format!("ip: {ip:?} is not an IPv4 address (no prefix)"))
    })?;
    ensure_farmer(&load_farm(&app, id).await?, twin)?;
    let farm = app.run(move |s| s.remove_farm_ip(id, ip)).await?;
    tracing::info!(farm = id, twin, %ip, "farm IP removed");
    Ok(Json(farm))
}

async fn set_farm_policy(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<FarmId>,
    signed: Signed,
) -> Answer<Farm> {
    let twin = signed.twin()?;
    ensure_farmer(&load_farm(&app, id).await?, twin)?;
    let body: FarmPolicy = signed.json()?;
    body.validate()?;
    let farm = app.run(move |s| s.set_farm_policy(id, &body)).await?;
    tracing::info!(
        farm = id,
        twin,
        admission = farm.policy.node_admission.as_str(),
        rentable = farm.policy.rentable,
        flist_hosts = farm.policy.flist_hosts.len(),
        "farm policy set"
    );
    Ok(Json(farm))
}

async fn list_farm_ips(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<FarmId>,
) -> Answer<Vec<FarmIp>> {
    Ok(Json(app.run(move |s| s.farm_ips(id)).await?))
}

// ---- nodes ----

async fn register_node(State(app): State<AppState>, signed: Signed) -> Created<Node> {
    let twin = signed.twin()?;
    let body: NodeRegistration = signed.json()?;
    body.validate()?;
    let now = app.now();
    let (node, created) = app.run(move |s| s.upsert_node(twin, &body, now)).await?;
    if created {
        tracing::info!(node = node.id, twin, farm = node.farm_id, "node registered");
        Ok((StatusCode::CREATED, Json(node)))
    } else {
        tracing::debug!(node = node.id, twin, "node registration updated");
        Ok((StatusCode::OK, Json(node)))
    }
}

/// Node `id`, as `GET /nodes/{id}` answers it (404 when it does not exist).
pub async fn load_node(app: &AppState, id: NodeId) -> Result<Node, ApiFailure> {
    let now = app.now();
    app.run(move |s| s.node(id, now))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("node {id} does not exist")))
}

async fn set_public_config(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<NodeId>,
    signed: Signed,
) -> Answer<Node> {
    let twin = signed.twin()?;
    let node = load_node(&app, id).await?;
    let farm = load_farm(&app, node.farm_id).await?;
    ensure_farmer(&farm, twin).map_err(|_| {
        ApiFailure::Forbidden(format!(
            "twin {twin} is not the farmer of node {id}'s farm {} (twin {} is)",
            farm.id, farm.twin_id
        ))
    })?;
    let body: PublicConfig = signed.json()?;
    body.validate()?;
    let now = app.now();
    let node = app
        .run(move |s| s.set_public_config(id, &body, now))
        .await?;
    tracing::info!(node = id, twin, "node public config set");
    Ok(Json(node))
}

async fn report_uptime(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<NodeId>,
    signed: Signed,
) -> Answer<Node> {
    let twin = signed.twin()?;
    let node = load_node(&app, id).await?;
    if node.twin_id != twin {
        return Err(ApiFailure::Forbidden(format!(
            "twin {twin} is not node {id} (its twin is {})",
            node.twin_id
        )));
    }
    let body: UptimeReport = signed.json()?;
    let now = app.now();
    body.validate(now)?;
    body.check_used(&node.capacity)?;
    let node = app
        .run(move |s| s.report_uptime(id, body.uptime_secs, body.used, now))
        .await?;
    tracing::debug!(node = id, uptime = node.uptime_secs, "uptime reported");
    Ok(Json(node))
}

/// The longest `zos_version` a node filter takes.
pub const MAX_VERSION_FILTER: usize = 64;

/// Refuses a node filter the registry does not serve (a page too large, a version too long).
pub fn check_node_filter(filter: &NodeFilter) -> Result<(), ApiFailure> {
    if filter.limit.is_some_and(|l| l > NodeFilter::MAX_LIMIT) {
        return Err(ApiFailure::BadRequest(format!(
            "limit: at most {}",
            NodeFilter::MAX_LIMIT
        )));
    }
    if filter
        .zos_version
        .as_ref()
        .is_some_and(|v| v.len() > MAX_VERSION_FILTER)
    {
        return Err(ApiFailure::BadRequest(format!(
            "zos_version: at most {MAX_VERSION_FILTER} bytes"
        )));
    }
    Ok(())
}

/// The nodes passing `filter`, as `GET /nodes` answers them.
pub async fn nodes(app: &AppState, filter: NodeFilter) -> Result<Vec<Node>, ApiFailure> {
    check_node_filter(&filter)?;
    let now = app.now();
    app.run(move |s| s.nodes(&filter, now)).await
}

async fn list_nodes(
    State(app): State<AppState>,
    ApiQuery(filter): ApiQuery<NodeFilter>,
) -> Answer<Vec<Node>> {
    Ok(Json(nodes(&app, filter).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceQuery {
    /// Only what is at this server time (unix seconds) or later.
    since: Option<i64>,
}

async fn node_uptime(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<NodeId>,
    ApiQuery(q): ApiQuery<SinceQuery>,
) -> Answer<Vec<UptimePoint>> {
    load_node(&app, id).await?;
    let since = q.since.unwrap_or(i64::MIN);
    Ok(Json(app.run(move |s| s.node_uptime(id, since)).await?))
}

async fn stats(State(app): State<AppState>) -> Answer<GridStats> {
    let now = app.now();
    Ok(Json(app.run(move |s| s.stats(now)).await?))
}

async fn stats_history(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<SinceQuery>,
) -> Answer<Vec<GridStats>> {
    let since = q.since.unwrap_or(i64::MIN);
    Ok(Json(app.run(move |s| s.stats_history(since)).await?))
}

async fn get_node(State(app): State<AppState>, ApiPath(id): ApiPath<NodeId>) -> Answer<Node> {
    Ok(Json(load_node(&app, id).await?))
}
