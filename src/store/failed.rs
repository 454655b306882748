//! Messages whose handling failed for good, kept for an operator (docs/architecture.md rule 7).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{ErrorClass, StoreError};

/// Where a failed message is in an operator's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum FailedStatus {
    /// Waiting for an operator: counted as unresolved, alerted on.
    Pending,
    /// Republished to where it failed; kept for audit.
    Requeued,
    /// Given up on by an operator; kept for audit.
    Discarded,
}

impl FailedStatus {
    /// Every status, in the order the admin API documents them.
    pub const ALL: [FailedStatus; 3] = [
        FailedStatus::Pending,
        FailedStatus::Requeued,
        FailedStatus::Discarded,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FailedStatus::Pending => "pending",
            FailedStatus::Requeued => "requeued",
            FailedStatus::Discarded => "discarded",
        }
    }

    /// The status of this name (a query parameter), if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

/// A message as the failed-message store keeps it: enough to republish it exactly.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailedMessage {
    /// Row id (uuid v7, the listing cursor).
    pub id: Uuid,
    /// The queue the message was consumed from, where a requeue sends it back.
    pub queue: String,
    /// The exchange it was last published to.
    pub exchange: String,
    /// The routing key it was last published with.
    pub routing_key: String,
    /// Its AMQP headers as JSON.
    pub headers: Value,
    /// Its body, byte for byte, up to FAILED_MESSAGE_MAX_BODY bytes (in a listing only
    /// the first PREVIEW_BYTES).
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The size the body had when it failed, in bytes (larger than what is stored
    /// when it was cut).
    pub body_size: i64,
    /// Its `message_id` property.
    pub message_id: Option<String>,
    /// The last error.
    pub error: String,
    /// Transient (its retries were spent) or permanent.
    pub error_class: ErrorClass,
    /// How many times it was tried.
    pub attempts: i32,
    /// When it first failed.
    pub first_failed_at: DateTime<Utc>,
    /// When it failed for the last time.
    pub last_failed_at: DateTime<Utc>,
    /// Whether an operator has dealt with it.
    pub status: FailedStatus,
    /// When an operator requeued or discarded it.
    pub resolved_at: Option<DateTime<Utc>>,
}

/// A failure to record.
#[derive(Debug, Clone)]
pub struct NewFailure {
    /// The queue it was consumed from.
    pub queue: String,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Its headers as JSON.
    pub headers: Value,
    /// Its body, already cut to the stored maximum.
    pub body: Vec<u8>,
    /// The size the body had before it was cut.
    pub body_size: i64,
    /// Its `message_id`.
    pub message_id: Option<String>,
    /// The error.
    pub error: String,
    /// Transient (retries spent) or permanent.
    pub error_class: ErrorClass,
    /// How many times it was tried.
    pub attempts: i32,
    /// When it first failed, if an earlier attempt recorded it.
    pub first_failed_at: Option<DateTime<Utc>>,
}

/// Stores a failure and returns its id.
pub async fn insert(pool: &PgPool, failure: &NewFailure) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into failed_messages (id, queue, exchange, routing_key, headers, body, message_id,
                                      error, error_class, attempts, first_failed_at, last_failed_at,
                                      body_size)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, coalesce($11, now()), now(), $12)",
    )
    .bind(id)
    .bind(storable_text(&failure.queue))
    .bind(storable_text(&failure.exchange))
    .bind(storable_text(&failure.routing_key))
    .bind(storable_json(&failure.headers))
    .bind(&failure.body)
    .bind(failure.message_id.as_deref().map(storable_text))
    .bind(storable_text(&failure.error))
    .bind(failure.error_class)
    .bind(failure.attempts)
    .bind(failure.first_failed_at)
    .bind(failure.body_size)
    .execute(pool)
    .await?;
    Ok(id)
}

