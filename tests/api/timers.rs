//! The timer path: outbox → cache bucket (per-message TTL) → due queue → conditional
//! cancel, checked on the real broker with 2-second timeouts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, expect_error, expect_status, id_of, poll};

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_unpaid_order_is_cancelled_at_its_deadline_and_a_paid_one_never() {
    let app = TestApp::spawn().await;
    let unpaid = id_of(&app.create_order().await);
    let paid = id_of(&app.create_order().await);
    assert_eq!(app.pay(&paid).await.0, StatusCode::OK);
    app.wait_for_order_status(&unpaid, "cancelled", WITHIN)
        .await;
    let (_, order) = app.get(&format!("/orders/{unpaid}")).await;
    assert_eq!(order["cancel_reason"], "payment_timeout");
    let expires: DateTime<Utc> = order["expires_at"].as_str().unwrap().parse().unwrap();
    let cancelled: DateTime<Utc> = order["cancelled_at"].as_str().unwrap().parse().unwrap();
    assert!(
        cancelled >= expires,
        "cancelled {cancelled} before its deadline {expires}"
    );
    // Give the paid order's timer time to fire too: it must be a no-op.
    let timer_fired = eventually(WITHIN, || async {
        app.queue_depth(&app.topology.cache_queue("order.2000"))
            .await
            == 0
    })
    .await;
    assert!(timer_fired);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.order_status(&paid).await, "paid");
}

#[tokio::test]
async fn a_waybill_is_cancelled_and_an_accepted_one_kept() {
    let app = TestApp::spawn().await;
    let waiting = id_of(&app.create_waybill().await);
    let accepted = id_of(&app.create_waybill().await);
    expect_status(app.accept_waybill(&accepted, "c9").await, StatusCode::OK);
    let cancelled = eventually(WITHIN, || async {
        app.get(&format!("/waybills/{waiting}")).await.1["status"] == "cancelled"
    })
    .await;
    assert!(cancelled);
    let (_, waybill) = app.get(&format!("/waybills/{waiting}")).await;
    assert_eq!(waybill["cancel_reason"], "acceptance_timeout");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, kept) = app.get(&format!("/waybills/{accepted}")).await;
    assert_eq!(kept["status"], "accepted");
    expect_error(
        app.accept_waybill(&waiting, "late").await,
        StatusCode::CONFLICT,
        "waybill_cancelled",
    );
}

