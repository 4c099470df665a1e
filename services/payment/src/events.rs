//! Payment's part of the checkout saga. Consumes `StockReserved`
//! (inventory-events) → charges → `PaymentCaptured`/`PaymentDeclined`, and
//! `OrderCancelled` (order-events) → refunds a captured payment →
//! `PaymentRefunded`. Publishes through the outbox in the inbox's transaction.

use std::sync::Arc;

use shopmesh_platform::consumer::{EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::common::v1::Money;
use shopmesh_platform::pb::events::v1::{CancelReason, OrderCancelled, StockReserved};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, OnCancelled, OnReserved};
use crate::provider::{ProviderError, Router};
use crate::store::{self, NewPayment, Outcome};

/// Consumer group and inbox name.
pub const CONSUMER: &str = "payment";

pub struct SagaHandler {
    pub router: Arc<Router>,
    pub outbox: Outbox,
}

/// An id the event must carry; without it nothing can ever apply, so dead-letter.
fn id(field: &str, raw: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw).map_err(|_| HandlerError::Permanent(format!("{field} {raw:?} is not a UUID")))
}

#[async_trait::async_trait]
impl EventHandler for SagaHandler {
    fn wants(&self, event_type: &str) -> bool {
        event_type == StockReserved::TYPE || event_type == OrderCancelled::TYPE
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        if event.is::<StockReserved>() {
            self.on_stock_reserved(tx, event.payload()?).await
        } else {
            self.on_order_cancelled(tx, event.payload()?).await
        }
    }
}

impl SagaHandler {
    async fn on_stock_reserved(&self, tx: &mut PgConnection, reserved: StockReserved) -> Result<(), HandlerError> {
        let order_id = id("order_id", &reserved.order_id)?;
        let user_id = id("user_id", &reserved.user_id)?;
        let total = reserved.total.unwrap_or_default();
        let payment =
            NewPayment { order_id, user_id, currency_code: total.currency_code, amount_minor: total.amount_minor };

        store::lock_order(tx, order_id).await?;
        let existing = store::payment_for_order(tx, order_id).await?.map(|p| p.status());
        let cancelled = store::is_cancelled(tx, order_id).await?;
        let outcome = match domain::on_reserved(existing, cancelled) {
            OnReserved::AlreadyHandled(status) => {
                tracing::info!(%order_id, ?status, "order already has a payment; not charging again");
                return Ok(());
            }
            OnReserved::DeclineCancelled => {
                Outcome::Declined { provider: String::new(), reason: domain::REASON_ORDER_CANCELLED.into() }
            }
            OnReserved::Charge => self.charge(&payment, &reserved.payment_token).await?,
        };
        let row = store::record_payment(tx, &self.outbox, &payment, &outcome).await?;
        tracing::info!(%order_id, payment_id = %row.id, status = %row.status, provider = %row.provider, "payment recorded");
        Ok(())
    }

    /// Charges through the router. The provider call is idempotent on the
    /// order id, so a retry after this transaction rolled back is safe.
    async fn charge(&self, payment: &NewPayment, token: &str) -> Result<Outcome, HandlerError> {
        let total = Money { currency_code: payment.currency_code.clone(), amount_minor: payment.amount_minor };
        let Ok(amount) = domain::chargeable(&total) else {
            // Decline rather than dead-letter, so the saga still compensates.
            return Ok(Outcome::Declined { provider: String::new(), reason: domain::REASON_INVALID_AMOUNT.into() });
        };
        let routed = self.router.charge(&payment.order_id.to_string(), token, &amount).await;
        match routed.outcome {
            Ok(charge) => Ok(Outcome::Captured {
                provider: routed.provider,
                provider_reference: charge.provider_reference,
                card_display: charge.card_display,
            }),
            Err(ProviderError::Declined(reason)) => Ok(Outcome::Declined { provider: routed.provider, reason }),
            // Both providers down: retry later; if that never works the order times out.
            Err(ProviderError::Unavailable) => Err(HandlerError::Retryable("no payment provider available".into())),
        }
    }

    async fn on_order_cancelled(&self, tx: &mut PgConnection, cancelled: OrderCancelled) -> Result<(), HandlerError> {
        let order_id = id("order_id", &cancelled.order_id)?;
        let reason = CancelReason::try_from(cancelled.reason).unwrap_or(CancelReason::Unspecified).as_str_name();

        store::lock_order(tx, order_id).await?;
        // Tombstone first: a StockReserved still on its way must not charge.
        store::record_cancellation(tx, order_id, reason).await?;
        let Some(payment) = store::payment_for_order(tx, order_id).await? else {
            tracing::info!(%order_id, reason, "order cancelled before any payment");
            return Ok(());
        };
        if domain::on_cancelled(Some(payment.status())) == OnCancelled::Nothing {
            tracing::info!(%order_id, status = %payment.status, "cancelled order holds no captured payment");
            return Ok(());
        }
        let amount = store::amount(&payment)
            .ok_or_else(|| HandlerError::Permanent(format!("payment {} has an unrefundable amount", payment.id)))?;
        match self.router.refund(&payment.provider, &payment.provider_reference, &amount).await {
            Ok(()) => {}
            Err(ProviderError::Unavailable) => {
                return Err(HandlerError::Retryable("refund provider unavailable".into()));
            }
            // Money we hold but cannot return needs a person: dead-letter it.
            Err(ProviderError::Declined(why)) => {
                return Err(HandlerError::Permanent(format!("refund of payment {} refused: {why}", payment.id)));
            }
        }
        store::record_refund(tx, &self.outbox, &payment).await?;
        tracing::info!(%order_id, payment_id = %payment.id, "payment refunded");
        Ok(())
    }
}
