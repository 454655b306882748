//! What bounds a database client that vanished without closing its socket (a failover,
//! a dead NAT entry, a frozen or killed instance).
//!
//! PostgreSQL keeps such a backend, its open transaction and its row locks until TCP
//! gives up, about two hours by default; every other writer of those rows waits. The
//! session settings below, sent with every new connection, bound that on the server:
//! an open transaction left idle is ended, a dead peer is noticed by keepalives, data the
//! server sends into the void is given up on, and a running query checks that its client
//! is still there. On the client, sqlx exposes no socket options (no keepalive), so a
//! hung connection is bounded by the callers' time limits ([`super::CallLimit`], the
//! API's request deadline) and by [`SessionSettings::check`], which closes a pooled
//! connection that does not answer when it is handed out or comes back.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

/// How long a pooled connection may take to answer a ping, when it is handed out and
/// when it comes back, before it is closed instead of used. A call dropped mid-statement
/// (a client-side time limit) leaves its connection waiting for an answer that may never
/// come, and an idle connection may have been black-holed meanwhile; sqlx's own checks
/// wait without a limit, holding the pool slot (and the caller) for as long.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-connection settings that bound a vanished client; zero disables each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// `idle_in_transaction_session_timeout`: a transaction idle this long (its client
    /// gone silent) is ended and its locks released. It must exceed the longest pause
    /// inside our own transactions (the relay's wait for publisher confirms).
    pub idle_in_transaction_timeout: Duration,
    /// `tcp_keepalives_idle`: silence after which the server probes the client.
    pub keepalive_idle: Duration,
    /// `tcp_keepalives_interval`: time between unanswered probes.
    pub keepalive_interval: Duration,
    /// `tcp_keepalives_count`: unanswered probes before the server drops the client.
    pub keepalive_count: u32,
    /// `client_connection_check_interval` (PostgreSQL 14+): how often a running query
    /// checks that its client is still connected, so it stops early when it is not.
    pub connection_check_interval: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle_in_transaction_timeout: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            connection_check_interval: Duration::from_secs(5),
        }
    }
}

impl SessionSettings {
    /// The settings every PostgreSQL version we support accepts in the startup packet.
    pub fn startup_options(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction_timeout),
            ),
            ("tcp_keepalives_idle", seconds(self.keepalive_idle)),
            ("tcp_keepalives_interval", seconds(self.keepalive_interval)),
            ("tcp_keepalives_count", self.keepalive_count.to_string()),
        ]
    }

    /// `tcp_user_timeout`: how long data the server sent may stay unacknowledged before
    /// it drops the connection (a query's answer sent into a black hole); as long as the
    /// keepalives take to give up, so both notice a dead client at about the same time.
    pub fn user_timeout(&self) -> Duration {
        self.keepalive_idle + self.keepalive_interval * self.keepalive_count
    }

    /// Sets what newer servers know and older ones would refuse in the startup packet
    /// (an unknown setting there fails the connection): `tcp_user_timeout` (12+) and
    /// `client_connection_check_interval` (14+).
    pub async fn after_connect(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let version = conn.server_version_num().unwrap_or(0);
        if version >= 140_000 {
            sqlx::query(
                "select set_config('tcp_user_timeout', $1, false),
                        set_config('client_connection_check_interval', $2, false)",
            )
            .bind(ms(self.user_timeout()))
            .bind(ms(self.connection_check_interval))
            .execute(conn)
            .await?;
        } else if version >= 120_000 {
            sqlx::query("select set_config('tcp_user_timeout', $1, false)")
                .bind(ms(self.user_timeout()))
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    /// Run by the pool before it hands out an idle connection and when one is released:
    /// a connection that does not answer a ping within [`CHECK_TIMEOUT`] is closed, never
    /// handed to a caller (the pool then takes or opens another). A healthy connection
    /// answers at once; one whose call was dropped first drains that call's answer or
    /// rollback.
    pub async fn check(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        match tokio::time::timeout(CHECK_TIMEOUT, conn.ping()).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                metrics::counter!("order_timeout_database_connections_discarded_total")
                    .increment(1);
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "pooled connection did not answer a ping in time",
                )))
            }
        }
    }
}

fn ms(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// Keepalive settings count whole seconds; a sub-second value is rounded up, so it never
/// becomes 0 (which means "the operating system's default", hours).
fn seconds(duration: Duration) -> String {
    if duration.is_zero() {
        return "0".into();
    }
    format!("{}", duration.as_millis().div_ceil(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_count_whole_seconds_and_never_round_to_the_os_default() {
        assert_eq!(seconds(Duration::from_millis(1500)), "2");
        assert_eq!(seconds(Duration::from_millis(200)), "1");
        assert_eq!(seconds(Duration::ZERO), "0");
    }

    /// Every connection of the pool carries the settings, the version-dependent ones too.
    #[tokio::test]
    async fn pooled_connections_carry_the_session_settings() {
        let session = SessionSettings {
            idle_in_transaction_timeout: Duration::from_secs(7),
            keepalive_idle: Duration::from_secs(11),
            keepalive_interval: Duration::from_secs(4),
            keepalive_count: 2,
            connection_check_interval: Duration::from_millis(1500),
        };
        let settings = crate::store::PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(10),
            session,
        };
        let url = "postgres://postgres@127.0.0.1:5432/postgres";
        let pool = crate::store::connect(url, settings)
            .await
            .expect("local PostgreSQL");
        let rows: Vec<(String, String)> = sqlx::query_as(
            "select name, setting from pg_settings where name in
               ('idle_in_transaction_session_timeout', 'tcp_keepalives_idle',
                'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout',
                'client_connection_check_interval')",
        )
        .fetch_all(&pool)
        .await
        .expect("pg_settings");
        let rows: std::collections::HashMap<String, String> = rows.into_iter().collect();
        let setting = |name: &str| rows.get(name).map(String::as_str);
        assert_eq!(setting("idle_in_transaction_session_timeout"), Some("7000"));
        assert_eq!(setting("tcp_keepalives_idle"), Some("11"));
        assert_eq!(setting("tcp_keepalives_interval"), Some("4"));
        assert_eq!(setting("tcp_keepalives_count"), Some("2"));
        // idle + interval x count, in milliseconds.
        assert_eq!(setting("tcp_user_timeout"), Some("19000"));
        assert_eq!(setting("client_connection_check_interval"), Some("1500"));
        pool.close().await;
    }

    #[test]
    fn the_user_timeout_matches_the_keepalives_giving_up() {
        let settings = SessionSettings::default();
        assert_eq!(settings.user_timeout(), Duration::from_secs(25));
    }
}
