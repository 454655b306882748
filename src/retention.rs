//! The retention task: every RETENTION_INTERVAL, prunes idempotency keys older than
//! IDEMPOTENCY_KEY_RETENTION and failed messages resolved more than
//! RESOLVED_FAILED_MESSAGE_RETENTION ago, in batches until none is left. Without it both
//! tables grow forever. Safe on every instance at once (a row is deleted once).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::CallLimit;
use crate::store::retention;

/// Rows deleted per statement.
const BATCH: i64 = 1000;

/// What the retention task needs.
pub struct Retention {
    /// The database.
    pub pool: PgPool,
    /// Pause between two prunings.
    pub interval: Duration,
    /// Age past which an idempotency key is forgotten.
    pub idempotency_keys: Duration,
    /// Age (since resolution) past which a resolved failed message is deleted.
    pub resolved_failed_messages: Duration,
    /// Bounds each statement, so a hung connection cannot stall the task.
    pub call_limit: CallLimit,
}

impl Retention {
    /// Prunes every `interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            self.prune_all().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn prune_all(&self) {
        let keys = self
            .drain("idempotency_keys", || {
                retention::prune_idempotency_keys(&self.pool, self.idempotency_keys, BATCH)
            })
            .await;
        let failed = self
            .drain("failed_messages", || {
                retention::prune_resolved_failed_messages(
                    &self.pool,
                    self.resolved_failed_messages,
                    BATCH,
                )
            })
            .await;
        if keys + failed > 0 {
            tracing::info!(
                idempotency_keys = keys,
                failed_messages = failed,
                "retention pruned old rows"
            );
        }
    }

    /// Runs one batch after another until a batch is not full; returns the total.
    async fn drain<F, Fut>(&self, table: &'static str, mut batch: F) -> u64
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<u64, crate::store::StoreError>>,
    {
        let mut total = 0;
        loop {
            match self.call_limit.run("retention_prune", batch()).await {
                Ok(deleted) => {
                    total += deleted;
                    metrics::counter!("order_timeout_pruned_rows_total", "table" => table)
                        .increment(deleted);
                    if deleted < BATCH as u64 {
                        return total;
                    }
                }
                Err(error) => {
                    tracing::warn!(table, %error, "retention pruning failed, trying again later");
                    return total;
                }
            }
        }
    }
}
