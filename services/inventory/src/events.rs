//! What inventory publishes (StockReserved, StockReservationFailed,
//! StockReleased, StockCommitted, LowStock — always through the outbox, in
//! the transaction of the change) and its part of the checkout saga:
//!
//! | event (topic)                    | effect                                          |
//! |----------------------------------|-------------------------------------------------|
//! | OrderCreated (order-events)      | reserve all lines → StockReserved / ...Failed   |
//! | PaymentDeclined (payment-events) | release a RESERVED reservation                  |
//! | OrderCancelled (order-events)    | release RESERVED, or restock COMMITTED          |
//! | OrderConfirmed (order-events)    | commit                                          |
//!
//! Each step is idempotent per order id on its own (reservations table), on
//! top of the platform inbox deduplicating redelivered events. A release that
//! arrives before its reserve leaves a tombstone, so the late reserve does
//! nothing (see `domain::ReleaseStep::Tombstone`).

use shopmesh_platform::consumer::{Consumed, EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::pb::common::v1::Money;
use shopmesh_platform::pb::events::v1 as ev;
use sqlx::PgConnection;
use tracing::Instrument;

use crate::domain::{
    Actor, CommitStep, Invalid, OrderId, ProductId, ReleaseMode, ReleaseStep, Reservation, ReservationLines, StockLevel,
};
use crate::store::{CommitOutcome, ReserveRequest, Store};

/// Consumer group and inbox name.
pub const CONSUMER: &str = "inventory";

/// Fields of OrderCreated that StockReserved passes on to payment untouched
/// (inventory never reads them).
#[derive(Debug, Clone, Default)]
pub struct OrderContext {
    pub user_id: String,
    pub total: Option<Money>,
    pub payment_token: String,
    /// The order's lines as the order service priced them.
    pub lines: Vec<ev::OrderLine>,
}

impl From<ev::OrderCreated> for OrderContext {
    fn from(created: ev::OrderCreated) -> Self {
        Self {
            user_id: created.user_id,
            total: created.total,
            payment_token: created.payment_token,
            lines: created.lines,
        }
    }
}

pub fn stock_reserved(r: &Reservation, o: &OrderContext) -> ev::StockReserved {
    ev::StockReserved {
        order_id: r.order_id.to_string(),
        lines: o.lines.clone(),
        user_id: o.user_id.clone(),
        total: o.total.clone(),
        payment_token: o.payment_token.clone(),
    }
}

pub fn reservation_failed(r: &Reservation, reason: &str) -> ev::StockReservationFailed {
    ev::StockReservationFailed {
        order_id: r.order_id.to_string(),
        short_product_ids: r.short_product_ids.iter().map(ToString::to_string).collect(),
        reason: reason.to_owned(),
    }
}

pub fn low_stock(product_id: ProductId, level: &StockLevel) -> ev::LowStock {
    ev::LowStock {
        product_id: product_id.to_string(),
        available: level.available(),
        threshold: level.low_stock_threshold,
    }
}

/// Inventory's steps of the checkout saga.
pub struct SagaHandler {
    pub store: Store,
}

fn order_id(raw: &str) -> Result<OrderId, HandlerError> {
    // Without a valid id there is no one to answer: dead-letter.
    OrderId::parse("order_id", raw).map_err(|e| HandlerError::Permanent(e.to_string()))
}

impl SagaHandler {
    /// Answers an OrderCreated whose lines can never be reserved.
    async fn reject_invalid(
        &self,
        tx: &mut PgConnection,
        order_id: OrderId,
        invalid: &Invalid,
    ) -> Result<(), HandlerError> {
        // Retrying won't fix the lines; answer so the order is cancelled.
        let r = self.store.reject_in(tx, order_id, &format!("invalid order lines: {invalid}")).await?;
        tracing::warn!(%order_id, %invalid, status = r.status.as_str(), "OrderCreated with invalid lines");
        Ok(())
    }

    async fn release(&self, tx: &mut PgConnection, raw_order_id: &str, mode: ReleaseMode) -> Result<(), HandlerError> {
        let order_id = order_id(raw_order_id)?;
        let outcome = self.store.release_in(tx, order_id, mode, Actor::Checkout).await?;
        if outcome.step == ReleaseStep::RefuseCommitted {
            // Payment is declined before commit in the saga; a committed order
            // here means events crossed. Keep the shipped stock, but say so.
            tracing::warn!(%order_id, "release of a committed reservation ignored");
        } else {
            tracing::info!(%order_id, step = ?outcome.step, "reservation released");
        }
        Ok(())
    }

    /// One or many OrderCreated: one reservation pass for all valid ones.
    async fn orders_created(&self, tx: &mut PgConnection, set: &[Consumed<'_>]) -> Result<(), HandlerError> {
        let mut valid = Vec::with_capacity(set.len());
        for c in set {
            let created: ev::OrderCreated = c.event.payload()?;
            let order_id = order_id(&created.order_id)?;
            let raw: Vec<(&str, i32)> = created.lines.iter().map(|l| (l.product_id.as_str(), l.quantity)).collect();
            match ReservationLines::parse(&raw) {
                Ok(lines) => valid.push((order_id, lines, OrderContext::from(created), &c.span)),
                Err(invalid) => self.reject_invalid(tx, order_id, &invalid).instrument(c.span.clone()).await?,
            }
        }
        let requests: Vec<ReserveRequest<'_>> = valid
            .iter()
            .map(|(order_id, lines, context, span)| ReserveRequest {
                order_id: *order_id,
                lines,
                order: Some(context),
                span,
            })
            .collect();
        let reservations = self.store.reserve_all_in(tx, &requests).await?;
        for r in &reservations {
            tracing::info!(order_id = %r.order_id, status = r.status.as_str(), short = r.short_product_ids.len(), "reservation for OrderCreated");
        }
        Ok(())
    }

    /// One or many OrderConfirmed: one commit pass.
    async fn orders_confirmed(&self, tx: &mut PgConnection, set: &[Consumed<'_>]) -> Result<(), HandlerError> {
        let mut orders = Vec::with_capacity(set.len());
        for c in set {
            let confirmed: ev::OrderConfirmed = c.event.payload()?;
            orders.push((order_id(&confirmed.order_id)?, &c.span));
        }
        let outcomes = self.store.commit_all_in(tx, &orders, Actor::Checkout).await?;
        for ((order_id, _), outcome) in orders.iter().zip(&outcomes) {
            committed_or_error(*order_id, outcome)?;
        }
        Ok(())
    }
}

/// Whether a commit for OrderConfirmed did what the saga expects.
fn committed_or_error(order_id: OrderId, outcome: &CommitOutcome) -> Result<(), HandlerError> {
    match outcome.step {
        CommitStep::Commit | CommitStep::AlreadyCommitted => {
            tracing::info!(%order_id, step = ?outcome.step, "reservation committed");
            Ok(())
        }
        // A confirmed order whose stock isn't held is an inconsistency for an
        // operator; the DLQ records it.
        CommitStep::NotFound => Err(HandlerError::Permanent(format!("order {order_id} confirmed but never reserved"))),
        CommitStep::Refuse(status) => Err(HandlerError::Permanent(format!(
            "order {order_id} confirmed but its reservation is {}",
            status.as_str()
        ))),
        // Only an admin's commit is refused so; the saga's never is.
        CommitStep::RefuseCheckout => {
            Err(HandlerError::Permanent(format!("order {order_id}: the checkout's own commit was refused")))
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for SagaHandler {
    fn wants(&self, event_type: &str) -> bool {
        [ev::OrderCreated::TYPE, ev::PaymentDeclined::TYPE, ev::OrderCancelled::TYPE, ev::OrderConfirmed::TYPE]
            .contains(&event_type)
    }

    fn applies_as_set(&self, event_type: &str) -> bool {
        [ev::OrderCreated::TYPE, ev::OrderConfirmed::TYPE].contains(&event_type)
    }

    async fn lock_batch(&self, tx: &mut PgConnection, events: &[&ReceivedEvent]) -> Result<(), HandlerError> {
        // Every event inventory applies is keyed by its order id.
        let orders: Vec<OrderId> =
            events.iter().filter_map(|e| OrderId::parse("order_id", &e.envelope.aggregate_id).ok()).collect();
        // An event that does not decode fails in its own step; nothing to lock for it.
        let reserving: Vec<ProductId> = events
            .iter()
            .filter(|e| e.is::<ev::OrderCreated>())
            .filter_map(|e| e.payload::<ev::OrderCreated>().ok())
            .flat_map(|created| created.lines)
            .filter_map(|l| ProductId::parse("product_id", &l.product_id).ok())
            .collect();
        self.store.lock_for_batch(tx, &orders, &reserving).await?;
        Ok(())
    }

    async fn handle_set(&self, tx: &mut PgConnection, set: &[Consumed<'_>]) -> Result<(), HandlerError> {
        match set.first() {
            Some(c) if c.event.is::<ev::OrderCreated>() => self.orders_created(tx, set).await,
            Some(c) if c.event.is::<ev::OrderConfirmed>() => self.orders_confirmed(tx, set).await,
            _ => Err(HandlerError::Permanent("a set of an event type inventory does not apply as a set".into())),
        }
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        // One event is a set of one; it runs inside its consume span.
        let alone = || [Consumed { event, span: tracing::Span::current() }];
        if event.is::<ev::OrderCreated>() {
            self.orders_created(tx, &alone()).await
        } else if event.is::<ev::PaymentDeclined>() {
            let declined: ev::PaymentDeclined = event.payload()?;
            self.release(tx, &declined.order_id, ReleaseMode::KeepCommitted).await
        } else if event.is::<ev::OrderCancelled>() {
            let cancelled: ev::OrderCancelled = event.payload()?;
            self.release(tx, &cancelled.order_id, ReleaseMode::RestockCommitted).await
        } else if event.is::<ev::OrderConfirmed>() {
            self.orders_confirmed(tx, &alone()).await
        } else {
            Ok(())
        }
    }
}
