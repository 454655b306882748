//! Where a delivery goes when it was not simply handled: re-armed through a delay level,
//! retried through a retry tier, stored as failed, or parked. Every path publishes with
//! a confirm before the original is acked; when no safe home is reachable the delivery is
//! nacked back after a pause, never acked (docs/architecture.md rules 4, 6, 7).

use std::time::Duration;

use sqlx::PgPool;

use crate::alert::{Alert, Alerter};
use crate::broker::headers::{DUE_AT_US, FIRST_FAILED_AT, LAST_ERROR, RETRY_COUNT};
use crate::broker::{
    Broker, Delivery, Headers, Outgoing, Properties, PublishError, Publisher, Topology,
};
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

/// Where a delivery goes next. Decided by [`route`] from the disposition, the delivery's
/// headers and the topology alone, so the routing is tested without a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Wait again: through the delay level `level_ms`, the largest not longer than
    /// `ms_left`; the consumer checks it again when it comes back.
    Rearm {
        /// Milliseconds to its deadline (or reminder) in database time.
        ms_left: u64,
        /// The level's TTL, which names its queue.
        level_ms: u64,
    },
    /// Try again later: retry tier `tier` (1 for the first retry), whose queue holds it
    /// `delay_ms` before it dead-letters back to the due queue.
    Retry {
        /// The tier, also the `x-retry-count` the copy carries.
        tier: usize,
        /// The tier's delay, which names its queue.
        delay_ms: u64,
    },
    /// Give up: store it in `failed_messages` (park it when that fails) and alert.
    Fail {
        /// Transient when the retries are spent, else permanent.
        class: ErrorClass,
        /// Attempts made, this one included.
        attempts: usize,
    },
}

/// Where a delivery with `headers` goes for `disposition`: a re-arm to its delay level;
/// a transient failure to the next retry tier (`x-retry-count` counts the tiers already
/// passed, a missing, negative or non-integer count is 0) or, with the tiers spent, to
/// the failed-message store; a permanent failure to the store at once.
pub fn route(disposition: &Disposition, headers: &Headers, topology: &Topology) -> Route {
    let passed = headers.integer(RETRY_COUNT).unwrap_or(0).max(0);
    let passed = usize::try_from(passed).unwrap_or(usize::MAX);
    let attempts = passed.saturating_add(1);
    match disposition {
        Disposition::Rearm(ms_left) => Route::Rearm {
            ms_left: *ms_left,
            level_ms: topology.level_for(*ms_left),
        },
        Disposition::Transient(_) => match topology.retry_delays_ms.get(passed) {
            Some(&delay_ms) => Route::Retry {
                tier: attempts,
                delay_ms,
            },
            None => Route::Fail {
                class: ErrorClass::Transient,
                attempts,
            },
        },
        Disposition::Permanent(_) => Route::Fail {
            class: ErrorClass::Permanent,
            attempts,
        },
    }
}

/// The headers of the copy sent to retry tier `tier`: the count, the last error, and
/// when it first failed (`now_ms`, unless an earlier failure set it).
pub fn retry_headers(mut headers: Headers, tier: usize, error: &str, now_ms: i64) -> Headers {
    headers.set_integer(RETRY_COUNT, i64::try_from(tier).unwrap_or(i64::MAX));
    headers.set_text(LAST_ERROR, &truncate(error));
    if headers.integer(FIRST_FAILED_AT).is_none() {
        headers.set_integer(FIRST_FAILED_AT, now_ms);
    }
    headers
}

