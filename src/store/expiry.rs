//! Cancelling entities whose deadline passed: by id for the due-queue consumer, by
//! scanning for the sweeper. Both emit the `cancelled` event in the same statement.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use super::deadlines;
use super::entities::Entity;
use super::outbox;
use super::{LISTED_IDS, StoreError};
use crate::domain::{EntityKind, Order, Waybill};

/// The columns a cancelling statement returns: the id and how many milliseconds past its
/// deadline it was cancelled (database time on both sides).
const LATENESS: &str = "id, (extract(epoch from (cancelled_at - expires_at)) * 1000)::bigint";

/// Records each cancel's lateness in `order_timeout_cancel_lateness_seconds{kind, by}`,
/// `by` the timer or the sweeper: the figure the service promises (cancelled soon after
/// the deadline), measured where both times are known.
fn record_lateness(kind: EntityKind, by: &'static str, rows: &[(Uuid, i64)]) {
    let histogram = metrics::histogram!("order_timeout_cancel_lateness_seconds", "kind" => kind.as_str(), "by" => by);
    for (_, ms) in rows {
        histogram.record(*ms as f64 / 1000.0);
    }
}

/// What a due timer found when it tried to cancel its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Cancelled now, by this timer.
    Cancelled,
    /// Already paid, accepted or cancelled: nothing to do.
    AlreadyFinal,
    /// Still pending but its deadline (or its reminder) is this many milliseconds away:
    /// re-arm.
    NotYetDue(u64),
    /// Still pending; its `*.expiring` reminder was written now, and the next moment to
    /// look again (its deadline) is this many milliseconds away: re-arm.
    Reminded(u64),
    /// No such entity: the message is wrong.
    NotFound,
}

/// Cancels every listed entity of `kind` that is pending and due in database time, and
/// tells for each id what happened. One statement cancels and writes the `cancelled`
/// events; the ids it did not cancel are looked up afterwards (rarely: a paid order, an
/// early or a duplicate timer), which a concurrent change cannot make wrong: a row paid
/// meanwhile is settled, a row that fell due meanwhile is re-armed for a millisecond.
/// With `remind_before`, an early timer whose reminder moment has come writes the
/// reminder ([`deadlines::remind_due`]) and is re-armed for the next moment to look.
pub async fn cancel_if_due(
    pool: &PgPool,
    kind: EntityKind,
    ids: &[Uuid],
    remind_before: Option<Duration>,
) -> Result<HashMap<Uuid, Fate>, StoreError> {
    match kind {
        EntityKind::Order => cancel_if_due_of::<Order>(pool, ids, remind_before).await,
        EntityKind::Waybill => cancel_if_due_of::<Waybill>(pool, ids, remind_before).await,
    }
}

async fn cancel_if_due_of<T: Entity>(
    pool: &PgPool,
    ids: &[Uuid],
    remind_before: Option<Duration>,
) -> Result<HashMap<Uuid, Fate>, StoreError> {
    let cancelled: Vec<(Uuid, i64)> = sqlx::query_as(AssertSqlSafe(cancel_listed_sql::<T>()))
        .bind(ids)
        .bind(T::KIND.timeout_reason())
        .fetch_all(pool)
        .await?;
    if !cancelled.is_empty() {
        outbox::written();
    }
    record_lateness(T::KIND, "timer", &cancelled);
    let mut fates: HashMap<Uuid, Fate> = cancelled
        .into_iter()
        .map(|(id, _)| (id, Fate::Cancelled))
        .collect();
    let rest: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| !fates.contains_key(id))
        .collect();
    if !rest.is_empty() {
        let reminded = match remind_before {
            Some(before) => deadlines::remind_due::<T>(pool, &rest, before).await?,
            None => Vec::new(),
        };
        // The next moment to look again: the reminder's while one is owed and ahead,
        // else the deadline.
        let lookup = format!(
            "select id, status = 'pending',
                    greatest(1, ceil(extract(epoch from ({wake} - now())) * 1000))::bigint
             from {table} where id = any($1)",
            wake = deadlines::next_wake_sql(),
            table = T::TABLE
        );
        let found: Vec<(Uuid, bool, i64)> = sqlx::query_as(AssertSqlSafe(lookup))
            .bind(&rest)
            .bind(remind_before.map(|before| before.as_millis() as i64))
            .fetch_all(pool)
            .await?;
        for (id, pending, ms_left) in found {
            let fate = match (pending, reminded.contains(&id)) {
                (false, _) => Fate::AlreadyFinal,
                (true, true) => Fate::Reminded(ms_left as u64),
                (true, false) => Fate::NotYetDue(ms_left as u64),
            };
            fates.insert(id, fate);
        }
        for id in rest {
            fates.entry(id).or_insert(Fate::NotFound);
        }
    }
    Ok(fates)
}

