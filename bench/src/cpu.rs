//! CPU time per operation, by process group: the service, PostgreSQL, RabbitMQ and the
//! client (the bench itself, or pgbench), read from `/proc/<pid>/stat` (utime + stime)
//! over a measured window, so a figure says where the machine's cycles went per create.
//!
//! Processes come and go during a window (pgbench's backends exist only while it runs), so
//! a [`Tracker`] scans `/proc` every [`SCAN_PERIOD`] and keeps, per process, the CPU time
//! it had when first seen and when last seen; a process that appeared during the window
//! counts from zero, one that exited counts up to its last scan (at most one period of its
//! CPU is missed). Which processes count:
//!
//! - service: the pid of the service under test (unknown for `--url` without `--pid`);
//! - PostgreSQL: every process named `postgres` (postmaster, checkpointer, walwriter,
//!   autovacuum, backends), except client backends of other databases, told by their
//!   process title (`postgres: <cluster>: <user> <database> <host> <state>`), since other
//!   test suites may share the server;
//! - RabbitMQ: the `beam.smp` process that listens on the port of AMQP_URL (found through
//!   the socket's inode in `/proc/net/tcp*`), so the nodes of another cluster on the same
//!   machine do not count;
//! - client: the bench's own process and its descendants other than the service (`su` and
//!   the pgbench it runs).
//!
//! Nothing here fails a phase: what cannot be read is reported as `None`.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often a [`Tracker`] scans `/proc`.
pub const SCAN_PERIOD: Duration = Duration::from_millis(250);

/// The processes to account for, found once per window.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// The service's pid.
    pub service: Option<u32>,
    /// The broker's `beam.smp` pid.
    pub broker: Option<u32>,
    /// The database whose client backends count for PostgreSQL.
    pub database: String,
}

/// The group a process is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Service,
    Postgres,
    Rabbitmq,
    Client,
}

/// CPU per operation over one measured window, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerOp {
    /// Operations completed in the window.
    pub operations: u64,
    /// Length of the window in seconds.
    pub window_s: f64,
    /// The service's process.
    pub service_us: Option<f64>,
    /// Every PostgreSQL process of the server except other databases' client backends.
    pub postgres_us: Option<f64>,
    /// The broker's `beam.smp`.
    pub rabbitmq_us: Option<f64>,
    /// The load generator: the bench process and its children (pgbench), not the service.
    pub client_us: Option<f64>,
    /// The sum of the four; `None` when any of them is.
    pub total_us: Option<f64>,
    /// Busy time of all CPUs (`/proc/stat`) per operation: the total plus everything else
    /// the machine did meanwhile (other test suites, builds), to tell a clean run.
    pub machine_us: Option<f64>,
    /// PostgreSQL processes seen in the window.
    pub postgres_processes: usize,
}

impl CpuPerOp {
    /// `service/PostgreSQL/RabbitMQ/client = total (machine)` for the summary table.
    pub fn describe(&self) -> String {
        let us = |value: Option<f64>| value.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
        format!(
            "service {} + PostgreSQL {} + RabbitMQ {} + client {} = {} (machine {})",
            us(self.service_us),
            us(self.postgres_us),
            us(self.rabbitmq_us),
            us(self.client_us),
            us(self.total_us),
            us(self.machine_us)
        )
    }
}

/// Finds the service's, the broker's and the database's processes for a window.
pub fn targets(service: Option<u32>, amqp_url: &str, database: &str) -> Targets {
    let broker = amqp_port(amqp_url).and_then(broker_pid);
    if broker.is_none() {
        eprintln!("bench: cpu: no RabbitMQ process found listening on the port of AMQP_URL");
    }
    Targets {
        service,
        broker,
        database: database.to_owned(),
    }
}

/// CPU seconds by group, accumulated by a [`Tracker`].
#[derive(Debug, Default)]
struct Totals {
    ticks: HashMap<&'static str, u64>,
    postgres_processes: usize,
    machine_busy_ticks: Option<u64>,
    seconds: f64,
}

/// Scans `/proc` in the background from [`Tracker::start`] to [`Tracker::finish`].
pub struct Tracker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Totals>,
    targets: Targets,
}

impl Tracker {
    /// Starts tracking now.
    pub fn start(targets: Targets) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(track(targets.clone(), stopped));
        Self {
            stop,
            task,
            targets,
        }
    }

    /// Stops tracking and divides the CPU time of each group by `operations`.
    pub async fn finish(self, operations: u64) -> CpuPerOp {
        let _ = self.stop.send(());
        let Ok(totals) = self.task.await else {
            return CpuPerOp::default();
        };
        per_op(&self.targets, &totals, operations)
    }
}

