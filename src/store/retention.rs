//! Deletes what is kept only for a while: idempotency keys past their retention, and
//! failed messages an operator resolved (requeued or discarded) long enough ago. Each
//! call deletes one bounded batch, so no statement holds many locks or runs long.

use std::time::Duration;

use sqlx::PgPool;

use super::StoreError;

/// Deletes up to `batch` idempotency keys older than `retention`; returns how many.
pub async fn prune_idempotency_keys(
    pool: &PgPool,
    retention: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query(
        "delete from idempotency_keys where (scope, key) in (
             select scope, key from idempotency_keys
             where created_at < now() - make_interval(secs => $1)
             limit $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` failed messages resolved more than `retention` ago (pending
/// ones are never pruned); returns how many.
pub async fn prune_resolved_failed_messages(
    pool: &PgPool,
    retention: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query(
        "delete from failed_messages where id in (
             select id from failed_messages
             where status <> 'pending' and resolved_at < now() - make_interval(secs => $1)
             limit $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}
