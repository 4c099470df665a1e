//! Order rules, free of I/O: the status machine driven by saga events and
//! customer actions, and how a checkout turns cart lines and catalog prices
//! into priced order lines.

use shopmesh_platform::money::{Currency, Money, MoneyError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(OrderStatus::Pending),
            "CONFIRMED" => Some(OrderStatus::Confirmed),
            "CANCELLED" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        self != OrderStatus::Pending
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    OutOfStock,
    PaymentDeclined,
    Timeout,
    CustomerRequest,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::OutOfStock => "OUT_OF_STOCK",
            CancelReason::PaymentDeclined => "PAYMENT_DECLINED",
            CancelReason::Timeout => "TIMEOUT",
            CancelReason::CustomerRequest => "CUSTOMER_REQUEST",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "OUT_OF_STOCK" => Some(CancelReason::OutOfStock),
            "PAYMENT_DECLINED" => Some(CancelReason::PaymentDeclined),
            "TIMEOUT" => Some(CancelReason::Timeout),
            "CUSTOMER_REQUEST" => Some(CancelReason::CustomerRequest),
            _ => None,
        }
    }
}

/// Where the order's money is, as far as the order has heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentState {
    /// Nothing captured, or not heard of yet.
    Unpaid,
    /// Captured and not given back.
    Held,
    /// Captured, then refunded. Final: payment captures an order once, so
    /// a capture heard after its refund is an old message replayed.
    Refunded,
}

impl PaymentState {
    /// From the order row's `paid` and `refunded` columns.
    pub fn from_columns(paid: bool, refunded: bool) -> Self {
        match (paid, refunded) {
            (_, true) => PaymentState::Refunded,
            (true, false) => PaymentState::Held,
            (false, false) => PaymentState::Unpaid,
        }
    }

    /// How a change names it to the store's statement (see `store::Change`).
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Unpaid => "UNPAID",
            PaymentState::Held => "HELD",
            PaymentState::Refunded => "REFUNDED",
        }
    }
}

/// Something that happened to an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderInput {
    StockReservationFailed,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    TimedOut,
    CustomerCancel,
}

/// What to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// PENDING → CONFIRMED; emit OrderConfirmed.
    Confirm,
    /// → CANCELLED; emit OrderCancelled (payment refunds what it captured,
    /// inventory releases or restocks).
    Cancel { reason: CancelReason },
    /// No status change; record a history note and where the money is now.
    Note { note: &'static str, payment: PaymentState },
    /// Nothing to do (duplicate or stale input).
    Ignore,
}

/// The order status machine.
pub fn decide(status: OrderStatus, payment: PaymentState, input: OrderInput) -> Transition {
    use OrderInput::*;
    use OrderStatus::*;
    use PaymentState::{Held, Refunded, Unpaid};
    match (status, input) {
        (Pending, StockReservationFailed) => Transition::Cancel { reason: CancelReason::OutOfStock },
        (Pending, PaymentCaptured) => Transition::Confirm,
        (Pending, PaymentDeclined) => Transition::Cancel { reason: CancelReason::PaymentDeclined },
        (Pending, TimedOut) => Transition::Cancel { reason: CancelReason::Timeout },
        (Pending | Confirmed, CustomerCancel) => Transition::Cancel { reason: CancelReason::CustomerRequest },
        // Payment refunds a capture for an order it knows is cancelled; we
        // only record that money arrived late and is on its way back.
        (Cancelled, PaymentCaptured) if payment == Unpaid => {
            Transition::Note { note: "payment captured after cancellation; refund follows", payment: Held }
        }
        // Replayed out of order (from a dead-letter topic, say), a refund can
        // arrive before its capture: the capture then changes nothing.
        (Confirmed | Cancelled, PaymentRefunded) if payment != Refunded => {
            Transition::Note { note: "payment refunded", payment: Refunded }
        }
        _ => Transition::Ignore,
    }
}

/// A cart line as checkout sees it.
#[derive(Clone, Debug)]
pub struct CartLine {
    pub product_id: String,
    pub quantity: i32,
}

