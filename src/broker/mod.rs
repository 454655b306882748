//! RabbitMQ: the connections (owned by the supervisor), the topology, publishing with
//! confirms, consuming, fetching and acking, and the service's own message types. The rest
//! of the service sees `Broker` (publish, queue depths, a queue reader), `Session::consume`,
//! [`Delivery`] (body, [`Properties`], [`Headers`], ack and nack) and [`Outgoing`]; lapin
//! appears nowhere else in `src/`.
//!
//! Connections and channels (docs/architecture.md, "Broker"):
//! - Each session is two connections to the same node of `AMQP_URL`: a *consuming* one
//!   (the due consumer, declares, queue depths, the parking replay's gets and acks) and
//!   a *publishing* one. Under a memory or disk alarm RabbitMQ blocks connections that
//!   publish, and lapin then writes nothing on them, acks included; apart, the consumer
//!   keeps acking due timers while publishes wait (and time out after 15 s).
//! - On the publishing connection, one confirm channel per `Publisher` role (relay,
//!   retry router, admin), and one publish call at a time per channel: lapin attaches a
//!   `basic.return` to whichever confirm completes next, so an outcome read on a shared
//!   channel could be another caller's (see `publisher`).
//! - Either connection lost ends the session: both are closed and the supervisor
//!   reconnects both, to any node that answers.

mod backoff;
mod consume;
mod delivery;
mod endpoints;
pub mod headers;
mod publisher;
mod supervisor;
pub mod topology;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lapin::Connection;
use tokio::sync::watch;

pub use consume::{Consumer, ConsumerChannel, QueueReader, QueueStats};
pub use delivery::{Delivery, Properties};
pub use endpoints::{EndpointError, Endpoints};
pub use headers::Headers;
pub use publisher::Publisher;
use publisher::PublisherChannels;
pub use supervisor::{SupervisorError, supervise};
pub use topology::{QueueType, Topology};

/// A live pair of connections to one node. Consuming and publishing are apart because
/// RabbitMQ blocks connections that publish while a memory or disk alarm is raised, and
/// lapin then writes nothing at all on that connection, acks included: with one
/// connection an alarm would stop the due consumer too.
#[derive(Clone)]
pub struct Session {
    /// The consuming connection: the due consumer's channel (deliveries and acks),
    /// declares and one-off reads (queue depths, the parking replay's gets and acks).
    consuming: Arc<Connection>,
    /// The publishing connection, only for publishes with confirms.
    publishing: Arc<Connection>,
    /// One confirm channel per publisher role (see `publisher`).
    channels: Arc<PublisherChannels>,
    /// Cache buckets declared on this connection, so each is declared once.
    declared_buckets: Arc<Mutex<HashSet<String>>>,
    /// The node connected to, `host:port/vhost`: named by `/readyz`, the console, logs.
    node: Arc<str>,
}

impl Session {
    /// True while both connections are up.
    fn connected(&self) -> bool {
        self.consuming.status().connected() && self.publishing.status().connected()
    }
}

/// Cheap handle to the broker, shared by the relay, the consumer, the admin API.
#[derive(Clone)]
pub struct Broker {
    /// Names of everything we declare.
    topology: Arc<Topology>,
    /// The current session, `None` while disconnected; the supervisor is the only writer.
    session: Arc<watch::Sender<Option<Session>>>,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Exchange, `""` for the default exchange (routing key = queue name).
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Body bytes.
    pub body: &'a [u8],
    /// Properties; callers set persistence and ids.
    pub properties: Properties,
    /// Fail when no queue receives the message (timers); events may have no listener.
    pub mandatory: bool,
}

/// Why a publish did not reach a queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection right now; the supervisor is reconnecting.
    #[error("broker not connected")]
    NotConnected,
    /// The connection or channel failed during the publish.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message.
    #[error("broker nacked the message")]
    Nacked,
    /// No queue is bound where these messages were sent (their routing keys, in order).
    #[error("{} message(s) unroutable ({reply}): {routing_keys:?}", routing_keys.len())]
    Unroutable {
        /// The routing key of every returned message of the call.
        routing_keys: Vec<String>,
        /// The broker's reason (`NO_ROUTE`).
        reply: String,
    },
    /// The broker did not confirm in time (blocked by an alarm, or the network is gone).
    #[error("broker did not confirm within {0:?}")]
    Timeout(std::time::Duration),
}

