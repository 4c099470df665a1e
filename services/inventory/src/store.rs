//! Stock and reservations in Postgres. Every change runs in one transaction
//! that also writes its events to the outbox.
//!
//! Locking, always in this order so nothing can deadlock:
//! 1. a transaction-scoped advisory lock on the order id, serialising every
//!    step of one order (two Reserves of one order can't both see "none yet");
//! 2. the stock rows involved, `FOR UPDATE`, ordered by product id.
//!
//! The `*_in` functions take the caller's connection so the saga consumer can
//! run them inside its inbox transaction; they must be called inside a
//! transaction (the advisory lock is released at its end).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::events::v1 as ev;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::domain::{
    self, CommitStep, Line, OrderId, ProductId, Quantity, ReleaseMode, ReleaseStep, Reservation, ReservationLines,
    ReservationStatus, StockLevel, StockTarget,
};
use crate::events::{self, OrderContext};

/// One product's stock as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRow {
    pub product_id: ProductId,
    pub level: StockLevel,
    pub updated_at: DateTime<Utc>,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for StockRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            product_id: ProductId::from_uuid(row.try_get("product_id")?),
            level: StockLevel {
                on_hand: row.try_get("on_hand")?,
                reserved: row.try_get("reserved")?,
                low_stock_threshold: row.try_get("low_stock_threshold")?,
            },
            updated_at: row.try_get("updated_at")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetStockError {
    #[error(transparent)]
    Refused(#[from] domain::Refused),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What a release did and the reservation after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseOutcome {
    pub step: ReleaseStep,
    pub reservation: Reservation,
}

/// What a commit did; `reservation` is `None` only for `CommitStep::NotFound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    pub step: CommitStep,
    pub reservation: Option<Reservation>,
}

/// Why a reservation was refused, as StockReservationFailed reports it.
pub const REASON_INSUFFICIENT_STOCK: &str = "insufficient stock";

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    outbox: Outbox,
    default_threshold: i64,
}

