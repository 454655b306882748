//! The burst's baseline: what RabbitMQ alone does with the same burst, no database and no
//! service. Persistent messages whose per-message TTLs end in the same second wait in a
//! durable queue, dead-letter into a second queue at their deadline, and a consumer with
//! the service's prefetch takes them and acknowledges each ready chunk with one multiple
//! ack. The time from the start of the second to the last delivery bounds how fast any
//! consumer on this machine can see the burst.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use serde::Serialize;
use tokio::time::Instant;

use super::cpu::{self, CpuPerOp, Targets};
use super::load::{self, Latency};
use order_timeout::broker::PERSISTENT;

/// Messages published between two waits for confirms.
const PUBLISH_CHUNK: usize = 1000;

/// Figures of the broker-only burst.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerBaseline {
    /// Messages in the burst.
    pub messages: u64,
    /// Prefetch of the consumer.
    pub prefetch: u16,
    /// How long publishing them with confirms took, in seconds.
    pub publish_s: f64,
    /// From the start of the second to the last delivery, in seconds.
    pub all_delivered_after_s: f64,
    /// Deliveries per second, from the start of the second to the last one.
    pub per_second: f64,
    /// CPU per delivered message from the start of the second to the last delivery
    /// (RabbitMQ's, and the bench's consumer as the client).
    pub cpu: CpuPerOp,
}

/// Runs the broker-only burst in queues named after `prefix`, deleted afterwards.
pub async fn burst(
    amqp_url: &str,
    prefix: &str,
    count: u64,
    lead: Duration,
    prefetch: u16,
    targets: &Targets,
) -> anyhow::Result<BrokerBaseline> {
    let queues = Queues::declare(amqp_url, &format!("{prefix}.bench")).await?;
    let result = run(&queues, count, lead, prefetch, targets).await;
    queues.remove().await;
    result
}

/// A baseline's pair of durable queues on a connection of its own: `waiting` holds
/// messages until their per-message TTL ends, then dead-letters them into `due`.
struct Queues {
    connection: Connection,
    channel: Channel,
    waiting: String,
    due: String,
}

