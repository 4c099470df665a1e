//! Stock and reservation rules: what valid ids, quantities and reservation
//! lines are, when a reservation fits, which status transitions release and
//! commit make, and when stock crosses its low-stock threshold. Pure.

use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

/// Why a value was rejected; `field` is the request field path.
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

fn uuid(field: &str, raw: &str) -> Result<Uuid, Invalid> {
    Uuid::parse_str(raw.trim()).map_err(|_| Invalid::new(field, "must be a UUID"))
}

/// A catalog product id (inventory never asks catalog whether it exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductId(Uuid);

impl ProductId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        uuid(field, raw).map(Self)
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An order id; the idempotency key of every reservation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        uuid(field, raw).map(Self)
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

pub const MAX_QUANTITY: i32 = 10_000;
pub const MAX_LINES: usize = 100;
/// Caps stock counts far below i64 so sums of them can't overflow.
pub const MAX_ON_HAND: i64 = 1_000_000_000;
pub const DEFAULT_LOW_STOCK_THRESHOLD: i64 = 5;

/// Units of one product in one reservation: 1..=10_000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i32);

impl Quantity {
    pub fn parse(field: &str, raw: i32) -> Result<Self, Invalid> {
        if (1..=MAX_QUANTITY).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(Invalid::new(field, format!("must be between 1 and {MAX_QUANTITY}")))
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// One product of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// A reservation request's lines: 1..=100 of them as submitted, merged so
/// each product appears once, sorted by product id — the order stock rows
/// are locked in, so concurrent reservations can't deadlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationLines(Vec<Line>);

impl ReservationLines {
    /// `raw` is `(product_id, quantity)` per submitted line; errors name
    /// `lines[i].product_id` / `lines[i].quantity`.
    pub fn parse<S: AsRef<str>>(raw: &[(S, i32)]) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid::new("lines", "must contain at least one line"));
        }
        if raw.len() > MAX_LINES {
            return Err(Invalid::new("lines", format!("must contain at most {MAX_LINES} lines")));
        }
        let mut merged: BTreeMap<ProductId, i32> = BTreeMap::new();
        for (i, (product, quantity)) in raw.iter().enumerate() {
            let product_id = ProductId::parse(&format!("lines[{i}].product_id"), product.as_ref())?;
            let field = format!("lines[{i}].quantity");
            let quantity = Quantity::parse(&field, *quantity)?;
            let total = merged.entry(product_id).or_insert(0);
            // Merging must not smuggle past the per-product cap.
            *total = Quantity::parse(&field, *total + quantity.get())
                .map_err(|_| {
                    Invalid::new(&field, format!("together with earlier lines for this product exceeds {MAX_QUANTITY}"))
                })?
                .get();
        }
        Ok(Self(merged.into_iter().map(|(product_id, q)| Line { product_id, quantity: Quantity(q) }).collect()))
    }

    pub fn lines(&self) -> &[Line] {
        &self.0
    }

    pub fn product_ids(&self) -> Vec<ProductId> {
        self.0.iter().map(|l| l.product_id).collect()
    }
}

/// Stock counts of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevel {
    pub on_hand: i64,
    pub reserved: i64,
    pub low_stock_threshold: i64,
}

impl StockLevel {
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }

    pub fn is_low(&self) -> bool {
        self.available() < self.low_stock_threshold
    }
}

/// Whether a change should raise `LowStock`: only when it moves the product
/// from not-low to low, so an alert fires once per crossing and not on every
/// change below the threshold. A product seen for the first time counts as
/// not-low before, so stocking it below its threshold alerts.
pub fn low_stock_crossed(before: Option<&StockLevel>, after: &StockLevel) -> bool {
    !before.is_some_and(StockLevel::is_low) && after.is_low()
}

/// A non-negative stock count (`on_hand`, `low_stock_threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(i64);

