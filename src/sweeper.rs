//! The backstop: every SWEEP_INTERVAL, cancel pending rows overdue by more than the
//! grace period, whatever happened to their timer (purged queue, message published late
//! after an outage). Safe on every instance: rows are claimed with SKIP LOCKED and the
//! cancel is conditional. (The outbox needs no pruning: the relay deletes what it
//! published, migrations/0004.)
//!
//! A tick logs one summary line (how many of each kind it cancelled, how late the latest
//! was), not one line per entity: after a long outage a sweep cancels millions. The ids are at debug.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::EntityKind;
use crate::liveness::Heartbeat;
use crate::store::expiry::{self, Swept};
use crate::store::{CallLimit, StoreError};

/// Rows cancelled per transaction.
const BATCH: i64 = 1000;

/// What the sweeper needs besides its pool.
#[derive(Clone)]
pub struct Sweeper {
    /// Where the entities live.
    pub pool: PgPool,
    /// How often to sweep.
    pub interval: Duration,
    /// How far past its deadline a row must be before the sweeper takes it.
    pub grace: Duration,
    /// Bounds each sweep batch, so a hung connection cannot stop sweeping.
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
            let mut tally = Tally::default();
            for kind in EntityKind::ALL {
                self.sweep_kind(kind, &mut tally, &shutdown).await;
            }
            tally.log();
        }
    }

    /// Sweeps one kind in batches until nothing overdue is left, counting into `tally`.
    async fn sweep_kind(&self, kind: EntityKind, tally: &mut Tally, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.sweep_batch(kind).await {
                Ok(batch) => {
                    let full = batch.ids.len() as i64 == BATCH;
                    tally.add(kind, batch);
                    if !full {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, kind = kind.as_str(), "sweep failed, next interval retries");
                    return;
                }
            }
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

/// What one tick cancelled.
#[derive(Debug, Default)]
struct Tally {
    /// Orders cancelled.
    orders: usize,
    /// Waybills cancelled.
    waybills: usize,
    /// How long past its deadline the latest of them was.
    max_lateness_ms: i64,
}

impl Tally {
    fn add(&mut self, kind: EntityKind, batch: Swept) {
        for id in &batch.ids {
            tracing::debug!(entity_id = %id, kind = kind.as_str(), "swept");
        }
        match kind {
            EntityKind::Order => self.orders += batch.ids.len(),
            EntityKind::Waybill => self.waybills += batch.ids.len(),
        }
        self.max_lateness_ms = self.max_lateness_ms.max(batch.max_lateness_ms);
    }

    /// One line per tick that cancelled anything: the timers should have, so it warns.
    fn log(&self) {
        if self.orders + self.waybills > 0 {
            tracing::warn!(
                orders = self.orders,
                waybills = self.waybills,
                max_lateness_ms = self.max_lateness_ms,
                "sweeper cancelled overdue entities whose timer was lost or late"
            );
        }
    }
}
