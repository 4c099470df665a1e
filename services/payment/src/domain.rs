//! Payment rules, pure: money, the payment state machine, what to do when a
//! reservation or a cancellation arrives, the primary provider's circuit
//! breaker, and pagination cursors.

use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Why a value was rejected; `field` is the request (or event) field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// A chargeable amount: ISO 4217 code and a positive number of minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    currency: String,
    minor: i64,
}

impl Money {
    pub fn parse(field: &str, currency: &str, minor: i64) -> Result<Self, Invalid> {
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid::new(format!("{field}.currency_code"), "must be an upper-case ISO 4217 code"));
        }
        if minor <= 0 {
            return Err(Invalid::new(format!("{field}.amount_minor"), "must be positive"));
        }
        Ok(Self { currency: currency.to_owned(), minor })
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }
}

/// Where a payment is. Rows are only ever committed in one of these: the
/// charge and the row that records it happen in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Captured,
    Declined,
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
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CAPTURED" => Some(Self::Captured),
            "DECLINED" => Some(Self::Declined),
            "REFUNDED" => Some(Self::Refunded),
            _ => None,
        }
    }

    /// Only captured money can be given back, and only once.
    pub fn refund(self) -> Result<Self, TransitionError> {
        match self {
            Self::Captured => Ok(Self::Refunded),
            from => Err(TransitionError { from, action: "refunded" }),
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

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

/// 0 means the default; larger than the maximum is capped.
pub fn page_size(field: &str, raw: i32) -> Result<i64, Invalid> {
    match raw {
        n if n < 0 => Err(Invalid::new(field, "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// Keyset position: the last row of the previous page, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = format!("{}.{}", self.created_at.timestamp_micros(), self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Empty means the first page.
    pub fn decode(field: &str, token: &str) -> Result<Option<Self>, Invalid> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Invalid::new(field, "is not a token from a previous response");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (micros, id) = raw.split_once('.').ok_or_else(bad)?;
        let created_at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Some(Self { created_at, id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_needs_a_currency_code_and_a_positive_amount() {
        let m = Money::parse("total", "USD", 1234).unwrap();
        assert_eq!((m.currency(), m.minor()), ("USD", 1234));
        assert_eq!(Money::parse("total", "usd", 1).unwrap_err().field, "total.currency_code");
        assert_eq!(Money::parse("total", "", 1).unwrap_err().field, "total.currency_code");
        assert_eq!(Money::parse("total", "USD", 0).unwrap_err().field, "total.amount_minor");
        assert_eq!(Money::parse("total", "USD", -5).unwrap_err().field, "total.amount_minor");
    }

    #[test]
    fn captured_payment_can_be_refunded_once() {
        assert_eq!(PaymentStatus::Captured.refund(), Ok(PaymentStatus::Refunded));
        assert!(PaymentStatus::Refunded.refund().is_err());
    }

    #[test]
    fn declined_payment_cannot_be_refunded() {
        let err = PaymentStatus::Declined.refund().unwrap_err();
        assert_eq!(err.from, PaymentStatus::Declined);
    }

    #[test]
    fn a_payment_is_never_captured_twice() {
        assert_eq!(PaymentStatus::capture(None), Ok(PaymentStatus::Captured));
        for existing in [PaymentStatus::Captured, PaymentStatus::Declined, PaymentStatus::Refunded] {
            assert!(PaymentStatus::capture(Some(existing)).is_err(), "{existing:?}");
        }
    }

    #[test]
    fn status_round_trips_through_its_column_value() {
        for s in [PaymentStatus::Captured, PaymentStatus::Declined, PaymentStatus::Refunded] {
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

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size("page.page_size", 0), Ok(20));
        assert_eq!(page_size("page.page_size", 7), Ok(7));
        assert_eq!(page_size("page.page_size", 1000), Ok(100));
        assert_eq!(page_size("page.page_size", -1).unwrap_err().field, "page.page_size");
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c =
            Cursor { created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(), id: Uuid::now_v7() };
        assert_eq!(Cursor::decode("page.page_token", &c.encode()), Ok(Some(c)));
        assert_eq!(Cursor::decode("page.page_token", ""), Ok(None));
        assert_eq!(Cursor::decode("page.page_token", "not-a-token!").unwrap_err().field, "page.page_token");
        let no_dot = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("12345");
        assert!(Cursor::decode("page.page_token", &no_dot).is_err());
    }
}
