//! The outbox relay: publishes what committed transactions wrote to the outbox, in id
//! order, with publisher confirms, and only then deletes the rows (migrations/0004).
//!
//! The entities are split into `OUTBOX_PARTITIONS` partitions (migrations/0030); each
//! has a lease, and only its holder publishes its rows, so an entity's rows go out
//! through one relay, in order. Every relay holds its fair share (the partitions divided
//! by the relays alive) and renews it every `RENEW_EVERY`; above its share it gives
//! partitions up so a newcomer gets some. Rows are read without locks, so nothing is
//! locked while the relay waits for the broker; an instance that dies or freezes
//! (SIGSTOP, a black-holed network) stops renewing, and the others take its partitions
//! over within `LEASE_TTL` plus one poll. A relay publishes a page only while its last
//! renewal is younger than half the lease, so a frozen holder that wakes up renews
//! first, finds the partitions gone, and drops the page it had read.
//!
//! What consumers may rely on: at least once, and per entity in the order the changes
//! were written (the timer and `created` before `paid`/`cancelled`/`extended`), except
//! that a message may be delivered again after later ones when a relay died or lost its
//! lease between publishing and deleting (the next holder publishes the batch again).
//! A consumer keeps the newest state it saw (the payload carries the entity's status and
//! timestamps) and ignores a repeated `message_id`.
//!
//! The relay is woken by the store after every commit that wrote the outbox in this
//! process ([`outbox::written`]) and polls every `POLL_INTERVAL` for rows other instances
//! wrote. While the broker is disconnected it touches neither the outbox nor the lease.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::headers::DUE_AT_US;
use crate::broker::{Broker, Headers, Outgoing, Properties, PublishError, Publisher, Topology};
use crate::liveness::Heartbeat;
use crate::store::outbox::{self, Pending, Share};
use crate::store::{CallLimit, StoreError};

/// Rows published per batch.
const BATCH: i64 = 500;
/// Longest sleep between two looks at the outbox when no wake-up arrives; also how often
/// an instance without the lease tries to take it.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a lease lasts unless renewed: a dead holder is replaced within this plus one
/// poll. A page is published only within half of it after the last renewal.
const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often a relay renews its leases (and rebalances): at the first batch after this
/// long. Also how long a newcomer waits at most for the partitions given up for it.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often the relay counts the backlog for the `order_timeout_outbox_backlog` gauge.
/// The relay keeps the gauge so `/metrics`, which anyone may call, runs no query.
const BACKLOG_GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after a failed batch before trying again.
const FAILURE_PAUSE: Duration = Duration::from_millis(500);
/// First wait before a row that could not be published is tried again; doubles to
/// `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait between two tries of a row that cannot be published.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Rows deleted by this relay after which it vacuums the outbox itself, at most every
/// `VACUUM_INTERVAL`. Every create leaves a dead row once published; autovacuum may be
/// off or an hour behind (it was off on the bench's server, and the table grew by
/// 55 MB a minute at 1,000 creates/s while never holding more than 800 live rows).
/// Vacuuming after ~10,000 deletes keeps the table near that many rows' worth of pages.
const VACUUM_AFTER_ROWS: u64 = 10_000;
/// Shortest time between two vacuums of the outbox by the relay.
const VACUUM_INTERVAL: Duration = Duration::from_secs(10);
/// Rows held back at most (a few hundred bytes each); past it a failing row is simply
/// tried again on the relay's next pass over the outbox.
const MAX_HELD_BACK: usize = 10_000;

/// Why a batch was not published.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading, deleting or the lease failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Publishing failed; the rows stay in the outbox.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// What one step of the relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Published (and deleted) this many rows.
    Published(usize),
    /// Other instances hold every partition (or this one holds its fair share of none).
    NotHolder,
    /// No broker connection: nothing was read.
    Disconnected,
}

