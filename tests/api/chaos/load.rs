//! What the chaos tests share with the broker restart test: a load of concurrent order
//! creations and payments, and the check that nothing was lost once the dust settles.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::helpers::{TestApp, eventually};

/// Longest answer any request may take, whatever is down.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Shape of the load.
#[derive(Debug, Clone)]
pub struct LoadShape {
    /// Concurrent creators.
    pub workers: usize,
    /// Pause between two creates of one worker.
    pub interval: Duration,
    /// A paid order is paid after a random delay below this (past the deadline some
    /// payments race the timer and are refused).
    pub pay_within: Duration,
    /// One order in this many is paid.
    pub pay_one_in: u64,
}

impl Default for LoadShape {
    fn default() -> Self {
        Self {
            workers: 3,
            interval: Duration::from_millis(20),
            pay_within: Duration::from_millis(2300),
            pay_one_in: 2,
        }
    }
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Orders answered 201.
    pub created: Vec<Uuid>,
    /// Orders whose payment answered 200.
    pub paid: Vec<Uuid>,
    /// Count of every answer: "create 201", "pay 409 order_expired", "create 503 database_unavailable".
    pub answers: BTreeMap<String, u64>,
    /// The slowest answer.
    pub slowest: Duration,
    /// Answers slower than `ANSWER_WITHIN`, or no answer at all in time.
    pub too_slow: Vec<String>,
    /// 500s and 503s that are not `database_unavailable`.
    pub bad_answers: Vec<String>,
    /// Requests that got no HTTP answer (connection refused or reset), by target.
    pub transport_errors: BTreeMap<String, u64>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.created.extend(other.created);
        self.paid.extend(other.paid);
        for (key, n) in other.answers {
            *self.answers.entry(key).or_default() += n;
        }
        self.slowest = self.slowest.max(other.slowest);
        self.too_slow.extend(other.too_slow);
        self.bad_answers.extend(other.bad_answers);
        for (key, n) in other.transport_errors {
            *self.transport_errors.entry(key).or_default() += n;
        }
    }

    /// How many answers of `what` ("create 201") were seen.
    pub fn count(&self, what: &str) -> u64 {
        self.answers.get(what).copied().unwrap_or(0)
    }

    /// Answers that must never happen under any fault: slow, 500, unexpected 503.
    pub fn assert_always_answered_well(&self) {
        assert!(
            self.too_slow.is_empty(),
            "requests answered slower than {ANSWER_WITHIN:?}: {:?}",
            first(&self.too_slow)
        );
        assert!(
            self.bad_answers.is_empty(),
            "bad answers: {:?}",
            first(&self.bad_answers)
        );
    }

    /// Neither slow nor bad answers, and every request reached the service.
    pub fn assert_http_never_failed(&self) {
        self.assert_always_answered_well();
        assert!(
            self.transport_errors.is_empty(),
            "requests without an answer: {:?}",
            self.transport_errors
        );
    }
}

fn first(items: &[String]) -> &[String] {
    &items[..items.len().min(5)]
}

/// A running load; `finish` stops it and returns what it saw.
pub struct Load {
    stop: CancellationToken,
    targets: Arc<RwLock<Vec<String>>>,
    workers: Vec<JoinHandle<Stats>>,
    started: Instant,
}

