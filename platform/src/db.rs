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

/// Whether `e` says the database could not be reached or could not run the
/// statement just now (connection lost or refused, server shutting down or
/// out of resources, serialization failure, deadlock, lock timeout), rather
/// than that the statement or its data is wrong: the same work may succeed
/// once the database is back, however long that takes.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        // Not `Protocol`: sqlx also reports a statement it cannot send (too
        // many arguments) that way, which no retry will fix.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs of a database that is unreachable, overloaded or restarting,
/// or of a transaction that lost a race: 08 connection exception,
/// 40001/40P01 serialization failure and deadlock, 53 insufficient resources,
/// 55P03 lock not available, 57P01-57P05 shutdown and crash recovery
/// (not 57014, a statement cancelled by its own timeout), 58 system error.
fn transient_sqlstate(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "57P04" | "57P05")
        || ["08", "53", "58"].iter().any(|class| code.starts_with(class))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_transient_and_a_wrong_statement_is_not() {
        for code in ["08006", "08001", "40001", "40P01", "53300", "55P03", "57P01", "57P03", "58030"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        // unique violation, bad input, undefined table, statement timeout
        for code in ["23505", "22P02", "42P01", "57014", "55000"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
