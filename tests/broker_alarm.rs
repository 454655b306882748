//! A real RabbitMQ memory alarm (`rabbitmqctl set_vm_memory_high_watermark` far below
//! the memory in use) while orders are created, paid and come due.
//!
//! RabbitMQ then blocks every connection that publishes, the service's publishing
//! connection included. What must hold: due timers are still consumed and acked (the
//! consumer has a connection of its own), creates and payments still answer (the outbox
//! holds their messages), no loop waits forever (a blocked publish times out and the
//! liveness check stays green), and once the alarm clears every timer is published and
//! every unpaid order is cancelled, no paid one.
//!
//! It blocks publishing on the broker every other test uses, so it is ignored in the
//! default parallel run and run on its own, serially:
//!
//! ```text
//! cargo test --test broker_alarm -- --ignored --test-threads=1
//! ```
#![allow(dead_code)]

#[path = "api/helpers.rs"]
mod helpers;
#[path = "api/chaos/load.rs"]
mod load;

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use helpers::{TestApp, eventually};
use load::{Load, LoadShape, Outage, init_logs, verify};

/// The watermark that raises the alarm on any running node.
const ALARMING_WATERMARK: &str = "0.0000001";
/// RabbitMQ's default, used when the current setting cannot be read or is itself a
/// left-over of this test (a run killed before its guard could restore it).
const DEFAULT_WATERMARK: &str = "0.4";

/// How the node's memory high watermark is set: a fraction of the machine's memory or
/// an absolute number of bytes (`rabbitmqctl set_vm_memory_high_watermark absolute N`).
#[derive(Debug, Clone, PartialEq)]
enum Watermark {
    Relative(String),
    Absolute(String),
}

impl Watermark {
    /// The node's current setting, as `vm_memory_monitor` reports it (`0.4` or
    /// `{absolute,1073741824}`).
    fn current() -> Self {
        let output = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]);
        let text = output.as_deref().unwrap_or_default().trim();
        if let Some(bytes) = text
            .strip_prefix("{absolute,")
            .and_then(|rest| rest.strip_suffix('}'))
        {
            return Watermark::Absolute(bytes.trim().trim_matches('"').to_owned());
        }
        match text.parse::<f64>() {
            // Below 1 % is no setting anyone runs with: a killed earlier run left it.
            Ok(fraction) if fraction >= 0.01 => Watermark::Relative(text.to_owned()),
            _ => {
                eprintln!(
                    "memory high watermark read as {text:?}; restoring the default {DEFAULT_WATERMARK} afterwards"
                );
                Watermark::Relative(DEFAULT_WATERMARK.to_owned())
            }
        }
    }

    fn set(&self) {
        let args: Vec<&str> = match self {
            Watermark::Relative(fraction) => vec!["set_vm_memory_high_watermark", fraction],
            Watermark::Absolute(bytes) => {
                vec!["set_vm_memory_high_watermark", "absolute", bytes]
            }
        };
        rabbitmqctl(&args);
    }
}

/// A memory alarm on the broker; the previous watermark is set back when it is dropped,
/// whatever happens in between (a panicking test included), and the drop waits until
/// the broker has cleared the alarm.
struct MemoryAlarm {
    previous: Watermark,
}

impl MemoryAlarm {
    /// Reads the current watermark, then sets one the node is far above.
    fn raise() -> Self {
        // Created before the watermark changes: even a half-done raise is undone.
        let guard = MemoryAlarm {
            previous: Watermark::current(),
        };
        println!(
            "memory high watermark before the test: {:?}",
            guard.previous
        );
        Watermark::Relative(ALARMING_WATERMARK.to_owned()).set();
        guard
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        self.previous.set();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while memory_alarm_raised() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        if memory_alarm_raised() {
            eprintln!(
                "the memory alarm is still raised after restoring {:?}",
                self.previous
            );
        }
    }
}

/// True while the broker reports a memory alarm.
fn memory_alarm_raised() -> bool {
    rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."])
        .is_some_and(|alarms| alarms.contains("memory"))
}

