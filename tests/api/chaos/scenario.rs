//! The one outage script of the chaos tests and the broker restart test: start the load,
//! cut a dependency, check `/readyz` names it, keep it away, restore it, wait until the
//! service is ready again, stop the load and assert that nothing was lost and that the
//! cancellations were not later than allowed beyond the outage.
//!
//! Included by `chaos.rs` and by `tests/broker_restart.rs` (a test binary of its own),
//! next to `load.rs` in both.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use super::load::{Load, LoadShape, Outage, Stats, Verdict, verify};
use crate::helpers::{TestApp, eventually};

/// A fault the scenario applies and lifts: a proxy cut or stalled, a broker stopped.
pub trait Fault {
    /// Makes the dependency unreachable.
    async fn cut(&mut self);
    /// Makes it reachable again.
    async fn restore(&mut self);
}

/// How an outage is run and what it must not exceed.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Names the run in the printed figures and in failures.
    pub label: &'static str,
    /// The dependency `/readyz` must name while it is away ("broker", "database").
    pub dependency: &'static str,
    /// How long `/readyz` may take to name it once the fault is applied.
    pub named_within: Duration,
    /// Load before the first cut, so orders are in every state when it comes.
    pub warmup: Duration,
    /// How many times the dependency goes away.
    pub cuts: usize,
    /// How long each outage lasts, from the start of the cut.
    pub during: Duration,
    /// Load after each recovery.
    pub after: Duration,
    /// How long every order may take to settle once the load stopped.
    pub settle: Duration,
    /// Latest cancellation allowed after its deadline or the end of its outage.
    pub max_lateness_beyond_outage: Duration,
}

impl Scenario {
    /// One 10 s outage of `dependency` after 3 s of load; 15 s of lateness allowed.
    pub fn new(label: &'static str, dependency: &'static str) -> Self {
        Self {
            label,
            dependency,
            named_within: Duration::from_secs(3),
            warmup: Duration::from_secs(3),
            cuts: 1,
            during: Duration::from_secs(10),
            after: Duration::from_secs(2),
            settle: Duration::from_secs(25),
            max_lateness_beyond_outage: Duration::from_secs(15),
        }
    }

    /// Runs the load through the outages of `fault` against `app` (its events observed
    /// on `events`), asserts that no request failed and nothing was lost, and returns
    /// what the load saw for the test's own assertions.
    pub async fn run(&self, app: &TestApp, events: &str, fault: &mut impl Fault) -> Stats {
        let load = Load::start(vec![app.instance.address.clone()], LoadShape::default());
        tokio::time::sleep(self.warmup).await;
        let mut outages = Vec::new();
        for _ in 0..self.cuts {
            let start = app.db_now().await;
            let cut = Instant::now();
            fault.cut().await;
            println!("{}: cut took {} ms", self.label, cut.elapsed().as_millis());
            assert_not_ready_because_of(app, self.dependency, self.named_within).await;
            tokio::time::sleep(self.during.saturating_sub(cut.elapsed())).await;
            fault.restore().await;
            outages.push(Outage {
                start,
                end: app.db_now().await,
            });
            let back = Instant::now();
            app.wait_ready().await;
            println!(
                "{}: ready again {} ms after the outage ended",
                self.label,
                back.elapsed().as_millis()
            );
            tokio::time::sleep(self.after).await;
        }
        let stats = load.finish().await;
        stats.assert_http_never_failed();
        let lateness = (self.settle, self.max_lateness_beyond_outage);
        assert_nothing_lost(app, self.label, events, &stats, &outages, lateness).await;
        stats
    }
}

/// Waits up to `settle` (the first of `limits`) for every order to settle and every
/// event to be published, asserts that nothing was lost (see `load::verify`) and that no
/// cancellation came later than the second of `limits` after its deadline or the end of
/// the outage it fell in.
pub async fn assert_nothing_lost(
    app: &TestApp,
    label: &str,
    events: &str,
    stats: &Stats,
    outages: &[Outage],
    (settle, max_lateness_beyond_outage): (Duration, Duration),
) -> Verdict {
    let verdict = verify(app, label, events, stats, outages, settle).await;
    let allowed = max_lateness_beyond_outage.as_millis() as i64;
    assert!(
        verdict.max_lateness_beyond_outage_ms < allowed,
        "{label}: {verdict:?}"
    );
    verdict
}

/// `/readyz` of `app` answers 503 naming `dependency` within `within`.
pub async fn assert_not_ready_because_of(app: &TestApp, dependency: &str, within: Duration) {
    let named = eventually(within, || async {
        let (status, body) = app.get("/readyz").await;
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["checks"][dependency] == "down"
            && body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(dependency)
    })
    .await;
    assert!(named, "/readyz did not answer 503 naming the {dependency}");
}
