//! Extractors of the HTTP layer: the signed request ([`Signed`]), and path and query parameters
//! whose rejections answer the registry's JSON errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use zos_types::TwinId;
use zos_types::auth::{self, AuthError, RequestAuth, Signer};

use crate::api::AppState;
use crate::error::ApiFailure;
use crate::replay::ReplayError;

/// A request whose signature has been checked: the signer is who they claim, the request is
/// inside the time window and was not received before. Ownership is the handler's to check.
#[derive(Debug)]
pub struct Signed {
    pub signer: Signer,
    pub body: Bytes,
}

impl Signed {
    /// The signing twin; requests signed by a bare key (`key=`) are refused.
    pub fn twin(&self) -> Result<TwinId, ApiFailure> {
        match self.signer {
            Signer::Twin(id) => Ok(id),
            Signer::Key(_) => Err(ApiFailure::Unauthorized(
                "this request must be signed by a registered twin (twin=), not a bare key".into(),
            )),
        }
    }

    /// The body as JSON of `T`; errors name the field that is wrong.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiFailure> {
        parse_json(&self.body)
    }
}

/// Parses a JSON body; the error names the offending field path.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiFailure> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiFailure::BadRequest(format!("invalid JSON body: {inner}"))
        } else {
            ApiFailure::BadRequest(format!("invalid JSON body: {path}: {inner}"))
        }
    })?;
    Ok(value)
}

impl FromRequest<AppState> for Signed {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiFailure> {
        let method = req.method().as_str().to_string();
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.uri().path().to_string());
        let header = req
            .headers()
            .get(auth::HEADER)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed("header is not ASCII".into()))?;
        let request_auth = RequestAuth::parse(header)?;
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiFailure::TooLarge(zos_types::registry::MAX_BODY_BYTES)
            } else {
                ApiFailure::BadRequest(format!("cannot read the body: {}", rejection.body_text()))
            }
        })?;
        let key = match request_auth.signer {
            Signer::Key(key) => key,
            Signer::Twin(id) => state.run(move |s| s.twin_key(id)).await?.ok_or_else(|| {
                ApiFailure::Unauthorized(format!(
                    "twin {id} does not exist: the request must be signed by a registered twin"
                ))
            })?,
        };
        let now = state.now();
        request_auth.verify(&key, &method, &target, &body, now)?;
        state
            .replay()
            .check_and_insert(&request_auth.signature, request_auth.timestamp, now)
            .map_err(|e| match e {
                ReplayError::Replay => ApiFailure::from(AuthError::Replay),
                ReplayError::Full(_) => {
                    tracing::warn!(error = %e, "refusing a signed request");
                    ApiFailure::Unavailable(
                        "the registry is receiving more signed requests than it can remember: try again later"
                            .into(),
                    )
                }
            })?;
        Ok(Signed {
            signer: request_auth.signer,
            body,
        })
    }
}

/// Path parameters; a parameter that does not parse answers 400.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r| ApiFailure::BadRequest(format!("invalid path: {}", r.body_text())))
    }
}

/// Query parameters; unknown or malformed ones answer 400.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| ApiFailure::BadRequest(format!("invalid query: {}", r.body_text())))
    }
}
