//! Moving deadlines: one entity's extension and the admin's bulk extension. Each is a
//! conditional UPDATE computing the new deadline in SQL from the current one (rule 1),
//! writing the `extended` event in the same statement; the history row is written by
//! the trigger of migrations/0010. No timer is touched: the one armed for the old
//! deadline fires early and is re-armed for the time left (rule 4).

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use super::StoreError;
use super::entities::Entity;
use super::outbox;
use crate::domain::{BulkExtension, Order, Waybill};

/// What an extension did.
#[derive(Debug)]
pub enum Extended<T> {
    /// The deadline moved; the `extended` event is in the outbox.
    Done(T),
    /// Nothing changed: the entity as it is, and why.
    Refused {
        /// The entity, unchanged.
        current: T,
        /// Its deadline has passed in database time (even if not cancelled yet).
        expired: bool,
        /// Pending and not due, but the new deadline would be more than MAX_TIMEOUT
        /// from now.
        too_far: bool,
    },
    /// No entity has this id.
    NotFound,
}

/// Adds `seconds` to a pending entity's deadline if it has not passed yet in database
/// time and the new one stays within `max` from now. A concurrent cancel or payment
/// and this statement lock the same row, so at most one of them wins.
pub async fn extend<T: Entity>(
    pool: &PgPool,
    id: Uuid,
    seconds: u64,
    max: Duration,
) -> Result<Extended<T>, StoreError> {
    let update = format!(
        "update {table} set expires_at = expires_at + $2::bigint * interval '1 second',
                extended_at = now()
         where id = $1 and status = 'pending' and expires_at > now()
           and expires_at + $2::bigint * interval '1 second'
               <= now() + $3::bigint * interval '1 millisecond'
         returning *",
        table = T::TABLE
    );
    let sql = outbox::with_outbox(T::KIND, &update, T::KIND.extended_event(), None, "*");
    let mut conn = pool.acquire().await?;
    let changed = sqlx::query_as::<_, T>(AssertSqlSafe(sql))
        .bind(id)
        .bind(seconds as i64)
        .bind(max.as_millis() as i64)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(changed) = changed {
        outbox::written();
        return Ok(Extended::Done(changed));
    }
    let lookup = format!(
        "select *, expires_at <= now() as expired,
                expires_at + $2::bigint * interval '1 second'
                    > now() + $3::bigint * interval '1 millisecond' as too_far
         from {} where id = $1",
        T::TABLE
    );
    let row = sqlx::query(AssertSqlSafe(lookup))
        .bind(id)
        .bind(seconds as i64)
        .bind(max.as_millis() as i64)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        None => Ok(Extended::NotFound),
        Some(row) => Ok(Extended::Refused {
            current: T::from_row(&row)?,
            expired: row.try_get("expired")?,
            too_far: row.try_get("too_far")?,
        }),
    }
}

/// What a bulk extension matched and changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BulkOutcome {
    /// Pending, not yet due entities matching the filter.
    pub matched: u64,
    /// Of those, extended (0 on a dry run; fewer when some settled meanwhile or the new
    /// deadline would be more than MAX_TIMEOUT from now).
    pub extended: u64,
}

/// The filter of a bulk extension as SQL over `T`'s table; `$1` customer or order id,
/// `$2` expires_before.
fn bulk_filter<T: Entity>() -> String {
    let (owner_column, owner_type) = T::OWNER_FILTER;
    format!(
        "status = 'pending' and expires_at > now()
         and ($1::{owner_type} is null or {owner_column} = $1::{owner_type})
         and ($2::timestamptz is null or expires_at < $2)"
    )
}

/// Extends every pending, not yet due entity matching `request`, `batch` rows per
/// statement (each its own transaction, so no long lock on many rows), in id order so
/// every row is visited once. A dry run only counts.
pub async fn bulk_extend(
    pool: &PgPool,
    request: &BulkExtension,
    max: Duration,
    batch: i64,
) -> Result<BulkOutcome, StoreError> {
    match request.kind {
        crate::domain::EntityKind::Order => {
            bulk_extend_of::<Order>(pool, request, max, batch).await
        }
        crate::domain::EntityKind::Waybill => {
            bulk_extend_of::<Waybill>(pool, request, max, batch).await
        }
    }
}