/// Tracks the window `[from, from + length)` in a task of its own, for loads whose window
/// is set by a clock (a closed loop's measured window after its warm-up).
pub fn track_window(targets: Targets, from: Instant, length: Duration) -> JoinHandle<Tracker> {
    tokio::spawn(async move {
        let tracker = start_at(targets, from).await;
        tokio::time::sleep(length).await;
        tracker
    })
}

/// Tracks from `from` until [`finish_window`], for loads whose end is an event (the last
/// cancel of a burst) rather than a clock.
pub fn track_from(targets: Targets, from: Instant) -> JoinHandle<Tracker> {
    tokio::spawn(start_at(targets, from))
}

async fn start_at(targets: Targets, from: Instant) -> Tracker {
    tokio::time::sleep_until(from).await;
    Tracker::start(targets)
}

/// Ends a window started by [`track_window`] or [`track_from`]; `None` fields when its
/// task did not run to the end.
pub async fn finish_window(window: JoinHandle<Tracker>, operations: u64) -> CpuPerOp {
    match window.await {
        Ok(tracker) => tracker.finish(operations).await,
        Err(_) => CpuPerOp::default(),
    }
}

fn per_op(targets: &Targets, totals: &Totals, operations: u64) -> CpuPerOp {
    let per = |ticks: Option<u64>| -> Option<f64> {
        let ticks = ticks?;
        (operations > 0).then(|| ticks as f64 * 1e6 / clock_ticks_per_second() / operations as f64)
    };
    let group = |name: &str| totals.ticks.get(name).copied();
    let service_us = per(targets.service.and(group("service")));
    let postgres_us = per((totals.postgres_processes > 0).then(|| group("postgres").unwrap_or(0)));
    let rabbitmq_us = per(targets.broker.and(group("rabbitmq")));
    let client_us = per(group("client"));
    let total_us = match (service_us, postgres_us, rabbitmq_us, client_us) {
        (Some(a), Some(b), Some(c), Some(d)) => Some(a + b + c + d),
        _ => None,
    };
    CpuPerOp {
        operations,
        window_s: totals.seconds,
        service_us,
        postgres_us,
        rabbitmq_us,
        client_us,
        total_us,
        machine_us: per(totals.machine_busy_ticks),
        postgres_processes: totals.postgres_processes,
    }
}

/// What is known of one process across scans.
struct Seen {
    group: Group,
    first: u64,
    last: u64,
}

/// Adds one scan to what is known: a process seen again gets its latest ticks; one seen
/// first in the window's first scan starts from its ticks then, one that appeared later
/// from zero (all its CPU time fell inside the window).
fn record(
    seen: &mut HashMap<(u32, u64), Seen>,
    scanned: impl IntoIterator<Item = ((u32, u64), Group, u64)>,
    first_scan: bool,
) {
    for (key, group, ticks) in scanned {
        seen.entry(key)
            .and_modify(|s| {
                s.group = group;
                s.last = ticks;
            })
            .or_insert(Seen {
                group,
                first: if first_scan { ticks } else { 0 },
                last: ticks,
            });
    }
}

async fn track(targets: Targets, mut stopped: oneshot::Receiver<()>) -> Totals {
    let started = Instant::now();
    let machine_before = machine_busy_ticks();
    // Keyed by (pid, start time), so a reused pid is another process.
    let mut seen: HashMap<(u32, u64), Seen> = HashMap::new();
    let mut first_scan = true;
    loop {
        record(&mut seen, scan(&targets), first_scan);
        first_scan = false;
        tokio::select! {
            _ = &mut stopped => break,
            _ = tokio::time::sleep(SCAN_PERIOD) => {}
        }
    }
    // The last scan, at the end of the window.
    record(&mut seen, scan(&targets), false);
    let mut totals = Totals {
        seconds: started.elapsed().as_secs_f64(),
        machine_busy_ticks: machine_before
            .zip(machine_busy_ticks())
            .map(|(before, after)| after.saturating_sub(before)),
        ..Totals::default()
    };
    for s in seen.values() {
        let name = match s.group {
            Group::Service => "service",
            Group::Postgres => {
                totals.postgres_processes += 1;
                "postgres"
            }
            Group::Rabbitmq => "rabbitmq",
            Group::Client => "client",
        };
        *totals.ticks.entry(name).or_insert(0) += s.last.saturating_sub(s.first);
    }
    totals
}

