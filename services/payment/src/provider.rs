//! Payment providers (PSPs) and the router that picks one: the primary
//! behind a circuit breaker, the secondary as fallback. The two built-in
//! providers simulate Stripe's test mode in-process; in the service they
//! keep their books in Postgres, so a crash of the payment process does not
//! make them forget a charge, as a real provider would not.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shopmesh_platform::money::{Currency, Money};

use crate::domain::{BreakerConfig, BreakerState, CircuitBreaker};

pub const PRIMARY: &str = "primary";
pub const SECONDARY: &str = "secondary";

/// A successful charge as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub provider_reference: String,
    /// e.g. "visa ending 4242"; the only card detail we keep.
    pub card_display: String,
    /// What the provider captured.
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The card or token was refused; final for this payment.
    #[error("declined: {0}")]
    Declined(String),
    /// The provider did not take the request (unreachable, refused,
    /// overloaded): nothing was charged, so another provider may be asked.
    #[error("provider unavailable")]
    Unavailable,
    /// The request may have reached the provider but no answer came back
    /// (a timeout, a dropped connection): it may have charged. Never fail
    /// over on this; ask the same provider again later (`find_charge`).
    #[error("provider did not answer")]
    NoAnswer,
    /// A payment names a provider this process does not have (renamed, or
    /// missing on one replica): a configuration fault for a person, which no
    /// other provider can answer for.
    #[error("provider {0:?} is not configured")]
    NotConfigured(String),
}

#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync {
    fn name(&self) -> &str;

    /// Charges `amount` to `token`. A repeated `idempotency_key` returns the
    /// first charge's result and never charges again.
    async fn charge(&self, idempotency_key: &str, token: &str, amount: &Money) -> Result<Charge, ProviderError>;

    /// Returns `amount` of the charge `provider_reference`. A repeated
    /// `idempotency_key` returns the first refund's result and never
    /// refunds twice (a transaction rolled back after the provider took the
    /// refund asks again with the same key).
    async fn refund(
        &self,
        idempotency_key: &str,
        provider_reference: &str,
        amount: &Money,
    ) -> Result<(), ProviderError>;

    /// The capture made under `idempotency_key`, if any (Stripe: look the
    /// PaymentIntent up by its order metadata). Lets a retry or a
    /// cancellation find money taken by an attempt we never recorded.
    async fn find_charge(&self, idempotency_key: &str) -> Result<Option<Charge>, ProviderError>;
}

/// Durable note of which providers were asked to charge an order, and which
/// of them refused outright.
#[async_trait::async_trait]
pub trait ChargeJournal: Send + Sync {
    /// Records, before the call, that `provider` is about to be asked.
    async fn before_charge(&self, provider: &str) -> Result<(), sqlx::Error>;

    /// Records that `provider` refused the request it was just asked
    /// (`Unavailable`): that attempt took nothing.
    async fn refused(&self, provider: &str) -> Result<(), sqlx::Error>;
}

/// Stripe-test-mode stand-in. On a provider built with `down_on_test_token`,
/// `tok_provider_down` reports it unavailable (the secondary charges it) and
/// `tok_provider_timeout` charges but loses the answer; the secondary charges
/// both normally. A charge made with `tok_refund_outage` is captured, but
/// its refund finds the provider unavailable the first
/// `REFUND_OUTAGE_FAILURES` times it is asked; one made with
/// `tok_refund_refused` is captured and then disputed: every refund of it is
/// declined (`charge_disputed`).
pub struct TestProvider {
    name: &'static str,
    down_on_test_token: bool,
    books: Books,
    refund_failures: Mutex<HashMap<String, u32>>,
}

/// What a test provider charged (by idempotency key: a charge or a decline)
/// and refunded: in memory, or in the `test_provider_*` tables, written on
/// the provider's own connections and never in a payment's transaction.
enum Books {
    Memory { charges: Mutex<HashMap<String, Result<Charge, ProviderError>>>, refunded: Mutex<HashSet<String>> },
    Postgres(sqlx::PgPool),
}

type Outcome = Result<Charge, ProviderError>;

/// Books that cannot be read or written are a provider that cannot be
/// reached: nothing was charged.
fn unreachable(e: sqlx::Error) -> ProviderError {
    tracing::warn!(error = %e, "test provider books unavailable");
    ProviderError::Unavailable
}

impl Books {
    fn memory() -> Self {
        Self::Memory { charges: Mutex::default(), refunded: Mutex::default() }
    }

