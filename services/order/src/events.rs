//! The order's part of the checkout saga: what it consumes (stock and
//! payment outcomes), the timeout sweeper, and the one function every input
//! goes through to change an order and publish the consequence.

use std::time::Duration;

use shopmesh_platform::consumer::{EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent, ReceivedEvent};
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::events::v1 as ev;
use shopmesh_platform::shutdown::Shutdown;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{CancelReason, OrderInput, OrderLine, OrderStatus, PaymentState, Transition, decide};
use crate::store;

fn proto_reason(reason: CancelReason) -> ev::CancelReason {
    match reason {
        CancelReason::OutOfStock => ev::CancelReason::OutOfStock,
        CancelReason::PaymentDeclined => ev::CancelReason::PaymentDeclined,
        CancelReason::Timeout => ev::CancelReason::Timeout,
        CancelReason::CustomerRequest => ev::CancelReason::CustomerRequest,
    }
}

impl OrderLine {
    /// The line as saga events carry it.
    pub fn to_event(&self) -> ev::OrderLine {
        ev::OrderLine {
            product_id: self.product_id.clone(),
            quantity: self.quantity,
            unit_price: Some(self.unit_price.to_proto()),
        }
    }
}

/// Applies `input` to order `id` inside the caller's transaction: status,
/// history and the outgoing event commit together. Returns the status after,
/// or `None` for an unknown order.
pub async fn advance(
    conn: &mut PgConnection,
    outbox: &Outbox,
    id: Uuid,
    input: OrderInput,
) -> Result<Option<OrderStatus>, sqlx::Error> {
    let Some(order) = store::lock_order(conn, id).await? else {
        tracing::warn!(order_id = %id, ?input, "saga input for an unknown order ignored");
        return Ok(None);
    };
    let order_id = order.id.to_string();
    match decide(order.status, order.payment, input) {
        Transition::Confirm => {
            let confirmed = store::Change {
                status: OrderStatus::Confirmed,
                reason: None,
                payment: PaymentState::Held,
                note: "payment captured",
            };
            let event = ev::OrderConfirmed {
                order_id,
                user_id: order.user_id.clone(),
                total: Some(order.total.to_proto()),
                lines: order.lines.iter().map(OrderLine::to_event).collect(),
                cart_version: order.cart_version,
            };
            let event = outbox.row(&event, &tracing::Span::current());
            store::apply_change(conn, &order, &confirmed, Some(&event)).await?;
            record_final(OrderStatus::Confirmed, None, order.created_at);
            Ok(Some(OrderStatus::Confirmed))
        }
        Transition::Cancel { reason } => {
            let cancelled = store::Change {
                status: OrderStatus::Cancelled,
                reason: Some(reason),
                payment: order.payment,
                note: "",
            };
            let event = ev::OrderCancelled {
                order_id,
                user_id: order.user_id.clone(),
                reason: proto_reason(reason) as i32,
                was_paid: order.payment == PaymentState::Held,
            };
            let event = outbox.row(&event, &tracing::Span::current());
            store::apply_change(conn, &order, &cancelled, Some(&event)).await?;
            if order.status == OrderStatus::Pending {
                record_final(OrderStatus::Cancelled, Some(reason), order.created_at);
            }
            Ok(Some(OrderStatus::Cancelled))
        }
        Transition::Note { note, payment } => {
            let note = store::Change { status: order.status, reason: None, payment, note };
            store::apply_change(conn, &order, &note, None).await?;
            Ok(Some(order.status))
        }
        Transition::Ignore => Ok(Some(order.status)),
    }
}

fn record_final(status: OrderStatus, reason: Option<CancelReason>, created_at: chrono::DateTime<chrono::Utc>) {
    let reason = reason.map(CancelReason::as_str).unwrap_or("");
    metrics::counter!("orders_finalized_total", "status" => status.as_str(), "reason" => reason).increment(1);
    let elapsed = (chrono::Utc::now() - created_at).to_std().unwrap_or_default();
    metrics::histogram!("saga_duration_seconds", "status" => status.as_str()).record(elapsed.as_secs_f64());
}

/// Consumes inventory-events and payment-events.
pub struct SagaHandler {
    pub outbox: Outbox,
}

fn order_id(raw: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw).map_err(|_| HandlerError::Permanent(format!("order id {raw:?} is not a UUID")))
}

#[async_trait::async_trait]
impl EventHandler for SagaHandler {
    fn wants(&self, event_type: &str) -> bool {
        [
            ev::StockReservationFailed::TYPE,
            ev::PaymentCaptured::TYPE,
            ev::PaymentDeclined::TYPE,
            ev::PaymentRefunded::TYPE,
        ]
        .contains(&event_type)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        let (id, input) = if event.is::<ev::StockReservationFailed>() {
            (event.payload::<ev::StockReservationFailed>()?.order_id, OrderInput::StockReservationFailed)
        } else if event.is::<ev::PaymentCaptured>() {
            (event.payload::<ev::PaymentCaptured>()?.order_id, OrderInput::PaymentCaptured)
        } else if event.is::<ev::PaymentDeclined>() {
            (event.payload::<ev::PaymentDeclined>()?.order_id, OrderInput::PaymentDeclined)
        } else {
            (event.payload::<ev::PaymentRefunded>()?.order_id, OrderInput::PaymentRefunded)
        };
        advance(tx, &self.outbox, order_id(&id)?, input).await?;
        Ok(())
    }
}

/// Housekeeping settings of the order service.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// A PENDING order older than this is cancelled with TIMEOUT.
    pub pending_timeout: Duration,
    pub interval: Duration,
}

/// Cancels orders stuck in PENDING, and keeps partitions and idempotency
/// keys in shape. Runs on every replica; row locks keep them apart.
pub async fn run_sweeper(pool: PgPool, outbox: Outbox, config: SweepConfig, shutdown: Shutdown) {
    let mut last_housekeeping = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = shutdown.wait() => return,
        }
        if let Err(e) = cancel_timed_out(&pool, &outbox, config.pending_timeout).await {
            tracing::warn!(error = %e, "pending-order timeout sweep failed");
        }
        if last_housekeeping.elapsed() > Duration::from_secs(3600) {
            last_housekeeping = tokio::time::Instant::now();
            if let Err(e) = store::ensure_partitions(&pool, chrono::Utc::now(), 3).await {
                tracing::warn!(error = %e, "creating order partitions failed");
            }
            if let Err(e) = store::delete_expired_idempotency_keys(&pool).await {
                tracing::warn!(error = %e, "deleting expired idempotency keys failed");
            }
        }
    }
}

/// One sweep: cancels up to a batch of timed-out orders; returns how many.
pub async fn cancel_timed_out(pool: &PgPool, outbox: &Outbox, timeout: Duration) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids = store::lock_timed_out(&mut tx, timeout, 100).await?;
    for id in &ids {
        advance(&mut tx, outbox, *id, OrderInput::TimedOut).await?;
    }
    outbox.commit(tx).await?;
    if !ids.is_empty() {
        tracing::info!(count = ids.len(), "cancelled orders that stayed PENDING past the timeout");
    }
    Ok(ids.len())
}
