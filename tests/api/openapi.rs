//! `openapi.yaml` against the running router. Every answer any test receives through
//! `TestApp` is checked against the spec (`contract.rs`); this file keeps the spec
//! itself honest (every route of the contract documented, every `$ref` resolving, the
//! check able to fail), shows that every documented operation is routed and every other
//! method refused, and walks a table of requests whose documented answers no other test
//! asks for: admin routes, degraded instances, expiries and odd inputs. What
//! `http_contract.rs` and `deadlines.rs` already ask is not asked again here.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::contract::{METHODS, Reply, Spec};
use crate::helpers::{TestApp, id_of};
use crate::proxy::FaultProxy;

const ADMIN_TOKEN: &str = "test-admin-token";
/// A broker address nothing listens on.
const DEAD_AMQP: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// Every `$ref` under `value`, with where it was found.
fn references(value: &Value, at: String, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, member) in map {
                match (key.as_str(), member) {
                    ("$ref", Value::String(reference)) => {
                        found.push((at.clone(), reference.clone()))
                    }
                    _ => references(member, format!("{at}/{key}"), found),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                references(item, format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// The check can fail: a wrong type, a malformed uuid and an undocumented member of an
/// order are each reported; undocumented statuses and routes are refused.
#[test]
fn the_check_rejects_what_the_spec_does_not_allow() {
    let spec = Spec::get();
    let order = json!({"$ref": "#/components/schemas/Order"});
    for wrong in [
        json!({"id": "not-a-uuid"}),
        json!("an order"),
        json!({"status": "lost"}),
    ] {
        let errors = spec.schema_errors("test Order", &order, &wrong);
        assert!(!errors.is_empty(), "{wrong} passed as an Order");
    }
    let status = json!({"$ref": "#/components/schemas/OrderStatus"});
    let errors = spec.schema_errors("test OrderStatus", &status, &json!("pending"));
    assert!(errors.is_empty(), "{errors:?}");

    let reply = |status: u16, body: Value| {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            "application/json".parse().expect("header"),
        );
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            headers,
            text: body.to_string(),
            body,
        }
    };
    let error = |code: &str| json!({"error": {"code": code, "message": "m"}});
    let unknown = json!({"error": {"code": "not_found", "message": "no such route"}});
    let refused = [
        (Method::GET, "/healthz", reply(418, error("internal"))),
        (Method::GET, "/orders/x", reply(500, error("internal"))),
        (
            Method::GET,
            "/orders",
            reply(429, error("too_many_requests")),
        ),
        (
            Method::GET,
            "/orders",
            reply(415, error("unsupported_media_type")),
        ),
        (Method::PUT, "/orders", reply(200, json!({}))),
        (Method::GET, "/nowhere", reply(404, error("not_found"))),
        (Method::GET, "/orders/x", reply(404, unknown.clone())),
        (
            Method::GET,
            "/healthz",
            reply(200, json!({"status": "fine"})),
        ),
    ];
    for (method, path, reply) in refused {
        assert!(
            spec.check(&method, path, &reply).is_err(),
            "{method} {path} {} {} passed",
            reply.status,
            reply.text
        );
    }
    let accepted = [
        (Method::GET, "/nowhere", reply(404, unknown)),
        (
            Method::PUT,
            "/orders",
            reply(405, error("method_not_allowed")),
        ),
        (
            Method::POST,
            "/orders/x/pay",
            reply(415, error("unsupported_media_type")),
        ),
        (
            Method::GET,
            "/admin/overview",
            reply(429, error("too_many_requests")),
        ),
        (Method::GET, "/healthz", reply(200, json!({"status": "ok"}))),
    ];
    for (method, path, reply) in accepted {
        let checked = spec.check(&method, path, &reply);
        assert!(checked.is_ok(), "{checked:?}");
    }
}

#[test]
fn the_spec_documents_every_route_of_the_contract() {
    let spec = Spec::get();
    assert!(
        spec.document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "not OpenAPI 3.1"
    );
    let documented: BTreeSet<String> = spec
        .operations()
        .iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    // The HTTP contract of docs/architecture.md, route by route.
    let contract: BTreeSet<String> = [
        "POST /orders",
        "GET /orders",
        "GET /orders/{id}",
        "POST /orders/{id}/pay",
        "POST /orders/{id}/cancel",
        "POST /orders/{id}/extend",
        "POST /waybills",
        "GET /waybills",
        "GET /waybills/{id}",
        "POST /waybills/{id}/accept",
        "POST /waybills/{id}/cancel",
        "POST /waybills/{id}/extend",
        "POST /admin/deadlines/extend",
        "GET /admin/failed-messages",
        "GET /admin/failed-messages/{id}",
        "POST /admin/failed-messages/{id}/requeue",
        "POST /admin/failed-messages/requeue",
        "DELETE /admin/failed-messages/{id}",
        "POST /admin/parking/requeue",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.yaml",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let missing: Vec<&String> = contract.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes of docs/architecture.md missing from openapi.yaml: {missing:?}"
    );

    let mut ids = BTreeSet::new();
    for (method, template) in spec.operations() {
        let operation = spec.operation(&method, &template).expect("listed");
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {template}: no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} used twice");
        let responses = operation["responses"].as_object().expect("responses");
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('3')),
            "{method} {template}: no success response"
        );
        for status in responses.keys() {
            assert!(
                status.parse::<u16>().is_ok_and(|s| (200..600).contains(&s)),
                "{method} {template}: status {status:?}"
            );
        }
        let secured = operation
            .get("security")
            .is_some_and(|s| s == &json!([{"adminToken": []}]));
        assert_eq!(
            secured,
            responses.contains_key("401"),
            "{method} {template}: bearer security goes with a 401"
        );
        let key = format!("{method} {template}");
        if contract.contains(&key) {
            assert_eq!(
                secured,
                template.starts_with("/admin"),
                "{key}: bearer security on exactly the admin routes"
            );
        }
    }
    let mut found = Vec::new();
    references(&spec.document, String::new(), &mut found);
    assert!(found.len() > 50, "only {} $refs found", found.len());
    for (at, reference) in found {
        let resolved = reference
            .strip_prefix('#')
            .and_then(|pointer| spec.document.pointer(pointer));
        assert!(resolved.is_some(), "{at}: dangling $ref {reference}");
    }
}

