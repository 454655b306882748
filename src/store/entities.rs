//! Queries shared by orders and waybills: create with timer and event, read, list,
//! and conditional state transitions that emit their event in the same transaction.

use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Connection, FromRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::StoreError;
use super::deadlines::FirstTimer;
use super::idempotency::{self, Claim, IdempotencyKey};
use super::outbox::{self, NewRow, TimerSql};
use crate::domain::{EntityKind, NewOrder, NewWaybill, Order, Waybill};

/// A stored entity with a deadline: what the generic queries need to know about it.
pub trait Entity:
    for<'r> FromRow<'r, PgRow> + Serialize + Clone + Send + Sync + Unpin + 'static
{
    /// Which kind it is; names its table and its events.
    const KIND: EntityKind;
    /// The table holding it.
    const TABLE: &'static str;
    /// The column listings filter on besides status, and its SQL type.
    const OWNER_FILTER: (&'static str, &'static str);
    /// Its id.
    fn id(&self) -> Uuid;
    /// Its deadline.
    fn expires_at(&self) -> DateTime<Utc>;
}

impl Entity for Order {
    const KIND: EntityKind = EntityKind::Order;
    const TABLE: &'static str = "orders";
    const OWNER_FILTER: (&'static str, &'static str) = ("customer_id", "text");
    fn id(&self) -> Uuid {
        self.id
    }
    fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }
}

impl Entity for Waybill {
    const KIND: EntityKind = EntityKind::Waybill;
    const TABLE: &'static str = "waybills";
    const OWNER_FILTER: (&'static str, &'static str) = ("order_id", "uuid");
    fn id(&self) -> Uuid {
        self.id
    }
    fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }
}

/// A validated create request that knows how to insert rows of its kind.
pub trait NewEntity: Clone + Send + Sync + 'static {
    /// What the insert produces.
    type Entity: Entity;
    /// Inserts one row per `(id, request, first timer)`, pending, each deadline its
    /// timeout after the database's now, with one outbox row each carrying its first
    /// timer and its `created` event: one statement however many rows (group commit).
    /// Returns the rows in no particular order.
    fn insert_many<'c>(
        conn: &'c mut PgConnection,
        rows: &'c [(Uuid, &'c Self, FirstTimer)],
    ) -> impl Future<Output = Result<Vec<Self::Entity>, StoreError>> + Send + 'c;
}

/// The timeouts of the rows, in milliseconds.
fn millis(rows: &[(Uuid, &impl NewEntity, FirstTimer)]) -> Vec<i64> {
    rows.iter()
        .map(|(_, _, t)| t.timeout.as_millis() as i64)
        .collect()
}

/// How long before its deadline each row's first timer is due, in milliseconds.
fn before_deadline(rows: &[(Uuid, &impl NewEntity, FirstTimer)]) -> Vec<i64> {
    rows.iter()
        .map(|(_, _, t)| t.before_deadline.as_millis() as i64)
        .collect()
}

/// The first timer of an inserted row whose ids are `$1` and whose before-deadline
/// milliseconds are the array parameter `before` (SQL over `changed`).
fn first_timer_sql(kind: EntityKind, before: &str) -> (String, String) {
    let due = format!(
        "changed.expires_at - ({before}::bigint[])[array_position($1::uuid[], changed.id)]
                              * interval '1 millisecond'"
    );
    (outbox::inserted_timer_bucket(kind, &due), due)
}

impl NewEntity for NewOrder {
    type Entity = Order;
    async fn insert_many(
        conn: &mut PgConnection,
        rows: &[(Uuid, &Self, FirstTimer)],
    ) -> Result<Vec<Order>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            let (bucket, due) = first_timer_sql(EntityKind::Order, "$7");
            outbox::with_outbox(
                EntityKind::Order,
                "insert into orders (id, customer_id, amount_cents, currency, items, expires_at)
                 select id, customer_id, amount_cents, currency, items,
                        now() + ms * interval '1 millisecond'
                 from unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[], $6::bigint[])
                      as input(id, customer_id, amount_cents, currency, items, ms)
                 returning *",
                "order.created",
                Some(TimerSql {
                    bucket: &bucket,
                    due: &due,
                    only_if: None,
                }),
                "*",
            )
        });
        let ids: Vec<Uuid> = rows.iter().map(|(id, _, _)| *id).collect();
        let customers: Vec<&str> = rows
            .iter()
            .map(|(_, n, _)| n.customer_id.as_str())
            .collect();
        let amounts: Vec<i64> = rows
            .iter()
            .map(|(_, n, _)| n.amount_cents.cents())
            .collect();
        let currencies: Vec<&str> = rows.iter().map(|(_, n, _)| n.currency.as_str()).collect();
        let items: Vec<Option<serde_json::Value>> = rows
            .iter()
            .map(|(_, n, _)| {
                n.items
                    .as_ref()
                    .and_then(|items| serde_json::to_value(items.lines()).ok())
            })
            .collect();
        Ok(sqlx::query_as(AssertSqlSafe(SQL.as_str()))
            .bind(&ids)
            .bind(&customers)
            .bind(&amounts)
            .bind(&currencies)
            .bind(&items)
            .bind(millis(rows))
            .bind(before_deadline(rows))
            .fetch_all(conn)
            .await?)
    }
}

