//! The read-only queries behind the operator console: counts, the next deadlines, the
//! outbox backlog, how late timeout cancels were, and everything known about one entity.
//! Every time here is the database's (docs/architecture.md rule 1): the console shows what the
//! service itself would decide.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;
use super::failed::FailedStatus;

/// How many rows have one status, for one kind.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StatusCount {
    /// `order` or `waybill`.
    pub kind: String,
    /// Its status column.
    pub status: String,
    /// Rows with it.
    pub count: i64,
}

/// Rows per kind and status. Both tables have an index on `(status, id)`, so this is an
/// index-only scan; on very large tables it is still a full count, which an operator
/// page polling every few seconds can afford on one instance, not on hundreds.
pub async fn status_counts(pool: &PgPool) -> Result<Vec<StatusCount>, StoreError> {
    Ok(sqlx::query_as(
        "select 'order' as kind, status, count(*) as count from orders group by status
         union all
         select 'waybill', status, count(*) from waybills group by status",
    )
    .fetch_all(pool)
    .await?)
}

/// A pending entity and how long it has left.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Deadline {
    /// `order` or `waybill`.
    pub kind: String,
    /// Its id.
    pub id: Uuid,
    /// Its deadline.
    pub expires_at: DateTime<Utc>,
    /// Milliseconds until the deadline in database time; negative when overdue (the
    /// timer or the sweeper has not cancelled it yet).
    pub ms_left: i64,
}

/// The `limit` pending entities whose deadlines come first, both kinds together. Each
/// half reads the partial index on pending deadlines.
pub async fn next_deadlines(pool: &PgPool, limit: i64) -> Result<Vec<Deadline>, StoreError> {
    Ok(sqlx::query_as(
        "select kind, id, expires_at,
                floor(extract(epoch from (expires_at - now())) * 1000)::bigint as ms_left
         from ((select 'order' as kind, id, expires_at from orders
                where status = 'pending' order by expires_at limit $1)
               union all
               (select 'waybill', id, expires_at from waybills
                where status = 'pending' order by expires_at limit $1)) pending
         order by expires_at limit $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Rows the relay has not published yet.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxBacklog {
    /// How many.
    pub backlog: i64,
    /// Milliseconds the oldest of them has waited, in database time; null when none.
    pub oldest_age_ms: Option<i64>,
}

/// The outbox backlog and the age of its oldest row.
pub async fn outbox_backlog(pool: &PgPool) -> Result<OutboxBacklog, StoreError> {
    Ok(sqlx::query_as(
        "select count(*) as backlog,
                floor(extract(epoch from (now() - min(created_at))) * 1000)::bigint as oldest_age_ms
         from outbox",
    )
    .fetch_one(pool)
    .await?)
}

/// Failed messages per origin queue and status.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailedCount {
    /// The queue they failed on.
    pub queue: String,
    /// Whether an operator has dealt with them.
    pub status: FailedStatus,
    /// How many.
    pub count: i64,
}

/// Failed messages grouped by queue and status: the unresolved total, the choices of the
/// queue filter and the count a "requeue all" confirmation names.
pub async fn failed_counts(pool: &PgPool) -> Result<Vec<FailedCount>, StoreError> {
    Ok(sqlx::query_as(
        "select queue, status, count(*) as count from failed_messages group by queue, status order by queue, status",
    )
    .fetch_all(pool)
    .await?)
}

/// Upper bounds (milliseconds, exclusive) of the lateness histogram's buckets; the last
/// bucket is everything from the last bound on.
pub const LATENESS_BOUNDS_MS: [f64; 9] = [
    100.0, 250.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0, 30_000.0, 60_000.0,
];

/// How late timeout cancels came, `cancelled_at - expires_at`, over a recent window.
#[derive(Debug, Clone, Serialize)]
pub struct Lateness {
    /// The window, in seconds back from the database's now.
    pub window_seconds: i64,
    /// Timeout cancels in the window.
    pub count: i64,
    /// Median lateness in milliseconds; null without cancels.
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// The latest cancel.
    pub max_ms: Option<f64>,
    /// Cancels per bucket `[from_ms, to_ms)`; `to_ms` null for the last one.
    pub histogram: Vec<LatenessBucket>,
}

/// One bar of the lateness histogram.
#[derive(Debug, Clone, Serialize)]
pub struct LatenessBucket {
    /// Inclusive lower bound in milliseconds.
    pub from_ms: f64,
    /// Exclusive upper bound; null for the open last bucket.
    pub to_ms: Option<f64>,
    /// Cancels in it.
    pub count: i64,
}

#[derive(sqlx::FromRow)]
struct LatenessRow {
    count: i64,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    buckets: Vec<i64>,
}

/// Lateness of the cancels made because a deadline passed (not at a customer's or a
/// shipper's request) during the last `window_seconds`.
pub async fn lateness(pool: &PgPool, window_seconds: i64) -> Result<Lateness, StoreError> {
    let row: LatenessRow = sqlx::query_as(
        "with late as (
             select extract(epoch from (cancelled_at - expires_at)) * 1000 as ms
             from orders
             where status = 'cancelled' and cancel_reason = 'payment_timeout'
               and cancelled_at > now() - $1::bigint * interval '1 second'
             union all
             select extract(epoch from (cancelled_at - expires_at)) * 1000
             from waybills
             where status = 'cancelled' and cancel_reason = 'acceptance_timeout'
               and cancelled_at > now() - $1::bigint * interval '1 second'
         ),
         stats as (
             select count(*) as count,
                    percentile_cont(0.5) within group (order by ms)::float8 as p50_ms,
                    percentile_cont(0.9) within group (order by ms)::float8 as p90_ms,
                    percentile_cont(0.99) within group (order by ms)::float8 as p99_ms,
                    max(ms)::float8 as max_ms
             from late
         ),
         slots as (
             select width_bucket(ms::float8, $2::float8[]) as slot, count(*) as n from late group by 1
         )
         select stats.*,
                array(select coalesce((select n from slots where slot = i), 0)::bigint
                      from generate_series(0, cardinality($2::float8[])) as i order by i) as buckets
         from stats",
    )
    .bind(window_seconds)
    .bind(&LATENESS_BOUNDS_MS[..])
    .fetch_one(pool)
    .await?;
    let histogram = row
        .buckets
        .iter()
        .enumerate()
        .map(|(i, count)| LatenessBucket {
            from_ms: if i == 0 {
                0.0
            } else {
                LATENESS_BOUNDS_MS[i - 1]
            },
            to_ms: LATENESS_BOUNDS_MS.get(i).copied(),
            count: *count,
        })
        .collect();
    Ok(Lateness {
        window_seconds,
        count: row.count,
        p50_ms: row.p50_ms,
        p90_ms: row.p90_ms,
        p99_ms: row.p99_ms,
        max_ms: row.max_ms,
        histogram,
    })
}

/// The database's clock, so the page can show times relative to it.
pub async fn now(pool: &PgPool) -> Result<DateTime<Utc>, StoreError> {
    Ok(sqlx::query_scalar("select now()").fetch_one(pool).await?)
}

/// Where an entity stands against its deadline, in database time.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadlineState {
    /// `expires_at <= now()`.
    pub expired: bool,
    /// Milliseconds left (negative once past).
    pub ms_left: i64,
}

