//! Payment's part of the checkout saga. Consumes `StockReserved`
//! (inventory-events) → charges → `PaymentCaptured`/`PaymentDeclined`, and
//! `OrderCancelled` (order-events) → refunds a captured payment →
//! `PaymentRefunded`. Publishes through the outbox in the inbox's transaction.
//! A refund the provider cannot take yet is owed (REFUND_PENDING) and retried
//! in the background (`run_refund_retrier`) until it goes through.

use std::sync::Arc;
use std::time::Duration;

use shopmesh_platform::consumer::{EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::common::v1::Money;
use shopmesh_platform::pb::events::v1::{CancelReason, OrderCancelled, StockReserved};
use shopmesh_platform::shutdown::Shutdown;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{self, OnCancelled, OnReserved};
use crate::provider::{ChargeJournal, ProviderError, RouteError, Router};
use crate::store::{self, CheckAnswer, CheckHistory, NewPayment, OrderPayment, Outcome};

/// Consumer group and inbox name.
pub const CONSUMER: &str = "payment";

pub struct SagaHandler {
    pub router: Arc<Router>,
    pub outbox: Outbox,
    /// For the charge journal, which must commit before a provider is called
    /// (the handler's own transaction commits after). A pool of its own: a
    /// handler holding a connection never waits for a second from its pool.
    pub journal_pool: PgPool,
    /// First wait before a refund the provider did not take is asked again.
    pub refund_retry: Duration,
}

/// Journals charge attempts of one order to `charge_attempts`.
struct AttemptJournal<'a> {
    pool: &'a PgPool,
    order_id: Uuid,
}

