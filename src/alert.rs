//! Alerts about messages that failed for good, posted to ALERT_WEBHOOK_URL with a
//! DingTalk-robot compatible body. A burst of failures becomes one alert with the count;
//! alerts are rate-limited; the consumer only enqueues, so a slow or failing webhook
//! never blocks or fails it.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Failures collected into one alert after the first of a burst.
const BURST_WINDOW: Duration = Duration::from_secs(1);
/// Least time between two webhook posts.
const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Failures waiting for the alert task; more are counted, not queued.
const QUEUE: usize = 1024;

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

/// Cheap handle the consumer uses to report failures.
#[derive(Clone)]
pub struct Alerter {
    /// To the alert task; `try_send` so reporting never waits.
    sender: mpsc::Sender<Alert>,
}

impl Alerter {
    /// Starts the alert task; without a webhook URL alerts are only logged.
    pub fn start(webhook: Option<String>, shutdown: CancellationToken) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(receiver, webhook, shutdown));
        Self { sender }
    }

    /// Reports a failure; drops it (with a log line) if the alert queue is full.
    pub fn send(&self, alert: Alert) {
        if self.sender.try_send(alert).is_err() {
            tracing::warn!("alert queue full, alert dropped (the failure is stored)");
        }
    }
}

async fn deliver(
    mut receiver: mpsc::Receiver<Alert>,
    webhook: Option<String>,
    shutdown: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok();
    let mut last_post: Option<tokio::time::Instant> = None;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            alert = receiver.recv() => match alert { Some(alert) => alert, None => return },
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
        let text = summary(&burst);
        tracing::error!(count = burst.len(), alert = %text, "alert");
        if let (Some(url), Some(client)) = (&webhook, &client) {
            let body = serde_json::json!({"msgtype": "text", "text": {"content": text}});
            match client.post(url).json(&body).send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(status = %response.status(), "alert webhook refused the alert")
                }
                Err(error) => tracing::warn!(%error, "alert webhook unreachable"),
            }
        }
        last_post = Some(tokio::time::Instant::now());
    }
}

/// The alert text: the count, the queues, and the first and last failure.
pub fn summary(burst: &[Alert]) -> String {
    let mut queues: Vec<&str> = burst.iter().map(|a| a.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    let describe = |a: &Alert| {
        format!(
            "message {} on {}: {}",
            a.message_id.as_deref().unwrap_or("?"),
            a.queue,
            a.error
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
    if burst.len() > 1 {
        if let Some(last) = burst.last() {
            text.push_str(&format!("\nLast: {}", describe(last)));
        }
    }
    text.push_str("\nSee GET /admin/failed-messages to requeue or discard.");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_summarised_with_its_count() {
        let alert = |id: &str| Alert {
            queue: "p.due".into(),
            message_id: Some(id.into()),
            error: "boom".into(),
        };
        let text = summary(&[alert("a"), alert("b"), alert("c")]);
        assert!(text.contains("3 message(s)"), "{text}");
        assert!(text.contains("First: message a"), "{text}");
        assert!(text.contains("Last: message c"), "{text}");
    }
}
