//! What the chaos tests share with the broker restart, alarm and cluster tests: the
//! load of concurrent order creations and payments (the `loadgen` crate's mix, the
//! generator the bench uses too), and the check that nothing was lost once the dust
//! settles.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::helpers::{TestApp, eventually};

pub use loadgen::{Load, LoadShape, Stats};

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
        if let Some(tag) = last_tag
            && channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .is_err()
        {
            return Vec::new();
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
