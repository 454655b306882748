//! Every setting of the service in one place, read from flags or the environment.
//!
//! The names are a contract with operators (README.md "Configuration",
//! docs/architecture.md "Operations"); each flag falls back to its environment variable,
//! then to the default shown in `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where the service finds PostgreSQL when DATABASE_URL is unset (also the bench's default).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/order_timeout";
/// Where the service finds RabbitMQ when AMQP_URL is unset (also the bench's default).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How `order-timeout serve` is configured. Its `Debug` hides passwords and tokens
/// (see `secrets`), and `--help` never prints the environment's value of a secret.
#[derive(Clone, Args)]
pub struct Config {
    /// PostgreSQL holding orders, waybills, the outbox and failed messages; created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = DEFAULT_DATABASE_URL
    )]
    pub database_url: String,

    /// RabbitMQ holding the timers: one URL, or the nodes of a cluster as a
    /// comma-separated list (tried in turn from a random one; any node that answers is used).
    /// Checked when the service starts, so a bad entry is named by position, not echoed.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = DEFAULT_AMQP_URL
    )]
    pub amqp_url: String,

    /// Address the HTTP API listens on (port 0 picks a free one).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// How long an order may stay unpaid before it is cancelled.
    #[arg(long, env = "ORDER_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub order_timeout: Duration,

    /// How long a waybill may wait for a carrier before it is cancelled.
    #[arg(long, env = "WAYBILL_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub waybill_timeout: Duration,

    /// How long before its deadline a still-pending order gets one `order.expiring`
    /// event (again after an extension); unset: no reminders.
    #[arg(long, env = "ORDER_REMIND_BEFORE", value_parser = parse_duration)]
    pub order_remind_before: Option<Duration>,

    /// How long before its deadline a still-pending waybill gets one `waybill.expiring`
    /// event; unset: no reminders.
    #[arg(long, env = "WAYBILL_REMIND_BEFORE", value_parser = parse_duration)]
    pub waybill_remind_before: Option<Duration>,

    /// The longest `timeout_seconds` a create may ask for, and the furthest from now an
    /// extension may move a deadline. Also bounds the re-arm delay levels.
    #[arg(long, env = "MAX_TIMEOUT", default_value = "7d", value_parser = parse_duration)]
    pub max_timeout: Duration,

    /// First part of every exchange and queue name, so several deployments share a broker.
    #[arg(long, env = "QUEUE_PREFIX", default_value = "order_timeout", value_parser = parse_prefix)]
    pub queue_prefix: String,

    /// `classic` queues for one broker, `quorum` for a cluster.
    #[arg(long, env = "QUEUE_TYPE", default_value = "classic")]
    pub queue_type: crate::broker::QueueType,

    /// The `QUEUE_PREFIX` of an earlier deployment whose queues this instance keeps
    /// emptying into its own due queue: the switch from classic to quorum queues without
    /// losing a pending timer (README "Switching from classic to quorum queues"). Unset:
    /// nothing is drained.
    #[arg(long, env = "DRAIN_QUEUE_PREFIX", value_parser = parse_prefix)]
    pub drain_queue_prefix: Option<String>,

    /// Due-queue deliveries handled at the same time.
    #[arg(long, env = "CONSUMER_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub consumer_concurrency: u16,

    /// How long before its deadline a timer leaves its cache bucket (its TTL is the time
    /// left less this); the due consumer holds it until the deadline and cancels then. The
    /// deadline itself is unchanged and still decided by the database: this only takes
    /// the broker's dead-letter latency (p99 about 10 ms on two busy cores, 19 ms with
    /// RabbitMQ beside the service's load; README "Lateness") out of every cancel's
    /// lateness. Each instance holds at most `PREFETCH` timers, for at most this long plus
    /// 10 ms, and a held timer is unacked, so a dying instance's timers go to the others.
    /// `0` publishes each timer for exactly the time left (DESIGN.md's flow). 25 ms (the
    /// default) covers the dead-letter latency measured on two busy cores.
    /// At most `MAX_TIMER_LEAD` (1 s): longer would only hold more timers in memory.
    #[arg(long, env = "TIMER_LEAD", default_value = "25ms", value_parser = parse_timer_lead)]
    pub timer_lead: Duration,

    /// Unacknowledged deliveries the broker may push to this instance. 1024 lets a burst
    /// of deadlines go through in batches of `PREFETCH / CONSUMER_CONCURRENCY` (256): at 64
    /// the same 100,000-deadline burst took 2.3x RabbitMQ's own time, at 512-1024 1.6-1.7x
    /// (README "Performance"). Safe with several instances: each holds at most this many
    /// unacked timers, which the broker hands to the others if it dies.
    #[arg(long, env = "PREFETCH", default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Partitions the outbox's entities are split into, one relay lease each (1-256). Each
    /// instance's relay holds its fair share (the partitions divided by the instances
    /// running), so several instances publish side by side, and the others take a dead
    /// instance's partitions over within seconds. An entity's messages all go through
    /// one partition, so their order is kept. Every instance must use the same count;
    /// while instances with another count hold leases, the rest publish nothing.
    #[arg(long, env = "OUTBOX_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub outbox_partitions: u16,

    /// One retry tier per delay; their count is the retry limit.
    #[arg(long, env = "RETRY_DELAYS", default_value = "1s,5s,30s,2m,10m", value_parser = parse_duration, value_delimiter = ',')]
    pub retry_delays: Vec<Duration>,

    /// How often the sweeper cancels overdue rows whose timer was lost or is late.
    #[arg(long, env = "SWEEP_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// How far past its deadline a pending row must be before the sweeper cancels it,
    /// so the sweeper only catches what the timers missed.
    #[arg(long, env = "SWEEP_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub sweep_grace: Duration,

    /// Bearer token of the admin API; unset or empty disables it (503 `admin_disabled`).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Where alerts about failed messages are posted, in the shape of ALERT_FORMAT.
    #[arg(long, env = "ALERT_WEBHOOK_URL", hide_env_values = true)]
    pub alert_webhook_url: Option<String>,

    /// The body the webhook expects and how its answer says it accepted the alert.
    #[arg(long, env = "ALERT_FORMAT", default_value = "dingtalk")]
    pub alert_format: crate::alert::AlertFormat,

    /// Signing secret of the robot (DingTalk "加签", Feishu signature check); unset or
    /// empty sends unsigned. Hidden from `--help` and from `Debug`.
    #[arg(long, env = "ALERT_WEBHOOK_SECRET", hide_env_values = true)]
    pub alert_webhook_secret: Option<crate::alert::WebhookSecret>,

    /// How long to try to reach the broker before giving up and exiting; 0 = forever.
    #[arg(long, env = "RECONNECT_MAX", default_value = "0", value_parser = parse_duration_or_zero)]
    pub reconnect_max: Duration,

    /// Largest number of PostgreSQL connections this instance opens.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,

    /// How long a request waits for a database connection before answering 503.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub database_acquire_timeout: Duration,

    /// Longest wait for a row lock before the statement fails (and is retried).
    #[arg(long, env = "DATABASE_LOCK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub database_lock_timeout: Duration,

    /// Longest any single SQL statement may run.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub database_statement_timeout: Duration,

    /// Longest an order or waybill request waits on the database in all (connection and
    /// statements); past it the answer is 503 `database_unavailable`. The acquire timeout
    /// alone does not bound a request whose connection hangs (a black-holed network).
    #[arg(long, env = "DATABASE_REQUEST_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub database_request_timeout: Duration,

    /// Longest one background database call may take, client side: the due consumer's
    /// cancel batch, the relay's batch, a sweep, the retry router's failed-message insert.
    /// Past it the call fails as transient (the messages take the retry path) and its
    /// connection is closed, not reused; PostgreSQL's own timeouts cannot fire when the
    /// network hangs.
    #[arg(long, env = "DATABASE_CALL_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub database_call_timeout: Duration,

    /// A transaction whose client stays silent this long is ended by PostgreSQL and its row
    /// locks released (`idle_in_transaction_session_timeout`); bounds how long a vanished
    /// client blocks the rows it locked. 0 disables.
    #[arg(long, env = "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", default_value = "30s", value_parser = parse_duration_or_zero)]
    pub database_idle_in_transaction_timeout: Duration,

    /// Silence after which PostgreSQL probes a client with TCP keepalives
    /// (`tcp_keepalives_idle`; 0 = the operating system's default, about 2 h).
    #[arg(long, env = "DATABASE_KEEPALIVE_IDLE", default_value = "10s", value_parser = parse_duration_or_zero)]
    pub database_keepalive_idle: Duration,

    /// Time between unanswered keepalive probes (`tcp_keepalives_interval`).
    #[arg(long, env = "DATABASE_KEEPALIVE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub database_keepalive_interval: Duration,

    /// Unanswered probes after which PostgreSQL drops the client (`tcp_keepalives_count`).
    #[arg(long, env = "DATABASE_KEEPALIVE_COUNT", default_value_t = 3)]
    pub database_keepalive_count: u32,

    /// How often a running query checks that its client is still connected
    /// (`client_connection_check_interval`, PostgreSQL 14+; 0 disables).
    #[arg(long, env = "DATABASE_CONNECTION_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration_or_zero)]
    pub database_connection_check_interval: Duration,

    /// A background loop (consumer, relay, sweeper, broker supervisor) busy this long
    /// without finishing anything is stuck: `/healthz` answers 503 naming it, so an
    /// orchestrator restarts the process. Longer than the slowest legitimate batch.
    #[arg(long, env = "LIVENESS_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub liveness_timeout: Duration,

    /// How long in-flight work may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Longest a client may take to send a request's headers (also how long an idle
    /// keep-alive connection is kept), so a slowloris cannot hold a connection.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_read_timeout: Duration,

    /// Longest a request may take from its headers to its response (a slowly sent body
    /// included); past it the answer is 408 `request_timeout`.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,

    /// Most HTTP connections open at once; further clients wait in the listen backlog,
    /// so many idle sockets cannot exhaust the process's file descriptors.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// Failed admin authentications one client address may make per minute; past it every
    /// admin call from that address answers 429 until the minute is over.
    #[arg(long, env = "ADMIN_AUTH_FAILURES_PER_MINUTE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_auth_failures_per_minute: u32,

    /// Bytes of a failed message's body kept in `failed_messages`; the rest is dropped and
    /// the row notes the original size, so one huge message cannot bloat the table.
    #[arg(long, env = "FAILED_MESSAGE_MAX_BODY", default_value_t = 1024 * 1024)]
    pub failed_message_max_body: usize,

    /// How long an `Idempotency-Key` is remembered; older keys are pruned.
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub idempotency_key_retention: Duration,

    /// How often idempotency keys and resolved failed messages past their retention
    /// are deleted (in batches).
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// How long a requeued or discarded failed message is kept for audit before pruning.
    #[arg(long, env = "RESOLVED_FAILED_MESSAGE_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub resolved_failed_message_retention: Duration,

    /// Log lines as human-readable text or as JSON.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

