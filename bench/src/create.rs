//! The create phase: `POST /orders` at a fixed concurrency, and in the same run the
//! physical limit it is compared with: single-row INSERT transactions into a table of the
//! same shape as `orders` (columns, constraints, indexes), at the same concurrency,
//! through a pool as large as the service's.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::Sizes;
use super::cpu::{self, CpuPerOp, Targets, Tracker};
use super::env::{BenchEnv, LONG_TIMEOUT};
use super::load::{self, Counters, Stop, Throughput};

/// Load before the measured window, so connections and caches are warm.
const WARMUP: Duration = Duration::from_secs(1);

/// Figures of the create phase.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// Concurrent clients of both loads.
    pub concurrency: usize,
    /// Connections of the service's pool and of the baseline's.
    pub pool_size: u32,
    /// `POST /orders`.
    pub api: Throughput,
    /// Single-row INSERT transactions into `bench_raw_orders`.
    pub raw_insert: Throughput,
    /// `api.per_second / raw_insert.per_second`.
    pub ratio: f64,
    /// pgbench running single-row INSERT transactions into the same table with as many
    /// clients (`su postgres -c 'pgbench -n -c N -j 2 -T S -f script DB'`): PostgreSQL's
    /// own limit without a Rust client; `None` when pgbench could not run.
    pub pgbench_tps: Option<f64>,
    /// `api.per_second / pgbench_tps`.
    pub ratio_to_pgbench: Option<f64>,
    /// `pg_total_relation_size('outbox')` once the relay drained after the API load.
    pub outbox_bytes_after: Option<i64>,
    /// How long after the API load the relay still published (`None`: not within 2 min).
    pub outbox_drained_after_s: Option<f64>,
    /// The service's counters over the phase.
    pub counters: Counters,
    /// CPU per operation in each measured window (see [`cpu`]).
    pub cpu: CreateCpu,
}

/// CPU time per operation of the create phase's three loads, by process group.
#[derive(Debug, Clone, Serialize)]
pub struct CreateCpu {
    /// Per `POST /orders` in the API's measured window (the relay's publishing and
    /// RabbitMQ's work for the creates happen in the same window).
    pub api: CpuPerOp,
    /// Per single-row INSERT through the bench's sqlx pool (client: the bench).
    pub raw_insert: CpuPerOp,
    /// Per pgbench transaction, over pgbench's whole run (client: su and pgbench);
    /// `None` when pgbench could not run.
    pub pgbench: Option<CpuPerOp>,
}

/// One pgbench run.
struct Pgbench {
    /// Transactions per second, without connection time.
    tps: f64,
    /// CPU per transaction.
    cpu: CpuPerOp,
}

/// Runs the baseline, then the API load, on a service whose orders outlive the phase.
pub async fn run(env: &BenchEnv, sizes: &Sizes) -> anyhow::Result<CreateReport> {
    let service = env.start(LONG_TIMEOUT).await?;
    let targets = cpu::targets(service.pid(), env.amqp_url(), env.database_name());
    let api = load::api(&service.url);
    let stop = Stop::Measure {
        warmup: WARMUP,
        measure: Duration::from_secs(sizes.create_seconds),
    };
    let (raw_insert, raw_insert_cpu, pgbench) =
        raw_insert(env, sizes, stop.clone(), &targets).await?;
    let pgbench_tps = pgbench.as_ref().map(|run| run.tps);
    let before = Counters::read(&api).await;
    let tag: Arc<str> = env.tag("create").into();
    let bar = load::timed_bar(
        "create",
        &format!("POST /orders, {} clients", sizes.concurrency),
        &stop,
    );
    let client = api.clone();
    let window = measured_window(&targets, &stop);
    let api_load = load::closed_loop(sizes.concurrency, stop, &bar, move |_| {
        let (client, tag) = (client.clone(), tag.clone());
        async move { client.create_order(&tag).await.map(drop) }
    })
    .await;
    let api_cpu = cpu::finish_window(window, api_load.ops).await;
    let drained = env.wait_outbox_drained(Duration::from_secs(120)).await?;
    let outbox_bytes_after = sqlx::query_scalar("select pg_total_relation_size('outbox')")
        .fetch_one(&env.pool)
        .await
        .ok();
    let counters = Counters::read(&api).await.since(&before);
    service.stop().await?;
    Ok(CreateReport {
        concurrency: sizes.concurrency,
        pool_size: sizes.pool_size,
        ratio: api_load.per_second / raw_insert.per_second.max(1e-9),
        ratio_to_pgbench: pgbench_tps.map(|tps| api_load.per_second / tps.max(1e-9)),
        pgbench_tps,
        outbox_bytes_after,
        api: api_load,
        raw_insert,
        outbox_drained_after_s: drained.map(|d| d.as_secs_f64()),
        counters,
        cpu: CreateCpu {
            api: api_cpu,
            raw_insert: raw_insert_cpu,
            pgbench: pgbench.map(|run| run.cpu),
        },
    })
}