/// A relay: its identity for the lease and the rows it holds back.
pub struct Relay {
    /// The database.
    pool: PgPool,
    /// The broker.
    broker: Broker,
    /// Who holds the leases: a fresh id per relay.
    holder: Uuid,
    /// The partitions whose leases it holds, out of how many.
    share: Share,
    /// When the leases were last renewed, by this process's clock (monotonic, so a
    /// freeze shows as time passed); `None` when none are held.
    renewed: Option<Instant>,
    /// Rows that failed to publish on their own, with when to try them again and how
    /// long the next wait is (kept once due, so the wait doubles when it fails again).
    held_back: HashMap<i64, (Uuid, Instant, Duration)>,
    /// The relay pages through the outbox in id order: the last id of the page read,
    /// 0 at the start of a pass. A page of rows that cannot be published therefore
    /// never hides the rows behind it.
    cursor: i64,
    /// Entities with a row that failed in this pass without being held back (past
    /// `MAX_HELD_BACK`): their later rows wait for the next pass, to keep their order.
    failed_this_pass: HashSet<Uuid>,
    /// Rows deleted since the relay last vacuumed the outbox.
    deleted_since_vacuum: u64,
}

/// Runs the relay for a share of `partitions` until `shutdown`; the batch in flight
/// finishes first and the leases are given up, so the other instances take over at
/// once. Each step is bounded by `call_limit` (a step past it is dropped; its rows stay
/// in the outbox and are published again) and marked on `heartbeat`.
pub async fn run(
    pool: PgPool,
    broker: Broker,
    partitions: u16,
    call_limit: CallLimit,
    heartbeat: Arc<Heartbeat>,
    shutdown: CancellationToken,
) {
    let mut relay = Relay::new(pool, broker, partitions);
    let mut writes = outbox::writes();
    let mut failing = false;
    let mut gauge_due = tokio::time::Instant::now();
    let mut vacuum_due = tokio::time::Instant::now() + VACUUM_INTERVAL;
    let mut vacuuming: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        if tokio::time::Instant::now() >= gauge_due {
            gauge_due = tokio::time::Instant::now() + BACKLOG_GAUGE_INTERVAL;
            update_backlog_gauge(&relay.pool, call_limit).await;
        }
        if relay.deleted_since_vacuum >= VACUUM_AFTER_ROWS
            && tokio::time::Instant::now() >= vacuum_due
            && vacuuming.as_ref().is_none_or(|task| task.is_finished())
        {
            vacuum_due = tokio::time::Instant::now() + VACUUM_INTERVAL;
            let dead = std::mem::take(&mut relay.deleted_since_vacuum);
            // Beside the relay, not in its way: publishing goes on while it runs.
            vacuuming = Some(tokio::spawn(vacuum_outbox(
                relay.pool.clone(),
                call_limit,
                dead,
            )));
        }
        let busy = heartbeat.busy();
        let step = call_limit.run("relay_batch", relay.step()).await;
        drop(busy);
        let wait = match step {
            Ok(Step::Published(n)) if n as i64 == BATCH => continue,
            Ok(step) => {
                if failing {
                    tracing::info!("outbox relay publishing again");
                    failing = false;
                }
                match step {
                    Step::Published(_) => Some(POLL_INTERVAL),
                    _ => None,
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "outbox relay cannot publish, backlog kept in the database");
                    failing = true;
                }
                relay.renewed = None;
                Some(FAILURE_PAUSE)
            }
        };
        let mut sessions = relay.broker.sessions();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Woken by this process's writes only while publishing normally.
            _ = writes.changed(), if wait == Some(POLL_INTERVAL) => {}
            _ = sessions.changed(), if wait.is_none() => {}
            _ = tokio::time::sleep(wait.unwrap_or(POLL_INTERVAL)) => {}
        }
    }
    relay.release().await;
}

/// Vacuums the outbox so the space of the `dead` rows deleted since the last time is
/// used again; a failure is logged and the next vacuum comes after the next
/// `VACUUM_AFTER_ROWS` deletes.
async fn vacuum_outbox(pool: PgPool, call_limit: CallLimit, dead: u64) {
    let started = Instant::now();
    match call_limit.run("outbox_vacuum", outbox::vacuum(&pool)).await {
        Ok(()) => tracing::debug!(
            dead,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "outbox vacuumed"
        ),
        Err(error) => tracing::warn!(%error, dead, "outbox vacuum failed"),
    }
}