impl Count {
    pub fn parse(field: &str, raw: i64) -> Result<Self, Invalid> {
        if (0..=MAX_ON_HAND).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(Invalid::new(field, format!("must be between 0 and {MAX_ON_HAND}")))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// What SetStock asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockTarget {
    pub on_hand: Count,
    /// `None` keeps the current threshold (or the default for a new product).
    pub low_stock_threshold: Option<Count>,
}

/// Why SetStock can't apply now; `field` names the request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Refused {
    pub field: &'static str,
    pub reason: String,
}

/// The level after SetStock; refused when on_hand would drop below what
/// open reservations already hold.
pub fn apply_target(
    current: Option<&StockLevel>,
    target: StockTarget,
    default_threshold: i64,
) -> Result<StockLevel, Refused> {
    let reserved = current.map_or(0, |c| c.reserved);
    if target.on_hand.get() < reserved {
        return Err(Refused {
            field: "on_hand",
            reason: format!("must be at least the {reserved} units held by open reservations"),
        });
    }
    let low_stock_threshold = target
        .low_stock_threshold
        .map(Count::get)
        .or(current.map(|c| c.low_stock_threshold))
        .unwrap_or(default_threshold);
    Ok(StockLevel { on_hand: target.on_hand.get(), reserved, low_stock_threshold })
}

/// Products that can't cover their line, given the locked stock levels
/// (a product with no level has nothing available). Empty: the whole
/// reservation fits.
pub fn short_products(lines: &ReservationLines, level_of: impl Fn(ProductId) -> Option<StockLevel>) -> Vec<ProductId> {
    lines
        .lines()
        .iter()
        .filter(|l| level_of(l.product_id).map_or(0, |s| s.available()) < i64::from(l.quantity.get()))
        .map(|l| l.product_id)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Reserved,
    Rejected,
    Released,
    Committed,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::Rejected => "REJECTED",
            Self::Released => "RELEASED",
            Self::Committed => "COMMITTED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RESERVED" => Some(Self::Reserved),
            "REJECTED" => Some(Self::Rejected),
            "RELEASED" => Some(Self::Released),
            "COMMITTED" => Some(Self::Committed),
            _ => None,
        }
    }
}

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub order_id: OrderId,
    pub status: ReservationStatus,
    pub lines: Vec<Line>,
    pub short_product_ids: Vec<ProductId>,
    /// Made by an order's checkout (the saga), which alone settles it.
    pub by_checkout: bool,
}

/// Who asks to move a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The checkout saga, for its own order.
    Checkout,
    /// An admin through the API. A checkout's reservation is not theirs to
    /// settle: released under a paid order, its units would sell twice;
    /// committed, the saga's own commit or release would find it moved.
    Admin,
}

impl Actor {
    /// Whether this actor may release or commit `reservation`.
    pub fn may_settle(self, reservation: &Reservation) -> bool {
        self == Actor::Checkout || !reservation.by_checkout
    }
}

/// What a release does to a committed reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseMode {
    /// The stock has shipped with the order: refuse (admin release, payment declined).
    KeepCommitted,
    /// A confirmed order was cancelled: put its units back on hand.
    RestockCommitted,
}

/// What a release does, by current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseStep {
    /// RESERVED → RELEASED: reserved −= q.
    ReturnReserved,
    /// COMMITTED → RELEASED: on_hand += q.
    Restock,
    /// Unknown order → RELEASED tombstone without lines, so a Reserve that
    /// arrives after the saga's release (redelivery, DLQ replay) finds the
    /// order settled and reserves nothing — otherwise those units would stay
    /// reserved for an order that no longer exists.
    Tombstone,
    /// RELEASED or REJECTED: nothing to return.
    AlreadySettled,
    /// COMMITTED under `KeepCommitted`.
    RefuseCommitted,
    /// An admin's release of a checkout's reservation: nothing moves.
    RefuseCheckout,
    /// An admin's release of an order inventory has not seen: nothing is
    /// written (a checkout's tombstone is the saga's alone to leave).
    NotFound,
}

