//! The outbox's size under sustained load: sampled every [`PERIOD`] while the lateness
//! phase creates orders at a steady rate, so a report shows whether the relay and the
//! pruning keep the table bounded (issue 15) or it grows with every order.
//!
//! Size is `pg_total_relation_size` summed over `pg_partition_tree('outbox')` (the table,
//! its indexes and TOAST, and every partition if it is partitioned); rows are `count(*)`.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the outbox is sampled.
pub const PERIOD: Duration = Duration::from_secs(2);

/// One reading of the outbox.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the load began.
    pub at_s: f64,
    /// Bytes on disk of the table with its indexes (and partitions).
    pub bytes: i64,
    /// Rows in it.
    pub rows: i64,
}

/// How the outbox fared over a steady load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutboxGrowth {
    /// Largest size seen during the load, in bytes.
    pub max_bytes: Option<i64>,
    /// Most rows seen during the load.
    pub max_rows: Option<i64>,
    /// The last reading during the load.
    pub last: Option<Sample>,
    /// The last reading of each third of the load (first, middle, last): a bounded outbox
    /// has the last third's size near the first's, a growing one about three times it.
    pub thirds: Vec<Sample>,
    /// `thirds[2].bytes / thirds[0].bytes`.
    pub growth_bytes: Option<f64>,
    /// `thirds[2].rows / thirds[0].rows` (`None` when the first third ended empty).
    pub growth_rows: Option<f64>,
    /// Every reading during the load.
    pub samples: Vec<Sample>,
    /// Readings that failed (e.g. no `outbox` table).
    pub failed_readings: u64,
}

impl OutboxGrowth {
    /// `max X MiB / N rows; ends of thirds a → b → c MiB (rows ...)` for the summary.
    pub fn describe(&self) -> String {
        let mib = |bytes: i64| bytes as f64 / 1_048_576.0;
        match (self.max_bytes, self.max_rows) {
            (Some(bytes), Some(rows)) => {
                let thirds = if self.thirds.is_empty() {
                    "n/a (too few readings)".to_owned()
                } else {
                    self.thirds
                        .iter()
                        .map(|s| format!("{:.2} MiB/{} rows", mib(s.bytes), s.rows))
                        .collect::<Vec<_>>()
                        .join(" -> ")
                };
                format!(
                    "max {:.2} MiB, {rows} rows; ends of thirds {thirds}",
                    mib(bytes)
                )
            }
            _ => "n/a".to_owned(),
        }
    }

    /// Whether the table stopped growing: the last third ended at most 1.5 times the
    /// first third's size (plus 1 MiB, as a new table grows its first pages anyway) and
    /// rows. `None` with fewer than three readings.
    pub fn bounded(&self) -> Option<bool> {
        let [first, _, last] = self.thirds.as_slice() else {
            return None;
        };
        Some(
            last.bytes as f64 <= 1.5 * first.bytes as f64 + 1_048_576.0
                && last.rows as f64 <= 1.5 * first.rows as f64 + 1_000.0,
        )
    }
}

/// Samples the outbox in the background, at once and every [`PERIOD`], until
/// [`Watch::finish`].
pub struct Watch {
    stop: oneshot::Sender<()>,
    task: JoinHandle<(Vec<Sample>, u64)>,
}

impl Watch {
    /// Starts sampling now, on the bench's own pool.
    pub fn start(pool: PgPool) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(sample(pool, stopped));
        Self { stop, task }
    }

    /// Stops sampling (after one last reading) and sums up.
    pub async fn finish(self) -> OutboxGrowth {
        let _ = self.stop.send(());
        match self.task.await {
            Ok((samples, failed)) => summarise(samples, failed),
            Err(_) => OutboxGrowth::default(),
        }
    }
}

async fn sample(pool: PgPool, mut stopped: oneshot::Receiver<()>) -> (Vec<Sample>, u64) {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut failed = 0;
    let mut stopping = false;
    loop {
        match read(&pool).await {
            Ok((bytes, rows)) => samples.push(Sample {
                at_s: started.elapsed().as_secs_f64(),
                bytes,
                rows,
            }),
            Err(error) => {
                if failed == 0 {
                    eprintln!("bench: outbox size not readable: {error}");
                }
                failed += 1;
            }
        }
        if stopping {
            return (samples, failed);
        }
        stopping = tokio::select! {
            _ = &mut stopped => true,
            _ = tokio::time::sleep(PERIOD) => false,
        };
    }
}

async fn read(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        // pg_partition_tree lists nothing for a table that is not partitioned.
        "select coalesce((select sum(pg_total_relation_size(relid)) from pg_partition_tree('outbox')
                          where isleaf),
                         pg_total_relation_size('outbox'))::bigint,
                (select count(*) from outbox)",
    )
    .fetch_one(pool)
    .await
}

fn summarise(samples: Vec<Sample>, failed_readings: u64) -> OutboxGrowth {
    let end = samples.last().map_or(0.0, |s| s.at_s);
    // The last reading at or before the end of each third.
    let thirds: Vec<Sample> = if samples.len() >= 3 {
        (1..=3)
            .filter_map(|k| {
                let until = end * k as f64 / 3.0 + 1e-9;
                samples.iter().rev().find(|s| s.at_s <= until).copied()
            })
            .collect()
    } else {
        Vec::new()
    };
    let ratio = |last: i64, first: i64| (first > 0).then(|| last as f64 / first as f64);
    let (growth_bytes, growth_rows) = match thirds.as_slice() {
        [first, _, last] => (ratio(last.bytes, first.bytes), ratio(last.rows, first.rows)),
        _ => (None, None),
    };
    OutboxGrowth {
        max_bytes: samples.iter().map(|s| s.bytes).max(),
        max_rows: samples.iter().map(|s| s.rows).max(),
        last: samples.last().copied(),
        thirds,
        growth_bytes,
        growth_rows,
        samples,
        failed_readings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[(i64, i64)]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(n, &(bytes, rows))| Sample {
                at_s: 2.0 * (n + 1) as f64,
                bytes,
                rows,
            })
            .collect()
    }

    #[test]
    fn a_table_that_keeps_growing_is_not_bounded() {
        let growing: Vec<(i64, i64)> = (1..=30).map(|n| (n * 4_000_000, n * 6_000)).collect();
        let growth = summarise(samples(&growing), 0);
        assert_eq!(growth.thirds.len(), 3);
        assert_eq!(growth.bounded(), Some(false));
        assert!(growth.growth_bytes.is_some_and(|g| g > 2.5));
        assert_eq!(growth.max_rows, Some(180_000));
    }

    #[test]
    fn a_table_on_a_plateau_is_bounded() {
        let plateau: Vec<(i64, i64)> = (1..=30)
            .map(|n| (8_000_000 + (n % 3) * 100_000, 2_000 + (n % 5) * 100))
            .collect();
        let growth = summarise(samples(&plateau), 0);
        assert_eq!(growth.bounded(), Some(true));
    }

    #[test]
    fn too_few_readings_say_nothing() {
        let growth = summarise(samples(&[(1, 1), (2, 2)]), 1);
        assert_eq!(growth.bounded(), None);
        assert_eq!(growth.failed_readings, 1);
    }
}