impl Store {
    pub fn new(pool: PgPool, outbox: Outbox, default_threshold: i64) -> Self {
        Self { pool, outbox, default_threshold }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn get_stock(&self, product_id: ProductId) -> Result<Option<StockRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT product_id, on_hand, reserved, low_stock_threshold, updated_at FROM stock WHERE product_id = $1",
        )
        .bind(product_id.as_uuid())
        .fetch_optional(&self.pool)
        .await
    }

    /// Upserts on_hand (and optionally the threshold); reserved is untouched.
    pub async fn set_stock(&self, product_id: ProductId, target: StockTarget) -> Result<StockRow, SetStockError> {
        let mut tx = self.pool.begin().await?;
        // Create-if-missing first so there is always a row to lock; a refused
        // target rolls the insert back with everything else.
        let created = sqlx::query(
            "INSERT INTO stock (product_id, on_hand, reserved, low_stock_threshold) VALUES ($1, 0, 0, $2)
             ON CONFLICT (product_id) DO NOTHING",
        )
        .bind(product_id.as_uuid())
        .bind(self.default_threshold)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let current = lock_stock(&mut tx, &[product_id]).await?;
        let before = if created { None } else { current.get(&product_id).copied() };
        let after = domain::apply_target(before.as_ref(), target, self.default_threshold)?;
        let row: StockRow = sqlx::query_as(
            "UPDATE stock SET on_hand = $2, low_stock_threshold = $3, updated_at = now() WHERE product_id = $1
             RETURNING product_id, on_hand, reserved, low_stock_threshold, updated_at",
        )
        .bind(product_id.as_uuid())
        .bind(after.on_hand)
        .bind(after.low_stock_threshold)
        .fetch_one(&mut *tx)
        .await?;
        if domain::low_stock_crossed(before.as_ref(), &row.level) {
            self.outbox.enqueue(&mut tx, &events::low_stock(product_id, &row.level)).await?;
        }
        self.outbox.commit(tx).await?;
        Ok(row)
    }

    pub async fn reserve(&self, order_id: OrderId, lines: &ReservationLines) -> Result<Reservation, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let reservation = self.reserve_in(&mut tx, order_id, lines, None).await?;
        self.outbox.commit(tx).await?;
        Ok(reservation)
    }

    /// Reserves every line or none. An order that already has a reservation
    /// (in any status, tombstones included) gets it back unchanged and no
    /// event — the first attempt already published its outcome. `order`
    /// carries the saga's fields StockReserved passes on to payment; an admin
    /// reservation (`None`) is outside any checkout, so it publishes no saga
    /// outcome (a StockReserved without a payment token would start a charge).
    pub async fn reserve_in(
        &self,
        conn: &mut PgConnection,
        order_id: OrderId,
        lines: &ReservationLines,
        order: Option<&OrderContext>,
    ) -> Result<Reservation, sqlx::Error> {
        lock_order(conn, order_id).await?;
        if let Some(existing) = load_reservation(conn, order_id).await? {
            return Ok(existing);
        }
        let before = lock_stock(conn, &lines.product_ids()).await?;
        let short = domain::short_products(lines, |p| before.get(&p).copied());
        let status = if short.is_empty() { ReservationStatus::Reserved } else { ReservationStatus::Rejected };
        let reservation = Reservation { order_id, status, lines: lines.lines().to_vec(), short_product_ids: short };
        insert_reservation(conn, &reservation).await?;
        if status == ReservationStatus::Reserved {
            let after = adjust_stock(conn, lines.lines(), 0, 1).await?;
            self.enqueue_low_stock(conn, &before, &after).await?;
            if let Some(order) = order {
                self.outbox.enqueue(conn, &events::stock_reserved(&reservation, order)).await?;
            }
        } else if order.is_some() {
            let failed = events::reservation_failed(&reservation, REASON_INSUFFICIENT_STOCK);
            self.outbox.enqueue(conn, &failed).await?;
        }
        Ok(reservation)
    }

    /// Records a REJECTED reservation without lines for an order whose lines
    /// can never be reserved (malformed), so the saga hears back instead of
    /// waiting. Idempotent like `reserve_in`.
    pub async fn reject_in(
        &self,
        conn: &mut PgConnection,
        order_id: OrderId,
        reason: &str,
    ) -> Result<Reservation, sqlx::Error> {
        lock_order(conn, order_id).await?;
        if let Some(existing) = load_reservation(conn, order_id).await? {
            return Ok(existing);
        }
        let reservation =
            Reservation { order_id, status: ReservationStatus::Rejected, lines: vec![], short_product_ids: vec![] };
        insert_reservation(conn, &reservation).await?;
        self.outbox.enqueue(conn, &events::reservation_failed(&reservation, reason)).await?;
        Ok(reservation)
    }

    pub async fn release(&self, order_id: OrderId, mode: ReleaseMode) -> Result<ReleaseOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let outcome = self.release_in(&mut tx, order_id, mode).await?;
        self.outbox.commit(tx).await?;
        Ok(outcome)
    }

    /// Returns a reservation's units; see [`domain::release_step`] for each
    /// status. Emits StockReleased only when units actually moved.
    pub async fn release_in(
        &self,
        conn: &mut PgConnection,
        order_id: OrderId,
        mode: ReleaseMode,
    ) -> Result<ReleaseOutcome, sqlx::Error> {
        lock_order(conn, order_id).await?;
        let current = load_reservation(conn, order_id).await?;
        let step = domain::release_step(current.as_ref().map(|r| r.status), mode);
        let reservation = match current {
            None => {
                let tombstone = Reservation {
                    order_id,
                    status: ReservationStatus::Released,
                    lines: vec![],
                    short_product_ids: vec![],
                };
                insert_reservation(conn, &tombstone).await?;
                tombstone
            }
            Some(mut r) if matches!(step, ReleaseStep::ReturnReserved | ReleaseStep::Restock) => {
                let before = lock_stock(conn, &product_ids(&r.lines)).await?;
                let after = if step == ReleaseStep::Restock {
                    adjust_stock(conn, &r.lines, 1, 0).await?
                } else {
                    adjust_stock(conn, &r.lines, 0, -1).await?
                };
                self.enqueue_low_stock(conn, &before, &after).await?;
                set_status(conn, order_id, ReservationStatus::Released).await?;
                self.outbox.enqueue(conn, &ev::StockReleased { order_id: order_id.to_string() }).await?;
                r.status = ReservationStatus::Released;
                r
            }
            // Settled, or committed and kept: nothing moves.
            Some(r) => r,
        };
        Ok(ReleaseOutcome { step, reservation })
    }

    pub async fn commit(&self, order_id: OrderId) -> Result<CommitOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let outcome = self.commit_in(&mut tx, order_id).await?;
        self.outbox.commit(tx).await?;
        Ok(outcome)
    }

    /// Turns held units into shipped ones: on_hand −= q, reserved −= q.
    /// Anything but RESERVED changes nothing; the caller decides what the
    /// returned step means to it.
    pub async fn commit_in(&self, conn: &mut PgConnection, order_id: OrderId) -> Result<CommitOutcome, sqlx::Error> {
        lock_order(conn, order_id).await?;
        let current = load_reservation(conn, order_id).await?;
        let step = domain::commit_step(current.as_ref().map(|r| r.status));
        let reservation = match (step, current) {
            (CommitStep::Commit, Some(mut r)) => {
                let before = lock_stock(conn, &product_ids(&r.lines)).await?;
                let after = adjust_stock(conn, &r.lines, -1, -1).await?;
                self.enqueue_low_stock(conn, &before, &after).await?;
                set_status(conn, order_id, ReservationStatus::Committed).await?;
                self.outbox.enqueue(conn, &ev::StockCommitted { order_id: order_id.to_string() }).await?;
                r.status = ReservationStatus::Committed;
                Some(r)
            }
            (_, current) => current,
        };
        Ok(CommitOutcome { step, reservation })
    }

    pub async fn get_reservation(&self, order_id: OrderId) -> Result<Option<Reservation>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        load_reservation(&mut conn, order_id).await
    }

    /// One LowStock per product whose change crossed its threshold.
    async fn enqueue_low_stock(
        &self,
        conn: &mut PgConnection,
        before: &HashMap<ProductId, StockLevel>,
        after: &[(ProductId, StockLevel)],
    ) -> Result<(), sqlx::Error> {
        for (product_id, level) in after {
            if domain::low_stock_crossed(before.get(product_id), level) {
                self.outbox.enqueue(conn, &events::low_stock(*product_id, level)).await?;
            }
        }
        Ok(())
    }
}

