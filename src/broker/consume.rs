//! Reading from queues, all on the consuming connection: a consumer with its prefetch
//! ([`Session::consume`]), one-off fetches ([`QueueReader`], the parking replay) and
//! queue depths by passive declare ([`Broker::queue_stats`]).

use futures_util::{Stream, StreamExt};
use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use uuid::Uuid;

use super::delivery::Delivery;
use super::{Broker, BrokerError, Session};

impl Session {
    /// Consumes `queue` on a channel of its own with `prefetch` unacked deliveries at
    /// most (the qos is set before the consume, so the window holds from the start).
    pub async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        let channel = self.consuming.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("order-timeout-{}", Uuid::now_v7());
        let deliveries = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer {
            channel: ConsumerChannel { channel, tag },
            deliveries,
        })
    }
}

/// A running consumer: its deliveries and the channel they came on.
pub struct Consumer {
    /// Multiple acks and the cancel.
    channel: ConsumerChannel,
    /// lapin's stream of deliveries.
    deliveries: lapin::Consumer,
}

impl Consumer {
    /// The stream of deliveries (a failed one is an error item) and the handle of their
    /// channel.
    pub fn split(
        self,
    ) -> (
        impl Stream<Item = Result<Delivery, BrokerError>> + Send,
        ConsumerChannel,
    ) {
        let deliveries = self
            .deliveries
            .map(|item| item.map(Delivery::from_amqp).map_err(BrokerError::from));
        (deliveries, self.channel)
    }
}

/// The channel of a consumer: what is done for several of its deliveries at once.
#[derive(Clone)]
pub struct ConsumerChannel {
    /// The channel; delivery tags are numbered per channel.
    channel: Channel,
    /// The consumer tag, to cancel it.
    tag: String,
}

impl ConsumerChannel {
    /// One multiple ack: every unacked delivery up to and including `tag`.
    pub async fn ack_up_to(&self, tag: u64) -> Result<(), BrokerError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
        Ok(())
    }

    /// Cancels the consumer and closes its channel (its unacked deliveries go back to
    /// the queue); errors are ignored, the channel may be gone already.
    pub async fn stop(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let _ = self.channel.close(200, "shutting down".into()).await;
    }
}

/// Messages taken from a queue one at a time (`basic.get`), on a channel of its own.
pub struct QueueReader {
    /// The reader's own channel: a failure closes it, nobody else's.
    channel: Channel,
    /// The queue read.
    queue: String,
    /// Messages ready when the reader was opened.
    ready: u32,
}

impl QueueReader {
    /// How many messages were ready when the reader was opened: a replay takes no more,
    /// so messages that arrive meanwhile wait for the next one.
    pub fn ready(&self) -> u32 {
        self.ready
    }

    /// The next message, `None` when the queue is empty; it stays unacked (and
    /// invisible to others) until acked or nacked.
    pub async fn get(&self) -> Result<Option<Delivery>, BrokerError> {
        let message = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await?;
        Ok(message.map(|message| Delivery::from_amqp(message.delivery)))
    }

    /// Closes the channel; messages got and not acked go back to the queue.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

/// What a passive declare says about a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready (not counting those delivered and unacked).
    pub messages: u32,
    /// Consumers on it.
    pub consumers: u32,
}

/// Asks the broker about `queue` without declaring it; a missing queue closes `channel`.
async fn passive_declare(channel: &Channel, queue: &str) -> Result<QueueStats, BrokerError> {
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(QueueStats {
        messages: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}

impl Broker {
    /// How many ready messages `queue` holds: a passive declare on a channel of its own
    /// (a missing queue closes that channel, not a shared one).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let channel = self.channel().await?;
        let stats = passive_declare(&channel, queue).await;
        let _ = channel.close(200, "depth read".into()).await;
        Ok(stats?.messages)
    }

    /// The stats of each of `queues`, in order, read on one channel of their own that is
    /// opened again after each missing queue (whose passive declare closes it). Fails as
    /// a whole only when no channel can be opened.
    pub async fn queue_stats(
        &self,
        queues: &[String],
    ) -> Result<Vec<Result<QueueStats, BrokerError>>, BrokerError> {
        let mut channel = self.channel().await?;
        let mut stats = Vec::with_capacity(queues.len());
        for queue in queues {
            let read = passive_declare(&channel, queue).await;
            if read.is_err() {
                channel = self.channel().await?;
            }
            stats.push(read);
        }
        let _ = channel.close(200, "read".into()).await;
        Ok(stats)
    }

    /// A reader of `queue`, which must exist, with the number of messages ready now.
    pub async fn read_queue(&self, queue: &str) -> Result<QueueReader, BrokerError> {
        let channel = self.channel().await?;
        let ready = passive_declare(&channel, queue).await?.messages;
        Ok(QueueReader {
            channel,
            queue: queue.to_owned(),
            ready,
        })
    }

    /// Opens a fresh channel on the consuming connection, for a one-off operation.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let session = self
            .session
            .borrow()
            .clone()
            .ok_or(BrokerError::NotConnected)?;
        Ok(session.consuming.create_channel().await?)
    }
}