/// Why an AMQP operation other than a publish (consume, ack, get, passive declare) failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection right now; the supervisor is reconnecting.
    #[error("broker not connected")]
    NotConnected,
    /// The connection or channel failed, or the broker refused (a missing queue).
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
}

impl From<BrokerError> for PublishError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::NotConnected => PublishError::NotConnected,
            BrokerError::Amqp(error) => PublishError::Broker(error),
        }
    }
}

/// Longest wait for the confirms of one publish call; past it the caller treats the
/// messages as not published (and a later duplicate as harmless).
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The log target of the AMQP client library, which `telemetry` sets to warn unless
/// `RUST_LOG` says otherwise: the supervisor logs connection changes itself.
pub const CLIENT_LOG_TARGET: &str = "lapin";

/// Delivery mode of a message written to disk by the broker.
pub const PERSISTENT: u8 = 2;

impl Broker {
    /// A handle with no session yet; `supervise` connects it.
    pub fn new(topology: Topology) -> Self {
        let (session, _) = watch::channel(None);
        Self {
            topology: Arc::new(topology),
            session: Arc::new(session),
        }
    }

    /// The names of the topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Follows the current session: consumers restart on every new one.
    pub fn sessions(&self) -> watch::Receiver<Option<Session>> {
        self.session.subscribe()
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.session
            .borrow()
            .as_ref()
            .is_some_and(Session::connected)
    }

    /// The node in use (`host:port/vhost`, never a password), `None` while disconnected.
    pub fn node(&self) -> Option<String> {
        self.session
            .borrow()
            .as_ref()
            .filter(|s| s.connected())
            .map(|s| s.node.to_string())
    }

    fn current(&self) -> Result<Session, PublishError> {
        self.session
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)
    }

    /// Publishes every message as `role` (pipelined), then waits for every confirm.
    /// Succeeds only when the broker confirmed all of them and none was returned as
    /// unroutable; an `Unroutable` error names exactly this call's returned messages.
    pub async fn publish(
        &self,
        role: Publisher,
        messages: &[Outgoing<'_>],
    ) -> Result<(), PublishError> {
        let session = self.current()?;
        let outcome = session
            .channels
            .publish(&session.publishing, role, messages, CONFIRM_TIMEOUT)
            .await;
        let Err(PublishError::Unroutable { routing_keys, .. }) = &outcome else {
            return outcome;
        };
        // A cache queue deleted at run time: redeclare it and send what came back again
        // (once). Other unroutable messages are the caller's to handle.
        let missing = self.missing_cache_queues(routing_keys);
        if missing.is_empty() {
            return outcome;
        }
        for (queue, bucket) in &missing {
            tracing::warn!(%queue, "cache queue missing, redeclaring it");
            self.forget_bucket(&session, bucket);
            self.ensure_cache_queue(bucket).await?;
        }
        let again: Vec<Outgoing<'_>> = messages
            .iter()
            .filter(|m| missing.iter().any(|(queue, _)| queue == m.routing_key))
            .cloned()
            .collect();
        session
            .channels
            .publish(&session.publishing, role, &again, CONFIRM_TIMEOUT)
            .await
    }

    /// The returned routing keys that name a cache queue, with their bucket.
    fn missing_cache_queues(&self, routing_keys: &[String]) -> Vec<(String, String)> {
        let prefix = self.topology.cache_queue("");
        let mut missing: Vec<(String, String)> = routing_keys
            .iter()
            .filter_map(|key| Some((key.clone(), key.strip_prefix(&prefix)?.to_owned())))
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    fn forget_bucket(&self, session: &Session, bucket: &str) {
        if let Ok(mut set) = session.declared_buckets.lock() {
            set.remove(bucket);
        }
    }

    /// Declares the cache queue of `bucket` once per connection (buckets of timeouts
    /// other instances configured appear in the outbox too).
    pub async fn ensure_cache_queue(&self, bucket: &str) -> Result<(), PublishError> {
        let session = self.current()?;
        if session
            .declared_buckets
            .lock()
            .map(|set| set.contains(bucket))
            .unwrap_or(false)
        {
            return Ok(());
        }
        // A channel of its own: a failed declare closes its channel, nobody else's.
        let channel = session.consuming.create_channel().await?;
        self.topology.declare_cache_queue(&channel, bucket).await?;
        let _ = channel.close(200, "declared".into()).await;
        if let Ok(mut set) = session.declared_buckets.lock() {
            set.insert(bucket.to_owned());
        }
        Ok(())
    }
}
