//! Alerts reach the robots operators use: each ALERT_FORMAT posted to a local receiver,
//! which checks the body and recomputes the signature the way the vendor documents it;
//! a robot that answers HTTP 200 with a nonzero code has not delivered the alert.

use std::time::{Duration, SystemTime};

use base64::Engine;
use hmac::{Hmac, Mac};
use order_timeout::alert::{Alert, AlertFormat, Alerter, NotDelivered, Webhook, WebhookSecret};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{eventually, poll};

const WITHIN: Duration = Duration::from_secs(15);
const SECRET: &str = "SEC0123456789abcdef-test-secret";

/// A robot answering every post with `answer`.
async fn robot(answer: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(answer)
        .mount(&server)
        .await;
    server
}

fn ok_answer(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

fn failure(message_id: &str) -> Alert {
    Alert {
        queue: "alerts_test.due".into(),
        message_id: Some(message_id.into()),
        error: "no order with id 42".into(),
    }
}

/// Starts an alerter posting to `url`, reports one failure, and returns the one post the
/// robot received.
async fn alert_through(
    server: &MockServer,
    url: String,
    format: AlertFormat,
    secret: Option<&str>,
) -> Request {
    let webhook = Webhook::new(&url, format, secret.map(WebhookSecret::new)).unwrap();
    let stop = CancellationToken::new();
    let alerter = Alerter::start(Some(webhook), stop.clone());
    let earlier = server.received_requests().await.unwrap_or_default().len();
    alerter.send(failure("msg-7"));
    let post = poll(WITHIN, || async {
        let mut posts = server.received_requests().await.unwrap_or_default();
        (posts.len() > earlier).then(|| posts.pop()).flatten()
    })
    .await
    .expect("the robot received the alert");
    stop.cancel();
    post
}

fn body_of(post: &Request) -> Value {
    serde_json::from_slice(&post.body).expect("a JSON body")
}

fn query_value(post: &Request, name: &str) -> Option<String> {
    post.url
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn hmac_base64(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn assert_alert_text(text: &str) {
    assert!(text.contains("[order-timeout] 1 message(s)"), "{text}");
    assert!(text.contains("msg-7"), "{text}");
    assert!(text.contains("no order with id 42"), "{text}");
}

#[tokio::test]
async fn dingtalk_alerts_are_signed_in_the_query_as_dingtalk_documents() {
    let server = robot(ok_answer(json!({"errcode": 0, "errmsg": "ok"}))).await;
    let url = format!("{}/robot/send?access_token=tok", server.uri());
    let post = alert_through(&server, url, AlertFormat::Dingtalk, Some(SECRET)).await;

    assert_eq!(post.url.path(), "/robot/send");
    assert_eq!(query_value(&post, "access_token").as_deref(), Some("tok"));
    let timestamp = query_value(&post, "timestamp").expect("timestamp in the query");
    let millis: i64 = timestamp.parse().expect("milliseconds");
    assert!(
        (now_millis() - millis).abs() < 60_000,
        "timestamp in ms near now: {millis}"
    );
    // sign = urlencode(base64(HmacSHA256(key = secret, "{timestamp}\n{secret}")))
    let expected = hmac_base64(
        SECRET.as_bytes(),
        format!("{timestamp}\n{SECRET}").as_bytes(),
    );
    assert_eq!(query_value(&post, "sign"), Some(expected.clone()));
    let encoded: String = form_urlencoded::byte_serialize(expected.as_bytes()).collect();
    let raw = post.url.query().unwrap_or_default();
    assert!(
        raw.contains(&format!("sign={encoded}")),
        "sign url-encoded: {raw}"
    );

    let body = body_of(&post);
    assert_eq!(body["msgtype"], "text");
    assert_alert_text(body["text"]["content"].as_str().unwrap());
}

#[tokio::test]
async fn dingtalk_without_a_secret_posts_the_url_unchanged() {
    let server = robot(ok_answer(json!({"errcode": 0, "errmsg": "ok"}))).await;
    let url = format!("{}/robot/send?access_token=tok", server.uri());
    let post = alert_through(&server, url, AlertFormat::Dingtalk, None).await;
    assert_eq!(post.url.query(), Some("access_token=tok"));
}

#[tokio::test]
async fn feishu_alerts_are_signed_in_the_body_as_feishu_documents() {
    let server = robot(ok_answer(json!({"code": 0, "msg": "success", "data": {}}))).await;
    let url = format!("{}/open-apis/bot/v2/hook/abc", server.uri());
    let post = alert_through(&server, url, AlertFormat::Feishu, Some(SECRET)).await;

    assert_eq!(post.url.path(), "/open-apis/bot/v2/hook/abc");
    let body = body_of(&post);
    let timestamp = body["timestamp"].as_str().expect("timestamp as a string");
    let seconds: i64 = timestamp.parse().expect("seconds");
    assert!(
        (now_millis() / 1000 - seconds).abs() < 60,
        "timestamp in seconds near now: {seconds}"
    );
    // sign = base64(HmacSHA256(key = "{timestamp}\n{secret}", message = ""))
    let expected = hmac_base64(format!("{timestamp}\n{SECRET}").as_bytes(), b"");
    assert_eq!(body["sign"], expected);
    assert_eq!(body["msg_type"], "text");
    assert_alert_text(body["content"]["text"].as_str().unwrap());
}

#[tokio::test]
async fn wecom_alerts_are_markdown_with_the_key_left_in_the_url() {
    let server = robot(ok_answer(json!({"errcode": 0, "errmsg": "ok"}))).await;
    let url = format!("{}/cgi-bin/webhook/send?key=k-1", server.uri());
    let post = alert_through(&server, url, AlertFormat::Wecom, Some(SECRET)).await;

    assert_eq!(
        post.url.query(),
        Some("key=k-1"),
        "WeCom robots are not signed"
    );
    let body = body_of(&post);
    assert_eq!(body["msgtype"], "markdown");
    let content = body["markdown"]["content"].as_str().unwrap();
    assert!(content.starts_with("**[order-timeout]"), "{content}");
    assert_alert_text(content);
}

#[tokio::test]
async fn slack_alerts_are_a_text_document() {
    let server = robot(ResponseTemplate::new(200).set_body_string("ok")).await;
    let url = format!("{}/services/T0/B0/x", server.uri());
    let post = alert_through(&server, url, AlertFormat::Slack, None).await;
    let body = body_of(&post);
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert_alert_text(body["text"].as_str().unwrap());
}

#[tokio::test]
async fn json_alerts_carry_each_failures_fields() {
    let server = robot(ResponseTemplate::new(204)).await;
    let url = format!("{}/hooks/order-timeout", server.uri());
    let post = alert_through(&server, url, AlertFormat::Json, None).await;
    let body = body_of(&post);
    assert_eq!(body["service"], "order-timeout");
    assert_eq!(body["count"], 1);
    assert_eq!(
        body["failures"],
        json!([{"queue": "alerts_test.due", "message_id": "msg-7", "error": "no order with id 42"}])
    );
    assert_alert_text(body["text"].as_str().unwrap());
}

/// The value of the counter line `name{labels}` in the process's metrics, 0 if absent.
fn counter(name_and_labels: &str) -> f64 {
    order_timeout::telemetry::metrics_handle()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_robot_answering_200_with_a_nonzero_code_has_not_delivered() {
    let refused = r#"order_timeout_alert_posts_total{format="dingtalk",outcome="refused"}"#;
    let before = counter(refused);
    let server = robot(ok_answer(
        json!({"errcode": 310000, "errmsg": "sign not match"}),
    ))
    .await;
    let url = format!("{}/robot/send?access_token=tok", server.uri());
    let webhook = Webhook::new(
        &url,
        AlertFormat::Dingtalk,
        Some(WebhookSecret::new(SECRET)),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let outcome = webhook.post(&client, &[failure("msg-8")]).await;
    assert!(
        matches!(outcome, Err(NotDelivered::Refused { code: 310000, ref message }) if message == "sign not match"),
        "{outcome:?}"
    );

    // The alert task counts it as refused, not delivered.
    alert_through(&server, url, AlertFormat::Dingtalk, Some(SECRET)).await;
    let counted = eventually(WITHIN, || async { counter(refused) > before }).await;
    assert!(counted, "refused post counted in {refused}");
}

#[tokio::test]
async fn feishu_and_wecom_refusals_are_not_delivered_either() {
    let feishu = robot(ok_answer(json!({"code": 19021, "msg": "sign match fail"}))).await;
    let webhook = Webhook::new(
        &feishu.uri(),
        AlertFormat::Feishu,
        Some(WebhookSecret::new(SECRET)),
    )
    .unwrap();
    let outcome = webhook.post(&reqwest::Client::new(), &[failure("f")]).await;
    assert!(
        matches!(outcome, Err(NotDelivered::Refused { code: 19021, .. })),
        "{outcome:?}"
    );

    let wecom = robot(ok_answer(
        json!({"errcode": 93000, "errmsg": "invalid webhook url"}),
    ))
    .await;
    let webhook = Webhook::new(&wecom.uri(), AlertFormat::Wecom, None).unwrap();
    let outcome = webhook.post(&reqwest::Client::new(), &[failure("w")]).await;
    assert!(
        matches!(outcome, Err(NotDelivered::Refused { code: 93000, .. })),
        "{outcome:?}"
    );

    let slack = robot(ResponseTemplate::new(400).set_body_string("invalid_payload")).await;
    let webhook = Webhook::new(&slack.uri(), AlertFormat::Slack, None).unwrap();
    let outcome = webhook.post(&reqwest::Client::new(), &[failure("s")]).await;
    assert!(
        matches!(outcome, Err(NotDelivered::Status { status: 400, .. })),
        "{outcome:?}"
    );
}
