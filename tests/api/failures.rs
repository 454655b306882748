//! Retries without blocking, the failed-message store with its alert, parking, and the
//! admin API that replays them — on the real services, with the database cut by a proxy
//! or a row lock held by the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use lapin::types::{AMQPValue, FieldTable, LongString};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, expect_error, expect_status, id_of, poll};
use crate::proxy::FaultProxy;

const WITHIN: Duration = Duration::from_secs(20);

/// A local HTTP endpoint standing in for the DingTalk robot; keeps every body posted.
async fn alert_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/robot",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                Json(json!({"errcode": 0}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/robot", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// The database URL of `app`'s database through `proxy`.
fn through(proxy: &FaultProxy, database_url: &str) -> String {
    database_url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()))
}

/// Publishes `body` into the due queue as a broken producer would (an `x-origin` header).
async fn publish_raw(app: &TestApp, body: &[u8], message_id: &str) {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-origin".into(),
        AMQPValue::LongString(LongString::from(b"test".to_vec())),
    );
    app.publish_raw(&app.topology.due_queue, body, message_id, headers)
        .await;
}

async fn failed_rows(app: &TestApp) -> Vec<Value> {
    let (status, page) = app
        .admin(Method::GET, "/admin/failed-messages?limit=200")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn malformed_and_non_utf8_messages_are_stored_at_once_with_their_bytes() {
    let (webhook, alerts) = alert_receiver().await;
    let app = TestApp::spawn_with(|c| c.alert_webhook_url = Some(webhook)).await;
    let not_json = b"{\"kind\": \"order\", <script>alert(1)</script>".to_vec();
    let not_utf8 = vec![0xff, 0xfe, 0x00, 0x41, 0x80];
    publish_raw(&app, &not_json, "poison-1").await;
    publish_raw(&app, &not_utf8, "poison-2").await;
    let rows = poll(WITHIN, || async {
        let rows = failed_rows(&app).await;
        (rows.len() == 2).then_some(rows)
    })
    .await
    .expect("both messages stored");
    for (message_id, bytes) in [("poison-1", &not_json), ("poison-2", &not_utf8)] {
        let row = rows.iter().find(|r| r["message_id"] == message_id).unwrap();
        let (status, detail) = app
            .admin(
                Method::GET,
                &format!("/admin/failed-messages/{}", row["id"].as_str().unwrap()),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(detail["body_hex"], hex, "bytes kept exactly");
        assert_eq!(detail["attempts"], 1, "no retries for a permanent error");
        assert_eq!(detail["error_class"], "permanent");
        assert_eq!(detail["queue"], app.topology.due_queue);
        assert_eq!(detail["status"], "pending");
        assert_eq!(detail["headers"]["x-origin"], "test");
        assert!(detail["first_failed_at"].is_string() && detail["last_failed_at"].is_string());
    }
    let poison = rows.iter().find(|r| r["message_id"] == "poison-1").unwrap();
    assert_eq!(poison["body"], String::from_utf8(not_json.clone()).unwrap());
    let non_utf8 = rows.iter().find(|r| r["message_id"] == "poison-2").unwrap();
    assert!(non_utf8["body"].is_null());
    for delay in &app.topology.retry_delays_ms {
        assert_eq!(app.queue_depth(&app.topology.retry_queue(*delay)).await, 0);
    }
    let alerted = eventually(WITHIN, || async { !alerts.lock().unwrap().is_empty() }).await;
    assert!(alerted, "no alert posted");
    let alert = alerts.lock().unwrap()[0].clone();
    assert_eq!(alert["msgtype"], "text");
    let content = alert["text"]["content"].as_str().unwrap();
    assert!(
        content.contains("2 message(s)"),
        "one alert for the burst, with its count: {content}"
    );
}

#[tokio::test]
async fn a_locked_row_exhausts_the_retries_then_a_requeue_cancels_the_order() {
    let (webhook, alerts) = alert_receiver().await;
    let app = TestApp::spawn_with(|c| {
        c.alert_webhook_url = Some(webhook);
        c.database_lock_timeout = Duration::from_millis(200);
    })
    .await;
    let id = id_of(&app.create_order().await);
    // Hold the order's row lock: every cancel attempt times out on it (55P03, transient).
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("select 1 from orders where id = $1 for update")
        .bind(Uuid::parse_str(&id).unwrap())
        .execute(&mut *blocker)
        .await
        .unwrap();
    let row = poll(WITHIN, || async {
        failed_rows(&app).await.into_iter().next()
    })
    .await
    .expect("stored after the retries");
    blocker.rollback().await.unwrap();
    assert_eq!(row["message_id"], id);
    assert_eq!(row["error_class"], "transient");
    assert_eq!(row["attempts"], 3, "the first try and one per retry tier");
    assert!(row["error"].as_str().unwrap().contains("lock"), "{row}");
    assert_eq!(row["headers"]["x-retry-count"], 2);
    assert_eq!(app.order_status(&id).await, "pending");
    assert!(
        eventually(WITHIN, || async { !alerts.lock().unwrap().is_empty() }).await,
        "no alert"
    );

    let path = format!(
        "/admin/failed-messages/{}/requeue",
        row["id"].as_str().unwrap()
    );
    let (status, requeued) = app.admin(Method::POST, &path).await;
    assert_eq!(status, StatusCode::OK, "{requeued}");
    assert_eq!(requeued["status"], "requeued");
    assert!(requeued["resolved_at"].is_string(), "{requeued}");
    app.wait_for_order_status(&id, "cancelled", WITHIN).await;
    let (status, again) = app.admin(Method::POST, &path).await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_resolved"))
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("order_timeout_retries_total{tier=\"2\"}"),
        "retries by tier"
    );
    assert!(metrics.contains("order_timeout_requeued_total"), "requeues");
}

#[tokio::test]
async fn database_outage_goes_through_the_retry_tiers_without_blocking_and_loses_nothing() {
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let app = TestApp::spawn_with(|c| {
        c.database_url = through(&proxy, &c.database_url);
        c.retry_delays = [1, 2, 4, 8].map(Duration::from_secs).to_vec();
    })
    .await;
    let mut unpaid = Vec::new();
    let mut paid = Vec::new();
    for i in 0..12 {
        let id = id_of(&app.create_order().await);
        if i % 3 == 0 {
            assert_eq!(app.pay(&id).await.0, StatusCode::OK);
            paid.push(id);
        } else {
            unpaid.push(id);
        }
    }
    proxy.down();
    // The timers come due while the database is away: they leave the due queue for the
    // first retry tier instead of waiting at its head.
    let tiers: Vec<String> = app
        .topology
        .retry_delays_ms
        .iter()
        .map(|ms| app.topology.retry_queue(*ms))
        .collect();
    let mut seen_in_tier = vec![0u32; tiers.len()];
    let mut most_waiting = 0;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while seen_in_tier[1] == 0 && tokio::time::Instant::now() < deadline {
        let mut waiting = 0;
        for (i, tier) in tiers.iter().enumerate() {
            let depth = app.queue_depth(tier).await;
            seen_in_tier[i] = seen_in_tier[i].max(depth);
            waiting += depth;
        }
        most_waiting = most_waiting.max(waiting);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("retry tiers, most messages seen: {seen_in_tier:?}");
    assert!(
        seen_in_tier[0] > 0 && seen_in_tier[1] > 0,
        "timers did not pass through the retry tiers: {seen_in_tier:?}"
    );
    assert!(
        most_waiting >= 6,
        "only {most_waiting} timers waited in the tiers at once"
    );
    assert_eq!(
        app.queue_depth(&app.topology.due_queue).await,
        0,
        "the due queue is not blocked"
    );
    let (status, body) = app.post("/orders", crate::helpers::order_body()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("database_unavailable")
        )
    );
    proxy.up();
    for id in &unpaid {
        app.wait_for_order_status(id, "cancelled", WITHIN).await;
    }
    for id in &paid {
        assert_eq!(app.order_status(id).await, "paid");
    }
    assert_eq!(
        app.count_orders("cancelled").await + app.count_orders("paid").await,
        12
    );
    assert!(failed_rows(&app).await.is_empty());
}

#[tokio::test]
async fn database_down_for_the_whole_retry_budget_parks_messages_and_a_replay_recovers_them() {
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let app = TestApp::spawn_with(|c| c.database_url = through(&proxy, &c.database_url)).await;
    let mut unpaid = Vec::new();
    let paid = id_of(&app.create_order().await);
    assert_eq!(app.pay(&paid).await.0, StatusCode::OK);
    for _ in 0..5 {
        unpaid.push(id_of(&app.create_order().await));
    }
    // Let the relay publish every timer, then take the database away.
    let published = eventually(WITHIN, || async {
        app.queue_depth(&app.topology.cache_queue("order.2000"))
            .await
            == 6
    })
    .await;
    assert!(published);
    proxy.down();
    let parked = eventually(WITHIN, || async {
        app.queue_depth(&app.topology.parking_queue).await == 6
    })
    .await;
    assert!(
        parked,
        "parking depth {}",
        app.queue_depth(&app.topology.parking_queue).await
    );
    proxy.up();
    let (status, body) = app.admin(Method::POST, "/admin/parking/requeue").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["requeued"], 6);
    for id in &unpaid {
        app.wait_for_order_status(id, "cancelled", WITHIN).await;
    }
    assert_eq!(app.order_status(&paid).await, "paid");
    assert_eq!(app.queue_depth(&app.topology.parking_queue).await, 0);
    assert_eq!(
        app.count_orders("cancelled").await + app.count_orders("paid").await,
        6
    );
}

