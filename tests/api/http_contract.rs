//! The HTTP contract (docs/architecture.md, openapi.yaml): statuses, error codes, validation, paging,
//! idempotency. Bad input never changes anything and never yields a 500.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_error, expect_status, id_of, order_body};

#[tokio::test]
async fn create_returns_201_with_location_and_a_pending_order_expiring_after_the_timeout() {
    let app = TestApp::spawn().await;
    let created = app
        .send(app.request(Method::POST, "/orders").json(&order_body()))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let location = created.headers["location"].to_str().unwrap().to_owned();
    let order = created.body;
    assert_eq!(location, format!("/orders/{}", id_of(&order)));
    assert_eq!(order["status"], "pending");
    assert_eq!(order["amount_cents"], 2500);
    let created =
        chrono::DateTime::parse_from_rfc3339(order["created_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(order["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_milliseconds(), 2000);
    let fetched = expect_status(app.get(&location).await, StatusCode::OK);
    assert_eq!(fetched, order);
}

#[tokio::test]
async fn invalid_bodies_are_refused_with_the_field_and_store_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"amount_cents": 1, "currency": "EUR"}), "customer_id"),
        (
            json!({"customer_id": "c", "amount_cents": 0, "currency": "EUR"}),
            "amount_cents",
        ),
        (
            json!({"customer_id": "c", "amount_cents": -3, "currency": "EUR"}),
            "amount_cents",
        ),
        (
            json!({"customer_id": "c", "amount_cents": 1.5, "currency": "EUR"}),
            "amount_cents",
        ),
        (
            json!({"customer_id": "c", "amount_cents": "12", "currency": "EUR"}),
            "amount_cents",
        ),
        (
            json!({"customer_id": "c", "amount_cents": 1, "currency": "eur"}),
            "currency",
        ),
        (
            json!({"customer_id": "c", "amount_cents": 1, "currency": "EURO"}),
            "currency",
        ),
        (
            json!({"customer_id": "", "amount_cents": 1, "currency": "EUR"}),
            "customer_id",
        ),
        (
            json!({"customer_id": "c", "amount_cents": 1, "currency": "EUR", "extra": true}),
            "extra",
        ),
        (
            json!({"customer_id": "c", "amount_cents": 10, "currency": "EUR",
                "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 9}]}),
            "items",
        ),
        (
            json!({"customer_id": "c", "amount_cents": 10, "currency": "EUR",
                "items": [{"sku": "a", "quantity": 0, "unit_price_cents": 10}]}),
            "items[0].quantity",
        ),
        (json!([1, 2]), "body"),
        // One line more than the spec's `maxItems: 500`, in a body far below 64 KiB:
        // refused as a validation error (422), not as a payload too large (413).
        (
            json!({"customer_id": "c", "amount_cents": 501, "currency": "EUR",
                "items": vec![json!({"sku": "a", "quantity": 1, "unit_price_cents": 1}); 501]}),
            "items",
        ),
    ];
    for (body, field) in cases {
        let answer = app.post("/orders", body.clone()).await;
        let error = expect_error(
            answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((rows, app.outbox_rows().await), (0, 0));
}

#[tokio::test]
async fn malformed_json_is_400_and_oversized_bodies_413() {
    let app = TestApp::spawn().await;
    let post_raw = |raw: String| {
        app.send(
            app.request(Method::POST, "/orders")
                .header("content-type", "application/json")
                .body(raw),
        )
    };
    for raw in ["{", "not json", "{\"customer_id\": }", "\u{0}"] {
        let answer = post_raw(raw.to_owned()).await.answer();
        expect_error(answer, StatusCode::BAD_REQUEST, "invalid_json");
    }
    let huge = format!("{{\"customer_id\": \"{}\"}}", "x".repeat(70 * 1024));
    let answer = post_raw(huge).await.answer();
    expect_error(answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn ids_routes_and_methods_give_json_errors() {
    let app = TestApp::spawn().await;
    let unknown = uuid::Uuid::now_v7();
    let answer = app.get("/orders/not-a-uuid").await;
    expect_error(answer, StatusCode::BAD_REQUEST, "invalid_id");
    let answer = app.get(&format!("/orders/{unknown}")).await;
    expect_error(answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app.pay(&unknown.to_string()).await;
    expect_error(answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app.get("/no/such/route").await;
    expect_error(answer, StatusCode::NOT_FOUND, "not_found");
    let answer = app
        .send(app.request(Method::DELETE, "/orders"))
        .await
        .answer();
    expect_error(answer, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn the_same_idempotency_key_replays_and_a_reused_key_is_refused() {
    let app = TestApp::spawn().await;
    let post = |body: Value| {
        let request = app.request(Method::POST, "/orders").json(&body);
        app.send(request.header("Idempotency-Key", "key-1"))
    };
    let first = expect_status(post(order_body()).await.answer(), StatusCode::CREATED);
    let replay = expect_status(post(order_body()).await.answer(), StatusCode::OK);
    assert_eq!(replay, first);
    // The same document with other whitespace and key order is the same request.
    let reordered = app
        .request(Method::POST, "/orders")
        .header("Idempotency-Key", "key-1")
        .header("content-type", "application/json")
        .body(r#"{ "currency": "EUR",  "amount_cents": 2500, "customer_id": "cust-1" }"#);
    expect_status(app.send(reordered).await.answer(), StatusCode::OK);
    let mut other = order_body();
    other["amount_cents"] = json!(9999);
    let reused = post(other).await.answer();
    expect_error(
        reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    assert_eq!(app.count_orders("pending").await, 1);
}

#[tokio::test]
async fn concurrent_creates_with_one_key_make_one_order() {
    let app = TestApp::spawn().await;
    let requests = (0..8).map(|_| {
        let request = app.request(Method::POST, "/orders").json(&order_body());
        app.send(request.header("Idempotency-Key", "same"))
    });
    let replies = futures_util::future::join_all(requests).await;
    let mut ids = Vec::new();
    for reply in replies {
        assert!(
            reply.status == StatusCode::CREATED || reply.status == StatusCode::OK,
            "{}",
            reply.text
        );
        ids.push(id_of(&reply.body));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count_orders("pending").await, 1);
}

#[tokio::test]
async fn listing_pages_newest_first_with_filters() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let mut body = order_body();
        body["customer_id"] = json!(if i % 2 == 0 { "even" } else { "odd" });
        let (_, order) = app.post("/orders", body).await;
        created.push(id_of(&order));
    }
    app.pay(&created[4]).await;
    let page = expect_status(app.get("/orders?limit=2").await, StatusCode::OK);
    let ids: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, vec![created[4].clone(), created[3].clone()]);
    let next = page["next"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/orders?limit=2&after={next}")).await;
    let ids: Vec<String> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, vec![created[2].clone(), created[1].clone()]);
    let (_, exact) = app.get("/orders?limit=5").await;
    assert_eq!(exact["items"].as_array().unwrap().len(), 5);
    assert!(
        exact["next"].is_null(),
        "a full last page has no next cursor"
    );
    let (_, evens) = app.get("/orders?customer_id=even&status=pending").await;
    let ids: Vec<String> = evens["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, vec![created[2].clone(), created[0].clone()]);
    assert!(evens["next"].is_null());
    for bad in [
        "/orders?limit=0",
        "/orders?limit=201",
        "/orders?limit=x",
        "/orders?status=lost",
        "/orders?after=zzz",
        "/orders?colour=red",
        "/orders?customer_id=a%00b",
    ] {
        let answer = app.get(bad).await;
        expect_error(
            answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
}

#[tokio::test]
async fn pay_is_idempotent_and_cancel_of_a_paid_order_is_refused() {
    let app = TestApp::spawn().await;
    let id = id_of(&app.create_order().await);
    let paid = expect_status(app.pay(&id).await, StatusCode::OK);
    assert_eq!(paid["status"], "paid");
    let again = expect_status(app.pay(&id).await, StatusCode::OK);
    assert_eq!(again, paid);
    expect_error(
        app.cancel_order(&id).await,
        StatusCode::CONFLICT,
        "order_paid",
    );
}

#[tokio::test]
async fn customer_cancel_then_pay_is_refused() {
    let app = TestApp::spawn().await;
    let id = id_of(&app.create_order().await);
    let cancelled = expect_status(app.cancel_order(&id).await, StatusCode::OK);
    assert_eq!(cancelled["cancel_reason"], "customer_request");
    let again = expect_status(app.cancel_order(&id).await, StatusCode::OK);
    assert_eq!(again, cancelled);
    expect_error(app.pay(&id).await, StatusCode::CONFLICT, "order_cancelled");
}

#[tokio::test]
async fn waybills_follow_the_same_pattern() {
    let app = TestApp::spawn().await;
    let id = id_of(&app.create_waybill().await);
    let answer = app.post(&format!("/waybills/{id}/accept"), json!({})).await;
    let refused = expect_error(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(refused["error"]["field"], "carrier_id");
    let accepted = expect_status(app.accept_waybill(&id, "dhl").await, StatusCode::OK);
    assert_eq!(
        (accepted["status"].as_str(), accepted["carrier_id"].as_str()),
        (Some("accepted"), Some("dhl"))
    );
    expect_status(app.accept_waybill(&id, "dhl").await, StatusCode::OK);
    let answer = app.accept_waybill(&id, "ups").await;
    expect_error(answer, StatusCode::CONFLICT, "waybill_accepted");
    let answer = app.cancel_waybill(&id).await;
    expect_error(answer, StatusCode::CONFLICT, "waybill_accepted");
    let other = id_of(&app.create_waybill().await);
    let cancelled = expect_status(app.cancel_waybill(&other).await, StatusCode::OK);
    assert_eq!(cancelled["cancel_reason"], "shipper_request");
    let answer = app.accept_waybill(&other, "dhl").await;
    expect_error(answer, StatusCode::CONFLICT, "waybill_cancelled");
    let body = json!({"origin": "A", "destination": "B", "order_id": "nope"});
    let answer = app.post("/waybills", body).await;
    let refused = expect_error(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(refused["error"]["field"], "order_id");
}

#[tokio::test]
async fn health_readiness_metrics_and_spec_are_served() {
    let app = TestApp::spawn().await;
    app.create_order().await;
    expect_status(app.get("/healthz").await, StatusCode::OK);
    let ready = expect_status(app.get("/readyz").await, StatusCode::OK);
    assert_eq!(ready["checks"], json!({"database": "up", "broker": "up"}));
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("order_timeout_entities_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("order_timeout_outbox_backlog"),
        "{metrics}"
    );
    let spec = app.send(app.request(Method::GET, "/openapi.yaml")).await;
    assert_eq!(spec.status, StatusCode::OK);
    assert_eq!(
        spec.text,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap()
    );
}

#[tokio::test]
async fn no_hostile_value_in_any_field_yields_a_500() {
    let app = TestApp::spawn().await;
    let waybill = id_of(&app.create_waybill().await);
    let hostile = [
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!(" "),
        json!("\u{0}"),
        json!("a\u{0}b"),
        json!("😀".repeat(300)),
        json!("<script>x</script>"),
        json!([]),
        json!([null]),
        json!({}),
        json!({"a": {"b": [1, {"c": null}]}}),
        json!("x".repeat(5000)),
    ];
    let targets = [
        ("/orders".to_owned(), order_body()),
        (
            "/waybills".to_owned(),
            json!({"origin": "A", "destination": "B", "order_id": uuid::Uuid::now_v7()}),
        ),
        (
            format!("/waybills/{waybill}/accept"),
            json!({"carrier_id": "c"}),
        ),
    ];
    let mut tried = 0;
    for (path, valid) in &targets {
        let fields: Vec<String> = valid.as_object().unwrap().keys().cloned().collect();
        for field in fields.iter().chain(std::iter::once(&"items".to_owned())) {
            for value in &hostile {
                let mut body = valid.clone();
                body[field.as_str()] = value.clone();
                let (status, answer) = app.post(path, body.clone()).await;
                assert!(status.as_u16() < 500, "{path} {body} -> {status} {answer}");
                tried += 1;
            }
        }
    }
    for query in [
        "status=%FF",
        "customer_id=%F0%28%8C%BC",
        "limit=-1",
        "after=00000000-0000-0000-0000-000000000000",
        "limit=99999999999999999999",
    ] {
        let (status, answer) = app.get(&format!("/orders?{query}")).await;
        assert!(status.as_u16() < 500, "{query} -> {status} {answer}");
    }
    assert!(tried > 100);
}
