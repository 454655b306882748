//! The burst phase: many deadlines in the same second.
//!
//! Through the API the orders could not all be created within one second, so with one
//! ORDER_TIMEOUT their deadlines would spread over as many seconds as creating them takes.
//! Instead the bench inserts the rows and their timers into `orders` and `outbox` in bulk,
//! as a create writes them (a pending row; an outbox row with its timer, here without the
//! `created` event),
//! their deadlines spread evenly over one second that lies `burst_lead` ahead. From there
//! the service does all the work: the relay publishes every timer into a cache bucket of
//! its own, the broker dead-letters them when the second comes, the consumer cancels.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use super::Sizes;
use super::broker::{self, BrokerBaseline};
use super::cpu::{self, CpuPerOp, Targets};
use super::env::{BenchEnv, LONG_TIMEOUT};
use super::lateness::histogram_of;
use super::load::{self, Counters, Latency};

/// Rows per insert statement (and transaction).
const CHUNK: usize = 10_000;
/// How long after the burst's second the bench waits for the last cancel.
const GRACE: Duration = Duration::from_secs(60);

/// Figures of the burst phase.
#[derive(Debug, Clone, Serialize)]
pub struct BurstReport {
    /// Orders whose deadlines fall in the one second.
    pub orders: u64,
    /// How far ahead the second lay when the rows were inserted, in milliseconds.
    pub lead_ms: u64,
    /// How long the bulk insert took, in seconds.
    pub insert_s: f64,
    /// From the first insert until the relay had published every timer, in seconds.
    pub armed_s: Option<f64>,
    /// Whether every timer was published before the second began.
    pub armed_before_deadlines: bool,
    /// Orders cancelled for their timeout.
    pub cancelled: u64,
    /// Orders still pending when the bench stopped waiting.
    pub not_cancelled: i64,
    /// From the start of the second to the last cancel (database time), in seconds.
    pub all_cancelled_after_s: f64,
    /// Cancels per second, from the first deadline to the last cancel.
    pub cancels_per_second: f64,
    /// `cancelled_at - expires_at` of the burst's orders.
    pub lateness: Latency,
    /// The service's counters over the phase.
    pub counters: Counters,
    /// CPU per cancel from the start of the second until every order was seen cancelled
    /// (the relay publishing the `order.cancelled` events meanwhile included).
    pub cpu: CpuPerOp,
    /// The same burst through RabbitMQ alone, run before the service's.
    pub broker_only: BrokerBaseline,
}

/// Inserts the burst, waits for every cancel, reads the timings.
pub async fn run(env: &BenchEnv, sizes: &Sizes) -> anyhow::Result<BurstReport> {
    // Whole seconds, so the bucket is a name no configured timeout uses.
    let lead_s = sizes.burst_lead_ms.div_ceil(1000).max(1);
    let prefetch = order_timeout::config::Config::defaults().prefetch;
    let broker_targets = cpu::targets(None, env.amqp_url(), env.database_name());
    let broker_only = broker::burst(
        env.amqp_url(),
        env.prefix(),
        sizes.burst,
        Duration::from_secs(lead_s),
        prefetch,
        &broker_targets,
    )
    .await?;
    let service = env.start(LONG_TIMEOUT).await?;
    let targets = Targets {
        service: service.pid(),
        ..broker_targets
    };
    let api = load::api(&service.url);
    let before = Counters::read(&api).await;
    let tag = env.tag("burst");
    let bucket = format!("order.{}", lead_s * 1000 + 1);
    env.remember_bucket(&bucket);
    let (second, until_second_s): (DateTime<Utc>, f64) = sqlx::query_as(
        "select s, extract(epoch from (s - clock_timestamp()))::float8
         from (select date_trunc('second', now()) + $1 * interval '1 second' as s) second",
    )
    .bind(lead_s as f64)
    .fetch_one(&env.pool)
    .await?;
    let window = cpu::track_from(
        targets,
        Instant::now() + Duration::from_secs_f64(until_second_s.max(0.0)),
    );
    let started = Instant::now();
    insert(env, &tag, &bucket, second, sizes.burst).await?;
    let insert_s = started.elapsed().as_secs_f64();
    let armed = env
        .wait_outbox_drained(Duration::from_secs(lead_s) + GRACE)
        .await?
        .map(|_| started.elapsed());
    let armed_before_deadlines = armed.is_some_and(|armed| armed < Duration::from_secs(lead_s));
    let bar = load::bar(
        "burst",
        &format!("{} deadlines in one second, {lead_s} s ahead", sizes.burst),
        sizes.burst,
    );
    let not_cancelled = env
        .wait_cancelled(
            &tag,
            sizes.burst,
            &api,
            &before,
            Duration::from_secs(lead_s + 1) + GRACE,
            &bar,
        )
        .await?;
    bar.finish();
    let timing = Timing::read(env, &tag, second).await?;
    let cpu = cpu::finish_window(window, timing.samples_ms.len() as u64).await;
    let counters = Counters::read(&api).await.since(&before);
    service.stop().await?;
    Ok(BurstReport {
        orders: sizes.burst,
        lead_ms: lead_s * 1000,
        insert_s,
        armed_s: armed.map(|a| a.as_secs_f64()),
        armed_before_deadlines,
        cancelled: timing.samples_ms.len() as u64,
        not_cancelled,
        all_cancelled_after_s: timing.last_cancel_after_second_s,
        cancels_per_second: timing.samples_ms.len() as f64
            / timing.first_deadline_to_last_cancel_s.max(1e-9),
        lateness: Latency::of(&histogram_of(&timing.samples_ms)),
        counters,
        cpu,
        broker_only,
    })
}

