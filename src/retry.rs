//! Where a delivery goes when it was not simply handled: re-armed through a delay level,
//! retried through a retry tier, stored as failed, or parked. Every path publishes with
//! a confirm before the original is acked; when no safe home is reachable the delivery is
//! nacked back after a pause, never acked (docs/architecture.md rules 4, 6, 7).

use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;

use crate::alert::{Alert, Alerter};
use crate::broker::headers::{self, FIRST_FAILED_AT, LAST_ERROR, RETRY_COUNT};
use crate::broker::{Broker, Outgoing, PERSISTENT, Publisher};
use crate::store::CallLimit;
use crate::store::ErrorClass;
use crate::store::failed::{self, NewFailure};

/// Pause before a delivery with no reachable home is handed back to the broker.
const NO_HOME_PAUSE: Duration = Duration::from_secs(1);
/// Header naming the queue a parked message came from.
pub const PARKED_FROM: &str = "x-parked-from";

/// What should become of a delivery.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// It came this many milliseconds before its deadline: wait again.
    Rearm(u64),
    /// Handling failed for a reason that may go away.
    Transient(String),
    /// Handling can never succeed.
    Permanent(String),
}

impl Disposition {
    /// A short name for logs and spans.
    pub fn label(&self) -> &'static str {
        match self {
            Disposition::Rearm(_) => "rearm",
            Disposition::Transient(_) => "transient",
            Disposition::Permanent(_) => "permanent",
        }
    }
}

/// Routes the deliveries the consumer could not simply ack to their next queue (delay
/// level, retry tier, parking) or to the failed-message store.
pub struct DeliveryRouter {
    /// For the failed-message store.
    pub pool: PgPool,
    /// For the delay, retry and parking queues.
    pub broker: Broker,
    /// Tells an operator about final failures.
    pub alerter: Alerter,
    /// Bounds the failed-message insert, so a hung connection parks the message instead
    /// of holding it (and its batch) forever.
    pub call_limit: CallLimit,
    /// Most bytes of a body stored in `failed_messages` (FAILED_MESSAGE_MAX_BODY).
    pub failed_body_max: usize,
}

