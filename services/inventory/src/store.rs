//! Stock and reservations in Postgres. Every change runs in one transaction
//! that also writes its events to the outbox.
//!
//! Locking, always in this order so nothing can deadlock:
//! 1. a transaction-scoped advisory lock on the order id, serialising every
//!    step of one order (two Reserves of one order can't both see "none yet");
//! 2. the stock rows involved, `FOR UPDATE`, ordered by product id.
//!
//! A transaction that runs several steps (a consumer batch) takes all of
//! its steps' locks first, in that order ([`Store::lock_for_batch`]).
//!
//! The `*_in` functions take the caller's connection so the saga consumer can
//! run them inside its inbox transaction; they must be called inside a
//! transaction (the advisory lock is released at its end).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::events::v1 as ev;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::domain::{
    self, Actor, CommitStep, Line, OrderId, ProductId, Quantity, ReleaseMode, ReleaseStep, Reservation,
    ReservationLines, ReservationStatus, StockLevel, StockTarget,
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

/// What a release did and the reservation after it; `reservation` is
/// `None` only for `ReleaseStep::NotFound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseOutcome {
    pub step: ReleaseStep,
    pub reservation: Option<Reservation>,
}

/// What a commit did; `reservation` is `None` only for `CommitStep::NotFound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    pub step: CommitStep,
    pub reservation: Option<Reservation>,
}

/// Why a reservation was refused, as StockReservationFailed reports it.
pub const REASON_INSUFFICIENT_STOCK: &str = "insufficient stock";