/// Counts the unpublished rows into the backlog gauge (left as it was when the count
/// fails: the database is then reported by `/readyz` and the relay's own warnings).
async fn update_backlog_gauge(pool: &PgPool, call_limit: CallLimit) {
    if let Ok(backlog) = call_limit
        .run("outbox_backlog", outbox::backlog(pool))
        .await
    {
        metrics::gauge!("order_timeout_outbox_backlog").set(backlog as f64);
    }
}

impl Relay {
    /// A relay of `partitions` with a fresh holder id; it holds no lease yet.
    pub fn new(pool: PgPool, broker: Broker, partitions: u16) -> Self {
        Self {
            pool,
            broker,
            holder: Uuid::now_v7(),
            share: Share {
                partitions,
                held: Vec::new(),
            },
            renewed: None,
            held_back: HashMap::new(),
            cursor: 0,
            failed_this_pass: HashSet::new(),
            deleted_since_vacuum: 0,
        }
    }

    /// Renews the leases when due, then reads, publishes and deletes one batch of the
    /// partitions held. Its span (`relay_batch{rows=N}`) holds the per-row lines, which
    /// name the entity.
    #[tracing::instrument(name = "relay_batch", skip_all, fields(rows = tracing::field::Empty))]
    pub async fn step(&mut self) -> Result<Step, RelayError> {
        if !self.broker.is_connected() {
            self.renewed = None;
            return Ok(Step::Disconnected);
        }
        let renewal_due = self.renewed.is_none_or(|at| at.elapsed() >= RENEW_EVERY);
        if renewal_due && !self.renew().await? {
            return Ok(Step::NotHolder);
        }
        let share = self.share.clone();
        let page = outbox::read(&self.pool, &share, BATCH, self.cursor).await?;
        let read = page.len();
        // The page's last id, or `None` at the end of the outbox (the next step starts a
        // new pass from the first row). Applied once the page is handled: a page that
        // failed midway is read again, so no later row of its entities goes first.
        let next = page
            .last()
            .map(|row| row.id)
            .filter(|_| read as i64 == BATCH);
        let rows = self.publishable(page);
        if rows.is_empty() {
            self.advance(next);
            return Ok(Step::Published(read));
        }
        tracing::Span::current().record("rows", rows.len());
        // Renewed lately, unless this process was frozen since: then another relay may
        // hold some of these partitions now and must not be doubled.
        if !self.still_holding() && (!self.renew().await? || self.share != share) {
            return Ok(Step::Published(0));
        }
        let (published, handled) = match self.publish_all(&rows).await {
            Ok(()) => (rows.iter().map(|row| row.id).collect(), true),
            Err(PublishError::Unroutable { .. } | PublishError::Nacked) => {
                self.publish_one_by_one(&rows).await
            }
            Err(error) => return Err(error.into()),
        };
        outbox::delete(&self.pool, &published).await?;
        self.deleted_since_vacuum += published.len() as u64;
        for id in &published {
            self.held_back.remove(id);
        }
        count(&rows, &published);
        if handled {
            self.advance(next);
        }
        Ok(Step::Published(read))
    }

    /// Moves the cursor past a handled page, or starts a new pass after the last one.
    fn advance(&mut self, next: Option<i64>) {
        match next {
            Some(id) => self.cursor = id,
            None => self.end_pass(),
        }
    }

    /// The rows of a page that may be published now, in id order: not a held back row
    /// whose wait is not over, and no row of an entity with an earlier row held back or
    /// failed in this pass (each entity's messages keep their order).
    fn publishable(&self, page: Vec<Pending>) -> Vec<Pending> {
        let now = Instant::now();
        let in_page: HashSet<i64> = page.iter().map(|row| row.id).collect();
        // Entities whose held back row is elsewhere (an earlier page) wait for the pass
        // that reaches that row first.
        let mut blocked: HashSet<Uuid> = self
            .held_back
            .iter()
            .filter(|(id, _)| !in_page.contains(id))
            .map(|(_, (entity, _, _))| *entity)
            .chain(self.failed_this_pass.iter().copied())
            .collect();
        let mut rows = Vec::with_capacity(page.len());
        for row in page {
            let waiting = self
                .held_back
                .get(&row.id)
                .is_some_and(|(_, retry_at, _)| *retry_at > now);
            if waiting || blocked.contains(&row.entity_id) {
                blocked.insert(row.entity_id);
                continue;
            }
            rows.push(row);
        }
        rows
    }