pub fn release_step(current: Option<ReservationStatus>, mode: ReleaseMode) -> ReleaseStep {
    match (current, mode) {
        (None, _) => ReleaseStep::Tombstone,
        (Some(ReservationStatus::Reserved), _) => ReleaseStep::ReturnReserved,
        (Some(ReservationStatus::Committed), ReleaseMode::RestockCommitted) => ReleaseStep::Restock,
        (Some(ReservationStatus::Committed), ReleaseMode::KeepCommitted) => ReleaseStep::RefuseCommitted,
        (Some(ReservationStatus::Released | ReservationStatus::Rejected), _) => ReleaseStep::AlreadySettled,
    }
}

/// What a commit does, by current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStep {
    /// RESERVED → COMMITTED: on_hand −= q, reserved −= q.
    Commit,
    AlreadyCommitted,
    /// REJECTED or RELEASED: the units are gone or were never held.
    Refuse(ReservationStatus),
    NotFound,
    /// An admin's commit of a checkout's reservation: nothing moves.
    RefuseCheckout,
}

pub fn commit_step(current: Option<ReservationStatus>) -> CommitStep {
    match current {
        None => CommitStep::NotFound,
        Some(ReservationStatus::Reserved) => CommitStep::Commit,
        Some(ReservationStatus::Committed) => CommitStep::AlreadyCommitted,
        Some(s) => CommitStep::Refuse(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";

    fn pid(s: &str) -> ProductId {
        ProductId::parse("p", s).unwrap()
    }

    fn level(on_hand: i64, reserved: i64, threshold: i64) -> StockLevel {
        StockLevel { on_hand, reserved, low_stock_threshold: threshold }
    }

    #[test]
    fn lines_merge_duplicates_and_sort_by_product() {
        let lines = ReservationLines::parse(&[(B, 2), (A, 1), (B, 3)]).unwrap();
        let got: Vec<_> = lines.lines().iter().map(|l| (l.product_id, l.quantity.get())).collect();
        assert_eq!(got, vec![(pid(A), 1), (pid(B), 5)]);
    }

    #[test]
    fn line_errors_name_the_field() {
        assert_eq!(ReservationLines::parse::<&str>(&[]).unwrap_err().field, "lines");
        let many: Vec<_> = (0..=MAX_LINES).map(|_| (A, 1)).collect();
        assert_eq!(ReservationLines::parse(&many).unwrap_err().field, "lines");
        let hundred: Vec<_> = (0..MAX_LINES).map(|_| (A, 1)).collect();
        assert!(ReservationLines::parse(&hundred).is_ok());
        assert_eq!(ReservationLines::parse(&[(A, 1), ("nope", 1)]).unwrap_err().field, "lines[1].product_id");
        for bad in [0, -1, MAX_QUANTITY + 1] {
            assert_eq!(ReservationLines::parse(&[(A, 1), (B, bad)]).unwrap_err().field, "lines[1].quantity", "{bad}");
        }
        assert!(ReservationLines::parse(&[(A, MAX_QUANTITY)]).is_ok());
    }

    #[test]
    fn merged_quantity_is_capped_too() {
        let err = ReservationLines::parse(&[(A, 6_000), (B, 1), (A, 5_000)]).unwrap_err();
        assert_eq!(err.field, "lines[2].quantity");
    }

    #[test]
    fn low_stock_fires_once_per_downward_crossing() {
        // 10 → 4 with threshold 5 crosses; 4 → 3 is already low.
        assert!(low_stock_crossed(Some(&level(10, 0, 5)), &level(10, 6, 5)));
        assert!(!low_stock_crossed(Some(&level(10, 6, 5)), &level(10, 7, 5)));
        // Landing exactly on the threshold is not low.
        assert!(!low_stock_crossed(Some(&level(10, 0, 5)), &level(10, 5, 5)));
        // Restocking never alerts; after it the next drop alerts again.
        assert!(!low_stock_crossed(Some(&level(10, 7, 5)), &level(30, 7, 5)));
        assert!(low_stock_crossed(Some(&level(30, 7, 5)), &level(30, 27, 5)));
        // Raising the threshold above what's available is a crossing too.
        assert!(low_stock_crossed(Some(&level(10, 0, 5)), &level(10, 0, 20)));
        // Threshold 0 never alerts: available can't go below zero.
        assert!(!low_stock_crossed(Some(&level(1, 0, 0)), &level(1, 1, 0)));
        // A new product stocked below its threshold alerts.
        assert!(low_stock_crossed(None, &level(2, 0, 5)));
        assert!(!low_stock_crossed(None, &level(5, 0, 5)));
    }

    #[test]
    fn set_stock_keeps_reserved_and_refuses_below_it() {
        let target = |on_hand, t: Option<i64>| StockTarget {
            on_hand: Count::parse("on_hand", on_hand).unwrap(),
            low_stock_threshold: t.map(|t| Count::parse("low_stock_threshold", t).unwrap()),
        };
        assert_eq!(apply_target(None, target(7, None), 5).unwrap(), level(7, 0, 5));
        assert_eq!(apply_target(Some(&level(10, 3, 8)), target(3, None), 5).unwrap(), level(3, 3, 8));
        assert_eq!(apply_target(Some(&level(10, 3, 8)), target(4, Some(1)), 5).unwrap(), level(4, 3, 1));
        assert_eq!(apply_target(Some(&level(10, 3, 8)), target(2, None), 5).unwrap_err().field, "on_hand");
        assert_eq!(Count::parse("on_hand", -1).unwrap_err().field, "on_hand");
    }

    #[test]
    fn short_products_treat_unknown_as_empty() {
        let lines = ReservationLines::parse(&[(A, 3), (B, 1)]).unwrap();
        let a = pid(A);
        let fits = |avail_a: i64| short_products(&lines, |p| (p == a).then(|| level(avail_a, 0, 5)));
        assert_eq!(fits(3), vec![pid(B)]);
        assert_eq!(fits(2), vec![pid(A), pid(B)]);
        let both = short_products(&lines, |_| Some(level(3, 0, 5)));
        assert!(both.is_empty());
    }

    #[test]
    fn release_and_commit_transitions() {
        use ReleaseMode::*;
        use ReservationStatus::*;
        assert_eq!(release_step(None, KeepCommitted), ReleaseStep::Tombstone);
        assert_eq!(release_step(Some(Reserved), KeepCommitted), ReleaseStep::ReturnReserved);
        assert_eq!(release_step(Some(Released), RestockCommitted), ReleaseStep::AlreadySettled);
        assert_eq!(release_step(Some(Rejected), KeepCommitted), ReleaseStep::AlreadySettled);
        assert_eq!(release_step(Some(Committed), KeepCommitted), ReleaseStep::RefuseCommitted);
        assert_eq!(release_step(Some(Committed), RestockCommitted), ReleaseStep::Restock);

        assert_eq!(commit_step(Some(Reserved)), CommitStep::Commit);
        assert_eq!(commit_step(Some(Committed)), CommitStep::AlreadyCommitted);
        assert_eq!(commit_step(Some(Released)), CommitStep::Refuse(Released));
        assert_eq!(commit_step(Some(Rejected)), CommitStep::Refuse(Rejected));
        assert_eq!(commit_step(None), CommitStep::NotFound);
    }

    #[test]
    fn status_round_trips() {
        for s in [
            ReservationStatus::Reserved,
            ReservationStatus::Rejected,
            ReservationStatus::Released,
            ReservationStatus::Committed,
        ] {
            assert_eq!(ReservationStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ReservationStatus::parse("PENDING"), None);
    }

    #[test]
    fn only_the_checkout_settles_a_checkouts_reservation() {
        let made_by = |by_checkout| Reservation {
            order_id: OrderId::from_uuid(Uuid::now_v7()),
            status: ReservationStatus::Reserved,
            lines: vec![],
            short_product_ids: vec![],
            by_checkout,
        };
        assert!(Actor::Checkout.may_settle(&made_by(true)));
        assert!(!Actor::Admin.may_settle(&made_by(true)));
        assert!(Actor::Admin.may_settle(&made_by(false)));
        assert!(Actor::Checkout.may_settle(&made_by(false)), "an admin's reservation, if an order ever names it");
    }
}
