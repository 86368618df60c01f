//! Proposal routes (see the table in `zos_types::proposal`): deployments, updates and cancels
//! that the twins of a signature requirement approve together.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use zos_types::deployment::MAX_DEPLOYMENT_BYTES;
use zos_types::proposal::{
    CreateProposal, DEFAULT_LIFETIME_SECS, MAX_LIFETIME_SECS, MAX_REASON_BYTES, MIN_LIFETIME_SECS,
    Proposal, ProposalFilter, ProposalId, RejectProposal, SignProposal,
};
use zos_types::registry::API_PREFIX;

use crate::auth::{ApiPath, ApiQuery, Signed};
use crate::error::ApiFailure;
use crate::state::AppState;
use crate::store::NewProposal;

/// Largest body of `POST /proposals`: a whole deployment and a little around it.
pub const MAX_PROPOSAL_BODY: usize = MAX_DEPLOYMENT_BYTES + 4096;

pub fn routes() -> Router<AppState> {
    let p = |route: &str| format!("{API_PREFIX}{route}");
    Router::new()
        .route(
            &p("/proposals"),
            post(create)
                .layer(DefaultBodyLimit::max(MAX_PROPOSAL_BODY))
                .get(list),
        )
        .route(&p("/proposals/{id}"), get(show))
        .route(&p("/proposals/{id}/sign"), post(sign))
        .route(&p("/proposals/{id}/reject"), post(reject))
}

type Answer<T> = Result<Json<T>, ApiFailure>;

async fn create(
    State(app): State<AppState>,
    signed: Signed,
) -> Result<(StatusCode, Json<Proposal>), ApiFailure> {
    let twin = signed.twin()?;
    let body: CreateProposal = signed.json()?;
    let lifetime = body.lifetime_secs.unwrap_or(DEFAULT_LIFETIME_SECS);
    if !(MIN_LIFETIME_SECS..=MAX_LIFETIME_SECS).contains(&lifetime) {
        return Err(ApiFailure::BadRequest(format!(
            "lifetime_secs: {MIN_LIFETIME_SECS} to {MAX_LIFETIME_SECS} (30 days)"
        )));
    }
    if let Some(d) = &body.deployment {
        d.validate()
            .map_err(|e| ApiFailure::BadRequest(format!("deployment: {e}")))?;
    }
    let new = NewProposal {
        proposer: twin,
        kind: body.kind,
        node: body.node_id,
        contract: body.contract_id,
        deployment: body.deployment,
        signature: body.signature,
        lifetime_secs: lifetime,
    };
    let now = app.now();
    let p = app.run(move |s| s.create_proposal(new, now)).await?;
    tracing::info!(proposal = p.id, kind = %p.kind, twin, node = p.node_id, state = %p.state, "proposal created");
    Ok((StatusCode::CREATED, Json(p)))
}

async fn list(
    State(app): State<AppState>,
    ApiQuery(f): ApiQuery<ProposalFilter>,
    signed: Signed,
) -> Answer<Vec<Proposal>> {
    let twin = signed.twin()?;
    let now = app.now();
    Ok(Json(app.run(move |s| s.proposals(twin, &f, now)).await?))
}

async fn show(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<ProposalId>,
    signed: Signed,
) -> Answer<Proposal> {
    let twin = signed.twin()?;
    let now = app.now();
    let p = app
        .run(move |s| s.proposal(id, now))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("proposal {id} does not exist")))?;
    if p.proposer != twin && !p.names(twin) {
        return Err(ApiFailure::Forbidden(format!(
            "twin {twin} is not among the twins of proposal {id}: only they read it"
        )));
    }
    Ok(Json(p))
}

async fn sign(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<ProposalId>,
    signed: Signed,
) -> Answer<Proposal> {
    let twin = signed.twin()?;
    let body: SignProposal = signed.json()?;
    let now = app.now();
    let p = app
        .run(move |s| s.sign_proposal(id, twin, body.signature, now))
        .await?;
    tracing::info!(proposal = id, twin, state = %p.state, contract = ?p.contract_id, "proposal signed");
    Ok(Json(p))
}

async fn reject(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<ProposalId>,
    signed: Signed,
) -> Answer<Proposal> {
    let twin = signed.twin()?;
    let body: RejectProposal = signed.json()?;
    if body.reason.len() > MAX_REASON_BYTES {
        return Err(ApiFailure::BadRequest(format!(
            "reason: at most {MAX_REASON_BYTES} bytes"
        )));
    }
    let now = app.now();
    let p = app
        .run(move |s| s.reject_proposal(id, twin, &body.reason, now))
        .await?;
    tracing::info!(proposal = id, twin, state = %p.state, "proposal rejected by a twin");
    Ok(Json(p))
}
