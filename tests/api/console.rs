//! The operator console: its JSON endpoints over HTTP, and the page itself in headless
//! Chromium driven through WebDriver (chromedriver, started and stopped by the test).
//!
//! The browser test needs Debian's `chromium` and `chromium-driver`; without them it
//! fails and says how to install them (.ci/run installs them when missing).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use lapin::types::{AMQPValue, FieldTable, LongString};
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, expect_error, id_of, poll};

const WITHIN: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-admin-token";
/// The page keeps the token under this sessionStorage key.
const TOKEN_KEY: &str = "order-timeout.admin-token";
/// A message body that would run if the page ever rendered data as HTML.
const POISON: &str = r#"{"kind":"order","id":"<script>window.__pwned = true</script>"}"#;
/// A header value that would run if headers were rendered as HTML.
const POISON_HEADER: &str = r#"<img src=x onerror="window.__pwned = true">"#;

// ---- what the tests create -------------------------------------------------------------

/// A known state of the service: what the console must show.
struct Scene {
    /// The one order still pending.
    pending: String,
    /// The waybill its timer cancelled.
    timed_out: String,
    /// The poison message's row in the failed-message store.
    failed_id: String,
}

/// Order timeout of the scenes: long, so pending timers stay in their cache bucket.
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);
/// Waybill timeout: short, so one waybill is cancelled by its timer during the test.
const WAYBILL_TIMEOUT: Duration = Duration::from_secs(5);

async fn scene_app() -> TestApp {
    TestApp::spawn_with(|c| {
        c.order_timeout = ORDER_TIMEOUT;
        c.waybill_timeout = WAYBILL_TIMEOUT;
    })
    .await
}

impl Scene {
    /// Three orders (paid, cancelled by the customer, pending), two waybills (accepted,
    /// cancelled by its timer), one poison message failed on the due queue, and two
    /// messages in the parking queue; returns once all of it has settled.
    async fn build(app: &TestApp) -> Self {
        let paid = id_of(&app.create_order().await);
        assert_eq!(app.pay(&paid).await.0, StatusCode::OK);
        let customer_cancelled = id_of(&app.create_order().await);
        assert_eq!(
            app.cancel_order(&customer_cancelled).await.0,
            StatusCode::OK
        );
        let pending = id_of(&app.create_order().await);
        let accepted = id_of(&app.create_waybill().await);
        let (status, body) = app.accept_waybill(&accepted, "dhl").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let timed_out = id_of(&app.create_waybill().await);

        publish(app, &app.topology.due_queue, POISON.as_bytes(), "poison-1").await;
        let parked = serde_json::to_vec(&json!({"kind": "order", "id": paid})).unwrap();
        publish(app, &app.topology.parking_queue, &parked, "parked-1").await;
        publish(app, &app.topology.parking_queue, &parked, "parked-2").await;

        let failed_id = poll(WITHIN, || async {
            let (_, page) = app.admin(Method::GET, "/admin/failed-messages").await;
            page["items"]
                .as_array()
                .and_then(|items| items.first())
                .map(|row| row["id"].as_str().unwrap().to_owned())
        })
        .await
        .expect("the poison message was stored as failed");
        let cancelled = eventually(WITHIN, || async {
            waybill_status(app, &timed_out).await == "cancelled"
        })
        .await;
        assert!(cancelled, "the waybill's timer did not cancel it");
        let settled = eventually(WITHIN, || async {
            app.outbox_rows().await == 0 && depths_match(app).await
        })
        .await;
        assert!(
            settled,
            "the outbox or the queues did not settle: {:?}",
            actual_depths(app).await
        );
        Self {
            pending,
            timed_out,
            failed_id,
        }
    }
}

