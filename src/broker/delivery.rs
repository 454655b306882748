//! The service's own message types: the properties of a message to publish
//! ([`Properties`]) and a received message with its ack handle ([`Delivery`]). The rest of
//! the service reads and acks messages through them; lapin's types stay in `broker`.

use lapin::Acker;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use super::headers::Headers;
use super::{BrokerError, PERSISTENT};

/// The properties of a message: what the service sets when it publishes and reads when
/// it receives. Other AMQP properties are neither set nor kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// Written to disk by the broker (delivery mode 2); every message of ours is.
    pub persistent: bool,
    /// A timer's entity id, an event's `routing_key:entity_id`: consumers dedupe on it.
    pub message_id: Option<String>,
    /// `application/json` for what the relay publishes.
    pub content_type: Option<String>,
    /// Seconds since the Unix epoch when first published.
    pub timestamp: Option<u64>,
    /// Per-message TTL in milliseconds: only timers in their cache bucket carry one.
    pub expiration_ms: Option<u64>,
    /// Headers; `None` sends no header table at all (events), unlike an empty one.
    pub headers: Option<Headers>,
}

impl Properties {
    /// Persistent, nothing else set.
    pub fn persistent() -> Self {
        Self {
            persistent: true,
            ..Self::default()
        }
    }

    /// The AMQP properties to publish with.
    pub(super) fn to_amqp(&self) -> BasicProperties {
        let mut properties = BasicProperties::default();
        if self.persistent {
            properties = properties.with_delivery_mode(PERSISTENT);
        }
        if let Some(id) = &self.message_id {
            properties = properties.with_message_id(id.as_str().into());
        }
        if let Some(content_type) = &self.content_type {
            properties = properties.with_content_type(content_type.as_str().into());
        }
        if let Some(timestamp) = self.timestamp {
            properties = properties.with_timestamp(timestamp);
        }
        if let Some(ms) = self.expiration_ms {
            properties = properties.with_expiration(ms.to_string().into());
        }
        if let Some(headers) = &self.headers {
            properties = properties.with_headers(headers.to_table());
        }
        properties
    }

    /// The properties of a received message.
    fn from_amqp(properties: &BasicProperties) -> Self {
        Self {
            persistent: *properties.delivery_mode() == Some(PERSISTENT),
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            content_type: properties.content_type().as_ref().map(|t| t.to_string()),
            timestamp: *properties.timestamp(),
            expiration_ms: properties
                .expiration()
                .as_ref()
                .and_then(|ms| ms.as_str().parse().ok()),
            headers: properties.headers().clone().map(Headers::from_table),
        }
    }
}

/// A message received from a queue (consumed or fetched), with its ack handle: the
/// broker holds it until [`Delivery::ack`] or [`Delivery::nack`].
#[derive(Debug)]
pub struct Delivery {
    /// Its tag on the channel it came on; a multiple ack names the last tag it covers.
    pub tag: u64,
    /// The exchange it was published to (`""`: the default exchange), stored with a
    /// failed message.
    pub exchange: String,
    /// Its routing key, stored with a failed message.
    pub routing_key: String,
    /// The broker delivered it before (a consumer died or nacked it): handlers are
    /// idempotent anyway.
    pub redelivered: bool,
    /// Its properties and headers.
    pub properties: Properties,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Acks or nacks it on the channel it came on.
    acker: Acker,
}

impl Delivery {
    /// Wraps a lapin delivery.
    pub(super) fn from_amqp(delivery: lapin::message::Delivery) -> Self {
        Self {
            tag: delivery.delivery_tag,
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            properties: Properties::from_amqp(&delivery.properties),
            body: delivery.data,
            acker: delivery.acker,
        }
    }

    /// Its message id, `""` when it has none (for logs and spans).
    pub fn message_id(&self) -> &str {
        self.properties.message_id.as_deref().unwrap_or_default()
    }

    /// A copy of its headers (empty when it has none), to change for a republish.
    pub fn headers(&self) -> Headers {
        self.properties.headers.clone().unwrap_or_default()
    }

    /// Tells the broker it is handled: it is gone from the queue.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Hands it back: to the head of its queue with `requeue`, else dropped (or
    /// dead-lettered when the queue has a dead-letter exchange).
    pub async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue,
            ..Default::default()
        };
        self.acker.nack(options).await?;
        Ok(())
    }
}
