//! The payment handler and API against real Postgres: events are delivered
//! the way the consumer runner does (inbox row and effect in one
//! transaction) and what would be published is read back from the outbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use shopmesh_payment::domain::{BreakerConfig, BreakerState};
use shopmesh_payment::events::{RefundRetrier, SagaHandler};
use shopmesh_payment::grpc::PaymentApi;
use shopmesh_payment::pb;
use shopmesh_payment::pb::payment_service_server::PaymentService as _;
use shopmesh_payment::provider::{
    Charge, PRIMARY, PaymentProvider, ProviderError, Router, SECONDARY, SystemClock, TestProvider,
};
use shopmesh_payment::store::{self, CheckAnswer, CheckHistory};
use shopmesh_platform::auth::{Claims, Principal};
use shopmesh_platform::consumer::{EventHandler as _, HandlerError};
use shopmesh_platform::events::{DomainEvent, ReceivedEvent};
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::common::v1::{Money, PageRequest};
use shopmesh_platform::pb::events::v1::{
    CancelReason, EventEnvelope, OrderCancelled, PaymentCaptured, PaymentDeclined, PaymentRefunded, StockReserved,
};
use shopmesh_platform::testing::{ScratchDatabase, drop_databases};
use sqlx::PgPool;
use tonic::{Code, Request};
use uuid::Uuid;

/// The built-in primary, which can be taken down (it then answers nothing,
/// not even whether it holds a charge) or made silent (it takes a charge
/// request and no answer comes back, while its lookups cannot see the
/// request yet, as with a payment provider's request still in flight).
struct SwitchablePrimary {
    inner: TestProvider,
    down: AtomicBool,
    silent: AtomicBool,
    /// The idempotency key of every refund asked of it, in order.
    refund_keys: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl PaymentProvider for SwitchablePrimary {
    fn name(&self) -> &str {
        PRIMARY
    }
    async fn charge(
        &self,
        key: &str,
        token: &str,
        amount: &shopmesh_platform::money::Money,
    ) -> Result<Charge, ProviderError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ProviderError::Unavailable);
        }
        if self.silent.load(Ordering::SeqCst) {
            return Err(ProviderError::NoAnswer);
        }
        self.inner.charge(key, token, amount).await
    }
    async fn refund(
        &self,
        key: &str,
        reference: &str,
        amount: &shopmesh_platform::money::Money,
    ) -> Result<(), ProviderError> {
        self.refund_keys.lock().unwrap().push(key.to_owned());
        if self.down.load(Ordering::SeqCst) {
            return Err(ProviderError::Unavailable);
        }
        self.inner.refund(key, reference, amount).await
    }
    async fn find_charge(&self, key: &str) -> Result<Option<Charge>, ProviderError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ProviderError::Unavailable);
        }
        self.inner.find_charge(key).await
    }
}

struct Harness {
    pool: PgPool,
    handler: SagaHandler,
    primary: Arc<SwitchablePrimary>,
    secondary: Arc<TestProvider>,
    api: PaymentApi,
    db_name: String,
}

async fn harness() -> Harness {
    let ScratchDatabase { pool, name: db_name } =
        ScratchDatabase::create("payment_test", &shopmesh_payment::MIGRATOR).await;
    let primary = Arc::new(SwitchablePrimary {
        inner: TestProvider::primary(),
        down: AtomicBool::new(false),
        silent: AtomicBool::new(false),
        refund_keys: Default::default(),
    });
    let secondary = Arc::new(TestProvider::secondary());
    let router = Router::new(primary.clone(), secondary.clone(), BreakerConfig::default(), Arc::new(SystemClock));
    let handler = SagaHandler {
        router: Arc::new(router),
        outbox: Outbox::new("payment"),
        journal_pool: pool.clone(),
        refund_retry: Duration::from_secs(60),
    };
    Harness { api: PaymentApi { pool: pool.clone() }, handler, primary, secondary, pool, db_name }
}

impl Harness {
    async fn drop_db(self) {
        self.pool.close().await;
        drop_databases([self.db_name]).await;
    }

    /// Applies `event` and then loses the transaction, as a crash before the
    /// commit (or a failed commit) would.
    async fn deliver_and_lose(&self, event: &ReceivedEvent) {
        let mut tx = self.pool.begin().await.unwrap();
        assert!(shopmesh_platform::inbox::record(&mut tx, "payment", event).await.unwrap());
        self.handler.handle(&mut tx, event).await.unwrap();
        tx.rollback().await.unwrap();
    }

