//! Moving deadlines: one entity's extension and the admin's bulk extension. Each is a
//! conditional UPDATE computing the new deadline in SQL from the current one (rule 1),
//! writing the `extended` event in the same statement; the history row is written by
//! the trigger of migrations/0010. No timer is touched: the one armed for the old
//! deadline fires early and is re-armed for the time left (rule 4).

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use super::entities::Entity;
use super::outbox;
use super::{LISTED_IDS, StoreError};
use crate::domain::{BulkExtension, EntityKind, Order, Waybill};

/// When a new entity's first timer is due: at its reminder's moment when one is owed
/// (the timeout is at least REMIND_BEFORE), else at its deadline. Its bucket is the time
/// it waits (`outbox::inserted_timer_bucket`): the configured timeouts' buckets have
/// cache queues, any other timeout (a client's `timeout_seconds`) goes through the delay
/// levels, so clients cannot make the service declare queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstTimer {
    /// The entity's timeout: its deadline is this long after the database's now.
    pub timeout: Duration,
    /// How long before the deadline the timer is due (REMIND_BEFORE or zero).
    pub before_deadline: Duration,
}

impl FirstTimer {
    /// The first timer of an entity with `timeout` whose reminders come `remind_before`
    /// its deadline.
    pub fn plan(timeout: Duration, remind_before: Option<Duration>) -> Self {
        let before_deadline = remind_before
            .filter(|before| *before <= timeout)
            .unwrap_or(Duration::ZERO);
        Self {
            timeout,
            before_deadline,
        }
    }

