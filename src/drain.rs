//! Empties the queues of an earlier deployment (another `QUEUE_PREFIX`) into this one's
//! due queue, so a running system switches from classic to quorum queues without losing
//! a pending timer: the new instances run with a new `QUEUE_PREFIX` and
//! `DRAIN_QUEUE_PREFIX` = the old one, the old instances stop, and every timer left in
//! the old cache, level, retry, due and parking queues is moved here (each republished
//! with a confirm, then acked in the old queue). A timer moved before its deadline is
//! re-armed by the consumer through this deployment's delay levels, a due one is
//! cancelled at once (docs/architecture.md rule 4).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Topology};

/// How often the earlier deployment's queues are emptied: a timer that expires there
/// is cancelled at most this late.
const DRAIN_INTERVAL: Duration = Duration::from_secs(1);

/// Moves the messages of every queue of `earlier` to the due queue every
/// `DRAIN_INTERVAL` until `shutdown`. A queue that does not exist (any more) is skipped.
pub async fn run(broker: Broker, earlier: Topology, shutdown: CancellationToken) {
    tracing::info!(prefix = %earlier.prefix, "draining the queues of the earlier deployment");
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !broker.is_connected() {
            continue;
        }
        for queue in earlier.all_queues() {
            match crate::retry::move_to_due(&broker, &queue).await {
                Ok(0) => {}
                Ok(moved) => {
                    tracing::info!(%queue, moved, "timers of the earlier deployment moved to the due queue");
                }
                Err(error) => tracing::debug!(%queue, %error, "queue not drained"),
            }
        }
    }
}
