//! `openapi.yaml` against the running router. The file is the single source of the HTTP
//! contract (`/openapi.yaml` serves it verbatim), so these tests keep it honest: every
//! documented operation is routed, every method a documented path does not list is
//! refused with 405, every status the service answers is documented for its operation,
//! and every JSON body it answers has the documented shape and error code.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, id_of};
use crate::proxy::FaultProxy;

const ADMIN_TOKEN: &str = "test-admin-token";
/// The methods probed on every documented path (HEAD and OPTIONS are axum's own).
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];
/// A broker address nothing listens on.
const DEAD_AMQP: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// The parsed `openapi.yaml`.
struct Spec(Value);

impl Spec {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("read openapi.yaml");
        Spec(serde_norway::from_str(&text).expect("openapi.yaml is valid YAML"))
    }

    /// Every documented (method, path template), in document order.
    fn operations(&self) -> Vec<(Method, String)> {
        let paths = self.0["paths"].as_object().expect("paths");
        let mut operations = Vec::new();
        for (path, item) in paths {
            for method in &METHODS {
                if item.get(method.as_str().to_lowercase()).is_some() {
                    operations.push((method.clone(), path.clone()));
                }
            }
        }
        operations
    }

    fn operation(&self, method: &Method, template: &str) -> &Value {
        self.0["paths"][template]
            .get(method.as_str().to_lowercase())
            .unwrap_or_else(|| panic!("{method} {template} is not documented"))
    }

    /// Follows local `$ref`s until a real object.
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {reference}"));
            value = self
                .0
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        }
        value
    }

    /// The JSON example of an operation's request body, if it has one.
    fn request_example(&self, operation: &Value) -> Option<Value> {
        let body = self.resolve(operation.get("requestBody")?);
        body["content"]["application/json"].get("example").cloned()
    }

    /// Checks a value against a schema of the document with the `jsonschema` crate
    /// (draft 2020-12, the dialect of OpenAPI 3.1, formats such as `uuid` and `date-time`
    /// checked); the document's `components` go along so local `$ref`s resolve.
    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let mut root = json!({ "allOf": [schema] });
        root["components"] = self.0["components"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{at}: the documented schema does not compile: {e}"));
        errors.extend(
            validator
                .iter_errors(value)
                .map(|error| format!("{at}{}: {error}", error.instance_path())),
        );
    }

    /// Checks an answer against the documented responses of `method template` and returns
    /// its status and body (JSON when it is JSON, else a string; null when empty). Panics
    /// on an undocumented status, a missing required header, an undocumented content
    /// type, or a body that does not match the documented schema.
    fn check(&self, method: &Method, template: &str, answer: Answer) -> (StatusCode, Value) {
        let Answer {
            status,
            headers,
            text,
        } = answer;
        let what = format!("{method} {template} answered {status} {text}");
        let documented = self.operation(method, template)["responses"]
            .get(status.as_str())
            .unwrap_or_else(|| panic!("{what}: status {} is not documented", status.as_u16()));
        let documented = self.resolve(documented);
        for (name, header) in documented
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let header = self.resolve(header);
            if header["required"] == json!(true) {
                assert!(
                    headers.contains_key(name.as_str()),
                    "{what}: required header {name} is missing"
                );
            }
        }
        let Some(content) = documented.get("content").and_then(Value::as_object) else {
            assert!(text.is_empty(), "{what}: a body where none is documented");
            return (status, Value::Null);
        };
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        let media = content
            .get(media_type)
            .unwrap_or_else(|| panic!("{what}: content type {content_type:?} is not documented"));
        if media_type != "application/json" {
            return (status, Value::String(text));
        }
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
        let mut errors = Vec::new();
        self.validate(&media["schema"], &body, "body", &mut errors);
        assert!(
            errors.is_empty(),
            "{what}: does not match the documented schema:\n{}",
            errors.join("\n")
        );
        (status, body)
    }
}

