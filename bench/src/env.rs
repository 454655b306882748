//! Where the bench runs: the scratch database and queue prefix (or the service given by
//! `--url`), the bench's own connection for its queries, starting the service configured
//! for a phase, and removing everything at the end.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use order_timeout::config::Config;
use order_timeout::startup::topology_of;
use order_timeout::store::{self, PoolSettings};

use super::load::{Api, Counters};
use super::service::Service;
use super::{BenchArgs, Sizes};

/// Where the service under test comes from.
enum Mode {
    /// Started by the bench for each phase: this binary, as a child process.
    Started(PathBuf),
    /// Already running at this URL, maybe with a known process id.
    External { url: String, pid: Option<u32> },
}

/// How often [`BenchEnv::wait_cancelled`] counts the orders in the database at most while
/// the service's counters say cancels are still to come.
const COUNT_PERIOD: Duration = Duration::from_secs(2);
/// How often it counts once the counters say every cancel happened (they also count
/// entities of other tags).
const RECOUNT_PERIOD: Duration = Duration::from_millis(500);

/// The scratch resources of one bench run and how to start the service on them.
pub struct BenchEnv {
    /// How the service is run.
    mode: Mode,
    /// The service's database.
    database_url: String,
    /// Its name, for the report and the drop at the end.
    database_name: String,
    /// The broker.
    amqp_url: String,
    /// QUEUE_PREFIX of the started services (unknown for an external one).
    prefix: String,
    /// Short random id naming this run's rows (`customer_id = bench-<phase>-<run>`).
    run_id: String,
    /// DATABASE_POOL_SIZE of the started services.
    pool_size: u32,
    /// The bench's own connections: progress polls, bulk inserts, figures.
    pub pool: PgPool,
    /// Every queue a started service or the bench declared, deleted at the end.
    queues: Mutex<BTreeSet<String>>,
    /// Where a child service writes its log.
    pub log_path: PathBuf,
}

/// A timeout long enough that nothing is cancelled while a phase runs.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(3600);

impl BenchEnv {
    /// Creates and migrates the scratch database (without `--url`), and connects to it.
    pub async fn prepare(args: &BenchArgs, sizes: &Sizes) -> anyhow::Result<Self> {
        let run_id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let (mode, database_url) = match &args.url {
            Some(url) => {
                let url = url.trim_end_matches('/').to_owned();
                (
                    Mode::External { url, pid: args.pid },
                    args.database_url.clone(),
                )
            }
            None => (
                Mode::Started(service_bin(args)?),
                with_database(&args.database_url, &format!("ot_bench_{run_id}")),
            ),
        };
        let settings = PoolSettings {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(600),
            session: store::SessionSettings::default(),
        };
        let log_path = args.out.join("service.log");
        std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let pool = store::connect(&database_url, settings).await?;
        if matches!(mode, Mode::Started(_)) {
            store::migrate(&pool).await?;
        }
        Ok(Self {
            mode,
            database_name: database_name(&database_url),
            database_url,
            amqp_url: args.amqp_url.clone(),
            prefix: format!("ot_bench_{run_id}"),
            run_id,
            pool_size: sizes.pool_size,
            pool,
            queues: Mutex::new(BTreeSet::new()),
            log_path,
        })
    }

    /// The service's database name.
    pub fn database_name(&self) -> &str {
        &self.database_name
    }

    /// The queue prefix of started services, and of the bench's own queues.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The broker's URL.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// The service's database URL (the raw-insert baseline connects to it).
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// How the service runs, for the report.
    pub fn describe_service(&self) -> String {
        match &self.mode {
            Mode::Started(bin) => format!("child process (`{} serve`)", bin.display()),
            Mode::External { url, pid } => format!("external at {url} (pid {pid:?})"),
        }
    }

    /// True when the bench can choose the service's ORDER_TIMEOUT.
    pub fn starts_services(&self) -> bool {
        matches!(self.mode, Mode::Started(_))
    }

    /// The `customer_id` marking one phase's orders of this run.
    pub fn tag(&self, phase: &str) -> String {
        format!("bench-{phase}-{}", self.run_id)
    }

    /// Starts the service with this ORDER_TIMEOUT, ready to take requests (an external
    /// service is used as it is).
    pub async fn start(&self, order_timeout: Duration) -> anyhow::Result<Service> {
        let bin = match &self.mode {
            Mode::External { url, pid } => return Ok(Service::external(url, *pid)),
            Mode::Started(bin) => bin,
        };
        let mut config = Config::defaults();
        config.database_url = self.database_url.clone();
        config.amqp_url = self.amqp_url.clone();
        config.queue_prefix = self.prefix.clone();
        config.order_timeout = order_timeout;
        config.database_pool_size = self.pool_size;
        self.remember_queues(topology_of(&config).all_queues());
        Service::spawn_child(bin, config, &self.log_path).await
    }

