//! The test harness: every test gets its own database and queue prefix, a running
//! service built exactly as `main` builds it, and helpers that read like the API. Every
//! answer the helpers receive is checked against `openapi.yaml` (see `contract`).

use std::future::Future;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use order_timeout::broker::Topology;
use order_timeout::config::Config;
use order_timeout::startup::{Application, topology_of};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// Beside this file whichever test binary includes it (tests/api, tests/cluster,
// tests/broker_restart.rs).
#[path = "contract.rs"]
pub mod contract;

pub use contract::Reply;

/// The real local services.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A database and a queue prefix owned by one test, removed when it ends.
pub struct TestEnv {
    pub db_name: String,
    pub prefix: String,
    pub database_url: String,
}

impl TestEnv {
    fn new() -> Self {
        let suffix = Uuid::new_v4().simple().to_string();
        let db_name = format!("ot_test_{}", &suffix[..16]);
        let prefix = format!("ot_test_{}", &suffix[..16]);
        let database_url = format!("postgres://postgres@127.0.0.1:5432/{db_name}");
        Self {
            db_name,
            prefix,
            database_url,
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let prefix = self.prefix.clone();
        // The test's runtime may be gone (or panicking): clean up on a fresh one.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(pool) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(PG_ADMIN_URL)
                    .await
                {
                    let sql = format!("drop database if exists \"{db_name}\" with (force)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                    pool.close().await;
                }
                delete_topology(&prefix).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Deletes every queue and exchange whose name starts with `prefix.`, including the
/// ones a test declared itself.
async fn delete_topology(prefix: &str) {
    let Ok(connection) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
    else {
        return;
    };
    let queues = list_broker_names("list_queues", prefix);
    let exchanges = list_broker_names("list_exchanges", prefix);
    for queue in queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for exchange in exchanges {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "cleaned".into()).await;
}

fn list_broker_names(command: &str, prefix: &str) -> Vec<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([command, "name", "--quiet", "--no-table-headers"])
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(&format!("{prefix}.")))
        .map(str::to_owned)
        .collect()
}

/// One running instance of the service.
pub struct Instance {
    pub address: String,
    pub config: Config,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Instance {
    /// Stops the instance gracefully and returns how `run_until_stopped` ended.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.handle.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }

    /// Waits for the instance to exit by itself (e.g. RECONNECT_MAX).
    pub async fn exited(&mut self, within: Duration) -> Option<anyhow::Result<()>> {
        let handle = self.handle.as_mut()?;
        let result = tokio::time::timeout(within, handle).await.ok()?;
        self.handle = None;
        Some(result.map_err(anyhow::Error::from).and_then(|r| r))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// A test's service, its database and its broker view.
pub struct TestApp {
    pub instance: Instance,
    pub client: reqwest::Client,
    /// The test's own pool into the service's database, for assertions.
    pub pool: PgPool,
    pub topology: Topology,
    /// The broker the test's own connection (`amqp`) and its checks use: the machine's,
    /// or one node of the test cluster.
    pub broker_url: String,
    pub amqp: Connection,
    // Dropped last: removes the database and the queues.
    pub env: TestEnv,
}

/// Settings for tests: seconds, not minutes; small pools so tests run side by side; the
/// sweeper far away so tests prove the timer path unless they ask for it.
pub fn test_config(env: &TestEnv) -> Config {
    let mut config = Config::defaults();
    config.database_url = env.database_url.clone();
    config.amqp_url = AMQP_URL.to_owned();
    config.http_addr = "127.0.0.1:0".parse().expect("address");
    config.queue_prefix = env.prefix.clone();
    config.order_timeout = Duration::from_secs(2);
    config.waybill_timeout = Duration::from_secs(2);
    config.retry_delays = vec![Duration::from_millis(300), Duration::from_millis(600)];
    config.sweep_interval = Duration::from_secs(3600);
    config.sweep_grace = Duration::from_secs(1);
    config.database_pool_size = 5;
    config.database_acquire_timeout = Duration::from_secs(1);
    config.database_request_timeout = Duration::from_secs(2);
    config.shutdown_timeout = Duration::from_secs(10);
    config.admin_token = Some("test-admin-token".to_owned());
    config
}

impl TestApp {
    /// A service with the test settings, ready (database and broker up).
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A service with the test settings changed by `tweak`.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_observing(AMQP_URL, tweak).await
    }

    /// A service whose test-side connection and checks use `broker_url` (a node of a
    /// test cluster) instead of the machine's broker.
    pub async fn spawn_observing(broker_url: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let env = TestEnv::new();
        let mut config = test_config(&env);
        tweak(&mut config);
        let topology = topology_of(&config);
        let instance = start(config).await;
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&env.database_url)
            .await
            .expect("test pool");
        let amqp = Connection::connect(broker_url, ConnectionProperties::default())
            .await
            .expect("test amqp");
        let app = Self {
            instance,
            client: reqwest::Client::new(),
            pool,
            topology,
            broker_url: broker_url.to_owned(),
            amqp,
            env,
        };
        if app.instance.config.amqp_url == AMQP_URL {
            app.wait_ready().await;
        }
        app
    }

    /// Another instance sharing this test's database and prefix.
    pub async fn spawn_instance(&self, tweak: impl FnOnce(&mut Config)) -> Instance {
        let mut config = test_config(&self.env);
        tweak(&mut config);
        start(config).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.instance.address)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let ready = || async {
            matches!(self.client.get(self.url("/readyz")).send().await, Ok(r) if r.status() == StatusCode::OK)
        };
        assert!(
            eventually(Duration::from_secs(15), ready).await,
            "service never became ready"
        );
    }

    /// A request to this app's instance, for what `get`/`post`/`admin` do not set
    /// (headers, raw bodies); send it with [`TestApp::send`].
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request (to any instance, from any client) and checks the answer against
    /// `openapi.yaml`: the test fails on an undocumented status, header, content type or
    /// body shape.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        send_checked(request).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.client.post(self.url(path)).json(&body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.client.get(self.url(path))).await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        send(
            self.client
                .request(method, self.url(path))
                .bearer_auth("test-admin-token"),
        )
        .await
    }

