//! Order persistence. Every state change writes its history row and its
//! outbox event in the caller's transaction.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use shopmesh_platform::money::{Currency, Money};
use shopmesh_platform::pb::common::v1::PostalAddress;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::domain::{CancelReason, OrderLine, OrderStatus};

#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub reason: Option<CancelReason>,
    pub note: String,
    pub changed_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct OrderRecord {
    pub id: Uuid,
    pub user_id: String,
    pub status: OrderStatus,
    pub cancel_reason: Option<CancelReason>,
    pub total: Money,
    pub shipping_address: PostalAddress,
    pub coupon_code: String,
    pub paid: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub lines: Vec<OrderLine>,
    pub history: Vec<HistoryEntry>,
}

pub struct NewOrder<'a> {
    pub id: Uuid,
    pub user_id: &'a str,
    pub lines: &'a [OrderLine],
    pub total: Money,
    pub shipping_address: &'a PostalAddress,
    pub coupon_code: &'a str,
}

fn address_to_json(a: &PostalAddress) -> serde_json::Value {
    serde_json::json!({
        "recipient_name": a.recipient_name, "line1": a.line1, "line2": a.line2, "city": a.city,
        "region": a.region, "postal_code": a.postal_code, "country_code": a.country_code, "phone": a.phone,
    })
}

fn address_from_json(v: &serde_json::Value) -> PostalAddress {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
    PostalAddress {
        recipient_name: s("recipient_name"),
        line1: s("line1"),
        line2: s("line2"),
        city: s("city"),
        region: s("region"),
        postal_code: s("postal_code"),
        country_code: s("country_code"),
        phone: s("phone"),
    }
}

fn month_start(year: i32, month: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single().expect("first of month is valid")
}

fn add_months(year: i32, month: u32, delta: i32) -> (i32, u32) {
    let index = year * 12 + month as i32 - 1 + delta;
    (index.div_euclid(12), index.rem_euclid(12) as u32 + 1)
}

/// Creates the monthly partitions around `now` (one month back, `ahead`
/// months forward). Idempotent and safe to run from every replica.
pub async fn ensure_partitions(pool: &PgPool, now: DateTime<Utc>, ahead: i32) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serialise replicas: concurrent CREATE ... IF NOT EXISTS can still collide.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('shopmesh.order.partitions'))").execute(&mut *tx).await?;
    for delta in -1..=ahead {
        let (y, m) = add_months(now.year(), now.month(), delta);
        let (ny, nm) = add_months(y, m, 1);
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS orders_y{y:04}m{m:02} PARTITION OF orders FOR VALUES FROM ('{}') TO ('{}')",
            month_start(y, m).to_rfc3339(),
            month_start(ny, nm).to_rfc3339()
        );
        sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(&mut *tx).await?;
    }
    tx.commit().await
}

pub enum IdempotentHit {
    SameRequest(Uuid),
    DifferentRequest,
}

/// A live (≤ 24 h) idempotency key of `user_id`, compared with `request_hash`.
pub async fn find_idempotency_key(
    conn: &mut PgConnection,
    user_id: &str,
    key: &str,
    request_hash: &str,
) -> Result<Option<IdempotentHit>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT request_hash, order_id FROM idempotency_keys
         WHERE user_id = $1 AND key = $2 AND created_at > now() - interval '24 hours'",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| {
        let hash: String = r.get("request_hash");
        if hash == request_hash {
            IdempotentHit::SameRequest(r.get("order_id"))
        } else {
            IdempotentHit::DifferentRequest
        }
    }))
}

/// Claims an idempotency key for a new order. `false` when another request
/// holds it (the caller then answers with that request's order). Expired
/// keys are taken over.
pub async fn claim_idempotency_key(
    conn: &mut PgConnection,
    user_id: &str,
    key: &str,
    request_hash: &str,
    order_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, key) DO UPDATE
           SET request_hash = EXCLUDED.request_hash, order_id = EXCLUDED.order_id, created_at = now()
           WHERE idempotency_keys.created_at <= now() - interval '24 hours'",
    )
    .bind(user_id)
    .bind(key)
    .bind(request_hash)
    .bind(order_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

pub async fn delete_expired_idempotency_keys(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= now() - interval '24 hours'")
        .execute(pool)
        .await?
        .rows_affected())
}

