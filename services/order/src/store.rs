//! Order persistence. Every state change writes its history row and its
//! outbox event in the same statement as the change (checkout's statement is
//! its own transaction; a saga transition's runs in the caller's).

use chrono::{DateTime, Datelike, TimeZone, Utc};
use shopmesh_platform::money::{Currency, Money};
use shopmesh_platform::outbox::OutboxRow;
use shopmesh_platform::outbox_insert;
use shopmesh_platform::pb::common::v1::PostalAddress;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::domain::{CancelReason, OrderLine, OrderStatus, PaymentState};

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
    pub payment: PaymentState,
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
    /// The version of the cart the lines were read at.
    pub cart_version: i64,
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

/// The `created_at` range a lookup by order id reads. Order ids are UUIDv7,
/// stamped just before the insert sets `created_at`, so a lookup bounded
/// around the stamp reads the one month partition holding the order (two at
/// a month's edge) instead of probing every month's index, a cost that grows
/// with every month kept. The bounds allow a day of clock difference between
/// service and database; `None` bounds read every partition.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CreatedWindow {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl CreatedWindow {
    const ALL: Self = Self { from: None, to: None };

    fn around(id: Uuid) -> Self {
        let stamped = id.get_timestamp().and_then(|t| {
            let (secs, nanos) = t.to_unix();
            DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, nanos)
        });
        // Checked: a client can send any id, and one stamped at the edge of
        // time must read everything rather than panic.
        let bounds = stamped
            .and_then(|t| Some((t.checked_sub_signed(CLOCK_ALLOWANCE)?, t.checked_add_signed(CLOCK_ALLOWANCE)?)));
        match bounds {
            Some((from, to)) => Self { from: Some(from), to: Some(to) },
            None => Self::ALL,
        }
    }
}

const CLOCK_ALLOWANCE: chrono::Duration = chrono::Duration::days(1);

/// One row by order id: `query` binds the window's bounds as its last two
/// parameters. A row outside the id's window (clocks more than a day apart)
/// is still found, by a second read of every partition.
async fn fetch_by_id<'q>(
    conn: &mut PgConnection,
    id: Uuid,
    query: impl Fn(CreatedWindow) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<Option<sqlx::postgres::PgRow>, sqlx::Error> {
    let window = CreatedWindow::around(id);
    let row = query(window).fetch_optional(&mut *conn).await?;
    if row.is_some() || window == CreatedWindow::ALL {
        return Ok(row);
    }
    let row = query(CreatedWindow::ALL).fetch_optional(&mut *conn).await?;
    if row.is_some() {
        tracing::warn!(order_id = %id, "order stored a day or more away from its id's time: are the service's and the database's clocks apart?");
    }
    Ok(row)
}

/// The placeholders `fetch_by_id` binds, as a SQL condition on `o`.
macro_rules! in_window {
    ($from:literal, $to:literal) => {
        concat!(
            " AND o.created_at >= coalesce(",
            $from,
            ", '-infinity') AND o.created_at < coalesce(",
            $to,
            ", 'infinity')"
        )
    };
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

/// The Idempotency-Key a new order claims: taken unless another request
/// holds it live (an expired key is taken over).
pub struct KeyClaim<'a> {
    pub key: &'a str,
    pub request_hash: &'a str,
}

pub async fn delete_expired_idempotency_keys(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= now() - interval '24 hours'")
        .execute(pool)
        .await?
        .rows_affected())
}

