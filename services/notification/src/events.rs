//! What notification consumes: `OrderConfirmed` and `OrderCancelled`
//! (order-events) and `PaymentRefunded` (payment-events), each turned into
//! one message for the order's customer. The inbox applies each event once.

use shopmesh_platform::consumer::{Consumed, EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::money::Money;
use shopmesh_platform::pb::common::v1::Money as PbMoney;
use shopmesh_platform::pb::events::v1::{CancelReason, OrderCancelled, OrderConfirmed, PaymentRefunded};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, CancelCause, Message, Occurrence};
use crate::store::{self, NewNotification};

/// Consumer group and inbox name.
pub const CONSUMER: &str = "notification";

pub struct Notifier;

/// An amount worth naming in a message; without one the message leaves it out.
fn amount(money: Option<PbMoney>) -> Option<Money> {
    Money::from_proto_opt(money.as_ref()).ok()
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

/// The recipient and the message an event causes.
fn notification(event: &ReceivedEvent) -> Result<(Uuid, Message), HandlerError> {
    let (user_id, occurrence) = occurrence(event)?;
    // No recipient will ever appear for this event: dead-letter it.
    let user_id =
        Uuid::parse_str(&user_id).map_err(|_| HandlerError::Permanent(format!("user_id {user_id:?} is not a UUID")))?;
    Ok((user_id, domain::compose(occurrence)))
}

#[async_trait::async_trait]
impl EventHandler for Notifier {
    fn wants(&self, event_type: &str) -> bool {
        [OrderConfirmed::TYPE, OrderCancelled::TYPE, PaymentRefunded::TYPE].contains(&event_type)
    }

    /// A set of one: an event on its own is stored the way a batch's are.
    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        self.handle_set(tx, &[Consumed { event, span: tracing::Span::current() }]).await
    }

    /// Each message is one row of its own, so a batch's go in one statement.
    fn applies_as_set(&self, event_type: &str) -> bool {
        self.wants(event_type)
    }

    async fn handle_set(&self, tx: &mut PgConnection, set: &[Consumed<'_>]) -> Result<(), HandlerError> {
        let messages = set.iter().map(|c| notification(c.event)).collect::<Result<Vec<_>, _>>()?;
        let rows: Vec<NewNotification<'_>> = set
            .iter()
            .zip(&messages)
            .map(|(c, (user_id, message))| NewNotification {
                event_id: c.event.event_id,
                user_id: *user_id,
                occurred_at: c.event.occurred_at(),
                message,
            })
            .collect();
        let created = store::insert_all(tx, &rows).await?;
        for (c, (user_id, message)) in set.iter().zip(&messages) {
            c.span.in_scope(|| {
                tracing::info!(%user_id, kind = message.kind.as_str(), order_id = %message.order_id, "notification");
            });
        }
        tracing::debug!(size = set.len(), created, "notifications stored");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_amount_is_named() {
        let pb = |code: &str, amount_minor| Some(PbMoney { currency_code: code.into(), amount_minor });
        assert_eq!(amount(pb("USD", 1234)).map(|m| m.to_string()).as_deref(), Some("USD 12.34"));
        assert_eq!(amount(None), None);
        assert_eq!(amount(pb("", 1234)), None, "an unset Money");
        assert_eq!(amount(pb("usd", 1234)), None);
        assert_eq!(amount(pb("USD", -1)), None);
    }
}
