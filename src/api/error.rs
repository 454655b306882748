//! Every error the API can answer, and the one place that maps each to a status and a
//! JSON body `{"error":{"code","message"[,"field"]}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::FieldError;
use crate::store::StoreError;
use crate::store::entities::CreateError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// A field failed validation.
    #[error(transparent)]
    Validation(#[from] FieldError),
    /// The body is over the limit.
    #[error("request body exceeds 64 KiB")]
    PayloadTooLarge,
    /// A body was sent with another `Content-Type` than JSON (a cross-site form or
    /// `text/plain` POST must not be taken for an API call).
    #[error("the body must be sent with Content-Type: application/json")]
    UnsupportedMediaType,
    /// The request took longer than HTTP_REQUEST_TIMEOUT (e.g. a body sent too slowly).
    #[error("the request took too long")]
    RequestTimeout,
    /// Too many failed admin authentications from this client address.
    #[error("too many failed authentications, retry later")]
    TooManyRequests,
    /// A path id is not a UUID.
    #[error("id must be a UUID")]
    InvalidId,
    /// No such resource or route.
    #[error("{0}")]
    NotFound(&'static str),
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The state of the resource forbids the action.
    #[error("{message}")]
    Conflict {
        /// Machine-readable reason, e.g. `order_expired`.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
    /// An idempotency key was reused with another body.
    #[error("Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    /// Admin call without the right bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// Admin API switched off (no ADMIN_TOKEN).
    #[error("admin API disabled: set ADMIN_TOKEN")]
    AdminDisabled,
    /// PostgreSQL unreachable or saturated.
    #[error("database unavailable, retry later")]
    DatabaseUnavailable,
    /// RabbitMQ unreachable (admin requeues need it).
    #[error("broker unavailable, retry later")]
    BrokerUnavailable,
    /// A bug or an impossible state. The cause (what happened, with the entity id where
    /// there is one) is logged when the response is built, never sent to the client.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::InvalidId => (StatusCode::BAD_REQUEST, "invalid_id"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::AdminDisabled => (StatusCode::SERVICE_UNAVAILABLE, "admin_disabled"),
            ApiError::DatabaseUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ApiError::BrokerUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// A 500 for a bug or an impossible state, with its cause for the log.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    /// A 409 with a code and message.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            // The one place every internal error passes: its cause is never dropped.
            tracing::error!(%cause, "internal error answered with 500");
        }
        let (status, code) = self.status_and_code();
        let mut error = json!({"code": code, "message": self.to_string()});
        if let ApiError::Validation(field) = &self {
            error["field"] = json!(field.field);
            error["message"] = json!(field.message);
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::DatabaseUnavailable
            }
            StoreError::Other(cause) => ApiError::internal(format!("database error: {cause:?}")),
            StoreError::TimedOut(limit) => {
                tracing::warn!(?limit, "database did not answer in time");
                ApiError::DatabaseUnavailable
            }
        }
    }
}

impl From<CreateError> for ApiError {
    fn from(error: CreateError) -> Self {
        match error {
            CreateError::KeyReused => ApiError::IdempotencyKeyReused,
            CreateError::Store(store) => store.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_internal_error_logs_its_cause_and_tells_the_client_nothing_of_it() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let error = ApiError::internal("order 42: the impossible happened");
        assert_eq!(error.to_string(), "internal error");
        let response = tracing::subscriber::with_default(subscriber, || error.into_response());

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("order 42: the impossible happened"),
            "cause not logged: {logged:?}"
        );
    }
}