    /// How long the timer waits from creation: the TTL its cache bucket is named for.
    pub fn wait(&self) -> Duration {
        self.timeout - self.before_deadline
    }
}

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
///
/// With `remind_before`, a timer for the new deadline's reminder is written too when one
/// is owed and its moment is still ahead: the timer already in the broker may come only
/// at the old deadline, after that moment.
pub async fn extend<T: Entity>(
    pool: &PgPool,
    id: Uuid,
    seconds: u64,
    max: Duration,
    remind_before: Option<Duration>,
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
    let reminder = ReminderTimer::<T>::new("$4");
    let timer = remind_before.map(|_| reminder.sql());
    let sql = outbox::with_outbox(T::KIND, &update, T::KIND.extended_event(), timer, "*");
    let mut conn = pool.acquire().await?;
    let mut query = sqlx::query_as::<_, T>(AssertSqlSafe(sql))
        .bind(id)
        .bind(seconds as i64)
        .bind(max.as_millis() as i64);
    if let Some(before) = remind_before {
        query = query.bind(before.as_millis() as i64);
    }
    let changed = query.fetch_optional(&mut *conn).await?;
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

/// The reminder timer an extension writes (SQL over the extended row, `changed`): due
/// at the new deadline less REMIND_BEFORE (the parameter `param`, milliseconds), only
/// when that reminder is owed and still ahead. Its bucket is no cache bucket, so it goes
/// through the delay levels.
struct ReminderTimer<T> {
    bucket: String,
    due: String,
    only_if: String,
    kind: std::marker::PhantomData<T>,
}

impl<T: Entity> ReminderTimer<T> {
    fn new(param: &str) -> Self {
        let moment = format!("changed.expires_at - {param}::bigint * interval '1 millisecond'");
        Self {
            bucket: format!("'{}.reminder'", T::KIND.as_str()),
            only_if: format!("{} and {moment} > now()", reminder_owed(param)),
            due: moment,
            kind: std::marker::PhantomData,
        }
    }

    fn sql(&self) -> outbox::TimerSql<'_> {
        outbox::TimerSql {
            bucket: &self.bucket,
            due: &self.due,
            only_if: Some(&self.only_if),
        }
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
    limits: BulkLimits,
) -> Result<BulkOutcome, StoreError> {
    match request.kind {
        EntityKind::Order => bulk_extend_of::<Order>(pool, request, limits).await,
        EntityKind::Waybill => bulk_extend_of::<Waybill>(pool, request, limits).await,
    }
}

/// The settings a bulk extension runs with.
#[derive(Debug, Clone, Copy)]
pub struct BulkLimits {
    /// MAX_TIMEOUT: no new deadline further than this from now.
    pub max: Duration,
    /// Rows per statement.
    pub batch: i64,
    /// The kind's REMIND_BEFORE: each extension arms its reminder's timer (see
    /// [`extend`]).
    pub remind_before: Option<Duration>,
}

async fn bulk_extend_of<T: Entity>(
    pool: &PgPool,
    request: &BulkExtension,
    limits: BulkLimits,
) -> Result<BulkOutcome, StoreError> {
    let BulkLimits {
        max,
        batch,
        remind_before,
    } = limits;
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
    let reminder = ReminderTimer::<T>::new("$7");
    let timer = remind_before.map(|_| reminder.sql());
    let sql = outbox::with_outbox(T::KIND, &update, T::KIND.extended_event(), timer, "id");
    // Pages by id until a batch comes back empty: every row is visited once, and an
    // extended row is not extended again even if its new deadline still matches.
    let mut after = Uuid::nil();
    loop {
        let mut tx = pool.begin().await?;
        // The history trigger records these as bulk extensions.
        sqlx::query("select set_config('order_timeout.deadline_source', 'bulk', true)")
            .execute(&mut *tx)
            .await?;
        let mut query = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
            .bind(owner.as_deref())
            .bind(request.expires_before)
            .bind(request.seconds as i64)
            .bind(max.as_millis() as i64)
            .bind(after)
            .bind(batch);
        if let Some(before) = remind_before {
            query = query.bind(before.as_millis() as i64);
        }
        let ids: Vec<Uuid> = query.fetch_all(&mut *tx).await?;
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

/// SQL over `{table}` rows: a reminder is owed for the current deadline. It is owed when
/// none was sent for this deadline yet and its moment (`$R` before the deadline) had not
/// passed when the deadline was set (at creation, or by the last extension). `$R` is the
/// remind-before in milliseconds, written as `{before}`.
fn reminder_owed(before: &str) -> String {
    format!(
        "reminded_for is distinct from expires_at
         and expires_at - {before}::bigint * interval '1 millisecond'
             >= coalesce(extended_at, created_at)"
    )
}

/// Writes the `*.expiring` reminder of every listed pending entity whose reminder moment
/// has come (and whose deadline has not), once per deadline: the UPDATE of
/// `reminded_for` is the dedupe, so duplicate or re-armed timers are harmless. Returns
/// the ids reminded now. Shaped for the planner like the cancel ([`super::expiry`]): the
/// listed rows are found by primary key only (the conditions inside `( … ) is true` keep
/// it off the pending-deadline index, which holds every entity settled since the last
/// vacuum), and through [`LISTED_IDS`], so one cached plan serves every batch.
pub async fn remind_due<T: Entity>(
    pool: &PgPool,
    ids: &[Uuid],
    before: Duration,
) -> Result<Vec<Uuid>, StoreError> {
    let update = format!(
        "update {table} set reminded_for = expires_at
         where id = any({LISTED_IDS})
           and (status = 'pending' and expires_at > now()
                and expires_at - $2::bigint * interval '1 millisecond' <= now()
                and {owed}) is true
         returning *",
        table = T::TABLE,
        owed = reminder_owed("$2")
    );
    let sql = outbox::with_outbox(T::KIND, &update, T::KIND.expiring_event(), None, "id");
    let reminded: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(ids)
        .bind(before.as_millis() as i64)
        .fetch_all(pool)
        .await?;
    if !reminded.is_empty() {
        outbox::written();
    }
    Ok(reminded)
}

/// SQL (over `{table}` rows, `$2` the remind-before in milliseconds or null) of the
/// next moment a pending entity's timer must come back: its reminder's moment while one
/// is owed and still ahead, else its deadline.
pub fn next_wake_sql() -> String {
    format!(
        "case when $2::bigint is not null and {owed}
                   and expires_at - $2::bigint * interval '1 millisecond' > now()
              then expires_at - $2::bigint * interval '1 millisecond'
              else expires_at end",
        owed = reminder_owed("$2")
    )
}
