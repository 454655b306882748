//! The create-and-pay mix the chaos tests run through a fault: workers creating orders
//! at a steady pace over one or more instances, a share of them paid after a random
//! delay (past the deadline some payments race the timer and are refused), and every
//! answer recorded so a test can check afterwards that nothing was lost.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::closed_loop::{Stop, Throughput, closed_loop};
use crate::{Answer, Api};

/// Longest answer any request may take, whatever is down.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// When a request of the mix gives up waiting (it then counts as no answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Shape of the load.
#[derive(Debug, Clone)]
pub struct LoadShape {
    /// Concurrent creators.
    pub workers: usize,
    /// Pause between two creates of one worker.
    pub interval: Duration,
    /// A paid order is paid after a random delay below this (past the deadline some
    /// payments race the timer and are refused).
    pub pay_within: Duration,
    /// One order in this many is paid.
    pub pay_one_in: u64,
}

impl Default for LoadShape {
    fn default() -> Self {
        Self {
            workers: 3,
            interval: Duration::from_millis(20),
            pay_within: Duration::from_millis(2300),
            pay_one_in: 2,
        }
    }
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Orders answered 201.
    pub created: Vec<Uuid>,
    /// Orders whose payment answered 200.
    pub paid: Vec<Uuid>,
    /// Count of every answer: "create 201", "pay 409 order_expired", "create 503 database_unavailable".
    pub answers: BTreeMap<String, u64>,
    /// The slowest answer.
    pub slowest: Duration,
    /// Answers slower than `ANSWER_WITHIN`, or no answer at all in time.
    pub too_slow: Vec<String>,
    /// 500s and 503s that are not `database_unavailable`.
    pub bad_answers: Vec<String>,
    /// Requests that got no HTTP answer (connection refused or reset), by target.
    pub transport_errors: BTreeMap<String, u64>,
    /// The first few of those errors in full (`what path: error`), so a failure says why.
    pub transport_error_samples: Vec<String>,
}

impl Stats {
    /// How many answers of `what` ("create 201") were seen.
    pub fn count(&self, what: &str) -> u64 {
        self.answers.get(what).copied().unwrap_or(0)
    }

    /// Answers that must never happen under any fault: slow, 500, unexpected 503.
    pub fn assert_always_answered_well(&self) {
        assert!(
            self.too_slow.is_empty(),
            "requests answered slower than {ANSWER_WITHIN:?}: {:?}",
            first(&self.too_slow)
        );
        assert!(
            self.bad_answers.is_empty(),
            "bad answers: {:?}",
            first(&self.bad_answers)
        );
    }

    /// Neither slow nor bad answers, and every request reached the service.
    pub fn assert_http_never_failed(&self) {
        self.assert_always_answered_well();
        assert!(
            self.transport_errors.is_empty(),
            "requests without an answer: {:?}, first: {:?}",
            self.transport_errors,
            self.transport_error_samples
        );
    }

    /// Never answered badly, and only requests to `target` (an instance that was
    /// stopped or killed) went without an answer.
    pub fn assert_unanswered_only_by(&self, target: &str) {
        self.assert_always_answered_well();
        assert!(
            self.transport_errors.keys().all(|t| t == target),
            "requests without an answer: {:?}, first: {:?}",
            self.transport_errors,
            self.transport_error_samples
        );
    }

    /// Records the outcome of one request (`what` is "create" or "pay").
    fn note(
        &mut self,
        what: &str,
        target: &str,
        path: &str,
        outcome: &Result<Answer, reqwest::Error>,
        elapsed: Duration,
    ) {
        self.slowest = self.slowest.max(elapsed);
        if elapsed > ANSWER_WITHIN {
            self.too_slow
                .push(format!("{what} {path} took {} ms", elapsed.as_millis()));
        }
        let answer = match outcome {
            Ok(answer) => answer,
            Err(error) => {
                *self.transport_errors.entry(target.to_owned()).or_default() += 1;
                if self.transport_error_samples.len() < 5 {
                    // `{:#}`-like chain: reqwest's top error hides the cause (reset, closed).
                    let mut text = format!("{what} {target}{path}: {error}");
                    let mut source = std::error::Error::source(error);
                    while let Some(cause) = source {
                        text.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    self.transport_error_samples.push(text);
                }
                return;
            }
        };
        let (status, code) = (answer.status, answer.code());
        let key = if code.is_empty() {
            format!("{what} {}", status.as_u16())
        } else {
            format!("{what} {} {code}", status.as_u16())
        };
        *self.answers.entry(key).or_default() += 1;
        let acceptable_503 =
            status == StatusCode::SERVICE_UNAVAILABLE && code == "database_unavailable";
        if status.is_server_error() && !acceptable_503 {
            self.bad_answers
                .push(format!("{what} {path}: {status} {}", answer.body));
        }
    }
}

fn first(items: &[String]) -> &[String] {
    &items[..items.len().min(5)]
}

/// What the workers share.
struct Shared {
    /// The instances requests are spread over; `retarget` replaces them.
    targets: RwLock<Vec<Api>>,
    stats: Mutex<Stats>,
    /// The payments scheduled and not yet answered.
    payments: TaskTracker,
    shape: LoadShape,
}

impl Shared {
    fn target(&self, n: u64) -> Api {
        let targets = self.targets.read().expect("targets");
        targets[n as usize % targets.len()].clone()
    }

