//! Every figure of a run: the machine, the sizes, each phase, and the bars of issue 10
//! (and issue 15's bounded outbox) judged against them. Serialised whole to report.json and summarised as a table.

use std::fmt::Write as _;

use serde::Serialize;

use super::Sizes;
use super::burst::BurstReport;
use super::create::CreateReport;
use super::env::BenchEnv;
use super::lateness::LatenessReport;
use super::pending::PendingReport;

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// When the run started (UTC).
    pub started_at: String,
    /// What it ran on.
    pub machine: Machine,
    /// How the service ran.
    pub service: String,
    /// The sizes used.
    pub sizes: Sizes,
    /// The create phase, when run.
    pub create: Option<CreateReport>,
    /// The lateness phase, when run.
    pub lateness: Option<LatenessReport>,
    /// The burst phase, when run.
    pub burst: Option<BurstReport>,
    /// The pending phase, when run.
    pub pending: Option<PendingReport>,
    /// The goals, judged.
    pub goals: Vec<Goal>,
}

/// The machine and the servers, so a figure can be read in context.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// From /proc/cpuinfo.
    pub cpu_model: String,
    /// From /proc/meminfo, in MiB.
    pub memory_mib: u64,
    /// `show server_version`.
    pub postgres: String,
    /// `show synchronous_commit`: on means every commit waits for its WAL flush.
    pub synchronous_commit: String,
}

/// One goal (issue 10's bars, issue 15's outbox) and how the run fared.
#[derive(Debug, Serialize)]
pub struct Goal {
    /// What is demanded.
    pub goal: &'static str,
    /// What was measured.
    pub measured: String,
    /// Whether the measurement meets the goal.
    pub met: bool,
    /// Whether the run had the goal's size; a tiny run's verdict says little.
    pub at_goal_size: bool,
}

impl Report {
    /// An empty report of a run starting now.
    pub async fn new(sizes: Sizes, env: &BenchEnv) -> Self {
        Self {
            started_at: chrono::Utc::now().to_rfc3339(),
            machine: Machine::read(env).await,
            service: env.describe_service(),
            sizes,
            create: None,
            lateness: None,
            burst: None,
            pending: None,
            goals: Vec::new(),
        }
    }