    async fn deliver(&self, event: &ReceivedEvent) -> Result<bool, HandlerError> {
        let mut tx = self.pool.begin().await.unwrap();
        if !shopmesh_platform::inbox::record(&mut tx, "payment", event).await.unwrap() {
            return Ok(false);
        }
        self.handler.handle(&mut tx, event).await?;
        tx.commit().await.unwrap();
        Ok(true)
    }

    /// Payloads of type `E` in the outbox, oldest first.
    /// One capture was published, at `provider`, and `order`'s payment is
    /// that provider's charge `reference`; the other provider holds nothing.
    async fn assert_only_capture_is(&self, provider: &str, order: Uuid, reference: &str) {
        let captured = self.published::<PaymentCaptured>().await;
        assert_eq!(captured.len(), 1);
        assert_eq!(captured[0].provider, provider);
        let recorded: String = sqlx::query_scalar("SELECT provider_reference FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        assert_eq!(recorded, reference, "the earlier capture is the payment, not a second one");
        let other = if provider == PRIMARY {
            self.secondary.find_charge(&order.to_string()).await
        } else {
            self.primary.inner.find_charge(&order.to_string()).await
        };
        assert_eq!(other.unwrap(), None);
    }

    async fn published<E: DomainEvent>(&self) -> Vec<E> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT envelope FROM outbox WHERE event_type = $1 ORDER BY seq")
            .bind(E::TYPE)
            .fetch_all(&self.pool)
            .await
            .unwrap();
        rows.iter()
            .map(|b| E::decode(EventEnvelope::decode(b.as_slice()).unwrap().payload.as_slice()).unwrap())
            .collect()
    }

    /// The background retrier of owed refunds, on the handler's providers.
    fn refund_retrier(&self) -> RefundRetrier {
        RefundRetrier {
            pool: self.pool.clone(),
            router: self.handler.router.clone(),
            outbox: Outbox::new("payment"),
            first_retry: self.handler.refund_retry,
        }
    }