/// The deadline state of one entity of `table` (`orders` or `waybills`).
pub async fn deadline_state(
    pool: &PgPool,
    table: Table,
    id: Uuid,
) -> Result<Option<DeadlineState>, StoreError> {
    let sql = match table {
        Table::Orders => {
            "select expires_at <= now() as expired,
                    floor(extract(epoch from (expires_at - now())) * 1000)::bigint as ms_left
             from orders where id = $1"
        }
        Table::Waybills => {
            "select expires_at <= now() as expired,
                    floor(extract(epoch from (expires_at - now())) * 1000)::bigint as ms_left
             from waybills where id = $1"
        }
    };
    Ok(sqlx::query_as(sql).bind(id).fetch_optional(pool).await?)
}

/// The two tables with deadlines.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    /// `orders`.
    Orders,
    /// `waybills`.
    Waybills,
}

/// One outbox row of an entity: its timer or one of its events.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxEntry {
    /// Row id, the publish order.
    pub id: i64,
    /// `timer` or `event`.
    pub topic: String,
    /// The cache bucket of a timer, the routing key of an event.
    pub routing_key: String,
    /// A timer's deadline.
    pub due_at: Option<DateTime<Utc>>,
    /// When the row was written (with the change it records).
    pub created_at: DateTime<Utc>,
    /// Always null: a row is deleted once the broker confirmed it (migrations/0004), so
    /// only waiting rows are shown. Kept for the console's clients.
    pub published_at: Option<DateTime<Utc>>,
}

/// The outbox entries of an entity still waiting to be published, in the order they were
/// written (a create's row shows as its timer and its event). Published rows are deleted,
/// so an entity whose messages all went out shows none.
pub async fn outbox_history(
    pool: &PgPool,
    entity_id: Uuid,
) -> Result<Vec<OutboxEntry>, StoreError> {
    Ok(sqlx::query_as(
        "select id, 'timer' as topic, timer_bucket as routing_key, due_at, created_at,
                null::timestamptz as published_at, 0 as part
         from outbox where entity_id = $1 and timer_bucket is not null
         union all
         select id, 'event', event_key, null, created_at, null, 1
         from outbox where entity_id = $1 and event_key is not null
         order by id, part",
    )
    .bind(entity_id)
    .fetch_all(pool)
    .await?)
}

/// A failed message that carried an entity's timer, in short.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailedRef {
    /// The failed message's id.
    pub id: Uuid,
    /// The queue it failed on.
    pub queue: String,
    /// The last error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: i32,
    /// Whether an operator has dealt with it.
    pub status: FailedStatus,
    /// When it failed for the last time.
    pub last_failed_at: DateTime<Utc>,
}

/// Failed messages whose `message_id` is the entity's id (timers carry it), newest first.
pub async fn failed_of(pool: &PgPool, entity_id: Uuid) -> Result<Vec<FailedRef>, StoreError> {
    Ok(sqlx::query_as(
        "select id, queue, error, attempts, status, last_failed_at
         from failed_messages where message_id = $1 order by id desc limit 50",
    )
    .bind(entity_id.to_string())
    .fetch_all(pool)
    .await?)
}
