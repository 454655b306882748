//! Alerts about messages that failed for good, posted to ALERT_WEBHOOK_URL in the shape of
//! ALERT_FORMAT: a DingTalk, WeCom or Feishu/Lark group robot, a Slack incoming webhook, or
//! plain JSON. A burst of failures becomes one alert with the count; alerts are
//! rate-limited; the consumer only enqueues, so a slow or failing webhook never blocks or
//! fails it.
//!
//! A post counts as delivered only when the receiver accepted it: a 2xx answer and, for
//! the robots that answer HTTP 200 to a refused message (DingTalk and WeCom `errcode`,
//! Feishu `code`), a zero code. Every post is counted in
//! `order_timeout_alert_posts_total{format, outcome}`; a refused or unreachable one is
//! logged as a warning and not retried (the failure itself is stored in the failed-message
//! store, and the next failure sends a new alert).

mod dingtalk;
mod feishu;
mod json;
mod slack;
mod wecom;

use std::time::{Duration, SystemTime};

use clap::ValueEnum;
use reqwest::Url;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Failures collected into one alert after the first of a burst.
const BURST_WINDOW: Duration = Duration::from_secs(1);
/// Least time between two webhook posts (DingTalk and WeCom robots take 20 a minute).
const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Failures waiting for the alert task; more are counted, not queued.
const QUEUE: usize = 1024;
/// How long one post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest alert text: the robots refuse long messages (WeCom text: 2,048 bytes).
const MAX_TEXT_BYTES: usize = 2000;
/// Most bytes of a receiver's answer quoted in a warning.
const MAX_ANSWER_BYTES: usize = 300;

/// One failure worth telling an operator about.
#[derive(Debug, Clone)]
pub struct Alert {
    /// The queue it failed on.
    pub queue: String,
    /// Its message id.
    pub message_id: Option<String>,
    /// Why.
    pub error: String,
}

/// The shape of the webhook's body, and how its answer says it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlertFormat {
    /// DingTalk custom robot: `msgtype: text`; signed in the query when a secret is set.
    Dingtalk,
    /// WeCom (企业微信) group robot: `msgtype: markdown`; the key in the URL is the credential.
    Wecom,
    /// Feishu/Lark custom bot: `msg_type: text`; signed in the body when a secret is set.
    Feishu,
    /// Slack incoming webhook: `{"text": …}`.
    Slack,
    /// A plain JSON document with the count and each failure's fields.
    Json,
}

impl AlertFormat {
    /// The name used in ALERT_FORMAT and in the metric's `format` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertFormat::Dingtalk => "dingtalk",
            AlertFormat::Wecom => "wecom",
            AlertFormat::Feishu => "feishu",
            AlertFormat::Slack => "slack",
            AlertFormat::Json => "json",
        }
    }
}

/// The signing secret of a robot (DingTalk "加签", Feishu "签名校验"). Its `Debug` hides
/// the value, so a configuration dumped into a log leaks nothing.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Wraps a secret taken from the configuration.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// Where and how alerts are posted.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The robot's URL (its access token or key included).
    pub url: Url,
    /// The body's shape and the answer's meaning.
    pub format: AlertFormat,
    /// Signs each post when set (DingTalk, Feishu; ignored by the others).
    pub secret: Option<WebhookSecret>,
}

/// Why the webhook URL of the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("ALERT_WEBHOOK_URL is not a usable http(s) URL: {0}")]
pub struct InvalidWebhookUrl(String);

impl Webhook {
    /// The webhook of the configuration; an empty secret means no signing.
    pub fn new(
        url: &str,
        format: AlertFormat,
        secret: Option<WebhookSecret>,
    ) -> Result<Self, InvalidWebhookUrl> {
        let url = Url::parse(url).map_err(|e| InvalidWebhookUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(InvalidWebhookUrl(format!("scheme {}", url.scheme())));
        }
        let secret = secret.filter(|s| !s.expose().is_empty());
        Ok(Self {
            url,
            format,
            secret,
        })
    }

    /// The URL and body of one post of `burst`, signed with the time `now`.
    pub fn request(&self, burst: &[Alert], now: SystemTime) -> (Url, Value) {
        let text = summary(burst);
        let secret = self.secret.as_ref().map(WebhookSecret::expose);
        match self.format {
            AlertFormat::Dingtalk => dingtalk::request(&self.url, secret, &text, now),
            AlertFormat::Wecom => (self.url.clone(), wecom::body(&text)),
            AlertFormat::Feishu => (self.url.clone(), feishu::body(secret, &text, now)),
            AlertFormat::Slack => (self.url.clone(), slack::body(&text)),
            AlertFormat::Json => (self.url.clone(), json::body(burst, &text)),
        }
    }

