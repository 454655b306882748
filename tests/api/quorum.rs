//! Quorum-queue semantics the service relies on, on the machine's single broker (a quorum
//! queue works on one node):
//! - a publish refused by `x-overflow=reject-publish` (the overflow the timer queues
//!   declare for at-least-once dead-lettering) is nacked, and the relay keeps its outbox
//!   row and publishes it once the queue has room again;
//! - a delivery limit (`x-delivery-limit`, here as a policy) never drops a timer that
//!   keeps failing: a failed delivery is republished to a retry tier and acked, never
//!   handed back to the broker, so its delivery count never grows, and it ends in
//!   `failed_messages` (the due queue has no dead-letter exchange: a message over the
//!   limit would be gone).

use std::process::Command;
use std::time::Duration;

use order_timeout::broker::QueueType;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, poll};

/// A RabbitMQ policy on the machine's broker, matching only one test's queues; cleared
/// on drop, a failing test included.
struct Policy {
    name: String,
}

impl Policy {
    /// `rabbitmqctl set_policy --apply-to queues name pattern definition`.
    fn set(name: &str, pattern: &str, definition: &str) -> Self {
        let status = Command::new("rabbitmqctl")
            .args([
                "set_policy",
                "--apply-to",
                "queues",
                name,
                pattern,
                definition,
            ])
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            status.status.success(),
            "set_policy {name} failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        Self {
            name: name.to_owned(),
        }
    }
}

impl Policy {
    /// Whether the broker applies this policy to `queue` (`list_queues name policy`).
    fn applies_to(&self, queue: &str) -> bool {
        let Ok(output) = Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "--quiet",
                "--no-table-headers",
                "name",
                "policy",
            ])
            .output()
        else {
            return false;
        };
        String::from_utf8_lossy(&output.stdout).lines().any(|line| {
            let mut fields = line.split_whitespace();
            fields.next() == Some(queue) && fields.next() == Some(self.name.as_str())
        })
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["clear_policy", &self.name])
            .output();
    }
}

/// Outbox rows still holding something of `entity`.
async fn outbox_rows_of(app: &TestApp, entity: &str) -> i64 {
    let id: Uuid = entity.parse().expect("entity id");
    sqlx::query_scalar("select count(*) from outbox where entity_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("outbox rows")
}

#[tokio::test]
async fn a_timer_nacked_by_a_full_quorum_cache_queue_keeps_its_outbox_row_until_there_is_room() {
    let mut policy = None;
    let app = TestApp::spawn_with(|config| {
        config.queue_type = QueueType::Quorum;
        // Long enough that the queue stays full while the later timers are refused.
        config.order_timeout = Duration::from_secs(10);
        let prefix = regex_escape(&config.queue_prefix);
        policy = Some(Policy::set(
            &format!("{}.full", config.queue_prefix),
            &format!("^{prefix}\\.cache\\.order\\."),
            r#"{"max-length":1}"#,
        ));
    })
    .await;
    let cache = app.topology.cache_queue("order.10000");

    // Two timers fill the queue past its limit of one: RabbitMQ accepts the one that
    // crosses the limit, then tells publishers to stop.
    let first = app.create_order().await;
    let second = app.create_order().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.queue_depth(&cache).await >= 2
        })
        .await,
        "the first two timers never reached {cache}"
    );

    // These two are refused; the waybill after them (another queue) is published.
    let refused = [app.create_order().await, app.create_order().await];
    let waybill = app.create_waybill().await;
    let waybill_id = waybill["id"].as_str().expect("waybill id").to_owned();
    assert!(
        eventually(Duration::from_secs(10), || async {
            outbox_rows_of(&app, &waybill_id).await == 0
        })
        .await,
        "the waybill written after the refused orders was never published"
    );
    // The relay goes in id order, so it tried the refused rows before the waybill's:
    // the broker's nack left them in the outbox.
    for order in &refused {
        let id = order["id"].as_str().expect("order id");
        assert!(
            outbox_rows_of(&app, id).await > 0,
            "order {id}'s outbox row is gone although its queue was full"
        );
        assert_eq!(app.order_status(id).await, "pending");
    }

    // The first two expire and leave: room again, so the kept rows are published (by
    // now late, straight to the due queue) and every order is cancelled by its timer
    // (the sweeper is an hour away in the test settings).
    let orders = [&first, &second, &refused[0], &refused[1]];
    for order in orders {
        let id = order["id"].as_str().expect("order id");
        app.wait_for_order_status(id, "cancelled", Duration::from_secs(40))
            .await;
    }
    let drained = eventually(Duration::from_secs(10), || async {
        app.outbox_rows().await == 0
    })
    .await;
    assert!(drained, "the outbox never drained");
    let failed: i64 = sqlx::query_scalar("select count(*) from failed_messages")
        .fetch_one(&app.pool)
        .await
        .expect("failed messages");
    assert_eq!(failed, 0, "nothing may end in failed_messages");
    drop(policy);
}

