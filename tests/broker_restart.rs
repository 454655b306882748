//! A real broker restart (`rabbitmqctl stop_app` / `start_app`) while orders come due.
//!
//! It stops the broker every other test uses, so it is ignored in the default parallel
//! run and run on its own, serially:
//!
//! ```text
//! cargo test --test broker_restart -- --ignored --test-threads=1
//! ```
#![allow(dead_code)]

#[path = "api/helpers.rs"]
mod helpers;
#[path = "api/chaos/load.rs"]
mod load;

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use helpers::{TestApp, eventually};
use load::{Load, LoadShape, Outage, init_logs, verify};

/// Stops the broker application; `start_app` runs when it is dropped, whatever happens
/// in between (a panicking test included), so the broker is never left down.
struct StoppedBroker;

impl StoppedBroker {
    fn stop() -> Self {
        // Created first: even a failing stop_app is followed by a start_app.
        let guard = StoppedBroker;
        rabbitmqctl("stop_app");
        guard
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
        rabbitmqctl("await_startup");
    }
}

fn rabbitmqctl(command: &str) {
    match Command::new("rabbitmqctl").arg(command).output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => eprintln!(
            "rabbitmqctl {command} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => eprintln!("rabbitmqctl {command} could not run: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared broker; run serially by .ci/run"]
async fn a_broker_restart_while_orders_come_due_loses_nothing() {
    init_logs();
    let app = TestApp::spawn().await;
    let events = app.observe_events().await;
    let load = Load::start(vec![app.instance.address.clone()], LoadShape::default());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let start = app.db_now().await;
    let stopping = Instant::now();
    let stopped = tokio::task::spawn_blocking(StoppedBroker::stop)
        .await
        .expect("stop_app");
    println!("stop_app took {} ms", stopping.elapsed().as_millis());
    let down = eventually(Duration::from_secs(5), || async {
        let (status, body) = app.get("/readyz").await;
        status == StatusCode::SERVICE_UNAVAILABLE && body["checks"]["broker"] == "down"
    })
    .await;
    // Orders keep coming and come due while the broker is away.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let starting = Instant::now();
    tokio::task::spawn_blocking(move || drop(stopped))
        .await
        .expect("start_app");
    println!("start_app took {} ms", starting.elapsed().as_millis());
    let outage = Outage {
        start,
        end: app.db_now().await,
    };
    assert!(down, "/readyz did not name the broker while it was stopped");

    let back = Instant::now();
    app.wait_ready().await;
    println!(
        "ready again {} ms after the broker was back",
        back.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = load.finish().await;
    stats.assert_http_never_failed();
    let verdict = verify(
        &app,
        "broker restart",
        &events,
        &stats,
        &[outage],
        Duration::from_secs(40),
    )
    .await;
    assert!(
        verdict.max_lateness_beyond_outage_ms < 20_000,
        "{verdict:?}"
    );
}
