//! A client-side time limit for database calls made by background work (the due
//! consumer, the relay, the sweeper, the retry router).
//!
//! PostgreSQL's own `statement_timeout` and `lock_timeout` cannot help when the network
//! itself hangs (a failover, a dead NAT entry): the statement never reaches the server,
//! or its answer never comes back, and the task awaiting it would wait for TCP to give up
//! (up to hours). A call past its limit is dropped and reported as
//! [`StoreError::TimedOut`], which is transient, so the caller takes its normal retry
//! path. The connection it was using is not reused: the pool's release check (see
//! [`super::connect`]) closes a connection that does not answer in time.

use std::future::Future;
use std::time::Duration;

use super::StoreError;

/// The longest one background database call may take, connection wait included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimit(pub Duration);

impl CallLimit {
    /// Runs `work`, or gives up on it after the limit with [`StoreError::TimedOut`].
    /// `what` names the call in the warning logged on a timeout.
    pub async fn run<T, E: From<StoreError>>(
        self,
        what: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.0, work).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(call = what, limit = ?self.0, "database call timed out, its connection will be closed");
                metrics::counter!("order_timeout_database_call_timeouts_total", "call" => what)
                    .increment(1);
                Err(StoreError::TimedOut(self.0).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ErrorClass;

    #[tokio::test]
    async fn a_call_past_its_limit_fails_as_transient() {
        let limit = CallLimit(Duration::from_millis(50));
        let hung = std::future::pending::<Result<(), StoreError>>();
        let error: StoreError = limit.run("test", hung).await.expect_err("must time out");
        assert!(matches!(error, StoreError::TimedOut(d) if d == Duration::from_millis(50)));
        assert_eq!(error.class(), ErrorClass::Transient);
    }

    #[tokio::test]
    async fn a_call_within_its_limit_returns_its_result() {
        let limit = CallLimit(Duration::from_secs(2));
        let quick = async { Ok::<_, StoreError>(7) };
        assert_eq!(limit.run("test", quick).await.expect("in time"), 7);
    }
}
