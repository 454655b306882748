//! Closed loops: N workers, each sending its next operation when the previous one
//! answered, and what they measured.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
#[derive(Debug, Clone)]
pub enum Stop {
    /// Measure this long after a warm-up.
    Measure { warmup: Duration, measure: Duration },
    /// Run this many operations in all, all measured.
    Count(u64),
    /// Run, all measured, until the token is cancelled.
    Until(CancellationToken),
}

/// What one worker saw.
struct Tally {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: histogram(),
            errors: 0,
            first_error: None,
        }
    }

    fn add(&mut self, other: Tally) {
        let _ = self.histogram.add(&other.histogram);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

/// Runs `op(n)` (n counts the operations from 0) from `concurrency` workers until
/// `stop`; `done` counts the finished operations, for a progress display.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    stop: Stop,
    done: Arc<AtomicU64>,
    op: F,
) -> Throughput
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (measure_from, end, total, token) = match &stop {
        Stop::Measure { warmup, measure } => (
            started + *warmup,
            Some(started + *warmup + *measure),
            None,
            None,
        ),
        Stop::Count(total) => (started, None, Some(*total), None),
        Stop::Until(token) => (started, None, None, Some(token.clone())),
    };
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (op, issued, done, token) =
                (op.clone(), issued.clone(), done.clone(), token.clone());
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    let began = Instant::now();
                    if total.is_some_and(|total| n >= total)
                        || end.is_some_and(|end| began >= end)
                        || token.as_ref().is_some_and(|t| t.is_cancelled())
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
    let mut all = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            all.add(tally);
        }
    }
    let seconds = match stop {
        Stop::Measure { measure, .. } => measure.as_secs_f64(),
        Stop::Count(_) | Stop::Until(_) => started.elapsed().as_secs_f64(),
    };
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