impl NewEntity for NewWaybill {
    type Entity = Waybill;
    async fn insert_many(
        conn: &mut PgConnection,
        rows: &[(Uuid, &Self, FirstTimer)],
    ) -> Result<Vec<Waybill>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            let (bucket, due) = first_timer_sql(EntityKind::Waybill, "$6");
            outbox::with_outbox(
                EntityKind::Waybill,
                "insert into waybills (id, order_id, origin, destination, expires_at)
                 select id, order_id, origin, destination, now() + ms * interval '1 millisecond'
                 from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[])
                      as input(id, order_id, origin, destination, ms)
                 returning *",
                "waybill.created",
                Some(TimerSql {
                    bucket: &bucket,
                    due: &due,
                    only_if: None,
                }),
                "*",
            )
        });
        let ids: Vec<Uuid> = rows.iter().map(|(id, _, _)| *id).collect();
        let orders: Vec<Option<Uuid>> = rows.iter().map(|(_, n, _)| n.order_id).collect();
        let origins: Vec<&str> = rows.iter().map(|(_, n, _)| n.origin.as_str()).collect();
        let destinations: Vec<&str> = rows
            .iter()
            .map(|(_, n, _)| n.destination.as_str())
            .collect();
        Ok(sqlx::query_as(AssertSqlSafe(SQL.as_str()))
            .bind(&ids)
            .bind(&orders)
            .bind(&origins)
            .bind(&destinations)
            .bind(millis(rows))
            .bind(before_deadline(rows))
            .fetch_all(conn)
            .await?)
    }
}

/// Why a create did not produce an entity.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The idempotency key was used before with another body.
    #[error("idempotency key reused with a different body")]
    KeyReused,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CreateError {
    fn from(error: sqlx::Error) -> Self {
        CreateError::Store(error.into())
    }
}

/// The entity a create returned, and whether it was made by an earlier request.
#[derive(Debug)]
pub struct Created<T> {
    /// The entity.
    pub entity: T,
    /// True when an idempotency key replayed an earlier create.
    pub replayed: bool,
}

/// One create request of a batch.
#[derive(Debug)]
pub struct CreateRequest<N> {
    /// The validated body.
    pub new: N,
    /// Its timeout (the deadline is this long after the database's now) and when its
    /// first timer is due.
    pub timer: FirstTimer,
    /// The client's idempotency key, if it sent one. No two requests of one batch may
    /// carry the same key (the batcher puts the second into the next batch).
    pub key: Option<IdempotencyKey>,
}

/// Creates one entity: a batch of one.
pub async fn create<N: NewEntity>(
    pool: &PgPool,
    new: N,
    timer: FirstTimer,
    key: Option<IdempotencyKey>,
) -> Result<Created<N::Entity>, CreateError> {
    let mut answers = create_batch(pool, &[CreateRequest { new, timer, key }]).await?;
    answers.pop().ok_or(CreateError::Store(StoreError::Other(
        sqlx::Error::RowNotFound,
    )))?
}

/// Creates the entities of a batch with their timers and `created` events in one
/// transaction (one statement when no request has an idempotency key), and answers each
/// request on its own, in order: its entity, its replay, or its key's reuse. An `Err` is
/// the database failing the whole batch; then nothing was written. The requests are
/// borrowed, so a caller can write them again one by one after a failed batch.
pub async fn create_batch<N: NewEntity>(
    pool: &PgPool,
    requests: &[CreateRequest<N>],
) -> Result<Vec<Result<Created<N::Entity>, CreateError>>, StoreError> {
    let ids: Vec<Uuid> = requests.iter().map(|_| Uuid::now_v7()).collect();
    let mut conn = pool.acquire().await?;
    let answers = if requests.iter().any(|r| r.key.is_some()) {
        // sqlx's transaction, not a bare `begin`: if this call is dropped midway (its
        // time limit), the rollback is queued and sent before the connection is used
        // again, so no later caller ever writes into a transaction left open.
        let mut tx = conn.begin().await?;
        let answers = write_batch(&mut tx, requests, &ids).await?;
        tx.commit().await?;
        answers
    } else {
        write_batch(&mut conn, requests, &ids).await?
    };
    if answers.iter().any(|a| matches!(a, Ok(c) if !c.replayed)) {
        outbox::written();
    }
    Ok(answers)
}