async fn waybill_status(app: &TestApp, id: &str) -> String {
    sqlx::query_scalar("select status from waybills where id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The queues whose depth the scene fixes: three order timers wait in their bucket, the
/// waybill bucket has drained, two messages are parked, nothing waits anywhere else.
fn expected_depths(app: &TestApp) -> Vec<(String, u32)> {
    let t = &app.topology;
    let mut expected = vec![
        (
            t.cache_queue(&format!("order.{}", ORDER_TIMEOUT.as_millis())),
            3,
        ),
        (
            t.cache_queue(&format!("waybill.{}", WAYBILL_TIMEOUT.as_millis())),
            0,
        ),
        (t.parking_queue.clone(), 2),
        (t.due_queue.clone(), 0),
    ];
    expected.extend(t.retry_delays_ms.iter().map(|ms| (t.retry_queue(*ms), 0)));
    expected.extend(t.levels_ms.iter().map(|ms| (t.level_queue(*ms), 0)));
    expected
}

async fn actual_depths(app: &TestApp) -> Vec<(String, u32)> {
    let mut depths = Vec::new();
    for (queue, _) in expected_depths(app) {
        let depth = app.queue_depth(&queue).await;
        depths.push((queue, depth));
    }
    depths
}

async fn depths_match(app: &TestApp) -> bool {
    actual_depths(app).await == expected_depths(app)
}

/// Publishes a persistent message straight into a queue, as a broken producer would.
async fn publish(app: &TestApp, queue: &str, body: &[u8], message_id: &str) {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-origin".into(),
        AMQPValue::LongString(LongString::from(POISON_HEADER.as_bytes().to_vec())),
    );
    app.publish_raw(queue, body, message_id, headers).await;
}

async fn overview(app: &TestApp) -> Value {
    let (status, body) = app.admin(Method::GET, "/admin/overview").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

// ---- the JSON endpoints ----------------------------------------------------------------

#[tokio::test]
async fn the_overview_shows_counts_deadlines_backlog_queue_depths_and_lateness() {
    let app = scene_app().await;
    let scene = Scene::build(&app).await;
    let view = overview(&app).await;
    assert_eq!(
        view["orders"],
        json!({"pending": 1, "paid": 1, "cancelled": 1})
    );
    assert_eq!(
        view["waybills"],
        json!({"pending": 0, "accepted": 1, "cancelled": 1})
    );
    assert_eq!(view["outbox"], json!({"backlog": 0, "oldest_age_ms": null}));
    assert_eq!(view["failed_messages"]["unresolved"], 1);
    assert_eq!(
        view["failed_messages"]["by_queue"],
        json!([{"queue": app.topology.due_queue, "status": "pending", "count": 1}])
    );

    let deadlines = view["next_deadlines"].as_array().unwrap();
    assert_eq!(deadlines.len(), 1, "{deadlines:?}");
    assert_eq!(
        (deadlines[0]["kind"].as_str(), deadlines[0]["id"].as_str()),
        (Some("order"), Some(scene.pending.as_str()))
    );
    let left = deadlines[0]["ms_left"].as_i64().unwrap();
    assert!(
        left > 500_000 && left <= 600_000,
        "{left} ms left of a 10 min deadline"
    );

    assert_eq!(view["broker"]["status"], "up");
    let queues = view["broker"]["queues"].as_array().unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        app.topology.all_queues(),
        "every queue of the topology, in its order"
    );
    for (name, depth) in expected_depths(&app) {
        let queue = queues.iter().find(|q| q["name"] == name.as_str()).unwrap();
        assert_eq!(queue["messages"], depth, "{name}");
        assert!(queue["error"].is_null(), "{queue}");
    }
    let role = |name: &str| queues.iter().find(|q| q["name"] == name).unwrap()["role"].clone();
    let t = &app.topology;
    assert_eq!(role(&t.due_queue), "due");
    assert_eq!(role(&t.parking_queue), "parking");
    assert_eq!(role(&t.cache_queue("order.600000")), "cache");
    assert_eq!(role(&t.retry_queue(t.retry_delays_ms[0])), "retry");
    assert_eq!(role(&t.level_queue(1024)), "level");
    let due = queues
        .iter()
        .find(|q| q["name"] == t.due_queue.as_str())
        .unwrap();
    assert!(
        due["consumers"].as_u64().unwrap() >= 1,
        "the due queue has its consumer: {due}"
    );

    let lateness = &view["lateness"];
    assert_eq!(
        (
            lateness["window_seconds"].as_i64(),
            lateness["count"].as_i64()
        ),
        (Some(3600), Some(1)),
        "{lateness}"
    );
    let p50 = lateness["p50_ms"].as_f64().unwrap();
    assert!(
        (0.0..WITHIN.as_millis() as f64).contains(&p50),
        "{lateness}"
    );
    assert_eq!(
        lateness["max_ms"], lateness["p50_ms"],
        "one cancel: every percentile is it"
    );
    let histogram = lateness["histogram"].as_array().unwrap();
    assert_eq!(histogram.len(), 10);
    assert_eq!(
        histogram
            .iter()
            .map(|b| b["count"].as_i64().unwrap())
            .sum::<i64>(),
        1
    );
    assert_eq!(
        (
            histogram[0]["from_ms"].as_f64(),
            histogram[9]["to_ms"].clone()
        ),
        (Some(0.0), Value::Null)
    );
    let bucket = histogram.iter().find(|b| b["count"] == 1).unwrap();
    let to = bucket["to_ms"].as_f64().unwrap_or(f64::INFINITY);
    assert!(
        bucket["from_ms"].as_f64().unwrap() <= p50 && p50 < to,
        "{bucket} holds {p50}"
    );

    let database_time =
        chrono::DateTime::parse_from_rfc3339(view["database_time"].as_str().unwrap()).unwrap();
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        (now - database_time.to_utc()).num_seconds().abs() < 5,
        "database time, not the test's clock"
    );

    let (status, body) = app.admin(Method::GET, "/admin/overview?verbose=1").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("verbose"))
    );
}

