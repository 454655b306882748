//! The transactional outbox: timers and events are written by the statement (or in the
//! transaction) that changes the entity, and published by the relay afterwards
//! (docs/architecture.md rule 3).
//!
//! One row per change (migrations/0004): a create's row carries both its timer and its
//! `created` event. Rows are never updated: the relay holding the lease reads them without
//! locks, publishes, and deletes them once the broker confirmed. Every store function that
//! writes the outbox calls [`written`], which wakes the relay of this process, so callers
//! never have to remember to.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use super::StoreError;
use crate::domain::EntityKind;

/// Counts commits that wrote the outbox in this process; relays watch it to wake up. One
/// per process: with several services in one process (tests) every relay is woken by
/// every write, which costs the others one empty read.
static WRITTEN: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Tells this process's relays that outbox rows committed; called by the store after
/// every commit that wrote the outbox.
pub fn written() {
    WRITTEN.send_modify(|count| *count = count.wrapping_add(1));
}

/// Follows [`written`]: `changed()` resolves once rows committed since the last look.
pub fn writes() -> watch::Receiver<u64> {
    WRITTEN.subscribe()
}

/// One domain event to write into the outbox.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// The event's routing key, e.g. `order.paid`.
    pub routing_key: &'static str,
    /// The entity concerned.
    pub entity_id: Uuid,
    /// The entity as the API shows it.
    pub payload: Value,
}

impl NewRow {
    /// A domain event carrying `entity` as the API shows it.
    pub fn event(routing_key: &'static str, id: Uuid, entity: &impl serde::Serialize) -> Self {
        Self {
            routing_key,
            entity_id: id,
            payload: serde_json::to_value(entity).unwrap_or(Value::Null),
        }
    }
}

/// Writes events in one statement, inside the caller's transaction. The caller calls
/// [`written`] after its commit.
pub async fn enqueue(tx: &mut PgConnection, rows: &[NewRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = rows.iter().map(|r| r.routing_key).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.entity_id).collect();
    let payloads: Vec<&Value> = rows.iter().map(|r| &r.payload).collect();
    sqlx::query(
        "insert into outbox (event_key, entity_id, payload)
         select * from unnest($1::text[], $2::uuid[], $3::jsonb[])",
    )
    .bind(&keys)
    .bind(&ids)
    .bind(&payloads)
    .execute(tx)
    .await?;
    Ok(())
}

/// The cache bucket of a timer whose deadline was set from `timeout`, e.g. `order.1800000`:
/// it names the cache queue the relay publishes the timer into.
pub fn timer_bucket(kind: EntityKind, timeout: Duration) -> String {
    format!("{}.{}", kind.as_str(), timeout.as_millis())
}

/// SQL computing the bucket of a timer due at `due` (an SQL expression) for a row just
/// inserted into `kind`'s table (in a statement built by [`with_outbox`], where the row is
/// `changed`): `kind.<ms from creation to due>`, the time the timer waits. An insert sets
/// `created_at` and `expires_at` from the same `now()`. Whether that bucket has a cache
/// queue is the relay's decision (`Topology::is_cache_bucket`); any other goes through
/// the delay levels.
pub fn inserted_timer_bucket(kind: EntityKind, due: &str) -> String {
    format!(
        "'{}.' || (extract(epoch from ({due} - changed.created_at)) * 1000)::bigint",
        kind.as_str()
    )
}

/// The timer a statement built by [`with_outbox`] writes with each changed row, as SQL
/// expressions over the row (`changed`).
#[derive(Debug, Clone, Copy)]
pub struct TimerSql<'a> {
    /// Its bucket (see [`inserted_timer_bucket`]); a bucket the topology declares no cache
    /// queue for goes through the delay levels.
    pub bucket: &'a str,
    /// When it is due, e.g. `changed.expires_at`.
    pub due: &'a str,
    /// Rows for which this does not hold get no timer (their outbox row carries only the
    /// event); all rows get one when `None`.
    pub only_if: Option<&'a str>,
}

