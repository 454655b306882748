//! Owns the AMQP connection: connects, declares the topology, hands out sessions, notices
//! a loss at once, and reconnects with capped exponential backoff and jitter. lapin does
//! not reconnect on its own; this task does, for every user of the broker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio_util::sync::CancellationToken;

use super::{Broker, Session};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor checks the connection and the publishing channel.
const HEALTH_CHECK: Duration = Duration::from_millis(250);
/// Shortest and longest pause between two connection attempts (jitter included).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the supervisor stopped trying.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The broker stayed unreachable longer than `RECONNECT_MAX`.
    #[error("broker unreachable for {0:?} (RECONNECT_MAX), last error: {1}")]
    GaveUp(Duration, String),
}

/// Keeps a session alive until `shutdown`; returns an error only when `reconnect_max`
/// (non-zero) passes without a connection.
pub async fn supervise(
    broker: Broker,
    url: String,
    reconnect_max: Duration,
    shutdown: CancellationToken,
) -> Result<(), SupervisorError> {
    let mut down_since = Instant::now();
    let mut backoff = new_backoff();
    let mut reported_down = false;
    while !shutdown.is_cancelled() {
        match connect(&broker, &url).await {
            Ok(session) => {
                tracing::info!(prefix = %broker.topology.prefix, "broker connected, topology declared");
                reported_down = false;
                backoff = new_backoff();
                let cause = watch_session(&broker, session, &shutdown).await;
                broker.session.send_replace(None);
                if shutdown.is_cancelled() {
                    break;
                }
                tracing::warn!(error = %cause, "broker connection lost, reconnecting");
                down_since = Instant::now();
            }
            Err(error) => {
                if !reported_down {
                    tracing::warn!(%error, "broker unreachable, retrying with backoff");
                    reported_down = true;
                } else {
                    tracing::debug!(%error, "broker still unreachable");
                }
                if !reconnect_max.is_zero() && down_since.elapsed() >= reconnect_max {
                    return Err(SupervisorError::GaveUp(reconnect_max, error.to_string()));
                }
            }
        }
        // Jitter adds up to the delay itself, so cap after it; and never sleep past
        // RECONNECT_MAX, so giving up happens when configured, not a long backoff later.
        let mut pause = backoff.next().unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF);
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

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn connect(broker: &Broker, url: &str) -> Result<Session, lapin::Error> {
    let connecting = Connection::connect(url, ConnectionProperties::default());
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