/// A client that does not follow redirects, so every answer is the one of the route
/// that was called (`GET /admin` answers 303 itself).
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_no_other_method_is() {
    let spec = Spec::get();
    let app = TestApp::spawn().await;
    let client = no_redirects();
    let templates: BTreeSet<String> = spec.operations().into_iter().map(|(_, t)| t).collect();
    for template in &templates {
        let url = app.url(&template.replace("{id}", &Uuid::now_v7().to_string()));
        // Each answer is checked against the spec by `send`: an undocumented method must
        // be refused with 405 `method_not_allowed`.
        for method in METHODS {
            let mut request = client
                .request(method.clone(), &url)
                .bearer_auth(ADMIN_TOKEN);
            let Some(operation) = spec.operation(&method, template) else {
                let reply = app.send(request).await;
                assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template}"
                );
                continue;
            };
            if let Some(example) = spec.request_example(operation) {
                request = request.json(&example);
            }
            let reply = app.send(request).await;
            let unknown_route = reply.status == StatusCode::NOT_FOUND
                && reply.body["error"]["message"] == "no such route";
            assert!(
                !unknown_route && reply.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {template} is documented but not routed: {} {}",
                reply.status,
                reply.text
            );
        }
    }
}

/// A request body of a row.
enum Body {
    None,
    Json(Value),
    /// Sent as `application/json` whatever it is.
    Raw(String),
}

