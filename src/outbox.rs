//! The outbox relay: publishes what committed transactions wrote to the outbox, in id
//! order, with publisher confirms, and only then marks the rows published. Woken by an
//! in-process `Notify` after this instance commits outbox rows, and polls the outbox
//! every second for rows other instances committed (or left behind when they died); rows
//! are claimed with `FOR UPDATE SKIP LOCKED` so any number of instances relay side by
//! side. There is no NOTIFY from the writing transactions: it would serialise their
//! commits (migrations/0002_outbox_without_notify.sql).

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{FieldTable, ShortString};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Outgoing, PERSISTENT, PublishError};
use crate::liveness::Heartbeat;
use crate::store::outbox::{self, Pending};
use crate::store::{CallLimit, StoreError};

/// Rows published per transaction.
const BATCH: i64 = 500;
/// Longest sleep between two looks at the outbox when no notification arrives.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the relay counts the backlog for the `order_timeout_outbox_backlog` gauge.
/// The relay keeps the gauge so `/metrics`, which anyone may call, runs no query.
const BACKLOG_GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after a failed batch before trying again.
const FAILURE_PAUSE: Duration = Duration::from_millis(500);

/// Why a batch was not published.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or marking the rows failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Publishing failed; the rows stay unpublished.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<sqlx::Error> for RelayError {
    fn from(error: sqlx::Error) -> Self {
        RelayError::Store(error.into())
    }
}

/// Runs the relay until `shutdown`; the batch in flight finishes first. Each batch is
/// bounded by `call_limit` (a batch past it is dropped, its rows stay unpublished and are
/// taken again) and marked on `heartbeat`.
pub async fn run(
    pool: PgPool,
    broker: Broker,
    wakeup: Arc<Notify>,
    call_limit: CallLimit,
    heartbeat: Arc<Heartbeat>,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    let mut gauge_due = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= gauge_due {
            gauge_due = tokio::time::Instant::now() + BACKLOG_GAUGE_INTERVAL;
            update_backlog_gauge(&pool, call_limit).await;
        }
        let busy = heartbeat.busy();
        let batch = call_limit
            .run("relay_batch", relay_batch(&pool, &broker))
            .await;
        drop(busy);
        let pause = match batch {
            Ok(published) if published as i64 == BATCH => continue,
            Ok(_) => {
                if failing {
                    tracing::info!("outbox relay publishing again");
                    failing = false;
                }
                None
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "outbox relay cannot publish, backlog kept in the database");
                    failing = true;
                }
                Some(FAILURE_PAUSE)
            }
        };
        let wait = pause.unwrap_or(POLL_INTERVAL);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wakeup.notified(), if pause.is_none() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Counts the unpublished rows into the backlog gauge (left as it was when the count
/// fails: the database is then reported by `/readyz` and the relay's own warnings).
async fn update_backlog_gauge(pool: &PgPool, call_limit: CallLimit) {
    if let Ok(backlog) = call_limit
        .run("outbox_backlog", outbox::backlog(pool))
        .await
    {
        metrics::gauge!("order_timeout_outbox_backlog").set(backlog as f64);
    }
}

/// Claims, publishes and marks one batch; returns how many rows it published. Its span
/// (`relay_batch{rows=N}`) holds the per-row `published` lines, which name the entity.
#[tracing::instrument(name = "relay_batch", skip_all, fields(rows = tracing::field::Empty))]
pub async fn relay_batch(pool: &PgPool, broker: &Broker) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let rows = outbox::claim(&mut tx, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    tracing::Span::current().record("rows", rows.len());
    let publications: Vec<Publication> =
        rows.iter().map(|row| publication_of(broker, row)).collect();
    for publication in &publications {
        if let Some(bucket) = &publication.declare_bucket {
            broker.ensure_cache_queue(bucket).await?;
        }
    }
    let messages: Vec<Outgoing<'_>> = publications.iter().map(Publication::outgoing).collect();
    broker.publish(&messages).await?;
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    outbox::mark_published(&mut tx, &ids).await?;
    tx.commit().await?;
    for row in &rows {
        metrics::counter!("order_timeout_outbox_published_total", "topic" => row.topic.clone())
            .increment(1);
        tracing::debug!(entity_id = %row.entity_id, topic = %row.topic, key = %row.routing_key, "published");
    }
    Ok(rows.len())
}

/// Where and how one outbox row is published.
struct Publication {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
    mandatory: bool,
    declare_bucket: Option<String>,
}

impl Publication {
    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            body: &self.body,
            properties: self.properties.clone(),
            mandatory: self.mandatory,
        }
    }
}

fn publication_of(broker: &Broker, row: &Pending) -> Publication {
    let topology = broker.topology();
    let body = serde_json::to_vec(&row.payload).unwrap_or_default();
    let base = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(ShortString::from("application/json"))
        .with_timestamp(chrono::Utc::now().timestamp() as u64);
    if row.topic == "timer" {
        let ms_left = row.ms_left.unwrap_or(0).max(0);
        let properties = base
            .with_message_id(row.entity_id.to_string().into())
            .with_headers(FieldTable::default());
        if ms_left == 0 {
            // Already due (published late, after an outage): straight to the due queue
            // instead of waiting behind younger timers in the cache bucket.
            return Publication {
                exchange: String::new(),
                routing_key: topology.due_queue.clone(),
                body,
                properties,
                mandatory: true,
                declare_bucket: None,
            };
        }
        return Publication {
            exchange: String::new(),
            routing_key: topology.cache_queue(&row.routing_key),
            body,
            properties: properties.with_expiration(ms_left.to_string().into()),
            mandatory: true,
            declare_bucket: Some(row.routing_key.clone()),
        };
    }
    Publication {
        exchange: topology.events_exchange.clone(),
        routing_key: row.routing_key.clone(),
        body,
        properties: base.with_message_id(format!("{}:{}", row.routing_key, row.entity_id).into()),
        // Nobody may be bound to the events exchange yet; that is not a failure.
        mandatory: false,
        declare_bucket: None,
    }
}