/// The catalog's current view of a product.
#[derive(Clone, Debug)]
pub struct CatalogProduct {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price: Money,
    pub active: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub unit_price: Money,
    pub quantity: i32,
}

impl OrderLine {
    pub fn line_total(&self) -> Result<Money, MoneyError> {
        self.unit_price.checked_mul(i64::from(self.quantity))
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    #[error("cart is empty")]
    EmptyCart,
    #[error("product {0} is no longer sold")]
    Unavailable(String),
    #[error("product {0} does not exist")]
    Unknown(String),
    #[error("invalid quantity for product {0}")]
    Quantity(String),
    /// Providers cannot charge nothing, so the saga could only decline it.
    #[error("the order total is zero")]
    NothingToCharge,
    #[error("{0}")]
    Money(#[from] MoneyError),
}

/// Prices every cart line at the catalog's current price (never the cart's
/// copy) and totals them. All-or-nothing: any unsellable line fails checkout.
pub fn price_checkout(cart: &[CartLine], catalog: &[CatalogProduct]) -> Result<(Vec<OrderLine>, Money), CheckoutError> {
    if cart.is_empty() {
        return Err(CheckoutError::EmptyCart);
    }
    let mut lines = Vec::with_capacity(cart.len());
    for item in cart {
        let product = catalog
            .iter()
            .find(|p| p.id == item.product_id)
            .ok_or_else(|| CheckoutError::Unknown(item.product_id.clone()))?;
        if !product.active {
            return Err(CheckoutError::Unavailable(item.product_id.clone()));
        }
        if !(1..=99).contains(&item.quantity) {
            return Err(CheckoutError::Quantity(item.product_id.clone()));
        }
        lines.push(OrderLine {
            product_id: product.id.clone(),
            sku: product.sku.clone(),
            name: product.name.clone(),
            unit_price: product.price,
            quantity: item.quantity,
        });
    }
    let currency: Currency = lines[0].unit_price.currency;
    let totals: Result<Vec<Money>, MoneyError> = lines.iter().map(OrderLine::line_total).collect();
    let total = Money::sum(currency, totals?)?;
    if total.amount_minor <= 0 {
        return Err(CheckoutError::NothingToCharge);
    }
    Ok((lines, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(n: i64) -> Money {
        Money::new(Currency::parse("USD").unwrap(), n)
    }

    fn product(id: &str, price: i64, active: bool) -> CatalogProduct {
        CatalogProduct { id: id.into(), sku: format!("SKU-{id}"), name: id.into(), price: usd(price), active }
    }

    #[test]
    fn saga_outcomes_drive_pending_orders() {
        use OrderInput::*;
        assert_eq!(decide(OrderStatus::Pending, PaymentState::Unpaid, PaymentCaptured), Transition::Confirm);
        assert_eq!(
            decide(OrderStatus::Pending, PaymentState::Unpaid, StockReservationFailed),
            Transition::Cancel { reason: CancelReason::OutOfStock }
        );
        assert_eq!(
            decide(OrderStatus::Pending, PaymentState::Unpaid, PaymentDeclined),
            Transition::Cancel { reason: CancelReason::PaymentDeclined }
        );
        assert_eq!(
            decide(OrderStatus::Pending, PaymentState::Unpaid, TimedOut),
            Transition::Cancel { reason: CancelReason::Timeout }
        );
    }

    #[test]
    fn final_states_ignore_stale_or_duplicate_events() {
        use OrderInput::*;
        assert_eq!(decide(OrderStatus::Confirmed, PaymentState::Held, PaymentCaptured), Transition::Ignore);
        assert_eq!(decide(OrderStatus::Confirmed, PaymentState::Held, TimedOut), Transition::Ignore);
        assert_eq!(decide(OrderStatus::Cancelled, PaymentState::Unpaid, PaymentDeclined), Transition::Ignore);
        assert_eq!(decide(OrderStatus::Cancelled, PaymentState::Unpaid, StockReservationFailed), Transition::Ignore);
        assert_eq!(decide(OrderStatus::Cancelled, PaymentState::Unpaid, CustomerCancel), Transition::Ignore);
    }

    #[test]
    fn customer_can_cancel_pending_and_confirmed_orders() {
        let cancel = Transition::Cancel { reason: CancelReason::CustomerRequest };
        assert_eq!(decide(OrderStatus::Pending, PaymentState::Unpaid, OrderInput::CustomerCancel), cancel);
        assert_eq!(decide(OrderStatus::Confirmed, PaymentState::Held, OrderInput::CustomerCancel), cancel);
    }

    #[test]
    fn late_capture_on_cancelled_order_is_noted_as_held_money() {
        assert_eq!(
            decide(OrderStatus::Cancelled, PaymentState::Unpaid, OrderInput::PaymentCaptured),
            Transition::Note {
                note: "payment captured after cancellation; refund follows",
                payment: PaymentState::Held
            }
        );
        assert!(matches!(
            decide(OrderStatus::Cancelled, PaymentState::Held, OrderInput::PaymentRefunded),
            Transition::Note { payment: PaymentState::Refunded, .. }
        ));
    }

    #[test]
    fn a_capture_heard_after_its_refund_changes_nothing() {
        use OrderInput::*;
        use PaymentState::*;
        // The refund overtook the capture (a replay from the dead-letter topic).
        assert_eq!(
            decide(OrderStatus::Cancelled, Unpaid, PaymentRefunded),
            Transition::Note { note: "payment refunded", payment: Refunded }
        );
        assert_eq!(decide(OrderStatus::Cancelled, Refunded, PaymentCaptured), Transition::Ignore);
        // A capture or a refund heard twice (as different messages) is noted once.
        assert_eq!(decide(OrderStatus::Cancelled, Held, PaymentCaptured), Transition::Ignore);
        assert_eq!(decide(OrderStatus::Cancelled, Refunded, PaymentRefunded), Transition::Ignore);
        assert_eq!(decide(OrderStatus::Confirmed, Refunded, PaymentRefunded), Transition::Ignore);
    }

    #[test]
    fn checkout_uses_catalog_prices_and_totals_in_minor_units() {
        let cart =
            vec![CartLine { product_id: "a".into(), quantity: 2 }, CartLine { product_id: "b".into(), quantity: 1 }];
        let catalog = vec![product("a", 1999, true), product("b", 501, true)];
        let (lines, total) = price_checkout(&cart, &catalog).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].unit_price, usd(1999));
        assert_eq!(total, usd(1999 * 2 + 501));
    }

    #[test]
    fn checkout_refuses_a_cart_that_costs_nothing() {
        let cart = vec![CartLine { product_id: "free".into(), quantity: 3 }];
        assert_eq!(price_checkout(&cart, &[product("free", 0, true)]), Err(CheckoutError::NothingToCharge));
        let with_paid = vec![cart[0].clone(), CartLine { product_id: "b".into(), quantity: 1 }];
        let (_, total) = price_checkout(&with_paid, &[product("free", 0, true), product("b", 501, true)]).unwrap();
        assert_eq!(total, usd(501));
    }

    #[test]
    fn checkout_refuses_empty_unknown_archived_and_mixed_currency() {
        assert_eq!(price_checkout(&[], &[]), Err(CheckoutError::EmptyCart));
        let cart = vec![CartLine { product_id: "a".into(), quantity: 1 }];
        assert_eq!(price_checkout(&cart, &[]), Err(CheckoutError::Unknown("a".into())));
        assert_eq!(price_checkout(&cart, &[product("a", 1, false)]), Err(CheckoutError::Unavailable("a".into())));
        let two =
            vec![CartLine { product_id: "a".into(), quantity: 1 }, CartLine { product_id: "e".into(), quantity: 1 }];
        let mut eur = product("e", 1, true);
        eur.price = Money::new(Currency::parse("EUR").unwrap(), 1);
        assert!(matches!(price_checkout(&two, &[product("a", 1, true), eur]), Err(CheckoutError::Money(_))));
    }
}