/// Inserts a PENDING order with its lines and first history entry.
/// Writes a new PENDING order with its lines and first history entry, and
/// returns it as stored (so the caller need not read it back).
pub async fn insert_order(conn: &mut PgConnection, order: &NewOrder<'_>) -> Result<OrderRecord, sqlx::Error> {
    const PLACED: &str = "order placed";
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO orders (id, user_id, status, currency_code, total_minor, shipping_address, coupon_code, created_at, updated_at)
         VALUES ($1, $2, 'PENDING', $3, $4, $5, $6, now(), now()) RETURNING created_at",
    )
    .bind(order.id)
    .bind(order.user_id)
    .bind(order.total.currency.as_str())
    .bind(order.total.amount_minor)
    .bind(address_to_json(order.shipping_address))
    .bind(order.coupon_code)
    .fetch_one(&mut *conn)
    .await?;
    let lines = order.lines;
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_no, product_id, sku, name, currency_code, unit_price_minor, quantity)
         SELECT $1, l.* FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::int[])
             AS l(line_no, product_id, sku, name, currency_code, unit_price_minor, quantity)",
    )
    .bind(order.id)
    .bind((1..=lines.len() as i32).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.product_id.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.sku.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.name.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.unit_price.currency.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.unit_price.amount_minor).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.quantity).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    append_history(conn, order.id, OrderStatus::Pending, None, PLACED).await?;
    // now() is the transaction's start, so the history row carries created_at too.
    Ok(OrderRecord {
        id: order.id,
        user_id: order.user_id.to_owned(),
        status: OrderStatus::Pending,
        cancel_reason: None,
        total: order.total,
        shipping_address: order.shipping_address.clone(),
        coupon_code: order.coupon_code.to_owned(),
        paid: false,
        created_at,
        updated_at: created_at,
        lines: lines.to_vec(),
        history: vec![HistoryEntry {
            status: OrderStatus::Pending,
            reason: None,
            note: PLACED.to_owned(),
            changed_at: created_at,
        }],
    })
}

pub async fn append_history(
    conn: &mut PgConnection,
    order_id: Uuid,
    status: OrderStatus,
    reason: Option<CancelReason>,
    note: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO order_status_history (order_id, status, reason, note) VALUES ($1, $2, $3, $4)")
        .bind(order_id)
        .bind(status.as_str())
        .bind(reason.map(CancelReason::as_str))
        .bind(note)
        .execute(conn)
        .await?;
    Ok(())
}

/// The order's current state, row-locked until the transaction ends.
pub struct LockedOrder {
    pub id: Uuid,
    pub user_id: String,
    pub status: OrderStatus,
    pub paid: bool,
    pub total: Money,
    pub created_at: DateTime<Utc>,
}

pub async fn lock_order(conn: &mut PgConnection, id: Uuid) -> Result<Option<LockedOrder>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, user_id, status, paid, currency_code, total_minor, created_at FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| LockedOrder {
        id: r.get("id"),
        user_id: r.get("user_id"),
        status: OrderStatus::parse(r.get::<&str, _>("status")).expect("status CHECK constraint"),
        paid: r.get("paid"),
        total: money(r.get("currency_code"), r.get("total_minor")),
        created_at: r.get("created_at"),
    }))
}

pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: OrderStatus,
    reason: Option<CancelReason>,
    paid: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET status = $2, cancel_reason = $3, paid = $4, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(status.as_str())
        .bind(reason.map(CancelReason::as_str))
        .bind(paid)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_paid(conn: &mut PgConnection, id: Uuid, paid: bool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET paid = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(paid)
        .execute(conn)
        .await?;
    Ok(())
}

/// PENDING orders older than `cutoff`, locked; replicas skip each other's.
pub async fn lock_timed_out(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM orders WHERE status = 'PENDING' AND created_at < $1
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_all(conn)
    .await
}

fn money(currency: &str, amount: i64) -> Money {
    Money::new(Currency::parse(currency).expect("stored currencies are valid"), amount)
}

/// One order with lines and history; `owner` restricts it to that user.
pub async fn load_order(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<Option<OrderRecord>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, user_id, status, cancel_reason, currency_code, total_minor, shipping_address, coupon_code, paid,
                created_at, updated_at
         FROM orders WHERE id = $1 AND ($2::text IS NULL OR user_id = $2)",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut orders = vec![order_from_row(&row)];
    attach_details(pool, &mut orders).await?;
    Ok(orders.pop())
}

