//! `order-timeout-bench`: how fast the service is on this machine, measured next to what
//! PostgreSQL alone does on the same machine.
//!
//! The bench creates a scratch database (`ot_bench_<random>`) and queue prefix, starts the
//! service's own binary against them (`order-timeout serve` as a child process, so what is
//! measured is what ships and its memory is its own), and runs four phases, each on a
//! freshly started service configured for it:
//!
//! 1. [`create`]: `POST /orders` throughput and latency at a fixed concurrency, and in the
//!    same run single-row INSERT transactions into a table shaped like `orders` through a
//!    pool of the service's size: the raw-insert baseline, and the ratio of the two.
//! 2. [`lateness`]: orders created at a steady rate with a short timeout; lateness is
//!    `cancelled_at - expires_at`, both database time.
//! 3. [`burst`]: orders and their timers inserted in bulk so every deadline falls in the
//!    same second; how long until all are cancelled.
//! 4. [`pending`]: many pending orders held; the service's resident memory before and after.
//!
//! It prints a summary table and writes every figure to a JSON report and the lateness
//! histogram to a PNG. With `--url` it measures a running service instead (then
//! `--database-url` names that service's database, and `--pid` its process for memory).
//! Everything is dropped at the end unless `--keep`.

mod broker;
mod burst;
mod cpu;
mod create;
mod env;
mod lateness;
mod load;
mod outbox;
mod pending;
mod plot;
mod report;
mod service;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use self::env::BenchEnv;
use self::report::Report;

/// The parts of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// POST /orders throughput and latency, and the raw-insert baseline.
    Create,
    /// Lateness of cancels at a steady creation rate.
    Lateness,
    /// Many deadlines in the same second.
    Burst,
    /// Memory while many orders are pending.
    Pending,
}

/// The flags of `order-timeout-bench`. Sizes left out take the full-size default, or the
/// `--tiny` one (shown second in each help text).
#[derive(Debug, Clone, Parser)]
#[command(name = "order-timeout-bench", version, about)]
pub struct BenchArgs {
    /// Measure the service already running at this base URL instead of starting one.
    #[arg(long)]
    pub url: Option<String>,

    /// With --url: the service's process id, so its memory can be read from /proc.
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,

    /// The service binary started for each phase without --url [default: `order-timeout`
    /// next to this executable, i.e. the same cargo profile's build of the workspace].
    #[arg(long, env = "ORDER_TIMEOUT_BIN")]
    pub service_bin: Option<PathBuf>,

    /// PostgreSQL. Without --url only its server is used: a scratch database
    /// `ot_bench_<random>` is created there and dropped at the end. With --url it must be
    /// the service's own database.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = order_timeout::config::DEFAULT_DATABASE_URL
    )]
    pub database_url: String,

    /// RabbitMQ (without --url: a scratch QUEUE_PREFIX is used there and deleted at the end).
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = order_timeout::config::DEFAULT_AMQP_URL
    )]
    pub amqp_url: String,

    /// Which phases to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "create,lateness,burst,pending"
    )]
    pub phases: Vec<Phase>,

    /// Small sizes that finish in seconds, for CI.
    #[arg(long)]
    pub tiny: bool,

    /// Seconds of measured load in the create phase, for the API and the baseline each [20; tiny 2].
    #[arg(long)]
    pub create_seconds: Option<u64>,

    /// Concurrent clients of the create phase and of filling the pending phase [32; tiny 8].
    #[arg(long)]
    pub concurrency: Option<usize>,

    /// DATABASE_POOL_SIZE of the service, and the pool size of the raw-insert baseline [16].
    #[arg(long)]
    pub pool_size: Option<u32>,

    /// Orders created in the lateness phase [60000; tiny 200].
    #[arg(long)]
    pub lateness_orders: Option<u64>,

    /// Seconds of load in the lateness phase instead of a count: `--rate` × this many
    /// orders (e.g. 300 to see whether the outbox stays bounded over five minutes).
    #[arg(long, conflicts_with = "lateness_orders")]
    pub lateness_seconds: Option<u64>,

    /// Orders per second created in the lateness phase [1000; tiny 100].
    #[arg(long)]
    pub rate: Option<u64>,

    /// ORDER_TIMEOUT of the lateness phase [2s; tiny 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lateness_timeout: Option<Duration>,

    /// Orders whose deadlines fall in the same second, in the burst phase [100000; tiny 2000].
    #[arg(long)]
    pub burst: Option<u64>,

    /// How far ahead the burst's second lies when its rows are inserted; the relay must
    /// publish every timer before it [default: 3s + 1s per 5000 orders].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub burst_lead: Option<Duration>,

    /// Pending orders held in the pending phase [1000000; tiny 2000].
    #[arg(long)]
    pub pending: Option<u64>,

    /// Where report.json, lateness.png and the service's log go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,

    /// Keep the scratch database and queues for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// The sizes of one run, with the preset applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizes {
    /// Measured seconds of each create load.
    pub create_seconds: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Service pool size and baseline pool size.
    pub pool_size: u32,
    /// Orders of the lateness phase.
    pub lateness_orders: u64,
    /// Their creation rate per second.
    pub rate: u64,
    /// Their timeout, in milliseconds.
    pub lateness_timeout_ms: u64,
    /// Orders of the burst.
    pub burst: u64,
    /// Lead of the burst's second, in milliseconds.
    pub burst_lead_ms: u64,
    /// Pending orders held.
    pub pending: u64,
}

