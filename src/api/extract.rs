//! Extractors that turn raw requests into checked values, with our error codes instead
//! of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use crate::domain::FieldError;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON body (any JSON value), read within the body limit.
pub struct JsonBody {
    /// The parsed document; the domain parsers check its shape.
    pub value: Value,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let raw =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::PayloadTooLarge
                    } else {
                        ApiError::InvalidJson(format!("could not read the body: {rejection}"))
                    }
                })?;
        let value = if raw.iter().all(u8::is_ascii_whitespace) {
            // An empty body on an action (pay, cancel) means "no arguments".
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&raw)
                .map_err(|e| ApiError::InvalidJson(format!("body is not valid JSON: {e}")))?
        };
        Ok(Self { value })
    }
}

/// The `{id}` of a path, as a UUID.
pub struct EntityId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for EntityId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidId)?;
        Uuid::parse_str(&text)
            .map(EntityId)
            .map_err(|_| ApiError::InvalidId)
    }
}

/// The query string as ordered pairs; malformed encoding is a validation error.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let pairs = url_pairs(query);
        Ok(Self(pairs))
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The common paging parameters of list endpoints.
#[derive(Debug, Clone)]
pub struct Page {
    /// Page size, 1 to 200 (default 50).
    pub limit: i64,
    /// The cursor: the last id of the previous page.
    pub after: Option<Uuid>,
}

/// Largest page a listing returns.
pub const MAX_LIMIT: i64 = 200;

impl QueryPairs {
    /// The value of a parameter, refusing unknown parameters and repeats.
    pub fn checked(&self, known: &[&str]) -> Result<(), FieldError> {
        for (i, (key, _)) in self.0.iter().enumerate() {
            if !known.contains(&key.as_str()) {
                return Err(FieldError::new(
                    key.as_str(),
                    "is not a known query parameter",
                ));
            }
            if self.0[..i].iter().any(|(k, _)| k == key) {
                return Err(FieldError::new(key.as_str(), "is given more than once"));
            }
            let value = &self.0[i].1;
            if value.chars().any(char::is_control) || value.len() > 200 {
                return Err(FieldError::new(
                    key.as_str(),
                    "must be at most 200 characters without control characters",
                ));
            }
        }
        Ok(())
    }

    /// The value of `key`, if present and non-empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Parses `limit` and `after`.
    pub fn page(&self) -> Result<Page, FieldError> {
        let limit = match self.get("limit") {
            None => 50,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(FieldError::new(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                }
            },
        };
        let after =
            match self.get("after") {
                None => None,
                Some(text) => Some(Uuid::parse_str(text).map_err(|_| {
                    FieldError::new("after", "must be a cursor from a previous page")
                })?),
            };
        Ok(Page { limit, after })
    }
}