/// The SQL of one statement that runs `change` (an `insert` or `update … returning *` on
/// `kind`'s table) and writes one outbox row for every row it returns: the `event` with
/// the entity as the API shows it (`order_json`/`waybill_json`, migrations/0003) and,
/// with `timer`, the entity's timer (published before the event). The statement returns
/// `select`, e.g. `*`, of the changed rows. The caller calls [`written`] once it
/// committed.
pub fn with_outbox(
    kind: EntityKind,
    change: &str,
    event: &'static str,
    timer: Option<TimerSql<'_>>,
    select: &str,
) -> String {
    let kind = kind.as_str();
    let (bucket, due, body) = match timer {
        Some(TimerSql {
            bucket,
            due,
            only_if,
        }) => {
            let when = only_if.unwrap_or("true");
            (
                format!("case when {when} then {bucket} end"),
                format!("case when {when} then {due} end"),
                format!(
                    "case when {when} then jsonb_build_object('kind', '{kind}', 'id', changed.id) end"
                ),
            )
        }
        None => ("null".to_owned(), "null".to_owned(), "null".to_owned()),
    };
    format!(
        "with changed as ({change}),
         written as (insert into outbox (entity_id, timer_bucket, due_at, timer_body, event_key, payload)
                     select changed.id, {bucket}, {due}, {body}, '{event}', {kind}_json(changed)
                     from changed)
         select {select} from changed"
    )
}

/// A row read by the relay, ready to publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    /// Row id, the publish order.
    pub id: i64,
    /// The entity concerned, for logs and message ids.
    pub entity_id: Uuid,
    /// The timer's cache bucket; null when the row carries no timer.
    pub timer_bucket: Option<String>,
    /// The timer message's body: the stored JSON as PostgreSQL renders it, published as
    /// it is (parsing and re-encoding it cost the relay more than anything else it does
    /// per row).
    pub timer_body: Option<String>,
    /// For a timer: microseconds until its deadline in database time as the row was
    /// produced, at least 0; [`Pending::ms_left_now`] is what is left when it is published.
    /// Microseconds, so the only rounding is the one RabbitMQ's whole-millisecond TTL needs
    /// (rounding to milliseconds here too made timers 0.5 ms later on average).
    pub us_left: Option<i64>,
    /// For a timer: its deadline, microseconds since the Unix epoch on the database's
    /// clock, published with it (`x-due-at-us`) so the due consumer can hold a timer that
    /// left its bucket ahead of the deadline (`TIMER_LEAD`) until then.
    pub due_at_us: Option<i64>,
    /// When the read returned, so the time spent between reading and publishing is taken
    /// off the timer's TTL instead of being added to the cancel's lateness.
    #[sqlx(skip)]
    pub read_at: Option<std::time::Instant>,
    /// The event's routing key; null when the row carries no event.
    pub event_key: Option<String>,
    /// The event's body, the stored JSON as text like `timer_body`.
    pub payload: Option<String>,
}

impl Pending {
    /// A timer row as `read` returns it, for the tests of what the relay does with one.
    #[cfg(test)]
    pub(crate) fn test_timer(
        bucket: &str,
        us_left: Option<i64>,
        due_at_us: Option<i64>,
        read_at: Option<std::time::Instant>,
    ) -> Self {
        Self {
            id: 1,
            entity_id: Uuid::nil(),
            timer_bucket: Some(bucket.into()),
            timer_body: Some("{}".into()),
            us_left,
            due_at_us,
            read_at,
            event_key: None,
            payload: None,
        }
    }