impl Load {
    /// Starts `shape.workers` creators spreading their requests over `targets` (base URLs).
    pub fn start(targets: Vec<String>, shape: LoadShape) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let stop = CancellationToken::new();
        let targets = Arc::new(RwLock::new(targets));
        let workers = (0..shape.workers)
            .map(|n| {
                tokio::spawn(worker(
                    n,
                    client.clone(),
                    targets.clone(),
                    shape.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Self {
            stop,
            targets,
            workers,
            started: Instant::now(),
        }
    }

    /// Sends every later request to these targets instead.
    pub fn retarget(&self, targets: Vec<String>) {
        *self.targets.write().expect("targets") = targets;
    }

    /// Stops creating, waits for the payments still scheduled, and returns the stats.
    pub async fn finish(self) -> Stats {
        self.stop.cancel();
        let mut stats = Stats::default();
        for worker in self.workers {
            stats.merge(worker.await.expect("load worker"));
        }
        println!(
            "load: {} orders created in {:.1} s, {} paid; answers {:?}; slowest {} ms; no answer {:?}",
            stats.created.len(),
            self.started.elapsed().as_secs_f64(),
            stats.paid.len(),
            stats.answers,
            stats.slowest.as_millis(),
            stats.transport_errors
        );
        stats
    }
}

/// A small xorshift generator: the load needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(Uuid::new_v4().as_u64_pair().0 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn worker(
    n: usize,
    client: reqwest::Client,
    targets: Arc<RwLock<Vec<String>>>,
    shape: LoadShape,
    stop: CancellationToken,
) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng::new();
    let mut payments = JoinSet::new();
    let mut round = 0usize;
    while !stop.is_cancelled() {
        round += 1;
        let target = pick(&targets, n + round);
        let body = json!({"customer_id": format!("load-{n}"), "amount_cents": 100 + round as i64, "currency": "EUR"});
        let answer = call(&client, &target, "create", "/orders", body, &mut stats).await;
        if let Some((StatusCode::CREATED, order)) = answer {
            let id = Uuid::parse_str(order["id"].as_str().unwrap_or_default())
                .expect("created order id");
            stats.created.push(id);
            if rng.next() % shape.pay_one_in.max(1) == 0 {
                let delay =
                    Duration::from_millis(rng.next() % shape.pay_within.as_millis().max(1) as u64);
                let (client, targets) = (client.clone(), targets.clone());
                payments.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut stats = Stats::default();
                    let target = pick(&targets, n);
                    let answer = call(
                        &client,
                        &target,
                        "pay",
                        &format!("/orders/{id}/pay"),
                        json!({}),
                        &mut stats,
                    )
                    .await;
                    if let Some((StatusCode::OK, _)) = answer {
                        stats.paid.push(id);
                    }
                    stats
                });
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(shape.interval) => {}
        }
        while let Some(Ok(paid)) = payments.try_join_next() {
            stats.merge(paid);
        }
    }
    while let Some(paid) = payments.join_next().await {
        stats.merge(paid.expect("payment task"));
    }
    stats
}

fn pick(targets: &RwLock<Vec<String>>, n: usize) -> String {
    let targets = targets.read().expect("targets");
    targets[n % targets.len()].clone()
}

/// One POST; records its answer and timing; returns status and body when answered.
async fn call(
    client: &reqwest::Client,
    target: &str,
    what: &str,
    path: &str,
    body: Value,
    stats: &mut Stats,
) -> Option<(StatusCode, Value)> {
    let started = Instant::now();
    let result = client
        .post(format!("{target}{path}"))
        .json(&body)
        .send()
        .await;
    let answer = match result {
        Ok(response) => {
            let status = response.status();
            match response.text().await {
                Ok(text) => Some((
                    status,
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
                )),
                Err(_) => None,
            }
        }
        Err(_) => None,
    };
    let elapsed = started.elapsed();
    stats.slowest = stats.slowest.max(elapsed);
    if elapsed > ANSWER_WITHIN {
        stats
            .too_slow
            .push(format!("{what} {path} took {} ms", elapsed.as_millis()));
    }
    let Some((status, value)) = answer else {
        *stats.transport_errors.entry(target.to_owned()).or_default() += 1;
        return None;
    };
    let code = value["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = if code.is_empty() {
        format!("{what} {}", status.as_u16())
    } else {
        format!("{what} {} {code}", status.as_u16())
    };
    *stats.answers.entry(key).or_default() += 1;
    let acceptable_503 =
        status == StatusCode::SERVICE_UNAVAILABLE && code == "database_unavailable";
    if status.is_server_error() && !acceptable_503 {
        stats
            .bad_answers
            .push(format!("{what} {path}: {status} {value}"));
    }
    Some((status, value))
}