#[tokio::test]
async fn a_timer_failing_past_the_delivery_limit_ends_in_failed_messages_not_dropped() {
    let mut policy = None;
    let app = TestApp::spawn_with(|config| {
        config.queue_type = QueueType::Quorum;
        config.database_lock_timeout = Duration::from_millis(200);
        let prefix = regex_escape(&config.queue_prefix);
        // The smallest limit: any delivery the broker counts twice would be dropped.
        policy = Some(Policy::set(
            &format!("{}.limit", config.queue_prefix),
            &format!("^{prefix}\\.(due|retry\\..+)$"),
            r#"{"delivery-limit":1}"#,
        ));
    })
    .await;
    let limit = policy.as_ref().expect("policy set");
    assert!(
        limit.applies_to(&app.topology.due_queue),
        "the delivery limit is not applied to the due queue"
    );
    let order = app.create_order().await;
    let id = order["id"].as_str().expect("order id").to_owned();
    // Hold the order's row lock: every cancel attempt times out on it (transient), on the
    // first delivery and after each retry tier.
    let mut blocker = app.pool.begin().await.expect("transaction");
    sqlx::query("select 1 from orders where id = $1 for update")
        .bind(Uuid::parse_str(&id).expect("uuid"))
        .execute(&mut *blocker)
        .await
        .expect("row lock");
    let stored = poll(Duration::from_secs(30), || async {
        let (status, page) = app
            .admin(Method::GET, "/admin/failed-messages?limit=200")
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
    })
    .await;
    blocker.rollback().await.expect("rollback");
    let row: Value = stored.expect("the timer was dropped instead of stored as failed");
    assert_eq!(row["message_id"], id.as_str());
    assert_eq!(row["error_class"], "transient");
    assert_eq!(row["attempts"], 3, "the first try and one per retry tier");
    assert_eq!(app.order_status(&id).await, "pending");
    assert_eq!(app.queue_depth(&app.topology.due_queue).await, 0);
    drop(policy);
}

/// `s` with the characters a RabbitMQ policy pattern (a regular expression) treats
/// specially escaped; a test prefix holds letters, digits, `_` and `.`.
fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

#[tokio::test]
async fn switching_a_running_system_from_classic_to_quorum_queues_loses_no_pending_timer() {
    // The classic deployment, with timers waiting in its classic cache queue.
    let mut app = TestApp::spawn_with(|config| {
        config.order_timeout = Duration::from_secs(4);
    })
    .await;
    let classic_prefix = app.topology.prefix.clone();
    let classic_cache = app.topology.cache_queue("order.4000");
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            app.create_order().await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.queue_depth(&classic_cache).await == 5
        })
        .await,
        "the timers never reached {classic_cache}"
    );
    // It stops; its timers stay in the classic queues.
    app.instance.stop().await.expect("classic instance stopped");

    // The quorum deployment: a new prefix (under the test's, so the test's clean-up
    // removes it), draining the classic one.
    let quorum = app
        .spawn_instance(|config| {
            config.order_timeout = Duration::from_secs(4);
            config.queue_type = QueueType::Quorum;
            config.queue_prefix = format!("{classic_prefix}.q");
            config.drain_queue_prefix = Some(classic_prefix.clone());
        })
        .await;
    let later = app
        .send(
            app.client
                .post(format!("{}/orders", quorum.address))
                .json(&crate::helpers::order_body()),
        )
        .await;
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.text);
    let later = later.body;
    ids.push(later["id"].as_str().expect("id").to_owned());

    // Every order is cancelled by its timer (the sweeper is an hour away), none early.
    for id in &ids {
        app.wait_for_order_status(id, "cancelled", Duration::from_secs(20))
            .await;
    }
    let early: i64 = sqlx::query_scalar(
        "select count(*) from orders where status = 'cancelled' and cancelled_at < expires_at",
    )
    .fetch_one(&app.pool)
    .await
    .expect("early cancels");
    assert_eq!(early, 0, "cancelled before their deadline");
    assert_eq!(app.queue_depth(&classic_cache).await, 0);
    let failed: i64 = sqlx::query_scalar("select count(*) from failed_messages")
        .fetch_one(&app.pool)
        .await
        .expect("failed messages");
    assert_eq!(failed, 0, "nothing may end in failed_messages");
}
