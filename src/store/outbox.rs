//! The transactional outbox: timers and events are written in the transaction that
//! changes the entity, and published by the relay afterwards (DESIGN.md rule 3).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;
use crate::domain::{EntityKind, TimerMessage};

/// What a row asks the relay to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// A timer for the cache bucket `kind.timeout_ms`.
    Timer {
        /// The entity's kind.
        kind: EntityKind,
        /// The timeout that set the deadline: it names the cache bucket.
        timeout_ms: u64,
    },
    /// A domain event with this routing key.
    Event(&'static str),
}

/// One row to write into the outbox.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// Timer or event.
    pub topic: Topic,
    /// The entity concerned.
    pub entity_id: Uuid,
    /// The message body: the timer message or the entity as the API shows it.
    pub payload: Value,
    /// A timer's deadline.
    pub due_at: Option<DateTime<Utc>>,
}

impl NewRow {
    /// A timer for an entity whose deadline was set from `timeout`.
    pub fn timer(kind: EntityKind, id: Uuid, timeout: Duration, due_at: DateTime<Utc>) -> Self {
        let message = TimerMessage { kind, id };
        Self {
            topic: Topic::Timer { kind, timeout_ms: timeout.as_millis() as u64 },
            entity_id: id,
            payload: serde_json::to_value(message).unwrap_or(Value::Null),
            due_at: Some(due_at),
        }
    }

    /// A domain event carrying `entity` as the API shows it.
    pub fn event(routing_key: &'static str, id: Uuid, entity: &impl serde::Serialize) -> Self {
        Self {
            topic: Topic::Event(routing_key),
            entity_id: id,
            payload: serde_json::to_value(entity).unwrap_or(Value::Null),
            due_at: None,
        }
    }
}

/// Writes rows in one statement, inside the caller's transaction.
pub async fn enqueue(tx: &mut PgConnection, rows: &[NewRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut topics = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        match &row.topic {
            Topic::Timer { kind, timeout_ms } => {
                topics.push("timer");
                keys.push(format!("{}.{timeout_ms}", kind.as_str()));
            }
            Topic::Event(key) => {
                topics.push("event");
                keys.push((*key).to_owned());
            }
        }
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.entity_id).collect();
    let payloads: Vec<Value> = rows.iter().map(|r| r.payload.clone()).collect();
    let due: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.due_at).collect();
    sqlx::query(
        "insert into outbox (topic, routing_key, entity_id, payload, due_at)
         select * from unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[], $5::timestamptz[])",
    )
    .bind(&topics)
    .bind(&keys)
    .bind(&ids)
    .bind(&payloads)
    .bind(&due)
    .execute(tx)
    .await?;
    Ok(())
}

/// A row claimed by a relay, ready to publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    /// Row id, the publish order.
    pub id: i64,
    /// `timer` or `event`.
    pub topic: String,
    /// Cache bucket of a timer, routing key of an event.
    pub routing_key: String,
    /// The entity concerned, for logs and message ids.
    pub entity_id: Uuid,
    /// The message body.
    pub payload: Value,
    /// For a timer: milliseconds until its deadline in database time, at least 0.
    pub ms_left: Option<i64>,
}

/// Claims up to `limit` unpublished rows in id order, skipping rows another relay holds.
/// The rows stay locked until `tx` ends.
pub async fn claim(tx: &mut Transaction<'_, Postgres>, limit: i64) -> Result<Vec<Pending>, StoreError> {
    let rows = sqlx::query_as::<_, Pending>(
        "select id, topic, routing_key, entity_id, payload,
                greatest(0, ceil(extract(epoch from (due_at - now())) * 1000))::bigint as ms_left
         from outbox where published_at is null
         order by id limit $1 for update skip locked",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

/// Marks rows published, after the broker confirmed them.
pub async fn mark_published(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("update outbox set published_at = now() where id = any($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Rows not published yet: the backlog shown in metrics and readiness.
pub async fn backlog(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("select count(*) from outbox where published_at is null").fetch_one(pool).await?)
}

/// Deletes published rows older than `retention`, a bounded batch at a time.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "delete from outbox where id in (
             select id from outbox
             where published_at < now() - $1::bigint * interval '1 millisecond'
             limit 10000)",
    )
    .bind(retention.as_millis() as i64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