#[async_trait::async_trait]
impl ChargeJournal for AttemptJournal<'_> {
    async fn before_charge(&self, provider: &str) -> Result<(), sqlx::Error> {
        store::record_charge_attempt(self.pool, self.order_id, provider).await
    }

    async fn refused(&self, provider: &str) -> Result<(), sqlx::Error> {
        store::record_charge_refused(self.pool, self.order_id, provider).await
    }
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
        let known = store::order_payment(tx, order_id).await?;
        let outcome = match domain::on_reserved(known.payment.as_ref().map(|p| p.status()), known.cancelled) {
            OnReserved::AlreadyHandled(status) => {
                tracing::info!(%order_id, ?status, "order already has a payment; not charging again");
                return Ok(());
            }
            // An attempt before the cancellation was journaled: whatever it
            // took is settled as for any cancelled order (refunded, or asked
            // about again later), and nothing is charged.
            OnReserved::DeclineCancelled if !known.may_hold.is_empty() => {
                let unrecorded = Unrecorded { order_id, user_id: &reserved.user_id, may_hold: &known.may_hold };
                return self.refunds().settle_unrecorded_capture(tx, unrecorded, CheckHistory::default()).await;
            }
            OnReserved::DeclineCancelled => {
                Outcome::Declined { provider: String::new(), reason: domain::REASON_ORDER_CANCELLED.into() }
            }
            OnReserved::Charge => self.charge(&payment, &reserved.payment_token, &known).await?,
        };
        let row = store::record_payment(tx, &self.outbox, &payment, &outcome).await?;
        tracing::info!(%order_id, payment_id = %row.id, status = %row.status, provider = %row.provider, "payment recorded");
        Ok(())
    }

    /// Charges through the router. Providers are journaled before they are
    /// asked, and a capture an earlier attempt made (its transaction rolled
    /// back or never committed) is taken over instead of charging again,
    /// perhaps at the other provider. Otherwise a provider an earlier
    /// attempt left unanswered is asked again, and no other.
    async fn charge(&self, payment: &NewPayment, token: &str, known: &OrderPayment) -> Result<Outcome, HandlerError> {
        let total = Money { currency_code: payment.currency_code.clone(), amount_minor: payment.amount_minor };
        let Ok(amount) = domain::chargeable(&total) else {
            // Decline rather than dead-letter, so the saga still compensates.
            return Ok(Outcome::Declined { provider: String::new(), reason: domain::REASON_INVALID_AMOUNT.into() });
        };
        let key = payment.order_id.to_string();
        if let Some((provider, charge)) = earlier_capture(&self.router, payment.order_id, &known.may_hold).await? {
            tracing::warn!(order_id = %key, %provider, "taking over a capture an unrecorded attempt made");
            return Ok(Outcome::Captured {
                provider,
                provider_reference: charge.provider_reference,
                card_display: charge.card_display,
            });
        }
        let journal = AttemptJournal { pool: &self.journal_pool, order_id: payment.order_id };
        let routed = match self.router.charge(&key, token, &amount, known.pinned_to.as_deref(), &journal).await {
            Ok(routed) => routed,
            // Classified like any database error: an outage waits, it does
            // not use up the attempts.
            Err(RouteError::Journal(e)) => return Err(e.into()),
            Err(e @ RouteError::UnknownProvider(_)) => return Err(HandlerError::Retryable(e.to_string())),
        };
        match routed.outcome {
            Ok(charge) => Ok(Outcome::Captured {
                provider: routed.provider,
                provider_reference: charge.provider_reference,
                card_display: charge.card_display,
            }),
            Err(ProviderError::Declined(reason)) => Ok(Outcome::Declined { provider: routed.provider, reason }),
            // Both providers down: retry later; if that never works the order times out.
            Err(ProviderError::Unavailable) => Err(HandlerError::Retryable("no payment provider available".into())),
            // Charges are routed to configured providers only (RouteError::UnknownProvider).
            Err(e @ ProviderError::NotConfigured(_)) => Err(HandlerError::Retryable(e.to_string())),
            // The retry asks that provider what it did (`earlier_capture`) before anything else.
            Err(ProviderError::NoAnswer) => Err(HandlerError::Retryable(format!(
                "provider {} did not answer whether it charged order {key}",
                routed.provider
            ))),
        }
    }

    async fn on_order_cancelled(&self, tx: &mut PgConnection, cancelled: OrderCancelled) -> Result<(), HandlerError> {
        let order_id = id("order_id", &cancelled.order_id)?;
        let reason = CancelReason::try_from(cancelled.reason).unwrap_or(CancelReason::Unspecified).as_str_name();

        store::lock_order(tx, order_id).await?;
        // Tombstone first: a StockReserved still on its way must not charge.
        store::record_cancellation(tx, order_id, reason).await?;
        let known = store::order_payment(tx, order_id).await?;
        let Some(payment) = known.payment else {
            let unrecorded = Unrecorded { order_id, user_id: &cancelled.user_id, may_hold: &known.may_hold };
            return self.refunds().settle_unrecorded_capture(tx, unrecorded, CheckHistory::default()).await;
        };
        if domain::on_cancelled(Some(payment.status())) == OnCancelled::Nothing {
            tracing::info!(%order_id, status = %payment.status, "cancelled order holds no captured payment");
            return Ok(());
        }
        self.refunds().attempt(tx, &payment).await
    }

    fn refunds(&self) -> Refunds<'_> {
        Refunds { router: &self.router, outbox: &self.outbox, first_retry: self.refund_retry }
    }
}

/// A capture held by one of the providers that may hold one (`may_hold`)
/// for `order_id`. One that cannot answer may hold money: retry rather than
/// guess.
async fn earlier_capture(
    router: &Router,
    order_id: Uuid,
    may_hold: &[String],
) -> Result<Option<(String, crate::provider::Charge)>, HandlerError> {
    for provider in may_hold {
        match router.find_charge(provider, &order_id.to_string()).await {
            Ok(Some(charge)) => return Ok(Some((provider.clone(), charge))),
            Ok(None) => {}
            Err(e) => {
                return Err(HandlerError::Retryable(format!(
                    "provider {provider} was asked to charge order {order_id} and cannot say whether it did: {e}"
                )));
            }
        }
    }
    Ok(None)
}