    /// Posts one alert; `Ok` only when the receiver accepted it.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        burst: &[Alert],
    ) -> Result<(), NotDelivered> {
        let (url, body) = self.request(burst, SystemTime::now());
        let response = client
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| NotDelivered::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let answer = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(NotDelivered::Status {
                status: status.as_u16(),
                answer: shorten(&answer, MAX_ANSWER_BYTES),
            });
        }
        match self.format {
            AlertFormat::Dingtalk | AlertFormat::Wecom => zero_code(&answer, "errcode", "errmsg"),
            AlertFormat::Feishu => feishu::accepted(&answer),
            AlertFormat::Slack | AlertFormat::Json => Ok(()),
        }
    }
}

/// Why an alert was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotDelivered {
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("webhook unreachable: {0}")]
    Unreachable(String),
    /// An HTTP error status.
    #[error("webhook answered HTTP {status}: {answer}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        answer: String,
    },
    /// HTTP 200 whose body says the robot refused the message (bad signature, missing
    /// keyword, rate limit, wrong token).
    #[error("webhook refused the alert: code {code}, {message}")]
    Refused {
        /// The vendor's error code (`errcode`, `code`).
        code: i64,
        /// The vendor's error message.
        message: String,
    },
    /// HTTP 200 with a body that is not the vendor's answer, so acceptance is unknown.
    #[error("webhook answered something else than the robot's JSON: {0}")]
    Unexpected(String),
}

impl NotDelivered {
    /// The metric's `outcome` label.
    fn outcome(&self) -> &'static str {
        match self {
            NotDelivered::Unreachable(_) => "unreachable",
            NotDelivered::Status { .. }
            | NotDelivered::Refused { .. }
            | NotDelivered::Unexpected(_) => "refused",
        }
    }
}

/// Accepts an answer whose integer field `code` is 0 (DingTalk, WeCom: `errcode`).
fn zero_code(answer: &str, code: &str, message: &str) -> Result<(), NotDelivered> {
    let parsed: Value = serde_json::from_str(answer)
        .map_err(|_| NotDelivered::Unexpected(shorten(answer, MAX_ANSWER_BYTES)))?;
    match parsed.get(code).and_then(Value::as_i64) {
        Some(0) => Ok(()),
        Some(code) => Err(NotDelivered::Refused {
            code,
            message: parsed
                .get(message)
                .and_then(Value::as_str)
                .map(|m| shorten(m, MAX_ANSWER_BYTES))
                .unwrap_or_default(),
        }),
        None => Err(NotDelivered::Unexpected(shorten(answer, MAX_ANSWER_BYTES))),
    }
}

/// Cheap handle the consumer uses to report failures.
#[derive(Clone)]
pub struct Alerter {
    /// To the alert task; `try_send` so reporting never waits.
    sender: mpsc::Sender<Alert>,
}

impl Alerter {
    /// Starts the alert task; without a webhook alerts are only logged.
    pub fn start(webhook: Option<Webhook>, shutdown: CancellationToken) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(receiver, webhook, shutdown));
        Self { sender }
    }

    /// Reports a failure; drops it (with a log line) if the alert queue is full.
    pub fn send(&self, alert: Alert) {
        if self.sender.try_send(alert).is_err() {
            metrics::counter!("order_timeout_alerts_dropped_total").increment(1);
            tracing::warn!("alert queue full, alert dropped (the failure is stored)");
        }
    }
}

async fn deliver(
    mut receiver: mpsc::Receiver<Alert>,
    webhook: Option<Webhook>,
    shutdown: CancellationToken,
) {
    let client = match reqwest::Client::builder().timeout(POST_TIMEOUT).build() {
        Ok(client) => Some(client),
        Err(error) => {
            tracing::error!(%error, "no HTTP client for alerts; alerts are only logged");
            None
        }
    };
    let mut last_post: Option<tokio::time::Instant> = None;
    while let Some(burst) = next_burst(&mut receiver, last_post, &shutdown).await {
        let text = summary(&burst);
        tracing::error!(count = burst.len(), alert = %text, "alert");
        if let (Some(webhook), Some(client)) = (&webhook, &client) {
            let format = webhook.format.as_str();
            let outcome = match webhook.post(client, &burst).await {
                Ok(()) => "delivered",
                Err(error) => {
                    tracing::warn!(format, %error, "alert not delivered");
                    error.outcome()
                }
            };
            metrics::counter!("order_timeout_alert_posts_total", "format" => format, "outcome" => outcome)
                .increment(1);
        }
        last_post = Some(tokio::time::Instant::now());
    }
}

