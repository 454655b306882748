//! The due-queue consumer: turns timers whose deadline came into cancellations.
//!
//! With `TIMER_LEAD` (25 ms by default), timers leave their cache bucket that long before their
//! deadline, so the broker's dead-letter latency is spent before it rather than after;
//! each waits here, unacked, until the deadline it carries (`x-due-at-us`), then joins
//! the next batch.
//!
//! Deliveries that are ready together are handled as one batch: one conditional
//! `UPDATE … WHERE id = ANY($1)` per kind (still pending and due in database time), then
//! each delivery is re-armed (it came early), retried (the database failed) or stored as
//! failed (it is not a timer we know), and the rest are acked, with one multiple ack when
//! the batch's turn allows ([`acks`]). The consumer restarts on every new broker session,
//! with its prefetch.

mod acks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::headers::DUE_AT_US;
use crate::broker::{Broker, BrokerError, Delivery, Session};
use crate::domain::{EntityKind, TimerMessage};
use crate::liveness::Heartbeat;
use crate::retry::{DeliveryRouter, Disposition};
use crate::store::expiry::{self, Fate};
use crate::store::{CallLimit, StoreError};

use self::acks::AckLedger;

/// How much earlier than `TIMER_LEAD` a delivery may come and still be held to its
/// deadline rather than re-armed: the last hop of a re-arm through the delay levels lands
/// a few milliseconds early by design (a level is never longer than the time left, and the
/// re-arm carries the deadline), and another instance's clock may be a little ahead.
const HOLD_EARLY: std::time::Duration = std::time::Duration::from_millis(10);

/// What the consumer needs, shared by its concurrent handlers.
#[derive(Clone)]
pub struct DueConsumer {
    /// Where the entities live.
    pub pool: PgPool,
    /// Where the timers live.
    pub broker: Broker,
    /// Sends failed deliveries to their next home.
    pub delivery_router: Arc<DeliveryRouter>,
    /// Batches handled at the same time.
    pub concurrency: usize,
    /// Unacked deliveries the broker may push.
    pub prefetch: u16,
    /// How long before each kind's deadline its `*.expiring` reminder is due, indexed
    /// by `EntityKind as usize` (ORDER_REMIND_BEFORE, WAYBILL_REMIND_BEFORE); `None`: no
    /// reminders for that kind.
    pub remind_before: [Option<std::time::Duration>; 2],
    /// Bounds each batch's cancel, so a hung connection cannot hold a batch forever.
    pub call_limit: CallLimit,
    /// Marks batches in flight, so a wedged consumer is noticed (`/healthz`).
    pub heartbeat: Arc<Heartbeat>,
}