    /// The outcome recorded under `key`, if any.
    async fn charged(&self, provider: &str, key: &str) -> Result<Option<Outcome>, ProviderError> {
        match self {
            Self::Memory { charges, .. } => Ok(charges.lock().expect("provider books poisoned").get(key).cloned()),
            Self::Postgres(pool) => {
                let row: Option<ChargeRow> = sqlx::query_as(
                    "SELECT provider_reference, card_display, currency_code, amount_minor, declined
                     FROM test_provider_charges WHERE provider = $1 AND idempotency_key = $2",
                )
                .bind(provider)
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(unreachable)?;
                row.map(ChargeRow::into_outcome).transpose()
            }
        }
    }

    /// Records `outcome` under `key` unless one is there already (one
    /// statement when it is new); returns the one that stands, and whether
    /// it is `outcome`.
    async fn record(&self, provider: &str, key: &str, outcome: Outcome) -> Result<(Outcome, bool), ProviderError> {
        match self {
            Self::Memory { charges, .. } => {
                let mut charges = charges.lock().expect("provider books poisoned");
                if let Some(earlier) = charges.get(key) {
                    return Ok((earlier.clone(), false));
                }
                charges.insert(key.to_owned(), outcome.clone());
                Ok((outcome, true))
            }
            Self::Postgres(pool) => {
                let (charge, declined) = match &outcome {
                    Ok(c) => (Some(c), None),
                    Err(ProviderError::Declined(reason)) => (None, Some(reason.as_str())),
                    Err(_) => return Ok((outcome, true)),
                };
                let inserted = sqlx::query(
                    "INSERT INTO test_provider_charges
                       (provider, idempotency_key, provider_reference, card_display, currency_code, amount_minor, declined)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                )
                .bind(provider)
                .bind(key)
                .bind(charge.map(|c| c.provider_reference.as_str()))
                .bind(charge.map(|c| c.card_display.as_str()))
                .bind(charge.map(|c| c.amount.currency.as_str()))
                .bind(charge.map(|c| c.amount.amount_minor))
                .bind(declined)
                .execute(pool)
                .await
                .map_err(unreachable)?
                .rows_affected();
                if inserted == 1 {
                    return Ok((outcome, true));
                }
                let earlier = self.charged(provider, key).await?.ok_or(ProviderError::Unavailable)?;
                Ok((earlier, false))
            }
        }
    }

    async fn record_refund(&self, provider_reference: &str) -> Result<(), ProviderError> {
        match self {
            Self::Memory { refunded, .. } => {
                refunded.lock().expect("provider books poisoned").insert(provider_reference.to_owned());
                Ok(())
            }
            Self::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO test_provider_refunds (provider_reference) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(provider_reference)
                .execute(pool)
                .await
                .map_err(unreachable)?;
                Ok(())
            }
        }
    }

    async fn is_refunded(&self, provider_reference: &str) -> Result<bool, ProviderError> {
        match self {
            Self::Memory { refunded, .. } => {
                Ok(refunded.lock().expect("provider books poisoned").contains(provider_reference))
            }
            Self::Postgres(pool) => {
                sqlx::query_scalar("SELECT EXISTS (SELECT FROM test_provider_refunds WHERE provider_reference = $1)")
                    .bind(provider_reference)
                    .fetch_one(pool)
                    .await
                    .map_err(unreachable)
            }
        }
    }
}

#[derive(sqlx::FromRow)]
struct ChargeRow {
    provider_reference: Option<String>,
    card_display: Option<String>,
    currency_code: Option<String>,
    amount_minor: Option<i64>,
    declined: Option<String>,
}

impl ChargeRow {
    fn into_outcome(self) -> Result<Outcome, ProviderError> {
        let corrupt = || {
            tracing::error!("test provider books hold an unreadable charge");
            ProviderError::Unavailable
        };
        match (self.provider_reference, self.declined) {
            (Some(provider_reference), _) => {
                let currency = Currency::parse(&self.currency_code.ok_or_else(corrupt)?).map_err(|_| corrupt())?;
                Ok(Ok(Charge {
                    provider_reference,
                    card_display: self.card_display.ok_or_else(corrupt)?,
                    amount: Money::new(currency, self.amount_minor.ok_or_else(corrupt)?),
                }))
            }
            (None, Some(reason)) => Ok(Err(ProviderError::Declined(reason))),
            (None, None) => Err(corrupt()),
        }
    }
}

/// Refund attempts a `tok_refund_outage` charge fails before one succeeds.
pub const REFUND_OUTAGE_FAILURES: u32 = 2;
const REFUND_OUTAGE_MARK: &str = "_refund_outage";
const REFUND_REFUSED_MARK: &str = "_refund_refused";

impl TestProvider {
    pub fn primary() -> Self {
        Self::new(PRIMARY, true)
    }

    pub fn secondary() -> Self {
        Self::new(SECONDARY, false)
    }

