//! Queries shared by orders and waybills: create with timer and event, read, list,
//! and conditional state transitions that emit their event in the same transaction.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, FromRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::StoreError;
use super::idempotency::{self, Claim, IdempotencyKey};
use super::outbox::{self, NewRow};
use crate::domain::{EntityKind, NewOrder, NewWaybill, Order, Waybill};

/// A stored entity with a deadline: what the generic queries need to know about it.
pub trait Entity: for<'r> FromRow<'r, PgRow> + Serialize + Send + Unpin + 'static {
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

/// A validated create request that knows how to insert its row.
pub trait NewEntity: Sync {
    /// What the insert produces.
    type Entity: Entity;
    /// Inserts the row with `id`, pending, its deadline `timeout` after the database's
    /// now, with its timer and its `created` event in the outbox: one statement.
    fn insert<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        id: Uuid,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Entity, StoreError>> + Send + 'c;
}

impl NewEntity for NewOrder {
    type Entity = Order;
    async fn insert(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Order, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            outbox::with_outbox(
                EntityKind::Order,
                "insert into orders (id, customer_id, amount_cents, currency, items, expires_at)
                 values ($1, $2, $3, $4, $5, now() + $6::bigint * interval '1 millisecond')
                 returning *",
                "order.created",
                Some(7),
                "*",
            )
        });
        let items = self
            .items
            .as_ref()
            .map(|items| sqlx::types::Json(items.lines().to_vec()));
        Ok(sqlx::query_as(AssertSqlSafe(SQL.as_str()))
            .bind(id)
            .bind(self.customer_id.as_str())
            .bind(self.amount_cents.cents())
            .bind(self.currency.as_str())
            .bind(items)
            .bind(timeout.as_millis() as i64)
            .bind(outbox::timer_bucket(EntityKind::Order, timeout))
            .fetch_one(conn)
            .await?)
    }
}

impl NewEntity for NewWaybill {
    type Entity = Waybill;
    async fn insert(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Waybill, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            outbox::with_outbox(
                EntityKind::Waybill,
                "insert into waybills (id, order_id, origin, destination, expires_at)
                 values ($1, $2, $3, $4, now() + $5::bigint * interval '1 millisecond')
                 returning *",
                "waybill.created",
                Some(6),
                "*",
            )
        });
        Ok(sqlx::query_as(AssertSqlSafe(SQL.as_str()))
            .bind(id)
            .bind(self.order_id)
            .bind(self.origin.as_str())
            .bind(self.destination.as_str())
            .bind(timeout.as_millis() as i64)
            .bind(outbox::timer_bucket(EntityKind::Waybill, timeout))
            .fetch_one(conn)
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

/// Creates an entity, its timer and its `created` event: one statement, or one
/// transaction with the idempotency key's claim.
pub async fn create<N: NewEntity>(
    pool: &PgPool,
    new: &N,
    timeout: Duration,
    key: Option<&IdempotencyKey>,
) -> Result<Created<N::Entity>, CreateError> {
    let id = Uuid::now_v7();
    let Some(key) = key else {
        let entity = new.insert(&mut *pool.acquire().await?, id, timeout).await?;
        return Ok(Created {
            entity,
            replayed: false,
        });
    };
    let mut tx = pool.begin().await?;
    match idempotency::claim(&mut tx, key, id).await? {
        Claim::Fresh => {}
        Claim::Reused => return Err(CreateError::KeyReused),
        Claim::Replay(existing) => {
            let entity = fetch::<N::Entity>(&mut tx, existing)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            return Ok(Created {
                entity,
                replayed: true,
            });
        }
    }
    let entity = new.insert(&mut tx, id, timeout).await?;
    tx.commit().await?;
    Ok(Created {
        entity,
        replayed: false,
    })
}

/// Reads one entity.
pub async fn get<T: Entity>(pool: &PgPool, id: Uuid) -> Result<Option<T>, StoreError> {
    let mut conn = pool.acquire().await?;
    fetch(&mut conn, id).await
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
