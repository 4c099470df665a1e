//! Notifications in Postgres, each user's read newest first by when what
//! they tell of happened.

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
    /// When the outcome happened (its event's `occurred_at`): the feed's order.
    pub occurred_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl NotificationRow {
    /// The CHECK constraint admits only known kinds.
    pub fn kind(&self) -> Kind {
        Kind::parse(&self.kind).expect("notifications.kind is constrained to known values")
    }
}

/// The message one event caused, for one user.
pub struct NewNotification<'a> {
    pub event_id: Uuid,
    pub user_id: Uuid,
    /// The event's `occurred_at`; `None` (an envelope without one) stores now.
    pub occurred_at: Option<DateTime<Utc>>,
    pub message: &'a Message,
}

/// Stores the message each event caused, in one statement; copies of events
/// already stored are no-ops. Returns how many were new.
pub async fn insert_all(conn: &mut PgConnection, new: &[NewNotification<'_>]) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
    let events: Vec<Uuid> = new.iter().map(|n| n.event_id).collect();
    let users: Vec<Uuid> = new.iter().map(|n| n.user_id).collect();
    let occurred: Vec<Option<DateTime<Utc>>> = new.iter().map(|n| n.occurred_at).collect();
    let kinds: Vec<&str> = new.iter().map(|n| n.message.kind.as_str()).collect();
    let orders: Vec<&str> = new.iter().map(|n| n.message.order_id.as_str()).collect();
    let titles: Vec<&str> = new.iter().map(|n| n.message.title.as_str()).collect();
    let bodies: Vec<&str> = new.iter().map(|n| n.message.body.as_str()).collect();
    Ok(sqlx::query(
        "INSERT INTO notifications (id, event_id, user_id, occurred_at, kind, order_id, title, body)
         SELECT id, event_id, user_id, COALESCE(occurred_at, now()), kind, order_id, title, body
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
                     $8::text[]) AS n(id, event_id, user_id, occurred_at, kind, order_id, title, body)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&events)
    .bind(&users)
    .bind(&occurred)
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
        "SELECT id, user_id, kind, order_id, title, body, occurred_at, created_at
         FROM notifications
         WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (occurred_at, id) < ($2, $3))
         ORDER BY occurred_at DESC, id DESC
         LIMIT $4",
    )
    .bind(user_id)
    .bind(cursor.map(|(occurred_at, _)| occurred_at))
    .bind(cursor.map(|(_, id)| id))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
}