    fn new(name: &'static str, down_on_test_token: bool) -> Self {
        Self { name, down_on_test_token, books: Books::memory(), refund_failures: Mutex::default() }
    }

    /// Keeps this provider's books in `pool`'s `test_provider_*` tables.
    pub fn keeping_books_in(self, pool: sqlx::PgPool) -> Self {
        Self { books: Books::Postgres(pool), ..self }
    }

    fn outcome(&self, token: &str, amount: &Money) -> Result<Charge, ProviderError> {
        let card = |display: &str| {
            Ok(Charge {
                provider_reference: format!("{}_ch_{}", self.name, uuid::Uuid::now_v7().simple()),
                card_display: display.to_owned(),
                amount: *amount,
            })
        };
        match token {
            "tok_visa" => card("visa ending 4242"),
            "tok_mastercard" => card("mastercard ending 4444"),
            "tok_provider_down" if self.down_on_test_token => Err(ProviderError::Unavailable),
            "tok_provider_down" | "tok_provider_timeout" => card("visa ending 4242"),
            "tok_refund_outage" => card("visa ending 4242")
                .map(|c| Charge { provider_reference: format!("{}{REFUND_OUTAGE_MARK}", c.provider_reference), ..c }),
            "tok_refund_refused" => card("visa ending 4242")
                .map(|c| Charge { provider_reference: format!("{}{REFUND_REFUSED_MARK}", c.provider_reference), ..c }),
            "tok_chargeDeclined" => Err(ProviderError::Declined("card_declined".into())),
            "tok_insufficient_funds" => Err(ProviderError::Declined("insufficient_funds".into())),
            _ => Err(ProviderError::Declined("invalid_token".into())),
        }
    }
}

#[async_trait::async_trait]
impl PaymentProvider for TestProvider {
    fn name(&self) -> &str {
        self.name
    }

    async fn charge(&self, idempotency_key: &str, token: &str, amount: &Money) -> Result<Charge, ProviderError> {
        let outcome = self.outcome(token, amount);
        if outcome == Err(ProviderError::Unavailable) {
            // Outages aren't remembered: a retry after one is a fresh
            // attempt, but what an earlier one charged stands.
            return self.books.charged(self.name, idempotency_key).await?.unwrap_or(outcome);
        }
        let (outcome, fresh) = self.books.record(self.name, idempotency_key, outcome).await?;
        if !fresh {
            return outcome;
        }
        if token == "tok_provider_timeout" && self.down_on_test_token {
            return Err(ProviderError::NoAnswer);
        }
        outcome
    }

    async fn refund(&self, _key: &str, provider_reference: &str, _amount: &Money) -> Result<(), ProviderError> {
        // One refund per charge, so the charge names it as well as the key.
        // Books in memory don't survive our restarts: trust our own prefix.
        if !provider_reference.starts_with(&format!("{}_ch_", self.name)) {
            return Err(ProviderError::Declined("no_such_charge".into()));
        }
        if provider_reference.ends_with(REFUND_REFUSED_MARK) {
            return Err(ProviderError::Declined("charge_disputed".into()));
        }
        if provider_reference.ends_with(REFUND_OUTAGE_MARK) {
            let mut failures = self.refund_failures.lock().expect("provider map poisoned");
            let failed = failures.entry(provider_reference.to_owned()).or_default();
            if *failed < REFUND_OUTAGE_FAILURES {
                *failed += 1;
                return Err(ProviderError::Unavailable);
            }
        }
        self.books.record_refund(provider_reference).await
    }

    async fn find_charge(&self, idempotency_key: &str) -> Result<Option<Charge>, ProviderError> {
        Ok(self.books.charged(self.name, idempotency_key).await?.and_then(Result::ok))
    }
}

impl TestProvider {
    /// Whether the charge `provider_reference` was refunded (tests audit with it).
    pub async fn is_refunded(&self, provider_reference: &str) -> bool {
        self.books.is_refunded(provider_reference).await.expect("test provider books readable")
    }
}

/// Where the time comes from; tests substitute a fake.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Why a charge could not be routed to any provider.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The journal could not record the attempt: no provider was asked.
    #[error("recording the charge attempt failed: {0}")]
    Journal(#[from] sqlx::Error),
    /// An earlier attempt asked a provider this process does not have.
    #[error("an earlier attempt asked provider {0:?}, which is not configured")]
    UnknownProvider(String),
}

/// The result of routing a charge: which provider answered, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<T> {
    pub provider: String,
    pub outcome: Result<T, ProviderError>,
}