/// Inserts `count` pending orders with deadlines spread evenly over the second starting
/// at `second`, and a timer outbox row for each, in deadline order (so the cache bucket
/// holds them in the order they expire).
async fn insert(
    env: &BenchEnv,
    tag: &str,
    bucket: &str,
    second: DateTime<Utc>,
    count: u64,
) -> anyhow::Result<()> {
    let step_us = 1_000_000.0 / count.max(1) as f64;
    let bar = load::bar(
        "burst",
        &format!("inserting {count} orders and timers"),
        count,
    );
    let mut offset = 0_u64;
    while offset < count {
        let ids: Vec<Uuid> = (offset..count.min(offset + CHUNK as u64))
            .map(|_| Uuid::now_v7())
            .collect();
        sqlx::query(
            "with o as (
                 insert into orders (id, customer_id, amount_cents, currency, expires_at)
                 select id, $2, 1999, 'EUR', $3 + ($4 + n - 1) * $5 * interval '1 microsecond'
                 from unnest($1::uuid[]) with ordinality as t(id, n)
                 returning id, expires_at)
             insert into outbox (entity_id, timer_bucket, due_at, timer_body)
             select id, $6, expires_at, jsonb_build_object('kind', 'order', 'id', id)
             from o order by expires_at",
        )
        .bind(&ids)
        .bind(tag)
        .bind(second)
        .bind(offset as f64)
        .bind(step_us)
        .bind(bucket)
        .execute(&env.pool)
        .await?;
        offset += ids.len() as u64;
        bar.set_position(offset);
    }
    bar.finish();
    Ok(())
}

/// When the burst's orders were due and cancelled, in database time.
struct Timing {
    samples_ms: Vec<f64>,
    last_cancel_after_second_s: f64,
    first_deadline_to_last_cancel_s: f64,
}

impl Timing {
    async fn read(env: &BenchEnv, tag: &str, second: DateTime<Utc>) -> anyhow::Result<Self> {
        let samples_ms: Vec<f64> = sqlx::query_scalar(
            "select extract(epoch from (cancelled_at - expires_at))::float8 * 1000 from orders
             where customer_id = $1 and status = 'cancelled'",
        )
        .bind(tag)
        .fetch_all(&env.pool)
        .await?;
        let (after_second, first_to_last): (Option<f64>, Option<f64>) = sqlx::query_as(
            "select extract(epoch from (max(cancelled_at) - $2))::float8,
                    extract(epoch from (max(cancelled_at) - min(expires_at)))::float8
             from orders where customer_id = $1 and status = 'cancelled'",
        )
        .bind(tag)
        .bind(second)
        .fetch_one(&env.pool)
        .await?;
        Ok(Self {
            samples_ms,
            last_cancel_after_second_s: after_second.unwrap_or(f64::NAN),
            first_deadline_to_last_cancel_s: first_to_last.unwrap_or(f64::NAN),
        })
    }
}