    /// Judges the goals against the phases that ran.
    pub fn judge(&mut self) {
        if let Some(c) = &self.create {
            self.goals.push(Goal {
                goal: "POST /orders >= 0.5x pgbench at 32 clients, p99 <= 20 ms",
                measured: format!(
                    "{} pgbench ({:.0}/s vs {}), {:.2}x raw sqlx ({:.0}/s), p99 {:.1} ms",
                    c.ratio_to_pgbench
                        .map_or("n/a".to_owned(), |r| format!("{r:.2}x")),
                    c.api.per_second,
                    c.pgbench_tps
                        .map_or("n/a".to_owned(), |t| format!("{t:.0}/s")),
                    c.ratio,
                    c.raw_insert.per_second,
                    c.api.latency.p99_ms
                ),
                met: c.ratio_to_pgbench.unwrap_or(c.ratio) >= 0.5 && c.api.latency.p99_ms <= 20.0,
                at_goal_size: c.concurrency == 32,
            });
        }
        if let Some(l) = &self.lateness {
            self.goals.push(Goal {
                goal: "lateness p99 <= 10 ms at 1000 orders/s for 60 s",
                measured: format!(
                    "p99 {:.1} ms at {:.0}/s for {:.0} s, {} not cancelled; RabbitMQ alone p99 {:.1} ms ({:.2}x)",
                    l.lateness.p99_ms,
                    l.achieved_rate,
                    l.create.seconds,
                    l.not_cancelled,
                    l.broker_only.lateness.p99_ms,
                    l.lateness.p99_ms / l.broker_only.lateness.p99_ms.max(1e-9)
                ),
                met: l.lateness.p99_ms <= 10.0 && l.not_cancelled == 0,
                at_goal_size: l.target_rate >= 1000.0 && l.orders >= 60_000,
            });
            self.goals.push(Goal {
                goal: "outbox bounded at 1000 orders/s for several minutes (issue 15)",
                measured: format!("{} over {:.0} s", l.outbox.describe(), l.create.seconds),
                met: l.outbox.bounded().unwrap_or(false),
                at_goal_size: l.target_rate >= 1000.0 && l.create.seconds >= 180.0,
            });
        }
        if let Some(b) = &self.burst {
            self.goals.push(Goal {
                goal: "100,000 deadlines in one second all cancelled within 1.5x RabbitMQ alone",
                measured: format!(
                    "{} cancelled {:.2} s after the second began vs {:.2} s for RabbitMQ alone: {:.2}x; {} not cancelled",
                    b.cancelled,
                    b.all_cancelled_after_s,
                    b.broker_only.all_delivered_after_s,
                    b.all_cancelled_after_s / b.broker_only.all_delivered_after_s.max(1e-9),
                    b.not_cancelled
                ),
                met: b.all_cancelled_after_s <= 1.5 * b.broker_only.all_delivered_after_s
                    && b.not_cancelled == 0,
                at_goal_size: b.orders >= 100_000,
            });
        }
        if let Some(p) = &self.pending {
            self.goals.push(Goal {
                goal: "1,000,000 pending orders within 50 MB of idle memory",
                measured: match (p.idle, p.loaded) {
                    (Some(idle), Some(loaded)) => format!(
                        "{:.1} -> {:.1} MiB RSS (+{:.1}), peak {:.1} MiB",
                        idle.rss_mib,
                        loaded.rss_mib,
                        loaded.rss_mib - idle.rss_mib,
                        loaded.peak_mib
                    ),
                    _ => "memory not readable (no --pid)".into(),
                },
                met: p
                    .growth_mib
                    .is_some_and(|growth| growth * 1.048_576 <= 50.0),
                at_goal_size: p.orders >= 1_000_000,
            });
        }
    }

