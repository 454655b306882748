//! Group commit for creates: requests that arrive while a batch is being written go
//! into the next batch, one transaction and one multi-row statement for all of them,
//! and each request gets its own answer.
//!
//! There is no linger: a request that finds the writer idle is written at once, alone.
//! Under load the batch is whatever queued during the previous write, so the database
//! commits (and flushes its WAL) once per batch instead of once per request. One batch
//! is in flight at a time: with two (the next written while the previous waits for its
//! commit) the batches were half as large and each create cost more, in PostgreSQL and in
//! the service, than the waiting they overlapped (README, "A faster host, and the
//! bench's client").
//!
//! A batch that fails is never allowed to turn a valid request into an error it did not
//! earn: each of its requests is then written again on its own, and gets that answer.
//!
//! The writer is one task per kind, so a write that never ends would stop every create
//! of that kind: each write is bounded by `DATABASE_REQUEST_TIMEOUT`, the time its
//! callers wait for their answers anyway. A connection that stops answering mid-batch
//! (a failover that black-holes it) costs the requests of that one batch a 503, and the
//! next batch goes out on another connection.

use std::collections::VecDeque;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::entities::{self, CreateError, CreateRequest, Created, NewEntity};
use super::{CallLimit, StoreError};
use crate::domain::{NewOrder, NewWaybill};

/// Most requests written in one batch: bounds the statement's size and the time the
/// first request of a full batch waits for the others' rows.
pub const MAX_BATCH: usize = 256;

/// Requests waiting for the writer; past this, callers wait to enqueue (backpressure).
const QUEUE: usize = 4096;

/// What one create gets back.
pub type Answer<E> = Result<Created<E>, CreateError>;

/// One queued request and where its answer goes.
struct Job<N: NewEntity> {
    /// The request.
    request: CreateRequest<N>,
    /// The caller, waiting (or gone: a timed-out request is not written).
    reply: oneshot::Sender<Answer<N::Entity>>,
}

/// A handle to the group-commit writer of one kind; cheap to clone. The writer task stops
/// when the last handle is dropped.
pub struct Batcher<N: NewEntity> {
    /// Queue of the writer task.
    jobs: mpsc::Sender<Job<N>>,
}