/// An order's status, paid_at, cancelled_at and expires_at.
type StoredOutcome = (
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

#[tokio::test]
async fn pays_racing_the_deadline_end_paid_or_cancelled_never_both() {
    let app = TestApp::spawn().await;
    let mut orders = Vec::new();
    for _ in 0..30 {
        let order = app.create_order().await;
        let expires: DateTime<Utc> = order["expires_at"].as_str().unwrap().parse().unwrap();
        orders.push((id_of(&order), expires));
    }
    // Each pay is aimed at its deadline, from 150 ms before to 150 ms after.
    let pays = orders.iter().enumerate().map(|(i, (id, _))| {
        let app = &app;
        let offset_ms = 2000 - 150 + (i as u64 * 10);
        async move {
            tokio::time::sleep(Duration::from_millis(offset_ms)).await;
            (id.clone(), app.pay(id).await)
        }
    });
    let answers = futures_util::future::join_all(pays).await;
    for (id, _) in &orders {
        let settled =
            eventually(WITHIN, || async { app.order_status(id).await != "pending" }).await;
        assert!(settled, "order {id} still pending");
    }
    let (mut paid, mut refused) = (0, 0);
    for (id, (status, body)) in answers {
        let row: StoredOutcome = sqlx::query_as(
            "select status, paid_at, cancelled_at, expires_at from orders where id = $1",
        )
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        match status {
            StatusCode::OK => {
                paid += 1;
                assert_eq!(row.0, "paid", "{id} answered paid but is {}", row.0);
                assert!(row.1.unwrap() < row.3, "{id} paid at or after its deadline");
                assert!(row.2.is_none());
            }
            StatusCode::CONFLICT => {
                refused += 1;
                // Refused because the deadline passed, before or after the cancel landed.
                let code = body["error"]["code"].as_str().unwrap_or_default();
                assert!(
                    code == "order_expired" || code == "order_cancelled",
                    "{body}"
                );
                assert_eq!(row.0, "cancelled", "{id} refused but is {}", row.0);
                assert!(row.1.is_none());
            }
            other => panic!("unexpected answer {other} {body}"),
        }
    }
    assert_eq!(paid + refused, 30);
    println!("deadline race: {paid} paid in time, {refused} refused as expired");
}

/// The deadline a timer carries (`x-due-at-us`), in microseconds since the epoch.
fn deadline_header(timer: &lapin::message::Delivery) -> i64 {
    match timer
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-due-at-us"))
    {
        Some(AMQPValue::LongLongInt(us)) => *us,
        other => panic!("no deadline header: {other:?}"),
    }
}

/// An order's deadline in microseconds since the epoch, as the database has it.
async fn expires_us(app: &TestApp, id: Uuid) -> i64 {
    sqlx::query_scalar(
        "select (extract(epoch from expires_at) * 1000000)::bigint from orders where id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_early_delivery_is_re_armed_with_its_deadline_and_cancelled_at_it_not_before() {
    let app = TestApp::spawn().await;
    // An order with no outbox timer, so only the early message can cancel it.
    let id = Uuid::now_v7();
    sqlx::query("insert into orders (id, customer_id, amount_cents, currency, expires_at) values ($1, 'c', 1, 'EUR', now() + interval '5 seconds')")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    // No deadline header: the consumer asks the database, which finds it ~5 s early.
    let body = serde_json::to_vec(&json!({"kind": "order", "id": id})).unwrap();
    app.publish_raw(
        &app.topology.due_queue,
        &body,
        &id.to_string(),
        FieldTable::default(),
    )
    .await;
    // Re-armed through the longest level not longer than the time left, carrying the
    // deadline the database measured, so its last hop is held rather than re-armed again.
    let level = app.topology.level_queue(4096);
    let rearmed = poll(WITHIN, || app.peek(&level))
        .await
        .expect("no re-armed timer in the 4096 ms level");
    let off_ms = (deadline_header(&rearmed) - expires_us(&app, id).await).abs() / 1000;
    assert!(
        off_ms < 100,
        "the re-arm carries the deadline: {off_ms} ms off"
    );
    app.wait_for_order_status(&id.to_string(), "cancelled", WITHIN)
        .await;
    let (expires, cancelled): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("select expires_at, cancelled_at from orders where id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(cancelled >= expires, "cancelled early");
    let lateness = (cancelled - expires).num_milliseconds();
    assert!(lateness < 1000, "re-armed timer was {lateness} ms late");
}

#[tokio::test]
async fn a_timer_leaves_its_bucket_the_lead_ahead_and_is_held_to_cancel_at_the_deadline_not_before()
{
    // A lead far longer than the broker's latency, so the timer surely arrives early.
    let lead = Duration::from_millis(700);
    let app = TestApp::spawn_with(|c| c.timer_lead = lead).await;
    let id = id_of(&app.create_order().await);
    let cache = app.topology.cache_queue("order.2000");
    let timer = poll(WITHIN, || app.peek(&cache))
        .await
        .expect("no timer in the cache bucket");
    let expiration: u64 = timer
        .properties
        .expiration()
        .as_ref()
        .and_then(|ms| ms.as_str().parse().ok())
        .expect("a TTL");
    assert!(
        (1000..=1300).contains(&expiration),
        "the time left (2 s) less the lead (700 ms): {expiration}"
    );
    assert_eq!(
        deadline_header(&timer),
        expires_us(&app, Uuid::parse_str(&id).unwrap()).await,
        "the header carries the order's deadline"
    );

    // Held in memory until its deadline: it never goes through a delay level (a re-arm
    // of the ~700 ms left would wait 512 ms in this one).
    let level = app.topology.level_queue(512);
    let seen_in_level = std::cell::Cell::new(0);
    let cancelled = eventually(WITHIN, || async {
        seen_in_level.set(seen_in_level.get() + app.queue_depth(&level).await);
        app.order_status(&id).await == "cancelled"
    })
    .await;
    assert!(cancelled, "not cancelled");
    assert_eq!(
        seen_in_level.get(),
        0,
        "the timer was re-armed instead of held"
    );
    let (expires, cancelled): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("select expires_at, cancelled_at from orders where id = $1")
            .bind(Uuid::parse_str(&id).unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        cancelled >= expires,
        "cancelled {cancelled} before its deadline {expires}"
    );
    let lateness = (cancelled - expires).num_milliseconds();
    assert!(lateness < 1000, "held timer was {lateness} ms late");
}

#[tokio::test]
async fn the_cache_bucket_has_its_dead_letter_arguments_and_holds_persistent_expiring_timers() {
    let app = TestApp::spawn_with(|c| c.order_timeout = Duration::from_secs(5)).await;
    let cache = app.topology.cache_queue("order.5000");
    // Redeclaring with the same arguments succeeds; with other arguments the broker refuses.
    let mut expected = FieldTable::default();
    expected.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(
            app.topology.delay_exchange.as_bytes().to_vec(),
        )),
    );
    expected.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(b"due".to_vec())),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    app.channel()
        .await
        .queue_declare(cache.as_str().into(), durable, expected)
        .await
        .expect("same arguments");
    let refused = app
        .channel()
        .await
        .queue_declare(cache.as_str().into(), durable, FieldTable::default())
        .await;
    assert!(
        refused.is_err(),
        "a cache queue without dead-lettering was accepted"
    );

    let id = id_of(&app.create_order().await);
    let timer = poll(WITHIN, || app.peek(&cache))
        .await
        .expect("no timer in the cache bucket");
    assert_eq!(
        timer.properties.delivery_mode(),
        &Some(2),
        "timer not persistent"
    );
    assert_eq!(
        timer
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(id.clone())
    );
    let expiration: u64 = timer
        .properties
        .expiration()
        .as_ref()
        .unwrap()
        .to_string()
        .parse()
        .unwrap();
    assert!(
        (4000..=5000).contains(&expiration),
        "expiration {expiration}"
    );
    let body: Value = serde_json::from_slice(&timer.data).unwrap();
    assert_eq!(body, json!({"kind": "order", "id": id}));
}