/// The statement that cancels the listed entities (`$1`, with `$2` the reason) that are
/// pending and due, and writes their `cancelled` events.
///
/// Two things in it are there for the planner, each found in the bench at 1,000 orders/s:
/// - It finds the rows by primary key only: the pending-and-due test sits inside
///   `( … ) is true`, which no index can serve. Written plainly, that test matches the
///   partial index of pending deadlines (`*_pending_deadline`), and on a table without
///   statistics yet (a fresh deploy; every bench run) the planner chose a bitmap scan of
///   it for `expires_at <= now()`. That index holds an entry for every entity settled
///   since the last vacuum, and a bitmap scan reads them all every time: each cancel read
///   7,600 index entries on average to find its few rows.
/// - The ids come through [`LISTED_IDS`], so the planner cannot count them and a plan for
///   one id is no cheaper than the plan for any number: after its first five executions
///   on a connection, PostgreSQL keeps one generic plan. With `any($1)` every batch was
///   planned anew, inlining `order_json` and its four `api_time` calls each time: 0.25 ms
///   of planning for 0.1 ms of work.
fn cancel_listed_sql<T: Entity>() -> String {
    let update = format!(
        "update {table} set status = 'cancelled', cancelled_at = now(), cancel_reason = $2
         where id = any({LISTED_IDS})
           and (status = 'pending' and expires_at <= now()) is true
         returning *",
        table = T::TABLE
    );
    outbox::with_outbox(T::KIND, &update, T::KIND.cancelled_event(), None, LATENESS)
}

/// What one sweep batch cancelled.
#[derive(Debug, Default)]
pub struct Swept {
    /// The entities cancelled.
    pub ids: Vec<Uuid>,
    /// How many milliseconds past its deadline the latest of them was (database time).
    pub max_lateness_ms: i64,
}

/// Cancels up to `limit` pending entities of `kind` overdue by more than `grace`: the
/// backstop for timers the broker lost or delivers late.
pub async fn sweep_overdue(
    pool: &PgPool,
    kind: EntityKind,
    grace: Duration,
    limit: i64,
) -> Result<Swept, StoreError> {
    match kind {
        EntityKind::Order => sweep_overdue_of::<Order>(pool, grace, limit).await,
        EntityKind::Waybill => sweep_overdue_of::<Waybill>(pool, grace, limit).await,
    }
}

async fn sweep_overdue_of<T: Entity>(
    pool: &PgPool,
    grace: Duration,
    limit: i64,
) -> Result<Swept, StoreError> {
    // The batch is picked once, as an array (an InitPlan), then updated through the
    // primary key. Joined as a subquery in `UPDATE … FROM`, the pick is hashed against
    // a sequential scan of the whole table (every pending and settled row, per batch),
    // and PostgreSQL may run a LIMIT … SKIP LOCKED subquery of an `UPDATE … FROM` again
    // (a recheck after a concurrent update), picking rows beyond the batch.
    let update = format!(
        "update {table} set status = 'cancelled', cancelled_at = now(), cancel_reason = $2
         where id = any(array(
                   select id from {table}
                   where status = 'pending'
                     and expires_at < now() - $1::bigint * interval '1 millisecond'
                   order by expires_at limit $3 for update skip locked))
           and status = 'pending'
         returning *",
        table = T::TABLE
    );
    let sql = outbox::with_outbox(T::KIND, &update, T::KIND.cancelled_event(), None, LATENESS);
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(grace.as_millis() as i64)
        .bind(T::KIND.timeout_reason())
        .bind(limit)
        .fetch_all(pool)
        .await?;
    if !rows.is_empty() {
        outbox::written();
    }
    record_lateness(T::KIND, "sweeper", &rows);
    Ok(Swept {
        max_lateness_ms: rows.iter().map(|(_, ms)| *ms).max().unwrap_or(0),
        ids: rows.into_iter().map(|(id, _)| id).collect(),
    })
}

#[cfg(test)]
mod tests {
    //! The sweep's batch: its limit and its order, alone and beside another sweeper.
    //! Needs the local PostgreSQL; uses a scratch database.

    use std::collections::HashSet;
    use std::time::Duration;

    use sqlx::postgres::PgPoolOptions;
    use sqlx::{AssertSqlSafe, PgPool};
    use uuid::Uuid;

    use super::{Fate, cancel_if_due, cancel_listed_sql, sweep_overdue};
    use crate::domain::{EntityKind, Order};
    use crate::store::testdb::{drop_scratch, scratch};

