//! `AMQP_URL` as a list of nodes: the service reaches any node that answers, moves to
//! another when its node goes away, and names the node in use (never the password).
//! The "nodes" are fault proxies in front of the machine's broker, so nothing shared
//! is disturbed; the real cluster test lives with the cluster harness.

use std::time::Duration;

use order_timeout::startup::Application;
use reqwest::StatusCode;

use crate::helpers::{AMQP_URL, TestApp, eventually, id_of, poll, via_port};
use crate::proxy::FaultProxy;

const RABBITMQ: &str = "127.0.0.1:5672";
/// Nothing listens on port 1: connections are refused at once.
const DEAD_NODE: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
const WITHIN: Duration = Duration::from_secs(15);

/// The node `/readyz` names once it answers 200.
async fn ready_node(app: &TestApp) -> Option<String> {
    poll(WITHIN, || async {
        let (status, body) = app.get("/readyz").await;
        (status == StatusCode::OK)
            .then(|| body["broker_node"].as_str().map(str::to_owned))
            .flatten()
    })
    .await
}

/// A timer armed now fires through whichever node the service uses.
async fn assert_a_timer_fires(app: &TestApp) {
    let id = id_of(&app.create_order().await);
    app.wait_for_order_status(&id, "cancelled", WITHIN).await;
}

#[tokio::test]
async fn a_list_whose_first_node_is_dead_still_connects_through_the_second() {
    let live = FaultProxy::start(RABBITMQ).await;
    let list = format!("{DEAD_NODE},{}", via_port(AMQP_URL, live.port()));
    let app = TestApp::spawn_with(|c| c.amqp_url = list).await;
    let node = ready_node(&app)
        .await
        .expect("never ready through the live node");
    assert_eq!(node, format!("127.0.0.1:{}/%2f", live.port()));

    // The first round may have started at the live node (the offset is random); after
    // a loss the next round starts after it, at the dead node, and must get past it.
    live.down();
    let noticed = eventually(WITHIN, || async {
        app.get("/readyz").await.1["checks"]["broker"] == "down"
    })
    .await;
    assert!(noticed, "the loss of the node was never noticed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    live.up();
    let again = ready_node(&app).await.expect("never ready again");
    assert_eq!(again, node);
    assert_a_timer_fires(&app).await;
}

#[tokio::test]
async fn an_instance_moves_to_another_node_when_its_node_goes_away() {
    let nodes = [
        FaultProxy::start(RABBITMQ).await,
        FaultProxy::start(RABBITMQ).await,
    ];
    let list = nodes
        .iter()
        .map(|n| via_port(AMQP_URL, n.port()))
        .collect::<Vec<_>>()
        .join(", ");
    let app = TestApp::spawn_with(|c| c.amqp_url = list).await;
    let first = ready_node(&app).await.expect("never ready");
    let (used, other) = if first.contains(&nodes[0].port().to_string()) {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };

    used.down();
    let moved = poll(WITHIN, || async {
        let (status, body) = app.get("/readyz").await;
        let node = body["broker_node"].as_str().unwrap_or_default().to_owned();
        (status == StatusCode::OK && node.contains(&other.port().to_string())).then_some(node)
    })
    .await;
    assert!(moved.is_some(), "still not on the surviving node");
    let (_, overview) = app.admin(reqwest::Method::GET, "/admin/overview").await;
    assert_eq!(overview["broker"]["node"], moved.unwrap().as_str());
    assert_a_timer_fires(&app).await;
}

#[tokio::test]
async fn a_bad_entry_fails_the_start_naming_its_position_not_its_password() {
    // Checked before anything else: no database or port is touched.
    let mut config = order_timeout::config::Config::defaults();
    config.amqp_url = format!("{AMQP_URL},http://guest:hunter2@127.0.0.1:5672/%2f");
    let error = match Application::build(config).await {
        Ok(_) => panic!("a service started with an http:// broker URL"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("AMQP_URL entry 2 of 2"), "{error}");
    assert!(!error.contains("hunter2"), "the password leaked: {error}");
}
