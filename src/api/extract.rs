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
        let declared = json_declared(request.headers())?;
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
        let empty = raw.iter().all(u8::is_ascii_whitespace);
        if !empty && !declared {
            return Err(ApiError::UnsupportedMediaType);
        }
        let value = if empty {
            // An empty body is read as `{}`, so the domain parser names the first missing
            // field (422 `validation_failed`) instead of a bare 400 `invalid_json`. (Pay and
            // cancel take no body at all; they do not use this extractor.)
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&raw)
                .map_err(|e| ApiError::InvalidJson(format!("body is not valid JSON: {e}")))?
        };
        Ok(Self { value })
    }
}

/// Whether the request declares a JSON body; `Err` (415) for any other declared type.
/// A body without `Content-Type` is refused too (by the caller) unless it is empty: a
/// browser sends a cross-site `text/plain` or form POST without asking the API first,
/// so only a JSON type proves the caller meant to call the API.
fn json_declared(headers: &axum::http::HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Ok(false);
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|text| text.split(';').next())
        .map(|text| text.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(true)
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Refuses (415) a request that changes something and declares a body other than JSON,
/// including actions that read no body: a cross-site `text/plain` POST to
/// `/orders/{id}/cancel` must not cancel anything.
pub async fn refuse_non_json(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    use axum::response::IntoResponse;
    let reads_only = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !reads_only && let Err(error) = json_declared(request.headers()) {
        return error.into_response();
    }
    next.run(request).await
}

/// The `{id}` of a path, as a UUID.
pub struct EntityId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for EntityId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidId)?;
        parse_uuid(&text).map(EntityId).ok_or(ApiError::InvalidId)
    }
}

/// A UUID in its canonical hyphenated form only (`format: uuid` of the spec): the
/// braced, `urn:uuid:` and 32-digit forms Rust's parser also takes are refused, so
/// what the API accepts is what the spec promises.
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    if text.len() != 36 {
        return None;
    }
    Uuid::try_parse(text).ok()
}

/// The query string as ordered, percent-decoded pairs (invalid UTF-8 is replaced, never
/// rejected here); [`QueryPairs::checked`] refuses unknown, repeated or oversized ones.
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
    /// Refuses a parameter that is not in `known`, given more than once, longer than 200
    /// characters or holding control characters, naming it in the error.
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

    /// The value of `key`, if present. An empty value (`?after=`) is a value, and
    /// refused by the parameter's parser like any other malformed one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
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
        let after = match self.get("after") {
            None => None,
            Some(text) => Some(parse_uuid(text).ok_or_else(|| {
                FieldError::new("after", "must be a cursor from a previous page")
            })?),
        };
        Ok(Page { limit, after })
    }
}
