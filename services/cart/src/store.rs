//! Carts in Postgres, the source of truth. Writers lock the cart row so
//! concurrent requests of one user apply one after another.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Cart, Line, Quantity};

type LineRow = (Uuid, i32, DateTime<Utc>, i64);
/// A cart head with one of its lines, or with none (an empty cart).
type CartRow = (i64, DateTime<Utc>, Option<Uuid>, Option<i32>, Option<DateTime<Utc>>, Option<i64>);

fn lines(rows: Vec<LineRow>) -> Result<Vec<Line>, sqlx::Error> {
    rows.into_iter()
        .map(|(product_id, quantity, added_at, quantity_set_in)| {
            // The CHECK constraint keeps quantities in range.
            let quantity = Quantity::try_from(i64::from(quantity)).map_err(|e| sqlx::Error::Decode(e.into()))?;
            Ok(Line { product_id, quantity, added_at, quantity_set_in })
        })
        .collect()
}

async fn load_lines(conn: &mut PgConnection, user_id: &str) -> Result<Vec<Line>, sqlx::Error> {
    let rows: Vec<LineRow> = sqlx::query_as(
        "SELECT product_id, quantity, added_at, quantity_set_in FROM cart_lines
         WHERE user_id = $1 ORDER BY added_at, product_id",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    lines(rows)
}

/// The user's cart, or `None` if they never had one. One statement, so the
/// version and the lines come from the same snapshot.
pub async fn load(pool: &PgPool, user_id: &str) -> Result<Option<Cart>, sqlx::Error> {
    let rows: Vec<CartRow> = sqlx::query_as(
        "SELECT c.version, c.updated_at, l.product_id, l.quantity, l.added_at, l.quantity_set_in
         FROM carts c LEFT JOIN cart_lines l ON l.user_id = c.user_id
         WHERE c.user_id = $1 ORDER BY l.added_at, l.product_id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    let Some(&(version, updated_at, ..)) = rows.first() else { return Ok(None) };
    let lines = lines(
        rows.into_iter()
            .filter_map(|(_, _, product_id, quantity, added_at, quantity_set_in)| {
                Some((product_id?, quantity?, added_at?, quantity_set_in?))
            })
            .collect(),
    )?;
    Ok(Some(Cart { version, updated_at, lines }))
}

async fn lock_head(tx: &mut PgConnection, user_id: &str) -> Result<Option<(i64, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT version, updated_at FROM carts WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await
}

/// The user's cart, created if missing, locked until `tx` ends. The lines
/// are read by a statement of their own, after the lock is held: a statement
/// that waited for the lock still reads with the snapshot it started with.
pub async fn lock(tx: &mut PgConnection, user_id: &str) -> Result<Cart, sqlx::Error> {
    let (version, updated_at) = match lock_head(tx, user_id).await? {
        Some(head) => head,
        None => {
            sqlx::query("INSERT INTO carts (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            lock_head(tx, user_id).await?.ok_or(sqlx::Error::RowNotFound)?
        }
    };
    Ok(Cart { version, updated_at, lines: load_lines(tx, user_id).await? })
}

/// Replaces the stored cart with `cart` (whose row `tx` holds locked) in one
/// statement: lines no longer in the cart go, new or changed ones are
/// written, unchanged ones are left alone.
pub async fn save(tx: &mut PgConnection, user_id: &str, cart: &Cart) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = cart.lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i32> = cart.lines.iter().map(|l| i32::from(l.quantity.get())).collect();
    let added: Vec<DateTime<Utc>> = cart.lines.iter().map(|l| l.added_at).collect();
    let quantity_set_in: Vec<i64> = cart.lines.iter().map(|l| l.quantity_set_in).collect();
    // The DELETE and the upsert touch disjoint keys, so running them as one
    // statement cannot trip the primary key.
    sqlx::query(
        "WITH head AS (
             UPDATE carts SET version = $2, updated_at = $3 WHERE user_id = $1
         ), gone AS (
             DELETE FROM cart_lines WHERE user_id = $1 AND product_id <> ALL($4::uuid[])
         )
         INSERT INTO cart_lines (user_id, product_id, quantity, added_at, quantity_set_in)
         SELECT $1, * FROM UNNEST($4::uuid[], $5::int4[], $6::timestamptz[], $7::int8[])
         ON CONFLICT (user_id, product_id) DO UPDATE
            SET quantity = EXCLUDED.quantity, added_at = EXCLUDED.added_at, quantity_set_in = EXCLUDED.quantity_set_in
            WHERE (cart_lines.quantity, cart_lines.added_at, cart_lines.quantity_set_in)
                  IS DISTINCT FROM (EXCLUDED.quantity, EXCLUDED.added_at, EXCLUDED.quantity_set_in)",
    )
    .bind(user_id)
    .bind(cart.version)
    .bind(cart.updated_at)
    .bind(&ids)
    .bind(&quantities)
    .bind(&added)
    .bind(&quantity_set_in)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