fn product_ids(lines: &[Line]) -> Vec<ProductId> {
    lines.iter().map(|l| l.product_id).collect()
}

async fn lock_order(conn: &mut PgConnection, order_id: OrderId) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('inventory.reservation:' || $1::text, 0))")
        .bind(order_id.as_uuid())
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the stock rows of `products` in product-id order (the one order
/// every transaction uses) and returns their levels; unknown products are
/// simply absent.
async fn lock_stock(
    conn: &mut PgConnection,
    products: &[ProductId],
) -> Result<HashMap<ProductId, StockLevel>, sqlx::Error> {
    let ids: Vec<Uuid> = products.iter().map(ProductId::as_uuid).collect();
    let rows: Vec<StockRow> = sqlx::query_as(
        "SELECT product_id, on_hand, reserved, low_stock_threshold, updated_at FROM stock
         WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.product_id, r.level)).collect())
}

/// Adds `sign × quantity` per line to on_hand and reserved of rows the
/// caller has locked; returns the new levels. The table's CHECKs are the
/// last line of defence against going negative.
async fn adjust_stock(
    conn: &mut PgConnection,
    lines: &[Line],
    on_hand_sign: i64,
    reserved_sign: i64,
) -> Result<Vec<(ProductId, StockLevel)>, sqlx::Error> {
    let ids: Vec<Uuid> = lines.iter().map(|l| l.product_id.as_uuid()).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| i64::from(l.quantity.get())).collect();
    let rows: Vec<StockRow> = sqlx::query_as(
        "UPDATE stock s SET on_hand = s.on_hand + $3 * l.q, reserved = s.reserved + $4 * l.q, updated_at = now()
         FROM unnest($1::uuid[], $2::bigint[]) AS l(product_id, q)
         WHERE s.product_id = l.product_id
         RETURNING s.product_id, s.on_hand, s.reserved, s.low_stock_threshold, s.updated_at",
    )
    .bind(&ids)
    .bind(&quantities)
    .bind(on_hand_sign)
    .bind(reserved_sign)
    .fetch_all(conn)
    .await?;
    // Reservations only ever hold stocked products and stock is never
    // deleted, so a missing row is a broken invariant, not a user error.
    if rows.len() != lines.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(rows.into_iter().map(|r| (r.product_id, r.level)).collect())
}