    /// Makes the order's owed refund due now; returns its failed attempts so far.
    async fn make_refund_due(&self, order_id: Uuid) -> i32 {
        sqlx::query_scalar("UPDATE payments SET next_refund_at = now() WHERE order_id = $1 RETURNING refund_attempts")
            .bind(order_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Makes the order's capture check due now; its unanswered attempts, or
    /// `None` without one.
    async fn make_capture_check_due(&self, order_id: Uuid) -> Option<i32> {
        sqlx::query_scalar("UPDATE capture_checks SET next_check_at = now() WHERE order_id = $1 RETURNING attempts")
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    /// The primary takes `order`'s charge request and no answer comes back
    /// (it may still be in flight): the reservation is to be retried.
    async fn charge_goes_unanswered(&self, order: Uuid, user: Uuid, minor: i64) {
        self.primary.silent.store(true, Ordering::SeqCst);
        let outcome = self.deliver(&reserved(order, user, "tok_visa", minor)).await;
        assert!(matches!(outcome, Err(HandlerError::Retryable(_))), "{outcome:?}");
        self.primary.silent.store(false, Ordering::SeqCst);
    }

    /// The due capture check of `order` finds the charge `reference` and refunds it.
    async fn assert_next_check_refunds(&self, order: Uuid, reference: &str) {
        assert_eq!(self.refund_retrier().check_due_captures().await.unwrap(), 1);
        assert_eq!(self.status_of(order).await.as_deref(), Some("REFUNDED"));
        assert!(self.primary.inner.is_refunded(reference).await);
    }

    async fn status_of(&self, order_id: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }
}

fn usd(minor: i64) -> shopmesh_platform::money::Money {
    shopmesh_platform::money::Money::new(shopmesh_platform::money::Currency::parse("USD").unwrap(), minor)
}

fn received<E: DomainEvent>(event: &E) -> ReceivedEvent {
    let envelope = shopmesh_platform::events::envelope("test", event);
    ReceivedEvent::decode_envelope(&envelope.encode_to_vec(), E::TOPIC, 0, 0).unwrap()
}

fn reserved(order_id: Uuid, user_id: Uuid, token: &str, minor: i64) -> ReceivedEvent {
    received(&StockReserved {
        order_id: order_id.to_string(),
        user_id: user_id.to_string(),
        total: Some(Money { currency_code: "USD".into(), amount_minor: minor }),
        payment_token: token.into(),
        lines: vec![],
    })
}

fn cancelled(order_id: Uuid, user_id: Uuid, reason: CancelReason) -> ReceivedEvent {
    received(&OrderCancelled {
        order_id: order_id.to_string(),
        user_id: user_id.to_string(),
        reason: reason as i32,
        was_paid: false,
    })
}

fn as_user<T>(user_id: Uuid, roles: &[&str], msg: T) -> Request<T> {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    let claims = Claims {
        iss: "shopmesh-auth".into(),
        aud: "shopmesh".into(),
        sub: user_id.to_string(),
        roles: roles.clone(),
        jti: Uuid::now_v7().to_string(),
        iat: 0,
        exp: i64::MAX,
        fam: String::new(),
    };
    let mut req = Request::new(msg);
    req.extensions_mut().insert(Principal { user_id: user_id.to_string(), roles, claims });
    req
}

#[tokio::test]
async fn reservation_is_charged_once_and_cancellation_refunds_it() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());

    let first = reserved(order, user, "tok_visa", 1234);
    assert!(h.deliver(&first).await.unwrap());
    assert!(!h.deliver(&first).await.unwrap(), "the inbox drops a redelivered copy");
    // A distinct event for the same order finds the payment and charges nothing.
    assert!(h.deliver(&reserved(order, user, "tok_visa", 1234)).await.unwrap());
    let captured = h.published::<PaymentCaptured>().await;
    assert_eq!(captured.len(), 1, "{captured:?}");
    assert_eq!(captured[0].order_id, order.to_string());
    assert_eq!(captured[0].provider, "primary");
    assert_eq!(captured[0].amount.as_ref().unwrap().amount_minor, 1234);
    assert_eq!(h.status_of(order).await.as_deref(), Some("CAPTURED"));

    // Decided from payment's own record: was_paid=false doesn't stop the refund.
    h.deliver(&cancelled(order, user, CancelReason::CustomerRequest)).await.unwrap();
    let refunded = h.published::<PaymentRefunded>().await;
    assert_eq!(refunded.len(), 1);
    assert_eq!(refunded[0].payment_id, captured[0].payment_id);
    assert_eq!(refunded[0].user_id, user.to_string());
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUNDED"));

    // Another cancellation finds nothing left to refund.
    h.deliver(&cancelled(order, user, CancelReason::CustomerRequest)).await.unwrap();
    assert_eq!(h.published::<PaymentRefunded>().await.len(), 1);
    h.drop_db().await;
}

/// A provider outage during a refund does not send the cancellation to the
/// dead-letter topic with the customer's money kept: the refund is owed,
/// shown, and asked for again until the provider takes it, once.
#[tokio::test]
async fn a_refund_the_provider_cannot_take_is_owed_and_retried_until_it_goes_through() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    h.deliver(&reserved(order, user, "tok_visa", 4100)).await.unwrap();
    let taken = h.primary.inner.find_charge(&order.to_string()).await.unwrap().expect("captured");

    h.primary.down.store(true, Ordering::SeqCst);
    assert!(h.deliver(&cancelled(order, user, CancelReason::CustomerRequest)).await.unwrap(), "applied, not retried");
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUND_PENDING"));
    assert!(h.published::<PaymentRefunded>().await.is_empty());
    let shown = h.api.list_payments(as_user(user, &[], pb::ListPaymentsRequest::default())).await.unwrap();
    assert_eq!(shown.into_inner().payments[0].status, pb::PaymentStatus::RefundPending as i32);

    let retrier = h.refund_retrier();
    assert_eq!(retrier.retry_due().await.unwrap(), 0, "not due before its back-off");
    assert_eq!(h.make_refund_due(order).await, 1);
    assert_eq!(retrier.retry_due().await.unwrap(), 1);
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUND_PENDING"), "still down: still owed");
    assert_eq!(h.make_refund_due(order).await, 2);

    h.primary.down.store(false, Ordering::SeqCst);
    assert_eq!(retrier.retry_due().await.unwrap(), 1);
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUNDED"));
    assert!(h.primary.inner.is_refunded(&taken.provider_reference).await);
    let refunded = h.published::<PaymentRefunded>().await;
    assert_eq!(refunded.len(), 1);
    assert_eq!(refunded[0].amount.as_ref().unwrap().amount_minor, 4100);
    // Asked three times, always under the order's one refund key: a provider
    // that took an earlier request returns it instead of refunding again.
    assert_eq!(*h.primary.refund_keys.lock().unwrap(), vec![format!("refund-{order}"); 3]);

