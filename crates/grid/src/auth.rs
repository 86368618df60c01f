//! Extractors of the HTTP layer: the signed request ([`Signed`] for twins, [`KeySigned`] for the
//! few routes a bare key may sign), and path and query parameters whose rejections answer the
//! registry's JSON errors.
//!
//! A signed request is checked in the order that costs an attacker the most and the registry the
//! least: the header is parsed, the signer must be of the kind the route takes, the timestamp must
//! be inside the window and a twin must exist — all before one byte of the body is read — then the
//! body is read (at most the route's limit), the signature verified, and only then is the
//! signature recorded in the replay cache, in the share of that signer (see [`crate::replay`]).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use zos_types::auth::{self, AuthError, MAX_SKEW_SECS, RequestAuth, Signer};
use zos_types::{PublicKey, TwinId};

use crate::error::ApiFailure;
use crate::replay::Refusal;
use crate::state::AppState;

/// A request signed by a registered twin (`twin=`) whose signature has been checked: the signer
/// is who they claim, the request is inside the time window and was not received before.
/// Ownership is the handler's to check.
#[derive(Debug)]
pub struct Signed {
    pub signer: Signer,
    pub body: Bytes,
}

impl Signed {
    /// The signing twin (a [`Signed`] request is always signed by one).
    pub fn twin(&self) -> Result<TwinId, ApiFailure> {
        match self.signer {
            Signer::Twin(id) => Ok(id),
            Signer::Key(_) => Err(bare_key_refused()),
        }
    }

    /// The body as JSON of `T`; errors name the field that is wrong.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiFailure> {
        parse_json(&self.body)
    }
}

/// A request signed by a bare key (`key=`): only twin creation takes one, by the key being
/// registered. Checked as [`Signed`] is; recorded in the replay cache's bare-key pool.
#[derive(Debug)]
pub struct KeySigned {
    pub key: PublicKey,
    pub body: Bytes,
}

impl KeySigned {
    /// The body as JSON of `T`; errors name the field that is wrong.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiFailure> {
        parse_json(&self.body)
    }
}

fn bare_key_refused() -> ApiFailure {
    ApiFailure::Unauthorized(
        "this request must be signed by a registered twin (twin=), not a bare key: create the twin first (zos twin create)"
            .into(),
    )
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

/// What a request claims before its body is read: method, target and parsed header, with the
/// timestamp already checked against the window.
pub(crate) struct Claim {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) auth: RequestAuth,
}

impl Claim {
    pub(crate) fn of(req: &Request, now: i64) -> Result<Self, ApiFailure> {
        let header = req
            .headers()
            .get(auth::HEADER)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed("header is not ASCII".into()))?;
        let auth = RequestAuth::parse(header)?;
        if auth.timestamp.abs_diff(now) > MAX_SKEW_SECS.unsigned_abs() {
            return Err(AuthError::Stale {
                ts: auth.timestamp,
                now,
            }
            .into());
        }
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.uri().path().to_string());
        Ok(Self {
            method: req.method().as_str().to_string(),
            target,
            auth,
        })
    }

    /// Reads the body (at most the route's limit) and verifies the signature with `key`.
    async fn verify(
        &self,
        req: Request,
        state: &AppState,
        key: &PublicKey,
    ) -> Result<Bytes, ApiFailure> {
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiFailure::TooLarge(zos_types::registry::MAX_BODY_BYTES)
            } else {
                ApiFailure::BadRequest(format!("cannot read the body: {}", rejection.body_text()))
            }
        })?;
        let a = &self.auth;
        a.verify(key, &self.method, &self.target, &body, state.now())?;
        Ok(body)
    }
}

/// The answer to a signature the replay cache refuses.
fn replay_refused(e: Refusal, who: &str) -> ApiFailure {
    match e {
        Refusal::Seen => ApiFailure::from(AuthError::Replay),
        Refusal::OwnerFull { held, retry_after } => ApiFailure::TooManyRequests {
            message: format!(
                "{who} sent {held} signed requests in the last {MAX_SKEW_SECS} s, its share: \
                 send fewer at once, or try again in {retry_after} s"
            ),
            retry_after,
        },
        Refusal::Stale { floor } => ApiFailure::TooManyRequests {
            message: format!(
                "{who} sent more signed requests than the registry can remember: requests \
                 stamped at or before {floor} are refused; sign this one again"
            ),
            retry_after: 1,
        },
        Refusal::Full(_) => {
            tracing::warn!(error = %e, "replay cache full: refusing a signed request");
            ApiFailure::Unavailable(format!(
                "the registry is receiving more signed requests ({who}) than it can remember: try again in a minute"
            ))
        }
    }
}

impl FromRequest<AppState> for Signed {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiFailure> {
        let claim = Claim::of(&req, state.now())?;
        let Signer::Twin(id) = claim.auth.signer else {
            return Err(bare_key_refused());
        };
        let key = state.run(move |s| s.twin_key(id)).await?.ok_or_else(|| {
            ApiFailure::Unauthorized(format!(
                "twin {id} does not exist: the request must be signed by a registered twin"
            ))
        })?;
        let body = claim.verify(req, state, &key).await?;
        let a = &claim.auth;
        state
            .replay()
            .admit_twin(id, &a.signature, a.timestamp, state.now())
            .map_err(|e| replay_refused(e, &format!("twin {id}")))?;
        Ok(Signed {
            signer: a.signer,
            body,
        })
    }
}

impl FromRequest<AppState> for KeySigned {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiFailure> {
        let claim = Claim::of(&req, state.now())?;
        let Signer::Key(key) = claim.auth.signer else {
            return Err(ApiFailure::Unauthorized(
                "a twin is created by its own key: sign with key=<the public key being registered>"
                    .into(),
            ));
        };
        let body = claim.verify(req, state, &key).await?;
        let a = &claim.auth;
        state
            .replay()
            .admit_bare_key(&a.signature, a.timestamp, state.now())
            .map_err(|e| match e {
                Refusal::Seen => ApiFailure::from(AuthError::Replay),
                _ => {
                    tracing::warn!(error = %e, "bare-key pool of the replay cache full");
                    ApiFailure::Unavailable(
                        "the registry is receiving more twin creations than it can remember: try again in a minute"
                            .into(),
                    )
                }
            })?;
        Ok(KeySigned { key, body })
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