    /// One request through `call`, recorded; the answer when there was one.
    async fn send<F, Fut>(&self, what: &str, path: &str, target: &Api, call: F) -> Option<Answer>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Answer, reqwest::Error>>,
    {
        let started = Instant::now();
        let outcome = call().await;
        let elapsed = started.elapsed();
        let mut stats = self.stats.lock().expect("stats");
        stats.note(what, target.base(), path, &outcome, elapsed);
        outcome.ok()
    }
}

/// A running load; `finish` stops it and returns what it saw.
pub struct Load {
    stop: CancellationToken,
    shared: Arc<Shared>,
    creators: JoinHandle<Throughput>,
    started: Instant,
}

impl Load {
    /// Starts `shape.workers` creators spreading their requests over `targets` (base URLs).
    pub fn start(targets: Vec<String>, shape: LoadShape) -> Self {
        let client = Api::new("", REQUEST_TIMEOUT);
        let shared = Arc::new(Shared {
            targets: RwLock::new(targets.iter().map(|t| client.at(t)).collect()),
            stats: Mutex::default(),
            payments: TaskTracker::new(),
            shape: shape.clone(),
        });
        let stop = CancellationToken::new();
        let creators = {
            let (shared, stop) = (shared.clone(), Stop::Until(stop.clone()));
            let progress = Arc::new(AtomicU64::new(0));
            tokio::spawn(closed_loop(shape.workers, stop, progress, move |n| {
                create_and_maybe_pay(shared.clone(), n)
            }))
        };
        Self {
            stop,
            shared,
            creators,
            started: Instant::now(),
        }
    }

    /// Sends every later request to these targets instead.
    pub fn retarget(&self, targets: Vec<String>) {
        let mut current = self.shared.targets.write().expect("targets");
        let client = current
            .first()
            .cloned()
            .unwrap_or_else(|| Api::new("", REQUEST_TIMEOUT));
        *current = targets.iter().map(|t| client.at(t)).collect();
    }

    /// Stops creating, waits for the payments still scheduled, and returns the stats.
    pub async fn finish(self) -> Stats {
        self.stop.cancel();
        self.creators.await.expect("load workers");
        self.shared.payments.close();
        self.shared.payments.wait().await;
        let stats = std::mem::take(&mut *self.shared.stats.lock().expect("stats"));
        println!(
            "load: {} orders created in {:.1} s, {} paid; answers {:?}; slowest {} ms; no answer {:?}",
            stats.created.len(),
            self.started.elapsed().as_secs_f64(),
            stats.paid.len(),
            stats.answers,
            stats.slowest.as_millis(),
            stats.transport_errors
        );
        stats
    }
}

/// One round of a creator: a create, its payment scheduled (for one order in
/// `pay_one_in`), then the pause of the shape.
async fn create_and_maybe_pay(shared: Arc<Shared>, n: u64) -> anyhow::Result<()> {
    let target = shared.target(n);
    let customer = format!("load-{}", n % shared.shape.workers.max(1) as u64);
    let amount = 100 + n as i64;
    let answer = shared
        .send("create", "/orders", &target, || {
            target.create(&customer, amount)
        })
        .await;
    if let Some(answer) = answer.filter(|a| a.status == StatusCode::CREATED) {
        let id = answer.id().expect("created order id");
        shared.stats.lock().expect("stats").created.push(id);
        // Random enough for a load: the bits of a v4 uuid.
        let (pick, delay) = Uuid::new_v4().as_u64_pair();
        if pick % shared.shape.pay_one_in.max(1) == 0 {
            let delay = delay % shared.shape.pay_within.as_millis().max(1) as u64;
            let payer = shared.clone();
            shared.payments.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let target = payer.target(n);
                let path = format!("/orders/{id}/pay");
                let answer = payer.send("pay", &path, &target, || target.pay(id)).await;
                if answer.is_some_and(|a| a.status == StatusCode::OK) {
                    payer.stats.lock().expect("stats").paid.push(id);
                }
            });
        }
    }
    tokio::time::sleep(shared.shape.interval).await;
    Ok(())
}