    // Nothing is owed any more, and a later cancellation refunds nothing.
    h.make_refund_due(order).await;
    assert_eq!(retrier.retry_due().await.unwrap(), 0);
    h.deliver(&cancelled(order, user, CancelReason::CustomerRequest)).await.unwrap();
    assert_eq!(h.published::<PaymentRefunded>().await.len(), 1);
    h.drop_db().await;
}

#[tokio::test]
async fn a_capture_whose_transaction_was_lost_is_refunded_when_the_order_is_cancelled() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let reservation = reserved(order, user, "tok_visa", 2500);
    h.deliver_and_lose(&reservation).await;
    let taken = h.primary.inner.find_charge(&order.to_string()).await.unwrap().expect("the provider captured");
    assert_eq!(h.status_of(order).await, None, "nothing of the attempt was committed");

    // The order times out before StockReserved is redelivered.
    h.deliver(&cancelled(order, user, CancelReason::Timeout)).await.unwrap();
    assert!(h.primary.inner.is_refunded(&taken.provider_reference).await, "the capture went back to the customer");
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUNDED"));
    let captured = h.published::<PaymentCaptured>().await;
    assert_eq!(captured.len(), 1, "the capture is on the record: {captured:?}");
    assert_eq!(captured[0].amount.as_ref().unwrap().amount_minor, 2500);
    let refunded = h.published::<PaymentRefunded>().await;
    assert_eq!(refunded.len(), 1);
    assert_eq!(refunded[0].payment_id, captured[0].payment_id);

    // The redelivered reservation finds the payment and changes nothing.
    assert!(h.deliver(&reservation).await.unwrap());
    assert_eq!(h.published::<PaymentCaptured>().await.len(), 1);
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUNDED"));
    h.drop_db().await;
}

/// A charge whose transaction was lost, then the provider went silent and
/// the order was cancelled: the cancellation is applied (not dead-lettered),
/// the question whether the provider holds money is kept and asked again,
/// and once it answers the capture is recorded and refunded, once.
#[tokio::test]
async fn a_capture_a_silent_provider_may_hold_for_a_cancelled_order_is_asked_about_until_refunded() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    h.deliver_and_lose(&reserved(order, user, "tok_visa", 1800)).await;
    let taken = h.primary.inner.find_charge(&order.to_string()).await.unwrap().expect("the primary captured");

    h.primary.down.store(true, Ordering::SeqCst);
    assert!(h.deliver(&cancelled(order, user, CancelReason::Timeout)).await.unwrap(), "applied, not retried");
    assert_eq!(h.status_of(order).await, None);
    // Another reservation for the cancelled order charges and records nothing.
    assert!(h.deliver(&reserved(order, user, "tok_visa", 1800)).await.unwrap());
    assert_eq!(h.status_of(order).await, None);
    assert_eq!(h.secondary.find_charge(&order.to_string()).await.unwrap(), None);

    let retrier = h.refund_retrier();
    assert_eq!(retrier.check_due_captures().await.unwrap(), 0, "not due before its back-off");
    assert_eq!(h.make_capture_check_due(order).await, Some(2), "asked on the cancellation and the reservation");
    assert_eq!(retrier.check_due_captures().await.unwrap(), 1);
    assert_eq!(h.status_of(order).await, None, "still silent: still asking");

    h.primary.down.store(false, Ordering::SeqCst);
    assert_eq!(h.make_capture_check_due(order).await, Some(3));
    assert_eq!(retrier.check_due_captures().await.unwrap(), 1);
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUNDED"));
    assert!(h.primary.inner.is_refunded(&taken.provider_reference).await);
    assert_eq!(h.published::<PaymentCaptured>().await.len(), 1);
    assert_eq!(h.published::<PaymentRefunded>().await.len(), 1);
    assert_eq!(h.make_capture_check_due(order).await, None, "answered: nothing left to ask");
    h.drop_db().await;
}

