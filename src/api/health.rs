//! Liveness, readiness, metrics and the OpenAPI document.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

/// The repository's `openapi.yaml`, served as is.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");
/// How long a readiness probe waits for the database.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The operational routes (no authentication).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.yaml", get(openapi))
}

/// 200 while every background loop makes progress; 503 naming the loops that have been
/// busy without finishing anything for longer than LIVENESS_TIMEOUT, so an orchestrator
/// restarts a wedged process.
async fn healthz(State(state): State<AppState>) -> Response {
    let stuck = state.liveness.stuck();
    if stuck.is_empty() {
        return Json(json!({"status": "ok"})).into_response();
    }
    let names: Vec<&str> = stuck.iter().map(|(which, _)| which.as_str()).collect();
    let loops: serde_json::Map<String, serde_json::Value> = stuck
        .iter()
        .map(|(which, stalled)| (which.as_str().to_owned(), json!(stalled.as_secs())))
        .collect();
    let message = format!("stuck: {}", names.join(", "));
    tracing::error!(loops = %names.join(","), "liveness check failed");
    let body = json!({"error": {"code": "stuck", "message": message}, "stalled_seconds": loops});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// 200 when both dependencies answer; 503 naming the one that does not. While
/// connected, `broker_node` names the node in use (`host:port/vhost`, no credentials).
async fn readyz(State(state): State<AppState>) -> Response {
    let database = database_up(&state).await;
    let node = state.broker.node();
    let broker = node.is_some();
    let word = |up: bool| if up { "up" } else { "down" };
    let checks = json!({"database": word(database), "broker": word(broker)});
    if database && broker {
        let body = json!({"status": "ready", "checks": checks, "broker_node": node});
        return (StatusCode::OK, Json(body)).into_response();
    }
    let down: Vec<&str> = [("database", database), ("broker", broker)]
        .iter()
        .filter(|(_, up)| !up)
        .map(|(n, _)| *n)
        .collect();
    let message = format!("unavailable: {}", down.join(", "));
    let mut body = json!({"error": {"code": "not_ready", "message": message}, "checks": checks});
    if let Some(node) = node {
        body["broker_node"] = json!(node);
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn database_up(state: &AppState) -> bool {
    let probe = sqlx::query("select 1").execute(&state.pool);
    matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)))
}

/// Prometheus text. No query runs here (anyone may scrape, as often as they like): the
/// outbox backlog gauge is kept by the relay.
async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("order_timeout_broker_connected").set(if state.broker.is_connected() {
        1.0
    } else {
        0.0
    });
    state.liveness.export();
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}