async fn bulk_extend_of<T: Entity>(
    pool: &PgPool,
    request: &BulkExtension,
    max: Duration,
    batch: i64,
) -> Result<BulkOutcome, StoreError> {
    let owner = request
        .customer_id
        .as_ref()
        .map(|c| c.as_str().to_owned())
        .or(request.order_id.map(|id| id.to_string()));
    let count = format!(
        "select count(*) from {} where {}",
        T::TABLE,
        bulk_filter::<T>()
    );
    let matched: i64 = sqlx::query_scalar(AssertSqlSafe(count))
        .bind(owner.as_deref())
        .bind(request.expires_before)
        .fetch_one(pool)
        .await?;
    let mut outcome = BulkOutcome {
        matched: matched as u64,
        extended: 0,
    };
    if request.dry_run {
        return Ok(outcome);
    }
    // The batch is picked once, as an array (an InitPlan): a LIMIT subquery joined in
    // `UPDATE … FROM` may be rescanned and extend far more rows than the batch.
    let update = format!(
        "update {table} set expires_at = expires_at + $3::bigint * interval '1 second',
                extended_at = now()
         where id = any(array(
                   select id from {table}
                   where {filter} and id > $5
                     and expires_at + $3::bigint * interval '1 second'
                         <= now() + $4::bigint * interval '1 millisecond'
                   order by id limit $6 for update))
           and status = 'pending' and expires_at > now()
         returning *",
        table = T::TABLE,
        filter = bulk_filter::<T>()
    );
    let sql = outbox::with_outbox(T::KIND, &update, T::KIND.extended_event(), None, "id");
    // Pages by id until a batch comes back empty: every row is visited once, and an
    // extended row is not extended again even if its new deadline still matches.
    let mut after = Uuid::nil();
    loop {
        let mut tx = pool.begin().await?;
        // The history trigger records these as bulk extensions.
        sqlx::query("select set_config('order_timeout.deadline_source', 'bulk', true)")
            .execute(&mut *tx)
            .await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
            .bind(owner.as_deref())
            .bind(request.expires_before)
            .bind(request.seconds as i64)
            .bind(max.as_millis() as i64)
            .bind(after)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        if !ids.is_empty() {
            outbox::written();
        }
        outcome.extended += ids.len() as u64;
        match ids.iter().max() {
            Some(last) => after = *last,
            None => return Ok(outcome),
        }
    }
}

/// One step in the life of an entity's deadline, for the console's lookup.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct HistoryEntry {
    /// `created`, `extended` or `reminded`.
    pub event: String,
    /// When it happened, database time.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The deadline before an extension; null otherwise.
    pub old_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The deadline set (created, extended) or reminded of.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// `api` (one entity), `bulk` (the admin's bulk extension) or `timer` (a reminder).
    pub source: String,
}

/// The history of an entity's deadline, oldest first: its creation with the first
/// deadline it had, then every extension and reminder. Empty when no entity has `id`.
pub async fn history<T: Entity>(pool: &PgPool, id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
    let sql = format!(
        "select event, at, old_expires_at, expires_at, source from (
             select 0 as step, 'created' as event, e.created_at as at,
                    null::timestamptz as old_expires_at,
                    coalesce((select h.old_expires_at from deadline_history h
                              where h.entity_id = e.id and h.event = 'extended'
                              order by h.id limit 1), e.expires_at) as expires_at,
                    'api' as source
             from {table} e where e.id = $1
             union all
             select id, event, at, old_expires_at, expires_at, source
             from deadline_history where entity_id = $1 and kind = $2
         ) steps order by step",
        table = T::TABLE
    );
    Ok(sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .bind(T::KIND.as_str())
        .fetch_all(pool)
        .await?)
}
