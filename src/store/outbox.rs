//! The transactional outbox: timers and events are written by the statement (or in the
//! transaction) that changes the entity, and published by the relay afterwards
//! (docs/architecture.md rule 3).

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;
use crate::domain::EntityKind;

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

/// Writes events in one statement, inside the caller's transaction.
pub async fn enqueue(tx: &mut PgConnection, rows: &[NewRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = rows.iter().map(|r| r.routing_key).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.entity_id).collect();
    let payloads: Vec<&Value> = rows.iter().map(|r| &r.payload).collect();
    sqlx::query(
        "insert into outbox (topic, routing_key, entity_id, payload)
         select 'event', * from unnest($1::text[], $2::uuid[], $3::jsonb[])",
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

/// The SQL of one statement that runs `change` (an `insert` or `update … returning *` on
/// `kind`'s table) and writes to the outbox, for every row it returns, the `event` with
/// the entity as the API shows it (`order_json`/`waybill_json`, migrations/0003) and,
/// when `timer_bucket_param` names the parameter holding the bucket, the entity's timer
/// (before its event). The statement returns `select`, e.g. `*`, of the changed rows.
/// One statement is one round trip and its own transaction.
pub fn with_outbox(
    kind: EntityKind,
    change: &str,
    event: &'static str,
    timer_bucket_param: Option<usize>,
    select: &str,
) -> String {
    let kind = kind.as_str();
    let timer = match timer_bucket_param {
        Some(param) => format!(
            "select 'timer', ${param}, changed.id, jsonb_build_object('kind', '{kind}', 'id', changed.id), changed.expires_at
             from changed union all "
        ),
        None => String::new(),
    };
    format!(
        "with changed as ({change}),
         written as (insert into outbox (topic, routing_key, entity_id, payload, due_at)
                     {timer}select 'event', '{event}', changed.id, {kind}_json(changed), null from changed)
         select {select} from changed"
    )
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
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<Pending>, StoreError> {
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
pub async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<(), StoreError> {
    sqlx::query("update outbox set published_at = now() where id = any($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Rows not published yet: the backlog shown in metrics and readiness.
pub async fn backlog(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(pool)
            .await?,
    )
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

#[cfg(test)]
mod tests {
    //! Events built in SQL (migrations/0003) must equal the entity as serde shows it.
    //! Needs the local PostgreSQL, like the integration tests; uses a scratch database.

    use std::time::Duration;

    use serde_json::{Value, json};
    use sqlx::PgPool;
    use uuid::Uuid;

    use crate::domain::{EntityKind, NewOrder, NewWaybill, Order, Waybill};
    use crate::store::entities::{self, Entity};
    use crate::store::idempotency::IdempotencyKey;
    use crate::store::{self, PoolSettings, expiry};

    const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

    async fn scratch() -> (PgPool, String) {
        let name = format!(
            "ot_outbox_test_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let settings = PoolSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            session: store::SessionSettings::default(),
        };
        let pool = store::connect(&format!("{SERVER}/{name}"), settings)
            .await
            .expect("local PostgreSQL");
        store::migrate(&pool).await.expect("migrations");
        (pool, name)
    }

    async fn drop_scratch(pool: PgPool, name: &str) {
        pool.close().await;
        let admin = PgPool::connect(&format!("{SERVER}/postgres"))
            .await
            .expect("admin connection");
        let sql = format!("drop database if exists \"{name}\" with (force)");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("drop");
    }

    async fn event(pool: &PgPool, key: &str, id: Uuid) -> Value {
        sqlx::query_scalar("select payload from outbox where routing_key = $1 and entity_id = $2")
            .bind(key)
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("event row")
    }

    #[tokio::test]
    async fn created_timed_out_and_swept_events_are_the_entities_as_the_api_shows_them() {
        let (pool, name) = scratch().await;
        let timeout = Duration::from_millis(1);
        let with_items = json!({"customer_id": "c-1", "amount_cents": 2500, "currency": "EUR",
            "items": [{"sku": "book", "quantity": 2, "unit_price_cents": 1250}]});
        let order = NewOrder::parse(&with_items).unwrap();
        let keyed = IdempotencyKey::new("orders", "k".into(), b"body");
        let first: Order = entities::create(&pool, &order, timeout, Some(&keyed))
            .await
            .unwrap()
            .entity;
        let bare =
            NewOrder::parse(&json!({"customer_id": "c-2", "amount_cents": 1, "currency": "USD"}))
                .unwrap();
        let second: Order = entities::create(&pool, &bare, timeout, None)
            .await
            .unwrap()
            .entity;
        let new_waybill =
            NewWaybill::parse(&json!({"origin": "Berlin", "destination": "Paris"})).unwrap();
        let waybill: Waybill = entities::create(&pool, &new_waybill, timeout, None)
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
            "select routing_key, payload from outbox where topic = 'timer' order by id",
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
        expiry::cancel_if_due(&pool, EntityKind::Order, &[first.id, second.id])
            .await
            .unwrap();
        expiry::cancel_if_due(&pool, EntityKind::Waybill, &[waybill.id])
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

        let overdue: Order = entities::create(&pool, &bare, timeout, None)
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