#[tokio::test]
async fn every_state_change_is_published_as_an_event_with_the_entity() {
    let app = TestApp::spawn().await;
    let events = app.observe_events().await;
    let paid = id_of(&app.create_order().await);
    let expiring = id_of(&app.create_order().await);
    let (_, paid_order) = app.pay(&paid).await;
    let waybill = id_of(&app.create_waybill().await);
    app.accept_waybill(&waybill, "c").await;
    app.wait_for_order_status(&expiring, "cancelled", WITHIN)
        .await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while seen.len() < 6 && tokio::time::Instant::now() < deadline {
        seen.extend(app.drain(&events).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.len(), 6, "events seen: {seen:?}");
    let mut keys: Vec<(String, String)> = seen
        .iter()
        .map(|(key, body)| (key.clone(), id_of(body)))
        .collect();
    keys.sort();
    let mut expected = vec![
        ("order.created".to_owned(), paid.clone()),
        ("order.created".to_owned(), expiring.clone()),
        ("order.paid".to_owned(), paid.clone()),
        ("order.cancelled".to_owned(), expiring.clone()),
        ("waybill.created".to_owned(), waybill.clone()),
        ("waybill.accepted".to_owned(), waybill.clone()),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    let paid_event = seen.iter().find(|(key, _)| key == "order.paid").unwrap();
    assert_eq!(
        paid_event.1, paid_order,
        "the event carries the entity as the API returns it"
    );
    let (_, cancelled) = app.get(&format!("/orders/{expiring}")).await;
    let cancelled_event = seen
        .iter()
        .find(|(key, _)| key == "order.cancelled")
        .unwrap();
    assert_eq!(cancelled_event.1, cancelled);
}

#[tokio::test]
async fn an_order_created_while_the_broker_is_unreachable_is_still_cancelled() {
    let mut app =
        TestApp::spawn_with(|c| c.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into()).await;
    let id = id_of(&app.create_order().await);
    let ready = expect_status(app.get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["checks"]["broker"], "down");
    assert!(
        ready["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broker")
    );
    // Its deadline passes while no timer can fire: paying is refused all the same.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    expect_error(app.pay(&id).await, StatusCode::CONFLICT, "order_expired");
    assert_eq!(app.order_status(&id).await, "pending");
    app.instance.stop().await.unwrap();
    // The same database with the real broker: the outbox delivers the timer, late.
    let _fixed = app.spawn_instance(|_| {}).await;
    app.wait_for_order_status(&id, "cancelled", WITHIN).await;
    let backlog = app.outbox_rows().await;
    let drained = eventually(WITHIN, || async { app.outbox_rows().await == 0 }).await;
    assert!(drained, "outbox backlog {backlog} never drained");
}