/// What giving money back needs: the providers, the outbox, the first wait
/// before asking a silent provider again.
struct Refunds<'a> {
    router: &'a Router,
    outbox: &'a Outbox,
    first_retry: Duration,
}

/// A cancelled order that has no payment row.
struct Unrecorded<'a> {
    order_id: Uuid,
    user_id: &'a str,
    /// Providers journaled as asked to charge it that did not refuse.
    may_hold: &'a [String],
}

impl Refunds<'_> {
    /// A cancelled order without a payment row may still have been charged
    /// by an attempt that never committed: record that capture and refund
    /// it. If a journaled provider cannot say, the question is kept in
    /// `capture_checks` (with what it heard `before`) and asked again later
    /// instead of failing the cancellation into the dead-letter topic.
    async fn settle_unrecorded_capture(
        &self,
        tx: &mut PgConnection,
        order: Unrecorded<'_>,
        before: CheckHistory,
    ) -> Result<(), HandlerError> {
        let order_id = order.order_id;
        let found = match earlier_capture(self.router, order_id, order.may_hold).await {
            Ok(found) => found,
            Err(HandlerError::Retryable(why)) => {
                let attempts = before.after(CheckAnswer::Unanswered).attempts;
                tracing::warn!(%order_id, attempts, error = %why, "cancelled order: a provider cannot say yet whether it holds money; asking again later");
                return self.ask_again(tx, &order, before, CheckAnswer::Unanswered, &why).await;
            }
            Err(e) => return Err(e),
        };
        let Some((provider, charge)) = found else {
            // Only answers count here: an outage before them spends none of the window.
            let empty_answers = before.after(CheckAnswer::HoldsNothing).empty_answers;
            if !order.may_hold.is_empty() && empty_answers <= IN_FLIGHT_CHECKS {
                // Asked, and it never refused: a charge request still in
                // flight there may yet land. Look again for a while.
                tracing::info!(%order_id, empty_answers, "cancelled order: no capture found yet; looking again later");
                let why = "no capture found yet; a charge in flight may still land";
                return self.ask_again(tx, &order, before, CheckAnswer::HoldsNothing, why).await;
            }
            tracing::info!(%order_id, "order cancelled before any payment");
            return Ok(());
        };
        tracing::warn!(%order_id, %provider, "cancelled order holds an unrecorded capture; refunding it");
        let payment = NewPayment {
            order_id,
            user_id: id("user_id", order.user_id)?,
            currency_code: charge.amount.currency.as_str().to_owned(),
            amount_minor: charge.amount.amount_minor,
        };
        let outcome = Outcome::Captured {
            provider,
            provider_reference: charge.provider_reference,
            card_display: charge.card_display,
        };
        let row = store::record_payment(tx, self.outbox, &payment, &outcome).await?;
        self.attempt(tx, &row).await
    }

    /// How long a capture check asked `attempts` times waits for the next.
    fn check_delay(&self, attempts: i32) -> Duration {
        domain::refund_retry_delay(u32::try_from(attempts).unwrap_or(1), self.first_retry)
    }

    /// Keeps the question whether `order` was charged in `capture_checks`,
    /// to be asked again after a back-off: for an unanswered check, by how
    /// often it went unanswered; for an empty answer, by how many came
    /// before, so the in-flight window starts once the provider answers.
    async fn ask_again(
        &self,
        tx: &mut PgConnection,
        order: &Unrecorded<'_>,
        before: CheckHistory,
        answer: CheckAnswer,
        why: &str,
    ) -> Result<(), HandlerError> {
        let user_id = id("user_id", order.user_id)?;
        let now = before.after(answer);
        let delay = match answer {
            CheckAnswer::Unanswered => self.check_delay(now.attempts),
            CheckAnswer::HoldsNothing => self.check_delay(now.empty_answers),
        };
        store::owe_capture_check(tx, order.order_id, user_id, before, answer, why, delay).await?;
        metrics::counter!("payment_capture_checks_deferred_total").increment(1);
        Ok(())
    }

    /// Asks the provider to give `payment`'s money back and records the
    /// answer in `tx`: refunded (with `PaymentRefunded`), or, when the
    /// provider could not take the request, still owed and asked again after
    /// a back-off. A provider refusing outright (a disputed charge, say)
    /// leaves it owed too, with the refusal recorded and asked about hourly:
    /// money we hold but cannot return needs a person, and the owed refund
    /// keeps it in sight (`payment_refunds_pending`, `refund_error`) where a
    /// dead-lettered event would also have undone the cancellation it came with.
    async fn attempt(&self, tx: &mut PgConnection, payment: &store::PaymentRow) -> Result<(), HandlerError> {
        let amount = store::amount(payment)
            .ok_or_else(|| HandlerError::Permanent(format!("payment {} has an unrefundable amount", payment.id)))?;
        let key = domain::refund_key(payment.order_id);
        match self.router.refund(&payment.provider, &key, &payment.provider_reference, &amount).await {
            Ok(()) => {
                store::record_refund(tx, self.outbox, payment).await?;
                tracing::info!(order_id = %payment.order_id, payment_id = %payment.id, "payment refunded");
                Ok(())
            }
            // Not configured here may be a replica behind the others: asked
            // again as soon as an outage would be (the lookup logs an error).
            Err(e @ (ProviderError::Unavailable | ProviderError::NoAnswer | ProviderError::NotConfigured(_))) => {
                let failures = u32::try_from(payment.refund_attempts).unwrap_or(0).saturating_add(1);
                let retry_in = domain::refund_retry_delay(failures, self.first_retry);
                store::defer_refund(tx, payment, &e.to_string(), retry_in).await?;
                metrics::counter!("payment_refunds_deferred_total", "provider" => payment.provider.clone())
                    .increment(1);
                tracing::warn!(
                    order_id = %payment.order_id, payment_id = %payment.id, failures, retry_in_ms = retry_in.as_millis() as u64,
                    error = %e, "the provider did not take the refund; it is owed and will be asked again"
                );
                Ok(())
            }
            Err(ProviderError::Declined(why)) => {
                let why = format!("refund refused: {why}");
                store::defer_refund(tx, payment, &why, REFUSED_REFUND_RETRY).await?;
                metrics::counter!("payment_refunds_refused_total", "provider" => payment.provider.clone()).increment(1);
                tracing::error!(order_id = %payment.order_id, payment_id = %payment.id, error = %why,
                    "the provider refuses a refund we owe; a person must look at it");
                Ok(())
            }
        }
    }
}