/// A time range (database clock) during which a dependency was unreachable.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What the final check measured.
#[derive(Debug)]
pub struct Verdict {
    pub orders: usize,
    pub paid: usize,
    pub cancelled: usize,
    /// Latest cancellation after its deadline.
    pub max_lateness_ms: i64,
    /// Latest cancellation after its deadline or the end of the outage it fell in,
    /// whichever is later.
    pub max_lateness_beyond_outage_ms: i64,
    pub events: usize,
    pub duplicate_events: usize,
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    status: String,
    expires_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    cancel_reason: Option<String>,
}

/// Waits until every order is settled and every event published, then asserts that
/// nothing was lost: every order paid or cancelled, no paid order cancelled, no order
/// cancelled before its deadline, every state change published at least once, nothing
/// left for an operator. Prints and returns the lateness.
pub async fn verify(
    app: &TestApp,
    label: &str,
    events_queue: &str,
    stats: &Stats,
    outages: &[Outage],
    within: Duration,
) -> Verdict {
    let settled = eventually(within, || async {
        sqlx::query_scalar::<_, i64>("select count(*) from orders where status = 'pending'")
            .fetch_one(&app.pool)
            .await
            .expect("count")
            == 0
    })
    .await;
    if !settled {
        let pending: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as("select id, expires_at from orders where status = 'pending' order by expires_at limit 5")
                .fetch_all(&app.pool)
                .await
                .expect("pending");
        panic!(
            "{label}: orders still pending {within:?} after the load, e.g. {pending:?} (now {})",
            app.db_now().await
        );
    }
    let drained = eventually(within, || async {
        sqlx::query_scalar::<_, i64>("select count(*) from outbox")
            .fetch_one(&app.pool)
            .await
            .expect("backlog")
            == 0
    })
    .await;
    assert!(drained, "{label}: outbox never drained");

    let orders: Vec<OrderRow> = sqlx::query_as(
        "select id, status, expires_at, paid_at, cancelled_at, cancel_reason from orders",
    )
    .fetch_all(&app.pool)
    .await
    .expect("orders");
    let by_id: HashMap<Uuid, &OrderRow> = orders.iter().map(|o| (o.id, o)).collect();
    for id in &stats.created {
        assert!(
            by_id.contains_key(id),
            "{label}: order {id} answered 201 but is not stored"
        );
    }
    for id in &stats.paid {
        let order = by_id[id];
        assert_eq!(
            order.status, "paid",
            "{label}: order {id} answered paid but is {}",
            order.status
        );
    }
    let (mut max_lateness_ms, mut max_beyond_ms) = (0i64, 0i64);
    let mut expected: HashSet<(String, Uuid)> = HashSet::new();
    for order in &orders {
        expected.insert(("order.created".into(), order.id));
        match order.status.as_str() {
            "paid" => {
                let paid_at = order.paid_at.expect("paid_at");
                assert!(
                    order.cancelled_at.is_none(),
                    "{label}: paid order {} was cancelled too",
                    order.id
                );
                assert!(
                    paid_at < order.expires_at,
                    "{label}: order {} paid after its deadline",
                    order.id
                );
                expected.insert(("order.paid".into(), order.id));
            }
            "cancelled" => {
                let cancelled_at = order.cancelled_at.expect("cancelled_at");
                assert_eq!(
                    order.cancel_reason.as_deref(),
                    Some("payment_timeout"),
                    "{label}: order {}",
                    order.id
                );
                assert!(
                    order.paid_at.is_none(),
                    "{label}: cancelled order {} has a payment",
                    order.id
                );
                assert!(
                    cancelled_at >= order.expires_at,
                    "{label}: order {} cancelled at {cancelled_at}, before its deadline {}",
                    order.id,
                    order.expires_at
                );
                let lateness = (cancelled_at - order.expires_at).num_milliseconds();
                let mut reference = order.expires_at;
                for outage in outages {
                    if order.expires_at <= outage.end && cancelled_at >= outage.start {
                        reference = reference.max(outage.end);
                    }
                }
                max_lateness_ms = max_lateness_ms.max(lateness);
                max_beyond_ms = max_beyond_ms.max((cancelled_at - reference).num_milliseconds());
                expected.insert(("order.cancelled".into(), order.id));
            }
            other => panic!("{label}: order {} is {other}", order.id),
        }
    }

    // Every state change at least once; duplicates are allowed (at-least-once).
    let mut seen: HashMap<(String, Uuid), usize> = HashMap::new();
    let deadline = Instant::now() + within;
    let mut observer = Observer::on(&app.broker_url);
    loop {
        for (key, body) in observer.drain(events_queue).await {
            let id = Uuid::parse_str(body["id"].as_str().unwrap_or_default()).unwrap_or_default();
            *seen.entry((key, id)).or_default() += 1;
        }
        if expected.iter().all(|event| seen.contains_key(event)) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<&(String, Uuid)> = expected
        .iter()
        .filter(|event| !seen.contains_key(event))
        .collect();
    assert!(
        missing.is_empty(),
        "{label}: {} of {} events lost, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    let unexpected: Vec<&(String, Uuid)> = seen
        .keys()
        .filter(|event| !expected.contains(event))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{label}: events of changes that did not happen: {:?}",
        &unexpected[..unexpected.len().min(5)]
    );
    let events: usize = seen.values().sum();

    let failed: i64 = sqlx::query_scalar("select count(*) from failed_messages")
        .fetch_one(&app.pool)
        .await
        .expect("failed");
    assert_eq!(
        failed, 0,
        "{label}: messages left for an operator in failed_messages"
    );
    assert_eq!(
        observer.depth(&app.topology.parking_queue).await,
        Some(0),
        "{label}: messages parked"
    );

    let verdict = Verdict {
        orders: orders.len(),
        paid: orders.iter().filter(|o| o.status == "paid").count(),
        cancelled: orders.iter().filter(|o| o.status == "cancelled").count(),
        max_lateness_ms,
        max_lateness_beyond_outage_ms: max_beyond_ms,
        events,
        duplicate_events: events - expected.len(),
    };
    println!(
        "{label}: {} orders ({} paid, {} cancelled), max lateness {} ms, max lateness beyond the outage {} ms, {} events ({} duplicates)",
        verdict.orders,
        verdict.paid,
        verdict.cancelled,
        verdict.max_lateness_ms,
        verdict.max_lateness_beyond_outage_ms,
        verdict.events,
        verdict.duplicate_events
    );
    verdict
}

/// Reads the broker on a connection of its own, reconnecting when the broker went away
/// (a restart by this test or by anyone else sharing the machine's broker): the events
/// wait in a durable queue, so a reconnect loses none.
struct Observer {
    url: String,
    connection: Option<Connection>,
}

impl Observer {
    fn on(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            connection: None,
        }
    }

    async fn channel(&mut self) -> Option<lapin::Channel> {
        if !self
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected())
        {
            self.connection = Connection::connect(&self.url, ConnectionProperties::default())
                .await
                .ok();
        }
        let channel = self.connection.as_ref()?.create_channel().await.ok();
        if channel.is_none() {
            self.connection = None;
        }
        channel
    }

    /// Every message of `queue` as (routing key, body); acked once all are read, so a
    /// connection lost midway redelivers them (a duplicate at worst, never a loss).
    async fn drain(&mut self, queue: &str) -> Vec<(String, Value)> {
        let Some(channel) = self.channel().await else {
            return Vec::new();
        };
        let mut messages = Vec::new();
        let mut last_tag = None;
        while let Ok(Some(message)) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
        {
            let body = serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null);
            messages.push((message.delivery.routing_key.to_string(), body));
            last_tag = Some(message.delivery.delivery_tag);
        }
        if let Some(tag) = last_tag {
            if channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .is_err()
            {
                return Vec::new();
            }
        }
        let _ = channel.close(200, "drained".into()).await;
        messages
    }

    /// Messages ready in `queue`.
    async fn depth(&mut self, queue: &str) -> Option<u32> {
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .ok()
            .map(|q| q.message_count())
    }
}

/// Logs of the service into the test's output when `TEST_LOG` is set (e.g. `TEST_LOG=info`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