    /// The summary printed at the end.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "\norder-timeout bench, {} CPUs ({}), PostgreSQL {}, synchronous_commit={}, service: {}",
            m.cpus, m.cpu_model, m.postgres, m.synchronous_commit, self.service
        );
        let _ = writeln!(
            out,
            "{:<44} {:>12} {:>10} {:>10} {:>10}",
            "figure", "value", "p50 ms", "p99 ms", "max ms"
        );
        let row = |out: &mut String, name: &str, value: String, l: &super::load::Latency| {
            let _ = writeln!(
                out,
                "{name:<44} {value:>12} {:>10.2} {:>10.2} {:>10.2}",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        };
        if let Some(c) = &self.create {
            row(
                &mut out,
                &format!("create: POST /orders/s ({} clients)", c.concurrency),
                format!("{:.0}", c.api.per_second),
                &c.api.latency,
            );
            row(
                &mut out,
                &format!("create: raw INSERT/s (pool {})", c.pool_size),
                format!("{:.0}", c.raw_insert.per_second),
                &c.raw_insert.latency,
            );
            let _ = writeln!(
                out,
                "{:<44} {:>12}",
                "create: ratio API / raw",
                format!("{:.2}x", c.ratio)
            );
            let _ = writeln!(
                out,
                "{:<44} {:>12}",
                "create: pgbench INSERT tps / ratio API",
                match (c.pgbench_tps, c.ratio_to_pgbench) {
                    (Some(tps), Some(r)) => format!("{tps:.0} / {r:.2}x"),
                    _ => "n/a".to_owned(),
                }
            );
            let _ = writeln!(
                out,
                "create: CPU µs per POST /orders: {}",
                c.cpu.api.describe()
            );
            let _ = writeln!(
                out,
                "create: CPU µs per raw INSERT:   {}",
                c.cpu.raw_insert.describe()
            );
            let _ = writeln!(
                out,
                "create: CPU µs per pgbench INSERT: {}",
                c.cpu
                    .pgbench
                    .as_ref()
                    .map_or("n/a".to_owned(), |p| p.describe())
            );
            let _ = writeln!(
                out,
                "{:<44} {:>12}",
                "create: outbox size after (bytes)",
                c.outbox_bytes_after
                    .map_or("n/a".to_owned(), |b| b.to_string())
            );
        }
        if let Some(l) = &self.lateness {
            row(
                &mut out,
                &format!("lateness: create at {:.0}/s", l.achieved_rate),
                format!("{}", l.create.ops),
                &l.create.latency,
            );
            row(
                &mut out,
                &format!(
                    "lateness: cancelled_at - expires_at (p90 {:.1})",
                    l.lateness.p90_ms
                ),
                format!("{}", l.cancelled),
                &l.lateness,
            );
            row(
                &mut out,
                &format!(
                    "lateness: RabbitMQ alone, TTL {} ms (p90 {:.1})",
                    l.broker_only.ttl_ms, l.broker_only.lateness.p90_ms
                ),
                format!("{}", l.broker_only.messages),
                &l.broker_only.lateness,
            );
            let _ = writeln!(out, "lateness: outbox during load: {}", l.outbox.describe());
        }
        if let Some(b) = &self.burst {
            row(
                &mut out,
                &format!("burst: {} deadlines, lateness", b.orders),
                format!("{}", b.cancelled),
                &b.lateness,
            );
            let _ = writeln!(
                out,
                "{:<44} {:>12}",
                "burst: all cancelled after (s)",
                format!("{:.2}", b.all_cancelled_after_s)
            );
            let _ = writeln!(
                out,
                "{:<44} {:>12}",
                "burst: cancels/s",
                format!("{:.0}", b.cancels_per_second)
            );
            let o = &b.broker_only;
            let _ = writeln!(
                out,
                "{:<44} {:>12}",
                format!("burst: RabbitMQ alone, all delivered after (s)"),
                format!("{:.2}", o.all_delivered_after_s)
            );
            let _ = writeln!(out, "burst: CPU µs per cancel: {}", b.cpu.describe());
            let _ = writeln!(
                out,
                "burst: CPU µs per timer, RabbitMQ alone: {}",
                o.cpu.describe()
            );
        }
        if let Some(p) = &self.pending {
            if let (Some(idle), Some(loaded)) = (p.idle, p.loaded) {
                let _ = writeln!(
                    out,
                    "{:<44} {:>12}",
                    format!(
                        "pending: RSS idle -> {} pending (MiB)",
                        p.pending_in_database
                    ),
                    format!("{:.1} -> {:.1}", idle.rss_mib, loaded.rss_mib)
                );
            }
            row(
                &mut out,
                "pending: fill, POST /orders/s",
                format!("{:.0}", p.fill.per_second),
                &p.fill.latency,
            );
        }
        let _ = writeln!(out, "\ngoals:");
        for g in &self.goals {
            let verdict = if g.met { "met" } else { "MISSED" };
            let size = if g.at_goal_size {
                ""
            } else {
                " (not at the goal's size)"
            };
            let _ = writeln!(out, "  {verdict:<6} {}: {}{size}", g.goal, g.measured);
        }
        out
    }
}

impl Machine {
    async fn read(env: &BenchEnv) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, name: &str| -> String {
            text.lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_once(':'))
                .map(|(_, value)| value.trim().to_owned())
                .unwrap_or_default()
        };
        let setting = |name: &'static str| async move {
            sqlx::query_scalar::<_, String>(name)
                .fetch_one(&env.pool)
                .await
                .unwrap_or_default()
        };
        Self {
            cpus: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1),
            cpu_model: field(&cpuinfo, "model name"),
            memory_mib: field(&meminfo, "MemTotal")
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                / 1024,
            postgres: setting("show server_version").await,
            synchronous_commit: setting("show synchronous_commit").await,
        }
    }
}