/// The statements of a batch: claim the keys, insert what is new, read what is replayed.
async fn write_batch<N: NewEntity>(
    conn: &mut PgConnection,
    requests: &[CreateRequest<N>],
    ids: &[Uuid],
) -> Result<Vec<Result<Created<N::Entity>, CreateError>>, StoreError> {
    let keys: Vec<(usize, &IdempotencyKey)> = requests
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.key.as_ref().map(|k| (i, k)))
        .collect();
    let claims = if keys.is_empty() {
        Vec::new()
    } else {
        let pairs: Vec<(&IdempotencyKey, Uuid)> = keys.iter().map(|(i, k)| (*k, ids[*i])).collect();
        idempotency::claim_many(conn, &pairs).await?
    };
    let mut claim_of: Vec<Claim> = vec![Claim::Fresh; requests.len()];
    for ((i, _), claim) in keys.iter().zip(claims) {
        claim_of[*i] = claim;
    }
    let fresh: Vec<(Uuid, &N, FirstTimer)> = requests
        .iter()
        .enumerate()
        .filter(|(i, _)| claim_of[*i] == Claim::Fresh)
        .map(|(i, r)| (ids[i], &r.new, r.timer))
        .collect();
    let mut made: HashMap<Uuid, N::Entity> = HashMap::new();
    if !fresh.is_empty() {
        for entity in N::insert_many(conn, &fresh).await? {
            made.insert(entity.id(), entity);
        }
    }
    let replayed: Vec<Uuid> = claim_of
        .iter()
        .filter_map(|c| match c {
            Claim::Replay(id) => Some(*id),
            _ => None,
        })
        .collect();
    let mut earlier: HashMap<Uuid, N::Entity> = HashMap::new();
    if !replayed.is_empty() {
        for entity in fetch_many::<N::Entity>(conn, &replayed).await? {
            earlier.insert(entity.id(), entity);
        }
    }
    let missing = || CreateError::Store(StoreError::Other(sqlx::Error::RowNotFound));
    let mut answers = Vec::with_capacity(requests.len());
    for (i, claim) in claim_of.iter().enumerate() {
        answers.push(
            match claim {
                Claim::Fresh => made.remove(&ids[i]).map(|entity| Created {
                    entity,
                    replayed: false,
                }),
                Claim::Replay(id) => earlier.get(id).cloned().map(|entity| Created {
                    entity,
                    replayed: true,
                }),
                Claim::Reused => {
                    answers.push(Err(CreateError::KeyReused));
                    continue;
                }
            }
            .ok_or_else(missing),
        );
    }
    Ok(answers)
}

/// Reads one entity.
pub async fn get<T: Entity>(pool: &PgPool, id: Uuid) -> Result<Option<T>, StoreError> {
    let mut conn = pool.acquire().await?;
    fetch(&mut conn, id).await
}

