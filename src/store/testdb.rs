//! A scratch database for the store's tests: the local PostgreSQL, like the integration
//! tests, one fresh migrated database per test.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{self, PoolSettings};

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A fresh, migrated database and its name.
pub(crate) async fn scratch() -> (PgPool, String) {
    let name = format!(
        "ot_store_test_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let settings = PoolSettings {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
        lock_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(30),
        session: store::SessionSettings::default(),
    };
    let pool = store::connect(&format!("{SERVER}/{name}"), settings)
        .await
        .expect("local PostgreSQL");
    store::migrate(&pool).await.expect("migrations");
    (pool, name)
}

/// Drops a scratch database.
pub(crate) async fn drop_scratch(pool: PgPool, name: &str) {
    pool.close().await;
    let admin = PgPool::connect(&format!("{SERVER}/postgres"))
        .await
        .expect("admin connection");
    let sql = format!("drop database if exists \"{name}\" with (force)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&admin)
        .await
        .expect("drop");
}
