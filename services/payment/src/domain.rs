//! Payment rules, pure: what can be charged, the payment state machine, what
//! to do when a reservation or a cancellation arrives, and the primary
//! provider's circuit breaker.

use std::time::{Duration, Instant};

use shopmesh_platform::money::{Money, MoneyError};
use shopmesh_platform::pb::common::v1::Money as PbMoney;

/// Why an amount cannot be charged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error("amount_minor must be positive")]
    NotPositive,
}

/// A chargeable amount: valid [`Money`] of more than zero minor units.
pub fn chargeable(m: &PbMoney) -> Result<Money, AmountError> {
    let money = Money::from_proto(m)?;
    if money.amount_minor == 0 {
        return Err(AmountError::NotPositive);
    }
    Ok(money)
}

/// Where a payment is. Rows are only ever committed in one of these: the
/// charge and the row that records it happen in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Captured,
    Declined,
    /// Cancelled while captured; the provider has not taken the refund yet
    /// and it is retried in the background.
    RefundPending,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from:?} payment cannot be {action}")]
pub struct TransitionError {
    pub from: PaymentStatus,
    pub action: &'static str,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Captured => "CAPTURED",
            Self::Declined => "DECLINED",
            Self::RefundPending => "REFUND_PENDING",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CAPTURED" => Some(Self::Captured),
            "DECLINED" => Some(Self::Declined),
            "REFUND_PENDING" => Some(Self::RefundPending),
            "REFUNDED" => Some(Self::Refunded),
            _ => None,
        }
    }

    /// Only captured money can be given back, and only once.
    pub fn refund(self) -> Result<Self, TransitionError> {
        match self {
            Self::Captured | Self::RefundPending => Ok(Self::Refunded),
            from => Err(TransitionError { from, action: "refunded" }),
        }
    }

    /// A refund the provider could not take yet stays owed.
    pub fn defer_refund(self) -> Result<Self, TransitionError> {
        match self {
            Self::Captured | Self::RefundPending => Ok(Self::RefundPending),
            from => Err(TransitionError { from, action: "left owing a refund" }),
        }
    }

    /// A payment is created captured or declined; nothing is captured twice.
    pub fn capture(existing: Option<Self>) -> Result<Self, TransitionError> {
        match existing {
            None => Ok(Self::Captured),
            Some(from) => Err(TransitionError { from, action: "captured" }),
        }
    }
}

/// Decline reason recorded when a reservation arrives for a cancelled order.
pub const REASON_ORDER_CANCELLED: &str = "order cancelled";
/// Decline reason for a reservation whose total cannot be charged.
pub const REASON_INVALID_AMOUNT: &str = "invalid_amount";

/// What a StockReserved leads to, given what payment already knows of the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReserved {
    Charge,
    /// The order already has a payment (redelivery, or a second reservation).
    AlreadyHandled(PaymentStatus),
    /// The order was cancelled first: record a decline so inventory releases.
    DeclineCancelled,
}

pub fn on_reserved(existing: Option<PaymentStatus>, cancelled: bool) -> OnReserved {
    match PaymentStatus::capture(existing) {
        Err(refused) => OnReserved::AlreadyHandled(refused.from),
        Ok(_) if cancelled => OnReserved::DeclineCancelled,
        Ok(_) => OnReserved::Charge,
    }
}

/// What an OrderCancelled leads to. Decided from payment's own record, not
/// the event's `was_paid`, which the order service may have got wrong in a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancelled {
    Refund,
    /// Declined or already refunded: nothing was kept.
    Nothing,
}

pub fn on_cancelled(existing: Option<PaymentStatus>) -> OnCancelled {
    match existing.map(PaymentStatus::refund) {
        Some(Ok(_)) => OnCancelled::Refund,
        _ => OnCancelled::Nothing,
    }
}

/// The provider idempotency key of an order's refund. An order has one
/// payment and is refunded in full, so the order names it; unlike the
/// payment row's id, it is the same when a rolled-back transaction had
/// recorded the payment it refunded.
pub fn refund_key(order_id: uuid::Uuid) -> String {
    format!("refund-{order_id}")
}