    /// After the last page: forgets held back rows not seen again for longer than the
    /// longest wait (published by another instance meanwhile) and starts a new pass.
    fn end_pass(&mut self) {
        self.cursor = 0;
        self.failed_this_pass.clear();
        let now = Instant::now();
        self.held_back
            .retain(|_, (_, retry_at, _)| now.saturating_duration_since(*retry_at) < MAX_BACKOFF);
    }

    /// Gives the leases up.
    pub async fn release(&self) {
        if let Err(error) = outbox::release_leases(&self.pool, self.holder).await {
            tracing::debug!(%error, "outbox leases not released; they expire on their own");
        }
    }

    /// Renews and rebalances the leases; true when some partition is held. A change of
    /// the partitions held starts a new pass over the outbox.
    async fn renew(&mut self) -> Result<bool, RelayError> {
        let held =
            outbox::balance_leases(&self.pool, self.holder, self.share.partitions, LEASE_TTL)
                .await?;
        if held != self.share.held {
            tracing::info!(holder = %self.holder, partitions = self.share.partitions, ?held, "outbox relay's partitions changed");
            metrics::gauge!("order_timeout_outbox_partitions_held").set(held.len() as f64);
            self.share.held = held;
            self.end_pass();
        }
        self.renewed = (!self.share.held.is_empty()).then(Instant::now);
        Ok(self.renewed.is_some())
    }

    fn still_holding(&self) -> bool {
        self.renewed.is_some_and(|at| at.elapsed() < LEASE_TTL / 2)
    }

    async fn publish_all(&self, rows: &[Pending]) -> Result<(), PublishError> {
        let plans: Vec<Plan> = rows
            .iter()
            .flat_map(|row| plans(&self.broker, row, false))
            .collect();
        for plan in &plans {
            if let Some(bucket) = &plan.declare_bucket {
                self.broker.ensure_cache_queue(bucket).await?;
            }
        }
        let messages: Vec<Outgoing<'_>> = plans.iter().map(Plan::outgoing).collect();
        self.broker.publish(Publisher::Relay, &messages).await
    }

    /// After a batch failed for some of its rows: publishes each row alone, so one bad row
    /// does not block the rows behind it. A timer whose cache queue is missing goes to the
    /// due queue instead (the consumer re-arms an early timer through the delay levels,
    /// DESIGN.md rule 4). A row that still fails is held back with a growing pause, and so
    /// are the later rows of its entity, which keeps each entity's order. Returns the ids
    /// published, and whether every row was tried (not when the connection went).
    async fn publish_one_by_one(&mut self, rows: &[Pending]) -> (Vec<i64>, bool) {
        let mut published = Vec::new();
        let mut blocked: HashSet<Uuid> = HashSet::new();
        for row in rows {
            if blocked.contains(&row.entity_id) {
                continue;
            }
            let mut outcome = self.publish_row(row, false).await;
            if matches!(outcome, Err(PublishError::Unroutable { .. })) && row.timer_bucket.is_some()
            {
                tracing::warn!(entity_id = %row.entity_id, bucket = ?row.timer_bucket, "cache queue missing: timer sent to the due queue to be re-armed");
                outcome = self.publish_row(row, true).await;
            }
            match outcome {
                Ok(()) => published.push(row.id),
                Err(error @ (PublishError::Unroutable { .. } | PublishError::Nacked)) => {
                    blocked.insert(row.entity_id);
                    if !self.hold_back(row, &error) {
                        self.failed_this_pass.insert(row.entity_id);
                    }
                }
                // The connection went: the rest waits for the next batch.
                Err(_) => return (published, false),
            }
        }
        (published, true)
    }