/// Waits for a failure, then collects the others of its burst: for BURST_WINDOW, or
/// until MIN_INTERVAL after the last post. `None` at shutdown.
async fn next_burst(
    receiver: &mut mpsc::Receiver<Alert>,
    last_post: Option<tokio::time::Instant>,
    shutdown: &CancellationToken,
) -> Option<Vec<Alert>> {
    let first = tokio::select! {
        _ = shutdown.cancelled() => return None,
        alert = receiver.recv() => alert?,
    };
    let window = match last_post {
        Some(at) => (at + MIN_INTERVAL)
            .saturating_duration_since(tokio::time::Instant::now())
            .max(BURST_WINDOW),
        None => BURST_WINDOW,
    };
    let mut burst = vec![first];
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            alert = receiver.recv() => match alert { Some(alert) => burst.push(alert), None => break },
        }
    }
    Some(burst)
}

/// The alert text: the count, the queues, and the first and last failure; at most
/// MAX_TEXT_BYTES. It always contains "order-timeout", so a DingTalk robot whose security
/// setting is a keyword can use that one.
pub fn summary(burst: &[Alert]) -> String {
    let mut queues: Vec<&str> = burst.iter().map(|a| a.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    let describe = |a: &Alert| {
        format!(
            "message {} on {}: {}",
            a.message_id.as_deref().unwrap_or("?"),
            a.queue,
            shorten(&a.error, 500)
        )
    };
    let mut text = format!(
        "[order-timeout] {} message(s) failed for good on {}.",
        burst.len(),
        queues.join(", ")
    );
    if let Some(first) = burst.first() {
        text.push_str(&format!("\nFirst: {}", describe(first)));
    }
    if burst.len() > 1
        && let Some(last) = burst.last()
    {
        text.push_str(&format!("\nLast: {}", describe(last)));
    }
    let footer = "\nSee GET /admin/failed-messages to requeue or discard.";
    let mut text = shorten(&text, MAX_TEXT_BYTES - footer.len());
    text.push_str(footer);
    text
}

/// `text` cut to at most `max` bytes on a character boundary, with "…" when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Milliseconds since the Unix epoch (0 for a clock before 1970).
fn unix_millis(now: SystemTime) -> u128 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str) -> Alert {
        Alert {
            queue: "p.due".into(),
            message_id: Some(id.into()),
            error: "boom".into(),
        }
    }

    #[test]
    fn a_burst_is_summarised_with_its_count() {
        let text = summary(&[alert("a"), alert("b"), alert("c")]);
        assert!(text.contains("3 message(s)"), "{text}");
        assert!(text.contains("First: message a"), "{text}");
        assert!(text.contains("Last: message c"), "{text}");
    }

    #[test]
    fn a_long_error_keeps_the_text_within_what_robots_accept() {
        let mut long = alert("a");
        long.error = "é".repeat(5000);
        let text = summary(&[long.clone(), long]);
        assert!(text.len() <= MAX_TEXT_BYTES, "{}", text.len());
        assert!(text.ends_with("to requeue or discard."), "{text}");
    }

    #[test]
    fn a_zero_errcode_is_accepted_and_any_other_is_refused() {
        assert!(zero_code(r#"{"errcode":0,"errmsg":"ok"}"#, "errcode", "errmsg").is_ok());
        let refused = zero_code(
            r#"{"errcode":310000,"errmsg":"sign not match"}"#,
            "errcode",
            "errmsg",
        );
        assert!(
            matches!(refused, Err(NotDelivered::Refused { code: 310000, ref message }) if message == "sign not match"),
            "{refused:?}"
        );
        assert!(matches!(
            zero_code("ok", "errcode", "errmsg"),
            Err(NotDelivered::Unexpected(_))
        ));
        assert!(matches!(
            zero_code("{}", "errcode", "errmsg"),
            Err(NotDelivered::Unexpected(_))
        ));
    }

    #[test]
    fn the_secret_is_hidden_from_debug_output() {
        let webhook = Webhook::new(
            "https://oapi.dingtalk.com/robot/send?access_token=t",
            AlertFormat::Dingtalk,
            Some(WebhookSecret::new("SECsupersecret")),
        );
        let printed = format!("{webhook:?}");
        assert!(!printed.contains("SECsupersecret"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
    }

    #[test]
    fn only_http_urls_are_webhooks() {
        assert!(Webhook::new("ftp://x/y", AlertFormat::Json, None).is_err());
        assert!(Webhook::new("not a url", AlertFormat::Json, None).is_err());
        assert!(Webhook::new("http://127.0.0.1:9/hook", AlertFormat::Json, None).is_ok());
    }
}