/// Runs `rabbitmqctl`, returning its output when it succeeded.
fn rabbitmqctl(args: &[&str]) -> Option<String> {
    match Command::new("rabbitmqctl").args(args).output() {
        Ok(output) if output.status.success() => {
            Some(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        Ok(output) => {
            eprintln!(
                "rabbitmqctl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            None
        }
        Err(error) => {
            eprintln!("rabbitmqctl {args:?} could not run: {error}");
            None
        }
    }
}

/// Ready and unacknowledged messages of `queue`, from the broker's own listing.
fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    let listing = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "--quiet",
        "--no-table-headers",
    ])?;
    listing.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != queue {
            return None;
        }
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("rabbitmqctl task")
}

/// How long the alarm lasts: longer than a publish's confirm timeout (15 s), so the
/// relay's blocked publishes really time out and are tried again.
const ALARM: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "raises a memory alarm on the shared broker; run serially by scripts/test"]
async fn a_memory_alarm_blocks_publishing_but_not_the_due_consumer_and_loses_nothing() {
    init_logs();
    // Orders come due 10 s after creation, so the timers published before the alarm come
    // due during it (confirming the alarm takes seconds of rabbitmqctl). A loop busy for 20 s without progress counts as stuck: longer than
    // any single bounded call (15 s), shorter than the alarm.
    let app = TestApp::spawn_with(|config| {
        config.order_timeout = Duration::from_secs(10);
        config.liveness_timeout = Duration::from_secs(20);
    })
    .await;
    let events = app.observe_events().await;
    let load = Load::start(vec![app.instance.address.clone()], LoadShape::default());
    tokio::time::sleep(Duration::from_secs(8)).await;

    let alarm = blocking(MemoryAlarm::raise).await;
    let raised = eventually(Duration::from_secs(15), || async {
        blocking(memory_alarm_raised).await
    })
    .await;
    assert!(raised, "the broker did not raise a memory alarm");
    let start = app.db_now().await;
    let alarm_ends = Instant::now() + ALARM;
    println!("memory alarm raised at {start}");

    // Throughout the alarm the service stays live and ready: it is not wedged, and a
    // restart would not help (the alarm is the broker's).
    let mut health = Vec::new();
    while Instant::now() < alarm_ends {
        for path in ["/healthz", "/readyz"] {
            let (status, body) = app.get(path).await;
            if status != StatusCode::OK {
                health.push(format!("{path} {status} {body}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let raised_until = app.db_now().await;

    // Publishing was blocked: orders created during the alarm whose deadline has passed
    // are still pending (their timers wait in the outbox, the sweeper is off).
    let (overdue_pending, cancelled_during, outbox): (i64, i64, i64) = sqlx::query_as(
        "select
           (select count(*) from orders
             where status = 'pending' and created_at > $1 + interval '2 seconds'
               and expires_at < $2),
           (select count(*) from orders
             where status = 'cancelled' and cancelled_at between $1 and $2),
           (select count(*) from outbox)",
    )
    .bind(start)
    .bind(raised_until)
    .fetch_one(&app.pool)
    .await
    .expect("counts during the alarm");
    // The due queue was emptied and every delivery acked while publishing was blocked:
    // with acks blocked, the deliveries handled during the alarm (the orders cancelled
    // then) would still count as unacked, at most PREFETCH of them, the rest ready.
    let due = blocking({
        let queue = app.topology.due_queue.clone();
        move || queue_counts(&queue)
    })
    .await;
    let still_raised = blocking(memory_alarm_raised).await;
    blocking(move || drop(alarm)).await;
    let outage = Outage {
        start,
        end: app.db_now().await,
    };
    println!(
        "during the alarm: {cancelled_during} orders cancelled, {overdue_pending} overdue \
         orders pending, {outbox} outbox rows; due queue (ready, unacked) {due:?}"
    );
    assert!(still_raised, "the alarm cleared before the test ended it");
    assert!(
        health.is_empty(),
        "during the alarm: {:?}",
        &health[..health.len().min(5)]
    );
    assert!(
        overdue_pending > 0 && outbox > 0,
        "publishing was not blocked: {overdue_pending} overdue orders pending, {outbox} outbox rows"
    );
    assert!(
        cancelled_during > 0,
        "no order was cancelled while publishing was blocked"
    );
    assert_eq!(
        due,
        Some((0, 0)),
        "the due queue was not drained and acked during the alarm"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = load.finish().await;
    stats.assert_http_never_failed();
    verify(
        &app,
        "memory alarm",
        &events,
        &stats,
        &[outage],
        Duration::from_secs(60),
    )
    .await;
}