/// Asks again, in the background, for refunds a provider did not take.
pub struct RefundRetrier {
    pub pool: PgPool,
    pub router: Arc<Router>,
    pub outbox: Outbox,
    pub first_retry: Duration,
}

/// How many times a provider that was asked to charge a cancelled order,
/// and says it holds nothing, is asked again (with the refund back-off,
/// counted from its first answer) before the order counts as never charged.
const IN_FLIGHT_CHECKS: i32 = 8;

/// How often a refund the provider refused outright is asked for again.
const REFUSED_REFUND_RETRY: Duration = Duration::from_secs(3600);

/// How many owed refunds one pass takes on (each is one provider call).
const REFUNDS_PER_PASS: i64 = 20;

impl RefundRetrier {
    fn refunds(&self) -> Refunds<'_> {
        Refunds { router: &self.router, outbox: &self.outbox, first_retry: self.first_retry }
    }

    /// One pass over the refunds that are due; returns how many were tried.
    pub async fn retry_due(&self) -> Result<usize, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let due = store::lock_due_refunds(&mut tx, REFUNDS_PER_PASS).await?;
        if due.is_empty() {
            // Nothing written: no commit, so the outbox relay is not woken every pass.
            return Ok(0);
        }
        let refunds = self.refunds();
        for payment in &due {
            match refunds.attempt(&mut tx, payment).await {
                Ok(()) => {}
                Err(HandlerError::Permanent(why)) => {
                    // An amount no provider can take. Nobody to dead-letter
                    // to here: keep it owed and visible, asking again hourly.
                    tracing::error!(order_id = %payment.order_id, payment_id = %payment.id, error = %why,
                        "a refund we owe cannot be asked for; a person must look at it");
                    store::defer_refund(&mut tx, payment, &why, REFUSED_REFUND_RETRY).await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.outbox.commit(tx).await?;
        Ok(due.len())
    }

    /// One pass over the cancelled orders waiting to learn whether a silent
    /// provider holds their money; returns how many were asked. Each runs in
    /// its own transaction under the order's lock, as the consumer does. One
    /// that can never be settled is put off an hour, so it cannot hold up
    /// the checks behind it.
    pub async fn check_due_captures(&self) -> Result<usize, HandlerError> {
        let due = store::due_capture_checks(&self.pool, REFUNDS_PER_PASS).await?;
        for check in &due {
            let (history, failed) = (check.history, CheckAnswer::Unanswered);
            let attempts = history.after(failed).attempts;
            let (why, retry_in) = match self.check_capture(check).await {
                Ok(()) => continue,
                // The database is down: so is every other check.
                Err(e @ HandlerError::Transient(_)) => return Err(e),
                Err(HandlerError::Retryable(why)) => (why, self.refunds().check_delay(attempts)),
                Err(HandlerError::Permanent(why)) => (why, REFUSED_REFUND_RETRY),
            };
            tracing::error!(order_id = %check.order_id, error = %why, retry_in_ms = retry_in.as_millis() as u64,
                "a cancelled order's capture check failed; a person may need to look at it");
            let mut tx = self.pool.begin().await?;
            store::owe_capture_check(&mut tx, check.order_id, check.user_id, history, failed, &why, retry_in).await?;
            tx.commit().await?;
        }
        Ok(due.len())
    }

    async fn check_capture(&self, check: &store::CaptureCheck) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await?;
        store::lock_order(&mut tx, check.order_id).await?;
        if !store::take_capture_check(&mut tx, check.order_id).await? {
            return Ok(());
        }
        let known = store::order_payment(&mut tx, check.order_id).await?;
        match known.payment {
            None => {
                let user_id = check.user_id.to_string();
                let unrecorded = Unrecorded { order_id: check.order_id, user_id: &user_id, may_hold: &known.may_hold };
                self.refunds().settle_unrecorded_capture(&mut tx, unrecorded, check.history).await?;
            }
            // Recorded meanwhile (a declined reservation, or the capture
            // itself): that payment's own path answers for it.
            Some(payment) => {
                tracing::info!(order_id = %check.order_id, status = %payment.status, "capture check: the order has a payment now");
            }
        }
        self.outbox.commit(tx).await?;
        Ok(())
    }
}

/// Runs `retrier` every `interval` until shutdown, keeping the
/// `payment_refunds_pending` and `payment_capture_checks_pending` gauges current.
pub async fn run_refund_retrier(retrier: RefundRetrier, interval: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return,
        }
        if let Err(e) = retrier.retry_due().await {
            tracing::warn!(error = %e, "retrying owed refunds failed");
        }
        if let Err(e) = retrier.check_due_captures().await {
            tracing::warn!(error = %e, "asking about unrecorded captures failed");
        }
        match store::count_owed(&retrier.pool).await {
            Ok((refunds, capture_checks)) => {
                metrics::gauge!("payment_refunds_pending").set(refunds as f64);
                metrics::gauge!("payment_capture_checks_pending").set(capture_checks as f64);
            }
            Err(e) => tracing::warn!(error = %e, "counting owed refunds and capture checks failed"),
        }
    }
}
