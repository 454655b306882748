//! The backstop: every SWEEP_INTERVAL, cancel pending rows overdue by more than the
//! grace period, whatever happened to their timer (purged queue, message published late
//! after an outage). Safe on every instance: rows are claimed with SKIP LOCKED and the
//! cancel is conditional. It also prunes old published outbox rows.
//!
//! A tick logs one summary line (how many it cancelled, how late the latest was), not one
//! line per entity: after a long outage a sweep cancels millions. The ids are at debug.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::EntityKind;
use crate::liveness::Heartbeat;
use crate::store::expiry::{self, Swept};
use crate::store::{CallLimit, StoreError, outbox};

/// Rows cancelled per transaction.
const BATCH: i64 = 1000;
/// How long published outbox rows are kept for inspection.
const OUTBOX_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What the sweeper needs besides its pool.
#[derive(Clone)]
pub struct Sweeper {
    /// Where the entities live.
    pub pool: PgPool,
    /// How often to sweep.
    pub interval: Duration,
    /// How far past its deadline a row must be before the sweeper takes it.
    pub grace: Duration,
    /// Woken when the sweep's cancels wrote events to the outbox.
    pub relay_wakeup: Arc<Notify>,
    /// Bounds each sweep batch and the prune, so a hung connection cannot stop sweeping.
    pub call_limit: CallLimit,
    /// Marks each tick's work, so a wedged sweeper is noticed.
    pub heartbeat: Arc<Heartbeat>,
}

impl Sweeper {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let _busy = self.heartbeat.busy();
            for kind in EntityKind::ALL {
                self.sweep_kind(kind, &shutdown).await;
            }
            let pruning = outbox::prune(&self.pool, OUTBOX_RETENTION);
            if let Err(error) = self.call_limit.run("outbox_prune", pruning).await {
                tracing::warn!(%error, "outbox prune failed, next interval retries");
            }
        }
    }

    /// Sweeps one kind in batches until nothing overdue is left, then logs one line.
    async fn sweep_kind(&self, kind: EntityKind, shutdown: &CancellationToken) {
        let mut tally = Tally::default();
        while !shutdown.is_cancelled() {
            match self.sweep_batch(kind).await {
                Ok(batch) => {
                    let full = batch.ids.len() as i64 == BATCH;
                    tally.add(kind, batch);
                    if !full {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, kind = kind.as_str(), cancelled_before = tally.count, "sweep failed, next interval retries");
                    break;
                }
            }
        }
        if tally.count > 0 {
            self.relay_wakeup.notify_one();
            tracing::warn!(
                kind = kind.as_str(),
                cancelled = tally.count,
                max_lateness_ms = tally.max_lateness_ms,
                "sweeper cancelled overdue entities whose timer was lost or late"
            );
        }
    }

    async fn sweep_batch(&self, kind: EntityKind) -> Result<Swept, StoreError> {
        let sweeping = expiry::sweep_overdue(&self.pool, kind, self.grace, BATCH);
        let batch = self.call_limit.run("sweep", sweeping).await?;
        let n = batch.ids.len() as u64;
        metrics::counter!("order_timeout_cancelled_total", "kind" => kind.as_str(), "reason" => kind.timeout_reason()).increment(n);
        metrics::counter!("order_timeout_swept_total", "kind" => kind.as_str()).increment(n);
        Ok(batch)
    }
}

/// What one tick cancelled of a kind.
#[derive(Debug, Default)]
struct Tally {
    /// Entities cancelled.
    count: usize,
    /// How long past its deadline the latest of them was.
    max_lateness_ms: i64,
}

impl Tally {
    fn add(&mut self, kind: EntityKind, batch: Swept) {
        for id in &batch.ids {
            tracing::debug!(entity_id = %id, kind = kind.as_str(), "swept");
        }
        self.count += batch.ids.len();
        self.max_lateness_ms = self.max_lateness_ms.max(batch.max_lateness_ms);
    }
}