    /// Records the cache queue the relay declares for a bucket (`order.30000`), so the
    /// clean-up deletes it.
    pub fn remember_bucket(&self, bucket: &str) {
        self.remember_queues([format!("{}.cache.{bucket}", self.prefix)]);
    }

    fn remember_queues(&self, names: impl IntoIterator<Item = String>) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.extend(names);
        }
    }

    /// Orders of a phase still pending.
    async fn pending(&self, tag: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from orders where customer_id = $1 and status = 'pending'",
        )
        .bind(tag)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Waits until the relay has published every outbox row; returns how long it took, or
    /// `None` if rows were still unpublished after `limit`. Asks whether any row is left,
    /// not how many: the relay deletes from the front, so the answer comes from the first
    /// live row instead of a count of a backlog of 100,000 every 50 ms.
    pub async fn wait_outbox_drained(&self, limit: Duration) -> anyhow::Result<Option<Duration>> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let backlog: bool = sqlx::query_scalar("select exists (select 1 from outbox)")
                .fetch_one(&self.pool)
                .await?;
            if !backlog {
                return Ok(Some(started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }

    /// Waits until no order of `tag` is pending (or `limit` passed), moving `bar` along;
    /// returns how many still are.
    ///
    /// Counting the tag's orders reads every one of them (25-40 ms of PostgreSQL's CPU for
    /// 100,000, measured), on the cores the service under test needs: polled every 100 ms
    /// it took 10-15 % of the machine's CPU from a burst. So the database is counted at most
    /// every [`COUNT_PERIOD`], or once the service's own counters (`api`'s `/metrics`,
    /// since `before`) say `expected` entities were cancelled for their timeout, and
    /// those counters are what is read every 100 ms. The figures of a phase come from the
    /// rows' timestamps, not from when this returns.
    pub async fn wait_cancelled(
        &self,
        tag: &str,
        expected: u64,
        api: &Api,
        before: &Counters,
        limit: Duration,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<i64> {
        let started = Instant::now();
        let mut counted: Option<Instant> = None;
        loop {
            let cancelled = Counters::read(api)
                .await
                .since(before)
                .cancelled_for_timeout();
            bar.set_position((cancelled.max(0.0) as u64).min(expected));
            let count_due = match counted {
                None => true,
                Some(at) if cancelled >= expected as f64 => at.elapsed() >= RECOUNT_PERIOD,
                Some(at) => at.elapsed() >= COUNT_PERIOD,
            };
            if count_due || started.elapsed() >= limit {
                let pending = self.pending(tag).await?;
                counted = Some(Instant::now());
                if pending == 0 || started.elapsed() >= limit {
                    return Ok(pending);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drops the scratch database and deletes the scratch queues and exchanges.
    pub async fn clean_up(&self, keep: bool) {
        self.pool.close().await;
        if keep || !self.starts_services() {
            return;
        }
        if let Err(error) = self.drop_database().await {
            eprintln!("bench: could not drop {}: {error:#}", self.database_name);
        }
        if let Err(error) = self.delete_queues().await {
            eprintln!(
                "bench: could not delete the {} queues: {error:#}",
                self.prefix
            );
        }
    }

    async fn drop_database(&self) -> anyhow::Result<()> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&with_database(&self.database_url, "postgres"))
            .await?;
        let sql = format!(
            "drop database if exists \"{}\" with (force)",
            self.database_name
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(())
    }

    async fn delete_queues(&self) -> anyhow::Result<()> {
        let connection =
            Connection::connect(&self.amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let queues: Vec<String> = self
            .queues
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in ["delay", "events"] {
            let name = format!("{}.{exchange}", self.prefix);
            channel
                .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = connection.close(200, "bench done".into()).await;
        Ok(())
    }
}

/// The service binary: `--service-bin`, else `order-timeout` next to the bench's own
/// executable (`cargo build --workspace` puts both in the same target directory).
fn service_bin(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let bin = match &args.service_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("order-timeout"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "no service binary at {}: build it with `cargo build --workspace` (with the same \
         --release as the bench) or name it with --service-bin",
        bin.display()
    );
    Ok(bin)
}

/// The URL with its database (the path) replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{root}/{database}?{query}"),
        None => format!("{root}/{database}"),
    }
}

fn database_name(url: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    base[authority_end..]
        .split_once('/')
        .map(|(_, db)| db.to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced_and_read() {
        assert_eq!(
            with_database("postgres://u@h:5432/app", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/app?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(database_name("postgres://u@h:5432/app?a=b"), "app");
    }
}