#[tokio::test]
async fn admin_routes_need_the_token_and_are_off_without_one() {
    let app = TestApp::spawn().await;
    async fn list(app: &TestApp, token: Option<&str>) -> crate::helpers::Reply {
        let mut request = app.request(Method::GET, "/admin/failed-messages");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        app.send(request).await
    }
    let none = list(&app, None).await.answer();
    expect_error(none, StatusCode::UNAUTHORIZED, "unauthorized");
    let wrong = list(&app, Some("test-admin-tokem")).await.answer();
    expect_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    let right = list(&app, Some("test-admin-token")).await.answer();
    expect_status(right, StatusCode::OK);
    let disabled = TestApp::spawn_with(|c| c.admin_token = None).await;
    let request = disabled.request(Method::POST, "/admin/parking/requeue");
    let answer = disabled
        .send(request.bearer_auth("anything"))
        .await
        .answer();
    expect_error(answer, StatusCode::SERVICE_UNAVAILABLE, "admin_disabled");
    // An empty ADMIN_TOKEN disables the admin API.
    let empty = TestApp::spawn_with(|c| c.admin_token = Some(String::new())).await;
    let answer = list(&empty, Some("")).await.answer();
    expect_error(answer, StatusCode::SERVICE_UNAVAILABLE, "admin_disabled");
}

