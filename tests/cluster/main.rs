//! The service on a real 3-node RabbitMQ cluster with quorum queues (issue 11): a node
//! killed with `kill -9` under load from two instances, first the node each instance is
//! connected to, then the node leading the due queue.
//!
//! The instances run their sweeper every few seconds, as a cluster deployment should:
//! when the due queue's leader dies, RabbitMQ 3.10's at-least-once dead-lettering can
//! hold the expired timers for minutes (README "Several instances and a broker
//! cluster"), and the sweeper is what then cancels their orders in time. Each scenario
//! prints how many orders it cancelled and the cache queues' dead-letter backlog.
//!
//! It boots three extra RabbitMQ nodes on this machine (apart from the machine's own
//! broker, see `harness.rs`), which is heavy on 2 cores, so it is ignored in the
//! parallel run and run serially by `scripts/test`:
//!
//! ```text
//! cargo test --test cluster -- --ignored --test-threads=1 --nocapture
//! ```
#![allow(dead_code)]

#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/chaos/load.rs"]
mod load;

mod harness;

use std::time::Duration;

use order_timeout::broker::QueueType;
use order_timeout::config::Config;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

use harness::{Cluster, Node};
use helpers::{TestApp, eventually, poll};
use load::{Load, LoadShape, Outage, Verdict, init_logs, verify};

/// A killed node comes back this long after the kill.
const DOWN_FOR: Duration = Duration::from_secs(10);
/// Both instances must be ready again through the surviving nodes within this.
const READY_AGAIN_WITHIN: Duration = Duration::from_secs(15);
/// Bound on the lateness beyond the outage: generous for a loaded 2-core machine
/// (measured figures are in README "Several instances and a broker cluster").
const LATENESS_BEYOND_OUTAGE: Duration = Duration::from_secs(15);

/// Which node each scenario kills.
#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The node each instance is connected to, one after the other.
    EachInstancesNode,
    /// The node holding the due queue's leader.
    DueQueueLeader,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a 3-node RabbitMQ cluster; run serially by scripts/test"]
async fn a_cluster_node_killed_under_load_loses_no_timer_and_cancels_none_early() {
    init_logs();
    let booting = Instant::now();
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("cluster start");
    println!(
        "3-node cluster up in {:.1} s",
        booting.elapsed().as_secs_f64()
    );
    let first = node_killed_under_load(&cluster, Victim::EachInstancesNode).await;
    let second = node_killed_under_load(&cluster, Victim::DueQueueLeader).await;
    for verdict in [first, second] {
        assert!(
            verdict.max_lateness_beyond_outage_ms < LATENESS_BEYOND_OUTAGE.as_millis() as i64,
            "{verdict:?}"
        );
    }
}

/// How often the sweeper runs on the cluster, and how overdue a row must be before it
/// cancels it. On RabbitMQ 3.10 the at-least-once dead-lettering of a cache queue stalls
/// for minutes when the due queue's leader is killed (the expired timers wait in the
/// cache queue's dead-letter backlog, `messages_dlx`, invisible to `list_queues`); the
/// sweeper is what bounds the lateness then, as in production (README "Several
/// instances and a broker cluster"). The test's other settings keep it an hour away.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
const SWEEP_GRACE: Duration = Duration::from_secs(3);

/// Settings of every instance on the cluster: all nodes, quorum queues, the sweeper as
/// a cluster deployment runs it.
fn on_cluster(cluster: &Cluster) -> impl Fn(&mut Config) + Clone {
    let url = cluster.amqp_url();
    move |config: &mut Config| {
        config.amqp_url = url.clone();
        config.queue_type = QueueType::Quorum;
        config.sweep_interval = SWEEP_INTERVAL;
        config.sweep_grace = SWEEP_GRACE;
    }
}