/// One process's line of `/proc/<pid>/stat`, the fields used here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// Start time after boot, in clock ticks: with the pid, names a process.
    start: u64,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid ... utime(14) stime(15) ... starttime(22)`;
/// comm may hold spaces and parentheses, so the fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state).
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    Some(Stat {
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
        start: field(22)?,
    })
}

/// Every counted process now: its key, group and CPU ticks.
fn scan(targets: &Targets) -> Vec<((u32, u64), Group, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let stats: HashMap<u32, Stat> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&text)?))
        })
        .collect();
    let me = std::process::id();
    let descends_from_me = |mut pid: u32| {
        for _ in 0..8 {
            if pid == me {
                return true;
            }
            match stats.get(&pid) {
                Some(stat) if stat.ppid > 1 => pid = stat.ppid,
                _ => return false,
            }
        }
        false
    };
    stats
        .iter()
        .filter_map(|(&pid, stat)| {
            let group = if Some(pid) == targets.service {
                Group::Service
            } else if Some(pid) == targets.broker {
                Group::Rabbitmq
            } else if stat.comm == "postgres" {
                let title = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                if !counts_for(&String::from_utf8_lossy(&title), &targets.database) {
                    return None;
                }
                Group::Postgres
            } else if descends_from_me(pid) {
                Group::Client
            } else {
                return None;
            };
            Some(((pid, stat.start), group, stat.ticks))
        })
        .collect()
}

/// Whether a PostgreSQL process with this title counts: every one but a client backend
/// of another database. A backend's title is `postgres: <cluster>: <user> <database>
/// <host(port)|[local]> <state>`; anything else (the postmaster's command line, auxiliary
/// processes, a title not yet set) counts.
fn counts_for(title: &str, database: &str) -> bool {
    let title = title.replace('\0', " ");
    let Some(rest) = title.strip_prefix("postgres: ") else {
        return true;
    };
    // Without a cluster name the title has one colon less.
    let rest = rest.rsplit_once(": ").map_or(rest, |(_, after)| after);
    let words: Vec<&str> = rest.split_whitespace().collect();
    let is_client = words
        .get(2)
        .is_some_and(|host| *host == "[local]" || host.ends_with(')'));
    match (is_client, words.get(1)) {
        (true, Some(db)) => *db == database,
        _ => true,
    }
}

/// Busy ticks of all CPUs since boot: the `cpu` line of `/proc/stat` without idle and iowait.
fn machine_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let busy: u64 = values.iter().take(8).sum::<u64>()
        - values.get(3).copied().unwrap_or(0)
        - values.get(4).copied().unwrap_or(0);
    Some(busy)
}

/// Clock ticks per second of `/proc` times (USER_HZ).
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the C library; no memory is passed.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The TCP port of an AMQP URL (`amqp://user:pass@host:port/vhost`), default 5672 (5671
/// for amqps).
fn amqp_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    match host_port.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port.parse().ok(),
        _ => Some(if scheme == "amqps" { 5671 } else { 5672 }),
    }
}

/// The `beam.smp` process listening on `port`: the listening socket's inode from
/// `/proc/net/tcp` and `/proc/net/tcp6`, then the `beam.smp` holding that socket.
fn broker_pid(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let sockets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
        .find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .any(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
        })
}

/// Inodes of the sockets in LISTEN state (`0A`) on `port` in a `/proc/net/tcp*` table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    let port = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            if local_port != port || *fields.get(3)? != "0A" {
                return None;
            }
            fields.get(9).map(|inode| (*inode).to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_in_comm_is_parsed() {
        let line = "1234 (beam (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 30 0 987654 0 0";
        let stat = parse_stat(line).expect("parsed");
        assert_eq!(stat.comm, "beam (x) y");
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.ticks, 175);
        assert_eq!(stat.start, 987_654);
    }

    #[test]
    fn only_client_backends_of_other_databases_are_left_out() {
        let db = "ot_bench_1";
        assert!(counts_for(
            "postgres: 15/main: postgres ot_bench_1 127.0.0.1(5432) idle",
            db
        ));
        assert!(counts_for(
            "postgres: 15/main: postgres ot_bench_1 [local] INSERT",
            db
        ));
        assert!(!counts_for(
            "postgres: 15/main: postgres ot_test_2 127.0.0.1(52438) idle",
            db
        ));
        assert!(!counts_for("postgres: postgres ot_test_2 [local] idle", db));
        assert!(counts_for("postgres: 15/main: walwriter ", db));
        assert!(counts_for("postgres: 15/main: autovacuum launcher ", db));
        assert!(counts_for(
            "/usr/lib/postgresql/15/bin/postgres\0-D\0/var/lib",
            db
        ));
    }

    #[test]
    fn the_amqp_port_is_read_from_the_url() {
        assert_eq!(
            amqp_port("amqp://guest:guest@127.0.0.1:5673/%2f"),
            Some(5673)
        );
        assert_eq!(amqp_port("amqp://localhost"), Some(5672));
        assert_eq!(amqp_port("amqps://u:p@host/vhost"), Some(5671));
        assert_eq!(amqp_port("not a url"), None);
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             7: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 7149 1 0 100 0 0 10 0\n   \
             8: 0100007F:1628 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   106        0 7150 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 5672), vec!["7149".to_owned()]);
        assert!(listening_inodes(table, 5673).is_empty());
    }
}
