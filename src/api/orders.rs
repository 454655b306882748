//! `/orders`: create, read, list, pay, cancel.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;
use super::entity_handlers::{self, Listing};
use super::error::ApiError;
use super::extract::{EntityId, JsonBody, QueryPairs};
use crate::domain::{FieldError, NewOrder, Order, OrderStatus};
use crate::store::entities::{self, Transition};

/// The order routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", post(create).get(list))
        .route("/orders/{id}", get(show))
        .route("/orders/{id}/pay", post(pay))
        .route("/orders/{id}/cancel", post(cancel))
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    entity_handlers::create(&state, &headers, body, "orders", NewOrder::parse).await
}

async fn show(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<Json<Order>, ApiError> {
    entity_handlers::get(&state, id).await
}

async fn list(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<Listing<Order>>, ApiError> {
    entity_handlers::list(&state, &query, "customer_id", status_name).await
}

fn status_name(text: &str) -> Result<&'static str, FieldError> {
    Ok(match OrderStatus::parse(text)? {
        OrderStatus::Pending => "pending",
        OrderStatus::Paid => "paid",
        OrderStatus::Cancelled => "cancelled",
    })
}

/// Pays the order if it is pending and its deadline (database time) has not passed.
async fn pay(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<Json<Order>, ApiError> {
    match entity_handlers::within_deadline(&state, entities::pay_order(&state.pool, id)).await? {
        Transition::Done(order) => {
            metrics::counter!("order_timeout_entities_total", "kind" => "order", "event" => "paid")
                .increment(1);
            tracing::info!(entity_id = %id, "order paid");
            Ok(Json(order))
        }
        Transition::Refused { current, expired } => match current.status {
            OrderStatus::Paid => Ok(Json(current)),
            OrderStatus::Cancelled => Err(ApiError::conflict(
                "order_cancelled",
                "the order is cancelled",
            )),
            OrderStatus::Pending if expired => {
                tracing::info!(entity_id = %id, "payment refused: deadline passed");
                Err(ApiError::conflict(
                    "order_expired",
                    "the payment deadline has passed",
                ))
            }
            OrderStatus::Pending => Err(ApiError::internal(format!(
                "order {id}: payment not applied, yet the order is pending and not expired"
            ))),
        },
        Transition::NotFound => Err(ApiError::NotFound("order not found")),
    }
}

/// Cancels the order at the customer's request.
async fn cancel(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<Json<Order>, ApiError> {
    match entity_handlers::within_deadline(&state, entities::cancel_order(&state.pool, id)).await? {
        Transition::Done(order) => {
            let reason = order.cancel_reason.clone().unwrap_or_default();
            metrics::counter!("order_timeout_cancelled_total", "kind" => "order", "reason" => reason.clone()).increment(1);
            tracing::info!(entity_id = %id, reason, "order cancelled on request");
            Ok(Json(order))
        }
        Transition::Refused { current, .. } => match current.status {
            OrderStatus::Cancelled => Ok(Json(current)),
            _ => Err(ApiError::conflict(
                "order_paid",
                "the order is paid and cannot be cancelled",
            )),
        },
        Transition::NotFound => Err(ApiError::NotFound("order not found")),
    }
}