    async fn publish_row(&self, row: &Pending, timer_to_due: bool) -> Result<(), PublishError> {
        let plans = plans(&self.broker, row, timer_to_due);
        for plan in &plans {
            if let Some(bucket) = &plan.declare_bucket {
                self.broker.ensure_cache_queue(bucket).await?;
            }
        }
        let messages: Vec<Outgoing<'_>> = plans.iter().map(Plan::outgoing).collect();
        self.broker.publish(Publisher::Relay, &messages).await
    }

    /// Holds `row` back for a growing pause; false when too many rows are held already.
    fn hold_back(&mut self, row: &Pending, error: &PublishError) -> bool {
        if self.held_back.len() >= MAX_HELD_BACK && !self.held_back.contains_key(&row.id) {
            return false;
        }
        let pause = self
            .held_back
            .get(&row.id)
            .map_or(FIRST_BACKOFF, |(_, _, pause)| (*pause * 2).min(MAX_BACKOFF));
        tracing::warn!(entity_id = %row.entity_id, outbox_id = row.id, %error, ?pause, "outbox row not published, held back with its entity's later rows");
        metrics::counter!("order_timeout_outbox_held_back_total").increment(1);
        self.held_back
            .insert(row.id, (row.entity_id, Instant::now() + pause, pause));
        true
    }
}

fn count(rows: &[Pending], published: &[i64]) {
    let published: HashSet<i64> = published.iter().copied().collect();
    let (mut timers, mut events) = (0, 0);
    for row in rows.iter().filter(|row| published.contains(&row.id)) {
        if row.timer_bucket.is_some() {
            timers += 1;
        }
        if let Some(key) = &row.event_key {
            events += 1;
            tracing::debug!(entity_id = %row.entity_id, key = %key, "event published");
        }
    }
    metrics::counter!("order_timeout_outbox_published_total", "topic" => "timer").increment(timers);
    metrics::counter!("order_timeout_outbox_published_total", "topic" => "event").increment(events);
}

/// Where and how one message is published.
struct Plan {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: Properties,
    mandatory: bool,
    declare_bucket: Option<String>,
}

impl Plan {
    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            body: &self.body,
            properties: self.properties.clone(),
            mandatory: self.mandatory,
        }
    }
}

/// The messages of one row: its timer (first), then its event. `timer_to_due` sends the
/// timer to the due queue whatever its time left.
fn plans(broker: &Broker, row: &Pending, timer_to_due: bool) -> Vec<Plan> {
    let mut plans = Vec::with_capacity(2);
    let base = Properties {
        content_type: Some("application/json".to_owned()),
        timestamp: Some(chrono::Utc::now().timestamp() as u64),
        ..Properties::persistent()
    };
    if let (Some(bucket), Some(body)) = (&row.timer_bucket, &row.timer_body) {
        plans.push(timer_plan(
            broker.topology(),
            row,
            bucket,
            body,
            base.clone(),
            timer_to_due,
        ));
    }
    if let (Some(key), Some(payload)) = (&row.event_key, &row.payload) {
        plans.push(Plan {
            exchange: broker.topology().events_exchange.clone(),
            routing_key: key.clone(),
            body: payload.as_bytes().to_vec(),
            properties: Properties {
                message_id: Some(format!("{key}:{}", row.entity_id)),
                ..base
            },
            // Nobody may be bound to the events exchange yet; that is not a failure.
            mandatory: false,
            declare_bucket: None,
        });
    }
    plans
}