async fn fetch_many<T: Entity>(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<T>, StoreError> {
    let sql = format!("select * from {} where id = any($1)", T::TABLE);
    Ok(sqlx::query_as::<_, T>(AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(conn)
        .await?)
}

async fn fetch<T: Entity>(conn: &mut PgConnection, id: Uuid) -> Result<Option<T>, StoreError> {
    let sql = format!("select * from {} where id = $1", T::TABLE);
    Ok(sqlx::query_as::<_, T>(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// The filters of a listing; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<&'static str>,
    /// Only this owner (customer of an order, order of a waybill).
    pub owner: Option<Owner>,
    /// Only ids before this one: the cursor of the previous page.
    pub after: Option<Uuid>,
    /// Page size.
    pub limit: i64,
}

/// An owner filter already parsed as its column's type, so the database never parses
/// client text (PostgreSQL's uuid input accepts forms Rust's parser normalises, and a
/// text bound to a uuid column failed as a 500).
#[derive(Debug, Clone)]
pub enum Owner {
    /// A text owner (the customer of an order).
    Text(String),
    /// A uuid owner (the order of a waybill).
    Uuid(Uuid),
}

impl Owner {
    fn text(&self) -> Option<&str> {
        match self {
            Owner::Text(text) => Some(text),
            Owner::Uuid(_) => None,
        }
    }

    fn uuid(&self) -> Option<Uuid> {
        match self {
            Owner::Uuid(id) => Some(*id),
            Owner::Text(_) => None,
        }
    }
}

/// Lists entities newest first (ids are uuid v7, so id order is creation order).
pub async fn list<T: Entity>(pool: &PgPool, filter: &ListFilter) -> Result<Vec<T>, StoreError> {
    let (owner_column, owner_type) = T::OWNER_FILTER;
    let sql = format!(
        "select * from {table}
         where ($1::text is null or status = $1)
           and ($2::{owner_type} is null or {owner_column} = $2::{owner_type})
           and ($3::uuid is null or id < $3)
         order by id desc limit $4",
        table = T::TABLE
    );
    let query = sqlx::query_as::<_, T>(AssertSqlSafe(sql)).bind(filter.status);
    let owner = filter.owner.as_ref();
    let query = match owner_type {
        "uuid" => query.bind(owner.and_then(Owner::uuid)),
        _ => query.bind(owner.and_then(Owner::text)),
    };
    Ok(query
        .bind(filter.after)
        .bind(filter.limit)
        .fetch_all(pool)
        .await?)
}

/// The result of a conditional state change.
#[derive(Debug)]
pub enum Transition<T> {
    /// The change happened; its event is in the outbox.
    Done(T),
    /// The condition did not hold: the entity as it is, and whether its deadline passed.
    Refused {
        /// The entity, unchanged.
        current: T,
        /// `expires_at <= now()` in database time.
        expired: bool,
    },
    /// No entity has this id.
    NotFound,
}

/// Runs one conditional `UPDATE … RETURNING *` (`$1` is the id, `$2` an optional text
/// argument) and, when it changed a row, writes `event` in the same transaction.
async fn transition<T: Entity>(
    pool: &PgPool,
    update: &'static str,
    id: Uuid,
    argument: Option<&str>,
    event: &'static str,
) -> Result<Transition<T>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut query = sqlx::query_as::<_, T>(update).bind(id);
    if let Some(argument) = argument {
        query = query.bind(argument);
    }
    if let Some(changed) = query.fetch_optional(&mut *tx).await? {
        outbox::enqueue(&mut tx, &[NewRow::event(event, id, &changed)]).await?;
        tx.commit().await?;
        outbox::written();
        return Ok(Transition::Done(changed));
    }
    let sql = format!(
        "select *, expires_at <= now() as expired from {} where id = $1",
        T::TABLE
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    tx.rollback().await?;
    match row {
        None => Ok(Transition::NotFound),
        Some(row) => Ok(Transition::Refused {
            current: T::from_row(&row)?,
            expired: row.try_get("expired")?,
        }),
    }
}

/// Pays a pending order whose deadline has not passed (docs/architecture.md rule 2).
pub async fn pay_order(pool: &PgPool, id: Uuid) -> Result<Transition<Order>, StoreError> {
    let update = "update orders set status = 'paid', paid_at = now()
                  where id = $1 and status = 'pending' and expires_at > now() returning *";
    transition(pool, update, id, None, "order.paid").await
}

/// Cancels a pending order at the customer's request; past its deadline the order
/// counts as timed out, so the reason says so.
pub async fn cancel_order(pool: &PgPool, id: Uuid) -> Result<Transition<Order>, StoreError> {
    let update = "update orders set status = 'cancelled', cancelled_at = now(),
                      cancel_reason = case when expires_at <= now() then 'payment_timeout' else 'customer_request' end
                  where id = $1 and status = 'pending' returning *";
    transition(pool, update, id, None, "order.cancelled").await
}

/// Records a carrier's acceptance of a pending waybill whose deadline has not passed.
pub async fn accept_waybill(
    pool: &PgPool,
    id: Uuid,
    carrier: &str,
) -> Result<Transition<Waybill>, StoreError> {
    let update = "update waybills set status = 'accepted', accepted_at = now(), carrier_id = $2
                  where id = $1 and status = 'pending' and expires_at > now() returning *";
    transition(pool, update, id, Some(carrier), "waybill.accepted").await
}

/// Cancels a pending waybill at the shipper's request (timed out past its deadline).
pub async fn cancel_waybill(pool: &PgPool, id: Uuid) -> Result<Transition<Waybill>, StoreError> {
    let update = "update waybills set status = 'cancelled', cancelled_at = now(),
                      cancel_reason = case when expires_at <= now() then 'acceptance_timeout' else 'shipper_request' end
                  where id = $1 and status = 'pending' returning *";
    transition(pool, update, id, None, "waybill.cancelled").await
}
