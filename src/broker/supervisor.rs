//! Owns the AMQP connection: connects, declares the topology, hands out sessions, notices
//! a loss at once, and reconnects to any node of `AMQP_URL` that answers, with capped
//! exponential backoff and jitter between rounds (see `backoff`). lapin does not
//! reconnect on its own; this task does, for every user of the broker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties, Event};
use tokio_util::sync::CancellationToken;

use super::backoff::ReconnectBackoff;
use super::endpoints::{Endpoint, Endpoints};
use super::{Broker, Session};
use crate::liveness::Heartbeat;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the broker to acknowledge closing a connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the supervisor checks both connections.
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
                let cause = watch_session(&session, &shutdown).await;
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
    let prefix = &broker.topology.prefix;
    let consuming = open(endpoint, &format!("order-timeout {prefix} consume")).await?;
    let declaring = consuming.create_channel().await?;
    broker.topology.declare(&declaring).await?;
    let _ = declaring.close(200, "declared".into()).await;
    let publishing = match open(endpoint, &format!("order-timeout {prefix} publish")).await {
        Ok(publishing) => publishing,
        Err(error) => {
            let _ = consuming
                .close(200, "publishing connection failed".into())
                .await;
            return Err(error);
        }
    };
    let session = Session {
        consuming: Arc::new(consuming),
        publishing: Arc::new(publishing),
        channels: Arc::default(),
        declared_buckets: Arc::new(Mutex::new(HashSet::new())),
        node: Arc::from(endpoint.name()),
    };
    broker.session.send_replace(Some(session.clone()));
    Ok(session)
}

/// One connection to `endpoint`, named for `rabbitmqctl list_connections` and the
/// management UI.
async fn open(endpoint: &Endpoint, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = Connection::connect_uri(endpoint.uri(), properties);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result,
        Err(_) => {
            let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
            Err(lapin::ErrorKind::IOError(Arc::new(timeout)).into())
        }
    }
}

/// Waits until either connection is lost (or shutdown), then closes both. Returns why
/// the session ended. A publisher channel closed by the broker is reopened by the next
/// publish of its role, not here.
async fn watch_session(session: &Session, shutdown: &CancellationToken) -> String {
    let mut consuming_events = session.consuming.events_listener();
    let mut publishing_events = session.publishing.events_listener();
    let mut tick = tokio::time::interval(HEALTH_CHECK);
    let cause = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break "shutdown".to_owned(),
            event = consuming_events.next() => if let Some(cause) = ended("consuming", event) {
                break cause;
            },
            event = publishing_events.next() => if let Some(cause) = ended("publishing", event) {
                break cause;
            },
            _ = tick.tick() => {
                if !session.consuming.status().connected() {
                    break "consuming connection closed".into();
                }
                if !session.publishing.status().connected() {
                    break "publishing connection closed".into();
                }
            }
        }
    };
    // A close waits for the broker's close-ok, which a cut connection never sends: bound
    // it, and after a loss do not wait for it at all (the other connection of the pair
    // may still be up and must not linger on a node we are leaving).
    let closing = close_both(session.clone());
    if cause == "shutdown" {
        closing.await;
    } else {
        tokio::spawn(closing);
    }
    cause
}

async fn close_both(session: Session) {
    let close = |connection: Arc<Connection>| async move {
        let closing = connection.close(200, "session ended".into());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    };
    tokio::join!(close(session.consuming), close(session.publishing));
}

/// Why a connection's event stream says it ended, if it does.
fn ended(which: &str, event: Option<Event>) -> Option<String> {
    match event {
        Some(Event::Error(error)) => Some(format!("{which} connection: {error}")),
        Some(_) => None,
        None => Some(format!("{which} connection events ended")),
    }
}