impl Sizes {
    fn of(args: &BenchArgs) -> Self {
        let pick = |given: Option<u64>, full: u64, tiny: u64| {
            given.unwrap_or(if args.tiny { tiny } else { full })
        };
        let burst = pick(args.burst, 100_000, 2_000);
        let rate = pick(args.rate, 1_000, 100).max(1);
        let lateness_timeout = args
            .lateness_timeout
            .unwrap_or(Duration::from_secs(if args.tiny { 1 } else { 2 }));
        let burst_lead = args
            .burst_lead
            .unwrap_or(Duration::from_millis(3_000 + burst / 5));
        Self {
            create_seconds: pick(args.create_seconds, 20, 2),
            concurrency: args.concurrency.unwrap_or(if args.tiny { 8 } else { 32 }),
            pool_size: args.pool_size.unwrap_or(16),
            lateness_orders: match args.lateness_seconds {
                Some(seconds) => seconds.saturating_mul(rate).max(1),
                None => pick(args.lateness_orders, 60_000, 200),
            },
            rate,
            lateness_timeout_ms: lateness_timeout.as_millis() as u64,
            burst,
            burst_lead_ms: burst_lead.as_millis() as u64,
            pending: pick(args.pending, 1_000_000, 2_000),
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("order-timeout-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the bench, writes its report, cleans up (also after a failure or Ctrl-C).
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let sizes = Sizes::of(&args);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let env = BenchEnv::prepare(&args, &sizes).await?;
    eprintln!(
        "bench: database {}, service {}",
        env.database_name(),
        env.describe_service()
    );
    let outcome = tokio::select! {
        outcome = run_phases(&args, &sizes, &env) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    env.clean_up(args.keep).await;
    let report = outcome?;
    let json = args.out.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!("{}", report.table());
    println!("report: {}", json.display());
    if let Some(lateness) = &report.lateness {
        let png = args.out.join("lateness.png");
        plot::lateness_histogram(&lateness.samples_ms, &png)?;
        println!("lateness histogram: {}", png.display());
    }
    Ok(())
}

async fn run_phases(args: &BenchArgs, sizes: &Sizes, env: &BenchEnv) -> anyhow::Result<Report> {
    let mut report = Report::new(sizes.clone(), env).await;
    for phase in &args.phases {
        match phase {
            Phase::Create => report.create = Some(create::run(env, sizes).await?),
            Phase::Lateness => report.lateness = Some(lateness::run(env, sizes).await?),
            Phase::Burst => report.burst = Some(burst::run(env, sizes).await?),
            Phase::Pending => report.pending = Some(pending::run(env, sizes).await?),
        }
    }
    report.judge();
    Ok(report)
}