    /// For a timer: milliseconds until its deadline now, at least 0. Never shorter than
    /// the truth (the time elapsed since the read returned is taken off, the time between
    /// producing the row and the read returning is not, and the rest is rounded up), so a
    /// timer is never early.
    pub fn ms_left_now(&self) -> Option<i64> {
        let elapsed = self.read_at.map_or(0, |at| {
            i64::try_from(at.elapsed().as_micros()).unwrap_or(i64::MAX)
        });
        self.us_left
            .map(|us| us.saturating_sub(elapsed).max(0).saturating_add(999) / 1000)
    }
}

/// Which outbox rows a relay publishes: those of the partitions whose leases it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The partition count all relays split the entities into (OUTBOX_PARTITIONS).
    pub partitions: u16,
    /// The partitions held, in order.
    pub held: Vec<i32>,
}

impl Share {
    /// True when the relay holds every partition: its reads need no filter.
    fn is_everything(&self) -> bool {
        self.held.len() >= usize::from(self.partitions)
    }
}

/// Reads up to `limit` rows of `share` with an id above `after`, in id order, without
/// locking them. The relay pages through the outbox this way, so rows it cannot publish
/// never hide the rows behind them. Each timer's time left is taken on the clock as its row is
/// produced (`clock_timestamp()`, not the statement's start), so a slow read does not
/// make timers late.
pub async fn read(
    pool: &PgPool,
    share: &Share,
    limit: i64,
    after: i64,
) -> Result<Vec<Pending>, StoreError> {
    let held = (!share.is_everything()).then_some(&share.held);
    let mut rows = sqlx::query_as::<_, Pending>(
        "select id, entity_id, timer_bucket, timer_body::text, event_key, payload::text,
                greatest(0, ceil(extract(epoch from (due_at - clock_timestamp())) * 1000000))::bigint
                    as us_left,
                ceil(extract(epoch from due_at) * 1000000)::bigint as due_at_us
         from outbox
         where id > $2 and ($3::integer[] is null or outbox_partition(entity_id, $4) = any($3))
         order by id limit $1",
    )
    .bind(limit)
    .bind(after)
    .bind(held)
    .bind(i32::from(share.partitions))
    .fetch_all(pool)
    .await?;
    let read_at = std::time::Instant::now();
    for row in &mut rows {
        row.read_at = Some(read_at);
    }
    Ok(rows)
}