impl DeliveryRouter {
    /// Sends `delivery` where `disposition` says, then acks it (or nacks it back when
    /// nowhere is reachable). Its span names the message (a timer's message id is its
    /// entity's id) and the disposition.
    #[tracing::instrument(
        name = "route_delivery",
        skip_all,
        fields(message_id = %message_id(&delivery), disposition = disposition.label())
    )]
    pub async fn dispose(&self, delivery: Delivery, disposition: Disposition) {
        let id = message_id(&delivery);
        let homed = match disposition {
            Disposition::Rearm(ms_left) => self.rearm(&delivery, ms_left).await,
            Disposition::Transient(error) => {
                let attempts = headers::integer(delivery.properties.headers().as_ref(), RETRY_COUNT)
                    .unwrap_or(0)
                    .max(0) as usize;
                match self
                    .broker
                    .topology()
                    .retry_delays_ms
                    .get(attempts)
                    .copied()
                {
                    Some(delay_ms) => self.retry(&delivery, attempts, delay_ms, &error).await,
                    None => {
                        self.fail(&delivery, &error, ErrorClass::Transient, attempts + 1)
                            .await
                    }
                }
            }
            Disposition::Permanent(error) => {
                let attempts = headers::integer(delivery.properties.headers().as_ref(), RETRY_COUNT)
                    .unwrap_or(0)
                    .max(0) as usize;
                self.fail(&delivery, &error, ErrorClass::Permanent, attempts + 1)
                    .await
            }
        };
        if homed {
            if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                tracing::warn!(message_id = %id, %error, "ack failed after re-publishing; a duplicate will be harmless");
            }
        } else {
            tokio::time::sleep(NO_HOME_PAUSE).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(error) = delivery.nack(requeue).await {
                tracing::warn!(message_id = %id, %error, "nack failed; the broker redelivers on reconnect");
            }
            metrics::counter!("order_timeout_deliveries_total", "outcome" => "nacked").increment(1);
        }
    }

    async fn rearm(&self, delivery: &Delivery, ms_left: u64) -> bool {
        let topology = self.broker.topology();
        let level = topology.level_for(ms_left);
        let queue = topology.level_queue(level);
        let properties = republished(
            &delivery.properties,
            delivery.properties.headers().clone().unwrap_or_default(),
        );
        let published = self
            .publish_to_queue(&queue, &delivery.data, properties)
            .await;
        if published {
            tracing::info!(message_id = %message_id(delivery), ms_left, level, "early timer re-armed");
        }
        published
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        attempts: usize,
        delay_ms: u64,
        error: &str,
    ) -> bool {
        let queue = self.broker.topology().retry_queue(delay_ms);
        let mut table = delivery.properties.headers().clone().unwrap_or_default();
        table.insert(
            RETRY_COUNT.into(),
            AMQPValue::LongLongInt(attempts as i64 + 1),
        );
        table.insert(LAST_ERROR.into(), headers::long_string(&truncate(error)));
        if headers::integer(Some(&table), FIRST_FAILED_AT).is_none() {
            table.insert(
                FIRST_FAILED_AT.into(),
                AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
            );
        }
        let published = self
            .publish_to_queue(
                &queue,
                &delivery.data,
                republished(&delivery.properties, table),
            )
            .await;
        if published {
            let tier = (attempts + 1).to_string();
            metrics::counter!("order_timeout_retries_total", "tier" => tier).increment(1);
            tracing::info!(message_id = %message_id(delivery), tier = attempts + 1, delay_ms, %error, "sent to retry tier");
        }
        published
    }

    /// Stores the delivery in `failed_messages` and alerts; parks it when the store is down.
    async fn fail(
        &self,
        delivery: &Delivery,
        error: &str,
        class: ErrorClass,
        attempts: usize,
    ) -> bool {
        let table = delivery.properties.headers().clone().unwrap_or_default();
        let first_failed_at = headers::integer(Some(&table), FIRST_FAILED_AT)
            .and_then(chrono::DateTime::from_timestamp_millis);
        let failure = NewFailure {
            queue: self.broker.topology().due_queue.clone(),
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            headers: headers::to_json(&table),
            body: delivery.data[..delivery.data.len().min(self.failed_body_max)].to_vec(),
            body_size: delivery.data.len() as i64,
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            error: truncate(error),
            error_class: class,
            attempts: attempts as i32,
            first_failed_at,
        };
        let storing = failed::insert(&self.pool, &failure);
        match self.call_limit.run("failed_insert", storing).await {
            Ok(id) => {
                metrics::counter!("order_timeout_failed_messages_total", "class" => class.as_str())
                    .increment(1);
                tracing::error!(failed_message_id = %id, message_id = ?failure.message_id, class = class.as_str(), attempts, error, "message failed for good, stored for an operator");
                self.alerter.send(Alert {
                    queue: failure.queue,
                    message_id: failure.message_id,
                    error: failure.error,
                });
                true
            }
            Err(store_error) => {
                self.park(delivery, table, error, &store_error.to_string())
                    .await
            }
        }
    }

    async fn park(
        &self,
        delivery: &Delivery,
        mut table: FieldTable,
        error: &str,
        store_error: &str,
    ) -> bool {
        let topology = self.broker.topology();
        table.insert(LAST_ERROR.into(), headers::long_string(&truncate(error)));
        table.insert(
            PARKED_FROM.into(),
            headers::long_string(&topology.due_queue),
        );
        let published = self
            .publish_to_queue(
                &topology.parking_queue,
                &delivery.data,
                republished(&delivery.properties, table),
            )
            .await;
        if published {
            metrics::counter!("order_timeout_parked_total").increment(1);
            tracing::error!(message_id = %message_id(delivery), error, store_error, "failed-message store unreachable, message parked");
            self.alerter.send(Alert {
                queue: topology.parking_queue.clone(),
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string()),
                error: format!("parked: {error}"),
            });
        }
        published
    }

    async fn publish_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> bool {
        let message = Outgoing {
            exchange: "",
            routing_key: queue,
            body,
            properties,
            mandatory: true,
        };
        match self.broker.publish(Publisher::Retry, &[message]).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(queue, %error, "publish failed, delivery will be handed back");
                false
            }
        }
    }
}

/// The only headers a republished copy carries: the ones this service writes and reads.
const REPUBLISHED_HEADERS: [&str; 4] = [RETRY_COUNT, LAST_ERROR, FIRST_FAILED_AT, PARKED_FROM];

/// Properties for a republished copy: persistent, same id and type, no expiration, and
/// only our own headers (never a client's `CC`/`BCC` routing headers).
pub fn republished(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers::known_only(&headers, &REPUBLISHED_HEADERS));
    if let Some(id) = original.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    if let Some(content_type) = original.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    if let Some(timestamp) = original.timestamp() {
        properties = properties.with_timestamp(*timestamp);
    }
    properties
}

fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default()
}

/// Headers are bounded; an error text is cut to a readable length.
fn truncate(error: &str) -> String {
    error.chars().take(1000).collect()
}
