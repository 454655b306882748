//! Connections a hot loop keeps between its calls instead of handing them back to the
//! pool after each one.
//!
//! Every trip through the pool costs round trips besides the call itself: the bounded
//! ping before a connection is handed out ([`super::SessionSettings::check`]), and on its
//! way back that ping again plus sqlx's own. The due consumer makes one short call per
//! batch of deliveries and is the path deadlines are measured on, so it keeps the
//! connection of a call that succeeded and uses it for its next call, as long as that
//! comes within [`REUSE_WITHIN`]. What stays bounded:
//! - a call that fails or is dropped (its time limit) loses its connection: it goes back
//!   through the pool, whose release check closes it if it does not answer;
//! - a connection left unused longer than [`REUSE_WITHIN`] goes back the same way (a
//!   background sweep returns it within twice that, so a quiet consumer holds no pool
//!   slot), and the next call takes one from the pool, pinged on the way out; so one that
//!   was black-holed while it sat idle is caught as before, and one black-holed between
//!   two calls inside the window is bounded by the caller's time limit, like a black hole
//!   that starts mid-call.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use super::StoreError;

/// How long a kept connection may wait for its next call; past it, it goes back to the
/// pool. Under load calls come milliseconds apart; a quiet consumer uses the pool.
pub const REUSE_WITHIN: Duration = Duration::from_secs(1);

/// Kept connections with the moment each was kept.
type Kept = Mutex<Vec<(PoolConnection<Postgres>, Instant)>>;

/// The connections kept by one loop, at most one per concurrent call.
#[derive(Debug)]
pub struct HeldConnections {
    pool: PgPool,
    kept: Arc<Kept>,
}

/// A connection taken for one call; it goes back to the pool when dropped unless the call
/// succeeded and [`HeldConnections::keep`] took it back.
#[derive(Debug)]
pub struct Held(PoolConnection<Postgres>);

impl HeldConnections {
    /// Keeps connections taken from `pool`; a background task hands back those left
    /// unused past [`REUSE_WITHIN`] until this is dropped.
    pub fn new(pool: PgPool) -> Self {
        let kept = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(hand_back_stale(Arc::downgrade(&kept)));
        Self { pool, kept }
    }

    /// A connection for one call: the most recently kept one, if it was kept less than
    /// [`REUSE_WITHIN`] ago, else one from the pool (checked on the way out).
    pub async fn take(&self) -> Result<Held, StoreError> {
        if let Some(conn) = self.recent() {
            return Ok(Held(conn));
        }
        Ok(Held(self.pool.acquire().await?))
    }

    /// Takes back the connection of a call that succeeded, for the next call.
    pub fn keep(&self, held: Held) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.push((held.0, Instant::now()));
        }
    }

    /// The most recently kept connection still fresh enough; stale ones are dropped here
    /// (back to the pool, through its release check).
    fn recent(&self) -> Option<PoolConnection<Postgres>> {
        let mut kept = self.kept.lock().ok()?;
        drop_stale(&mut kept);
        kept.pop().map(|(conn, _)| conn)
    }
}

/// Drops (hands back to the pool) the kept connections unused past [`REUSE_WITHIN`].
fn drop_stale(kept: &mut Vec<(PoolConnection<Postgres>, Instant)>) {
    kept.retain(|(_, since)| since.elapsed() < REUSE_WITHIN);
}

/// Every [`REUSE_WITHIN`], hands back what a quiet loop left kept; ends with its owner.
async fn hand_back_stale(kept: Weak<Kept>) {
    let mut ticks = tokio::time::interval(REUSE_WITHIN);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(kept) = kept.upgrade() else { return };
        if let Ok(mut kept) = kept.lock() {
            drop_stale(&mut kept);
        }
    }
}

impl Deref for Held {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testdb::{drop_scratch, scratch};

    async fn backend_pid(conn: &mut PgConnection) -> i32 {
        sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(conn)
            .await
            .expect("pid")
    }

    /// A connection kept after a call serves the next call; one not kept (its call
    /// failed or was dropped) goes back to the pool and is not used again from here.
    #[tokio::test]
    async fn a_kept_connection_serves_the_next_call_and_a_dropped_one_does_not() {
        let (pool, name) = scratch().await;
        let held = HeldConnections::new(pool.clone());

        let mut first = held.take().await.expect("take");
        let pid = backend_pid(&mut first).await;
        held.keep(first);
        let mut again = held.take().await.expect("take");
        assert_eq!(
            backend_pid(&mut again).await,
            pid,
            "the kept connection was not reused"
        );

        // Two calls at once: the second gets another connection.
        let mut other = held.take().await.expect("take");
        assert_ne!(backend_pid(&mut other).await, pid);
        drop(other);
        drop(again);
        assert!(held.kept.lock().expect("lock").is_empty());
        drop(held);
        drop_scratch(pool, &name).await;
    }

    /// A connection kept longer than the window is not reused: the next call goes
    /// through the pool, whose hand-out check would catch a connection that died idle.
    #[tokio::test]
    async fn a_connection_kept_past_the_window_is_not_reused() {
        let (pool, name) = scratch().await;
        let held = HeldConnections::new(pool.clone());
        let conn = held.take().await.expect("take");
        held.kept
            .lock()
            .expect("lock")
            .push((conn.0, Instant::now() - REUSE_WITHIN));
        assert!(held.recent().is_none(), "a stale connection was handed out");
        assert!(
            held.kept.lock().expect("lock").is_empty(),
            "a stale connection stayed kept"
        );
        drop(held);
        drop_scratch(pool, &name).await;
    }

    /// A loop that goes quiet does not hold its connection: it is back in the pool
    /// within twice the window, without another call.
    #[tokio::test]
    async fn a_quiet_loop_hands_its_kept_connection_back_to_the_pool() {
        let (pool, name) = scratch().await;
        let held = HeldConnections::new(pool.clone());
        let mut conn = held.take().await.expect("take");
        backend_pid(&mut conn).await;
        let idle_without_it = pool.num_idle();
        held.keep(conn);
        assert_eq!(
            pool.num_idle(),
            idle_without_it,
            "the kept connection counted as idle"
        );
        let deadline = Instant::now() + REUSE_WITHIN * 2 + Duration::from_secs(3);
        while pool.num_idle() == idle_without_it && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            pool.num_idle(),
            idle_without_it + 1,
            "the kept connection never went back to the pool"
        );
        assert!(held.kept.lock().expect("lock").is_empty());
        drop(held);
        drop_scratch(pool, &name).await;
    }
}
