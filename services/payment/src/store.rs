//! Payments in Postgres. Every state change writes its event to the outbox
//! in the same transaction, so a payment and its announcement commit together.

use chrono::{DateTime, Utc};
use shopmesh_platform::money::Money;
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::outbox_insert;
use shopmesh_platform::pb::common::v1::Money as PbMoney;
use shopmesh_platform::pb::events::v1::{PaymentCaptured, PaymentDeclined, PaymentRefunded};
use sqlx::{FromRow as _, PgConnection, PgPool, Row as _};
use uuid::Uuid;

use crate::domain::{self, PaymentStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub currency_code: String,
    pub amount_minor: i64,
    pub status: String,
    pub provider: String,
    pub provider_reference: String,
    pub card_display: String,
    pub decline_reason: String,
    /// Refund attempts the provider did not take (REFUND_PENDING).
    pub refund_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PaymentRow {
    /// The CHECK constraint admits only known statuses.
    pub fn status(&self) -> PaymentStatus {
        PaymentStatus::parse(&self.status).expect("payments.status is constrained to known values")
    }

    fn amount(&self) -> PbMoney {
        PbMoney { currency_code: self.currency_code.clone(), amount_minor: self.amount_minor }
    }
}

// A macro rather than a const so queries stay `&'static str` (sqlx's SqlSafeStr).
macro_rules! columns {
    () => {
        "id, order_id, user_id, currency_code, amount_minor, status, provider, provider_reference, card_display, \
         decline_reason, refund_attempts, created_at, updated_at"
    };
}

/// Serialises everything payment does for one order (reservation and
/// cancellation arrive on different topics and may be handled concurrently).
pub async fn lock_order(conn: &mut PgConnection, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('payment.order:' || $1::text, 0))")
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// What payment knows of one order when an event about it arrives.
#[derive(Debug)]
pub struct OrderPayment {
    /// Its payment, locked until the transaction ends.
    pub payment: Option<PaymentRow>,
    pub cancelled: bool,
    /// Providers asked to charge it that did not refuse outright, first
    /// asked first: each may hold its money. (A refusal, `Unavailable`, took
    /// nothing; asking such a provider again would only wait on its outage.)
    pub may_hold: Vec<String>,
    /// The provider a charge must go to, if any: the latest one asked that
    /// did not refuse outright (see `Router::charge`).
    pub pinned_to: Option<String>,
}

/// The order's payment, cancellation and charge attempts in one round trip.
pub async fn order_payment(conn: &mut PgConnection, order_id: Uuid) -> Result<OrderPayment, sqlx::Error> {
    let row = sqlx::query(concat!(
        "WITH p AS (SELECT ",
        columns!(),
        " FROM payments WHERE order_id = $1 FOR UPDATE)
         SELECT p.*,
                EXISTS (SELECT 1 FROM cancelled_orders WHERE order_id = $1) AS cancelled,
                ARRAY(SELECT provider FROM charge_attempts WHERE order_id = $1 AND NOT refused
                      ORDER BY attempted_at, provider) AS may_hold,
                (SELECT provider FROM charge_attempts WHERE order_id = $1 AND NOT refused
                 ORDER BY attempted_at DESC, provider DESC LIMIT 1) AS pinned_to
         FROM (VALUES (1)) AS one LEFT JOIN p ON true"
    ))
    .bind(order_id)
    .fetch_one(conn)
    .await?;
    let payment = match row.try_get::<Option<Uuid>, _>("id")? {
        Some(_) => Some(PaymentRow::from_row(&row)?),
        None => None,
    };
    Ok(OrderPayment {
        payment,
        cancelled: row.try_get("cancelled")?,
        may_hold: row.try_get("may_hold")?,
        pinned_to: row.try_get("pinned_to")?,
    })
}

/// Remembers that `order_id` is cancelled; repeated cancellations keep the first.
pub async fn record_cancellation(conn: &mut PgConnection, order_id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO cancelled_orders (order_id, reason) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING")
        .bind(order_id)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// Notes, in its own committed transaction, that `provider` is about to be
/// asked to charge `order_id` (again: a new ask may take what an earlier
/// refusal did not).
pub async fn record_charge_attempt(pool: &PgPool, order_id: Uuid, provider: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO charge_attempts (order_id, provider) VALUES ($1, $2)
         ON CONFLICT (order_id, provider) DO UPDATE SET refused = false, attempted_at = now()",
    )
    .bind(order_id)
    .bind(provider)
    .execute(pool)
    .await?;
    Ok(())
}

/// Notes that `provider` refused the charge of `order_id` it was just asked.
pub async fn record_charge_refused(pool: &PgPool, order_id: Uuid, provider: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE charge_attempts SET refused = true WHERE order_id = $1 AND provider = $2")
        .bind(order_id)
        .bind(provider)
        .execute(pool)
        .await?;
    Ok(())
}

/// How a charge attempt ended, ready to be recorded.
#[derive(Debug, Clone)]
pub enum Outcome {
    Captured { provider: String, provider_reference: String, card_display: String },
    Declined { provider: String, reason: String },
}

/// What is known of an order's payment before it is recorded. The amount
/// may be unchargeable (a decline records it as the event gave it).
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub currency_code: String,
    pub amount_minor: i64,
}

