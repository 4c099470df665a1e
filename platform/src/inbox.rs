//! Inbox: exactly-once effects on top of at-least-once delivery. A consumer
//! records the event id in the same transaction as the event's effect; a
//! redelivered copy finds the row and is skipped.

use sqlx::PgConnection;

use crate::events::ReceivedEvent;

/// Records `event` as processed by `consumer`. Returns `false` when it was
/// already processed — the caller must then apply nothing.
pub async fn record(conn: &mut PgConnection, consumer: &str, event: &ReceivedEvent) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, event_id, event_type) VALUES ($1, $2, $3)
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event.event_id)
    .bind(event.event_type())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
