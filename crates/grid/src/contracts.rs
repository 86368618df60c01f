//! Contract routes and the node event log (see the table in `zos_types::contract`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use zos_types::NodeId;
use zos_types::contract::{
    Contract, ContractFilter, CreateNameContract, CreateNodeContract, CreateRentContract,
    NodeEventRecord, SetGrace, UpdateNodeContract,
};
use zos_types::deployment::ContractId;
use zos_types::registry::API_PREFIX;

use crate::auth::{ApiPath, ApiQuery, Signed};
use crate::error::ApiFailure;
use crate::state::AppState;

/// Most addresses one node contract may reserve.
pub const MAX_PUBLIC_IPS: u32 = 64;
/// Most events one request answers.
pub const MAX_EVENTS: u32 = 1000;

pub fn routes() -> Router<AppState> {
    let p = |route: &str| format!("{API_PREFIX}{route}");
    Router::new()
        .route(&p("/contracts"), get(list))
        .route(&p("/contracts/node"), post(create_node))
        .route(&p("/contracts/name"), post(create_name))
        .route(&p("/contracts/rent"), post(create_rent))
        .route(
            &p("/contracts/{id}"),
            get(get_one).put(update).delete(cancel),
        )
        .route(&p("/contracts/{id}/grace"), post(grace))
        .route(&p("/nodes/{id}/events"), get(events))
}

type Answer<T> = Result<Json<T>, ApiFailure>;
type Created<T> = Result<(StatusCode, Json<T>), ApiFailure>;

async fn load(app: &AppState, id: ContractId) -> Result<Contract, ApiFailure> {
    app.run(move |s| s.contract(id))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("contract {id} does not exist")))
}

fn owner(c: &Contract, twin: u32) -> Result<(), ApiFailure> {
    if c.twin_id == twin {
        Ok(())
    } else {
        Err(ApiFailure::Forbidden(format!(
            "contract {} belongs to twin {}, not {twin}",
            c.id, c.twin_id
        )))
    }
}

/// A contract made by a proposal changes only through proposals of its twins.
async fn not_governed(app: &AppState, id: ContractId, what: &str) -> Result<(), ApiFailure> {
    let now = app.now();
    match app.run(move |s| s.contract_governor(id, now)).await? {
        None => Ok(()),
        Some(p) => Err(ApiFailure::Forbidden(format!(
            "contract {id} was made by proposal {p}: its twins approve every {what} together; propose it (`zos deployment {what}` does when the deployment names other twins)"
        ))),
    }
}

async fn create_node(State(app): State<AppState>, signed: Signed) -> Created<Contract> {
    let twin = signed.twin()?;
    let body: CreateNodeContract = signed.json()?;
    if body.public_ips > MAX_PUBLIC_IPS {
        return Err(ApiFailure::BadRequest(format!(
            "public_ips: at most {MAX_PUBLIC_IPS}"
        )));
    }
    let now = app.now();
    let c = app
        .run(move |s| {
            s.create_node_contract(
                twin,
                body.node_id,
                body.deployment_hash,
                body.public_ips,
                now,
            )
        })
        .await?;
    tracing::info!(contract = c.id, twin, node = ?c.node_id(), "node contract created");
    Ok((StatusCode::CREATED, Json(c)))
}

fn valid_name(name: &str) -> Result<(), ApiFailure> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiFailure::BadRequest(
            "name: 1 to 63 of a-z, A-Z, 0-9, '-', '_'".into(),
        ))
    }
}

async fn create_name(State(app): State<AppState>, signed: Signed) -> Created<Contract> {
    let twin = signed.twin()?;
    let body: CreateNameContract = signed.json()?;
    valid_name(&body.name)?;
    let now = app.now();
    let c = app
        .run(move |s| s.create_name_contract(twin, &body.name, now))
        .await?;
    tracing::info!(contract = c.id, twin, "name contract created");
    Ok((StatusCode::CREATED, Json(c)))
}

async fn create_rent(State(app): State<AppState>, signed: Signed) -> Created<Contract> {
    let twin = signed.twin()?;
    let body: CreateRentContract = signed.json()?;
    let now = app.now();
    let c = app
        .run(move |s| s.create_rent_contract(twin, body.node_id, now))
        .await?;
    tracing::info!(
        contract = c.id,
        twin,
        node = body.node_id,
        "rent contract created"
    );
    Ok((StatusCode::CREATED, Json(c)))
}

async fn get_one(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<ContractId>,
) -> Answer<Contract> {
    Ok(Json(load(&app, id).await?))
}

async fn list(
    State(app): State<AppState>,
    ApiQuery(f): ApiQuery<ContractFilter>,
) -> Answer<Vec<Contract>> {
    Ok(Json(app.run(move |s| s.contracts(&f)).await?))
}

async fn update(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<ContractId>,
    signed: Signed,
) -> Answer<Contract> {
    let twin = signed.twin()?;
    owner(&load(&app, id).await?, twin)?;
    not_governed(&app, id, "update").await?;
    let body: UpdateNodeContract = signed.json()?;
    let now = app.now();
    let c = app
        .run(move |s| s.update_node_contract(id, body.deployment_hash, now))
        .await?;
    tracing::info!(contract = id, twin, "node contract updated");
    Ok(Json(c))
}

async fn cancel(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<ContractId>,
    signed: Signed,
) -> Answer<Contract> {
    let twin = signed.twin()?;
    owner(&load(&app, id).await?, twin)?;
    not_governed(&app, id, "cancel").await?;
    let now = app.now();
    let c = app.run(move |s| s.cancel_contract(id, now)).await?;
    tracing::info!(contract = id, twin, "contract cancelled");
    Ok(Json(c))
}

async fn grace(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<ContractId>,
    signed: Signed,
) -> Answer<Contract> {
    let twin = signed.twin()?;
    match app.admin() {
        None => {
            return Err(ApiFailure::Forbidden(
                "this grid has no admin twin: start zos-grid with --admin-twin ID".into(),
            ));
        }
        Some(admin) if admin != twin => {
            return Err(ApiFailure::Forbidden(format!(
                "only the grid's admin twin {admin} sets grace periods"
            )));
        }
        Some(_) => {}
    }
    load(&app, id).await?;
    let body: SetGrace = signed.json()?;
    let now = app.now();
    let c = app.run(move |s| s.set_grace(id, body.grace, now)).await?;
    tracing::info!(contract = id, grace = body.grace, "grace period changed");
    Ok(Json(c))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

async fn events(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<NodeId>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    signed: Signed,
) -> Answer<Vec<NodeEventRecord>> {
    let twin = signed.twin()?;
    let now = app.now();
    let node = app
        .run(move |s| s.node(id, now))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("node {id} does not exist")))?;
    if node.twin_id != twin {
        return Err(ApiFailure::Forbidden(format!(
            "only node {id}'s own twin reads its events"
        )));
    }
    Ok(Json(
        app.run(move |s| s.node_events(id, q.after, MAX_EVENTS))
            .await?,
    ))
}