/// Deletes rows the broker confirmed, in one statement.
pub async fn delete(pool: &PgPool, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("delete from outbox where id = any($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Vacuums the outbox and its leases: all are rewritten all the time (a row per change,
/// deleted once published; the leases and the relays' heartbeats renewed every second) and must not depend on
/// autovacuum to stay small. Skips a table another vacuum holds; a role that does not
/// own the tables gets a warning from PostgreSQL, not an error.
pub async fn vacuum(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("vacuum (skip_locked) outbox, outbox_lease, outbox_relays")
        .execute(pool)
        .await?;
    Ok(())
}

/// Renews `holder`'s partition leases, gives up those above its fair share (the
/// partitions divided by the relays alive), takes free or expired ones up to it, and
/// returns the partitions it now holds, in order, each until `ttl` from now in database
/// time (migrations/0030). Empty while relays configured with another partition count
/// hold leases.
pub async fn balance_leases(
    pool: &PgPool,
    holder: Uuid,
    partitions: u16,
    ttl: Duration,
) -> Result<Vec<i32>, StoreError> {
    Ok(sqlx::query_scalar("select outbox_balance($1, $2, $3)")
        .bind(holder)
        .bind(i32::from(partitions))
        .bind(ttl.as_millis() as i64)
        .fetch_one(pool)
        .await?)
}

/// Gives every lease of `holder` up and forgets it among the relays alive (on shutdown),
/// so the others take its partitions over at once.
pub async fn release_leases(pool: &PgPool, holder: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "with relay as (delete from outbox_relays where holder = $1)
         delete from outbox_lease where holder = $1",
    )
    .bind(holder)
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows not published yet: the backlog shown in metrics and readiness.
pub async fn backlog(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    //! Events built in SQL (migrations/0003) must equal the entity as serde shows it;
    //! the relays' partition leases (migrations/0030) are shared fairly and taken over.
    //! Needs the local PostgreSQL, like the integration tests; uses a scratch database.

    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    use serde_json::{Value, json};
    use sqlx::PgPool;
    use uuid::Uuid;

    use crate::domain::{EntityKind, NewOrder, NewWaybill, Order, Waybill};
    use crate::store::deadlines::FirstTimer;
    use crate::store::entities::{self, Entity};
    use crate::store::expiry;
    use crate::store::idempotency::IdempotencyKey;
    use crate::store::testdb::{drop_scratch, scratch};

    fn pending(us_left: Option<i64>, read_ago: Duration) -> super::Pending {
        let read_at = std::time::Instant::now().checked_sub(read_ago);
        super::Pending::test_timer("order.2000", us_left, None, read_at)
    }

    #[test]
    fn the_time_spent_since_the_read_is_taken_off_a_timers_ttl_but_never_below_zero() {
        let left = pending(Some(2_000_000), Duration::from_millis(30)).ms_left_now();
        assert!(
            left.is_some_and(|ms| (1900..=1970).contains(&ms)),
            "{left:?}"
        );
        assert_eq!(
            pending(Some(20_000), Duration::from_millis(50)).ms_left_now(),
            Some(0)
        );
        // A part of a millisecond left counts as a whole one: rounded up, never early.
        let one_microsecond = super::Pending {
            read_at: None,
            ..pending(Some(1), Duration::ZERO)
        };
        assert_eq!(one_microsecond.ms_left_now(), Some(1));
        assert_eq!(pending(None, Duration::ZERO).ms_left_now(), None);
    }

    #[tokio::test]
    async fn the_relay_reads_stored_json_as_text_that_parses_to_the_same_document() {
        let (pool, name) = scratch().await;
        let id = Uuid::now_v7();
        let body = json!({"kind": "order", "id": id, "note": "ä \"quoted\""});
        sqlx::query(
            "insert into outbox (entity_id, timer_bucket, due_at, timer_body, event_key, payload)
             values ($1, 'order.2000', now() + interval '2 seconds', $2, 'order.created', $2)",
        )
        .bind(id)
        .bind(&body)
        .execute(&pool)
        .await
        .unwrap();
        let everything = super::Share {
            partitions: 1,
            held: vec![0],
        };
        let rows = super::read(&pool, &everything, 10, 0).await.unwrap();
        let row = rows.iter().find(|row| row.entity_id == id).unwrap();
        for text in [&row.timer_body, &row.payload] {
            let parsed: Value = serde_json::from_str(text.as_deref().unwrap()).unwrap();
            assert_eq!(parsed, body);
        }
        assert!(
            row.us_left
                .is_some_and(|us| (1_000_000..=2_000_000).contains(&us)),
            "{:?}",
            row.us_left
        );
        let due_at_us: i64 = sqlx::query_scalar(
            "select (extract(epoch from due_at) * 1000000)::bigint from outbox where entity_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            row.due_at_us,
            Some(due_at_us),
            "the deadline to the microsecond"
        );
        drop_scratch(pool, &name).await;
    }

    const TTL: Duration = Duration::from_secs(5);

    async fn balance(pool: &PgPool, holder: Uuid, partitions: u16, ttl: Duration) -> Vec<i32> {
        super::balance_leases(pool, holder, partitions, ttl)
            .await
            .expect("balance")
    }

    #[tokio::test]
    async fn a_lone_relay_holds_every_partition_and_a_second_one_gets_half_at_its_next_renewal() {
        let (pool, name) = scratch().await;
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(balance(&pool, first, 4, TTL).await, [0, 1, 2, 3]);
        // Every partition is held: the newcomer waits, but counts as alive.
        assert!(balance(&pool, second, 4, TTL).await.is_empty());
        assert_eq!(
            balance(&pool, first, 4, TTL).await,
            [0, 1],
            "above its fair share, the first gives partitions up"
        );
        assert_eq!(balance(&pool, second, 4, TTL).await, [2, 3]);
        assert_eq!(
            balance(&pool, first, 4, TTL).await,
            [0, 1],
            "a steady split"
        );
        let holders: i64 = sqlx::query_scalar(
            "select count(distinct holder) from outbox_lease where expires_at > now()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(holders, 2);
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn the_partitions_of_a_relay_that_stops_renewing_are_taken_over_once_its_leases_expired()
    {
        let (pool, name) = scratch().await;
        let (stopped, survivor) = (Uuid::now_v7(), Uuid::now_v7());
        let short = Duration::from_millis(400);
        assert_eq!(balance(&pool, stopped, 4, short).await, [0, 1, 2, 3]);
        assert!(
            balance(&pool, survivor, 4, TTL).await.is_empty(),
            "live leases are never taken"
        );
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        assert_eq!(balance(&pool, survivor, 4, TTL).await, [0, 1, 2, 3]);
        assert!(
            balance(&pool, stopped, 4, TTL).await.is_empty(),
            "the stopped relay, back, finds its partitions held"
        );
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn relays_with_another_partition_count_take_nothing_while_leases_of_the_first_are_live() {
        let (pool, name) = scratch().await;
        let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(balance(&pool, old, 1, TTL).await, [0]);
        assert!(balance(&pool, new, 4, TTL).await.is_empty());
        assert_eq!(
            balance(&pool, old, 1, TTL).await,
            [0],
            "the first keeps its lease"
        );
        super::release_leases(&pool, old).await.expect("release");
        assert_eq!(balance(&pool, new, 4, TTL).await, [0, 1, 2, 3]);
        assert!(
            balance(&pool, old, 1, TTL).await.is_empty(),
            "and now the other way round"
        );
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn each_entity_is_in_exactly_one_partition_and_the_partitions_together_are_the_outbox() {
        let (pool, name) = scratch().await;
        let entities: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
        for entity in entities.iter().chain(&entities) {
            sqlx::query(
                "insert into outbox (entity_id, event_key, payload)
                 values ($1, 'order.created', '{}')",
            )
            .bind(entity)
            .execute(&pool)
            .await
            .unwrap();
        }
        let share = |held: Vec<i32>| super::Share {
            partitions: 4,
            held,
        };
        let mut seen: HashMap<Uuid, usize> = HashMap::new();
        let mut total = 0;
        for partition in 0..4 {
            let rows = super::read(&pool, &share(vec![partition]), 1000, 0)
                .await
                .unwrap();
            total += rows.len();
            let mine: HashSet<Uuid> = rows.iter().map(|row| row.entity_id).collect();
            for entity in mine {
                *seen.entry(entity).or_default() += 1;
            }
        }
        assert_eq!(total, 128, "every row is in some partition");
        assert_eq!(seen.len(), 64);
        assert!(
            seen.values().all(|partitions| *partitions == 1),
            "an entity's rows are all in one partition: {seen:?}"
        );
        let pair = super::read(&pool, &share(vec![1, 3]), 1000, 0)
            .await
            .unwrap();
        let everything = super::read(&pool, &share(vec![0, 1, 2, 3]), 1000, 0)
            .await
            .unwrap();
        assert!(pair.len() < 128 && !pair.is_empty(), "{}", pair.len());
        assert_eq!(everything.len(), 128);
        drop_scratch(pool, &name).await;
    }

    async fn event(pool: &PgPool, key: &str, id: Uuid) -> Value {
        sqlx::query_scalar("select payload from outbox where event_key = $1 and entity_id = $2")
            .bind(key)
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("event row")
    }

    #[tokio::test]
    async fn created_timed_out_and_swept_events_are_the_entities_as_the_api_shows_them() {
        let (pool, name) = scratch().await;
        let timeout = FirstTimer::plan(Duration::from_millis(1), None);
        let with_items = json!({"customer_id": "c-1", "amount_cents": 2500, "currency": "EUR",
            "items": [{"sku": "book", "quantity": 2, "unit_price_cents": 1250}]});
        let order = NewOrder::parse(&with_items).unwrap();
        let keyed = IdempotencyKey::new("orders", "k".into(), b"body");
        let first: Order = entities::create(&pool, order.clone(), timeout, Some(keyed.clone()))
            .await
            .unwrap()
            .entity;
        let bare =
            NewOrder::parse(&json!({"customer_id": "c-2", "amount_cents": 1, "currency": "USD"}))
                .unwrap();
        let second: Order = entities::create(&pool, bare.clone(), timeout, None)
            .await
            .unwrap()
            .entity;
        let new_waybill =
            NewWaybill::parse(&json!({"origin": "Berlin", "destination": "Paris"})).unwrap();
        let waybill: Waybill = entities::create(&pool, new_waybill.clone(), timeout, None)
            .await
            .unwrap()
            .entity;
        for order in [&first, &second] {
            assert_eq!(
                event(&pool, "order.created", order.id).await,
                serde_json::to_value(order).unwrap()
            );
        }
        assert_eq!(
            event(&pool, "waybill.created", waybill.id).await,
            serde_json::to_value(&waybill).unwrap()
        );
        let timers: Vec<(String, Value)> = sqlx::query_as(
            "select timer_bucket, timer_body from outbox where timer_bucket is not null order by id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            timers[0],
            (
                "order.1".to_owned(),
                json!({"kind": "order", "id": first.id})
            )
        );
        assert_eq!(
            timers[2],
            (
                "waybill.1".to_owned(),
                json!({"kind": "waybill", "id": waybill.id})
            )
        );

        tokio::time::sleep(Duration::from_millis(20)).await;
        expiry::cancel_if_due(&pool, EntityKind::Order, &[first.id, second.id], None)
            .await
            .unwrap();
        expiry::cancel_if_due(&pool, EntityKind::Waybill, &[waybill.id], None)
            .await
            .unwrap();
        for id in [first.id, second.id] {
            let cancelled: Order = entities::get(&pool, id).await.unwrap().unwrap();
            assert_eq!(
                event(&pool, "order.cancelled", cancelled.id()).await,
                serde_json::to_value(&cancelled).unwrap()
            );
        }
        let cancelled: Waybill = entities::get(&pool, waybill.id).await.unwrap().unwrap();
        assert_eq!(
            event(&pool, "waybill.cancelled", waybill.id).await,
            serde_json::to_value(&cancelled).unwrap()
        );

        let overdue: Order = entities::create(&pool, bare.clone(), timeout, None)
            .await
            .unwrap()
            .entity;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let swept = expiry::sweep_overdue(&pool, EntityKind::Order, Duration::from_millis(1), 10)
            .await
            .unwrap();
        assert_eq!(swept.ids, [overdue.id]);
        assert!(swept.max_lateness_ms >= 1, "{swept:?}");
        let swept: Order = entities::get(&pool, overdue.id).await.unwrap().unwrap();
        assert_eq!(
            event(&pool, "order.cancelled", overdue.id).await,
            serde_json::to_value(&swept).unwrap()
        );
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn timestamps_are_written_as_chrono_writes_them() {
        let (pool, name) = scratch().await;
        for text in [
            "2026-11-25T01:02:03Z",
            "2026-11-25T01:02:03.500Z",
            "2026-11-25T01:02:03.000123Z",
            "2026-11-25T01:02:03.120450Z",
        ] {
            let time: chrono::DateTime<chrono::Utc> = text.parse().unwrap();
            let written: String = sqlx::query_scalar("select api_time($1)")
                .bind(time)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(Value::String(written), serde_json::to_value(time).unwrap());
        }
        drop_scratch(pool, &name).await;
    }
}