/// One order's reservation in a [`Store::reserve_all_in`] batch.
pub struct ReserveRequest<'a> {
    pub order_id: OrderId,
    pub lines: &'a ReservationLines,
    /// The checkout's fields for StockReserved; `None` for an admin reservation.
    pub order: Option<&'a OrderContext>,
    /// Parent of the outcome event this reservation publishes.
    pub span: &'a tracing::Span,
}

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
        let span = tracing::Span::current();
        let request = ReserveRequest { order_id, lines, order, span: &span };
        let mut done = self.reserve_all_in(conn, &[request]).await?;
        Ok(done.remove(0))
    }

    /// [`reserve_in`](Self::reserve_in) for several orders in a fixed number
    /// of statements, deciding each in turn against the stock the earlier ones
    /// left. Returns the reservations in request order.
    pub async fn reserve_all_in(
        &self,
        conn: &mut PgConnection,
        requests: &[ReserveRequest<'_>],
    ) -> Result<Vec<Reservation>, sqlx::Error> {
        let order_ids: Vec<OrderId> = requests.iter().map(|r| r.order_id).collect();
        lock_orders(conn, &order_ids).await?;
        let mut known = load_reservations(conn, &order_ids).await?;
        let wanted: Vec<ProductId> =
            requests.iter().filter(|r| !known.contains_key(&r.order_id)).flat_map(|r| r.lines.product_ids()).collect();
        let before = lock_stock(conn, &wanted).await?;
        let mut levels = before.clone();
        let mut made = Vec::new();
        let mut reserved_lines = Vec::new();
        let (mut reserved_events, mut failed_events) = (Vec::new(), Vec::new());
        let mut out = Vec::with_capacity(requests.len());
        for request in requests {
            if let Some(existing) = known.get(&request.order_id) {
                out.push(existing.clone());
                continue;
            }
            let short = domain::short_products(request.lines, |p| levels.get(&p).copied());
            let status = if short.is_empty() { ReservationStatus::Reserved } else { ReservationStatus::Rejected };
            let reservation = Reservation {
                order_id: request.order_id,
                status,
                lines: request.lines.lines().to_vec(),
                short_product_ids: short,
                by_checkout: request.order.is_some(),
            };
            if status == ReservationStatus::Reserved {
                for line in request.lines.lines() {
                    if let Some(level) = levels.get_mut(&line.product_id) {
                        level.reserved += i64::from(line.quantity.get());
                    }
                }
                reserved_lines.extend_from_slice(request.lines.lines());
                if let Some(order) = request.order {
                    reserved_events.push((events::stock_reserved(&reservation, order), request.span));
                }
            } else if request.order.is_some() {
                failed_events.push((events::reservation_failed(&reservation, REASON_INSUFFICIENT_STOCK), request.span));
            }
            known.insert(request.order_id, reservation.clone());
            made.push(reservation.clone());
            out.push(reservation);
        }
        insert_reservations(conn, &made).await?;
        if !reserved_lines.is_empty() {
            let after = adjust_stock(conn, &totals(&reserved_lines), 0, 1).await?;
            self.enqueue_low_stock(conn, &before, &after).await?;
        }
        let reserved: Vec<_> = reserved_events.iter().map(|(e, span)| (e, *span)).collect();
        self.outbox.enqueue_all(conn, &reserved).await?;
        let failed: Vec<_> = failed_events.iter().map(|(e, span)| (e, *span)).collect();
        self.outbox.enqueue_all(conn, &failed).await?;
        Ok(out)
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
        lock_orders(conn, &[order_id]).await?;
        if let Some(existing) = load_reservation(conn, order_id).await? {
            return Ok(existing);
        }
        let reservation = Reservation {
            order_id,
            status: ReservationStatus::Rejected,
            lines: vec![],
            short_product_ids: vec![],
            by_checkout: true,
        };
        insert_reservations(conn, std::slice::from_ref(&reservation)).await?;
        self.outbox.enqueue(conn, &events::reservation_failed(&reservation, reason)).await?;
        Ok(reservation)
    }

    pub async fn release(
        &self,
        order_id: OrderId,
        mode: ReleaseMode,
        actor: Actor,
    ) -> Result<ReleaseOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let outcome = self.release_in(&mut tx, order_id, mode, actor).await?;
        self.outbox.commit(tx).await?;
        Ok(outcome)
    }

    /// Returns a reservation's units; see [`domain::release_step`] for each
    /// status. Emits StockReleased only when units actually moved. An
    /// admin's release of a checkout's reservation moves nothing, and of an
    /// order inventory has not seen leaves no tombstone: the order's
    /// checkout, still on its way, would find it and reserve nothing.
    pub async fn release_in(
        &self,
        conn: &mut PgConnection,
        order_id: OrderId,
        mode: ReleaseMode,
        actor: Actor,
    ) -> Result<ReleaseOutcome, sqlx::Error> {
        lock_orders(conn, &[order_id]).await?;
        let current = load_reservation(conn, order_id).await?;
        let step = match &current {
            Some(r) if !actor.may_settle(r) => ReleaseStep::RefuseCheckout,
            None if actor == Actor::Admin => ReleaseStep::NotFound,
            _ => domain::release_step(current.as_ref().map(|r| r.status), mode),
        };
        let reservation = match current {
            None if step == ReleaseStep::NotFound => None,
            None => {
                let tombstone = Reservation {
                    order_id,
                    status: ReservationStatus::Released,
                    lines: vec![],
                    short_product_ids: vec![],
                    by_checkout: actor == Actor::Checkout,
                };
                insert_reservations(conn, std::slice::from_ref(&tombstone)).await?;
                Some(tombstone)
            }
            Some(mut r) if matches!(step, ReleaseStep::ReturnReserved | ReleaseStep::Restock) => {
                let before = lock_stock(conn, &product_ids(&r.lines)).await?;
                let after = if step == ReleaseStep::Restock {
                    adjust_stock(conn, &totals(&r.lines), 1, 0).await?
                } else {
                    adjust_stock(conn, &totals(&r.lines), 0, -1).await?
                };
                self.enqueue_low_stock(conn, &before, &after).await?;
                set_status(conn, &[order_id], ReservationStatus::Released).await?;
                self.outbox.enqueue(conn, &ev::StockReleased { order_id: order_id.to_string() }).await?;
                r.status = ReservationStatus::Released;
                Some(r)
            }
            // Settled, committed and kept, or not the actor's: nothing moves.
            Some(r) => Some(r),
        };
        Ok(ReleaseOutcome { step, reservation })
    }

    pub async fn commit(&self, order_id: OrderId, actor: Actor) -> Result<CommitOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let outcome = self.commit_in(&mut tx, order_id, actor).await?;
        self.outbox.commit(tx).await?;
        Ok(outcome)
    }

    /// Turns held units into shipped ones: on_hand −= q, reserved −= q.
    /// Anything but RESERVED changes nothing; the caller decides what the
    /// returned step means to it. An admin's commit of a checkout's
    /// reservation moves nothing.
    pub async fn commit_in(
        &self,
        conn: &mut PgConnection,
        order_id: OrderId,
        actor: Actor,
    ) -> Result<CommitOutcome, sqlx::Error> {
        let mut done = self.commit_all_in(conn, &[(order_id, &tracing::Span::current())], actor).await?;
        Ok(done.remove(0))
    }

    /// [`commit_in`](Self::commit_in) for several orders in a fixed number
    /// of statements; each order's span parents its StockCommitted. Returns
    /// the outcomes in order.
    pub async fn commit_all_in(
        &self,
        conn: &mut PgConnection,
        orders: &[(OrderId, &tracing::Span)],
        actor: Actor,
    ) -> Result<Vec<CommitOutcome>, sqlx::Error> {
        let order_ids: Vec<OrderId> = orders.iter().map(|(id, _)| *id).collect();
        lock_orders(conn, &order_ids).await?;
        let mut known = load_reservations(conn, &order_ids).await?;
        let mut outcomes = Vec::with_capacity(orders.len());
        let (mut committed, mut committed_lines, mut committed_events) = (Vec::new(), Vec::new(), Vec::new());
        for &(order_id, span) in orders {
            let current = known.get_mut(&order_id);
            let step = match &current {
                Some(r) if !actor.may_settle(r) => CommitStep::RefuseCheckout,
                _ => domain::commit_step(current.as_ref().map(|r| r.status)),
            };
            let reservation = match (step, current) {
                (CommitStep::Commit, Some(r)) => {
                    r.status = ReservationStatus::Committed;
                    committed.push(order_id);
                    committed_lines.extend_from_slice(&r.lines);
                    committed_events.push((ev::StockCommitted { order_id: order_id.to_string() }, span));
                    Some(r.clone())
                }
                (_, current) => current.cloned(),
            };
            outcomes.push(CommitOutcome { step, reservation });
        }
        if !committed.is_empty() {
            let totals = totals(&committed_lines);
            let products: Vec<ProductId> = totals.iter().map(|(p, _)| *p).collect();
            let before = lock_stock(conn, &products).await?;
            let after = adjust_stock(conn, &totals, -1, -1).await?;
            self.enqueue_low_stock(conn, &before, &after).await?;
            set_status(conn, &committed, ReservationStatus::Committed).await?;
            let events: Vec<_> = committed_events.iter().map(|(e, span)| (e, *span)).collect();
            self.outbox.enqueue_all(conn, &events).await?;
        }
        Ok(outcomes)
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

/// Units per product over `lines`, by product id.
fn totals(lines: &[Line]) -> Vec<(ProductId, i64)> {
    let mut by_product: BTreeMap<ProductId, i64> = BTreeMap::new();
    for l in lines {
        *by_product.entry(l.product_id).or_default() += i64::from(l.quantity.get());
    }
    by_product.into_iter().collect()
}

impl Store {
    /// Takes every lock a batch of saga steps will need, before any step
    /// runs: the orders' advisory locks, then the stock rows of what they
    /// reserve (`reserving`, from OrderCreated) or already hold. The steps
    /// take them again, which a lock already held makes free.
    pub async fn lock_for_batch(
        &self,
        conn: &mut PgConnection,
        orders: &[OrderId],
        reserving: &[ProductId],
    ) -> Result<(), sqlx::Error> {
        lock_orders(conn, orders).await?;
        let orders: Vec<Uuid> = orders.iter().map(OrderId::as_uuid).collect();
        let reserving: Vec<Uuid> = reserving.iter().map(ProductId::as_uuid).collect();
        sqlx::query(
            "SELECT 1 FROM stock
             WHERE product_id = ANY($1)
                OR product_id IN (SELECT product_id FROM reservation_lines WHERE order_id = ANY($2))
             ORDER BY product_id FOR UPDATE",
        )
        .bind(&reserving)
        .bind(&orders)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Takes the advisory lock of every order in `order_ids`, in id order (the
/// one order every transaction uses, so two batches can't deadlock).
async fn lock_orders(conn: &mut PgConnection, order_ids: &[OrderId]) -> Result<(), sqlx::Error> {
    let mut ids: Vec<Uuid> = order_ids.iter().map(OrderId::as_uuid).collect();
    ids.sort_unstable();
    ids.dedup();
    // A function scan over the array yields, and so locks, in array order.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('inventory.reservation:' || id::text, 0))
         FROM unnest($1::uuid[]) AS id",
    )
    .bind(&ids)
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

/// Adds `sign × units` per product to on_hand and reserved of rows the
/// caller has locked; returns the new levels. The table's CHECKs are the
/// last line of defence against going negative.
async fn adjust_stock(
    conn: &mut PgConnection,
    units: &[(ProductId, i64)],
    on_hand_sign: i64,
    reserved_sign: i64,
) -> Result<Vec<(ProductId, StockLevel)>, sqlx::Error> {
    let ids: Vec<Uuid> = units.iter().map(|(p, _)| p.as_uuid()).collect();
    let quantities: Vec<i64> = units.iter().map(|(_, q)| *q).collect();
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
    if rows.len() != units.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(rows.into_iter().map(|r| (r.product_id, r.level)).collect())
}

async fn insert_reservations(conn: &mut PgConnection, made: &[Reservation]) -> Result<(), sqlx::Error> {
    if made.is_empty() {
        return Ok(());
    }
    let order_ids: Vec<Uuid> = made.iter().map(|r| r.order_id.as_uuid()).collect();
    let statuses: Vec<&str> = made.iter().map(|r| r.status.as_str()).collect();
    let by_checkout: Vec<bool> = made.iter().map(|r| r.by_checkout).collect();
    // Short products and lines go flat, each beside its order id.
    let (mut short_orders, mut short_products) = (Vec::new(), Vec::new());
    let (mut line_orders, mut line_products, mut line_quantities) = (Vec::new(), Vec::new(), Vec::new());
    for r in made {
        for p in &r.short_product_ids {
            short_orders.push(r.order_id.as_uuid());
            short_products.push(p.as_uuid());
        }
        for l in &r.lines {
            line_orders.push(r.order_id.as_uuid());
            line_products.push(l.product_id.as_uuid());
            line_quantities.push(l.quantity.get());
        }
    }
    sqlx::query(
        "INSERT INTO reservations (order_id, status, short_product_ids, by_checkout)
         SELECT r.order_id, r.status,
                coalesce((SELECT array_agg(s.product_id ORDER BY s.n)
                          FROM unnest($3::uuid[], $4::uuid[]) WITH ORDINALITY AS s(order_id, product_id, n)
                          WHERE s.order_id = r.order_id), '{}'),
                r.by_checkout
         FROM unnest($1::uuid[], $2::text[], $5::bool[]) AS r(order_id, status, by_checkout)",
    )
    .bind(&order_ids)
    .bind(&statuses)
    .bind(&short_orders)
    .bind(&short_products)
    .bind(&by_checkout)
    .execute(&mut *conn)
    .await?;
    if !line_orders.is_empty() {
        sqlx::query(
            "INSERT INTO reservation_lines (order_id, product_id, quantity)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[])",
        )
        .bind(&line_orders)
        .bind(&line_products)
        .bind(&line_quantities)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn set_status(
    conn: &mut PgConnection,
    order_ids: &[OrderId],
    status: ReservationStatus,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = order_ids.iter().map(OrderId::as_uuid).collect();
    sqlx::query("UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = ANY($1)")
        .bind(&ids)
        .bind(status.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

async fn load_reservation(conn: &mut PgConnection, order_id: OrderId) -> Result<Option<Reservation>, sqlx::Error> {
    Ok(load_reservations(conn, &[order_id]).await?.remove(&order_id))
}

/// The reservations of `order_ids` that exist, with their lines, in one round
/// trip: a row per line, or one row for a reservation without lines.
async fn load_reservations(
    conn: &mut PgConnection,
    order_ids: &[OrderId],
) -> Result<HashMap<OrderId, Reservation>, sqlx::Error> {
    let ids: Vec<Uuid> = order_ids.iter().map(OrderId::as_uuid).collect();
    // `l.order_id = ANY($1)` repeats the join's condition so the lines are
    // found through their index whatever plan the statement got: a generic
    // plan made while the table was small (stale statistics, no autovacuum
    // yet) otherwise scans every reservation line on each call.
    let rows = sqlx::query(
        "SELECT r.order_id, r.status, r.short_product_ids, r.by_checkout, l.product_id, l.quantity
         FROM reservations r LEFT JOIN reservation_lines l ON l.order_id = r.order_id AND l.order_id = ANY($1)
         WHERE r.order_id = ANY($1) ORDER BY r.order_id, l.product_id",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut found: HashMap<OrderId, Reservation> = HashMap::new();
    for row in &rows {
        let order_id = OrderId::from_uuid(row.try_get("order_id")?);
        let reservation = match found.entry(order_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let status: String = row.try_get("status")?;
                let status = ReservationStatus::parse(&status)
                    .ok_or_else(|| corrupt(format!("reservation status {status:?}")))?;
                let short: Vec<Uuid> = row.try_get("short_product_ids")?;
                e.insert(Reservation {
                    order_id,
                    status,
                    lines: Vec::new(),
                    short_product_ids: short.into_iter().map(ProductId::from_uuid).collect(),
                    by_checkout: row.try_get("by_checkout")?,
                })
            }
        };
        if let (Some(product_id), Some(quantity)) =
            (row.try_get::<Option<Uuid>, _>("product_id")?, row.try_get::<Option<i32>, _>("quantity")?)
        {
            reservation.lines.push(Line {
                product_id: ProductId::from_uuid(product_id),
                quantity: Quantity::parse("quantity", quantity).map_err(|e| corrupt(e.to_string()))?,
            });
        }
    }
    Ok(found)
}