impl<N: NewEntity> Clone for Batcher<N> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<N: NewEntity> Batcher<N> {
    /// Starts the writer task on the current runtime; `limit` bounds each write.
    pub fn start(pool: PgPool, limit: CallLimit) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(pool, limit, queue));
        Self { jobs }
    }

    /// Creates one entity through the next batch; answers as [`entities::create`] would.
    pub async fn create(&self, request: CreateRequest<N>) -> Answer<N::Entity> {
        let (reply, answer) = oneshot::channel();
        let closed = || CreateError::Store(StoreError::Other(sqlx::Error::PoolClosed));
        self.jobs
            .send(Job { request, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// The writer: takes every request queued (up to [`MAX_BATCH`]), writes them as one
/// batch, answers, and starts again with what queued meanwhile.
async fn write_batches<N: NewEntity>(
    pool: PgPool,
    limit: CallLimit,
    mut queue: mpsc::Receiver<Job<N>>,
) {
    // Requests whose idempotency key is already in the batch being formed: they wait for
    // the next one, where they see the first request's committed key.
    let mut deferred: VecDeque<Job<N>> = VecDeque::new();
    loop {
        let first = match deferred.pop_front() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut later = VecDeque::new();
        while batch.len() < MAX_BATCH {
            let Some(job) = deferred.pop_front().or_else(|| queue.try_recv().ok()) else {
                break;
            };
            let key = job.request.key.as_ref().map(|k| (k.scope, k.key.clone()));
            let taken = key.is_some_and(|key| {
                batch
                    .iter()
                    .filter_map(|j| j.request.key.as_ref())
                    .any(|k| (k.scope, &k.key) == (key.0, &key.1))
            });
            if taken {
                later.push_back(job);
            } else {
                batch.push(job);
            }
        }
        deferred.extend(later);
        write(&pool, limit, batch).await;
    }
}

/// Writes one batch and answers every request in it (a caller that gave up is left out).
async fn write<N: NewEntity>(pool: &PgPool, limit: CallLimit, batch: Vec<Job<N>>) {
    let (requests, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .filter(|job| !job.reply.is_closed())
        .map(|job| (job.request, job.reply))
        .unzip();
    if requests.is_empty() {
        return;
    }
    metrics::histogram!("order_timeout_create_batch_size").record(requests.len() as f64);
    let answers = answer_batch(pool, limit, requests).await;
    let mut answers = answers.into_iter();
    for reply in replies {
        // A caller that gave up meanwhile (its request timed out) no longer listens.
        let _ = reply.send(answers.next().unwrap_or_else(|| Err(lost())));
    }
}

/// Writes the requests as one batch and returns each one's answer, in order. When the
/// batch fails, each request is written again alone and gets that answer, so a failure
/// caused by one request (or by the batch) is not passed on to the others. A batch past
/// `limit` is not written again: whether it committed is unknown (its answer may have
/// been lost on the way), so each request gets the time-out, which the API answers
/// with a 503 that claims nothing about the outcome; a client's retry with its
/// `Idempotency-Key` then finds out.
pub async fn answer_batch<N: NewEntity>(
    pool: &PgPool,
    limit: CallLimit,
    requests: Vec<CreateRequest<N>>,
) -> Vec<Answer<N::Entity>> {
    let error = match limit
        .run("create_batch", entities::create_batch(pool, &requests))
        .await
    {
        Ok(answers) => return answers,
        Err(error) => error,
    };
    let size = requests.len();
    if size == 1 {
        return vec![Err(error.into())];
    }
    if let StoreError::TimedOut(after) = error {
        return (0..size)
            .map(|_| Err(CreateError::Store(StoreError::TimedOut(after))))
            .collect();
    }
    tracing::warn!(%error, size, "create batch failed, writing each request alone");
    let alone = requests.into_iter().map(|r| {
        limit.run(
            "create_batch",
            entities::create(pool, r.new, r.timer, r.key),
        )
    });
    futures_util::future::join_all(alone).await
}

fn lost() -> CreateError {
    CreateError::Store(StoreError::Other(sqlx::Error::RowNotFound))
}

/// The group-commit writers of every kind, shared by the API's handlers.
#[derive(Clone)]
pub struct Creates {
    /// Writes orders.
    pub orders: Batcher<NewOrder>,
    /// Writes waybills.
    pub waybills: Batcher<NewWaybill>,
}

impl Creates {
    /// Starts one writer per kind on the current runtime; `limit` bounds each write
    /// (`DATABASE_REQUEST_TIMEOUT`).
    pub fn start(pool: &PgPool, limit: CallLimit) -> Self {
        Self {
            orders: Batcher::start(pool.clone(), limit),
            waybills: Batcher::start(pool.clone(), limit),
        }
    }
}

/// A create request whose kind has a writer in [`Creates`].
pub trait Batched: NewEntity {
    /// This kind's writer.
    fn batcher(creates: &Creates) -> &Batcher<Self>;
}

impl Batched for NewOrder {
    fn batcher(creates: &Creates) -> &Batcher<Self> {
        &creates.orders
    }
}

impl Batched for NewWaybill {
    fn batcher(creates: &Creates) -> &Batcher<Self> {
        &creates.waybills
    }
}

#[cfg(test)]
mod tests {
    //! The batcher against the local PostgreSQL (a scratch database per test).

    use std::time::Duration;

    use crate::store::deadlines::FirstTimer;

    use serde_json::json;
    use sqlx::{Connection, PgPool};

    use super::*;
    use crate::domain::Order;
    use crate::store::idempotency::IdempotencyKey;
    use crate::store::testdb::{drop_scratch, scratch};

    const TIMEOUT: Duration = Duration::from_secs(60);
    /// Far beyond any healthy write: only the test that is about the limit meets it.
    const LIMIT: CallLimit = CallLimit(Duration::from_secs(30));

    fn order(customer: &str) -> NewOrder {
        NewOrder::parse(&json!({"customer_id": customer, "amount_cents": 100, "currency": "EUR"}))
            .expect("valid order")
    }

    fn request(customer: &str, key: Option<&str>) -> CreateRequest<NewOrder> {
        CreateRequest {
            new: order(customer),
            timer: FirstTimer::plan(TIMEOUT, None),
            key: key.map(|k| IdempotencyKey::new("orders", k.into(), customer.as_bytes())),
        }
    }

    async fn count(pool: &PgPool, table: &str) -> i64 {
        let sql = format!("select count(*) from {table}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn one_batch_answers_new_replayed_and_conflicting_requests_each_on_their_own() {
        let (pool, name) = scratch().await;
        // Earlier requests: key "same" with body "alice", key "other" with body "bob".
        let earlier = answer_batch(
            &pool,
            LIMIT,
            vec![
                request("alice", Some("same")),
                request("bob", Some("other")),
            ],
        )
        .await;
        let alice: Order = earlier[0].as_ref().expect("created").entity.clone();

        let answers = answer_batch(
            &pool,
            LIMIT,
            vec![
                request("carol", None),
                request("alice", Some("same")), // same key, same body: replay
                request("dave", Some("other")), // same key, other body: 422
                request("erin", Some("fresh")),
            ],
        )
        .await;
        assert_eq!(answers.len(), 4);
        let carol = answers[0].as_ref().expect("keyless create");
        assert!(!carol.replayed);
        assert_eq!(carol.entity.customer_id, "carol");
        let replay = answers[1].as_ref().expect("replay");
        assert!(replay.replayed);
        assert_eq!(replay.entity, alice, "the replay returns the earlier order");
        assert!(
            matches!(answers[2], Err(CreateError::KeyReused)),
            "{:?}",
            answers[2]
        );
        let erin = answers[3].as_ref().expect("fresh keyed create");
        assert!(!erin.replayed);
        assert_eq!(erin.entity.customer_id, "erin");
        // Two earlier orders and two new ones, one outbox row each; no order for the reuse.
        assert_eq!(
            (count(&pool, "orders").await, count(&pool, "outbox").await),
            (4, 4)
        );
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn a_database_error_caused_by_one_request_fails_that_request_alone() {
        let (pool, name) = scratch().await;
        // A trigger that refuses one customer: the whole multi-row statement fails.
        for sql in [
            "create function refuse_poison() returns trigger language plpgsql as $$
             begin
                 if new.customer_id = 'poison' then raise exception 'poisoned row'; end if;
                 return new;
             end $$",
            "create trigger refuse_poison before insert on orders
             for each row execute function refuse_poison()",
        ] {
            sqlx::query(sql).execute(&pool).await.expect("trigger");
        }
        let answers = answer_batch(
            &pool,
            LIMIT,
            vec![
                request("first", None),
                request("poison", None),
                request("keyed", Some("k")),
                request("last", None),
            ],
        )
        .await;
        let customers: Vec<Option<String>> = answers
            .iter()
            .map(|a| a.as_ref().ok().map(|c| c.entity.customer_id.clone()))
            .collect();
        assert_eq!(
            customers,
            [
                Some("first".into()),
                None,
                Some("keyed".into()),
                Some("last".into())
            ]
        );
        assert!(matches!(answers[1], Err(CreateError::Store(_))));
        assert_eq!(
            (count(&pool, "orders").await, count(&pool, "outbox").await),
            (3, 3)
        );
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn concurrent_requests_with_one_key_get_one_order_and_conflicts_get_422() {
        let (pool, name) = scratch().await;
        let batcher: Batcher<NewOrder> = Batcher::start(pool.clone(), LIMIT);
        // Sent together, so they queue while the first write is in flight: the same key
        // twice in what would be one batch, plus a reuse with another body.
        let requests = vec![
            request("alice", Some("k")),
            request("bob", None),
            request("alice", Some("k")),
            request("mallory", Some("k")),
            request("carol", None),
        ];
        let answers =
            futures_util::future::join_all(requests.into_iter().map(|r| batcher.create(r))).await;
        let made: Vec<&Created<Order>> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
        let keyed: Vec<&&Created<Order>> = made
            .iter()
            .filter(|c| c.entity.customer_id == "alice")
            .collect();
        assert_eq!(keyed.len(), 2, "{answers:?}");
        assert_eq!(keyed[0].entity, keyed[1].entity, "both got the same order");
        assert_eq!(
            keyed.iter().filter(|c| c.replayed).count(),
            1,
            "one created it, one replayed it"
        );
        let reused = answers
            .iter()
            .filter(|a| matches!(a, Err(CreateError::KeyReused)))
            .count();
        assert_eq!((made.len(), reused), (4, 1), "{answers:?}");
        assert_eq!(count(&pool, "orders").await, 3);
        drop(batcher);
        drop_scratch(pool, &name).await;
    }

    #[tokio::test]
    async fn a_write_past_its_limit_answers_each_request_with_the_time_out_and_the_writer_goes_on()
    {
        let (pool, name) = scratch().await;
        // Another transaction holds two keys, so a batch claiming either waits.
        let mut holder = pool.begin().await.expect("begin");
        sqlx::query(
            "insert into idempotency_keys (scope, key, request_hash, entity_id)
             values ('orders', 'held-1', '\\x00', gen_random_uuid()),
                    ('orders', 'held-2', '\\x00', gen_random_uuid())",
        )
        .execute(&mut *holder)
        .await
        .expect("hold the key");
        let limit = CallLimit(Duration::from_millis(300));
        let batcher: Batcher<NewOrder> = Batcher::start(pool.clone(), limit);
        let stuck = [
            request("first", Some("held-1")),
            request("second", Some("held-2")),
        ]
        .map(|r| batcher.create(r));
        let answers = futures_util::future::join_all(stuck).await;
        for answer in &answers {
            assert!(
                matches!(answer, Err(CreateError::Store(StoreError::TimedOut(d))) if *d == limit.0),
                "{answers:?}"
            );
        }
        holder.rollback().await.expect("release the key");

        // Every later create is committed: seen from a session outside the pool, so
        // none was written into a transaction the given-up batch left open.
        for customer in ["next-1", "next-2", "next-3"] {
            let made = batcher
                .create(request(customer, None))
                .await
                .expect("the writer takes the next batch");
            assert_eq!(made.entity.customer_id, customer);
        }
        let mut outside = sqlx::PgConnection::connect_with(&pool.connect_options())
            .await
            .expect("a session of its own");
        let customers: Vec<String> =
            sqlx::query_scalar("select customer_id from orders order by customer_id")
                .fetch_all(&mut outside)
                .await
                .expect("orders");
        assert_eq!(
            customers,
            ["next-1", "next-2", "next-3"],
            "every create answered is committed, and the batch given up was neither \
             committed nor written again request by request"
        );
        outside.close().await.expect("close");
        drop(batcher);
        drop_scratch(pool, &name).await;
    }
}
