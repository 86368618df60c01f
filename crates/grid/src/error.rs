//! The one place where failures become HTTP statuses and JSON [`ApiError`] bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use zos_types::auth::AuthError;
use zos_types::registry::{ApiError, ValidationError};

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// 400: malformed JSON, unknown fields, a value that breaks a rule.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no signature, a malformed, stale or wrong one, an unknown signer, a replay.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid signature by someone who may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the route or the object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, with other methods.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request took longer than the server's request timeout.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: a duplicate, or an object in use.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the route takes (the registry's
    /// [`zos_types::registry::MAX_BODY_BYTES`], the
    /// relay's [`zos_types::envelope::MAX_ENVELOPE_BYTES`]).
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 429: this party sent more than its share; it may try again after `retry_after` seconds
    /// (also sent as the `Retry-After` header).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// 503: the registry cannot take the request now; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// 504: the relay's destination did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// 500: a failure of the registry itself. Logged; the client sees a generic message.
    #[error("internal error: {context}")]
    Internal {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ApiFailure {
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ApiFailure::Internal {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiFailure::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiFailure::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiFailure::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiFailure::NotFound(_) => StatusCode::NOT_FOUND,
            ApiFailure::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiFailure::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiFailure::Conflict(_) => StatusCode::CONFLICT,
            ApiFailure::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiFailure::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiFailure::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiFailure::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiFailure::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<AuthError> for ApiFailure {
    fn from(e: AuthError) -> Self {
        ApiFailure::Unauthorized(e.to_string())
    }
}

impl From<ValidationError> for ApiFailure {
    fn from(e: ValidationError) -> Self {
        ApiFailure::BadRequest(e.to_string())
    }
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiFailure::NotFound(m),
            StoreError::Conflict(m) => ApiFailure::Conflict(m),
            StoreError::Forbidden(m) => ApiFailure::Forbidden(m),
            e @ StoreError::Invalid { .. } => ApiFailure::BadRequest(e.to_string()),
            e => ApiFailure::internal("store", e),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiFailure::Internal { .. } => {
                let mut chain = self.to_string();
                let mut source = std::error::Error::source(&self);
                while let Some(s) = source {
                    chain.push_str(": ");
                    chain.push_str(&s.to_string());
                    source = s.source();
                }
                tracing::error!(error = %chain, "request failed inside the registry");
                "internal error of the registry: see its log".to_string()
            }
            other => {
                tracing::debug!(status = status.as_u16(), error = %other, "request refused");
                other.to_string()
            }
        };
        let retry_after = match &self {
            ApiFailure::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut response = (status, Json(ApiError { error: message })).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ZOS"));
        }
        response
    }
}
