//! `/admin`: the failed-message store and the parking queue, for operators. Every route
//! needs `Authorization: Bearer ADMIN_TOKEN`; every action is logged with what it touched.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::AppState;
use super::entity_handlers::{Listing, paged};
use super::error::ApiError;
use super::extract::{EntityId, QueryPairs};
use crate::broker::{Headers, Outgoing, Properties, PublishError, Publisher};
use crate::domain::FieldError;
use crate::retry::{self, republished};
use crate::store::failed::{self, FailedFilter, FailedMessage, FailedStatus};

/// Rows requeued per transaction by "requeue all".
const REQUEUE_BATCH: i64 = 200;

/// The admin routes, behind the bearer-token check.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/failed-messages", get(list))
        .route("/admin/failed-messages/requeue", post(requeue_all))
        .route("/admin/failed-messages/{id}", get(show).delete(discard))
        .route("/admin/failed-messages/{id}/requeue", post(requeue_one))
        .route("/admin/parking/requeue", post(replay_parking))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

/// Refuses requests without the right token, comparing in constant time (of hashes, so
/// the length leaks nothing either).
pub(super) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    // An empty token (`ADMIN_TOKEN=` in a compose file) counts as unset.
    let Some(expected) = state
        .config
        .admin_token
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    else {
        return ApiError::AdminDisabled.into_response();
    };
    let client = super::serve::client_address(&request).map(|address| address.ip());
    if client.is_some_and(|ip| state.auth_throttle.is_blocked(ip)) {
        return ApiError::TooManyRequests.into_response();
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    let matches: bool = Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    if given.is_empty() || !matches {
        if let Some(ip) = client {
            state.auth_throttle.record_failure(ip);
        }
        tracing::warn!(path = %loggable_path(request.uri().path()), client = ?client, "admin call refused: bad token");
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// Longest part of a refused request's path written to the log.
const LOGGED_PATH_MAX: usize = 120;

/// The path as a log field: at most LOGGED_PATH_MAX characters, control characters
/// escaped, so a refused call cannot write 64 KiB or forge lines into the log.
fn loggable_path(path: &str) -> String {
    let mut shown: String = path
        .chars()
        .take(LOGGED_PATH_MAX)
        .flat_map(char::escape_default)
        .collect();
    if path.chars().count() > LOGGED_PATH_MAX {
        shown.push('…');
    }
    shown
}

/// A failed message as `GET /admin/failed-messages/{id}` shows it: the body as text when
/// it is UTF-8, and always as hex, so nothing stored is lost.
#[derive(Debug, Serialize)]
struct FailedView {
    #[serde(flatten)]
    message: FailedMessage,
    body: Option<String>,
    body_hex: String,
    /// The stored body is only the first FAILED_MESSAGE_MAX_BODY bytes of `body_size`.
    body_truncated: bool,
}

impl From<FailedMessage> for FailedView {
    fn from(message: FailedMessage) -> Self {
        let body = String::from_utf8(message.body.clone()).ok();
        let body_hex = message.body.iter().map(|b| format!("{b:02x}")).collect();
        let body_truncated = (message.body.len() as i64) < message.body_size;
        Self {
            message,
            body,
            body_hex,
            body_truncated,
        }
    }
}

/// A failed message in a listing: its body only as a preview of the first
/// `failed::PREVIEW_BYTES` (text, or null when not UTF-8), so one huge message cannot
/// make every listing (polled by the console) huge.
#[derive(Debug, Serialize)]
struct FailedPreview {
    #[serde(flatten)]
    message: FailedMessage,
    body: Option<String>,
}

impl From<FailedMessage> for FailedPreview {
    fn from(message: FailedMessage) -> Self {
        let cut = (message.body.len() as i64) < message.body_size;
        let body = match std::str::from_utf8(&message.body) {
            Ok(text) => Some(text.to_owned()),
            // A preview may end inside a character: keep the complete ones.
            Err(error) if cut && error.error_len().is_none() => {
                Some(String::from_utf8_lossy(&message.body[..error.valid_up_to()]).into_owned())
            }
            Err(_) => None,
        };
        Self { body, message }
    }
}

async fn list(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<Listing<FailedPreview>>, ApiError> {
    query.checked(&["status", "queue", "limit", "after"])?;
    let page = query.page()?;
    let status = match query.get("status") {
        None => None,
        Some(name) => Some(FailedStatus::parse(name).ok_or_else(|| {
            FieldError::new("status", "must be one of pending, requeued, discarded")
        })?),
    };
    let filter = FailedFilter {
        status,
        queue: query.get("queue").map(str::to_owned),
        after: page.after,
        limit: page.limit + 1,
    };
    let rows = failed::list(&state.pool, &filter).await?;
    let listing = paged(rows, page.limit, |row| row.id);
    Ok(Json(Listing {
        items: listing.items.into_iter().map(FailedPreview::from).collect(),
        next: listing.next,
    }))
}

async fn show(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<Json<FailedView>, ApiError> {
    let row = failed::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("failed message not found"))?;
    Ok(Json(row.into()))
}

async fn requeue_one(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<Json<FailedView>, ApiError> {
    let mut tx = state
        .pool
        .begin()
        .await
        .map_err(crate::store::StoreError::from)?;
    let row = failed::lock(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("failed message not found"))?;
    if row.status != FailedStatus::Pending {
        return Err(ApiError::conflict(
            "already_resolved",
            format!("the message was already {}", row.status.as_str()),
        ));
    }
    if (row.body.len() as i64) < row.body_size {
        return Err(ApiError::conflict(
            "body_truncated",
            "only part of the body was stored; it cannot be republished",
        ));
    }
    republish(&state, std::slice::from_ref(&row)).await?;
    failed::resolve(&mut tx, &[id], FailedStatus::Requeued).await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    metrics::counter!("order_timeout_requeued_total", "source" => "failed_messages").increment(1);
    tracing::info!(failed_message_id = %id, message_id = ?row.message_id, queue = %row.queue, "admin requeued a failed message");
    let row = failed::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("failed message not found"))?;
    Ok(Json(row.into()))
}

async fn requeue_all(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    query.checked(&["queue"])?;
    let queue = query.get("queue");
    let mut requeued = 0usize;
    let Some(upto) = failed::newest_id(&state.pool).await? else {
        return Ok(Json(json!({ "requeued": 0 })));
    };
    loop {
        let mut tx = state
            .pool
            .begin()
            .await
            .map_err(crate::store::StoreError::from)?;
        let rows = failed::lock_unresolved(&mut tx, queue, upto, REQUEUE_BATCH).await?;
        if rows.is_empty() {
            break;
        }
        republish(&state, &rows).await?;
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        failed::resolve(&mut tx, &ids, FailedStatus::Requeued).await?;
        tx.commit().await.map_err(crate::store::StoreError::from)?;
        requeued += rows.len();
        for row in &rows {
            tracing::info!(failed_message_id = %row.id, message_id = ?row.message_id, queue = %row.queue, "admin requeued a failed message (bulk)");
        }
    }
    metrics::counter!("order_timeout_requeued_total", "source" => "failed_messages")
        .increment(requeued as u64);
    tracing::info!(requeued, queue = ?queue, "admin requeued all unresolved failed messages");
    Ok(Json(json!({ "requeued": requeued })))
}

/// Republishes stored messages to the queue they failed on, confirmed, retry count reset.
async fn republish(state: &AppState, rows: &[FailedMessage]) -> Result<(), ApiError> {
    let properties: Vec<_> = rows
        .iter()
        .map(|row| {
            let mut properties = republished(
                &Properties::default(),
                Headers::from_json_for_requeue(&row.headers),
            );
            properties.message_id = row.message_id.clone();
            properties
        })
        .collect();
    let messages: Vec<Outgoing<'_>> = rows
        .iter()
        .zip(properties)
        .map(|(row, properties)| Outgoing {
            exchange: "",
            routing_key: &row.queue,
            body: &row.body,
            properties,
            mandatory: true,
        })
        .collect();
    state
        .broker
        .publish(Publisher::Admin, &messages)
        .await
        .map_err(broker_error)
}

fn broker_error(error: PublishError) -> ApiError {
    tracing::warn!(%error, "admin action could not publish");
    ApiError::BrokerUnavailable
}

async fn discard(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<StatusCode, ApiError> {
    let mut tx = state
        .pool
        .begin()
        .await
        .map_err(crate::store::StoreError::from)?;
    let row = failed::lock(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("failed message not found"))?;
    match row.status {
        FailedStatus::Pending => {
            failed::resolve(&mut tx, &[id], FailedStatus::Discarded).await?;
            tx.commit().await.map_err(crate::store::StoreError::from)?;
            tracing::info!(failed_message_id = %id, message_id = ?row.message_id, "admin discarded a failed message");
            Ok(StatusCode::NO_CONTENT)
        }
        FailedStatus::Discarded => Ok(StatusCode::NO_CONTENT),
        FailedStatus::Requeued => Err(ApiError::conflict(
            "already_resolved",
            "the message was already requeued",
        )),
    }
}

/// Moves every message that was in the parking queue when the call began back to the
/// due queue: publish confirmed, then ack the parked copy.
async fn replay_parking(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let replayed = retry::replay_parking(&state.broker)
        .await
        .map_err(broker_error)?;
    metrics::counter!("order_timeout_requeued_total", "source" => "parking")
        .increment(u64::from(replayed));
    tracing::info!(replayed, "admin replayed the parking queue");
    Ok(Json(json!({ "requeued": replayed })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_path_is_logged_short_and_on_one_line() {
        let path = format!("/admin/\n{}", "x".repeat(64 * 1024));
        let shown = loggable_path(&path);
        assert!(
            shown.chars().count() <= LOGGED_PATH_MAX * 2 + 1,
            "{}",
            shown.len()
        );
        assert!(!shown.contains('\n'));
    }
}
