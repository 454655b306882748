//! Generating load with the workspace's one load generator (`loadgen`: the API client,
//! closed loops of N workers, latency histograms, the counters of `/metrics`), shown
//! with progress bars.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

pub use loadgen::{Api, Counters, Latency, Stop, Throughput, histogram, record};

/// How long the bench waits for one answer of the service.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The bench's client of the service at `base`.
pub fn api(base: &str) -> Api {
    Api::new(base, REQUEST_TIMEOUT)
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
    let done = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn(follow(
        bar.clone(),
        done.clone(),
        Instant::now(),
        stop.clone(),
    ));
    let throughput = loadgen::closed_loop(concurrency, stop, done, op).await;
    ticker.abort();
    bar.finish();
    throughput
}

/// Moves a closed loop's bar: by time for a timed load, by count otherwise.
async fn follow(bar: ProgressBar, done: Arc<AtomicU64>, started: Instant, stop: Stop) {
    loop {
        let elapsed = started.elapsed();
        let count = done.load(Ordering::Relaxed);
        match stop {
            Stop::Measure { .. } => bar.set_position(elapsed.as_millis() as u64),
            Stop::Count(_) | Stop::Until(_) => bar.set_position(count),
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

/// A bar for a timed load of `warmup + measure`, or of a count.
pub fn timed_bar(phase: &str, what: &str, stop: &Stop) -> ProgressBar {
    let len = match stop {
        Stop::Measure { warmup, measure } => (*warmup + *measure).as_millis() as u64,
        Stop::Count(total) => *total,
        Stop::Until(_) => 0,
    };
    bar(phase, what, len)
}
