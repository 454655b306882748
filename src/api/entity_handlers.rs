//! What orders and waybills share over HTTP: create with an idempotency key, get, and
//! list with cursor paging.

use std::future::Future;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{JsonBody, QueryPairs};
use crate::domain::{FieldError, take_timeout};
use crate::store::batcher::Batched;
use crate::store::deadlines::FirstTimer;
use crate::store::entities::{self, CreateRequest, Entity, ListFilter, Owner};
use crate::store::idempotency::IdempotencyKey;

/// The header clients use to make a create safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Creates an entity from a request body; 201 when new, 200 when an idempotency key
/// replays an earlier create.
pub async fn create<N: Batched>(
    state: &AppState,
    headers: &HeaderMap,
    body: JsonBody,
    scope: &'static str,
    parse: fn(&Value) -> Result<N, FieldError>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(headers, scope, &body)?;
    let (own_timeout, fields) = take_timeout(&body.value, state.config.max_timeout)?;
    let new = parse(&fields)?;
    let kind = <N::Entity as Entity>::KIND;
    let timeout = own_timeout.unwrap_or_else(|| state.config.timeout_of(kind));
    let timer = FirstTimer::plan(timeout, state.config.remind_before_of(kind));
    let request = CreateRequest { new, timer, key };
    let created = within_deadline(state, N::batcher(&state.creates).create(request)).await?;
    let id = created.entity.id();
    let status = if created.replayed {
        tracing::info!(entity_id = %id, kind = kind.as_str(), "create replayed from idempotency key");
        StatusCode::OK
    } else {
        metrics::counter!("order_timeout_entities_total", "kind" => kind.as_str(), "event" => "created").increment(1);
        tracing::info!(entity_id = %id, kind = kind.as_str(), expires_at = %created.entity.expires_at(), "created");
        StatusCode::CREATED
    };
    let location = HeaderValue::from_str(&format!("/{scope}/{id}"))
        .map_err(|e| ApiError::internal(format!("Location of {scope}/{id}: {e}")))?;
    Ok((status, [(header::LOCATION, location)], Json(created.entity)).into_response())
}

/// Runs the database work of a request under `DATABASE_REQUEST_TIMEOUT`. The pool's
/// acquire timeout bounds waiting for a connection, not a connection that hangs
/// mid-statement (a black-holed network): without this such a request would wait for
/// TCP to give up. Dropping the work rolls its transaction back (or leaves a commit
/// whose outcome the 503 does not claim to know, like any cut connection).
pub async fn within_deadline<T, E: Into<ApiError>>(
    state: &AppState,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    let deadline = state.config.database_request_timeout;
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => {
            tracing::warn!(?deadline, "database did not answer in time");
            Err(ApiError::DatabaseUnavailable)
        }
    }
}

fn idempotency_key(
    headers: &HeaderMap,
    scope: &'static str,
    body: &JsonBody,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            FieldError::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    // The parsed document, re-serialised with sorted keys: the same JSON with other
    // whitespace or key order is the same request.
    let canonical = serde_json::to_vec(&body.value)
        .map_err(|e| ApiError::internal(format!("re-serialising a parsed body: {e}")))?;
    Ok(Some(IdempotencyKey::new(scope, key.to_owned(), &canonical)))
}

/// Reads one entity or answers 404.
pub async fn get<T: Entity>(state: &AppState, id: Uuid) -> Result<Json<T>, ApiError> {
    within_deadline(state, entities::get::<T>(&state.pool, id))
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound(not_found(T::KIND)))
}

/// The 404 message of a kind.
pub fn not_found(kind: crate::domain::EntityKind) -> &'static str {
    match kind {
        crate::domain::EntityKind::Order => "order not found",
        crate::domain::EntityKind::Waybill => "waybill not found",
    }
}

/// A page of a listing.
#[derive(Debug, Serialize)]
pub struct Listing<T> {
    /// Newest first.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; null on the last page.
    pub next: Option<Uuid>,
}

/// Lists entities; `owner_param` is the query parameter of the owner filter.
pub async fn list<T: Entity>(
    state: &AppState,
    query: &QueryPairs,
    owner_param: &'static str,
    parse_status: fn(&str) -> Result<&'static str, FieldError>,
) -> Result<Json<Listing<T>>, ApiError> {
    query.checked(&["status", owner_param, "limit", "after"])?;
    let page = query.page()?;
    let status = query.get("status").map(parse_status).transpose()?;
    let owner = match (query.get(owner_param), T::OWNER_FILTER.1) {
        (None, _) => None,
        (Some(text), "uuid") => Some(Owner::Uuid(
            super::extract::parse_uuid(text)
                .ok_or_else(|| FieldError::new(owner_param, "must be a UUID"))?,
        )),
        (Some(text), _) => Some(Owner::Text(text.to_owned())),
    };
    // One row more than the page, to know whether another page follows.
    let filter = ListFilter {
        status,
        owner,
        after: page.after,
        limit: page.limit + 1,
    };
    let items = within_deadline(state, entities::list::<T>(&state.pool, &filter)).await?;
    Ok(Json(paged(items, page.limit, Entity::id)))
}

/// Builds a page from up to `limit + 1` rows: the extra row only says that another page
/// follows, and the cursor is the last id shown.
pub fn paged<T>(mut items: Vec<T>, limit: i64, id: fn(&T) -> Uuid) -> Listing<T> {
    let more = items.len() as i64 > limit;
    items.truncate(limit.max(0) as usize);
    let next = if more { items.last().map(id) } else { None };
    Listing { items, next }
}
