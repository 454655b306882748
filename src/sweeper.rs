//! The backstop: every SWEEP_INTERVAL, cancel pending rows overdue by more than the
//! grace period, whatever happened to their timer (purged queue, message published late
//! after an outage). Safe on every instance: rows are claimed with SKIP LOCKED and the
//! cancel is conditional. It also prunes old published outbox rows.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::EntityKind;
use crate::store::{outbox, sweep};

/// Rows cancelled per transaction.
const BATCH: i64 = 1000;
/// How long published outbox rows are kept for inspection.
const OUTBOX_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Runs until `shutdown`; wakes the relay when its cancels wrote events to the outbox.
pub async fn run(
    pool: PgPool,
    interval: Duration,
    grace: Duration,
    relay_wakeup: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for kind in EntityKind::ALL {
            sweep_kind(&pool, kind, grace, &relay_wakeup, &shutdown).await;
        }
        if let Err(error) = outbox::prune(&pool, OUTBOX_RETENTION).await {
            tracing::debug!(%error, "outbox prune skipped");
        }
    }
}

async fn sweep_kind(
    pool: &PgPool,
    kind: EntityKind,
    grace: Duration,
    relay_wakeup: &Notify,
    shutdown: &CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match sweep::sweep_overdue(pool, kind, grace, BATCH).await {
            Ok(ids) => {
                if !ids.is_empty() {
                    relay_wakeup.notify_one();
                }
                for id in &ids {
                    tracing::warn!(entity_id = %id, kind = kind.as_str(), "sweeper cancelled an overdue entity whose timer was lost or late");
                }
                metrics::counter!("order_timeout_cancelled_total", "kind" => kind.as_str(), "reason" => kind.timeout_reason()).increment(ids.len() as u64);
                metrics::counter!("order_timeout_swept_total", "kind" => kind.as_str())
                    .increment(ids.len() as u64);
                if (ids.len() as i64) < BATCH {
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
