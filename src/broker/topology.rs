//! The one table of exchange and queue names, derived from `QUEUE_PREFIX`, and the code
//! that declares them. The declarer, the publishers, the admin requeue and the tests all
//! use these names, so they cannot disagree.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::domain::EntityKind;

/// Routing key under which the delay exchange routes to the due queue.
const DUE_ROUTING_KEY: &str = "due";

/// Classic queues for a single broker, quorum queues for a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// One node's queue; the default.
    Classic,
    /// Replicated queue with at-least-once dead-lettering, for clusters.
    Quorum,
}

/// Every name of the topology and the parameters that shape it.
#[derive(Debug, Clone)]
pub struct Topology {
    /// First part of every name.
    pub prefix: String,
    /// Direct exchange the timer queues dead-letter into; routes to the due queue.
    pub delay_exchange: String,
    /// Topic exchange of the domain events.
    pub events_exchange: String,
    /// Queue of timers whose deadline has come, consumed by the cancelling consumer.
    pub due_queue: String,
    /// Where messages go when even the failed-message store is down.
    pub parking_queue: String,
    /// Cache buckets this instance publishes into: kind and timeout in milliseconds.
    pub buckets: Vec<(EntityKind, u64)>,
    /// Delays of the retry tiers, in milliseconds, in order.
    pub retry_delays_ms: Vec<u64>,
    /// Fixed TTLs of the re-arm levels: powers of two milliseconds, ascending.
    pub levels_ms: Vec<u64>,
    /// Classic or quorum.
    pub queue_type: QueueType,
    /// How much shorter than the time left a timer's TTL in its cache bucket is
    /// (`TIMER_LEAD`), in milliseconds; the due consumer holds it for the rest.
    pub timer_lead_ms: u64,
}

impl Topology {
    /// Derives every name from the prefix; levels reach the longest timeout or
    /// `max_timeout` (an extended deadline), whichever is longer, so a re-armed timer
    /// needs at most one hop per level (about 30 for 7 days).
    pub fn new(
        prefix: &str,
        timeouts: &[(EntityKind, Duration)],
        max_timeout: Duration,
        retry_delays: &[Duration],
        queue_type: QueueType,
    ) -> Self {
        let longest = timeouts
            .iter()
            .map(|(_, t)| t.as_millis() as u64)
            .chain([max_timeout.as_millis() as u64])
            .max()
            .unwrap_or(1)
            .max(1024);
        let levels_ms = (0..63)
            .map(|exp| 1u64 << exp)
            .take_while(|level| *level <= longest)
            .collect();
        Self {
            prefix: prefix.to_owned(),
            delay_exchange: format!("{prefix}.delay"),
            events_exchange: format!("{prefix}.events"),
            due_queue: format!("{prefix}.due"),
            parking_queue: format!("{prefix}.parking"),
            buckets: timeouts
                .iter()
                .map(|(kind, t)| (*kind, t.as_millis() as u64))
                .collect(),
            retry_delays_ms: retry_delays.iter().map(|d| d.as_millis() as u64).collect(),
            levels_ms,
            queue_type,
            timer_lead_ms: 0,
        }
    }

    /// The same topology with timers leaving their cache bucket `lead` before their
    /// deadline (`TIMER_LEAD`; none by default).
    pub fn with_timer_lead(self, lead: Duration) -> Self {
        Self {
            timer_lead_ms: u64::try_from(lead.as_millis()).unwrap_or(u64::MAX),
            ..self
        }
    }

    /// The cache queue of a bucket named `kind.timeout_ms` (as stored in the outbox).
    pub fn cache_queue(&self, bucket: &str) -> String {
        format!("{}.cache.{bucket}", self.prefix)
    }

    /// Whether `bucket` (as stored in the outbox, `kind.timeout_ms`) is one this topology
    /// declares a cache queue for. Any other timer (a client's own timeout, a reminder
    /// after an extension, a bucket of an earlier configuration) goes through the delay
    /// levels instead, so clients cannot make the service declare queues.
    pub fn is_cache_bucket(&self, bucket: &str) -> bool {
        self.buckets
            .iter()
            .any(|(kind, ms)| bucket.strip_prefix(kind.as_str()) == Some(&format!(".{ms}")))
    }

