//! Dirty database faults: connections that stop forwarding without ever closing (a
//! primary failover, a dead NAT entry), seen through the fault proxy. What must hold:
//! a vanished client's row locks are released by PostgreSQL's session settings, no
//! background call waits forever (client-side time limits), a loop that does wait is
//! reported by `/healthz` and the stalled-seconds metric, and nothing is lost.

use std::time::Duration;

use order_timeout::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::chaos::load::{Load, LoadShape, Outage, init_logs, verify};
use crate::helpers::{
    TestApp, eventually, expect_error, expect_status, id_of, order_body, poll, via_port,
};
use crate::proxy::FaultProxy;

const POSTGRES: &str = "127.0.0.1:5432";

/// The value of `order_timeout_loop_stalled_seconds{loop="…"}` in the service's `/metrics`.
async fn stalled_seconds(app: &TestApp, which: &str) -> Option<f64> {
    let text = app.metrics_text().await;
    let prefix = format!("order_timeout_loop_stalled_seconds{{loop=\"{which}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

/// The service with every database connection through a fault proxy of its own, set up
/// further by `tweak`; the test's own pool (`app.pool`) connects directly.
async fn behind_proxy(tweak: impl FnOnce(&mut Config)) -> (FaultProxy, TestApp) {
    let proxy = FaultProxy::start(POSTGRES).await;
    let port = proxy.port();
    let app = TestApp::spawn_with(|c| {
        c.database_url = via_port(&c.database_url, port);
        tweak(c);
    })
    .await;
    (proxy, app)
}

/// Once a statement of the service waits for the lock `holder` holds, black-holes the
/// service's open connections and then releases the lock: PostgreSQL finishes the
/// statement and its answer goes into the void. `what` names the waiting statement.
async fn black_hole_once_waiting(
    app: &TestApp,
    proxy: &FaultProxy,
    holder: sqlx::Transaction<'_, sqlx::Postgres>,
    what: &str,
) {
    let waiting = eventually(Duration::from_secs(15), || async {
        lock_waiters(app).await > 0
    })
    .await;
    assert!(waiting, "{what} never reached the held lock");
    proxy.black_hole_existing();
    holder.rollback().await.expect("release the lock");
}

/// `/healthz` as status and body.
async fn healthz(app: &TestApp) -> (StatusCode, Value) {
    app.get("/healthz").await
}

/// Backends of the service waiting for a row lock in the test's database.
async fn lock_waiters(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity
         where datname = $1 and application_name = 'order-timeout' and wait_event_type = 'Lock'",
    )
    .bind(&app.env.db_name)
    .fetch_one(&app.pool)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_awaiting_a_black_holed_connection_is_reported_stuck_then_recovers_by_its_time_limit()
 {
    init_logs();
    let (proxy, app) = behind_proxy(|c| {
        // One connection: if the black-holed one stayed in the pool, nothing would work.
        c.database_pool_size = 1;
        c.database_lock_timeout = Duration::from_secs(30);
        c.database_statement_timeout = Duration::from_secs(30);
        c.database_call_timeout = Duration::from_secs(8);
        c.liveness_timeout = Duration::from_secs(2);
        c.retry_delays = [1, 2, 4].map(Duration::from_secs).to_vec();
    })
    .await;
    assert_eq!(healthz(&app).await.0, StatusCode::OK);
    let order = app.create_order().await;
    let id = Uuid::parse_str(&id_of(&order)).expect("uuid");

    // Hold the order's row, so the consumer's cancel is in flight when the network goes.
    let mut holder = app.pool.begin().await.expect("begin");
    sqlx::query("select 1 from orders where id = $1 for update")
        .bind(id)
        .execute(&mut *holder)
        .await
        .expect("lock the order");
    black_hole_once_waiting(&app, &proxy, holder, "the consumer's cancel").await;
    let blackholed_at = Instant::now();

    // PostgreSQL commits the cancel; its answer goes into the black hole.
    app.wait_for_order_status(&id_of(&order), "cancelled", Duration::from_secs(5))
        .await;
    let stuck = poll(Duration::from_secs(5), || async {
        let (status, body) = healthz(&app).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await
    .expect("/healthz never answered 503 while the consumer was stuck");
    assert_eq!(stuck["error"]["code"], "stuck", "{stuck}");
    assert_eq!(stuck["error"]["message"], "stuck: consumer", "{stuck}");
    let first = stalled_seconds(&app, "consumer").await.expect("metric");
    assert!(first > 2.0, "stalled {first} s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = stalled_seconds(&app, "consumer").await.expect("metric");
    if blackholed_at.elapsed() < Duration::from_secs(6) {
        assert!(
            later > first,
            "the stall did not grow: {first} then {later}"
        );
    }

    // The time limit ends the call, the connection is closed (not reused: the pool has
    // one), the delivery is retried and finds the order settled.
    let healthy = eventually(Duration::from_secs(20), || async {
        healthz(&app).await.0 == StatusCode::OK
    })
    .await;
    assert!(healthy, "/healthz stayed 503 after the call's time limit");
    let after = stalled_seconds(&app, "consumer").await.expect("metric");
    assert!(after < 2.0, "still stalled {after} s");
    let drained = eventually(Duration::from_secs(15), || async {
        let mut queues = vec![app.topology.due_queue.clone()];
        queues.extend(
            app.topology
                .retry_delays_ms
                .iter()
                .map(|delay| app.topology.retry_queue(*delay)),
        );
        for queue in queues {
            if app.queue_depth(&queue).await != 0 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(drained, "the timer was never settled");
    // The pool's one slot is free again (a request may still meet the relay holding it).
    let created = eventually(Duration::from_secs(10), || async {
        app.post("/orders", order_body()).await.0 == StatusCode::CREATED
    })
    .await;
    assert!(
        created,
        "creates never succeeded again: the pool's connection is gone"
    );
    let failed: i64 = sqlx::query_scalar("select count(*) from failed_messages")
        .fetch_one(&app.pool)
        .await
        .expect("failed");
    assert_eq!(failed, 0);
}

/// A create batch whose connection is black-holed while PostgreSQL works on it (its
/// answer never comes back) costs the requests of that batch a 503; the group-commit
/// writer gives the batch up after `DATABASE_REQUEST_TIMEOUT` instead of waiting for TCP,
/// and the creates behind it are written on other connections. The client's retry with
/// its `Idempotency-Key` makes exactly one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_batch_whose_connection_is_black_holed_costs_its_requests_a_503_and_creates_go_on()
{
    init_logs();
    let (proxy, app) = behind_proxy(|c| {
        c.database_request_timeout = Duration::from_secs(2);
        c.database_lock_timeout = Duration::from_secs(30);
        c.database_statement_timeout = Duration::from_secs(30);
        // The server ends the lost batch's open transaction soon, releasing its key.
        c.database_idle_in_transaction_timeout = Duration::from_secs(3);
    })
    .await;
    let keyed = || {
        let request = app.request(Method::POST, "/orders").json(&order_body());
        app.send(request.header("Idempotency-Key", "lost-answer"))
    };

    // Another transaction holds the key, so the batch waits inside PostgreSQL; the
    // network goes while it waits, and the answer to its claim goes into the void.
    let mut holder = app.pool.begin().await.expect("begin");
    sqlx::query(
        "insert into idempotency_keys (scope, key, request_hash, entity_id)
         values ('orders', 'lost-answer', '\\x00', gen_random_uuid())",
    )
    .execute(&mut *holder)
    .await
    .expect("hold the key");
    let black_hole = black_hole_once_waiting(&app, &proxy, holder, "the create's batch");
    let (lost, ()) = tokio::join!(keyed(), black_hole);
    expect_error(
        lost.answer(),
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    );

    let created = eventually(Duration::from_secs(20), || async {
        app.post("/orders", order_body()).await.0 == StatusCode::CREATED
    })
    .await;
    assert!(
        created,
        "creates never succeeded again: the writer still waits for the lost batch"
    );
    let retried = poll(Duration::from_secs(10), || async {
        let reply = keyed().await;
        matches!(reply.status, StatusCode::CREATED | StatusCode::OK).then_some(reply.body)
    })
    .await
    .expect("the retry with the same key never got its order");
    let again = expect_status(keyed().await.answer(), StatusCode::OK);
    assert_eq!(again, retried, "a second retry replays the same order");
    let orders_of_key: i64 = sqlx::query_scalar(
        "select count(*) from orders o join idempotency_keys k on k.entity_id = o.id
         where k.key = 'lost-answer'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(orders_of_key, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_black_holes_open_connections_under_load_loses_nothing() {
    init_logs();
    let sweep_interval = Duration::from_secs(5);
    let sweep_grace = Duration::from_secs(1);
    let (proxy, app) = behind_proxy(|c| {
        c.order_timeout = Duration::from_secs(4);
        c.sweep_interval = sweep_interval;
        c.sweep_grace = sweep_grace;
        c.database_idle_in_transaction_timeout = Duration::from_secs(5);
        c.database_call_timeout = Duration::from_secs(5);
        c.retry_delays = [1, 2, 4, 8].map(Duration::from_secs).to_vec();
    })
    .await;
    let events = app.observe_events().await;
    let load = Load::start(vec![app.instance.address.clone()], LoadShape::default());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failover = app.db_now().await;
    let failed_over = Instant::now();
    proxy.black_hole_existing();

    // Creates succeed again within seconds: on new connections.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recovered = poll(Duration::from_secs(15), || async {
        let (status, _) = app.post("/orders", order_body()).await;
        (status == StatusCode::CREATED).then(Instant::now)
    })
    .await
    .expect("creates never succeeded again after the failover");
    let recovery = recovered - failed_over;
    println!(
        "black-hole failover: creates succeed again {} ms after it",
        recovery.as_millis()
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = load.finish().await;
    stats.assert_http_never_failed();
    assert!(stats.count("create 201") > 0);

    let budget = sweep_interval + sweep_grace + Duration::from_secs(10);
    let outage = Outage {
        start: failover,
        end: failover,
    };
    let verdict = verify(
        &app,
        "black-hole failover",
        &events,
        &stats,
        &[outage],
        budget,
    )
    .await;
    assert!(
        verdict.max_lateness_beyond_outage_ms < budget.as_millis() as i64,
        "an order was cancelled more than {budget:?} after its deadline or the failover: {verdict:?}"
    );
    assert!(
        recovery < Duration::from_secs(10),
        "creates failed for {recovery:?} after the failover"
    );
}
