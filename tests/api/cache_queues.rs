//! Cache queues that fail under load, with two timeout buckets (orders and waybills)
//! in flight: a cache queue deleted at run time, and one whose every publish the broker
//! refuses. Rows of one bucket must not hold up the rows of the other, and nothing is
//! lost.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::chaos::load::{Load, LoadShape, Outage, init_logs, verify};
use crate::helpers::{TestApp, eventually, id_of};

/// Creates a waybill every 100 ms until stopped; returns the ids answered 201.
struct WaybillLoad {
    stop: CancellationToken,
    task: JoinHandle<Vec<Uuid>>,
}

impl WaybillLoad {
    fn start(address: String) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ids = Vec::new();
            while !token.is_cancelled() {
                let body = serde_json::json!({"origin": "Hamburg", "destination": "Lyon"});
                if let Ok(response) = client
                    .post(format!("{address}/waybills"))
                    .json(&body)
                    .send()
                    .await
                    && response.status() == reqwest::StatusCode::CREATED
                    && let Ok(waybill) = response.json::<serde_json::Value>().await
                {
                    ids.push(Uuid::parse_str(&id_of(&waybill)).expect("waybill id"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        });
        Self { stop, task }
    }

    async fn finish(self) -> Vec<Uuid> {
        self.stop.cancel();
        self.task.await.expect("waybill load")
    }
}

/// How many `table` rows created in `[from, to]` are in `status`, and how many in all.
async fn created_between(
    app: &TestApp,
    table: &str,
    status: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (i64, i64) {
    let sql = format!(
        "select count(*) filter (where status = $3), count(*) from {table}
          where created_at between $1 and $2"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(to)
        .bind(status)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

async fn assert_every_waybill_cancelled(app: &TestApp, waybills: &[Uuid], within: Duration) {
    let settled = eventually(within, || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from waybills where id = any($1) and status = 'cancelled'",
        )
        .bind(waybills)
        .fetch_one(&app.pool)
        .await
        .expect("count")
            == waybills.len() as i64
    })
    .await;
    assert!(settled, "not every waybill was cancelled within {within:?}");
}

/// The cache queue of each bucket the test's service publishes into.
fn cache_queues(app: &TestApp) -> Vec<String> {
    app.topology
        .buckets
        .iter()
        .map(|(kind, ms)| app.topology.cache_queue(&format!("{}.{ms}", kind.as_str())))
        .collect()
}

/// Far enough past a deadline that a cancel this late can only be the sweeper's.
const SWEEP_GRACE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_queues_deleted_twice_under_load_are_redeclared_and_nothing_is_lost() {
    init_logs();
    // The timers inside a deleted queue are gone with it: the sweeper (every second,
    // 10 s past a deadline) cancels their entities. Every later timer fires through the
    // redeclared queue, well before the sweeper could take its entity.
    let app = TestApp::spawn_with(|config| {
        config.order_timeout = Duration::from_secs(3);
        config.waybill_timeout = Duration::from_secs(4);
        config.sweep_interval = Duration::from_secs(1);
        config.sweep_grace = SWEEP_GRACE;
    })
    .await;
    let events = app.observe_events_as("order_events", "order.#").await;
    let queues = cache_queues(&app);
    assert_eq!(queues.len(), 2, "{queues:?}");
    let load = Load::start(vec![app.instance.address.clone()], LoadShape::default());
    let waybills = WaybillLoad::start(app.instance.address.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;

    let first_deleted = app.db_now().await;
    let channel = app.channel().await;
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        for queue in &queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .expect("delete a cache queue");
        }
    }
    let last_deleted = app.db_now().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = load.finish().await;
    let waybills = waybills.finish().await;
    stats.assert_http_never_failed();

    let outage = Outage {
        start: first_deleted,
        end: last_deleted,
    };
    verify(
        &app,
        "cache queues deleted",
        &events,
        &stats,
        &[outage],
        Duration::from_secs(40),
    )
    .await;
    assert_every_waybill_cancelled(&app, &waybills, Duration::from_secs(30)).await;
    // What was created a second after the last deletion was cancelled by its timer.
    let now = app.db_now().await;
    for table in ["orders", "waybills"] {
        let by_sweeper: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select count(*) from {table}
              where created_at between $1 and $2 and status = 'cancelled'
                and cancelled_at >= expires_at + $3::bigint * interval '1 millisecond'"
        )))
        .bind(last_deleted + chrono::Duration::seconds(1))
        .bind(now)
        .bind(SWEEP_GRACE.as_millis() as i64)
        .fetch_one(&app.pool)
        .await
        .expect("count");
        assert_eq!(
            by_sweeper, 0,
            "{table} created after the deletions were left to the sweeper"
        );
        let (cancelled, all) = created_between(
            &app,
            table,
            "cancelled",
            last_deleted + chrono::Duration::seconds(1),
            now,
        )
        .await;
        assert!(
            cancelled > 0,
            "no {table} created after the deletions was cancelled ({all} created)"
        );
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for queue in &queues {
        let declared = app
            .channel()
            .await
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await;
        assert!(declared.is_ok(), "{queue} was not redeclared: {declared:?}");
    }
}

/// A policy on the broker, removed when dropped whatever happens. Scoped by its
/// pattern to queues of one test's prefix, so no other test sees it.
struct Policy {
    name: String,
}

