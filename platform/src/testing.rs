//! Test support for every crate's tests (feature `testing`): the local
//! stack's endpoints as `scripts/test.sh` exports them, and databases made
//! for one test and dropped after it.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// The Postgres server, without a database.
pub fn postgres_url() -> String {
    env_or("SHOPMESH_TEST_POSTGRES_URL", "postgres://postgres:postgres@127.0.0.1:5432")
}

pub fn redis_url() -> String {
    env_or("SHOPMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

pub fn kafka_brokers() -> String {
    env_or("SHOPMESH_TEST_KAFKA_BROKERS", "127.0.0.1:9092")
}

/// `postgres_url()` with database `name`, created if missing.
pub async fn database_url(name: &str) -> String {
    let url = format!("{}/{name}", postgres_url());
    crate::db::ensure_database(&url).await.expect("creating test database");
    url
}

/// Drops databases made by [`database_url`], ending their sessions first.
pub async fn drop_databases(names: impl IntoIterator<Item = String>) {
    let Ok(admin) = crate::db::connect(&format!("{}/postgres", postgres_url()), 1).await else {
        return;
    };
    for name in names {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
    }
    admin.close().await;
}

/// A fresh database with the platform's tables and a service's migrations;
/// close the pool, then [`drop_databases`] its name.
pub struct ScratchDatabase {
    pub pool: PgPool,
    pub name: String,
}

impl ScratchDatabase {
    /// The database's name starts with `prefix`, so a leftover shows whose it is.
    pub async fn create(prefix: &str, migrator: &Migrator) -> Self {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let pool = crate::db::connect(&database_url(&name).await, 5).await.expect("connecting to test database");
        crate::db::migrate(&pool, Some(migrator)).await.expect("migrating test database");
        Self { pool, name }
    }
}
