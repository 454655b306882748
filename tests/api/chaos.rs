//! Chaos: the broker and the database go away while orders are created, paid and come
//! due, and nothing may be lost. Each test runs a load of concurrent creations and
//! payments through a fault, then checks every order and every event (see `load::verify`)
//! and prints how late the cancellations were beyond the outage.

pub mod load;
pub mod scenario;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use lapin::options::QueuePurgeOptions;
use reqwest::StatusCode;
use tokio::time::Instant;

use crate::helpers::{AMQP_URL, Instance, TestApp, TestEnv, eventually, via_port};
use crate::proxy::FaultProxy;
use load::{Load, LoadShape, Outage, init_logs, verify};
use scenario::{Fault, Scenario, assert_not_ready_because_of, assert_nothing_lost};

const RABBITMQ: &str = "127.0.0.1:5672";
const POSTGRES: &str = "127.0.0.1:5432";
/// How long settling may take after the load stops.
const SETTLE: Duration = Duration::from_secs(25);

/// A service whose broker connection goes through `proxy`, ready, with an event observer.
async fn app_via_broker_proxy(
    proxy: &FaultProxy,
    tweak: impl FnOnce(&mut order_timeout::config::Config),
) -> (TestApp, String) {
    let port = proxy.port();
    let app = TestApp::spawn_with(|c| {
        c.amqp_url = via_port(AMQP_URL, port);
        tweak(c);
    })
    .await;
    app.wait_ready().await;
    let events = app.observe_events().await;
    (app, events)
}

/// The proxy refuses new connections and cuts the open ones.
struct Cut<'a>(&'a FaultProxy);

impl Fault for Cut<'_> {
    async fn cut(&mut self) {
        self.0.down();
    }
    async fn restore(&mut self) {
        self.0.up();
    }
}

/// The proxy keeps connections open and forwards nothing: only the service's own
/// deadlines can answer.
struct Stall<'a>(&'a FaultProxy);

impl Fault for Stall<'_> {
    async fn cut(&mut self) {
        self.0.stall(true);
    }
    async fn restore(&mut self) {
        self.0.stall(false);
    }
}

/// A service whose database connection goes through `proxy`, with retry tiers that
/// outlast a 10 s outage (a timer due during it is retried, not parked), and an event
/// observer.
async fn app_via_database_proxy(proxy: &FaultProxy) -> (TestApp, String) {
    let port = proxy.port();
    let app = TestApp::spawn_with(|c| {
        c.database_url = via_port(&c.database_url, port);
        c.retry_delays = [1, 2, 4, 8].map(Duration::from_secs).to_vec();
    })
    .await;
    let events = app.observe_events().await;
    (app, events)
}

