//! Inbox: exactly-once effects on top of at-least-once delivery. A consumer
//! records the event id in the same transaction as the event's effect; a
//! redelivered copy finds the row and is skipped.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::events::ReceivedEvent;
use crate::shutdown::Shutdown;

/// How long a processed event's id is kept. A copy can only be redelivered
/// while the broker still holds it, so this must exceed how long event
/// topics keep a message (`kafka::EVENT_RETENTION` and one segment).
pub const RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Rows deleted per statement, so pruning never holds long locks.
const PRUNE_CHUNK: i64 = 10_000;

/// Records `event` as processed by `consumer`. Returns `false` when it was
/// already processed — the caller must then apply nothing.
pub async fn record(conn: &mut PgConnection, consumer: &str, event: &ReceivedEvent) -> Result<bool, sqlx::Error> {
    Ok(record_all(conn, consumer, &[event]).await?.contains(&event.event_id))
}

/// Records every event of `events` as processed by `consumer` in one
/// statement. Returns the ids that were not processed before: only those may
/// be applied. An id listed twice is returned once.
pub async fn record_all(
    conn: &mut PgConnection,
    consumer: &str,
    events: &[&ReceivedEvent],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO inbox (consumer, event_id, event_type)
         SELECT $1, id, kind FROM unnest($2::uuid[], $3::text[]) AS e(id, kind)
         ON CONFLICT (consumer, event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(consumer)
    .bind(&ids)
    .bind(&types)
    .fetch_all(conn)
    .await?;
    Ok(fresh.into_iter().collect())
}

/// Deletes rows processed more than `older_than` ago; returns how many.
pub async fn prune(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM inbox WHERE ctid IN (
                 SELECT ctid FROM inbox WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(older_than.as_secs_f64())
        .bind(PRUNE_CHUNK)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += n;
        if n < PRUNE_CHUNK as u64 {
            return Ok(deleted);
        }
    }
}

/// Prunes the inbox every hour until shutdown (every replica may run it).
pub async fn run_pruner(pool: PgPool, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = shutdown.wait() => return,
        }
        match prune(&pool, RETENTION).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned inbox rows past retention"),
            Err(e) => tracing::warn!(error = %e, "inbox pruning failed"),
        }
    }
}
