//! The HTTP client of the service, as any client sees it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

/// A client of one running service.
#[derive(Clone)]
pub struct Api {
    /// Shared by every clone (and every `at`), one connection per concurrent request.
    http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    base: Arc<str>,
}

/// One answer of the service.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// The body as JSON; a string when it is not JSON.
    pub body: Value,
    /// From sending the request to the last byte of the body.
    pub elapsed: Duration,
}

impl Answer {
    /// The error code of an error answer, "" otherwise.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// The `id` of the entity answered.
    pub fn id(&self) -> Option<Uuid> {
        self.body["id"]
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok())
    }
}

/// The body of a `POST /orders` the loads send.
#[derive(serde::Serialize)]
struct NewOrder<'a> {
    customer_id: &'a str,
    amount_cents: i64,
    currency: &'static str,
}

impl<'a> NewOrder<'a> {
    /// An order of `amount_cents` euro cents for `customer`.
    fn eur(customer: &'a str, amount_cents: i64) -> Self {
        Self {
            customer_id: customer,
            amount_cents,
            currency: "EUR",
        }
    }
}

/// The one field of a created order the loads need; the others are skipped unparsed.
#[derive(serde::Deserialize)]
struct Created {
    id: Uuid,
}

impl Api {
    /// A client of the service at `base` whose requests give up after `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            // The service closes a keep-alive connection idle for HTTP_HEADER_READ_TIMEOUT
            // (10 s). A client must not reuse a connection that old: one sent just as the
            // server closes it fails without an answer (reqwest does not resend a POST).
            .pool_idle_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: base.trim_end_matches('/').into(),
        }
    }

    /// The same client (and connection pool) aimed at another instance.
    pub fn at(&self, base: &str) -> Self {
        Self {
            http: self.http.clone(),
            base: base.trim_end_matches('/').into(),
        }
    }

    /// The instance this client calls.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `POST path` with `body` as JSON and returns the answer unread.
    async fn send(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
    }

    /// `POST path` with a JSON body; `Err` when no answer came (refused, reset, timed out).
    pub async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<Answer, reqwest::Error> {
        let started = Instant::now();
        let response = self.send(path, body).await?;
        let status = response.status();
        // Reading the body returns the connection to the pool.
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            body,
            elapsed: started.elapsed(),
        })
    }

    /// `POST /orders` for `customer`.
    pub async fn create(
        &self,
        customer: &str,
        amount_cents: i64,
    ) -> Result<Answer, reqwest::Error> {
        self.post("/orders", &NewOrder::eur(customer, amount_cents))
            .await
    }

    /// `POST /orders/{id}/pay`.
    pub async fn pay(&self, id: Uuid) -> Result<Answer, reqwest::Error> {
        self.post(&format!("/orders/{id}/pay"), &serde_json::json!({}))
            .await
    }

    /// Creates an order for `customer` and returns its id; an error unless 201.
    ///
    /// The loads call this tens of thousands of times a second on the cores the service
    /// shares, so it does no more than a lean client would: the answer is read for its
    /// `id` alone, where [`Api::create`] parses it whole for callers that inspect it (21 µs
    /// of CPU per create against pgbench's 9 per insert before, README "A faster host, and
    /// the bench's client").
    pub async fn create_order(&self, customer: &str) -> anyhow::Result<Uuid> {
        let response = self.send("/orders", &NewOrder::eur(customer, 1999)).await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if status != StatusCode::CREATED {
            anyhow::bail!(
                "POST /orders answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let created: Created = serde_json::from_slice(&bytes).context("201 without an order id")?;
        Ok(created.id)
    }

    /// The text of `/metrics`.
    pub async fn metrics_text(&self) -> Result<String, reqwest::Error> {
        let url = format!("{}/metrics", self.base);
        self.http.get(url).send().await?.text().await
    }
}
