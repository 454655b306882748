//! Generating load: the API client, a closed loop of N workers (each sends its next
//! request when the previous one answered), latency histograms, progress bars, and the
//! counters the service exports on `/metrics`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

/// The bench's HTTP client of the service.
#[derive(Clone)]
pub struct Api {
    /// Keeps one connection per concurrent request.
    http: reqwest::Client,
    /// `<base>/orders`.
    orders_url: Arc<str>,
    /// `<base>/metrics`.
    metrics_url: Arc<str>,
}

impl Api {
    /// A client of the service at `base`.
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            http,
            orders_url: format!("{base}/orders").into(),
            metrics_url: format!("{base}/metrics").into(),
        }
    }

    /// `POST /orders` for `customer`; the new order's id (from `Location`) on 201.
    pub async fn create_order(&self, customer: &str) -> anyhow::Result<Uuid> {
        let body =
            format!(r#"{{"customer_id":"{customer}","amount_cents":1999,"currency":"EUR"}}"#);
        let response = self
            .http
            .post(&*self.orders_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let id = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|location| location.rsplit('/').next())
            .and_then(|id| Uuid::parse_str(id).ok());
        // Reading the body returns the connection to the pool.
        let body = response.bytes().await?;
        if status != reqwest::StatusCode::CREATED {
            anyhow::bail!(
                "POST /orders answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        id.context("201 without a Location id")
    }

    /// The service's counters that explain a phase (see [`Counters`]).
    pub async fn counters(&self) -> Counters {
        match self.http.get(&*self.metrics_url).send().await {
            Ok(response) => Counters::parse(&response.text().await.unwrap_or_default()),
            Err(_) => Counters::default(),
        }
    }
}

/// Selected counters of `/metrics`: deliveries by outcome, sweeper cancels, retries,
/// consumer batches and the time spent handling them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters(pub BTreeMap<String, f64>);

impl Counters {
    fn parse(text: &str) -> Self {
        let mut counters = BTreeMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            let key = match name {
                "order_timeout_deliveries_total" => match label(series, "outcome") {
                    Some(outcome) => format!("deliveries_{outcome}"),
                    None => continue,
                },
                "order_timeout_swept_total" => "swept".into(),
                "order_timeout_retries_total" => "retries".into(),
                "order_timeout_failed_messages_total" => "failed_messages".into(),
                "order_timeout_outbox_published_total" => "outbox_published".into(),
                "order_timeout_handler_seconds_count" => "consumer_batches".into(),
                "order_timeout_handler_seconds_sum" => "consumer_batch_seconds".into(),
                _ => continue,
            };
            *counters.entry(key).or_insert(0.0) += value;
        }
        Self(counters)
    }

    /// What happened since `before` (the in-process recorder outlives a service).
    pub fn since(mut self, before: &Counters) -> Self {
        for (key, value) in &mut self.0 {
            *value -= before.0.get(key).copied().unwrap_or(0.0);
        }
        self
    }
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let labels = series.split_once('{')?.1.trim_end_matches('}');
    labels.split(',').find_map(|pair| {
        pair.strip_prefix(name)?
            .strip_prefix("=\"")?
            .strip_suffix('"')
    })
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records a duration, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let _ = histogram.record((elapsed.as_micros() as u64).clamp(1, 600_000_000));
}

/// What a load produced.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Operations that succeeded in the measured window.
    pub ops: u64,
    /// Operations that failed in the measured window.
    pub errors: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// `ops / seconds`.
    pub per_second: f64,
    /// Latency of the successful operations.
    pub latency: Latency,
    /// The first failure, to tell what went wrong.
    pub first_error: Option<String>,
}

/// When a closed loop stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// Measure this long after a warm-up.
    Measure { warmup: Duration, measure: Duration },
    /// Run this many operations in all, all measured.
    Count(u64),
}

/// What one worker saw.
struct Tally {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `op(n)` from `concurrency` workers until `stop`; `bar` follows the progress.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    stop: Stop,
    bar: &ProgressBar,
    op: F,
) -> Throughput
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (measure_from, end, total) = match stop {
        Stop::Measure { warmup, measure } => {
            (started + warmup, Some(started + warmup + measure), None)
        }
        Stop::Count(total) => (started, None, Some(total)),
    };
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (op, issued, done) = (op.clone(), issued.clone(), done.clone());
            tokio::spawn(async move {
                let mut tally = Tally {
                    histogram: histogram(),
                    errors: 0,
                    first_error: None,
                };
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    let began = Instant::now();
                    if total.is_some_and(|total| n >= total) || end.is_some_and(|end| began >= end)
                    {
                        return tally;
                    }
                    let result = op(n).await;
                    if began >= measure_from {
                        match result {
                            Ok(()) => record(&mut tally.histogram, began.elapsed()),
                            Err(error) => {
                                tally.errors += 1;
                                tally
                                    .first_error
                                    .get_or_insert_with(|| format!("{error:#}"));
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let ticker = tokio::spawn(follow(bar.clone(), done.clone(), started, stop));
    let mut all = Tally {
        histogram: histogram(),
        errors: 0,
        first_error: None,
    };
    for worker in workers {
        if let Ok(tally) = worker.await {
            let _ = all.histogram.add(&tally.histogram);
            all.errors += tally.errors;
            all.first_error = all.first_error.or(tally.first_error);
        }
    }
    ticker.abort();
    let seconds = match stop {
        Stop::Measure { measure, .. } => measure.as_secs_f64(),
        Stop::Count(_) => started.elapsed().as_secs_f64(),
    };
    bar.finish();
    let ops = all.histogram.len();
    Throughput {
        ops,
        errors: all.errors,
        seconds,
        per_second: ops as f64 / seconds.max(1e-9),
        latency: Latency::of(&all.histogram),
        first_error: all.first_error,
    }
}

/// Moves a closed loop's bar: by time for a timed load, by count otherwise.
async fn follow(bar: ProgressBar, done: Arc<AtomicU64>, started: Instant, stop: Stop) {
    loop {
        let elapsed = started.elapsed();
        let count = done.load(Ordering::Relaxed);
        match stop {
            Stop::Measure { .. } => bar.set_position(elapsed.as_millis() as u64),
            Stop::Count(_) => bar.set_position(count),
        }
        bar.set_message(format!(
            "{count} done, {:.0}/s",
            count as f64 / elapsed.as_secs_f64().max(1e-3)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal); the phase is also
/// announced on a line of its own so logs of CI runs show it.
pub fn bar(phase: &str, what: &str, len: u64) -> ProgressBar {
    eprintln!("bench: {phase}: {what}");
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(phase.to_owned());
    bar
}

/// A bar for a timed load of `warmup + measure`.
pub fn timed_bar(phase: &str, what: &str, stop: Stop) -> ProgressBar {
    let len = match stop {
        Stop::Measure { warmup, measure } => (warmup + measure).as_millis() as u64,
        Stop::Count(total) => total,
    };
    bar(phase, what, len)
}