impl std::fmt::Debug for Config {
    /// Every setting, with the passwords of the URLs and the tokens replaced by `***`:
    /// a configuration dumped into a log or a panic message leaks no secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &secrets::redact_url(&self.database_url))
            .field("amqp_url", &secrets::redact_url(&self.amqp_url))
            .field("http_addr", &self.http_addr)
            .field("order_timeout", &self.order_timeout)
            .field("waybill_timeout", &self.waybill_timeout)
            .field("queue_prefix", &self.queue_prefix)
            .field("queue_type", &self.queue_type)
            .field("drain_queue_prefix", &self.drain_queue_prefix)
            .field("consumer_concurrency", &self.consumer_concurrency)
            .field("prefetch", &self.prefetch)
            .field("outbox_partitions", &self.outbox_partitions)
            .field("retry_delays", &self.retry_delays)
            .field("sweep_interval", &self.sweep_interval)
            .field("sweep_grace", &self.sweep_grace)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| secrets::HIDDEN),
            )
            .field(
                "alert_webhook_url",
                &self.alert_webhook_url.as_ref().map(|_| secrets::HIDDEN),
            )
            .field("alert_format", &self.alert_format)
            // Its Debug prints `WebhookSecret(***)`.
            .field("alert_webhook_secret", &self.alert_webhook_secret)
            .field("reconnect_max", &self.reconnect_max)
            .field("http_header_read_timeout", &self.http_header_read_timeout)
            .field("http_request_timeout", &self.http_request_timeout)
            .field("http_max_connections", &self.http_max_connections)
            .field("failed_message_max_body", &self.failed_message_max_body)
            .field("log_format", &self.log_format)
            .finish_non_exhaustive()
    }
}