/// Sends charges to the primary unless its breaker is open or it refuses,
/// then to the secondary; a retry goes back to the provider an earlier
/// attempt may have charged. Refunds go to whichever provider holds the charge.
/// No call waits on a provider longer than `call_timeout`: one that hangs
/// would hold the consumer, and every order behind it, with it.
pub struct Router {
    primary: Arc<dyn PaymentProvider>,
    secondary: Arc<dyn PaymentProvider>,
    breaker: Mutex<CircuitBreaker>,
    clock: Arc<dyn Clock>,
    call_timeout: Duration,
}

/// How long a provider call may take before it counts as unanswered.
pub const PROVIDER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Router {
    pub fn new(
        primary: Arc<dyn PaymentProvider>,
        secondary: Arc<dyn PaymentProvider>,
        breaker: BreakerConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let breaker = Mutex::new(CircuitBreaker::new(breaker));
        let router = Self { primary, secondary, breaker, clock, call_timeout: PROVIDER_CALL_TIMEOUT };
        router.record_state();
        router
    }

    pub fn with_call_timeout(mut self, call_timeout: Duration) -> Self {
        self.call_timeout = call_timeout;
        self
    }

    /// `call`'s answer, or `NoAnswer` if none came within `call_timeout`:
    /// the request may have been taken.
    async fn within_timeout<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout(self.call_timeout, call).await.unwrap_or(Err(ProviderError::NoAnswer))
    }

    /// The built-in test providers with the real clock, their books in
    /// memory or, given a pool, in Postgres.
    pub fn test_mode(breaker: BreakerConfig, books: Option<sqlx::PgPool>) -> Self {
        let (mut primary, mut secondary) = (TestProvider::primary(), TestProvider::secondary());
        if let Some(pool) = books {
            primary = primary.keeping_books_in(pool.clone());
            secondary = secondary.keeping_books_in(pool);
        }
        Self::new(Arc::new(primary), Arc::new(secondary), breaker, Arc::new(SystemClock))
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.lock().expect("breaker poisoned").state(self.clock.now())
    }

    /// Charges through the primary, failing over to the secondary. Each
    /// provider is written to `journal` before it is asked, so a charge it
    /// makes stays findable whatever happens after; a journal failure stops
    /// the charge before any provider is called.
    ///
    /// `pinned` is a provider an earlier attempt asked that never refused
    /// outright: it may hold the money, or still be taking it, and a lookup
    /// that finds nothing cannot rule that out. Only it is asked, under the
    /// same idempotency key, breaker or not; asking another could charge twice.
    pub async fn charge(
        &self,
        idempotency_key: &str,
        token: &str,
        amount: &Money,
        pinned: Option<&str>,
        journal: &dyn ChargeJournal,
    ) -> Result<Routed<Charge>, RouteError> {
        let ask = |provider| self.ask(provider, idempotency_key, token, amount, journal);
        if let Some(name) = pinned {
            let provider = self.named(name).ok_or_else(|| RouteError::UnknownProvider(name.to_owned()))?;
            return Ok(ask(provider).await?);
        }
        let allowed = self.breaker.lock().expect("breaker poisoned").allows(self.clock.now());
        if allowed {
            let routed = ask(&self.primary).await?;
            // Only a request the primary never took may go elsewhere: after
            // no answer it may hold the money, and a second provider would
            // charge the customer twice.
            if routed.outcome != Err(ProviderError::Unavailable) {
                return Ok(routed);
            }
            journal.refused(self.primary.name()).await?;
            tracing::warn!(idempotency_key, "primary provider unavailable; failing over");
        }
        let routed = ask(&self.secondary).await?;
        if routed.outcome == Err(ProviderError::Unavailable) {
            journal.refused(self.secondary.name()).await?;
        }
        Ok(routed)
    }

    /// Journals `provider`, asks it to charge, and counts what it answered
    /// (for the primary, in its breaker too).
    async fn ask(
        &self,
        provider: &Arc<dyn PaymentProvider>,
        idempotency_key: &str,
        token: &str,
        amount: &Money,
        journal: &dyn ChargeJournal,
    ) -> Result<Routed<Charge>, sqlx::Error> {
        journal.before_charge(provider.name()).await?;
        // Unanswered, not refused: the charge may still land.
        let outcome = self.within_timeout(provider.charge(idempotency_key, token, amount)).await;
        if Arc::ptr_eq(provider, &self.primary) {
            {
                let mut breaker = self.breaker.lock().expect("breaker poisoned");
                match &outcome {
                    // A decline means the provider is up and working.
                    Ok(_) | Err(ProviderError::Declined(_)) => breaker.on_success(),
                    Err(ProviderError::Unavailable | ProviderError::NoAnswer) => breaker.on_failure(self.clock.now()),
                    // Not an answer from it (charges name no provider to be routed).
                    Err(ProviderError::NotConfigured(_)) => {}
                }
            }
            self.record_state();
        }
        count(provider.name(), &outcome);
        Ok(Routed { provider: provider.name().to_owned(), outcome })
    }

    /// The capture `provider` holds under `idempotency_key`, if any.
    pub async fn find_charge(&self, provider: &str, idempotency_key: &str) -> Result<Option<Charge>, ProviderError> {
        let target = self.provider(provider)?;
        self.within_timeout(target.find_charge(idempotency_key)).await
    }

    pub async fn refund(
        &self,
        provider: &str,
        idempotency_key: &str,
        provider_reference: &str,
        amount: &Money,
    ) -> Result<(), ProviderError> {
        let target = self.provider(provider)?;
        let outcome = self.within_timeout(target.refund(idempotency_key, provider_reference, amount)).await;
        let label = if outcome.is_ok() { "ok" } else { "failed" };
        metrics::counter!("payment_refunds_total", "provider" => target.name().to_owned(), "outcome" => label)
            .increment(1);
        outcome
    }

    /// `name`'s provider. One this process does not have cannot answer for
    /// its charges: asking another would take "holds nothing" for an
    /// answer and keep the money.
    fn provider(&self, name: &str) -> Result<&Arc<dyn PaymentProvider>, ProviderError> {
        self.named(name).ok_or_else(|| {
            tracing::error!(provider = name, "a payment names a provider that is not configured");
            ProviderError::NotConfigured(name.to_owned())
        })
    }

    fn named(&self, name: &str) -> Option<&Arc<dyn PaymentProvider>> {
        [&self.primary, &self.secondary].into_iter().find(|p| p.name() == name)
    }

    fn record_state(&self) {
        metrics::gauge!("payment_breaker_state", "provider" => self.primary.name().to_owned())
            .set(self.breaker_state().gauge_value());
    }
}