#[tokio::test]
async fn a_refund_the_provider_refuses_stays_owed_and_the_cancellation_stands() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    h.deliver(&reserved(order, user, "tok_refund_refused", 3000)).await.unwrap();
    assert_eq!(h.status_of(order).await.as_deref(), Some("CAPTURED"));

    // Disputed: the provider declines the refund. The cancellation is
    // applied (not dead-lettered, which would undo it) and the refund owed.
    assert!(h.deliver(&cancelled(order, user, CancelReason::CustomerRequest)).await.unwrap(), "applied");
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUND_PENDING"));
    assert!(h.published::<PaymentRefunded>().await.is_empty());
    let (error, hours): (String, f64) = sqlx::query_as(
        "SELECT refund_error, extract(epoch FROM next_refund_at - now())::float8 / 3600 FROM payments WHERE order_id = $1",
    )
    .bind(order)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(error.contains("charge_disputed"), "the refusal is on record: {error}");
    assert!(hours > 0.9, "asked about again in an hour, not hammered: {hours}");
    let tombstone: i64 = sqlx::query_scalar("SELECT count(*) FROM cancelled_orders WHERE order_id = $1")
        .bind(order)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(tombstone, 1, "the cancellation is remembered");

    // The retrier asks again when due, and it stays owed.
    assert_eq!(h.make_refund_due(order).await, 1);
    assert_eq!(h.refund_retrier().retry_due().await.unwrap(), 1);
    assert_eq!(h.status_of(order).await.as_deref(), Some("REFUND_PENDING"));
    assert_eq!(h.make_refund_due(order).await, 2);
    h.drop_db().await;
}

#[tokio::test]
async fn a_capture_check_that_ends_in_a_refused_refund_holds_up_no_other() {
    let h = harness().await;
    let user = Uuid::now_v7();
    let (disputed, plain) = (Uuid::now_v7(), Uuid::now_v7());
    // Both captured by attempts whose transactions were lost; both orders
    // cancelled while the primary could not say whether it held money.
    h.deliver_and_lose(&reserved(disputed, user, "tok_refund_refused", 1000)).await;
    h.deliver_and_lose(&reserved(plain, user, "tok_visa", 2000)).await;
    h.primary.down.store(true, Ordering::SeqCst);
    for order in [disputed, plain] {
        assert!(h.deliver(&cancelled(order, user, CancelReason::Timeout)).await.unwrap());
    }
    h.primary.down.store(false, Ordering::SeqCst);

    // The disputed one is due first; one pass settles both.
    h.make_capture_check_due(disputed).await.unwrap();
    h.make_capture_check_due(plain).await.unwrap();
    assert_eq!(h.refund_retrier().check_due_captures().await.unwrap(), 2);
    assert_eq!(h.status_of(disputed).await.as_deref(), Some("REFUND_PENDING"), "refused: owed, on record");
    assert_eq!(h.status_of(plain).await.as_deref(), Some("REFUNDED"));
    assert_eq!(h.make_capture_check_due(disputed).await, None, "answered: the owed refund carries it now");
    h.drop_db().await;
}

/// A capture check that fails for good (here: the provider holds a charge
/// of nothing, which cannot be refunded) is put off for an hour with its
/// error, and the checks behind it are still answered in the same pass.
#[tokio::test]
async fn a_capture_check_that_cannot_be_settled_is_put_off_and_holds_up_no_other() {
    let h = harness().await;
    let user = Uuid::now_v7();
    let (broken, plain) = (Uuid::now_v7(), Uuid::now_v7());
    // Charges the primary took for attempts whose transactions were lost.
    h.primary.inner.charge(&broken.to_string(), "tok_visa", &usd(0)).await.unwrap();
    h.primary.inner.charge(&plain.to_string(), "tok_visa", &usd(700)).await.unwrap();
    let mut tx = h.pool.begin().await.unwrap();
    for order in [broken, plain] {
        store::record_charge_attempt(&h.pool, order, PRIMARY).await.unwrap();
        let (before, answer) = (CheckHistory::default(), CheckAnswer::Unanswered);
        store::owe_capture_check(&mut tx, order, user, before, answer, "no answer", Duration::ZERO).await.unwrap();
    }
    tx.commit().await.unwrap();
    h.make_capture_check_due(broken).await.unwrap();
    h.make_capture_check_due(plain).await.unwrap();

    assert_eq!(h.refund_retrier().check_due_captures().await.unwrap(), 2);
    assert_eq!(h.status_of(plain).await.as_deref(), Some("REFUNDED"), "answered behind the broken one");
    let (error, hours): (String, f64) = sqlx::query_as(
        "SELECT last_error, extract(epoch FROM next_check_at - now())::float8 / 3600 FROM capture_checks WHERE order_id = $1",
    )
    .bind(broken)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(error.contains("unrefundable"), "{error}");
    assert!(hours > 0.9, "put off an hour, not asked again every pass: {hours}");
    assert_eq!(h.status_of(broken).await, None, "nothing half-written");
    h.drop_db().await;
}