/// A response, read.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Self {
            status,
            headers,
            text,
        }
    }

    /// The router's answer to a path it does not serve.
    fn is_unknown_route(&self) -> bool {
        let body: Value = serde_json::from_str(&self.text).unwrap_or(Value::Null);
        self.status == StatusCode::NOT_FOUND
            && body == json!({"error": {"code": "not_found", "message": "no such route"}})
    }
}

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

/// The path with its parameters filled in.
fn concrete(template: &str, id: Uuid) -> String {
    template.replace("{id}", &id.to_string())
}

/// A client bound to one running instance, checking every answer against the spec.
struct Caller<'a> {
    spec: &'a Spec,
    client: reqwest::Client,
    base: String,
}

impl<'a> Caller<'a> {
    /// A caller of the instance at `base` (`http://…`). Redirects are not followed, so
    /// every answer is the one of the route that was called.
    fn new(spec: &'a Spec, base: &str) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self {
            spec,
            client,
            base: base.to_owned(),
        }
    }

    /// Builds a request for `method template` on `path`, with the admin token on `/admin`.
    fn request(&self, method: &Method, template: &str, path: &str) -> RequestBuilder {
        let request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if template.starts_with("/admin") {
            request.bearer_auth(ADMIN_TOKEN)
        } else {
            request
        }
    }

    /// Sends `request` (built for `method template`) and checks the answer.
    async fn send(
        &self,
        method: &Method,
        template: &str,
        request: RequestBuilder,
    ) -> (StatusCode, Value) {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {template}: {e}"));
        self.spec
            .check(method, template, Answer::read(response).await)
    }

    /// Calls `method template` on `path` with an optional JSON body.
    async fn call(
        &self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(&method, template, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(&method, template, request).await
    }

    /// Like `call`, and asserts the status and, for an error, its code.
    async fn expect(
        &self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
        code: Option<&str>,
    ) -> Value {
        let (actual, answer) = self.call(method.clone(), template, path, body).await;
        assert_eq!(actual.as_u16(), status, "{method} {path}: {answer}");
        if let Some(code) = code {
            assert_eq!(answer["error"]["code"], code, "{method} {path}: {answer}");
        }
        answer
    }
}