async fn insert_reservation(conn: &mut PgConnection, r: &Reservation) -> Result<(), sqlx::Error> {
    let short: Vec<Uuid> = r.short_product_ids.iter().map(ProductId::as_uuid).collect();
    sqlx::query("INSERT INTO reservations (order_id, status, short_product_ids) VALUES ($1, $2, $3)")
        .bind(r.order_id.as_uuid())
        .bind(r.status.as_str())
        .bind(&short)
        .execute(&mut *conn)
        .await?;
    if !r.lines.is_empty() {
        let ids: Vec<Uuid> = r.lines.iter().map(|l| l.product_id.as_uuid()).collect();
        let quantities: Vec<i32> = r.lines.iter().map(|l| l.quantity.get()).collect();
        sqlx::query(
            "INSERT INTO reservation_lines (order_id, product_id, quantity)
             SELECT $1, product_id, quantity FROM unnest($2::uuid[], $3::int[]) AS l(product_id, quantity)",
        )
        .bind(r.order_id.as_uuid())
        .bind(&ids)
        .bind(&quantities)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn set_status(conn: &mut PgConnection, order_id: OrderId, status: ReservationStatus) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1")
        .bind(order_id.as_uuid())
        .bind(status.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

async fn load_reservation(conn: &mut PgConnection, order_id: OrderId) -> Result<Option<Reservation>, sqlx::Error> {
    // One round trip: a row per line, or one row without a line.
    let rows = sqlx::query(
        "SELECT r.status, r.short_product_ids, l.product_id, l.quantity
         FROM reservations r LEFT JOIN reservation_lines l ON l.order_id = r.order_id
         WHERE r.order_id = $1 ORDER BY l.product_id",
    )
    .bind(order_id.as_uuid())
    .fetch_all(&mut *conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let status: String = first.try_get("status")?;
    let status = ReservationStatus::parse(&status).ok_or_else(|| corrupt(format!("reservation status {status:?}")))?;
    let short: Vec<Uuid> = first.try_get("short_product_ids")?;
    let mut lines = Vec::with_capacity(rows.len());
    for row in &rows {
        let (Some(product_id), Some(quantity)) =
            (row.try_get::<Option<Uuid>, _>("product_id")?, row.try_get::<Option<i32>, _>("quantity")?)
        else {
            continue;
        };
        lines.push(Line {
            product_id: ProductId::from_uuid(product_id),
            quantity: Quantity::parse("quantity", quantity).map_err(|e| corrupt(e.to_string()))?,
        });
    }
    Ok(Some(Reservation {
        order_id,
        status,
        lines,
        short_product_ids: short.into_iter().map(ProductId::from_uuid).collect(),
    }))
}