/// One row of the table: a request and the answer the spec promises for it. In paths,
/// bodies and expected values, `{name}` stands for the id of the fixture `name`.
struct Row {
    method: Method,
    path: &'static str,
    body: Body,
    headers: Vec<(&'static str, String)>,
    /// The bearer token sent: the admin token on `/admin` paths unless the row says.
    token: Option<&'static str>,
    status: u16,
    /// For an error, its code.
    code: Option<&'static str>,
    /// Members of the answer (JSON pointers) and their values.
    shows: Vec<(&'static str, Value)>,
    /// What else the row checks on the answer.
    then: Option<fn(&Reply, &Fixtures)>,
}

fn row(method: Method, path: &'static str) -> Row {
    Row {
        method,
        path,
        body: Body::None,
        headers: Vec::new(),
        token: path.starts_with("/admin").then_some(ADMIN_TOKEN),
        status: 0,
        code: None,
        shows: Vec::new(),
        then: None,
    }
}

fn get(path: &'static str) -> Row {
    row(Method::GET, path)
}

fn post(path: &'static str) -> Row {
    row(Method::POST, path)
}

fn delete(path: &'static str) -> Row {
    row(Method::DELETE, path)
}

impl Row {
    fn json(mut self, body: Value) -> Self {
        self.body = Body::Json(body);
        self
    }
    fn raw(mut self, body: String) -> Self {
        self.body = Body::Raw(body);
        self
    }
    fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
    fn token(mut self, token: Option<&'static str>) -> Self {
        self.token = token;
        self
    }
    fn answers(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    fn refused(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }
    fn shows(mut self, pointer: &'static str, value: Value) -> Self {
        self.shows.push((pointer, value));
        self
    }
    fn then(mut self, check: fn(&Reply, &Fixtures)) -> Self {
        self.then = Some(check);
        self
    }
}

/// The entities and failed messages the rows refer to, by name.
struct Fixtures(HashMap<&'static str, String>);

impl Fixtures {
    fn id(&self, name: &str) -> &str {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("no fixture {name}"))
    }

    /// `text` with every `{name}` replaced by that fixture's id.
    fn fill(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |text, (name, id)| {
            text.replace(&format!("{{{name}}}"), id)
        })
    }

    fn fill_value(&self, value: &Value) -> Value {
        match value {
            Value::String(text) => Value::String(self.fill(text)),
            Value::Array(items) => items.iter().map(|v| self.fill_value(v)).collect(),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| (k.clone(), self.fill_value(v)))
                .collect(),
            other => other.clone(),
        }
    }
}

/// Sends every row, in order, to the instance at `base` and asserts its answer (which
/// `send` also checks against the spec).
async fn walk(app: &TestApp, base: &str, fixtures: &Fixtures, rows: Vec<Row>) {
    let client = no_redirects();
    for row in rows {
        let path = fixtures.fill(row.path);
        let mut request = client.request(row.method.clone(), format!("{base}{path}"));
        request = match &row.body {
            Body::None => request,
            Body::Json(body) => request.json(&fixtures.fill_value(body)),
            Body::Raw(text) => request
                .header("content-type", "application/json")
                .body(text.clone()),
        };
        for (name, value) in &row.headers {
            request = request.header(*name, value);
        }
        if let Some(token) = row.token {
            request = request.bearer_auth(token);
        }
        let reply = app.send(request).await;
        let what = format!("{} {path}: {} {}", row.method, reply.status, reply.text);
        assert_eq!(reply.status.as_u16(), row.status, "{what}");
        if let Some(code) = row.code {
            assert_eq!(reply.body["error"]["code"], code, "{what}");
        }
        for (pointer, value) in &row.shows {
            assert_eq!(
                reply.body.pointer(pointer),
                Some(&fixtures.fill_value(value)),
                "{what}: {pointer}"
            );
        }
        if let Some(check) = row.then {
            check(&reply, fixtures);
        }
    }
}

/// Moves an entity's deadline into the past, as if its timer were late.
async fn expire(app: &TestApp, table: &str, id: &str) {
    let sql = format!("update {table} set expires_at = now() - interval '1 second' where id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::parse_str(id).expect("uuid"))
        .execute(&app.pool)
        .await
        .expect("expire");
}

/// Stores a failed message as the retry router would, failed on the due queue.
async fn store_failed(app: &TestApp, body: &[u8]) -> String {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into failed_messages (id, queue, exchange, routing_key, headers, body, message_id, error,
                                      error_class, attempts, first_failed_at, last_failed_at)
         values ($1, $2, $3, 'due', $4, $5, $6, 'database unavailable: pool timed out', 'transient', 3, now(), now())",
    )
    .bind(id)
    .bind(&app.topology.due_queue)
    .bind(&app.topology.delay_exchange)
    .bind(json!({"x-retry-count": 2, "x-tenant": "acme"}))
    .bind(body)
    .bind(id.to_string())
    .execute(&app.pool)
    .await
    .expect("failed message");
    id.to_string()
}

/// The example order of the spec, with line items.
fn example_order() -> Value {
    json!({"customer_id": "cust-42", "amount_cents": 2500, "currency": "EUR",
        "items": [{"sku": "book-1", "quantity": 2, "unit_price_cents": 1250}]})
}

/// A JSON text over the 64 KiB body limit.
fn oversized() -> String {
    format!("{{\"carrier_id\": \"{}\"}}", "x".repeat(70 * 1024))
}

async fn fixtures(app: &TestApp) -> Fixtures {
    let (status, order) = app.post("/orders", example_order()).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let expired_order = id_of(&app.create_order().await);
    expire(app, "orders", &expired_order).await;
    let order_id = Uuid::now_v7().to_string();
    let (status, waybill) = app
        .post(
            "/waybills",
            json!({"order_id": order_id, "origin": "Hamburg", "destination": "Lyon"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{waybill}");
    let expired_waybill = id_of(&app.create_waybill().await);
    expire(app, "waybills", &expired_waybill).await;
    let text = store_failed(
        app,
        br#"{"kind":"order","id":"0193a5c4-7d2e-7c3a-9f57-0b6f4c8e1a20"}"#,
    )
    .await;
    let binary = store_failed(app, &[0xff, 0x00, 0x41]).await;
    let untouched = store_failed(app, b"{}").await;
    Fixtures(HashMap::from([
        ("order", id_of(&order)),
        ("expired_order", expired_order),
        ("order_id", order_id),
        ("waybill", id_of(&waybill)),
        ("expired_waybill", expired_waybill),
        ("text", text),
        ("binary", binary),
        ("untouched", untouched),
        ("unknown", Uuid::now_v7().to_string()),
    ]))
}

/// Answers of a healthy instance that `http_contract.rs` and `deadlines.rs` do not ask for.
fn healthy_rows() -> Vec<Row> {
    vec![
        // Orders.
        post("/orders")
            .json(example_order())
            .header("Idempotency-Key", "k".repeat(256))
            .refused(422, "validation_failed")
            .shows("/error/field", json!("Idempotency-Key")),
        // A deadline that passed before the timer fired: payment refused, a cancel
        // counts as the timeout.
        post("/orders/{expired_order}/pay").refused(409, "order_expired"),
        post("/orders/{expired_order}/cancel")
            .answers(200)
            .shows("/cancel_reason", json!("payment_timeout")),
        post("/orders/nope/extend")
            .json(json!({"seconds": 5}))
            .refused(400, "invalid_id"),
        // Waybills.
        get("/waybills?order_id={order_id}")
            .answers(200)
            .shows("/items/0/id", json!("{waybill}")),
        get("/waybills?order_id=7").refused(422, "validation_failed"),
        get("/waybills/{waybill}").answers(200),
        post("/waybills/{waybill}/accept")
            .raw("{".into())
            .refused(400, "invalid_json"),
        post("/waybills/{waybill}/accept")
            .raw(oversized())
            .refused(413, "payload_too_large"),
        post("/waybills/x/accept")
            .json(json!({"carrier_id": "dhl"}))
            .refused(400, "invalid_id"),
        post("/waybills/{waybill}/extend")
            .json(json!({"seconds": 60}))
            .answers(200),
        post("/waybills/{waybill}/extend")
            .json(json!({"seconds": 0}))
            .refused(422, "validation_failed"),
        post("/waybills/{unknown}/extend")
            .json(json!({"seconds": 5}))
            .refused(404, "not_found"),
        post("/waybills/{expired_waybill}/extend")
            .json(json!({"seconds": 5}))
            .refused(409, "waybill_expired"),
        post("/waybills/{expired_waybill}/accept")
            .json(json!({"carrier_id": "dhl"}))
            .refused(409, "waybill_expired"),
        post("/waybills/{expired_waybill}/cancel")
            .answers(200)
            .shows("/cancel_reason", json!("acceptance_timeout")),
        // Bulk deadline steering.
        post("/admin/deadlines/extend")
            .json(json!({"kind": "order", "seconds": 5, "dry_run": true, "customer_id": "nobody"}))
            .answers(200)
            .shows("", json!({"matched": 0, "extended": 0})),
        post("/admin/deadlines/extend")
            .json(json!({"kind": "order"}))
            .refused(422, "validation_failed"),
        post("/admin/deadlines/extend")
            .json(json!({"kind": "order", "seconds": 5}))
            .token(None)
            .refused(401, "unauthorized"),
        // Failed messages.
        get("/admin/failed-messages")
            .token(None)
            .refused(401, "unauthorized"),
        get("/admin/failed-messages")
            .token(Some("wrong"))
            .refused(401, "unauthorized"),
        get("/admin/failed-messages?status=pending&limit=10")
            .answers(200)
            .then(|page, fixtures| {
                let items = page.body["items"].as_array().expect("items");
                let binary = items
                    .iter()
                    .find(|row| row["id"] == fixtures.id("binary"))
                    .expect("binary row listed");
                // A listing carries a preview only; the hex is in the detail.
                assert_eq!(
                    (
                        &binary["body"],
                        binary.get("body_hex"),
                        &binary["body_size"]
                    ),
                    (&Value::Null, None, &json!(3))
                );
            }),
        get("/admin/failed-messages?status=lost").refused(422, "validation_failed"),
        get("/admin/failed-messages/{text}").answers(200).shows(
            "/body",
            json!(r#"{"kind":"order","id":"0193a5c4-7d2e-7c3a-9f57-0b6f4c8e1a20"}"#),
        ),
        get("/admin/failed-messages/{binary}")
            .answers(200)
            .shows("/body_hex", json!("ff0041"))
            .shows("/body_truncated", json!(false)),
        get("/admin/failed-messages/1").refused(400, "invalid_id"),
        get("/admin/failed-messages/{unknown}").refused(404, "not_found"),
        post("/admin/failed-messages/{text}/requeue")
            .answers(200)
            .shows("/status", json!("requeued")),
        post("/admin/failed-messages/{text}/requeue").refused(409, "already_resolved"),
        delete("/admin/failed-messages/{text}").refused(409, "already_resolved"),
        delete("/admin/failed-messages/{binary}").answers(204),
        delete("/admin/failed-messages/{binary}").answers(204),
        post("/admin/failed-messages/{binary}/requeue").refused(409, "already_resolved"),
        post("/admin/failed-messages/requeue?queue=nowhere").answers(200),
        post("/admin/failed-messages/requeue?colour=red").refused(422, "validation_failed"),
        post("/admin/parking/requeue").answers(200),
        // The console's JSON.
        get("/admin/overview").answers(200).then(|overview, _| {
            let unresolved = &overview.body["failed_messages"]["unresolved"];
            assert!(unresolved.as_i64().is_some_and(|n| n >= 0), "{unresolved}");
        }),
        get("/admin/overview?limit=5").refused(422, "validation_failed"),
        get("/admin/overview")
            .token(None)
            .refused(401, "unauthorized"),
        get("/admin/lookup/{order}")
            .answers(200)
            .shows("/kind", json!("order"))
            .shows("/entity/id", json!("{order}")),
        get("/admin/lookup/{waybill}")
            .answers(200)
            .shows("/kind", json!("waybill")),
        get("/admin/lookup/{unknown}").refused(404, "not_found"),
        get("/admin/lookup/x").refused(400, "invalid_id"),
        // The console's page and assets are open: no token needed.
        get("/admin").token(None).answers(303),
        get("/admin/").token(None).answers(200),
        get("/admin/console.css").token(None).answers(200),
        get("/admin/console.js").token(None).answers(200),
    ]
}

#[tokio::test]
async fn a_healthy_instance_answers_the_table_as_documented() {
    let app = TestApp::spawn().await;
    let fixtures = fixtures(&app).await;
    walk(&app, &app.instance.address, &fixtures, healthy_rows()).await;
}

/// Instances sharing the test's database without an admin token, without a broker, and
/// with PostgreSQL cut: the 503s of the spec.
#[tokio::test]
async fn degraded_instances_answer_the_table_as_documented() {
    let app = TestApp::spawn().await;
    let fixtures = fixtures(&app).await;
    let no_admin = app
        .spawn_instance(|c| {
            c.admin_token = None;
            c.amqp_url = DEAD_AMQP.into();
        })
        .await;
    let down = |database: &str| json!({"database": database, "broker": "down"});
    let rows = vec![
        get("/admin/failed-messages").refused(503, "admin_disabled"),
        post("/admin/parking/requeue").refused(503, "admin_disabled"),
        get("/admin/overview").refused(503, "admin_disabled"),
        get("/readyz").answers(503).shows("/checks", down("up")),
        post("/orders")
            .json(json!({"customer_id": "c", "amount_cents": 1, "currency": "EUR"}))
            .answers(201),
    ];
    walk(&app, &no_admin.address, &fixtures, rows).await;

    let no_broker = app.spawn_instance(|c| c.amqp_url = DEAD_AMQP.into()).await;
    let rows = vec![
        post("/admin/failed-messages/{untouched}/requeue").refused(503, "broker_unavailable"),
        post("/admin/failed-messages/requeue").refused(503, "broker_unavailable"),
        post("/admin/parking/requeue").refused(503, "broker_unavailable"),
        get("/admin/overview")
            .answers(200)
            .shows("/broker/status", json!("reconnecting")),
    ];
    walk(&app, &no_broker.address, &fixtures, rows).await;

    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let url = crate::helpers::via_port(&app.env.database_url, proxy.port());
    let no_database = app
        .spawn_instance(|c| {
            c.database_url = url;
            c.amqp_url = DEAD_AMQP.into();
            c.database_acquire_timeout = Duration::from_millis(500);
        })
        .await;
    proxy.down();
    let unavailable = "database_unavailable";
    let rows = vec![
        post("/orders")
            .json(json!({"customer_id": "c", "amount_cents": 1, "currency": "EUR"}))
            .refused(503, unavailable),
        get("/orders").refused(503, unavailable),
        get("/orders/{unknown}").refused(503, unavailable),
        post("/orders/{unknown}/pay").refused(503, unavailable),
        post("/waybills/{unknown}/cancel").refused(503, unavailable),
        get("/admin/failed-messages/{unknown}").refused(503, unavailable),
        get("/admin/overview").refused(503, unavailable),
        get("/readyz").answers(503).shows("/checks", down("down")),
        get("/healthz").answers(200),
    ];
    walk(&app, &no_database.address, &fixtures, rows).await;
}
