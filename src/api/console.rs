//! The operator console: a page at `/admin/` (HTML, CSS and a little JavaScript embedded
//! in the binary, served without the token) and the JSON it reads, behind the same
//! bearer token as the rest of `/admin`. The page asks for the token once, keeps it in
//! the tab's `sessionStorage` and sends it on every call; the assets themselves hold no
//! data, so serving them openly reveals nothing.
//!
//! The page renders every value with `textContent`, and its Content-Security-Policy
//! allows no inline script, so a message body carrying `<script>` stays text twice over.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::admin::require_token;
use super::error::ApiError;
use super::extract::{EntityId, QueryPairs};
use crate::broker::Topology;
use crate::domain::{Order, Waybill};
use crate::store::console::{
    self as queries, Deadline, FailedCount, FailedRef, Lateness, OutboxBacklog, OutboxEntry, Table,
};
use crate::store::deadlines::{self, HistoryEntry};
use crate::store::entities;
use crate::store::failed::FailedStatus;

/// The page and its assets, compiled in: no build step, no CDN, works offline.
const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_CSS: &str = include_str!("console/console.css");
const CONSOLE_JS: &str = include_str!("console/console.js");

/// Only our own files may load or run; no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
/// How many upcoming deadlines the overview lists.
const NEXT_DEADLINES: i64 = 10;
/// The lateness window: the last hour.
const LATENESS_WINDOW_SECONDS: i64 = 3600;
/// Longest the overview waits for the broker's queue depths before showing them unknown.
const BROKER_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The console's page (open) and its JSON endpoints (token).
pub fn router(state: AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/admin/overview", get(overview))
        .route("/admin/lookup/{id}", get(lookup))
        .route_layer(middleware::from_fn_with_state(state, require_token));
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route(
            "/admin/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/admin/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route(
            "/admin/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .merge(api)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, body).into_response()
}

/// Everything the overview shows, read in one call.
#[derive(Debug, Serialize)]
struct Overview {
    /// The database's `now()`: every age and deadline below is relative to it.
    database_time: DateTime<Utc>,
    /// Orders per status (every status present, 0 when none).
    orders: BTreeMap<&'static str, i64>,
    /// Waybills per status.
    waybills: BTreeMap<&'static str, i64>,
    /// The pending entities whose deadlines come first.
    next_deadlines: Vec<Deadline>,
    /// Rows the relay has not published yet.
    outbox: OutboxBacklog,
    /// The failed-message store.
    failed_messages: FailedSummary,
    /// The broker connection and the depth of every queue of the topology.
    broker: BrokerView,
    /// How late timeout cancels were in the last hour.
    lateness: Lateness,
}

#[derive(Debug, Serialize)]
struct FailedSummary {
    /// Neither requeued nor discarded.
    unresolved: i64,
    /// Counts per origin queue and status.
    by_queue: Vec<FailedCount>,
}

#[derive(Debug, Serialize)]
struct BrokerView {
    /// `up`, or `reconnecting` while the supervisor has no connection.
    status: &'static str,
    /// The node in use (`host:port/vhost`, never a password); null while reconnecting.
    node: Option<String>,
    /// Every queue of the topology, in `Topology::all_queues` order.
    queues: Vec<QueueView>,
}

#[derive(Debug, Serialize)]
struct QueueView {
    name: String,
    /// `cache`, `due`, `retry`, `level` or `parking`.
    role: &'static str,
    /// Messages ready in it; null when the broker could not tell.
    messages: Option<u32>,
    /// Consumers on it; null when the broker could not tell.
    consumers: Option<u32>,
    /// Why the depth is unknown (`not connected`, `not declared`, `timed out`).
    error: Option<&'static str>,
}

async fn overview(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Json<Overview>, ApiError> {
    query.checked(&[])?;
    let (database, broker) = tokio::join!(read_database(&state), read_broker(&state));
    let (database_time, counts, next_deadlines, outbox, failed, lateness) = database?;
    let mut orders = BTreeMap::from([("pending", 0), ("paid", 0), ("cancelled", 0)]);
    let mut waybills = BTreeMap::from([("pending", 0), ("accepted", 0), ("cancelled", 0)]);
    for count in counts {
        let table = if count.kind == "order" {
            &mut orders
        } else {
            &mut waybills
        };
        if let Some(slot) = table.get_mut(count.status.as_str()) {
            *slot = count.count;
        }
    }
    let unresolved = failed
        .iter()
        .filter(|c| c.status == FailedStatus::Pending)
        .map(|c| c.count)
        .sum();
    Ok(Json(Overview {
        database_time,
        orders,
        waybills,
        next_deadlines,
        outbox,
        failed_messages: FailedSummary {
            unresolved,
            by_queue: failed,
        },
        broker,
        lateness,
    }))
}

type DatabaseView = (
    DateTime<Utc>,
    Vec<queries::StatusCount>,
    Vec<Deadline>,
    OutboxBacklog,
    Vec<FailedCount>,
    Lateness,
);

/// The database half of the overview, one query after the other so a page polling
/// every few seconds holds one pooled connection at a time.
async fn read_database(state: &AppState) -> Result<DatabaseView, ApiError> {
    let pool = &state.pool;
    Ok((
        queries::now(pool).await?,
        queries::status_counts(pool).await?,
        queries::next_deadlines(pool, NEXT_DEADLINES).await?,
        queries::outbox_backlog(pool).await?,
        queries::failed_counts(pool).await?,
        queries::lateness(pool, LATENESS_WINDOW_SECONDS).await?,
    ))
}

/// The depth of every queue, by passive declares on a channel of its own (a passive
/// declare of a missing queue closes its channel; the publisher's must not suffer).
/// A broker that is away or slow leaves the depths unknown instead of failing the page.
async fn read_broker(state: &AppState) -> BrokerView {
    let topology = state.broker.topology();
    let labelled: Vec<(String, &'static str)> = topology
        .all_queues()
        .into_iter()
        .map(|name| {
            let role = role_of(topology, &name);
            (name, role)
        })
        .collect();
    let unknown = |error| {
        labelled
            .iter()
            .map(|(name, role)| QueueView::unknown(name, role, error))
            .collect()
    };
    let Some(node) = state.broker.node() else {
        return BrokerView {
            status: "reconnecting",
            node: None,
            queues: unknown("not connected"),
        };
    };
    match tokio::time::timeout(BROKER_READ_TIMEOUT, depths(state, &labelled)).await {
        Ok(Some(queues)) => BrokerView {
            status: "up",
            node: Some(node),
            queues,
        },
        Ok(None) => BrokerView {
            status: "reconnecting",
            node: None,
            queues: unknown("not connected"),
        },
        Err(_) => BrokerView {
            status: "up",
            node: Some(node),
            queues: unknown("timed out"),
        },
    }
}

async fn depths(state: &AppState, labelled: &[(String, &'static str)]) -> Option<Vec<QueueView>> {
    let names: Vec<String> = labelled.iter().map(|(name, _)| name.clone()).collect();
    let stats = state.broker.queue_stats(&names).await.ok()?;
    let queues = labelled
        .iter()
        .zip(stats)
        .map(|((name, role), read)| match read {
            Ok(stats) => QueueView {
                name: name.clone(),
                role,
                messages: Some(stats.messages),
                consumers: Some(stats.consumers),
                error: None,
            },
            Err(error) => {
                tracing::debug!(queue = %name, %error, "console could not read a queue's depth");
                QueueView::unknown(name, role, "not declared")
            }
        })
        .collect();
    Some(queues)
}

impl QueueView {
    fn unknown(name: &str, role: &'static str, error: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            role,
            messages: None,
            consumers: None,
            error: Some(error),
        }
    }
}

/// What a queue of the topology is for, from the topology's own names.
fn role_of(topology: &Topology, name: &str) -> &'static str {
    if name == topology.due_queue {
        "due"
    } else if name == topology.parking_queue {
        "parking"
    } else if topology
        .retry_delays_ms
        .iter()
        .any(|ms| topology.retry_queue(*ms) == name)
    {
        "retry"
    } else if topology
        .levels_ms
        .iter()
        .any(|ms| topology.level_queue(*ms) == name)
    {
        "level"
    } else {
        "cache"
    }
}

/// An order or a waybill with what happened to it.
#[derive(Debug, Serialize)]
struct Lookup {
    /// `order` or `waybill`.
    kind: &'static str,
    /// The entity as `GET /orders/{id}` (`/waybills/{id}`) shows it.
    entity: Value,
    /// Its deadline has passed in database time (even if not cancelled yet).
    expired: bool,
    /// Milliseconds to its deadline, negative once past.
    ms_left: i64,
    /// The database's `now()` when this was read.
    database_time: DateTime<Utc>,
    /// Its timer and its events, as written to the outbox (oldest first).
    outbox: Vec<OutboxEntry>,
    /// Failed messages that carried its timer, newest first.
    failed_messages: Vec<FailedRef>,
    /// Its deadline's history: created, extended, reminded (oldest first).
    deadline_history: Vec<HistoryEntry>,
}

async fn lookup(
    State(state): State<AppState>,
    EntityId(id): EntityId,
) -> Result<Json<Lookup>, ApiError> {
    let pool = &state.pool;
    let (kind, table, entity, deadline_history) =
        if let Some(order) = entities::get::<Order>(pool, id).await? {
            let history = deadlines::history::<Order>(pool, id).await?;
            ("order", Table::Orders, to_value(&order)?, history)
        } else if let Some(waybill) = entities::get::<Waybill>(pool, id).await? {
            let history = deadlines::history::<Waybill>(pool, id).await?;
            ("waybill", Table::Waybills, to_value(&waybill)?, history)
        } else {
            return Err(ApiError::NotFound("no order or waybill has this id"));
        };
    let deadline = queries::deadline_state(pool, table, id)
        .await?
        .ok_or(ApiError::NotFound("no order or waybill has this id"))?;
    Ok(Json(Lookup {
        kind,
        entity,
        expired: deadline.expired,
        ms_left: deadline.ms_left,
        database_time: queries::now(pool).await?,
        outbox: queries::outbox_history(pool, id).await?,
        failed_messages: queries::failed_of(pool, id).await?,
        deadline_history,
    }))
}

fn to_value(entity: &impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(entity)
        .map_err(|error| ApiError::internal(format!("could not serialise an entity: {error}")))
}