/// Keeping secrets out of `Debug` output.
pub mod secrets {
    /// What a hidden value prints as.
    pub const HIDDEN: &str = "***";

    /// `scheme://user:***@host/…`: the URL with its password (if any) hidden; every URL
    /// of a comma-separated list (AMQP_URL names several nodes) is redacted.
    pub fn redact_url(urls: &str) -> String {
        urls.split(',')
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn redact_one(url: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                let hidden = if userinfo.contains(':') {
                    format!("{user}:{HIDDEN}")
                } else {
                    user.to_owned()
                };
                format!("{scheme}://{hidden}@{host}{path}")
            }
            None => url.to_owned(),
        }
    }
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event, for log shippers.
    Json,
}

impl Config {
    /// The settings of `serve` with every default, as if no flag or variable were given.
    pub fn defaults() -> Self {
        use clap::{Command, FromArgMatches};
        let matches = Config::augment_args(Command::new("defaults"))
            .ignore_errors(true)
            .get_matches_from(["defaults"]);
        // The defaults above are all valid, so this cannot fail.
        Config::from_arg_matches(&matches).expect("built-in defaults parse")
    }

    /// How the database pool is sized and bounded.
    pub fn pool_settings(&self) -> crate::store::PoolSettings {
        crate::store::PoolSettings {
            max_connections: self.database_pool_size,
            acquire_timeout: self.database_acquire_timeout,
            lock_timeout: self.database_lock_timeout,
            statement_timeout: self.database_statement_timeout,
            session: crate::store::SessionSettings {
                idle_in_transaction_timeout: self.database_idle_in_transaction_timeout,
                keepalive_idle: self.database_keepalive_idle,
                keepalive_interval: self.database_keepalive_interval,
                keepalive_count: self.database_keepalive_count,
                connection_check_interval: self.database_connection_check_interval,
            },
        }
    }

