//! Logs through `tracing` (text or JSON) and the process-wide Prometheus recorder.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the log subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let client = crate::broker::CLIENT_LOG_TARGET;
        EnvFilter::new(format!("info,sqlx=warn,{client}=warn"))
    });
    // Colours only for a person at a terminal: escape codes in a log file or a log
    // collector's stream are noise to every reader and every grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Latency buckets in seconds, from 1 ms to 10 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Cancel lateness buckets in seconds, from 50 ms to 10 min: a timer cancels within
/// a second, the sweeper after SWEEP_GRACE plus up to SWEEP_INTERVAL (a full match wins
/// over the `_seconds` suffix).
const LATENESS_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The process-wide metrics recorder, installed on first use (several applications in
/// one test process share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("order_timeout_cancel_lateness_seconds".into()),
                        &LATENESS_BUCKETS,
                    )
                })
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    if metrics::set_global_recorder(recorder).is_ok() {
                        describe_metrics();
                    }
                    handle
                }
                // Only fails for an empty bucket list, which the constant is not.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Registers at zero the counters the alerting rules watch for any increase
/// (deploy/prometheus/alerts.yml), so the first failure, parking or sweep is an increase
/// from 0 that `increase()` sees, not the birth of a series it cannot.
pub fn register_alerting_series() {
    // The recorder must exist first, or the series go to the no-op recorder.
    metrics_handle();
    for class in ["permanent", "transient"] {
        metrics::counter!("order_timeout_failed_messages_total", "class" => class).increment(0);
    }
    metrics::counter!("order_timeout_parked_total").increment(0);
    for kind in crate::domain::EntityKind::ALL {
        metrics::counter!("order_timeout_swept_total", "kind" => kind.as_str()).increment(0);
    }
}

/// What each metric the service exports means: the `# HELP` lines of `/metrics` (which
/// `promtool check metrics` requires). A metric added without a line here fails the
/// metrics lint test.
pub const METRICS: &[(Kind, &str, &str)] = &[
    (
        Kind::Counter,
        "order_timeout_http_requests_total",
        "HTTP requests answered, by method, route and status.",
    ),
    (
        Kind::Histogram,
        "order_timeout_http_request_duration_seconds",
        "Time to answer an HTTP request, by route.",
    ),
    (
        Kind::Counter,
        "order_timeout_entities_total",
        "Orders and waybills created, paid, accepted or extended, by kind and event.",
    ),
    (
        Kind::Counter,
        "order_timeout_cancelled_total",
        "Entities cancelled, by kind and reason (timeouts by the timer or the sweeper, or by request).",
    ),
    (
        Kind::Histogram,
        "order_timeout_cancel_lateness_seconds",
        "How long after its deadline an entity was cancelled for timeout, by kind and by (timer or sweeper).",
    ),
    (
        Kind::Counter,
        "order_timeout_deliveries_total",
        "Due-queue deliveries handled, by outcome.",
    ),
    (
        Kind::Histogram,
        "order_timeout_handler_seconds",
        "Time to handle one batch of due-queue deliveries.",
    ),
    (
        Kind::Counter,
        "order_timeout_retries_total",
        "Deliveries sent to a retry tier after a transient failure, by tier.",
    ),
    (
        Kind::Counter,
        "order_timeout_failed_messages_total",
        "Messages that failed for good and were stored for an operator, by error class.",
    ),
    (
        Kind::Counter,
        "order_timeout_parked_total",
        "Failed messages parked in RabbitMQ because the failed-message store was unreachable.",
    ),
    (
        Kind::Gauge,
        "order_timeout_parking_queue_messages",
        "Messages waiting in the parking queue (read at scrape time).",
    ),
    (
        Kind::Counter,
        "order_timeout_requeued_total",
        "Messages requeued by an operator, by source.",
    ),
    (
        Kind::Counter,
        "order_timeout_swept_total",
        "Overdue entities the sweeper cancelled because their timer was lost or late, by kind.",
    ),
    (
        Kind::Gauge,
        "order_timeout_outbox_backlog",
        "Outbox rows not yet published (read at scrape time).",
    ),
    (
        Kind::Counter,
        "order_timeout_outbox_published_total",
        "Outbox rows published to RabbitMQ, by topic.",
    ),
    (
        Kind::Counter,
        "order_timeout_early_timers_held_total",
        "Timers delivered at most TIMER_LEAD + 10 ms before the deadline they carry, held by the consumer until it instead of re-armed.",
    ),
    (
        Kind::Gauge,
        "order_timeout_outbox_partitions_held",
        "Outbox partitions whose lease this instance's relay holds (of OUTBOX_PARTITIONS).",
    ),
    (
        Kind::Gauge,
        "order_timeout_broker_connected",
        "1 while this instance holds a RabbitMQ connection, else 0.",
    ),
    (
        Kind::Gauge,
        "order_timeout_loop_stalled_seconds",
        "How long each background loop has been busy without progress (0 when idle), by loop.",
    ),
    (
        Kind::Counter,
        "order_timeout_database_call_timeouts_total",
        "Background database calls abandoned at DATABASE_CALL_TIMEOUT, by call.",
    ),
    (
        Kind::Counter,
        "order_timeout_database_connections_discarded_total",
        "Pooled database connections discarded because a health check failed or hung.",
    ),
    (
        Kind::Counter,
        "order_timeout_pruned_rows_total",
        "Rows deleted by the retention task (old idempotency keys, long-resolved failed messages), by table.",
    ),
    (
        Kind::Histogram,
        "order_timeout_create_batch_size",
        "Creates written together by one group commit.",
    ),
    (
        Kind::Counter,
        "order_timeout_outbox_held_back_total",
        "Outbox rows not published and held back, with their entity's later rows, for a backoff.",
    ),
    (
        Kind::Counter,
        "order_timeout_alert_posts_total",
        "Alert webhook posts, by format and outcome (delivered, refused, unreachable).",
    ),
    (
        Kind::Counter,
        "order_timeout_alerts_dropped_total",
        "Alerts dropped because the alert queue was full (the failures are stored).",
    ),
];

/// The Prometheus type of a metric in [`METRICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// Gives every metric of [`METRICS`] its help text.
fn describe_metrics() {
    for (kind, name, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// How often the parking queue's depth is read for its gauge.
const PARKING_GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps `order_timeout_parking_queue_messages` up to date until shutdown: a passive
/// declare every PARKING_GAUGE_INTERVAL, so `/metrics` (which anyone may call) asks the
/// broker nothing. While the broker is unreachable the gauge keeps its last value
/// (`order_timeout_broker_connected` says why).
pub async fn keep_parking_gauge(
    broker: crate::broker::Broker,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let parking = broker.topology().parking_queue.clone();
    loop {
        let reading = broker.queue_depth(&parking);
        if let Ok(Ok(depth)) = tokio::time::timeout(PARKING_GAUGE_INTERVAL, reading).await {
            metrics::gauge!("order_timeout_parking_queue_messages").set(f64::from(depth));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PARKING_GAUGE_INTERVAL) => {}
        }
    }
}
