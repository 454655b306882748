//! Publishing with confirms, one channel per publisher role, one call at a time per
//! channel.
//!
//! Why: lapin hands a `basic.return` to whichever publisher confirm it completes next
//! on the channel, not to the confirm of the returned message
//! (`tests/api/broker_publish.rs` shows it happen). Two tasks publishing on one channel
//! can therefore see each other's outcome: an unroutable re-arm could look confirmed and
//! its delivery be acked, losing the timer. So each role (relay, retry router, admin
//! requeue) has its own channel, and a call holds its channel until every confirm of
//! its messages has arrived. RabbitMQ sends a message's `basic.return` before its
//! `basic.ack` on the same channel, so when the last confirm of a call has completed,
//! every return of that call has been attached to one of the call's own confirms: the
//! returns the call collects are exactly its own messages, identified by routing key.
//!
//! A call that fails midway (timeout, channel error) may leave confirms or returns in
//! flight; its channel is thrown away and the next call opens a fresh one.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Outgoing, PublishError};

/// Who publishes; each role has a channel of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    /// The outbox relay: timers and domain events, in batches.
    Relay,
    /// The retry router and the re-arm of early timers (from concurrent consumer batches).
    Retry,
    /// The admin API's requeues and the parking replay.
    Admin,
}

/// The lazily opened channel of each role, on the publishing connection.
#[derive(Default)]
pub(super) struct PublisherChannels {
    /// `None` until first used, and again after a call failed midway.
    slots: [Mutex<Option<Channel>>; 3],
}

impl PublisherChannels {
    fn slot(&self, role: Publisher) -> &Mutex<Option<Channel>> {
        &self.slots[role as usize]
    }

    /// Publishes `messages` on `role`'s channel and waits for every confirm, all within
    /// `limit` (waiting for another call of the same role included).
    pub(super) async fn publish(
        &self,
        connection: &Connection,
        role: Publisher,
        messages: &[Outgoing<'_>],
        limit: Duration,
    ) -> Result<(), PublishError> {
        let deadline = Instant::now() + limit;
        let mut slot = tokio::time::timeout_at(deadline, self.slot(role).lock())
            .await
            .map_err(|_| PublishError::Timeout(limit))?;
        let outcome = tokio::time::timeout_at(deadline, async {
            let channel = open_if_needed(&mut slot, connection).await?;
            publish_and_confirm(&channel, messages).await
        })
        .await
        .unwrap_or(Err(PublishError::Timeout(limit)));
        // Nacks and returns are complete outcomes; anything else may leave confirms in
        // flight that must not reach the next call.
        if !matches!(
            outcome,
            Ok(()) | Err(PublishError::Nacked | PublishError::Unroutable { .. })
        ) && let Some(channel) = slot.take()
        {
            tokio::spawn(async move { channel.close(200, "discarded".into()).await });
        }
        outcome
    }
}

async fn open_if_needed(
    slot: &mut Option<Channel>,
    connection: &Connection,
) -> Result<Channel, PublishError> {
    if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
        return Ok(channel.clone());
    }
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    *slot = Some(channel.clone());
    Ok(channel)
}

/// Hands every message to lapin before awaiting any confirm (pipelined: one round trip
/// per call, not per message), then collects every confirm and every return.
async fn publish_and_confirm(
    channel: &Channel,
    messages: &[Outgoing<'_>],
) -> Result<(), PublishError> {
    // The futures are first polled in order, so the messages keep their order.
    let publishes = messages.iter().map(|message| {
        channel.basic_publish(
            message.exchange.into(),
            message.routing_key.into(),
            BasicPublishOptions {
                mandatory: message.mandatory,
                ..Default::default()
            },
            message.body,
            message.properties.to_amqp(),
        )
    });
    let confirms = futures_util::future::try_join_all(publishes).await?;
    let mut returned = Vec::new();
    let mut reply = String::new();
    let mut nacked = false;
    for confirm in confirms {
        let message = match confirm.await? {
            Confirmation::Ack(message) => message,
            Confirmation::Nack(message) => {
                nacked = true;
                message
            }
            Confirmation::NotRequested => return Err(PublishError::Nacked),
        };
        if let Some(message) = message {
            returned.push(message.delivery.routing_key.to_string());
            reply = message.reply_text.to_string();
        }
    }
    if !returned.is_empty() {
        return Err(PublishError::Unroutable {
            routing_keys: returned,
            reply,
        });
    }
    if nacked {
        return Err(PublishError::Nacked);
    }
    Ok(())
}
