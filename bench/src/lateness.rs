//! The lateness phase: orders created at a steady rate with a short timeout, then
//! `cancelled_at - expires_at` of each, both stamped by the database's clock, so the
//! figure is how late the cancel was, not how late the bench noticed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::Sizes;
use super::broker::{self, BrokerLateness};
use super::env::BenchEnv;
use super::load::{self, Api, Counters, Latency, Throughput};
use super::outbox::{self, OutboxGrowth};

/// Requests in flight at most; past it the sender falls behind its schedule (and the
/// achieved rate shows it).
const MAX_IN_FLIGHT: usize = 1024;
/// How long after the last deadline the bench waits for the last cancel.
const GRACE: Duration = Duration::from_secs(60);

/// Figures of the lateness phase.
#[derive(Debug, Clone, Serialize)]
pub struct LatenessReport {
    /// Orders the bench meant to create.
    pub orders: u64,
    /// The rate it meant to create them at, per second.
    pub target_rate: f64,
    /// The rate it managed.
    pub achieved_rate: f64,
    /// ORDER_TIMEOUT of the service, in milliseconds.
    pub timeout_ms: u64,
    /// The creates, latency counted from each request's scheduled time.
    pub create: Throughput,
    /// Orders cancelled for their timeout.
    pub cancelled: u64,
    /// Orders still pending when the bench stopped waiting.
    pub not_cancelled: i64,
    /// `cancelled_at - expires_at`.
    pub lateness: Latency,
    /// Every lateness in milliseconds, for the histogram (not in the JSON).
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
    /// The service's counters over the phase (re-arms, sweeper cancels).
    pub counters: Counters,
    /// The outbox's size and rows, sampled while the orders were created.
    pub outbox: OutboxGrowth,
    /// The same number of deadlines at the same rate and timeout through RabbitMQ alone.
    pub broker_only: BrokerLateness,
}

/// Creates the orders at the rate, waits for every cancel, reads the lateness.
pub async fn run(env: &BenchEnv, sizes: &Sizes) -> anyhow::Result<LatenessReport> {
    if !env.starts_services() {
        anyhow::bail!(
            "the lateness phase needs a short ORDER_TIMEOUT: run it without --url, or leave it out of --phases"
        );
    }
    let timeout = Duration::from_millis(sizes.lateness_timeout_ms);
    let broker_only = broker::lateness(
        env.amqp_url(),
        env.prefix(),
        sizes.lateness_orders,
        sizes.rate,
        timeout,
        order_timeout::config::Config::defaults().prefetch,
    )
    .await?;
    let service = env.start(timeout).await?;
    let api = load::api(&service.url);
    let before = Counters::read(&api).await;
    let tag = env.tag("lateness");
    let watch = outbox::Watch::start(env.pool.clone());
    let create = create_at_rate(&api, &tag, sizes.lateness_orders, sizes.rate).await;
    let outbox = watch.finish().await;
    let bar = load::bar(
        "lateness",
        "waiting for every cancel",
        sizes.lateness_orders,
    );
    let not_cancelled = env
        .wait_cancelled(
            &tag,
            sizes.lateness_orders,
            &api,
            &before,
            timeout + GRACE,
            &bar,
        )
        .await?;
    bar.finish();
    let samples_ms: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from (cancelled_at - expires_at))::float8 * 1000 from orders
         where customer_id = $1 and status = 'cancelled' order by expires_at",
    )
    .bind(&tag)
    .fetch_all(&env.pool)
    .await?;
    let counters = Counters::read(&api).await.since(&before);
    service.stop().await?;
    Ok(LatenessReport {
        orders: sizes.lateness_orders,
        target_rate: sizes.rate as f64,
        achieved_rate: create.per_second,
        timeout_ms: sizes.lateness_timeout_ms,
        create,
        cancelled: samples_ms.len() as u64,
        not_cancelled,
        lateness: Latency::of(&histogram_of(&samples_ms)),
        samples_ms,
        counters,
        outbox,
        broker_only,
    })
}

/// Sends `count` creates on a fixed schedule (open loop: a slow answer does not delay
/// the next request), and waits for the last answer. The throughput's window is the
/// time it took to send them all, so its rate is the rate achieved.
async fn create_at_rate(api: &Api, tag: &str, count: u64, rate: u64) -> Throughput {
    let bar = load::bar(
        "lateness",
        &format!("creating {count} orders at {rate}/s"),
        count,
    );
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let tally = Arc::new(Mutex::new((load::histogram(), 0_u64, None::<String>)));
    let tag: Arc<str> = tag.into();
    let started = Instant::now();
    for n in 0..count {
        let scheduled = started + period.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (api, tally, tag) = (api.clone(), tally.clone(), tag.clone());
        tokio::spawn(async move {
            let result = api.create_order(&tag).await;
            // From the scheduled time, so a stalled sender cannot hide latency.
            let elapsed = scheduled.elapsed();
            if let Ok(mut tally) = tally.lock() {
                match result {
                    Ok(_) => load::record(&mut tally.0, elapsed),
                    Err(error) => {
                        tally.1 += 1;
                        tally.2.get_or_insert_with(|| format!("{error:#}"));
                    }
                }
            }
            drop(permit);
        });
        if n % 64 == 0 {
            bar.set_position(n);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _all_answered = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
    bar.finish();
    let (histogram, errors, first_error) = tally
        .lock()
        .map(|t| t.clone())
        .unwrap_or_else(|_| (load::histogram(), 0, None));
    Throughput {
        ops: histogram.len(),
        errors,
        seconds,
        per_second: histogram.len() as f64 / seconds.max(1e-9),
        latency: Latency::of(&histogram),
        first_error,
    }
}

/// A histogram (in microseconds) of millisecond samples.
pub fn histogram_of(samples_ms: &[f64]) -> hdrhistogram::Histogram<u64> {
    let mut histogram = load::histogram();
    for sample in samples_ms {
        load::record(
            &mut histogram,
            Duration::from_secs_f64(sample.max(0.0) / 1000.0),
        );
    }
    histogram
}
