//! The Prometheus side: the alerting rules of deploy/prometheus pass their unit tests,
//! `/metrics` of a running service passes `promtool check metrics`, and every metric the
//! rules watch is one the service really exports. These tests need `promtool` (Debian's
//! `prometheus` package; scripts/test installs it) and fail without it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use order_timeout::telemetry::METRICS;

use crate::helpers::{TestApp, poll};

const WITHIN: Duration = Duration::from_secs(20);

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs promtool (`$PROMTOOL`, else from PATH) with `args`, feeding it `stdin`.
fn promtool(args: &[&str], stdin: &[u8]) -> Output {
    let program = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let mut child = Command::new(&program)
        .args(args)
        .current_dir(repository())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot run {program} ({error}): scripts/test installs it (Debian's prometheus package)")
        });
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).expect("promtool reads stdin");
    }
    child.wait_with_output().expect("promtool runs")
}

fn explain(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_alerting_rules_are_valid_and_pass_their_unit_tests() {
    let checked = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], b"");
    assert!(checked.status.success(), "{}", explain(&checked));
    let tested = promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"], b"");
    assert!(tested.status.success(), "{}", explain(&tested));
}

/// The `order_timeout_*` metric names in `text`, without histogram suffixes.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("order_timeout_")
        .map(|(at, _)| {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).map(str::to_owned))
                .unwrap_or(name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn the_metrics_page_passes_promtool_and_has_every_metric_the_rules_watch() {
    let app = TestApp::spawn().await;
    app.create_order().await;
    // The order's timer cancels it after ORDER_TIMEOUT (2 s): its lateness is recorded.
    let page = poll(WITHIN, || async {
        let page = app.metrics_text().await;
        (page.contains("order_timeout_cancel_lateness_seconds_bucket")
            && page.contains("order_timeout_parking_queue_messages"))
        .then_some(page)
    })
    .await
    .expect("a timeout cancel's lateness and the parking depth in /metrics");

    let linted = promtool(&["check", "metrics"], page.as_bytes());
    assert!(linted.status.success(), "{}", explain(&linted));
    assert!(
        linted.stdout.is_empty() && linted.stderr.is_empty(),
        "{}",
        explain(&linted)
    );

    let rules = std::fs::read_to_string(repository().join("deploy/prometheus/alerts.yml"))
        .expect("alerts.yml");
    let exported = metric_names(&page);
    for watched in metric_names(&rules) {
        assert!(
            exported.contains(&watched),
            "alerts.yml watches {watched}, which /metrics does not export: {exported:?}"
        );
    }
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("readable source dir")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn every_metric_the_service_records_has_help_text() {
    let mut files = Vec::new();
    sources(&repository().join("src"), &mut files);
    let described: Vec<&str> = METRICS.iter().map(|(_, name, _)| *name).collect();
    let mut recorded = Vec::new();
    for file in files {
        let code = std::fs::read_to_string(&file).expect("readable source");
        for macro_call in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in code.match_indices(macro_call) {
                let rest = code[at + macro_call.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    recorded.push((name.to_owned(), file.clone()));
                }
            }
        }
    }
    assert!(
        recorded.len() > 10,
        "the scan finds the metrics: {recorded:?}"
    );
    for (name, file) in recorded {
        assert!(
            described.contains(&name.as_str()),
            "{name} (in {}) has no help text in telemetry::METRICS",
            file.display()
        );
    }
}