#[tokio::test]
async fn a_capture_the_secondary_took_while_the_primary_was_down_is_found_while_it_still_is() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let reservation = reserved(order, user, "tok_visa", 900);
    // The primary refuses (taking nothing), the secondary captures, and the
    // transaction is lost.
    h.primary.down.store(true, Ordering::SeqCst);
    h.deliver_and_lose(&reservation).await;
    let taken = h.secondary.find_charge(&order.to_string()).await.unwrap().expect("the secondary captured");

    // Redelivered while the primary is still down: the primary need not be
    // asked what it holds (it refused), so the capture is taken over now.
    assert!(h.deliver(&reservation).await.unwrap());
    assert_eq!(h.status_of(order).await.as_deref(), Some("CAPTURED"));
    h.assert_only_capture_is(SECONDARY, order, &taken.provider_reference).await;
    h.drop_db().await;
}

/// A charge request that got no answer may still be in flight when the
/// order is cancelled: the provider saying it holds nothing is not the end
/// of it. It is asked again for a while; a charge landing meanwhile is
/// refunded, and once the while is over the order counts as never charged.
#[tokio::test]
async fn a_charge_landing_after_the_cancellation_looked_for_it_is_refunded() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    h.charge_goes_unanswered(order, user, 1500).await;
    assert!(h.deliver(&cancelled(order, user, CancelReason::Timeout)).await.unwrap());
    assert_eq!(h.status_of(order).await, None);

    // The request still in flight lands at the primary.
    let amount = usd(1500);
    let landed = h.primary.inner.charge(&order.to_string(), "tok_visa", &amount).await.unwrap();
    assert_eq!(h.make_capture_check_due(order).await, Some(1), "kept asking after the provider said nothing");
    h.assert_next_check_refunds(order, &landed.provider_reference).await;

    // Where nothing lands, the asking ends.
    let (quiet, user) = (Uuid::now_v7(), Uuid::now_v7());
    h.charge_goes_unanswered(quiet, user, 1500).await;
    assert!(h.deliver(&cancelled(quiet, user, CancelReason::Timeout)).await.unwrap());
    let mut asked = 0;
    while h.make_capture_check_due(quiet).await.is_some() {
        h.refund_retrier().check_due_captures().await.unwrap();
        asked += 1;
        assert!(asked < 20, "the asking never ends");
    }
    assert!(asked >= 2, "asked again over a while, not once: {asked}");
    assert_eq!(h.status_of(quiet).await, None, "never charged, nothing recorded");
    h.drop_db().await;
}

/// The in-flight window is counted in answers: a provider that could not
/// answer for longer than the window still gets the whole window once it
/// answers, and a charge landing then is refunded.
#[tokio::test]
async fn a_long_silence_does_not_use_up_the_wait_for_a_charge_in_flight() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    h.charge_goes_unanswered(order, user, 2100).await;
    // Then it goes down for longer than the window: it cannot say what it holds.
    h.primary.down.store(true, Ordering::SeqCst);
    assert!(h.deliver(&cancelled(order, user, CancelReason::Timeout)).await.unwrap());
    let retrier = h.refund_retrier();
    for _ in 0..12 {
        h.make_capture_check_due(order).await.expect("still asking while the provider cannot answer");
        assert_eq!(retrier.check_due_captures().await.unwrap(), 1);
    }

    h.primary.down.store(false, Ordering::SeqCst);
    assert_eq!(h.make_capture_check_due(order).await, Some(13));
    assert_eq!(retrier.check_due_captures().await.unwrap(), 1);
    let (attempts, empty_answers, minutes): (i32, i32, f64) = sqlx::query_as(
        "SELECT attempts, empty_answers, extract(epoch FROM next_check_at - now())::float8 / 60
         FROM capture_checks WHERE order_id = $1",
    )
    .bind(order)
    .fetch_one(&h.pool)
    .await
    .expect("its first answer, \"nothing\", does not end the asking");
    assert_eq!((attempts, empty_answers), (14, 1));
    assert!(minutes < 1.5, "the window starts at the first answer, not at the outage's back-off: {minutes}");

    let landed = h.primary.inner.charge(&order.to_string(), "tok_visa", &usd(2100)).await.unwrap();
    h.make_capture_check_due(order).await.unwrap();
    h.assert_next_check_refunds(order, &landed.provider_reference).await;
    h.drop_db().await;
}

