//! The pause between two rounds of connection attempts: capped exponential backoff with
//! jitter, reset only by a connection that stayed up for a while. A broker that accepts
//! a connection and drops it at once (a flapping node, a failing handshake, a node that
//! is shutting down) would otherwise be hammered every 100 ms forever.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Shortest pause (the first after a failure).
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause, jitter included.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that lasted at least this long counts as healthy: its loss starts the
/// backoff afresh. A shorter one leaves the backoff where it was.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The reconnect policy of the supervisor.
pub struct ReconnectBackoff {
    /// The growing pauses; replaced by a fresh sequence on reset.
    delays: ExponentialBackoff,
    /// When the current connection was established, `None` while disconnected.
    connected_at: Option<Instant>,
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        Self {
            delays: fresh(),
            connected_at: None,
        }
    }
}

impl ReconnectBackoff {
    /// The pause before the next round of attempts; grows with every call until a reset.
    pub fn next_pause(&mut self) -> Duration {
        // Jitter adds up to the delay itself, so cap after it.
        self.delays.next().unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF)
    }

    /// A connection was established at `at`.
    pub fn connected(&mut self, at: Instant) {
        self.connected_at = Some(at);
    }

    /// The connection was lost at `at`: the backoff starts afresh only if it had lasted
    /// `STABLE_AFTER`.
    pub fn lost(&mut self, at: Instant) {
        let lasted = self
            .connected_at
            .take()
            .map(|since| at.saturating_duration_since(since));
        if lasted.is_some_and(|lasted| lasted >= STABLE_AFTER) {
            self.delays = fresh();
        }
    }
}

fn fresh() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lower bound of the n-th pause (0-based): jitter only ever adds.
    fn at_least(n: u32) -> Duration {
        (MIN_BACKOFF * 2u32.pow(n)).min(MAX_BACKOFF)
    }

    fn after_failures(n: u32) -> ReconnectBackoff {
        let mut backoff = ReconnectBackoff::default();
        for _ in 0..n {
            backoff.next_pause();
        }
        backoff
    }

    #[test]
    fn pauses_grow_while_nothing_answers_and_stay_capped() {
        let mut backoff = ReconnectBackoff::default();
        for n in 0..20 {
            let pause = backoff.next_pause();
            assert!(pause >= at_least(n), "pause {n} was {pause:?}");
            assert!(pause <= MAX_BACKOFF, "pause {n} was {pause:?}");
        }
    }

    #[test]
    fn a_connection_dropped_right_after_it_was_made_does_not_reset_the_backoff() {
        let mut backoff = after_failures(6);
        let t0 = Instant::now();
        backoff.connected(t0);
        backoff.lost(t0 + Duration::from_millis(500));
        let pause = backoff.next_pause();
        assert!(
            pause >= at_least(6),
            "reset to {pause:?} by a 0.5 s connection"
        );
    }

    #[test]
    fn a_flapping_connection_keeps_backing_off() {
        let mut backoff = ReconnectBackoff::default();
        let t0 = Instant::now();
        let mut pauses = Vec::new();
        for flap in 0..8u32 {
            let at = t0 + Duration::from_secs(u64::from(flap) * 5);
            backoff.connected(at);
            backoff.lost(at + Duration::from_secs(1));
            pauses.push(backoff.next_pause());
        }
        assert!(
            pauses[7] >= at_least(7),
            "eight flaps of 1 s each: {pauses:?}"
        );
    }

    #[test]
    fn a_connection_that_stayed_up_resets_the_backoff() {
        let mut backoff = after_failures(8);
        let t0 = Instant::now();
        backoff.connected(t0);
        backoff.lost(t0 + STABLE_AFTER);
        let pause = backoff.next_pause();
        assert!(pause < MIN_BACKOFF * 2, "not reset: {pause:?}");
    }

    #[test]
    fn a_loss_without_a_connection_changes_nothing() {
        let mut backoff = after_failures(5);
        backoff.lost(Instant::now() + STABLE_AFTER * 10);
        assert!(backoff.next_pause() >= at_least(5));
    }
}
