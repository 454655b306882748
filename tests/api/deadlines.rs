//! Steering deadlines (issue 12): extending one entity's deadline, racing the timer,
//! the bulk extension, and extensions across broker and database outages. Timeouts are
//! seconds; every wait polls with a deadline.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{AMQP_URL, TestApp, eventually, expect_error, expect_status, id_of, via_port};
use crate::proxy::FaultProxy;

const WITHIN: Duration = Duration::from_secs(20);

fn time_of(entity: &Value, field: &str) -> DateTime<Utc> {
    entity[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {entity}"))
        .parse()
        .expect("timestamp")
}

async fn extend(app: &TestApp, path: &str, id: &str, seconds: Value) -> (StatusCode, Value) {
    app.post(
        &format!("/{path}/{id}/extend"),
        json!({ "seconds": seconds }),
    )
    .await
}

/// Reads the events queue until `enough` holds for what arrived, or `WITHIN` passes;
/// returns every (routing key, body) in arrival order.
pub async fn collect_events(
    app: &TestApp,
    queue: &str,
    enough: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let deadline = Instant::now() + WITHIN;
    let mut seen = Vec::new();
    loop {
        seen.extend(app.drain(queue).await);
        if enough(&seen) || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn keys(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(key, _)| key.as_str()).collect()
}

/// The routing keys in order of first arrival: across an outage events are delivered at
/// least once, so a publish whose mark was cut comes again.
fn distinct_keys(events: &[(String, Value)]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for (key, _) in events {
        if !seen.contains(&key.as_str()) {
            seen.push(key);
        }
    }
    seen
}

/// The deadline, status and cancel time of an order as stored.
async fn stored(app: &TestApp, id: &str) -> (String, DateTime<Utc>, Option<DateTime<Utc>>) {
    sqlx::query_as("select status, expires_at, cancelled_at from orders where id = $1")
        .bind(Uuid::parse_str(id).expect("uuid"))
        .fetch_one(&app.pool)
        .await
        .expect("order row")
}

/// Checks, every 50 ms until the database clock reaches `deadline`, that the order is
/// still pending; then that it is cancelled within `WITHIN`, not before its deadline.
async fn pending_until_then_cancelled(app: &TestApp, id: &str, deadline: DateTime<Utc>) {
    while app.db_now().await < deadline {
        let (status, _, _) = stored(app, id).await;
        // A cancel landing in the last instants would be caught by the check below.
        if status != "pending" {
            let (_, expires, cancelled) = stored(app, id).await;
            panic!("order {id} is {status} at {cancelled:?}, before its deadline {expires}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_for_order_status(id, "cancelled", WITHIN).await;
    let (_, expires, cancelled) = stored(app, id).await;
    let cancelled = cancelled.expect("cancelled_at");
    assert_eq!(expires, deadline, "the deadline moved again");
    assert!(
        cancelled >= expires,
        "{id} cancelled at {cancelled}, before its deadline {expires}"
    );
}

#[tokio::test]
async fn an_extended_order_outlives_its_old_deadline_and_is_cancelled_after_the_new_one() {
    let app = TestApp::spawn().await;
    let events = app.observe_events().await;
    let order = app.create_order().await;
    let id = id_of(&order);
    let extended = expect_status(extend(&app, "orders", &id, json!(3)).await, StatusCode::OK);
    assert_eq!(extended["status"], "pending");
    let new_deadline = time_of(&extended, "expires_at");
    assert_eq!(
        (new_deadline - time_of(&order, "expires_at")).num_milliseconds(),
        3000
    );
    let (_, found) = app
        .admin(reqwest::Method::GET, &format!("/admin/lookup/{id}"))
        .await;
    assert_eq!(
        found["deadline_history"],
        json!([
            {"event": "created", "at": order["created_at"], "old_expires_at": null,
             "expires_at": order["expires_at"], "source": "api"},
            {"event": "extended", "at": found["deadline_history"][1]["at"],
             "old_expires_at": order["expires_at"], "expires_at": extended["expires_at"],
             "source": "api"}
        ])
    );
    // The timer armed for the old deadline (2 s) fires early and is re-armed.
    pending_until_then_cancelled(&app, &id, new_deadline).await;
    let seen = collect_events(&app, &events, |e| e.len() >= 3).await;
    assert_eq!(
        keys(&seen),
        ["order.created", "order.extended", "order.cancelled"]
    );
}

#[tokio::test]
async fn the_extended_event_carries_the_waybill_with_its_new_deadline() {
    let app = TestApp::spawn().await;
    let events = app.observe_events().await;
    let id = id_of(&app.create_waybill().await);
    let extended = expect_status(
        extend(&app, "waybills", &id, json!(60)).await,
        StatusCode::OK,
    );
    let (_, shown) = app.get(&format!("/waybills/{id}")).await;
    assert_eq!(shown, extended);
    let seen = collect_events(&app, &events, |e| e.len() >= 2).await;
    assert_eq!(keys(&seen), ["waybill.created", "waybill.extended"]);
    let body = &seen[1].1;
    assert_eq!(body, &extended);
}

#[tokio::test]
async fn extensions_racing_the_timer_end_extended_and_pending_or_refused_and_cancelled() {
    // Long enough that creating the 30 orders ends well before the first deadline, even on
    // a loaded machine, so every extension can be aimed at its order's deadline.
    let app = TestApp::spawn_with(|c| c.order_timeout = Duration::from_secs(5)).await;
    let mut orders = Vec::new();
    for _ in 0..30 {
        let order = app.create_order().await;
        orders.push((id_of(&order), time_of(&order, "expires_at")));
    }
    // Each extension is aimed at its own order's deadline on the database clock, from
    // 500 ms before it to 225 ms after, so both outcomes are exercised: the early ones
    // extend, the late ones are refused, and the ones in between race the timer.
    let (started, db_started) = (Instant::now(), app.db_now().await);
    let extensions = orders.iter().enumerate().map(|(i, (id, expires_at))| {
        let app = &app;
        let until_deadline = (*expires_at - db_started).to_std().unwrap_or_default();
        let aim = (until_deadline + Duration::from_millis(i as u64 * 25))
            .saturating_sub(Duration::from_millis(500));
        async move {
            tokio::time::sleep(aim.saturating_sub(started.elapsed())).await;
            (id.clone(), extend(app, "orders", id, json!(1)).await)
        }
    });
    let answers = futures_util::future::join_all(extensions).await;
    let (mut extended, mut refused) = (0, 0);
    for ((id, original), (_, (status, body))) in orders.iter().zip(answers) {
        app.wait_for_order_status(id, "cancelled", WITHIN).await;
        let (_, expires, cancelled) = stored(&app, id).await;
        let cancelled = cancelled.expect("cancelled_at");
        assert!(cancelled >= expires, "{id} cancelled before its deadline");
        match status {
            StatusCode::OK => {
                extended += 1;
                assert_eq!(time_of(&body, "expires_at"), expires);
                assert_eq!((expires - *original).num_milliseconds(), 1000);
            }
            StatusCode::CONFLICT => {
                refused += 1;
                let code = body["error"]["code"].as_str().unwrap_or_default();
                assert!(
                    code == "order_expired" || code == "order_cancelled",
                    "{body}"
                );
                assert_eq!(expires, *original, "{id} refused but its deadline moved");
            }
            other => panic!("unexpected answer {other} {body}"),
        }
    }
    assert_eq!(extended + refused, 30);
    println!("extension race: {extended} extended in time, {refused} refused as expired");
    assert!(
        orders.iter().all(|(_, e)| *e > db_started),
        "the orders took longer to create than their timeout: nothing could be aimed"
    );
    assert!(
        extended > 0,
        "no extension aimed before its deadline succeeded"
    );
    assert!(
        refused > 0,
        "no extension aimed after its deadline was refused"
    );
}

#[tokio::test]
async fn settled_and_expired_entities_are_not_extended_and_bad_input_names_the_field() {
    let app = TestApp::spawn_with(|c| c.max_timeout = Duration::from_secs(60)).await;
    let paid = id_of(&app.create_order().await);
    assert_eq!(app.pay(&paid).await.0, StatusCode::OK);
    let cancelled = id_of(&app.create_order().await);
    expect_status(app.cancel_order(&cancelled).await, StatusCode::OK);
    let accepted = id_of(&app.create_waybill().await);
    expect_status(app.accept_waybill(&accepted, "c1").await, StatusCode::OK);
    let dropped = id_of(&app.create_waybill().await);
    expect_status(app.cancel_waybill(&dropped).await, StatusCode::OK);
    // Past its deadline in database time, before any timer could cancel it.
    let overdue = Uuid::now_v7();
    sqlx::query("insert into orders (id, customer_id, amount_cents, currency, expires_at) values ($1, 'c', 1, 'EUR', now() - interval '1 millisecond')")
        .bind(overdue)
        .execute(&app.pool)
        .await
        .unwrap();
    for (path, id, code) in [
        ("orders", paid.as_str(), "order_paid"),
        ("orders", cancelled.as_str(), "order_cancelled"),
        ("waybills", accepted.as_str(), "waybill_accepted"),
        ("waybills", dropped.as_str(), "waybill_cancelled"),
        ("orders", &overdue.to_string(), "order_expired"),
    ] {
        expect_error(
            extend(&app, path, id, json!(5)).await,
            StatusCode::CONFLICT,
            code,
        );
    }
    assert_eq!(app.order_status(&overdue.to_string()).await, "pending");

    let pending = app.create_order().await;
    let id = id_of(&pending);
    let bad = [
        (json!({}), "seconds"),
        (json!({"seconds": 0}), "seconds"),
        (json!({"seconds": -1}), "seconds"),
        (json!({"seconds": 2.5}), "seconds"),
        (json!({"seconds": "10"}), "seconds"),
        (json!({"seconds": null}), "seconds"),
        (json!({"seconds": 61}), "seconds"),
        // 2 s left + 59 s is beyond MAX_TIMEOUT (60 s) from now.
        (json!({"seconds": 59}), "seconds"),
        (json!({"seconds": 5, "by": "me"}), "by"),
        (json!([5]), "body"),
    ];
    for (body, field) in bad {
        let answer = expect_error(
            app.post(&format!("/orders/{id}/extend"), body.clone())
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let truncated = app
        .request(Method::POST, &format!("/orders/{id}/extend"))
        .header("content-type", "application/json")
        .body("{\"seconds\":");
    let answer = app.send(truncated).await.answer();
    expect_error(answer, StatusCode::BAD_REQUEST, "invalid_json");
    let (_, unchanged) = app.get(&format!("/orders/{id}")).await;
    assert_eq!(unchanged["expires_at"], pending["expires_at"]);
    expect_error(
        extend(&app, "orders", &Uuid::now_v7().to_string(), json!(5)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        extend(&app, "waybills", "not-a-uuid", json!(5)).await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
    );
    let history: i64 = sqlx::query_scalar("select count(*) from deadline_history")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(history, 0, "a refused extension left history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_during_a_broker_outage_is_kept_and_the_old_timer_cancels_nothing() {
    let proxy = FaultProxy::start("127.0.0.1:5672").await;
    let port = proxy.port();
    let app = TestApp::spawn_with(|c| c.amqp_url = via_port(AMQP_URL, port)).await;
    let events = app.observe_events().await;
    let id = id_of(&app.create_order().await);
    // The timer for the old deadline (2 s) is in the broker before the outage.
    let armed = eventually(WITHIN, || async {
        app.queue_depth(&app.topology.cache_queue("order.2000"))
            .await
            == 1
    })
    .await;
    assert!(armed, "timer never published");
    proxy.down();
    let extended = expect_status(extend(&app, "orders", &id, json!(5)).await, StatusCode::OK);
    // The old deadline passes while the service cannot reach the broker.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(app.order_status(&id).await, "pending");
    proxy.up();
    pending_until_then_cancelled(&app, &id, time_of(&extended, "expires_at")).await;
    let seen = collect_events(&app, &events, |e| distinct_keys(e).len() >= 3).await;
    assert_eq!(
        distinct_keys(&seen),
        ["order.created", "order.extended", "order.cancelled"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_survives_a_database_outage_over_the_old_deadline() {
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let port = proxy.port();
    let app = TestApp::spawn_with(|c| {
        c.database_url = via_port(&c.database_url, port);
        c.order_timeout = Duration::from_secs(3);
        // Retry tiers that outlast the outage: the old timer is retried, not parked.
        c.retry_delays = [1, 2, 4, 8].map(Duration::from_secs).to_vec();
    })
    .await;
    let events = app.observe_events().await;
    let id = id_of(&app.create_order().await);
    let extended = expect_status(extend(&app, "orders", &id, json!(6)).await, StatusCode::OK);
    let new_deadline = time_of(&extended, "expires_at");
    proxy.down();
    // While the database is away an extension is refused as unavailable, changing nothing.
    expect_error(
        extend(&app, "orders", &id, json!(6)).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    );
    // The old deadline (3 s) passes during the outage; its timer meets no database.
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.up();
    pending_until_then_cancelled(&app, &id, new_deadline).await;
    let seen = collect_events(&app, &events, |e| distinct_keys(e).len() >= 3).await;
    assert_eq!(
        distinct_keys(&seen),
        ["order.created", "order.extended", "order.cancelled"]
    );
}

/// Inserts `count` pending orders of `customer` expiring `seconds` from the database's
/// now, straight into the table (no timers: the test only looks at deadlines).
async fn insert_orders(app: &TestApp, customer: &str, count: i64, seconds: i64) -> Vec<Uuid> {
    sqlx::query_scalar(
        "insert into orders (id, customer_id, amount_cents, currency, expires_at)
         select gen_random_uuid(), $1, 100, 'EUR', now() + $3 * interval '1 second'
         from generate_series(1, $2) returning id",
    )
    .bind(customer)
    .bind(count)
    .bind(seconds)
    .fetch_all(&app.pool)
    .await
    .expect("insert orders")
}

async fn deadlines_of(app: &TestApp, ids: &[Uuid]) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar("select expires_at from orders where id = any($1) order by id")
        .bind(ids)
        .fetch_all(&app.pool)
        .await
        .expect("deadlines")
}

async fn bulk(app: &TestApp, token: Option<&str>, body: Value) -> (StatusCode, Value) {
    let mut request = app
        .request(Method::POST, "/admin/deadlines/extend")
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    app.send(request).await.answer()
}

const TOKEN: Option<&str> = Some("test-admin-token");

#[tokio::test]
async fn a_bulk_extension_counts_on_a_dry_run_then_extends_exactly_the_matching_pending_entities() {
    let app = TestApp::spawn().await;
    let events = app.observe_events().await;
    let many = insert_orders(&app, "many", 1_203, 600).await;
    let other = insert_orders(&app, "other", 3, 600).await;
    let paid = insert_orders(&app, "many", 1, 600).await;
    sqlx::query("update orders set status = 'paid', paid_at = now() where id = $1")
        .bind(paid[0])
        .execute(&app.pool)
        .await
        .unwrap();
    let overdue = insert_orders(&app, "many", 1, -1).await;
    let before = deadlines_of(&app, &many).await;
    let untouched = [&other[..], &paid[..], &overdue[..]].concat();
    let untouched_before = deadlines_of(&app, &untouched).await;

    let request = json!({"kind": "order", "seconds": 900, "customer_id": "many", "dry_run": true});
    for token in [None, Some("wrong")] {
        expect_error(
            bulk(&app, token, request.clone()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    let (status, body) = bulk(&app, TOKEN, request.clone()).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"matched": 1203, "extended": 0}))
    );
    assert_eq!(
        deadlines_of(&app, &many).await,
        before,
        "a dry run moved deadlines"
    );

    let mut real = request;
    real["dry_run"] = json!(false);
    let (status, body) = bulk(&app, TOKEN, real).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"matched": 1203, "extended": 1203}))
    );
    let after = deadlines_of(&app, &many).await;
    for (old, new) in before.iter().zip(&after) {
        assert_eq!((*new - *old).num_seconds(), 900);
    }
    assert_eq!(deadlines_of(&app, &untouched).await, untouched_before);
    let history: Vec<(String, i64)> = sqlx::query_as(
        "select source, count(*) from deadline_history where event = 'extended' group by source",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(history, [("bulk".to_owned(), 1203)]);
    let seen = collect_events(&app, &events, |e| e.len() >= 1203).await;
    let mut extended: Vec<Uuid> = seen
        .iter()
        .filter(|(key, _)| key == "order.extended")
        .map(|(_, body)| Uuid::parse_str(body["id"].as_str().unwrap()).unwrap())
        .collect();
    extended.sort();
    extended.dedup();
    let mut expected = many.clone();
    expected.sort();
    assert_eq!(extended, expected);
}

#[tokio::test]
async fn bulk_filters_by_deadline_and_by_order_and_refuses_bad_requests_with_the_field() {
    let app = TestApp::spawn_with(|c| {
        c.order_timeout = Duration::from_secs(60);
        c.waybill_timeout = Duration::from_secs(60);
    })
    .await;
    let soon = insert_orders(&app, "c", 2, 100).await;
    let late = insert_orders(&app, "c", 2, 1000).await;
    let cutoff = app.db_now().await + chrono::Duration::seconds(500);
    let (status, body) = bulk(
        &app,
        TOKEN,
        json!({"kind": "order", "seconds": 60, "expires_before": cutoff.to_rfc3339()}),
    )
    .await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"matched": 2, "extended": 2}))
    );
    let late_before = deadlines_of(&app, &late).await;
    assert!(late_before.iter().all(|d| *d > cutoff));

    let order_id = Uuid::now_v7();
    let (_, mine) = app
        .post(
            "/waybills",
            json!({"order_id": order_id, "origin": "A", "destination": "B"}),
        )
        .await;
    let theirs = app.create_waybill().await;
    let (status, body) = bulk(
        &app,
        TOKEN,
        json!({"kind": "waybill", "seconds": 30, "order_id": order_id}),
    )
    .await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"matched": 1, "extended": 1}))
    );
    let (_, mine_now) = app.get(&format!("/waybills/{}", id_of(&mine))).await;
    let (_, theirs_now) = app.get(&format!("/waybills/{}", id_of(&theirs))).await;
    assert_eq!(
        (time_of(&mine_now, "expires_at") - time_of(&mine, "expires_at")).num_seconds(),
        30
    );
    assert_eq!(theirs_now["expires_at"], theirs["expires_at"]);

    for (body, field) in [
        (json!({"seconds": 5}), "kind"),
        (json!({"kind": "invoice", "seconds": 5}), "kind"),
        (json!({"kind": "order"}), "seconds"),
        (json!({"kind": "order", "seconds": 0}), "seconds"),
        (json!({"kind": "order", "seconds": 1e9}), "seconds"),
        (
            json!({"kind": "order", "seconds": 5, "customer_id": ""}),
            "customer_id",
        ),
        (
            json!({"kind": "order", "seconds": 5, "order_id": order_id}),
            "order_id",
        ),
        (
            json!({"kind": "waybill", "seconds": 5, "customer_id": "c"}),
            "customer_id",
        ),
        (
            json!({"kind": "waybill", "seconds": 5, "order_id": "x"}),
            "order_id",
        ),
        (
            json!({"kind": "order", "seconds": 5, "expires_before": "soon"}),
            "expires_before",
        ),
        (
            json!({"kind": "order", "seconds": 5, "dry_run": 1}),
            "dry_run",
        ),
        (
            json!({"kind": "order", "seconds": 5, "everything": true}),
            "everything",
        ),
        (json!("extend"), "body"),
    ] {
        let answer = expect_status(
            bulk(&app, TOKEN, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    assert_eq!(deadlines_of(&app, &late).await, late_before);
    let _ = soon;
}

/// Whether a queue exists on the broker (a passive declare on a channel of its own).
async fn queue_exists(app: &TestApp, queue: &str) -> bool {
    let channel = app.channel().await;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .is_ok()
}

#[tokio::test]
async fn orders_with_their_own_timeouts_never_wait_behind_longer_ones() {
    let app = TestApp::spawn_with(|c| c.order_timeout = Duration::from_secs(60)).await;
    let with = |seconds: u64| {
        let mut body = crate::helpers::order_body();
        body["timeout_seconds"] = json!(seconds);
        body
    };
    let long = expect_status(app.post("/orders", with(20)).await, StatusCode::CREATED);
    let short = expect_status(app.post("/orders", with(3)).await, StatusCode::CREATED);
    let waybill = expect_status(
        app.post(
            "/waybills",
            json!({"origin": "A", "destination": "B", "timeout_seconds": 4}),
        )
        .await,
        StatusCode::CREATED,
    );
    for (entity, seconds) in [(&long, 20), (&short, 3), (&waybill, 4)] {
        let timeout = time_of(entity, "expires_at") - time_of(entity, "created_at");
        assert_eq!(timeout.num_milliseconds(), seconds * 1000, "{entity}");
    }
    let short_id = id_of(&short);
    pending_until_then_cancelled(&app, &short_id, time_of(&short, "expires_at")).await;
    let (_, _, cancelled) = stored(&app, &short_id).await;
    let lateness = cancelled.expect("cancelled_at") - time_of(&short, "expires_at");
    assert!(
        lateness.num_milliseconds() < 2000,
        "the 3 s order waited behind the 20 s one: {lateness}"
    );
    assert_eq!(app.order_status(&id_of(&long)).await, "pending");
    let cancelled = eventually(WITHIN, || async {
        app.get(&format!("/waybills/{}", id_of(&waybill))).await.1["status"] == "cancelled"
    })
    .await;
    assert!(cancelled, "the 4 s waybill was not cancelled");
    // Timeouts clients choose get no cache queue of their own: the number of queues stays
    // bounded whatever they send.
    for bucket in ["order.20000", "order.3000", "waybill.4000"] {
        assert!(
            !queue_exists(&app, &app.topology.cache_queue(bucket)).await,
            "a cache queue for {bucket}"
        );
    }
    assert!(queue_exists(&app, &app.topology.cache_queue("order.60000")).await);
}

#[tokio::test]
async fn a_timeout_outside_1_to_max_timeout_is_refused_with_its_field() {
    let app = TestApp::spawn_with(|c| c.max_timeout = Duration::from_secs(3600)).await;
    for bad in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("60"),
        json!(3601),
        json!(true),
    ] {
        let mut body = crate::helpers::order_body();
        body["timeout_seconds"] = bad.clone();
        let answer = expect_status(
            app.post("/orders", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
        assert_eq!(
            answer["error"]["field"], "timeout_seconds",
            "{bad}: {answer}"
        );
        let body = json!({"origin": "A", "destination": "B", "timeout_seconds": bad});
        let answer = expect_status(
            app.post("/waybills", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
        assert_eq!(answer["error"]["field"], "timeout_seconds", "{answer}");
    }
    assert_eq!(app.count_orders("pending").await, 0);
    let mut body = crate::helpers::order_body();
    body["timeout_seconds"] = json!(3600);
    assert_eq!(app.post("/orders", body).await.0, StatusCode::CREATED);
}