    /// The text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let reply = self
            .send(self.request(reqwest::Method::GET, "/metrics"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text);
        reply.text
    }

    /// Creates an order and returns it; panics unless 201.
    pub async fn create_order(&self) -> Value {
        let (status, order) = self.post("/orders", order_body()).await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        order
    }

    pub async fn create_waybill(&self) -> Value {
        let body = json!({"origin": "Hamburg", "destination": "Lyon"});
        let (status, waybill) = self.post("/waybills", body).await;
        assert_eq!(status, StatusCode::CREATED, "{waybill}");
        waybill
    }

    pub async fn pay(&self, id: &str) -> (StatusCode, Value) {
        self.post(&format!("/orders/{id}/pay"), json!({})).await
    }

    pub async fn cancel_order(&self, id: &str) -> (StatusCode, Value) {
        self.post(&format!("/orders/{id}/cancel"), json!({})).await
    }

    pub async fn accept_waybill(&self, id: &str, carrier: &str) -> (StatusCode, Value) {
        let body = json!({ "carrier_id": carrier });
        self.post(&format!("/waybills/{id}/accept"), body).await
    }

    pub async fn cancel_waybill(&self, id: &str) -> (StatusCode, Value) {
        self.post(&format!("/waybills/{id}/cancel"), json!({}))
            .await
    }