    /// `count` pending orders, the first the most overdue (one second apart); their ids
    /// in that order.
    async fn overdue_orders(pool: &PgPool, count: i64) -> Vec<Uuid> {
        sqlx::query_scalar(
            "insert into orders (id, customer_id, amount_cents, currency, expires_at)
             select gen_random_uuid(), 'c-1', 100, 'EUR', now() - (1000 - n) * interval '1 second'
             from generate_series(1, $1) n
             returning id",
        )
        .bind(count)
        .fetch_all(pool)
        .await
        .expect("overdue orders")
    }

    /// The orders table of a fresh deploy after a while: never analysed, and thousands of
    /// settled orders whose entries the pending-deadline index still holds (no vacuum has
    /// run yet).
    async fn settled_orders_not_yet_vacuumed(pool: &PgPool) {
        overdue_orders(pool, 5000).await;
        sqlx::query("update orders set status = 'cancelled', cancelled_at = now()")
            .execute(pool)
            .await
            .expect("settle them");
    }

    #[tokio::test]
    async fn a_cancel_finds_its_listed_rows_by_primary_key_on_a_table_without_statistics() {
        let (pool, name) = scratch().await;
        settled_orders_not_yet_vacuumed(&pool).await;
        let listed = overdue_orders(&pool, 10).await;
        let analysed: Option<i64> = sqlx::query_scalar(
            "select analyze_count + autoanalyze_count from pg_stat_user_tables
             where relname = 'orders'",
        )
        .fetch_optional(&pool)
        .await
        .expect("statistics");
        assert_eq!(
            analysed.unwrap_or(0),
            0,
            "the table must have no statistics yet"
        );
        let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "explain {}",
            cancel_listed_sql::<Order>()
        )))
        .bind(&listed)
        .bind("payment_timeout")
        .fetch_all(&pool)
        .await
        .expect("plan");
        let plan = plan.join("\n");
        assert!(
            plan.contains("orders_pkey") && !plan.contains("orders_pending_deadline"),
            "the cancel must read the listed rows by primary key, not the deadline index:\n{plan}"
        );
        drop_scratch(pool, &name).await;
    }

    /// One connection, so every cancel runs on it and its prepared statement's counters
    /// (`pg_prepared_statements`) tell how each execution was planned.
    #[tokio::test]
    async fn batches_of_one_reuse_one_cached_plan_instead_of_planning_each_cancel() {
        let (pool, name) = scratch().await;
        let one = PgPoolOptions::new()
            .max_connections(1)
            .connect_with((*pool.connect_options()).clone())
            .await
            .expect("one connection");
        settled_orders_not_yet_vacuumed(&one).await;
        let ids = overdue_orders(&one, 12).await;
        for id in &ids {
            let fates = cancel_if_due(&one, EntityKind::Order, &[*id], None)
                .await
                .expect("cancel");
            assert_eq!(fates.get(id), Some(&Fate::Cancelled));
        }
        let (generic, custom): (i64, i64) = sqlx::query_as(
            "select generic_plans, custom_plans from pg_prepared_statements
             where statement like 'with changed as (update orders set status = ''cancelled''%'",
        )
        .fetch_one(&one)
        .await
        .expect("the cancel's prepared statement");
        assert!(
            generic >= 6,
            "12 cancels of one id each: {generic} ran a cached generic plan, {custom} were planned anew"
        );
        one.close().await;
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn a_sweep_batch_cancels_exactly_its_limit_most_overdue_first() {
        let (pool, name) = scratch().await;
        let ids = overdue_orders(&pool, 25).await;
        let grace = Duration::from_millis(1);
        for batch in ids.chunks(10) {
            let swept = sweep_overdue(&pool, EntityKind::Order, grace, 10)
                .await
                .expect("sweep");
            let swept: HashSet<Uuid> = swept.ids.into_iter().collect();
            assert_eq!(swept, batch.iter().copied().collect());
        }
        let left = sweep_overdue(&pool, EntityKind::Order, grace, 10)
            .await
            .expect("sweep");
        assert!(left.ids.is_empty(), "{left:?}");
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn two_sweepers_side_by_side_take_disjoint_batches_within_their_limit() {
        let (pool, name) = scratch().await;
        let ids = overdue_orders(&pool, 300).await;
        let grace = Duration::from_millis(1);
        let mut seen = HashSet::new();
        loop {
            let (first, second) = tokio::join!(
                sweep_overdue(&pool, EntityKind::Order, grace, 40),
                sweep_overdue(&pool, EntityKind::Order, grace, 40),
            );
            let (first, second) = (first.expect("sweep"), second.expect("sweep"));
            if first.ids.is_empty() && second.ids.is_empty() {
                break;
            }
            for swept in [first.ids, second.ids] {
                assert!(swept.len() <= 40, "a batch of {} rows", swept.len());
                for id in swept {
                    assert!(seen.insert(id), "{id} cancelled twice");
                }
            }
        }
        assert_eq!(seen, ids.into_iter().collect());
        drop_scratch(pool, &name).await;
    }
}
