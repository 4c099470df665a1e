//! Postgres: pool, embedded migrations (the platform's outbox/inbox tables,
//! then the service's own), and database creation for dev and tests.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Bookkeeping table for the platform's migrations, kept apart from the
/// service's `_sqlx_migrations` so both number their files from 1.
const PLATFORM_MIGRATIONS_TABLE: &str = "_shopmesh_platform_migrations";

fn platform_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(PLATFORM_MIGRATIONS_TABLE);
    migrator
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    open(PgConnectOptions::from_str(url)?, max_connections).await
}

/// Like [`connect`], for a service: its sessions carry `application_name`
/// (unless the URL names one), as `pg_stat_activity` shows them, and
/// `settings` (name, value).
pub async fn connect_with(
    url: &str,
    application_name: &str,
    max_connections: u32,
    settings: &[(&str, &str)],
) -> Result<PgPool, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(url)?.options(settings.iter().copied());
    if options.get_application_name().is_none() {
        options = options.application_name(application_name);
    }
    open(options, max_connections).await
}

async fn open(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// Runs the platform's migrations, then the service's.
pub async fn migrate(pool: &PgPool, service: Option<&Migrator>) -> Result<(), sqlx::migrate::MigrateError> {
    platform_migrator().run(pool).await?;
    if let Some(m) = service {
        m.run(pool).await?;
    }
    Ok(())
}

/// Creates the database named in `url` if it does not exist.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    if !sqlx::Postgres::database_exists(url).await? {
        match sqlx::Postgres::create_database(url).await {
            Ok(()) => {}
            // Another process created it between the check and the create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
