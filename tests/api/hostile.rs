//! Hostile clients and hostile messages, one test per attack (issue 13). Each attack
//! was run against the service before its fix: memory grown without bound, connections
//! held forever, a 500, secrets printed, huge listings, routing headers republished,
//! messages parked on every replay, unthrottled token guessing. Each test names the
//! attack and asserts the service's bounded answer.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, expect_error, expect_status, id_of, order_body, poll};

/// How long a message takes at most through the service on a loaded machine.
const WITHIN: Duration = Duration::from_secs(20);

/// The `host:port` of the instance, for raw sockets.
fn socket_address(app: &TestApp) -> String {
    app.instance
        .address
        .trim_start_matches("http://")
        .to_owned()
}

/// Reads until the server closes the connection (or `within` passes: then `None`),
/// returning what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn made_up_http_methods_do_not_add_metric_series() {
    let app = TestApp::spawn().await;
    for n in 0..30 {
        let method = reqwest::Method::from_bytes(format!("XABC{n}").as_bytes()).unwrap();
        let reply = app.send(app.request(method, "/healthz")).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let metrics = app.metrics_text().await;
    assert!(
        !metrics.contains("method=\"XABC"),
        "a made-up method became a label value"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("order_timeout_http_requests_total")
                && l.contains("method=\"OTHER\"")),
        "made-up methods are counted as OTHER"
    );
}

