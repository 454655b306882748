//! The pending phase: the service's resident memory when it is idle, and again once many
//! orders are pending (created through the API, every timer published). Timers live in
//! the broker and rows in the database, so the service itself should hold nothing per
//! pending order.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::Sizes;
use super::env::{BenchEnv, LONG_TIMEOUT};
use super::load::{self, Stop, Throughput};
use super::service::Memory;

/// Pause before a memory reading, so in-flight work settles.
const SETTLE: Duration = Duration::from_secs(2);

/// Figures of the pending phase.
#[derive(Debug, Clone, Serialize)]
pub struct PendingReport {
    /// Orders created for this phase.
    pub orders: u64,
    /// Creating them, at the create phase's concurrency.
    pub fill: Throughput,
    /// Orders pending in the database when memory was read (earlier phases' included).
    pub pending_in_database: i64,
    /// How long after the last create the relay had published every timer, in seconds.
    pub outbox_drained_after_s: Option<f64>,
    /// Whose memory was read.
    pub measured: String,
    /// Started and ready, before any order of this phase.
    pub idle: Option<Memory>,
    /// With the orders pending and their timers published.
    pub loaded: Option<Memory>,
    /// `loaded.rss_mib - idle.rss_mib`.
    pub growth_mib: Option<f64>,
}

/// Reads memory on a fresh service, fills it with pending orders, reads it again.
pub async fn run(env: &BenchEnv, sizes: &Sizes) -> anyhow::Result<PendingReport> {
    let service = env.start(LONG_TIMEOUT).await?;
    let api = load::api(&service.url);
    tokio::time::sleep(SETTLE).await;
    let idle = service.memory();
    let tag: Arc<str> = env.tag("pending").into();
    let stop = Stop::Count(sizes.pending);
    let bar = load::timed_bar(
        "pending",
        &format!(
            "creating {} pending orders, {} clients",
            sizes.pending, sizes.concurrency
        ),
        &stop,
    );
    let client = api.clone();
    let fill = load::closed_loop(sizes.concurrency, stop, &bar, move |_| {
        let (client, tag) = (client.clone(), tag.clone());
        async move { client.create_order(&tag).await.map(drop) }
    })
    .await;
    let drained = env.wait_outbox_drained(Duration::from_secs(600)).await?;
    tokio::time::sleep(SETTLE).await;
    let loaded = service.memory();
    let pending_in_database: i64 =
        sqlx::query_scalar("select count(*) from orders where status = 'pending'")
            .fetch_one(&env.pool)
            .await?;
    service.stop().await?;
    Ok(PendingReport {
        orders: sizes.pending,
        fill,
        pending_in_database,
        outbox_drained_after_s: drained.map(|d| d.as_secs_f64()),
        measured: env.describe_service(),
        growth_mib: idle
            .zip(loaded)
            .map(|(idle, loaded)| loaded.rss_mib - idle.rss_mib),
        idle,
        loaded,
    })
}