/// Text as a `text` column can hold it and an operator can read it: NUL (which
/// PostgreSQL refuses, so the message was parked again on every replay), other control
/// characters and invisible ones (bidi overrides, zero-width) are written as `\u{…}`
/// escapes; tab and newline stay.
pub fn storable_text(text: &str) -> String {
    let hidden =
        |c: char| (c.is_control() && c != '\n' && c != '\t') || crate::domain::is_invisible(c);
    if !text.chars().any(hidden) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A JSON document as `jsonb` can hold it: NUL in a key or a string (refused by
/// PostgreSQL) is written as the escape `\u{0}`.
pub fn storable_json(value: &Value) -> Value {
    let clean = |text: &str| text.replace('\0', "\\u{0}");
    match value {
        Value::String(text) => Value::String(clean(text)),
        Value::Array(items) => Value::Array(items.iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (clean(key), storable_json(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Filters of the admin listing.
#[derive(Debug, Clone, Default)]
pub struct FailedFilter {
    /// Only this status.
    pub status: Option<FailedStatus>,
    /// Only messages from this queue.
    pub queue: Option<String>,
    /// Only rows older than this id (the cursor).
    pub after: Option<Uuid>,
    /// Page size.
    pub limit: i64,
}

/// Bytes of each body a listing reads: a page of 200 rows stays small whatever the
/// bodies weigh (the whole body is read only by `get`).
pub const PREVIEW_BYTES: i32 = 256;

/// Lists failed messages newest first, each body cut to its first PREVIEW_BYTES.
pub async fn list(pool: &PgPool, filter: &FailedFilter) -> Result<Vec<FailedMessage>, StoreError> {
    Ok(sqlx::query_as(
        "select id, queue, exchange, routing_key, headers, substring(body from 1 for $5) as body,
                body_size, message_id, error, error_class, attempts, first_failed_at,
                last_failed_at, status, resolved_at
         from failed_messages
         where ($1::text is null or status = $1) and ($2::text is null or queue = $2)
           and ($3::uuid is null or id < $3)
         order by id desc limit $4",
    )
    .bind(filter.status)
    .bind(filter.queue.as_deref())
    .bind(filter.after)
    .bind(filter.limit)
    .bind(PREVIEW_BYTES)
    .fetch_all(pool)
    .await?)
}

/// Reads one failed message.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<FailedMessage>, StoreError> {
    Ok(
        sqlx::query_as("select * from failed_messages where id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Locks one row for a requeue, so two operators cannot requeue it twice.
pub async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<Option<FailedMessage>, StoreError> {
    Ok(
        sqlx::query_as("select * from failed_messages where id = $1 for update")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// The newest row id, so a bulk requeue stops at the rows that existed when it began
/// (a requeued message that fails again is stored as a new row, and must not be
/// requeued again by the same call).
pub async fn newest_id(pool: &PgPool) -> Result<Option<Uuid>, StoreError> {
    Ok(
        sqlx::query_scalar("select id from failed_messages order by id desc limit 1")
            .fetch_optional(pool)
            .await?,
    )
}

/// Locks unresolved rows up to `upto` (optionally of one queue) that no one else holds.
/// Rows whose body was cut are left out: republishing part of a message would be wrong.
pub async fn lock_unresolved(
    tx: &mut Transaction<'_, Postgres>,
    queue: Option<&str>,
    upto: Uuid,
    limit: i64,
) -> Result<Vec<FailedMessage>, StoreError> {
    Ok(sqlx::query_as(
        "select * from failed_messages
         where status = 'pending' and ($1::text is null or queue = $1) and id <= $2
           and octet_length(body) = body_size
         order by id limit $3 for update skip locked",
    )
    .bind(queue)
    .bind(upto)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// Marks rows resolved with `status` (requeued or discarded).
pub async fn resolve(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    status: FailedStatus,
) -> Result<(), StoreError> {
    sqlx::query("update failed_messages set status = $2, resolved_at = now() where id = any($1)")
        .bind(ids)
        .bind(status)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Rows not yet requeued or discarded, for metrics and the console.
pub async fn unresolved_count(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("select count(*) from failed_messages where status = 'pending'")
            .fetch_one(pool)
            .await?,
    )
}