    /// The retry queue of a delay.
    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}.retry.{delay_ms}", self.prefix)
    }

    /// The re-arm level queue of a TTL.
    pub fn level_queue(&self, ttl_ms: u64) -> String {
        format!("{}.level.{ttl_ms}", self.prefix)
    }

    /// The largest level not longer than `ms_left` (at least the shortest level).
    pub fn level_for(&self, ms_left: u64) -> u64 {
        self.levels_ms
            .iter()
            .copied()
            .rev()
            .find(|level| *level <= ms_left)
            .unwrap_or(1)
    }

    /// Every queue this topology declares, for inspection and clean-up.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![self.due_queue.clone(), self.parking_queue.clone()];
        queues.extend(
            self.buckets
                .iter()
                .map(|(kind, ms)| self.cache_queue(&format!("{}.{ms}", kind.as_str()))),
        );
        queues.extend(self.retry_delays_ms.iter().map(|ms| self.retry_queue(*ms)));
        queues.extend(self.levels_ms.iter().map(|ms| self.level_queue(*ms)));
        queues
    }

    /// Declares exchanges, queues and bindings; idempotent, run on every (re)connect.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.delay_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.events_exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        self.declare_queue(channel, &self.due_queue, QueueArgs::Plain)
            .await?;
        channel
            .queue_bind(
                self.due_queue.as_str().into(),
                self.delay_exchange.as_str().into(),
                DUE_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.declare_queue(channel, &self.parking_queue, QueueArgs::Plain)
            .await?;
        for (kind, ms) in &self.buckets {
            self.declare_cache_queue(channel, &format!("{}.{ms}", kind.as_str()))
                .await?;
        }
        for ms in &self.retry_delays_ms {
            self.declare_queue(
                channel,
                &self.retry_queue(*ms),
                QueueArgs::DeadLetterAfter(Some(*ms)),
            )
            .await?;
        }
        for ms in &self.levels_ms {
            self.declare_queue(
                channel,
                &self.level_queue(*ms),
                QueueArgs::DeadLetterAfter(Some(*ms)),
            )
            .await?;
        }
        Ok(())
    }

    /// Declares the cache queue of one bucket: per-message TTL, dead-lettering to the due queue.
    pub async fn declare_cache_queue(&self, channel: &Channel, bucket: &str) -> lapin::Result<()> {
        self.declare_queue(
            channel,
            &self.cache_queue(bucket),
            QueueArgs::DeadLetterAfter(None),
        )
        .await
    }

    async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        args: QueueArgs,
    ) -> lapin::Result<()> {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.into(), options, self.queue_arguments(args))
            .await?;
        Ok(())
    }

    fn queue_arguments(&self, args: QueueArgs) -> FieldTable {
        let mut table = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            table.insert("x-queue-type".into(), text("quorum"));
        }
        if let QueueArgs::DeadLetterAfter(ttl) = args {
            table.insert("x-dead-letter-exchange".into(), text(&self.delay_exchange));
            table.insert("x-dead-letter-routing-key".into(), text(DUE_ROUTING_KEY));
            if let Some(ms) = ttl {
                table.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
            }
            if self.queue_type == QueueType::Quorum {
                // At-least-once dead-lettering needs reject-publish overflow.
                table.insert("x-dead-letter-strategy".into(), text("at-least-once"));
                table.insert("x-overflow".into(), text("reject-publish"));
            }
        }
        table
    }
}

/// The shape of a queue's arguments.
#[derive(Debug, Clone, Copy)]
enum QueueArgs {
    /// No dead-lettering (due, parking).
    Plain,
    /// Dead-letters into the due queue when messages expire; a fixed TTL when given.
    DeadLetterAfter(Option<u64>),
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::new(
            "p",
            &[
                (EntityKind::Order, Duration::from_secs(2)),
                (EntityKind::Waybill, Duration::from_secs(3)),
            ],
            Duration::from_secs(2),
            &[Duration::from_secs(1), Duration::from_secs(5)],
            QueueType::Classic,
        )
    }

    #[test]
    fn names_start_with_the_prefix_and_carry_their_parameter() {
        let t = topology();
        assert_eq!(t.cache_queue("order.2000"), "p.cache.order.2000");
        assert_eq!(t.retry_queue(5000), "p.retry.5000");
        assert!(t.all_queues().iter().all(|q| q.starts_with("p.")));
        assert!(t.all_queues().contains(&"p.cache.waybill.3000".to_owned()));
    }

    #[test]
    fn only_configured_buckets_are_cache_buckets() {
        let t = topology();
        assert!(t.is_cache_bucket("order.2000"));
        assert!(t.is_cache_bucket("waybill.3000"));
        assert!(!t.is_cache_bucket("order.3000"));
        assert!(!t.is_cache_bucket("order.own"));
        assert!(!t.is_cache_bucket("order.20001"));
    }

    #[test]
    fn levels_are_powers_of_two_up_to_the_longest_timeout() {
        let t = topology();
        assert_eq!(t.levels_ms.first(), Some(&1));
        assert_eq!(t.levels_ms.last(), Some(&2048));
        assert_eq!(t.level_for(1500), 1024);
        assert_eq!(t.level_for(1024), 1024);
        assert_eq!(t.level_for(0), 1);
        assert_eq!(t.level_for(1_000_000), 2048);
    }
}
