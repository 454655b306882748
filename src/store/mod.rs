//! PostgreSQL: connecting (creating the database if missing), migrating, and every query.
//! Each submodule owns the queries of one table; callers never write SQL.

pub mod batcher;
pub mod console;
pub mod deadlines;
pub mod entities;
pub mod error;
pub mod expiry;
pub mod failed;
pub mod idempotency;
pub mod limit;
pub mod outbox;
pub mod retention;
pub mod session;
#[cfg(test)]
pub(crate) mod testdb;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub use error::{ErrorClass, StoreError};
pub use limit::CallLimit;
pub use session::SessionSettings;

/// The ids bound as `$1` (a `uuid[]`) in a form the planner cannot count. A statement run
/// for batches of one or two ids (most of the due consumer's batches at a steady rate)
/// then keeps one cached generic plan per connection; with `any($1)` the plan for so few
/// ids always looks cheaper than the generic one, and the statement is planned anew for
/// every batch, inlining the `*_json` functions each time (`store::expiry`).
pub(crate) const LISTED_IDS: &str = "array(select unnest($1::uuid[]))";

/// The migrations of `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the pool is sized and how long a caller waits for a connection.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Most connections this instance opens.
    pub max_connections: u32,
    /// How long to wait for a free connection before failing as "unavailable".
    pub acquire_timeout: Duration,
    /// Longest wait for a row lock; past it the statement fails as transient (55P03)
    /// and the message goes through the retry tiers instead of stalling a handler.
    pub lock_timeout: Duration,
    /// Longest any statement may run, so a stuck query cannot hold a handler forever.
    pub statement_timeout: Duration,
    /// What bounds a client that vanished without closing its socket (session settings
    /// and the release check).
    pub session: SessionSettings,
}

/// Parses the URL, creates the database if it does not exist yet, and opens a lazy pool.
///
/// The pool is lazy so the service starts (and answers `/healthz`) while PostgreSQL is
/// still coming up; the first query reports the outage as `StoreError::Unavailable`.
pub async fn connect(url: &str, settings: PoolSettings) -> Result<PgPool, StoreError> {
    let ms = |duration: Duration| format!("{}ms", duration.as_millis());
    let options = PgConnectOptions::from_str(url)?
        .application_name("order-timeout")
        .options([
            ("lock_timeout", ms(settings.lock_timeout)),
            ("statement_timeout", ms(settings.statement_timeout)),
        ])
        .options(settings.session.startup_options());
    create_database_if_missing(&options).await?;
    let session = settings.session;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .after_connect(move |conn, _| Box::pin(session.after_connect(conn)))
        // sqlx's own checks ping without a time limit: bounded ones replace them.
        .test_before_acquire(false)
        .before_acquire(|conn, _| Box::pin(SessionSettings::check(conn)))
        .after_release(|conn, _| Box::pin(SessionSettings::check(conn)))
        .connect_lazy_with(options);
    Ok(pool)
}

/// Applies the embedded migrations; several instances may race, sqlx serialises them
/// with an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), StoreError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let created = sqlx::query(sqlx::AssertSqlSafe(format!("create database {quoted}")))
            .execute(&mut admin)
            .await;
        match created {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another instance created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}