/// Records the one payment of an order and its PaymentCaptured or
/// PaymentDeclined, in one statement. Fails on the order's unique key if
/// one exists.
pub async fn record_payment(
    conn: &mut PgConnection,
    outbox: &Outbox,
    payment: &NewPayment,
    outcome: &Outcome,
) -> Result<PaymentRow, sqlx::Error> {
    let (status, provider, reference, display, reason) = match outcome {
        Outcome::Captured { provider, provider_reference, card_display } => {
            (PaymentStatus::Captured, provider.as_str(), provider_reference.as_str(), card_display.as_str(), "")
        }
        Outcome::Declined { provider, reason } => (PaymentStatus::Declined, provider.as_str(), "", "", reason.as_str()),
    };
    let id = Uuid::now_v7();
    let amount = PbMoney { currency_code: payment.currency_code.clone(), amount_minor: payment.amount_minor };
    let span = tracing::Span::current();
    let event = match status {
        PaymentStatus::Captured => outbox.row(
            &PaymentCaptured {
                order_id: payment.order_id.to_string(),
                payment_id: id.to_string(),
                amount: Some(amount),
                provider: provider.to_owned(),
            },
            &span,
        ),
        _ => outbox.row(
            &PaymentDeclined {
                order_id: payment.order_id.to_string(),
                payment_id: id.to_string(),
                reason: reason.to_owned(),
            },
            &span,
        ),
    };
    let query = sqlx::query(concat!(
        "WITH event AS (",
        outbox_insert!(),
        "VALUES ($11, $12, $13, $14, $15, $16))
         INSERT INTO payments (id, order_id, user_id, currency_code, amount_minor, status, provider,
                               provider_reference, card_display, decline_reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(payment.order_id)
    .bind(payment.user_id)
    .bind(&payment.currency_code)
    .bind(payment.amount_minor)
    .bind(status.as_str())
    .bind(provider)
    .bind(reference)
    .bind(display)
    .bind(reason);
    let row = event.bind(query).fetch_one(&mut *conn).await?;
    PaymentRow::from_row(&row)
}

/// Marks a captured payment refunded and announces it, in one statement.
/// The caller has already checked the transition and had the provider give
/// the money back.
pub async fn record_refund(conn: &mut PgConnection, outbox: &Outbox, payment: &PaymentRow) -> Result<(), sqlx::Error> {
    let event = outbox.row(
        &PaymentRefunded {
            order_id: payment.order_id.to_string(),
            payment_id: payment.id.to_string(),
            amount: Some(payment.amount()),
            user_id: payment.user_id.to_string(),
        },
        &tracing::Span::current(),
    );
    let query = sqlx::query(concat!(
        "WITH event AS (",
        outbox_insert!(),
        "VALUES ($3, $4, $5, $6, $7, $8)) UPDATE payments SET status = $2, updated_at = now() WHERE id = $1"
    ))
    .bind(payment.id)
    .bind(PaymentStatus::Refunded.as_str());
    event.bind(query).execute(&mut *conn).await?;
    Ok(())
}

/// Marks `payment` as still owing its refund after a failed attempt, to be
/// asked again after `retry_in`.
pub async fn defer_refund(
    conn: &mut PgConnection,
    payment: &PaymentRow,
    error: &str,
    retry_in: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET status = $2, refund_attempts = refund_attempts + 1, refund_error = $3,
                next_refund_at = now() + make_interval(secs => $4), updated_at = now()
         WHERE id = $1",
    )
    .bind(payment.id)
    .bind(PaymentStatus::RefundPending.as_str())
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` refunds due for another attempt, locked; rows another
/// transaction holds (the consumer, another replica) are skipped.
pub async fn lock_due_refunds(conn: &mut PgConnection, limit: i64) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM payments WHERE status = 'REFUND_PENDING' AND next_refund_at <= now()
         ORDER BY next_refund_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// What a capture check has heard so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckHistory {
    /// How often the question was asked and not settled.
    pub attempts: i32,
    /// Of those, how often a provider answered that it holds nothing (the
    /// rest it could not answer at all).
    pub empty_answers: i32,
}

/// Why a capture check is asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckAnswer {
    /// A provider could not say, or the check itself failed.
    Unanswered,
    /// Every provider asked says it holds nothing; a charge in flight may still land.
    HoldsNothing,
}

impl CheckHistory {
    /// The history once `answer` is added to it.
    pub fn after(self, answer: CheckAnswer) -> Self {
        let empty = i32::from(answer == CheckAnswer::HoldsNothing);
        Self { attempts: self.attempts.saturating_add(1), empty_answers: self.empty_answers.saturating_add(empty) }
    }
}

/// Keeps the question whether a journaled provider holds money for the
/// cancelled `order_id`, to be asked again after `retry_in`: `before` is
/// what the caller saw of it (its check taken, or none), plus `answer`.
/// Where a check is still kept (a check that failed, or a redelivered event
/// meeting one), `answer` is added to it instead.
pub async fn owe_capture_check(
    conn: &mut PgConnection,
    order_id: Uuid,
    user_id: Uuid,
    before: CheckHistory,
    answer: CheckAnswer,
    error: &str,
    retry_in: std::time::Duration,
) -> Result<(), sqlx::Error> {
    let now = before.after(answer);
    sqlx::query(
        "INSERT INTO capture_checks (order_id, user_id, attempts, empty_answers, last_error, next_check_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
         ON CONFLICT (order_id) DO UPDATE
            SET attempts = capture_checks.attempts + 1,
                empty_answers = capture_checks.empty_answers + $7,
                last_error = $5, next_check_at = EXCLUDED.next_check_at",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(now.attempts)
    .bind(now.empty_answers)
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .bind(now.empty_answers - before.empty_answers)
    .execute(conn)
    .await?;
    Ok(())
}

/// A capture check that is due.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CaptureCheck {
    pub order_id: Uuid,
    pub user_id: Uuid,
    #[sqlx(flatten)]
    pub history: CheckHistory,
}

/// Up to `limit` capture checks that are due, oldest first. Not locked: the
/// caller takes the order's lock, then [`take_capture_check`].
pub async fn due_capture_checks(pool: &PgPool, limit: i64) -> Result<Vec<CaptureCheck>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, user_id, attempts, empty_answers FROM capture_checks WHERE next_check_at <= now()
         ORDER BY next_check_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Removes the order's capture check; false if another pass already took it.
pub async fn take_capture_check(conn: &mut PgConnection, order_id: Uuid) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query("DELETE FROM capture_checks WHERE order_id = $1").bind(order_id).execute(conn).await?;
    Ok(taken.rows_affected() == 1)
}

/// How many refunds are owed and not yet taken by a provider, and how many
/// cancelled orders still wait to learn whether a provider holds money.
pub async fn count_owed(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM payments WHERE status = 'REFUND_PENDING'),
                (SELECT count(*) FROM capture_checks)",
    )
    .fetch_one(pool)
    .await
}

/// The amount of a stored payment, for a provider refund.
pub fn amount(payment: &PaymentRow) -> Option<Money> {
    domain::chargeable(&payment.amount()).ok()
}

pub async fn get_payment(pool: &PgPool, id: Uuid) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM payments WHERE id = $1")).bind(id).fetch_optional(pool).await
}

pub use shopmesh_platform::paging::NewestFirst as ListCursor;

/// One page of `user_id`'s payments, newest first, after `cursor`. Fetches
/// one extra row so the caller knows whether another page exists.
pub async fn list_payments(
    pool: &PgPool,
    user_id: Uuid,
    order_id: Option<Uuid>,
    cursor: Option<ListCursor>,
    limit: u32,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM payments
         WHERE user_id = $1
           AND ($2::uuid IS NULL OR order_id = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC
         LIMIT $5"
    ))
    .bind(user_id)
    .bind(order_id)
    .bind(cursor.map(|(created_at, _)| created_at))
    .bind(cursor.map(|(_, id)| id))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
}