#[tokio::test]
async fn lookup_shows_an_entity_its_deadline_its_timer_and_its_events() {
    let app = TestApp::spawn().await;
    let order = id_of(&app.create_order().await);
    assert_eq!(app.pay(&order).await.0, StatusCode::OK);
    let published = eventually(WITHIN, || async {
        let (_, found) = app
            .admin(Method::GET, &format!("/admin/lookup/{order}"))
            .await;
        found["outbox"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert!(
        published,
        "the order's outbox rows were not published (published rows are deleted)"
    );
    let (status, found) = app
        .admin(Method::GET, &format!("/admin/lookup/{order}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["kind"], "order");
    let (_, as_api) = app.get(&format!("/orders/{order}")).await;
    assert_eq!(found["entity"], as_api, "the entity as the API shows it");
    assert_eq!(found["expired"], false);
    assert!(found["ms_left"].as_i64().unwrap() <= 2000);
    assert_eq!(found["failed_messages"], json!([]));
    assert_eq!(
        found["deadline_history"],
        json!([{"event": "created", "at": as_api["created_at"], "old_expires_at": null,
                "expires_at": as_api["expires_at"], "source": "api"}])
    );

    let waybill = id_of(&app.create_waybill().await);
    app.wait_for_order_status(&order, "paid", WITHIN).await;
    let cancelled = eventually(WITHIN, || async {
        waybill_status(&app, &waybill).await == "cancelled"
    })
    .await;
    assert!(cancelled, "the waybill's timer did not cancel it");
    let (status, found) = app
        .admin(Method::GET, &format!("/admin/lookup/{waybill}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        (found["kind"].as_str(), found["expired"].as_bool()),
        (Some("waybill"), Some(true))
    );
    assert_eq!(found["entity"]["cancel_reason"], "acceptance_timeout");
    assert!(found["ms_left"].as_i64().unwrap() <= 0);
    let waiting = eventually(WITHIN, || async {
        let (_, found) = app
            .admin(Method::GET, &format!("/admin/lookup/{waybill}"))
            .await;
        found["outbox"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert!(waiting, "the waybill's cancelled event was not published");

    let (status, body) = app.admin(Method::GET, "/admin/lookup/not-a-uuid").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_id"))
    );
    let (status, body) = app
        .admin(Method::GET, &format!("/admin/lookup/{}", Uuid::now_v7()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn the_endpoints_refuse_a_missing_or_wrong_token_and_the_page_is_served_without_one() {
    let app = TestApp::spawn().await;
    let lookup = format!("/admin/lookup/{}", Uuid::now_v7());
    for path in ["/admin/overview", lookup.as_str()] {
        for token in [None, Some("wrong-token"), Some("")] {
            let mut request = app.request(Method::GET, path);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let reply = app.send(request).await;
            assert_eq!(reply.headers[WWW_AUTHENTICATE], "Bearer");
            let answer = reply.answer();
            expect_error(answer, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    for (path, content_type) in [
        ("/admin/", "text/html; charset=utf-8"),
        ("/admin/console.css", "text/css; charset=utf-8"),
        ("/admin/console.js", "text/javascript; charset=utf-8"),
    ] {
        let reply = app.send(app.request(Method::GET, path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.headers[CONTENT_TYPE], content_type);
        let policy = reply.headers[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
            "{policy}"
        );
        let text = reply.text;
        assert!(
            !text.contains("innerHTML") && !text.contains("insertAdjacentHTML"),
            "{path} renders HTML from strings"
        );
    }
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let reply = app.send(no_redirects.get(app.url("/admin"))).await;
    assert!(reply.status.is_redirection(), "{}", reply.status);
    assert_eq!(reply.headers[LOCATION], "/admin/");

    let disabled = app.spawn_instance(|c| c.admin_token = None).await;
    let request = app
        .client
        .get(format!("{}/admin/overview", disabled.address))
        .bearer_auth(TOKEN);
    let answer = app.send(request).await.answer();
    expect_error(answer, StatusCode::SERVICE_UNAVAILABLE, "admin_disabled");
    let page = app
        .send(app.client.get(format!("{}/admin/", disabled.address)))
        .await;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "the page still loads and tells why it cannot sign in"
    );
}

#[tokio::test]
async fn without_a_broker_the_overview_says_reconnecting_and_leaves_depths_unknown() {
    let app =
        TestApp::spawn_with(|c| c.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into()).await;
    let id = id_of(&app.create_order().await);
    let view = overview(&app).await;
    assert_eq!(view["broker"]["status"], "reconnecting");
    let queues = view["broker"]["queues"].as_array().unwrap();
    assert_eq!(queues.len(), app.topology.all_queues().len());
    assert!(
        queues
            .iter()
            .all(|q| q["messages"].is_null() && q["error"] == "not connected"),
        "{queues:?}"
    );
    assert_eq!(
        view["outbox"]["backlog"], 1,
        "one row carrying the timer and the created event waits for the broker"
    );
    assert!(view["outbox"]["oldest_age_ms"].as_i64().unwrap() >= 0);
    assert_eq!(view["next_deadlines"][0]["id"], id);

    assert_eq!(app.pay(&id).await.0, StatusCode::OK);
    let (status, found) = app.admin(Method::GET, &format!("/admin/lookup/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let rows = found["outbox"].as_array().unwrap();
    let topics: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["topic"].as_str().unwrap(),
                r["routing_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        topics,
        [
            ("timer", "order.2000"),
            ("event", "order.created"),
            ("event", "order.paid")
        ],
        "the waiting timer and events in the order they were written"
    );
    assert_eq!(rows[0]["due_at"], found["entity"]["expires_at"]);
    assert!(rows.iter().all(|r| r["published_at"].is_null()));
}

// ---- the page in a real browser ----------------------------------------------------------

/// A chromedriver started by the test, in its own process group with its own Chromium
/// profile; dropping it kills the group (driver and browser) and removes the profile.
struct ChromeDriver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl ChromeDriver {
    fn start() -> Self {
        let driver =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let browser = chromium();
        for (path, what) in [
            (driver.as_str(), "chromedriver"),
            (browser.as_str(), "chromium"),
        ] {
            assert!(
                Path::new(path).exists(),
                "{what} not found at {path}: the console's browser test needs Debian's Chromium and ChromeDriver; \
                 install them with `apt-get update && apt-get install -y chromium chromium-driver` \
                 (or point CHROMEDRIVER / CHROMIUM at them)"
            );
        }
        let port = free_port();
        let profile = std::env::temp_dir().join(format!("ot-console-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("profile directory");
        let log = profile.join("chromedriver.log");
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&driver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {driver}: {e}"))
        };
        Self {
            child,
            port,
            profile,
        }
    }

    /// Waits for the driver, then opens a headless Chromium session.
    async fn session(&mut self) -> Client {
        let status = format!("http://127.0.0.1:{}/status", self.port);
        let ready = eventually(Duration::from_secs(15), || async {
            let answer = reqwest::get(&status).await;
            matches!(answer, Ok(r) if r.status().is_success())
        })
        .await;
        if !ready {
            let exited = self.child.try_wait().ok().flatten();
            let log =
                std::fs::read_to_string(self.profile.join("chromedriver.log")).unwrap_or_default();
            panic!(
                "chromedriver did not answer on port {} (exit: {exited:?}); its log:\n{log}",
                self.port
            );
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,2200",
        ];
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            self.profile.join("chromium").display()
        ));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium(), "args": args}),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session in headless Chromium")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The driver leads its own process group: kill it and the browsers it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

/// The browser seen through a few reads and actions. Reads go through one script each
/// (atomic, no stale element handles while the page refreshes); actions are real
/// WebDriver clicks and keystrokes.
struct Page {
    client: Client,
    base: String,
}

impl Page {
    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("navigate");
    }

    async fn script(&self, source: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(source, args)
            .await
            .unwrap_or_else(|e| panic!("script {source}: {e}"))
    }

    /// The text of the first element matching `css`, if any.
    async fn text(&self, css: &str) -> Option<String> {
        let found = self
            .script(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await;
        found.as_str().map(str::to_owned)
    }

    /// Whether an element matching `css` exists and no ancestor hides it.
    async fn visible(&self, css: &str) -> bool {
        let source =
            "const e = document.querySelector(arguments[0]); return !!e && !e.closest('[hidden]');";
        self.script(source, vec![json!(css)]).await == json!(true)
    }

    /// Waits until the text of `css` satisfies `ok`, and returns it.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let found = poll(WITHIN, || async {
            self.text(css).await.filter(|text| ok(text))
        })
        .await;
        match found {
            Some(text) => text,
            None => panic!("{what}: `{css}` shows {:?}", self.text(css).await),
        }
    }

    async fn wait_visible(&self, css: &str, what: &str) {
        assert!(
            eventually(WITHIN, || self.visible(css)).await,
            "{what}: `{css}` never became visible"
        );
    }

    async fn click(&self, css: &str) {
        for attempt in 0.. {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.click().await,
                Err(error) => Err(error),
            };
            match clicked {
                Ok(()) => return,
                // The element was being redrawn by a refresh: find it again.
                Err(_) if attempt < 20 => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(error) => panic!("click on `{css}`: {error}"),
            }
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("`{css}`: {e}"));
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// `typeof window.__pwned`: "undefined" unless some data ran as script.
    async fn pwned(&self) -> Value {
        self.script("return typeof window.__pwned;", vec![]).await
    }

    async fn stored_token(&self) -> Value {
        self.script(
            "return sessionStorage.getItem(arguments[0]);",
            vec![json!(TOKEN_KEY)],
        )
        .await
    }
}

#[tokio::test]
async fn the_console_in_headless_chromium_signs_in_shows_the_service_and_requeues_a_poison_message_as_text()
 {
    let mut driver = ChromeDriver::start();
    let app = scene_app().await;
    let scene = Scene::build(&app).await;
    let client = driver.session().await;
    let page = Page {
        client: client.clone(),
        base: app.instance.address.clone(),
    };
    let outcome = tokio::time::timeout(Duration::from_secs(240), drive(&page, &app, &scene)).await;
    let _ = client.close().await;
    drop(driver);
    outcome.expect("the browser test took over four minutes");
}

/// Everything the browser test does, in order.
async fn drive(page: &Page, app: &TestApp, scene: &Scene) {
    sign_in_refuses_missing_and_wrong_tokens(page).await;
    overview_matches_the_scene(page, app, scene).await;
    poison_message_is_text_and_requeues(page, scene).await;
    requeue_all_names_the_count_and_discard_keeps_the_row(page).await;
    parking_replays_after_a_confirmation_naming_the_count(page, app).await;
    lookup_tells_what_happened(page, scene).await;
    bulk_extension_counts_first_then_extends_and_the_lookup_shows_it(page, app, scene).await;
    save_screenshot(page).await;
    paging_follows_the_next_cursor(page, app).await;
    assert_eq!(
        page.pwned().await,
        "undefined",
        "no data ever ran as script"
    );
}

async fn sign_in_refuses_missing_and_wrong_tokens(page: &Page) {
    page.goto("/admin/").await;
    page.wait_visible("#login", "the sign-in form").await;
    assert!(
        !page.visible("#console").await,
        "no console before signing in"
    );

    page.click("#sign-in").await;
    let message = page
        .wait_text("#login-error", "an empty token is refused", |t| {
            !t.is_empty()
        })
        .await;
    assert!(message.contains("token is required"), "{message}");
    assert!(!page.visible("#console").await);

    page.type_into("#token", "wrong-token").await;
    page.click("#sign-in").await;
    let message = page
        .wait_text("#login-error", "a wrong token is refused", |t| {
            t.contains("Wrong token")
        })
        .await;
    assert!(message.contains("401"), "{message}");
    assert!(
        !page.visible("#console").await,
        "a wrong token shows nothing"
    );
    assert_eq!(
        page.stored_token().await,
        Value::Null,
        "a refused token is not kept"
    );

    // A stale token kept in the tab is refused on load, with the same message.
    page.script(
        "sessionStorage.setItem(arguments[0], 'stale-token');",
        vec![json!(TOKEN_KEY)],
    )
    .await;
    page.client.refresh().await.expect("reload");
    page.wait_text("#login-error", "a stored wrong token is refused", |t| {
        t.contains("Wrong token")
    })
    .await;
    assert_eq!(page.stored_token().await, Value::Null);

    page.type_into("#token", TOKEN).await;
    page.click("#sign-in").await;
    page.wait_visible("#console", "the console after signing in")
        .await;
    assert!(!page.visible("#login").await);
    assert_eq!(
        page.stored_token().await,
        TOKEN,
        "the token is kept for the tab"
    );
}

async fn overview_matches_the_scene(page: &Page, app: &TestApp, scene: &Scene) {
    let counts = [
        ("order.pending", "1"),
        ("order.paid", "1"),
        ("order.cancelled", "1"),
        ("waybill.pending", "0"),
        ("waybill.accepted", "1"),
        ("waybill.cancelled", "1"),
    ];
    for (key, count) in counts {
        page.wait_text(&format!("[data-count=\"{key}\"]"), key, |t| t == count)
            .await;
    }
    page.wait_text("#broker-status", "broker state", |t| t == "broker: up")
        .await;
    page.wait_text("#outbox-backlog", "outbox backlog", |t| t == "0")
        .await;
    page.wait_text("#failed-unresolved", "unresolved failed messages", |t| {
        t == "1"
    })
    .await;
    page.wait_text(
        "#lateness-strip [data-stat=cancels] dd",
        "timeout cancels of the last hour",
        |t| t == "1",
    )
    .await;
    page.wait_text("#deadlines", "the pending order's deadline", |t| {
        t.contains(&scene.pending)
    })
    .await;
    for (queue, depth) in expected_depths(app) {
        let depth = depth.to_string();
        page.wait_text(
            &format!("#queues tr[data-queue=\"{queue}\"] .depth"),
            &queue,
            |t| t == depth,
        )
        .await;
    }
    let rows = page
        .script(
            "return document.querySelectorAll('#queues tr[data-queue]').length;",
            vec![],
        )
        .await;
    assert_eq!(
        rows,
        app.topology.all_queues().len(),
        "a row per queue of the topology"
    );
    let role = page
        .text(&format!(
            "#queues tr[data-queue=\"{}\"]",
            app.topology.parking_queue
        ))
        .await
        .unwrap();
    assert!(role.contains("parking"), "{role}");
}

async fn poison_message_is_text_and_requeues(page: &Page, scene: &Scene) {
    let row = format!("#failed-rows tr[data-id=\"{}\"]", scene.failed_id);
    let body = page
        .wait_text(
            &format!("{row} .body-cell"),
            "the poison message in the table",
            |t| !t.is_empty(),
        )
        .await;
    assert_eq!(body, POISON, "the body is shown literally");
    assert_eq!(
        page.text(&format!("{row} .status")).await.as_deref(),
        Some("pending")
    );
    assert_eq!(
        page.pwned().await,
        "undefined",
        "the body's script did not run"
    );
    let injected = page
        .script(
            "return document.querySelectorAll('#console script, #console img').length;",
            vec![],
        )
        .await;
    assert_eq!(injected, 0, "no element was made from data");

    // The filters: requeued shows nothing yet, pending shows it.
    page.client
        .find(Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("requeued")
        .await
        .unwrap();
    page.wait_visible("#failed-empty", "no requeued messages yet")
        .await;
    page.client
        .find(Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("pending")
        .await
        .unwrap();
    page.wait_text(&format!("{row} .status"), "the pending filter", |t| {
        t == "pending"
    })
    .await;

    page.click(&format!("{row} button.open")).await;
    page.wait_visible("#detail", "the detail view").await;
    assert_eq!(page.text("#detail-body").await.as_deref(), Some(POISON));
    let headers = page.text("#detail-headers").await.unwrap();
    assert!(
        headers.contains(r#"<img src=x onerror=\"window.__pwned = true\">"#),
        "{headers}"
    );
    let fields = page.text("#detail-fields").await.unwrap();
    assert!(
        fields.contains("poison-1") && fields.contains("permanent"),
        "{fields}"
    );
    assert_eq!(page.pwned().await, "undefined");

    page.click("#detail-requeue").await;
    let result = page
        .wait_text("#action-result", "the requeue's result", |t| !t.is_empty())
        .await;
    assert!(result.starts_with("Requeued message"), "{result}");
    page.client
        .find(Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("")
        .await
        .unwrap();
    page.wait_text(&format!("{row} .status"), "the requeued status", |t| {
        t == "requeued"
    })
    .await;
    // Requeued, the poison fails again: a new pending row appears above it.
    wait_statuses(
        page,
        json!(["pending", "requeued"]),
        "the requeued poison message fails again as a new row",
    )
    .await;
    page.wait_text("#failed-unresolved", "unresolved after the requeue", |t| {
        t == "1"
    })
    .await;
    assert_eq!(page.pwned().await, "undefined");
}

/// The statuses of the failed-message table, top to bottom.
async fn statuses(page: &Page) -> Value {
    page.script(
        "return [...document.querySelectorAll('#failed-rows .status')].map(e => e.textContent);",
        vec![],
    )
    .await
}

async fn wait_statuses(page: &Page, expected: Value, what: &str) {
    let reached = eventually(WITHIN, || async { statuses(page).await == expected }).await;
    assert!(
        reached,
        "{what}: the table shows {} instead of {expected}",
        statuses(page).await
    );
}

async fn requeue_all_names_the_count_and_discard_keeps_the_row(page: &Page) {
    page.click("#requeue-all").await;
    page.wait_visible("#confirm[open]", "the requeue-all confirmation")
        .await;
    let question = page.text("#confirm-text").await.unwrap();
    assert_eq!(question, "Requeue all 1 unresolved failed message(s)?");
    page.click("#confirm-yes").await;
    page.wait_text("#action-result", "the requeue-all result", |t| {
        t == "Requeued 1 message(s)."
    })
    .await;
    // And the poison fails once more.
    wait_statuses(
        page,
        json!(["pending", "requeued", "requeued"]),
        "after requeue all",
    )
    .await;

    page.click("#failed-rows tr:first-child button.open").await;
    page.wait_text("#detail-fields", "the newest row's detail", |t| {
        t.contains("pending")
    })
    .await;
    page.click("#detail-discard").await;
    page.wait_visible("#confirm[open]", "the discard confirmation")
        .await;
    page.click("#confirm-yes").await;
    page.wait_text("#action-result", "the discard result", |t| {
        t.starts_with("Discarded message")
    })
    .await;
    wait_statuses(
        page,
        json!(["discarded", "requeued", "requeued"]),
        "after the discard",
    )
    .await;
    page.wait_text("#failed-unresolved", "nothing unresolved", |t| t == "0")
        .await;
    page.click("#requeue-all").await;
    page.wait_text("#action-result", "requeue all with nothing to do", |t| {
        t.starts_with("Nothing to requeue")
    })
    .await;
    assert!(
        !page.visible("#confirm[open]").await,
        "no confirmation for nothing"
    );
}

async fn save_screenshot(page: &Page) {
    page.script("window.scrollTo(0, 0);", vec![]).await;
    let png = page.client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target).expect("target directory");
    let path = target.join("console-overview.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("console screenshot: {}", path.display());
}

async fn parking_replays_after_a_confirmation_naming_the_count(page: &Page, app: &TestApp) {
    page.click("#replay-parking").await;
    page.wait_visible("#confirm[open]", "the confirmation")
        .await;
    let question = page.text("#confirm-text").await.unwrap();
    assert!(question.contains("Replay 2 message(s)"), "{question}");
    page.click("#confirm-yes").await;
    page.wait_text("#action-result", "the replay's result", |t| {
        t.starts_with("Replayed 2 message(s)")
    })
    .await;
    let parking = format!(
        "#queues tr[data-queue=\"{}\"] .depth",
        app.topology.parking_queue
    );
    page.wait_text(&parking, "the parking queue emptied", |t| t == "0")
        .await;
}

async fn lookup_tells_what_happened(page: &Page, scene: &Scene) {
    page.type_into("#lookup-id", "not-a-uuid").await;
    page.click("#lookup-form button[type=submit]").await;
    page.wait_text("#lookup-error", "a malformed id", |t| {
        t.contains("Not a valid id")
    })
    .await;
    page.type_into("#lookup-id", &Uuid::now_v7().to_string())
        .await;
    page.click("#lookup-form button[type=submit]").await;
    page.wait_text("#lookup-error", "an unknown id", |t| {
        t.contains("No order or waybill")
    })
    .await;

    page.type_into("#lookup-id", &scene.timed_out).await;
    page.click("#lookup-form button[type=submit]").await;
    page.wait_visible("#lookup-result", "the lookup").await;
    assert_eq!(page.text("#lookup-error").await.as_deref(), Some(""));
    let fields = page.text("#lookup-fields").await.unwrap();
    assert!(
        fields.contains("waybill") && fields.contains("acceptance_timeout"),
        "{fields}"
    );
    let timeline = page.text("#lookup-timeline").await.unwrap();
    assert!(
        timeline.contains("cancelled: acceptance_timeout")
            && timeline.contains("after the deadline"),
        "{timeline}"
    );
}

async fn order_deadline(app: &TestApp, id: &str) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("select expires_at from orders where id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn bulk_extension_counts_first_then_extends_and_the_lookup_shows_it(
    page: &Page,
    app: &TestApp,
    scene: &Scene,
) {
    let before = order_deadline(app, &scene.pending).await;
    assert!(
        page.script(
            "return document.querySelector('#extend-run').disabled;",
            vec![]
        )
        .await
            == json!(true),
        "extending is possible only after a count"
    );
    page.type_into("#extend-seconds", "120").await;
    page.type_into("#extend-customer", "nobody").await;
    page.click("#extend-count").await;
    page.wait_text(
        "#extend-result",
        "the dry run of a filter matching nothing",
        |t| t == "0 pending orders match; nothing changed yet (dry run).",
    )
    .await;
    page.type_into("#extend-before", "tomorrow").await;
    page.click("#extend-count").await;
    page.wait_text("#extend-result", "a bad deadline filter", |t| {
        t.contains("validation_failed: expires_before")
    })
    .await;
    page.type_into("#extend-before", "").await;
    page.type_into("#extend-customer", "cust-1").await;
    page.click("#extend-count").await;
    page.wait_text("#extend-result", "the dry run's count", |t| {
        t == "1 pending order matches; nothing changed yet (dry run)."
    })
    .await;
    assert_eq!(
        order_deadline(app, &scene.pending).await,
        before,
        "a dry run changed a deadline"
    );
    page.wait_text("#extend-run", "the extend button names the count", |t| {
        t == "Extend 1…"
    })
    .await;
    page.click("#extend-run").await;
    page.wait_visible("#confirm[open]", "the extension's confirmation")
        .await;
    let question = page.text("#confirm-text").await.unwrap();
    assert_eq!(
        question,
        "Extend the deadline of 1 pending order(s) by 120 s?"
    );
    page.click("#confirm-yes").await;
    page.wait_text("#extend-result", "the extension's result", |t| {
        t == "Extended 1 of 1 matching order(s) by 120 s."
    })
    .await;
    let after = order_deadline(app, &scene.pending).await;
    assert_eq!((after - before).num_seconds(), 120);

    page.type_into("#lookup-id", &scene.pending).await;
    page.click("#lookup-form button[type=submit]").await;
    page.wait_text("#lookup-deadline", "the deadline history", |t| {
        t.contains("extended") && t.contains("bulk")
    })
    .await;
    let rows = page
        .script(
            "return [...document.querySelectorAll('#lookup-deadline tr')].map(r => r.children[1].textContent);",
            vec![],
        )
        .await;
    assert_eq!(rows, json!(["created", "extended"]));
}

async fn paging_follows_the_next_cursor(page: &Page, app: &TestApp) {
    // 22 more rows: with the 3 of the poison message, a page of 20 and a page of 5.
    for i in 0..22 {
        sqlx::query(
            "insert into failed_messages (id, queue, exchange, routing_key, headers, body, message_id, error,
                                          error_class, attempts, first_failed_at, last_failed_at)
             values ($1, $2, '', $2, '{}', $3, $4, 'database unavailable: pool timed out', 'transient', 3, now(), now())",
        )
        .bind(Uuid::now_v7())
        .bind(&app.topology.due_queue)
        .bind(vec![0xffu8, i])
        .bind(format!("paging-{i}"))
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let rows = || {
        page.script(
            "return document.querySelectorAll('#failed-rows tr').length;",
            vec![],
        )
    };
    assert!(
        eventually(WITHIN, || async { rows().await == 20 }).await,
        "a full first page"
    );
    assert_eq!(
        page.text("#failed-rows tr:first-child .body-cell")
            .await
            .as_deref(),
        Some("(2 bytes, not UTF-8)")
    );
    page.click("#page-next").await;
    page.wait_text("#page-info", "the second page", |t| t == "page 2")
        .await;
    assert!(
        eventually(WITHIN, || async { rows().await == 5 }).await,
        "the rest on the second page"
    );
    let last = page
        .text("#failed-rows tr:last-child .body-cell")
        .await
        .unwrap();
    assert!(
        last.contains("<script>"),
        "the oldest row, the first poison message, ends the list: {last}"
    );
    page.click("#page-prev").await;
    page.wait_text("#page-info", "back to the first page", |t| t == "page 1")
        .await;
    assert!(eventually(WITHIN, || async { rows().await == 20 }).await);
}