/// How long to wait before asking the provider again for a refund that has
/// failed `attempts` times: doubling from `base`, at most an hour, so a long
/// outage is retried for as long as it lasts without hammering anyone.
pub fn refund_retry_delay(attempts: u32, base: Duration) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    doubled.min(Duration::from_secs(3600))
}

/// The primary provider's breaker, as Prometheus sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting trial calls through.
    pub open_for: Duration,
    /// Consecutive half-open successes that close it again.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_for: Duration::from_secs(30), success_threshold: 2 }
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Closed { failures: u32 },
    Open { since: Instant },
    HalfOpen { successes: u32 },
}

/// A circuit breaker. Time is passed in (`now`) so tests drive it with a fake clock.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Phase,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, phase: Phase::Closed { failures: 0 } }
    }

    /// The state at `now` (an open breaker whose time is up is half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { since } if now.saturating_duration_since(since) >= self.config.open_for => {
                BreakerState::HalfOpen
            }
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go to the protected provider now.
    pub fn allows(&mut self, now: Instant) -> bool {
        if let Phase::Open { since } = self.phase {
            if now.saturating_duration_since(since) < self.config.open_for {
                return false;
            }
            self.phase = Phase::HalfOpen { successes: 0 };
        }
        true
    }

    pub fn on_success(&mut self) {
        self.phase = match self.phase {
            Phase::HalfOpen { successes } if successes + 1 >= self.config.success_threshold => {
                Phase::Closed { failures: 0 }
            }
            Phase::HalfOpen { successes } => Phase::HalfOpen { successes: successes + 1 },
            Phase::Closed { .. } => Phase::Closed { failures: 0 },
            // A call let through before it opened: doesn't shorten the pause.
            Phase::Open { since } => Phase::Open { since },
        };
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.phase = match self.phase {
            Phase::Closed { failures } if failures + 1 >= self.config.failure_threshold => Phase::Open { since: now },
            Phase::Closed { failures } => Phase::Closed { failures: failures + 1 },
            Phase::HalfOpen { .. } => Phase::Open { since: now },
            Phase::Open { since } => Phase::Open { since },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_needs_a_currency_code_and_a_positive_amount() {
        let total = |code: &str, amount_minor| chargeable(&PbMoney { currency_code: code.into(), amount_minor });
        let m = total("USD", 1234).unwrap();
        assert_eq!((m.currency.as_str(), m.amount_minor), ("USD", 1234));
        assert!(matches!(total("usd", 1), Err(AmountError::Money(MoneyError::Currency(_)))));
        assert!(matches!(total("", 1), Err(AmountError::Money(MoneyError::Currency(_)))));
        assert_eq!(total("USD", 0), Err(AmountError::NotPositive));
        assert_eq!(total("USD", -5), Err(AmountError::Money(MoneyError::Negative)));
    }

    #[test]
    fn captured_payment_can_be_refunded_once() {
        assert_eq!(PaymentStatus::Captured.refund(), Ok(PaymentStatus::Refunded));
        assert!(PaymentStatus::Refunded.refund().is_err());
    }

    #[test]
    fn a_refund_the_provider_could_not_take_stays_owed_until_it_goes_through() {
        assert_eq!(PaymentStatus::Captured.defer_refund(), Ok(PaymentStatus::RefundPending));
        assert_eq!(PaymentStatus::RefundPending.defer_refund(), Ok(PaymentStatus::RefundPending));
        assert_eq!(PaymentStatus::RefundPending.refund(), Ok(PaymentStatus::Refunded));
        assert!(PaymentStatus::Declined.defer_refund().is_err());
        assert!(PaymentStatus::Refunded.defer_refund().is_err());
        assert_eq!(on_cancelled(Some(PaymentStatus::RefundPending)), OnCancelled::Refund);
        assert_eq!(
            on_reserved(Some(PaymentStatus::RefundPending), true),
            OnReserved::AlreadyHandled(PaymentStatus::RefundPending)
        );
    }

    #[test]
    fn refund_retries_back_off_to_an_hour() {
        let base = Duration::from_secs(2);
        let delays: Vec<u64> = (1..=5).map(|n| refund_retry_delay(n, base).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32]);
        assert_eq!(refund_retry_delay(12, base), Duration::from_secs(3600));
        assert_eq!(refund_retry_delay(u32::MAX, base), Duration::from_secs(3600));
        assert_eq!(refund_retry_delay(0, base), base);
    }

    #[test]
    fn declined_payment_cannot_be_refunded() {
        let err = PaymentStatus::Declined.refund().unwrap_err();
        assert_eq!(err.from, PaymentStatus::Declined);
    }

    #[test]
    fn a_payment_is_never_captured_twice() {
        assert_eq!(PaymentStatus::capture(None), Ok(PaymentStatus::Captured));
        for existing in
            [PaymentStatus::Captured, PaymentStatus::Declined, PaymentStatus::RefundPending, PaymentStatus::Refunded]
        {
            assert!(PaymentStatus::capture(Some(existing)).is_err(), "{existing:?}");
        }
    }

    #[test]
    fn status_round_trips_through_its_column_value() {
        for s in
            [PaymentStatus::Captured, PaymentStatus::Declined, PaymentStatus::RefundPending, PaymentStatus::Refunded]
        {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PaymentStatus::parse("PENDING"), None);
    }

    #[test]
    fn reservation_charges_only_an_unpaid_uncancelled_order() {
        assert_eq!(on_reserved(None, false), OnReserved::Charge);
        assert_eq!(on_reserved(None, true), OnReserved::DeclineCancelled);
        assert_eq!(
            on_reserved(Some(PaymentStatus::Captured), false),
            OnReserved::AlreadyHandled(PaymentStatus::Captured)
        );
        // Already captured and then cancelled: the cancellation refunds, not this.
        assert_eq!(
            on_reserved(Some(PaymentStatus::Refunded), true),
            OnReserved::AlreadyHandled(PaymentStatus::Refunded)
        );
    }

    #[test]
    fn cancellation_refunds_only_captured_money() {
        assert_eq!(on_cancelled(Some(PaymentStatus::Captured)), OnCancelled::Refund);
        assert_eq!(on_cancelled(Some(PaymentStatus::Declined)), OnCancelled::Nothing);
        assert_eq!(on_cancelled(Some(PaymentStatus::Refunded)), OnCancelled::Nothing);
        assert_eq!(on_cancelled(None), OnCancelled::Nothing);
    }

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::default())
    }

    #[test]
    fn breaker_opens_after_five_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..4 {
            assert!(b.allows(t0));
            b.on_failure(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allows(t0 + Duration::from_secs(29)));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..4 {
            b.on_failure(t0);
        }
        b.on_success();
        for _ in 0..4 {
            b.on_failure(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn breaker_half_opens_after_thirty_seconds_and_closes_after_two_successes() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..5 {
            b.on_failure(t0);
        }
        let later = t0 + Duration::from_secs(30);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.allows(later));
        b.on_success();
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.allows(later));
        b.on_success();
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[test]
    fn a_failure_while_half_open_reopens_for_another_full_period() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..5 {
            b.on_failure(t0);
        }
        let t1 = t0 + Duration::from_secs(31);
        assert!(b.allows(t1));
        b.on_success();
        b.on_failure(t1);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert!(!b.allows(t1 + Duration::from_secs(29)));
        assert!(b.allows(t1 + Duration::from_secs(30)));
    }

    #[test]
    fn open_period_is_configurable() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig { open_for: Duration::from_millis(100), ..Default::default() });
        for _ in 0..5 {
            b.on_failure(t0);
        }
        assert!(!b.allows(t0 + Duration::from_millis(99)));
        assert!(b.allows(t0 + Duration::from_millis(100)));
    }
}
