//! Steering deadlines over HTTP: `POST /orders/{id}/extend`, `POST /waybills/{id}/extend`
//! and the admin's `POST /admin/deadlines/extend`. The SQL decides everything against
//! the database clock ([`crate::store::deadlines`]); this maps its answers to HTTP.

use axum::extract::State;
use axum::middleware;
use axum::routing::post;
use axum::{Json, Router};

use super::AppState;
use super::entity_handlers::{self, not_found};
use super::error::ApiError;
use super::extract::{EntityId, JsonBody};
use crate::domain::{
    BulkExtension, Extension, FieldError, Order, OrderStatus, Waybill, WaybillStatus,
};
use crate::store::deadlines::{self, BulkLimits, BulkOutcome, Extended};
use crate::store::entities::Entity;

/// Rows extended per statement by a bulk extension.
const BULK_BATCH: i64 = 500;

/// The extension routes of orders and waybills (public, like pay and accept).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders/{id}/extend", post(extend_order))
        .route("/waybills/{id}/extend", post(extend_waybill))
}

/// The bulk extension, behind the admin token.
pub fn admin_router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/deadlines/extend", post(bulk_extend))
        .route_layer(middleware::from_fn_with_state(
            state,
            super::admin::require_token,
        ))
}

async fn extend_order(
    State(state): State<AppState>,
    EntityId(id): EntityId,
    body: JsonBody,
) -> Result<Json<Order>, ApiError> {
    extend(&state, id, &body, |order: &Order| match order.status {
        OrderStatus::Paid => Some(ApiError::conflict("order_paid", "the order is paid")),
        OrderStatus::Cancelled => Some(ApiError::conflict(
            "order_cancelled",
            "the order is cancelled",
        )),
        OrderStatus::Pending => None,
    })
    .await
}

async fn extend_waybill(
    State(state): State<AppState>,
    EntityId(id): EntityId,
    body: JsonBody,
) -> Result<Json<Waybill>, ApiError> {
    extend(&state, id, &body, |waybill: &Waybill| {
        match waybill.status {
            WaybillStatus::Accepted => Some(ApiError::conflict(
                "waybill_accepted",
                "the waybill is accepted",
            )),
            WaybillStatus::Cancelled => Some(ApiError::conflict(
                "waybill_cancelled",
                "the waybill is cancelled",
            )),
            WaybillStatus::Pending => None,
        }
    })
    .await
}

/// Extends one entity's deadline; `settled` names the 409 of a paid, accepted or
/// cancelled one.
async fn extend<T: Entity>(
    state: &AppState,
    id: uuid::Uuid,
    body: &JsonBody,
    settled: fn(&T) -> Option<ApiError>,
) -> Result<Json<T>, ApiError> {
    let max = state.config.max_timeout;
    let extension = Extension::parse(&body.value, max)?;
    let kind = T::KIND.as_str();
    let outcome = entity_handlers::within_deadline(
        state,
        deadlines::extend::<T>(
            &state.pool,
            id,
            extension.seconds,
            max,
            state.config.remind_before_of(T::KIND),
        ),
    )
    .await?;
    match outcome {
        Extended::Done(entity) => {
            metrics::counter!("order_timeout_entities_total", "kind" => kind, "event" => "extended")
                .increment(1);
            tracing::info!(entity_id = %id, kind, seconds = extension.seconds, expires_at = %entity.expires_at(), "deadline extended");
            Ok(Json(entity))
        }
        Extended::Refused {
            current,
            expired,
            too_far,
        } => {
            if let Some(conflict) = settled(&current) {
                return Err(conflict);
            }
            if expired {
                tracing::info!(entity_id = %id, kind, "extension refused: deadline passed");
                return Err(ApiError::conflict(
                    expired_code(T::KIND),
                    "the deadline has already passed",
                ));
            }
            if too_far {
                return Err(FieldError::new(
                    "seconds",
                    "would move the deadline more than MAX_TIMEOUT from now",
                )
                .into());
            }
            Err(ApiError::internal(format!(
                "{kind} {id}: extension not applied, yet pending, not expired and within MAX_TIMEOUT"
            )))
        }
        Extended::NotFound => Err(ApiError::NotFound(not_found(T::KIND))),
    }
}

fn expired_code(kind: crate::domain::EntityKind) -> &'static str {
    match kind {
        crate::domain::EntityKind::Order => "order_expired",
        crate::domain::EntityKind::Waybill => "waybill_expired",
    }
}

/// Extends every pending, not yet due entity matching the filter, in batches; logged
/// with the filter and the counts.
async fn bulk_extend(
    State(state): State<AppState>,
    body: JsonBody,
) -> Result<Json<BulkOutcome>, ApiError> {
    let request = BulkExtension::parse(&body.value, state.config.max_timeout)?;
    let limits = BulkLimits {
        max: state.config.max_timeout,
        batch: BULK_BATCH,
        remind_before: state.config.remind_before_of(request.kind),
    };
    let outcome = deadlines::bulk_extend(&state.pool, &request, limits).await?;
    if outcome.extended > 0 {
        metrics::counter!("order_timeout_entities_total", "kind" => request.kind.as_str(), "event" => "extended")
            .increment(outcome.extended);
    }
    tracing::info!(
        kind = request.kind.as_str(),
        seconds = request.seconds,
        customer_id = request.customer_id.as_ref().map(|c| c.as_str()),
        order_id = ?request.order_id,
        expires_before = ?request.expires_before,
        dry_run = request.dry_run,
        matched = outcome.matched,
        extended = outcome.extended,
        "admin bulk deadline extension"
    );
    Ok(Json(outcome))
}
