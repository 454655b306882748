//! Reminders before a deadline (ORDER_REMIND_BEFORE / WAYBILL_REMIND_BEFORE): one
//! `*.expiring` event per deadline on the events exchange, one more after an extension,
//! none once settled, none if the moment had passed at creation, and duplicate timers
//! are harmless. Seconds-scale timeouts; every wait polls with a deadline.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::deadlines::collect_events;
use crate::helpers::{TestApp, id_of, order_body};

const WITHIN: Duration = Duration::from_secs(20);

fn time_of(entity: &Value, field: &str) -> DateTime<Utc> {
    entity[field]
        .as_str()
        .expect(field)
        .parse()
        .expect("timestamp")
}

/// The `(routing key, body)` events about one entity, in arrival order.
fn about<'a>(events: &'a [(String, Value)], id: &str) -> Vec<&'a (String, Value)> {
    events.iter().filter(|(_, body)| body["id"] == id).collect()
}

fn expiring<'a>(events: &'a [(String, Value)], id: &str) -> Vec<&'a Value> {
    about(events, id)
        .into_iter()
        .filter(|(key, _)| key.ends_with(".expiring"))
        .map(|(_, body)| body)
        .collect()
}

/// When each reminder of an entity was written, database time, from its history.
async fn reminded_at(app: &TestApp, id: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    sqlx::query_as(
        "select at, expires_at from deadline_history where entity_id = $1 and event = 'reminded' order by id",
    )
    .bind(Uuid::parse_str(id).unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn create_order_with(app: &TestApp, timeout_seconds: Option<u64>) -> Value {
    let mut body = order_body();
    if let Some(seconds) = timeout_seconds {
        body["timeout_seconds"] = json!(seconds);
    }
    let (status, order) = app.post("/orders", body).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    order
}

#[tokio::test]
async fn one_reminder_per_deadline_none_when_paid_or_too_late_and_one_more_after_an_extension() {
    let app = TestApp::spawn_with(|c| {
        c.order_timeout = Duration::from_secs(4);
        c.order_remind_before = Some(Duration::from_secs(2));
    })
    .await;
    let events = app.observe_events().await;
    let reminded = create_order_with(&app, None).await;
    let paid = create_order_with(&app, None).await;
    assert_eq!(app.pay(&id_of(&paid)).await.0, StatusCode::OK);
    // Its reminder's moment (1 s - 2 s) had passed at creation.
    let too_short = create_order_with(&app, Some(1)).await;
    // Not a configured timeout: its timer goes through the delay levels.
    let own_timeout = create_order_with(&app, Some(5)).await;
    let extended = create_order_with(&app, None).await;
    let (id, extended_id) = (id_of(&reminded), id_of(&extended));

    // The first reminder of `extended`, then an extension far enough for another.
    let first = collect_events(&app, &events, |e| !expiring(e, &extended_id).is_empty()).await;
    assert_eq!(expiring(&first, &extended_id).len(), 1, "{first:?}");
    let (status, moved) = app
        .post(
            &format!("/orders/{extended_id}/extend"),
            json!({"seconds": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    let mut seen = first;
    for order in [&reminded, &paid, &too_short, &own_timeout] {
        app.wait_for_order_status(
            &id_of(order),
            if order == &paid { "paid" } else { "cancelled" },
            WITHIN,
        )
        .await;
    }
    app.wait_for_order_status(&extended_id, "cancelled", WITHIN)
        .await;
    seen.extend(
        collect_events(&app, &events, |e| {
            about(e, &extended_id)
                .iter()
                .any(|(k, _)| k == "order.cancelled")
        })
        .await,
    );

    // Exactly one reminder for a deadline, before it, carrying the pending order.
    let bodies = expiring(&seen, &id);
    assert_eq!(bodies.len(), 1, "{seen:?}");
    assert_eq!(bodies[0]["status"], "pending");
    assert_eq!(bodies[0]["expires_at"], reminded["expires_at"]);
    let keys: Vec<&str> = about(&seen, &id).iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["order.created", "order.expiring", "order.cancelled"]);
    let deadline = time_of(&reminded, "expires_at");
    let [(at, for_deadline)] = reminded_at(&app, &id).await[..] else {
        panic!("not one reminder in the history of {id}");
    };
    assert_eq!(for_deadline, deadline);
    assert!(
        at >= deadline - chrono::Duration::seconds(2),
        "reminded at {at}, before its moment"
    );
    assert!(
        at < deadline,
        "reminded at {at}, not before its deadline {deadline}"
    );

    assert!(
        expiring(&seen, &id_of(&paid)).is_empty(),
        "a paid order was reminded"
    );
    assert!(
        expiring(&seen, &id_of(&too_short)).is_empty(),
        "a reminder whose moment had passed at creation"
    );
    let own = expiring(&seen, &id_of(&own_timeout));
    assert_eq!(own.len(), 1, "an order with its own timeout: {seen:?}");
    let own_at = reminded_at(&app, &id_of(&own_timeout)).await;
    let own_deadline = time_of(&own_timeout, "expires_at");
    assert!(own_at[0].0 >= own_deadline - chrono::Duration::seconds(2));

    // One reminder per deadline: the original and the extended one.
    let bodies = expiring(&seen, &extended_id);
    let deadlines: Vec<&Value> = bodies.iter().map(|b| &b["expires_at"]).collect();
    assert_eq!(
        deadlines,
        [&extended["expires_at"], &moved["expires_at"]],
        "{seen:?}"
    );
}

#[tokio::test]
async fn duplicate_timers_never_send_a_second_reminder_for_the_same_deadline() {
    let app = TestApp::spawn_with(|c| {
        c.order_timeout = Duration::from_secs(6);
        c.order_remind_before = Some(Duration::from_secs(4));
    })
    .await;
    let events = app.observe_events().await;
    let order = create_order_with(&app, None).await;
    let id = id_of(&order);
    let first = collect_events(&app, &events, |e| !expiring(e, &id).is_empty()).await;
    // Five copies of its timer, early for the deadline, after the reminder moment.
    let body = serde_json::to_vec(&json!({"kind": "order", "id": id})).unwrap();
    let channel = app.channel().await;
    for _ in 0..5 {
        channel
            .basic_publish(
                "".into(),
                app.topology.due_queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    app.wait_for_order_status(&id, "cancelled", WITHIN).await;
    let mut seen = first;
    seen.extend(
        collect_events(&app, &events, |e| {
            about(e, &id).iter().any(|(k, _)| k == "order.cancelled")
        })
        .await,
    );
    assert_eq!(expiring(&seen, &id).len(), 1, "{seen:?}");
    assert_eq!(reminded_at(&app, &id).await.len(), 1);
}

#[tokio::test]
async fn without_remind_before_no_reminder_is_sent() {
    let app = TestApp::spawn().await;
    let events = app.observe_events().await;
    let id = id_of(&app.create_waybill().await);
    let cancelled = collect_events(&app, &events, |e| {
        about(e, &id).iter().any(|(k, _)| k == "waybill.cancelled")
    })
    .await;
    let keys: Vec<&str> = about(&cancelled, &id)
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(keys, ["waybill.created", "waybill.cancelled"]);
}
