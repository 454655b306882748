//! Liveness of the background loops: each loop (due consumer, outbox relay, sweeper,
//! broker supervisor) holds a [`Heartbeat`] and marks the work it does as busy. A loop
//! that is idle (waiting for deliveries, a tick or a notification) is healthy; a loop
//! that has been busy without finishing anything for longer than `LIVENESS_TIMEOUT` is
//! stuck: a batch awaiting a dead connection, a wedged `for_each_concurrent`.
//!
//! `/healthz` answers 503 naming the stuck loops, so an orchestrator restarts the process
//! (a fresh process is the one restart that clears every kind of wedge), and `/metrics`
//! exports `order_timeout_loop_stalled_seconds{loop}`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The background loops watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loop {
    /// The due-queue consumer ([`crate::timeouts`]).
    Consumer,
    /// The outbox relay ([`crate::outbox`]).
    Relay,
    /// The sweeper ([`crate::sweeper`]).
    Sweeper,
    /// The broker connection supervisor ([`crate::broker`]).
    Supervisor,
}

impl Loop {
    /// Every loop, in the order they are reported.
    pub const ALL: [Loop; 4] = [Loop::Consumer, Loop::Relay, Loop::Sweeper, Loop::Supervisor];

    /// The name used in `/healthz` and in the metric's `loop` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Loop::Consumer => "consumer",
            Loop::Relay => "relay",
            Loop::Sweeper => "sweeper",
            Loop::Supervisor => "supervisor",
        }
    }
}

/// The heartbeats of one application's loops.
#[derive(Clone)]
pub struct Liveness {
    /// One heartbeat per loop, indexed like [`Loop::ALL`].
    beats: Arc<[Arc<Heartbeat>; 4]>,
    /// How long a loop may stay busy without progress before it counts as stuck.
    pub timeout: Duration,
}

impl Liveness {
    /// Fresh heartbeats, every loop idle.
    pub fn new(timeout: Duration) -> Self {
        Self {
            beats: Arc::new(Loop::ALL.map(|_| Arc::new(Heartbeat::default()))),
            timeout,
        }
    }

    /// The heartbeat a loop marks its work on.
    pub fn of(&self, which: Loop) -> Arc<Heartbeat> {
        self.beats[which as usize].clone()
    }

    /// How long each loop has been busy without progress (zero when idle).
    pub fn stalls(&self) -> Vec<(Loop, Duration)> {
        Loop::ALL
            .iter()
            .map(|which| (*which, self.beats[*which as usize].stalled_for()))
            .collect()
    }

    /// The loops stuck for longer than the timeout.
    pub fn stuck(&self) -> Vec<(Loop, Duration)> {
        self.stalls()
            .into_iter()
            .filter(|(_, stalled)| *stalled > self.timeout)
            .collect()
    }

    /// Sets the `order_timeout_loop_stalled_seconds` gauges (at scrape time).
    pub fn export(&self) {
        for (which, stalled) in self.stalls() {
            metrics::gauge!("order_timeout_loop_stalled_seconds", "loop" => which.as_str())
                .set(stalled.as_secs_f64());
        }
    }
}

/// Whether one loop is making progress.
#[derive(Debug)]
pub struct Heartbeat {
    /// Work in flight, and when the loop last finished something (or became busy).
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Pieces of work started and not yet finished.
    busy: usize,
    /// When a piece of work last finished, or the loop went from idle to busy.
    last_progress: Instant,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                busy: 0,
                last_progress: Instant::now(),
            }),
        }
    }
}

impl Heartbeat {
    /// Marks a piece of work as started; it counts as progress when the guard drops
    /// (finished, failed or abandoned alike).
    pub fn busy(self: &Arc<Self>) -> Busy {
        let mut state = self.lock();
        if state.busy == 0 {
            state.last_progress = Instant::now();
        }
        state.busy += 1;
        Busy(self.clone())
    }

    /// How long the loop has been busy without finishing anything; zero when idle.
    pub fn stalled_for(&self) -> Duration {
        let state = self.lock();
        if state.busy == 0 {
            Duration::ZERO
        } else {
            state.last_progress.elapsed()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A piece of work in flight; dropping it records progress.
#[must_use = "the work counts as finished when this guard drops"]
pub struct Busy(Arc<Heartbeat>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.busy = state.busy.saturating_sub(1);
        state.last_progress = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_loop_is_never_stalled() {
        let beat = Arc::new(Heartbeat::default());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(beat.stalled_for(), Duration::ZERO);
    }

    #[test]
    fn a_busy_loop_stalls_until_a_piece_of_work_finishes() {
        let beat = Arc::new(Heartbeat::default());
        let first = beat.busy();
        let second = beat.busy();
        std::thread::sleep(Duration::from_millis(30));
        assert!(beat.stalled_for() >= Duration::from_millis(30));
        drop(first);
        assert!(beat.stalled_for() < Duration::from_millis(30));
        drop(second);
        assert_eq!(beat.stalled_for(), Duration::ZERO);
    }

    #[test]
    fn only_busy_loops_past_the_timeout_are_stuck() {
        let liveness = Liveness::new(Duration::from_millis(20));
        let _wedged = liveness.of(Loop::Relay).busy();
        drop(liveness.of(Loop::Sweeper).busy());
        std::thread::sleep(Duration::from_millis(40));
        let stuck: Vec<Loop> = liveness.stuck().into_iter().map(|(l, _)| l).collect();
        assert_eq!(stuck, vec![Loop::Relay]);
    }
}