fn count(provider: &str, outcome: &Result<Charge, ProviderError>) {
    let label = match outcome {
        Ok(_) => "captured",
        Err(ProviderError::Declined(_)) => "declined",
        Err(ProviderError::Unavailable) => "unavailable",
        Err(ProviderError::NoAnswer) => "no_answer",
        Err(ProviderError::NotConfigured(_)) => "not_configured",
    };
    metrics::counter!("payment_charges_total", "provider" => provider.to_owned(), "outcome" => label).increment(1);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use shopmesh_platform::money::Currency;

    use super::*;

    fn usd(minor: i64) -> Money {
        Money::new(Currency::parse("USD").unwrap(), minor)
    }

    #[tokio::test]
    async fn test_tokens_behave_like_stripe_test_mode() {
        let p = TestProvider::primary();
        let visa = p.charge("o1", "tok_visa", &usd(100)).await.unwrap();
        assert_eq!(visa.card_display, "visa ending 4242");
        assert!(visa.provider_reference.starts_with("primary_ch_"));
        assert_eq!(p.charge("o2", "tok_mastercard", &usd(100)).await.unwrap().card_display, "mastercard ending 4444");
        assert_eq!(
            p.charge("o3", "tok_chargeDeclined", &usd(100)).await,
            Err(ProviderError::Declined("card_declined".into()))
        );
        assert_eq!(
            p.charge("o4", "tok_insufficient_funds", &usd(100)).await,
            Err(ProviderError::Declined("insufficient_funds".into()))
        );
        assert_eq!(p.charge("o5", "tok_provider_down", &usd(100)).await, Err(ProviderError::Unavailable));
        assert_eq!(
            p.charge("o6", "4242424242424242", &usd(100)).await,
            Err(ProviderError::Declined("invalid_token".into()))
        );
    }

    #[tokio::test]
    async fn secondary_charges_the_provider_down_token() {
        let s = TestProvider::secondary();
        let charge = s.charge("o1", "tok_provider_down", &usd(100)).await.unwrap();
        assert_eq!(charge.card_display, "visa ending 4242");
        assert!(charge.provider_reference.starts_with("secondary_ch_"));
    }

    #[tokio::test]
    async fn a_retried_charge_returns_the_first_result() {
        let p = TestProvider::primary();
        let first = p.charge("order-1", "tok_visa", &usd(100)).await.unwrap();
        let again = p.charge("order-1", "tok_visa", &usd(100)).await.unwrap();
        assert_eq!(first, again);
        let declined = p.charge("order-2", "tok_chargeDeclined", &usd(100)).await;
        assert_eq!(p.charge("order-2", "tok_visa", &usd(100)).await, declined, "a decline sticks to its key");
    }

    #[tokio::test]
    async fn refund_accepts_only_own_references() {
        let p = TestProvider::primary();
        let charge = p.charge("o1", "tok_visa", &usd(100)).await.unwrap();
        assert_eq!(p.refund("r1", &charge.provider_reference, &usd(100)).await, Ok(()));
        assert_eq!(p.refund("r1", &charge.provider_reference, &usd(100)).await, Ok(()), "idempotent");
        assert!(matches!(p.refund("r2", "secondary_ch_x", &usd(100)).await, Err(ProviderError::Declined(_))));
    }

    /// A clock the test moves by hand.
    struct FakeClock {
        base: Instant,
        offset_ms: AtomicU64,
    }

    impl FakeClock {
        fn new() -> Self {
            Self { base: Instant::now(), offset_ms: AtomicU64::new(0) }
        }
        fn advance(&self, d: Duration) {
            self.offset_ms.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.base + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
        }
    }

    /// A primary that is down until told otherwise, counting the calls it gets.
    struct Flaky {
        down: std::sync::atomic::AtomicBool,
        calls: AtomicU64,
    }

    #[async_trait::async_trait]
    impl PaymentProvider for Flaky {
        fn name(&self) -> &str {
            PRIMARY
        }
        async fn charge(&self, key: &str, _token: &str, _amount: &Money) -> Result<Charge, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(ProviderError::Unavailable);
            }
            Ok(Charge {
                provider_reference: format!("primary_ch_{key}"),
                card_display: "visa ending 4242".into(),
                amount: usd(100),
            })
        }
        async fn refund(&self, _key: &str, _reference: &str, _amount: &Money) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn find_charge(&self, _key: &str) -> Result<Option<Charge>, ProviderError> {
            Ok(None)
        }
    }

    /// Remembers which providers were announced, and which refused, in order.
    #[derive(Default)]
    struct Journal {
        asked: Mutex<Vec<String>>,
        refused: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl ChargeJournal for Journal {
        async fn before_charge(&self, provider: &str) -> Result<(), sqlx::Error> {
            self.asked.lock().unwrap().push(provider.to_owned());
            Ok(())
        }
        async fn refused(&self, provider: &str) -> Result<(), sqlx::Error> {
            self.refused.lock().unwrap().push(provider.to_owned());
            Ok(())
        }
    }

    struct BrokenJournal;

    #[async_trait::async_trait]
    impl ChargeJournal for BrokenJournal {
        async fn before_charge(&self, _provider: &str) -> Result<(), sqlx::Error> {
            Err(sqlx::Error::PoolTimedOut)
        }
        async fn refused(&self, _provider: &str) -> Result<(), sqlx::Error> {
            Err(sqlx::Error::PoolTimedOut)
        }
    }

    #[tokio::test]
    async fn every_provider_is_journaled_before_it_is_asked() {
        let clock = Arc::new(FakeClock::new());
        let primary = Arc::new(Flaky { down: true.into(), calls: AtomicU64::new(0) });
        let secondary = Arc::new(TestProvider::secondary());
        let router = Router::new(primary.clone(), secondary.clone(), BreakerConfig::default(), clock);
        let journal = Journal::default();
        let routed = router.charge("o1", "tok_visa", &usd(100), None, &journal).await.unwrap();
        assert_eq!(routed.provider, SECONDARY);
        assert_eq!(*journal.asked.lock().unwrap(), vec![PRIMARY.to_owned(), SECONDARY.to_owned()]);
        assert_eq!(*journal.refused.lock().unwrap(), vec![PRIMARY.to_owned()], "the primary took nothing");
        // What the secondary took can be found again under the same key.
        let found = router.find_charge(SECONDARY, "o1").await.unwrap().unwrap();
        assert_eq!(found, routed.outcome.unwrap());
        assert_eq!(found.amount, usd(100));
    }

    #[tokio::test]
    async fn no_provider_is_asked_when_the_journal_cannot_record() {
        let primary = Arc::new(Flaky { down: false.into(), calls: AtomicU64::new(0) });
        let router = Router::new(
            primary.clone(),
            Arc::new(TestProvider::secondary()),
            BreakerConfig::default(),
            Arc::new(SystemClock),
        );
        assert!(router.charge("o1", "tok_visa", &usd(100), None, &BrokenJournal).await.is_err());
        assert_eq!(primary.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn router_fails_over_opens_skips_the_primary_and_recovers() {
        let clock = Arc::new(FakeClock::new());
        let primary = Arc::new(Flaky { down: true.into(), calls: AtomicU64::new(0) });
        let router =
            Router::new(primary.clone(), Arc::new(TestProvider::secondary()), BreakerConfig::default(), clock.clone());
        let journal = Journal::default();

        // Each outage fails over to the secondary for that charge.
        for i in 0..5 {
            let routed = router.charge(&format!("o{i}"), "tok_visa", &usd(100), None, &journal).await.unwrap();
            assert_eq!(routed.provider, SECONDARY);
            assert!(routed.outcome.is_ok());
        }
        assert_eq!(router.breaker_state(), BreakerState::Open);

        // While open, the primary isn't even tried.
        let routed = router.charge("o5", "tok_visa", &usd(100), None, &journal).await.unwrap();
        assert_eq!(routed.provider, SECONDARY);
        assert_eq!(primary.calls.load(Ordering::SeqCst), 5);

        // After 30 s trial calls reach the (recovered) primary; two close it.
        clock.advance(Duration::from_secs(30));
        primary.down.store(false, Ordering::SeqCst);
        assert_eq!(router.charge("o6", "tok_visa", &usd(100), None, &journal).await.unwrap().provider, PRIMARY);
        assert_eq!(router.breaker_state(), BreakerState::HalfOpen);
        assert_eq!(router.charge("o7", "tok_visa", &usd(100), None, &journal).await.unwrap().provider, PRIMARY);
        assert_eq!(router.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_decline_is_final_and_does_not_fail_over() {
        let router = Router::test_mode(BreakerConfig::default(), None);
        let journal = Journal::default();
        let routed = router.charge("o1", "tok_chargeDeclined", &usd(100), None, &journal).await.unwrap();
        assert_eq!(routed.provider, PRIMARY);
        assert_eq!(routed.outcome, Err(ProviderError::Declined("card_declined".into())));
        assert_eq!(router.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn no_answer_is_never_failed_over_and_the_charge_is_found_again() {
        let router = Router::test_mode(BreakerConfig::default(), None);
        let journal = Journal::default();
        let routed = router.charge("o1", "tok_provider_timeout", &usd(100), None, &journal).await.unwrap();
        assert_eq!((routed.provider.as_str(), routed.outcome), (PRIMARY, Err(ProviderError::NoAnswer)));
        assert_eq!(*journal.asked.lock().unwrap(), vec![PRIMARY.to_owned()], "the secondary was never asked");
        let found = router.find_charge(PRIMARY, "o1").await.unwrap().expect("the primary holds the charge");
        assert_eq!(found.amount, usd(100));
        assert_eq!(router.find_charge(SECONDARY, "o1").await.unwrap(), None);
    }

    /// A primary whose charges never answer (in flight, or lost on the way
    /// back) and whose lookups cannot see them yet.
    #[derive(Default)]
    struct Silent {
        calls: AtomicU64,
    }

    #[async_trait::async_trait]
    impl PaymentProvider for Silent {
        fn name(&self) -> &str {
            PRIMARY
        }
        async fn charge(&self, _key: &str, _token: &str, _amount: &Money) -> Result<Charge, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(ProviderError::NoAnswer)
        }
        async fn refund(&self, _key: &str, _reference: &str, _amount: &Money) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn find_charge(&self, _key: &str) -> Result<Option<Charge>, ProviderError> {
            Ok(None)
        }
    }

    fn over_the_test_secondary(primary: Arc<dyn PaymentProvider>) -> Router {
        Router::new(primary, Arc::new(TestProvider::secondary()), BreakerConfig::default(), Arc::new(FakeClock::new()))
    }

    #[tokio::test]
    async fn a_pinned_retry_asks_only_its_provider_even_with_the_breaker_open() {
        let primary = Arc::new(Silent::default());
        let secondary = Arc::new(TestProvider::secondary());
        let router =
            Router::new(primary.clone(), secondary.clone(), BreakerConfig::default(), Arc::new(FakeClock::new()));
        let journal = Journal::default();
        for i in 0..5 {
            let routed = router.charge(&format!("o{i}"), "tok_visa", &usd(100), None, &journal).await.unwrap();
            assert_eq!((routed.provider.as_str(), routed.outcome), (PRIMARY, Err(ProviderError::NoAnswer)));
        }
        assert_eq!(router.breaker_state(), BreakerState::Open);

        // o0's first request may still land at the primary: ask it again, never the secondary.
        let routed = router.charge("o0", "tok_visa", &usd(100), Some(PRIMARY), &journal).await.unwrap();
        assert_eq!((routed.provider.as_str(), routed.outcome), (PRIMARY, Err(ProviderError::NoAnswer)));
        assert_eq!(primary.calls.load(Ordering::SeqCst), 6);
        assert_eq!(secondary.find_charge("o0").await.unwrap(), None, "the secondary was never charged");
        assert!(journal.refused.lock().unwrap().is_empty());

        // An order nothing was asked for yet still skips the open breaker.
        let routed = router.charge("o9", "tok_visa", &usd(100), None, &journal).await.unwrap();
        assert_eq!(routed.provider, SECONDARY);
    }

    #[tokio::test]
    async fn a_retry_pinned_to_the_secondary_stays_there_and_an_unknown_pin_asks_nobody() {
        let primary = Arc::new(Flaky { down: false.into(), calls: AtomicU64::new(0) });
        let router = over_the_test_secondary(primary.clone());
        let journal = Journal::default();
        let routed = router.charge("o1", "tok_visa", &usd(100), Some(SECONDARY), &journal).await.unwrap();
        assert_eq!(routed.provider, SECONDARY);
        assert!(routed.outcome.is_ok());
        assert!(router.charge("o2", "tok_visa", &usd(100), Some("stripe-eu"), &journal).await.is_err());
        assert_eq!(primary.calls.load(Ordering::SeqCst), 0, "the healthy primary was never asked");
        assert_eq!(*journal.asked.lock().unwrap(), vec![SECONDARY.to_owned()]);
    }

    #[tokio::test]
    async fn a_pinned_provider_that_is_down_is_not_failed_over_nor_marked_refused() {
        let primary = Arc::new(Flaky { down: true.into(), calls: AtomicU64::new(0) });
        let router = over_the_test_secondary(primary);
        let journal = Journal::default();
        let routed = router.charge("o1", "tok_visa", &usd(100), Some(PRIMARY), &journal).await.unwrap();
        assert_eq!((routed.provider.as_str(), routed.outcome), (PRIMARY, Err(ProviderError::Unavailable)));
        assert_eq!(*journal.asked.lock().unwrap(), vec![PRIMARY.to_owned()]);
        // Its earlier request may still hold the money: it stays pinned.
        assert!(journal.refused.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn provider_down_token_is_charged_by_the_secondary() {
        let router = Router::test_mode(BreakerConfig::default(), None);
        let journal = Journal::default();
        let routed = router.charge("o1", "tok_provider_down", &usd(100), None, &journal).await.unwrap();
        assert_eq!(routed.provider, SECONDARY);
        assert_eq!(routed.outcome.unwrap().card_display, "visa ending 4242");
    }

    /// A provider that never answers.
    struct Hanging;

    #[async_trait::async_trait]
    impl PaymentProvider for Hanging {
        fn name(&self) -> &str {
            PRIMARY
        }
        async fn charge(&self, _key: &str, _token: &str, _amount: &Money) -> Result<Charge, ProviderError> {
            std::future::pending().await
        }
        async fn refund(&self, _key: &str, _reference: &str, _amount: &Money) -> Result<(), ProviderError> {
            std::future::pending().await
        }
        async fn find_charge(&self, _key: &str) -> Result<Option<Charge>, ProviderError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_provider_that_hangs_counts_as_unanswered_and_is_not_failed_over() {
        let router = over_the_test_secondary(Arc::new(Hanging)).with_call_timeout(Duration::from_millis(50));
        let journal = Journal::default();
        // Bounded here too, so a router that waits forever fails the test instead of hanging it.
        let within =
            |call| async move { tokio::time::timeout(Duration::from_secs(5), call).await.expect("a call hung") };
        let routed = within(router.charge("o1", "tok_visa", &usd(100), None, &journal)).await.unwrap();
        // It may yet charge: the secondary is not asked, the primary not marked refused.
        assert_eq!((routed.provider.as_str(), routed.outcome), (PRIMARY, Err(ProviderError::NoAnswer)));
        assert_eq!(*journal.asked.lock().unwrap(), vec![PRIMARY.to_owned()]);
        assert!(journal.refused.lock().unwrap().is_empty());
        let found = tokio::time::timeout(Duration::from_secs(5), router.find_charge(PRIMARY, "o1")).await;
        assert_eq!(found.expect("a lookup hung"), Err(ProviderError::NoAnswer));
        let refunded =
            tokio::time::timeout(Duration::from_secs(5), router.refund(PRIMARY, "r1", "primary_ch_o1", &usd(100)))
                .await;
        assert_eq!(refunded.expect("a refund hung"), Err(ProviderError::NoAnswer));
    }

    #[tokio::test]
    async fn a_provider_this_process_does_not_have_cannot_answer_for_its_charges() {
        let primary = Arc::new(Flaky { down: false.into(), calls: AtomicU64::new(0) });
        let router = over_the_test_secondary(primary.clone());
        // Not "holds nothing" from the primary, which would let the money be kept.
        let not_configured = Err(ProviderError::NotConfigured("stripe-eu".into()));
        assert_eq!(router.find_charge("stripe-eu", "o1").await, not_configured);
        assert_eq!(
            router.refund("stripe-eu", "r1", "ch_1", &usd(100)).await,
            not_configured.map(|_: Option<Charge>| ())
        );
        assert_eq!(primary.calls.load(Ordering::SeqCst), 0);
    }
}
