//! Builds the application from its configuration and runs it until shutdown. `main`
//! and the tests both go through `Application::build`, so what is tested is what ships.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert::{Alerter, Webhook};
use crate::api::{self, AppState};
use crate::broker::{self, Broker, Endpoints, Topology};
use crate::config::Config;
use crate::domain::EntityKind;
use crate::liveness::{Liveness, Loop};
use crate::retry::DeliveryRouter;
use crate::store::deadlines::FirstTimer;
use crate::store::{self, CallLimit};
use crate::sweeper::Sweeper;
use crate::timeouts::DueConsumer;
use crate::{outbox, telemetry};

/// A built, not yet running service: listening socket bound, database migrated.
pub struct Application {
    /// Everything the service was configured with.
    config: Arc<Config>,
    /// The bound HTTP socket (its port is known before `run`).
    listener: TcpListener,
    /// The database pool.
    pool: PgPool,
    /// The broker handle (connected by the supervisor once running).
    broker: Broker,
    /// The broker nodes of `AMQP_URL`, parsed (and so checked) before anything starts.
    endpoints: Endpoints,
    /// Where alerts are posted, checked at build so a bad URL fails the start.
    webhook: Option<Webhook>,
    /// Cancelled to stop the service.
    shutdown: CancellationToken,
}

impl Application {
    /// Connects to the database (creating and migrating it), binds the HTTP port and
    /// prepares the broker handle. The broker is reached only once running, so a broker
    /// outage never prevents the service from starting.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let endpoints = Endpoints::parse(&config.amqp_url)?;
        let pool = store::connect(&config.database_url, config.pool_settings())
            .await
            .context("connecting to PostgreSQL")?;
        store::migrate(&pool)
            .await
            .context("migrating the database")?;
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let broker = Broker::new(topology_of(&config));
        let webhook = webhook_of(&config)?;
        Ok(Self {
            config: Arc::new(config),
            listener,
            pool,
            broker,
            endpoints,
            webhook,
            shutdown: CancellationToken::new(),
        })
    }

    /// The address the API listens on.
    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.http_addr)
    }

    /// The database pool (tests inspect rows through it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The broker handle.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Cancel this token to stop the service gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs every task until the shutdown token is cancelled, then stops them in order:
    /// HTTP and the consumer finish what is in flight, the relay its batch, and only
    /// then the broker connection closes. Fails if the broker stayed unreachable longer
    /// than RECONNECT_MAX.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            pool,
            broker,
            endpoints,
            webhook,
            shutdown,
        } = self;
        let broker_stop = CancellationToken::new();
        let liveness = Liveness::new(config.liveness_timeout);
        let mut supervisor = tokio::spawn(broker::supervise(
            broker.clone(),
            endpoints,
            config.reconnect_max,
            liveness.of(Loop::Supervisor),
            broker_stop.clone(),
        ));
        let workers = TaskTracker::new();
        let call_limit = CallLimit(config.database_call_timeout);
        let alerter = Alerter::start(webhook, broker_stop.clone());
        telemetry::register_alerting_series();
        let state = AppState {
            pool: pool.clone(),
            broker: broker.clone(),
            config: config.clone(),
            creates: store::batcher::Creates::start(
                &pool,
                CallLimit(config.database_request_timeout),
            ),
            metrics: telemetry::metrics_handle(),
            liveness: liveness.clone(),
            auth_throttle: Arc::new(api::AuthThrottle::new(
                config.admin_auth_failures_per_minute,
            )),
        };
        let limits = api::ConnectionLimits {
            header_read_timeout: config.http_header_read_timeout,
            max_connections: config.http_max_connections as usize,
        };
        workers.spawn(api::serve(
            listener,
            api::router(state),
            limits,
            shutdown.clone(),
        ));
        let consumer = DueConsumer {
            pool: pool.clone(),
            broker: broker.clone(),
            delivery_router: Arc::new(DeliveryRouter {
                pool: pool.clone(),
                broker: broker.clone(),
                alerter,
                call_limit,
                failed_body_max: config.failed_message_max_body,
            }),
            concurrency: usize::from(config.consumer_concurrency),
            prefetch: config.prefetch,
            remind_before: EntityKind::ALL.map(|kind| config.remind_before_of(kind)),
            call_limit,
            heartbeat: liveness.of(Loop::Consumer),
        };
        workers.spawn(consumer.run(shutdown.clone()));
        let sweeper = Sweeper {
            pool: pool.clone(),
            interval: config.sweep_interval,
            grace: config.sweep_grace,
            call_limit,
            heartbeat: liveness.of(Loop::Sweeper),
        };
        workers.spawn(sweeper.run(shutdown.clone()));
        let retention = crate::retention::Retention {
            pool: pool.clone(),
            interval: config.retention_interval,
            idempotency_keys: config.idempotency_key_retention,
            resolved_failed_messages: config.resolved_failed_message_retention,
            call_limit,
        };
        workers.spawn(retention.run(shutdown.clone()));
        workers.spawn(telemetry::keep_parking_gauge(
            broker.clone(),
            shutdown.clone(),
        ));
        if let Some(prefix) = &config.drain_queue_prefix {
            let mut earlier = (*config).clone();
            earlier.queue_prefix = prefix.clone();
            workers.spawn(crate::drain::run(
                broker.clone(),
                topology_of(&earlier),
                shutdown.clone(),
            ));
        }
        workers.spawn(outbox::run(
            pool.clone(),
            broker.clone(),
            config.outbox_partitions,
            call_limit,
            liveness.of(Loop::Relay),
            shutdown.clone(),
        ));
        workers.close();
        tracing::info!(address = %config.http_addr, prefix = %broker.topology().prefix, "order-timeout running");

        let mut fatal = None;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            result = &mut supervisor => {
                if let Ok(Err(error)) = result {
                    tracing::error!(%error, "giving up on the broker");
                    fatal = Some(error);
                }
                shutdown.cancel();
            }
        }
        tracing::info!("shutting down: finishing in-flight requests and deliveries");
        if tokio::time::timeout(config.shutdown_timeout, workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown timeout: unfinished deliveries stay unacked and will be redelivered");
        }
        broker_stop.cancel();
        if !supervisor.is_finished() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), supervisor).await;
        }
        pool.close().await;
        tracing::info!("stopped");
        match fatal {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

/// The alert webhook of the configuration; none without ALERT_WEBHOOK_URL (or with an
/// empty one), an error for a URL that is not http(s).
fn webhook_of(config: &Config) -> anyhow::Result<Option<Webhook>> {
    match config.alert_webhook_url.as_deref() {
        None | Some("") => Ok(None),
        Some(url) => Ok(Some(Webhook::new(
            url,
            config.alert_format,
            config.alert_webhook_secret.clone(),
        )?)),
    }
}

/// The topology this configuration declares.
pub fn topology_of(config: &Config) -> Topology {
    // One cache bucket per kind for the TTL its first timers have: the configured
    // timeout, or that less REMIND_BEFORE when the first timer is the reminder's.
    let timeouts: Vec<(EntityKind, Duration)> = EntityKind::ALL
        .into_iter()
        .map(|kind| {
            let timer = FirstTimer::plan(config.timeout_of(kind), config.remind_before_of(kind));
            (kind, timer.wait())
        })
        .collect();
    Topology::new(
        &config.queue_prefix,
        &timeouts,
        config.max_timeout,
        &config.retry_delays,
        config.queue_type,
    )
    .with_timer_lead(config.timer_lead)
}