/// Where and how a row's timer goes. A timer of a configured timeout waits in its cache
/// bucket for the time left less `TIMER_LEAD`, and the due consumer holds it for the
/// rest (`x-due-at-us` says until when); one with no more than the lead left (published
/// late, after an outage), or whose bucket is missing (`to_due`), goes to the due queue
/// at once.
fn timer_plan(
    topology: &Topology,
    row: &Pending,
    bucket: &str,
    body: &str,
    base: Properties,
    to_due: bool,
) -> Plan {
    let ms_left = u64::try_from(row.ms_left_now().unwrap_or(0)).unwrap_or(0);
    let mut headers = Headers::default();
    if let Some(due_at_us) = row.due_at_us {
        headers.set_integer(DUE_AT_US, due_at_us);
    }
    let properties = Properties {
        message_id: Some(row.entity_id.to_string()),
        headers: Some(headers),
        ..base
    };
    let body = body.as_bytes().to_vec();
    let ttl_ms = ms_left.saturating_sub(topology.timer_lead_ms);
    if ttl_ms == 0 || to_due {
        // Already due or nearly, or its bucket is missing: straight to the due queue
        // instead of waiting behind younger timers in the cache bucket.
        return Plan {
            exchange: String::new(),
            routing_key: topology.due_queue.clone(),
            body,
            properties,
            mandatory: true,
            declare_bucket: None,
        };
    }
    if !topology.is_cache_bucket(bucket) {
        // Not a configured timeout (a client's own `timeout_seconds`, a reminder after an
        // extension, a bucket of an earlier configuration): the largest delay level not
        // longer than the time left, and the consumer re-arms it for the rest (rule 4).
        // Clients never make the service declare queues.
        return Plan {
            exchange: String::new(),
            routing_key: topology.level_queue(topology.level_for(ms_left)),
            body,
            properties,
            mandatory: true,
            declare_bucket: None,
        };
    }
    Plan {
        exchange: String::new(),
        routing_key: topology.cache_queue(bucket),
        body,
        properties: Properties {
            expiration_ms: Some(ttl_ms),
            ..properties
        },
        mandatory: true,
        declare_bucket: Some(bucket.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::QueueType;
    use crate::domain::EntityKind;

    fn topology_with_lead(lead: Duration) -> Topology {
        Topology::new(
            "t",
            &[(EntityKind::Order, Duration::from_secs(2))],
            Duration::from_secs(60),
            &[],
            QueueType::Classic,
        )
        .with_timer_lead(lead)
    }

    fn timer(us_left: i64, bucket: &str) -> Pending {
        Pending::test_timer(bucket, Some(us_left), Some(1_700_000_000_123_456), None)
    }

    fn plan_of(topology: &Topology, row: &Pending) -> Plan {
        let bucket = row.timer_bucket.as_deref().unwrap_or_default();
        timer_plan(topology, row, bucket, "{}", Properties::persistent(), false)
    }

    #[test]
    fn a_timer_leaves_its_bucket_the_lead_before_its_deadline_and_carries_the_deadline() {
        let topology = topology_with_lead(Duration::from_millis(25));
        let plan = plan_of(&topology, &timer(1_500_000, "order.2000"));
        assert_eq!(plan.routing_key, topology.cache_queue("order.2000"));
        assert_eq!(plan.properties.expiration_ms, Some(1475));
        let headers = plan.properties.headers.unwrap_or_default();
        assert_eq!(headers.integer(DUE_AT_US), Some(1_700_000_000_123_456));

        let plan = plan_of(
            &topology_with_lead(Duration::ZERO),
            &timer(1_500_000, "order.2000"),
        );
        assert_eq!(
            plan.properties.expiration_ms,
            Some(1500),
            "TIMER_LEAD=0: the time left"
        );
    }

    #[test]
    fn a_timer_with_no_more_than_the_lead_left_goes_to_the_due_queue_at_once() {
        let topology = topology_with_lead(Duration::from_millis(25));
        for us_left in [0, 1, 24_000, 25_000] {
            let plan = plan_of(&topology, &timer(us_left, "order.2000"));
            assert_eq!(plan.routing_key, topology.due_queue, "{us_left} us left");
            assert_eq!(plan.properties.expiration_ms, None);
            let headers = plan.properties.headers.unwrap_or_default();
            assert_eq!(headers.integer(DUE_AT_US), Some(1_700_000_000_123_456));
        }
        let plan = plan_of(&topology, &timer(25_001, "order.2000"));
        assert_eq!(plan.routing_key, topology.cache_queue("order.2000"));
        assert_eq!(
            plan.properties.expiration_ms,
            Some(1),
            "26 ms rounded up, less 25"
        );
    }

    #[test]
    fn a_timer_of_another_timeout_takes_the_delay_level_for_its_whole_time_left() {
        let topology = topology_with_lead(Duration::from_millis(25));
        let plan = plan_of(&topology, &timer(5_000_000, "order.5000"));
        assert_eq!(plan.routing_key, topology.level_queue(4096));
        assert_eq!(plan.properties.expiration_ms, None);
    }
}