/// Waits until an instance at `address` answers `/readyz` 200.
pub(crate) async fn wait_ready_at(app: &TestApp, address: &str, within: Duration) {
    let ready = eventually(within, || async {
        matches!(app.client.get(format!("{address}/readyz")).send().await, Ok(r) if r.status() == StatusCode::OK)
    })
    .await;
    assert!(ready, "{address} never became ready within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_for_5_seconds_twice_loses_nothing() {
    init_logs();
    let proxy = FaultProxy::start(RABBITMQ).await;
    let (app, events) = app_via_broker_proxy(&proxy, |_| {}).await;
    let scenario = Scenario {
        cuts: 2,
        during: Duration::from_secs(5),
        ..Scenario::new("broker cut 5 s twice", "broker")
    };
    scenario.run(&app, &events, &mut Cut(&proxy)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_unreachable_for_10_seconds_while_orders_come_due_loses_nothing() {
    init_logs();
    let proxy = FaultProxy::start(RABBITMQ).await;
    let (app, events) = app_via_broker_proxy(&proxy, |_| {}).await;
    let scenario = Scenario {
        warmup: Duration::from_secs(2),
        // The reconnect backoff doubles (with up to 100 % jitter): attempts land between
        // 6.3 and 12.6 s after the loss, the next one up to 12.8 s later. So after 10 s
        // down the connection can come back up to ~13 s after the broker did, then the
        // backlog drains.
        max_lateness_beyond_outage: Duration::from_secs(20),
        ..Scenario::new("broker down 10 s", "broker")
    };
    let stats = scenario.run(&app, &events, &mut Cut(&proxy)).await;
    assert!(stats.count("create 201") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_for_10_seconds_answers_503_quickly_and_loses_nothing() {
    init_logs();
    let proxy = FaultProxy::start(POSTGRES).await;
    let (app, events) = app_via_database_proxy(&proxy).await;
    let scenario = Scenario::new("database down 10 s", "database");
    let stats = scenario.run(&app, &events, &mut Cut(&proxy)).await;
    assert!(
        stats.count("create 503 database_unavailable") > 0,
        "no create met the outage: {:?}",
        stats.answers
    );
    assert!(stats.count("create 201") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hanging_for_10_seconds_still_answers_every_request_quickly_and_loses_nothing() {
    init_logs();
    let proxy = FaultProxy::start(POSTGRES).await;
    let (app, events) = app_via_database_proxy(&proxy).await;
    let scenario = Scenario::new("database hanging 10 s", "database");
    let stats = scenario.run(&app, &events, &mut Stall(&proxy)).await;
    assert!(
        stats.count("create 503 database_unavailable") > 0,
        "no create met the outage: {:?}",
        stats.answers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_lost_from_a_purged_cache_queue_are_caught_by_the_sweeper() {
    init_logs();
    let app = TestApp::spawn_with(|c| {
        c.sweep_interval = Duration::from_secs(1);
        c.sweep_grace = Duration::from_secs(1);
    })
    .await;
    let events = app.observe_events().await;
    let cache = app.topology.cache_queue("order.2000");
    let load = Load::start(vec![app.instance.address.clone()], LoadShape::default());
    let mut purged = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        purged += app
            .channel()
            .await
            .queue_purge(cache.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.finish().await;
    stats.assert_http_never_failed();
    println!("purged {purged} timers from {cache}");
    assert!(purged > 0, "nothing was purged");
    let verdict = verify(&app, "purged cache queue", &events, &stats, &[], SETTLE).await;
    // Grace (1 s) + interval (1 s) + the sweep itself.
    assert!(verdict.max_lateness_ms < 5_000, "{verdict:?}");
}

/// Creates that are certainly being handled when the caller stops the service: sent,
/// then given time to reach their handlers (each takes several database round trips
/// through the slowed proxy). Every one must still be answered 201.
async fn open_requests(
    app: &TestApp,
    address: &str,
    n: usize,
) -> tokio::task::JoinHandle<Vec<Result<StatusCode, String>>> {
    let requests: Vec<_> = (0..n)
        .map(|_| {
            app.client
                .post(format!("{address}/orders"))
                .json(&crate::helpers::order_body())
                .send()
        })
        .collect();
    let handle = tokio::spawn(async move {
        futures_util::future::join_all(requests)
            .await
            .into_iter()
            .map(|r| r.map(|r| r.status()).map_err(|e| e.to_string()))
            .collect()
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    handle
}

fn assert_all_created(answers: Vec<Result<StatusCode, String>>) {
    assert!(
        answers.iter().all(|a| matches!(a, Ok(StatusCode::CREATED))),
        "requests open at the stop: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_mid_load_leaves_nothing_half_done_and_a_second_instance_finishes() {
    init_logs();
    // The database is slowed down so requests and deliveries are really in flight.
    let proxy = FaultProxy::start(POSTGRES).await;
    proxy.set_latency(Duration::from_millis(25));
    let port = proxy.port();
    let mut app = TestApp::spawn_with(|c| {
        c.database_url = via_port(&c.database_url, port);
        c.database_pool_size = 16;
    })
    .await;
    let events = app.observe_events().await;
    let load = Load::start(vec![app.instance.address.clone()], LoadShape::default());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let open = open_requests(&app, &app.instance.address, 3).await;
    let stopping = Instant::now();
    let shutdown_timeout = app.instance.config.shutdown_timeout;
    app.instance.stop().await.expect("graceful stop returns Ok");
    let took = stopping.elapsed();
    println!("graceful stop under load took {} ms", took.as_millis());
    assert!(took < shutdown_timeout, "stop took {took:?}");
    assert_all_created(open.await.expect("open requests"));
    let stopped_at = app.db_now().await;
    let (stats, outage, _second) = hand_over(&app, load, stopped_at).await;
    // Requests sent to the stopped instance may find it gone; none may be answered badly.
    stats.assert_unanswered_only_by(&app.instance.address);
    let limits = (SETTLE, Duration::from_secs(10));
    assert_nothing_lost(&app, "graceful stop", &events, &stats, &[outage], limits).await;
}

/// A second instance takes over after the first stopped at `stopped_at`: the load moves
/// to it for 2 s more, then stops. Returns what the load saw and the outage (from the
/// stop until the second instance is ready), and the second instance, which must run
/// until the test has checked that nothing was lost.
async fn hand_over(
    app: &TestApp,
    load: Load,
    stopped_at: chrono::DateTime<chrono::Utc>,
) -> (load::Stats, Outage, Instance) {
    let second = app.spawn_instance(|_| {}).await;
    wait_ready_at(app, &second.address, Duration::from_secs(15)).await;
    let outage = Outage {
        start: stopped_at,
        end: app.db_now().await,
    };
    load.retarget(vec![second.address.clone()]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    (load.finish().await, outage, second)
}

/// The real `order-timeout` binary, run with environment variables like in production.
pub(crate) struct Binary {
    child: tokio::process::Child,
    pub(crate) address: String,
    log: PathBuf,
}

impl Binary {
    pub(crate) fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("port")
            .port();
        let log = std::env::temp_dir().join(format!("{}-{port}.log", env.prefix));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-timeout"));
        command
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", &env.database_url)
            .env("AMQP_URL", AMQP_URL)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("QUEUE_PREFIX", &env.prefix)
            .env("ORDER_TIMEOUT", "2s")
            .env("WAYBILL_TIMEOUT", "2s")
            .env("RETRY_DELAYS", "300ms,600ms")
            .env("SWEEP_INTERVAL", "1h")
            .env("SWEEP_GRACE", "1s")
            .env("DATABASE_POOL_SIZE", "5")
            .env("DATABASE_ACQUIRE_TIMEOUT", "1s")
            .env("DATABASE_REQUEST_TIMEOUT", "2s")
            .env("SHUTDOWN_TIMEOUT", "10s")
            .env("RUST_LOG", "info,sqlx=warn,lapin=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().expect("start target/debug/order-timeout");
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait"))
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_binary_mid_load_exits_0_in_time_and_a_second_instance_finishes() {
    init_logs();
    let mut app = TestApp::spawn().await;
    let events = app.observe_events().await;
    // Only the binary serves until it is stopped; the harness's instance only set things up.
    app.instance.stop().await.expect("stop the set-up instance");
    // The database is slowed down so requests and deliveries are really in flight.
    let proxy = FaultProxy::start(POSTGRES).await;
    proxy.set_latency(Duration::from_millis(25));
    let database_url = via_port(&app.env.database_url, proxy.port());
    let mut binary = Binary::start(
        &app.env,
        &[
            ("DATABASE_URL", &database_url),
            ("DATABASE_POOL_SIZE", "16"),
        ],
    );
    wait_ready_at(&app, &binary.address, Duration::from_secs(20)).await;
    let load = Load::start(vec![binary.address.clone()], LoadShape::default());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let open = open_requests(&app, &binary.address, 3).await;
    let stopping = Instant::now();
    binary.signal("-TERM");
    let status = binary.exit_within(Duration::from_secs(10 + 2)).await;
    let took = stopping.elapsed();
    let stopped_at = app.db_now().await;
    let Some(status) = status else {
        panic!(
            "no exit within the shutdown timeout:\n{}",
            binary.log_tail()
        )
    };
    println!(
        "SIGTERM under load: exited with {status} after {} ms",
        took.as_millis()
    );
    assert_eq!(status.code(), Some(0), "{}", binary.log_tail());
    assert_all_created(open.await.expect("open requests"));
    let (stats, outage, _second) = hand_over(&app, load, stopped_at).await;
    stats.assert_unanswered_only_by(&binary.address);
    let limits = (SETTLE, Duration::from_secs(10));
    assert_nothing_lost(&app, "SIGTERM", &events, &stats, &[outage], limits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_instances_killed_mid_load_loses_nothing() {
    init_logs();
    let app = TestApp::spawn().await;
    let events = app.observe_events().await;
    let binary = Binary::start(&app.env, &[]);
    wait_ready_at(&app, &binary.address, Duration::from_secs(20)).await;
    let survivor = app.instance.address.clone();
    let load = Load::start(
        vec![survivor.clone(), binary.address.clone()],
        LoadShape::default(),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed_at = app.db_now().await;
    binary.signal("-KILL");
    load.retarget(vec![survivor.clone()]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = load.finish().await;
    stats.assert_unanswered_only_by(&binary.address);
    // Deliveries the killed instance held come back to the survivor at once; its
    // claimed outbox rows are unlocked when PostgreSQL sees the connection close.
    let outage = Outage {
        start: killed_at,
        end: killed_at,
    };
    let limits = (SETTLE, Duration::from_secs(10));
    assert_nothing_lost(
        &app,
        "SIGKILL one of two",
        &events,
        &stats,
        &[outage],
        limits,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_max_makes_the_instance_exit_with_an_error_when_the_broker_stays_away() {
    init_logs();
    let proxy = FaultProxy::start(RABBITMQ).await;
    let reconnect_max = Duration::from_secs(7);
    let (mut app, _) = app_via_broker_proxy(&proxy, |c| c.reconnect_max = reconnect_max).await;
    proxy.down();
    let lost = Instant::now();
    // It keeps serving while it tries.
    assert_not_ready_because_of(&app, "broker", Duration::from_secs(3)).await;
    let (status, _) = app.post("/orders", crate::helpers::order_body()).await;
    assert_eq!(status, StatusCode::CREATED);
    let exit = app.instance.exited(Duration::from_secs(15)).await;
    let took = lost.elapsed();
    let Some(result) = exit else {
        panic!(
            "still running {took:?} after the broker went away with RECONNECT_MAX={reconnect_max:?}"
        )
    };
    let error = result.expect_err("giving up must be an error");
    println!(
        "gave up {} ms after the broker went away: {error:#}",
        took.as_millis()
    );
    assert!(format!("{error:#}").contains("RECONNECT_MAX"), "{error:#}");
    // Gives up at RECONNECT_MAX, not at whatever the backoff reached by then.
    assert!(
        took >= reconnect_max && took < reconnect_max + Duration::from_millis(1500),
        "gave up after {took:?}"
    );
}

#[tokio::test]
async fn the_binary_exits_non_zero_when_the_broker_is_never_reachable_within_reconnect_max() {
    let app = TestApp::spawn().await;
    let mut binary = Binary::start(
        &app.env,
        &[
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ("RECONNECT_MAX", "1s"),
        ],
    );
    let status = binary.exit_within(Duration::from_secs(15)).await;
    let Some(status) = status else {
        panic!("still running:\n{}", binary.log_tail())
    };
    let log = binary.log_tail();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("RECONNECT_MAX"), "{log}");
}

/// The instance holding the lease of outbox partition 0, and whether it is live (database
/// time), if any. A lone instance holds every partition.
pub(crate) async fn lease(app: &TestApp) -> Option<(uuid::Uuid, bool)> {
    sqlx::query_as("select holder, expires_at > now() from outbox_lease where partition = 0")
        .fetch_optional(&app.pool)
        .await
        .expect("lease row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_frozen_with_sigstop_while_holding_the_relay_lease_is_replaced_within_seconds()
{
    init_logs();
    let mut app = TestApp::spawn().await;
    let events = app.observe_events().await;
    // Only the binaries relay: the harness's instance only set things up.
    app.instance.stop().await.expect("stop the set-up instance");
    let frozen = Binary::start(&app.env, &[]);
    wait_ready_at(&app, &frozen.address, Duration::from_secs(20)).await;
    let held = eventually(Duration::from_secs(10), || async {
        lease(&app).await.is_some_and(|(_, live)| live)
    })
    .await;
    assert!(
        held,
        "the first instance never took the lease: {}",
        frozen.log_tail()
    );
    let (first_holder, _) = lease(&app).await.expect("lease");
    // Orders created on it just before it freezes: some of their rows may be read or
    // published but not deleted when it stops.
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(create_at(&app, &frozen.address).await);
    }
    frozen.signal("-STOP");
    let frozen_at = Instant::now();
    let other = Binary::start(&app.env, &[]);
    wait_ready_at(&app, &other.address, Duration::from_secs(20)).await;
    for _ in 0..10 {
        ids.push(create_at(&app, &other.address).await);
    }
    // The frozen instance keeps its connections (and would keep row locks): only the
    // lease's expiry lets the other take over.
    let drained = eventually(Duration::from_secs(20), || async {
        app.outbox_rows().await == 0
    })
    .await;
    let took_over_after = frozen_at.elapsed();
    assert!(
        drained,
        "the outbox was not drained by the other instance: {}",
        other.log_tail()
    );
    let (holder, _) = lease(&app).await.expect("lease");
    assert_ne!(
        holder, first_holder,
        "the lease moved to the other instance"
    );
    // Every order's created event arrived (at least once). Their timers were confirmed too
    // (a row is deleted only once its timer and its event are).
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    let all_seen = eventually(Duration::from_secs(20), || async {
        let drained = app.drain(&events).await;
        let mut seen = seen.lock().expect("seen");
        for (key, body) in drained {
            if key == "order.created" {
                seen.insert(body["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        ids.iter().all(|id| seen.contains(id))
    })
    .await;
    assert!(all_seen, "created events missing after {took_over_after:?}");
    // Thawed, the first instance finds the lease gone and leaves it; its consumer handles
    // the due timers it had prefetched while frozen, so every order times out (2 s) with
    // the sweeper switched off (1 h).
    frozen.signal("-CONT");
    for id in &ids {
        let cancelled = eventually(Duration::from_secs(30), || async {
            app.order_status(id).await == "cancelled"
        })
        .await;
        assert!(
            cancelled,
            "order {id} not cancelled by its timer: {}",
            frozen.log_tail()
        );
    }
    assert_eq!(
        lease(&app).await.map(|(holder, _)| holder),
        Some(holder),
        "the thawed instance did not take the lease back"
    );
}

/// Creates an order through one instance's API; panics unless 201.
async fn create_at(app: &TestApp, address: &str) -> String {
    let request = app.client.post(format!("{address}/orders"));
    let created = app.send(request.json(&crate::helpers::order_body())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    crate::helpers::id_of(&created.body)
}

/// The loads' lean create (`loadgen::Api::create_order`, which the bench and the loads of
/// these tests call thousands of times a second) returns the id of the order the API made,
/// and any other answer than 201 is an error that carries it.
#[tokio::test]
async fn the_load_clients_create_returns_the_id_of_the_order_made_and_fails_on_any_other_answer() {
    let app = TestApp::spawn().await;
    let client = loadgen::Api::new(&app.url(""), Duration::from_secs(10));
    let id = client
        .create_order("load-client")
        .await
        .expect("a 201 with the order");
    let (status, order) = app.get(&format!("/orders/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["customer_id"], "load-client");
    assert_eq!(order["amount_cents"], 1999);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["status"], "pending");

    let misaimed = loadgen::Api::new(&app.url("/nowhere"), Duration::from_secs(10));
    let error = misaimed
        .create_order("load-client")
        .await
        .expect_err("a 404 is no create");
    assert!(format!("{error:#}").contains("404"), "{error:#}");
}
