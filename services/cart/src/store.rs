//! Carts in Postgres, the source of truth. Writers lock the cart row so
//! concurrent requests of one user apply one after another.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Cart, Line, Quantity};

type LineRow = (Uuid, i32, DateTime<Utc>);

fn lines(rows: Vec<LineRow>) -> Result<Vec<Line>, sqlx::Error> {
    rows.into_iter()
        .map(|(product_id, quantity, added_at)| {
            // The CHECK constraint keeps quantities in range.
            let quantity = Quantity::try_from(i64::from(quantity)).map_err(|e| sqlx::Error::Decode(e.into()))?;
            Ok(Line { product_id, quantity, added_at })
        })
        .collect()
}

async fn load_lines(conn: &mut PgConnection, user_id: &str) -> Result<Vec<Line>, sqlx::Error> {
    let rows: Vec<LineRow> = sqlx::query_as(
        "SELECT product_id, quantity, added_at FROM cart_lines WHERE user_id = $1 ORDER BY added_at, product_id",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    lines(rows)
}

/// The user's cart, or `None` if they never had one.
pub async fn load(pool: &PgPool, user_id: &str) -> Result<Option<Cart>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let head: Option<(i64, DateTime<Utc>)> = sqlx::query_as("SELECT version, updated_at FROM carts WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((version, updated_at)) = head else { return Ok(None) };
    Ok(Some(Cart { version, updated_at, lines: load_lines(&mut conn, user_id).await? }))
}

/// The user's cart, created if missing, locked until `tx` ends.
pub async fn lock(tx: &mut PgConnection, user_id: &str) -> Result<Cart, sqlx::Error> {
    sqlx::query("INSERT INTO carts (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let (version, updated_at): (i64, DateTime<Utc>) =
        sqlx::query_as("SELECT version, updated_at FROM carts WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
    Ok(Cart { version, updated_at, lines: load_lines(tx, user_id).await? })
}

/// Replaces the stored cart with `cart` (whose row `tx` holds locked).
pub async fn save(tx: &mut PgConnection, user_id: &str, cart: &Cart) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE carts SET version = $2, updated_at = $3 WHERE user_id = $1")
        .bind(user_id)
        .bind(cart.version)
        .bind(cart.updated_at)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM cart_lines WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
    if !cart.lines.is_empty() {
        let ids: Vec<Uuid> = cart.lines.iter().map(|l| l.product_id).collect();
        let quantities: Vec<i32> = cart.lines.iter().map(|l| i32::from(l.quantity.get())).collect();
        let added: Vec<DateTime<Utc>> = cart.lines.iter().map(|l| l.added_at).collect();
        sqlx::query(
            "INSERT INTO cart_lines (user_id, product_id, quantity, added_at)
             SELECT $1, * FROM UNNEST($2::uuid[], $3::int4[], $4::timestamptz[])",
        )
        .bind(user_id)
        .bind(&ids)
        .bind(&quantities)
        .bind(&added)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
