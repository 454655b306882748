//! `/waybills`: create, read, list, accept, cancel.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;
use super::entity_handlers::{self, Listing};
use super::error::ApiError;
use super::extract::{EntityId, JsonBody, QueryPairs};
use crate::domain::{FieldError, NewWaybill, Waybill, WaybillStatus, parse_acceptance};
use crate::store::entities::{self, Transition};

/// The waybill routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/waybills", post(create).get(list))
        .route("/waybills/{id}", get(show))
        .route("/waybills/{id}/accept", post(accept))
        .route("/waybills/{id}/cancel", post(cancel))
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    entity_handlers::create(&state, &headers, body, "waybills", NewWaybill::parse).await
}

async fn show(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<Json<Waybill>, ApiError> {
    entity_handlers::get(&state, id).await
}

async fn list(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<Listing<Waybill>>, ApiError> {
    entity_handlers::list(&state, &query, "order_id", status_name).await
}

fn status_name(text: &str) -> Result<&'static str, FieldError> {
    Ok(match WaybillStatus::parse(text)? {
        WaybillStatus::Pending => "pending",
        WaybillStatus::Accepted => "accepted",
        WaybillStatus::Cancelled => "cancelled",
    })
}

/// Records a carrier's acceptance if the waybill is pending and not past its deadline.
async fn accept(
    State(state): State<AppState>,
    EntityId(id): EntityId,
    body: JsonBody,
) -> Result<Json<Waybill>, ApiError> {
    let carrier = parse_acceptance(&body.value)?;
    match entity_handlers::within_deadline(
        &state,
        entities::accept_waybill(&state.pool, id, carrier.as_str()),
    )
    .await?
    {
        Transition::Done(waybill) => {
            metrics::counter!("order_timeout_entities_total", "kind" => "waybill", "event" => "accepted").increment(1);
            tracing::info!(entity_id = %id, carrier_id = carrier.as_str(), "waybill accepted");
            Ok(Json(waybill))
        }
        Transition::Refused { current, expired } => match current.status {
            WaybillStatus::Accepted if current.carrier_id.as_deref() == Some(carrier.as_str()) => {
                Ok(Json(current))
            }
            WaybillStatus::Accepted => Err(ApiError::conflict(
                "waybill_accepted",
                "another carrier accepted the waybill",
            )),
            WaybillStatus::Cancelled => Err(ApiError::conflict(
                "waybill_cancelled",
                "the waybill is cancelled",
            )),
            WaybillStatus::Pending if expired => Err(ApiError::conflict(
                "waybill_expired",
                "the acceptance deadline has passed",
            )),
            WaybillStatus::Pending => Err(ApiError::internal(format!(
                "waybill {id}: acceptance not applied, yet the waybill is pending and not expired"
            ))),
        },
        Transition::NotFound => Err(ApiError::NotFound("waybill not found")),
    }
}

/// Cancels the waybill at the shipper's request.
async fn cancel(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<Json<Waybill>, ApiError> {
    match entity_handlers::within_deadline(&state, entities::cancel_waybill(&state.pool, id))
        .await?
    {
        Transition::Done(waybill) => {
            let reason = waybill.cancel_reason.clone().unwrap_or_default();
            metrics::counter!("order_timeout_cancelled_total", "kind" => "waybill", "reason" => reason.clone()).increment(1);
            tracing::info!(entity_id = %id, reason, "waybill cancelled on request");
            Ok(Json(waybill))
        }
        Transition::Refused { current, .. } => match current.status {
            WaybillStatus::Cancelled => Ok(Json(current)),
            _ => Err(ApiError::conflict(
                "waybill_accepted",
                "the waybill is accepted and cannot be cancelled",
            )),
        },
        Transition::NotFound => Err(ApiError::NotFound("waybill not found")),
    }
}
