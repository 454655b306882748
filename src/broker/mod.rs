//! RabbitMQ: the connection (owned by the supervisor), the topology, publishing with
//! confirms and header conversion. The rest of the service sees `Broker::publish` and a
//! way to follow the current session. Not yet the only place lapin appears: the consumer
//! (`timeouts`), `retry`, `outbox` and the admin API still use its types directly.

mod backoff;
mod endpoints;
pub mod headers;
mod supervisor;
pub mod topology;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::watch;

pub use endpoints::{EndpointError, Endpoints};
pub use supervisor::{SupervisorError, supervise};
pub use topology::{QueueType, Topology};

/// A live connection with a publishing channel in confirm mode.
#[derive(Clone)]
pub struct Session {
    /// The connection; consumers open their own channels on it.
    pub connection: Arc<Connection>,
    /// Shared channel for every publish, in confirm mode.
    publisher: Channel,
    /// Cache buckets declared on this connection, so each is declared once.
    declared_buckets: Arc<Mutex<HashSet<String>>>,
    /// The node connected to, `host:port/vhost`: named by `/readyz`, the console, logs.
    node: Arc<str>,
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
    pub properties: BasicProperties,
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
    /// No queue is bound where the message was sent.
    #[error("message unroutable: {0}")]
    Unroutable(String),
    /// The broker did not confirm in time (blocked by an alarm, or the network is gone).
    #[error("broker did not confirm within {0:?}")]
    Timeout(std::time::Duration),
}

/// Longest wait for the confirms of one publish call; past it the caller treats the
/// messages as not published (and a later duplicate as harmless).
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

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
            .is_some_and(|s| s.connection.status().connected())
    }

    /// The node in use (`host:port/vhost`, never a password), `None` while disconnected.
    pub fn node(&self) -> Option<String> {
        self.session
            .borrow()
            .as_ref()
            .filter(|s| s.connection.status().connected())
            .map(|s| s.node.to_string())
    }

    fn current(&self) -> Result<Session, PublishError> {
        self.session
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)
    }

    /// Publishes every message (pipelined), then waits for every confirm. Succeeds only
    /// when the broker confirmed all of them and none was returned as unroutable.
    pub async fn publish(&self, messages: &[Outgoing<'_>]) -> Result<(), PublishError> {
        match tokio::time::timeout(CONFIRM_TIMEOUT, self.publish_confirmed(messages)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Timeout(CONFIRM_TIMEOUT)),
        }
    }

    async fn publish_confirmed(&self, messages: &[Outgoing<'_>]) -> Result<(), PublishError> {
        let session = self.current()?;
        // Every publish is handed to lapin before any is awaited: awaiting each in turn
        // would cost a round trip to lapin's I/O thread (and a write) per message. The
        // futures are first polled in order, so the messages keep their order.
        let publishes = messages.iter().map(|message| {
            session.publisher.basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..Default::default()
                },
                message.body,
                message.properties.clone(),
            )
        });
        let confirms = futures_util::future::try_join_all(publishes).await?;
        for confirm in confirms {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) => {
                    return Err(PublishError::Unroutable(returned.reply_text.to_string()));
                }
                Confirmation::Nack(_) => return Err(PublishError::Nacked),
                Confirmation::NotRequested => return Err(PublishError::Nacked),
            }
        }
        Ok(())
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
        // A separate channel: a failed declare closes its channel, not the publisher's.
        let channel = session.connection.create_channel().await?;
        self.topology.declare_cache_queue(&channel, bucket).await?;
        let _ = channel.close(200, "declared".into()).await;
        if let Ok(mut set) = session.declared_buckets.lock() {
            set.insert(bucket.to_owned());
        }
        Ok(())
    }

    /// Opens a fresh channel on the current connection, for a one-off operation.
    pub async fn channel(&self) -> Result<Channel, PublishError> {
        Ok(self.current()?.connection.create_channel().await?)
    }
}