impl DueConsumer {
    /// Consumes the due queue on every session until `shutdown`; in-flight batches
    /// finish (acked or left unacked for redelivery) before it returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut sessions = self.broker.sessions();
        loop {
            let session = sessions.borrow_and_update().clone();
            if let Some(session) = session
                && let Err(error) = self.consume(&session, &shutdown).await
            {
                tracing::warn!(%error, "due consumer stopped, restarting with the next session");
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

    async fn consume(
        &self,
        session: &Session,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let starting = self.heartbeat.busy();
        let consumer = session
            .consume(&self.broker.topology().due_queue, self.prefetch)
            .await?;
        let (deliveries, channel) = consumer.split();
        drop(starting);
        tracing::info!(queue = %self.broker.topology().due_queue, prefetch = self.prefetch, "due consumer started");
        // A batch takes at most its share of the prefetch window, so while one batch
        // waits for its commit the others are already being handled (their commits share
        // WAL flushes) and the broker refills the window as each one is acked. One batch
        // as large as the window would leave the window empty during every commit.
        let batch_size = usize::from(self.prefetch).div_ceil(self.concurrency.max(1));
        let ledger = &AckLedger::new(channel.clone());
        let hold_cap =
            std::time::Duration::from_millis(self.broker.topology().timer_lead_ms) + HOLD_EARLY;
        deliveries
            .take_until(shutdown.cancelled())
            .inspect(|result| ledger.received(result.as_ref().ok()))
            // Each timer that came ahead of its deadline (TIMER_LEAD) waits here for it, side
            // by side, so one waiting timer never delays another; the others pass at once.
            .map(|result| async move {
                if let Ok(delivery) = &result {
                    hold_until_due(delivery, hold_cap).await;
                }
                result
            })
            .buffer_unordered(usize::from(self.prefetch))
            .ready_chunks(batch_size)
            .for_each_concurrent(self.concurrency, |batch| async move {
                let _busy = self.heartbeat.busy();
                let deliveries: Vec<Delivery> = batch
                    .into_iter()
                    .filter_map(|result| {
                        result
                            .map_err(|e| tracing::warn!(error = %e, "delivery error"))
                            .ok()
                    })
                    .collect();
                self.handle_batch(deliveries, ledger).await;
            })
            .await;
        if shutdown.is_cancelled() {
            channel.stop().await;
        }
        Ok(())
    }

    /// Handles deliveries that arrived together: one conditional UPDATE per kind, then
    /// every delivery that needs another home is routed, and the rest acked together.
    /// Its span (`consumer_batch{deliveries=N}`) holds each entity's outcome line and the
    /// routing spans of the deliveries that needed another home.
    #[tracing::instrument(name = "consumer_batch", skip_all, fields(deliveries = deliveries.len()))]
    async fn handle_batch(&self, deliveries: Vec<Delivery>, ledger: &AckLedger) {
        let started = Instant::now();
        let mut by_kind: HashMap<EntityKind, Vec<(Uuid, Delivery)>> = HashMap::new();
        let mut routes = Vec::new();
        for delivery in deliveries {
            match serde_json::from_slice::<TimerMessage>(&delivery.body) {
                Ok(timer) => by_kind
                    .entry(timer.kind)
                    .or_default()
                    .push((timer.id, delivery)),
                Err(error) => routes.push((
                    delivery,
                    Disposition::Permanent(format!("not a timer message: {error}")),
                )),
            }
        }
        let mut done = Vec::new();
        for (kind, batch) in by_kind {
            let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
            let remind_before = self.remind_before[kind as usize];
            let cancelling = expiry::cancel_if_due(&self.pool, kind, &ids, remind_before);
            match self.call_limit.run("cancel_due", cancelling).await {
                Ok(fates) => {
                    split_by_fate(kind, batch, &fates, &mut done, &mut routes);
                }
                Err(error) => routes.extend(routes_after_store_error(batch, &error)),
            }
        }
        // Routed deliveries are acked by the delivery router; that must happen before a multiple
        // ack covers their tags.
        let routed: Vec<u64> = routes.iter().map(|(delivery, _)| delivery.tag).collect();
        let routing = routes
            .into_iter()
            .map(|(delivery, disposition)| self.delivery_router.dispose(delivery, disposition));
        futures_util::future::join_all(routing).await;
        ledger.settle(&done, &routed).await;
        metrics::histogram!("order_timeout_handler_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}

/// Waits until the deadline `delivery` carries (`x-due-at-us`, set by the relay), when
/// [`hold_time`] says so.
async fn hold_until_due(delivery: &Delivery, cap: std::time::Duration) {
    let due_at_us = delivery
        .properties
        .headers
        .as_ref()
        .and_then(|headers| headers.integer(DUE_AT_US));
    if let Some(wait) = hold_time(due_at_us, chrono::Utc::now().timestamp_micros(), cap) {
        metrics::counter!("order_timeout_early_timers_held_total").increment(1);
        tokio::time::sleep(wait).await;
    }
}

/// How long a timer due at `due_at_us` waits before its cancel is tried, at `now_us` (both
/// microseconds since the Unix epoch): until its deadline when that is ahead by no more
/// than `cap` (the lead and a little clock skew); otherwise not at all. A timer without a
/// deadline, already due, or further off than a lead explains (an extended deadline, a
/// re-arm, a clock far off the database's) goes to the database at once, which decides,
/// and re-arms it if it is early. This only times the question: the answer stays the
/// database's.
fn hold_time(
    due_at_us: Option<i64>,
    now_us: i64,
    cap: std::time::Duration,
) -> Option<std::time::Duration> {
    let ahead_us = u64::try_from(due_at_us?.checked_sub(now_us)?).ok()?;
    let ahead = std::time::Duration::from_micros(ahead_us);
    (!ahead.is_zero() && ahead <= cap).then_some(ahead)
}

/// Sorts a kind's deliveries by what their cancel found: cancelled or already settled
/// ones are `done` (to be acked), early or unknown ones get a route.
fn split_by_fate(
    kind: EntityKind,
    batch: Vec<(Uuid, Delivery)>,
    fates: &HashMap<Uuid, Fate>,
    done: &mut Vec<Delivery>,
    routes: &mut Vec<(Delivery, Disposition)>,
) {
    for (id, delivery) in batch {
        let fate = fates.get(&id).copied().unwrap_or(Fate::NotFound);
        let outcome = match fate {
            Fate::Cancelled => {
                tracing::info!(entity_id = %id, kind = kind.as_str(), reason = kind.timeout_reason(), "cancelled at its deadline");
                done.push(delivery);
                "cancelled"
            }
            Fate::AlreadyFinal => {
                tracing::debug!(entity_id = %id, kind = kind.as_str(), "already settled, timer ignored");
                done.push(delivery);
                "noop"
            }
            Fate::NotYetDue(ms_left) => {
                routes.push((delivery, Disposition::Rearm(ms_left)));
                "rearmed"
            }
            Fate::Reminded(ms_left) => {
                tracing::info!(entity_id = %id, kind = kind.as_str(), ms_left, "reminded before its deadline");
                routes.push((delivery, Disposition::Rearm(ms_left)));
                "reminded"
            }
            Fate::NotFound => {
                routes.push((
                    delivery,
                    Disposition::Permanent(format!("no {} with id {id}", kind.as_str())),
                ));
                "failed"
            }
        };
        metrics::counter!("order_timeout_deliveries_total", "outcome" => outcome).increment(1);
    }
    let cancelled = fates
        .values()
        .filter(|fate| **fate == Fate::Cancelled)
        .count() as u64;
    metrics::counter!("order_timeout_cancelled_total", "kind" => kind.as_str(), "reason" => kind.timeout_reason()).increment(cancelled);
}

/// Routes for every delivery of a batch whose cancel failed: retry tiers for a transient
/// error, the failed-message store for a permanent one. They are routed all at once, so
/// a slow failure path (each store attempt waiting for its timeout) does not serialise.
fn routes_after_store_error(
    batch: Vec<(Uuid, Delivery)>,
    error: &StoreError,
) -> Vec<(Delivery, Disposition)> {
    batch
        .into_iter()
        .map(|(id, delivery)| {
            tracing::warn!(entity_id = %id, %error, class = error.class().as_str(), "cancel failed");
            metrics::counter!("order_timeout_deliveries_total", "outcome" => "error").increment(1);
            let disposition = match error.class() {
                crate::store::ErrorClass::Transient => Disposition::Transient(error.to_string()),
                crate::store::ErrorClass::Permanent => Disposition::Permanent(error.to_string()),
            };
            (delivery, disposition)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_timer_ahead_of_its_deadline_by_at_most_the_cap_waits_for_it_any_other_goes_at_once() {
        let cap = Duration::from_millis(35);
        let now = 1_700_000_000_000_000;
        assert_eq!(
            hold_time(Some(now + 24_500), now, cap),
            Some(Duration::from_micros(24_500))
        );
        assert_eq!(hold_time(Some(now + 35_000), now, cap), Some(cap));
        assert_eq!(
            hold_time(Some(now + 35_001), now, cap),
            None,
            "beyond the cap"
        );
        assert_eq!(hold_time(Some(now), now, cap), None, "due now");
        assert_eq!(hold_time(Some(now - 5_000), now, cap), None, "already due");
        assert_eq!(hold_time(None, now, cap), None, "no deadline header");
        assert_eq!(hold_time(Some(i64::MIN), now, cap), None, "absurd header");
        assert_eq!(hold_time(Some(i64::MAX), now, cap), None, "absurd header");
    }
}