#[tokio::test]
async fn a_slowloris_sending_headers_forever_is_disconnected_by_the_default_header_timeout() {
    // The defaults, not a test setting: nobody holds a connection past 30 s.
    let defaults = order_timeout::config::Config::defaults();
    let app = TestApp::spawn_with(|c| {
        c.http_header_read_timeout = defaults.http_header_read_timeout;
        c.http_request_timeout = defaults.http_request_timeout;
    })
    .await;
    let mut stream = TcpStream::connect(socket_address(&app)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    // One more header line every second, never the blank line that ends the headers.
    let drip = async {
        for n in 0.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stream
                .write_all(format!("X-Drip-{n}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(32), drip).await;
    assert!(
        started.elapsed() < Duration::from_secs(31),
        "the connection was still open after 30 s"
    );
}

#[tokio::test]
async fn an_idle_connection_that_never_sends_a_request_is_closed() {
    let app = TestApp::spawn_with(|c| c.http_header_read_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(socket_address(&app)).await.unwrap();
    let closed = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "an idle socket was kept open");
}

#[tokio::test]
async fn a_body_sent_byte_by_byte_is_cut_off_by_the_request_timeout_with_408() {
    let app = TestApp::spawn_with(|c| c.http_request_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(socket_address(&app)).await.unwrap();
    stream
        .write_all(
            b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received))
        .await
        .expect("the connection was still open after 10 s");
    let _ = read;
    drip.abort();
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_instead_of_exhausting_the_process() {
    let mut app = TestApp::spawn_with(|c| {
        c.http_max_connections = 2;
        c.http_header_read_timeout = Duration::from_secs(30);
    })
    .await;
    // wait_ready's connection is idle in the client's pool: dropping that client closes it.
    drop(std::mem::replace(&mut app.client, reqwest::Client::new()));
    let address = socket_address(&app);
    let client = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let healthz = format!("http://{address}/healthz");
    // Two idle sockets take both slots.
    let _first = TcpStream::connect(&address).await.unwrap();
    let second = TcpStream::connect(&address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blocked = client()
        .get(&healthz)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        blocked.is_err(),
        "a third connection was served: {blocked:?}"
    );
    drop(second);
    let served = client()
        .get(&healthz)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("served once a slot is free");
    assert_eq!(served.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_urn_uuid_in_a_query_is_refused_not_a_500() {
    let app = TestApp::spawn().await;
    for query in [
        "/waybills?order_id=urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        "/waybills?order_id={67e55044-10b1-426f-9247-bb680e5fe0c8}",
        "/orders?after=urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        "/waybills?order_id=",
        "/orders?after=",
        "/orders?limit=",
        "/orders?status=",
    ] {
        let answer = app.get(query).await;
        expect_error(
            answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let answer = app
        .get("/waybills?order_id=67e55044-10b1-426f-9247-bb680e5fe0c8")
        .await;
    expect_status(answer, StatusCode::OK);
}

#[tokio::test]
async fn help_does_not_print_secrets_from_the_environment() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-timeout"))
        .args(["serve", "--help"])
        .env("DATABASE_URL", "postgres://app:pg-s3cret@db:5432/ot")
        .env("AMQP_URL", "amqp://app:mq-s3cret@mq:5672/%2f")
        .env("ADMIN_TOKEN", "admin-s3cret")
        .env(
            "ALERT_WEBHOOK_URL",
            "https://hook/?access_token=hook-s3cret",
        )
        .env("ALERT_WEBHOOK_SECRET", "sign-s3cret")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("DATABASE_URL") && help.contains("ADMIN_TOKEN"),
        "{help}"
    );
    assert!(!help.contains("s3cret"), "a secret was printed:\n{help}");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-timeout"))
        .args(["migrate", "--help"])
        .env("DATABASE_URL", "postgres://app:pg-s3cret@db:5432/ot")
        .output()
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("s3cret"));
}

#[tokio::test]
async fn a_cross_site_text_plain_or_form_post_is_refused_with_415() {
    let app = TestApp::spawn().await;
    let body = serde_json::to_string(&order_body()).unwrap();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = app.request(Method::POST, "/orders").body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let answer = app.send(request).await.answer();
        let refused = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        expect_error(answer, refused, "unsupported_media_type");
    }
    assert_eq!(app.count_orders("pending").await, 0);
    // JSON (with a charset) is accepted, and an action without a body needs no type.
    let request = app
        .request(Method::POST, "/orders")
        .header("content-type", "application/json; charset=utf-8")
        .body(body);
    let order = expect_status(app.send(request).await.answer(), StatusCode::CREATED);
    let cancel = format!("/orders/{}/cancel", id_of(&order));
    let answer = app.send(app.request(Method::POST, &cancel)).await.answer();
    expect_status(answer, StatusCode::OK);
    let request = app
        .request(Method::POST, &cancel)
        .header("content-type", "text/plain");
    let answer = app.send(request).await.answer();
    expect_error(
        answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
}

#[tokio::test]
async fn guessing_the_admin_token_is_throttled_per_client_with_429() {
    let app = TestApp::spawn_with(|c| c.admin_auth_failures_per_minute = 5).await;
    let list = |token: &str| {
        let request = app.request(Method::GET, "/admin/failed-messages");
        app.send(request.bearer_auth(token))
    };
    for guess in 0..5 {
        let answer = list(&format!("guess-{guess}")).await.answer();
        expect_error(answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Even the right token waits out the window, or guessing would go on.
    for token in ["guess-6", "test-admin-token"] {
        let answer = list(token).await.answer();
        expect_error(answer, StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
    }
    // The public API is not affected.
    expect_status(app.post("/orders", order_body()).await, StatusCode::CREATED);
}

/// The failed-message rows (listing view), once there are `count` of them.
async fn failed_rows_once(app: &TestApp, count: usize) -> Vec<Value> {
    poll(WITHIN, || async {
        let answer = app
            .admin(Method::GET, "/admin/failed-messages?limit=200")
            .await;
        let page = expect_status(answer, StatusCode::OK);
        let rows = page["items"].as_array().unwrap().clone();
        (rows.len() >= count).then_some(rows)
    })
    .await
    .unwrap_or_else(|| panic!("{count} failed message(s) never stored"))
}

#[tokio::test]
async fn a_cc_routing_header_is_not_republished_by_a_requeue() {
    let app = TestApp::spawn().await;
    let spy = format!("{}.test.spy", app.topology.prefix);
    let channel = app.channel().await;
    channel
        .queue_declare(
            spy.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "CC".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from(spy.as_bytes().to_vec()),
        )])),
    );
    app.publish_raw(&app.topology.due_queue, b"not a timer", "cc-1", headers)
        .await;
    let rows = failed_rows_once(&app, 1).await;
    // The publisher's own copy reached the spy; that one is the publisher's doing.
    app.drain(&spy).await;
    let id = rows[0]["id"].as_str().unwrap();
    let requeue = format!("/admin/failed-messages/{id}/requeue");
    expect_status(app.admin(Method::POST, &requeue).await, StatusCode::OK);
    // Requeued, consumed and failed again: the service's publish is done.
    let rows = failed_rows_once(&app, 2).await;
    assert_eq!(
        app.queue_depth(&spy).await,
        0,
        "the service copied the message to CC"
    );
    assert!(rows[0]["headers"].get("CC").is_none(), "{}", rows[0]);
}

#[tokio::test]
async fn a_huge_junk_message_is_stored_cut_and_listings_carry_only_a_preview() {
    let app = TestApp::spawn_with(|c| c.failed_message_max_body = 4096).await;
    let junk = "J".repeat(300 * 1024);
    app.publish_raw(
        &app.topology.due_queue,
        junk.as_bytes(),
        "junk-1",
        FieldTable::default(),
    )
    .await;
    let rows = failed_rows_once(&app, 1).await;
    let request = app.request(Method::GET, "/admin/failed-messages");
    let listing = app.send(request.bearer_auth("test-admin-token")).await.text;
    assert!(
        listing.len() < 4096,
        "a listing of one row weighs {} bytes",
        listing.len()
    );
    assert_eq!(rows[0]["body"].as_str().unwrap().len(), 256);
    assert!(rows[0].get("body_hex").is_none());
    assert_eq!(rows[0]["body_size"], 300 * 1024);
    let id = rows[0]["id"].as_str().unwrap();
    let answer = app
        .admin(Method::GET, &format!("/admin/failed-messages/{id}"))
        .await;
    let detail = expect_status(answer, StatusCode::OK);
    assert_eq!(detail["body"].as_str().unwrap().len(), 4096);
    assert_eq!(detail["body_size"], 300 * 1024);
    assert_eq!(detail["body_truncated"], true);
    let requeue = format!("/admin/failed-messages/{id}/requeue");
    let answer = app.admin(Method::POST, &requeue).await;
    expect_error(answer, StatusCode::CONFLICT, "body_truncated");
}

#[tokio::test]
async fn nul_and_invisible_characters_in_headers_are_stored_not_parked() {
    let app = TestApp::spawn().await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-evil".into(),
        AMQPValue::LongString(LongString::from(b"a\0b\x1b[31m".to_vec())),
    );
    headers.insert(
        "x-\0key".into(),
        AMQPValue::LongString(LongString::from("\u{202E}gnp.exe".as_bytes().to_vec())),
    );
    app.publish_raw(
        &app.topology.due_queue,
        b"\0 not a timer",
        "nul\0\u{200B}id",
        headers,
    )
    .await;
    let rows = failed_rows_once(&app, 1).await;
    assert_eq!(rows[0]["message_id"], "nul\\u{0}\\u{200b}id");
    assert_eq!(
        rows[0]["headers"]["x-evil"],
        json!([97, 0, 98, 27, 91, 51, 49, 109])
    );
    assert_eq!(
        app.queue_depth(&app.topology.parking_queue).await,
        0,
        "the message was parked instead of stored"
    );
}

#[tokio::test]
async fn bidi_overrides_and_zero_width_characters_are_refused_in_ids() {
    let app = TestApp::spawn().await;
    for (field, value) in [
        ("customer_id", "cust\u{202E}1-tsuc"),
        ("customer_id", "cust\u{200B}-1"),
        ("customer_id", "\u{FEFF}cust-1"),
    ] {
        let mut body = order_body();
        body[field] = json!(value);
        let answer = app.post("/orders", body).await;
        let error = expect_error(
            answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(error["error"]["field"], field, "{value:?}");
    }
    let answer = app
        .post(
            "/waybills",
            json!({"origin": "Ham\u{2066}burg", "destination": "Lyon"}),
        )
        .await;
    expect_error(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn scraping_metrics_in_a_loop_runs_no_query_over_the_outbox() {
    let app = TestApp::spawn().await;
    // While the test holds the outbox locked, any count over it waits for the lock.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("lock table outbox in access exclusive mode")
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        app.metrics_text().await;
    }
    let took = started.elapsed();
    tx.rollback().await.unwrap();
    assert!(
        took < Duration::from_secs(5),
        "20 anonymous scrapes waited {took:?} on the database"
    );
}

#[tokio::test]
async fn idempotency_keys_and_resolved_failed_messages_do_not_pile_up_forever() {
    let app = TestApp::spawn_with(|c| {
        c.retention_interval = Duration::from_secs(1);
        c.idempotency_key_retention = Duration::from_secs(2);
        c.resolved_failed_message_retention = Duration::from_secs(2);
    })
    .await;
    let request = app.request(Method::POST, "/orders").json(&order_body());
    let answer = app.send(request.header("idempotency-key", "once")).await;
    expect_status(answer.answer(), StatusCode::CREATED);
    for (status, resolved) in [("discarded", "now()"), ("pending", "null")] {
        let sql = format!(
            "insert into failed_messages (id, queue, exchange, routing_key, headers, body, error,
                 error_class, attempts, first_failed_at, last_failed_at, status, resolved_at)
             values (gen_random_uuid(), 'q', '', 'due', '{{}}', '\\x00', 'e', 'permanent', 1,
                 now(), now(), '{status}', {resolved})"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&app.pool)
            .await
            .unwrap();
    }
    let count = |sql: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let pruned = crate::helpers::eventually(WITHIN, || async {
        count("select count(*) from idempotency_keys").await == 0
            && count("select count(*) from failed_messages where status = 'discarded'").await == 0
    })
    .await;
    assert!(pruned, "old keys and resolved failed messages were kept");
    assert_eq!(
        count("select count(*) from failed_messages where status = 'pending'").await,
        1,
        "an unresolved failed message is never pruned"
    );
    assert_eq!(
        count("select count(*) from orders").await,
        1,
        "the order itself stays"
    );
}
