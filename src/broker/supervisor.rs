//! Owns the AMQP connection: connects, declares the topology, hands out sessions, notices
//! a loss at once, and reconnects to any node of `AMQP_URL` that answers, with capped
//! exponential backoff and jitter between rounds (see `backoff`). lapin does not
//! reconnect on its own; this task does, for every user of the broker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio_util::sync::CancellationToken;

use super::backoff::ReconnectBackoff;
use super::endpoints::{Endpoint, Endpoints};
use super::{Broker, Session};
use crate::liveness::Heartbeat;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor checks the connection and the publishing channel.
const HEALTH_CHECK: Duration = Duration::from_millis(250);

/// Why the supervisor stopped trying.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The broker stayed unreachable longer than `RECONNECT_MAX`.
    #[error("broker unreachable for {0:?} (RECONNECT_MAX), last error: {1}")]
    GaveUp(Duration, String),
}

/// Keeps a session alive until `shutdown`; returns an error only when `reconnect_max`
/// (non-zero) passes without a connection.
///
/// Each round tries every node of `endpoints` once, starting after the node last used
/// (the first round at a random node, so instances spread over a cluster), and takes
/// the first that answers; a round in which none answers is followed by a backoff pause.
///
/// Each connection attempt is marked busy on `heartbeat` (the wait for a loss and the
/// backoff pauses are idle), so an attempt that never returns shows in `/healthz`.
pub async fn supervise(
    broker: Broker,
    endpoints: Endpoints,
    reconnect_max: Duration,
    heartbeat: Arc<Heartbeat>,
    shutdown: CancellationToken,
) -> Result<(), SupervisorError> {
    let mut down_since = Instant::now();
    let mut backoff = ReconnectBackoff::default();
    let mut reported_down = false;
    let mut cursor = random_offset(endpoints.len());
    tracing::info!(nodes = ?endpoints.names(), first = %endpoints.get(cursor).name(), "broker nodes");
    while !shutdown.is_cancelled() {
        let attempt = heartbeat.busy();
        let connected = connect_round(&broker, &endpoints, &mut cursor).await;
        drop(attempt);
        match connected {
            Ok(session) => {
                tracing::info!(node = %session.node, prefix = %broker.topology.prefix, "broker connected, topology declared");
                reported_down = false;
                backoff.connected(Instant::now());
                let cause = watch_session(&broker, session.clone(), &shutdown).await;
                broker.session.send_replace(None);
                backoff.lost(Instant::now());
                if shutdown.is_cancelled() {
                    break;
                }
                tracing::warn!(node = %session.node, error = %cause, "broker connection lost, reconnecting");
                down_since = Instant::now();
            }
            Err(error) => {
                if !reported_down {
                    tracing::warn!(%error, "no broker node reachable, retrying with backoff");
                    reported_down = true;
                } else {
                    tracing::debug!(%error, "broker still unreachable");
                }
                if !reconnect_max.is_zero() && down_since.elapsed() >= reconnect_max {
                    return Err(SupervisorError::GaveUp(reconnect_max, error));
                }
            }
        }
        // Never sleep past RECONNECT_MAX, so giving up happens when configured, not a
        // long backoff later.
        let mut pause = backoff.next_pause();
        if !reconnect_max.is_zero() {
            pause = pause.min(reconnect_max.saturating_sub(down_since.elapsed()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    Ok(())
}

/// A per-instance starting point in the list, so instances spread over the nodes.
fn random_offset(nodes: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % nodes.max(1) as u128) as usize
}

/// Tries each node once, from `cursor` on; leaves `cursor` at the node after the one
/// that answered (the next round, after a loss, starts elsewhere). Errors name every
/// node with its error, never a password.
async fn connect_round(
    broker: &Broker,
    endpoints: &Endpoints,
    cursor: &mut usize,
) -> Result<Session, String> {
    let mut errors = Vec::with_capacity(endpoints.len());
    for _ in 0..endpoints.len() {
        let endpoint = endpoints.get(*cursor);
        *cursor = (*cursor + 1) % endpoints.len();
        match connect(broker, endpoint).await {
            Ok(session) => return Ok(session),
            Err(error) => {
                tracing::debug!(node = %endpoint.name(), %error, "broker node did not answer");
                errors.push(format!("{}: {error}", endpoint.name()));
            }
        }
    }
    Err(errors.join("; "))
}

async fn connect(broker: &Broker, endpoint: &Endpoint) -> Result<Session, lapin::Error> {
    let connecting = Connection::connect_uri(endpoint.uri(), ConnectionProperties::default());
    let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result?,
        Err(_) => {
            let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
            return Err(lapin::ErrorKind::IOError(Arc::new(timeout)).into());
        }
    };
    let declaring = connection.create_channel().await?;
    broker.topology.declare(&declaring).await?;
    let _ = declaring.close(200, "declared".into()).await;
    let publisher = publisher_channel(&connection).await?;
    let session = Session {
        connection: Arc::new(connection),
        publisher,
        declared_buckets: Arc::new(Mutex::new(HashSet::new())),
        node: Arc::from(endpoint.name()),
    };
    broker.session.send_replace(Some(session.clone()));
    Ok(session)
}

async fn publisher_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Waits until the connection is lost (or shutdown), replacing the publishing channel
/// if a channel-level error closed it. Returns why the connection ended.
async fn watch_session(
    broker: &Broker,
    mut session: Session,
    shutdown: &CancellationToken,
) -> String {
    let mut events = session.connection.events_listener();
    let mut tick = tokio::time::interval(HEALTH_CHECK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = session.connection.close(200, "shutting down".into()).await;
                return "shutdown".into();
            }
            event = events.next() => match event {
                Some(Event::Error(error)) => return error.to_string(),
                Some(_) => {}
                None => return "connection events ended".into(),
            },
            _ = tick.tick() => {
                if !session.connection.status().connected() {
                    return "connection closed".into();
                }
                if !session.publisher.status().connected() {
                    tracing::warn!("publishing channel closed by the broker, opening a new one");
                    match publisher_channel(&session.connection).await {
                        Ok(channel) => {
                            session.publisher = channel;
                            broker.session.send_replace(Some(session.clone()));
                        }
                        Err(error) => return error.to_string(),
                    }
                }
            }
        }
    }
}