#[tokio::test]
async fn a_retry_after_a_lost_commit_never_charges_the_other_provider() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let reservation = reserved(order, user, "tok_visa", 700);
    h.deliver_and_lose(&reservation).await;
    let taken = h.primary.inner.find_charge(&order.to_string()).await.unwrap().expect("the primary captured");

    // The primary may hold the money and cannot say: wait, don't fail over.
    h.primary.down.store(true, Ordering::SeqCst);
    assert!(matches!(h.deliver(&reservation).await, Err(HandlerError::Retryable(_))));
    assert_eq!(h.secondary.find_charge(&order.to_string()).await.unwrap(), None, "the secondary was never charged");

    h.primary.down.store(false, Ordering::SeqCst);
    assert!(h.deliver(&reservation).await.unwrap());
    h.assert_only_capture_is(PRIMARY, order, &taken.provider_reference).await;
    h.drop_db().await;
}

#[tokio::test]
async fn a_charge_the_primary_never_answered_is_asked_there_again_even_with_its_breaker_open() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let reservation = reserved(order, user, "tok_visa", 800);

    // Five unanswered tries open the primary's breaker; the sixth comes
    // while it is open and still must not go to the secondary.
    h.primary.silent.store(true, Ordering::SeqCst);
    for _ in 0..6 {
        assert!(matches!(h.deliver(&reservation).await, Err(HandlerError::Retryable(_))));
    }
    assert_eq!(h.handler.router.breaker_state(), BreakerState::Open);
    assert_eq!(h.secondary.find_charge(&order.to_string()).await.unwrap(), None, "the secondary was never charged");

    // The first request lands at the primary; the next retry records that capture.
    h.primary.silent.store(false, Ordering::SeqCst);
    let amount = usd(800);
    let landed = h.primary.inner.charge(&order.to_string(), "tok_visa", &amount).await.unwrap();
    assert!(h.deliver(&reservation).await.unwrap());
    h.assert_only_capture_is(PRIMARY, order, &landed.provider_reference).await;
    h.drop_db().await;
}

#[tokio::test]
async fn an_order_is_pinned_to_the_latest_provider_asked_that_did_not_refuse() {
    let h = harness().await;
    let order = Uuid::now_v7();
    let pinned = || async {
        let mut conn = h.pool.acquire().await.unwrap();
        store::order_payment(&mut conn, order).await.unwrap().pinned_to
    };
    assert_eq!(pinned().await, None, "nothing asked yet");
    store::record_charge_attempt(&h.pool, order, "primary").await.unwrap();
    assert_eq!(pinned().await.as_deref(), Some("primary"), "asked, no answer recorded");
    store::record_charge_refused(&h.pool, order, "primary").await.unwrap();
    assert_eq!(pinned().await, None, "the primary took nothing");
    store::record_charge_attempt(&h.pool, order, "secondary").await.unwrap();
    assert_eq!(pinned().await.as_deref(), Some("secondary"));
    store::record_charge_refused(&h.pool, order, "secondary").await.unwrap();
    assert_eq!(pinned().await, None, "both refused: free to start again at the primary");
    store::record_charge_attempt(&h.pool, order, "primary").await.unwrap();
    assert_eq!(pinned().await.as_deref(), Some("primary"), "a new ask is not covered by the old refusal");
    h.drop_db().await;
}

#[tokio::test]
async fn declined_card_is_recorded_and_never_refunded() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    h.deliver(&reserved(order, user, "tok_chargeDeclined", 500)).await.unwrap();
    let declined = h.published::<PaymentDeclined>().await;
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0].reason, "card_declined");
    assert_eq!(h.status_of(order).await.as_deref(), Some("DECLINED"));

    h.deliver(&cancelled(order, user, CancelReason::PaymentDeclined)).await.unwrap();
    assert!(h.published::<PaymentRefunded>().await.is_empty());
    assert_eq!(h.status_of(order).await.as_deref(), Some("DECLINED"));
    h.drop_db().await;
}

#[tokio::test]
async fn cancellation_before_reservation_prevents_the_charge() {
    let h = harness().await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    h.deliver(&cancelled(order, user, CancelReason::Timeout)).await.unwrap();
    h.deliver(&reserved(order, user, "tok_visa", 999)).await.unwrap();
    assert!(h.published::<PaymentCaptured>().await.is_empty(), "a cancelled order is not charged");
    let declined = h.published::<PaymentDeclined>().await;
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0].reason, "order cancelled");
    assert_eq!(h.status_of(order).await.as_deref(), Some("DECLINED"));
    h.drop_db().await;
}