    /// The status column of an order, read from the database.
    pub async fn order_status(&self, id: &str) -> String {
        let id = Uuid::parse_str(id).expect("uuid");
        sqlx::query_scalar("select status from orders where id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("order row")
    }

    /// Waits until the order has `status`, failing after `within`.
    pub async fn wait_for_order_status(&self, id: &str, status: &str, within: Duration) {
        let reached = eventually(within, || async { self.order_status(id).await == status }).await;
        assert!(
            reached,
            "order {id} did not become {status} within {within:?}, it is {}",
            self.order_status(id).await
        );
    }

    /// Counts orders by status.
    pub async fn count_orders(&self, status: &str) -> i64 {
        sqlx::query_scalar("select count(*) from orders where status = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// The database's clock now (read on the test's own pool, so it works while the
    /// service's path to the database is cut).
    pub async fn db_now(&self) -> chrono::DateTime<chrono::Utc> {
        sqlx::query_scalar("select clock_timestamp()")
            .fetch_one(&self.pool)
            .await
            .expect("db now")
    }

    /// A fresh channel on the test's own broker connection.
    pub async fn channel(&self) -> Channel {
        self.amqp.create_channel().await.expect("channel")
    }

    /// Publishes a persistent message straight into `queue` with `headers`, as a broken or
    /// hostile producer would, and waits for the broker's confirm of the publish.
    pub async fn publish_raw(
        &self,
        queue: &str,
        body: &[u8],
        message_id: &str,
        headers: FieldTable,
    ) {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(message_id.into())
            .with_headers(headers);
        self.channel()
            .await
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirm");
    }

    /// Rows still waiting in the outbox (unpublished changes).
    pub async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("select count(*) from outbox")
            .fetch_one(&self.pool)
            .await
            .expect("count outbox rows")
    }

    /// Declares a queue bound to the events exchange with `#`, to observe every event.
    pub async fn observe_events(&self) -> String {
        self.observe_events_as("events", "#").await
    }

    /// Declares the queue `<prefix>.test.<name>` bound to the events exchange with
    /// `pattern` (e.g. `order.#`), so a test can read the events it routes.
    pub async fn observe_events_as(&self, name: &str, pattern: &str) -> String {
        // The events exchange exists once the service has connected and declared its
        // topology: binding before that fails with NOT_FOUND.
        self.wait_ready().await;
        let queue = format!("{}.test.{name}", self.topology.prefix);
        let channel = self.channel().await;
        // Durable, so events waiting in it survive a broker restart; the test's clean-up
        // deletes it with the rest of the prefix.
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        // On a cluster, replicated like the service's queues: a classic queue on a
        // killed node would miss the events published while it is down.
        let mut arguments = FieldTable::default();
        if self.topology.queue_type == order_timeout::broker::QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("quorum".into()),
            );
        }
        channel
            .queue_declare(queue.as_str().into(), options, arguments)
            .await
            .expect("declare");
        channel
            .queue_bind(
                queue.as_str().into(),
                self.topology.events_exchange.as_str().into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        queue
    }

    /// Drains a queue with basic.get, returning (routing key, body) of every message.
    pub async fn drain(&self, queue: &str) -> Vec<(String, Value)> {
        let channel = self.channel().await;
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            let body = serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null);
            messages.push((message.delivery.routing_key.to_string(), body));
        }
        messages
    }

    /// Number of messages ready in a queue.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let channel = self.channel().await;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map(|q| q.message_count())
            .unwrap_or(0)
    }

    /// Looks at the first message of a queue without consuming it.
    pub async fn peek(&self, queue: &str) -> Option<lapin::message::Delivery> {
        let channel = self.channel().await;
        let message = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("get")?;
        let delivery = message.delivery;
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .expect("nack");
        Some(delivery)
    }
}

async fn start(config: Config) -> Instance {
    let app = Application::build(config.clone())
        .await
        .expect("build application");
    let address = format!("http://{}", app.address());
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run_until_stopped());
    Instance {
        address,
        config,
        shutdown,
        handle: Some(handle),
    }
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let reply = send_checked(request).await;
    (reply.status, reply.body)
}

/// Sends `request` and fails the test unless the answer is the one `openapi.yaml`
/// documents for it (the path is the one answered, after any redirect).
async fn send_checked(request: reqwest::RequestBuilder) -> Reply {
    let (client, request) = request.build_split();
    let request = request.expect("a well-formed request");
    let method = request.method().clone();
    let response = client
        .execute(request)
        .await
        .unwrap_or_else(|e| panic!("{method}: no answer: {e}"));
    let path = response.url().path().to_owned();
    let reply = Reply::read(response).await;
    if let Err(mismatch) = contract::Spec::get().check(&method, &path, &reply) {
        panic!("openapi.yaml: {mismatch}");
    }
    reply
}

/// `url` with its port replaced, to reach a service through a fault proxy
/// (`postgres://…@127.0.0.1:5432/db` or `amqp://…@127.0.0.1:5672/%2f`).
pub fn via_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("url with a scheme");
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (userinfo, host_port) = authority
        .rsplit_once('@')
        .map_or(("", authority), |(u, h)| (u, h));
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    let userinfo = if userinfo.is_empty() {
        String::new()
    } else {
        format!("{userinfo}@")
    };
    format!("{scheme}://{userinfo}{host}:{port}/{path}")
}

/// A valid order body.
pub fn order_body() -> Value {
    json!({"customer_id": "cust-1", "amount_cents": 2500, "currency": "EUR"})
}

/// Polls `condition` every 50 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, or gives up after `within`.
pub async fn poll<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of an answer that must have `status`; fails the test, showing the body,
/// otherwise. `let paid = expect_status(app.pay(&id).await, StatusCode::OK);`
#[track_caller]
pub fn expect_status(answer: (StatusCode, Value), status: StatusCode) -> Value {
    let (actual, body) = answer;
    assert_eq!(actual, status, "{body}");
    body
}

/// The body of an error answer that must have `status` and the error `code`.
#[track_caller]
pub fn expect_error(answer: (StatusCode, Value), status: StatusCode, code: &str) -> Value {
    let (actual, body) = answer;
    assert_eq!(
        (actual, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    body
}

/// The id field of an entity.
pub fn id_of(entity: &Value) -> String {
    entity["id"].as_str().expect("id").to_owned()
}