fn order_from_row(r: &sqlx::postgres::PgRow) -> OrderRecord {
    let shipping: serde_json::Value = r.get("shipping_address");
    OrderRecord {
        id: r.get("id"),
        user_id: r.get("user_id"),
        status: OrderStatus::parse(r.get::<&str, _>("status")).expect("status CHECK constraint"),
        cancel_reason: r.get::<Option<&str>, _>("cancel_reason").and_then(CancelReason::parse),
        total: money(r.get("currency_code"), r.get("total_minor")),
        shipping_address: address_from_json(&shipping),
        coupon_code: r.get("coupon_code"),
        paid: r.get("paid"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        lines: Vec::new(),
        history: Vec::new(),
    }
}

async fn attach_details(pool: &PgPool, orders: &mut [OrderRecord]) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let lines = sqlx::query(
        "SELECT order_id, product_id, sku, name, currency_code, unit_price_minor, quantity
         FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let history = sqlx::query(
        "SELECT order_id, status, reason, note, changed_at FROM order_status_history
         WHERE order_id = ANY($1) ORDER BY order_id, seq",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for order in orders.iter_mut() {
        order.lines = lines.iter().filter(|r| r.get::<Uuid, _>("order_id") == order.id).map(line_from_row).collect();
        order.history = history
            .iter()
            .filter(|r| r.get::<Uuid, _>("order_id") == order.id)
            .map(|r| HistoryEntry {
                status: OrderStatus::parse(r.get::<&str, _>("status")).unwrap_or(OrderStatus::Pending),
                reason: r.get::<Option<&str>, _>("reason").and_then(CancelReason::parse),
                note: r.get("note"),
                changed_at: r.get("changed_at"),
            })
            .collect();
    }
    Ok(())
}

fn line_from_row(r: &sqlx::postgres::PgRow) -> OrderLine {
    OrderLine {
        product_id: r.get("product_id"),
        sku: r.get("sku"),
        name: r.get("name"),
        unit_price: money(r.get("currency_code"), r.get("unit_price_minor")),
        quantity: r.get("quantity"),
    }
}

/// The lines of order `id`, in the order they were written.
pub async fn load_lines(conn: &mut PgConnection, id: Uuid) -> Result<Vec<OrderLine>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT product_id, sku, name, currency_code, unit_price_minor, quantity
         FROM order_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(line_from_row).collect())
}

/// Keyset cursor of the order list (newest first).
pub type ListCursor = (DateTime<Utc>, Uuid);

/// A page of `user_id`'s orders after `cursor`, newest first; fetches one
/// extra row to know whether another page exists.
pub async fn list_orders(
    pool: &PgPool,
    user_id: &str,
    cursor: Option<ListCursor>,
    limit: u32,
) -> Result<(Vec<OrderRecord>, Option<ListCursor>), sqlx::Error> {
    let (after_time, after_id) = match cursor {
        Some((t, id)) => (Some(t), Some(id)),
        None => (None, None),
    };
    let rows = sqlx::query(
        "SELECT id, user_id, status, cancel_reason, currency_code, total_minor, shipping_address, coupon_code, paid,
                created_at, updated_at
         FROM orders
         WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(user_id)
    .bind(after_time)
    .bind(after_id)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    let mut orders: Vec<OrderRecord> = rows.iter().map(order_from_row).collect();
    let next = if orders.len() > limit as usize {
        orders.truncate(limit as usize);
        orders.last().map(|o| (o.created_at, o.id))
    } else {
        None
    };
    attach_details(pool, &mut orders).await?;
    Ok((orders, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_arithmetic_wraps_years() {
        assert_eq!(add_months(2026, 12, 1), (2027, 1));
        assert_eq!(add_months(2026, 1, -1), (2025, 12));
        assert_eq!(add_months(2026, 11, 3), (2027, 2));
    }

    #[test]
    fn address_json_round_trips() {
        let a = PostalAddress {
            recipient_name: "A".into(),
            city: "B".into(),
            country_code: "DE".into(),
            ..Default::default()
        };
        assert_eq!(address_from_json(&address_to_json(&a)), a);
    }
}