/// How many entities the sweepers have cancelled so far (`order_timeout_swept_total`):
/// the timers the broker did not deliver in time. The instances of a test run in one
/// process and share its metrics recorder, so one instance's `/metrics` counts them all.
async fn swept(app: &TestApp) -> u64 {
    let Ok(response) = app.client.get(app.url("/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("order_timeout_swept_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Two instances under load; the victim node(s) killed for 10 s each; then the check
/// that nothing was lost, nothing cancelled early, every create answered 201.
async fn node_killed_under_load(cluster: &Cluster, victim: Victim) -> Verdict {
    let settings = on_cluster(cluster);
    let app = TestApp::spawn_observing(&cluster.nodes[0].url(), settings.clone()).await;
    app.wait_ready().await;
    let second = app.spawn_instance(settings).await;
    let instances = vec![app.instance.address.clone(), second.address.clone()];
    for address in &instances {
        assert!(
            node_of(&app, address).await.is_some(),
            "{address} never ready"
        );
    }
    let events = app.observe_events().await;
    let swept_before = swept(&app).await;
    let shape = LoadShape {
        // Two workers per instance, each creating every 20 ms; a third paid.
        workers: 4,
        interval: Duration::from_millis(20),
        pay_one_in: 3,
        ..LoadShape::default()
    };
    let load = Load::start(instances.clone(), shape);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let victims: Vec<Node> = match victim {
        Victim::EachInstancesNode => {
            let mut ports = Vec::new();
            for address in &instances {
                let port = node_of(&app, address).await.expect("instance ready");
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            ports
                .iter()
                .map(|port| cluster.node_on_port(*port).expect("a cluster node").clone())
                .collect()
        }
        Victim::DueQueueLeader => {
            let leader = cluster
                .leader_of(&app.topology.due_queue)
                .expect("the due queue has a leader")
                .clone();
            vec![leader]
        }
    };
    let mut outages = Vec::new();
    for node in victims {
        outages.push(kill_and_restart(&app, &instances, node).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = load.finish().await;
    stats.assert_http_never_failed();
    let not_201: Vec<(&String, &u64)> = stats
        .answers
        .iter()
        .filter(|(key, _)| key.starts_with("create ") && key.as_str() != "create 201")
        .collect();
    assert!(not_201.is_empty(), "creates not answered 201: {not_201:?}");
    let settled = eventually(Duration::from_secs(40), || async {
        app.count_orders("pending").await == 0
    })
    .await;
    if !settled {
        let queues = cluster.describe_queues(&app.topology.prefix);
        let pending = app.count_orders("pending").await;
        let outbox: i64 = sqlx::query_scalar("select count(*) from outbox")
            .fetch_one(&app.pool)
            .await
            .expect("outbox rows");
        panic!(
            "{victim:?}: {pending} orders still pending 40 s after the load, {outbox} outbox rows left; queues:\n{queues}"
        );
    }
    let verdict = verify(
        &app,
        &format!("{victim:?} killed"),
        &events,
        &stats,
        &outages,
        Duration::from_secs(40),
    )
    .await;
    println!(
        "{victim:?} killed: {} orders cancelled by the sweeper; dead-letter backlog now:\n{}",
        swept(&app).await.saturating_sub(swept_before),
        cluster.nodes[0].dead_letter_backlog(&format!("{}.cache", app.topology.prefix))
    );
    verdict
}

/// kill -9 of `node`'s VM; asserts both instances are ready through another node within
/// 15 s; boots the node again 10 s after the kill. The outage runs from the kill until
/// the node is back.
async fn kill_and_restart(app: &TestApp, instances: &[String], node: Node) -> Outage {
    let start = app.db_now().await;
    let killed = Instant::now();
    let victim = node.clone();
    tokio::task::spawn_blocking(move || victim.kill_vm())
        .await
        .expect("kill");
    println!("killed {} (port {})", node.name, node.port);
    let victim = node.clone();
    let restart = tokio::spawn(async move {
        tokio::time::sleep_until(killed + DOWN_FOR).await;
        tokio::task::spawn_blocking(move || victim.boot()).await
    });
    for address in instances {
        let elsewhere = eventually(
            READY_AGAIN_WITHIN.saturating_sub(killed.elapsed()),
            || async {
                node_now(app, address)
                    .await
                    .is_some_and(|port| port != node.port)
            },
        )
        .await;
        assert!(
            elsewhere,
            "{address} not ready through a surviving node within {READY_AGAIN_WITHIN:?} of the kill of {}",
            node.name
        );
        println!(
            "{address} ready through another node {} ms after the kill",
            killed.elapsed().as_millis()
        );
    }
    restart.await.expect("restart task").expect("boot");
    println!(
        "{} back {} ms after the kill",
        node.name,
        killed.elapsed().as_millis()
    );
    Outage {
        start,
        end: app.db_now().await,
    }
}

/// The AMQP port of the node `address` is ready through, waiting up to 15 s.
async fn node_of(app: &TestApp, address: &str) -> Option<u16> {
    poll(READY_AGAIN_WITHIN, || node_now(app, address)).await
}

/// The AMQP port of the node `address` is ready through right now, if it is ready.
async fn node_now(app: &TestApp, address: &str) -> Option<u16> {
    let response = app
        .client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    let node = body["broker_node"].as_str()?;
    // "127.0.0.1:5681/%2f"
    node.split('/').next()?.rsplit(':').next()?.parse().ok()
}