impl Queues {
    /// Connects and declares `{name}.waiting` and `{name}.due`.
    async fn declare(amqp_url: &str, name: &str) -> lapin::Result<Self> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let (waiting, due) = (format!("{name}.waiting"), format!("{name}.due"));
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(due.as_str().into(), durable, FieldTable::default())
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(due.as_str())),
        );
        channel
            .queue_declare(waiting.as_str().into(), durable, arguments)
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
            waiting,
            due,
        })
    }

    /// Publishes one persistent message into `waiting` that expires after `ttl_ms`; the
    /// channel is in confirm mode, and the returned confirm says when the broker has it.
    async fn publish_expiring(&self, body: &[u8], ttl_ms: u128) -> lapin::Result<PublisherConfirm> {
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_expiration(ttl_ms.to_string().into());
        self.channel
            .basic_publish(
                "".into(),
                self.waiting.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
    }

    /// A channel of its own with `prefetch`, consuming `due` as `tag`.
    async fn consume(&self, tag: &str, prefetch: u16) -> lapin::Result<(Channel, lapin::Consumer)> {
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.due.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    /// Deletes both queues and closes the connection; failures are ignored (the bench's
    /// prefix is removed at the end anyway).
    async fn remove(self) {
        for queue in [&self.waiting, &self.due] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

async fn run(
    queues: &Queues,
    count: u64,
    lead: Duration,
    prefetch: u16,
    targets: &Targets,
) -> anyhow::Result<BrokerBaseline> {
    let second = Instant::now() + lead;
    let started = Instant::now();
    publish(queues, second, count).await?;
    let window = cpu::track_from(targets.clone(), second);
    let publish_s = started.elapsed().as_secs_f64();
    let (consuming, consumer) = queues.consume("bench-baseline", prefetch).await?;
    let bar = load::bar(
        "broker",
        &format!("{count} messages dead-lettered in one second, no database"),
        count,
    );
    let mut chunks = consumer.ready_chunks(usize::from(prefetch));
    let mut delivered = 0_u64;
    let limit = second + Duration::from_secs(120);
    while delivered < count {
        let chunk = match tokio::time::timeout_at(limit, chunks.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => anyhow::bail!(
                "the broker ended the baseline's consumer after {delivered} deliveries"
            ),
            Err(_) => break,
        };
        let Some(last) = chunk.iter().rev().find_map(|d| d.as_ref().ok()) else {
            continue;
        };
        consuming
            .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await?;
        delivered += chunk.len() as u64;
        bar.set_position(delivered);
    }
    bar.finish();
    let after = Instant::now()
        .saturating_duration_since(second)
        .as_secs_f64();
    Ok(BrokerBaseline {
        messages: count,
        prefetch,
        publish_s,
        all_delivered_after_s: after,
        per_second: delivered as f64 / after.max(1e-9),
        cpu: cpu::finish_window(window, delivered).await,
    })
}

/// Publishes `count` persistent messages expiring evenly over the second at `second`.
async fn publish(queues: &Queues, second: Instant, count: u64) -> anyhow::Result<()> {
    let body = br#"{"kind":"order","id":"00000000-0000-0000-0000-000000000000"}"#;
    let mut n = 0;
    while n < count {
        let mut confirms = Vec::with_capacity(PUBLISH_CHUNK);
        for _ in 0..PUBLISH_CHUNK.min((count - n) as usize) {
            let due = second + Duration::from_secs_f64(n as f64 / count as f64);
            let ms_left = due
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1);
            confirms.push(queues.publish_expiring(body, ms_left));
            n += 1;
        }
        for confirm in futures_util::future::try_join_all(confirms).await? {
            confirm.await?;
        }
    }
    Ok(())
}

/// Figures of the broker-only lateness run.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerLateness {
    /// Messages published.
    pub messages: u64,
    /// The rate they were published at, per second.
    pub rate: u64,
    /// Each message's TTL, in milliseconds.
    pub ttl_ms: u64,
    /// From each message's deadline (its publish plus its TTL) to its delivery.
    pub lateness: Latency,
}

/// The lateness phase's baseline: `count` persistent messages published at `rate` per
/// second into a durable queue with a per-message TTL, dead-lettered into a second queue
/// whose consumer (the service's prefetch) notes how long after its deadline each arrived,
/// on this process's monotonic clock. No database, no service: how late RabbitMQ alone
/// delivers deadlines at this rate on this machine.
pub async fn lateness(
    amqp_url: &str,
    prefix: &str,
    count: u64,
    rate: u64,
    ttl: Duration,
    prefetch: u16,
) -> anyhow::Result<BrokerLateness> {
    let queues = Queues::declare(amqp_url, &format!("{prefix}.bench.lateness")).await?;
    let result = lateness_run(&queues, count, rate, ttl, prefetch).await;
    queues.remove().await;
    result
}

async fn lateness_run(
    queues: &Queues,
    count: u64,
    rate: u64,
    ttl: Duration,
    prefetch: u16,
) -> anyhow::Result<BrokerLateness> {
    let base = Instant::now();
    let (consuming, consumer) = queues.consume("bench-lateness-baseline", prefetch).await?;
    let bar = load::bar(
        "broker",
        &format!("{count} deadlines at {rate}/s, RabbitMQ alone"),
        count,
    );
    let receiving = tokio::spawn({
        let bar = bar.clone();
        async move {
            let mut histogram = load::histogram();
            let mut chunks = consumer.ready_chunks(usize::from(prefetch));
            let limit = base
                + ttl
                + Duration::from_secs_f64(count as f64 / rate.max(1) as f64)
                + Duration::from_secs(60);
            while histogram.len() < count {
                let Ok(Some(chunk)) = tokio::time::timeout_at(limit, chunks.next()).await else {
                    break;
                };
                let arrived = Instant::now();
                let mut last = None;
                for delivery in chunk.iter().filter_map(|d| d.as_ref().ok()) {
                    let deadline_us = delivery
                        .data
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_le_bytes)
                        .unwrap_or(0);
                    let deadline = base + Duration::from_micros(deadline_us);
                    load::record(&mut histogram, arrived.saturating_duration_since(deadline));
                    last = Some(delivery.delivery_tag);
                }
                if let Some(last) = last {
                    consuming
                        .basic_ack(last, BasicAckOptions { multiple: true })
                        .await?;
                }
                bar.set_position(histogram.len());
            }
            anyhow::Ok(histogram)
        }
    });
    let ttl_ms = ttl.as_millis().max(1);
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut confirms = Vec::with_capacity(count as usize);
    for n in 0..count {
        tokio::time::sleep_until(base + period.mul_f64(n as f64)).await;
        // The TTL starts when the broker takes the message, a moment after this.
        let deadline = base.elapsed() + ttl;
        let body = (deadline.as_micros() as u64).to_le_bytes();
        confirms.push(queues.publish_expiring(&body, ttl_ms).await?);
    }
    for confirm in confirms {
        confirm.await?;
    }
    let histogram = receiving.await??;
    bar.finish();
    Ok(BrokerLateness {
        messages: count,
        rate,
        ttl_ms: ttl_ms as u64,
        lateness: Latency::of(&histogram),
    })
}
