//! Publisher confirms and returns. lapin attaches a `basic.return` to whichever confirm
//! it completes next on the channel; the first test shows it on a shared channel (it
//! needs a few seconds of concurrent publishing to happen), the second that the
//! service's publishers (a channel per role, one call at a time per channel) each get
//! their own outcome.

use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use order_timeout::broker::{
    self, Broker, Endpoints, Outgoing, PERSISTENT, Properties, PublishError, Publisher,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::{AMQP_URL, TestApp, eventually, id_of};

const WITHIN: Duration = Duration::from_secs(15);

/// Publishes `count` messages pipelined on `channel`, then awaits their confirms and
/// says for each whether it came back carrying a returned message.
async fn carried_returns(channel: &Channel, routing_key: &str, count: usize) -> Vec<bool> {
    let mut confirms = Vec::with_capacity(count);
    for _ in 0..count {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        let publish =
            channel.basic_publish("".into(), routing_key.into(), options, b"x", properties);
        confirms.push(publish.await.expect("publish"));
    }
    let mut carried = Vec::with_capacity(count);
    for confirm in confirms {
        carried.push(matches!(
            confirm.await.expect("confirm"),
            Confirmation::Ack(Some(_))
        ));
    }
    carried
}

#[tokio::test]
async fn lapin_hands_a_return_to_whichever_confirm_completes_next_on_a_shared_channel() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let routable = app.topology.parking_queue.clone();
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(routable.as_str().into(), options, FieldTable::default())
        .await
        .unwrap();
    let nowhere = format!("{}.nowhere", app.topology.prefix);

    // One task publishes routable persistent messages (their acks wait for the disk),
    // another unroutable ones (returned and acked at once), both on the one channel.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut foreign_returns, mut lost_returns) = (0, 0);
    while foreign_returns + lost_returns == 0 && Instant::now() < deadline {
        let (routed, returned) = tokio::join!(
            carried_returns(&channel, &routable, 20),
            carried_returns(&channel, &nowhere, 3),
        );
        foreign_returns += routed.iter().filter(|carried| **carried).count();
        lost_returns += returned.iter().filter(|carried| !**carried).count();
    }
    assert!(
        foreign_returns > 0 && lost_returns > 0,
        "in 20 s no return reached another publisher's confirm: lapin may have fixed \
         this; the per-role channels are then still harmless"
    );
}

/// A broker handle of the test's own, connected to the test's topology.
async fn connected_broker(app: &TestApp, stop: &CancellationToken) -> Broker {
    let handle = Broker::new(app.topology.clone());
    let endpoints = Endpoints::parse(AMQP_URL).unwrap();
    tokio::spawn(broker::supervise(
        handle.clone(),
        endpoints,
        Duration::ZERO,
        Default::default(),
        stop.clone(),
    ));
    assert!(eventually(Duration::from_secs(10), || async { handle.is_connected() }).await);
    handle
}

fn message(routing_key: &str) -> Outgoing<'_> {
    Outgoing {
        exchange: "",
        routing_key,
        body: b"x",
        properties: Properties::persistent(),
        mandatory: true,
    }
}

#[tokio::test]
async fn concurrent_publishers_each_get_their_own_outcome() {
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let broker = connected_broker(&app, &stop).await;
    let routable = app.topology.parking_queue.clone();
    let nowhere = format!("{}.nowhere", app.topology.prefix);
    let batch: Vec<Outgoing> = (0..20).map(|_| message(&routable)).collect();

    let three_unroutable: Vec<Outgoing> = (0..3).map(|_| message(&nowhere)).collect();
    let admin_pair = [message(&nowhere), message(&routable)];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        // The relay's batch and, side by side, an unroutable re-arm (the shape in which
        // a shared channel mixes outcomes up within seconds, see the test above) and an
        // admin requeue with one unroutable message of two.
        let (relay, retry, admin) = tokio::join!(
            broker.publish(Publisher::Relay, &batch),
            broker.publish(Publisher::Retry, &three_unroutable),
            broker.publish(Publisher::Admin, &admin_pair),
        );
        assert!(relay.is_ok(), "the relay's routable batch got {relay:?}");
        for (outcome, who, count) in [(&retry, "retry", 3), (&admin, "admin", 1)] {
            match outcome {
                Err(PublishError::Unroutable { routing_keys, .. }) => {
                    assert_eq!(routing_keys, &vec![nowhere.clone(); count], "{who}")
                }
                other => panic!("the {who} publish of unroutable messages got {other:?}"),
            }
        }
    }
    stop.cancel();
}

#[tokio::test]
async fn a_cache_queue_deleted_at_run_time_is_redeclared_and_its_timers_still_fire() {
    let app = TestApp::spawn().await;
    let first = id_of(&app.create_order().await);
    app.wait_for_order_status(&first, "cancelled", WITHIN).await;
    let (kind, timeout_ms) = app.topology.buckets[0];
    let cache = app
        .topology
        .cache_queue(&format!("{}.{timeout_ms}", kind.as_str()));
    app.channel()
        .await
        .queue_delete(cache.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the cache queue");

    let ids: Vec<String> = join_all((0..10).map(|_| app.create_order()))
        .await
        .iter()
        .map(id_of)
        .collect();
    for id in &ids {
        app.wait_for_order_status(id, "cancelled", WITHIN).await;
    }
    // Redeclared by the broker layer (a passive declare fails on a missing queue), and
    // no timer went to failed_messages on the way.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = app
        .channel()
        .await
        .queue_declare(cache.as_str().into(), passive, FieldTable::default())
        .await;
    assert!(declared.is_ok(), "{cache} was not redeclared: {declared:?}");
    let failed: i64 = sqlx::query_scalar("select count(*) from failed_messages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
}
