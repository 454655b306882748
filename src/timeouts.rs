//! The due-queue consumer: turns timers whose deadline came into cancellations.
//!
//! Deliveries that are ready together are handled as one batch: one conditional
//! `UPDATE … WHERE id = ANY($1)` per kind (still pending and due in database time), then
//! each delivery is acked, re-armed (it came early), retried (the database failed) or
//! stored as failed (it is not a timer we know). The consumer restarts on every new
//! broker session, with its prefetch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{Broker, Session};
use crate::domain::{EntityKind, TimerMessage};
use crate::retry::{Disposition, Router};
use crate::store::sweep::{self, Fate};
use crate::store::StoreError;

/// What the consumer needs, shared by its concurrent handlers.
#[derive(Clone)]
pub struct DueConsumer {
    /// Where the entities live.
    pub pool: PgPool,
    /// Where the timers live.
    pub broker: Broker,
    /// Sends failed deliveries to their next home.
    pub router: Arc<Router>,
    /// Batches handled at the same time.
    pub concurrency: usize,
    /// Unacked deliveries the broker may push.
    pub prefetch: u16,
}

impl DueConsumer {
    /// Consumes the due queue on every session until `shutdown`; in-flight batches
    /// finish (acked or left unacked for redelivery) before it returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut sessions = self.broker.sessions();
        loop {
            let session = sessions.borrow_and_update().clone();
            if let Some(session) = session {
                if let Err(error) = self.consume(&session, &shutdown).await {
                    tracing::warn!(%error, "due consumer stopped, restarting with the next session");
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            // Wait for a new session; also retry on the same one after a channel error.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sessions.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    async fn consume(&self, session: &Session, shutdown: &CancellationToken) -> Result<(), lapin::Error> {
        let channel = session.connection.create_channel().await?;
        channel.basic_qos(self.prefetch, BasicQosOptions::default()).await?;
        let tag = format!("order-timeout-{}", Uuid::now_v7());
        let consumer = channel
            .basic_consume(
                self.broker.topology().due_queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.broker.topology().due_queue, prefetch = self.prefetch, "due consumer started");
        consumer
            .take_until(shutdown.cancelled())
            .ready_chunks(usize::from(self.prefetch))
            .for_each_concurrent(self.concurrency, |batch| async move {
                let deliveries: Vec<Delivery> = batch
                    .into_iter()
                    .filter_map(|result| result.map_err(|e| tracing::warn!(error = %e, "delivery error")).ok())
                    .collect();
                self.handle_batch(deliveries).await;
            })
            .await;
        if shutdown.is_cancelled() {
            let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
            let _ = channel.close(200, "shutting down".into()).await;
        }
        Ok(())
    }

    /// Handles deliveries that arrived together.
    pub async fn handle_batch(&self, deliveries: Vec<Delivery>) {
        let started = Instant::now();
        let mut by_kind: HashMap<EntityKind, Vec<(Uuid, Delivery)>> = HashMap::new();
        for delivery in deliveries {
            match serde_json::from_slice::<TimerMessage>(&delivery.data) {
                Ok(timer) => by_kind.entry(timer.kind).or_default().push((timer.id, delivery)),
                Err(error) => {
                    let reason = format!("not a timer message: {error}");
                    self.router.dispose(delivery, Disposition::Permanent(reason)).await;
                }
            }
        }
        for (kind, batch) in by_kind {
            let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
            match sweep::cancel_due(&self.pool, kind, &ids).await {
                Ok(fates) => self.settle(kind, batch, &fates).await,
                Err(error) => self.fail_all(batch, &error).await,
            }
        }
        metrics::histogram!("order_timeout_handler_seconds").record(started.elapsed().as_secs_f64());
    }

    async fn settle(&self, kind: EntityKind, batch: Vec<(Uuid, Delivery)>, fates: &HashMap<Uuid, Fate>) {
        for (id, delivery) in batch {
            let fate = fates.get(&id).copied().unwrap_or(Fate::NotFound);
            let outcome = match fate {
                Fate::Cancelled => {
                    tracing::info!(entity_id = %id, kind = kind.as_str(), reason = kind.timeout_reason(), "cancelled at its deadline");
                    metrics::counter!("order_timeout_cancelled_total", "kind" => kind.as_str(), "reason" => kind.timeout_reason()).increment(1);
                    ack(&delivery, id).await;
                    "cancelled"
                }
                Fate::AlreadyFinal => {
                    tracing::debug!(entity_id = %id, kind = kind.as_str(), "already settled, timer ignored");
                    ack(&delivery, id).await;
                    "noop"
                }
                Fate::NotYetDue(ms_left) => {
                    self.router.dispose(delivery, Disposition::Rearm(ms_left)).await;
                    "rearmed"
                }
                Fate::NotFound => {
                    let reason = format!("no {} with id {id}", kind.as_str());
                    self.router.dispose(delivery, Disposition::Permanent(reason)).await;
                    "failed"
                }
            };
            metrics::counter!("order_timeout_deliveries_total", "outcome" => outcome).increment(1);
        }
    }

    /// Routes every delivery of a failed batch at once, so a slow failure path (the
    /// database is down, each store attempt waits for its timeout) does not serialise.
    async fn fail_all(&self, batch: Vec<(Uuid, Delivery)>, error: &StoreError) {
        let routes = batch.into_iter().map(|(id, delivery)| async move {
            tracing::warn!(entity_id = %id, %error, class = error.class().as_str(), "cancel failed");
            let disposition = match error.class() {
                crate::store::ErrorClass::Transient => Disposition::Transient(error.to_string()),
                crate::store::ErrorClass::Permanent => Disposition::Permanent(error.to_string()),
            };
            self.router.dispose(delivery, disposition).await;
            metrics::counter!("order_timeout_deliveries_total", "outcome" => "error").increment(1);
        });
        futures_util::future::join_all(routes).await;
    }
}

async fn ack(delivery: &Delivery, id: Uuid) {
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        // The channel died: the broker redelivers, and handling is idempotent.
        tracing::warn!(entity_id = %id, %error, "ack failed, message will be redelivered");
    }
}