/// Writes a new PENDING order with its lines, its first history entry and
/// its `OrderCreated` outbox row, after claiming `claim`, as ONE autocommit
/// statement: no transaction to open and commit, and each round trip costs
/// the database as much as its work. Returns the order as stored, or `None`
/// (and nothing written) when another request holds the key.
pub async fn place_order(
    pool: &PgPool,
    order: &NewOrder<'_>,
    claim: Option<KeyClaim<'_>>,
    created: &OutboxRow,
) -> Result<Option<OrderRecord>, sqlx::Error> {
    const PLACED: &str = "order placed";
    let lines = order.lines;
    // Everything after `go` writes only if the key was claimed (or none was given).
    let query = sqlx::query(concat!(
        "WITH claim AS (
             INSERT INTO idempotency_keys (user_id, key, request_hash, order_id)
             SELECT $2, $15, $16, $1 WHERE $15::text IS NOT NULL
             ON CONFLICT (user_id, key) DO UPDATE
               SET request_hash = EXCLUDED.request_hash, order_id = EXCLUDED.order_id, created_at = now()
               WHERE idempotency_keys.created_at <= now() - interval '24 hours'
             RETURNING 1
         ), go AS (
             SELECT WHERE $15::text IS NULL OR EXISTS (SELECT FROM claim)
         ), placed AS (
             INSERT INTO orders (id, user_id, status, currency_code, total_minor, shipping_address, coupon_code,
                                 cart_version, created_at, updated_at)
             SELECT $1, $2, 'PENDING', $3, $4, $5, $6, $17, now(), now() FROM go RETURNING created_at
         ), lines AS (
             INSERT INTO order_lines (order_id, line_no, product_id, sku, name, currency_code, unit_price_minor, quantity)
             SELECT $1, l.* FROM go, UNNEST($7::int[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::int[])
                 AS l(line_no, product_id, sku, name, currency_code, unit_price_minor, quantity)
         ), history AS (
             INSERT INTO order_status_history (order_id, status, note) SELECT $1, 'PENDING', $14 FROM go
         ), created AS (",
        outbox_insert!(),
        "SELECT $18, $19, $20, $21, $22, $23 FROM go
         )
         SELECT created_at FROM placed"
    ))
    .bind(order.id)
    .bind(order.user_id)
    .bind(order.total.currency.as_str())
    .bind(order.total.amount_minor)
    .bind(address_to_json(order.shipping_address))
    .bind(order.coupon_code)
    .bind((1..=lines.len() as i32).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.product_id.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.sku.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.name.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.unit_price.currency.as_str()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.unit_price.amount_minor).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.quantity).collect::<Vec<_>>())
    .bind(PLACED)
    .bind(claim.as_ref().map(|c| c.key))
    .bind(claim.as_ref().map(|c| c.request_hash))
    .bind(order.cart_version);
    let Some(row) = created.bind(query).fetch_optional(pool).await? else { return Ok(None) };
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    // now() is the statement's start, so the history row carries created_at too.
    Ok(Some(OrderRecord {
        id: order.id,
        user_id: order.user_id.to_owned(),
        status: OrderStatus::Pending,
        cancel_reason: None,
        total: order.total,
        shipping_address: order.shipping_address.clone(),
        coupon_code: order.coupon_code.to_owned(),
        payment: PaymentState::Unpaid,
        created_at,
        updated_at: created_at,
        lines: lines.to_vec(),
        history: vec![HistoryEntry {
            status: OrderStatus::Pending,
            reason: None,
            note: PLACED.to_owned(),
            changed_at: created_at,
        }],
    }))
}

/// The lines of order `o` as a JSON array of [`LineColumns`], in line order.
macro_rules! lines_column {
    () => {
        "(SELECT coalesce(jsonb_agg(jsonb_build_array(product_id, sku, name, currency_code, unit_price_minor, quantity)
                                    ORDER BY line_no), '[]')
          FROM order_lines WHERE order_id = o.id) AS lines"
    };
}

/// The `lines` column of a row read with `lines_column!`.
fn lines_of(r: &sqlx::postgres::PgRow) -> Result<Vec<OrderLine>, sqlx::Error> {
    let lines: sqlx::types::Json<Vec<LineColumns>> = r.try_get("lines")?;
    Ok(lines.0.into_iter().map(line).collect())
}

/// The order's current state, row-locked until the transaction ends.
pub struct LockedOrder {
    pub id: Uuid,
    pub user_id: String,
    pub status: OrderStatus,
    pub payment: PaymentState,
    pub total: Money,
    pub created_at: DateTime<Utc>,
    pub lines: Vec<OrderLine>,
    pub cart_version: i64,
}

pub async fn lock_order(conn: &mut PgConnection, id: Uuid) -> Result<Option<LockedOrder>, sqlx::Error> {
    let query = |window: CreatedWindow| {
        sqlx::query(concat!(
            "SELECT o.id, o.user_id, o.status, o.paid, o.refunded, o.currency_code, o.total_minor, o.created_at, o.cart_version, ",
            lines_column!(),
            " FROM orders o WHERE o.id = $1",
            in_window!("$2", "$3"),
            " FOR UPDATE OF o"
        ))
        .bind(id)
        .bind(window.from)
        .bind(window.to)
    };
    let row = fetch_by_id(conn, id, query).await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(LockedOrder {
        id: r.get("id"),
        user_id: r.get("user_id"),
        status: OrderStatus::parse(r.get::<&str, _>("status")).expect("status CHECK constraint"),
        payment: PaymentState::from_columns(r.get("paid"), r.get("refunded")),
        total: money(r.get("currency_code"), r.get("total_minor")),
        created_at: r.get("created_at"),
        lines: lines_of(&r)?,
        cart_version: r.get("cart_version"),
    }))
}