    /// The timeout of a kind of entity, used for its deadline and its cache bucket.
    pub fn timeout_of(&self, kind: crate::domain::EntityKind) -> Duration {
        match kind {
            crate::domain::EntityKind::Order => self.order_timeout,
            crate::domain::EntityKind::Waybill => self.waybill_timeout,
        }
    }

    /// How long before a deadline of `kind` its reminder is due; `None`: no reminders.
    pub fn remind_before_of(&self, kind: crate::domain::EntityKind) -> Option<Duration> {
        match kind {
            crate::domain::EntityKind::Order => self.order_remind_before,
            crate::domain::EntityKind::Waybill => self.waybill_remind_before,
        }
        .filter(|before| !before.is_zero())
    }
}

/// Parses `1500ms`, `5s`, `30m` for a setting where zero is a mistake (a timeout, a
/// delay, an interval): zero in any spelling (`0`, `0s`, `0ms`) is refused at start-up.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration_or_zero(text)?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// Parses a duration for a setting whose help says what zero means (`RECONNECT_MAX`: keep
/// trying forever; the PostgreSQL session limits: disabled or the system default). A bare
/// `0` is accepted as well as `0s`.
fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// The longest `TIMER_LEAD`: a lead is there to cover the broker's dead-letter latency
/// (milliseconds), and each instance holds up to `PREFETCH` timers for that long.
pub const MAX_TIMER_LEAD: Duration = Duration::from_secs(1);

