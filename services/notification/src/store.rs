//! Notifications in Postgres, each user's read newest first.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Kind, Message};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    pub order_id: String,
    pub title: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

impl NotificationRow {
    /// The CHECK constraint admits only known kinds.
    pub fn kind(&self) -> Kind {
        Kind::parse(&self.kind).expect("notifications.kind is constrained to known values")
    }
}

/// Stores the message each event caused, in one statement; copies of events
/// already stored are no-ops. Returns how many were new.
pub async fn insert_all(conn: &mut PgConnection, messages: &[(Uuid, Uuid, &Message)]) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = messages.iter().map(|_| Uuid::now_v7()).collect();
    let (events, users): (Vec<Uuid>, Vec<Uuid>) = messages.iter().map(|(e, u, _)| (*e, *u)).unzip();
    let kinds: Vec<&str> = messages.iter().map(|(_, _, m)| m.kind.as_str()).collect();
    let orders: Vec<&str> = messages.iter().map(|(_, _, m)| m.order_id.as_str()).collect();
    let titles: Vec<&str> = messages.iter().map(|(_, _, m)| m.title.as_str()).collect();
    let bodies: Vec<&str> = messages.iter().map(|(_, _, m)| m.body.as_str()).collect();
    Ok(sqlx::query(
        "INSERT INTO notifications (id, event_id, user_id, kind, order_id, title, body)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[])
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&events)
    .bind(&users)
    .bind(&kinds)
    .bind(&orders)
    .bind(&titles)
    .bind(&bodies)
    .execute(conn)
    .await?
    .rows_affected())
}

pub use shopmesh_platform::paging::NewestFirst as ListCursor;

/// One page of `user_id`'s notifications after `cursor`, plus one extra row
/// so the caller knows whether another page exists.
pub async fn list(
    pool: &PgPool,
    user_id: Uuid,
    cursor: Option<ListCursor>,
    limit: u32,
) -> Result<Vec<NotificationRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, kind, order_id, title, body, created_at
         FROM notifications
         WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC
         LIMIT $4",
    )
    .bind(user_id)
    .bind(cursor.map(|(created_at, _)| created_at))
    .bind(cursor.map(|(_, id)| id))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
}