/// The schema check can fail: a wrong type, a malformed uuid and an undocumented member
/// of an order are each reported.
#[test]
fn the_schema_check_rejects_what_the_spec_does_not_allow() {
    let spec = Spec::load();
    let schema = json!({"$ref": "#/components/schemas/Order"});
    for wrong in [
        json!({"id": "not-a-uuid"}),
        json!("an order"),
        json!({"status": "lost"}),
    ] {
        let mut errors = Vec::new();
        spec.validate(&schema, &wrong, "body", &mut errors);
        assert!(!errors.is_empty(), "{wrong} passed as an Order");
    }
    let mut errors = Vec::new();
    spec.validate(
        &json!({"$ref": "#/components/schemas/OrderStatus"}),
        &json!("pending"),
        "body",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn the_spec_documents_every_route_of_the_contract() {
    let spec = Spec::load();
    assert!(
        spec.0["openapi"]
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
        let operation = spec.operation(&method, &template);
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
    references(&spec.0, String::new(), &mut found);
    assert!(found.len() > 50, "only {} $refs found", found.len());
    for (at, reference) in found {
        let resolved = reference
            .strip_prefix('#')
            .and_then(|pointer| spec.0.pointer(pointer));
        assert!(resolved.is_some(), "{at}: dangling $ref {reference}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_answers_only_documented_statuses() {
    let spec = Spec::load();
    let app = TestApp::spawn().await;
    let caller = Caller::new(&spec, &app.instance.address);
    let paths: BTreeSet<String> = spec
        .operations()
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    for template in &paths {
        let path = concrete(template, Uuid::now_v7());
        let item = &spec.0["paths"][template.as_str()];
        let (documented, undocumented): (Vec<Method>, Vec<Method>) = METHODS
            .into_iter()
            .partition(|method| item.get(method.as_str().to_lowercase()).is_some());
        for method in documented {
            let mut request = caller.request(&method, template, &path);
            if let Some(example) = spec.request_example(spec.operation(&method, template)) {
                request = request.json(&example);
            }
            let answer = Answer::read(request.send().await.expect("request")).await;
            let routed =
                !answer.is_unknown_route() && answer.status != StatusCode::METHOD_NOT_ALLOWED;
            assert!(
                routed,
                "{method} {template} is documented but not routed: {} {}",
                answer.status, answer.text
            );
            spec.check(&method, template, answer);
        }
        // A method the spec does not list on a served path must not be served either.
        for method in undocumented {
            let answer = Answer::read(
                caller
                    .request(&method, template, &path)
                    .send()
                    .await
                    .expect("request"),
            )
            .await;
            let body: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
            assert_eq!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "undocumented {method} {template} is served: {body}"
            );
            assert_eq!(
                body["error"]["code"], "method_not_allowed",
                "{method} {template}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn real_answers_have_the_documented_statuses_shapes_and_codes() {
    let spec = Spec::load();
    let app = TestApp::spawn().await;
    let caller = Caller::new(&spec, &app.instance.address);
    orders_answer_as_documented(&app, &caller).await;
    waybills_answer_as_documented(&app, &caller).await;
    admin_answers_as_documented(&app, &caller).await;
    degraded_instances_answer_as_documented(&app, &spec).await;
}

async fn orders_answer_as_documented(app: &TestApp, c: &Caller<'_>) {
    use Method as M;
    let example = json!({"customer_id": "cust-42", "amount_cents": 2500, "currency": "EUR",
        "items": [{"sku": "book-1", "quantity": 2, "unit_price_cents": 1250}]});
    let post = |key: &str, body: &Value| {
        c.request(&M::POST, "/orders", "/orders")
            .header("Idempotency-Key", key)
            .json(body)
    };
    let (status, paid) = c.send(&M::POST, "/orders", post("k-1", &example)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, replayed) = c.send(&M::POST, "/orders", post("k-1", &example)).await;
    assert_eq!((status, &replayed), (StatusCode::OK, &paid));
    let mut other = example.clone();
    other["customer_id"] = json!("cust-43");
    let (status, reused) = c.send(&M::POST, "/orders", post("k-1", &other)).await;
    assert_eq!(
        (status.as_u16(), reused["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let (status, bad_key) = c
        .send(&M::POST, "/orders", post(&"k".repeat(256), &example))
        .await;
    assert_eq!(
        (status.as_u16(), bad_key["error"]["field"].as_str()),
        (422, Some("Idempotency-Key"))
    );
    let raw = |body: String| {
        c.request(&M::POST, "/orders", "/orders")
            .header("content-type", "application/json")
            .body(body)
    };
    let (status, _) = c.send(&M::POST, "/orders", raw("{".into())).await;
    assert_eq!(status.as_u16(), 400);
    let (status, _) = c
        .send(
            &M::POST,
            "/orders",
            raw(format!("\"{}\"", "x".repeat(70 * 1024))),
        )
        .await;
    assert_eq!(status.as_u16(), 413);
    c.expect(
        M::POST,
        "/orders",
        "/orders",
        Some(json!({"customer_id": "c", "amount_cents": 1, "currency": "eur"})),
        422,
        Some("validation_failed"),
    )
    .await;

    let id = id_of(&paid);
    let page = c
        .expect(
            M::GET,
            "/orders",
            "/orders?customer_id=cust-42&status=pending&limit=1",
            None,
            200,
            None,
        )
        .await;
    assert_eq!(page["items"][0]["id"], json!(id));
    assert!(
        page["next"].is_null(),
        "the one pending order fills the page and no page follows: {page}"
    );
    c.expect(
        M::GET,
        "/orders",
        "/orders?limit=201",
        None,
        422,
        Some("validation_failed"),
    )
    .await;
    c.expect(
        M::GET,
        "/orders/{id}",
        &format!("/orders/{id}"),
        None,
        200,
        None,
    )
    .await;
    c.expect(
        M::GET,
        "/orders/{id}",
        "/orders/42",
        None,
        400,
        Some("invalid_id"),
    )
    .await;
    c.expect(
        M::GET,
        "/orders/{id}",
        &format!("/orders/{}", Uuid::now_v7()),
        None,
        404,
        Some("not_found"),
    )
    .await;
    c.expect(
        M::POST,
        "/orders/{id}/pay",
        &format!("/orders/{id}/pay"),
        None,
        200,
        None,
    )
    .await;
    c.expect(
        M::POST,
        "/orders/{id}/pay",
        &format!("/orders/{id}/pay"),
        None,
        200,
        None,
    )
    .await;
    c.expect(
        M::POST,
        "/orders/{id}/cancel",
        &format!("/orders/{id}/cancel"),
        None,
        409,
        Some("order_paid"),
    )
    .await;

    let id = id_of(&app.create_order().await);
    let cancelled = c
        .expect(
            M::POST,
            "/orders/{id}/cancel",
            &format!("/orders/{id}/cancel"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(cancelled["cancel_reason"], "customer_request");
    c.expect(
        M::POST,
        "/orders/{id}/cancel",
        &format!("/orders/{id}/cancel"),
        None,
        200,
        None,
    )
    .await;
    c.expect(
        M::POST,
        "/orders/{id}/pay",
        &format!("/orders/{id}/pay"),
        None,
        409,
        Some("order_cancelled"),
    )
    .await;

    // A deadline that passed before the timer fired: payment refused, a cancel counts as timeout.
    let id = id_of(&app.create_order().await);
    expire(app, "orders", &id).await;
    c.expect(
        M::POST,
        "/orders/{id}/pay",
        &format!("/orders/{id}/pay"),
        None,
        409,
        Some("order_expired"),
    )
    .await;
    let cancelled = c
        .expect(
            M::POST,
            "/orders/{id}/cancel",
            &format!("/orders/{id}/cancel"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(cancelled["cancel_reason"], "payment_timeout");
}

async fn waybills_answer_as_documented(app: &TestApp, c: &Caller<'_>) {
    use Method as M;
    let order_id = Uuid::now_v7();
    let body = json!({"order_id": order_id, "origin": "Hamburg", "destination": "Lyon"});
    let waybill = c
        .expect(M::POST, "/waybills", "/waybills", Some(body), 201, None)
        .await;
    let id = id_of(&waybill);
    let page = c
        .expect(
            M::GET,
            "/waybills",
            &format!("/waybills?order_id={order_id}"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(page["items"][0]["id"], json!(id));
    c.expect(
        M::GET,
        "/waybills",
        "/waybills?order_id=7",
        None,
        422,
        Some("validation_failed"),
    )
    .await;
    c.expect(
        M::GET,
        "/waybills/{id}",
        &format!("/waybills/{id}"),
        None,
        200,
        None,
    )
    .await;
    let accept = format!("/waybills/{id}/accept");
    let template = "/waybills/{id}/accept";
    c.expect(
        M::POST,
        template,
        &accept,
        Some(json!({})),
        422,
        Some("validation_failed"),
    )
    .await;
    let (status, _) = c
        .send(
            &M::POST,
            template,
            c.request(&M::POST, template, &accept)
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    let huge = format!("{{\"carrier_id\": \"{}\"}}", "x".repeat(70 * 1024));
    let (status, _) = c
        .send(
            &M::POST,
            template,
            c.request(&M::POST, template, &accept)
                .header("content-type", "application/json")
                .body(huge),
        )
        .await;
    assert_eq!(status.as_u16(), 413);
    c.expect(
        M::POST,
        template,
        "/waybills/x/accept",
        Some(json!({"carrier_id": "dhl"})),
        400,
        Some("invalid_id"),
    )
    .await;
    c.expect(
        M::POST,
        template,
        &accept,
        Some(json!({"carrier_id": "dhl"})),
        200,
        None,
    )
    .await;
    c.expect(
        M::POST,
        template,
        &accept,
        Some(json!({"carrier_id": "dhl"})),
        200,
        None,
    )
    .await;
    c.expect(
        M::POST,
        template,
        &accept,
        Some(json!({"carrier_id": "ups"})),
        409,
        Some("waybill_accepted"),
    )
    .await;
    c.expect(
        M::POST,
        "/waybills/{id}/cancel",
        &format!("/waybills/{id}/cancel"),
        None,
        409,
        Some("waybill_accepted"),
    )
    .await;

    let id = id_of(&app.create_waybill().await);
    let cancelled = c
        .expect(
            M::POST,
            "/waybills/{id}/cancel",
            &format!("/waybills/{id}/cancel"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(cancelled["cancel_reason"], "shipper_request");
    c.expect(
        M::POST,
        template,
        &format!("/waybills/{id}/accept"),
        Some(json!({"carrier_id": "dhl"})),
        409,
        Some("waybill_cancelled"),
    )
    .await;

    let id = id_of(&app.create_waybill().await);
    expire(app, "waybills", &id).await;
    c.expect(
        M::POST,
        template,
        &format!("/waybills/{id}/accept"),
        Some(json!({"carrier_id": "dhl"})),
        409,
        Some("waybill_expired"),
    )
    .await;
    let cancelled = c
        .expect(
            M::POST,
            "/waybills/{id}/cancel",
            &format!("/waybills/{id}/cancel"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(cancelled["cancel_reason"], "acceptance_timeout");
}

async fn admin_answers_as_documented(app: &TestApp, c: &Caller<'_>) {
    use Method as M;
    let text = store_failed(
        app,
        br#"{"kind":"order","id":"0193a5c4-7d2e-7c3a-9f57-0b6f4c8e1a20"}"#,
    )
    .await;
    let binary = store_failed(app, &[0xff, 0x00, 0x41]).await;
    let list = "/admin/failed-messages";
    let (status, _) = c.send(&M::GET, list, c.client.get(app.url(list))).await;
    assert_eq!(status.as_u16(), 401);
    let (status, _) = c
        .send(
            &M::GET,
            list,
            c.client.get(app.url(list)).bearer_auth("wrong"),
        )
        .await;
    assert_eq!(status.as_u16(), 401);
    let page = c
        .expect(
            M::GET,
            list,
            "/admin/failed-messages?status=pending&limit=10",
            None,
            200,
            None,
        )
        .await;
    let shown = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["id"] == json!(binary))
        .expect("binary row listed")
        .clone();
    // A listing carries a preview only; the hex is in the detail.
    assert_eq!(
        (&shown["body"], shown.get("body_hex"), &shown["body_size"]),
        (&Value::Null, None, &json!(3))
    );
    c.expect(
        M::GET,
        list,
        "/admin/failed-messages?status=lost",
        None,
        422,
        Some("validation_failed"),
    )
    .await;

    let one = "/admin/failed-messages/{id}";
    let shown = c
        .expect(
            M::GET,
            one,
            &format!("/admin/failed-messages/{text}"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(
        shown["body"],
        json!(r#"{"kind":"order","id":"0193a5c4-7d2e-7c3a-9f57-0b6f4c8e1a20"}"#)
    );
    let shown_binary = c
        .expect(
            M::GET,
            one,
            &format!("/admin/failed-messages/{binary}"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(
        (&shown_binary["body_hex"], &shown_binary["body_truncated"]),
        (&json!("ff0041"), &json!(false))
    );
    c.expect(
        M::GET,
        one,
        "/admin/failed-messages/1",
        None,
        400,
        Some("invalid_id"),
    )
    .await;
    c.expect(
        M::GET,
        one,
        &format!("/admin/failed-messages/{}", Uuid::now_v7()),
        None,
        404,
        Some("not_found"),
    )
    .await;
    let requeue = "/admin/failed-messages/{id}/requeue";
    let requeued = c
        .expect(
            M::POST,
            requeue,
            &format!("/admin/failed-messages/{text}/requeue"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(requeued["status"], "requeued");
    c.expect(
        M::POST,
        requeue,
        &format!("/admin/failed-messages/{text}/requeue"),
        None,
        409,
        Some("already_resolved"),
    )
    .await;
    c.expect(
        M::DELETE,
        one,
        &format!("/admin/failed-messages/{text}"),
        None,
        409,
        Some("already_resolved"),
    )
    .await;
    c.expect(
        M::DELETE,
        one,
        &format!("/admin/failed-messages/{binary}"),
        None,
        204,
        None,
    )
    .await;
    c.expect(
        M::DELETE,
        one,
        &format!("/admin/failed-messages/{binary}"),
        None,
        204,
        None,
    )
    .await;
    c.expect(
        M::POST,
        requeue,
        &format!("/admin/failed-messages/{binary}/requeue"),
        None,
        409,
        Some("already_resolved"),
    )
    .await;

    let all = "/admin/failed-messages/requeue";
    c.expect(
        M::POST,
        all,
        "/admin/failed-messages/requeue?queue=nowhere",
        None,
        200,
        None,
    )
    .await;
    c.expect(
        M::POST,
        all,
        "/admin/failed-messages/requeue?colour=red",
        None,
        422,
        Some("validation_failed"),
    )
    .await;
    c.expect(
        M::POST,
        "/admin/parking/requeue",
        "/admin/parking/requeue",
        None,
        200,
        None,
    )
    .await;

    let overview = c
        .expect(
            M::GET,
            "/admin/overview",
            "/admin/overview",
            None,
            200,
            None,
        )
        .await;
    assert!(
        overview["failed_messages"]["unresolved"]
            .as_i64()
            .is_some_and(|n| n >= 0),
        "{overview}"
    );
    c.expect(
        M::GET,
        "/admin/overview",
        "/admin/overview?limit=5",
        None,
        422,
        Some("validation_failed"),
    )
    .await;
    let (status, _) = c
        .send(
            &M::GET,
            "/admin/overview",
            c.client.get(app.url("/admin/overview")),
        )
        .await;
    assert_eq!(status.as_u16(), 401);
    let order = id_of(&app.create_order().await);
    let found = c
        .expect(
            M::GET,
            "/admin/lookup/{id}",
            &format!("/admin/lookup/{order}"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(
        (found["kind"].as_str(), found["entity"]["id"].as_str()),
        (Some("order"), Some(order.as_str()))
    );
    let waybill = id_of(&app.create_waybill().await);
    let found = c
        .expect(
            M::GET,
            "/admin/lookup/{id}",
            &format!("/admin/lookup/{waybill}"),
            None,
            200,
            None,
        )
        .await;
    assert_eq!(found["kind"], "waybill");
    c.expect(
        M::GET,
        "/admin/lookup/{id}",
        &format!("/admin/lookup/{}", Uuid::now_v7()),
        None,
        404,
        Some("not_found"),
    )
    .await;
    c.expect(
        M::GET,
        "/admin/lookup/{id}",
        "/admin/lookup/x",
        None,
        400,
        Some("invalid_id"),
    )
    .await;
    // The page and its assets are open: no token needed.
    for asset in [
        "/admin",
        "/admin/",
        "/admin/console.css",
        "/admin/console.js",
    ] {
        c.send(&M::GET, asset, c.client.get(app.url(asset))).await;
    }
    c.expect(M::GET, "/healthz", "/healthz", None, 200, None)
        .await;
    c.expect(M::GET, "/readyz", "/readyz", None, 200, None)
        .await;
    let metrics = c
        .expect(M::GET, "/metrics", "/metrics", None, 200, None)
        .await;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("order_timeout_http_requests_total"))
    );
    c.expect(M::GET, "/openapi.yaml", "/openapi.yaml", None, 200, None)
        .await;
}

/// Instances sharing the test's database without an admin token, without a broker, and
/// with PostgreSQL cut: the 503s of the spec.
async fn degraded_instances_answer_as_documented(app: &TestApp, spec: &Spec) {
    use Method as M;
    let no_admin = app
        .spawn_instance(|c| {
            c.admin_token = None;
            c.amqp_url = DEAD_AMQP.into();
        })
        .await;
    let c = Caller::new(spec, &no_admin.address);
    c.expect(
        M::GET,
        "/admin/failed-messages",
        "/admin/failed-messages",
        None,
        503,
        Some("admin_disabled"),
    )
    .await;
    c.expect(
        M::POST,
        "/admin/parking/requeue",
        "/admin/parking/requeue",
        None,
        503,
        Some("admin_disabled"),
    )
    .await;
    c.expect(
        M::GET,
        "/admin/overview",
        "/admin/overview",
        None,
        503,
        Some("admin_disabled"),
    )
    .await;
    let ready = c
        .expect(M::GET, "/readyz", "/readyz", None, 503, None)
        .await;
    assert_eq!(ready["checks"], json!({"database": "up", "broker": "down"}));
    c.expect(
        M::POST,
        "/orders",
        "/orders",
        Some(json!({"customer_id": "c", "amount_cents": 1, "currency": "EUR"})),
        201,
        None,
    )
    .await;

    let no_broker = app.spawn_instance(|c| c.amqp_url = DEAD_AMQP.into()).await;
    let c = Caller::new(spec, &no_broker.address);
    let pending = store_failed(app, b"{}").await;
    c.expect(
        M::POST,
        "/admin/failed-messages/{id}/requeue",
        &format!("/admin/failed-messages/{pending}/requeue"),
        None,
        503,
        Some("broker_unavailable"),
    )
    .await;
    c.expect(
        M::POST,
        "/admin/failed-messages/requeue",
        "/admin/failed-messages/requeue",
        None,
        503,
        Some("broker_unavailable"),
    )
    .await;
    c.expect(
        M::POST,
        "/admin/parking/requeue",
        "/admin/parking/requeue",
        None,
        503,
        Some("broker_unavailable"),
    )
    .await;
    let overview = c
        .expect(
            M::GET,
            "/admin/overview",
            "/admin/overview",
            None,
            200,
            None,
        )
        .await;
    assert_eq!(overview["broker"]["status"], "reconnecting");

    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let url = app
        .env
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()));
    let no_database = app
        .spawn_instance(|c| {
            c.database_url = url;
            c.amqp_url = DEAD_AMQP.into();
            c.database_acquire_timeout = Duration::from_millis(500);
        })
        .await;
    proxy.down();
    let c = Caller::new(spec, &no_database.address);
    let id = Uuid::now_v7();
    let unavailable = Some("database_unavailable");
    c.expect(
        M::POST,
        "/orders",
        "/orders",
        Some(json!({"customer_id": "c", "amount_cents": 1, "currency": "EUR"})),
        503,
        unavailable,
    )
    .await;
    c.expect(M::GET, "/orders", "/orders", None, 503, unavailable)
        .await;
    c.expect(
        M::GET,
        "/orders/{id}",
        &format!("/orders/{id}"),
        None,
        503,
        unavailable,
    )
    .await;
    c.expect(
        M::POST,
        "/orders/{id}/pay",
        &format!("/orders/{id}/pay"),
        None,
        503,
        unavailable,
    )
    .await;
    c.expect(
        M::POST,
        "/waybills/{id}/cancel",
        &format!("/waybills/{id}/cancel"),
        None,
        503,
        unavailable,
    )
    .await;
    c.expect(
        M::GET,
        "/admin/failed-messages/{id}",
        &format!("/admin/failed-messages/{id}"),
        None,
        503,
        unavailable,
    )
    .await;
    c.expect(
        M::GET,
        "/admin/overview",
        "/admin/overview",
        None,
        503,
        unavailable,
    )
    .await;
    let ready = c
        .expect(M::GET, "/readyz", "/readyz", None, 503, None)
        .await;
    assert_eq!(
        ready["checks"],
        json!({"database": "down", "broker": "down"})
    );
    c.expect(M::GET, "/healthz", "/healthz", None, 200, None)
        .await;
}

/// Moves an entity's deadline into the past, as if its timer were late.
async fn expire(app: &TestApp, table: &str, id: &str) {
    let sql = format!("update {table} set expires_at = now() - interval '1 second' where id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::parse_str(id).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
}

/// Stores a failed message as the retry router would, failed on the due queue.
async fn store_failed(app: &TestApp, body: &[u8]) -> Uuid {
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
    .unwrap();
    id
}

#[tokio::test]
async fn deadline_steering_answers_as_documented() {
    use Method as M;
    let spec = Spec::load();
    let app = TestApp::spawn().await;
    let c = Caller::new(&spec, &app.instance.address);
    for (path, create) in [("orders", "order"), ("waybills", "waybill")] {
        let template = format!("/{path}/{{id}}/extend");
        let entity = if create == "order" {
            app.create_order().await
        } else {
            app.create_waybill().await
        };
        let id = id_of(&entity);
        let at = format!("/{path}/{id}/extend");
        let seconds = |n: i64| Some(json!({ "seconds": n }));
        c.expect(M::POST, &template, &at, seconds(60), 200, None)
            .await;
        c.expect(
            M::POST,
            &template,
            &at,
            seconds(0),
            422,
            Some("validation_failed"),
        )
        .await;
        let unknown = format!("/{path}/{}/extend", Uuid::now_v7());
        c.expect(
            M::POST,
            &template,
            &unknown,
            seconds(5),
            404,
            Some("not_found"),
        )
        .await;
        let bad_id = format!("/{path}/nope/extend");
        c.expect(
            M::POST,
            &template,
            &bad_id,
            seconds(5),
            400,
            Some("invalid_id"),
        )
        .await;
        expire(&app, path, &id).await;
        c.expect(
            M::POST,
            &template,
            &at,
            seconds(5),
            409,
            Some(&format!("{create}_expired")),
        )
        .await;
        c.call(
            M::POST,
            &format!("/{path}/{{id}}/cancel"),
            &format!("/{path}/{id}/cancel"),
            None,
        )
        .await;
        c.expect(
            M::POST,
            &template,
            &at,
            seconds(5),
            409,
            Some(&format!("{create}_cancelled")),
        )
        .await;
    }
    let paid = id_of(&app.create_order().await);
    assert_eq!(app.pay(&paid).await.0, StatusCode::OK);
    c.expect(
        M::POST,
        "/orders/{id}/extend",
        &format!("/orders/{paid}/extend"),
        Some(json!({"seconds": 5})),
        409,
        Some("order_paid"),
    )
    .await;
    let accepted = id_of(&app.create_waybill().await);
    c.expect(
        M::POST,
        "/waybills/{id}/accept",
        &format!("/waybills/{accepted}/accept"),
        Some(json!({"carrier_id": "dhl"})),
        200,
        None,
    )
    .await;
    c.expect(
        M::POST,
        "/waybills/{id}/extend",
        &format!("/waybills/{accepted}/extend"),
        Some(json!({"seconds": 5})),
        409,
        Some("waybill_accepted"),
    )
    .await;

    let bulk = "/admin/deadlines/extend";
    let answer = c
        .expect(
            M::POST,
            bulk,
            bulk,
            Some(json!({"kind": "order", "seconds": 5, "dry_run": true})),
            200,
            None,
        )
        .await;
    assert_eq!(answer, json!({"matched": 0, "extended": 0}));
    c.expect(
        M::POST,
        bulk,
        bulk,
        Some(json!({"kind": "order"})),
        422,
        Some("validation_failed"),
    )
    .await;
    let unauthorised = c
        .client
        .post(format!("{}{bulk}", app.instance.address))
        .json(&json!({"kind": "order", "seconds": 5}));
    let (status, body) = c.send(&M::POST, bulk, unauthorised).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
}