impl Policy {
    fn set(name: &str, pattern: &str, definition: &str) -> Self {
        let policy = Policy {
            name: name.to_owned(),
        };
        let set = rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "100",
            name,
            pattern,
            definition,
        ]);
        assert!(set, "policy {name} not set");
        policy
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        if !rabbitmqctl(&["clear_policy", &self.name]) {
            eprintln!("policy {} left on the broker", self.name);
        }
    }
}

/// Runs `rabbitmqctl`; says whether it succeeded (and why not on stderr).
fn rabbitmqctl(args: &[&str]) -> bool {
    match Command::new("rabbitmqctl").args(args).output() {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            eprintln!(
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            false
        }
        Err(error) => {
            eprintln!("rabbitmqctl {args:?} could not run: {error}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_queue_refusing_every_timer_holds_up_neither_the_other_bucket_nor_anything_once_it_accepts_again()
 {
    init_logs();
    let app = TestApp::spawn_with(|config| {
        config.order_timeout = Duration::from_secs(3);
        config.waybill_timeout = Duration::from_secs(4);
    })
    .await;
    let events = app.observe_events_as("order_events", "order.#").await;
    let load = Load::start(vec![app.instance.address.clone()], LoadShape::default());
    let waybills = WaybillLoad::start(app.instance.address.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The order bucket's queue accepts nothing: the broker nacks every timer published
    // to it (a length limit of 0 that rejects publishes, as a blanket limit an operator
    // set could do).
    let order_queue = app.topology.cache_queue(&format!(
        "order.{}",
        app.instance.config.order_timeout.as_millis()
    ));
    let pattern = format!("^{}$", order_queue.replace('.', "\\."));
    let definition = r#"{"max-length":0,"overflow":"reject-publish"}"#;
    let policy = tokio::task::spawn_blocking({
        let name = format!("{}.refuse", app.topology.prefix);
        move || Policy::set(&name, &pattern, definition)
    })
    .await
    .expect("set the policy");
    let refusing_since = app.db_now().await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Meanwhile the waybills' timers go through: those created once the refusal was in
    // place are cancelled by their timers (the sweeper is off). A refused order timer is
    // held back and tried again after 2 s, 4 s, ...; once its deadline has passed it goes
    // straight to the due queue, so the orders are cancelled late, not lost.
    let from = refusing_since + chrono::Duration::seconds(1);
    let until = app.db_now().await - chrono::Duration::seconds(4);
    let waybills_through = eventually(Duration::from_secs(10), || async {
        let (cancelled, created) =
            created_between(&app, "waybills", "cancelled", from, until).await;
        created > 0 && cancelled == created
    })
    .await;
    let (cancelled, created) = created_between(&app, "waybills", "cancelled", from, until).await;
    let (pending_orders, orders) = created_between(&app, "orders", "pending", from, until).await;
    tokio::task::spawn_blocking(move || drop(policy))
        .await
        .expect("clear the policy");
    let accepting_since = app.db_now().await;
    println!(
        "while the order bucket refused: {cancelled} of {created} waybills cancelled, \
         {pending_orders} of {orders} orders overdue and pending"
    );
    assert!(
        waybills_through,
        "waybill timers held up behind the refused order timers: {cancelled} of {created} cancelled"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = load.finish().await;
    let waybills = waybills.finish().await;
    stats.assert_http_never_failed();
    // Held back rows are tried again after at most a minute.
    let outage = Outage {
        start: refusing_since,
        end: accepting_since,
    };
    let verdict = verify(
        &app,
        "order bucket refusing",
        &events,
        &stats,
        &[outage],
        Duration::from_secs(90),
    )
    .await;
    assert_every_waybill_cancelled(&app, &waybills, Duration::from_secs(30)).await;
    // A refused row is published again whole, its event with it: duplicates show the
    // refusals happened.
    assert!(
        verdict.duplicate_events > 0,
        "the order bucket's queue refused nothing: {verdict:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_rows_a_cache_queue_refuses_do_not_hide_the_rows_behind_them() {
    init_logs();
    let app = TestApp::spawn_with(|config| {
        config.order_timeout = Duration::from_secs(3);
        config.waybill_timeout = Duration::from_secs(2);
    })
    .await;
    let bucket = format!("order.{}", app.instance.config.order_timeout.as_millis());
    let order_queue = app.topology.cache_queue(&bucket);
    let pattern = format!("^{}$", order_queue.replace('.', "\\."));
    let definition = r#"{"max-length":0,"overflow":"reject-publish"}"#;
    let policy = tokio::task::spawn_blocking({
        let name = format!("{}.refuse", app.topology.prefix);
        move || Policy::set(&name, &pattern, definition)
    })
    .await
    .expect("set the policy");
    // More refused rows than the relay holds back at once before it pages on (a page is
    // 500): timers due in an hour, so none is sent to the due queue instead.
    sqlx::query(
        "insert into outbox (entity_id, timer_bucket, due_at, timer_body)
         select id, $1, now() + interval '1 hour', jsonb_build_object('kind', 'order', 'id', id)
         from (select gen_random_uuid() as id from generate_series(1, 2000)) refused",
    )
    .bind(&bucket)
    .execute(&app.pool)
    .await
    .expect("refused rows");
    let mut waybills = Vec::new();
    for _ in 0..5 {
        waybills.push(Uuid::parse_str(&id_of(&app.create_waybill().await)).expect("id"));
    }
    assert_every_waybill_cancelled(&app, &waybills, Duration::from_secs(45)).await;
    tokio::task::spawn_blocking(move || drop(policy))
        .await
        .expect("clear the policy");
}