/// The headers of a parked copy: the last error and the queue it came from.
pub fn parked_headers(mut headers: Headers, error: &str, from_queue: &str) -> Headers {
    headers.set_text(LAST_ERROR, &truncate(error));
    headers.set_text(PARKED_FROM, from_queue);
    headers
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
    /// Sends `delivery` where [`route`] says, then acks it (or nacks it back when
    /// nowhere is reachable). Its span names the message (a timer's message id is its
    /// entity's id) and the disposition.
    #[tracing::instrument(
        name = "route_delivery",
        skip_all,
        fields(message_id = %delivery.message_id(), disposition = disposition.label())
    )]
    pub async fn dispose(&self, delivery: Delivery, disposition: Disposition) {
        let headers = delivery.headers();
        let error = match &disposition {
            Disposition::Rearm(_) => "",
            Disposition::Transient(error) | Disposition::Permanent(error) => error,
        };
        let homed = match route(&disposition, &headers, self.broker.topology()) {
            Route::Rearm { ms_left, level_ms } => {
                self.rearm(&delivery, headers, ms_left, level_ms).await
            }
            Route::Retry { tier, delay_ms } => {
                self.retry(&delivery, headers, tier, delay_ms, error).await
            }
            Route::Fail { class, attempts } => {
                self.fail(&delivery, headers, error, class, attempts).await
            }
        };
        if homed {
            if let Err(error) = delivery.ack().await {
                tracing::warn!(message_id = %delivery.message_id(), %error, "ack failed after re-publishing; a duplicate will be harmless");
            }
        } else {
            tokio::time::sleep(NO_HOME_PAUSE).await;
            if let Err(error) = delivery.nack(true).await {
                tracing::warn!(message_id = %delivery.message_id(), %error, "nack failed; the broker redelivers on reconnect");
            }
            metrics::counter!("order_timeout_deliveries_total", "outcome" => "nacked").increment(1);
        }
    }

    async fn rearm(
        &self,
        delivery: &Delivery,
        mut headers: Headers,
        ms_left: u64,
        level: u64,
    ) -> bool {
        // The deadline the database measured, on this process's clock, so the hop that
        // lands a little early is held, not re-armed again. Another instance may take the
        // hop: a clock off this one by a few ms costs that much lateness or one more
        // re-arm, and more than the hold's cap only the hold (`timeouts::hold_time`).
        let ms_left_us = i64::try_from(ms_left.saturating_mul(1000)).unwrap_or(i64::MAX);
        let due_at_us = chrono::Utc::now()
            .timestamp_micros()
            .saturating_add(ms_left_us);
        headers.set_integer(DUE_AT_US, due_at_us);
        let queue = self.broker.topology().level_queue(level);
        let properties = republished(&delivery.properties, headers);
        let published = self
            .publish_to_queue(&queue, &delivery.body, properties)
            .await;
        if published {
            tracing::info!(message_id = %delivery.message_id(), ms_left, level, "early timer re-armed");
        }
        published
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        headers: Headers,
        tier: usize,
        delay_ms: u64,
        error: &str,
    ) -> bool {
        let queue = self.broker.topology().retry_queue(delay_ms);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let headers = retry_headers(headers, tier, error, now_ms);
        let published = self
            .publish_to_queue(
                &queue,
                &delivery.body,
                republished(&delivery.properties, headers),
            )
            .await;
        if published {
            metrics::counter!("order_timeout_retries_total", "tier" => tier.to_string())
                .increment(1);
            tracing::info!(message_id = %delivery.message_id(), tier, delay_ms, %error, "sent to retry tier");
        }
        published
    }

    /// Stores the delivery in `failed_messages` and alerts; parks it when the store is down.
    async fn fail(
        &self,
        delivery: &Delivery,
        headers: Headers,
        error: &str,
        class: ErrorClass,
        attempts: usize,
    ) -> bool {
        let first_failed_at = headers
            .integer(FIRST_FAILED_AT)
            .and_then(chrono::DateTime::from_timestamp_millis);
        let failure = NewFailure {
            queue: self.broker.topology().due_queue.clone(),
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            headers: headers.to_json(),
            body: delivery.body[..delivery.body.len().min(self.failed_body_max)].to_vec(),
            body_size: delivery.body.len() as i64,
            message_id: delivery.properties.message_id.clone(),
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
                self.park(delivery, headers, error, &store_error.to_string())
                    .await
            }
        }
    }

    async fn park(
        &self,
        delivery: &Delivery,
        headers: Headers,
        error: &str,
        store_error: &str,
    ) -> bool {
        let topology = self.broker.topology();
        let headers = parked_headers(headers, error, &topology.due_queue);
        let published = self
            .publish_to_queue(
                &topology.parking_queue,
                &delivery.body,
                republished(&delivery.properties, headers),
            )
            .await;
        if published {
            metrics::counter!("order_timeout_parked_total").increment(1);
            tracing::error!(message_id = %delivery.message_id(), error, store_error, "failed-message store unreachable, message parked");
            self.alerter.send(Alert {
                queue: topology.parking_queue.clone(),
                message_id: delivery.properties.message_id.clone(),
                error: format!("parked: {error}"),
            });
        }
        published
    }

    async fn publish_to_queue(&self, queue: &str, body: &[u8], properties: Properties) -> bool {
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

/// Moves every message that was in the parking queue when the call began back to the
/// due queue: each republished with a confirm (without `x-parked-from`, its retry count
/// reset), then its parked copy acked. A failed publish nacks that message back and ends
/// the replay. Returns how many were moved.
pub async fn replay_parking(broker: &Broker) -> Result<u32, PublishError> {
    move_to_due(broker, &broker.topology().parking_queue).await
}

/// Moves every message that was in `queue` when the call began to the due queue, as
/// [`replay_parking`] does for the parking queue (also used to drain the queues of an
/// earlier deployment, `crate::drain`). A timer moved before its deadline is re-armed
/// by the consumer (docs/architecture.md rule 4). Returns how many were moved.
pub async fn move_to_due(broker: &Broker, queue: &str) -> Result<u32, PublishError> {
    let topology = broker.topology();
    let reader = broker.read_queue(queue).await?;
    let mut replayed = 0u32;
    for _ in 0..reader.ready() {
        let Some(delivery) = reader.get().await? else {
            break;
        };
        let mut stored = delivery.headers().to_json();
        if let serde_json::Value::Object(map) = &mut stored {
            map.remove(PARKED_FROM);
        }
        let outgoing = Outgoing {
            exchange: "",
            routing_key: &topology.due_queue,
            body: &delivery.body,
            properties: republished(
                &delivery.properties,
                Headers::from_json_for_requeue(&stored),
            ),
            mandatory: true,
        };
        if let Err(error) = broker.publish(Publisher::Admin, &[outgoing]).await {
            let _ = delivery.nack(true).await;
            return Err(error);
        }
        delivery.ack().await?;
        replayed += 1;
        tracing::info!(message_id = %delivery.message_id(), queue, "message moved to the due queue");
    }
    reader.close().await;
    Ok(replayed)
}

/// The only headers a republished copy carries: the ones this service writes and reads.
const REPUBLISHED_HEADERS: [&str; 5] = [
    RETRY_COUNT,
    LAST_ERROR,
    FIRST_FAILED_AT,
    PARKED_FROM,
    DUE_AT_US,
];

/// Properties for a republished copy: persistent, same id and type, no expiration, and
/// only our own headers (never a client's `CC`/`BCC` routing headers).
pub fn republished(original: &Properties, headers: Headers) -> Properties {
    Properties {
        persistent: true,
        message_id: original.message_id.clone(),
        content_type: original.content_type.clone(),
        timestamp: original.timestamp,
        expiration_ms: None,
        headers: Some(headers.known_only(&REPUBLISHED_HEADERS)),
    }
}

/// Headers are bounded; an error text is cut to a readable length.
fn truncate(error: &str) -> String {
    error.chars().take(1000).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::QueueType;
    use crate::domain::EntityKind;

    /// Three retry tiers (1 s, 5 s, 30 s) and levels up to a 30 s timeout (1 ms … 16 384 ms).
    fn topology() -> Topology {
        Topology::new(
            "t",
            &[(EntityKind::Order, Duration::from_secs(30))],
            Duration::from_secs(30),
            &[1, 5, 30].map(Duration::from_secs),
            QueueType::Classic,
        )
    }

    fn counted(count: Option<i64>) -> Headers {
        let mut headers = Headers::default();
        if let Some(count) = count {
            headers.set_integer(RETRY_COUNT, count);
        }
        headers
    }

    fn transient() -> Disposition {
        Disposition::Transient("pool timed out".into())
    }

    fn permanent() -> Disposition {
        Disposition::Permanent("no order with id x".into())
    }

    #[test]
    fn each_disposition_and_retry_count_has_its_route() {
        use ErrorClass::{Permanent, Transient};
        let retry = |tier, delay_ms| Route::Retry { tier, delay_ms };
        let fail = |class, attempts| Route::Fail { class, attempts };
        let rearm = |ms_left, level_ms| Route::Rearm { ms_left, level_ms };
        #[rustfmt::skip]
        let cases = [
            // (disposition, x-retry-count, route)
            (transient(), None, retry(1, 1000)),
            (transient(), Some(0), retry(1, 1000)),
            (transient(), Some(1), retry(2, 5000)),
            (transient(), Some(2), retry(3, 30000)),
            // The tiers spent: stored as failed, every attempt counted.
            (transient(), Some(3), fail(Transient, 4)),
            (transient(), Some(40), fail(Transient, 41)),
            // A negative count from another client counts as none.
            (transient(), Some(-5), retry(1, 1000)),
            // Permanent: stored at once, whatever the count.
            (permanent(), None, fail(Permanent, 1)),
            (permanent(), Some(2), fail(Permanent, 3)),
            // Early: the largest level not longer than the time left, at least the shortest.
            (Disposition::Rearm(0), None, rearm(0, 1)),
            (Disposition::Rearm(1), None, rearm(1, 1)),
            (Disposition::Rearm(1500), Some(2), rearm(1500, 1024)),
            (Disposition::Rearm(2048), None, rearm(2048, 2048)),
            (Disposition::Rearm(10_000_000), None, rearm(10_000_000, 16384)),
        ];
        let topology = topology();
        for (disposition, count, expected) in cases {
            assert_eq!(
                route(&disposition, &counted(count), &topology),
                expected,
                "{disposition:?} with x-retry-count {count:?}"
            );
        }
    }

    #[test]
    fn a_retry_count_that_is_not_an_integer_counts_as_none() {
        let mut headers = Headers::default();
        headers.set_text(RETRY_COUNT, "7");
        assert_eq!(
            route(&transient(), &headers, &topology()),
            Route::Retry {
                tier: 1,
                delay_ms: 1000
            }
        );
    }

    #[test]
    fn without_retry_tiers_a_transient_failure_is_stored_at_once() {
        let topology = Topology::new("t", &[], Duration::from_secs(30), &[], QueueType::Classic);
        assert_eq!(
            route(&transient(), &Headers::default(), &topology),
            Route::Fail {
                class: ErrorClass::Transient,
                attempts: 1
            }
        );
    }

    #[test]
    fn a_retried_copy_counts_its_tier_and_keeps_its_first_failure() {
        let first = retry_headers(Headers::default(), 1, "lock timeout", 1_000);
        assert_eq!(first.integer(RETRY_COUNT), Some(1));
        assert_eq!(first.text(LAST_ERROR).as_deref(), Some("lock timeout"));
        assert_eq!(first.integer(FIRST_FAILED_AT), Some(1_000));
        let second = retry_headers(first, 2, &"e".repeat(5000), 9_000);
        assert_eq!(second.integer(RETRY_COUNT), Some(2));
        assert_eq!(second.text(LAST_ERROR).map(|e| e.len()), Some(1000));
        assert_eq!(second.integer(FIRST_FAILED_AT), Some(1_000));
    }

    #[test]
    fn a_parked_copy_names_its_queue_and_error() {
        let parked = parked_headers(counted(Some(3)), "store down", "t.due");
        assert_eq!(parked.text(PARKED_FROM).as_deref(), Some("t.due"));
        assert_eq!(parked.text(LAST_ERROR).as_deref(), Some("store down"));
        assert_eq!(parked.integer(RETRY_COUNT), Some(3));
    }

    #[test]
    fn a_republished_copy_keeps_id_type_and_time_and_only_our_headers() {
        let mut headers = retry_headers(Headers::default(), 1, "e", 5);
        headers.set_text("CC", "elsewhere");
        headers.set_text("x-tenant", "acme");
        let original = Properties {
            persistent: false,
            message_id: Some("id-1".into()),
            content_type: Some("application/json".into()),
            timestamp: Some(42),
            expiration_ms: Some(1800000),
            headers: None,
        };
        let copy = republished(&original, headers.clone());
        assert!(copy.persistent);
        assert_eq!(copy.message_id.as_deref(), Some("id-1"));
        assert_eq!(copy.content_type.as_deref(), Some("application/json"));
        assert_eq!(copy.timestamp, Some(42));
        assert_eq!(copy.expiration_ms, None);
        let kept = copy.headers.unwrap_or_default();
        assert_eq!(
            kept,
            headers.known_only(&[RETRY_COUNT, LAST_ERROR, FIRST_FAILED_AT])
        );
        assert_eq!(kept.text("CC"), None);
    }
}