#[tokio::test]
async fn provider_outage_fails_over_and_bad_amounts_are_declined() {
    let h = harness().await;
    let user = Uuid::now_v7();
    let down = Uuid::now_v7();
    h.deliver(&reserved(down, user, "tok_provider_down", 100)).await.unwrap();
    let captured = h.published::<PaymentCaptured>().await;
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0].provider, "secondary");

    let free = Uuid::now_v7();
    h.deliver(&reserved(free, user, "tok_visa", 0)).await.unwrap();
    let declined = h.published::<PaymentDeclined>().await;
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0].reason, "invalid_amount");

    // Without an order id nothing can ever apply: dead-letter.
    let broken = received(&StockReserved { order_id: "nope".into(), ..Default::default() });
    assert!(matches!(h.deliver(&broken).await, Err(HandlerError::Permanent(_))));
    h.drop_db().await;
}

#[tokio::test]
async fn api_shows_only_the_callers_payments_paginated() {
    let h = harness().await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let mut alice_orders = Vec::new();
    for i in 0..5 {
        let order = Uuid::now_v7();
        h.deliver(&reserved(order, alice, "tok_visa", 100 + i)).await.unwrap();
        alice_orders.push(order);
    }
    let bob_order = Uuid::now_v7();
    h.deliver(&reserved(bob_order, bob, "tok_mastercard", 700)).await.unwrap();

    // Newest first, two per page, all five exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListPaymentsRequest {
            order_id: String::new(),
            page: Some(PageRequest { page_size: 2, page_token: token.clone() }),
        };
        let resp = h.api.list_payments(as_user(alice, &["customer"], req)).await.unwrap().into_inner();
        assert!(resp.payments.len() <= 2);
        seen.extend(resp.payments.iter().map(|p| p.order_id.clone()));
        token = resp.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = alice_orders.iter().rev().map(Uuid::to_string).collect();
    assert_eq!(seen, expected);

    // A page token only continues the listing it came from: not one filtered by order.
    let first = pb::ListPaymentsRequest {
        order_id: String::new(),
        page: Some(PageRequest { page_size: 2, page_token: String::new() }),
    };
    let resp = h.api.list_payments(as_user(alice, &["customer"], first)).await.unwrap().into_inner();
    let token = resp.page.unwrap().next_page_token;
    let filtered = pb::ListPaymentsRequest {
        order_id: alice_orders[0].to_string(),
        page: Some(PageRequest { page_size: 2, page_token: token }),
    };
    let err = h.api.list_payments(as_user(alice, &["customer"], filtered)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("page.page_token"), "{}", err.message());

    // Filter by order.
    let req = pb::ListPaymentsRequest { order_id: alice_orders[2].to_string(), page: None };
    let resp = h.api.list_payments(as_user(alice, &["customer"], req)).await.unwrap().into_inner();
    assert_eq!(resp.payments.len(), 1);
    let payment = &resp.payments[0];
    assert_eq!(payment.status, pb::PaymentStatus::Captured as i32);
    assert_eq!(payment.card_display, "visa ending 4242");
    assert_eq!(payment.amount.as_ref().unwrap().amount_minor, 102);

    // Another user's payment looks missing, except to an admin.
    let bobs = h
        .api
        .list_payments(as_user(bob, &["customer"], pb::ListPaymentsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .payments;
    assert_eq!(bobs.len(), 1);
    let get = |user, roles: &'static [&'static str], id: String| {
        h.api.get_payment(as_user(user, roles, pb::GetPaymentRequest { id }))
    };
    assert_eq!(get(alice, &["customer"], bobs[0].id.clone()).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        get(bob, &["customer"], bobs[0].id.clone()).await.unwrap().into_inner().payment.unwrap().order_id,
        bob_order.to_string()
    );
    assert!(get(alice, &["customer", "admin"], bobs[0].id.clone()).await.is_ok());
    assert_eq!(get(alice, &["customer"], "x".into()).await.unwrap_err().code(), Code::InvalidArgument);

    // No token, no payments.
    let anonymous = h.api.list_payments(Request::new(pb::ListPaymentsRequest::default())).await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);
    h.drop_db().await;
}