/// A change of a locked order: its new status and payment state, and the
/// history row that records it.
pub struct Change<'a> {
    pub status: OrderStatus,
    /// Set on cancelling; `None` keeps the order's reason (a note on a
    /// cancelled order leaves it cancelled for the same reason).
    pub reason: Option<CancelReason>,
    pub payment: PaymentState,
    pub note: &'a str,
}

/// The order row update and its history row, as one statement's CTEs.
/// Stamped with the clock, not `now()`: a batch transaction that began
/// before another's change to the order (and waited for its lock) would
/// otherwise date its own change earlier than the one it follows.
macro_rules! change_cte {
    () => {
        "WITH at AS MATERIALIZED (SELECT clock_timestamp() AS t), changed AS (
             UPDATE orders SET status = $2, cancel_reason = coalesce($3, cancel_reason),
                 paid = ($4 = 'HELD'), refunded = ($4 = 'REFUNDED'), updated_at = (SELECT t FROM at)
             WHERE id = $1 AND created_at = $6
         ), history AS (
             INSERT INTO order_status_history (order_id, status, reason, note, changed_at)
             SELECT $1, $2, $3, $5, t FROM at
         ) "
    };
}

fn bind_change<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    order: &LockedOrder,
    change: &Change<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(order.id)
        .bind(change.status.as_str())
        .bind(change.reason.map(CancelReason::as_str))
        .bind(change.payment.as_str())
        .bind(change.note)
        .bind(order.created_at)
}

/// Applies `change` to `order`, and writes `event` to the outbox if there
/// is one, in one round trip. The order's full key names its partition.
pub async fn apply_change(
    conn: &mut PgConnection,
    order: &LockedOrder,
    change: &Change<'_>,
    event: Option<&OutboxRow>,
) -> Result<(), sqlx::Error> {
    match event {
        None => bind_change(sqlx::query(concat!(change_cte!(), "SELECT 1")), order, change).execute(conn).await?,
        Some(event) => {
            let query = sqlx::query(concat!(
                change_cte!(),
                ", event AS (",
                outbox_insert!(),
                "VALUES ($7, $8, $9, $10, $11, $12)) SELECT 1"
            ));
            event.bind(bind_change(query, order, change)).execute(conn).await?
        }
    };
    Ok(())
}

/// PENDING orders older than `timeout` by the database's clock (which
/// stamped them), locked; replicas skip each other's.
pub async fn lock_timed_out(
    conn: &mut PgConnection,
    timeout: std::time::Duration,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM orders WHERE status = 'PENDING' AND created_at < now() - $1 * interval '1 millisecond'
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// How many orders have been PENDING for longer than `age` by the
/// database's clock (which stamped them), counted up to `cap` (the index
/// on pending orders is read no further).
pub async fn count_pending_older_than(pool: &PgPool, age: std::time::Duration, cap: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT 1 FROM orders
             WHERE status = 'PENDING' AND created_at < now() - $1 * interval '1 millisecond'
             LIMIT $2
         ) late",
    )
    .bind(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
    .bind(cap)
    .fetch_one(pool)
    .await
}

fn money(currency: &str, amount: i64) -> Money {
    Money::new(Currency::parse(currency).expect("stored currencies are valid"), amount)
}

/// The columns of an order read with its lines and history (JSON arrays of
/// rows), so one statement answers one order or a page of them.
macro_rules! order_columns {
    () => {
        concat!(
            "o.id, o.user_id, o.status, o.cancel_reason, o.currency_code, o.total_minor, o.shipping_address,
             o.coupon_code, o.paid, o.refunded, o.created_at, o.updated_at, ",
            lines_column!(),
            ",
         (SELECT coalesce(jsonb_agg(jsonb_build_array(status, reason, note, (extract(epoch FROM changed_at) * 1000000)::bigint)
                                    ORDER BY seq), '[]')
          FROM order_status_history WHERE order_id = o.id) AS history"
        )
    };
}

