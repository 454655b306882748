//! The one place that decides whether a database failure is worth retrying.

use std::borrow::Cow;

/// Whether trying again later can succeed. Also stored with a failed message
/// (`failed_messages.error_class`: `transient` when its retries were spent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ErrorClass {
    /// The database is down, overloaded, restarting or lost a race: retry later.
    Transient,
    /// Retrying the same thing will fail the same way.
    Permanent,
}

impl ErrorClass {
    /// The label used in metrics and in the failed-messages store.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or could not serve us in time.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or a broken invariant, never caused by request input.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    /// The call did not finish within its client-side limit (a hung or black-holed
    /// connection, an overloaded server); worth retrying on another connection.
    #[error("database call did not finish within {0:?}")]
    TimedOut(std::time::Duration),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            ErrorClass::Transient => StoreError::Unavailable(error),
            ErrorClass::Permanent => StoreError::Other(error),
        }
    }
}

impl StoreError {
    /// Whether trying again later can succeed.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Unavailable(_) | StoreError::TimedOut(_) => ErrorClass::Transient,
            StoreError::Other(_) => ErrorClass::Permanent,
        }
    }
}

/// Classifies a sqlx error by its kind and, for server errors, by SQLSTATE.
pub fn classify(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorClass::Transient,
        sqlx::Error::Database(db) => classify_sqlstate(db.code()),
        _ => ErrorClass::Permanent,
    }
}

/// SQLSTATEs that describe the server's condition rather than our statement.
fn classify_sqlstate(code: Option<Cow<'_, str>>) -> ErrorClass {
    let Some(code) = code else {
        return ErrorClass::Permanent;
    };
    let transient = matches!(
        code.as_ref(),
        "40001" // serialization_failure
        | "40P01" // deadlock_detected
        | "55P03" // lock_not_available (lock_timeout)
        | "57014" // query_canceled (statement_timeout)
        | "57P01" // admin_shutdown
        | "57P02" // crash_shutdown
        | "57P03" // cannot_connect_now (starting up, in recovery)
        | "3D000" // invalid_catalog_name: the database is being restored or renamed
        | "25006" // read_only_sql_transaction: a failover left us on a standby
    ) || code.starts_with("08") // connection_exception
        || code.starts_with("53"); // insufficient_resources, too_many_connections
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(code: &str) -> ErrorClass {
        classify_sqlstate(Some(Cow::Borrowed(code)))
    }

    #[test]
    fn connection_and_pool_failures_are_transient() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&sqlx::Error::Io(refused)), ErrorClass::Transient);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify(&sqlx::Error::Io(reset)), ErrorClass::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
    }

    #[test]
    fn contention_and_server_state_are_transient() {
        for code in [
            "40001", "40P01", "55P03", "57014", "57P01", "57P03", "08006", "53300",
        ] {
            assert_eq!(of(code), ErrorClass::Transient, "{code}");
        }
    }

    #[test]
    fn statement_errors_are_permanent() {
        for code in ["23505", "22P02", "42P01", "23514"] {
            assert_eq!(of(code), ErrorClass::Permanent, "{code}");
        }
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Permanent);
        assert_eq!(classify_sqlstate(None), ErrorClass::Permanent);
    }
}
