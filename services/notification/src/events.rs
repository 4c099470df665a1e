//! What notification consumes: `OrderConfirmed` and `OrderCancelled`
//! (order-events) and `PaymentRefunded` (payment-events), each turned into
//! one message for the order's customer. The inbox applies each event once.

use shopmesh_platform::consumer::{EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::pb::common::v1::Money;
use shopmesh_platform::pb::events::v1::{CancelReason, OrderCancelled, OrderConfirmed, PaymentRefunded};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, Amount, CancelCause, Occurrence};
use crate::store;

/// Consumer group and inbox name.
pub const CONSUMER: &str = "notification";

pub struct Notifier;

fn amount(money: Option<Money>) -> Option<Amount> {
    money.filter(|m| !m.currency_code.is_empty()).map(|m| Amount { currency: m.currency_code, minor: m.amount_minor })
}

fn cause(reason: i32) -> CancelCause {
    match CancelReason::try_from(reason) {
        Ok(CancelReason::OutOfStock) => CancelCause::OutOfStock,
        Ok(CancelReason::PaymentDeclined) => CancelCause::PaymentDeclined,
        Ok(CancelReason::Timeout) => CancelCause::Timeout,
        Ok(CancelReason::CustomerRequest) => CancelCause::CustomerRequest,
        _ => CancelCause::Unknown,
    }
}

/// The recipient and what happened, from one of the consumed events.
fn occurrence(event: &ReceivedEvent) -> Result<(String, Occurrence), HandlerError> {
    if event.is::<OrderConfirmed>() {
        let e = event.payload::<OrderConfirmed>()?;
        Ok((e.user_id, Occurrence::Confirmed { order_id: e.order_id, total: amount(e.total) }))
    } else if event.is::<OrderCancelled>() {
        let e = event.payload::<OrderCancelled>()?;
        Ok((e.user_id, Occurrence::Cancelled { order_id: e.order_id, cause: cause(e.reason) }))
    } else {
        let e = event.payload::<PaymentRefunded>()?;
        Ok((e.user_id, Occurrence::Refunded { order_id: e.order_id, amount: amount(e.amount) }))
    }
}

#[async_trait::async_trait]
impl EventHandler for Notifier {
    fn wants(&self, event_type: &str) -> bool {
        [OrderConfirmed::TYPE, OrderCancelled::TYPE, PaymentRefunded::TYPE].contains(&event_type)
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        let (user_id, occurrence) = occurrence(event)?;
        // No recipient will ever appear for this event: dead-letter it.
        let user_id = Uuid::parse_str(&user_id)
            .map_err(|_| HandlerError::Permanent(format!("user_id {user_id:?} is not a UUID")))?;
        let message = domain::compose(occurrence);
        let created = store::insert(tx, event.event_id, user_id, &message).await?;
        tracing::info!(%user_id, kind = message.kind.as_str(), order_id = %message.order_id, created, "notification");
        Ok(())
    }
}