/// A line as `order_columns!` and a confirmation read it: product id, sku,
/// name, currency, unit price in minor units, quantity.
type LineColumns = (String, String, String, String, i64, i32);

fn line((product_id, sku, name, currency, unit_price_minor, quantity): LineColumns) -> OrderLine {
    OrderLine { product_id, sku, name, unit_price: money(&currency, unit_price_minor), quantity }
}
/// A history entry as `order_columns!` reads it: status, reason, note, and
/// the time of the change in microseconds since the epoch.
type HistoryColumns = (String, Option<String>, String, i64);

/// One order with lines and history; `owner` restricts it to that user.
pub async fn load_order(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<Option<OrderRecord>, sqlx::Error> {
    let query = |window: CreatedWindow| {
        sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders o WHERE o.id = $1 AND ($2::text IS NULL OR o.user_id = $2)",
            in_window!("$3", "$4")
        ))
        .bind(id)
        .bind(owner)
        .bind(window.from)
        .bind(window.to)
    };
    let row = fetch_by_id(&mut *pool.acquire().await?, id, query).await?;
    row.as_ref().map(order_from_row).transpose()
}

fn order_from_row(r: &sqlx::postgres::PgRow) -> Result<OrderRecord, sqlx::Error> {
    let shipping: serde_json::Value = r.get("shipping_address");
    let history: sqlx::types::Json<Vec<HistoryColumns>> = r.try_get("history")?;
    Ok(OrderRecord {
        id: r.get("id"),
        user_id: r.get("user_id"),
        status: OrderStatus::parse(r.get::<&str, _>("status")).expect("status CHECK constraint"),
        cancel_reason: r.get::<Option<&str>, _>("cancel_reason").and_then(CancelReason::parse),
        total: money(r.get("currency_code"), r.get("total_minor")),
        shipping_address: address_from_json(&shipping),
        coupon_code: r.get("coupon_code"),
        payment: PaymentState::from_columns(r.get("paid"), r.get("refunded")),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        lines: lines_of(r)?,
        history: history
            .0
            .into_iter()
            .map(|(status, reason, note, changed_at_micros)| HistoryEntry {
                status: OrderStatus::parse(&status).unwrap_or(OrderStatus::Pending),
                reason: reason.as_deref().and_then(CancelReason::parse),
                note,
                changed_at: DateTime::from_timestamp_micros(changed_at_micros).unwrap_or_default(),
            })
            .collect(),
    })
}

pub use shopmesh_platform::paging::NewestFirst as ListCursor;

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
    let rows = sqlx::query(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders o
         WHERE o.user_id = $1 AND ($2::timestamptz IS NULL OR (o.created_at, o.id) < ($2, $3))
           -- Implied by the line above, in the form Postgres prunes partitions by.
           AND o.created_at <= coalesce($2, 'infinity')
         ORDER BY o.created_at DESC, o.id DESC LIMIT $4"
    ))
    .bind(user_id)
    .bind(after_time)
    .bind(after_id)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    let mut orders: Vec<OrderRecord> = rows.iter().map(order_from_row).collect::<Result<_, _>>()?;
    let next = if orders.len() > limit as usize {
        orders.truncate(limit as usize);
        orders.last().map(|o| (o.created_at, o.id))
    } else {
        None
    };
    Ok((orders, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_ids_window_spans_a_day_either_side_of_its_stamp() {
        let placed = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap();
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, placed.timestamp() as u64, 0));
        let window = CreatedWindow::around(id);
        assert_eq!(window.from, Some(placed - chrono::Duration::days(1)));
        assert_eq!(window.to, Some(placed + chrono::Duration::days(1)));
    }

    #[test]
    fn an_id_without_a_time_stamp_reads_every_partition() {
        assert_eq!(CreatedWindow::around(Uuid::new_v4()), CreatedWindow::ALL);
    }

    #[test]
    fn any_id_a_client_sends_gives_a_window_without_panicking() {
        for id in [Uuid::nil(), Uuid::max(), Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0000)] {
            let _ = CreatedWindow::around(id);
        }
        let v1 = Uuid::from_u128(!(0xf << 76) | (1 << 76));
        let _ = CreatedWindow::around(v1);
        let v7_last = Uuid::from_u128(!(0xf << 76) | (7 << 76));
        assert_ne!(CreatedWindow::around(v7_last), CreatedWindow::ALL, "the last v7 stamp is year 10889");
    }

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