/// A `TIMER_LEAD`: zero (none) up to `MAX_TIMER_LEAD`.
fn parse_timer_lead(text: &str) -> Result<Duration, String> {
    let lead = parse_duration_or_zero(text)?;
    if lead > MAX_TIMER_LEAD {
        return Err(format!(
            "must be at most {}",
            humantime::format_duration(MAX_TIMER_LEAD)
        ));
    }
    Ok(lead)
}

/// Queue names allow only a safe alphabet, so a prefix can never break a name.
fn parse_prefix(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 100
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err("use 1 to 100 characters of [A-Za-z0-9_.-]".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_documentation_says() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 30m "), Ok(Duration::from_secs(1800)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("5s"), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn a_timer_lead_is_zero_to_one_second() {
        assert_eq!(parse_timer_lead("0"), Ok(Duration::ZERO));
        assert_eq!(parse_timer_lead("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_timer_lead("1s"), Ok(MAX_TIMER_LEAD));
        assert_eq!(parse_timer_lead("1001ms"), Err("must be at most 1s".into()));
        assert!(parse_timer_lead("soon").is_err());
    }

    #[test]
    fn zero_is_refused_in_every_spelling_where_it_makes_no_sense() {
        for zero in ["0", "0s", "0ms", " 0 "] {
            assert!(parse_duration(zero).is_err(), "{zero:?} accepted");
        }
    }

    /// Settings parsed from the command line the way the service reads them: zero is
    /// refused for a timeout, a delay or an interval, and accepted where its help says
    /// what zero means.
    #[test]
    fn zero_is_accepted_only_where_it_means_something() {
        use clap::{Command, FromArgMatches};
        let parse = |args: &[&str]| {
            let command = Config::augment_args(Command::new("serve"));
            let matches = command
                .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))?;
            Config::from_arg_matches(&matches)
        };
        for refused in [
            "--order-timeout=0",
            "--waybill-timeout=0s",
            "--max-timeout=0",
            "--retry-delays=1s,0,5s",
            "--sweep-interval=0",
            "--sweep-grace=0ms",
            "--database-acquire-timeout=0",
            "--database-call-timeout=0",
            "--liveness-timeout=0",
            "--shutdown-timeout=0",
        ] {
            assert!(parse(&[refused]).is_err(), "{refused} accepted");
        }
        let config = parse(&[
            "--reconnect-max=0",
            "--database-idle-in-transaction-timeout=0",
            "--database-keepalive-idle=0s",
            "--database-connection-check-interval=0",
        ])
        .expect("zero means forever / disabled / the system default here");
        assert!(config.reconnect_max.is_zero());
        assert!(config.database_idle_in_transaction_timeout.is_zero());
        assert!(config.database_keepalive_idle.is_zero());
        assert!(config.database_connection_check_interval.is_zero());
    }

    #[test]
    fn debug_output_hides_passwords_and_tokens() {
        let mut config = Config::defaults();
        config.database_url = "postgres://app:pg-s3cret@db:5432/ot".into();
        config.amqp_url = "amqp://u:mq-s3cret@a:5672/%2f,amqp://u:mq-s3cret@b:5672/%2f".into();
        config.admin_token = Some("admin-s3cret".into());
        config.alert_webhook_url = Some("https://hook/?access_token=hook-s3cret".into());
        config.alert_webhook_secret = Some(crate::alert::WebhookSecret::new("SECsign-s3cret"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("postgres://app:***@db:5432/ot"), "{debug}");
    }

    #[test]
    fn prefixes_are_restricted_to_a_safe_alphabet() {
        assert!(parse_prefix("order_timeout").is_ok());
        assert!(parse_prefix("a b").is_err());
        assert!(parse_prefix("").is_err());
    }
}