#[tokio::test]
async fn discard_keeps_the_row_and_requeue_all_filters_by_queue() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        publish_raw(&app, format!("garbage {i}").as_bytes(), &format!("g{i}")).await;
    }
    let rows = poll(WITHIN, || async {
        let rows = failed_rows(&app).await;
        (rows.len() == 3).then_some(rows)
    })
    .await
    .expect("three stored");
    let first = rows[0]["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .admin(Method::DELETE, &format!("/admin/failed-messages/{first}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, discarded) = app
        .admin(Method::GET, "/admin/failed-messages?status=discarded")
        .await;
    assert_eq!(discarded["items"].as_array().unwrap().len(), 1);
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/failed-messages/{first}/requeue"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_resolved"))
    );
    let (_, none) = app
        .admin(
            Method::POST,
            "/admin/failed-messages/requeue?queue=elsewhere",
        )
        .await;
    assert_eq!(none["requeued"], 0, "{none}");
    let (status, all) = app
        .admin(
            Method::POST,
            &format!(
                "/admin/failed-messages/requeue?queue={}",
                app.topology.due_queue
            ),
        )
        .await;
    assert_eq!(
        (status, all["requeued"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    // Garbage requeued is garbage again: stored anew, the old rows marked requeued.
    let stored_again = eventually(WITHIN, || async { failed_rows(&app).await.len() == 5 }).await;
    assert!(stored_again);
    let (_, page) = app
        .admin(Method::GET, "/admin/failed-messages?limit=2")
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next"].as_str().unwrap();
    let (_, rest) = app
        .admin(
            Method::GET,
            &format!("/admin/failed-messages?limit=2&after={cursor}"),
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    let (status, _) = app
        .admin(
            Method::GET,
            &format!("/admin/failed-messages/{}", Uuid::now_v7()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
