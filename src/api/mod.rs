//! The HTTP API: shared state, the router merging one router per resource, the
//! middleware every request passes, and the fallbacks that keep every answer JSON.

mod admin;
mod console;
mod deadlines;
mod entity_handlers;
mod error;
mod extract;
mod health;
mod orders;
mod serve;
mod throttle;
mod waybills;

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use health::OPENAPI_YAML;
pub use serve::{ConnectionLimits, serve};
pub use throttle::AuthThrottle;

use crate::broker::Broker;
use crate::config::Config;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// The broker, for readiness and admin requeues.
    pub broker: Broker,
    /// The settings (timeouts, admin token).
    pub config: Arc<Config>,
    /// The group-commit writers of creates.
    pub creates: crate::store::batcher::Creates,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Whether the background loops make progress, for `/healthz` and `/metrics`.
    pub liveness: crate::liveness::Liveness,
    /// Counts failed admin authentications per client address (429 past the limit).
    pub auth_throttle: Arc<throttle::AuthThrottle>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(orders::router())
        .merge(waybills::router())
        .merge(admin::router(state.clone()))
        .merge(deadlines::router())
        .merge(deadlines::admin_router(state.clone()))
        .merge(console::router(state.clone()))
        .merge(health::router())
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(middleware::from_fn(extract::refuse_non_json))
        .layer(middleware::from_fn_with_state(
            state.config.http_request_timeout,
            time_limit,
        ))
        .layer(middleware::from_fn(record_metrics))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Counts requests and their latency by route template (not by raw path, so ids do
/// not explode the label set).
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("order_timeout_http_requests_total", "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("order_timeout_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a metric label: one of the standard methods or `OTHER`, since HTTP
/// allows any token as a method and each new label value is a new series kept forever.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("OTHER", |(_, label)| label)
}

/// Bounds a request from its headers to its response (a body sent slowly included):
/// past HTTP_REQUEST_TIMEOUT the client gets 408 and the connection is closed.
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError::RequestTimeout.into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// A panic is a bug: answer the usual JSON 500 (which logs the panic's message).
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}