/// CPU tracking of a closed loop's measured window, the loop starting now.
fn measured_window(targets: &Targets, stop: &Stop) -> tokio::task::JoinHandle<Tracker> {
    let (warmup, measure) = match stop {
        Stop::Measure { warmup, measure } => (*warmup, *measure),
        // Only timed loads are profiled; the others get an empty window.
        Stop::Count(_) | Stop::Until(_) => (Duration::ZERO, Duration::ZERO),
    };
    cpu::track_window(
        targets.clone(),
        tokio::time::Instant::now() + warmup,
        measure,
    )
}

/// The baseline: what PostgreSQL does with the same concurrency and pool, no service.
async fn raw_insert(
    env: &BenchEnv,
    sizes: &Sizes,
    stop: Stop,
    targets: &Targets,
) -> anyhow::Result<(Throughput, CpuPerOp, Option<Pgbench>)> {
    let pool = PgPoolOptions::new()
        .max_connections(sizes.pool_size)
        .connect(env.database_url())
        .await?;
    sqlx::query("drop table if exists bench_raw_orders")
        .execute(&pool)
        .await?;
    sqlx::query("create table bench_raw_orders (like orders including all)")
        .execute(&pool)
        .await?;
    let bar = load::timed_bar(
        "raw insert",
        &format!(
            "single-row INSERT transactions, {} clients, pool {}",
            sizes.concurrency, sizes.pool_size
        ),
        &stop,
    );
    let inserting = pool.clone();
    let window = measured_window(targets, &stop);
    let throughput = load::closed_loop(sizes.concurrency, stop, &bar, move |_| {
        let pool = inserting.clone();
        async move {
            sqlx::query(
                "insert into bench_raw_orders (id, customer_id, amount_cents, currency, items, expires_at)
                 values ($1, $2, $3, $4, $5, now() + $6::bigint * interval '1 millisecond')",
            )
            .bind(Uuid::now_v7())
            .bind("bench-raw")
            .bind(1999_i64)
            .bind("EUR")
            .bind(None::<serde_json::Value>)
            .bind(LONG_TIMEOUT.as_millis() as i64)
            .execute(&pool)
            .await?;
            Ok(())
        }
    })
    .await;
    let cpu = cpu::finish_window(window, throughput.ops).await;
    let pgbench = pgbench(env, sizes, targets).await;
    sqlx::query("drop table bench_raw_orders")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok((throughput, cpu, pgbench))
}

/// Runs pgbench as the `postgres` user: single-row INSERT transactions into
/// `bench_raw_orders` from `sizes.concurrency` clients for `sizes.create_seconds`.
/// Returns its tps (without connection time) and the CPU per transaction over its whole
/// run, or `None` (logged) when it cannot run.
async fn pgbench(env: &BenchEnv, sizes: &Sizes, targets: &Targets) -> Option<Pgbench> {
    let database = env
        .database_url()
        .rsplit('/')
        .next()?
        .split('?')
        .next()?
        .to_owned();
    let script = std::env::temp_dir().join(format!("ot-bench-insert-{}.sql", std::process::id()));
    let sql = "insert into bench_raw_orders (id, customer_id, amount_cents, currency, expires_at) \
               values (gen_random_uuid(), 'bench-pgbench', 1999, 'EUR', now() + interval '1 hour');\n";
    std::fs::write(&script, sql).ok()?;
    let command = format!(
        "pgbench -n -c {} -j 2 -T {} -f {} {}",
        sizes.concurrency,
        sizes.create_seconds.max(1),
        script.display(),
        database
    );
    let tracker = Tracker::start(targets.clone());
    let output = tokio::process::Command::new("su")
        .args(["postgres", "-c", &command])
        .output()
        .await;
    let _ = std::fs::remove_file(&script);
    let output = output
        .map_err(|e| eprintln!("pgbench did not run: {e}"))
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let tps: Option<f64> = text
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    // "number of transactions actually processed: 123456" (with "/N" when -t is given).
    let transactions: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(['/', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let cpu = tracker.finish(transactions).await;
    if tps.is_none() {
        eprintln!(
            "pgbench gave no tps: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Some(Pgbench { tps: tps?, cpu })
}
